//! Health-check node ports: for each LoadBalancer service with `externalTrafficPolicy: Local`, an HTTP server on
//! its `healthCheckNodePort` that tells the cloud load balancer whether this node has endpoints for it, with
//! upstream's JSON, status codes and `X-Load-Balancing-Endpoint-Weight` header. Servers start, change and stop
//! as services come and go; a port that cannot be bound is logged and retried at the next sync, never fatal.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;

use super::health::ProxyHealth;
use crate::core::DesiredState;
use crate::model::{IpFamily, ServiceKey};

/// What one service's health check should serve: its port and how many ready endpoints run on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    pub local_endpoints: usize,
}

/// The health checks the desired state asks for.
pub fn wanted(desired: &DesiredState) -> BTreeMap<ServiceKey, HealthCheck> {
    let mut out: BTreeMap<ServiceKey, HealthCheck> = BTreeMap::new();
    for family in IpFamily::ALL {
        for p in desired.family(family).ports.values() {
            let Some(port) = p.health_check_node_port.filter(|_| p.external_policy_local) else { continue };
            let entry = out.entry(p.name.service.clone()).or_insert(HealthCheck { port, local_endpoints: 0 });
            // One count per service, as upstream: the largest of its ports' (a dual-stack pod counts once).
            entry.local_endpoints = entry.local_endpoints.max(p.local_ready_endpoints());
        }
    }
    out
}

struct Instance {
    port: u16,
    count: Arc<AtomicUsize>,
    addresses: Vec<IpAddr>,
    servers: Vec<JoinHandle<()>>,
    bound: bool,
}

impl Drop for Instance {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

struct Handler {
    service: ServiceKey,
    count: Arc<AtomicUsize>,
    health: Arc<ProxyHealth>,
}

async fn answer(State(h): State<Arc<Handler>>) -> Response {
    let count = h.count.load(Ordering::Relaxed);
    let healthy = h.health.livez().healthy;
    let status = if count != 0 && healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        h.service.namespace, h.service.name
    );
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("x-load-balancing-endpoint-weight", HeaderValue::from(count));
    resp
}

/// The running health-check servers.
pub struct ServiceHealthServers {
    health: Arc<ProxyHealth>,
    instances: BTreeMap<ServiceKey, Instance>,
}

impl ServiceHealthServers {
    pub fn new(health: Arc<ProxyHealth>) -> Self {
        ServiceHealthServers { health, instances: BTreeMap::new() }
    }

    /// Make the servers match `wanted`, listening on `addresses` (empty: every address). Call from a tokio
    /// runtime.
    pub fn sync(&mut self, wanted: &BTreeMap<ServiceKey, HealthCheck>, addresses: &[IpAddr]) {
        let addresses: Vec<IpAddr> = if addresses.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
        } else {
            addresses.to_vec()
        };
        self.instances.retain(|svc, inst| {
            let keep = wanted.get(svc).is_some_and(|w| w.port == inst.port) && inst.addresses == addresses;
            if !keep {
                tracing::info!(service = %svc, port = inst.port, "closing health check");
            }
            keep
        });
        for (svc, want) in wanted {
            let inst = self.instances.entry(svc.clone()).or_insert_with(|| Instance {
                port: want.port,
                count: Arc::new(AtomicUsize::new(0)),
                addresses: addresses.clone(),
                servers: Vec::new(),
                bound: false,
            });
            inst.count.store(want.local_endpoints, Ordering::Relaxed);
            if !inst.bound {
                let handler =
                    Arc::new(Handler { service: svc.clone(), count: inst.count.clone(), health: self.health.clone() });
                match listen_all(&inst.addresses, inst.port, handler) {
                    Ok(servers) => {
                        tracing::info!(service = %svc, port = inst.port, "serving health check");
                        inst.servers = servers;
                        inst.bound = true;
                    }
                    Err(e) => tracing::error!(service = %svc, port = inst.port, error = %e,
                        "cannot serve health check; retrying at the next sync"),
                }
            }
        }
    }

    /// The proxy health the servers report (`serviceProxyHealthy`).
    pub fn proxy_health(&self) -> Arc<ProxyHealth> {
        self.health.clone()
    }

    /// Ports currently served, for tests and logs.
    pub fn serving(&self) -> Vec<(ServiceKey, u16)> {
        self.instances.iter().filter(|(_, i)| i.bound).map(|(k, i)| (k.clone(), i.port)).collect()
    }
}

/// Bind every address first (all or nothing, so a retry starts clean), then serve.
fn listen_all(addresses: &[IpAddr], port: u16, handler: Arc<Handler>) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut listeners = Vec::new();
    for ip in addresses {
        let addr = SocketAddr::new(*ip, port);
        let socket = if ip.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        if ip.is_ipv6() && ip.is_unspecified() {
            // [::] next to 0.0.0.0 on the same port: v6 only, or the second bind fails.
            set_v6only(&socket)?;
        }
        socket.bind(addr)?;
        listeners.push(socket.listen(128)?);
    }
    let router = Router::new().fallback(answer).with_state(handler);
    Ok(listeners
        .into_iter()
        .map(|l| {
            let router = router.clone();
            tokio::spawn(async move {
                let _ = axum::serve(l, router).await;
            })
        })
        .collect())
}

fn set_v6only(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    nix::sys::socket::setsockopt(&socket.as_fd(), nix::sys::socket::sockopt::Ipv6V6Only, &true)
        .map_err(std::io::Error::from)
}
