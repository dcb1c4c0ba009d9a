//! One NETLINK_NETFILTER socket: dump the conntrack table of a family, delete entries in batches.

use std::io;
use std::os::unix::fs::MetadataExt;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::ConntrackError;
use super::codec::{self, Reply};
use super::flow::Flow;
use crate::model::IpFamily;

/// Receive buffer for one recvmsg. The kernel fills dump messages up to 32 KiB; twice that leaves room.
const RECV_BUF: usize = 64 * 1024;
/// Socket receive buffer asked for (the kernel caps it at net.core.rmem_max).
const SO_RCVBUF: usize = 4 * 1024 * 1024;
/// Delete requests per sendmsg. Each one is answered by its own acknowledgement, queued on our socket before
/// sendmsg returns; this many fit in the default receive buffer with room to spare, so none is dropped.
const DELETE_BATCH: usize = 128;
/// Rounds of re-sending deletes whose acknowledgement never came (dropped for lack of buffer space).
const DELETE_ROUNDS: usize = 3;

/// Identity of a network namespace: device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    /// The network namespace of the calling thread (not of the process: a namespace belongs to a thread).
    pub fn current() -> Result<NetnsId, ConntrackError> {
        let meta = std::fs::metadata("/proc/thread-self/ns/net")
            .map_err(|source| ConntrackError::Io { op: "reading the thread's network namespace", source })?;
        Ok(NetnsId { dev: meta.dev(), ino: meta.ino() })
    }
}

/// What a dump read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Entries that could not be decoded (skipped).
    pub undecodable: usize,
}

/// What a batch of deletes did.
#[derive(Debug, Default)]
pub struct DeleteStats {
    pub deleted: usize,
    /// Entries the kernel no longer had (expired or deleted by someone else): fine.
    pub already_gone: usize,
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<io::Error>,
}

/// A conntrack netlink socket, bound to the network namespace of the thread that opened it.
pub struct ConntrackSocket {
    socket: Socket,
    netns: NetnsId,
    seq: u32,
    buf: Vec<u8>,
    /// The kernel accepts CTA_FILTER dumps; cleared (and unfiltered dumps used) after it refuses one.
    kernel_filter: bool,
}

impl ConntrackSocket {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<ConntrackSocket, ConntrackError> {
        let netns = NetnsId::current()?;
        let open = |op: &'static str| move |source| ConntrackError::Open { op, source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(open("socket(NETLINK_NETFILTER)"))?;
        socket.bind_auto().map_err(open("bind"))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(open("connect"))?;
        // Errors then echo only the request's header, not the whole request: smaller acknowledgements.
        socket.set_cap_ack(true).map_err(open("NETLINK_CAP_ACK"))?;
        socket.set_rx_buf_sz(SO_RCVBUF).map_err(open("SO_RCVBUF"))?;
        Ok(ConntrackSocket { socket, netns, seq: 0, buf: vec![0; RECV_BUF], kernel_filter: true })
    }

    /// Read whole tables and filter here, as on a kernel that refuses CTA_FILTER.
    #[cfg(test)]
    pub fn without_kernel_filter(mut self) -> Self {
        self.kernel_filter = false;
        self
    }

    /// The network namespace the socket talks to.
    pub fn netns(&self) -> NetnsId {
        self.netns
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, request: &[u8], op: &'static str) -> Result<(), ConntrackError> {
        let sent = self.socket.send(request, 0).map_err(|source| ConntrackError::Io { op, source })?;
        if sent != request.len() {
            return Err(ConntrackError::Io {
                op,
                source: io::Error::other(format!("sent {sent} of {} bytes", request.len())),
            });
        }
        Ok(())
    }

