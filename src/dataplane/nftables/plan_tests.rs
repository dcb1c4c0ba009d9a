use std::collections::BTreeSet;

use super::*;
use crate::core::ServicePort;
use crate::core::fixtures::{port, state};
use crate::dataplane::nftables::ruleset::LocalTraffic;
use crate::dataplane::nftables::text;

fn config() -> FamilyConfig {
    FamilyConfig {
        family: Family::Ip,
        masquerade_mark: 0x4000,
        masquerade_all: false,
        local: LocalTraffic::Cidr("10.244.0.0/16".parse().unwrap()),
        nodeports: super::super::ruleset::NodePortAddresses::Listed,
        node_ips: vec![],
    }
}

fn changed(ports: &[&ServicePort]) -> BTreeSet<ServicePortName> {
    ports.iter().map(|p| p.name.clone()).collect()
}

fn lines(tx: &Transaction) -> Vec<String> {
    text::script(tx).lines().map(str::to_string).collect()
}

#[test]
fn full_sync_replaces_the_table_atomically_and_contains_each_service() {
    let a = port("a", "10.96.0.1", &["10.244.0.5", "10.244.0.6"]);
    let b = port("b", "10.96.0.2", &[]);
    let (tx, _) = full_transaction(&config(), &state(&[a, b]), vec!["192.168.50.1".parse().unwrap()]);
    let l = lines(&tx);
    assert_eq!(
        &l[..5],
        [
            "add table ip kube-proxy",
            "delete table ip kube-proxy",
            "add table ip kube-proxy-rs",
            "delete table ip kube-proxy-rs",
            "add table ip kube-proxy-rs"
        ]
    );
    let script = l.join("\n");
    assert!(script.contains("add rule ip kube-proxy-rs svc-ns/a/tcp/http meta l4proto tcp dnat ip to numgen random mod 2 offset 0 map @endpoints-tcp-0"), "{script}");
    assert!(
        script
            .contains("add element ip kube-proxy-rs endpoints-tcp-0 { 0 : 10.244.0.5 . 8080, 1 : 10.244.0.6 . 8080 }"),
        "{script}"
    );
    assert!(script.contains("10.96.0.1 . tcp . 80 : goto svc-ns/a/tcp/http"), "{script}");
    assert!(
        script
            .contains("add element ip kube-proxy-rs no-endpoint-services { 10.96.0.2 . tcp . 80 : goto reject-chain }"),
        "{script}"
    );
    assert!(script.contains("add element ip kube-proxy-rs nodeport-ips { 192.168.50.1 }"), "{script}");
    assert!(script.contains("ip daddr @cluster-ips ip saddr != 10.244.0.0/16 jump mark-for-masquerade"), "{script}");
}

#[test]
fn endpoint_change_within_capacity_only_rewrites_map_elements() {
    let a = port("a", "10.96.0.1", &["10.244.0.5", "10.244.0.6"]);
    let (_, mut applied) = full_transaction(&config(), &state(std::slice::from_ref(&a)), vec![]);
    let a2 = port("a", "10.96.0.1", &["10.244.0.5", "10.244.0.7"]);
    let tx = partial(&mut applied, &state(std::slice::from_ref(&a2)), &changed(&[&a2]), vec![]);
    assert_eq!(
        lines(&tx),
        [
            "delete element ip kube-proxy-rs endpoints-tcp-0 { 1 }",
            "delete element ip kube-proxy-rs hairpin { 10.244.0.6 . 10.244.0.6 }",
            "add element ip kube-proxy-rs endpoints-tcp-0 { 1 : 10.244.0.7 . 8080 }",
            "add element ip kube-proxy-rs hairpin { 10.244.0.7 . 10.244.0.7 }",
        ]
    );
}

#[test]
fn growing_past_capacity_moves_to_a_new_block_and_rewrites_the_chain() {
    let a = port("a", "10.96.0.1", &["10.244.0.5", "10.244.0.6"]);
    let (_, mut applied) = full_transaction(&config(), &state(std::slice::from_ref(&a)), vec![]);
    let a2 = port("a", "10.96.0.1", &["10.244.0.5", "10.244.0.6", "10.244.0.7"]);
    let tx = partial(&mut applied, &state(std::slice::from_ref(&a2)), &changed(&[&a2]), vec![]);
    let l = lines(&tx);
    assert_eq!(l[0], "flush chain ip kube-proxy-rs svc-ns/a/tcp/http");
    assert!(l[1].ends_with("numgen random mod 3 offset 2 map @endpoints-tcp-0"), "{l:?}");
    assert!(l.contains(&"delete element ip kube-proxy-rs endpoints-tcp-0 { 0, 1 }".to_string()), "{l:?}");
    assert!(
        l.iter().any(|x| x.starts_with("add element ip kube-proxy-rs endpoints-tcp-0 { 2 : 10.244.0.5 . 8080, 3 :")),
        "{l:?}"
    );
    // The old block is free again: a new port of capacity 2 reuses it.
    let b = port("b", "10.96.0.2", &["10.244.1.1", "10.244.1.2"]);
    let tx = partial(&mut applied, &state(&[a2, b.clone()]), &changed(&[&b]), vec![]);
    assert!(
        lines(&tx).iter().any(|l| l.ends_with("numgen random mod 2 offset 0 map @endpoints-tcp-0")),
        "{:?}",
        lines(&tx)
    );
}

