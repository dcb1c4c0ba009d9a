//! One transaction as one nfnetlink batch: BATCH_BEGIN, the messages of every operation in order, BATCH_END.
//! Tables, chains, sets and rules are one message per operation; element lists are split across as many
//! messages as the 16-bit length of their nest requires. Every message gets its own sequence number, and the
//! batch remembers which operation (and which of its elements) each one came from, to name a failure.

use std::collections::HashMap;
use std::ops::Range;

use super::super::ir::{BaseChain, ChainType, ElemData, Element, Family, Hook, Op, Transaction, Value};
use super::EncodeError;
use super::attr::Writer;
use super::expr::{Ctx, nfproto, put_verdict};
use super::sets::{key_bytes, set_def};
use super::sys::*;

/// Which part of the transaction a batch message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Index into `Transaction::ops`.
    pub op: usize,
    /// For element operations: the elements (indexes into the op's list) this message carries.
    pub elements: Option<Range<usize>>,
}

/// An encoded transaction.
#[derive(Debug)]
pub struct Batch {
    /// The messages, ready for one sendmsg.
    pub bytes: Vec<u8>,
    /// Sequence number of BATCH_BEGIN; message `i` of the transaction has `first_seq + 1 + i`, BATCH_END follows.
    pub first_seq: u32,
    /// The origin of each message between BATCH_BEGIN and BATCH_END.
    pub origins: Vec<Origin>,
}

impl Batch {
    /// The origin of the message with sequence number `seq`; `None` for the batch's own begin/end messages.
    pub fn origin(&self, seq: u32) -> Option<&Origin> {
        let i = seq.wrapping_sub(self.first_seq).checked_sub(1)?;
        self.origins.get(i as usize)
    }

    /// The sequence numbers this batch used (wrapping: `end` may be below `start`).
    pub fn seqs(&self) -> Range<u32> {
        self.first_seq..self.first_seq.wrapping_add(self.messages() as u32)
    }

    /// Whether `seq` is one of this batch's messages.
    pub fn contains(&self, seq: u32) -> bool {
        (seq.wrapping_sub(self.first_seq) as usize) < self.messages()
    }

    /// Which element of an element-list message the attribute at `offset` (from the message's header, as the
    /// kernel's extended ack reports it) belongs to: an index into the op's element list.
    pub fn element_at(&self, seq: u32, offset: u32) -> Option<usize> {
        let first = self.origin(seq)?.elements.as_ref()?.start;
        // Only on failure: walk the messages to the failed one.
        let mut at = 0;
        let msg = loop {
            let len = u32::from_ne_bytes(self.bytes.get(at..at + 4)?.try_into().ok()?) as usize;
            let msg_seq = u32::from_ne_bytes(self.bytes.get(at + 8..at + 12)?.try_into().ok()?);
            if msg_seq == seq {
                break self.bytes.get(at..at + len)?;
            }
            at += len.next_multiple_of(4);
        };
        let offset = offset as usize;
        let attrs = nested(msg.get(NLMSG_HDRLEN + 4..)?, NLMSG_HDRLEN + 4);
        let (list, list_at) =
            attrs.into_iter().find(|(ty, _, _)| *ty == NFTA_SET_ELEM_LIST_ELEMENTS).map(|(_, a, v)| (v, a))?;
        nested(list, list_at + 4)
            .into_iter()
            .position(|(_, a, v)| (a..a + 4 + v.len()).contains(&offset))
            .map(|i| first + i)
    }

    /// Messages in the batch, BATCH_BEGIN and BATCH_END included.
    pub fn messages(&self) -> usize {
        self.origins.len() + 2
    }
}

/// The attributes in `b` as (type, offset of the attribute from the message start, value); `base` is the
/// offset of `b` itself.
fn nested(b: &[u8], base: usize) -> Vec<(u16, usize, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= b.len() {
        let len = usize::from(u16::from_ne_bytes([b[at], b[at + 1]]));
        let ty = u16::from_ne_bytes([b[at + 2], b[at + 3]]) & NLA_TYPE_MASK;
        if len < 4 || at + len > b.len() {
            break;
        }
        out.push((ty, base + at, &b[at + 4..at + len]));
        at += len.next_multiple_of(4);
    }
    out
}

/// Encodes operations one by one into one batch (so a full sync never holds all its operations at once).
pub struct Encoder {
    w: Writer,
    family: Family,
    table: String,
    first_seq: u32,
    seq: u32,
    ops: usize,
    origins: Vec<Origin>,
    set_ids: HashMap<String, u32>,
}

