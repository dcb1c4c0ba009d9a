//! Hand-built desired state for unit tests of the dataplanes.

use std::sync::Arc;

use super::{EndpointAddr, FamilyState, PortEndpoint, ServicePort, ServicePortName};
use crate::model::{IpFamily, Protocol, ServiceKey};

/// Service port `ns/name:http` (TCP 80 at `ip`), ready endpoints on port 8080 elsewhere, nothing else set.
pub fn port(name: &str, ip: &str, endpoints: &[&str]) -> ServicePort {
    let eps: Vec<EndpointAddr> =
        endpoints.iter().map(|e| EndpointAddr { ip: e.parse().unwrap(), port: 8080 }).collect();
    ServicePort {
        name: ServicePortName { service: ServiceKey::new("ns", name), port: "http".into(), protocol: Protocol::Tcp },
        family: IpFamily::V4,
        port: 80,
        node_port: None,
        cluster_ip: ip.parse().unwrap(),
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        endpoints: eps
            .iter()
            .map(|a| PortEndpoint {
                addr: *a,
                ready: true,
                serving: true,
                terminating: false,
                is_local: false,
                hints: None,
            })
            .collect(),
        has_any_endpoints: !eps.is_empty(),
        cluster_endpoints: eps,
        local_endpoints: vec![],
    }
}

/// The family state holding `ports`.
pub fn state(ports: &[ServicePort]) -> FamilyState {
    let mut st = FamilyState::default();
    for p in ports {
        st.ports.insert(p.name.clone(), Arc::new(p.clone()));
    }
    st
}
