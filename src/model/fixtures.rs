//! Hand-built model objects for unit tests.

use std::sync::Arc;

use super::*;

pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: &[(&str, Protocol, u16)]) -> Service {
    Service {
        key: ServiceKey::new(ns, name),
        service_type: ServiceType::ClusterIP,
        ports: ports
            .iter()
            .map(|(n, p, port)| ServicePortSpec { name: n.to_string(), protocol: *p, port: *port, node_port: None })
            .collect(),
        cluster_ips: cluster_ip.split(',').map(|ip| ip.parse().unwrap()).collect(),
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
    }
}

pub fn endpoint(ip: &str, node: &str) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some(node.into()),
        hints: None,
    }
}

pub fn slice(svc: &Service, name: &str, ports: &[(&str, Protocol, u16)], endpoints: Vec<Endpoint>) -> EndpointSlice {
    let family = endpoints.first().map(|e| IpFamily::of(&e.ip)).unwrap_or(IpFamily::V4);
    EndpointSlice {
        namespace: svc.key.namespace.clone(),
        name: name.to_string(),
        service: svc.key.clone(),
        family,
        ports: ports.iter().map(|(n, p, port)| SlicePort { name: n.to_string(), protocol: *p, port: *port }).collect(),
        endpoints,
        trigger_time: None,
    }
}

pub fn svc_obj(s: Service) -> Object {
    Object::Service(Arc::new(s))
}

pub fn slice_obj(s: EndpointSlice) -> Object {
    Object::EndpointSlice(Arc::new(s))
}
