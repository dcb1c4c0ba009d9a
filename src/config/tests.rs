use clap::Parser;

use super::*;

fn parse(args: &[&str]) -> Result<Config, String> {
    let mut argv = vec!["kube-proxy-rs"];
    argv.extend_from_slice(args);
    let flags = Flags::try_parse_from(argv).map_err(|e| e.to_string())?;
    Config::from_flags(&flags).map_err(|e| e.to_string())
}

#[test]
fn defaults_are_upstreams() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.mode, ProxyMode::Nftables);
    assert_eq!(c.sync_period, Duration::from_secs(30));
    assert_eq!(c.min_sync_period, Duration::from_secs(1));
    assert_eq!(c.masquerade_bit, 14);
    assert_eq!(c.proxy_settings().masquerade_mark(), 0x4000);
    assert_eq!(c.healthz_bind_address.unwrap().to_string(), "0.0.0.0:10256");
    assert_eq!(c.metrics_bind_address.unwrap().to_string(), "127.0.0.1:10249");
    assert_eq!(c.nodeport_addresses, NodePortAddresses::Default);
    assert_eq!(c.nftables_transport, NftablesTransport::Netlink);
}

#[test]
fn the_nft_command_is_the_selectable_fallback_transport() {
    assert_eq!(parse(&["--nftables-transport=nft"]).unwrap().nftables_transport, NftablesTransport::Nft);
    assert_eq!(parse(&["--nftables-transport", "netlink"]).unwrap().nftables_transport, NftablesTransport::Netlink);
}

#[test]
fn upstream_flag_syntax_is_accepted() {
    let c = parse(&[
        "--proxy-mode=nftables",
        "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
        "--masquerade-all=true",
        "--iptables-sync-period=1m0s",
        "--iptables-min-sync-period",
        "500ms",
        "--nodeport-addresses=primary",
        "--v=4",
        "--hostname-override",
        "node-a",
        "--healthz-bind-address=",
    ])
    .unwrap();
    assert_eq!(c.cluster_cidrs.len(), 2);
    assert!(c.masquerade_all);
    assert_eq!(c.sync_period, Duration::from_secs(60));
    assert_eq!(c.min_sync_period, Duration::from_millis(500));
    assert_eq!(c.nodeport_addresses, NodePortAddresses::Primary);
    assert_eq!(c.verbosity, 4);
    assert_eq!(c.node_name(), "node-a");
    assert_eq!(c.healthz_bind_address, None, "empty disables the server");
    assert!(parse(&["--masquerade-all"]).unwrap().masquerade_all);
    assert_eq!(parse(&["-v", "2"]).unwrap().verbosity, 2);
}

#[test]
fn bad_values_name_the_flag_and_the_value() {
    for (args, flag, value) in [
        (vec!["--iptables-sync-period=10x"], "--iptables-sync-period", "10x"),
        (vec!["--cluster-cidr=10.0.0.0/33"], "--cluster-cidr", "10.0.0.0/33"),
        (vec!["--proxy-mode=bogus"], "--proxy-mode", "bogus"),
        (vec!["--nftables-transport=json"], "--nftables-transport", "json"),
        (vec!["--iptables-masquerade-bit=40"], "--iptables-masquerade-bit", "40"),
        (vec!["--masquerade-all=maybe"], "--masquerade-all", "maybe"),
        (vec!["--metrics-bind-address=localhost"], "--metrics-bind-address", "localhost"),
        (vec!["--cluster-cidr=10.0.0.0/8,10.1.0.0/16"], "--cluster-cidr", "10.0.0.0/8,10.1.0.0/16"),
        (vec!["--iptables-min-sync-period=1m", "--iptables-sync-period=30s"], "--iptables-min-sync-period", "1m0s"),
        (vec!["--detect-local-mode=BridgeInterface"], "--pod-bridge-interface", ""),
    ] {
        let err = parse(&args).unwrap_err();
        assert!(err.contains(flag) && err.contains(value), "{args:?}: {err}");
    }
}

#[test]
fn configz_has_upstream_field_names() {
    let c = parse(&["--cluster-cidr=10.244.0.0/16"]).unwrap();
    let v = c.to_kube_proxy_configuration();
    assert_eq!(v["clusterCIDR"], "10.244.0.0/16");
    assert_eq!(v["nftables"]["syncPeriod"], "30s");
    assert_eq!(v["iptables"]["masqueradeBit"], 14);
    assert_eq!(v["mode"], "nftables");
}
