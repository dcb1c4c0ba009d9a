//! nftables mode: one `ip` and one `ip6` table named `kube-proxy-rs`, owned entirely by us, changed with
//! one atomic transaction per family and sync.

pub mod ir;
pub mod netlink;
pub mod plan;
pub mod ruleset;
pub mod text;
pub mod transport;

use self::ir::{Family, Op, Transaction};
use self::plan::Applied;
use self::ruleset::{FamilyConfig, NodePortAddresses as RuleNodePorts, TABLE};
use self::transport::Transport;
use super::settings::ProxySettings;
use super::{Dataplane, DataplaneError, SyncKind};
use crate::core::{Changes, DesiredState, NodeView};
use crate::model::IpFamily;

struct FamilyTable {
    family: Family,
    /// What the kernel holds, or `None` when unknown (start-up, after a failure): the next sync is full.
    applied: Option<Applied>,
}

/// The nftables dataplane.
pub struct NftablesDataplane {
    settings: ProxySettings,
    transport: Box<dyn Transport>,
    tables: Vec<FamilyTable>,
    /// Other modes' leftovers are removed once, after our first successful sync: taking over a node from
    /// upstream's iptables mode never leaves it without rules.
    took_over: bool,
}

impl NftablesDataplane {
    pub fn new(settings: ProxySettings, transport: Box<dyn Transport>, families: &[IpFamily]) -> Self {
        let tables = families.iter().map(|f| FamilyTable { family: Family::of(*f), applied: None }).collect();
        NftablesDataplane { settings, transport, tables, took_over: false }
    }

    fn family_config(&self, family: IpFamily, node: &NodeView) -> FamilyConfig {
        let local = self.settings.local_traffic(family, node);
        FamilyConfig {
            family: Family::of(family),
            masquerade_mark: self.settings.masquerade_mark(),
            masquerade_all: self.settings.masquerade_all,
            local,
            nodeports: RuleNodePorts::Listed,
            node_ips: node.addresses_of(family).collect(),
        }
    }

    fn nodeport_ips(&self, family: IpFamily, node: &NodeView) -> Vec<std::net::IpAddr> {
        // nftables mode's default is `primary`, as upstream's.
        self.settings.nodeport_addresses.addresses(family, node, true).unwrap_or_default()
    }
}

impl Dataplane for NftablesDataplane {
    fn mode(&self) -> &'static str {
        "nftables"
    }

    fn sync(&mut self, desired: &DesiredState, changes: &Changes, full: bool) -> Result<SyncKind, DataplaneError> {
        let mut kind = SyncKind::Nothing;
        for i in 0..self.tables.len() {
            let family = self.tables[i].family.ip_family();
            let config = self.family_config(family, &desired.node);
            let nodeport_ips = self.nodeport_ips(family, &desired.node);
            let table = &mut self.tables[i];
            let ports = desired.family(family);
            let result = match &mut table.applied {
                Some(applied) if !full && applied.config == config => {
                    let tx = plan::partial(applied, ports, changes.ports(family), nodeport_ips);
                    if tx.is_empty() {
                        continue;
                    }
                    if kind == SyncKind::Nothing {
                        kind = SyncKind::Partial;
                    }
                    self.transport.apply(&tx)
                }
                _ => {
                    kind = SyncKind::Full;
                    let mut applied = None;
                    let result = self.transport.apply_streamed(table.family, ruleset::TABLE, &mut |emit| {
                        applied = Some(plan::full(&config, ports, nodeport_ips.clone(), emit));
                    });
                    table.applied = applied;
                    result
                }
            };
            if let Err(e) = result {
                table.applied = None;
                return Err(DataplaneError::Apply {
                    what: format!("{family:?} nftables transaction"),
                    reason: e.to_string(),
                });
            }
        }
        if !self.took_over {
            self.took_over = true;
            super::remove_other_modes_leftovers(super::Running::Nftables, &self.settings);
        }
        Ok(kind)
    }

    fn verify(&mut self) -> Result<bool, DataplaneError> {
        let mut intact = true;
        for table in &mut self.tables {
            if table.applied.is_none() {
                continue;
            }
            let exists = self
                .transport
                .table_exists(table.family, TABLE)
                .map_err(|e| DataplaneError::Unavailable(e.to_string()))?;
            if !exists {
                table.applied = None;
                intact = false;
            }
        }
        Ok(intact)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        for table in &mut self.tables {
            table.applied = None;
            // "add" first makes the delete succeed whether or not the table exists; upstream's table goes too.
            let mut tx = Transaction::new(table.family, TABLE);
            tx.ops.extend([Op::RemoveOtherTable(ruleset::UPSTREAM_TABLE.into()), Op::AddTable, Op::DeleteTable]);
            self.transport
                .apply(&tx)
                .map_err(|e| DataplaneError::Apply { what: "nftables cleanup".into(), reason: e.to_string() })?;
        }
        Ok(())
    }
}

/// Remove our nftables tables and upstream kube-proxy's, in both families (for the other modes' start-up).
pub fn remove_tables(settings: &ProxySettings) -> Result<(), DataplaneError> {
    let transport: Box<dyn Transport> = match netlink::NetlinkTransport::new() {
        Ok(t) => Box::new(t),
        Err(_) => Box::new(transport::NftCommand),
    };
    NftablesDataplane::new(settings.clone(), transport, &IpFamily::ALL).cleanup()
}

#[cfg(test)]
mod kernel_tests;
