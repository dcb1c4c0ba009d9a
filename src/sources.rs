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
