//! The names of the iptables proxy mode's chains: upstream kube-proxy's own (KUBE-SERVICES, KUBE-SVC-…), hashed
//! the way upstream hashes them, so an operator's tools, dashboards and habits keep working, and a node moving
//! between upstream's iptables mode and ours finds the same chains.

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use crate::core::{EndpointAddr, ServicePortName};

pub const SERVICES: &str = "KUBE-SERVICES";
pub const NODEPORTS: &str = "KUBE-NODEPORTS";
pub const POSTROUTING: &str = "KUBE-POSTROUTING";
pub const MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const FORWARD: &str = "KUBE-FORWARD";
pub const PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// An empty chain in mangle, nat and filter: when it is gone, someone flushed the tables behind our back.
pub const CANARY: &str = "KUBE-PROXY-CANARY";

/// The tables the iptables mode writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Nat,
    Filter,
    /// Only the canary lives here.
    Mangle,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Nat, Table::Filter, Table::Mangle];

    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
            Table::Mangle => "mangle",
        }
    }

    /// The fixed chains of this table (every per-service chain is in nat).
    pub fn static_chains(self) -> &'static [&'static str] {
        match self {
            Table::Nat => &[SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ, CANARY],
            Table::Filter => &[SERVICES, EXTERNAL_SERVICES, NODEPORTS, FORWARD, PROXY_FIREWALL, CANARY],
            Table::Mangle => &[CANARY],
        }
    }
}

/// The per-service-port chains, named as upstream names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortChains {
    /// Upstream's "ns/name:port" for comments.
    pub display: String,
    /// Dispatch over the cluster endpoints.
    pub svc: String,
    /// Dispatch over the local endpoints.
    pub svl: String,
    /// External traffic (NodePort, externalIPs, LoadBalancer IPs).
    pub ext: String,
    /// loadBalancerSourceRanges.
    pub fw: String,
    /// The hash input shared by the port's endpoint chains.
    base: String,
}

impl PortChains {
    pub fn of(name: &ServicePortName) -> PortChains {
        let display = format!("{}/{}:{}", name.service.namespace, name.service.name, name.port);
        // Upstream hashes ServicePortName.String() followed by the lower-case protocol.
        let base = format!("{display}{}", name.protocol.name());
        let hashed = hash16(&base);
        PortChains {
            svc: format!("KUBE-SVC-{hashed}"),
            svl: format!("KUBE-SVL-{hashed}"),
            ext: format!("KUBE-EXT-{hashed}"),
            fw: format!("KUBE-FW-{hashed}"),
            display,
            base,
        }
    }

    /// The chain that DNATs to one endpoint (also the name of its session-affinity `recent` list).
    pub fn sep(&self, ep: &EndpointAddr) -> String {
        format!("KUBE-SEP-{}", hash16(&format!("{}{ep}", self.base)))
    }
}

/// The first 16 characters of the base32 SHA-256 of `s`, as upstream's chain names use.
fn hash16(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut encoded = BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServiceKey};

    #[test]
    fn names_are_upstreams() {
        // Upstream's pkg/proxy/iptables/proxier_test.go: ns1/svc1:p80 tcp is KUBE-SVC-XPGD46QRK7WJZT7O, its
        // endpoint 10.180.0.1:80 is KUBE-SEP-SXIVWICOYRO3J4NJ.
        let name = ServicePortName {
            service: ServiceKey { namespace: "ns1".into(), name: "svc1".into() },
            port: "p80".into(),
            protocol: Protocol::Tcp,
        };
        let c = PortChains::of(&name);
        assert_eq!(c.svc, "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(c.ext, "KUBE-EXT-XPGD46QRK7WJZT7O");
        let ep = EndpointAddr { ip: "10.180.0.1".parse().unwrap(), port: 80 };
        assert_eq!(c.sep(&ep), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        assert!(c.sep(&ep).len() <= 28, "iptables chain names are at most 28 characters");
    }
}
