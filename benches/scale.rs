//! The scale benchmark: N services × M endpoints as manifests, the real binary in a throwaway lab, measured from
//! outside. `cargo bench --bench scale -- --sizes 1000,5000,10000 [--mode nftables|iptables-nft|iptables-legacy]`
//! (root; see BENCHMARKS.md). The bench knows nothing of a mode's rule layout: it passes the mode's flags, reads the
//! mode-independent metrics, and measures the kernel floor by dumping the node's ruleset with the mode's own tools
//! and loading the dump with the mode's own loader into a fresh namespace.

#[path = "scale/generate.rs"]
mod generate;
#[path = "scale/measure.rs"]
mod measure;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kube_proxy_rs::lab::manifests::{endpoint, endpoint_slice, node, service, to_yaml};
use kube_proxy_rs::lab::{ClusterLab, LabSpec, Netns, Where};
use kube_proxy_rs::model::IpFamily;

const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy-rs");
const NODE: &str = "bench-node";

/// The proxy mode under test, with its iptables backend.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Nftables,
    IptablesNft,
    IptablesLegacy,
}

impl Mode {
    fn parse(s: &str) -> Mode {
        match s {
            "nftables" => Mode::Nftables,
            "iptables-nft" => Mode::IptablesNft,
            "iptables-legacy" => Mode::IptablesLegacy,
            other => panic!("--mode {other}: expected nftables, iptables-nft or iptables-legacy"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Nftables => "nftables",
            Mode::IptablesNft => "iptables-nft",
            Mode::IptablesLegacy => "iptables-legacy",
        }
    }

    /// The iptables backend (`nft` or `legacy`), for the iptables mode.
    fn backend(self) -> Option<&'static str> {
        match self {
            Mode::Nftables => None,
            Mode::IptablesNft => Some("nft"),
            Mode::IptablesLegacy => Some("legacy"),
        }
    }

    fn proxy_args(self) -> Vec<String> {
        match self.backend() {
            None => vec!["--proxy-mode=nftables".into()],
            Some(b) => vec!["--proxy-mode=iptables".into(), format!("--iptables-backend={b}")],
        }
    }
}

