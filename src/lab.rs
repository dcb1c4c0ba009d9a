//! Throwaway Kubernetes-like clusters in network namespaces, for the `demo` command and the real-kernel tests.
//!
//! A [`ClusterLab`] is one node namespace (where the proxy runs), one namespace per pod wired to the node ptp-style
//! (like Calico), and an `outside` namespace playing an external client. Traffic is made by two helpers that the
//! binary exposes as hidden subcommands ([`cli::echo_main`], [`cli::probe_main`]), run inside the namespaces with
//! `ip netns exec`: every command is an argument vector, never a shell line. Everything is removed on drop.

mod addresses;
pub mod apiserver;
pub mod cli;
mod cluster;
pub mod echo;
pub mod http;
pub mod manifests;
mod netns;
pub mod probe;
mod session;

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

pub use addresses::{
    EXTERNAL_IP_RANGE_V4, EXTERNAL_IP_RANGE_V6, LB_IP_RANGE_V4, LB_IP_RANGE_V6, NODE_POD_SIDE_IP_V4,
    NODE_POD_SIDE_IP_V6, NODE_UPLINK, NODE_UPLINK_IP_V4, NODE_UPLINK_IP_V6, OUTSIDE_IP_V4, OUTSIDE_IP_V6, POD_CIDR_V4,
    POD_CIDR_V6, POD_VETH_PREFIX, SERVICE_CIDR_V4, SERVICE_CIDR_V6,
};
pub use cluster::{ClusterLab, LabPod, LabSpec, PodSpec, Where};
pub use netns::{Netns, unique_name};
pub use probe::{ProbeProtocol, ProbeResult, ProbeSpec};
pub use session::{Session, SessionReply};

/// Everything that can go wrong while building a lab or running its helpers.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command could not be started at all (tool missing, no permission).
    #[error("cannot run `{argv}`: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed { argv: String, status: ExitStatus, stderr: String },
    /// A socket, pipe or file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Arguments of the `echo-server`/`probe` helpers were not understood.
    #[error("usage: {0}")]
    Usage(String),
    /// A helper process printed something other than its documented protocol.
    #[error("{what}: unexpected output {line:?}")]
    Protocol { what: String, line: String },
    /// A helper process did not report readiness in time (or exited first).
    #[error("{what} not ready within {waited:?}")]
    NotReady { what: String, waited: Duration },
    /// The lab has no pod by that name.
    #[error("no pod named {0:?} in this lab")]
    NoSuchPod(String),
    /// The [`LabSpec`] cannot be built (too many pods, duplicate names).
    #[error("invalid lab spec: {0}")]
    Spec(String),
}

/// Result alias for the lab.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    fn io(context: impl Into<String>, source: io::Error) -> LabError {
        LabError::Io { context: context.into(), source }
    }
}

/// Guard for tests that need root (namespaces, veths): true when the test can run. Otherwise it prints why the
/// test is skipped and returns false — except under `CI=true`, where a silent skip would hide a broken CI
/// machine, so it panics instead.
pub fn root_or_skip(test: &str) -> bool {
    let euid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        // "Uid:\treal\teffective\tsaved\tfs"
        s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
    });
    if euid == Some(0) {
        return true;
    }
    let reason = format!("{test}: needs root for network namespaces (effective uid {euid:?})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}; refusing to skip under CI=true");
    }
    eprintln!("SKIPPED {reason}");
    false
}
