//! The real-kernel harness: a lab cluster in network namespaces, the real binary running in the node
//! namespace against a manifest directory, and real traffic. Every scenario takes the proxy mode as a
//! parameter, so each mode runs the same scenarios.

#![allow(dead_code)]

/// Real-kernel tests of a scenario (or of every scenario) in one mode; they skip without root (never under
/// CI=true).
macro_rules! scenarios {
    ($mode:expr, $module:ident: $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if kube_proxy_rs::lab::root_or_skip(stringify!($name)) {
                    common::$module::$name($mode);
                }
            }
        )*
    };
}

/// The whole suite in one mode, as a module of tests.
macro_rules! suite {
    ($module_name:ident, $mode:expr) => {
        mod $module_name {
            use crate::common;

            scenarios!(
                $mode, scenarios:
                cluster_ip_from_the_node,
                cluster_ip_from_a_pod_is_balanced_and_keeps_the_source,
                hairpin_is_masqueraded,
                node_port_from_outside_is_masqueraded,
                external_and_load_balancer_ips_from_outside,
                undefined_port_is_not_forwarded,
                no_endpoints_is_refused_at_once,
                removed_endpoint_gets_no_traffic_within_2s,
                broken_manifests_change_nothing_for_good_ones,
                health_and_metrics_answer_like_upstream,
                sigterm_keeps_rules_and_cleanup_removes_everything,
                restart_keeps_connections_and_service,
            );

            scenarios!(
                $mode, policies:
                session_affinity_sticks_and_releases,
                external_policy_local,
                internal_policy_local,
                terminating_endpoints_are_the_fallback,
                topology_hints_follow_the_node_zone,
                load_balancer_source_ranges,
                node_port_addresses,
                detect_local_modes,
            );

            scenarios!(
                $mode, robustness:
                rules_removed_behind_our_back_are_restored,
                traffic_keeps_flowing_through_restarts,
                upstream_nftables_table_is_taken_over,
                upstream_iptables_rules_are_taken_over,
                config_file_is_used_and_a_change_restarts,
                udp_flows_follow_endpoint_changes,
            );

            scenarios!(
                $mode, api:
                api_source_follows_the_api_server,
                nothing_is_programmed_before_both_lists,
                watches_resume_and_relists_pass_only_differences,
                api_outage_keeps_traffic_flowing,
            );
        }
    };
}

pub mod api;
pub mod policies;
pub mod robustness;
pub mod scenarios;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use kube_proxy_rs::lab::http::{self, HttpResponse};
use kube_proxy_rs::lab::manifests::to_yaml;
use kube_proxy_rs::lab::{ClusterLab, LabSpec, ProbeResult, ProbeSpec, Where};
use kube_proxy_rs::model::IpFamily;

pub const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy-rs");
pub const NODE: &str = "node-a";
pub const METRICS_ADDR: &str = "127.0.0.1:10249";
pub const HEALTHZ_ADDR: &str = "127.0.0.1:10256";
pub const ECHO_PORT: u16 = 8080;

/// A proxy mode under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// nftables through its default transport, netlink.
    Nftables,
    /// nftables through its fallback transport, `nft -f`.
    NftablesViaNft,
    /// iptables on the iptables-nft backend.
    IptablesNft,
    /// iptables on the iptables-legacy backend.
    IptablesLegacy,
}

impl Mode {
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::Nftables => &["--proxy-mode=nftables"],
            Mode::NftablesViaNft => &["--proxy-mode=nftables", "--nftables-transport=nft"],
            Mode::IptablesNft => &["--proxy-mode=iptables", "--iptables-backend=nft"],
            Mode::IptablesLegacy => &["--proxy-mode=iptables", "--iptables-backend=legacy"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Nftables | Mode::NftablesViaNft => "nftables",
            Mode::IptablesNft | Mode::IptablesLegacy => "iptables",
        }
    }

    /// The iptables backend's name (`nft`, `legacy`), for the iptables modes.
    pub fn iptables_backend(self) -> Option<&'static str> {
        match self {
            Mode::IptablesNft => Some("nft"),
            Mode::IptablesLegacy => Some("legacy"),
            Mode::Nftables | Mode::NftablesViaNft => None,
        }
    }

    /// Commands that wipe this mode's rules behind the proxy's back, each with a description: what an operator
    /// or a misbehaving tool might do.
    pub fn tampering(self) -> Vec<(&'static str, Vec<Vec<String>>)> {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self.iptables_backend() {
            None => vec![
                ("nft flush ruleset", vec![argv(&["nft", "flush", "ruleset"])]),
                ("table deleted", vec![argv(&["nft", "delete", "table", "ip", "kube-proxy-rs"])]),
            ],
            Some(b) => {
                let wipe = |table: &str| {
                    let tool = format!("iptables-{b}");
                    vec![argv(&[&tool, "-t", table, "-F"]), argv(&[&tool, "-t", table, "-X"])]
                };
                let mut all = wipe("nat");
                all.extend(wipe("filter"));
                all.extend(wipe("mangle"));
                vec![("every table flushed and its chains deleted", all), ("nat table wiped", wipe("nat"))]
            }
        }
    }
}

