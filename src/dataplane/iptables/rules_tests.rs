//! The iptables mode's rules and restore inputs, as text (the real-kernel scenarios in tests/iptables.rs check
//! what they do to packets; mode_kernel_tests.rs checks partial inputs converge in the kernel).

use std::collections::BTreeSet;

use super::layout::PortChains;
use super::restore;
use super::rules::RulesConfig;
use super::save;
use crate::core::ServicePort;
use crate::core::fixtures::{port, state};
use crate::dataplane::settings::LocalTraffic;
use crate::model::IpFamily;

pub(super) fn config() -> RulesConfig {
    RulesConfig {
        family: IpFamily::V4,
        masquerade_mark: 0x4000,
        masquerade_all: false,
        local: LocalTraffic::Cidr("10.244.0.0/16".parse().unwrap()),
        nodeport_ips: None,
        node_ips: vec!["192.168.1.5".parse().unwrap()],
        drop_invalid: true,
    }
}

fn lines_of(text: &str, prefix: &str) -> Vec<String> {
    text.lines().filter(|l| l.starts_with(prefix)).map(str::to_string).collect()
}

#[test]
fn a_cluster_ip_balances_over_endpoint_chains_with_hairpin_masquerade() {
    let p = port("web", "10.96.0.10", &["10.244.1.1", "10.244.1.2", "10.244.1.3"]);
    let names = PortChains::of(&p.name);
    let rules = config().port_rules(&p);
    assert_eq!(rules.shared.len(), 1);
    assert_eq!(
        rules.shared[0].spec,
        format!(
            "-m comment --comment \"ns/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.10/32 --dport 80 -j {}",
            names.svc
        )
    );
    let (svc, svc_rules) = &rules.chains[0];
    assert_eq!(svc, &names.svc);
    let ep = |ip: &str| crate::core::EndpointAddr { ip: ip.parse().unwrap(), port: 8080 };
    assert_eq!(
        svc_rules,
        &vec![
            "-m tcp -p tcp -d 10.96.0.10/32 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ".to_string(),
            format!("-m statistic --mode random --probability 0.3333333333 -j {}", names.sep(&ep("10.244.1.1"))),
            format!("-m statistic --mode random --probability 0.5000000000 -j {}", names.sep(&ep("10.244.1.2"))),
            format!("-j {}", names.sep(&ep("10.244.1.3"))),
        ]
    );
    let sep = rules.chains.iter().find(|(n, _)| *n == names.sep(&ep("10.244.1.2"))).unwrap();
    assert_eq!(
        sep.1,
        vec![
            "-s 10.244.1.2/32 -j KUBE-MARK-MASQ".to_string(),
            "-m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080".to_string()
        ]
    );
    assert_eq!(rules.chains.len(), 4, "the service chain and one per endpoint");
}

#[test]
fn no_endpoints_is_rejected_in_filter_and_local_policy_without_local_endpoints_is_dropped() {
    let mut p = port("web", "10.96.0.10", &[]);
    p.node_port = Some(30080);
    let rules = config().port_rules(&p);
    assert!(rules.chains.is_empty());
    let specs: Vec<(&str, &str)> = rules.shared.iter().map(|r| (r.chain, r.spec.as_str())).collect();
    assert_eq!(specs.len(), 2, "{specs:?}");
    assert!(specs[0].1.ends_with("-d 10.96.0.10/32 --dport 80 -j REJECT --reject-with tcp-reset"), "{specs:?}");
    assert_eq!(specs[1].0, "KUBE-EXTERNAL-SERVICES");
    assert!(specs[1].1.contains("! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080"));

    let mut p = port("web", "10.96.0.10", &["10.244.1.1"]);
    p.node_port = Some(30080);
    p.external_policy_local = true;
    p.health_check_node_port = Some(31000);
    let rules = config().port_rules(&p);
    let names = PortChains::of(&p.name);
    let ext = &rules.chains.iter().find(|(n, _)| *n == names.ext).expect("EXT chain").1;
    assert_eq!(ext.len(), 3, "pods and the node itself still reach every endpoint: {ext:?}");
    assert!(ext[0].contains("-s 10.244.0.0/16 -j KUBE-SVC-"), "{ext:?}");
    let drop: Vec<_> = rules.shared.iter().filter(|r| r.spec.ends_with("-j DROP")).collect();
    assert_eq!(drop.len(), 1, "outside traffic to the NodePort is dropped: {:?}", rules.shared);
    assert!(rules.shared.iter().any(|r| r.chain == "KUBE-NODEPORTS" && r.spec.contains("--dport 31000 -j ACCEPT")));
}

