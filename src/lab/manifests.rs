//! Builders for the manifests the demo and the tests write: real Kubernetes objects (k8s-openapi types)
//! serialized to YAML, so the proxy reads exactly what a cluster would hold.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeSpec, NodeStatus, Service,
    ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

/// Serialize any object to a YAML document.
pub fn to_yaml<T: Serialize>(object: &T) -> String {
    // Through serde_json first so k8s-openapi adds apiVersion and kind.
    let value = serde_json::to_value(object).expect("k8s objects serialize");
    serde_saphyr::to_string(&value).expect("JSON values serialize to YAML")
}

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: namespace.map(str::to_string), ..ObjectMeta::default() }
}

/// A Service under construction.
#[derive(Clone, Debug)]
pub struct ServiceBuilder(pub Service);

/// A ClusterIP service; `cluster_ips` lists one IP per family (dual-stack with two).
pub fn service(namespace: &str, name: &str, cluster_ips: &[IpAddr]) -> ServiceBuilder {
    let ips: Vec<String> = cluster_ips.iter().map(|ip| ip.to_string()).collect();
    let families = cluster_ips.iter().map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" }.to_string()).collect();
    ServiceBuilder(Service {
        metadata: meta(Some(namespace), name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: ips.first().cloned(),
            cluster_ips: Some(ips),
            ip_families: Some(families),
            ports: Some(Vec::new()),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.as_mut().expect("built with a spec")
    }

    /// Add a port: `protocol` is "TCP", "UDP" or "SCTP".
    pub fn port(mut self, name: &str, protocol: &str, port: u16, target_port: u16) -> Self {
        self.spec().ports.get_or_insert_with(Vec::new).push(ServicePort {
            name: Some(name.into()),
            protocol: Some(protocol.into()),
            port: port.into(),
            target_port: Some(IntOrString::Int(target_port.into())),
            ..ServicePort::default()
        });
        self
    }

    /// Make it a NodePort service with this node port on its last port.
    pub fn node_port(mut self, node_port: u16) -> Self {
        let spec = self.spec();
        if spec.type_.as_deref() == Some("ClusterIP") {
            spec.type_ = Some("NodePort".into());
        }
        if let Some(p) = spec.ports.as_mut().and_then(|p| p.last_mut()) {
            p.node_port = Some(node_port.into());
        }
        self
    }

    /// Make it a LoadBalancer service whose status lists these ingress IPs.
    pub fn load_balancer(mut self, ingress: &[IpAddr]) -> Self {
        self.spec().type_ = Some("LoadBalancer".into());
        self.0.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ingress
                        .iter()
                        .map(|ip| LoadBalancerIngress { ip: Some(ip.to_string()), ..LoadBalancerIngress::default() })
                        .collect(),
                ),
            }),
            ..ServiceStatus::default()
        });
        self
    }

    pub fn external_ips(mut self, ips: &[IpAddr]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|ip| ip.to_string()).collect());
        self
    }

    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges = Some(ranges.iter().map(|r| r.to_string()).collect());
        self
    }

    pub fn external_traffic_policy_local(mut self, health_check_node_port: Option<u16>) -> Self {
        let spec = self.spec();
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = health_check_node_port.map(i32::from);
        self
    }

    pub fn internal_traffic_policy_local(mut self) -> Self {
        self.spec().internal_traffic_policy = Some("Local".into());
        self
    }

    pub fn session_affinity(mut self, timeout_seconds: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = timeout_seconds
            .map(|t| SessionAffinityConfig { client_ip: Some(ClientIPConfig { timeout_seconds: Some(t) }) });
        self
    }

    pub fn yaml(&self) -> String {
        to_yaml(&self.0)
    }
}

/// One endpoint of a slice under construction.
#[derive(Clone, Debug)]
pub struct EndpointBuilder(pub Endpoint);

/// A ready endpoint on `node`.
pub fn endpoint(ip: IpAddr, node: &str) -> EndpointBuilder {
    EndpointBuilder(Endpoint {
        addresses: vec![ip.to_string()],
        node_name: Some(node.into()),
        conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
        ..Endpoint::default()
    })
}

impl EndpointBuilder {
    /// Set the ready/serving/terminating conditions.
    pub fn conditions(mut self, ready: bool, serving: bool, terminating: bool) -> Self {
        self.0.conditions =
            Some(EndpointConditions { ready: Some(ready), serving: Some(serving), terminating: Some(terminating) });
        self
    }

    pub fn zone_hints(mut self, zones: &[&str]) -> Self {
        let hints = self.0.hints.get_or_insert_with(EndpointHints::default);
        hints.for_zones = Some(zones.iter().map(|z| ForZone { name: z.to_string() }).collect());
        self
    }

    pub fn node_hints(mut self, nodes: &[&str]) -> Self {
        let hints = self.0.hints.get_or_insert_with(EndpointHints::default);
        hints.for_nodes = Some(nodes.iter().map(|n| ForNode { name: n.to_string() }).collect());
        self
    }
}

/// An EndpointSlice of `service`; `ports` are (name, protocol, port).
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    ipv6: bool,
    ports: &[(&str, &str, u16)],
    endpoints: Vec<EndpointBuilder>,
) -> EndpointSlice {
    let mut m = meta(Some(namespace), name);
    m.labels = Some(BTreeMap::from([("kubernetes.io/service-name".to_string(), service.to_string())]));
    EndpointSlice {
        metadata: m,
        address_type: if ipv6 { "IPv6" } else { "IPv4" }.into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p, port)| EndpointPort {
                    name: Some(n.to_string()),
                    protocol: Some(p.to_string()),
                    port: Some((*port).into()),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
        endpoints: endpoints.into_iter().map(|e| e.0).collect(),
    }
}

/// This node's Node object: its InternalIPs, pod CIDRs and labels.
pub fn node(name: &str, internal_ips: &[IpAddr], pod_cidrs: &[&str], labels: &[(&str, &str)]) -> Node {
    let mut m = meta(None, name);
    m.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    Node {
        metadata: m,
        spec: Some(NodeSpec {
            pod_cidr: pod_cidrs.first().map(|c| c.to_string()),
            pod_cidrs: Some(pod_cidrs.iter().map(|c| c.to_string()).collect()),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(
                internal_ips
                    .iter()
                    .map(|ip| NodeAddress { type_: "InternalIP".into(), address: ip.to_string() })
                    .collect(),
            ),
            ..NodeStatus::default()
        }),
    }
}
