//! Conversion from Kubernetes wire types into the model, at the edge. Invalid objects become a typed error
//! naming the field; objects the proxy deliberately ignores (headless, ExternalName, another proxy's) become
//! `Ok(None)`.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core_v1;
use k8s_openapi::api::discovery::v1 as discovery_v1;

use super::{
    Endpoint, EndpointSlice, Hints, IpFamily, Node, Protocol, Service, ServiceKey, ServicePortSpec, ServiceType,
    SlicePort,
};

/// Why an object could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A required field is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A field holds a value of the right type but not a valid one.
    #[error("{field}: invalid value {value:?}: {reason}")]
    Invalid { field: String, value: String, reason: &'static str },
}

fn invalid(field: impl Into<String>, value: impl fmt::Display, reason: &'static str) -> ConvertError {
    ConvertError::Invalid { field: field.into(), value: value.to_string(), reason }
}

/// The kinds of object the proxy consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    Node,
}

/// Identity of an object: kind, namespace (empty for Nodes) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{:?} {}", self.kind, self.name)
        } else {
            write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A converted object, as sources hand it to the core.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Node(Arc<Node>),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Service(s) => {
                ObjectKey { kind: ObjectKind::Service, namespace: s.key.namespace.clone(), name: s.key.name.clone() }
            }
            Object::EndpointSlice(s) => {
                ObjectKey { kind: ObjectKind::EndpointSlice, namespace: s.namespace.clone(), name: s.name.clone() }
            }
            Object::Node(n) => ObjectKey { kind: ObjectKind::Node, namespace: String::new(), name: n.name.clone() },
        }
    }
}

const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

fn parse_ip(field: &str, s: &str) -> Result<IpAddr, ConvertError> {
    s.trim().parse().map_err(|_| invalid(field, s, "not an IP address"))
}

fn parse_port(field: &str, p: i32) -> Result<u16, ConvertError> {
    if (1..=65535).contains(&p) { Ok(p as u16) } else { Err(invalid(field, p, "port out of range 1-65535")) }
}

fn parse_protocol(field: &str, p: Option<&str>) -> Result<Protocol, ConvertError> {
    Protocol::from_k8s(p).ok_or_else(|| invalid(field, p.unwrap_or(""), "unknown protocol (want TCP, UDP or SCTP)"))
}

fn is_local_policy(field: &str, value: Option<&str>) -> Result<bool, ConvertError> {
    match value {
        None | Some("") | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(invalid(field, other, "want Cluster or Local")),
    }
}

