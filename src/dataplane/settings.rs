//! Settings every mode shares, resolved from flags and config.

use ipnet::IpNet;

/// `--detect-local-mode` and its companions: how traffic from this node's pods is recognised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalDetection {
    /// Sources in `--cluster-cidr` (the default mode). Empty: not detectable.
    ClusterCidr(Vec<IpNet>),
    /// Sources in the Node's podCIDRs.
    NodeCidr,
    /// Packets from `--pod-bridge-interface`.
    BridgeInterface(String),
    /// Packets from interfaces named `--pod-interface-name-prefix`*.
    InterfaceNamePrefix(String),
}

/// `--nodeport-addresses`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Unset: every local address (iptables, ipvs) or, in nftables mode, `primary`.
    Default,
    /// `primary`: the node's first IP of each family.
    Primary,
    /// Local addresses inside these CIDRs.
    Cidrs(Vec<IpNet>),
}

/// What every dataplane needs to know to program services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    /// `--iptables-masquerade-bit` (nftables uses it too): the packet mark bit asking for masquerade.
    pub masquerade_bit: u8,
    pub masquerade_all: bool,
    pub local_detection: LocalDetection,
    pub nodeport_addresses: NodePortAddresses,
}

impl ProxySettings {
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}
