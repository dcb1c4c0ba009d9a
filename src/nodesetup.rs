//! Node set-up before the proxy starts, as upstream kube-proxy does it (`platformSetup` in
//! cmd/kube-proxy/app/server_linux.go, which calls `SetSysctls` in pkg/proxy/conntrack/sysctls.go, then
//! `ProxyServer.Run` for the OOM score): size the conntrack table, set the conntrack timeouts, and protect the
//! process from the OOM killer.
//!
//! Every file is named relative to a root directory ("/" on a node) so that the rules can be tested against a
//! fake tree. A value is written only when it differs from what the kernel has, which is what lets a proxy
//! started after `--init-only` (with the same flags) run without the right to write any of these files.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Upstream caps max-per-core × CPUs at 1Mi entries (kubernetes#137002): on machines with hundreds of cores the
/// product would reserve memory for a table nobody fills.
pub const CONNTRACK_MAX_CAP: u64 = 1 << 20;

/// The conntrack table size (global: the initial network namespace's value applies everywhere).
pub const NF_CONNTRACK_MAX: &str = "proc/sys/net/netfilter/nf_conntrack_max";
/// The conntrack hash table's bucket count, a module parameter (global, writable from the initial namespace only).
pub const HASHSIZE: &str = "sys/module/nf_conntrack/parameters/hashsize";
/// Per network namespace.
pub const TCP_TIMEOUT_ESTABLISHED: &str = "proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established";
/// Per network namespace.
pub const TCP_TIMEOUT_CLOSE_WAIT: &str = "proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait";
/// Per network namespace.
pub const TCP_BE_LIBERAL: &str = "proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal";
/// Per network namespace.
pub const UDP_TIMEOUT: &str = "proc/sys/net/netfilter/nf_conntrack_udp_timeout";
/// Per network namespace.
pub const UDP_TIMEOUT_STREAM: &str = "proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream";
/// This process's OOM score adjustment.
pub const OOM_SCORE_ADJ: &str = "proc/self/oom_score_adj";
/// The CPUs online on the machine, as a list such as "0-3,8-11".
const ONLINE_CPUS: &str = "sys/devices/system/cpu/online";

/// A node set-up step that failed. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum NodeSetupError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file held something other than an integer.
    #[error("{path}: expected an integer, found {found:?}")]
    NotANumber { path: PathBuf, found: String },
    /// The file could not be written; `hint` says what usually causes that, when we know.
    #[error("cannot write {value} to {path}: {source}{hint}")]
    Write {
        path: PathBuf,
        value: i64,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
}

/// The KubeProxyConfiguration `conntrack` section. Zero (false) leaves the kernel's value alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// Table entries per CPU; 0 leaves nf_conntrack_max (and hashsize) alone and ignores `min`.
    pub max_per_core: u32,
    /// Floor for max_per_core × CPUs.
    pub min: u32,
    pub tcp_established_timeout: Duration,
    pub tcp_close_wait_timeout: Duration,
    /// True sets nf_conntrack_tcp_be_liberal to 1; false leaves it alone (upstream never writes 0).
    pub tcp_be_liberal: bool,
    pub udp_timeout: Duration,
    pub udp_stream_timeout: Duration,
}

