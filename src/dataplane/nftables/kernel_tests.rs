//! The rendered ruleset, fed to the real kernel in a private network namespace, through each transport.
//! `netlink/kernel_tests.rs` compares the two transports' results.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;

use super::ir::{Family, Transaction};
use super::netlink::NetlinkTransport;
use super::plan::{full_transaction, partial};
use super::ruleset::{FamilyConfig, LocalTraffic, NodePortAddresses};
use super::transport::{NftCommand, Transport};
use crate::core::{EndpointAddr, FamilyState, PortEndpoint, ServicePort, ServicePortName};
use crate::lab::root_or_skip;
use crate::model::{IpFamily, Protocol, ServiceKey};
use crate::testutil::enter_new_netns;

/// Which transport a kernel test drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Via {
    Nft,
    Netlink,
}

impl Via {
    /// The transport, bound to the calling thread's network namespace.
    pub(super) fn transport(self) -> Box<dyn Transport> {
        match self {
            Via::Nft => Box::new(NftCommand),
            Via::Netlink => Box::new(NetlinkTransport::new().expect("netlink socket")),
        }
    }
}

/// The configuration most tests use: local traffic by cluster CIDR, NodePorts on listed addresses, a node IP
/// inside the firewalled service's source range (so the LB IP is allowed as a source too).
pub(super) fn config(family: Family) -> FamilyConfig {
    let v4 = family == Family::Ip;
    let cidr = if v4 { "10.244.0.0/16" } else { "fd00:10:244::/64" };
    FamilyConfig {
        family,
        masquerade_mark: 0x4000,
        masquerade_all: false,
        local: LocalTraffic::Cidr(cidr.parse().unwrap()),
        nodeports: NodePortAddresses::Listed,
        node_ips: vec![if v4 { "192.0.2.1" } else { "2001:db8:2::1" }.parse().unwrap()],
    }
}

/// Every configuration variant the skeleton has: each local-traffic detection, both NodePort address modes,
/// masquerade-all.
pub(super) fn every_config(family: Family) -> Vec<(&'static str, FamilyConfig)> {
    let base = config(family);
    let with = |f: &dyn Fn(&mut FamilyConfig)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    vec![
        ("cluster-cidr", base.clone()),
        (
            "bridge+all-nodeports+masquerade-all",
            with(&|c| {
                c.local = LocalTraffic::Bridge("cbr0".into());
                c.nodeports = NodePortAddresses::All;
                c.masquerade_all = true;
            }),
        ),
        ("interface-prefix", with(&|c| c.local = LocalTraffic::InterfacePrefix("veth".into()))),
        (
            "undetectable+all-nodeports",
            with(&|c| {
                c.local = LocalTraffic::Undetectable;
                c.nodeports = NodePortAddresses::All;
            }),
        ),
    ]
}

fn port(family: IpFamily, name: &str, protocol: Protocol, index: u8, n: usize) -> ServicePort {
    let v4 = family == IpFamily::V4;
    let vip = if v4 { format!("10.96.0.{index}") } else { format!("fd00:96::{index}") };
    let ep_ip = |i: usize| if v4 { format!("10.244.0.{i}") } else { format!("fd00:10:244::{i:x}") };
    let eps: Vec<EndpointAddr> = (1..=n).map(|i| EndpointAddr { ip: ep_ip(i).parse().unwrap(), port: 8080 }).collect();
    ServicePort {
        name: ServicePortName { service: ServiceKey::new("ns", name), port: "http".into(), protocol },
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
                hints: None,
            })
            .collect(),
        has_any_endpoints: n > 0,
        local_endpoints: eps.iter().take(1).copied().collect(),
        cluster_endpoints: eps,
    }
}

/// One port of every shape the renderer knows, in TCP, plus UDP and SCTP ports (which take on every shape in
/// the morphing loop).
pub(super) fn every_shape(family: IpFamily) -> Vec<ServicePort> {
    let v4 = family == IpFamily::V4;
    let pick = |a: &'static str, b: &'static str| if v4 { a } else { b };
    let ip = |a, b| pick(a, b).parse::<std::net::IpAddr>().unwrap();
    let net = |a, b| pick(a, b).parse::<ipnet::IpNet>().unwrap();
    let tcp = Protocol::Tcp;
    let plain = port(family, "plain", tcp, 1, 3);
    let single = port(family, "single", tcp, 2, 1);
    let none = port(family, "none", tcp, 3, 0);
    let mut affinity = port(family, "affinity", tcp, 4, 2);
    affinity.session_affinity_timeout = Some(60);
    let mut nodeport = port(family, "nodeport", tcp, 5, 2);
    nodeport.node_port = Some(30080);
    nodeport.external_ips = vec![ip("203.0.113.5", "2001:db8::5")];
    let mut local = port(family, "local", tcp, 6, 2);
    local.node_port = Some(30081);
    local.external_policy_local = true;
    let mut itp = port(family, "itp", tcp, 7, 2);
    itp.internal_policy_local = true;
    let mut local_none = port(family, "localnone", tcp, 8, 2);
    local_none.node_port = Some(30082);
    local_none.external_policy_local = true;
    local_none.local_endpoints.clear();
    let mut firewalled = port(family, "firewalled", tcp, 9, 2);
    firewalled.load_balancer_ips = vec![ip("198.51.100.9", "2001:db8:100::9")];
    firewalled.load_balancer_source_ranges = vec![
        net("192.0.2.0/24", "2001:db8:2::/64"),
        net("198.51.100.128/25", "2001:db8:3::/56"),
        net("203.0.113.0/28", "2001:db8:4::/60"),
    ];
    let dns = port(family, "dns", Protocol::Udp, 10, 3);
    let udp_none = port(family, "udpnone", Protocol::Udp, 11, 0);
    let mut sctp = port(family, "sctp", Protocol::Sctp, 12, 2);
    sctp.node_port = Some(30083);
    vec![plain, single, none, affinity, nodeport, local, itp, local_none, firewalled, dns, udp_none, sctp]
}

