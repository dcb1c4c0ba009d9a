//! Service semantics beyond plain balancing: affinity, traffic policies, health-check node ports, endpoint
//! conditions, topology, source ranges, node port addresses and local-traffic detection.

use std::time::{Duration, Instant};

use kube_proxy_rs::lab::http;
use kube_proxy_rs::lab::manifests::{EndpointBuilder, ServiceBuilder, endpoint, endpoint_slice, service, to_yaml};
use kube_proxy_rs::lab::{ProbeResult, ProbeSpec, Where};
use kube_proxy_rs::model::IpFamily::{self, V4, V6};

use super::*;

const VIP: &str = "10.96.0.50";
const VIP6: &str = "fd00:96::50";
const NODE_B: &str = "node-b";

fn vip(family: IpFamily) -> IpAddr {
    v4(if family == V4 { VIP } else { VIP6 })
}

/// Service demo/svc (port 80/TCP → 8080) customised by `f`, with slices listing `eps(family)`.
fn svc(
    c: &Cluster,
    f: impl FnOnce(ServiceBuilder) -> ServiceBuilder,
    eps: impl Fn(IpFamily) -> Vec<EndpointBuilder>,
) -> Vec<String> {
    let s = f(service("demo", "svc", &[vip(V4), vip(V6)]).port("http", "TCP", 80, 8080));
    let mut docs = vec![s.yaml()];
    for family in [V4, V6] {
        let name = if family == V4 { "svc-v4" } else { "svc-v6" };
        docs.push(to_yaml(&endpoint_slice("demo", name, "svc", family == V6, &[("http", "TCP", 8080)], eps(family))));
    }
    let _ = c;
    docs
}

fn on(c: &Cluster, pods: &[&str], family: IpFamily) -> Vec<EndpointBuilder> {
    pods.iter().map(|p| endpoint(c.pod_ip(p, family), &c.lab.pod(p).node_name)).collect()
}

fn start(mode: Mode, pods: &[(&str, &str)], docs: impl FnOnce(&Cluster) -> Vec<String>, args: &[&str]) -> Cluster {
    let c = Cluster::new(mode, pods).with_args(args);
    c.write_node(&[("topology.kubernetes.io/zone", "zone-a")]);
    let d = docs(&c);
    c.write("svc.yaml", &d);
    c.start_proxy();
    c
}

fn only(results: &[ProbeResult], pod: &str) -> bool {
    !results.is_empty() && results.iter().all(|r| r.pod() == Some(pod))
}

pub fn session_affinity_sticks_and_releases(mode: Mode) {
    let c = start(
        mode,
        &[("client", NODE), ("a", NODE), ("b", NODE)],
        |c| svc(c, |s| s.session_affinity(Some(600)), |f| on(c, &["a", "b"], f)),
        &[],
    );
    for family in [V4, V6] {
        let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(sock(vip(family), 80)).count(20));
        let by = answered_by(&r);
        assert_eq!(by.len(), 1, "{family:?}: one client, one endpoint: {by:?}");
    }
    // The chosen endpoint goes away: its clients are released to the remaining one, which then sticks.
    let chosen = c.probe(&Where::pod("client"), &ProbeSpec::tcp(sock(vip(V4), 80)))[0].pod().unwrap().to_string();
    let other = if chosen == "a" { "b" } else { "a" };
    c.write("svc.yaml", &svc(&c, |s| s.session_affinity(Some(600)), |f| on(&c, &[other], f)));
    let (r, _) = c.probe_until(
        &Where::pod("client"),
        &ProbeSpec::tcp(sock(vip(V4), 80)).count(5),
        Duration::from_secs(3),
        |r| only(r, other),
    );
    assert!(only(&r, other), "{r:?}");
    // Back with both endpoints: the client stays on the one it has now.
    c.write("svc.yaml", &svc(&c, |s| s.session_affinity(Some(600)), |f| on(&c, &["a", "b"], f)));
    std::thread::sleep(Duration::from_millis(500));
    let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(sock(vip(V4), 80)).count(20));
    assert!(only(&r, other), "affinity kept across an endpoint change: {r:?}");
}

