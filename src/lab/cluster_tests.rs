use super::*;
use crate::lab::root_or_skip;

#[test]
fn specs_with_clashing_or_unusable_pod_names_are_rejected() {
    let ok = LabSpec::new("/bin/true").pod("a").pod_on("b", "node-b");
    assert!(validate(&ok).is_ok());
    for bad in [LabSpec::new("/bin/true").pod("a").pod("a"), LabSpec::new("/bin/true").pod("a b")] {
        assert!(matches!(validate(&bad), Err(LabError::Spec(_))), "{bad:?}");
    }
    let many = (0..=MAX_PODS).fold(LabSpec::new("/bin/true"), |s, i| s.pod(&format!("p{i}")));
    assert!(matches!(validate(&many), Err(LabError::Spec(_))));
}

#[test]
fn pod_addresses_use_the_same_digits_in_both_families() {
    assert_eq!(pod_ip(0).to_string(), "10.244.0.10");
    assert_eq!(pod_ip6(0).to_string(), "fd00:10:244::10");
    assert_eq!(pod_ip(15).to_string(), "10.244.0.25");
    assert_eq!(pod_ip6(15).to_string(), "fd00:10:244::25");
    assert_eq!(pod_ip6(MAX_PODS - 1).to_string(), "fd00:10:244::249");
    assert!(POD_CIDR_V4.contains(&pod_ip(MAX_PODS - 1)) && POD_CIDR_V6.contains(&pod_ip6(MAX_PODS - 1)));
}

/// `ip route get DST` from `at`, reduced to its first line.
fn route(lab: &ClusterLab, at: &Where, dst: impl std::fmt::Display) -> String {
    let out = lab.exec(at, &["ip", "route", "get", &dst.to_string()]).unwrap();
    assert!(out.status.success(), "route get {dst}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string()
}

fn sysctl(lab: &ClusterLab, at: &Where, key: &str) -> String {
    lab.netns(at).unwrap().run(&["sysctl", "-n", key]).unwrap().trim().to_string()
}

fn netns_list() -> String {
    crate::lab::netns::run_ok(&["ip", "netns", "list"]).unwrap()
}

/// Builds a real lab and checks its shape through the kernel's own answers (`ip route get`, sysctls) and its
/// cleanup. Traffic through it needs the binary's helpers, so that is checked by the integration tests.
#[test]
fn a_built_lab_routes_as_designed_and_leaves_nothing_behind() {
    if !root_or_skip("a_built_lab_routes_as_designed_and_leaves_nothing_behind") {
        return;
    }
    let lab = ClusterLab::build(&LabSpec::new("/bin/true").pod("a").pod_on("b", "node-b")).unwrap();
    let (a, b) = (lab.pod("a"), lab.pod("b"));
    assert_eq!((a.ip.to_string(), a.ip6.to_string()), ("10.244.0.10".into(), "fd00:10:244::10".into()));
    assert_eq!((a.node_name.as_str(), b.node_name.as_str()), ("lab-node", "node-b"));
    assert_eq!(lab.node_ip(IpFamily::V6).to_string(), "fd00:50::1");

    let (pod_a, node, outside) = (Where::pod("a"), Where::Node, Where::Outside);
    // Pod → anything goes via the node-side address; the node reaches each pod over that pod's veth.
    assert!(route(&lab, &pod_a, b.ip).contains("via 10.244.0.1 dev eth0"));
    assert!(route(&lab, &pod_a, b.ip6).contains("via fd00:10:244::1 dev eth0"));
    assert!(route(&lab, &node, b.ip).contains("dev veth1"));
    assert!(route(&lab, &node, b.ip6).contains("dev veth1"));
    // Cluster IPs: the outside host sends them to the node; the node's default route points back outside.
    assert!(route(&lab, &outside, "10.96.0.10").contains("via 192.168.50.1 dev eth0"));
    assert!(route(&lab, &outside, "fd00:96::10").contains("via fd00:50::1 dev eth0"));
    assert!(route(&lab, &outside, "198.51.100.7").contains("via 192.168.50.1"));
    assert!(route(&lab, &outside, "2001:db8:113::7").contains("via fd00:50::1"));
    assert!(route(&lab, &node, "10.96.0.10").contains("via 192.168.50.2 dev eth0"));
    assert!(route(&lab, &node, "fd00:96::10").contains("via fd00:50::2 dev eth0"));
    assert_eq!(sysctl(&lab, &node, "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(&lab, &node, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(sysctl(&lab, &pod_a, "net.ipv4.ip_forward"), "0");

    // A process the caller started and forgot is killed on drop, and every namespace goes away.
    let mut stray = lab.spawn(&pod_a, &["sleep", "600"]).unwrap();
    // `ip netns exec` joins the namespace after the spawn returns: wait until it has, or it could miss the kill.
    let joined = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !lab.netns(&pod_a).unwrap().pids().contains(&stray.id()) {
        assert!(std::time::Instant::now() < joined, "the stray process never entered the pod namespace");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let names: Vec<String> =
        [&node, &outside, &pod_a, &Where::pod("b")].iter().map(|w| lab.netns(w).unwrap().name().to_string()).collect();
    drop(lab);
    // The kill is asynchronous: give a loaded machine a moment to reap it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        if let Some(status) = stray.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "stray process not killed when the lab was dropped");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!status.success());
    let left = netns_list();
    for name in names {
        assert!(!left.lines().any(|l| l.split_whitespace().next() == Some(&name)), "{name} left behind");
    }
}