impl Default for ConntrackSettings {
    /// Upstream's defaults.
    fn default() -> Self {
        ConntrackSettings {
            max_per_core: 32768,
            min: 131072,
            tcp_established_timeout: Duration::from_secs(24 * 3600),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

/// What node set-up is asked to do (see [`crate::config::Config::node_setup`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeSetupSettings {
    pub conntrack: ConntrackSettings,
    /// This process's OOM score adjustment; None leaves it alone.
    pub oom_score_adj: Option<i32>,
}

/// One file written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub path: PathBuf,
    /// The value found before, or None when it could not be read.
    pub before: Option<i64>,
    pub after: i64,
}

/// What [`NodeSetup::apply`] did.
#[derive(Debug, Default)]
pub struct Report {
    /// The CPU count the table size was computed from.
    pub cpus: u64,
    /// The table size asked for; None when --conntrack-max-per-core is 0.
    pub conntrack_max: Option<u64>,
    /// The files written, in order.
    pub changes: Vec<Change>,
    /// Failures that upstream only logs (setting the OOM score); already logged.
    pub warnings: Vec<NodeSetupError>,
}

/// The conntrack table size upstream asks for (`getConntrackMax`): none when max-per-core is 0 (min is then
/// ignored too); else max-per-core × CPUs capped at [`CONNTRACK_MAX_CAP`], raised to min when below it. The cap
/// is checked before the floor, as upstream does, so a min above the cap is not honoured.
pub fn conntrack_max(settings: &ConntrackSettings, cpus: u64) -> Option<u64> {
    if settings.max_per_core == 0 {
        return None;
    }
    let scaled = u64::from(settings.max_per_core) * cpus;
    if scaled > CONNTRACK_MAX_CAP {
        return Some(CONNTRACK_MAX_CAP);
    }
    Some(scaled.max(u64::from(settings.min))).filter(|&max| max > 0)
}

/// The per-namespace sysctls to set, in upstream's order, skipping those left alone: zero timeouts and a false
/// be-liberal. A timeout is written in whole seconds, truncated as upstream does (so 500ms writes 0).
pub fn sysctl_values(settings: &ConntrackSettings) -> Vec<(&'static str, i64)> {
    let seconds = |d: Duration| (!d.is_zero()).then(|| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    [
        (TCP_TIMEOUT_ESTABLISHED, seconds(settings.tcp_established_timeout)),
        (TCP_TIMEOUT_CLOSE_WAIT, seconds(settings.tcp_close_wait_timeout)),
        (TCP_BE_LIBERAL, settings.tcp_be_liberal.then_some(1)),
        (UDP_TIMEOUT, seconds(settings.udp_timeout)),
        (UDP_TIMEOUT_STREAM, seconds(settings.udp_stream_timeout)),
    ]
    .into_iter()
    .filter_map(|(file, value)| Some((file, value?)))
    .collect()
}

/// Counts the CPUs in a kernel CPU list such as "0-3,8-11" (None if it does not parse).
pub fn count_cpu_list(list: &str) -> Option<u64> {
    let mut count = 0;
    for part in list.trim().split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
        count += last.checked_sub(first)? + 1;
    }
    Some(count)
}

/// Applies the node set-up to the files under a root directory.
#[derive(Clone, Debug)]
pub struct NodeSetup {
    /// "/" on a node; a temporary tree in tests.
    root: PathBuf,
}

impl NodeSetup {
    /// The real node.
    pub fn host() -> NodeSetup {
        NodeSetup::at("/")
    }

    /// The files under `root` (which holds `proc/…` and `sys/…`).
    pub fn at(root: impl Into<PathBuf>) -> NodeSetup {
        NodeSetup { root: root.into() }
    }

    /// Applies `settings`. Every failure of the conntrack steps is fatal, as upstream's `platformSetup` makes
    /// it ("could not set conntrack parameters"); a failure to set the OOM score is only logged, as upstream's
    /// `ProxyServer.Run` does.
    pub fn apply(&self, settings: &NodeSetupSettings) -> Result<Report, NodeSetupError> {
        let cpus = self.cpus();
        let mut report = Report { cpus, conntrack_max: conntrack_max(&settings.conntrack, cpus), ..Report::default() };
        if let Some(max) = report.conntrack_max {
            self.raise_conntrack_max(max, &mut report)?;
        }
        for (file, value) in sysctl_values(&settings.conntrack) {
            // Upstream ignores a failed read here and writes; only the write's failure counts.
            let before = self.read(file).ok();
            if before != Some(value) {
                self.write(file, before, value, &mut report)?;
            }
        }
        if let Some(adj) = settings.oom_score_adj {
            let before = self.read(OOM_SCORE_ADJ).ok();
            if before != Some(i64::from(adj))
                && let Err(e) = self.write(OOM_SCORE_ADJ, before, i64::from(adj), &mut report)
            {
                tracing::warn!(error = %e, "cannot set the OOM score; carrying on, as upstream does");
                report.warnings.push(e);
            }
        }
        Ok(report)
    }

