//! Pure tests: reading captured `iptables-save` output of upstream kube-proxy rulesets, the removal planned for
//! it, and the exact `iptables-restore` input that carries it out.

use super::cleanup::{TablePlan, plan_table, restore_input};
use super::ipvs::{Link, VirtualService, parse_ipvsadm_save, parse_link};
use super::names::{TABLES, ipvs_ipsets, is_kube_proxy_chain};
use super::save::{self, Table};

pub(super) const IPTABLES_V4: &str = include_str!("fixtures/iptables-mode-v4.save");
pub(super) const IPTABLES_V6: &str = include_str!("fixtures/iptables-mode-v6.save");
pub(super) const IPVS_V4: &str = include_str!("fixtures/ipvs-mode-v4.save");
pub(super) const IPVS_V6: &str = include_str!("fixtures/ipvs-mode-v6.save");

fn plans(text: &str) -> Vec<TablePlan> {
    save::parse("fixture", text).unwrap().iter().filter(|t| TABLES.contains(&t.name.as_str())).map(plan_table).collect()
}

fn plan<'a>(plans: &'a [TablePlan], table: &str) -> &'a TablePlan {
    plans.iter().find(|p| p.table == table).unwrap()
}

#[test]
fn parses_captured_save_output() {
    let tables = save::parse("fixture", IPTABLES_V4).unwrap();
    assert_eq!(tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["mangle", "filter", "nat"]);
    let filter = &tables[1];
    let builtin: Vec<&str> = filter.chains.iter().filter(|c| c.builtin).map(|c| c.name.as_str()).collect();
    assert_eq!(builtin, ["INPUT", "FORWARD", "OUTPUT"]);
    assert_eq!(filter.chains.len(), 3 + 10);
    let someone = filter.rules.iter().find(|r| r.spec.contains("someone else")).unwrap();
    assert_eq!(someone.chain, "INPUT");
    assert_eq!(someone.spec, r#"-s 1.2.3.4/32 -m comment --comment "someone else\'s input rule" -j DROP"#);
    assert_eq!(someone.target.as_deref(), Some("DROP"));
    // A rule without a target (the KUBE-FW- "will be dropped" comment-only rule).
    let nat = &tables[2];
    assert!(nat.rules.iter().any(|r| r.chain == "KUBE-FW-NUKIZ6OKUXPJNT4C" && r.target.is_none()));
    for text in [IPTABLES_V6, IPVS_V4, IPVS_V6] {
        assert_eq!(save::parse("fixture", text).unwrap().len(), 3);
    }
}

#[test]
fn ownership_is_by_table_and_name() {
    assert!(is_kube_proxy_chain("nat", "KUBE-FIREWALL"), "old IPVS mode's LoadBalancer chain");
    assert!(!is_kube_proxy_chain("filter", "KUBE-FIREWALL"), "the kubelet's");
    for table in ["nat", "filter", "mangle"] {
        assert!(!is_kube_proxy_chain(table, "KUBE-KUBELET-CANARY"));
        assert!(!is_kube_proxy_chain(table, "KUBE-IPTABLES-HINT"));
        assert!(!is_kube_proxy_chain(table, "KUBE-MARK-DROP"));
        assert!(is_kube_proxy_chain(table, "KUBE-PROXY-CANARY"));
    }
    assert!(is_kube_proxy_chain("nat", "KUBE-SEP-SXIVWICOYRO3J4NJ"));
    assert!(is_kube_proxy_chain("nat", "KUBE-XLB-GNZBNJ2PO5MGZ6GT"));
    assert!(!is_kube_proxy_chain("filter", "KUBE-SEP-SXIVWICOYRO3J4NJ"));
    assert!(!is_kube_proxy_chain("raw", "KUBE-SERVICES"));
    assert!(!is_kube_proxy_chain("nat", "KUBE-SERVICES-EXTRA"));
}

#[test]
fn ipset_names_include_upstreams_ipv6_spelling() {
    let sets = ipvs_ipsets();
    assert_eq!(sets.len(), 34);
    for name in ["KUBE-CLUSTER-IP", "KUBE-IPVS-IPS", "KUBE-6-CLUSTER-IP", "KUBE-6-LOOP-BACK"] {
        assert!(sets.iter().any(|s| s == name), "{name}");
    }
    // 32 characters before upstream cuts them at 31.
    assert!(sets.iter().any(|s| s == "KUBE-6-LOAD-BALANCER-SOURCE-CID"));
    assert!(sets.iter().any(|s| s == "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS"));
    assert!(sets.iter().all(|s| s.len() <= 31));
}

/// The whole removal for the IPv4 iptables-mode fixture, line by line.
#[test]
fn golden_restore_input_iptables_mode() {
    let expected = include_str!("fixtures/iptables-mode-v4.restore");
    assert_eq!(restore_input(&plans(IPTABLES_V4)), expected);
}

#[test]
fn golden_restore_input_ipvs_mode() {
    let expected = include_str!("fixtures/ipvs-mode-v4.restore");
    assert_eq!(restore_input(&plans(IPVS_V4)), expected);
}

#[test]
fn plans_count_what_they_remove_and_keep_others_whole() {
    let p = plans(IPTABLES_V4);
    let filter = plan(&p, "filter");
    assert_eq!(filter.chains.len(), 6, "{:?}", filter.chains);
    assert_eq!(filter.jumps.len(), 10);
    assert_eq!(filter.chain_rules, 8);
    assert!(
        !filter
            .chains
            .iter()
            .any(|c| ["KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "CNI-XYZ", "DOCKER-USER"].contains(&c.as_str()))
    );
    let nat = plan(&p, "nat");
    assert_eq!(nat.chains.len(), 16);
    assert_eq!(nat.jumps.len(), 3);
    assert!(!nat.chains.iter().any(|c| ["KUBE-MARK-DROP", "KUBE-KUBELET-CANARY", "DOCKER"].contains(&c.as_str())));
    assert_eq!(plan(&p, "mangle").chains, ["KUBE-PROXY-CANARY"]);
    assert!(p.iter().all(|t| t.kept.is_empty()));

    let p = plans(IPVS_V6);
    // iptables-save lists chains sorted by name.
    assert_eq!(
        plan(&p, "nat").chains,
        ["KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ", "KUBE-NODE-PORT", "KUBE-POSTROUTING", "KUBE-SERVICES"]
    );
    assert_eq!(
        plan(&p, "filter").chains,
        [
            "KUBE-FORWARD",
            "KUBE-IPVS-FILTER",
            "KUBE-IPVS-OUT-FILTER",
            "KUBE-NODE-PORT",
            "KUBE-PROXY-FIREWALL",
            "KUBE-SOURCE-RANGES-FIREWALL"
        ]
    );
    assert!(plan(&p, "mangle").chains.is_empty());
}

fn table(text: &str) -> Table {
    save::parse("test", text).unwrap().remove(0)
}

/// A CNI jumping to KUBE-MARK-MASQ keeps it (and only it) in place, rather than us editing the CNI's chain.
#[test]
fn chains_someone_else_jumps_to_are_kept() {
    let nat = table(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:CNI-HOSTPORT-MASQ - [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
         -A POSTROUTING -j CNI-HOSTPORT-MASQ\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A CNI-HOSTPORT-MASQ -j KUBE-MARK-MASQ\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -j MASQUERADE\nCOMMIT\n",
    );
    let plan = plan_table(&nat);
    assert_eq!(plan.kept, ["KUBE-MARK-MASQ"]);
    assert_eq!(plan.chains, ["KUBE-POSTROUTING"]);
    assert_eq!(
        restore_input(&[plan]),
        "*nat\n-D POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -F KUBE-POSTROUTING\n-X KUBE-POSTROUTING\nCOMMIT\n"
    );
}

/// Keeping a chain keeps what it jumps to, and the built-in jumps into kept chains stay too.
#[test]
fn keeping_is_transitive() {
    let nat = table(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:FOREIGN - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n\
         :KUBE-SEP-B - [0:0]\n:KUBE-SVC-C - [0:0]\n\
         -A PREROUTING -j KUBE-SERVICES\n-A PREROUTING -j KUBE-SVC-C\n-A FOREIGN -g KUBE-SERVICES\n\
         -A KUBE-SERVICES -j KUBE-SVC-A\n-A KUBE-SVC-A -j KUBE-SEP-B\n-A KUBE-SVC-C -j KUBE-SEP-B\nCOMMIT\n",
    );
    let plan = plan_table(&nat);
    assert_eq!(plan.kept, ["KUBE-SERVICES", "KUBE-SVC-A", "KUBE-SEP-B"]);
    assert_eq!(plan.chains, ["KUBE-SVC-C"]);
    assert_eq!(plan.jumps.len(), 1);
    assert_eq!(plan.jumps[0].spec, "-j KUBE-SVC-C");
}

#[test]
fn nothing_to_remove_means_no_input() {
    let after = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\n\
                 -A INPUT -j KUBE-FIREWALL\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-MARK-DROP - [0:0]\nCOMMIT\n";
    let p = plans(after);
    assert!(p.iter().all(|t| t.chains.is_empty() && t.jumps.is_empty() && t.kept.is_empty()));
    assert_eq!(restore_input(&p), "");
    assert_eq!(restore_input(&plans("")), "");
}

#[test]
fn reads_kube_ipvs0() {
    let veth = r#"[{"ifindex":3,"link":"kipvs-peer","ifname":"kube-ipvs0","flags":["BROADCAST","MULTICAST","M-DOWN"],"mtu":1500,"linkinfo":{"info_kind":"veth"},"addr_info":[{"family":"inet","local":"10.96.0.1","prefixlen":32,"scope":"global","label":"kube-ipvs0"},{"family":"inet6","local":"fd00:96::1","prefixlen":128,"scope":"global","tentative":true}]}]"#;
    assert_eq!(
        parse_link(veth).unwrap(),
        Some(Link {
            kind: Some("veth".into()),
            addresses: vec!["10.96.0.1".parse().unwrap(), "fd00:96::1".parse().unwrap()]
        })
    );
    let dummy = r#"[{"ifindex":5,"ifname":"kube-ipvs0","flags":["BROADCAST","NOARP"],"linkinfo":{"info_kind":"dummy"},"addr_info":[]}]"#;
    assert_eq!(parse_link(dummy).unwrap(), Some(Link { kind: Some("dummy".into()), addresses: vec![] }));
    assert_eq!(parse_link("[]").unwrap(), None);
    assert!(parse_link("Device not found").is_err());
}

#[test]
fn reads_ipvsadm_save() {
    let text = "-A -t 10.96.0.1:443 -s rr\n-a -t 10.96.0.1:443 -r 192.168.0.10:6443 -m -w 1\n\
                -A -u 10.96.0.10:53 -s rr\n-A --sctp-service 10.96.0.20:9 -s rr\n-A -t [fd00:96::1]:443 -s rr\n\
                -A -f 7 -s rr\n";
    let services = parse_ipvsadm_save(text);
    let vs = |flag: &str, protocol, address: &str, ip: &str| VirtualService {
        flag: flag.into(),
        protocol,
        address: address.into(),
        ip: ip.parse().unwrap(),
    };
    assert_eq!(
        services,
        [
            vs("-t", "TCP", "10.96.0.1:443", "10.96.0.1"),
            vs("-u", "UDP", "10.96.0.10:53", "10.96.0.10"),
            vs("--sctp-service", "SCTP", "10.96.0.20:9", "10.96.0.20"),
            vs("-t", "TCP", "[fd00:96::1]:443", "fd00:96::1"),
        ]
    );
}
