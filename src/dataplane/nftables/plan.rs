//! Turning desired state into a transaction: a full rebuild, or a partial one that touches only the service
//! ports that changed. What was applied is remembered per port (the port itself and its index blocks) so the
//! old objects can be re-rendered and diffed instead of being stored or read back from the kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::ir::*;
use super::ruleset::{
    BlockAllocator, BlockOwner, FamilyConfig, NODEPORT_IPS, PortObjects, SetName, Shared, TABLE, UPSTREAM_TABLE,
};
use crate::core::{FamilyState, ServicePort, ServicePortName};

/// A block of indexes in the shared endpoint maps, sized to a power of two so small changes fit in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    offset: u32,
    capacity: u32,
}

/// Hands out blocks of the 32-bit index space, reusing freed blocks of the same size.
#[derive(Debug, Default)]
struct IndexAllocator {
    next: u32,
    free: HashMap<u32, Vec<u32>>,
}

impl IndexAllocator {
    fn alloc(&mut self, capacity: u32) -> Block {
        let offset = match self.free.get_mut(&capacity).and_then(Vec::pop) {
            Some(offset) => offset,
            None => {
                let offset = self.next;
                self.next = self.next.checked_add(capacity).expect("endpoint index space exhausted");
                offset
            }
        };
        Block { offset, capacity }
    }

    fn release(&mut self, block: Block) {
        self.free.entry(block.capacity).or_default().push(block.offset);
    }
}

/// The index blocks of a port's two dispatch chains (cluster, local).
type Blocks = [Option<Block>; 2];

/// Replays the blocks a port had when it was applied, or assigns new ones.
struct PortBlocks<'a> {
    old: Blocks,
    new: Blocks,
    alloc: Option<&'a mut IndexAllocator>,
}

impl BlockAllocator for PortBlocks<'_> {
    fn block(&mut self, owner: BlockOwner, n: u32) -> u32 {
        let block = match (self.old[owner as usize], &mut self.alloc) {
            (Some(b), _) if b.capacity >= n => b,
            (_, Some(alloc)) => alloc.alloc(n.next_power_of_two()),
            (None, None) => unreachable!("replaying a port that had no block for {owner:?}"),
            (Some(b), None) => b,
        };
        self.new[owner as usize] = Some(block);
        block.offset
    }
}

#[derive(Debug)]
struct AppliedPort {
    port: Arc<ServicePort>,
    blocks: Blocks,
}

/// What the kernel holds for one family's table, as far as we know.
#[derive(Debug)]
pub struct Applied {
    pub config: FamilyConfig,
    ports: HashMap<ServicePortName, AppliedPort>,
    shared: HashMap<Shared, u32>,
    /// Endpoint maps that exist (they are made when first used and live as long as the table).
    maps: BTreeSet<String>,
    nodeport_ips: Vec<IpAddr>,
    alloc: IndexAllocator,
}

/// Elements grouped per set, to batch them into few operations.
#[derive(Default)]
struct ElementOps {
    add: BTreeMap<SetName, Vec<Element>>,
    delete: BTreeMap<SetName, Vec<Vec<Value>>>,
}

impl ElementOps {
    fn into_ops(self) -> (Vec<Op>, Vec<Op>) {
        let deletes =
            self.delete.into_iter().map(|(set, keys)| Op::DeleteElements { set: set.into_owned(), keys }).collect();
        let adds =
            self.add.into_iter().map(|(set, elements)| Op::AddElements { set: set.into_owned(), elements }).collect();
        (deletes, adds)
    }
}

fn render(config: &FamilyConfig, port: &ServicePort, blocks: &mut PortBlocks) -> PortObjects {
    config.port_objects(port, blocks)
}

