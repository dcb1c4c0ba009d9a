//! The Kubernetes API source: watches Services, EndpointSlices (with upstream's label selector) and this
//! node's Node through kube-rs, converts them at the edge, and passes on only real changes through the same
//! `SourceEvent` channel the manifest source uses. `Synced` follows the first complete list of both Services
//! and EndpointSlices; the runner programs nothing before.

mod connect;
mod store;

use std::fmt::Debug;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use tokio::sync::mpsc;

pub use connect::{ConnectSettings, client, post_starting_event};

use self::store::Store;
use super::SourceEvent;
use crate::model::{Object, ObjectKey, ObjectKind, convert};

/// Upstream's selector: services of another proxy, and headless ones, are not ours.
pub const LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Why the API source stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable kubeconfig, in-cluster configuration or --master.
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    /// The client could not be built from the configuration.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// One watch event, tagged with its kind and already converted.
enum Update {
    Init(ObjectKind),
    Apply(ObjectKey, Option<Object>),
    Delete(ObjectKey),
    Done(ObjectKind),
    /// The watch failed (it retries by itself with back-off).
    Failed(ObjectKind, String),
    /// The resourceVersion expired: a relist follows.
    Expired(ObjectKind),
}

fn key_of<K: Resource<DynamicType = ()>>(kind: ObjectKind, obj: &K) -> ObjectKey {
    let meta = obj.meta();
    ObjectKey {
        kind,
        namespace: if kind == ObjectKind::Node { String::new() } else { meta.namespace.clone().unwrap_or_default() },
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// Convert one object; an invalid one is logged and treated as absent.
fn converted<K, F>(kind: ObjectKind, obj: &K, convert: F) -> Option<Object>
where
    K: Resource<DynamicType = ()>,
    F: Fn(&K) -> Result<Option<Object>, convert::ConvertError>,
{
    match convert(obj) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(object = %key_of(kind, obj), error = %e, "invalid object skipped");
            None
        }
    }
}

fn updates<K, F>(api: Api<K>, config: watcher::Config, kind: ObjectKind, convert: F) -> impl Stream<Item = Update>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + serde::de::DeserializeOwned + 'static,
    F: Fn(&K) -> Result<Option<Object>, convert::ConvertError> + Send + 'static,
{
    watcher::watcher(api, config).default_backoff().map(move |ev| match ev {
        Ok(Event::Init) => Update::Init(kind),
        Ok(Event::InitApply(o)) | Ok(Event::Apply(o)) => Update::Apply(key_of(kind, &o), converted(kind, &o, &convert)),
        Ok(Event::Delete(o)) => Update::Delete(key_of(kind, &o)),
        Ok(Event::InitDone) => Update::Done(kind),
        // 410 Gone: our resourceVersion expired; the watcher relists, and the store passes on only differences.
        Err(watcher::Error::WatchError(status)) if status.code == 410 => Update::Expired(kind),
        Err(e) => Update::Failed(kind, e.to_string()),
    })
}

/// Watches the API server for this node.
pub struct KubeSource {
    client: Client,
    node_name: String,
}

impl KubeSource {
    pub fn new(client: Client, node_name: impl Into<String>) -> Self {
        KubeSource { client, node_name: node_name.into() }
    }

    /// Run until the receiver is dropped. Failures of the API server are retried forever: the rules stay as they
    /// are meanwhile, and each transition (failing, recovered) is logged once.
    pub async fn run(self, tx: mpsc::Sender<SourceEvent>) {
        let labels = watcher::Config::default().labels(LABEL_SELECTOR);
        let node = watcher::Config::default().fields(&format!("metadata.name={}", self.node_name));
        let services = updates(Api::<Service>::all(self.client.clone()), labels.clone(), ObjectKind::Service, |s| {
            convert::service(s).map(|o| o.map(|s| Object::Service(s.into())))
        });
        let slices = updates(Api::<EndpointSlice>::all(self.client.clone()), labels, ObjectKind::EndpointSlice, |s| {
            convert::endpoint_slice(s).map(|o| o.map(|s| Object::EndpointSlice(s.into())))
        });
        let nodes = updates(Api::<Node>::all(self.client.clone()), node, ObjectKind::Node, |n| {
            convert::node(n).map(|n| Some(Object::Node(n.into())))
        });
        let mut merged = futures_util::stream::select_all([services.boxed(), slices.boxed(), nodes.boxed()]);
        let mut store = Store::default();
        let mut failing = std::collections::HashSet::new();
        let mut synced = false;
        while let Some(update) = merged.next().await {
            let mut out = Vec::new();
            let kind = match &update {
                Update::Init(k) | Update::Done(k) | Update::Failed(k, _) | Update::Expired(k) => *k,
                Update::Apply(key, _) | Update::Delete(key) => key.kind,
            };
            if !matches!(update, Update::Failed(..)) && failing.remove(&kind) {
                tracing::info!(?kind, "watch recovered");
            }
            match update {
                Update::Init(kind) => store.list_started(kind),
                Update::Apply(key, obj) => out.extend(store.apply(key, obj)),
                Update::Delete(key) => out.extend(store.delete(&key)),
                Update::Done(kind) => {
                    tracing::debug!(?kind, "list complete");
                    out.extend(store.list_done(kind));
                }
                Update::Expired(kind) => tracing::info!(?kind, "resourceVersion expired (410 Gone); relisting"),
                Update::Failed(kind, error) => {
                    if failing.insert(kind) {
                        tracing::warn!(?kind, %error, "watch failing; retrying with back-off, rules stay as they are");
                    }
                }
            }
            for change in out {
                if tx.send(SourceEvent::Change(change)).await.is_err() {
                    return;
                }
            }
            if !synced && store.has_listed(&[ObjectKind::Service, ObjectKind::EndpointSlice]) {
                synced = true;
                if tx.send(SourceEvent::Synced).await.is_err() {
                    return;
                }
            }
        }
    }
}
