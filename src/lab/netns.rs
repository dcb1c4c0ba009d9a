//! Named network namespaces (`ip netns add`) that delete themselves, and the few process helpers the lab needs.

use std::ffi::OsStr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{LabError, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique per process and call: `<prefix><pid>-<n>`. The full pid (not truncated) is kept so that
/// [`Netns::sweep_stale`] can tell whether the creating process is still alive.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn argv_string<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter().map(|a| a.as_ref().to_string_lossy()).collect::<Vec<_>>().join(" ")
}

fn command<S: AsRef<OsStr>>(argv: &[S]) -> Command {
    let mut cmd = Command::new(argv[0].as_ref());
    cmd.args(&argv[1..]);
    cmd
}

/// Runs `argv` to completion; only a failure to start is an error (the caller judges the exit status).
pub(crate) fn output<S: AsRef<OsStr>>(argv: &[S]) -> Result<Output> {
    tracing::debug!(argv = %argv_string(argv), "lab: run");
    command(argv).stdin(Stdio::null()).output().map_err(|source| LabError::Spawn { argv: argv_string(argv), source })
}

/// Runs `argv` and requires success; returns its stdout.
pub(crate) fn run_ok<S: AsRef<OsStr>>(argv: &[S]) -> Result<String> {
    checked(argv, output(argv)?)
}

fn checked<S: AsRef<OsStr>>(argv: &[S], out: Output) -> Result<String> {
    if !out.status.success() {
        return Err(LabError::Failed {
            argv: argv_string(argv),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace, deleted on drop together with every process still running inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named [`unique_name`]`(prefix)`.
    pub fn new(prefix: &str) -> Result<Netns> {
        Netns::create(unique_name(prefix))
    }

    /// Creates a namespace with exactly this name; fails if it exists.
    pub fn create(name: impl Into<String>) -> Result<Netns> {
        let name = name.into();
        run_ok(&["ip", "netns", "add", &name])?;
        Ok(Netns { name })
    }

    /// The namespace's name, as `ip netns` and `ip -n` know it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `argv` inside the namespace (`ip netns exec NAME argv…`), for callers that want to
    /// choose stdio themselves.
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    fn full_argv<S: AsRef<OsStr>>(&self, argv: &[S]) -> Vec<std::ffi::OsString> {
        let mut full: Vec<std::ffi::OsString> = ["ip", "netns", "exec", &self.name].iter().map(Into::into).collect();
        full.extend(argv.iter().map(|a| a.as_ref().to_os_string()));
        full
    }

    /// Runs `argv` inside the namespace to completion; the exit status is the caller's to judge.
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output> {
        output(&self.full_argv(argv))
    }

    /// Runs `argv` inside the namespace and requires success; returns its stdout.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<String> {
        run_ok(&self.full_argv(argv))
    }

    /// Runs `ip -n NAME args…`: cheaper than `exec` for configuring links, addresses and routes.
    pub fn ip<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let mut full: Vec<std::ffi::OsString> = ["ip", "-n", &self.name].iter().map(Into::into).collect();
        full.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        run_ok(&full)
    }

    /// Starts `argv` inside the namespace with stdin closed. `ip netns exec` execs the program directly, so the
    /// child's pid is the program's. Whatever is still running when the namespace is dropped gets killed.
    pub fn spawn<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Child> {
        tracing::debug!(netns = %self.name, argv = %argv_string(argv), "lab: spawn");
        self.command(argv)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Spawn { argv: argv_string(&self.full_argv(argv)), source })
    }

    /// Sets a sysctl as seen from inside the namespace (`/proc/sys/net` is per network namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")]).map(drop)
    }

    /// Pids of the processes whose network namespace this is.
    pub fn pids(&self) -> Vec<u32> {
        let out = output(&["ip", "netns", "pids", &self.name]);
        out.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills (SIGKILL) every process inside the namespace. Retries a few times because a process may fork
    /// between listing and killing.
    pub fn kill_all(&self) {
        for _ in 0..5 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            let mut argv = vec!["kill".to_string(), "-KILL".to_string()];
            argv.extend(pids.iter().map(u32::to_string));
            // Failures are expected when a process exits between listing and killing.
            let _ = output(&argv);
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(netns = %self.name, pids = ?self.pids(), "lab: processes survive in namespace");
    }

    /// Deletes namespaces named `<prefix><pid>-…` whose creating process no longer exists: left behind when a
    /// test process was killed before its drops ran. Namespaces of live processes are never touched.
    pub fn sweep_stale(prefix: &str) {
        let Ok(list) = run_ok(&["ip", "netns", "list"]) else { return };
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(pid) = name.strip_prefix(prefix).and_then(|rest| rest.split('-').next()) else { continue };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                tracing::info!(netns = %name, "lab: removing stale namespace");
                drop(Netns { name: name.to_string() });
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        // Deleting the namespace also deletes its veths (and so their peers in other namespaces).
        if let Err(e) = run_ok(&["ip", "netns", "del", &self.name]) {
            tracing::warn!(netns = %self.name, error = %e, "lab: cannot delete namespace");
        }
    }
}