pub(super) fn state(ports: &[ServicePort]) -> FamilyState {
    let mut st = FamilyState::default();
    for p in ports {
        st.ports.insert(p.name.clone(), Arc::new(p.clone()));
    }
    st
}

fn node_ip(family: IpFamily) -> std::net::IpAddr {
    if family == IpFamily::V4 { "192.168.50.1" } else { "fd00:50::1" }.parse().unwrap()
}

/// The transactions of a node's life: a full sync of every shape, then every shape changing into every other
/// in place (partial syncs), a node IP change, then every service going away.
pub(super) fn life(cfg: &FamilyConfig, family: IpFamily) -> Vec<Transaction> {
    let shapes = every_shape(family);
    let (tx, mut applied) = full_transaction(cfg, &state(&shapes), vec![node_ip(family)]);
    let mut txs = vec![tx];
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
        txs.push(partial(&mut applied, &state(&morphed), &names, vec![node_ip(family)]));
    }
    txs.push(partial(&mut applied, &state(&shapes), &names, vec![]));
    txs.push(partial(&mut applied, &state(&[]), &names, vec![]));
    txs
}

/// `nft list <what>` in the calling thread's namespace.
pub(super) fn nft_list(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("nft runs");
    assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn kernel_accepts_full_and_partial_syncs(family: IpFamily, via: Via) {
    enter_new_netns();
    let fam = Family::of(family);
    let kw = if fam == Family::Ip { "ip" } else { "ip6" };
    let mut transport = via.transport();
    for (name, cfg) in every_config(fam) {
        let txs = life(&cfg, family);
        transport.apply(&txs[0]).unwrap_or_else(|e| panic!("{name}: full sync: {e}"));
        let listing = nft_list(&["list", "table", kw, "kube-proxy-rs"]);
        for chain in
            ["svc-ns/plain/tcp/http", "ext-ns/local/tcp/http", "local-ns/local/tcp/http", "ep-ns/affinity/tcp/http/"]
        {
            assert!(listing.contains(chain), "{name}: {chain} missing from\n{listing}");
        }
        assert!(transport.table_exists(fam, "kube-proxy-rs").unwrap());
        assert!(!transport.table_exists(fam, "kube-proxy").unwrap(), "upstream's table was removed");
        for (step, tx) in txs.iter().enumerate().skip(1) {
            transport.apply(tx).unwrap_or_else(|e| panic!("{name}, step {step}: {e}\n{}", super::text::script(tx)));
        }
        let listing = nft_list(&["list", "table", kw, "kube-proxy-rs"]);
        assert!(!listing.contains("svc-"), "{name}: {listing}");
        assert!(!listing.contains("elements"), "{name}: all maps are empty again:\n{listing}");
    }
}

macro_rules! kernel_tests {
    ($($name:ident: $family:expr, $via:expr;)*) => {
        $(
            #[test]
            fn $name() {
                if root_or_skip(stringify!($name)) {
                    kernel_accepts_full_and_partial_syncs($family, $via);
                }
            }
        )*
    };
}

kernel_tests! {
    kernel_accepts_full_and_partial_syncs_v4_nft: IpFamily::V4, Via::Nft;
    kernel_accepts_full_and_partial_syncs_v6_nft: IpFamily::V6, Via::Nft;
    kernel_accepts_full_and_partial_syncs_v4_netlink: IpFamily::V4, Via::Netlink;
    kernel_accepts_full_and_partial_syncs_v6_netlink: IpFamily::V6, Via::Netlink;
}

/// A full sync is streamed to the netlink transport one operation at a time (never held whole); it must leave
/// the same ruleset as the same sync collected into one transaction and loaded with `nft -f`.
fn streamed_full_sync_matches_the_collected_one(family: IpFamily) {
    let fam = Family::of(family);
    for (name, cfg) in every_config(fam) {
        let shapes = every_shape(family);
        let (streamed_cfg, streamed_shapes) = (cfg.clone(), shapes.clone());
        let streamed = std::thread::spawn(move || {
            enter_new_netns();
            let mut netlink = Via::Netlink.transport();
            let desired = state(&streamed_shapes);
            netlink
                .apply_streamed(fam, super::ruleset::TABLE, &mut |emit| {
                    super::plan::full(&streamed_cfg, &desired, vec![node_ip(family)], emit);
                })
                .expect("streamed full sync accepted");
            nft_list(&["list", "ruleset"])
        })
        .join()
        .unwrap();
        let collected = std::thread::spawn(move || {
            enter_new_netns();
            let (tx, _) = full_transaction(&cfg, &state(&shapes), vec![node_ip(family)]);
            Via::Nft.transport().apply(&tx).expect("collected full sync accepted");
            nft_list(&["list", "ruleset"])
        })
        .join()
        .unwrap();
        assert!(streamed.contains("svc-"), "{name}: nothing listed");
        assert_eq!(streamed, collected, "{name}");
    }
}

#[test]
fn streamed_full_sync_matches_the_collected_one_v4() {
    if root_or_skip("streamed_full_sync_matches_the_collected_one_v4") {
        streamed_full_sync_matches_the_collected_one(IpFamily::V4);
    }
}

#[test]
fn streamed_full_sync_matches_the_collected_one_v6() {
    if root_or_skip("streamed_full_sync_matches_the_collected_one_v6") {
        streamed_full_sync_matches_the_collected_one(IpFamily::V6);
    }
}
