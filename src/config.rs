//! The effective configuration: flags (and, later, a KubeProxyConfiguration file) with upstream's defaults,
//! validated once at start-up so that a bad value fails with a message naming the flag.

pub mod duration;
pub mod file;
pub mod flags;
mod from_file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::json;

use crate::dataplane::settings::{LocalDetection, NodePortAddresses, ProxySettings};
use crate::model::IpFamily;
use crate::nodesetup::{ConntrackSettings, NodeSetupSettings};
pub use flags::{BackendChoice, DetectLocalMode, Flags, NftablesTransport, ProxyMode};

/// A configuration that cannot be used; the message names the flag (or field) and the bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for {flag}: {reason}")]
    Invalid { flag: &'static str, value: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
}

fn invalid(flag: &'static str, value: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { flag, value: value.into(), reason: reason.into() }
}

/// Everything the binary needs to wire the proxy together.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: ProxyMode,
    /// How the nftables mode reaches the kernel (`--nftables-transport`, default netlink).
    pub nftables_transport: NftablesTransport,
    pub iptables_backend: BackendChoice,
    pub manifests: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub master: Option<String>,
    pub hostname_override: Option<String>,
    pub cluster_cidrs: Vec<IpNet>,
    pub masquerade_bit: u8,
    pub masquerade_all: bool,
    pub nodeport_addresses: NodePortAddresses,
    pub detect_local_mode: DetectLocalMode,
    pub pod_bridge_interface: Option<String>,
    pub pod_interface_name_prefix: Option<String>,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    pub healthz_bind_address: Option<SocketAddr>,
    pub metrics_bind_address: Option<SocketAddr>,
    pub cleanup: bool,
    /// Node set-up (sysctls), then exit.
    pub init_only: bool,
    pub conntrack: ConntrackSettings,
    pub oom_score_adj: i32,
    pub verbosity: u8,
}

fn bind_address(flag: &'static str, given: Option<&str>, default: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let s = given.unwrap_or(default).trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<SocketAddr>().map(Some).map_err(|_| invalid(flag, s, "want IP:PORT, or empty to disable"))
}

impl Config {
    /// The configuration the command line asks for: the flags, or with `--config` the file (plus the few flags
    /// upstream still honours). Returns the warnings to log (unknown fields in the file).
    pub fn load(flags: &Flags) -> Result<(Config, Vec<String>), ConfigError> {
        let Some(path) = &flags.config else { return Config::from_flags(flags).map(|c| (c, Vec::new())) };
        let path = path.display().to_string();
        let decoded = file::read(&path).map_err(|e| ConfigError::Unsupported(e.to_string()))?;
        let from_file =
            from_file::flags_from_file(&path, &decoded, flags).map_err(|e| ConfigError::Unsupported(e.to_string()))?;
        let config =
            Config::from_flags(&from_file).map_err(|e| ConfigError::Unsupported(format!("--config {path}: {e}")))?;
        Ok((config, decoded.warnings))
    }

