//! Removing upstream kube-proxy's iptables chains (iptables, ipvs and userspace modes) and the rules in
//! built-in chains that jump to them, from both backends and both families.
//!
//! Per backend and family: read everything with `*-save` (one call, no `-t`: asking for a table that does not
//! exist would create it in the legacy backend), plan per table, and send one `*-restore --noflush` input that
//! deletes the jumps by their exact saved text, then flushes, then deletes the chains. Flushing every doomed
//! chain before deleting any means the deletes cannot trip over references between kube-proxy's own chains.
//!
//! A kube-proxy chain that a chain of someone else still jumps to (a CNI jumping to KUBE-MARK-MASQ, say) is
//! kept whole, with whatever kube-proxy chains it reaches: deleting it would need us to edit their chain.

use std::collections::BTreeSet;

use super::names::{TABLES, is_kube_proxy_chain};
use super::save::{self, Rule, Table};
use super::{Backend, IptablesError, tool};
use crate::model::IpFamily;

/// What was done in one table of one backend and family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableReport {
    pub backend: Backend,
    pub family: IpFamily,
    /// `nat`, `filter` or `mangle`.
    pub table: String,
    /// kube-proxy chains flushed and deleted.
    pub chains_removed: usize,
    /// Rules deleted from built-in chains (PREROUTING, INPUT, …): the jumps into those chains.
    pub jump_rules_removed: usize,
    /// Rules that were inside the deleted chains.
    pub chain_rules_removed: usize,
    /// kube-proxy chains left in place because a chain that is not kube-proxy's still jumps to them.
    pub chains_kept: Vec<String>,
}

/// What [`remove_kube_proxy_chains`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// One entry per table where kube-proxy chains were found (removed or kept).
    pub tables: Vec<TableReport>,
    /// Backend and family combinations skipped because their `*-save` program is not installed.
    pub absent: Vec<(Backend, IpFamily)>,
}

impl CleanupReport {
    /// Whether anything at all was removed.
    pub fn removed_anything(&self) -> bool {
        self.tables.iter().any(|t| t.chains_removed + t.jump_rules_removed > 0)
    }
}

/// Remove upstream kube-proxy's iptables/ipvs-mode chains, and the jumps to them from built-in chains, from the
/// nat, filter and mangle tables of every installed backend (nft, legacy) and family. Nothing else is touched.
/// Running it again when nothing is left does nothing and succeeds.
///
/// Every backend and family is attempted even after one fails; the first failure is returned (the others are
/// logged). A failure usually means the ruleset changed between reading and writing it (say, upstream
/// kube-proxy is still running): calling again retries from a fresh read.
pub fn remove_kube_proxy_chains() -> Result<CleanupReport, IptablesError> {
    remove_kube_proxy_chains_in(&Backend::ALL)
}

