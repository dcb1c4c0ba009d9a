//! The two HTTP servers upstream runs: health (/healthz, /livez; default port 10256) and metrics
//! (/metrics, /healthz, /proxyMode, /configz; default port 10249). Same paths, status codes and JSON shapes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::health::ProxyHealth;
use super::metrics::Metrics;

/// What the handlers read.
pub struct AdminState {
    pub health: Arc<ProxyHealth>,
    pub metrics: Arc<Metrics>,
    pub mode: &'static str,
    /// The effective configuration, as /configz serves it.
    pub configz: serde_json::Value,
}

fn json(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

fn code(healthy: bool) -> StatusCode {
    if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

async fn healthz(State(s): State<Arc<AdminState>>) -> Response {
    let r = s.health.healthz();
    s.metrics.count_healthz(code(r.healthy).as_u16());
    // Byte for byte the format upstream writes.
    let body = format!(
        r#"{{"lastUpdated": "{}","currentTime": "{}", "nodeEligible": {}}}"#,
        r.last_updated, r.current_time, r.node_eligible
    );
    json(code(r.healthy), body)
}

async fn livez(State(s): State<Arc<AdminState>>) -> Response {
    let r = s.health.livez();
    s.metrics.count_livez(code(r.healthy).as_u16());
    json(code(r.healthy), format!(r#"{{"lastUpdated": "{}","currentTime": "{}"}}"#, r.last_updated, r.current_time))
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let mut resp = s.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn proxy_mode(State(s): State<Arc<AdminState>>) -> &'static str {
    s.mode
}

async fn configz(State(s): State<Arc<AdminState>>) -> Response {
    let body = serde_json::json!({ "kubeproxy.config.k8s.io": s.configz });
    json(StatusCode::OK, body.to_string())
}

pub fn health_router(state: Arc<AdminState>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/livez", get(livez)).with_state(state)
}

pub fn metrics_router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/proxyMode", get(proxy_mode))
        .route("/configz", get(configz))
        .with_state(state)
}

/// Serve `router` on `addr` forever. A port that cannot be bound is logged and retried, never fatal (as
/// upstream without --bind-address-hard-fail).
pub async fn serve(name: &'static str, addr: SocketAddr, router: Router) {
    let mut logged = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(server = name, %addr, "serving");
                if let Err(e) = axum::serve(listener, router.clone()).await {
                    tracing::error!(server = name, %addr, error = %e, "server stopped");
                }
            }
            Err(e) if !logged => {
                tracing::error!(server = name, %addr, error = %e, "cannot bind; retrying every 5s");
                logged = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
