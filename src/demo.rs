//! `kube-proxy-rs demo`: a throwaway cluster in network namespaces (a node, three pods, an outside client),
//! real manifests, the real proxy in nftables mode, real traffic; then everything is removed, also on Ctrl-C
//! or failure. The machine's own network namespace is never touched.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant};

use crate::lab::manifests::{endpoint, endpoint_slice, node, service, to_yaml};
use crate::lab::{ClusterLab, LabSpec, NODE_UPLINK_IP_V4, ProbeResult, ProbeSpec, Where, http};
use crate::model::IpFamily;

const NODE: &str = "demo-node";
const PODS: [&str; 3] = ["pod-a", "pod-b", "pod-c"];
const CLUSTER_IP: &str = "10.96.0.10";
const NODE_PORT: u16 = 30080;
const METRICS: &str = "127.0.0.1:10249";

/// Everything the demo created outside the lab: removed on drop, whatever happens.
struct Scratch {
    dir: PathBuf,
    proxy: Option<Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn main(requests: u32) -> ExitCode {
    if !is_root() {
        eprintln!("demo: needs root (it creates network namespaces); run it with sudo");
        return ExitCode::FAILURE;
    }
    // Ctrl-C must still clean up: the handler only sets a flag; the demo checks it between steps and unwinds,
    // which drops the lab (processes killed, namespaces deleted).
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    install_interrupt_flag(interrupted.clone());
    match run(requests, &interrupted) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn install_interrupt_flag(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            eprintln!("\ninterrupted: cleaning up");
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
}

type DemoResult<T> = Result<T, String>;

fn check(interrupted: &std::sync::atomic::AtomicBool) -> DemoResult<()> {
    if interrupted.load(std::sync::atomic::Ordering::SeqCst) { Err("interrupted".into()) } else { Ok(()) }
}

fn write_manifests(dir: &Path, lab: &ClusterLab, pods: &[&str]) -> DemoResult<()> {
    let svc = service("demo", "web", &[CLUSTER_IP.parse().unwrap()]).port("http", "TCP", 80, 8080).node_port(NODE_PORT);
    let eps = pods.iter().map(|p| endpoint(lab.pod(p).addr(IpFamily::V4), NODE)).collect();
    let slice = endpoint_slice("demo", "web-abc12", "web", false, &[("http", "TCP", 8080)], eps);
    let node = node(NODE, &[lab.node_ip(IpFamily::V4)], &["10.244.0.0/24"], &[]);
    let docs = [svc.yaml(), to_yaml(&slice), to_yaml(&node)].join("---\n");
    // Write then rename: the proxy reads the file once, whole.
    let tmp = dir.join(".web.yaml.tmp");
    std::fs::write(&tmp, docs).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dir.join("web.yaml")).map_err(|e| e.to_string())
}

fn tally(results: &[ProbeResult]) -> (BTreeMap<String, u32>, BTreeMap<IpAddr, u32>, u32) {
    let (mut pods, mut seen, mut failed) = (BTreeMap::new(), BTreeMap::new(), 0);
    for r in results {
        match r {
            ProbeResult::Answered { pod, seen: s } => {
                *pods.entry(pod.clone()).or_insert(0) += 1;
                *seen.entry(s.ip()).or_insert(0) += 1;
            }
            _ => failed += 1,
        }
    }
    (pods, seen, failed)
}

fn report(title: &str, results: &[ProbeResult]) {
    let (pods, seen, failed) = tally(results);
    println!("  {title}");
    for (pod, n) in &pods {
        println!("    {pod:<6} answered {n:>3} times {}", "#".repeat(*n as usize));
    }
    let seen: Vec<String> = seen.iter().map(|(ip, n)| format!("{ip} ({n}x)")).collect();
    println!("    source address the pods saw: {}", seen.join(", "));
    if failed > 0 {
        println!("    {failed} requests got no answer");
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

fn run(requests: u32, interrupted: &std::sync::atomic::AtomicBool) -> DemoResult<()> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    println!("kube-proxy-rs demo: a node, three pods and an outside client in throwaway network namespaces\n");
    let mut spec = LabSpec::new(&exe);
    spec.node_name = NODE.into();
    for p in PODS {
        spec = spec.pod(p);
    }
    let mut lab = ClusterLab::build(&spec).map_err(|e| e.to_string())?;
    for p in PODS {
        lab.start_echo(p, 8080).map_err(|e| e.to_string())?;
        println!("  {p} at {} runs a server that answers with its name and the client address it saw", lab.pod(p).ip);
    }
    let dir = std::env::temp_dir().join(format!("kube-proxy-rs-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut scratch = Scratch { dir: dir.clone(), proxy: None };
    write_manifests(&dir, &lab, &PODS)?;
    println!(
        "\n  manifests in {}: Service demo/web (ClusterIP {CLUSTER_IP}:80, NodePort {NODE_PORT}) with 3 endpoints",
        dir.display()
    );
    check(interrupted)?;

    let log = std::fs::File::create(dir.join("proxy.log")).map_err(|e| e.to_string())?;
    let argv: Vec<String> = [
        exe.to_string_lossy().as_ref(),
        "--proxy-mode=nftables",
        "--manifests",
        &dir.to_string_lossy(),
        "--hostname-override",
        NODE,
        "--cluster-cidr=10.244.0.0/16",
        &format!("--metrics-bind-address={METRICS}"),
        "--healthz-bind-address=127.0.0.1:10256",
        "--iptables-min-sync-period=0s",
        // The lab node is not the initial network namespace: the conntrack table size is the machine's, and
        // read-only from here (kind passes the same for the same reason).
        "--conntrack-max-per-core=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cmd = lab.netns(&Where::Node).map_err(|e| e.to_string())?.command(&argv);
    cmd.stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
    let started = Instant::now();
    scratch.proxy = Some(cmd.spawn().map_err(|e| format!("starting the proxy: {e}"))?);
    println!("  kube-proxy-rs started in the node namespace (log: {}/proxy.log)", dir.display());

    let cluster_ip: SocketAddr = SocketAddr::new(CLUSTER_IP.parse().unwrap(), 80);
    let node_port = SocketAddr::new(IpAddr::V4(NODE_UPLINK_IP_V4), NODE_PORT);
    // Wait for the first sync: the service starts answering.
    loop {
        check(interrupted)?;
        let r = lab.probe(&Where::pod("pod-a"), &ProbeSpec::tcp(cluster_ip).timeout(Duration::from_millis(200)));
        if r.map(|r| r.iter().any(|x| x.pod().is_some())).unwrap_or(false) {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            return Err(format!("the service did not answer within 20 s; see {}/proxy.log", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("  rules programmed {:?} after start\n", started.elapsed());

    let probe = |from: &Where, target: SocketAddr| {
        lab.probe(from, &ProbeSpec::tcp(target).count(requests)).map_err(|e| e.to_string())
    };
    report(
        &format!("{requests} requests from pod-a to the ClusterIP {cluster_ip}:"),
        &probe(&Where::pod("pod-a"), cluster_ip)?,
    );
    check(interrupted)?;
    report(
        &format!("{requests} requests from the outside client to the NodePort {node_port} (masqueraded):"),
        &probe(&Where::Outside, node_port)?,
    );
    check(interrupted)?;

    write_manifests(&dir, &lab, &PODS[..2])?;
    let changed = Instant::now();
    loop {
        check(interrupted)?;
        let r = probe(&Where::pod("pod-a"), cluster_ip)?;
        if tally(&r).0.keys().all(|p| p != "pod-c") {
            println!(
                "\n  pod-c removed from the EndpointSlice: traffic stopped reaching it after {:?}",
                changed.elapsed()
            );
            report("the same requests now:", &r);
            break;
        }
        if changed.elapsed() > Duration::from_secs(10) {
            return Err("pod-c still received traffic 10 s after its removal".into());
        }
    }

    let metrics = http::get(lab.netns(&Where::Node).map_err(|e| e.to_string())?, METRICS.parse().unwrap(), "/metrics")
        .map_err(|e| e.to_string())?;
    let count = metric(&metrics.body, "kubeproxy_sync_proxy_rules_duration_seconds_count").unwrap_or(0.0);
    let sum = metric(&metrics.body, "kubeproxy_sync_proxy_rules_duration_seconds_sum").unwrap_or(0.0);
    let full = metric(&metrics.body, "kubeproxy_sync_full_proxy_rules_duration_seconds_sum").unwrap_or(0.0);
    let partial_n = metric(&metrics.body, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count").unwrap_or(0.0);
    let partial = metric(&metrics.body, "kubeproxy_sync_partial_proxy_rules_duration_seconds_sum").unwrap_or(0.0);
    println!(
        "\n  syncs (from the proxy's /metrics): {count} in {:.1} ms in all; full sync {:.1} ms; {partial_n} partial syncs averaging {:.1} ms",
        sum * 1000.0,
        full * 1000.0,
        if partial_n > 0.0 { partial * 1000.0 / partial_n } else { 0.0 }
    );
    drop(scratch);
    drop(lab);
    println!("\n  cleaned up: proxy stopped, namespaces and manifests removed");
    Ok(())
}
