//! One conntrack entry as the cleanup needs it: plain data, decoded at the netlink edge.

use std::fmt;
use std::net::SocketAddr;

use crate::model::IpFamily;

/// IANA number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IANA number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IANA number of SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// One direction of a flow: where packets come from and where they go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// One conntrack entry.
///
/// `original` is the tuple of the first packet as the client sent it (for a service: destination = the service
/// IP and port); `reply` is the tuple the answer is expected with, so after DNAT its source is the endpoint the
/// flow was sent to. Without DNAT the reply source is simply the original destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub family: IpFamily,
    /// IANA protocol number ([`IPPROTO_UDP`], [`IPPROTO_SCTP`], …). Ports are 0 for protocols without ports.
    pub protocol: u8,
    pub original: FlowTuple,
    pub reply: FlowTuple,
    /// Conntrack zone (0 is the default zone); needed to find the entry again when deleting it.
    pub zone: u16,
    /// The kernel's id of the entry (CTA_ID), when the dump gave one. A delete that carries it spares a newer
    /// entry with the same tuple made after the dump (unless the kernel reused the very same memory for it, in
    /// which case the id repeats; deleting that fresh entry only makes its next packet go through the rules).
    pub id: Option<u32>,
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            IPPROTO_TCP => "tcp".to_string(),
            IPPROTO_UDP => "udp".to_string(),
            IPPROTO_SCTP => "sctp".to_string(),
            n => format!("proto {n}"),
        };
        write!(f, "{proto} {} -> {} (reply from {})", self.original.src, self.original.dst, self.reply.src)?;
        if self.zone != 0 {
            write!(f, " zone {}", self.zone)?;
        }
        Ok(())
    }
}
