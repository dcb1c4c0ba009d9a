//! `iptables-restore --noflush` inputs: a full one that rewrites every chain of ours (and removes leftovers), and
//! a partial one that touches only what changed for the changed service ports. Pure: the kernel's state comes in
//! as parsed `iptables-save` output (full) or as what we applied before (partial).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write;

use sha2::{Digest, Sha256};

use super::cleanup::plan_table;
use super::layout::Table;
use super::rules::{PortRules, RulesConfig, SharedRule};
use super::save;
use crate::core::{FamilyState, ServicePortName};

/// What one service port has in the kernel, as we wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AppliedPort {
    /// Its rules in shared chains, kept verbatim: removing one is `-D CHAIN <spec>`.
    shared: Vec<SharedRule>,
    /// Its own chains with a hash of their rules: an unchanged chain is not rewritten.
    chains: Vec<(String, u64)>,
}

impl AppliedPort {
    fn of(rules: PortRules) -> AppliedPort {
        let chains = rules.chains.iter().map(|(name, r)| (name.clone(), rules_hash(r))).collect();
        AppliedPort { shared: rules.shared, chains }
    }
}

/// A digest of a chain's rules. It is also written into the kernel, as a comment on the chain's first rule, so
/// that a full sync can tell which chains already hold exactly what they should (after a restart, say) and leave
/// them alone: on the nft backend, flushing and refilling every chain is what makes a full sync over existing
/// rules take many times longer than loading them into an empty kernel.
fn rules_hash(rules: &[String]) -> u64 {
    let mut h = Sha256::new();
    for rule in rules {
        h.update(rule.as_bytes());
        h.update(b"\n");
    }
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

const HASH_MARK: &str = "kpr:";

/// Append a per-service chain with its digest on its first rule.
fn append_chain(input: &mut TableInput, chain: &str, rules: &[String], hash: u64) {
    for (i, spec) in rules.iter().enumerate() {
        if i == 0 {
            let _ = writeln!(input.rules, "-A {chain} -m comment --comment \"{HASH_MARK}{hash:016x}\" {spec}");
        } else {
            input.append(chain, spec);
        }
    }
}

/// The digest and rule count of every chain in a saved table, as [`append_chain`] wrote them.
fn saved_chains(saved: &[save::Table]) -> HashMap<&str, (Option<u64>, usize)> {
    let mut out: HashMap<&str, (Option<u64>, usize)> = HashMap::new();
    let Some(nat) = saved.iter().find(|t| t.name == Table::Nat.name()) else { return out };
    for rule in &nat.rules {
        let entry = out.entry(rule.chain.as_str()).or_insert((None, 0));
        if entry.1 == 0 {
            // iptables-save moves addresses and protocol ahead of the matches: look for the comment anywhere.
            let spec = rule.spec.as_str();
            entry.0 = ["--comment \"", "--comment "]
                .iter()
                .find_map(|p| spec.find(&format!("{p}{HASH_MARK}")).map(|at| at + p.len() + HASH_MARK.len()))
                .and_then(|at| spec.get(at..at + 16))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        }
        entry.1 += 1;
    }
    out
}

/// What the kernel holds for one family, as we wrote it.
#[derive(Clone, Debug)]
pub struct Applied {
    pub config: RulesConfig,
    ports: HashMap<ServicePortName, AppliedPort>,
}

impl Applied {
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }
}

/// One table's part of an input, in the order iptables-restore needs: chains declared (which creates or flushes
/// them) before any rule names them, rules deleted before chains are.
#[derive(Default)]
struct TableInput {
    declare: String,
    delete_rules: String,
    rules: String,
    delete_chains: String,
}

impl TableInput {
    fn declare(&mut self, chain: &str) {
        let _ = writeln!(self.declare, ":{chain} - [0:0]");
    }

    fn append(&mut self, chain: &str, spec: &str) {
        let _ = writeln!(self.rules, "-A {chain} {spec}");
    }

    fn is_empty(&self) -> bool {
        self.declare.is_empty()
            && self.delete_rules.is_empty()
            && self.rules.is_empty()
            && self.delete_chains.is_empty()
    }

    fn write_to(&self, table: Table, out: &mut String) {
        let _ = writeln!(out, "*{}", table.name());
        for part in [&self.declare, &self.delete_rules, &self.rules, &self.delete_chains] {
            out.push_str(part);
        }
        out.push_str("COMMIT\n");
    }
}

fn index(table: Table) -> usize {
    table as usize
}

/// A sync's inputs, applied in order. With batching (the nft backend), chains nothing refers to yet, or any
/// more, are created or deleted in inputs of their own, a batch of service ports each, around the one input that
/// switches traffic atomically: `iptables-nft-restore --noflush` (1.8.9) takes time quadratic in the size of one
/// input (1,000 services: 9.6 s in one input, 1.3 s in batches of 100; a partial sync removing 5,000 services in
/// one input: 288 s).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Per-service chains that do not exist yet, with their rules. Nothing refers to them until `main`.
    pub new_chains: Vec<String>,
    /// Everything else, in one input: the moment the new rules take effect, atomically.
    pub main: String,
    /// Per-service chains `main` left unreferenced: flushed and deleted.
    pub dead_chains: Vec<String>,
}

