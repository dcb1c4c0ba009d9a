//! Conntrack netlink messages, built on netlink-packet-netfilter: the requests we send (dump, delete) and the
//! replies we read (entries, acknowledgements). No I/O here.
//!
//! The crate has the tuples but not three attributes we need; they are encoded here, small and tested against
//! bytes captured from the kernel: CTA_ZONE and CTA_ID (to delete exactly the dumped entry) and CTA_FILTER (to
//! have the kernel dump only one L4 protocol).

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    DecodeError, DefaultNla, NLA_F_NESTED, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};

use super::flow::{Flow, FlowTuple};
use crate::model::IpFamily;

/// CTA_ID: the entry's id, a 32-bit big-endian value (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const CTA_ID: u16 = 12;
/// CTA_ZONE: the entry's zone, 16-bit big-endian; absent for the default zone 0.
const CTA_ZONE: u16 = 18;
/// CTA_FILTER: nested; tells a dump which fields of CTA_TUPLE_ORIG must match.
const CTA_FILTER: u16 = 25;
/// CTA_FILTER_ORIG_FLAGS: u32 in host byte order, a mask of CTA_FILTER_F_* bits.
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
/// CTA_FILTER_F_CTA_PROTO_NUM (net/netfilter/nf_conntrack_netlink.c): match the L4 protocol only.
const CTA_FILTER_F_PROTO_NUM: u32 = 1 << 3;

/// Bytes of a netlink header; messages in a buffer are aligned to 4 bytes.
const NLMSG_HDRLEN: usize = 16;

fn proto_family(family: IpFamily) -> NetfilterProtoFamily {
    match family {
        IpFamily::V4 => NetfilterProtoFamily::IPv4,
        IpFamily::V6 => NetfilterProtoFamily::IPv6,
    }
}

/// Append one conntrack request to `out`.
fn emit(out: &mut Vec<u8>, family: IpFamily, flags: u16, seq: u32, message: ConntrackMessage) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let payload = NetfilterMessage::new(NetfilterHeader::new(proto_family(family), 0, 0), message);
    let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    message.finalize();
    let start = out.len();
    out.resize(start + message.buffer_len(), 0);
    message.serialize(&mut out[start..]);
}

/// A request to dump the conntrack table of one family. With `protocol`, the kernel itself skips entries of
/// other L4 protocols (CTA_FILTER, Linux 5.8+); without, every entry of the family comes back.
pub fn dump_request(out: &mut Vec<u8>, family: IpFamily, protocol: Option<u8>, seq: u32) {
    let start = out.len();
    let mut attributes = Vec::new();
    if let Some(protocol) = protocol {
        attributes
            .push(ConntrackAttribute::CtaTupleOrig(vec![Tuple::Proto(vec![ProtoTuple::Protocol(protocol.into())])]));
    }
    emit(out, family, NLM_F_REQUEST | NLM_F_DUMP, seq, ConntrackMessage::Get(attributes));
    if protocol.is_some() {
        // CTA_FILTER { CTA_FILTER_ORIG_FLAGS: u32 }, appended by hand: the kernel parses CTA_FILTER strictly and
        // wants NLA_F_NESTED on it, which the crate drops from attributes it does not know.
        out.extend_from_slice(&12u16.to_ne_bytes());
        out.extend_from_slice(&(CTA_FILTER | NLA_F_NESTED).to_ne_bytes());
        out.extend_from_slice(&8u16.to_ne_bytes());
        out.extend_from_slice(&CTA_FILTER_ORIG_FLAGS.to_ne_bytes());
        out.extend_from_slice(&CTA_FILTER_F_PROTO_NUM.to_ne_bytes());
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// The tuple attributes of one direction of a flow, as the kernel looks entries up by.
pub(super) fn tuple_attributes(protocol: u8, tuple: &FlowTuple) -> Vec<Tuple> {
    vec![
        Tuple::Ip(vec![IPTuple::SourceAddress(tuple.src.ip()), IPTuple::DestinationAddress(tuple.dst.ip())]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(protocol.into()),
            ProtoTuple::SourcePort(tuple.src.port()),
            ProtoTuple::DestinationPort(tuple.dst.port()),
        ]),
    ]
}

/// A request (with acknowledgement) to delete one entry, found by its original tuple and zone, and, when the
/// dump gave it, its id. Always carries the tuple: a delete without one would flush the whole table.
pub fn delete_request(out: &mut Vec<u8>, flow: &Flow, seq: u32) {
    let mut attributes = vec![ConntrackAttribute::CtaTupleOrig(tuple_attributes(flow.protocol, &flow.original))];
    if flow.zone != 0 {
        attributes.push(ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, flow.zone.to_be_bytes().to_vec())));
    }
    if let Some(id) = flow.id {
        attributes.push(ConntrackAttribute::Other(DefaultNla::new(CTA_ID, id.to_be_bytes().to_vec())));
    }
    emit(out, flow.family, NLM_F_REQUEST | NLM_F_ACK, seq, ConntrackMessage::Delete(attributes));
}

