//! Staying correct when the world misbehaves: rules flushed behind our back, restarts under traffic, taking
//! over a node from upstream kube-proxy.

use std::time::{Duration, Instant, SystemTime};

use kube_proxy_rs::lab::manifests::{endpoint, endpoint_slice, service, to_yaml};
use kube_proxy_rs::lab::{ProbeResult, ProbeSpec, Where};
use kube_proxy_rs::model::IpFamily::{V4, V6};

use super::*;

const VIP: &str = "10.96.0.60";
const VIP6: &str = "fd00:96::60";

fn docs(c: &Cluster, pods: &[&str]) -> Vec<String> {
    let mut d = vec![
        service("demo", "r", &[v4(VIP), v4(VIP6)]).port("http", "TCP", 80, 8080).port("dns", "UDP", 53, 8080).yaml(),
    ];
    for (family, name) in [(V4, "r-v4"), (V6, "r-v6")] {
        let eps = pods.iter().map(|p| endpoint(c.pod_ip(p, family), NODE)).collect();
        d.push(to_yaml(&endpoint_slice(
            "demo",
            name,
            "r",
            family == V6,
            &[("http", "TCP", 8080), ("dns", "UDP", 8080)],
            eps,
        )));
    }
    d
}

fn start(mode: Mode, pods: &[(&str, &str)], endpoints: &[&str], args: &[&str]) -> Cluster {
    let c = Cluster::new(mode, pods).with_args(args);
    c.write_node(&[]);
    let d = docs(&c, endpoints);
    c.write("r.yaml", &d);
    c.start_proxy();
    c
}

fn works(c: &Cluster, target: &str) -> bool {
    let r =
        c.probe(&Where::pod("client"), &ProbeSpec::tcp(target.parse().unwrap()).timeout(Duration::from_millis(300)));
    r[0].pod().is_some()
}

