//! A small API server for tests, speaking the real list/watch wire protocol for Services, EndpointSlices and
//! Nodes: JSON lists with a resourceVersion (and `continue` pagination), watch streams of ADDED / MODIFIED /
//! DELETED / BOOKMARK / ERROR lines resumable from a resourceVersion, 410 Gone once history is compacted,
//! server-closed watches and outages. It runs inside a lab namespace (the proxy's), on a thread of its own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{LabError, Netns, Result};

/// The resources served, by list path.
const RESOURCES: [(&str, &str, &str); 3] = [
    ("/api/v1/services", "ServiceList", "v1"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSliceList", "discovery.k8s.io/v1"),
    ("/api/v1/nodes", "NodeList", "v1"),
];

#[derive(Clone, Debug)]
struct Stored {
    resource: &'static str,
    object: Value,
}

#[derive(Clone, Debug)]
struct WatchEvent {
    resource: &'static str,
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<(String, String, String), Stored>,
    history: Vec<WatchEvent>,
    /// Watches asking to resume from before this resourceVersion get 410 Gone.
    compacted: u64,
    lists: BTreeMap<String, u32>,
    watches: BTreeMap<String, u32>,
    /// List requests of these resources wait until released.
    held: Vec<String>,
    posted_events: Vec<Value>,
}

/// What the handlers share.
#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<Option<WatchEvent>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn resource_of(object: &Value) -> Option<&'static str> {
    match object["kind"].as_str()? {
        "Service" => Some(RESOURCES[0].0),
        "EndpointSlice" => Some(RESOURCES[1].0),
        "Node" => Some(RESOURCES[2].0),
        _ => None,
    }
}

fn key_of(object: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (s(&object["kind"]), s(&object["metadata"]["namespace"]), s(&object["metadata"]["name"]))
}

/// `!label` and `label` terms, and `metadata.name=x` fields: what the proxy sends.
fn matches(object: &Value, params: &BTreeMap<String, String>) -> bool {
    let labels = &object["metadata"]["labels"];
    for term in params.get("labelSelector").map(String::as_str).unwrap_or("").split(',').filter(|t| !t.is_empty()) {
        let ok = match term.strip_prefix('!') {
            Some(l) => labels.get(l).is_none(),
            None => labels.get(term).is_some(),
        };
        if !ok {
            return false;
        }
    }
    for term in params.get("fieldSelector").map(String::as_str).unwrap_or("").split(',').filter(|t| !t.is_empty()) {
        if let Some(name) = term.strip_prefix("metadata.name=")
            && object["metadata"]["name"] != name
        {
            return false;
        }
    }
    true
}