pub fn external_policy_local(mode: Mode) {
    let lb = [v4("198.51.100.30"), v4("2001:db8:100::30")];
    let local_svc = |c: &Cluster, pods: &[&str]| {
        let pods: Vec<String> = pods.iter().map(|p| p.to_string()).collect();
        svc(
            c,
            |s| s.node_port(30090).load_balancer(&lb).external_traffic_policy_local(Some(30999)),
            move |f| pods.iter().map(|p| endpoint(c.pod_ip(p, f), &c.lab.pod(p).node_name)).collect(),
        )
    };
    let c = start(mode, &[("client", NODE), ("a", NODE), ("r", NODE_B)], |c| local_svc(c, &["a", "r"]), &[]);
    for family in [V4, V6] {
        let node_port = sock(c.lab.node_ip(family), 30090);
        let outside = c.lab.outside_ip(family);
        for target in [node_port, sock(lb[family as usize], 80)] {
            let r = c.probe(&Where::Outside, &ProbeSpec::tcp(target).count(10));
            for (pod, seen) in all_answered(&r) {
                assert_eq!((pod.as_str(), seen), ("a", outside), "{target}: local endpoint only, client IP kept");
            }
        }
        // Pods and the node itself still use every endpoint.
        let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(node_port).count(40));
        assert_eq!(answered_by(&r).len(), 2, "{family:?} pod → NodePort uses all endpoints: {r:?}");
        let r = c.probe(&Where::Node, &ProbeSpec::tcp(sock(lb[family as usize], 80)).count(40));
        assert_eq!(answered_by(&r).len(), 2, "{family:?} node → LB IP uses all endpoints: {r:?}");
    }
    let hc =
        |c: &Cluster| http::get(c.lab.netns(&Where::Outside).unwrap(), sock(c.lab.node_ip(V4), 30999), "/").unwrap();
    let h = hc(&c);
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.header("x-load-balancing-endpoint-weight"), Some("1"));
    assert_eq!(h.header("content-type"), Some("application/json"));
    assert_eq!(
        h.body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"demo\",\n\t\t\"name\": \"svc\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
    );
    assert_eq!(c.metric("kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\"}"), 0.0);

    // No local endpoint left: outside traffic is dropped (not rejected), the health check says 503.
    c.write("svc.yaml", &local_svc(&c, &["r"]));
    let deadline = Instant::now() + Duration::from_secs(3);
    while hc(&c).status != 503 {
        assert!(Instant::now() < deadline, "health check still 200 without local endpoints");
        std::thread::sleep(Duration::from_millis(50));
    }
    let h = hc(&c);
    assert_eq!(h.header("x-load-balancing-endpoint-weight"), Some("0"));
    assert!(h.body.contains("\"localEndpoints\": 0"), "{}", h.body);
    let r =
        c.probe(&Where::Outside, &ProbeSpec::tcp(sock(c.lab.node_ip(V4), 30090)).timeout(Duration::from_millis(500)));
    assert_eq!(r, [ProbeResult::Timeout], "dropped, not refused");
    let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(sock(c.lab.node_ip(V4), 30090)).count(3));
    assert!(only(&r, "r"), "pods still reach the remote endpoint: {r:?}");
    assert_eq!(c.metric("kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\"}"), 2.0);

    // The service goes away: so does its health check.
    c.remove("svc.yaml");
    let deadline = Instant::now() + Duration::from_secs(3);
    while http::get(c.lab.netns(&Where::Outside).unwrap(), sock(c.lab.node_ip(V4), 30999), "/").is_ok() {
        assert!(Instant::now() < deadline, "health check still served after the service is gone");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.proxy_running());
}

pub fn internal_policy_local(mode: Mode) {
    let c = start(
        mode,
        &[("client", NODE), ("a", NODE), ("r", NODE_B)],
        |c| svc(c, |s| s.internal_traffic_policy_local(), |f| on(c, &["a", "r"], f)),
        &[],
    );
    for family in [V4, V6] {
        let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(sock(vip(family), 80)).count(20));
        assert!(only(&r, "a"), "{family:?}: {r:?}");
    }
    c.write("svc.yaml", &svc(&c, |s| s.internal_traffic_policy_local(), |f| on(&c, &["r"], f)));
    let spec = ProbeSpec::tcp(sock(vip(V4), 80)).timeout(Duration::from_millis(300));
    let (r, _) = c.probe_until(&Where::pod("client"), &spec, Duration::from_secs(3), |r| r == [ProbeResult::Timeout]);
    assert_eq!(r, [ProbeResult::Timeout], "Local policy without local endpoints drops");
}

