//! How a transaction reaches the kernel: `NetlinkTransport` (../netlink.rs) sends one nfnetlink batch per
//! transaction; `NftCommand` pipes `nft -f` text (one script = one atomic transaction), the fallback.

use std::io::Write;
use std::process::{Command, Stdio};

use super::ir::{Family, Transaction};
use super::text;

/// Why a transport could not apply a transaction.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The kernel rejected the transaction; nothing of it was applied.
    #[error("{0}")]
    Rejected(String),
    /// The transport itself failed (tool missing, socket error).
    #[error("{0}")]
    Io(String),
    /// The transaction cannot be expressed by this transport (a use of the rule IR it does not know); nothing
    /// was sent.
    #[error("cannot encode the transaction: {0}")]
    Encode(String),
}

/// Produces a transaction's operations, handing each to the sink it is given.
pub type Producer<'a> = dyn FnMut(&mut dyn FnMut(super::ir::Op)) + 'a;

/// Applies transactions to the kernel.
pub trait Transport: Send {
    fn name(&self) -> &'static str;

    /// Apply one transaction atomically.
    fn apply(&mut self, tx: &Transaction) -> Result<(), TransportError>;

    /// Apply one transaction atomically whose operations `produce` hands over one at a time (full syncs: at
    /// scale the operations are never all in memory at once with a transport that can stream them). By default
    /// they are collected and applied as one `Transaction`.
    fn apply_streamed(&mut self, family: Family, table: &str, produce: &mut Producer) -> Result<(), TransportError> {
        let mut tx = Transaction::new(family, table);
        produce(&mut |op| tx.ops.push(op));
        self.apply(&tx)
    }

    /// Whether our table exists (the cheap check for changes made behind our back).
    fn table_exists(&mut self, family: Family, table: &str) -> Result<bool, TransportError>;
}

/// The `nft` command-line tool, fed on standard input.
#[derive(Debug, Default)]
pub struct NftCommand;

impl NftCommand {
    fn run(args: &[&str], stdin: Option<&str>) -> Result<String, TransportError> {
        let mut child = Command::new("nft")
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| TransportError::Io(format!("cannot run nft: {e}")))?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin was piped");
            // A write error means nft exited early; its stderr says why.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| TransportError::Io(format!("nft: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let summary: Vec<&str> = err.lines().take(6).collect();
            Err(TransportError::Rejected(format!("nft {}: {}", args.join(" "), summary.join(" | "))))
        }
    }
}

impl Transport for NftCommand {
    fn name(&self) -> &'static str {
        "nft"
    }

    fn apply(&mut self, tx: &Transaction) -> Result<(), TransportError> {
        Self::run(&["-f", "-"], Some(&text::script(tx))).map(drop)
    }

    fn table_exists(&mut self, family: Family, table: &str) -> Result<bool, TransportError> {
        let fam = match family {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        };
        let listing = Self::run(&["list", "tables", fam], None)?;
        Ok(listing.lines().any(|l| l.trim() == format!("table {fam} {table}")))
    }
}
