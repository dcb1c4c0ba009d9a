//! Running the command-line tools (iptables-save/-restore, ipset, ip, ipvsadm): always an argument vector,
//! never a shell line, with standard input fed from a string.

use std::io::{ErrorKind, Write};
use std::process::{Command, ExitStatus, Stdio};

use super::IptablesError;

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The output of a successful run, or [`IptablesError::Failed`].
    pub fn success(self, argv: &[&str]) -> Result<Output, IptablesError> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(IptablesError::Failed { argv: argv.join(" "), status: self.status, stderr: summary(&self.stderr) })
        }
    }
}

/// Run `argv` to completion. `Ok(None)` when the program is not installed, which callers treat as "this
/// backend/tool is absent on this machine" rather than as a failure.
pub fn run(argv: &[&str], stdin: Option<&str>) -> Result<Option<Output>, IptablesError> {
    tracing::trace!(argv = %argv.join(" "), "iptables cleanup: run");
    let (program, args) = argv.split_first().expect("argv has a program");
    let spawned = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IptablesError::Spawn { argv: argv.join(" "), source }),
    };
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        // A write error means the program exited early; its status and stderr say why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| IptablesError::Spawn { argv: argv.join(" "), source })?;
    Ok(Some(Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }))
}

/// Run `argv`, which must be installed; its exit status is the caller's to judge.
pub fn run_installed(argv: &[&str], stdin: Option<&str>) -> Result<Output, IptablesError> {
    run(argv, stdin)?.ok_or_else(|| IptablesError::Spawn { argv: argv.join(" "), source: ErrorKind::NotFound.into() })
}

/// Run `argv`, which must be installed and succeed.
pub fn run_required(argv: &[&str], stdin: Option<&str>) -> Result<Output, IptablesError> {
    run_installed(argv, stdin)?.success(argv)
}

/// The first lines of a tool's complaint, on one line, for an error message.
fn summary(stderr: &str) -> String {
    stderr.lines().map(str::trim).filter(|l| !l.is_empty()).take(6).collect::<Vec<_>>().join(" | ")
}
