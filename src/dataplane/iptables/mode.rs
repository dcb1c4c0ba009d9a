//! The iptables proxy mode: upstream's KUBE-* layout written with `iptables-restore --noflush` (one process per
//! family and sync, never one per rule), full at start-up, after a failure and when the canaries show a flush;
//! otherwise only the changed service ports' rules and chains.

use super::layout::{CANARY, Table};
use super::restore::{self, Applied};
use super::rules::RulesConfig;
use super::{Backend, IptablesError, save, tool};
use crate::core::{Changes, DesiredState, NodeView};
use crate::dataplane::settings::ProxySettings;
use crate::dataplane::{Dataplane, DataplaneError, Running, SyncKind};
use crate::model::IpFamily;

/// 100 service ports (about 1,100 chains at 10 endpoints each) per input: 1,000 services load in 1.31 s in
/// batches of 100, 1.33 s in batches of 50, 9.6 s in one input (examples/iptables_scale).
const NEW_CHAIN_BATCH: usize = 100;

struct FamilyRules {
    family: IpFamily,
    /// What the kernel holds, or `None` when unknown (start-up, after a failure): the next sync is full.
    applied: Option<Applied>,
}

/// The iptables dataplane, on one backend.
pub struct IptablesDataplane {
    settings: ProxySettings,
    backend: Backend,
    families: Vec<FamilyRules>,
    /// Other modes' leftovers are removed once, after our first successful sync.
    took_over: bool,
}

impl IptablesDataplane {
    pub fn new(settings: ProxySettings, backend: Backend, families: &[IpFamily]) -> Self {
        let families = families.iter().map(|f| FamilyRules { family: *f, applied: None }).collect();
        IptablesDataplane { settings, backend, families, took_over: false }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn config(&self, family: IpFamily, node: &NodeView) -> RulesConfig {
        RulesConfig {
            family,
            masquerade_mark: self.settings.masquerade_mark(),
            masquerade_all: self.settings.masquerade_all,
            local: self.settings.local_traffic(family, node),
            // The iptables mode's default is every local address, as upstream's.
            nodeport_ips: self.settings.nodeport_addresses.addresses(family, node, false),
            node_ips: node.addresses_of(family).collect(),
            drop_invalid: self.settings.drop_invalid_forwarded,
        }
    }

    /// Service ports per batch of new or dead chains: on the nft backend, where one big `--noflush` input costs
    /// time quadratic in its size; the legacy backend rewrites the whole table per input, so one input is cheapest.
    fn batch(&self) -> Option<usize> {
        match self.backend {
            Backend::Nft => Some(NEW_CHAIN_BATCH),
            Backend::Legacy => None,
        }
    }

    fn apply(&self, family: IpFamily, inputs: &restore::Inputs) -> Result<(), IptablesError> {
        for input in inputs.in_order().filter(|i| !i.is_empty()) {
            self.restore(family, input)?;
        }
        Ok(())
    }

    fn restore(&self, family: IpFamily, input: &str) -> Result<(), IptablesError> {
        let program = self.backend.program(family, "restore");
        // --wait: take the xtables lock as upstream does (up to 5 s) so that a CNI plugin writing at the same
        // time is neither starved nor raced. (Upstream also passes --wait-interval, which iptables 1.8.9 ignores.)
        let argv = [program.as_str(), "--noflush", "--wait=5"];
        tool::run_required(&argv, Some(input)).map(|_| ())
    }

    fn read(&self, family: IpFamily) -> Result<Vec<save::Table>, IptablesError> {
        let program = self.backend.program(family, "save");
        // No `-t`: asking the legacy backend for a table that does not exist would create it.
        let out = tool::run_required(&[&program], None)?;
        save::parse(&program, &out.stdout)
    }

    fn sync_family(
        &mut self,
        i: usize,
        desired: &DesiredState,
        changes: &Changes,
        full: bool,
    ) -> Result<SyncKind, IptablesError> {
        let family = self.families[i].family;
        let config = self.config(family, &desired.node);
        let ports = desired.family(family);
        let batch = self.batch();
        if let Some(applied) = self.families[i].applied.as_mut().filter(|a| !full && a.config == config) {
            // `partial` brings `applied` up to date as if the restore succeeds; it is forgotten if not.
            let Some(inputs) = restore::partial(applied, ports, changes.ports(family), batch) else {
                return Ok(SyncKind::Nothing);
            };
            tracing::trace!(?family, ?inputs, "iptables partial restore");
            if let Err(e) = self.apply(family, &inputs) {
                self.families[i].applied = None;
                return Err(e);
            }
            return Ok(SyncKind::Partial);
        }
        self.families[i].applied = None;
        let started = std::time::Instant::now();
        let saved = self.read(family)?;
        let read = started.elapsed();
        let (input, applied) = restore::full(&config, ports, &saved, batch);
        let generated = started.elapsed();
        self.apply(family, &input)?;
        tracing::debug!(
            ?family, ?read, generate = ?(generated - read), restore = ?(started.elapsed() - generated),
            batches = input.new_chains.len(), main_bytes = input.main.len(), "iptables full sync"
        );
        self.families[i].applied = Some(applied);
        Ok(SyncKind::Full)
    }

    /// Whether this family's canaries are all still there.
    fn canaries_present(&self, family: IpFamily) -> Result<bool, DataplaneError> {
        let program = self.backend.command(family);
        for table in Table::ALL {
            let argv = [program.as_str(), "--wait=5", "-t", table.name(), "-n", "-L", CANARY];
            let out = tool::run_installed(&argv, None).map_err(|e| DataplaneError::Unavailable(e.to_string()))?;
            if out.status.success() {
                continue;
            }
            // Exit status 4 is a resource problem, typically the xtables lock held by another writer for longer
            // than --wait: that says nothing about our rules, and must not cost a full rewrite.
            if out.status.code() == Some(4) || out.stderr.contains("xtables lock") {
                return Err(DataplaneError::Unavailable(format!("{program}: {}", out.stderr.trim())));
            }
            tracing::debug!(?family, table = table.name(), stderr = %out.stderr.trim(), "canary chain missing");
            return Ok(false);
        }
        Ok(true)
    }
}

impl Dataplane for IptablesDataplane {
    fn mode(&self) -> &'static str {
        "iptables"
    }