/// Replace the whole table atomically: there is no moment without rules, and conntrack entries of established
/// connections are untouched. The operations are handed to `emit` one service port at a time and never held
/// together: at 10,000 services they would be the largest thing the proxy allocates.
pub fn full(
    config: &FamilyConfig,
    desired: &FamilyState,
    nodeport_ips: Vec<IpAddr>,
    emit: &mut dyn FnMut(Op),
) -> Applied {
    // Upstream's table goes in the same transaction that installs ours: no moment with both or neither.
    emit(Op::RemoveOtherTable(UPSTREAM_TABLE.into()));
    for op in [Op::AddTable, Op::DeleteTable, Op::AddTable].into_iter().chain(config.skeleton()) {
        emit(op);
    }
    if !nodeport_ips.is_empty() {
        emit(Op::AddElements { set: NODEPORT_IPS.into(), elements: config.nodeport_ip_elements(&nodeport_ips) });
    }
    let mut applied = Applied {
        config: config.clone(),
        ports: HashMap::with_capacity(desired.ports.len()),
        shared: HashMap::new(),
        maps: BTreeSet::new(),
        nodeport_ips,
        alloc: IndexAllocator::default(),
    };
    let mut names: Vec<&ServicePortName> = desired.ports.keys().collect();
    names.sort();
    for name in names {
        let port = &desired.ports[name];
        let mut blocks = PortBlocks { old: [None; 2], new: [None; 2], alloc: Some(&mut applied.alloc) };
        let objects = render(config, port, &mut blocks);
        let blocks = blocks.new;
        for map in objects.maps {
            if applied.maps.insert(map.name.clone()) {
                emit(Op::AddSet(map));
            }
        }
        objects.sets.into_iter().for_each(|set| emit(Op::AddSet(set)));
        for (chain, _) in &objects.chains {
            emit(Op::AddChain { name: chain.clone(), base: None });
        }
        for (chain, rules) in objects.chains {
            for rule in rules {
                emit(Op::AddRule { chain: chain.clone(), rule });
            }
        }
        let mut elements = ElementOps::default();
        for (set, element) in objects.elements {
            elements.add.entry(set).or_default().push(element);
        }
        for shared in objects.shared {
            let count = applied.shared.entry(shared).or_insert(0);
            *count += 1;
            if *count == 1 {
                let (set, element) = shared.element();
                elements.add.entry(set.into()).or_default().push(element);
            }
        }
        elements.into_ops().1.into_iter().for_each(&mut *emit);
        applied.ports.insert(name.clone(), AppliedPort { port: port.clone(), blocks });
    }
    applied
}

/// [`full`], collected into one transaction (for tests and the `nft -f` transport).
pub fn full_transaction(
    config: &FamilyConfig,
    desired: &FamilyState,
    nodeport_ips: Vec<IpAddr>,
) -> (Transaction, Applied) {
    let mut tx = Transaction::new(config.family, TABLE);
    let applied = full(config, desired, nodeport_ips, &mut |op| tx.ops.push(op));
    (tx, applied)
}

/// The phases of a partial transaction, in the order the kernel needs them (objects exist before they are
/// referenced, and are unreferenced before they are deleted).
#[derive(Default)]
struct Phases {
    add_sets: Vec<Op>,
    add_chains: Vec<Op>,
    flush_chains: Vec<Op>,
    delete_sets: Vec<Op>,
    readd_sets: Vec<Op>,
    add_rules: Vec<Op>,
    elements: ElementOps,
    delete_chains: Vec<Op>,
}

/// Change only what differs for `changed` ports (and the node port addresses). Updates `applied` as if the
/// transaction succeeds; if it fails, the caller must forget `applied` and do a full sync.
pub fn partial(
    applied: &mut Applied,
    desired: &FamilyState,
    changed: &BTreeSet<ServicePortName>,
    nodeport_ips: Vec<IpAddr>,
) -> Transaction {
    let config = applied.config.clone();
    let mut ph = Phases::default();
    let mut released = Vec::new();
    for name in changed {
        let old = applied.ports.remove(name);
        let new = desired.ports.get(name);
        if let (Some(o), Some(n)) = (&old, new)
            && Arc::ptr_eq(&o.port, n)
        {
            applied.ports.insert(name.clone(), old.unwrap());
            continue;
        }
        let old_objects = old.as_ref().map(|o| {
            let mut replay = PortBlocks { old: o.blocks, new: [None; 2], alloc: None };
            render(&config, &o.port, &mut replay)
        });
        let new_objects = new.map(|n| {
            let old_blocks = old.as_ref().map_or([None; 2], |o| o.blocks);
            let mut blocks = PortBlocks { old: old_blocks, new: [None; 2], alloc: Some(&mut applied.alloc) };
            let objects = render(&config, n, &mut blocks);
            (objects, blocks.new)
        });
        if let Some(o) = &old {
            let kept: Vec<Block> =
                new_objects.as_ref().map(|(_, b)| b.iter().flatten().copied().collect()).unwrap_or_default();
            released.extend(o.blocks.iter().flatten().filter(|b| !kept.contains(b)).copied());
        }
        let (mut new_objects, new_blocks) = match new_objects {
            Some((objects, blocks)) => (objects, Some(blocks)),
            None => (PortObjects::default(), None),
        };
        for map in std::mem::take(&mut new_objects.maps) {
            if applied.maps.insert(map.name.clone()) {
                ph.add_sets.push(Op::AddSet(map));
            }
        }
        diff_port(&mut ph, &mut applied.shared, old_objects.unwrap_or_default(), new_objects);
        if let (Some(n), Some(blocks)) = (new, new_blocks) {
            applied.ports.insert(name.clone(), AppliedPort { port: n.clone(), blocks });
        }
    }
    for block in released {
        applied.alloc.release(block);
    }
    if nodeport_ips != applied.nodeport_ips {
        let old: BTreeSet<&IpAddr> = applied.nodeport_ips.iter().collect();
        let new: BTreeSet<&IpAddr> = nodeport_ips.iter().collect();
        let gone: Vec<IpAddr> = old.difference(&new).map(|ip| **ip).collect();
        let added: Vec<IpAddr> = new.difference(&old).map(|ip| **ip).collect();
        for e in config.nodeport_ip_elements(&gone) {
            ph.elements.delete.entry(NODEPORT_IPS.into()).or_default().push(e.key);
        }
        ph.elements.add.entry(NODEPORT_IPS.into()).or_default().extend(config.nodeport_ip_elements(&added));
        applied.nodeport_ips = nodeport_ips;
    }
    let mut tx = Transaction::new(config.family, TABLE);
    let (element_deletes, element_adds) = ph.elements.into_ops();
    for phase in [
        ph.add_sets,
        ph.add_chains,
        ph.flush_chains,
        ph.delete_sets,
        ph.readd_sets,
        ph.add_rules,
        element_deletes,
        element_adds,
        ph.delete_chains,
    ] {
        tx.ops.extend(phase);
    }
    tx.ops.retain(|op| !matches!(op, Op::AddElements { elements, .. } if elements.is_empty()));
    tx
}

