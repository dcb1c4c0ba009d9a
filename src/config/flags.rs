//! kube-proxy's command line, with upstream's flag names and value syntax. Every flag is optional here so
//! that later layers (defaults, a config file) can tell "not given" from "given".

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};
use ipnet::IpNet;

use super::duration;
use crate::dataplane::iptables::Backend;
pub use crate::dataplane::iptables::backend::BackendChoice;

/// A drop-in replacement for Kubernetes' kube-proxy.
#[derive(Debug, Default, Parser)]
#[command(name = "kube-proxy-rs", version, disable_version_flag = true, about, long_about = None)]
pub struct Flags {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Print version information and quit.
    #[arg(long, action = ArgAction::SetTrue)]
    pub version: bool,

    /// Read the configuration from this KubeProxyConfiguration file (as kubeadm writes it). Other flags are then
    /// ignored, except --hostname-override and -v, as upstream.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Write the effective configuration (defaults included) to this file and exit.
    #[arg(long, value_name = "FILE")]
    pub write_config_to: Option<PathBuf>,

    /// Which proxy mode to use: 'iptables' (default), 'nftables', 'ipvs' or 'userspace'.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub proxy_mode: Option<ProxyMode>,

    /// How the nftables mode reaches the kernel: 'netlink' (default: one netlink batch per sync, no process) or
    /// 'nft' (pipe `nft -f` text to the nft command; needs nft installed).
    #[arg(long, value_name = "netlink|nft", value_parser = parse_nftables_transport)]
    pub nftables_transport: Option<NftablesTransport>,

    /// Which iptables the iptables mode uses: 'auto' (default: the backend the node already uses, as upstream's
    /// images choose; nft on an empty node), 'nft' (iptables-nft) or 'legacy' (iptables-legacy).
    #[arg(long, value_name = "auto|nft|legacy", value_parser = parse_iptables_backend)]
    pub iptables_backend: Option<BackendChoice>,

    /// Read Services, EndpointSlices and the Node from YAML/JSON manifests in this directory, and follow it.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,

    /// Path to a kubeconfig file with the API server's address and credentials (default: the KUBECONFIG
    /// variable, else the in-cluster service account).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The API server's address (overrides the kubeconfig's).
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,

    /// Accepted for compatibility: the watch traffic of a node proxy is a handful of requests.
    #[arg(long, value_name = "QPS")]
    pub kube_api_qps: Option<f32>,

    /// Accepted for compatibility (see --kube-api-qps).
    #[arg(long, value_name = "N")]
    pub kube_api_burst: Option<i32>,

    /// Accepted for compatibility; requests are always JSON (kube-rs does not speak protobuf).
    #[arg(long, value_name = "TYPE")]
    pub kube_api_content_type: Option<String>,

    /// Use this name, rather than the hostname, to identify the node.
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// The CIDR ranges of pods in the cluster, comma-separated (one per IP family). Traffic to cluster IPs from
    /// outside these ranges is masqueraded.
    #[arg(long, value_name = "CIDRS", value_parser = parse_cidr_list)]
    pub cluster_cidr: Option<CidrList>,

    /// The bit of the packet mark (0-31) that asks for masquerading (default 14).
    #[arg(long, value_name = "BIT", value_parser = clap::value_parser!(u8).range(0..=31))]
    pub iptables_masquerade_bit: Option<u8>,

    /// Masquerade all traffic sent to cluster IPs.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub masquerade_all: Option<bool>,

    /// Which node addresses accept NodePort traffic: comma-separated CIDRs, or 'primary' (nftables default).
    #[arg(long, value_name = "CIDRS|primary", value_parser = parse_nodeport_addresses)]
    pub nodeport_addresses: Option<NodePortAddressesFlag>,

    /// How local (pod) traffic is detected: ClusterCIDR (default), NodeCIDR, BridgeInterface, InterfaceNamePrefix.
    #[arg(long, value_name = "MODE", value_parser = parse_detect_local_mode)]
    pub detect_local_mode: Option<DetectLocalMode>,

    /// The bridge pods are attached to (with --detect-local-mode=BridgeInterface).
    #[arg(long, value_name = "NAME")]
    pub pod_bridge_interface: Option<String>,

    /// The name prefix of pod interfaces (with --detect-local-mode=InterfaceNamePrefix).
    #[arg(long, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,

    /// The longest time between syncs of the rules (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub iptables_sync_period: Option<Duration>,

    /// The shortest time between syncs of the rules (default 1s); 0 syncs on every change.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub iptables_min_sync_period: Option<Duration>,

    /// Address and port of the health server (/healthz, /livez); empty disables it (default 0.0.0.0:10256).
    #[arg(long, value_name = "IP:PORT")]
    pub healthz_bind_address: Option<String>,

    /// Address and port of the metrics server (/metrics, /proxyMode, /configz); empty disables it
    /// (default 127.0.0.1:10249).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_bind_address: Option<String>,

    /// Maximum number of NAT connections to track per CPU core (0 to leave the limit as-is and ignore
    /// --conntrack-min) (default 32768).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub conntrack_max_per_core: Option<i32>,

    /// Minimum number of conntrack entries to allocate, regardless of --conntrack-max-per-core (set
    /// --conntrack-max-per-core=0 to leave the limit as-is) (default 131072).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub conntrack_min: Option<i32>,

    /// Idle timeout for established TCP connections (0 to leave as-is) (default 24h0m0s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_established: Option<Duration>,