pub fn rules_removed_behind_our_back_are_restored(mode: Mode) {
    let c = start(mode, &[("client", NODE), ("a", NODE)], &["a"], &["--iptables-sync-period=2s"]);
    for (what, commands) in mode.tampering() {
        assert!(works(&c, "10.96.0.60:80"));
        for argv in commands {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let out = c.lab.exec(&Where::Node, &argv).unwrap();
            assert!(out.status.success(), "{what}: {argv:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let broken = Instant::now();
        assert!(!works(&c, "10.96.0.60:80"), "{what}: the service is really gone");
        while !(works(&c, "10.96.0.60:80") && works(&c, "[fd00:96::60]:80")) {
            assert!(broken.elapsed() < Duration::from_secs(5), "{what}: not restored within one sync period (2s)");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn traffic_keeps_flowing_through_restarts(mode: Mode) {
    let c = start(mode, &[("client", NODE), ("a", NODE), ("b", NODE)], &["a", "b"], &[]);
    std::thread::scope(|scope| {
        let lab = &c.lab;
        // New connections every 10 ms for the whole restart, and a long-lived one.
        let load = scope.spawn(move || {
            let spec = ProbeSpec::tcp("10.96.0.60:80".parse().unwrap()).count(250).interval(Duration::from_millis(10));
            lab.probe(&Where::pod("client"), &spec).unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut session =
            lab.open_session(&Where::pod("client"), &ProbeSpec::tcp("10.96.0.60:80".parse().unwrap())).unwrap();
        let pod = session.greeting().pod().unwrap().to_string();
        std::thread::sleep(Duration::from_millis(200));
        c.stop_proxy();
        let t = SystemTime::now();
        c.start_proxy();
        c.wait_synced_after(Some(t));
        assert_eq!(
            session.send("x").unwrap(),
            kube_proxy_rs::lab::SessionReply::Echoed { pod, text: "x".into() },
            "the long-lived connection survives the restart"
        );
        let results = load.join().unwrap();
        let failed: Vec<&ProbeResult> = results.iter().filter(|r| r.pod().is_none()).collect();
        assert!(
            failed.is_empty(),
            "{} of {} connections failed during the restart: {failed:?}",
            failed.len(),
            results.len()
        );
    });
}

pub fn upstream_nftables_table_is_taken_over(mode: Mode) {
    let c = Cluster::new(mode, &[("client", NODE), ("a", NODE)]);
    c.write_node(&[]);
    let d = docs(&c, &["a"]);
    c.write("r.yaml", &d);
    // What upstream kube-proxy's nftables mode leaves: its own table with a DNAT for the same cluster IP,
    // to a pod that does not exist.
    for cmd in [
        "add table ip kube-proxy",
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }",
        "add rule ip kube-proxy nat-prerouting ip daddr 10.96.0.60 tcp dport 80 dnat to 10.244.0.250:8080",
        "add table ip6 kube-proxy",
    ] {
        let out = c.lab.exec(&Where::Node, &["nft", cmd]).unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(!works(&c, "10.96.0.60:80"));
    c.start_proxy();
    let tables = c.node_exec(&["nft", "list", "tables"]);
    assert!(
        !tables.lines().any(|l| l.trim() == "table ip kube-proxy" || l.trim() == "table ip6 kube-proxy"),
        "{tables}"
    );
    assert!(c.rules_programmed(), "{}", c.rules_snapshot());
    assert!(works(&c, "10.96.0.60:80"));
}

pub fn upstream_iptables_rules_are_taken_over(mode: Mode) {
    let c = Cluster::new(mode, &[("client", NODE), ("a", NODE)]);
    c.write_node(&[]);
    let d = docs(&c, &["a"]);
    c.write("r.yaml", &d);
    // Upstream's iptables mode left its chains (and the kubelet its own) in both iptables backends.
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/src/dataplane/iptables/fixtures/iptables-mode-v4.save");
    for restore in ["iptables-nft-restore", "iptables-legacy-restore"] {
        let mut cmd = c.lab.netns(&Where::Node).unwrap().command(&[restore]);
        cmd.stdin(std::fs::File::open(fixture).unwrap());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{restore}: {}", String::from_utf8_lossy(&out.stderr));
    }
    c.start_proxy();
    assert!(works(&c, "10.96.0.60:80"));
    for backend in ["nft", "legacy"] {
        let save = format!("iptables-{backend}-save");
        let after = c.node_exec(&[&save]);
        // In the iptables mode's own backend our chains replace upstream's: only its per-service chains for
        // services that do not exist here must go.
        let gone: &[&str] = if mode.iptables_backend() == Some(backend) {
            &["KUBE-SVC-XPGD46QRK7WJZT7O", "KUBE-SEP-SXIVWICOYRO3J4NJ", "KUBE-XLB-", "KUBE-FW-NUKIZ6OKUXPJNT4C"]
        } else {
            &["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-SVC-", "KUBE-SEP-"]
        };
        for gone in gone {
            assert!(!after.contains(gone), "{save}: {gone} left behind:\n{after}");
        }
        for kept in [":KUBE-FIREWALL", ":KUBE-KUBELET-CANARY", ":CNI-XYZ"] {
            assert!(after.contains(kept), "{save}: {kept} is not ours and must stay:\n{after}");
        }
    }
}

pub fn config_file_is_used_and_a_change_restarts(mode: Mode) {
    let kubeadm = include_str!("../fixtures/kubeadm-config.conf");
    let mut conf = kubeadm
        .replace("metricsBindAddress: \"\"", "metricsBindAddress: 127.0.0.1:10249")
        .replace("mode: \"\"", &format!("mode: {}", mode.name()));
    // The mode's own section of the file sets its sync period.
    let section = conf.find(&format!("\n{}:\n", mode.name())).expect("the mode's section");
    let period = section + conf[section..].find("  syncPeriod: 0s").expect("its syncPeriod");
    conf.replace_range(period..period + "  syncPeriod: 0s".len(), "  syncPeriod: 45s");
    let c = Cluster::new(mode, &[("client", NODE), ("a", NODE)]);
    let path = c.dir.join("config.conf");
    std::fs::write(&path, &conf).unwrap();
    let c = c.with_args(&["--config", &path.to_string_lossy(), "--iptables-sync-period=5s"]);
    c.write_node(&[]);
    let d = docs(&c, &["a"]);
    c.write("r.yaml", &d);
    c.start_proxy();
    assert!(works(&c, "10.96.0.60:80"));
    let cz: serde_json::Value = serde_json::from_str(&c.get(METRICS_ADDR, "/configz").body).unwrap();
    let cz = &cz["kubeproxy.config.k8s.io"];
    assert_eq!(cz[mode.name()]["syncPeriod"], "45s", "the file wins over --iptables-sync-period: {cz}");
    assert_eq!(cz["clusterCIDR"], "10.244.0.0/16");
    assert_eq!(cz["hostnameOverride"], NODE, "--hostname-override still applies");
    // A changed file makes the process exit (the DaemonSet restarts it with the new configuration).
    std::fs::write(&path, conf.replace("45s", "50s")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.proxy_running() {
        assert!(Instant::now() < deadline, "still running 5 s after its config file changed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(works(&c, "10.96.0.60:80"), "the rules stay while it restarts");
}

pub fn udp_flows_follow_endpoint_changes(mode: Mode) {
    let c = start(mode, &[("client", NODE), ("a", NODE), ("b", NODE)], &["a"], &[]);
    for (family, vip) in [(V4, "10.96.0.60:53"), (V6, "[fd00:96::60]:53")] {
        let spec =
            ProbeSpec::udp(vip.parse().unwrap()).source_port(40000 + family as u16).timeout(Duration::from_millis(300));
        let r = c.probe(&Where::pod("client"), &spec.clone().count(3));
        assert!(r.iter().all(|x| x.pod() == Some("a")), "{family:?}: {r:?}");
        // The backend is replaced while the client keeps its source port (one conntrack flow): without cleanup
        // the flow would stay pinned to a, which is still up and would keep answering.
        c.write("r.yaml", &docs(&c, &["b"]));
        let (r, took) =
            c.probe_until(&Where::pod("client"), &spec, Duration::from_secs(3), |r| r[0].pod() == Some("b"));
        assert_eq!(r[0].pod(), Some("b"), "{family:?}: the flow still goes to a after {took:?}");
        c.write("r.yaml", &docs(&c, &["a"]));
        let (r, _) = c.probe_until(&Where::pod("client"), &spec, Duration::from_secs(3), |r| r[0].pod() == Some("a"));
        assert_eq!(r[0].pod(), Some("a"));
    }
    // From no endpoints to some: the client's first datagrams found nothing; once there is an endpoint, the same
    // flow reaches it.
    c.write("r.yaml", &docs(&c, &[]));
    let spec = ProbeSpec::udp("10.96.0.60:53".parse().unwrap()).source_port(40100).timeout(Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(500));
    let r = c.probe(&Where::pod("client"), &spec);
    assert!(r[0].pod().is_none(), "{r:?}");
    c.write("r.yaml", &docs(&c, &["b"]));
    let (r, took) = c.probe_until(&Where::pod("client"), &spec, Duration::from_secs(3), |r| r[0].pod() == Some("b"));
    assert_eq!(r[0].pod(), Some("b"), "not answered {took:?} after the endpoint appeared");
}
