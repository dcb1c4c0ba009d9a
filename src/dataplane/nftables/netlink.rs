//! The native transport: a transaction becomes one nfnetlink batch (BATCH_BEGIN … BATCH_END for nf_tables)
//! written with one sendmsg, so the kernel applies it as one atomic transaction — the same messages `nft -f`
//! sends for the same text (see `expr` for how that was checked), without a process per sync and without
//! reading the ruleset back.
//!
//! No message asks for an acknowledgement: the kernel answers only the messages that fail. After the batch a
//! GETGEN request acts as a barrier — every error report of the batch arrives before its reply — and an error
//! is mapped back, by sequence number, to the operation (and, for element lists, the elements) it came from.

mod attr;
mod expr;
mod objects;
mod sets;
mod socket;
mod sys;

use std::io;

pub use self::objects::{Batch, Origin, encode};
use self::socket::{ErrorReport, NfSocket, Received, Reply};
use self::sys::*;
use super::ir::{Family, Op, Transaction};
use super::text;
use super::transport::{Transport, TransportError};

/// A statement or value the encoder cannot express (the rule IR allows combinations nft refuses too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(pub String);

/// The longest rendering of a failed operation in an error message.
const MAX_OP_TEXT: usize = 600;

/// Applies transactions over a NETLINK_NETFILTER socket, in the network namespace of the thread that created
/// it.
pub struct NetlinkTransport {
    socket: NfSocket,
    seq: u32,
}

impl NetlinkTransport {
    /// Open the socket (in the calling thread's network namespace).
    pub fn new() -> Result<NetlinkTransport, TransportError> {
        let socket = NfSocket::open().map_err(|e| TransportError::Io(format!("netlink socket: {e}")))?;
        // Distinct sequence numbers per process make a stray answer of an earlier exchange easy to ignore.
        let seq = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs() as u32);
        Ok(NetlinkTransport { socket, seq })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Encode `tx` with this transport's sequence numbers.
    pub fn encode(&mut self, tx: &Transaction) -> Result<Batch, TransportError> {
        let first = self.next_seq();
        let batch = encode(tx, first).map_err(|e| TransportError::Encode(e.to_string()))?;
        self.seq = batch.seqs().end;
        Ok(batch)
    }

    /// Send a batch made by [`NetlinkTransport::encode`] from `tx`, and find out whether the kernel took it.
    pub fn send(&mut self, tx: &Transaction, batch: &Batch) -> Result<(), TransportError> {
        self.send_described(batch, &|origin, element| describe(tx, origin, element))
    }

    /// Send a batch; a failure is described by `describe` (given the failing message's origin and element).
    fn send_described(
        &mut self,
        batch: &Batch,
        describe: &dyn Fn(Option<&Origin>, Option<usize>) -> String,
    ) -> Result<(), TransportError> {
        let io = |what: &str, e: io::Error| TransportError::Io(format!("netlink {what}: {e}"));
        self.socket.send(&batch.bytes).map_err(|e| io("send", e))?;
        let mut failures: Vec<(u32, ErrorReport)> = Vec::new();
        let mut lost = false;
        let mut note = |replies: Vec<Reply>, barrier: Option<u32>| -> bool {
            let mut done = false;
            for r in replies {
                if Some(r.seq) == barrier {
                    done = true;
                } else if let Some(e) = r.error
                    && e.errno != 0
                    && batch.contains(r.seq)
                {
                    failures.push((r.seq, e));
                }
            }
            done
        };
        // The kernel processed the batch within sendmsg: its error reports are queued already. Read them before
        // the barrier, so that a full receive queue cannot swallow the barrier's reply.
        loop {
            match self.socket.recv(false).map_err(|e| io("receive", e))? {
                Received::Replies(r) => {
                    note(r, None);
                }
                Received::Lost => lost = true,
                Received::Empty => break,
            }
        }
        let gen_seq = self.next_seq();
        let mut w = attr::Writer::with_capacity(32);
        let m = w.begin_msg(nft_type(NFT_MSG_GETGEN), NLM_F_REQUEST, gen_seq, NFPROTO_UNSPEC, 0);
        w.end_msg(m);
        self.socket.send(&w.into_bytes()).map_err(|e| io("send", e))?;
        loop {
            match self.socket.recv(true).map_err(|e| io("receive", e))? {
                Received::Replies(r) => {
                    if note(r, Some(gen_seq)) {
                        break;
                    }
                }
                Received::Lost => lost = true,
                Received::Empty => {}
            }
        }
        if failures.is_empty() {
            return if lost {
                Err(TransportError::Rejected(
                    "the kernel rejected the transaction; its error reports were lost (receive buffer full)".into(),
                ))
            } else {
                Ok(())
            };
        }
        // The first failure is the cause; later ones may follow from it.
        failures.sort_by_key(|(seq, _)| seq.wrapping_sub(batch.first_seq));
        let (seq, e) = &failures[0];
        let element = e.offset.and_then(|offset| batch.element_at(*seq, offset));
        let mut text = format!("{}: {}", describe(batch.origin(*seq), element), io::Error::from_raw_os_error(e.errno));
        if let Some(msg) = &e.text {
            text.push_str(&format!(" ({msg})"));
        }
        if failures.len() > 1 {
            text.push_str(&format!(" (and {} more failing messages)", failures.len() - 1));
        }
        Err(TransportError::Rejected(text))
    }
}

