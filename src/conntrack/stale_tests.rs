use std::net::SocketAddr;

use super::*;
use crate::conntrack::flow::{FlowTuple, IPPROTO_TCP};
use crate::core::{Change, ClusterState};
use crate::model::Protocol::{Sctp, Tcp, Udp};
use crate::model::fixtures::*;
use crate::model::{Endpoint, EndpointSlice, Service};

const DNS: (&str, Protocol, u16) = ("dns", Udp, 53);
const DNS_TARGET: (&str, Protocol, u16) = ("dns", Udp, 5353);

/// The desired state of a cluster made of these services and slices, as node-a sees it.
fn desired(services: &[Service], slices: &[EndpointSlice]) -> DesiredState {
    let mut st = ClusterState::new("node-a");
    for s in services {
        st.apply(Change::Upsert(svc_obj(s.clone())));
    }
    for s in slices {
        st.apply(Change::Upsert(slice_obj(s.clone())));
    }
    st.refresh();
    st.desired().clone()
}

/// A flow from `src` to `dst` whose reply comes from `reply_src` (the address it was DNATed to).
fn flow(protocol: u8, src: &str, dst: &str, reply_src: &str) -> Flow {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    let reply_src: SocketAddr = reply_src.parse().unwrap();
    Flow {
        family: IpFamily::of(&src.ip()),
        protocol,
        original: FlowTuple { src, dst },
        reply: FlowTuple { src: reply_src, dst: src },
        zone: 0,
        id: None,
    }
}

fn udp(src: &str, dst: &str, reply_src: &str) -> Flow {
    flow(IPPROTO_UDP, src, dst, reply_src)
}

/// ns/dns: UDP 53 on 10.96.0.10 → 5353 on the given endpoints.
fn dns_service(endpoints: Vec<Endpoint>) -> DesiredState {
    let svc = service("ns", "dns", "10.96.0.10", &[DNS]);
    let slice = slice(&svc, "dns-1", &[DNS_TARGET], endpoints);
    desired(&[svc], &[slice])
}

fn verdict(d: &DesiredState, f: &Flow) -> Verdict {
    StaleIndex::new(d).verdict(f)
}

#[test]
fn cluster_ip_flow_to_a_removed_endpoint_is_stale() {
    let d = dns_service(vec![endpoint("10.244.1.2", "node-a")]);
    let gone = udp("10.244.9.9:40000", "10.96.0.10:53", "10.244.7.7:5353");
    assert_eq!(verdict(&d, &gone), Verdict::Stale);
    assert_eq!(stale_flows(&d, &[gone]), vec![&gone]);
}

#[test]
fn cluster_ip_flow_to_a_current_endpoint_is_kept() {
    let d = dns_service(vec![endpoint("10.244.1.2", "node-a"), endpoint("10.244.2.2", "node-b")]);
    let f = udp("10.244.9.9:40000", "10.96.0.10:53", "10.244.2.2:5353");
    assert_eq!(verdict(&d, &f), Verdict::Current);
    assert!(stale_flows(&d, &[f]).is_empty());
}

#[test]
fn a_flow_made_while_the_service_had_no_endpoints_is_stale_once_it_has_some() {
    // Not DNATed: the reply comes from the service address itself.
    let f = udp("10.244.9.9:40000", "10.96.0.10:53", "10.96.0.10:53");
    let before = dns_service(vec![]);
    assert_eq!(verdict(&before, &f), Verdict::NoEndpoints, "no endpoint yet: nothing better to send it to");
    let after = dns_service(vec![endpoint("10.244.1.2", "node-a")]);
    assert_eq!(verdict(&after, &f), Verdict::Stale);
}

#[test]
fn a_service_whose_endpoints_all_stopped_serving_is_left_alone() {
    let mut ep = endpoint("10.244.1.2", "node-a");
    ep.ready = false;
    ep.serving = false;
    let d = dns_service(vec![ep]);
    let f = udp("10.244.9.9:40000", "10.96.0.10:53", "10.244.1.2:5353");
    assert_eq!(verdict(&d, &f), Verdict::NoEndpoints);
}