    /// Apply upstream's defaults to the flags and check every value.
    pub fn from_flags(f: &Flags) -> Result<Config, ConfigError> {
        let cluster_cidrs = f.cluster_cidr.clone().map(|c| c.0).unwrap_or_default();
        for family in IpFamily::ALL {
            if cluster_cidrs.iter().filter(|n| IpFamily::of_net(n) == family).count() > 1 {
                let value = cluster_cidrs.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
                return Err(invalid("--cluster-cidr", value, "at most one CIDR per IP family"));
            }
        }
        let nodeport_addresses = match &f.nodeport_addresses {
            None => NodePortAddresses::Default,
            Some(flags::NodePortAddressesFlag::Primary) => NodePortAddresses::Primary,
            Some(flags::NodePortAddressesFlag::Cidrs(c)) if c.is_empty() => NodePortAddresses::Default,
            Some(flags::NodePortAddressesFlag::Cidrs(c)) => NodePortAddresses::Cidrs(c.clone()),
        };
        let detect_local_mode = f.detect_local_mode.unwrap_or(DetectLocalMode::ClusterCidr);
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        match detect_local_mode {
            DetectLocalMode::BridgeInterface if nonempty(&f.pod_bridge_interface).is_none() => {
                return Err(invalid("--pod-bridge-interface", "", "required with --detect-local-mode=BridgeInterface"));
            }
            DetectLocalMode::InterfaceNamePrefix if nonempty(&f.pod_interface_name_prefix).is_none() => {
                return Err(invalid(
                    "--pod-interface-name-prefix",
                    "",
                    "required with --detect-local-mode=InterfaceNamePrefix",
                ));
            }
            _ => {}
        }
        let sync_period = f.iptables_sync_period.unwrap_or(Duration::from_secs(30));
        if sync_period.is_zero() {
            return Err(invalid("--iptables-sync-period", "0s", "must be greater than 0"));
        }
        let min_sync_period = f.iptables_min_sync_period.unwrap_or(Duration::from_secs(1));
        if min_sync_period > sync_period {
            return Err(invalid(
                "--iptables-min-sync-period",
                duration::format(min_sync_period),
                format!("must not exceed --iptables-sync-period ({})", duration::format(sync_period)),
            ));
        }
        let defaults = ConntrackSettings::default();
        // clap has refused negative values already (upstream's flags are int32, validated as >= 0).
        let count = |n: Option<i32>, default: u32| n.map_or(default, |n| u32::try_from(n).unwrap_or(default));
        let conntrack = ConntrackSettings {
            max_per_core: count(f.conntrack_max_per_core, defaults.max_per_core),
            min: count(f.conntrack_min, defaults.min),
            tcp_established_timeout: f.conntrack_tcp_timeout_established.unwrap_or(defaults.tcp_established_timeout),
            tcp_close_wait_timeout: f.conntrack_tcp_timeout_close_wait.unwrap_or(defaults.tcp_close_wait_timeout),
            tcp_be_liberal: f.conntrack_tcp_be_liberal.unwrap_or(defaults.tcp_be_liberal),
            udp_timeout: f.conntrack_udp_timeout.unwrap_or(defaults.udp_timeout),
            udp_stream_timeout: f.conntrack_udp_timeout_stream.unwrap_or(defaults.udp_stream_timeout),
        };
        Ok(Config {
            mode: f.proxy_mode.unwrap_or(ProxyMode::Iptables),
            nftables_transport: f.nftables_transport.unwrap_or(NftablesTransport::Netlink),
            iptables_backend: f.iptables_backend.unwrap_or(BackendChoice::Auto),
            manifests: f.manifests.clone(),
            kubeconfig: f.kubeconfig.clone().filter(|p| !p.as_os_str().is_empty()),
            master: nonempty(&f.master),
            hostname_override: nonempty(&f.hostname_override),
            cluster_cidrs,
            masquerade_bit: f.iptables_masquerade_bit.unwrap_or(14),
            masquerade_all: f.masquerade_all.unwrap_or(false),
            nodeport_addresses,
            detect_local_mode,
            pod_bridge_interface: nonempty(&f.pod_bridge_interface),
            pod_interface_name_prefix: nonempty(&f.pod_interface_name_prefix),
            sync_period,
            min_sync_period,
            healthz_bind_address: bind_address(
                "--healthz-bind-address",
                f.healthz_bind_address.as_deref(),
                "0.0.0.0:10256",
            )?,
            metrics_bind_address: bind_address(
                "--metrics-bind-address",
                f.metrics_bind_address.as_deref(),
                "127.0.0.1:10249",
            )?,
            cleanup: f.cleanup.unwrap_or(false),
            init_only: f.init_only.unwrap_or(false),
            conntrack,
            // Upstream's default (qos.KubeProxyOOMScoreAdj): the proxy is among the last things to kill.
            oom_score_adj: f.oom_score_adj.unwrap_or(-999),
            verbosity: f.verbosity.unwrap_or(0),
        })
    }

