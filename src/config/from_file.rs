//! A decoded KubeProxyConfiguration turned into the flags it stands for, with upstream's defaulting (zero values
//! mean "default") and precedence (the file wins; --hostname-override and -v on the command line still apply).

use super::file::{Decoded, FileError, KubeProxyConfiguration};
use super::flags::{self, Flags, ProxyMode};

fn field<T>(
    path: &str,
    d: &Decoded,
    name: &str,
    value: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, FileError> {
    parse(value).map_err(|message| FileError::Field {
        path: path.into(),
        field: name.into(),
        line: super::file::line_of(&d.text, name).map(|l| format!(" (line {l})")).unwrap_or_default(),
        message: format!("invalid value {value:?}: {message}"),
    })
}

fn nonempty(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

/// The flags a file stands for; `cmdline` supplies what upstream still takes from the command line.
pub fn flags_from_file(path: &str, d: &Decoded, cmdline: &Flags) -> Result<Flags, FileError> {
    let c: &KubeProxyConfiguration = &d.config;
    let mut f = Flags::default();
    if let Some(mode) = nonempty(&c.mode) {
        f.proxy_mode = Some(field(path, d, "mode", mode, flags::parse_mode)?);
    }
    let section_name = match f.proxy_mode {
        Some(ProxyMode::Iptables) => "iptables",
        // Until the other modes read their own sections, nftables' settings are used.
        _ => "nftables",
    };
    let section = if section_name == "iptables" { &c.iptables } else { &c.nftables };
    if let Some(cidrs) = nonempty(&c.cluster_cidr) {
        f.cluster_cidr = Some(field(path, d, "clusterCIDR", cidrs, flags::parse_cidr_list)?);
    }
    if let Some(mode) = nonempty(&c.detect_local_mode) {
        f.detect_local_mode = Some(field(path, d, "detectLocalMode", mode, flags::parse_detect_local_mode)?);
    }
    f.pod_bridge_interface = nonempty(&c.detect_local.bridge_interface).map(str::to_string);
    f.pod_interface_name_prefix = nonempty(&c.detect_local.interface_name_prefix).map(str::to_string);
    if let Some(bit) = section.masquerade_bit {
        let name = format!("{section_name}.masqueradeBit");
        f.iptables_masquerade_bit = Some(field(path, d, &name, &bit.to_string(), |s| {
            s.parse::<u8>().ok().filter(|b| *b <= 31).ok_or("want 0-31".into())
        })?);
    }
    f.masquerade_all = Some(section.masquerade_all);
    f.iptables_sync_period = Some(section.sync_period.0).filter(|d| !d.is_zero());
    f.iptables_min_sync_period = Some(section.min_sync_period.0).filter(|d| !d.is_zero());
    if let Some(list) = &c.node_port_addresses
        && !list.is_empty()
    {
        f.nodeport_addresses =
            Some(field(path, d, "nodePortAddresses", &list.join(","), flags::parse_nodeport_addresses)?);
    }
    f.healthz_bind_address = nonempty(&c.healthz_bind_address).map(str::to_string);
    f.metrics_bind_address = nonempty(&c.metrics_bind_address).map(str::to_string);
    f.kubeconfig = nonempty(&c.client_connection.kubeconfig).map(Into::into);
    f.hostname_override = nonempty(&c.hostname_override).map(str::to_string);
    // Conntrack: null means the default; an explicit 0 means "leave the kernel's value alone".
    f.conntrack_max_per_core = c.conntrack.max_per_core;
    f.conntrack_min = c.conntrack.min;
    f.conntrack_tcp_timeout_established = c.conntrack.tcp_established_timeout.map(|d| d.0);
    f.conntrack_tcp_timeout_close_wait = c.conntrack.tcp_close_wait_timeout.map(|d| d.0);
    f.conntrack_tcp_be_liberal = Some(c.conntrack.tcp_be_liberal);
    f.conntrack_udp_timeout = Some(c.conntrack.udp_timeout.0);
    f.conntrack_udp_timeout_stream = Some(c.conntrack.udp_stream_timeout.0);
    f.oom_score_adj = c.oom_score_adj;
    f.verbosity = c.logging.get("verbosity").and_then(|v| v.as_u64()).map(|v| v.min(u8::MAX as u64) as u8);

    // Upstream applies these command-line flags over the file.
    if cmdline.hostname_override.is_some() {
        f.hostname_override = cmdline.hostname_override.clone();
    }
    if cmdline.verbosity.is_some() {
        f.verbosity = cmdline.verbosity;
    }
    // Options that are not configuration: always from the command line.
    f.config = cmdline.config.clone();
    f.write_config_to = cmdline.write_config_to.clone();
    f.cleanup = cmdline.cleanup;
    f.init_only = cmdline.init_only;
    f.manifests = cmdline.manifests.clone();
    f.master = cmdline.master.clone();
    Ok(f)
}