#[test]
fn a_terminating_endpoint_that_still_serves_keeps_its_flows_and_a_non_serving_one_loses_them() {
    let mut draining = endpoint("10.244.1.3", "node-a");
    (draining.ready, draining.serving, draining.terminating) = (false, true, true);
    let mut dead = endpoint("10.244.1.4", "node-a");
    (dead.ready, dead.serving, dead.terminating) = (false, false, true);
    let d = dns_service(vec![endpoint("10.244.1.2", "node-a"), draining, dead]);
    // The rules send new traffic only to the ready endpoint, but existing flows may stay on a serving one.
    assert_eq!(verdict(&d, &udp("10.244.9.9:40000", "10.96.0.10:53", "10.244.1.3:5353")), Verdict::Current);
    assert_eq!(verdict(&d, &udp("10.244.9.9:40001", "10.96.0.10:53", "10.244.1.4:5353")), Verdict::Stale);
}

#[test]
fn endpoints_outside_the_traffic_policy_keep_their_flows() {
    // Local internal policy: the rules only pick node-a's endpoint, but node-b's still serves.
    let mut svc = service("ns", "dns", "10.96.0.10", &[DNS]);
    svc.internal_policy_local = true;
    let slice =
        slice(&svc, "dns-1", &[DNS_TARGET], vec![endpoint("10.244.1.2", "node-a"), endpoint("10.244.2.2", "node-b")]);
    let d = desired(&[svc], &[slice]);
    assert_eq!(verdict(&d, &udp("10.244.9.9:40000", "10.96.0.10:53", "10.244.2.2:5353")), Verdict::Current);
}

#[test]
fn node_port_flows_are_judged_by_port_whatever_the_destination_ip() {
    let mut svc = service("ns", "dns", "10.96.0.10", &[DNS]);
    svc.ports[0].node_port = Some(30053);
    let slice = slice(&svc, "dns-1", &[DNS_TARGET], vec![endpoint("10.244.1.2", "node-a")]);
    let d = desired(&[svc], &[slice]);
    for node_ip in ["192.168.0.10", "172.18.0.2"] {
        let stale = udp("203.0.113.5:40000", &format!("{node_ip}:30053"), "10.244.7.7:5353");
        assert_eq!(verdict(&d, &stale), Verdict::Stale, "{node_ip}");
        let current = udp("203.0.113.5:40000", &format!("{node_ip}:30053"), "10.244.1.2:5353");
        assert_eq!(verdict(&d, &current), Verdict::Current, "{node_ip}");
    }
    // Made while there was no endpoint: the reply comes from the node itself.
    assert_eq!(verdict(&d, &udp("203.0.113.5:40000", "192.168.0.10:30053", "192.168.0.10:30053")), Verdict::Stale);
}

#[test]
fn external_and_load_balancer_ip_flows_are_judged_like_cluster_ip_flows() {
    let mut svc = service("ns", "dns", "10.96.0.10", &[DNS]);
    svc.external_ips = vec!["198.51.100.7".parse().unwrap()];
    svc.load_balancer_ips = vec!["198.51.100.8".parse().unwrap()];
    let slice = slice(&svc, "dns-1", &[DNS_TARGET], vec![endpoint("10.244.1.2", "node-a")]);
    let d = desired(&[svc], &[slice]);
    for frontend in ["198.51.100.7:53", "198.51.100.8:53"] {
        assert_eq!(verdict(&d, &udp("203.0.113.5:40000", frontend, "10.244.7.7:5353")), Verdict::Stale);
        assert_eq!(verdict(&d, &udp("203.0.113.5:40000", frontend, "10.244.1.2:5353")), Verdict::Current);
    }
    // The external IP on another port is no frontend.
    assert_eq!(verdict(&d, &udp("203.0.113.5:40000", "198.51.100.7:54", "10.244.7.7:5353")), Verdict::NotService);
}