fn with_rv(mut object: Value, rv: u64) -> Value {
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    object
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

async fn serve_resource(
    State((shared, path)): State<(Shared, &'static str)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(shared, path, params);
    }
    // A held list waits (the proxy must not program anything meanwhile).
    while shared.lock().held.iter().any(|h| h == path) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let inner = &mut *shared.lock();
    *inner.lists.entry(path.to_string()).or_default() += 1;
    let (_, list_kind, api_version) = RESOURCES.iter().find(|r| r.0 == path).expect("routed");
    let mut items: Vec<Value> = inner
        .objects
        .values()
        .filter(|o| o.resource == path && matches(&o.object, &params))
        .map(|o| o.object.clone())
        .collect();
    // Pagination as the API server does it: `limit` items, then a continue token (the offset).
    let offset: usize = params.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: usize = params.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let rest = items.split_off(offset.min(items.len()));
    let (page, more) = if rest.len() > limit { (rest[..limit].to_vec(), true) } else { (rest, false) };
    let mut metadata = json!({"resourceVersion": inner.rv.to_string()});
    if more {
        metadata["continue"] = json!((offset + limit).to_string());
    }
    axum::Json(json!({"kind": list_kind, "apiVersion": api_version, "metadata": metadata, "items": page}))
        .into_response()
}

fn watch(shared: Shared, path: &'static str, params: BTreeMap<String, String>) -> Response {
    let from: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut rx = shared.events.subscribe();
    let (backlog, expired) = {
        let inner = &mut *shared.lock();
        *inner.watches.entry(path.to_string()).or_default() += 1;
        let expired = from < inner.compacted;
        let backlog: Vec<WatchEvent> =
            inner.history.iter().filter(|e| e.resource == path && e.rv > from).cloned().collect();
        (backlog, expired)
    };
    let line = |v: Value| Ok::<_, std::convert::Infallible>(format!("{v}\n"));
    let stream = async_stream(move |tx| async move {
        if expired {
            let _ = tx
                .send(line(json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")})))
                .await;
            return;
        }
        for e in backlog.into_iter().filter(|e| matches(&e.object, &params)) {
            if tx.send(line(json!({"type": e.kind, "object": e.object}))).await.is_err() {
                return;
            }
        }
        loop {
            match rx.recv().await {
                Ok(Some(e)) if e.resource == path && e.rv > from && matches(&e.object, &params) => {
                    if tx.send(line(json!({"type": e.kind, "object": e.object}))).await.is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                // `None` closes every watch, as an API server restarting or timing out does.
                Ok(None) | Err(broadcast::error::RecvError::Closed) => return,
                Err(broadcast::error::RecvError::Lagged(_)) => return,
            }
        }
    });
    Response::builder().header("content-type", "application/json").body(stream).unwrap_or_default()
}

/// A body fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<std::result::Result<String, std::convert::Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Body::from_stream(tokio_stream_from(rx))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn post_event(State(shared): State<Shared>, body: axum::Json<Value>) -> Response {
    shared.lock().posted_events.push(body.0.clone());
    (StatusCode::CREATED, axum::Json(body.0)).into_response()
}

fn router(shared: Shared) -> Router {
    let mut r = Router::new()
        .route("/apis/events.k8s.io/v1/namespaces/{ns}/events", post(post_event))
        .with_state(shared.clone());
    for (path, _, _) in RESOURCES {
        r = r.route(path, get(serve_resource).with_state((shared.clone(), path)));
    }
    r
}

/// The running test API server. Dropping it stops it.
pub struct ApiServer {
    shared: Shared,
    addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    _thread: std::thread::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ApiServer {
    /// Start on `addr` inside `netns`.
    pub fn start(netns: &Netns, addr: SocketAddr) -> Result<ApiServer> {
        let ns_path = format!("/var/run/netns/{}", netns.name());
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let joined = std::fs::File::open(&ns_path)
                .map_err(|e| e.to_string())
                .and_then(|f| nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match (joined, rt) {
                (Ok(()), Ok(rt)) => {
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                }
                (Err(e), _) => drop(handle_tx.send(Err(e))),
                (_, Err(e)) => drop(handle_tx.send(Err(e.to_string()))),
            }
        });
        let runtime = handle_rx
            .recv()
            .map_err(|e| LabError::Usage(e.to_string()))?
            .map_err(|e| LabError::Usage(format!("api server thread: {e}")))?;
        let (events, _) = broadcast::channel(4096);
        let server = ApiServer {
            shared: Shared { inner: Arc::default(), events },
            addr,
            runtime,
            server: Mutex::new(None),
            _thread: thread,
            stop: Some(stop_tx),
        };
        server.resume()?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://{}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\ncurrent-context: lab\nusers:\n- name: lab\n  user:\n    token: lab-token\n",
            self.addr
        )
    }

    /// Create or replace an object (any k8s-openapi object or JSON with kind and metadata).
    pub fn apply<T: serde::Serialize>(&self, object: &T) {
        let object = serde_json::to_value(object).expect("serializable");
        let resource = resource_of(&object).expect("a Service, EndpointSlice or Node");
        let inner = &mut *self.shared.lock();
        inner.rv += 1;
        let object = with_rv(object, inner.rv);
        let kind = if inner.objects.contains_key(&key_of(&object)) { "MODIFIED" } else { "ADDED" };
        inner.objects.insert(key_of(&object), Stored { resource, object: object.clone() });
        let event = WatchEvent { resource, rv: inner.rv, kind, object };
        inner.history.push(event.clone());
        let _ = self.shared.events.send(Some(event));
    }

    /// Delete an object by kind, namespace ("" for nodes) and name.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let inner = &mut *self.shared.lock();
        let Some(stored) = inner.objects.remove(&(kind.into(), namespace.into(), name.into())) else { return };
        inner.rv += 1;
        let event = WatchEvent {
            resource: stored.resource,
            rv: inner.rv,
            kind: "DELETED",
            object: with_rv(stored.object, inner.rv),
        };
        inner.history.push(event.clone());
        let _ = self.shared.events.send(Some(event));
    }

    /// Close every open watch (clients resume from their last resourceVersion).
    pub fn close_watches(&self) {
        let _ = self.shared.events.send(None);
    }

    /// Forget the event history: resuming watches get 410 Gone and must relist.
    pub fn compact(&self) {
        let inner = &mut *self.shared.lock();
        inner.history.clear();
        inner.compacted = inner.rv + 1;
    }

    /// Make list requests for a resource path wait until `release`.
    pub fn hold_lists(&self, path: &str) {
        self.shared.lock().held.push(path.into());
    }

    pub fn release_lists(&self) {
        self.shared.lock().held.clear();
    }

    /// Go away: the listener closes and every connection drops, as in an outage.
    pub fn outage(&self) {
        if let Some(task) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.close_watches();
    }

    /// Come back after an outage.
    pub fn resume(&self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let app = router(self.shared.clone());
        let addr = self.addr;
        let task = self.runtime.spawn(async move {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    let _ = axum::serve(l, app).await;
                }
                Err(e) => drop(tx.send(Err(e))),
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|e| LabError::Usage(e.to_string()))?
            .map_err(|e| LabError::io(format!("api server bind {addr}"), e))?;
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }

    /// List requests served so far for a resource path.
    pub fn lists(&self, path: &str) -> u32 {
        self.shared.lock().lists.get(path).copied().unwrap_or(0)
    }

    /// Watch requests served so far for a resource path.
    pub fn watches(&self, path: &str) -> u32 {
        self.shared.lock().watches.get(path).copied().unwrap_or(0)
    }

    /// Events the proxy recorded (POSTed).
    pub fn posted_events(&self) -> Vec<Value> {
        self.shared.lock().posted_events.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.outage();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The paths of the watched resources, for `lists`/`watches`/`hold_lists`.
pub const SERVICES: &str = RESOURCES[0].0;
pub const ENDPOINT_SLICES: &str = RESOURCES[1].0;
pub const NODES: &str = RESOURCES[2].0;