#[test]
fn session_affinity_checks_and_sets_recent_lists_named_after_the_endpoint_chain() {
    let mut p = port("web", "10.96.0.10", &["10.244.1.1", "10.244.1.2"]);
    p.session_affinity_timeout = Some(600);
    let rules = config().port_rules(&p);
    let names = PortChains::of(&p.name);
    let sep = names.sep(&p.cluster_endpoints[0]);
    let svc = &rules.chains[0].1;
    assert_eq!(svc[1], format!("-m recent --name {sep} --rcheck --seconds 600 --reap -j {sep}"));
    let sep_rules = &rules.chains.iter().find(|(n, _)| *n == sep).unwrap().1;
    assert!(sep_rules[1].starts_with(&format!("-m recent --name {sep} --set -m tcp")), "{sep_rules:?}");
}

#[test]
fn full_replaces_jumps_and_removes_leftover_chains_but_nothing_foreign() {
    let saved = save::parse(
        "test",
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-OLD - [0:0]\n\
         :CNI-X - [0:0]\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A PREROUTING -j CNI-X\n-A KUBE-SERVICES -d 10.96.0.99/32 -j KUBE-SVC-OLD\nCOMMIT\n",
    )
    .unwrap();
    let p = port("web", "10.96.0.10", &["10.244.1.1"]);
    let (input, applied) = restore::full(&config(), &state(&[p]), &saved, None);
    let text = input.main;
    assert_eq!(applied.port_count(), 1);
    let nat = &text[..text.find("COMMIT").unwrap()];
    assert_eq!(
        lines_of(nat, "-D "),
        ["-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"]
    );
    assert_eq!(lines_of(nat, "-X "), ["-X KUBE-SVC-OLD"]);
    assert_eq!(lines_of(nat, "-I PREROUTING").len(), 1);
    assert!(!nat.contains("CNI-X"), "foreign chains are neither declared nor touched");
    let services = lines_of(nat, "-A KUBE-SERVICES ");
    assert!(services.last().unwrap().ends_with("--dst-type LOCAL -j KUBE-NODEPORTS"), "NodePorts last: {services:?}");
    assert!(text.contains("*filter\n") && text.contains("*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n"));
    let forward = lines_of(&text, "-A KUBE-FORWARD ");
    assert_eq!(forward[0], "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP", "first, as upstream: {forward:?}");
}

