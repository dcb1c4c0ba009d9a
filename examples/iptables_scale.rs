//! How long the iptables mode's full sync of N services × M endpoints (10% NodePorts) and single changes take on
//! each backend, next to the kernel floor: `iptables-restore` loading the same input. A measurement, not a test:
//! needs root, runs each backend in a fresh network namespace of its own, prints numbers.
//!
//! `cargo run --release --example iptables_scale [-- SERVICES [ENDPOINTS [BACKEND [--no-replay]]]]` (BACKEND:
//! nft, legacy; default both)

#[path = "common/scale_state.rs"]
mod scale_state;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube_proxy_rs::core::{FamilyState, ServicePort, ServicePortName};
use kube_proxy_rs::dataplane::iptables::rules::RulesConfig;
use kube_proxy_rs::dataplane::iptables::{restore, save};
use kube_proxy_rs::dataplane::settings::LocalTraffic;
use kube_proxy_rs::model::IpFamily;
use scale_state::{ms, service, state};

/// Feed `input` to `argv` and wait; how long it took.
fn timed(argv: &[&str], input: &str) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("iptables-restore");
    child.stdin.take().unwrap().write_all(input.as_bytes()).expect("write input");
    assert!(child.wait().unwrap().success(), "{argv:?} failed");
    start.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let services: u32 = args.first().map_or(5_000, |a| a.parse().expect("a number"));
    let endpoints: u32 = args.get(1).map_or(10, |a| a.parse().expect("a number"));
    let backends: Vec<&str> = match args.get(2).map(String::as_str) {
        Some("nft") => vec!["nft"],
        Some("legacy") => vec!["legacy"],
        _ => vec!["legacy", "nft"],
    };
    // Replaying the full input over itself takes minutes on the nft backend at 5,000 services: `--no-replay`.
    let replay = !args.iter().any(|a| a == "--no-replay");
    let config = RulesConfig {
        family: IpFamily::V4,
        masquerade_mark: 0x4000,
        masquerade_all: false,
        local: LocalTraffic::Cidr("10.128.0.0/9".parse().unwrap()),
        nodeport_ips: None,
        node_ips: vec![],
        drop_invalid: true,
    };
    let ports: Vec<ServicePort> = (0..services).map(|i| service(i, endpoints, i * endpoints)).collect();
    let desired = state(ports.clone());
    let start = Instant::now();
    let (full, applied) = restore::full(&config, &desired, &[], None);
    let full = full.main;
    let generate = start.elapsed();
    println!(
        "{services} services × {endpoints} endpoints: full input {} lines, {:.1} MB, generated in {}",
        full.lines().count(),
        full.len() as f64 / 1e6,
        ms(generate)
    );
    if let Ok(path) = std::env::var("KPR_DUMP_INPUT") {
        std::fs::write(path, &full).expect("write the input");
    }
    // One change: service 0's endpoints replaced. Another: a new service.
    let mut moved = ports.clone();
    moved[0] = service(0, endpoints, services * endpoints);
    let one: BTreeSet<ServicePortName> = [moved[0].name.clone()].into();
    let mut grown = moved.clone();
    grown.push(service(services, endpoints, (services + 1) * endpoints));
    let added: BTreeSet<ServicePortName> = [grown[services as usize].name.clone()].into();
    // And half the services deleted at once (a namespace going away).
    let half = grown[..services as usize / 2].to_vec();
    let gone: BTreeSet<ServicePortName> = grown[services as usize / 2..].iter().map(|p| p.name.clone()).collect();
    let steps: Vec<(FamilyState, BTreeSet<ServicePortName>)> =
        vec![(state(moved), one), (state(grown), added), (state(half), gone)];

    for backend in backends {
        let (full, mut applied, steps) = (full.clone(), applied.clone(), steps.clone());
        let (config, desired) = (config.clone(), desired.clone());
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): run as root");
            let restore = format!("iptables-{backend}-restore");
            let ours = [restore.as_str(), "--noflush", "--wait=5"];
            let floor = timed(&[restore.as_str()], &full);
            // The proxy's own cold full sync, into another empty namespace: on the nft backend, new chains come
            // in batches of 100 service ports before the rest (as the mode does).
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            let start = Instant::now();
            let (cold_input, _) = restore::full(&config, &desired, &[], (backend == "nft").then_some(100));
            let cold_generate = start.elapsed();
            let mut cold = cold_generate;
            for batch in &cold_input.new_chains {
                cold += timed(&ours, batch);
            }
            cold += timed(&ours, &cold_input.main);
            // The same input again: every chain flushed and refilled, as a full sync over existing rules did before
            // chains carried their digests (and as upstream's does).
            let again = if replay { timed(&ours, &full) } else { Duration::ZERO };
            // A full sync over rules that are already right, as after a restart: read them, leave intact chains.
            let save_program = format!("iptables-{backend}-save");
            let start = Instant::now();
            let out = Command::new(&save_program).output().expect("iptables-save");
            let saved = save::parse(&save_program, &String::from_utf8_lossy(&out.stdout)).expect("save output");
            let (input, _) = restore::full(&config, &desired, &saved, None);
            let restart = start.elapsed() + timed(&ours, &input.main);
            // The least any change costs: a restore that only re-declares one empty chain.
            let noop = timed(&ours, "*nat\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n");
            let times: Vec<(Duration, Duration)> = steps
                .iter()
                .map(|(desired, changed)| {
                    let start = Instant::now();
                    let batch = (backend == "nft").then_some(100);
                    let inputs = restore::partial(&mut applied, desired, changed, batch).expect("a change");
                    let generate = start.elapsed();
                    let apply = inputs.in_order().filter(|i| !i.is_empty()).map(|i| timed(&ours, i)).sum();
                    (generate, apply)
                })
                .collect();
            println!(
                "  {backend}: iptables-restore of the full input into an empty namespace (the floor) {}; the mode's \
                 cold full sync (generate + {} --noflush inputs) {}, ratio {:.2}; replayed over itself {}; a full \
                 sync over existing rules (read + generate + restore) {}; one slice changed {} + {} generating; a \
                 new service {}; half the services removed {}; a no-op change {}",
                ms(floor),
                cold_input.new_chains.len() + 1,
                ms(cold),
                cold.as_secs_f64() / floor.as_secs_f64(),
                ms(again),
                ms(restart),
                ms(times[0].1),
                ms(times[0].0),
                ms(times[1].1),
                ms(times[2].1),
                ms(noop),
            );
        })
        .join()
        .expect("measurement thread");
    }
}