#[test]
fn removing_a_service_deletes_its_chain_after_its_elements() {
    let a = port("a", "10.96.0.1", &["10.244.0.5", "10.244.0.6"]);
    let (_, mut applied) = full_transaction(&config(), &state(std::slice::from_ref(&a)), vec![]);
    let tx = partial(&mut applied, &state(&[]), &changed(&[&a]), vec![]);
    let l = lines(&tx);
    assert_eq!(l.first().unwrap(), "flush chain ip kube-proxy-rs svc-ns/a/tcp/http");
    assert_eq!(l.last().unwrap(), "delete chain ip kube-proxy-rs svc-ns/a/tcp/http");
    assert!(l.contains(&"delete element ip kube-proxy-rs service-ips { 10.96.0.1 . tcp . 80 }".to_string()), "{l:?}");
    assert!(l.contains(&"delete element ip kube-proxy-rs cluster-ips { 10.96.0.1 }".to_string()), "{l:?}");
}

#[test]
fn shared_elements_stay_while_another_port_uses_them() {
    let mut a = port("a", "10.96.0.1", &["10.244.0.5"]);
    let mut a_dns = a.clone();
    a_dns.name.port = "dns".into();
    a_dns.port = 53;
    a.name.port = "http".into();
    let (_, mut applied) = full_transaction(&config(), &state(&[a.clone(), a_dns.clone()]), vec![]);
    let tx = partial(&mut applied, &state(std::slice::from_ref(&a)), &changed(&[&a_dns]), vec![]);
    let script = text::script(&tx);
    assert!(!script.contains("cluster-ips"), "the cluster IP is still used by the http port: {script}");
    assert!(!script.contains("hairpin"), "{script}");
}

#[test]
fn unchanged_ports_produce_an_empty_transaction() {
    let a = port("a", "10.96.0.1", &["10.244.0.5"]);
    let st = state(std::slice::from_ref(&a));
    let (_, mut applied) = full_transaction(&config(), &st, vec![]);
    let same = state(std::slice::from_ref(&a));
    assert!(partial(&mut applied, &same, &changed(&[&a]), vec![]).is_empty());
}

#[test]
fn node_port_address_changes_are_element_updates() {
    let (_, mut applied) = full_transaction(&config(), &state(&[]), vec!["192.168.50.1".parse().unwrap()]);
    let tx = partial(&mut applied, &state(&[]), &BTreeSet::new(), vec!["192.168.50.9".parse().unwrap()]);
    assert_eq!(
        lines(&tx),
        [
            "delete element ip kube-proxy-rs nodeport-ips { 192.168.50.1 }",
            "add element ip kube-proxy-rs nodeport-ips { 192.168.50.9 }",
        ]
    );
}

#[test]
fn affinity_timeout_change_recreates_sets_and_rewrites_chains_using_them() {
    let mut a = port("a", "10.96.0.1", &["10.244.0.5", "10.244.0.6"]);
    a.session_affinity_timeout = Some(100);
    let (tx, mut applied) = full_transaction(&config(), &state(std::slice::from_ref(&a)), vec![]);
    let script = text::script(&tx);
    assert!(script.contains("add set ip kube-proxy-rs affinity-ns/a/tcp/http/10.244.0.5/8080 { type ipv4_addr ; flags dynamic,timeout ; timeout 100s ; }"), "{script}");
    assert!(script.contains("add rule ip kube-proxy-rs svc-ns/a/tcp/http ip saddr @affinity-ns/a/tcp/http/10.244.0.5/8080 goto ep-ns/a/tcp/http/10.244.0.5/8080"), "{script}");
    assert!(script.contains("numgen random mod 2 offset 0 vmap @endpoint-chains-0"), "{script}");
    let mut a2 = a.clone();
    a2.session_affinity_timeout = Some(200);
    let tx = partial(&mut applied, &state(std::slice::from_ref(&a2)), &changed(&[&a2]), vec![]);
    let l = lines(&tx);
    let pos =
        |prefix: &str| l.iter().position(|x| x.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix} in {l:?}"));
    assert!(
        pos("flush chain ip kube-proxy-rs svc-") < pos("delete set ip kube-proxy-rs affinity-ns/a/tcp/http/10.244.0.5")
    );
    assert!(
        pos("delete set ip kube-proxy-rs affinity-ns/a/tcp/http/10.244.0.5")
            < pos("add set ip kube-proxy-rs affinity-ns/a/tcp/http/10.244.0.5")
    );
    assert!(pos("add set ip kube-proxy-rs affinity-ns/a/tcp/http/10.244.0.5") < pos("add rule ip kube-proxy-rs svc-"));
}