pub fn terminating_endpoints_are_the_fallback(mode: Mode) {
    let eps = |c: &Cluster, f| {
        vec![
            endpoint(c.pod_ip("a", f), NODE).conditions(false, true, true),
            endpoint(c.pod_ip("b", f), NODE).conditions(false, false, true),
            endpoint(c.pod_ip("c", f), NODE).conditions(false, false, false),
        ]
    };
    let c =
        start(mode, &[("client", NODE), ("a", NODE), ("b", NODE), ("c", NODE)], |c| svc(c, |s| s, |f| eps(c, f)), &[]);
    for family in [V4, V6] {
        let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(sock(vip(family), 80)).count(10));
        assert!(only(&r, "a"), "{family:?}: only the serving terminating endpoint: {r:?}");
    }
    // A ready endpoint appears: it is preferred over the terminating one.
    let with_ready = |c: &Cluster, f| {
        let mut v = eps(c, f);
        v.push(endpoint(c.pod_ip("c", f), NODE));
        v.remove(2);
        v
    };
    c.write("svc.yaml", &svc(&c, |s| s, |f| with_ready(&c, f)));
    let (r, _) = c.probe_until(
        &Where::pod("client"),
        &ProbeSpec::tcp(sock(vip(V4), 80)).count(5),
        Duration::from_secs(3),
        |r| only(r, "c"),
    );
    assert!(only(&r, "c"), "{r:?}");
}

pub fn topology_hints_follow_the_node_zone(mode: Mode) {
    let eps = |c: &Cluster, f| {
        vec![
            endpoint(c.pod_ip("a", f), NODE).zone_hints(&["zone-a"]),
            endpoint(c.pod_ip("b", f), NODE_B).zone_hints(&["zone-b"]),
        ]
    };
    let c = start(mode, &[("client", NODE), ("a", NODE), ("b", NODE_B)], |c| svc(c, |s| s, |f| eps(c, f)), &[]);
    for family in [V4, V6] {
        let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(sock(vip(family), 80)).count(10));
        assert!(only(&r, "a"), "{family:?}: zone-a node uses zone-a endpoints: {r:?}");
    }
    // The node moves to zone-b: every service is re-evaluated.
    c.write_node(&[("topology.kubernetes.io/zone", "zone-b")]);
    let spec = ProbeSpec::tcp(sock(vip(V4), 80)).count(5);
    let (r, _) = c.probe_until(&Where::pod("client"), &spec, Duration::from_secs(3), |r| only(r, "b"));
    assert!(only(&r, "b"), "{r:?}");
}

pub fn load_balancer_source_ranges(mode: Mode) {
    let lb = [v4("198.51.100.40"), v4("2001:db8:100::40")];
    let with_ranges = |c: &Cluster, ranges: &[&str]| {
        let ranges: Vec<String> = ranges.iter().map(|r| r.to_string()).collect();
        svc(
            c,
            move |s| {
                s.node_port(30091)
                    .load_balancer(&lb)
                    .source_ranges(&ranges.iter().map(String::as_str).collect::<Vec<_>>())
            },
            |f| on(c, &["a"], f),
        )
    };
    let c = start(mode, &[("a", NODE)], |c| with_ranges(c, &["192.168.50.2/32", "fd00:50::2/128"]), &[]);
    for family in [V4, V6] {
        let r = c.probe(&Where::Outside, &ProbeSpec::tcp(sock(lb[family as usize], 80)).count(3));
        assert!(only(&r, "a"), "{family:?}: the outside client is inside the ranges: {r:?}");
    }
    c.write("svc.yaml", &with_ranges(&c, &["192.0.2.0/24", "2001:db8:2::/64"]));
    let spec = ProbeSpec::tcp(sock(lb[0], 80)).timeout(Duration::from_millis(300));
    let (r, _) = c.probe_until(&Where::Outside, &spec, Duration::from_secs(3), |r| r == [ProbeResult::Timeout]);
    assert_eq!(r, [ProbeResult::Timeout], "outside the ranges: dropped");
    let r = c.probe(&Where::Outside, &ProbeSpec::tcp(sock(lb[1], 80)).timeout(Duration::from_millis(300)));
    assert_eq!(r, [ProbeResult::Timeout], "v6 too");
    // NodePorts are not filtered by loadBalancerSourceRanges.
    let r = c.probe(&Where::Outside, &ProbeSpec::tcp(sock(c.lab.node_ip(V4), 30091)).count(3));
    assert!(only(&r, "a"), "{r:?}");
}