struct Args {
    sizes: Vec<usize>,
    mode: Mode,
    endpoints: usize,
    churn_seconds: u64,
    rate_seconds: u64,
    /// Pairs of connection-rate measurements (10 services, then N).
    rate_rounds: usize,
    proxy_args: Vec<String>,
    /// Stop after the first sync and keep the directory and the proxy's log (for profiling start-up).
    first_sync_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        sizes: vec![1000],
        mode: Mode::Nftables,
        endpoints: 10,
        churn_seconds: 60,
        rate_seconds: 5,
        rate_rounds: 3,
        proxy_args: vec![],
        first_sync_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--sizes" => a.sizes = it.next().unwrap().split(',').map(|s| s.parse().unwrap()).collect(),
            "--mode" => a.mode = Mode::parse(&it.next().unwrap()),
            "--endpoints" => a.endpoints = it.next().unwrap().parse().unwrap(),
            "--churn-seconds" => a.churn_seconds = it.next().unwrap().parse().unwrap(),
            "--rate-seconds" => a.rate_seconds = it.next().unwrap().parse().unwrap(),
            "--rate-rounds" => a.rate_rounds = it.next().unwrap().parse().unwrap(),
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

/// Starts the proxy in the mode under test; returns it and its start time (monotonic and wall clock).
fn start_proxy(lab: &ClusterLab, dir: &Path, a: &Args) -> (Child, Instant, f64) {
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
    argv.extend(a.mode.proxy_args());
    argv.extend(a.proxy_args.iter().cloned());
    let log = std::fs::File::create(dir.join("../proxy.log")).unwrap();
    let mut cmd = lab.netns(&Where::Node).unwrap().command(&argv);
    cmd.stdout(Stdio::null()).stderr(log);
    let (t, wall) = (Instant::now(), epoch_now());
    (cmd.spawn().expect("start proxy"), t, wall)
}

/// Wall-clock time as the metrics' timestamps count it (seconds since the epoch).
fn epoch_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
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

/// New-connection rate through `target` from the client pod, measured the same way for every ruleset: the proxy
/// idle (no sync or clean-up sharing the CPU), a one-second warm-up that is not counted, then every lab
/// namespace's conntrack table emptied, so both measurements start from the same (empty) table rather than the
/// second inheriting the first's ~100k closing entries. The client closes with a reset (see `connection_rate`).
/// Returns the rate and the conntrack entries in the node's table before and after.
fn fair_rate(lab: &ClusterLab, p: &Child, target: SocketAddr, seconds: u64) -> (f64, u64, u64) {
    let node_ns = lab.netns(&Where::Node).unwrap();
    let client = lab.netns(&Where::pod("client")).unwrap();
    let all: Vec<&Netns> = [Where::Node, Where::pod("a"), Where::pod("b"), Where::pod("client")]
        .iter()
        .map(|w| lab.netns(w).unwrap())
        .collect();
    if !measure::wait_idle(p.id(), Duration::from_secs(60)) {
        eprintln!("  (the proxy was still busy after 60 s; measuring anyway)");
    }
    measure::connection_rate(client, target, 32, 1);
    measure::conntrack_flush(&all);
    let before = measure::conntrack_count(node_ns);
    let rate = measure::connection_rate(client, target, 32, seconds);
    (rate, before, measure::conntrack_count(node_ns))
}

/// The kernel floor: the node's ruleset dumped with the mode's own tools and loaded by the mode's own loader
/// into a fresh namespace, timed (`ip netns exec` included). nftables: `nft list ruleset` → `nft -f`;
/// iptables: `iptables-<b>-save` / `ip6tables-<b>-save` → `iptables-<b>-restore` / `ip6tables-<b>-restore`,
/// the two loads timed one after the other. Returns the seconds and the bytes loaded.
fn floor(mode: Mode, node_ns: &Netns, root: &Path) -> (f64, usize) {
    // (file, loader argv, whether the loader reads the file on stdin)
    let mut loads: Vec<(PathBuf, Vec<String>, bool)> = Vec::new();
    let mut bytes = 0;
    match mode.backend() {
        None => {
            let text = node_ns.run(&["nft", "list", "ruleset"]).expect("nft list ruleset");
            let file = root.join("ruleset.nft");
            std::fs::write(&file, &text).unwrap();
            bytes += text.len();
            loads.push((file.clone(), vec!["nft".into(), "-f".into(), file.to_string_lossy().into_owned()], false));
        }
        Some(b) => {
            for family in ["iptables", "ip6tables"] {
                let text = node_ns.run(&[format!("{family}-{b}-save")]).expect("iptables save");
                if !text.lines().any(|l| l.starts_with('*')) {
                    continue; // no table in this family
                }
                let file = root.join(format!("{family}-{b}.rules"));
                std::fs::write(&file, &text).unwrap();
                bytes += text.len();
                loads.push((file, vec![format!("{family}-{b}-restore")], true));
            }
        }
    }
    let floor_ns = Netns::new("kprfloor").unwrap();
    let mut total = 0.0;
    for (file, argv, on_stdin) in &loads {
        let mut cmd = floor_ns.command(argv);
        if *on_stdin {
            cmd.stdin(std::fs::File::open(file).unwrap());
        } else {
            cmd.stdin(Stdio::null());
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let t = Instant::now();
        let out = cmd.output().expect("run the loader");
        total += t.elapsed().as_secs_f64();
        assert!(out.status.success(), "{argv:?} < {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }
    drop(floor_ns);
    (total, bytes)
}

/// Wait until the proxy has synced after `since` (wall clock) and gone idle: a directory change may take several
/// partial syncs.
fn wait_applied(node_ns: &Netns, p: &Child, since: f64) {
    measure::wait_until(Duration::from_secs(600), || {
        std::thread::sleep(Duration::from_millis(300));
        measure::metrics(node_ns).is_some_and(|m| m.last_sync > since) && measure::wait_idle(p.id(), Duration::ZERO)
    })
    .expect("directory change applied");
}

/// The median, the mean of the middle two for an even count.
fn median_mean(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn run(size: usize, a: &Args) {
    println!("\n== {size} services × {} endpoints ({} NodePorts), mode {} ==", a.endpoints, size / 10, a.mode.name());
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
    let (p, _, _) = start_proxy(&lab, &dir, a);
    wait_synced(node_ns, 1.0, Duration::from_secs(30)).expect("baseline sync");
    let (rate_small, ct_small, ct_small_end) = fair_rate(&lab, &p, probe, a.rate_seconds);
    stop(p);
    let out = node_ns.run(&[BIN, "--cleanup"]);
    assert!(out.is_ok(), "cleanup: {out:?}");

    // N services, from an empty kernel.
    let bytes = generate::write_services(&dir, 8..size - 2, a.endpoints, NODE);
    let (p, _, started_wall) = start_proxy(&lab, &dir, a);
    let first = wait_synced(node_ns, 1.0, Duration::from_secs(600)).expect("first sync");
    let m = measure::metrics(node_ns).unwrap();
    let cold_full = m.full_sum;
    let rss_first = measure::rss_mib(p.id());
    let (user_first, sys_first) = measure::cpu_split(p.id());
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
    println!("first sync complete after start:  {:>8.3} s (seen from outside)", first.as_secs_f64());
    println!("full sync, empty kernel (metric):  {:>8.3} s", cold_full);
    // The metrics against the bench's own clock: the sync's end timestamp minus its duration gives when it began.
    println!(
        "  per the metrics that sync ran {:.3} s → {:.3} s after start; the bench saw it done at {:.3} s",
        m.last_sync - cold_full - started_wall,
        m.last_sync - started_wall,
        first.as_secs_f64()
    );
    println!("  proxy CPU until then: {user_first:.2} s user, {sys_first:.2} s system (helper processes included)");
    println!("resident memory after first sync: {:>8.1} MiB", rss_first);
    // jemalloc's background thread hands the sync's transient memory back within about a second.
    std::thread::sleep(Duration::from_secs(2));
    println!("resident memory 2 s later:        {:>8.1} MiB", measure::rss_mib(p.id()));
    let (rate_large, ct_large, ct_large_end) = fair_rate(&lab, &p, probe, a.rate_seconds);
    println!(
        "  conntrack entries in the node namespace, start → end of the first rate runs: {ct_small} → {ct_small_end} \
         (10 services), {ct_large} → {ct_large_end} ({size})"
    );

    // One EndpointSlice changed: flip the endpoint of `flip` between pods a and b.
    let mut latencies = Vec::new();
    let mut to_metric = Vec::new();
    let mut partials = Vec::new();
    measure::wait_idle(p.id(), Duration::from_secs(30));
    let cpu_before = measure::cpu_split(p.id());
    for (i, pod) in ["b", "a", "b", "a", "b"].iter().enumerate() {
        let before = measure::metrics(node_ns).unwrap();
        let written = epoch_now();
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
            to_metric.push(after.last_sync - written);
        }
    }
    let cpu_after = measure::cpu_split(p.id());
    let n_partials = partials.len();
    println!("one slice changed: sync (metric)  {:>8.1} ms median of {n_partials}", median(&mut partials) * 1e3);
    println!(
        "one slice changed: file → traffic {:>8.1} ms median of {} (file → sync done per the metric's timestamp: \
         {:.1} ms)",
        median(&mut latencies) * 1e3,
        latencies.len(),
        median(&mut to_metric) * 1e3
    );
    // Where a change's time goes: the proxy's own work (user) or the kernel's (system), per change (10 ms ticks,
    // so only a rough split; metrics scraping is included).
    println!(
        "  proxy CPU per change: {:.1} ms user, {:.1} ms system",
        (cpu_after.0 - cpu_before.0) / 5.0 * 1e3,
        (cpu_after.1 - cpu_before.1) / 5.0 * 1e3
    );

    // Restart with the rules in place.
    stop(p);
    let (p, _, _) = start_proxy(&lab, &dir, a);
    wait_synced(node_ns, 1.0, Duration::from_secs(600)).expect("restart sync");
    let restart_full = measure::metrics(node_ns).unwrap().full_sum;
    println!("full sync, restart (metric):       {:>8.3} s", restart_full);

    // The floor: the same ruleset loaded by the mode's own loader into a fresh namespace.
    let (floor, floor_bytes) = floor(a.mode, node_ns, &root);
    println!(
        "kernel floor ({}, {:.1} MiB):  {:>8.3} s; ratio ours/floor = {:.2} (cold), {:.2} (restart)",
        if a.mode.backend().is_some() { "iptables-restore" } else { "nft -f" },
        floor_bytes as f64 / 1048576.0,
        floor,
        cold_full / floor,
        restart_full / floor
    );

    // The rates again, `--rate-rounds` pairs in all, each pair 10 then N (the N services' files moved out of the
    // directory, the proxy removing them with partial syncs, then back), so that a drift of the shared machine's
    // load does not read as a difference between rulesets. Medians of each side.
    let parked = root.join("parked");
    std::fs::create_dir_all(&parked).unwrap();
    let bench_files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n.to_string_lossy().starts_with("bench-"))
        .collect();
    let keep = generate::file_name(0); // services 0..8: the baseline's 10 services (with probe and flip)
    let moved: Vec<_> = bench_files.iter().filter(|n| **n != *keep).collect();
    let (mut smalls, mut larges) = (vec![rate_small], vec![rate_large]);
    let mut order = format!("10: {rate_small:.0}, {size}: {rate_large:.0}");
    for _ in 1..a.rate_rounds {
        for n in &moved {
            std::fs::rename(dir.join(n), parked.join(n)).unwrap();
        }
        wait_applied(node_ns, &p, epoch_now());
        let (s, _, _) = fair_rate(&lab, &p, probe, a.rate_seconds);
        for n in &moved {
            std::fs::rename(parked.join(n), dir.join(n)).unwrap();
        }
        wait_applied(node_ns, &p, epoch_now());
        let (l, _, _) = fair_rate(&lab, &p, probe, a.rate_seconds);
        order += &format!(", 10: {s:.0}, {size}: {l:.0}");
        smalls.push(s);
        larges.push(l);
    }
    let (small, large) = (median_mean(&mut smalls), median_mean(&mut larges));
    println!(
        "new connections/s via ClusterIP:  {small:>8.0} at 10 services, {large:.0} at {size} ({:.2}×, medians); \
         in run order {order}",
        large / small
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
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let after = measure::metrics(node_ns).unwrap();
    let rss_after = measure::rss_mib(p.id());
    let n = after.partial_count - before.partial_count;
    println!(
        "churn: {changes} slice changes in {elapsed:.0} s ({:.0}/s); {n} partial syncs, mean {:.1} ms; RSS {rss_before:.1} → {rss_after:.1} MiB (max {max_rss:.1})",
        changes as f64 / elapsed,
        if n > 0.0 { (after.partial_sum - before.partial_sum) / n * 1e3 } else { f64::NAN },
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the scale benchmark needs root (network namespaces); skipped");
        return;
    }
    let a = args();
    println!("kube-proxy-rs scale benchmark: {BIN} {} {}", a.mode.proxy_args().join(" "), a.proxy_args.join(" "));
    for &size in &a.sizes {
        run(size, &a);
    }
}
