//! UDP and SCTP conntrack cleanup, as upstream kube-proxy does after each sync (pkg/proxy/conntrack).
//!
//! Conntrack remembers where a flow was DNATed to and keeps sending its packets there, whatever the rules say
//! now. For TCP that is right (a connection ends, the next one follows the rules). A UDP or SCTP client may keep
//! one flow forever: it would keep talking to a deleted pod, or, when its flow was made while the service had no
//! endpoints, to nothing at all. So after each sync [`ConntrackCleaner::reconcile`] reads the UDP and SCTP
//! entries of the table and deletes those addressed to a service frontend but not sent to one of its serving
//! endpoints; the next packet then makes a new flow through the current rules. The decision is pure
//! ([`StaleIndex`], see `stale.rs` for the exact rules); reading and deleting go over one NETLINK_NETFILTER
//! socket, in batches, never through a process per entry.

mod codec;
mod flow;
mod socket;
mod stale;

use std::io;

pub use flow::{Flow, FlowTuple, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
pub use stale::{StaleIndex, Verdict, stale_flows};

use crate::core::DesiredState;
use crate::model::IpFamily;
use socket::{ConntrackSocket, NetnsId};

/// Reading or cleaning the conntrack table failed. The cleaner drops its socket after any error and opens a
/// new one on the next call, so a failed call can simply be retried with the next sync.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The netlink socket could not be opened or set up (no netlink support, out of file descriptors…).
    #[error("opening the conntrack netlink socket: {op}: {source}")]
    Open {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Sending to or receiving from the kernel failed.
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request (EPERM without CAP_NET_ADMIN, for example).
    #[error("{op}: the kernel answered: {source}")]
    Kernel {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A message from the kernel could not be understood.
    #[error("decoding a conntrack netlink message: {0}")]
    Decode(String),
    /// Some stale entries could not be deleted (other than those already gone); the others were.
    #[error("{failed} stale conntrack entries could not be deleted ({deleted} were); first error: {first}")]
    Delete {
        failed: usize,
        deleted: usize,
        #[source]
        first: io::Error,
    },
}

/// What one [`ConntrackCleaner::reconcile`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// UDP and SCTP entries read from the table (of the families that have such services).
    pub examined: usize,
    /// Stale entries deleted.
    pub deleted: usize,
    /// Stale entries that were gone by the time of the delete (expired meanwhile): nothing left to do.
    pub already_gone: usize,
    /// Entries that could not be decoded and were skipped.
    pub undecodable: usize,
}

/// Deletes stale UDP and SCTP conntrack entries; call [`reconcile`](Self::reconcile) after each successful sync.
///
/// Works in the network namespace of the thread that calls it: when that differs from the namespace its socket
/// was opened in, the socket is reopened.
pub struct ConntrackCleaner {
    socket: Option<ConntrackSocket>,
    /// Reused between calls: the table can hold hundreds of thousands of entries.
    flows: Vec<Flow>,
}

impl ConntrackCleaner {
    /// Open the netlink socket now, so that a machine without conntrack netlink fails at start-up.
    pub fn new() -> Result<Self, ConntrackError> {
        Ok(ConntrackCleaner { socket: Some(ConntrackSocket::open()?), flows: Vec::new() })
    }

    /// Delete every UDP and SCTP entry that `desired` makes stale.
    pub fn reconcile(&mut self, desired: &DesiredState) -> Result<CleanupReport, ConntrackError> {
        let index = StaleIndex::new(desired);
        if index.is_empty() {
            return Ok(CleanupReport::default());
        }
        let result = self.reconcile_with(&index);
        if result.is_err() {
            // A failed dump may leave the socket mid-dump (the kernel then refuses new dumps): start afresh.
            self.socket = None;
        }
        result
    }

    fn reconcile_with(&mut self, index: &StaleIndex) -> Result<CleanupReport, ConntrackError> {
        let netns = NetnsId::current()?;
        let socket = match &mut self.socket {
            Some(socket) if socket.netns() == netns => socket,
            slot => slot.insert(ConntrackSocket::open()?),
        };
        let mut report = CleanupReport::default();
        let mut failed = None;
        for family in IpFamily::ALL {
            let protocols = index.protocols(family);
            if protocols.is_empty() {
                continue;
            }
            self.flows.clear();
            report.undecodable += socket.dump(family, &protocols, &mut self.flows)?.undecodable;
            report.examined += self.flows.len();
            let stale: Vec<&Flow> = self.flows.iter().filter(|f| index.verdict(f) == Verdict::Stale).collect();
            for flow in &stale {
                tracing::trace!("deleting stale conntrack entry {flow}");
            }
            let stats = socket.delete(&stale)?;
            report.deleted += stats.deleted;
            report.already_gone += stats.already_gone;
            if let Some(first) = stats.first_error {
                let (n, _) = failed.get_or_insert((0, first));
                *n += stats.failed;
            }
        }
        if report.undecodable > 0 {
            tracing::warn!("{} conntrack entries could not be decoded and were skipped", report.undecodable);
        }
        tracing::debug!(
            "conntrack cleanup: {} UDP/SCTP entries examined, {} stale deleted, {} already gone",
            report.examined,
            report.deleted,
            report.already_gone
        );
        match failed {
            Some((failed, first)) => Err(ConntrackError::Delete { failed, deleted: report.deleted, first }),
            None => Ok(report),
        }
    }
}

// The runner may keep the cleaner on another thread than the one that made it.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<ConntrackCleaner>();
};

#[cfg(test)]
mod kernel_tests;
