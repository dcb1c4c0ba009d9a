//! How long a full sync of 10,000 services × 10 endpoints (10% NodePorts) and a one-service change take, through
//! the netlink transport and through `nft -f`. A measurement, not a test: needs root, runs each transport in a
//! fresh network namespace of its own, prints numbers.
//!
//! `cargo run --release --example nftables_scale [-- SERVICES [ENDPOINTS]]`
//!
//! The kernel's time depends much on how many rules use one endpoint map: change `ENDPOINT_MAP_SPAN`
//! (ruleset.rs) to compare.

#[path = "common/scale_state.rs"]
mod scale_state;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube_proxy_rs::core::{ServicePort, ServicePortName};
use kube_proxy_rs::dataplane::nftables::ir::{Family, Transaction};
use kube_proxy_rs::dataplane::nftables::netlink::NetlinkTransport;
use kube_proxy_rs::dataplane::nftables::plan;
use kube_proxy_rs::dataplane::nftables::ruleset::{FamilyConfig, LocalTraffic, NodePortAddresses};
use kube_proxy_rs::dataplane::nftables::text;
use kube_proxy_rs::dataplane::nftables::transport::{NftCommand, Transport};
use scale_state::{ms, service, state};

/// Apply `full`, then each of `changes`, through the transport `make` builds, in a fresh namespace; how long
/// each took.
fn run(make: fn() -> Box<dyn Transport>, full: Transaction, changes: Vec<Transaction>) -> (Duration, Vec<Duration>) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): run as root");
        let mut t = make();
        let start = Instant::now();
        t.apply(&full).expect("full sync");
        let full_time = start.elapsed();
        let times = changes
            .iter()
            .map(|tx| {
                let start = Instant::now();
                t.apply(tx).expect("one change");
                start.elapsed()
            })
            .collect();
        (full_time, times)
    })
    .join()
    .expect("measurement thread")
}

fn main() {
    let args: Vec<u32> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let services = args.first().copied().unwrap_or(10_000);
    let endpoints = args.get(1).copied().unwrap_or(10);
    let config = FamilyConfig {
        family: Family::Ip,
        masquerade_mark: 0x4000,
        masquerade_all: false,
        local: LocalTraffic::Cidr("10.128.0.0/9".parse().unwrap()),
        nodeports: NodePortAddresses::Listed,
        node_ips: vec![],
    };
    let node_ips = vec!["192.168.50.1".parse().unwrap()];
    let ports: Vec<ServicePort> = (0..services).map(|i| service(i, endpoints, i * endpoints)).collect();
    let desired = state(ports.clone());

    let start = Instant::now();
    let (full, mut applied) = plan::full_transaction(&config, &desired, node_ips.clone());
    let plan_time = start.elapsed();
    // One change: service 0's endpoints move (within its index block: map elements only).
    let mut changed = ports.clone();
    changed[0] = service(0, endpoints, services * endpoints);
    let names: BTreeSet<ServicePortName> = [changed[0].name.clone()].into();
    let changed = state(changed);
    let start = Instant::now();
    let one = plan::partial(&mut applied, &changed, &names, node_ips.clone());
    let plan_one_time = start.elapsed();
    // Another: a new service (a chain, a rule and verdict-map elements: the kernel then validates the whole
    // table when it commits).
    let mut grown = ports.clone();
    grown[0] = service(0, endpoints, services * endpoints);
    grown.push(service(services, endpoints, (services + 1) * endpoints));
    let names: BTreeSet<ServicePortName> = [grown[services as usize].name.clone()].into();
    let new_service = plan::partial(&mut applied, &state(grown), &names, node_ips);

    let start = Instant::now();
    let batch = kube_proxy_rs::dataplane::nftables::netlink::encode(&full, 1).expect("encodes");
    let encode_time = start.elapsed();
    let start = Instant::now();
    let script = text::script(&full);
    let text_time = start.elapsed();

    println!("{services} services × {endpoints} endpoints, {} NodePorts", services.div_ceil(10));
    println!("  full sync: {} operations, planned in {}", full.ops.len(), ms(plan_time));
    println!(
        "    netlink batch: {} messages, {:.1} MB, encoded in {}",
        batch.messages(),
        batch.bytes.len() as f64 / 1e6,
        ms(encode_time)
    );
    println!(
        "    nft script: {} lines, {:.1} MB, written in {}",
        script.lines().count(),
        script.len() as f64 / 1e6,
        ms(text_time)
    );
    println!(
        "  one change: {} operations (endpoints of one service), planned in {}; a new service: {} operations",
        one.ops.len(),
        ms(plan_one_time),
        new_service.ops.len()
    );
    let changes = vec![one, new_service];
    let netlink = || -> Box<dyn Transport> { Box::new(NetlinkTransport::new().expect("netlink socket")) };
    for (name, make) in [("netlink", netlink as fn() -> Box<dyn Transport>), ("nft -f", || Box::new(NftCommand))] {
        let (full_time, times) = run(make, full.clone(), changes.clone());
        println!(
            "  {name}: full sync applied in {} (encode + kernel), one change in {}, a new service in {}",
            ms(full_time),
            ms(times[0]),
            ms(times[1])
        );
    }
}
