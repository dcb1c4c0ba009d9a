//! Dataplanes turn the desired state into kernel state, one module per proxy mode, behind one small trait.
//! A dataplane remembers what it applied so that a sync sends the kernel only what changed.

pub mod iptables;
pub mod nftables;
pub mod settings;

use crate::core::{Changes, DesiredState};

/// How a sync went, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// Everything was rewritten (start-up, after a failure, after a change made behind our back).
    Full,
    /// Only what changed was sent.
    Partial,
    /// Nothing needed sending.
    Nothing,
}

/// A dataplane failed to bring the kernel in line; the runner retries with a full sync.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel (or the tool standing in for it) refused a transaction.
    #[error("applying {what} failed: {reason}")]
    Apply { what: String, reason: String },
    /// The tool or socket used to reach the kernel could not be used at all.
    #[error("{0}")]
    Unavailable(String),
}

/// One proxy mode's way of programming the kernel.
pub trait Dataplane: Send {
    /// The mode's name as /proxyMode reports it.
    fn mode(&self) -> &'static str;

    /// Make the kernel match `desired`. `changes` names what changed since the last successful sync; with
    /// `full`, or when the dataplane does not know the kernel's state, everything is rewritten.
    fn sync(&mut self, desired: &DesiredState, changes: &Changes, full: bool) -> Result<SyncKind, DataplaneError>;

    /// A cheap check, run periodically, that our kernel state is still there as we left it. `false` means
    /// someone changed it behind our back: the next sync must be full.
    fn verify(&mut self) -> Result<bool, DataplaneError>;

    /// Remove everything this mode creates in the kernel.
    fn cleanup(&mut self) -> Result<(), DataplaneError>;
}

/// Remove iptables, ipvs and upstream-nftables leftovers of the modes other than the running one (upstream
/// kube-proxy's and ours). Failures are logged: a leftover is untidy, never a reason to stop proxying.
pub fn remove_other_modes_leftovers() {
    match iptables::remove_kube_proxy_chains() {
        Ok(report) if report.removed_anything() => tracing::info!(?report, "removed iptables leftovers of kube-proxy"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove iptables leftovers"),
    }
    match iptables::remove_ipvs_leftovers() {
        Ok(report) => tracing::debug!(?report, "ipvs leftovers"),
        Err(e) => tracing::warn!(error = %e, "cannot remove ipvs leftovers"),
    }
}