/// [`remove_kube_proxy_chains`] in these backends only (the iptables mode keeps its own backend's chains: they
/// are its rules).
pub fn remove_kube_proxy_chains_in(backends: &[Backend]) -> Result<CleanupReport, IptablesError> {
    let mut report = CleanupReport::default();
    let mut first_error = None;
    for &backend in backends {
        for family in IpFamily::ALL {
            if let Err(e) = clean(backend, family, &mut report) {
                tracing::warn!(?backend, ?family, error = %e, "removing upstream kube-proxy iptables chains failed");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

fn clean(backend: Backend, family: IpFamily, report: &mut CleanupReport) -> Result<(), IptablesError> {
    let save = backend.program(family, "save");
    let Some(out) = tool::run(&[&save], None)? else {
        tracing::debug!(program = %save, "not installed; skipping this iptables backend");
        report.absent.push((backend, family));
        return Ok(());
    };
    let tables = save::parse(&save, &out.success(&[&save])?.stdout)?;
    let plans: Vec<TablePlan> =
        tables.iter().filter(|t| TABLES.contains(&t.name.as_str())).map(plan_table).filter(|p| !p.is_empty()).collect();
    let input = restore_input(&plans);
    if !input.is_empty() {
        let restore = backend.program(family, "restore");
        // --noflush: only what the input names changes. --wait: take the xtables lock (legacy backend) for
        // up to 5 s, as upstream does, rather than racing another writer.
        tool::run_required(&[&restore, "--noflush", "--wait=5"], Some(&input))?;
    }
    for plan in plans {
        if !plan.chains.is_empty() || !plan.jumps.is_empty() {
            tracing::info!(
                ?backend, ?family, table = %plan.table, chains = plan.chains.len(), jump_rules = plan.jumps.len(),
                "removed upstream kube-proxy iptables chains"
            );
        }
        if !plan.kept.is_empty() {
            tracing::warn!(
                ?backend, ?family, table = %plan.table, kept = ?plan.kept,
                "upstream kube-proxy chains left in place: chains of someone else still jump to them"
            );
        }
        report.tables.push(TableReport {
            backend,
            family,
            table: plan.table,
            chains_removed: plan.chains.len(),
            jump_rules_removed: plan.jumps.len(),
            chain_rules_removed: plan.chain_rules,
            chains_kept: plan.kept,
        });
    }
    Ok(())
}

/// What to remove from one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct TablePlan {
    pub table: String,
    /// Rules of built-in chains that jump to a chain being removed, as saved.
    pub jumps: Vec<Rule>,
    /// Chains to flush and delete, in declaration order.
    pub chains: Vec<String>,
    /// How many rules those chains hold.
    pub chain_rules: usize,
    /// kube-proxy chains that must stay because someone else's chain jumps to them.
    pub kept: Vec<String>,
}

impl TablePlan {
    fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty() && self.kept.is_empty()
    }
}

/// Decide what to remove from one saved table.
pub(super) fn plan_table(table: &Table) -> TablePlan {
    let builtin: BTreeSet<&str> = table.chains.iter().filter(|c| c.builtin).map(|c| c.name.as_str()).collect();
    let ours: BTreeSet<&str> = table
        .chains
        .iter()
        .filter(|c| !c.builtin && is_kube_proxy_chain(&table.name, &c.name))
        .map(|c| c.name.as_str())
        .collect();
    // A kube-proxy chain is kept when a rule outside built-in and removed kube-proxy chains jumps to it;
    // keeping it keeps its own jumps alive, so repeat until nothing changes.
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    loop {
        let newly: Vec<&str> = table
            .rules
            .iter()
            .filter_map(|r| {
                let target = r.target.as_deref().filter(|t| ours.contains(t) && !kept.contains(t))?;
                let from = r.chain.as_str();
                let removable_source = builtin.contains(from) || (ours.contains(from) && !kept.contains(from));
                (!removable_source).then_some(target)
            })
            .collect();
        if newly.is_empty() {
            break;
        }
        kept.extend(newly);
    }
    let removed = |chain: &str| ours.contains(chain) && !kept.contains(chain);
    TablePlan {
        table: table.name.clone(),
        jumps: table
            .rules
            .iter()
            .filter(|r| builtin.contains(r.chain.as_str()) && r.target.as_deref().is_some_and(removed))
            .cloned()
            .collect(),
        chains: table.chains.iter().map(|c| c.name.clone()).filter(|c| removed(c)).collect(),
        chain_rules: table.rules.iter().filter(|r| removed(&r.chain)).count(),
        kept: table.chains.iter().map(|c| c.name.clone()).filter(|c| kept.contains(c.as_str())).collect(),
    }
}

/// The `iptables-restore --noflush` input carrying out `plans`: per table, delete the jumps, flush the chains,
/// delete the chains. Empty when there is nothing to remove.
pub(super) fn restore_input(plans: &[TablePlan]) -> String {
    let mut out = String::new();
    for plan in plans.iter().filter(|p| !p.jumps.is_empty() || !p.chains.is_empty()) {
        out.push_str(&format!("*{}\n", plan.table));
        for rule in &plan.jumps {
            out.push_str(&format!("-D {} {}\n", rule.chain, rule.spec));
        }
        for chain in &plan.chains {
            out.push_str(&format!("-F {chain}\n"));
        }
        for chain in &plan.chains {
            out.push_str(&format!("-X {chain}\n"));
        }
        out.push_str("COMMIT\n");
    }
    out
}
