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
    assert_eq!(c.mode, ProxyMode::Iptables);
    assert_eq!(c.iptables_backend, BackendChoice::Auto);
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
fn the_iptables_backend_can_be_forced() {
    use crate::dataplane::iptables::Backend;
    assert_eq!(parse(&["--iptables-backend=legacy"]).unwrap().iptables_backend, BackendChoice::Fixed(Backend::Legacy));
    assert_eq!(parse(&["--iptables-backend", "nft"]).unwrap().iptables_backend, BackendChoice::Fixed(Backend::Nft));
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
        (vec!["--iptables-backend=xtables"], "--iptables-backend", "xtables"),
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
    let v = serde_json::to_value(c.to_kube_proxy_configuration()).unwrap();
    assert_eq!(v["clusterCIDR"], "10.244.0.0/16");
    assert_eq!(v["nftables"]["syncPeriod"], "30s");
    assert_eq!(v["iptables"]["masqueradeBit"], 14);
    assert_eq!(v["mode"], "iptables");
}

#[test]
fn written_config_reads_back_to_the_same_configuration() {
    let c =
        parse(&["--cluster-cidr=10.244.0.0/16", "--iptables-sync-period=45s", "--nodeport-addresses=primary"]).unwrap();
    let dir = std::env::temp_dir().join(format!("kpr-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, c.to_yaml()).unwrap();
    let flags = Flags { config: Some(path.clone()), ..Flags::default() };
    let (back, warnings) = Config::load(&flags).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(back.sync_period, Duration::from_secs(45));
    assert_eq!(back.cluster_cidrs, c.cluster_cidrs);
    assert_eq!(back.nodeport_addresses, NodePortAddresses::Primary);
    assert_eq!(
        serde_json::to_value(back.to_kube_proxy_configuration()).unwrap(),
        serde_json::to_value(c.to_kube_proxy_configuration()).unwrap()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn kubeadm_config_works_unchanged_and_flags_follow_upstream_precedence() {
    let dir = std::env::temp_dir().join(format!("kpr-kubeadm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.conf");
    std::fs::write(&path, include_str!("../../tests/fixtures/kubeadm-config.conf")).unwrap();
    let mut argv = vec!["kube-proxy-rs".to_string(), format!("--config={}", path.display())];
    argv.extend(["--hostname-override=node-7", "--iptables-sync-period=5s", "--v=3"].map(String::from));
    let flags = Flags::try_parse_from(argv).unwrap();
    let (c, warnings) = Config::load(&flags).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(c.node_name(), "node-7", "--hostname-override applies over the file");
    assert_eq!(c.verbosity, 3, "-v applies over the file");
    assert_eq!(c.sync_period, Duration::from_secs(30), "other flags are ignored with --config; 0s means the default");
    assert_eq!(c.cluster_cidrs[0].to_string(), "10.244.0.0/16");
    assert_eq!(c.kubeconfig.as_deref(), Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf")));
    assert_eq!(c.healthz_bind_address.unwrap().to_string(), "0.0.0.0:10256", "empty in the file: the default");
    std::fs::write(
        &path,
        include_str!("../../tests/fixtures/kubeadm-config.conf")
            .replace("clusterCIDR: 10.244.0.0/16", "clusterCIDR: 10.244.0.0/99"),
    )
    .unwrap();
    let err = Config::load(&flags).unwrap_err().to_string();
    assert!(err.contains("clusterCIDR") && err.contains("line 10") && err.contains("10.244.0.0/99"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn node_setup_flags_have_upstreams_defaults() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.conntrack, ConntrackSettings::default());
    assert_eq!(c.conntrack.max_per_core, 32768);
    assert_eq!(c.conntrack.min, 131072);
    assert_eq!(c.conntrack.tcp_established_timeout, Duration::from_secs(24 * 3600));
    assert_eq!(c.conntrack.tcp_close_wait_timeout, Duration::from_secs(3600));
    assert!(!c.conntrack.tcp_be_liberal);
    assert_eq!((c.conntrack.udp_timeout, c.conntrack.udp_stream_timeout), (Duration::ZERO, Duration::ZERO));
    assert_eq!(c.oom_score_adj, -999);
    assert!(!c.init_only);
    assert_eq!(c.node_setup().oom_score_adj, Some(-999));
}

#[test]
fn node_setup_flags_are_parsed() {
    let c = parse(&[
        "--conntrack-max-per-core=0",
        "--conntrack-min",
        "0",
        "--conntrack-tcp-timeout-established=2h",
        "--conntrack-tcp-timeout-close-wait=0s",
        "--conntrack-tcp-be-liberal",
        "--conntrack-udp-timeout=45s",
        "--conntrack-udp-timeout-stream=3m",
        "--oom-score-adj",
        "-500",
    ])
    .unwrap();
    assert_eq!(
        c.conntrack,
        ConntrackSettings {
            max_per_core: 0,
            min: 0,
            tcp_established_timeout: Duration::from_secs(7200),
            tcp_close_wait_timeout: Duration::ZERO,
            tcp_be_liberal: true,
            udp_timeout: Duration::from_secs(45),
            udp_stream_timeout: Duration::from_secs(180),
        }
    );
    assert_eq!(c.oom_score_adj, -500);
    assert_eq!(parse(&["--oom-score-adj=1000"]).unwrap().oom_score_adj, 1000);
    assert!(!parse(&["--conntrack-tcp-be-liberal=false"]).unwrap().conntrack.tcp_be_liberal);
    // Upstream drops conntrack-INVALID forwarded packets unless TCP tracking is liberal.
    assert!(parse(&[]).unwrap().proxy_settings().drop_invalid_forwarded);
    assert!(!parse(&["--conntrack-tcp-be-liberal=true"]).unwrap().proxy_settings().drop_invalid_forwarded);
}

#[test]
fn init_only_leaves_the_oom_score_alone() {
    // Upstream sets the OOM score in ProxyServer.Run, which --init-only never reaches.
    let c = parse(&["--init-only", "--oom-score-adj=-900"]).unwrap();
    assert!(c.init_only);
    assert_eq!(c.node_setup(), NodeSetupSettings { conntrack: c.conntrack, oom_score_adj: None });
    assert!(!parse(&["--init-only=false"]).unwrap().init_only);
}

#[test]
fn bad_node_setup_values_name_the_flag_and_the_value() {
    for (arg, flag, value) in [
        ("--oom-score-adj=1001", "--oom-score-adj", "1001"),
        ("--oom-score-adj=-1001", "--oom-score-adj", "-1001"),
        ("--conntrack-max-per-core=-1", "--conntrack-max-per-core", "-1"),
        ("--conntrack-min=-5", "--conntrack-min", "-5"),
        ("--conntrack-udp-timeout=5x", "--conntrack-udp-timeout", "5x"),
        ("--conntrack-tcp-timeout-established=-1s", "--conntrack-tcp-timeout-established", "-1s"),
        ("--conntrack-tcp-be-liberal=yes", "--conntrack-tcp-be-liberal", "yes"),
        ("--init-only=maybe", "--init-only", "maybe"),
    ] {
        let err = parse(&[arg]).unwrap_err();
        assert!(err.contains(flag) && err.contains(value), "{arg}: {err}");
    }
}

#[test]
fn configz_has_upstreams_conntrack_and_oom_fields() {
    let v =
        serde_json::to_value(parse(&["--conntrack-udp-timeout=45s"]).unwrap().to_kube_proxy_configuration()).unwrap();
    assert_eq!(v["oomScoreAdj"], -999);
    let conntrack = &v["conntrack"];
    assert_eq!(conntrack["maxPerCore"], 32768);
    assert_eq!(conntrack["min"], 131072);
    assert_eq!(conntrack["tcpEstablishedTimeout"], "24h0m0s");
    assert_eq!(conntrack["tcpCloseWaitTimeout"], "1h0m0s");
    assert_eq!(conntrack["tcpBeLiberal"], false);
    assert_eq!(conntrack["udpTimeout"], "45s");
    assert_eq!(conntrack["udpStreamTimeout"], "0s");
}
