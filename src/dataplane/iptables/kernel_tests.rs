//! Real kernel: upstream-shaped rulesets (the captured fixtures) loaded with iptables-restore into both backends
//! and both families of a fresh network namespace, next to the kubelet's, Docker's and a CNI's chains and
//! foreign ipsets; then the cleaners run, twice.

use std::collections::{BTreeMap, BTreeSet};

use super::cleanup_tests::{IPTABLES_V4, IPTABLES_V6, IPVS_V4, IPVS_V6};
use super::save::{self, Table};
use super::tool::run_required;
use super::{Backend, InterfaceOutcome, VirtualServers, remove_ipvs_leftovers, remove_kube_proxy_chains};
use crate::lab::root_or_skip;
use crate::model::IpFamily;
use crate::testutil::enter_new_netns;

fn load(backend: Backend, family: IpFamily, rules: &str) {
    run_required(&[&backend.program(family, "restore"), "--wait=5"], Some(rules))
        .unwrap_or_else(|e| panic!("loading the fixture into {backend:?} {family:?}: {e}"));
}

fn saved(backend: Backend, family: IpFamily) -> Vec<Table> {
    let program = backend.program(family, "save");
    save::parse(&program, &run_required(&[&program], None).unwrap().stdout).unwrap()
}

/// Per table (of the three kube-proxy uses): the chains, and each chain's rules in order.
type Shape = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn shape(tables: &[Table]) -> Shape {
    let mut out = Shape::new();
    for t in tables.iter().filter(|t| ["nat", "filter", "mangle"].contains(&t.name.as_str())) {
        let chains = out.entry(t.name.clone()).or_default();
        for c in &t.chains {
            chains.entry(c.name.clone()).or_default();
        }
        for r in &t.rules {
            chains.entry(r.chain.clone()).or_default().push(r.spec.clone());
        }
    }
    out
}

/// The fixture minus the chains `gone` says are kube-proxy's, their rules, and every rule jumping to them:
/// written independently of the code under test, from the fixture files' own description.
fn expected(fixture: &str, gone: impl Fn(&str, &str) -> bool) -> Shape {
    let mut shape = shape(&save::parse("fixture", fixture).unwrap());
    for (table, chains) in &mut shape {
        chains.retain(|chain, _| !gone(table, chain));
        for rules in chains.values_mut() {
            rules.retain(|spec| save::jump_target(spec).is_none_or(|target| !gone(table, &target)));
        }
    }
    shape
}

/// kube-proxy's chains in the fixtures, as the fixture headers list them.
fn iptables_mode_chain(table: &str, chain: &str) -> bool {
    match table {
        "filter" => [
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-FORWARD",
            "KUBE-NODEPORTS",
            "KUBE-PROXY-CANARY",
            "KUBE-PROXY-FIREWALL",
            "KUBE-SERVICES",
        ]
        .contains(&chain),
        "nat" => chain.starts_with("KUBE-") && !["KUBE-MARK-DROP", "KUBE-KUBELET-CANARY"].contains(&chain),
        _ => chain == "KUBE-PROXY-CANARY",
    }
}

fn ipvs_mode_chain(table: &str, chain: &str) -> bool {
    match table {
        "filter" => [
            "KUBE-FORWARD",
            "KUBE-IPVS-FILTER",
            "KUBE-IPVS-OUT-FILTER",
            "KUBE-NODE-PORT",
            "KUBE-PROXY-FIREWALL",
            "KUBE-SOURCE-RANGES-FIREWALL",
        ]
        .contains(&chain),
        // Includes the old IPVS mode's KUBE-FIREWALL, which lives in nat (the kubelet's is in filter).
        "nat" => chain.starts_with("KUBE-") && !["KUBE-MARK-DROP", "KUBE-KUBELET-CANARY"].contains(&chain),
        _ => false,
    }
}

const FAMILIES: [(IpFamily, &str, &str); 2] =
    [(IpFamily::V4, IPTABLES_V4, IPVS_V4), (IpFamily::V6, IPTABLES_V6, IPVS_V6)];

#[test]
fn iptables_mode_leftovers_go_and_everything_else_stays() {
    if !root_or_skip("iptables_mode_leftovers_go_and_everything_else_stays") {
        return;
    }
    enter_new_netns();
    for backend in Backend::ALL {
        for (family, fixture, _) in FAMILIES {
            load(backend, family, fixture);
        }
    }

    let report = remove_kube_proxy_chains().expect("cleanup");
    assert!(report.absent.is_empty(), "{report:?}");
    assert_eq!(report.tables.len(), 2 * 2 * 3, "{report:?}");
    let v4_filter = report
        .tables
        .iter()
        .find(|t| t.backend == Backend::Legacy && t.family == IpFamily::V4 && t.table == "filter")
        .unwrap();
    assert_eq!((v4_filter.chains_removed, v4_filter.jump_rules_removed, v4_filter.chain_rules_removed), (6, 10, 8));
    for backend in Backend::ALL {
        for (family, fixture, _) in FAMILIES {
            let after = shape(&saved(backend, family));
            assert_eq!(after, expected(fixture, iptables_mode_chain), "{backend:?} {family:?}");
            // Spelled out, the owners we must not touch.
            let filter = &after["filter"];
            assert_eq!(filter["INPUT"][0], "-j KUBE-FIREWALL", "{backend:?} {family:?}");
            assert!(filter.contains_key("KUBE-KUBELET-CANARY") && filter.contains_key("CNI-XYZ"));
            assert!(filter["FORWARD"].iter().any(|r| r.ends_with("-j CNI-XYZ")));
            assert!(after["nat"].contains_key("KUBE-MARK-DROP") && after["nat"].contains_key("DOCKER"));
            assert!(after["mangle"].contains_key("KUBE-IPTABLES-HINT"));
        }
    }

    // Nothing left: a second run changes nothing and succeeds.
    let again = remove_kube_proxy_chains().expect("second cleanup");
    assert!(again.tables.is_empty() && !again.removed_anything(), "{again:?}");
}