impl Inputs {
    /// Every input in the order it must be applied.
    pub fn in_order(&self) -> impl Iterator<Item = &str> {
        self.new_chains
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.main.as_str()))
            .chain(self.dead_chains.iter().map(String::as_str))
    }
}

/// Collects per-service chains into nat inputs of `size` service ports each.
struct Batches {
    size: usize,
    current: TableInput,
    ports: usize,
    done: Vec<String>,
}

impl Batches {
    fn new(size: usize) -> Batches {
        Batches { size, current: TableInput::default(), ports: 0, done: Vec::new() }
    }

    /// Close a service port's share; `used` says whether it added anything.
    fn end_port(&mut self, used: bool) {
        if !used {
            return;
        }
        self.ports += 1;
        if self.ports == self.size {
            self.cut();
        }
    }

    fn cut(&mut self) {
        if self.ports > 0 {
            let mut text = String::new();
            std::mem::take(&mut self.current).write_to(Table::Nat, &mut text);
            self.done.push(text);
            self.ports = 0;
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.cut();
        self.done
    }
}

/// The input that makes the kernel hold exactly our rules for `ports`, whatever it held before (`saved`, all
/// tables of this backend and family): every chain of ours is declared (so flushed) and refilled — except
/// per-service chains whose saved digest and rule count show they already hold their rules — the jumps
/// from the built-in chains are replaced, and kube-proxy chains we no longer need (ours, or upstream's from a
/// previous owner of the node) are deleted. One input, so one atomic change per table; except that with
/// `batch`, chains that do not exist yet are created beforehand in batches of that many service ports (see
/// [`Inputs`]). (Leftover chains are deleted in the main input: they may refer to each other across services.)
pub fn full(
    config: &RulesConfig,
    ports: &FamilyState,
    saved: &[save::Table],
    batch: Option<usize>,
) -> (Inputs, Applied) {
    let mut tables: [TableInput; 3] = Default::default();
    let mut ours: [HashSet<String>; 3] = Default::default();
    for table in Table::ALL {
        for chain in table.static_chains() {
            tables[index(table)].declare(chain);
            ours[index(table)].insert(chain.to_string());
        }
    }
    for (table, chain, spec) in config.static_rules() {
        tables[index(table)].append(chain, &spec);
    }
    let current = saved_chains(saved);
    let existing: HashSet<&str> = saved
        .iter()
        .filter(|t| t.name == Table::Nat.name())
        .flat_map(|t| t.chains.iter().map(|c| c.name.as_str()))
        .collect();
    let mut new_chains = batch.map(Batches::new);
    if let Some(b) = new_chains.as_mut().filter(|_| !existing.contains(super::layout::MARK_MASQ)) {
        // New chains jump to it; the main input fills it.
        b.current.declare(super::layout::MARK_MASQ);
    }
    let mut applied = HashMap::with_capacity(ports.ports.len());
    let mut sorted: Vec<_> = ports.ports.iter().collect();
    // A stable order keeps the input reproducible (and diffable when debugging).
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (name, port) in sorted {
        let rules = config.port_rules(port);
        for r in &rules.shared {
            tables[index(r.table)].append(r.chain, &r.spec);
        }
        let mut in_batch = false;
        for (chain, chain_rules) in &rules.chains {
            ours[index(Table::Nat)].insert(chain.clone());
            let hash = rules_hash(chain_rules);
            if current.get(chain.as_str()) == Some(&(Some(hash), chain_rules.len())) {
                continue;
            }
            let input = match new_chains.as_mut().filter(|_| !existing.contains(chain.as_str())) {
                Some(b) => {
                    in_batch = true;
                    &mut b.current
                }
                None => &mut tables[index(Table::Nat)],
            };
            input.declare(chain);
            append_chain(input, chain, chain_rules, hash);
        }
        if let Some(b) = new_chains.as_mut() {
            b.end_port(in_batch);
        }
        applied.insert(name.clone(), AppliedPort::of(rules));
    }
    for spec in config.services_tail() {
        tables[index(Table::Nat)].append(super::layout::SERVICES, &spec);
    }
    for table in Table::ALL {
        let input = &mut tables[index(table)];
        if let Some(saved) = saved.iter().find(|t| t.name == table.name()) {
            remove_leftovers(input, saved, &ours[index(table)], table);
        }
        // Prepending in reverse keeps the jumps in their listed order at the top of each built-in chain.
        for jump in RulesConfig::jumps().iter().rev().filter(|j| j.table == table) {
            let _ = writeln!(input.rules, "-I {} 1 {}", jump.builtin, jump.spec);
        }
    }
    let mut text = String::new();
    for table in Table::ALL {
        tables[index(table)].write_to(table, &mut text);
    }
    let inputs =
        Inputs { new_chains: new_chains.map(Batches::finish).unwrap_or_default(), main: text, dead_chains: Vec::new() };
    (inputs, Applied { config: config.clone(), ports: applied })
}

/// Delete the built-in chains' jumps to kube-proxy chains (ours are re-added), and the kube-proxy chains that
/// are not ours any more. Chains someone else still jumps to stay, as [`plan_table`] decides.
fn remove_leftovers(input: &mut TableInput, saved: &save::Table, ours: &HashSet<String>, table: Table) {
    let plan = plan_table(saved);
    let doomed: HashSet<&str> = plan.chains.iter().map(String::as_str).collect();
    let builtin: HashSet<&str> = saved.chains.iter().filter(|c| c.builtin).map(|c| c.name.as_str()).collect();
    for rule in &saved.rules {
        let to_kube = rule.target.as_deref().is_some_and(|t| doomed.contains(t) || table.static_chains().contains(&t));
        if builtin.contains(rule.chain.as_str()) && to_kube {
            let _ = writeln!(input.delete_rules, "-D {} {}", rule.chain, rule.spec);
        }
    }
    for chain in plan.chains.iter().filter(|c| !ours.contains(*c)) {
        input.declare(chain);
        let _ = writeln!(input.delete_chains, "-X {chain}");
    }
}

/// The input that brings the service ports named in `changed` from what `applied` says the kernel has to
/// `ports`, touching nothing else; `applied` is updated as if it succeeded (the caller forgets it if not).
/// `None` when nothing needs to change.
pub fn partial(
    applied: &mut Applied,
    ports: &FamilyState,
    changed: &BTreeSet<ServicePortName>,
    batch: Option<usize>,
) -> Option<Inputs> {
    // A change of one batch or less goes in one input: every input costs a fetch of the table on the nft
    // backend, so splitting a small change would make it slower, not faster.
    let batch = batch.filter(|b| changed.len() > *b);
    let mut tables: [TableInput; 3] = Default::default();
    let mut new_chains = batch.map(Batches::new);
    let mut dead_chains = batch.map(Batches::new);
    for name in changed {
        let new = ports.ports.get(name).map(|p| applied.config.port_rules(p));
        let old = applied.ports.remove(name);
        let old_shared: HashSet<&SharedRule> = old.iter().flat_map(|o| &o.shared).collect();
        let new_shared: HashSet<&SharedRule> = new.iter().flat_map(|n| &n.shared).collect();
        for r in old_shared.difference(&new_shared) {
            let _ = writeln!(tables[index(r.table)].delete_rules, "-D {} {}", r.chain, r.spec);
        }
        for r in new.iter().flat_map(|n| &n.shared).filter(|r| !old_shared.contains(r)) {
            // Inserted at the top: nat KUBE-SERVICES must keep its NodePort rule last.
            let _ = writeln!(tables[index(r.table)].rules, "-I {} 1 {}", r.chain, r.spec);
        }
        let old_chains: HashMap<&str, u64> =
            old.iter().flat_map(|o| &o.chains).map(|(n, h)| (n.as_str(), *h)).collect();
        let nat = &mut tables[index(Table::Nat)];
        let mut kept = HashSet::new();
        let (mut created, mut deleted) = (false, false);
        for (chain, rules) in new.iter().flat_map(|n| &n.chains) {
            kept.insert(chain.as_str());
            let hash = rules_hash(rules);
            let input = match old_chains.get(chain.as_str()) {
                Some(h) if *h == hash => continue,
                Some(_) => &mut *nat,
                None => match new_chains.as_mut() {
                    Some(b) => {
                        created = true;
                        &mut b.current
                    }
                    None => &mut *nat,
                },
            };
            input.declare(chain);
            append_chain(input, chain, rules, hash);
        }
        for chain in old_chains.keys().filter(|c| !kept.contains(*c)) {
            let input = match dead_chains.as_mut() {
                Some(b) => {
                    deleted = true;
                    &mut b.current
                }
                None => &mut *nat,
            };
            input.declare(chain);
            let _ = writeln!(input.delete_chains, "-X {chain}");
        }
        if let Some(b) = new_chains.as_mut() {
            b.end_port(created);
        }
        if let Some(b) = dead_chains.as_mut() {
            b.end_port(deleted);
        }
        if let Some(new) = new {
            applied.ports.insert(name.clone(), AppliedPort::of(new));
        }
    }
    let mut text = String::new();
    for table in Table::ALL {
        if !tables[index(table)].is_empty() {
            tables[index(table)].write_to(table, &mut text);
        }
    }
    let inputs = Inputs {
        new_chains: new_chains.map(Batches::finish).unwrap_or_default(),
        main: text,
        dead_chains: dead_chains.map(Batches::finish).unwrap_or_default(),
    };
    (!inputs.main.is_empty() || !inputs.new_chains.is_empty() || !inputs.dead_chains.is_empty()).then_some(inputs)
}
