//! Connecting to the API server as upstream does: `--kubeconfig`, else the KUBECONFIG variable, else the
//! in-cluster service account; `--master` overrides the server URL.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::KubeError;

/// The connection flags.
#[derive(Clone, Debug, Default)]
pub struct ConnectSettings {
    pub kubeconfig: Option<PathBuf>,
    pub master: Option<String>,
}

async fn config(settings: &ConnectSettings) -> Result<Config, KubeError> {
    let err = |e: &dyn std::fmt::Display| KubeError::Config(e.to_string());
    let from_env = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
    let mut config = if let Some(path) = &settings.kubeconfig {
        let kc = Kubeconfig::read_from(path)
            .map_err(|e| KubeError::Config(format!("--kubeconfig {}: {e}", path.display())))?;
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| err(&e))?
    } else if from_env.is_some() {
        Config::from_kubeconfig(&KubeConfigOptions::default()).await.map_err(|e| err(&e))?
    } else {
        match (Config::incluster(), &settings.master) {
            (Ok(c), _) => c,
            (Err(_), Some(master)) => Config::new(master.parse().map_err(|e| err(&e))?),
            (Err(e), None) => {
                return Err(KubeError::Config(format!(
                    "no --kubeconfig, KUBECONFIG or --master, and not in a cluster: {e}"
                )));
            }
        }
    };
    if let Some(master) = &settings.master {
        config.cluster_url = master.parse().map_err(|e| KubeError::Config(format!("--master {master:?}: {e}")))?;
    }
    Ok(config)
}

/// A client for the API server.
pub async fn client(settings: &ConnectSettings) -> Result<Client, KubeError> {
    Client::try_from(config(settings).await?).map_err(KubeError::Client)
}

/// Record a `Starting` event on this node, as upstream does at start-up. Failure is logged, never fatal.
pub async fn post_starting_event(client: Client, node_name: String) {
    let node_name = node_name.as_str();
    let now = jiff::Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{node_name}.{:x}", now.as_nanosecond())),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some("StartKubeProxy".into()),
        reason: Some("Starting".into()),
        type_: Some("Normal".into()),
        reporting_controller: Some("kube-proxy".into()),
        reporting_instance: Some(format!("kube-proxy-{node_name}")),
        regarding: Some(ObjectReference {
            kind: Some("Node".into()),
            name: Some(node_name.into()),
            uid: Some(node_name.into()),
            ..ObjectReference::default()
        }),
        ..Event::default()
    };
    let api: Api<Event> = Api::namespaced(client, "default");
    if let Err(e) = api.create(&Default::default(), &event).await {
        tracing::warn!(error = %e, "cannot record the Starting event");
    }
}
