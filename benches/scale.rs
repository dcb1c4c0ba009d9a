//! The scale benchmark: N services × M endpoints as manifests, the real binary in a throwaway lab, measured from
//! outside. `cargo bench --bench scale -- --sizes 1000,5000,10000` (root; see BENCHMARKS.md).

#[path = "scale/generate.rs"]
mod generate;
#[path = "scale/measure.rs"]
mod measure;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use kube_proxy_rs::lab::manifests::{endpoint, endpoint_slice, node, service, to_yaml};
use kube_proxy_rs::lab::{ClusterLab, LabSpec, Netns, Where};
use kube_proxy_rs::model::IpFamily;

const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy-rs");
const NODE: &str = "bench-node";

struct Args {
    sizes: Vec<usize>,
    endpoints: usize,
    churn_seconds: u64,
    rate_seconds: u64,
    proxy_args: Vec<String>,
    /// Stop after the first sync and keep the directory and the proxy's log (for profiling start-up).
    first_sync_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        sizes: vec![1000],
        endpoints: 10,
        churn_seconds: 60,
        rate_seconds: 5,
        proxy_args: vec![],
        first_sync_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--sizes" => a.sizes = it.next().unwrap().split(',').map(|s| s.parse().unwrap()).collect(),
            "--endpoints" => a.endpoints = it.next().unwrap().parse().unwrap(),
            "--churn-seconds" => a.churn_seconds = it.next().unwrap().parse().unwrap(),
            "--rate-seconds" => a.rate_seconds = it.next().unwrap().parse().unwrap(),
            "--proxy-arg" => a.proxy_args.push(it.next().unwrap()),
            "--first-sync-only" => a.first_sync_only = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// A small service `name` at `ip` → 8080 on lab pod `pod`, in its own file.
fn probe_service(lab: &ClusterLab, dir: &Path, name: &str, ip: &str, pod: &str) {
    let svc = service("bench", name, &[ip.parse().unwrap()]).port("http", "TCP", 80, 8080);
    let slice = endpoint_slice(
        "bench",
        &format!("{name}-1"),
        name,
        false,
        &[("http", "TCP", 8080)],
        vec![endpoint(lab.pod(pod).addr(IpFamily::V4), NODE)],
    );
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("{}---\n{}", svc.yaml(), to_yaml(&slice))).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.yaml"))).unwrap();
}

fn start_proxy(lab: &ClusterLab, dir: &Path, extra: &[String]) -> (Child, Instant) {
    let mut argv = vec![
        BIN.to_string(),
        "--manifests".into(),
        dir.to_string_lossy().into_owned(),
        format!("--hostname-override={NODE}"),
        "--cluster-cidr=10.244.0.0/16".into(),
        "--iptables-min-sync-period=0s".into(),
        "--conntrack-max-per-core=0".into(),
        "--metrics-bind-address=127.0.0.1:10249".into(),
        "--healthz-bind-address=127.0.0.1:10256".into(),
    ];
    argv.extend(extra.iter().cloned());
    let log = std::fs::File::create(dir.join("../proxy.log")).unwrap();
    let mut cmd = lab.netns(&Where::Node).unwrap().command(&argv);
    cmd.stdout(Stdio::null()).stderr(log);
    let t = Instant::now();
    (cmd.spawn().expect("start proxy"), t)
}

fn stop(mut p: Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = p.wait();
}

fn wait_synced(node: &Netns, full_syncs: f64, limit: Duration) -> Option<Duration> {
    measure::wait_until(limit, || {
        measure::metrics(node).is_some_and(|m| m.last_sync > 0.0 && m.full_count >= full_syncs)
    })
}