/// What an operation is about, briefly: its verb and object.
fn op_summary(op: &Op) -> String {
    match op {
        Op::AddTable => "add table".into(),
        Op::DeleteTable => "delete table".into(),
        Op::RemoveOtherTable(t) => format!("remove table {t} from"),
        Op::AddChain { name, .. } => format!("add chain {name} to"),
        Op::FlushChain(name) => format!("flush chain {name} of"),
        Op::DeleteChain(name) => format!("delete chain {name} of"),
        Op::AddSet(set) => format!("add set {} to", set.name),
        Op::DeleteSet(name) => format!("delete set {name} of"),
        Op::AddElements { set, elements } => format!("add {} elements to set {set} of", elements.len()),
        Op::DeleteElements { set, keys } => format!("delete {} elements from set {set} of", keys.len()),
        Op::AddRule { chain, .. } => format!("add a rule to chain {chain} of"),
    }
}

/// The failed operation as `nft` text; for element lists only the element the kernel pointed at, else the
/// elements of the failed message.
fn describe(tx: &Transaction, origin: Option<&Origin>, element: Option<usize>) -> String {
    let Some(origin) = origin else {
        return "the batch".into();
    };
    let op = &tx.ops[origin.op];
    let elements = element.map(|i| i..i + 1).or_else(|| origin.elements.clone());
    let part = match (op, &elements) {
        (Op::AddElements { set, elements }, Some(r)) => {
            Op::AddElements { set: set.clone(), elements: elements[r.clone()].to_vec() }
        }
        (Op::DeleteElements { set, keys }, Some(r)) => {
            Op::DeleteElements { set: set.clone(), keys: keys[r.clone()].to_vec() }
        }
        _ => op.clone(),
    };
    let mut s = text::op(tx.family, &tx.table, &part).trim_end().replace('\n', "; ");
    if s.len() > MAX_OP_TEXT {
        let cut = (0..=MAX_OP_TEXT).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s.truncate(cut);
        s.push_str(" …");
    }
    s
}

impl Transport for NetlinkTransport {
    fn name(&self) -> &'static str {
        "netlink"
    }

    fn apply(&mut self, tx: &Transaction) -> Result<(), TransportError> {
        let batch = self.encode(tx)?;
        self.send(tx, &batch)
    }

    fn apply_streamed(
        &mut self,
        family: Family,
        table: &str,
        produce: &mut super::transport::Producer,
    ) -> Result<(), TransportError> {
        let first = self.next_seq();
        let mut encoder = objects::Encoder::new(family, table, first);
        let mut failed: Option<String> = None;
        // Each operation is described by its kind and object only, so nothing of it outlives its encoding.
        let mut kinds: Vec<String> = Vec::new();
        produce(&mut |op| {
            if failed.is_none() {
                if let Err(e) = encoder.push(&op) {
                    failed = Some(e.to_string());
                }
                kinds.push(op_summary(&op));
            }
        });
        if let Some(e) = failed {
            return Err(TransportError::Encode(e));
        }
        let batch = encoder.finish();
        self.seq = batch.seqs().end;
        self.send_described(&batch, &|origin, _| match origin {
            Some(o) => format!("{} {table} ({} of the full sync)", kinds[o.op], o.op + 1),
            None => "the batch".into(),
        })
    }

    fn table_exists(&mut self, family: Family, table: &str) -> Result<bool, TransportError> {
        let io = |e: io::Error| TransportError::Io(format!("netlink: get table {table}: {e}"));
        let seq = self.next_seq();
        let mut w = attr::Writer::with_capacity(64);
        let m = w.begin_msg(nft_type(NFT_MSG_GETTABLE), NLM_F_REQUEST, seq, expr::nfproto(family), 0);
        w.put_str(NFTA_TABLE_NAME, table);
        w.end_msg(m);
        self.socket.send(&w.into_bytes()).map_err(io)?;
        loop {
            let Received::Replies(replies) = self.socket.recv(true).map_err(io)? else { continue };
            for r in replies.into_iter().filter(|r| r.seq == seq) {
                match r.error.map(|e| e.errno) {
                    None if r.ty == nft_type(NFT_MSG_NEWTABLE) => return Ok(true),
                    Some(libc::ENOENT) => return Ok(false),
                    Some(errno) if errno != 0 => return Err(io(io::Error::from_raw_os_error(errno))),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod kernel_tests;
