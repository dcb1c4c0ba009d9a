//! How long a full sync of 10,000 services × 10 endpoints (10% NodePorts) and a one-service change take, through
//! the netlink transport and through `nft -f`. A measurement, not a test: needs root, runs each transport in a
//! fresh network namespace of its own, prints numbers.
//!
//! `cargo run --release --example nftables_scale [-- SERVICES [ENDPOINTS] [--shard-span N]]`
//!
//! `--shard-span N` measures a what-if full sync with the endpoint maps split per N indexes (see `sharded`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_proxy_rs::core::{EndpointAddr, FamilyState, PortEndpoint, ServicePort, ServicePortName};
use std::collections::HashMap;

use kube_proxy_rs::dataplane::nftables::ir::{Family, Field, Op, Stmt, Transaction, Value};
use kube_proxy_rs::dataplane::nftables::netlink::NetlinkTransport;
use kube_proxy_rs::dataplane::nftables::plan;
use kube_proxy_rs::dataplane::nftables::ruleset::{FamilyConfig, LocalTraffic, NodePortAddresses};
use kube_proxy_rs::dataplane::nftables::text;
use kube_proxy_rs::dataplane::nftables::transport::{NftCommand, Transport};
use kube_proxy_rs::model::{IpFamily, Protocol, ServiceKey};

fn ip(base: u32, i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(base + i))
}

fn service(i: u32, endpoints: u32, first_endpoint: u32) -> ServicePort {
    let eps: Vec<EndpointAddr> =
        (0..endpoints).map(|j| EndpointAddr { ip: ip(0x0a80_0000, first_endpoint + j), port: 8080 }).collect();
    ServicePort {
        name: ServicePortName {
            service: ServiceKey::new("ns", format!("svc-{i}")),
            port: "http".into(),
            protocol: Protocol::Tcp,
        },
        family: IpFamily::V4,
        port: 80,
        node_port: i.is_multiple_of(10).then(|| 30000 + (i / 10) as u16),
        cluster_ip: ip(0x0a60_0000, i),
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        endpoints: eps
            .iter()
            .map(|a| PortEndpoint {
                addr: *a,
                ready: true,
                serving: true,
                terminating: false,
                is_local: false,
                zone_hints: vec![],
                node_hints: vec![],
            })
            .collect(),
        has_any_endpoints: true,
        cluster_endpoints: eps,
        local_endpoints: vec![],
    }
}

fn state(ports: impl IntoIterator<Item = ServicePort>) -> FamilyState {
    let mut st = FamilyState::default();
    for p in ports {
        st.ports.insert(p.name.clone(), Arc::new(p));
    }
    st
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Apply `full` then `one` through the transport `make` builds, in a fresh namespace; (full, one) durations.
fn run(make: fn() -> Box<dyn Transport>, full: Transaction, one: Option<Transaction>) -> (Duration, Option<Duration>) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): run as root");
        let mut t = make();
        let start = Instant::now();
        t.apply(&full).expect("full sync");
        let full_time = start.elapsed();
        let one_time = one.map(|one| {
            let start = Instant::now();
            t.apply(&one).expect("one change");
            start.elapsed()
        });
        (full_time, one_time)
    })
    .join()
    .expect("measurement thread")
}