/// One message read from the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A conntrack entry of a dump; `None` when it lacks a complete original and reply tuple.
    Entry(Option<Flow>),
    /// The end of a dump; a negative `code` is an errno that interrupted it.
    Done { code: i32 },
    /// The answer to the request with this sequence number: 0 for success, else a negative errno.
    Ack { code: i32 },
    /// Anything else (NOOP, other subsystems, other conntrack message types): ignored.
    Other,
}

/// Iterator over the messages in one receive buffer: (sequence number, reply) or a decoding error. An entry that
/// fails to decode is reported and skipped; a malformed header ends the buffer.
pub struct Replies<'a> {
    buf: &'a [u8],
}

/// The messages in `buf`, as read from the socket.
pub fn replies(buf: &[u8]) -> Replies<'_> {
    Replies { buf }
}

impl Iterator for Replies<'_> {
    type Item = Result<(u32, Reply), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(self.buf[0..4].try_into().expect("4 bytes")) as usize;
        let seq = u32::from_ne_bytes(self.buf[8..12].try_into().expect("4 bytes"));
        if len < NLMSG_HDRLEN || len > self.buf.len() {
            self.buf = &[];
            return Some(Err(DecodeError::from(format!("netlink message length {len} out of bounds"))));
        }
        let message = &self.buf[..len];
        self.buf = &self.buf[len.next_multiple_of(4).min(self.buf.len())..];
        let parsed = match NetlinkMessage::<NetfilterMessage>::deserialize(message) {
            Ok(parsed) => parsed,
            Err(e) => return Some(Err(e)),
        };
        let reply = match parsed.payload {
            NetlinkPayload::Done(done) => Reply::Done { code: done.code },
            NetlinkPayload::Error(error) => Reply::Ack { code: error.raw_code() },
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)),
                ..
            }) => Reply::Entry(flow_from_attributes(&attributes)),
            _ => Reply::Other,
        };
        Some(Ok((seq, reply)))
    }
}

/// A flow from the attributes of one dumped entry.
pub fn flow_from_attributes(attributes: &[ConntrackAttribute]) -> Option<Flow> {
    let (mut original, mut reply, mut zone, mut id) = (None, None, 0, None);
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(tuples) => original = decode_tuple(tuples),
            ConntrackAttribute::CtaTupleReply(tuples) => reply = decode_tuple(tuples),
            ConntrackAttribute::Other(nla) => match nla.kind() & NLA_TYPE_MASK {
                CTA_ZONE => zone = u16::from_be_bytes(nla_value(nla)?),
                CTA_ID => id = Some(u32::from_be_bytes(nla_value(nla)?)),
                _ => {}
            },
            _ => {}
        }
    }
    let (protocol, original) = original?;
    let (_, reply) = reply?;
    Some(Flow { family: IpFamily::of(&original.src.ip()), protocol, original, reply, zone, id })
}

/// A fixed-size attribute value; `None` if it has another size.
fn nla_value<const N: usize>(nla: &DefaultNla) -> Option<[u8; N]> {
    let mut value = [0u8; N];
    if nla.value_len() != N {
        return None;
    }
    nla.emit_value(&mut value);
    Some(value)
}

/// Protocol and addresses of one CTA_TUPLE_*; ports stay 0 for protocols without ports.
fn decode_tuple(tuples: &[Tuple]) -> Option<(u8, FlowTuple)> {
    let (mut src, mut dst, mut protocol): (Option<IpAddr>, Option<IpAddr>, Option<u8>) = (None, None, None);
    let (mut sport, mut dport) = (0, 0);
    for tuple in tuples {
        match tuple {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(parts) => {
                for part in parts {
                    match part {
                        ProtoTuple::Protocol(p) => protocol = Some((*p).into()),
                        ProtoTuple::SourcePort(p) => sport = *p,
                        ProtoTuple::DestinationPort(p) => dport = *p,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let tuple = FlowTuple { src: SocketAddr::new(src?, sport), dst: SocketAddr::new(dst?, dport) };
    Some((protocol?, tuple))
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
