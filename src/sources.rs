//! Sources of Services, EndpointSlices and the Node. Each source converts wire objects into the model at its
//! edge and passes on only real changes; the core cannot tell sources apart.

pub mod kube;
pub mod manifests;

use crate::core::Change;

/// What a source tells the runner.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    /// An object was created, changed or deleted.
    Change(Change),
    /// The source has delivered its complete initial state: programming may start.
    Synced,
}

/// Where Services, EndpointSlices and the Node come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory of manifests (`--manifests`).
    Manifests(std::path::PathBuf),
    /// The API server.
    Api(kube::ConnectSettings),
}

/// Start `source` for node `node_name`, sending its events to `tx`. Fails only if it cannot start at all.
pub async fn start(
    source: Source,
    node_name: String,
    tx: tokio::sync::mpsc::Sender<SourceEvent>,
) -> Result<(), String> {
    match source {
        Source::Manifests(dir) => {
            tokio::spawn(async move {
                if let Err(e) = manifests::ManifestSource::new(dir).run(tx).await {
                    tracing::error!(error = %e, "manifest source stopped");
                }
            });
        }
        Source::Api(settings) => {
            let client = kube::client(&settings).await.map_err(|e| e.to_string())?;
            tokio::spawn(kube::post_starting_event(client.clone(), node_name.clone()));
            tokio::spawn(kube::KubeSource::new(client, node_name).run(tx));
        }
    }
    Ok(())
}