    /// nf_conntrack_max, then hashsize = max / 4.
    fn raise_conntrack_max(&self, max: u64, report: &mut Report) -> Result<(), NodeSetupError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        // Raised, never lowered (kubernetes#142035): a host that already allows more must not make a proxy
        // without the right to write the sysctl fail. An unreadable value counts as too low.
        let before = self.read(NF_CONNTRACK_MAX).ok();
        if before.is_none_or(|current| current < max) {
            self.write(NF_CONNTRACK_MAX, before, max, report)?;
        }
        // The table's buckets: a failed read is fatal, as upstream. A failed write is fatal too: from 2016
        // (kubernetes#28697) upstream checked /proc/mounts first and, when /sys was mounted read-only (docker
        // issue 24000), skipped the write, posted a Warning event "/sys is read-only: cannot modify conntrack
        // limits, problems may arise later" and carried on. Upstream has since dropped that workaround
        // (kubernetes#134108: the runtime bug is believed fixed in containerd 2.0.3, and long since in cri-o), so a
        // read-only /sys now stops the proxy like any other failure; our error says what to do about it.
        let hashsize = self.read(HASHSIZE)?;
        if hashsize < max / 4 {
            self.write(HASHSIZE, Some(hashsize), max / 4, report)?;
        }
        Ok(())
    }

    /// The CPU count the table is sized by, as upstream's `DetectNumCPU`: the CPUs online on the machine (the
    /// table is machine-wide, and a cpuset-confined proxy would undercount), else those this process may run on
    /// (Go's `runtime.NumCPU`, which upstream falls back to).
    fn cpus(&self) -> u64 {
        let online = std::fs::read_to_string(self.path(ONLINE_CPUS)).ok().and_then(|s| count_cpu_list(&s));
        online.filter(|&n| n > 0).unwrap_or_else(affinity_cpus)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    fn read(&self, file: &str) -> Result<i64, NodeSetupError> {
        let path = self.path(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) => return Err(NodeSetupError::Read { path, source }),
        };
        text.trim().parse().map_err(|_| NodeSetupError::NotANumber { path, found: text.trim().to_string() })
    }

    /// Writes without creating: a missing sysctl means a missing kernel module, which must not be papered over
    /// by a new file (and in a fake tree, creating one would hide that).
    fn write(&self, file: &str, before: Option<i64>, value: i64, report: &mut Report) -> Result<(), NodeSetupError> {
        let path = self.path(file);
        let result = OpenOptions::new().write(true).truncate(true).open(&path).and_then(|mut f| {
            f.write_all(value.to_string().as_bytes())?;
            f.flush()
        });
        if let Err(source) = result {
            let hint = hint(file, &source);
            return Err(NodeSetupError::Write { path, value, source, hint });
        }
        tracing::info!(path = %path.display(), ?before, value, "node set-up: set");
        report.changes.push(Change { path, before, after: value });
        Ok(())
    }
}

/// Go's `runtime.NumCPU`: the CPUs in this process's affinity mask.
fn affinity_cpus() -> u64 {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else { return 1 };
    let count = (0..nix::sched::CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).count();
    u64::try_from(count).unwrap_or(1).max(1)
}

/// What usually makes writing `file` fail this way, for the error message.
fn hint(file: &str, error: &io::Error) -> &'static str {
    match (file, error.raw_os_error()) {
        (_, Some(libc::ENOENT)) if file.starts_with("proc/sys/net/netfilter") || file == HASHSIZE => {
            "; is the nf_conntrack module loaded?"
        }
        (_, Some(libc::EROFS)) => {
            "; the file system is mounted read-only: run in a privileged container, or set the value on the host \
             and pass flags that leave it alone"
        }
        (HASHSIZE, Some(libc::EOPNOTSUPP)) => {
            "; the kernel changes hashsize only from the initial network namespace \
             (--conntrack-max-per-core=0 leaves it alone)"
        }
        (NF_CONNTRACK_MAX, Some(libc::EACCES | libc::EPERM)) => {
            "; nf_conntrack_max can be changed only from the initial network namespace, by root \
             (--conntrack-max-per-core=0 leaves it alone)"
        }
        (OOM_SCORE_ADJ, Some(libc::EACCES | libc::EPERM)) => "; lowering the OOM score needs CAP_SYS_RESOURCE",
        _ => "",
    }
}

#[cfg(test)]
#[path = "nodesetup/tests.rs"]
mod tests;
