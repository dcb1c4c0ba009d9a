//! Node set-up against the real kernel: the binary with `--init-only`, run inside a lab network namespace,
//! changes that namespace's conntrack sysctls and nothing of the machine's.
//!
//! The conntrack timeouts are per network namespace, so they can be changed freely in a lab namespace.
//! nf_conntrack_max and the hashsize module parameter are global: these tests never ask for a change to them
//! that the kernel would accept from a lab namespace.

use std::process::{Output, Stdio};

use kube_proxy_rs::lab::{Netns, root_or_skip};

const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy-rs");
const NETFILTER: &str = "/proc/sys/net/netfilter";
const NF_CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Every file node set-up may write, as the machine (this test process) sees it.
const MACHINE_FILES: [&str; 9] = [
    "/proc/sys/net/netfilter/nf_conntrack_max",
    "/sys/module/nf_conntrack/parameters/hashsize",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal",
    "/proc/sys/net/netfilter/nf_conntrack_udp_timeout",
    "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream",
    "/proc/self/oom_score_adj",
    "/proc/1/oom_score_adj",
];

fn machine_values() -> Vec<(&'static str, String)> {
    MACHINE_FILES.iter().map(|f| (*f, std::fs::read_to_string(f).unwrap_or_else(|e| format!("<{e}>")))).collect()
}

/// A sysctl as seen from inside `ns`.
fn netns_value(ns: &Netns, name: &str) -> String {
    ns.run(&["cat", &format!("{NETFILTER}/{name}")]).unwrap().trim().to_string()
}

/// Runs the binary with `--init-only` and `args` inside `ns`.
fn init_only(ns: &Netns, args: &[&str]) -> Output {
    let mut argv = vec![BIN, "--init-only", "--v=2"];
    argv.extend_from_slice(args);
    let out = ns.command(&argv).stdin(Stdio::null()).output().unwrap();
    println!("{argv:?} -> {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// A lab namespace with the conntrack sysctls present. They exist only while nf_conntrack is loaded; a
/// conntrack rule in the lab namespace loads it, as the proxy's own ruleset would.
fn lab_namespace() -> Netns {
    let ns = Netns::new("kpr").unwrap();
    if !std::path::Path::new(NF_CONNTRACK_MAX).exists() {
        ns.run(&[
            "nft",
            "add table ip kpr-ct; add chain ip kpr-ct c; add rule ip kpr-ct c ct state established accept",
        ])
        .unwrap();
    }
    assert!(std::path::Path::new(NF_CONNTRACK_MAX).exists(), "nf_conntrack is not loaded and could not be");
    ns
}

#[test]
fn init_only_sets_the_namespaces_conntrack_timeouts_and_nothing_of_the_machines() {
    if !root_or_skip("init_only_sets_the_namespaces_conntrack_timeouts_and_nothing_of_the_machines") {
        return;
    }
    let ns = lab_namespace();
    let machine_before = machine_values();
    let untouched_before = (netns_value(&ns, "nf_conntrack_udp_timeout_stream"), netns_value(&ns, "nf_conntrack_max"));
    let args = ["--conntrack-tcp-timeout-established=2h", "--conntrack-udp-timeout=45s", "--conntrack-max-per-core=0"];

    let out = init_only(&ns, &args);
    assert!(out.status.success(), "init-only failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(netns_value(&ns, "nf_conntrack_tcp_timeout_established"), "7200");
    assert_eq!(netns_value(&ns, "nf_conntrack_udp_timeout"), "45");
    // The default --conntrack-tcp-timeout-close-wait is 1h.
    assert_eq!(netns_value(&ns, "nf_conntrack_tcp_timeout_close_wait"), "3600");
    // 0s leaves udp_timeout_stream alone; max-per-core=0 leaves the table alone.
    assert_eq!(
        (netns_value(&ns, "nf_conntrack_udp_timeout_stream"), netns_value(&ns, "nf_conntrack_max")),
        untouched_before
    );

    // Again, as the proxy started after an init container would: nothing left to write, still success.
    let out = init_only(&ns, &args);
    assert!(out.status.success(), "second run failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("changes=0"), "nothing should be written the second time");

    assert_eq!(machine_values(), machine_before, "the machine's own values changed");
}

#[test]
fn a_table_size_the_namespace_may_not_set_is_fatal_and_named() {
    if !root_or_skip("a_table_size_the_namespace_may_not_set_is_fatal_and_named") {
        return;
    }
    let ns = lab_namespace();
    // Kernels since 5.12 make nf_conntrack_max read-only outside the initial network namespace. On an older
    // kernel the write below would succeed and change the machine's table size, so the test must not run there.
    let mode = ns.run(&["stat", "-c", "%a", NF_CONNTRACK_MAX]).unwrap();
    if mode.trim() != "444" {
        eprintln!("SKIPPED: nf_conntrack_max is writable (mode {}) from a lab namespace on this kernel", mode.trim());
        return;
    }
    let machine_before = machine_values();
    let established_before = netns_value(&ns, "nf_conntrack_tcp_timeout_established");
    let current: u64 = netns_value(&ns, "nf_conntrack_max").parse().unwrap();
    // One entry per core with a floor just above the current size: the proxy must try to raise the table.
    let min = format!("--conntrack-min={}", current + 1);

    let out = init_only(&ns, &["--conntrack-max-per-core=1", &min, "--conntrack-tcp-timeout-established=2h"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(NF_CONNTRACK_MAX), "{stderr}");
    assert!(stderr.contains("--conntrack-max-per-core=0"), "the error should say how to avoid it: {stderr}");
    // Fatal means fatal: the steps after it did not run.
    assert_eq!(netns_value(&ns, "nf_conntrack_tcp_timeout_established"), established_before);
    assert_eq!(machine_values(), machine_before, "the machine's own values changed");
}