/// Time until connections to `target` from `netns` are answered by `pod`.
fn first_answer_from(netns: &Netns, target: SocketAddr, pod: &str, limit: Duration) -> Option<Duration> {
    let path = format!("/var/run/netns/{}", netns.name());
    let pod = pod.to_string();
    let start = Instant::now();
    std::thread::spawn(move || {
        nix::sched::setns(std::fs::File::open(path).unwrap(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        while start.elapsed() < limit {
            if let Ok(s) = TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with(&format!("{pod} ")) {
                    return Some(start.elapsed());
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        None
    })
    .join()
    .unwrap()
}

fn run(size: usize, a: &Args) {
    println!("\n== {size} services × {} endpoints ({} NodePorts) ==", a.endpoints, size / 10);
    let mut spec = LabSpec::new(BIN).pod("a").pod("b").pod("client");
    spec.node_name = NODE.into();
    let mut lab = ClusterLab::build(&spec).expect("lab");
    lab.start_echo("a", 8080).unwrap();
    lab.start_echo("b", 8080).unwrap();
    let root = std::env::temp_dir().join(format!("kpr-bench-{}-{size}", std::process::id()));
    let dir = root.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let node_doc = node(NODE, &[lab.node_ip(IpFamily::V4)], &["10.244.0.0/24"], &[]);
    std::fs::write(dir.join("node.yaml"), to_yaml(&node_doc)).unwrap();
    probe_service(&lab, &dir, "probe", "10.96.0.10", "a");
    probe_service(&lab, &dir, "flip", "10.96.0.11", "a");
    let node_ns = lab.netns(&Where::Node).unwrap();
    let client = lab.netns(&Where::pod("client")).unwrap();
    let probe: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let flip: SocketAddr = "10.96.0.11:80".parse().unwrap();

    // Baseline: 10 services.
    generate::write_services(&dir, 0..8, a.endpoints, NODE);
    let (p, _) = start_proxy(&lab, &dir, &a.proxy_args);
    wait_synced(node_ns, 1.0, Duration::from_secs(30)).expect("baseline sync");
    let rate_small = measure::connection_rate(client, probe, 32, a.rate_seconds);
    stop(p);
    let out = node_ns.run(&[BIN, "--cleanup"]);
    assert!(out.is_ok(), "cleanup: {out:?}");

    // N services, from an empty kernel.
    let bytes = generate::write_services(&dir, 8..size - 2, a.endpoints, NODE);
    let (p, started) = start_proxy(&lab, &dir, &a.proxy_args);
    let first = wait_synced(node_ns, 1.0, Duration::from_secs(600)).expect("first sync");
    let m = measure::metrics(node_ns).unwrap();
    let cold_full = m.full_sum;
    let rss_first = measure::rss_mib(p.id());
    let _ = started;
    if a.first_sync_only {
        std::thread::sleep(Duration::from_secs(3));
        println!("RSS 3 s later: {:.1} MiB", measure::rss_mib(p.id()));
        println!(
            "first sync {:.3} s, full sync {cold_full:.3} s, RSS {rss_first:.1} MiB; kept {}",
            first.as_secs_f64(),
            root.display()
        );
        stop(p);
        return;
    }
    println!("manifests: {:.1} MiB in {} files", bytes as f64 / 1048576.0, size.div_ceil(100));
    println!("first sync complete after start:  {:>8.3} s", first.as_secs_f64());
    println!("full sync, empty kernel (metric):  {:>8.3} s", cold_full);
    println!("resident memory after first sync: {:>8.1} MiB", rss_first);
    let rate_large = measure::connection_rate(client, probe, 32, a.rate_seconds);
    println!(
        "new connections/s via ClusterIP:  {rate_small:>8.0} at 10 services, {rate_large:.0} at {size} ({:.2}×)",
        rate_large / rate_small
    );

    // One EndpointSlice changed: flip the endpoint of `flip` between pods a and b.
    let mut latencies = Vec::new();
    let mut partials = Vec::new();
    for (i, pod) in ["b", "a", "b", "a", "b"].iter().enumerate() {
        let before = measure::metrics(node_ns).unwrap();
        probe_service(&lab, &dir, "flip", "10.96.0.11", pod);
        let l = first_answer_from(client, flip, pod, Duration::from_secs(10)).expect("change applied");
        std::thread::sleep(Duration::from_millis(200));
        let after = measure::metrics(node_ns).unwrap();
        let n = after.partial_count - before.partial_count;
        if n > 0.0 {
            partials.push((after.partial_sum - before.partial_sum) / n);
        }
        if i > 0 {
            latencies.push(l.as_secs_f64());
        }
    }
    latencies.sort_by(f64::total_cmp);
    partials.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    println!("one slice changed: sync (metric)  {:>8.1} ms median of {}", median(&partials) * 1e3, partials.len());
    println!("one slice changed: file → traffic {:>8.1} ms median of {}", median(&latencies) * 1e3, latencies.len());

    // Restart with the rules in place.
    stop(p);
    let (p, _) = start_proxy(&lab, &dir, &a.proxy_args);
    wait_synced(node_ns, 1.0, Duration::from_secs(600)).expect("restart sync");
    let restart_full = measure::metrics(node_ns).unwrap().full_sum;
    println!("full sync, restart (metric):       {:>8.3} s", restart_full);

    // The floor: the same ruleset loaded by `nft -f` into a fresh namespace.
    let listing = node_ns.run(&["nft", "list", "table", "ip", "kube-proxy-rs"]).expect("list");
    let file = root.join("ruleset.nft");
    std::fs::write(&file, &listing).unwrap();
    let floor_ns = Netns::new("kprfloor").unwrap();
    let t = Instant::now();
    floor_ns.run(&["nft", "-f", &file.to_string_lossy()]).expect("nft -f");
    let floor = t.elapsed().as_secs_f64();
    drop(floor_ns);
    println!(
        "nft -f of the same ruleset:        {:>8.3} s; ratio ours/nft = {:.2} (cold), {:.2} (restart)",
        floor,
        cold_full / floor,
        restart_full / floor
    );

    if a.churn_seconds > 0 {
        churn(&lab, &dir, &p, a);
    }
    stop(p);
    drop(lab);
    let _ = std::fs::remove_dir_all(&root);
}

/// 1,000 endpoint changes per second for `churn_seconds`: memory must not grow.
fn churn(lab: &ClusterLab, dir: &Path, p: &Child, a: &Args) {
    let node_ns = lab.netns(&Where::Node).unwrap();
    let rss_before = measure::rss_mib(p.id());
    let before = measure::metrics(node_ns).unwrap();
    let start = Instant::now();
    let mut changes = 0u64;
    let mut max_rss: f64 = rss_before;
    while start.elapsed() < Duration::from_secs(a.churn_seconds) {
        let tick = Instant::now();
        for k in 0..100 {
            // Churn services live in their own small files, 100 of them.
            let i = 100_000 + k;
            let mut text = String::new();
            generate::service_docs(i, a.endpoints + (changes as usize / 100) % 3, NODE, &mut text);
            let tmp = dir.join(format!(".churn-{k}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(format!("churn-{k}.yaml"))).unwrap();
            changes += 1;
        }
        max_rss = max_rss.max(measure::rss_mib(p.id()));
        let spent = tick.elapsed();
        if spent < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_millis(100) - spent);
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = measure::metrics(node_ns).unwrap();
    let rss_after = measure::rss_mib(p.id());
    let n = after.partial_count - before.partial_count;
    println!(
        "churn: {changes} slice changes in {:.0} s; {n} partial syncs, mean {:.1} ms; RSS {rss_before:.1} → {rss_after:.1} MiB (max {max_rss:.1})",
        start.elapsed().as_secs_f64(),
        if n > 0.0 { (after.partial_sum - before.partial_sum) / n * 1e3 } else { f64::NAN },
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the scale benchmark needs root (network namespaces); skipped");
        return;
    }
    let a = args();
    println!("kube-proxy-rs scale benchmark: {BIN} {}", a.proxy_args.join(" "));
    for &size in &a.sizes {
        run(size, &a);
    }
}