/// A lab cluster with the proxy.
pub struct Cluster {
    pub lab: ClusterLab,
    pub mode: Mode,
    pub dir: PathBuf,
    proxy: std::cell::RefCell<Option<Child>>,
    extra_args: Vec<String>,
    /// Where the proxy reads objects from: the manifest directory unless `use_api_server` changed it.
    source_args: Vec<String>,
    log: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_proxy();
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(&self.log)
        {
            eprintln!("---- proxy log ----\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    /// Pods are (name, node); every pod runs an echo server on port 8080 (TCP and UDP).
    pub fn new(mode: Mode, pods: &[(&str, &str)]) -> Cluster {
        let mut spec = LabSpec::new(BIN);
        spec.node_name = NODE.into();
        for (name, node) in pods {
            spec = spec.pod_on(name, node);
        }
        let mut lab = ClusterLab::build(&spec).expect("lab");
        for (name, _) in pods {
            lab.start_echo(name, ECHO_PORT).expect("echo server");
        }
        let dir = std::env::temp_dir().join(kube_proxy_rs::lab::unique_name("kpr-manifests-"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("proxy.log");
        let source_args = vec!["--manifests".into(), dir.to_string_lossy().into_owned()];
        Cluster { lab, mode, dir, proxy: Default::default(), extra_args: Vec::new(), source_args, log }
    }

    /// Flags added to every start of the proxy.
    pub fn with_args(mut self, args: &[&str]) -> Cluster {
        self.extra_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Read objects from this API server (started in the node namespace) instead of the manifest directory.
    pub fn use_api_server(mut self, api: &kube_proxy_rs::lab::apiserver::ApiServer) -> Cluster {
        let path = self.dir.join("kubeconfig.yaml");
        std::fs::write(&path, api.kubeconfig()).unwrap();
        self.source_args = vec!["--kubeconfig".into(), path.to_string_lossy().into_owned()];
        self
    }

    /// Write a manifest file atomically (write + rename).
    pub fn write(&self, file: &str, docs: &[String]) {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, docs.join("---\n")).unwrap();
        std::fs::rename(&tmp, self.dir.join(file)).unwrap();
    }

    pub fn write_raw(&self, file: &str, text: &str) {
        std::fs::write(self.dir.join(file), text).unwrap();
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.join(file)).unwrap();
    }

    /// Write this node's Node object (InternalIPs of the lab node, pod CIDR, labels).
    pub fn write_node(&self, labels: &[(&str, &str)]) {
        let node = kube_proxy_rs::lab::manifests::node(
            NODE,
            &[self.lab.node_ip(IpFamily::V4), self.lab.node_ip(IpFamily::V6)],
            &["10.244.0.0/24", "fd00:10:244::/64"],
            labels,
        );
        self.write("node.yaml", &[to_yaml(&node)]);
    }

    fn proxy_command(&self, args: &[String]) -> Command {
        let mut argv = vec![BIN.to_string()];
        argv.extend(self.mode.flags().iter().map(|f| f.to_string()));
        argv.extend([
            "--hostname-override".into(),
            NODE.into(),
            "--cluster-cidr=10.244.0.0/16,fd00:10:244::/64".into(),
            format!("--metrics-bind-address={METRICS_ADDR}"),
            format!("--healthz-bind-address={HEALTHZ_ADDR}"),
            "--iptables-min-sync-period=0s".into(),
            // The lab node is not the initial network namespace: the conntrack table size is the machine's, and
            // read-only from here (kind passes the same for the same reason).
            "--conntrack-max-per-core=0".into(),
            "--v=4".into(),
        ]);
        argv.extend(self.source_args.iter().cloned());
        argv.extend(self.extra_args.iter().cloned());
        argv.extend(args.iter().cloned());
        self.lab.netns(&Where::Node).unwrap().command(&argv)
    }

    /// Start the proxy and wait until it has synced once.
    pub fn start_proxy(&self) {
        self.spawn_proxy();
        self.wait_synced_after(None);
    }

    /// Start the proxy without waiting for anything.
    pub fn spawn_proxy(&self) {
        assert!(self.proxy.borrow().is_none(), "proxy already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = self.proxy_command(&[]);
        cmd.stdout(Stdio::null()).stderr(log);
        *self.proxy.borrow_mut() = Some(cmd.spawn().expect("start proxy"));
    }

    /// Stop the proxy with SIGTERM (as the kubelet does) and wait for it to exit.
    pub fn stop_proxy(&self) -> std::process::ExitStatus {
        let mut child = self.proxy.borrow_mut().take().expect("proxy running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // `ip netns exec` execs the binary, so the child's pid is the proxy's.
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        child.wait().unwrap()
    }

    fn kill_proxy(&self) {
        if let Some(mut p) = self.proxy.borrow_mut().take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    pub fn proxy_running(&self) -> bool {
        self.proxy.borrow_mut().as_mut().is_some_and(|p| p.try_wait().unwrap().is_none())
    }

    /// Run the binary once in the node namespace (for --cleanup and friends).
    pub fn run_binary(&self, args: &[&str]) -> std::process::Output {
        let mut argv = vec![BIN];
        argv.extend_from_slice(args);
        self.lab.exec(&Where::Node, &argv).unwrap()
    }

    pub fn node_exec(&self, argv: &[&str]) -> String {
        let out = self.lab.exec(&Where::Node, argv).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The mode's whole ruleset as its own tool prints it, without counters (for before/after comparisons).
    pub fn rules_snapshot(&self) -> String {
        match self.mode.iptables_backend() {
            None => self.node_exec(&["nft", "list", "ruleset"]),
            Some(b) => {
                let mut text = String::new();
                for family in ["iptables", "ip6tables"] {
                    text += &self.node_exec(&[&format!("{family}-{b}-save")]);
                }
                // Comments carry timestamps; chain declarations carry packet counters.
                text.lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(|l| l.split(" [").next().unwrap_or(l))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
    }

    /// Whether any rule of this proxy is in the kernel.
    pub fn rules_programmed(&self) -> bool {
        let text = self.rules_snapshot();
        match self.mode.iptables_backend() {
            None => text.contains("kube-proxy-rs"),
            Some(_) => text.contains("KUBE-SERVICES"),
        }
    }

    pub fn get(&self, addr: &str, path: &str) -> HttpResponse {
        http::get(self.lab.netns(&Where::Node).unwrap(), addr.parse().unwrap(), path).expect("http get")
    }

    pub fn metrics(&self) -> String {
        self.get(METRICS_ADDR, "/metrics").body
    }

    /// A metric's value (first sample whose line starts with `name`).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    }

    fn last_sync(&self) -> Option<f64> {
        let text = http::get(self.lab.netns(&Where::Node).ok()?, METRICS_ADDR.parse().ok()?, "/metrics").ok()?.body;
        let line = text.lines().find(|l| l.starts_with("kubeproxy_sync_proxy_rules_last_timestamp_seconds "))?;
        line.rsplit(' ').next()?.parse().ok()
    }

    /// Wait until the proxy has completed a sync that started after `since` (`None`: any sync).
    pub fn wait_synced_after(&self, since: Option<SystemTime>) {
        let since = since.map_or(0.0, |t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            assert!(
                self.proxy_running(),
                "proxy exited; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            if self.last_sync().is_some_and(|t| t > since) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("proxy did not sync within 20 s");
    }

    pub fn probe(&self, from: &Where, spec: &ProbeSpec) -> Vec<ProbeResult> {
        self.lab.probe(from, spec).expect("probe")
    }

    /// Probe until `accept` holds for the results or `limit` passes; returns the last results and the time.
    pub fn probe_until(
        &self,
        from: &Where,
        spec: &ProbeSpec,
        limit: Duration,
        accept: impl Fn(&[ProbeResult]) -> bool,
    ) -> (Vec<ProbeResult>, Duration) {
        let start = Instant::now();
        loop {
            let r = self.probe(from, spec);
            if accept(&r) || start.elapsed() > limit {
                return (r, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pod_ip(&self, pod: &str, family: IpFamily) -> IpAddr {
        self.lab.pod(pod).addr(family)
    }
}

/// Which pods answered, and how often.
pub fn answered_by(results: &[ProbeResult]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in results {
        if let Some(p) = r.pod() {
            *m.entry(p.to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// Every result answered; returns the set of (pod, seen source IP).
pub fn all_answered(results: &[ProbeResult]) -> Vec<(String, IpAddr)> {
    results
        .iter()
        .map(|r| match r {
            ProbeResult::Answered { pod, seen } => (pod.clone(), seen.ip()),
            other => panic!("expected an answer, got {other:?} in {results:?}"),
        })
        .collect()
}

pub fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

pub fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}