    /// Read one datagram into `self.buf`; returns its length, or `None` when nothing is queued and `wait` is
    /// false.
    fn recv(&mut self, wait: bool, op: &'static str) -> Result<Option<usize>, ConntrackError> {
        let flags = libc::MSG_TRUNC | if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            let mut target = &mut self.buf[..];
            match self.socket.recv(&mut target, flags) {
                Ok(n) if n > self.buf.len() => {
                    return Err(ConntrackError::Decode(format!("{op}: a {n}-byte message did not fit the buffer")));
                }
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !wait => return Ok(None),
                Err(source) => return Err(ConntrackError::Io { op, source }),
            }
        }
    }

    /// Append the entries of `family` whose L4 protocol is one of `protocols` to `out`.
    pub fn dump(
        &mut self,
        family: IpFamily,
        protocols: &[u8],
        out: &mut Vec<Flow>,
    ) -> Result<DumpStats, ConntrackError> {
        let mut stats = DumpStats::default();
        let before = out.len();
        if self.kernel_filter {
            for &protocol in protocols {
                match self.dump_one(family, Some(protocol), protocols, out, &mut stats) {
                    // A kernel that knows CTA_FILTER but refuses it: read everything and filter here instead.
                    Err(ConntrackError::Kernel { source, .. })
                        if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
                    {
                        tracing::info!("kernel refused a filtered conntrack dump ({source}); filtering in userspace");
                        self.kernel_filter = false;
                        out.truncate(before); // what earlier protocols read comes again below
                        stats = DumpStats::default();
                        break;
                    }
                    result => result?,
                }
            }
            if self.kernel_filter {
                return Ok(stats);
            }
        }
        self.dump_one(family, None, protocols, out, &mut stats)?;
        Ok(stats)
    }

    fn dump_one(
        &mut self,
        family: IpFamily,
        filter: Option<u8>,
        protocols: &[u8],
        out: &mut Vec<Flow>,
        stats: &mut DumpStats,
    ) -> Result<(), ConntrackError> {
        const OP: &str = "dumping conntrack entries";
        let seq = self.next_seq();
        let mut request = Vec::new();
        codec::dump_request(&mut request, family, filter, seq);
        self.send(&request, OP)?;
        let wanted = |protocol: u8| filter.map_or(protocols.contains(&protocol), |only| only == protocol);
        loop {
            let Some(n) = self.recv(true, OP)? else { continue };
            for reply in codec::replies(&self.buf[..n]) {
                let (reply_seq, reply) = match reply {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!("skipping a conntrack entry that does not decode: {e}");
                        stats.undecodable += 1;
                        continue;
                    }
                };
                if reply_seq != seq {
                    continue; // left over from an earlier request
                }
                match reply {
                    // Check here too: a kernel that ignores CTA_FILTER (before 5.8 it is silently skipped)
                    // sends every entry of the family.
                    Reply::Entry(Some(flow)) if flow.family == family && wanted(flow.protocol) => out.push(flow),
                    Reply::Entry(Some(_)) | Reply::Other => {}
                    Reply::Entry(None) => stats.undecodable += 1,
                    Reply::Done { code } if code < 0 => return Err(kernel(OP, code)),
                    Reply::Done { .. } => return Ok(()),
                    Reply::Ack { code } if code < 0 => return Err(kernel(OP, code)),
                    Reply::Ack { .. } => {}
                }
            }
        }
    }

    /// Delete these entries, [`DELETE_BATCH`] requests per sendmsg. An entry already gone counts as done.
    pub fn delete(&mut self, flows: &[&Flow]) -> Result<DeleteStats, ConntrackError> {
        let mut stats = DeleteStats::default();
        for batch in flows.chunks(DELETE_BATCH) {
            let mut pending: Vec<&Flow> = batch.to_vec();
            for _ in 0..DELETE_ROUNDS {
                pending = self.delete_batch(&pending, &mut stats)?;
                if pending.is_empty() {
                    break;
                }
            }
            if !pending.is_empty() {
                stats.failed += pending.len();
                stats.first_error.get_or_insert_with(|| io::Error::other("no acknowledgement from the kernel"));
            }
        }
        Ok(stats)
    }

    /// Send one batch; returns the flows whose acknowledgement did not come (to be sent again).
    fn delete_batch<'f>(
        &mut self,
        batch: &[&'f Flow],
        stats: &mut DeleteStats,
    ) -> Result<Vec<&'f Flow>, ConntrackError> {
        const OP: &str = "deleting conntrack entries";
        let first = self.seq.wrapping_add(1);
        let mut request = Vec::with_capacity(batch.len() * 96);
        for flow in batch {
            let seq = self.next_seq();
            codec::delete_request(&mut request, flow, seq);
        }
        self.send(&request, OP)?;
        let mut answered = vec![false; batch.len()];
        let mut left = batch.len();
        // The kernel handles the whole batch inside sendmsg, so every acknowledgement is queued by now: read
        // without waiting, and whatever is missing was dropped (socket buffer full) and is sent again.
        while left > 0 {
            let n = match self.recv(false, OP) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(ConntrackError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(e),
            };
            for reply in codec::replies(&self.buf[..n]) {
                let Ok((seq, Reply::Ack { code })) = reply else { continue };
                let i = seq.wrapping_sub(first) as usize;
                if i >= batch.len() || answered[i] {
                    continue;
                }
                answered[i] = true;
                left -= 1;
                match code {
                    0 => stats.deleted += 1,
                    c if c == -libc::ENOENT => stats.already_gone += 1,
                    c => {
                        stats.failed += 1;
                        tracing::debug!(
                            "deleting conntrack entry {} failed: {}",
                            batch[i],
                            io::Error::from_raw_os_error(-c)
                        );
                        stats.first_error.get_or_insert_with(|| io::Error::from_raw_os_error(-c));
                    }
                }
            }
        }
        Ok(batch.iter().zip(answered).filter(|(_, done)| !done).map(|(f, _)| *f).collect())
    }
}

fn kernel(op: &'static str, code: i32) -> ConntrackError {
    ConntrackError::Kernel { op, source: io::Error::from_raw_os_error(-code) }
}
