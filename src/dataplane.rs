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

/// The mode that is running, whose kernel state must not be taken for leftovers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Running {
    Nftables,
    Iptables(iptables::Backend),
}

/// Remove what the modes other than the running one leave behind (upstream kube-proxy's and ours): iptables
/// chains (in the backends the running mode does not own), ipvs leftovers, and the nftables tables when
/// iptables runs. Failures are logged: a leftover is untidy, never a reason to stop proxying.
pub fn remove_other_modes_leftovers(running: Running, settings: &settings::ProxySettings) {
    let backends: Vec<iptables::Backend> = match running {
        Running::Nftables => iptables::Backend::ALL.to_vec(),
        Running::Iptables(mine) => iptables::Backend::ALL.into_iter().filter(|b| *b != mine).collect(),
    };
    match iptables::remove_kube_proxy_chains_in(&backends) {
        Ok(report) if report.removed_anything() => tracing::info!(?report, "removed iptables leftovers of kube-proxy"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove iptables leftovers"),
    }
    match iptables::remove_ipvs_leftovers() {
        Ok(report) => tracing::debug!(?report, "ipvs leftovers"),
        Err(e) => tracing::warn!(error = %e, "cannot remove ipvs leftovers"),
    }
    if let Running::Iptables(_) = running {
        match nftables::remove_tables(settings) {
            Ok(()) => tracing::debug!("nftables tables of kube-proxy removed"),
            Err(e) => tracing::warn!(error = %e, "cannot remove nftables leftovers"),
        }
    }
}

/// `--cleanup`: remove what every mode creates, ours and upstream's, in every backend and family. Everything is
/// attempted; the first failure is returned.
pub fn remove_everything(settings: &settings::ProxySettings) -> Result<(), DataplaneError> {
    let nft = nftables::remove_tables(settings);
    let chains = iptables::remove_kube_proxy_chains()
        .map(|_| ())
        .map_err(|e| DataplaneError::Apply { what: "iptables cleanup".into(), reason: e.to_string() });
    let ipvs = iptables::remove_ipvs_leftovers()
        .map(|_| ())
        .map_err(|e| DataplaneError::Apply { what: "ipvs cleanup".into(), reason: e.to_string() });
    nft.and(chains).and(ipvs)
}
