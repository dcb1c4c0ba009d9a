//! The Kubernetes API source against a test API server that speaks the real list/watch protocol, driving the
//! real binary and real traffic: initial lists, resumed watches, 410 Gone, outages.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kube_proxy_rs::lab::apiserver::{ApiServer, ENDPOINT_SLICES, SERVICES};
use kube_proxy_rs::lab::manifests::{endpoint, endpoint_slice, node, service};
use kube_proxy_rs::lab::{ProbeSpec, Where};
use kube_proxy_rs::model::IpFamily::V4;

use super::*;

const API: &str = "127.0.0.1:6443";

fn api_cluster(mode: Mode, pods: &[(&str, &str)]) -> (Cluster, ApiServer) {
    let c = Cluster::new(mode, pods);
    let api = ApiServer::start(c.lab.netns(&Where::Node).unwrap(), API.parse().unwrap()).expect("api server");
    api.apply(&node(NODE, &[c.lab.node_ip(V4)], &["10.244.0.0/24"], &[]));
    (c.use_api_server(&api), api)
}

/// Service demo/<name> at 10.96.1.<n>:80 → 8080 on `pods`.
fn publish(c: &Cluster, api: &ApiServer, name: &str, n: u8, pods: &[&str]) -> SocketAddr {
    let ip = v4(&format!("10.96.1.{n}"));
    api.apply(&service("demo", name, &[ip]).port("http", "TCP", 80, 8080).0);
    let eps = pods.iter().map(|p| endpoint(c.pod_ip(p, V4), NODE)).collect();
    api.apply(&endpoint_slice("demo", &format!("{name}-1"), name, false, &[("http", "TCP", 8080)], eps));
    sock(ip, 80)
}

fn answers(c: &Cluster, target: SocketAddr) -> bool {
    c.probe(&Where::pod("client"), &ProbeSpec::tcp(target).timeout(Duration::from_millis(300)))[0].pod().is_some()
}

fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn api_source_follows_the_api_server(mode: Mode) {
    let (c, api) = api_cluster(mode, &[("client", NODE), ("a", NODE)]);
    let web = publish(&c, &api, "web", 1, &["a"]);
    c.start_proxy();
    assert!(answers(&c, web));
    let events = api.posted_events();
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "Starting" && e["regarding"]["kind"] == "Node" && e["regarding"]["name"] == NODE),
        "a Starting event on the Node: {events:?}"
    );
    // A new service, then its removal, arrive through the watch. Its slice carries the trigger-time annotation
    // the EndpointSlice controller sets: network programming latency is measured from it.
    let programmed = c.metric("kubeproxy_network_programming_duration_seconds_count");
    let other = sock(v4("10.96.1.2"), 80);
    api.apply(&service("demo", "other", &[other.ip()]).port("http", "TCP", 80, 8080).0);
    let mut slice = endpoint_slice(
        "demo",
        "other-1",
        "other",
        false,
        &[("http", "TCP", 8080)],
        vec![endpoint(c.pod_ip("a", V4), NODE)],
    );
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    slice.metadata.annotations = Some([("endpoints.kubernetes.io/last-change-trigger-time".to_string(), now)].into());
    api.apply(&slice);
    eventually("new service programmed", Duration::from_secs(3), || answers(&c, other));
    eventually("network programming latency observed", Duration::from_secs(3), || {
        c.metric("kubeproxy_network_programming_duration_seconds_count") > programmed
    });
    let sum = c.metric("kubeproxy_network_programming_duration_seconds_sum");
    assert!((0.0..10.0).contains(&sum), "latency measured from the annotation: {sum}");
    api.delete("Service", "demo", "other");
    eventually("deleted service removed", Duration::from_secs(3), || !answers(&c, other));
    // Services of another proxy and headless ones are not ours (upstream's label selector).
    let mut foreign = service("demo", "foreign", &[v4("10.96.1.3")]).port("http", "TCP", 80, 8080).0;
    foreign.metadata.labels =
        Some([("service.kubernetes.io/service-proxy-name".to_string(), "other".to_string())].into());
    api.apply(&foreign);
    api.apply(&endpoint_slice(
        "demo",
        "foreign-1",
        "foreign",
        false,
        &[("http", "TCP", 8080)],
        vec![endpoint(c.pod_ip("a", V4), NODE)],
    ));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!answers(&c, sock(v4("10.96.1.3"), 80)), "a service with service-proxy-name is not programmed");
}

