use super::*;
use crate::model::Protocol::{Tcp, Udp};
use crate::model::fixtures::*;

const HTTP: (&str, crate::model::Protocol, u16) = ("http", Tcp, 80);

fn names(c: &Changes, family: IpFamily) -> Vec<String> {
    c.ports(family).iter().map(|n| n.to_string()).collect()
}

#[test]
fn a_service_with_its_slice_becomes_a_service_port_with_endpoints() {
    let mut st = ClusterState::new("node-a");
    let svc = service("ns", "web", "10.96.0.10", &[HTTP]);
    st.apply(Change::Upsert(slice_obj(slice(
        &svc,
        "web-1",
        &[("http", Tcp, 8080)],
        vec![endpoint("10.244.1.2", "node-a"), endpoint("10.244.2.2", "node-b")],
    ))));
    st.apply(Change::Upsert(svc_obj(svc)));
    let changes = st.take_changes();
    assert_eq!(names(&changes, IpFamily::V4), ["ns/web:http/tcp"]);
    let port = st.desired().family(IpFamily::V4).ports.values().next().unwrap().clone();
    assert_eq!(port.cluster_ip.to_string(), "10.96.0.10");
    let eps: Vec<String> = port.cluster_endpoints.iter().map(|e| e.to_string()).collect();
    assert_eq!(eps, ["10.244.1.2:8080", "10.244.2.2:8080"]);
    assert_eq!(port.local_endpoints, vec![], "cluster policy computes no local set");
    assert!(port.endpoints.iter().any(|e| e.is_local && e.addr.ip.to_string() == "10.244.1.2"));
}

#[test]
fn unchanged_updates_report_no_changed_ports() {
    let mut st = ClusterState::new("node-a");
    let svc = service("ns", "web", "10.96.0.10", &[HTTP]);
    st.apply(Change::Upsert(svc_obj(svc.clone())));
    st.take_changes();
    st.apply(Change::Upsert(svc_obj(svc)));
    let changes = st.take_changes();
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(changes.service_events, 1, "the event is still counted");
}

#[test]
fn only_the_changed_service_is_reported() {
    let mut st = ClusterState::new("node-a");
    let a = service("ns", "a", "10.96.0.1", &[HTTP]);
    let b = service("ns", "b", "10.96.0.2", &[HTTP]);
    st.apply(Change::Upsert(svc_obj(a.clone())));
    st.apply(Change::Upsert(svc_obj(b)));
    st.take_changes();
    st.apply(Change::Upsert(slice_obj(slice(&a, "a-1", &[("http", Tcp, 80)], vec![endpoint("10.244.0.5", "x")]))));
    assert_eq!(names(&st.take_changes(), IpFamily::V4), ["ns/a:http/tcp"]);
}

#[test]
fn deleting_a_service_or_a_port_reports_the_removed_ports() {
    let mut st = ClusterState::new("node-a");
    let svc = service("ns", "web", "10.96.0.10", &[HTTP, ("dns", Udp, 53)]);
    st.apply(Change::Upsert(svc_obj(svc.clone())));
    st.take_changes();
    let fewer = service("ns", "web", "10.96.0.10", &[HTTP]);
    st.apply(Change::Upsert(svc_obj(fewer)));
    assert_eq!(names(&st.take_changes(), IpFamily::V4), ["ns/web:dns/udp"]);
    assert_eq!(st.desired().family(IpFamily::V4).ports.len(), 1);
    st.apply(Change::Delete(ObjectKey { kind: ObjectKind::Service, namespace: "ns".into(), name: "web".into() }));
    assert_eq!(names(&st.take_changes(), IpFamily::V4), ["ns/web:http/tcp"]);
    assert_eq!(st.desired().port_count(), 0);
}

#[test]
fn slice_deletion_removes_its_endpoints() {
    let mut st = ClusterState::new("node-a");
    let svc = service("ns", "web", "10.96.0.10", &[HTTP]);
    st.apply(Change::Upsert(svc_obj(svc.clone())));
    st.apply(Change::Upsert(slice_obj(slice(&svc, "s1", &[("http", Tcp, 80)], vec![endpoint("10.244.0.5", "x")]))));
    st.apply(Change::Upsert(slice_obj(slice(&svc, "s2", &[("http", Tcp, 80)], vec![endpoint("10.244.0.6", "x")]))));
    st.take_changes();
    assert_eq!(st.desired().family(IpFamily::V4).ports.values().next().unwrap().cluster_endpoints.len(), 2);
    st.apply(Change::Delete(ObjectKey { kind: ObjectKind::EndpointSlice, namespace: "ns".into(), name: "s1".into() }));
    st.take_changes();
    let port = st.desired().family(IpFamily::V4).ports.values().next().unwrap().clone();
    assert_eq!(port.cluster_endpoints.len(), 1);
    assert_eq!(port.cluster_endpoints[0].ip.to_string(), "10.244.0.6");
}

#[test]
fn slice_ports_match_service_ports_by_name_and_protocol() {
    let mut st = ClusterState::new("node-a");
    let svc = service("ns", "dns", "10.96.0.10", &[("dns", Udp, 53), ("dns-tcp", Tcp, 53)]);
    st.apply(Change::Upsert(svc_obj(svc.clone())));
    st.apply(Change::Upsert(slice_obj(slice(
        &svc,
        "s1",
        &[("dns", Udp, 5353), ("dns-tcp", Tcp, 5354)],
        vec![endpoint("10.244.0.5", "x")],
    ))));
    st.take_changes();
    let ports = &st.desired().family(IpFamily::V4).ports;
    let udp = ports.values().find(|p| p.name.protocol == Udp).unwrap();
    let tcp = ports.values().find(|p| p.name.protocol == Tcp).unwrap();
    assert_eq!(udp.cluster_endpoints[0].port, 5353);
    assert_eq!(tcp.cluster_endpoints[0].port, 5354);
}

