//! The rendered ruleset, fed to the real kernel through `nft -f`, in a private network namespace.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;

use super::ir::Family;
use super::plan::{full, partial};
use super::ruleset::{FamilyConfig, LocalTraffic, NodePortAddresses};
use super::transport::{NftCommand, Transport};
use crate::core::{EndpointAddr, FamilyState, PortEndpoint, ServicePort, ServicePortName};
use crate::lab::root_or_skip;
use crate::model::{IpFamily, Protocol, ServiceKey};
use crate::testutil::enter_new_netns;

fn config(family: Family) -> FamilyConfig {
    let cidr = if family == Family::Ip { "10.244.0.0/16" } else { "fd00:10:244::/64" };
    FamilyConfig {
        family,
        masquerade_mark: 0x4000,
        masquerade_all: false,
        local: LocalTraffic::Cidr(cidr.parse().unwrap()),
        nodeports: NodePortAddresses::Listed,
        node_ips: vec![],
    }
}

fn port(family: IpFamily, name: &str, index: u8, n: usize) -> ServicePort {
    let v4 = family == IpFamily::V4;
    let vip = if v4 { format!("10.96.0.{index}") } else { format!("fd00:96::{index}") };
    let ep_ip = |i: usize| if v4 { format!("10.244.0.{i}") } else { format!("fd00:10:244::{i:x}") };
    let eps: Vec<EndpointAddr> = (1..=n).map(|i| EndpointAddr { ip: ep_ip(i).parse().unwrap(), port: 8080 }).collect();
    ServicePort {
        name: ServicePortName { service: ServiceKey::new("ns", name), port: "http".into(), protocol: Protocol::Tcp },
        family,
        port: 80,
        node_port: None,
        cluster_ip: vip.parse().unwrap(),
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        endpoints: eps
            .iter()
            .enumerate()
            .map(|(i, a)| PortEndpoint {
                addr: *a,
                ready: true,
                serving: true,
                terminating: false,
                is_local: i == 0,
                zone_hints: vec![],
                node_hints: vec![],
            })
            .collect(),
        has_any_endpoints: n > 0,
        local_endpoints: eps.iter().take(1).copied().collect(),
        cluster_endpoints: eps,
    }
}

/// One port of every shape the renderer knows.
fn every_shape(family: IpFamily) -> Vec<ServicePort> {
    let plain = port(family, "plain", 1, 3);
    let single = port(family, "single", 2, 1);
    let none = port(family, "none", 3, 0);
    let mut affinity = port(family, "affinity", 4, 2);
    affinity.session_affinity_timeout = Some(60);
    let mut nodeport = port(family, "nodeport", 5, 2);
    nodeport.node_port = Some(30080);
    nodeport.external_ips = vec![if family == IpFamily::V4 { "203.0.113.5" } else { "2001:db8::5" }.parse().unwrap()];
    let mut local = port(family, "local", 6, 2);
    local.node_port = Some(30081);
    local.external_policy_local = true;
    let mut itp = port(family, "itp", 7, 2);
    itp.internal_policy_local = true;
    let mut firewalled = port(family, "firewalled", 9, 2);
    firewalled.load_balancer_ips =
        vec![if family == IpFamily::V4 { "198.51.100.9" } else { "2001:db8:100::9" }.parse().unwrap()];
    firewalled.load_balancer_source_ranges =
        vec![if family == IpFamily::V4 { "192.0.2.0/24" } else { "2001:db8:2::/64" }.parse().unwrap()];
    let mut local_none = port(family, "localnone", 8, 2);
    local_none.node_port = Some(30082);
    local_none.external_policy_local = true;
    local_none.local_endpoints.clear();
    vec![plain, single, none, affinity, nodeport, local, itp, local_none, firewalled]
}

fn state(ports: &[ServicePort]) -> FamilyState {
    let mut st = FamilyState::default();
    for p in ports {
        st.ports.insert(p.name.clone(), Arc::new(p.clone()));
    }
    st
}

fn list(family: &str) -> String {
    let out = Command::new("nft").args(["list", "table", family, "kube-proxy-rs"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn kernel_accepts_full_and_partial_syncs(family: IpFamily) {
    enter_new_netns();
    let fam = Family::of(family);
    let cfg = config(fam);
    let node_ip = if family == IpFamily::V4 { "192.168.50.1" } else { "fd00:50::1" };
    let mut nft = NftCommand;
    let shapes = every_shape(family);
    let (tx, mut applied) = full(&cfg, &state(&shapes), vec![node_ip.parse().unwrap()]);
    nft.apply(&tx).expect("full sync accepted");
    let listing = list(if fam == Family::Ip { "ip" } else { "ip6" });
    for chain in
        ["svc-ns/plain/tcp/http", "ext-ns/local/tcp/http", "local-ns/local/tcp/http", "ep-ns/affinity/tcp/http/"]
    {
        assert!(listing.contains(chain), "{chain} missing from\n{listing}");
    }

    // Every shape changes into every other, in place: each transaction must be accepted.
    let names: BTreeSet<ServicePortName> = shapes.iter().map(|p| p.name.clone()).collect();
    for shift in 1..shapes.len() {
        let morphed: Vec<ServicePort> = shapes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut q = shapes[(i + shift) % shapes.len()].clone();
                q.name = p.name.clone();
                q.cluster_ip = p.cluster_ip;
                q
            })
            .collect();
        let tx = partial(&mut applied, &state(&morphed), &names, vec![node_ip.parse().unwrap()]);
        nft.apply(&tx).unwrap_or_else(|e| panic!("shift {shift}: {e}\n{}", super::text::script(&tx)));
    }
    // Then everything goes away.
    let tx = partial(&mut applied, &state(&[]), &names, vec![]);
    nft.apply(&tx).expect("removal accepted");
    let listing = list(if fam == Family::Ip { "ip" } else { "ip6" });
    assert!(!listing.contains("svc-"), "{listing}");
    assert!(!listing.contains("elements"), "all maps are empty again:\n{listing}");
}

#[test]
fn kernel_accepts_full_and_partial_syncs_v4() {
    if root_or_skip("kernel_accepts_full_and_partial_syncs_v4") {
        kernel_accepts_full_and_partial_syncs(IpFamily::V4);
    }
}

#[test]
fn kernel_accepts_full_and_partial_syncs_v6() {
    if root_or_skip("kernel_accepts_full_and_partial_syncs_v6") {
        kernel_accepts_full_and_partial_syncs(IpFamily::V6);
    }
}
