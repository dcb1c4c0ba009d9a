//! The NETLINK_NETFILTER socket: sending a batch in one sendmsg, and reading the kernel's answers. A socket
//! belongs to the network namespace of the thread that opened it.

use std::io;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::sys::*;

/// Receive buffer: room for many error reports of a failed batch (each is small: NETLINK_CAP_ACK echoes only
/// the failing message's header).
const RCVBUF: usize = 1 << 20;
/// How long to wait for an answer that the kernel produces synchronously; only a lost reply runs into it.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// A datagram from the kernel: errors and small replies.
const RECV_CHUNK: usize = 64 * 1024;
/// Tries of a send that fails for lack of kernel memory (ENOBUFS) before giving up.
const SEND_TRIES: u32 = 3;

/// One message read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ty: u16,
    pub seq: u32,
    /// Set for NLMSG_ERROR.
    pub error: Option<ErrorReport>,
}

/// An NLMSG_ERROR: errno 0 is an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReport {
    /// The positive errno.
    pub errno: i32,
    /// The kernel's extended-ack text, if any.
    pub text: Option<String>,
    /// Extended ack: the offset of the offending attribute in the failed message (from its nlmsghdr).
    pub offset: Option<u32>,
}

/// What one read returned.
#[derive(Debug)]
pub enum Received {
    Replies(Vec<Reply>),
    /// Nothing (non-blocking read).
    Empty,
    /// The receive buffer overflowed: some messages were dropped by the kernel.
    Lost,
}

/// An nfnetlink socket.
pub struct NfSocket {
    sock: Socket,
    sndbuf: usize,
    buf: Vec<u8>,
}

impl NfSocket {
    pub fn open() -> io::Result<NfSocket> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Errors echo only the failing message's header (its sequence number is all we need) and may carry a
        // text from the kernel. Both are refinements: older kernels without them still work.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        if setsockopt(&sock, sockopt::RcvBufForce, &RCVBUF).is_err() {
            let _ = setsockopt(&sock, sockopt::RcvBuf, &RCVBUF);
        }
        let timeout = TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0);
        setsockopt(&sock, sockopt::ReceiveTimeout, &timeout).map_err(io::Error::from)?;
        Ok(NfSocket { sock, sndbuf: 0, buf: Vec::with_capacity(RECV_CHUNK) })
    }

    /// Send `bytes` as one datagram. The kernel refuses a datagram larger than the socket's send buffer, so the
    /// buffer grows to the batch (SO_SNDBUFFORCE, as root; else SO_SNDBUF within net.core.wmem_max).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        // The kernel keeps 32 bytes of the buffer for itself and doubles what it is given.
        let want = bytes.len() + 4096;
        if want > self.sndbuf {
            let forced = setsockopt(&self.sock, sockopt::SndBufForce, &want);
            if forced.is_err() {
                setsockopt(&self.sock, sockopt::SndBuf, &want).map_err(io::Error::from)?;
            }
            self.sndbuf = want;
        }
        let mut tries = 0;
        loop {
            match self.sock.send(bytes, 0) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => return Err(io::Error::other(format!("short netlink send: {n} of {} bytes", bytes.len()))),
                // Interrupted before the kernel took the datagram: nothing was processed, send it again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && tries + 1 < SEND_TRIES => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10 * u64::from(tries)));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Read one datagram (waiting at most the receive timeout, or not at all when `wait` is false).
    pub fn recv(&mut self, wait: bool) -> io::Result<Received> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, flags) {
                Ok(_) => return Ok(Received::Replies(parse(&self.buf))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Received::Lost),
                Err(e) if !wait && e.kind() == io::ErrorKind::WouldBlock => return Ok(Received::Empty),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel"));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The messages of one datagram. A malformed tail is ignored (the kernel does not send one).
pub fn parse(b: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= b.len() {
        let len = u32_at(b, at) as usize;
        if len < NLMSG_HDRLEN || at + len > b.len() {
            break;
        }
        let msg = &b[at..at + len];
        let ty = u16_at(msg, 4);
        let flags = u16_at(msg, 6);
        let seq = u32_at(msg, 8);
        let error = (ty == NLMSG_ERROR && msg.len() >= NLMSG_HDRLEN + 4).then(|| {
            let mut report = ErrorReport { errno: -(u32_at(msg, NLMSG_HDRLEN) as i32), text: None, offset: None };
            ext_ack(msg, flags, &mut report);
            report
        });
        out.push(Reply { ty, seq, error });
        at += len.next_multiple_of(4);
    }
    out
}

/// The extended-ack attributes of an error: the kernel's text and the offending attribute's offset.
fn ext_ack(msg: &[u8], flags: u16, report: &mut ErrorReport) {
    if flags & NLM_F_ACK_TLVS == 0 || msg.len() < NLMSG_HDRLEN + 8 {
        return;
    }
    // error code, then the echoed header (and, unless capped, the echoed payload), then attributes.
    let echoed_len = u32_at(msg, NLMSG_HDRLEN + 4) as usize;
    let echoed = if flags & NLM_F_CAPPED != 0 { NLMSG_HDRLEN } else { echoed_len.next_multiple_of(4) };
    let mut at = NLMSG_HDRLEN + 4 + echoed;
    while at + 4 <= msg.len() {
        let len = usize::from(u16_at(msg, at));
        let ty = u16_at(msg, at + 2) & NLA_TYPE_MASK;
        if len < 4 || at + len > msg.len() {
            break;
        }
        let value = &msg[at + 4..at + len];
        match ty {
            NLMSGERR_ATTR_MSG => {
                let text = value.split(|c| *c == 0).next().unwrap_or_default();
                report.text = Some(String::from_utf8_lossy(text).into_owned());
            }
            NLMSGERR_ATTR_OFFS if value.len() >= 4 => report.offset = Some(u32_at(value, 0)),
            _ => {}
        }
        at += len.next_multiple_of(4);
    }
}