fn diff_port(ph: &mut Phases, shared: &mut HashMap<Shared, u32>, old: PortObjects, new: PortObjects) {
    // Sets: a set whose definition changed is deleted and re-added, so every chain using it is rewritten.
    let old_sets: HashMap<&str, &SetDef> = old.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_sets: HashMap<&str, &SetDef> = new.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut replaced_sets = BTreeSet::new();
    for set in &new.sets {
        match old_sets.get(set.name.as_str()) {
            None => ph.add_sets.push(Op::AddSet(set.clone())),
            Some(old) if *old != set => {
                replaced_sets.insert(set.name.clone());
                ph.delete_sets.push(Op::DeleteSet(set.name.clone()));
                ph.readd_sets.push(Op::AddSet(set.clone()));
            }
            Some(_) => {}
        }
    }
    let uses_replaced = |rules: &[Rule]| {
        rules.iter().flatten().any(|s| match s {
            Stmt::Lookup { set, .. } | Stmt::Update { set, .. } => replaced_sets.contains(set),
            _ => false,
        })
    };
    let old_chains: HashMap<&str, &Vec<Rule>> = old.chains.iter().map(|(n, r)| (n.as_str(), r)).collect();
    let new_names: BTreeSet<&str> = new.chains.iter().map(|(n, _)| n.as_str()).collect();
    for (name, rules) in &new.chains {
        match old_chains.get(name.as_str()) {
            None => ph.add_chains.push(Op::AddChain { name: name.clone(), base: None }),
            Some(old_rules) if *old_rules == rules && !uses_replaced(rules) => continue,
            Some(_) => ph.flush_chains.push(Op::FlushChain(name.clone())),
        }
        ph.add_rules.extend(rules.iter().map(|r| Op::AddRule { chain: name.clone(), rule: r.clone() }));
    }
    for (name, _) in &old.chains {
        if !new_names.contains(name.as_str()) {
            ph.flush_chains.push(Op::FlushChain(name.clone()));
            ph.delete_chains.push(Op::DeleteChain(name.clone()));
        }
    }
    for set in &old.sets {
        if !new_sets.contains_key(set.name.as_str()) {
            ph.delete_sets.push(Op::DeleteSet(set.name.clone()));
        }
    }

    // Elements owned by this port: keyed by (set, key); changed data is a delete plus an add.
    let old_elements: HashMap<(&str, &Vec<Value>), &Option<ElemData>> =
        old.elements.iter().map(|(s, e)| ((s.as_ref(), &e.key), &e.data)).collect();
    let new_keys: BTreeSet<(&str, &Vec<Value>)> = new.elements.iter().map(|(s, e)| (s.as_ref(), &e.key)).collect();
    for (set, e) in &new.elements {
        match old_elements.get(&(set.as_ref(), &e.key)) {
            Some(data) if **data == e.data => continue,
            Some(_) => ph.elements.delete.entry(set.clone()).or_default().push(e.key.clone()),
            None => {}
        }
        ph.elements.add.entry(set.clone()).or_default().push(e.clone());
    }
    for (set, e) in &old.elements {
        if !new_keys.contains(&(set.as_ref(), &e.key)) {
            ph.elements.delete.entry(set.clone()).or_default().push(e.key.clone());
        }
    }

    // Shared elements: reference-counted across ports.
    for item in new.shared {
        let count = shared.entry(item).or_insert(0);
        *count += 1;
        if *count == 1 {
            let (set, element) = item.element();
            ph.elements.add.entry(set.into()).or_default().push(element);
        }
    }
    for item in old.shared {
        let count = shared.get_mut(&item).expect("shared element was counted when applied");
        *count -= 1;
        if *count == 0 {
            shared.remove(&item);
            let (set, element) = item.element();
            ph.elements.delete.entry(set.into()).or_default().push(element.key);
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
