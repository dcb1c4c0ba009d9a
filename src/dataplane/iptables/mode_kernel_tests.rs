//! Real kernel: partial restore inputs applied one after another leave the kernel exactly as a full restore of the
//! final state does, and a full restore over rules that are already right rewrites no per-service chain, on both
//! backends (the scenarios in tests/iptables.rs check what the rules do to packets).

use std::collections::{BTreeMap, BTreeSet};

use super::Backend;
use super::restore;
use super::rules_tests::config;
use super::save;
use super::tool::run_required;
use crate::core::FamilyState;
use crate::core::fixtures::{port, state};
use crate::lab::root_or_skip;
use crate::model::IpFamily;
use crate::testutil::enter_new_netns;

fn apply(backend: Backend, input: &str) {
    run_required(&[&backend.program(IpFamily::V4, "restore"), "--noflush", "--wait=5"], Some(input))
        .unwrap_or_else(|e| panic!("{backend:?}: {e}\n{input}"));
}

fn apply_all(backend: Backend, inputs: &restore::Inputs) {
    for input in inputs.in_order().filter(|i| !i.is_empty()) {
        apply(backend, input);
    }
}

fn read(backend: Backend) -> Vec<save::Table> {
    let program = backend.program(IpFamily::V4, "save");
    save::parse(&program, &run_required(&[&program], None).unwrap().stdout).unwrap()
}

/// Table → chain → rules. Rules of the shared chains are sorted (partial syncs insert at the top, full syncs
/// append in name order: both are correct); per-service chains keep their order.
fn shape(tables: &[save::Table]) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for t in tables {
        let chains = out.entry(t.name.clone()).or_default();
        for c in &t.chains {
            chains.entry(c.name.clone()).or_default();
        }
        for r in &t.rules {
            chains.entry(r.chain.clone()).or_default().push(r.spec.clone());
        }
        for (name, rules) in chains.iter_mut() {
            if !name.starts_with("KUBE-S") || name == "KUBE-SERVICES" {
                rules.sort();
            }
        }
    }
    out
}

fn last_services_rule(tables: &[save::Table]) -> String {
    let nat = tables.iter().find(|t| t.name == "nat").unwrap();
    nat.rules.iter().rfind(|r| r.chain == "KUBE-SERVICES").unwrap().spec.clone()
}

#[test]
fn partial_syncs_converge_to_the_full_sync_of_the_same_state() {
    if !root_or_skip("partial_syncs_converge_to_the_full_sync_of_the_same_state") {
        return;
    }
    std::thread::spawn(|| {
        enter_new_netns();
        let mut with_node_port = port("c", "10.96.0.12", &["10.244.3.1"]);
        with_node_port.node_port = Some(30012);
        let mut sticky = port("b", "10.96.0.11", &["10.244.2.1", "10.244.2.2"]);
        sticky.session_affinity_timeout = Some(60);
        let states: Vec<FamilyState> = vec![
            state(&[port("a", "10.96.0.10", &["10.244.1.1", "10.244.1.2"]), port("b", "10.96.0.11", &["10.244.2.1"])]),
            state(&[port("a", "10.96.0.10", &["10.244.1.1", "10.244.1.3"]), sticky, with_node_port.clone()]),
            state(&[port("a", "10.96.0.10", &[]), with_node_port]),
        ];
        for backend in Backend::ALL {
            // Batches of one service port, so that the first state's chains come in several inputs.
            let (input, mut applied) = restore::full(&config(), &states[0], &read(backend), Some(1));
            assert_eq!(input.new_chains.len(), 2, "one batch per service port");
            apply_all(backend, &input);
            for (before, after) in states.iter().zip(&states[1..]) {
                let changed: BTreeSet<_> = before.ports.keys().chain(after.ports.keys()).cloned().collect();
                // Batches of one service port here too (the changes are bigger than one): new chains before, dead
                // ones after the main input.
                let input = restore::partial(&mut applied, after, &changed, Some(1)).expect("something changed");
                apply_all(backend, &input);
            }
            let partial = read(backend);
            assert!(last_services_rule(&partial).ends_with("-j KUBE-NODEPORTS"), "{backend:?}: NodePorts last");
            let (input, _) = restore::full(&config(), states.last().unwrap(), &partial, None);
            apply(backend, &input.main);
            let full = read(backend);
            assert_eq!(shape(&partial), shape(&full), "{backend:?}");
            // A full sync over rules that are already right (a restart) leaves the per-service chains alone.
            let (input, _) = restore::full(&config(), states.last().unwrap(), &full, Some(1));
            assert!(input.new_chains.is_empty(), "{backend:?}: nothing is new");
            let input = input.main;
            assert!(!input.contains(":KUBE-SVC-") && !input.contains(":KUBE-SEP-"), "{backend:?}:\n{input}");
            apply(backend, &input);
            assert_eq!(shape(&read(backend)), shape(&full), "{backend:?}");
        }
    })
    .join()
    .unwrap();
}