    /// The node's name: `--hostname-override`, else the hostname (lower-cased, as upstream).
    pub fn node_name(&self) -> String {
        self.hostname_override.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_lowercase())
                .unwrap_or_else(|_| "localhost".into())
        })
    }

    /// What the dataplanes need from the configuration.
    pub fn proxy_settings(&self) -> ProxySettings {
        let local_detection = match self.detect_local_mode {
            DetectLocalMode::ClusterCidr => LocalDetection::ClusterCidr(self.cluster_cidrs.clone()),
            DetectLocalMode::NodeCidr => LocalDetection::NodeCidr,
            DetectLocalMode::BridgeInterface => {
                LocalDetection::BridgeInterface(self.pod_bridge_interface.clone().unwrap_or_default())
            }
            DetectLocalMode::InterfaceNamePrefix => {
                LocalDetection::InterfaceNamePrefix(self.pod_interface_name_prefix.clone().unwrap_or_default())
            }
        };
        ProxySettings {
            masquerade_bit: self.masquerade_bit,
            masquerade_all: self.masquerade_all,
            local_detection,
            nodeport_addresses: self.nodeport_addresses.clone(),
            drop_invalid_forwarded: !self.conntrack.tcp_be_liberal,
        }
    }

    /// What node set-up must do before the proxy starts. Under --init-only the OOM score is left alone: the
    /// process exits at once, and upstream sets it only when the proxy itself runs (`ProxyServer.Run`).
    pub fn node_setup(&self) -> NodeSetupSettings {
        NodeSetupSettings { conntrack: self.conntrack, oom_score_adj: (!self.init_only).then_some(self.oom_score_adj) }
    }

    /// The effective configuration as a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1), defaults
    /// included: what /configz serves and --write-config-to writes.
    pub fn to_kube_proxy_configuration(&self) -> file::KubeProxyConfiguration {
        use file::{ClientConnection, Conntrack, DetectLocal, GoDuration, KubeProxyConfiguration, ModeSection};
        let addr = |a: &Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let mode_section = ModeSection {
            localhost_node_ports: None,
            masquerade_all: self.masquerade_all,
            masquerade_bit: Some(i32::from(self.masquerade_bit)),
            min_sync_period: GoDuration(self.min_sync_period),
            sync_period: GoDuration(self.sync_period),
        };
        KubeProxyConfiguration {
            api_version: file::API_VERSION.into(),
            kind: "KubeProxyConfiguration".into(),
            bind_address: "0.0.0.0".into(),
            client_connection: ClientConnection {
                kubeconfig: self.kubeconfig.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                content_type: "application/json".into(),
                qps: 5.0,
                burst: 10,
                ..ClientConnection::default()
            },
            cluster_cidr: self.cluster_cidrs.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
            config_sync_period: GoDuration(std::time::Duration::from_secs(900)),
            detect_local_mode: self.detect_local_mode.name().into(),
            detect_local: DetectLocal {
                bridge_interface: self.pod_bridge_interface.clone().unwrap_or_default(),
                interface_name_prefix: self.pod_interface_name_prefix.clone().unwrap_or_default(),
            },
            healthz_bind_address: addr(&self.healthz_bind_address),
            hostname_override: self.hostname_override.clone().unwrap_or_default(),
            iptables: ModeSection { localhost_node_ports: Some(true), ..mode_section.clone() },
            logging: json!({"verbosity": self.verbosity}),
            metrics_bind_address: addr(&self.metrics_bind_address),
            mode: self.mode.name().into(),
            nftables: mode_section,
            oom_score_adj: Some(self.oom_score_adj),
            conntrack: Conntrack {
                max_per_core: Some(self.conntrack.max_per_core as i32),
                min: Some(self.conntrack.min as i32),
                tcp_be_liberal: self.conntrack.tcp_be_liberal,
                tcp_close_wait_timeout: Some(GoDuration(self.conntrack.tcp_close_wait_timeout)),
                tcp_established_timeout: Some(GoDuration(self.conntrack.tcp_established_timeout)),
                udp_stream_timeout: GoDuration(self.conntrack.udp_stream_timeout),
                udp_timeout: GoDuration(self.conntrack.udp_timeout),
            },
            node_port_addresses: match &self.nodeport_addresses {
                NodePortAddresses::Default => None,
                NodePortAddresses::Primary => Some(vec!["primary".into()]),
                NodePortAddresses::Cidrs(c) => Some(c.iter().map(|n| n.to_string()).collect()),
            },
            winkernel: json!({}),
            ..KubeProxyConfiguration::default()
        }
    }

    /// The effective configuration as YAML, for --write-config-to.
    pub fn to_yaml(&self) -> String {
        let value = serde_json::to_value(self.to_kube_proxy_configuration()).expect("serializable");
        serde_saphyr::to_string(&value).expect("JSON values serialize to YAML")
    }
}

/// Resolves when the file's content differs from what it was when called (polled every second: this also
/// sees a ConfigMap's symlink swap). Upstream exits then, and the DaemonSet restarts it.
pub async fn file_changed(path: &std::path::Path) {
    let initial = std::fs::read(path).ok();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = std::fs::read(path).ok();
        if now.is_some() && now != initial {
            return;
        }
    }
}

#[cfg(test)]
#[path = "config/tests.rs"]
mod tests;