/// What-if (not what the planner does): the endpoint maps split into one map per `span` indexes of numgen blocks,
/// so that each map is used by few rules. The kernel checks every new element of a map against every rule bound
/// to it, and every newly bound rule against every element (net/netfilter/nf_tables_api.c: nft_add_set_elem,
/// nf_tables_bind_set), so one map shared by R rules with E elements costs E × R.
fn sharded(tx: &Transaction, span: u32) -> Transaction {
    let shard = |map: &str, offset: u32| format!("{map}-{}", offset / span);
    // Which shard each index belongs to: its rule's block decides.
    let mut index_shard: HashMap<(String, u32), String> = HashMap::new();
    for op in &tx.ops {
        if let Op::AddRule { rule, .. } = op {
            for stmt in rule {
                let (map, key) = match stmt {
                    Stmt::DnatMap { map, key, .. } | Stmt::Vmap { map, key } => (map, key),
                    _ => continue,
                };
                if let [Field::Numgen { modulus, offset }] = key.as_slice() {
                    for i in *offset..offset + modulus {
                        index_shard.insert((map.clone(), i), shard(map, *offset));
                    }
                }
            }
        }
    }
    let mut out = Transaction::new(tx.family, tx.table.clone());
    for op in &tx.ops {
        match op {
            Op::AddSet(def) if index_shard.keys().any(|(m, _)| *m == def.name) => {
                let mut shards: Vec<&String> =
                    index_shard.iter().filter(|((m, _), _)| *m == def.name).map(|(_, s)| s).collect();
                shards.sort();
                shards.dedup();
                for name in shards {
                    let mut d = def.clone();
                    d.name = name.clone();
                    out.ops.push(Op::AddSet(d));
                }
            }
            Op::AddRule { chain, rule } => {
                let numgen_offset = |key: &[Field]| match key {
                    [Field::Numgen { offset, .. }] => Some(*offset),
                    _ => None,
                };
                let rule = rule
                    .iter()
                    .map(|s| match s {
                        Stmt::DnatMap { protocol, map, key } if numgen_offset(key).is_some() => Stmt::DnatMap {
                            protocol: *protocol,
                            map: shard(map, numgen_offset(key).unwrap()),
                            key: key.clone(),
                        },
                        Stmt::Vmap { map, key } if numgen_offset(key).is_some() => {
                            Stmt::Vmap { map: shard(map, numgen_offset(key).unwrap()), key: key.clone() }
                        }
                        other => other.clone(),
                    })
                    .collect();
                out.ops.push(Op::AddRule { chain: chain.clone(), rule });
            }
            Op::AddElements { set, elements } if index_shard.keys().any(|(m, _)| m == set) => {
                let mut by_shard: HashMap<&String, Vec<_>> = HashMap::new();
                for e in elements {
                    let Value::Index(i) = e.key[0] else { unreachable!() };
                    by_shard.entry(&index_shard[&(set.clone(), i)]).or_default().push(e.clone());
                }
                for (set, elements) in by_shard {
                    out.ops.push(Op::AddElements { set: set.clone(), elements });
                }
            }
            other => out.ops.push(other.clone()),
        }
    }
    out
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let span = args.iter().position(|a| a == "--shard-span").map(|i| {
        let span = args[i + 1].parse::<u32>().expect("a span");
        args.drain(i..i + 2);
        span
    });
    let args: Vec<u32> = args.iter().map(|a| a.parse().expect("a number")).collect();
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
    let (full, mut applied) = plan::full(&config, &desired, node_ips.clone());
    let plan_time = start.elapsed();
    // One change: service 0's endpoints move (within its index block: map elements only).
    let mut changed = ports.clone();
    changed[0] = service(0, endpoints, services * endpoints);
    let names: BTreeSet<ServicePortName> = [changed[0].name.clone()].into();
    let changed = state(changed);
    let start = Instant::now();
    let one = plan::partial(&mut applied, &changed, &names, node_ips);
    let plan_one_time = start.elapsed();
    // The what-if changes only the full sync; the planner's partial transactions would not fit it.
    let (full, one) = match span {
        Some(span) => {
            println!("what-if: endpoint maps sharded per {span} indexes");
            (sharded(&full, span), None)
        }
        None => (full, Some(one)),
    };

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
    if let Some(one) = &one {
        println!("  one change: {} operations, planned in {}", one.ops.len(), ms(plan_one_time));
    }
    let one_text = |d: Option<Duration>| d.map_or(String::new(), |d| format!(", one change in {}", ms(d)));
    let netlink = || -> Box<dyn Transport> { Box::new(NetlinkTransport::new().expect("netlink socket")) };
    let (nl_full, nl_one) = run(netlink, full.clone(), one.clone());
    println!("  netlink: full sync applied in {} (encode + kernel){}", ms(nl_full), one_text(nl_one));
    let (nft_full, nft_one) = run(|| Box::new(NftCommand), full, one);
    println!("  nft -f:  full sync applied in {}{}", ms(nft_full), one_text(nft_one));
}
