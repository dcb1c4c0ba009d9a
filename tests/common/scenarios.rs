//! Scenarios every proxy mode must pass, with real packets through the real kernel.

use std::time::{Duration, Instant, SystemTime};

use kube_proxy_rs::lab::manifests::{endpoint, endpoint_slice, service, to_yaml};
use kube_proxy_rs::lab::{ProbeResult, ProbeSpec, SessionReply, Where};
use kube_proxy_rs::model::IpFamily::{self, V4, V6};

use super::*;

const WEB_IP: &str = "10.96.0.10";
const WEB_IP6: &str = "fd00:96::10";

/// Service demo/web: port 80/TCP and 53/UDP ("dns") → 8080 on the given pods (all on this node).
fn web(c: &Cluster, pods: &[&str]) -> Vec<String> {
    web_with(c, pods, |s| s)
}

fn web_with(
    c: &Cluster,
    pods: &[&str],
    customize: impl FnOnce(kube_proxy_rs::lab::manifests::ServiceBuilder) -> kube_proxy_rs::lab::manifests::ServiceBuilder,
) -> Vec<String> {
    let svc = customize(
        service("demo", "web", &[v4(WEB_IP), v4(WEB_IP6)]).port("http", "TCP", 80, 8080).port("dns", "UDP", 53, 8080),
    );
    let mut docs = vec![svc.yaml()];
    for (family, name) in [(V4, "web-v4"), (V6, "web-v6")] {
        let eps = pods.iter().map(|p| endpoint(c.pod_ip(p, family), NODE)).collect();
        let ports = [("http", "TCP", 8080), ("dns", "UDP", 8080)];
        docs.push(to_yaml(&endpoint_slice("demo", name, "web", family == V6, &ports, eps)));
    }
    docs
}

fn vip(family: IpFamily, port: u16) -> std::net::SocketAddr {
    sock(v4(if family == V4 { WEB_IP } else { WEB_IP6 }), port)
}

fn started(mode: Mode, pods: &[(&str, &str)], web_pods: &[&str]) -> Cluster {
    let c = Cluster::new(mode, pods);
    c.write_node(&[]);
    c.write("web.yaml", &web(&c, web_pods));
    c.start_proxy();
    c
}

pub fn cluster_ip_from_the_node(mode: Mode) {
    let c = started(mode, &[("a", NODE), ("b", NODE)], &["a", "b"]);
    for family in [V4, V6] {
        let r = c.probe(&Where::Node, &ProbeSpec::tcp(vip(family, 80)).count(20));
        let answers = all_answered(&r);
        // The node's own address is outside the cluster CIDR: masqueraded to the node's pod-side address.
        assert!(answers.iter().all(|(_, seen)| *seen == c.lab.node_pod_side_ip(family)), "{family:?}: {answers:?}");
        assert_eq!(answered_by(&r).len(), 2, "{family:?}: both endpoints used: {r:?}");
    }
}

pub fn cluster_ip_from_a_pod_is_balanced_and_keeps_the_source(mode: Mode) {
    let c = started(mode, &[("client", NODE), ("a", NODE), ("b", NODE), ("c", NODE)], &["a", "b", "c"]);
    for family in [V4, V6] {
        let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(vip(family, 80)).count(60));
        let by = answered_by(&r);
        assert_eq!(by.keys().collect::<Vec<_>>(), ["a", "b", "c"], "{family:?}: {by:?}");
        assert!(by.values().all(|n| *n >= 5), "{family:?}: roughly balanced: {by:?}");
        let client = c.pod_ip("client", family);
        assert!(all_answered(&r).iter().all(|(_, seen)| *seen == client), "pod traffic is not masqueraded");
        let r = c.probe(&Where::pod("client"), &ProbeSpec::udp(vip(family, 53)).count(20));
        assert!(all_answered(&r).iter().all(|(_, seen)| *seen == client), "{family:?} UDP: {r:?}");
    }
}

