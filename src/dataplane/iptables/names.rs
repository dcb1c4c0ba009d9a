//! Which iptables chains and ipsets upstream kube-proxy creates, by table. Ownership is decided by name *and*
//! table, because the same name can belong to someone else elsewhere: `KUBE-FIREWALL` in `filter` is the
//! kubelet's, while `KUBE-FIREWALL` in `nat` was kube-proxy's IPVS mode.
//!
//! Sources (kubernetes/kubernetes): pkg/proxy/iptables/proxier.go and cleanup.go (chain constants,
//! `iptablesJumpChains`, `isServiceChainName`, `deprecatedServiceLBChainNamePrefix`), pkg/proxy/ipvs/proxier.go
//! (`iptablesCleanupChains`, `ipsetInfo`; older releases also `KubeFireWallChain` in nat), pkg/proxy/ipvs/ipset.go
//! (set names and the `KUBE-6-` renaming for IPv6), and the userspace mode's iptables.go (removed in 1.26).
//! Deliberately absent: the kubelet's `KUBE-FIREWALL` (filter), `KUBE-KUBELET-CANARY` (every table),
//! `KUBE-IPTABLES-HINT` (mangle), and `KUBE-MARK-DROP` (nat), which kubelet and kube-proxy both created and
//! upstream's cleanup leaves alone.

/// Chains every mode of upstream kube-proxy has created in `nat`.
const NAT_CHAINS: &[&str] = &[
    // iptables mode
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-PROXY-CANARY",
    // ipvs mode (`KUBE-FIREWALL` here is the LoadBalancer source-range chain of releases before
    // KUBE-PROXY-FIREWALL / KUBE-SOURCE-RANGES-FIREWALL moved to `filter`)
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    "KUBE-FIREWALL",
    // userspace mode
    "KUBE-PORTALS-CONTAINER",
    "KUBE-PORTALS-HOST",
    "KUBE-NODEPORT-CONTAINER",
    "KUBE-NODEPORT-HOST",
];

/// Per-service and per-endpoint chains of the iptables mode (`nat` only). `KUBE-XLB-` is the pre-1.26 name of
/// `KUBE-EXT-`/`KUBE-SVL-`, still in upstream's cleanup list.
const NAT_PREFIXES: &[&str] = &["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-", "KUBE-XLB-"];

/// Chains every mode of upstream kube-proxy has created in `filter`.
const FILTER_CHAINS: &[&str] = &[
    // iptables mode
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-FORWARD",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
    // ipvs mode
    "KUBE-NODE-PORT",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
    // userspace mode
    "KUBE-NODEPORT-NON-LOCAL",
];

/// Chains upstream kube-proxy has created in `mangle`: only its canary.
const MANGLE_CHAINS: &[&str] = &["KUBE-PROXY-CANARY"];

/// The tables kube-proxy ever used; other tables (raw, security) are never read or written.
pub const TABLES: &[&str] = &["nat", "filter", "mangle"];

/// Whether `chain` in `table` is one of upstream kube-proxy's (iptables, ipvs or userspace mode).
pub fn is_kube_proxy_chain(table: &str, chain: &str) -> bool {
    match table {
        "nat" => NAT_CHAINS.contains(&chain) || NAT_PREFIXES.iter().any(|p| chain.starts_with(p)),
        "filter" => FILTER_CHAINS.contains(&chain),
        "mangle" => MANGLE_CHAINS.contains(&chain),
        _ => false,
    }
}

/// The IPv4 names of the ipsets of upstream's IPVS mode (`ipsetInfo`).
const IPVS_SETS: &[&str] = &[
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
];

/// ipset names are at most 31 characters.
const IPSET_NAME_MAX: usize = 31;

/// Every ipset name upstream's IPVS mode uses: the IPv4 names, and the IPv6 ones, which upstream derives by
/// turning the `KUBE-` prefix into `KUBE-6-` and cutting the result at 31 characters. (Upstream's own cleanup
/// destroys only the IPv4 names; the IPv6 sets of a dual-stack node would be left behind.)
pub fn ipvs_ipsets() -> Vec<String> {
    let v6 = IPVS_SETS.iter().map(|name| {
        let mut six = format!("KUBE-6-{}", &name["KUBE-".len()..]);
        six.truncate(IPSET_NAME_MAX);
        six
    });
    IPVS_SETS.iter().map(|s| s.to_string()).chain(v6).collect()
}

/// The dummy interface upstream's IPVS mode binds every service address to.
pub const IPVS_INTERFACE: &str = "kube-ipvs0";
