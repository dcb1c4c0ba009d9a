use std::net::IpAddr;

use super::{IpFamily, Protocol, ServiceKey};

/// One entry of an EndpointSlice's `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint (its first address, as upstream uses) with its conditions and topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// `conditions.ready`; unset means ready.
    pub ready: bool,
    /// `conditions.serving`; unset means the value of ready.
    pub serving: bool,
    /// `conditions.terminating`; unset means false.
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// `hints.forZones[].name`.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`.
    pub node_hints: Vec<String>,
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
