//! The lab itself, without the proxy: routing between pods, node and outside, helpers, and clean-up. If this
//! fails, every scenario would fail for reasons that have nothing to do with the proxy.

use std::net::SocketAddr;
use std::time::Duration;

use kube_proxy_rs::lab::{ClusterLab, LabSpec, ProbeResult, ProbeSpec, SessionReply, Where};
use kube_proxy_rs::model::IpFamily;

fn show(what: &str, results: &[ProbeResult]) {
    println!("{what:<58} {}", serde_json::to_string(results).unwrap());
}

#[test]
fn lab_routes_traffic_and_cleans_up() {
    if !kube_proxy_rs::lab::root_or_skip("lab_routes_traffic_and_cleans_up") {
        return;
    }
    let t0 = std::time::Instant::now();
    let spec = LabSpec::new(env!("CARGO_BIN_EXE_kube-proxy-rs")).pod("a").pod_on("b", "node-b");
    let mut lab = ClusterLab::build(&spec).unwrap();
    println!("built in {:?}", t0.elapsed());
    lab.start_echo("a", 8080).unwrap();
    lab.start_echo("b", 8080).unwrap();
    lab.start_echo_at(&Where::Node, "node", 8080).unwrap();
    println!("echo servers ready at {:?}", t0.elapsed());
    let short = Duration::from_millis(300);
    for family in IpFamily::ALL {
        let (a, b) = (lab.pod("a").addr(family), lab.pod("b").addr(family));
        let at = |ip, port| SocketAddr::new(ip, port);
        for spec in [ProbeSpec::tcp(at(b, 8080)).count(2), ProbeSpec::udp(at(b, 8080)).count(2)] {
            let r = lab.probe(&Where::pod("a"), &spec).unwrap();
            show(&format!("{family:?} pod a -> pod b {:?}", spec.protocol), &r);
            assert!(r.iter().all(|r| r.pod() == Some("b") && r.seen().unwrap().ip() == a), "{r:?}");
        }
        let r = lab.probe(&Where::Node, &ProbeSpec::tcp(at(a, 8080))).unwrap();
        show(&format!("{family:?} node -> pod a"), &r);
        assert_eq!(r[0].seen().map(|s| s.ip()), Some(lab.node_pod_side_ip(family)));
        let r = lab.probe(&Where::Outside, &ProbeSpec::udp(at(lab.node_ip(family), 8080))).unwrap();
        show(&format!("{family:?} outside -> node ip (host-network echo)"), &r);
        assert_eq!((r[0].pod(), r[0].seen().map(|s| s.ip())), (Some("node"), Some(lab.outside_ip(family))));
        let r = lab.probe(&Where::pod("b"), &ProbeSpec::udp(at(lab.outside_ip(family), 9)).timeout(short)).unwrap();
        show(&format!("{family:?} pod b -> outside:9 (outside has no route back)"), &r);
        assert_eq!(r, [ProbeResult::Timeout]);
        let r = lab.probe(&Where::Outside, &ProbeSpec::tcp(at(a, 8080)).timeout(short)).unwrap();
        show(&format!("{family:?} outside -> pod a (no route to pods outside)"), &r);
        assert!(matches!(r[0], ProbeResult::Error(_)), "{r:?}");
        for spec in [ProbeSpec::tcp(at(b, 9999)), ProbeSpec::udp(at(b, 9999))] {
            let r = lab.probe(&Where::pod("a"), &spec).unwrap();
            show(&format!("{family:?} pod a -> pod b:9999 {:?}", spec.protocol), &r);
            assert_eq!(r, [ProbeResult::Refused]);
        }
        let vip: SocketAddr =
            if family == IpFamily::V4 { "10.96.0.10:80" } else { "[fd00:96::10]:80" }.parse().unwrap();
        let r = lab.probe(&Where::Outside, &ProbeSpec::tcp(vip).timeout(short)).unwrap();
        show(&format!("{family:?} outside -> cluster IP without a proxy"), &r);
        assert_eq!(r, [ProbeResult::Timeout]);
        let r = lab.probe(&Where::pod("a"), &ProbeSpec::udp(at(b, 8080)).count(3).source_port(40000)).unwrap();
        show(&format!("{family:?} pod a -> pod b UDP from port 40000 x3"), &r);
        assert!(r.iter().all(|r| r.seen() == Some(at(a, 40000))), "{r:?}");
        let mut s = lab.open_session(&Where::pod("a"), &ProbeSpec::tcp(at(b, 8080))).unwrap();
        let replies = [s.send("hello").unwrap(), s.send("again").unwrap()];
        println!("{:<58} greeting {:?}, replies {:?}", format!("{family:?} session a -> b"), s.greeting(), replies);
        assert_eq!(replies[1], SessionReply::Echoed { pod: "b".into(), text: "again".into() });
    }
    // Outside reaches pods once it has a route to them (the lab gives it none by default).
    lab.exec(&Where::Outside, &["ip", "route", "add", "10.244.0.0/16", "via", "192.168.50.1"]).unwrap();
    lab.exec(&Where::Outside, &["ip", "-6", "route", "add", "fd00:10:244::/64", "via", "fd00:50::1"]).unwrap();
    for family in IpFamily::ALL {
        let r = lab.probe(&Where::Outside, &ProbeSpec::tcp(SocketAddr::new(lab.pod("a").addr(family), 8080))).unwrap();
        show(&format!("{family:?} outside -> pod a (after adding a pod route)"), &r);
        assert_eq!(r[0].seen().map(|s| s.ip()), Some(lab.outside_ip(family)));
        let r = lab.probe(&Where::pod("b"), &ProbeSpec::udp(SocketAddr::new(lab.outside_ip(family), 9))).unwrap();
        show(&format!("{family:?} pod b -> outside:9 (after adding a pod route)"), &r);
        assert_eq!(r, [ProbeResult::Refused]);
    }
    // What the proxy will do: DNAT a cluster IP to pod a in prerouting and output of the node.
    let nft = |rule: &str| {
        let out = lab.exec(&Where::Node, &["nft", rule]).unwrap();
        assert!(out.status.success(), "{rule}: {}", String::from_utf8_lossy(&out.stderr));
    };
    nft("add table inet labcheck");
    nft("add chain inet labcheck pre { type nat hook prerouting priority dstnat; }");
    nft("add chain inet labcheck out { type nat hook output priority -100; }");
    for chain in ["pre", "out"] {
        for l4 in ["tcp", "udp"] {
            nft(&format!(
                "add rule inet labcheck {chain} ip daddr 10.96.0.10 {l4} dport 80 dnat ip to 10.244.0.10:8080"
            ));
            let to = "[fd00:10:244::10]:8080";
            nft(&format!("add rule inet labcheck {chain} ip6 daddr fd00:96::10 {l4} dport 80 dnat ip6 to {to}"));
        }
    }
    for vip in ["10.96.0.10:80", "[fd00:96::10]:80"] {
        let vip: SocketAddr = vip.parse().unwrap();
        for from in [Where::Outside, Where::Node, Where::pod("b")] {
            for spec in [ProbeSpec::tcp(vip), ProbeSpec::udp(vip)] {
                let r = lab.probe(&from, &spec).unwrap();
                show(&format!("DNAT {from:?} -> {vip} {:?}", spec.protocol), &r);
                assert_eq!(r[0].pod(), Some("a"), "{r:?}");
            }
        }
    }
    let names: Vec<String> = [Where::Node, Where::Outside, Where::pod("a"), Where::pod("b")]
        .iter()
        .map(|w| lab.netns(w).unwrap().name().into())
        .collect();
    let t1 = std::time::Instant::now();
    drop(lab);
    println!("dropped in {:?}; namespaces were {names:?}", t1.elapsed());
    let left = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    for name in &names {
        assert!(!left.lines().any(|l| l.split_whitespace().next() == Some(name)), "{name} left behind");
    }
    println!("total {:?}: all checks passed", t0.elapsed());
}