#[test]
fn tcp_is_never_touched() {
    let svc = service("ns", "web", "10.96.0.10", &[("http", Tcp, 80)]);
    let slice = slice(&svc, "web-1", &[("http", Tcp, 8080)], vec![endpoint("10.244.1.2", "node-a")]);
    let d = desired(&[svc], &[slice]);
    let f = flow(IPPROTO_TCP, "10.244.9.9:40000", "10.96.0.10:80", "10.244.7.7:8080");
    assert_eq!(verdict(&d, &f), Verdict::NotService);
    // Not even a TCP flow that looks like it belongs to a UDP service.
    let d = dns_service(vec![endpoint("10.244.1.2", "node-a")]);
    let f = flow(IPPROTO_TCP, "10.244.9.9:40000", "10.96.0.10:53", "10.244.7.7:5353");
    assert_eq!(verdict(&d, &f), Verdict::NotService);
}

#[test]
fn flows_not_addressed_to_a_service_are_never_touched() {
    let d = dns_service(vec![endpoint("10.244.1.2", "node-a")]);
    for f in [
        udp("10.244.9.9:40000", "8.8.8.8:53", "8.8.8.8:53"),
        udp("10.244.9.9:40000", "10.96.0.10:54", "10.244.7.7:5353"),
        udp("10.244.9.9:40000", "10.96.0.11:53", "10.244.7.7:5353"),
    ] {
        assert_eq!(verdict(&d, &f), Verdict::NotService, "{f}");
    }
}

#[test]
fn ipv6_flows_are_judged_like_ipv4_ones() {
    let mut svc = service("ns", "dns", "fd00:96::10", &[DNS]);
    svc.ports[0].node_port = Some(30053);
    let slice = slice(&svc, "dns-1", &[DNS_TARGET], vec![endpoint("fd00:244::2", "node-a")]);
    let d = desired(&[svc], &[slice]);
    let stale = udp("[fd00:244::9]:40000", "[fd00:96::10]:53", "[fd00:244::7]:5353");
    let current = udp("[fd00:244::9]:40001", "[fd00:96::10]:53", "[fd00:244::2]:5353");
    let node_port = udp("[2001:db8::5]:40000", "[2001:db8::1]:30053", "[fd00:244::7]:5353");
    assert_eq!(verdict(&d, &stale), Verdict::Stale);
    assert_eq!(verdict(&d, &current), Verdict::Current);
    assert_eq!(verdict(&d, &node_port), Verdict::Stale);
    // The same node port in IPv4 has no service here.
    assert_eq!(verdict(&d, &udp("203.0.113.5:40000", "192.168.0.10:30053", "10.244.7.7:5353")), Verdict::NotService);
}

#[test]
fn sctp_flows_are_cleaned_like_udp_ones() {
    let svc = service("ns", "diameter", "10.96.0.12", &[("diameter", Sctp, 3868)]);
    let slice = slice(&svc, "d-1", &[("diameter", Sctp, 3868)], vec![endpoint("10.244.1.2", "node-a")]);
    let d = desired(&[svc], &[slice]);
    let stale = flow(IPPROTO_SCTP, "10.244.9.9:40000", "10.96.0.12:3868", "10.244.7.7:3868");
    let current = flow(IPPROTO_SCTP, "10.244.9.9:40001", "10.96.0.12:3868", "10.244.1.2:3868");
    assert_eq!(verdict(&d, &stale), Verdict::Stale);
    assert_eq!(verdict(&d, &current), Verdict::Current);
    // The same address and port in UDP is another frontend (none here).
    assert_eq!(verdict(&d, &udp("10.244.9.9:40000", "10.96.0.12:3868", "10.244.7.7:3868")), Verdict::NotService);
}

#[test]
fn a_service_ip_match_is_not_second_guessed_by_a_node_port_of_another_service() {
    // ns/a listens on 10.96.0.10:30053; ns/b has NodePort 30053. A healthy flow to a must stay.
    let a = service("ns", "a", "10.96.0.10", &[("dns", Udp, 30053)]);
    let mut b = service("ns", "b", "10.96.0.11", &[DNS]);
    b.ports[0].node_port = Some(30053);
    let slices = [
        slice(&a, "a-1", &[("dns", Udp, 5353)], vec![endpoint("10.244.1.2", "node-a")]),
        slice(&b, "b-1", &[DNS_TARGET], vec![endpoint("10.244.3.3", "node-a")]),
    ];
    let d = desired(&[a, b], &slices);
    assert_eq!(verdict(&d, &udp("10.244.9.9:40000", "10.96.0.10:30053", "10.244.1.2:5353")), Verdict::Current);
    assert_eq!(verdict(&d, &udp("10.244.9.9:40000", "10.96.0.10:30053", "10.244.3.3:5353")), Verdict::Stale);
}

