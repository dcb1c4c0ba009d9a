//! The effective configuration: flags (and, later, a KubeProxyConfiguration file) with upstream's defaults,
//! validated once at start-up so that a bad value fails with a message naming the flag.

pub mod duration;
pub mod flags;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::json;

use crate::dataplane::settings::{LocalDetection, NodePortAddresses, ProxySettings};
use crate::model::IpFamily;
pub use flags::{DetectLocalMode, Flags, NftablesTransport, ProxyMode};

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
    pub manifests: Option<PathBuf>,
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
        Ok(Config {
            mode: f.proxy_mode.unwrap_or(ProxyMode::Nftables),
            nftables_transport: f.nftables_transport.unwrap_or(NftablesTransport::Netlink),
            manifests: f.manifests.clone(),
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
        }
    }

    /// The effective configuration in KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) shape, for
    /// /configz.
    pub fn to_kube_proxy_configuration(&self) -> serde_json::Value {
        let addr = |a: &Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let nodeport_addresses = match &self.nodeport_addresses {
            NodePortAddresses::Default => serde_json::Value::Null,
            NodePortAddresses::Primary => json!(["primary"]),
            NodePortAddresses::Cidrs(c) => json!(c.iter().map(|n| n.to_string()).collect::<Vec<_>>()),
        };
        let mode_section = json!({
            "masqueradeAll": self.masquerade_all,
            "masqueradeBit": self.masquerade_bit,
            "minSyncPeriod": duration::format(self.min_sync_period),
            "syncPeriod": duration::format(self.sync_period),
        });
        json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": self.mode.name(),
            "hostnameOverride": self.hostname_override.clone().unwrap_or_default(),
            "clusterCIDR": self.cluster_cidrs.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
            "detectLocalMode": self.detect_local_mode.name(),
            "detectLocal": {
                "bridgeInterface": self.pod_bridge_interface.clone().unwrap_or_default(),
                "interfaceNamePrefix": self.pod_interface_name_prefix.clone().unwrap_or_default(),
            },
            "healthzBindAddress": addr(&self.healthz_bind_address),
            "metricsBindAddress": addr(&self.metrics_bind_address),
            "nodePortAddresses": nodeport_addresses,
            "iptables": mode_section.clone(),
            "nftables": mode_section,
        })
    }
}

#[cfg(test)]
#[path = "config/tests.rs"]
mod tests;
