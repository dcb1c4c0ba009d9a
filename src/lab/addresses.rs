//! The lab's fixed addressing plan, as constants so tests never spell addresses out. See [`ClusterLab`] for the
//! picture.
//!
//! [`ClusterLab`]: super::ClusterLab

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::model::IpFamily;

/// The node's address on its uplink to the outside host: the address a NodePort is reached on.
pub const NODE_UPLINK_IP_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// IPv6 counterpart of [`NODE_UPLINK_IP_V4`].
pub const NODE_UPLINK_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);
/// The outside host's address.
pub const OUTSIDE_IP_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
/// IPv6 counterpart of [`OUTSIDE_IP_V4`].
pub const OUTSIDE_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 2);
/// The address on every node-side pod veth; pods' gateway.
pub const NODE_POD_SIDE_IP_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// IPv6 counterpart of [`NODE_POD_SIDE_IP_V4`].
pub const NODE_POD_SIDE_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
/// Cluster (pod) CIDR; pod i gets .(10+i).
pub const POD_CIDR_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 244, 0, 0), 16);
/// IPv6 cluster (pod) CIDR; pod i gets ::(10+i), written with the same digits as the IPv4 host number
/// (10.244.0.25 ↔ fd00:10:244::25) so the two are easy to match up in output.
pub const POD_CIDR_V6: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0), 64);
/// Service (cluster IP) range, routed by the outside host to the node.
pub const SERVICE_CIDR_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 96, 0, 0), 12);
/// IPv6 service range.
pub const SERVICE_CIDR_V6: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0), 108);
/// Range for `spec.externalIPs`, routed by the outside host to the node.
pub const EXTERNAL_IP_RANGE_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24);
/// IPv6 range for `spec.externalIPs`.
pub const EXTERNAL_IP_RANGE_V6: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0), 64);
/// Range for LoadBalancer ingress IPs, routed by the outside host to the node.
pub const LB_IP_RANGE_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 51, 100, 0), 24);
/// IPv6 range for LoadBalancer ingress IPs.
pub const LB_IP_RANGE_V6: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0), 64);
/// Name of the node's interface towards the outside host.
pub const NODE_UPLINK: &str = "eth0";
/// Node-side pod veths are `veth0`, `veth1`, … (for interface-name based local-traffic detection).
pub const POD_VETH_PREFIX: &str = "veth";

/// Pods are numbered into one /24's worth of host numbers starting at 10.
pub(crate) const MAX_PODS: usize = 240;

/// Pod `index`'s IPv4 address.
pub(crate) fn pod_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 10 + index as u8)
}

/// Pod `index`'s IPv6 address.
pub(crate) fn pod_ip6(index: usize) -> Ipv6Addr {
    // Decimal digits read as hex: at most 249 → 0x249, which fits a group.
    let group = u16::from_str_radix(&(10 + index).to_string(), 16).expect("decimal digits are hex digits");
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, group)
}

/// The address of `family`.
pub(crate) fn pick(family: IpFamily, v4: Ipv4Addr, v6: Ipv6Addr) -> IpAddr {
    match family {
        IpFamily::V4 => v4.into(),
        IpFamily::V6 => v6.into(),
    }
}