/// Convert a Service; `Ok(None)` for services no node proxy programs.
pub fn service(svc: &core_v1::Service) -> Result<Option<Service>, ConvertError> {
    let meta = &svc.metadata;
    let name = meta.name.clone().ok_or(ConvertError::Missing("metadata.name"))?;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".to_string());
    if meta.labels.as_ref().is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        return Ok(None);
    }
    let spec = svc.spec.as_ref().ok_or(ConvertError::Missing("spec"))?;
    let service_type = match spec.type_.as_deref() {
        None | Some("") | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Ok(None),
        Some(other) => return Err(invalid("spec.type", other, "unknown service type")),
    };
    let raw_ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.as_str()],
        _ => return Err(ConvertError::Missing("spec.clusterIP")),
    };
    if raw_ips.contains(&"None") {
        return Ok(None);
    }
    let mut cluster_ips = Vec::with_capacity(raw_ips.len());
    for (i, ip) in raw_ips.iter().enumerate() {
        let ip = parse_ip(&format!("spec.clusterIPs[{i}]"), ip)?;
        if ip.is_unspecified() {
            return Err(invalid(format!("spec.clusterIPs[{i}]"), ip, "unspecified address"));
        }
        if cluster_ips.iter().any(|other| IpFamily::of(other) == IpFamily::of(&ip)) {
            return Err(invalid(format!("spec.clusterIPs[{i}]"), ip, "two cluster IPs of one family"));
        }
        cluster_ips.push(ip);
    }
    if let Some(families) = &spec.ip_families {
        for (i, family) in families.iter().enumerate() {
            let want = match family.as_str() {
                "IPv4" => IpFamily::V4,
                "IPv6" => IpFamily::V6,
                other => return Err(invalid(format!("spec.ipFamilies[{i}]"), other, "want IPv4 or IPv6")),
            };
            if cluster_ips.get(i).is_some_and(|ip| IpFamily::of(ip) != want) {
                return Err(invalid(
                    format!("spec.clusterIPs[{i}]"),
                    cluster_ips[i],
                    "not of the family in ipFamilies",
                ));
            }
        }
    }

    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(parse_port(&format!("spec.ports[{i}].nodePort"), n)?),
        };
        let port = ServicePortSpec {
            name: p.name.clone().unwrap_or_default(),
            protocol: parse_protocol(&format!("spec.ports[{i}].protocol"), p.protocol.as_deref())?,
            port: parse_port(&format!("spec.ports[{i}].port"), p.port)?,
            node_port: if service_type == ServiceType::ClusterIP { None } else { node_port },
        };
        if ports.iter().any(|q: &ServicePortSpec| q.name == port.name && q.protocol == port.protocol) {
            return Err(invalid(format!("spec.ports[{i}].name"), &port.name, "duplicate port name"));
        }
        ports.push(port);
    }

    let mut external_ips = Vec::new();
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        external_ips.push(parse_ip(&format!("spec.externalIPs[{i}]"), ip)?);
    }
    let mut load_balancer_ips = Vec::new();
    if service_type == ServiceType::LoadBalancer {
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            let Some(ip) = &ing.ip else { continue };
            if ing.ip_mode.as_deref().is_some_and(|m| m != "VIP") {
                continue;
            }
            load_balancer_ips.push(parse_ip(&format!("status.loadBalancer.ingress[{i}].ip"), ip)?);
        }
    }
    let mut load_balancer_source_ranges = Vec::new();
    for (i, range) in spec.load_balancer_source_ranges.iter().flatten().enumerate() {
        let field = format!("spec.loadBalancerSourceRanges[{i}]");
        let net: IpNet = range.trim().parse().map_err(|_| invalid(&field, range, "not a CIDR"))?;
        load_balancer_source_ranges.push(net.trunc());
    }
    let session_affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("") | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            if !(1..=86400).contains(&timeout) {
                return Err(invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds", timeout, "want 1-86400"));
            }
            Some(timeout as u32)
        }
        Some(other) => return Err(invalid("spec.sessionAffinity", other, "want None or ClientIP")),
    };
    let external_policy_local = is_local_policy("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref())?;
    let internal_policy_local = is_local_policy("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref())?;
    let health_check_node_port = match spec.health_check_node_port {
        Some(p) if p != 0 && external_policy_local && service_type == ServiceType::LoadBalancer => {
            Some(parse_port("spec.healthCheckNodePort", p)?)
        }
        _ => None,
    };
    Ok(Some(Service {
        key: ServiceKey { namespace, name },
        service_type,
        ports,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        session_affinity_timeout,
        external_policy_local,
        internal_policy_local,
        health_check_node_port,
    }))
}

/// Convert an EndpointSlice; `Ok(None)` for FQDN and headless slices.
pub fn endpoint_slice(slice: &discovery_v1::EndpointSlice) -> Result<Option<EndpointSlice>, ConvertError> {
    let meta = &slice.metadata;
    let name = meta.name.clone().ok_or(ConvertError::Missing("metadata.name"))?;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".to_string());
    let labels = meta.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        return Ok(None);
    }
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return Ok(None),
        other => return Err(invalid("addressType", other, "want IPv4, IPv6 or FQDN")),
    };
    let service_name = labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
        .ok_or(ConvertError::Missing("metadata.labels[kubernetes.io/service-name]"))?;
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // A port without a number means "all ports" and is not usable by a proxy; upstream skips it too.
        let Some(number) = p.port else { continue };
        ports.push(SlicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol: parse_protocol(&format!("ports[{i}].protocol"), p.protocol.as_deref())?,
            port: parse_port(&format!("ports[{i}].port"), number)?,
        });
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    // Endpoints of a slice mostly share a few nodes: one allocation per node name.
    let mut node_names: Vec<Arc<str>> = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let first = ep.addresses.first().ok_or(ConvertError::Missing("endpoints[].addresses"))?;
        let ip = parse_ip(&format!("endpoints[{i}].addresses[0]"), first)?;
        if IpFamily::of(&ip) != family {
            return Err(invalid(format!("endpoints[{i}].addresses[0]"), ip, "not of the slice's addressType"));
        }
        let conditions = ep.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let node_name = ep.node_name.as_deref().filter(|n| !n.is_empty()).map(|n| {
            match node_names.iter().find(|known| &***known == n) {
                Some(known) => known.clone(),
                None => {
                    let name: Arc<str> = Arc::from(n);
                    node_names.push(name.clone());
                    name
                }
            }
        });
        let hints = ep.hints.as_ref().map(|h| Hints {
            zones: h.for_zones.iter().flatten().map(|z| z.name.clone()).collect(),
            nodes: h.for_nodes.iter().flatten().map(|n| n.name.clone()).collect(),
        });
        endpoints.push(Endpoint {
            ip,
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node_name,
            hints: hints.filter(|h| !h.zones.is_empty() || !h.nodes.is_empty()).map(Arc::new),
        });
    }
    let trigger_time = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    Ok(Some(EndpointSlice {
        service: ServiceKey { namespace: namespace.clone(), name: service_name.clone() },
        namespace,
        name,
        family,
        ports,
        endpoints,
        trigger_time,
    }))
}

/// Convert a Node.
pub fn node(node: &core_v1::Node) -> Result<Node, ConvertError> {
    let name = node.metadata.name.clone().ok_or(ConvertError::Missing("metadata.name"))?;
    let mut internal = Vec::new();
    let mut external = Vec::new();
    for (i, addr) in node.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten().enumerate() {
        let target = match addr.type_.as_str() {
            "InternalIP" => &mut internal,
            "ExternalIP" => &mut external,
            _ => continue,
        };
        target.push(parse_ip(&format!("status.addresses[{i}].address"), &addr.address)?);
    }
    internal.extend(external);
    let spec = node.spec.as_ref();
    let mut pod_cidrs = Vec::new();
    let raw_cidrs = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]));
    for (i, c) in raw_cidrs.into_iter().flatten().enumerate() {
        let net: IpNet = c.parse().map_err(|_| invalid(format!("spec.podCIDRs[{i}]"), &c, "not a CIDR"))?;
        pod_cidrs.push(net.trunc());
    }
    let tainted = spec.and_then(|s| s.taints.as_ref()).into_iter().flatten().any(|t| t.key == TO_BE_DELETED_TAINT);
    Ok(Node {
        name,
        addresses: internal,
        pod_cidrs,
        labels: node.metadata.labels.clone().unwrap_or_default(),
        being_deleted: tainted || node.metadata.deletion_timestamp.is_some(),
    })
}
