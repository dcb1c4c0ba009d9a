use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use std::sync::Arc;

use crate::model::{Hints, IpFamily, Protocol, ServiceKey};

/// Identity of one port of one Service: upstream's ServicePortName (namespace/name:port, plus protocol).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub service: ServiceKey,
    /// The port's name; empty for an unnamed port.
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.service, self.port, self.protocol)
    }
}

/// Where a packet is sent: an endpoint's address and the port on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointAddr {
    pub ip: IpAddr,
    pub port: u16,
}

impl EndpointAddr {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.socket_addr().fmt(f)
    }
}

/// One endpoint of a service port with the facts endpoint selection needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEndpoint {
    pub addr: EndpointAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The endpoint runs on this node.
    pub is_local: bool,
    /// Topology hints, shared with the EndpointSlice's endpoint.
    pub hints: Option<Arc<Hints>>,
}

impl PortEndpoint {
    pub fn zone_hints(&self) -> &[String] {
        self.hints.as_ref().map_or(&[], |h| &h.zones)
    }

    pub fn node_hints(&self) -> &[String] {
        self.hints.as_ref().map_or(&[], |h| &h.nodes)
    }
}

/// Desired state of one service port in one IP family: everything a dataplane needs to program it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub family: IpFamily,
    pub port: u16,
    pub node_port: Option<u16>,
    pub cluster_ip: IpAddr,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// ClientIP affinity timeout in seconds, `None` without affinity.
    pub session_affinity_timeout: Option<u32>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    pub health_check_node_port: Option<u16>,
    /// Every endpoint of this port in this family, sorted, whatever its state.
    pub endpoints: Vec<PortEndpoint>,
    /// Endpoints for traffic that may go anywhere in the cluster (upstream's clusterEndpoints).
    pub cluster_endpoints: Vec<EndpointAddr>,
    /// Endpoints for traffic that must stay on this node (upstream's localEndpoints).
    pub local_endpoints: Vec<EndpointAddr>,
    /// Some usable endpoint exists anywhere: without one, traffic is rejected; with one but none usable here,
    /// Local-policy traffic is dropped.
    pub has_any_endpoints: bool,
}

impl ServicePort {
    pub fn protocol(&self) -> Protocol {
        self.name.protocol
    }

    /// Reachable from outside the cluster network: NodePort, externalIPs or LoadBalancer IPs.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty() || !self.load_balancer_ips.is_empty()
    }

    /// Cluster IP traffic, or external traffic under Cluster policy, uses the cluster endpoints.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || (self.externally_accessible() && !self.external_policy_local)
    }

    /// Local internal policy, or external traffic under Local policy, uses the local endpoints.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.externally_accessible() && self.external_policy_local)
    }

    /// Endpoints cluster-IP traffic goes to.
    pub fn internal_endpoints(&self) -> &[EndpointAddr] {
        if self.internal_policy_local { &self.local_endpoints } else { &self.cluster_endpoints }
    }

    /// Endpoints traffic from outside goes to (NodePort, externalIPs, LoadBalancer IPs).
    pub fn external_endpoints(&self) -> &[EndpointAddr] {
        if self.external_policy_local { &self.local_endpoints } else { &self.cluster_endpoints }
    }

    /// Every endpoint some traffic may reach: the union of the cluster and local sets.
    pub fn reachable_endpoints(&self) -> Vec<EndpointAddr> {
        let mut all: Vec<EndpointAddr> = Vec::new();
        if self.uses_cluster_endpoints() {
            all.extend(&self.cluster_endpoints);
        }
        if self.uses_local_endpoints() {
            all.extend(&self.local_endpoints);
        }
        all.sort();
        all.dedup();
        all
    }

    /// Ready endpoints on this node: what the health-check node port reports.
    pub fn local_ready_endpoints(&self) -> usize {
        self.endpoints.iter().filter(|e| e.is_local && e.ready).count()
    }
}