#[test]
fn a_frontend_two_service_ports_share_keeps_flows_valid_for_either() {
    let mut a = service("ns", "a", "10.96.0.10", &[DNS]);
    let mut b = service("ns", "b", "10.96.0.11", &[DNS]);
    a.load_balancer_ips = vec!["198.51.100.8".parse().unwrap()];
    b.load_balancer_ips = a.load_balancer_ips.clone();
    let slices = [
        slice(&a, "a-1", &[DNS_TARGET], vec![endpoint("10.244.1.2", "node-a")]),
        slice(&b, "b-1", &[DNS_TARGET], vec![endpoint("10.244.3.3", "node-a")]),
    ];
    let d = desired(&[a, b], &slices);
    for ep in ["10.244.1.2:5353", "10.244.3.3:5353"] {
        assert_eq!(verdict(&d, &udp("203.0.113.5:40000", "198.51.100.8:53", ep)), Verdict::Current, "{ep}");
    }
    assert_eq!(verdict(&d, &udp("203.0.113.5:40000", "198.51.100.8:53", "10.244.7.7:5353")), Verdict::Stale);
    // Each cluster IP still has only its own endpoint.
    assert_eq!(verdict(&d, &udp("10.244.9.9:40000", "10.96.0.10:53", "10.244.3.3:5353")), Verdict::Stale);
}

#[test]
fn an_empty_index_knows_it_is_empty() {
    assert!(StaleIndex::new(&DesiredState::default()).is_empty());
    let svc = service("ns", "web", "10.96.0.10", &[("http", Tcp, 80)]);
    assert!(StaleIndex::new(&desired(&[svc], &[])).is_empty(), "TCP services need no cleanup");
    assert!(!StaleIndex::new(&dns_service(vec![])).is_empty());
}

/// 10k UDP services × 3 endpoints, 100k flows (a third stale, a third current, a third not to services).
/// Prints the time; asserts only the counts (timings are not asserted in tests).
#[test]
fn judging_100k_flows_against_10k_services_is_fast() {
    let services: Vec<Service> = (0..10_000u32)
        .map(|i| {
            let ip = format!("10.96.{}.{}", i / 256, i % 256);
            let mut svc = service("ns", &format!("s{i}"), &ip, &[DNS]);
            svc.ports[0].node_port = Some(30000 + (i % 2000) as u16);
            svc
        })
        .collect();
    let slices: Vec<EndpointSlice> = services
        .iter()
        .enumerate()
        .map(|(i, svc)| {
            let eps = (0..3).map(|e| endpoint(&format!("10.{}.{}.{}", 100 + e, i / 256, i % 256), "node-a")).collect();
            slice(svc, &format!("{}-1", svc.key.name), &[DNS_TARGET], eps)
        })
        .collect();
    let d = desired(&services, &slices);
    let flows: Vec<Flow> = (0..100_000u32)
        .map(|n| {
            let i = n % 10_000;
            let svc = format!("10.96.{}.{}:53", i / 256, i % 256);
            let src = format!("10.244.{}.{}:{}", (n / 256) % 256, n % 256, 1024 + n % 60_000);
            match n % 3 {
                0 => udp(&src, &svc, &format!("10.200.{}.{}:5353", i / 256, i % 256)),
                1 => udp(&src, &svc, &format!("10.101.{}.{}:5353", i / 256, i % 256)),
                _ => udp(&src, "8.8.8.8:443", "8.8.8.8:443"),
            }
        })
        .collect();
    let start = std::time::Instant::now();
    let index = StaleIndex::new(&d);
    let built = start.elapsed();
    let stale = flows.iter().filter(|f| index.verdict(f) == Verdict::Stale).count();
    let took = start.elapsed();
    println!(
        "conntrack: {} flows x {} service ports -> {stale} stale in {took:?} (index built in {built:?})",
        flows.len(),
        d.port_count()
    );
    assert_eq!(stale, 33_334);
    assert_eq!(stale_flows(&d, &flows).len(), stale);
}