#[test]
fn partial_touches_only_what_changed() {
    let a = port("a", "10.96.0.10", &["10.244.1.1", "10.244.1.2"]);
    let b = port("b", "10.96.0.11", &["10.244.2.1"]);
    let (_, mut applied) = restore::full(&config(), &state(&[a.clone(), b.clone()]), &[], None);
    let changed = |names: &[&ServicePort]| names.iter().map(|p| p.name.clone()).collect::<BTreeSet<_>>();
    let names = PortChains::of(&a.name);

    // Nothing really changed: nothing to send.
    assert_eq!(restore::partial(&mut applied, &state(&[a.clone(), b.clone()]), &changed(&[&a]), None), None);

    // An endpoint replaced: the service chain is rewritten, the new endpoint chain created, the old one deleted;
    // KUBE-SERVICES and the unchanged endpoint's chain are left alone.
    let a2 = port("a", "10.96.0.10", &["10.244.1.1", "10.244.1.3"]);
    let text = restore::partial(&mut applied, &state(&[a2.clone(), b.clone()]), &changed(&[&a2]), None).unwrap().main;
    let old = names.sep(&a.cluster_endpoints[1]);
    let new = names.sep(&a2.cluster_endpoints[1]);
    let kept = names.sep(&a.cluster_endpoints[0]);
    assert_eq!(
        lines_of(&text, ":"),
        [format!(":{} - [0:0]", names.svc), format!(":{new} - [0:0]"), format!(":{old} - [0:0]")]
    );
    assert_eq!(lines_of(&text, "-X "), [format!("-X {old}")]);
    assert!(!text.contains(&kept) || text.contains(&format!("-j {kept}")), "the kept chain is only referenced");
    assert!(!text.contains("KUBE-SERVICES") && !text.contains("*filter"), "{text}");

    // The service goes: its KUBE-SERVICES rule is deleted by its exact text, its chains deleted.
    let text = restore::partial(&mut applied, &state(std::slice::from_ref(&b)), &changed(&[&a2]), None).unwrap().main;
    assert_eq!(lines_of(&text, "-D KUBE-SERVICES").len(), 1);
    assert_eq!(lines_of(&text, "-X ").len(), 3, "{text}");
    // And comes back with no endpoints: a REJECT in filter, inserted.
    let gone = port("a", "10.96.0.10", &[]);
    let text = restore::partial(&mut applied, &state(&[gone.clone(), b]), &changed(&[&gone]), None).unwrap().main;
    assert!(text.starts_with("*filter\n-I KUBE-SERVICES 1 "), "{text}");
    assert_eq!(applied.port_count(), 2);
}

#[test]
fn batched_partial_creates_chains_before_and_deletes_them_after_the_switch() {
    let ports: Vec<ServicePort> =
        (0..5).map(|i| port(&format!("s{i}"), &format!("10.96.0.{}", 10 + i), &["10.244.1.1", "10.244.1.2"])).collect();
    let (_, mut applied) = restore::full(&config(), &state(&ports[..2]), &[], Some(2));
    let all: BTreeSet<_> = ports.iter().map(|p| p.name.clone()).collect();
    // Three new services, two removed: new chains in batches of two ports, dead chains in one batch.
    let inputs = restore::partial(&mut applied, &state(&ports[2..]), &all, Some(2)).unwrap();
    assert_eq!(inputs.new_chains.len(), 2, "3 ports in batches of 2");
    assert_eq!(inputs.dead_chains.len(), 1);
    assert!(!inputs.main.contains(":KUBE-S"), "the main input only switches rules:\n{}", inputs.main);
    assert_eq!(lines_of(&inputs.main, "-D KUBE-SERVICES").len(), 2);
    assert_eq!(lines_of(&inputs.main, "-I KUBE-SERVICES 1").len(), 3);
    assert_eq!(lines_of(&inputs.dead_chains[0], "-X ").len(), 6, "two services × (service chain + 2 endpoints)");
    let order: Vec<&str> = inputs.in_order().collect();
    assert_eq!(order.len(), 4);
    assert_eq!(order[2], inputs.main);
}

#[test]
fn a_small_change_stays_one_input() {
    let a = port("a", "10.96.0.10", &["10.244.1.1"]);
    let (_, mut applied) = restore::full(&config(), &state(std::slice::from_ref(&a)), &[], Some(100));
    let moved = port("a", "10.96.0.10", &["10.244.1.2"]);
    let inputs =
        restore::partial(&mut applied, &state(std::slice::from_ref(&moved)), &[a.name.clone()].into(), Some(100))
            .unwrap();
    assert!(inputs.new_chains.is_empty() && inputs.dead_chains.is_empty(), "{inputs:?}");
    assert!(inputs.main.contains("-X KUBE-SEP-"));
}