    fn sync(&mut self, desired: &DesiredState, changes: &Changes, full: bool) -> Result<SyncKind, DataplaneError> {
        let mut kind = SyncKind::Nothing;
        for i in 0..self.families.len() {
            let family = self.families[i].family;
            let done = self.sync_family(i, desired, changes, full).map_err(|e| DataplaneError::Apply {
                what: format!("{family:?} iptables-restore ({:?} backend)", self.backend),
                reason: e.to_string(),
            })?;
            kind = match (kind, done) {
                (SyncKind::Full, _) | (_, SyncKind::Full) => SyncKind::Full,
                (SyncKind::Partial, _) | (_, SyncKind::Partial) => SyncKind::Partial,
                _ => SyncKind::Nothing,
            };
        }
        if !self.took_over {
            self.took_over = true;
            let started = std::time::Instant::now();
            crate::dataplane::remove_other_modes_leftovers(Running::Iptables(self.backend), &self.settings);
            tracing::debug!(took = ?started.elapsed(), "other modes' leftovers removed");
        }
        Ok(kind)
    }

    fn verify(&mut self) -> Result<bool, DataplaneError> {
        let mut intact = true;
        for i in 0..self.families.len() {
            if self.families[i].applied.is_none() {
                continue;
            }
            if !self.canaries_present(self.families[i].family)? {
                self.families[i].applied = None;
                intact = false;
            }
        }
        Ok(intact)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        for f in &mut self.families {
            f.applied = None;
        }
        super::remove_kube_proxy_chains_in(&Backend::ALL)
            .map(|_| ())
            .map_err(|e| DataplaneError::Apply { what: "iptables cleanup".into(), reason: e.to_string() })
    }
}