#[test]
fn source_ranges_return_to_the_base_chain_and_everything_else_is_dropped() {
    let mut a = port("a", "10.96.0.1", &["10.244.0.5"]);
    a.load_balancer_ips = vec!["198.51.100.9".parse().unwrap()];
    a.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().unwrap(), "203.0.113.0/25".parse().unwrap()];
    let mut cfg = config();
    cfg.node_ips = vec!["192.0.2.7".parse().unwrap()];
    let (tx, _) = full_transaction(&cfg, &state(&[a]), vec![]);
    let firewall: Vec<String> =
        lines(&tx).into_iter().filter(|l| l.starts_with("add rule ip kube-proxy-rs firewall-ns/a/tcp/http ")).collect();
    assert_eq!(
        firewall,
        [
            "add rule ip kube-proxy-rs firewall-ns/a/tcp/http ip saddr 192.0.2.0/24 return",
            "add rule ip kube-proxy-rs firewall-ns/a/tcp/http ip saddr 203.0.113.0/25 return",
            // The node is inside an allowed range: it may reach its own LB IP with the LB IP as source.
            "add rule ip kube-proxy-rs firewall-ns/a/tcp/http ip saddr 198.51.100.9/32 return",
            "add rule ip kube-proxy-rs firewall-ns/a/tcp/http drop",
        ]
    );
    assert!(
        text::script(&tx).contains(
            "add element ip kube-proxy-rs firewall-ips { 198.51.100.9 . tcp . 80 : goto firewall-ns/a/tcp/http }"
        ),
        "{}",
        text::script(&tx)
    );
}

#[test]
fn endpoint_maps_are_split_per_span_of_indexes_and_made_when_first_needed() {
    let ten: Vec<String> = (1..=10).map(|i| format!("10.244.1.{i}")).collect();
    let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
    // Blocks of 16 indexes: 32 ports per map of 512 indexes.
    let ports: Vec<ServicePort> = (0..64).map(|i| port(&format!("p{i:02}"), &format!("10.96.1.{i}"), &ten)).collect();
    let (tx, mut applied) = full_transaction(&config(), &state(&ports), vec![]);
    let script = text::script(&tx);
    for map in ["endpoints-tcp-0", "endpoints-tcp-1"] {
        let declaration =
            format!("add map ip kube-proxy-rs {map} {{ typeof numgen random mod 1 : ip daddr . tcp dport ; }}");
        assert_eq!(script.matches(&declaration).count(), 1, "{map} declared once:\n{script}");
    }
    assert!(!script.contains("endpoints-tcp-2") && !script.contains("endpoints-udp"), "no map nobody uses");
    assert!(script.contains(
        "svc-ns/p31/tcp/http meta l4proto tcp dnat ip to numgen random mod 10 offset 496 map @endpoints-tcp-0"
    ));
    assert!(script.contains(
        "svc-ns/p32/tcp/http meta l4proto tcp dnat ip to numgen random mod 10 offset 512 map @endpoints-tcp-1"
    ));
    assert!(script.contains("add element ip kube-proxy-rs endpoints-tcp-1 { 512 : 10.244.1.1 . 8080,"), "{script}");

    // The next block opens a new map: the same transaction declares it before the rule that uses it.
    let p64 = port("p64", "10.96.2.1", &ten);
    let mut all = ports.clone();
    all.push(p64.clone());
    let l = lines(&partial(&mut applied, &state(&all), &changed(&[&p64]), vec![]));
    let declared = l.iter().position(|x| x.starts_with("add map ip kube-proxy-rs endpoints-tcp-2 ")).expect("declared");
    let used = l.iter().position(|x| x.ends_with("offset 1024 map @endpoints-tcp-2")).expect("used");
    assert!(declared < used, "{l:?}");
    // … and only that once.
    let p65 = port("p65", "10.96.2.2", &ten);
    all.push(p65.clone());
    let l = lines(&partial(&mut applied, &state(&all), &changed(&[&p65]), vec![]));
    assert!(!l.iter().any(|x| x.starts_with("add map")), "{l:?}");
    assert!(l.iter().any(|x| x.ends_with("offset 1040 map @endpoints-tcp-2")), "{l:?}");
}