pub fn nothing_is_programmed_before_both_lists(mode: Mode) {
    let (c, api) = api_cluster(mode, &[("client", NODE), ("a", NODE)]);
    let web = publish(&c, &api, "web", 1, &["a"]);
    api.hold_lists(ENDPOINT_SLICES);
    c.spawn_proxy();
    eventually("services listed", Duration::from_secs(5), || api.lists(SERVICES) >= 1);
    std::thread::sleep(Duration::from_millis(700));
    assert!(!c.rules_programmed(), "programmed before EndpointSlices were listed:\n{}", c.rules_snapshot());
    api.release_lists();
    eventually("programmed after both lists", Duration::from_secs(5), || answers(&c, web));
}

pub fn watches_resume_and_relists_pass_only_differences(mode: Mode) {
    let (c, api) = api_cluster(mode, &[("client", NODE), ("a", NODE)]);
    let web = publish(&c, &api, "web", 1, &["a"]);
    c.start_proxy();
    assert!(answers(&c, web));
    let lists = api.lists(SERVICES);
    // A server-closed watch resumes from its resourceVersion: no relist, and new objects still arrive.
    api.close_watches();
    let second = publish(&c, &api, "second", 2, &["a"]);
    eventually("object created after a closed watch", Duration::from_secs(5), || answers(&c, second));
    assert_eq!(api.lists(SERVICES), lists, "a resumed watch does not relist");
    // 410 Gone: the history is compacted and the watch closed; the proxy relists. Nothing changed, so nothing
    // is passed on and no rule is rewritten.
    let changes = c.metric("kubeproxy_sync_proxy_rules_service_changes_total");
    let fulls = c.metric("kubeproxy_sync_full_proxy_rules_duration_seconds_count");
    api.compact();
    api.close_watches();
    eventually("relisted after 410 Gone", Duration::from_secs(10), || api.lists(SERVICES) > lists);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.metric("kubeproxy_sync_proxy_rules_service_changes_total"),
        changes,
        "a relist of unchanged objects changes nothing"
    );
    assert_eq!(c.metric("kubeproxy_sync_full_proxy_rules_duration_seconds_count"), fulls);
    // A deletion that happened while the watch was gone shows up in the relist.
    api.compact();
    api.delete("Service", "demo", "second");
    api.close_watches();
    eventually("deletion found by relist", Duration::from_secs(10), || !answers(&c, second));
    assert!(answers(&c, web));
}

pub fn api_outage_keeps_traffic_flowing(mode: Mode) {
    let (c, api) = api_cluster(mode, &[("client", NODE), ("a", NODE)]);
    let web = publish(&c, &api, "web", 1, &["a"]);
    c.start_proxy();
    let before = c.rules_snapshot();
    let fulls = c.metric("kubeproxy_sync_full_proxy_rules_duration_seconds_count");
    api.outage();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        assert!(answers(&c, web), "traffic stopped {:?} into the outage", start.elapsed());
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(c.rules_snapshot(), before, "rules unchanged during the outage");
    assert!(c.proxy_running());
    // Changes made while we could not see them arrive after the outage, without a full rewrite.
    let later = sock(v4("10.96.1.9"), 80);
    api.resume().unwrap();
    publish(&c, &api, "later", 9, &["a"]);
    // The watches retry with kube-rs's default back-off (as client-go's reflector: 0.8 s doubling to 30 s, plus
    // jitter of up to as much again), so after a 60-s outage the next attempt may be up to a minute away.
    eventually("new service after the outage", Duration::from_secs(70), || answers(&c, later));
    assert!(answers(&c, web));
    assert_eq!(
        c.metric("kubeproxy_sync_full_proxy_rules_duration_seconds_count"),
        fulls,
        "caught up without a full rewrite"
    );
    let log = std::fs::read_to_string(c.dir.join("proxy.log")).unwrap();
    let failing = log.lines().filter(|l| l.contains("watch failing")).count();
    assert!((1..=3).contains(&failing), "each watch's failure is logged once, not once per retry: {failing}\n{log}");
}
