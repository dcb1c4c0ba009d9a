//! iptables: the iptables proxy mode ([`IptablesDataplane`], upstream's KUBE-* layout through iptables-restore,
//! on the nft or legacy backend), and removing what upstream kube-proxy's iptables, ipvs (and old userspace) modes
//! leave behind, so that a node can move between upstream kube-proxy and kube-proxy-rs and between our modes.
//!
//! Leftovers are found by reading the kernel (`iptables-save`, `ipset list`, `ip`), decided by a pure plan, and
//! removed by name: chains and ipsets that are not upstream kube-proxy's — the kubelet's, a CNI's, Docker's —
//! are never flushed or deleted. See [`names`] for the exact lists and where they come from.

pub mod backend;
mod cleanup;
mod ipvs;
pub mod layout;
mod mode;
pub mod names;
pub mod restore;
pub mod rules;
pub mod save;
mod tool;

use std::io;
use std::process::ExitStatus;

pub use cleanup::{CleanupReport, TableReport, remove_kube_proxy_chains, remove_kube_proxy_chains_in};
pub use ipvs::{InterfaceOutcome, IpvsReport, VirtualServers, remove_ipvs_leftovers};
pub use mode::IptablesDataplane;

use crate::model::IpFamily;

/// The two ways iptables reaches the kernel. Both can hold rules at once on one machine (each is its own set of
/// tables), so leftovers are looked for in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// iptables-nft: xtables rules kept in nf_tables tables (`table ip nat`, …).
    Nft,
    /// iptables-legacy: the classic x_tables kernel tables.
    Legacy,
}

impl Backend {
    /// Both backends, in the order they are cleaned.
    pub const ALL: [Backend; 2] = [Backend::Nft, Backend::Legacy];

    /// The program name for `tool` ("save" or "restore") of this backend and family, e.g.
    /// `ip6tables-legacy-restore`.
    fn program(self, family: IpFamily, tool: &str) -> String {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let backend = match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        };
        format!("{base}-{backend}-{tool}")
    }

    /// The plain command of this backend and family, e.g. `ip6tables-nft`.
    fn command(self, family: IpFamily) -> String {
        self.program(family, "").trim_end_matches('-').to_string()
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

/// Why removing leftovers failed. Nothing is half-removed inside one table: each table's changes are one
/// `iptables-restore` transaction.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// A program could not be started, or a required one (iptables-restore next to an existing
    /// iptables-save, say) is not installed.
    #[error("cannot run `{argv}`: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: io::Error,
    },
    /// A program ran and failed: iptables-restore refused the removal (for example because the ruleset changed
    /// between reading and writing it), or a save/list command could not read the kernel.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed { argv: String, status: ExitStatus, stderr: String },
    /// A program printed something this module does not understand.
    #[error("cannot understand the output of {tool}, line {line}: {reason}")]
    Parse { tool: String, line: usize, reason: String },
}

#[cfg(test)]
mod cleanup_tests;
#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod mode_kernel_tests;
#[cfg(test)]
mod rules_tests;
