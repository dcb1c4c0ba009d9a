//! Settings every mode shares, resolved from flags and config.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::core::NodeView;
use crate::model::IpFamily;

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

/// How one family's traffic from this node's pods is recognised, resolved from [`LocalDetection`] and the Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalTraffic {
    /// Not detectable: nothing is masqueraded because of its source.
    Undetectable,
    /// Sources inside this CIDR (ClusterCIDR, or NodeCIDR from the Node's podCIDRs). One per family: the
    /// configuration allows no more, so a single prefix match does it.
    Cidr(IpNet),
    /// Packets arriving on this bridge (BridgeInterface).
    Bridge(String),
    /// Packets arriving on interfaces with this name prefix (InterfaceNamePrefix).
    InterfacePrefix(String),
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
    /// Drop forwarded packets conntrack calls INVALID (upstream does unless `--conntrack-tcp-be-liberal`): a
    /// stray out-of-window packet would otherwise reach a pod un-NATed and get the connection reset.
    pub drop_invalid_forwarded: bool,
}

impl ProxySettings {
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }

    /// How `family`'s local pod traffic is recognised on `node`.
    pub fn local_traffic(&self, family: IpFamily, node: &NodeView) -> LocalTraffic {
        // The configuration allows one cluster CIDR per family; a Node has one podCIDR per family (upstream, too,
        // uses the first of the family).
        let first_of_family = |nets: &[IpNet]| {
            nets.iter()
                .copied()
                .find(|n| IpFamily::of_net(n) == family)
                .map_or(LocalTraffic::Undetectable, LocalTraffic::Cidr)
        };
        match &self.local_detection {
            LocalDetection::ClusterCidr(nets) => first_of_family(nets),
            LocalDetection::NodeCidr => first_of_family(&node.pod_cidrs),
            LocalDetection::BridgeInterface(b) => LocalTraffic::Bridge(b.clone()),
            LocalDetection::InterfaceNamePrefix(p) => LocalTraffic::InterfacePrefix(p.clone()),
        }
    }
}

impl NodePortAddresses {
    /// The node addresses of `family` that accept NodePorts (and serve health-check node ports). `None` means
    /// every local address; a mode whose default is `primary` passes `default_is_primary`. Loopback addresses
    /// are never included.
    pub fn addresses(&self, family: IpFamily, node: &NodeView, default_is_primary: bool) -> Option<Vec<IpAddr>> {
        let mut ips: Vec<IpAddr> = match self {
            NodePortAddresses::Default if !default_is_primary => return None,
            NodePortAddresses::Default | NodePortAddresses::Primary => {
                node.primary_address(family).into_iter().collect()
            }
            NodePortAddresses::Cidrs(cidrs) => node
                .interface_addresses
                .iter()
                .copied()
                .filter(|a| IpFamily::of(a) == family && cidrs.iter().any(|c| c.contains(a)))
                .collect(),
        };
        ips.retain(|a| !a.is_loopback() && IpFamily::of(a) == family);
        ips.sort();
        ips.dedup();
        Some(ips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeView {
        NodeView {
            addresses: vec!["192.168.1.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            interface_addresses: ["127.0.0.1", "192.168.1.5", "10.0.0.9", "fd00::5"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
            ..NodeView::default()
        }
    }

    #[test]
    fn primary_is_the_first_node_ip_and_cidrs_select_interface_addresses() {
        let n = node();
        let v4 = |s: &NodePortAddresses, p| {
            s.addresses(IpFamily::V4, &n, p).map(|v| v.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(v4(&NodePortAddresses::Default, false), None);
        assert_eq!(v4(&NodePortAddresses::Default, true), Some(vec!["192.168.1.5".to_string()]));
        assert_eq!(v4(&NodePortAddresses::Primary, false), Some(vec!["192.168.1.5".to_string()]));
        let cidrs = NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.0/8".parse().unwrap()]);
        assert_eq!(v4(&cidrs, true), Some(vec!["10.0.0.9".to_string()]), "loopback never accepts NodePorts");
        assert_eq!(NodePortAddresses::Primary.addresses(IpFamily::V6, &n, true).unwrap().len(), 1);
    }
}