#[test]
fn dual_stack_service_gets_a_port_per_family_with_that_familys_endpoints() {
    let mut st = ClusterState::new("node-a");
    let svc = service("ns", "web", "10.96.0.10,fd00::10", &[HTTP]);
    st.apply(Change::Upsert(svc_obj(svc.clone())));
    st.apply(Change::Upsert(slice_obj(slice(&svc, "v4", &[("http", Tcp, 80)], vec![endpoint("10.244.0.5", "x")]))));
    st.apply(Change::Upsert(slice_obj(slice(&svc, "v6", &[("http", Tcp, 80)], vec![endpoint("fd00:244::5", "x")]))));
    let changes = st.take_changes();
    assert_eq!(names(&changes, IpFamily::V4).len(), 1);
    assert_eq!(names(&changes, IpFamily::V6).len(), 1);
    let v6 = st.desired().family(IpFamily::V6).ports.values().next().unwrap().clone();
    assert_eq!(v6.cluster_ip.to_string(), "fd00::10");
    assert_eq!(v6.cluster_endpoints[0].ip.to_string(), "fd00:244::5");
}

#[test]
fn node_zone_change_reevaluates_every_service() {
    let mut st = ClusterState::new("node-a");
    let svc = service("ns", "web", "10.96.0.10", &[HTTP]);
    let mut a = endpoint("10.244.0.5", "x");
    a.hints = Some(Arc::new(crate::model::Hints { zones: vec!["zone-a".into()], nodes: vec![] }));
    let mut b = endpoint("10.244.0.6", "y");
    b.hints = Some(Arc::new(crate::model::Hints { zones: vec!["zone-b".into()], nodes: vec![] }));
    st.apply(Change::Upsert(svc_obj(svc.clone())));
    st.apply(Change::Upsert(slice_obj(slice(&svc, "s", &[("http", Tcp, 80)], vec![a, b]))));
    st.take_changes();
    assert_eq!(st.desired().family(IpFamily::V4).ports.values().next().unwrap().cluster_endpoints.len(), 2);
    let mut node = Node { name: "node-a".into(), ..Node::default() };
    node.labels.insert(Node::ZONE_LABEL.into(), "zone-b".into());
    st.apply(Change::Upsert(Object::Node(Arc::new(node))));
    let changes = st.take_changes();
    assert!(changes.node_changed);
    assert_eq!(names(&changes, IpFamily::V4), ["ns/web:http/tcp"]);
    let port = st.desired().family(IpFamily::V4).ports.values().next().unwrap().clone();
    assert_eq!(port.cluster_endpoints.len(), 1);
    assert_eq!(port.cluster_endpoints[0].ip.to_string(), "10.244.0.6");
}

#[test]
fn other_nodes_are_ignored_and_interfaces_are_the_fallback_addresses() {
    let mut st = ClusterState::new("node-a");
    st.set_interface_addresses(vec!["192.168.1.5".parse().unwrap()]);
    assert_eq!(st.desired().node.addresses.len(), 1);
    let other = Node { name: "node-b".into(), addresses: vec!["1.1.1.1".parse().unwrap()], ..Node::default() };
    assert!(!st.apply(Change::Upsert(Object::Node(Arc::new(other)))));
    let me = Node { name: "node-a".into(), addresses: vec!["10.0.0.1".parse().unwrap()], ..Node::default() };
    st.apply(Change::Upsert(Object::Node(Arc::new(me))));
    assert_eq!(st.desired().node.addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
}

#[test]
fn local_policy_fills_the_local_set() {
    let mut st = ClusterState::new("node-a");
    let mut svc = service("ns", "web", "10.96.0.10", &[HTTP]);
    svc.internal_policy_local = true;
    st.apply(Change::Upsert(svc_obj(svc.clone())));
    st.apply(Change::Upsert(slice_obj(slice(
        &svc,
        "s",
        &[("http", Tcp, 80)],
        vec![endpoint("10.244.0.5", "node-a"), endpoint("10.244.0.6", "node-b")],
    ))));
    st.take_changes();
    let port = st.desired().family(IpFamily::V4).ports.values().next().unwrap().clone();
    assert_eq!(port.local_endpoints.len(), 1);
    assert_eq!(port.internal_endpoints()[0].ip.to_string(), "10.244.0.5");
    assert!(port.cluster_endpoints.is_empty());
}

#[test]
fn slice_moving_to_another_service_leaves_the_first() {
    let mut st = ClusterState::new("node-a");
    let a = service("ns", "a", "10.96.0.1", &[HTTP]);
    let b = service("ns", "b", "10.96.0.2", &[HTTP]);
    st.apply(Change::Upsert(svc_obj(a.clone())));
    st.apply(Change::Upsert(svc_obj(b.clone())));
    st.apply(Change::Upsert(slice_obj(slice(&a, "s", &[("http", Tcp, 80)], vec![endpoint("10.244.0.5", "x")]))));
    st.take_changes();
    st.apply(Change::Upsert(slice_obj(slice(&b, "s", &[("http", Tcp, 80)], vec![endpoint("10.244.0.5", "x")]))));
    let changes = st.take_changes();
    assert_eq!(names(&changes, IpFamily::V4), ["ns/a:http/tcp", "ns/b:http/tcp"]);
    let ports = &st.desired().family(IpFamily::V4).ports;
    for p in ports.values() {
        let expect = if p.name.service.name == "a" { 0 } else { 1 };
        assert_eq!(p.cluster_endpoints.len(), expect, "{}", p.name);
    }
}