pub fn hairpin_is_masqueraded(mode: Mode) {
    let c = started(mode, &[("a", NODE)], &["a"]);
    for family in [V4, V6] {
        let r = c.probe(&Where::pod("a"), &ProbeSpec::tcp(vip(family, 80)).count(5));
        for (pod, seen) in all_answered(&r) {
            assert_eq!(pod, "a");
            assert_eq!(seen, c.lab.node_pod_side_ip(family), "{family:?}: a pod reaching itself sees the node");
        }
    }
}

pub fn node_port_from_outside_is_masqueraded(mode: Mode) {
    let c = Cluster::new(mode, &[("a", NODE), ("b", NODE)]);
    c.write_node(&[]);
    c.write("web.yaml", &web_with(&c, &["a", "b"], |s| s.node_port(30053)));
    c.write(
        "np.yaml",
        &[
            service("demo", "np", &[v4("10.96.0.20"), v4("fd00:96::20")])
                .port("http", "TCP", 80, 8080)
                .node_port(30080)
                .yaml(),
            to_yaml(&endpoint_slice(
                "demo",
                "np-v4",
                "np",
                false,
                &[("http", "TCP", 8080)],
                vec![endpoint(c.pod_ip("a", V4), NODE)],
            )),
            to_yaml(&endpoint_slice(
                "demo",
                "np-v6",
                "np",
                true,
                &[("http", "TCP", 8080)],
                vec![endpoint(c.pod_ip("a", V6), NODE)],
            )),
        ],
    );
    c.start_proxy();
    for family in [V4, V6] {
        let node_ip = c.lab.node_ip(family);
        let r = c.probe(&Where::Outside, &ProbeSpec::tcp(sock(node_ip, 30080)).count(5));
        for (pod, seen) in all_answered(&r) {
            assert_eq!(pod, "a");
            assert_eq!(seen, c.lab.node_pod_side_ip(family), "{family:?}: external traffic is masqueraded");
        }
        let r = c.probe(&Where::Outside, &ProbeSpec::udp(sock(node_ip, 30053)).count(10));
        assert!(all_answered(&r).iter().all(|(_, seen)| *seen == c.lab.node_pod_side_ip(family)), "{r:?}");
    }
}

pub fn external_and_load_balancer_ips_from_outside(mode: Mode) {
    let c = Cluster::new(mode, &[("a", NODE)]);
    c.write_node(&[]);
    let ext = [v4("203.0.113.10"), v4("2001:db8:113::10")];
    let lb = [v4("198.51.100.10"), v4("2001:db8:100::10")];
    c.write("web.yaml", &web_with(&c, &["a"], |s| s.external_ips(&ext).node_port(30080).load_balancer(&lb)));
    c.start_proxy();
    for ip in ext.iter().chain(&lb) {
        let r = c.probe(&Where::Outside, &ProbeSpec::tcp(sock(*ip, 80)).count(3));
        let family = IpFamily::of(ip);
        for (pod, seen) in all_answered(&r) {
            assert_eq!((pod.as_str(), seen), ("a", c.lab.node_pod_side_ip(family)), "{ip}");
        }
    }
}

pub fn undefined_port_is_not_forwarded(mode: Mode) {
    let c = started(mode, &[("client", NODE), ("a", NODE)], &["a"]);
    for family in [V4, V6] {
        let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(vip(family, 8080)).timeout(Duration::from_millis(500)));
        assert!(r.iter().all(|x| x.pod().is_none()), "{family:?}: port 8080 of the service is not defined: {r:?}");
        let r = c.probe(&Where::Node, &ProbeSpec::tcp(vip(family, 81)).timeout(Duration::from_millis(500)));
        assert!(r.iter().all(|x| x.pod().is_none()), "{family:?}: {r:?}");
    }
}