    /// NAT timeout for TCP connections in the CLOSE_WAIT state (0 to leave as-is) (default 1h0m0s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_close_wait: Option<Duration>,

    /// Enable liberal mode for tracking TCP packets by setting nf_conntrack_tcp_be_liberal to 1 (false leaves
    /// it as-is).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub conntrack_tcp_be_liberal: Option<bool>,

    /// Idle timeout for UNREPLIED UDP connections (0 to leave as-is) (default 0s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_udp_timeout: Option<Duration>,

    /// Idle timeout for ASSURED UDP connections (0 to leave as-is) (default 0s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_udp_timeout_stream: Option<Duration>,

    /// The oom_score_adj of this process, within [-1000, 1000] (default -999).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    pub oom_score_adj: Option<i32>,

    /// Perform the initialization that needs full root privileges (conntrack sysctls), then exit. Afterwards
    /// the proxy, given the same flags, can run with only CAP_NET_ADMIN.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub init_only: Option<bool>,

    /// Remove every rule this program creates, in every mode, then exit.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub cleanup: Option<bool>,

    /// Log verbosity (klog levels: 0-2 info, 3-4 debug, 5+ trace).
    #[arg(short = 'v', long = "v", value_name = "LEVEL")]
    pub verbosity: Option<u8>,
}

/// Subcommands besides running the proxy.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a throwaway cluster in network namespaces, run the proxy in it, send traffic, report, clean up.
    Demo {
        /// Requests to send to each service address.
        #[arg(long, default_value_t = 30)]
        requests: u32,
    },
    /// Answer TCP and UDP with the server's name and the client address it saw (used by the demo and tests).
    #[command(hide = true)]
    EchoServer {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Send requests and print who answered as JSON lines (used by the demo and tests).
    #[command(hide = true)]
    Probe {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    Iptables,
    Nftables,
    Ipvs,
    Userspace,
}

impl ProxyMode {
    pub fn name(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
            ProxyMode::Ipvs => "ipvs",
            ProxyMode::Userspace => "userspace",
        }
    }
}

/// `--nftables-transport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftablesTransport {
    /// Native nfnetlink batches.
    Netlink,
    /// The `nft` command fed `nft -f` text.
    Nft,
}

impl NftablesTransport {
    /// The flag's spelling.
    pub fn name(self) -> &'static str {
        match self {
            NftablesTransport::Netlink => "netlink",
            NftablesTransport::Nft => "nft",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectLocalMode {
    ClusterCidr,
    NodeCidr,
    BridgeInterface,
    InterfaceNamePrefix,
}

impl DetectLocalMode {
    pub fn name(self) -> &'static str {
        match self {
            DetectLocalMode::ClusterCidr => "ClusterCIDR",
            DetectLocalMode::NodeCidr => "NodeCIDR",
            DetectLocalMode::BridgeInterface => "BridgeInterface",
            DetectLocalMode::InterfaceNamePrefix => "InterfaceNamePrefix",
        }
    }
}

/// A comma-separated CIDR list (clap wants one type per flag value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddressesFlag {
    Primary,
    Cidrs(Vec<IpNet>),
}

pub fn parse_mode(s: &str) -> Result<ProxyMode, String> {
    match s {
        "iptables" => Ok(ProxyMode::Iptables),
        "nftables" => Ok(ProxyMode::Nftables),
        "ipvs" => Ok(ProxyMode::Ipvs),
        "userspace" => Ok(ProxyMode::Userspace),
        _ => Err("want iptables, nftables, ipvs or userspace".into()),
    }
}

pub fn parse_iptables_backend(s: &str) -> Result<BackendChoice, String> {
    match s {
        "auto" => Ok(BackendChoice::Auto),
        "nft" => Ok(BackendChoice::Fixed(Backend::Nft)),
        "legacy" => Ok(BackendChoice::Fixed(Backend::Legacy)),
        _ => Err("want auto, nft or legacy".into()),
    }
}

pub fn parse_nftables_transport(s: &str) -> Result<NftablesTransport, String> {
    match s {
        "netlink" => Ok(NftablesTransport::Netlink),
        "nft" => Ok(NftablesTransport::Nft),
        _ => Err("want netlink or nft".into()),
    }
}

pub fn parse_detect_local_mode(s: &str) -> Result<DetectLocalMode, String> {
    match s {
        "ClusterCIDR" => Ok(DetectLocalMode::ClusterCidr),
        "NodeCIDR" => Ok(DetectLocalMode::NodeCidr),
        "BridgeInterface" => Ok(DetectLocalMode::BridgeInterface),
        "InterfaceNamePrefix" => Ok(DetectLocalMode::InterfaceNamePrefix),
        _ => Err("want ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix".into()),
    }
}

/// Go's strconv.ParseBool spellings.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("want true or false".into()),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| format!("{s:?} is not a CIDR"))
}

pub fn parse_cidr_list(s: &str) -> Result<CidrList, String> {
    if s.trim().is_empty() {
        return Ok(CidrList(Vec::new()));
    }
    let nets = s.split(',').map(parse_cidr).collect::<Result<Vec<_>, _>>()?;
    Ok(CidrList(nets))
}

pub fn parse_nodeport_addresses(s: &str) -> Result<NodePortAddressesFlag, String> {
    if s.trim() == "primary" {
        return Ok(NodePortAddressesFlag::Primary);
    }
    parse_cidr_list(s).map(|c| NodePortAddressesFlag::Cidrs(c.0))
}