/// Encode `tx` as one batch whose sequence numbers start at `first_seq`.
pub fn encode(tx: &Transaction, first_seq: u32) -> Result<Batch, EncodeError> {
    let mut e = Encoder::new(tx.family, &tx.table, first_seq);
    for op in &tx.ops {
        e.push(op)?;
    }
    Ok(e.finish())
}

impl Encoder {
    /// Start a batch (BATCH_BEGIN) for `table` of `family`.
    pub fn new(family: Family, table: &str, first_seq: u32) -> Encoder {
        let mut e = Encoder {
            w: Writer::with_capacity(4096),
            family,
            table: table.to_string(),
            first_seq,
            seq: first_seq,
            ops: 0,
            origins: Vec::new(),
            set_ids: HashMap::new(),
        };
        let m = e.w.begin_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, e.seq, NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES);
        e.w.end_msg(m);
        e
    }

    /// Encode the next operation.
    pub fn push(&mut self, op: &Op) -> Result<(), EncodeError> {
        let i = self.ops;
        self.ops += 1;
        self.op(i, op)
    }

    /// End the batch (BATCH_END).
    pub fn finish(mut self) -> Batch {
        let end_seq = self.next_seq();
        let m = self.w.begin_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq, NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES);
        self.w.end_msg(m);
        Batch { bytes: self.w.into_bytes(), first_seq: self.first_seq, origins: self.origins }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn begin(&mut self, msg: u16, flags: u16, origin: Origin) -> super::attr::Mark {
        let seq = self.next_seq();
        self.origins.push(origin);
        self.w.begin_msg(nft_type(msg), NLM_F_REQUEST | flags, seq, nfproto(self.family), 0)
    }

    fn simple(&mut self, op: usize, msg: u16, flags: u16, body: impl FnOnce(&mut Writer)) {
        let m = self.begin(msg, flags, Origin { op, elements: None });
        body(&mut self.w);
        self.w.end_msg(m);
    }

    fn op(&mut self, i: usize, op: &Op) -> Result<(), EncodeError> {
        let table = self.table.clone();
        let table = table.as_str();
        match op {
            // nft sends "add table" without NLM_F_CREATE (the kernel creates tables regardless) and with flags 0.
            Op::AddTable => self.simple(i, NFT_MSG_NEWTABLE, 0, |w| {
                w.put_str(NFTA_TABLE_NAME, table);
                w.put_be32(NFTA_TABLE_FLAGS, 0);
            }),
            Op::DeleteTable => self.simple(i, NFT_MSG_DELTABLE, 0, |w| w.put_str(NFTA_TABLE_NAME, table)),
            Op::RemoveOtherTable(other) => {
                // Adding it first makes the delete succeed whether or not it exists.
                self.simple(i, NFT_MSG_NEWTABLE, 0, |w| {
                    w.put_str(NFTA_TABLE_NAME, other);
                    w.put_be32(NFTA_TABLE_FLAGS, 0);
                });
                self.simple(i, NFT_MSG_DELTABLE, 0, |w| w.put_str(NFTA_TABLE_NAME, other));
            }
            Op::AddChain { name, base } => self.simple(i, NFT_MSG_NEWCHAIN, NLM_F_CREATE, |w| {
                w.put_str(NFTA_CHAIN_TABLE, table);
                w.put_str(NFTA_CHAIN_NAME, name);
                if let Some(b) = base {
                    base_chain(w, b);
                }
            }),
            Op::FlushChain(name) => self.simple(i, NFT_MSG_DELRULE, 0, |w| {
                w.put_str(NFTA_RULE_TABLE, table);
                w.put_str(NFTA_RULE_CHAIN, name);
            }),
            Op::DeleteChain(name) => self.simple(i, NFT_MSG_DELCHAIN, 0, |w| {
                w.put_str(NFTA_CHAIN_TABLE, table);
                w.put_str(NFTA_CHAIN_NAME, name);
            }),
            Op::AddSet(def) => {
                let id = self.set_ids.len() as u32 + 1;
                let family = self.family;
                let mut result = Ok(());
                self.simple(i, NFT_MSG_NEWSET, NLM_F_CREATE, |w| result = set_def(w, family, table, def, id));
                result?;
                self.set_ids.insert(def.name.clone(), id);
            }
            Op::DeleteSet(name) => self.simple(i, NFT_MSG_DELSET, 0, |w| {
                w.put_str(NFTA_SET_TABLE, table);
                w.put_str(NFTA_SET_NAME, name);
            }),
            Op::AddRule { chain, rule } => {
                let m = self.begin(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, Origin { op: i, elements: None });
                self.w.put_str(NFTA_RULE_TABLE, table);
                self.w.put_str(NFTA_RULE_CHAIN, chain);
                let exprs = self.w.begin_nest(NFTA_RULE_EXPRESSIONS);
                let ctx = Ctx { family: self.family, set_ids: &self.set_ids };
                for stmt in rule {
                    ctx.stmt(&mut self.w, stmt)?;
                }
                self.w.try_end_nest(exprs).map_err(|_| EncodeError(format!("rule too long in chain {chain}")))?;
                self.w.end_msg(m);
            }
            Op::AddElements { set, elements } => {
                let items: Vec<(&[Value], Option<&ElemData>)> =
                    elements.iter().map(|e: &Element| (e.key.as_slice(), e.data.as_ref())).collect();
                self.elements(i, NFT_MSG_NEWSETELEM, NLM_F_CREATE, set, &items)?;
            }
            Op::DeleteElements { set, keys } => {
                let items: Vec<(&[Value], Option<&ElemData>)> = keys.iter().map(|k| (k.as_slice(), None)).collect();
                self.elements(i, NFT_MSG_DELSETELEM, 0, set, &items)?;
            }
        }
        Ok(())
    }

    /// Element lists, as many per message as fit the 16-bit nest length (as libnftnl splits them, numbering the
    /// elements from 1 in each message).
    fn elements(
        &mut self,
        op: usize,
        msg: u16,
        flags: u16,
        set: &str,
        items: &[(&[Value], Option<&ElemData>)],
    ) -> Result<(), EncodeError> {
        let family = self.family;
        let set_id = if msg == NFT_MSG_NEWSETELEM { self.set_ids.get(set).copied() } else { None };
        let mut start = 0;
        while start < items.len() {
            let m = self.begin(msg, flags, Origin { op, elements: Some(start..items.len()) });
            self.w.put_str(NFTA_SET_ELEM_LIST_TABLE, &self.table);
            self.w.put_str(NFTA_SET_ELEM_LIST_SET, set);
            if let Some(id) = set_id {
                self.w.put_be32(NFTA_SET_ELEM_LIST_SET_ID, id);
            }
            let list = self.w.begin_nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            let mut end = start;
            while end < items.len() {
                let (key, data) = items[end];
                let n = u16::try_from(end - start + 1).unwrap_or(u16::MAX) & NLA_TYPE_MASK;
                let elem = self.w.begin_nest(n);
                let k = self.w.begin_nest(NFTA_SET_ELEM_KEY);
                self.w.put(NFTA_DATA_VALUE, &key_bytes(family, key)?);
                self.w.end_nest(k);
                match data {
                    None => {}
                    Some(ElemData::Verdict(v)) => put_verdict(&mut self.w, NFTA_SET_ELEM_DATA, v),
                    Some(ElemData::Values(vs)) => {
                        self.w.put_value(NFTA_SET_ELEM_DATA, &key_bytes(family, vs)?);
                    }
                }
                self.w.end_nest(elem);
                if self.w.since(list) > usize::from(u16::MAX) {
                    if end == start {
                        return Err(EncodeError(format!("one element of {set} is too large")));
                    }
                    // Not this one: it opens the next message.
                    self.w.truncate(elem);
                    break;
                }
                end += 1;
            }
            self.w.end_nest(list);
            self.w.end_msg(m);
            self.origins.last_mut().expect("just pushed").elements = Some(start..end);
            start = end;
        }
        Ok(())
    }
}

fn base_chain(w: &mut Writer, b: &BaseChain) {
    let ty = match b.chain_type {
        ChainType::Filter => "filter",
        ChainType::Nat => "nat",
    };
    let hook = match b.hook {
        Hook::Prerouting => NF_INET_PRE_ROUTING,
        Hook::Input => NF_INET_LOCAL_IN,
        Hook::Forward => NF_INET_FORWARD,
        Hook::Output => NF_INET_LOCAL_OUT,
        Hook::Postrouting => NF_INET_POST_ROUTING,
    };
    w.put_str(NFTA_CHAIN_TYPE, ty);
    w.put_be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32);
    let h = w.begin_nest(NFTA_CHAIN_HOOK);
    w.put_be32(NFTA_HOOK_HOOKNUM, hook);
    w.put_be32(NFTA_HOOK_PRIORITY, b.priority as u32);
    w.end_nest(h);
}