pub fn no_endpoints_is_refused_at_once(mode: Mode) {
    let c = started(mode, &[("client", NODE)], &[]);
    for family in [V4, V6] {
        for from in [Where::pod("client"), Where::Node] {
            let t = Instant::now();
            let r = c.probe(&from, &ProbeSpec::tcp(vip(family, 80)).timeout(Duration::from_secs(3)));
            assert_eq!(r, [ProbeResult::Refused], "{family:?} from {from:?}");
            assert!(t.elapsed() < Duration::from_secs(1), "refused at once, not a timeout: {:?}", t.elapsed());
            let t = Instant::now();
            let r = c.probe(&from, &ProbeSpec::udp(vip(family, 53)).timeout(Duration::from_secs(2)));
            // From a pod the ICMP error comes back; on the node's own output path the kernel fails the send
            // itself (EPERM). Either way the client knows at once.
            let refused = match &r[..] {
                [ProbeResult::Refused] => true,
                [ProbeResult::Error(e)] => from == Where::Node && e.contains("not permitted"),
                _ => false,
            };
            assert!(refused, "{family:?} UDP from {from:?}: {r:?}");
            assert!(t.elapsed() < Duration::from_secs(1), "UDP refused at once: {:?}", t.elapsed());
        }
    }
}

pub fn removed_endpoint_gets_no_traffic_within_2s(mode: Mode) {
    let c = started(mode, &[("client", NODE), ("a", NODE), ("b", NODE)], &["a", "b"]);
    let spec = ProbeSpec::tcp(vip(V4, 80)).count(20);
    assert_eq!(answered_by(&c.probe(&Where::pod("client"), &spec)).len(), 2);
    c.write("web.yaml", &web(&c, &["a"]));
    let changed = Instant::now();
    let (r, _) = c.probe_until(&Where::pod("client"), &spec, Duration::from_secs(3), |r| {
        answered_by(r).keys().all(|p| p == "a") && r.iter().all(|x| x.pod().is_some())
    });
    let elapsed = changed.elapsed();
    assert!(answered_by(&r).keys().all(|p| p == "a"), "b still answers after {elapsed:?}: {r:?}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

pub fn broken_manifests_change_nothing_for_good_ones(mode: Mode) {
    let c = started(mode, &[("client", NODE), ("a", NODE)], &["a"]);
    let spec = ProbeSpec::tcp(vip(V4, 80)).count(3);
    c.write_raw("broken.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: [unterminated\n");
    c.write_raw(
        "invalid.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: demo}\nspec:\n  clusterIP: 10.96.0.99\n  ports: [{port: 70000}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: bad-ip, namespace: demo}\nspec:\n  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n",
    );
    // A good service added next to the broken files still gets programmed.
    c.write(
        "more.yaml",
        &[
            service("demo", "more", &[v4("10.96.0.30")]).port("http", "TCP", 80, 8080).yaml(),
            to_yaml(&endpoint_slice(
                "demo",
                "more-1",
                "more",
                false,
                &[("http", "TCP", 8080)],
                vec![endpoint(c.pod_ip("a", V4), NODE)],
            )),
        ],
    );
    let (r, _) = c.probe_until(
        &Where::pod("client"),
        &ProbeSpec::tcp(sock(v4("10.96.0.30"), 80)),
        Duration::from_secs(3),
        |r| r.iter().all(|x| x.pod().is_some()),
    );
    assert_eq!(answered_by(&r).get("a"), Some(&1), "{r:?}");
    assert_eq!(all_answered(&c.probe(&Where::pod("client"), &spec)).len(), 3);
    assert!(c.proxy_running(), "bad input never stops the proxy");
    let log = std::fs::read_to_string(c.dir.join("proxy.log")).unwrap();
    assert!(log.contains("broken.yaml"), "the broken file is named in the log:\n{log}");
    assert!(log.contains("70000"), "the bad port is named in the log:\n{log}");
    assert!(log.contains("10.96.0.300"), "the bad IP is named in the log:\n{log}");
}

pub fn health_and_metrics_answer_like_upstream(mode: Mode) {
    let c = started(mode, &[("a", NODE)], &["a"]);
    let h = c.get(HEALTHZ_ADDR, "/healthz");
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&h.body).unwrap();
    assert_eq!(v["nodeEligible"], true);
    assert!(v["lastUpdated"].as_str().unwrap().ends_with(" UTC"), "{v}");
    assert!(v["currentTime"].as_str().unwrap().contains(" +0000 UTC m=+"), "{v}");
    let l = c.get(HEALTHZ_ADDR, "/livez");
    assert_eq!(l.status, 200);
    let v: serde_json::Value = serde_json::from_str(&l.body).unwrap();
    assert!(v.get("lastUpdated").is_some() && v.get("nodeEligible").is_none(), "{v}");
    assert_eq!(c.get(METRICS_ADDR, "/proxyMode").body, mode.name());
    assert_eq!(c.get(METRICS_ADDR, "/healthz").body, "ok");
    let cz: serde_json::Value = serde_json::from_str(&c.get(METRICS_ADDR, "/configz").body).unwrap();
    assert_eq!(cz["kubeproxy.config.k8s.io"]["mode"], mode.name());
    assert_eq!(cz["kubeproxy.config.k8s.io"]["hostnameOverride"], NODE);
    let m = c.metrics();
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_network_programming_duration_seconds_bucket",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
        "kubeproxy_proxy_livez_total{code=\"200\"} 1",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    assert!(c.metric("kubeproxy_sync_proxy_rules_service_changes_total") >= 1.0);

    // A node marked for deletion by the cluster autoscaler is reported unhealthy on /healthz, not /livez.
    let mut node = kube_proxy_rs::lab::manifests::node(NODE, &[c.lab.node_ip(V4)], &["10.244.0.0/24"], &[]);
    node.spec.as_mut().unwrap().taints = Some(vec![k8s_openapi::api::core::v1::Taint {
        key: "ToBeDeletedByClusterAutoscaler".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    }]);
    c.write("node.yaml", &[to_yaml(&node)]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.get(HEALTHZ_ADDR, "/healthz").status != 503 {
        assert!(Instant::now() < deadline, "/healthz stays 200 for a node being deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let v: serde_json::Value = serde_json::from_str(&c.get(HEALTHZ_ADDR, "/healthz").body).unwrap();
    assert_eq!(v["nodeEligible"], false);
    assert_eq!(c.get(HEALTHZ_ADDR, "/livez").status, 200);
}

pub fn sigterm_keeps_rules_and_cleanup_removes_everything(mode: Mode) {
    let c = started(mode, &[("client", NODE), ("a", NODE)], &["a"]);
    let status = c.stop_proxy();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
    // Rules stay: traffic still flows with no proxy running.
    let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(vip(V4, 80)));
    assert_eq!(answered_by(&r).get("a"), Some(&1), "{r:?}");
    assert!(c.rules_programmed(), "{}", c.rules_snapshot());
    let out = c.run_binary(&["--cleanup"]);
    assert!(out.status.success(), "--cleanup: {}", String::from_utf8_lossy(&out.stderr));
    // Nothing of ours is left in nftables or in either iptables backend, whichever mode ran.
    let mut after = c.node_exec(&["nft", "list", "ruleset"]);
    for save in ["iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"] {
        after += &c.node_exec(&[save]);
    }
    assert!(!after.contains("kube-proxy-rs"), "--cleanup left:\n{after}");
    assert!(!after.contains("KUBE-"), "--cleanup left:\n{after}");
    let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(vip(V4, 80)).timeout(Duration::from_millis(300)));
    assert!(r[0].pod().is_none(), "no rules, no service: {r:?}");
}

pub fn restart_keeps_connections_and_service(mode: Mode) {
    let c = started(mode, &[("client", NODE), ("a", NODE), ("b", NODE)], &["a", "b"]);
    let mut session = c.lab.open_session(&Where::pod("client"), &ProbeSpec::tcp(vip(V4, 80))).unwrap();
    let first = session.greeting().pod().expect("connected").to_string();
    c.stop_proxy();
    let restarted = SystemTime::now();
    c.start_proxy();
    c.wait_synced_after(Some(restarted));
    assert_eq!(
        session.send("still there?").unwrap(),
        SessionReply::Echoed { pod: first.clone(), text: "still there?".into() }
    );
    let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(vip(V4, 80)).count(10));
    assert_eq!(all_answered(&r).len(), 10);
    // An unrelated change (a new service) does not disturb the connection either.
    c.write("other.yaml", &[service("demo", "other", &[v4("10.96.0.40")]).port("http", "TCP", 80, 8080).yaml()]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(session.send("and now?").unwrap(), SessionReply::Echoed { pod: first, text: "and now?".into() });
}
