use std::net::IpAddr;
use std::sync::Arc;

use super::{IpFamily, Protocol, ServiceKey};

/// One entry of an EndpointSlice's `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// Topology hints of an endpoint (`hints.forZones`, `hints.forNodes`). Rare, so kept behind a shared pointer:
/// an endpoint without hints pays 8 bytes for them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub zones: Vec<String>,
    pub nodes: Vec<String>,
}

/// One endpoint (its first address, as upstream uses) with its conditions and topology. Kept small: a cluster
/// has hundreds of thousands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// `conditions.ready`; unset means ready.
    pub ready: bool,
    /// `conditions.serving`; unset means the value of ready.
    pub serving: bool,
    /// `conditions.terminating`; unset means false.
    pub terminating: bool,
    /// `nodeName`, shared between the endpoints of a slice on the same node.
    pub node_name: Option<Arc<str>>,
    pub hints: Option<Arc<Hints>>,
}

impl Endpoint {
    pub fn zone_hints(&self) -> &[String] {
        self.hints.as_ref().map_or(&[], |h| &h.zones)
    }

    pub fn node_hints(&self) -> &[String] {
        self.hints.as_ref().map_or(&[], |h| &h.nodes)
    }
}

/// An EndpointSlice of addressType IPv4 or IPv6 (FQDN slices are not proxied and never become this type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// From the label `kubernetes.io/service-name`.
    pub service: ServiceKey,
    pub family: IpFamily,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
    /// Annotation `endpoints.kubernetes.io/last-change-trigger-time`, for network-programming latency.
    pub trigger_time: Option<jiff::Timestamp>,
}