pub fn node_port_addresses(mode: Mode) {
    let docs = |c: &Cluster| svc(c, |s| s.node_port(30092), |f| on(c, &["a"], f));
    // Default in nftables mode: the node's primary IPs only; in iptables mode, every local address.
    let c = start(mode, &[("client", NODE), ("a", NODE)], docs, &[]);
    let short = Duration::from_millis(300);
    let r = c.probe(&Where::Outside, &ProbeSpec::tcp(sock(c.lab.node_ip(V4), 30092)));
    assert!(only(&r, "a"), "{r:?}");
    let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(sock(c.lab.node_pod_side_ip(V4), 30092)).timeout(short));
    if mode.name() == "nftables" {
        assert!(r[0].pod().is_none(), "not a primary address: {r:?}");
    } else {
        assert!(only(&r, "a"), "every local address accepts NodePorts: {r:?}");
    }
    drop(c);
    // CIDRs: only node addresses inside them.
    let c =
        start(mode, &[("client", NODE), ("a", NODE)], docs, &["--nodeport-addresses=10.244.0.0/16,fd00:10:244::/64"]);
    for family in [V4, V6] {
        let r = c.probe(&Where::pod("client"), &ProbeSpec::tcp(sock(c.lab.node_pod_side_ip(family), 30092)));
        assert!(only(&r, "a"), "{family:?}: {r:?}");
        let r = c.probe(&Where::Outside, &ProbeSpec::tcp(sock(c.lab.node_ip(family), 30092)).timeout(short));
        assert!(r[0].pod().is_none(), "{family:?}: the uplink address is outside the CIDRs: {r:?}");
    }
}

/// Which source the endpoint sees for cluster-IP traffic from a pod and from outside, under a detect-local mode.
fn seen_sources(mode: Mode, args: &[&str]) -> (IpAddr, IpAddr, Cluster) {
    let c = start(mode, &[("client", NODE), ("a", NODE)], |c| svc(c, |s| s, |f| on(c, &["a"], f)), args);
    let from_pod = all_answered(&c.probe(&Where::pod("client"), &ProbeSpec::tcp(sock(vip(V4), 80))))[0].1;
    let from_outside = all_answered(&c.probe(&Where::Outside, &ProbeSpec::tcp(sock(vip(V4), 80))))[0].1;
    (from_pod, from_outside, c)
}

pub fn detect_local_modes(mode: Mode) {
    for args in [
        vec!["--detect-local-mode=ClusterCIDR"],
        vec!["--detect-local-mode=NodeCIDR"],
        vec!["--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth"],
    ] {
        let (from_pod, from_outside, c) = seen_sources(mode, &args);
        assert_eq!(from_pod, c.pod_ip("client", V4), "{args:?}: pod traffic is local, not masqueraded");
        assert_eq!(from_outside, c.lab.node_pod_side_ip(V4), "{args:?}: outside traffic is masqueraded");
    }
    // A bridge the pods are not on: pod traffic is not recognised as local, so it is masqueraded too.
    let (from_pod, _, c) = seen_sources(mode, &["--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cni0"]);
    assert_eq!(from_pod, c.lab.node_pod_side_ip(V4));
    // --masquerade-all masquerades pod traffic whatever the detection says.
    let (from_pod, _, c) = seen_sources(mode, &["--masquerade-all"]);
    assert_eq!(from_pod, c.lab.node_pod_side_ip(V4));
}