/// ipsets of upstream's IPVS mode made for the test, v4 and v6 names; all referenced by the fixtures.
const UPSTREAM_SETS: &[(&str, &str)] = &[
    ("LOOP-BACK", "hash:ip,port,ip"),
    ("CLUSTER-IP", "hash:ip,port"),
    ("EXTERNAL-IP", "hash:ip,port"),
    ("EXTERNAL-IP-LOCAL", "hash:ip,port"),
    ("LOAD-BALANCER", "hash:ip,port"),
    ("LOAD-BALANCER-FW", "hash:ip,port"),
    ("LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net"),
    ("NODE-PORT-TCP", "bitmap:port"),
    ("NODE-PORT-UDP", "bitmap:port"),
    ("HEALTH-CHECK-NODE-PORT", "bitmap:port"),
    ("IPVS-IPS", "hash:ip"),
];

fn ipset_names() -> BTreeSet<String> {
    run_required(&["ipset", "list", "-name"], None).unwrap().stdout.lines().map(str::to_string).collect()
}

fn create_sets() -> Vec<String> {
    let mut names = Vec::new();
    for (suffix, kind) in UPSTREAM_SETS {
        for (prefix, family) in [("KUBE-", "inet"), ("KUBE-6-", "inet6")] {
            let mut name = format!("{prefix}{suffix}");
            name.truncate(31);
            let mut argv = vec!["ipset", "create", &name, kind];
            argv.extend(if kind.starts_with("bitmap") { ["range", "0-65535"] } else { ["family", family] });
            run_required(&argv, None).unwrap();
            names.push(name);
        }
    }
    // Someone else's, one of them with a KUBE- name that upstream never used.
    run_required(&["ipset", "create", "FOREIGN-SET", "hash:ip"], None).unwrap();
    run_required(&["ipset", "create", "KUBE-SOMETHING-ELSE", "hash:ip"], None).unwrap();
    names
}

#[test]
fn ipvs_mode_leftovers_go_and_everything_else_stays() {
    if !root_or_skip("ipvs_mode_leftovers_go_and_everything_else_stays") {
        return;
    }
    enter_new_netns();
    let upstream_sets = create_sets();
    // The kernel here has no dummy links; a veth of that name is someone else's and must stay.
    run_required(&["ip", "link", "add", "kube-ipvs0", "type", "veth", "peer", "name", "kipvs-peer"], None).unwrap();
    run_required(&["ip", "address", "add", "10.96.0.1/32", "dev", "kube-ipvs0"], None).unwrap();
    for backend in Backend::ALL {
        for (family, _, fixture) in FAMILIES {
            load(backend, family, fixture);
        }
    }

    remove_kube_proxy_chains().expect("iptables cleanup");
    for backend in Backend::ALL {
        for (family, _, fixture) in FAMILIES {
            assert_eq!(shape(&saved(backend, family)), expected(fixture, ipvs_mode_chain), "{backend:?} {family:?}");
        }
    }

    let report = remove_ipvs_leftovers().expect("ipvs cleanup");
    // CNI-XYZ (IPv4 fixture) still matches on KUBE-IPVS-IPS, so that set must stay; every other one goes.
    let mut destroyed = upstream_sets.clone();
    destroyed.retain(|s| s != "KUBE-IPVS-IPS");
    assert_eq!(report.ipsets_destroyed.iter().collect::<BTreeSet<_>>(), destroyed.iter().collect::<BTreeSet<_>>());
    assert_eq!(report.ipsets_kept.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["KUBE-IPVS-IPS"]);
    assert_eq!(ipset_names(), ["FOREIGN-SET", "KUBE-IPVS-IPS", "KUBE-SOMETHING-ELSE"].map(String::from).into());
    assert_eq!(report.interface, InterfaceOutcome::KeptNotDummy("veth".into()));
    run_required(&["ip", "link", "show", "kube-ipvs0"], None).expect("kube-ipvs0 (a veth) is still there");
    if std::path::Path::new("/proc/thread-self/net/ip_vs").exists() {
        assert_eq!(report.virtual_servers, VirtualServers::Removed(vec![]));
    } else {
        assert_eq!(report.virtual_servers, VirtualServers::Unavailable);
    }

    // Again: nothing to remove; the set in use is still reported as kept, not as an error.
    assert!(remove_kube_proxy_chains().expect("second iptables cleanup").tables.is_empty());
    let again = remove_ipvs_leftovers().expect("second ipvs cleanup");
    assert!(again.ipsets_destroyed.is_empty(), "{again:?}");
    assert_eq!(again.ipsets_kept.len(), 1);
    assert_eq!(ipset_names().len(), 3);
}
