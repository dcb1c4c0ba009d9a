//! The scale examples' generated desired state: N services × M endpoints, every tenth with a NodePort.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use kube_proxy_rs::core::{EndpointAddr, FamilyState, PortEndpoint, ServicePort, ServicePortName};
use kube_proxy_rs::model::{IpFamily, Protocol, ServiceKey};

pub fn ip(base: u32, i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(base + i))
}

pub fn service(i: u32, endpoints: u32, first_endpoint: u32) -> ServicePort {
    let eps: Vec<EndpointAddr> =
        (0..endpoints).map(|j| EndpointAddr { ip: ip(0x0a80_0000, first_endpoint + j), port: 8080 }).collect();
    ServicePort {
        name: ServicePortName {
            service: ServiceKey::new("ns", format!("svc-{i}")),
            port: "http".into(),
            protocol: Protocol::Tcp,
        },
        family: IpFamily::V4,
        port: 80,
        node_port: i.is_multiple_of(10).then(|| 30000 + (i / 10) as u16),
        cluster_ip: ip(0x0a60_0000, i),
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
        has_any_endpoints: true,
        cluster_endpoints: eps,
        local_endpoints: vec![],
    }
}

pub fn state(ports: impl IntoIterator<Item = ServicePort>) -> FamilyState {
    let mut st = FamilyState::default();
    for p in ports {
        st.ports.insert(p.name.clone(), Arc::new(p));
    }
    st
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
