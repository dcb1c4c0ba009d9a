//! Which conntrack flows are stale: pure, no I/O.
//!
//! The semantics are upstream's (pkg/proxy/conntrack/cleanup.go): a UDP (here also SCTP) flow addressed to a
//! service frontend — cluster IP, external IP or LoadBalancer IP with the service port, or any address with a
//! NodePort — is stale when the address it was actually sent to (the source of its reply tuple) is not a serving
//! endpoint of that service port. That covers both flows to endpoints that went away and flows created while
//! the service had no endpoints (their reply source is the service address itself): unlike TCP, a UDP client
//! keeps sending on its flow forever, so without the delete it would never reach the new endpoints.
//!
//! Three choices, each deliberate:
//! - "Serving" means every endpoint whose `serving` condition is true (plus, defensively, every endpoint the
//!   rules may send to), not only the ones today's traffic policy or topology would pick. Upstream says why:
//!   a change to the service must not break existing flows, so UDP behaves like TCP; a terminating but still
//!   serving pod keeps its flows until it stops serving.
//! - A service port without any serving endpoint is left alone: cutting its flows helps no client (there is
//!   nowhere better to send them) and would turn a momentarily empty endpoint list into an outage. Its flows
//!   are cleaned as soon as endpoints exist.
//! - A flow whose destination is a service IP and port is judged by that service port only, even when its
//!   destination port also happens to be some NodePort. The dataplane decides the same way (service IPs are
//!   matched before NodePorts), and judging it by the NodePort's endpoints would delete a healthy flow on
//!   every sync. Upstream checks both independently; this is the one place we knowingly differ.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::ops::Range;

use super::flow::{Flow, IPPROTO_SCTP, IPPROTO_UDP};
use crate::core::{DesiredState, ServicePort};
use crate::model::{IpFamily, Protocol};

/// What the cleanup thinks of one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not UDP/SCTP, or not addressed to any service frontend: never touched.
    NotService,
    /// Addressed to a service port that has no serving endpoint: left alone (see the module docs).
    NoEndpoints,
    /// Sent to a serving endpoint of its service port: kept.
    Current,
    /// Addressed to a service port but not sent to any of its serving endpoints: to be deleted.
    Stale,
}

/// An address as one integer (IPv4 in the low 32 bits); the family is kept beside it wherever both could meet.
type IpBits = u128;

fn ip_bits(ip: IpAddr) -> IpBits {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => v6.into(),
    }
}

/// A service IP and port: (family, protocol, IP, port).
type FrontendKey = (IpFamily, u8, IpBits, u16);
/// A NodePort: (family, protocol, port). Any destination IP matches, as upstream.
type NodePortKey = (IpFamily, u8, u16);
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Service frontends and their serving endpoint IPs, built once per cleanup so that judging a flow costs two
/// hash lookups and a binary search at most.
#[derive(Debug, Default)]
pub struct StaleIndex {
    /// Service IP and port → the range of `serving` holding its endpoints.
    frontends: FastMap<FrontendKey, Range<usize>>,
    node_ports: FastMap<NodePortKey, Range<usize>>,
    /// Serving endpoint IPs of all service ports, one sorted run per service port, shared by its frontends.
    /// One flat vector instead of a set per port: no allocation per service, and small runs search fastest.
    serving: Vec<IpBits>,
    /// The (family, protocol) pairs that have service ports: only their entries need reading.
    protocols: BTreeSet<(IpFamily, u8)>,
}

impl StaleIndex {
    /// Index the UDP and SCTP service ports of both families.
    pub fn new(desired: &DesiredState) -> Self {
        Self::from_ports(IpFamily::ALL.into_iter().flat_map(|f| desired.family(f).ports.values().map(|p| &**p)))
    }

    /// Index the given service ports (TCP ports are skipped).
    pub fn from_ports<'a>(ports: impl IntoIterator<Item = &'a ServicePort>) -> Self {
        let mut index = StaleIndex::default();
        for port in ports {
            let protocol = match port.protocol() {
                Protocol::Tcp => continue,
                Protocol::Udp => IPPROTO_UDP,
                Protocol::Sctp => IPPROTO_SCTP,
            };
            index.protocols.insert((port.family, protocol));
            let run = index.push_serving(port);
            let ips = std::iter::once(port.cluster_ip).chain(port.external_ips.iter().copied());
            for ip in ips.chain(port.load_balancer_ips.iter().copied()) {
                let key = (port.family, protocol, ip_bits(ip), port.port);
                link(&mut index.frontends, &mut index.serving, key, run.clone());
            }
            if let Some(node_port) = port.node_port {
                link(&mut index.node_ports, &mut index.serving, (port.family, protocol, node_port), run);
            }
        }
        index
    }

    /// Append the endpoint IPs a flow of this port may legitimately be on; returns their run. Upstream compares
    /// IPs only (not ports): a flow to a pod that still serves stays, as a TCP connection would, even if the
    /// target port changed.
    fn push_serving(&mut self, port: &ServicePort) -> Range<usize> {
        let start = self.serving.len();
        let serving = port.endpoints.iter().filter(|e| e.serving).map(|e| ip_bits(e.addr.ip));
        self.serving.extend(serving.chain(port.reachable_endpoints().into_iter().map(|e| ip_bits(e.ip))));
        self.serving[start..].sort_unstable();
        let run_len = dedup_sorted(&mut self.serving[start..]);
        self.serving.truncate(start + run_len);
        start..self.serving.len()
    }

    /// Judge one flow.
    pub fn verdict(&self, flow: &Flow) -> Verdict {
        if flow.protocol != IPPROTO_UDP && flow.protocol != IPPROTO_SCTP {
            return Verdict::NotService;
        }
        let dst = flow.original.dst;
        let run = match self.frontends.get(&(flow.family, flow.protocol, ip_bits(dst.ip()), dst.port())) {
            Some(run) => run,
            None => match self.node_ports.get(&(flow.family, flow.protocol, dst.port())) {
                Some(run) => run,
                None => return Verdict::NotService,
            },
        };
        let serving = &self.serving[run.clone()];
        if serving.is_empty() {
            Verdict::NoEndpoints
        } else if serving.binary_search(&ip_bits(flow.reply.src.ip())).is_ok() {
            Verdict::Current
        } else {
            Verdict::Stale
        }
    }

    /// Whether no UDP or SCTP service port exists: then no flow can be stale and the table need not be read.
    pub fn is_empty(&self) -> bool {
        self.protocols.is_empty()
    }

    /// The L4 protocols (IANA numbers) that have service ports in `family`: the only entries worth reading.
    pub fn protocols(&self, family: IpFamily) -> Vec<u8> {
        self.protocols.iter().filter(|(f, _)| *f == family).map(|(_, p)| *p).collect()
    }
}

/// The flows among `flows` that must be deleted, in their order.
pub fn stale_flows<'a>(desired: &DesiredState, flows: &'a [Flow]) -> Vec<&'a Flow> {
    let index = StaleIndex::new(desired);
    flows.iter().filter(|f| index.verdict(f) == Verdict::Stale).collect()
}

/// Point `key` at `run`; a key two service ports share (a misconfiguration, or a shared LoadBalancer IP with
/// clashing ports) gets a new run with the union of both, so that a flow valid for either is kept.
fn link<K: Hash + Eq>(map: &mut FastMap<K, Range<usize>>, serving: &mut Vec<IpBits>, key: K, run: Range<usize>) {
    match map.entry(key) {
        Entry::Vacant(v) => {
            v.insert(run);
        }
        Entry::Occupied(mut o) => {
            let start = serving.len();
            serving.extend_from_within(o.get().clone());
            serving.extend_from_within(run);
            serving[start..].sort_unstable();
            let len = dedup_sorted(&mut serving[start..]);
            serving.truncate(start + len);
            o.insert(start..serving.len());
        }
    }
}

/// Move the distinct values of a sorted slice to its front; returns how many there are.
fn dedup_sorted(values: &mut [IpBits]) -> usize {
    let mut len = 0;
    for i in 0..values.len() {
        if len == 0 || values[i] != values[len - 1] {
            values[len] = values[i];
            len += 1;
        }
    }
    len
}

/// FxHash-style hashing (one rotate, xor and multiply per word, as rustc's own maps). The keys are service
/// frontends the cluster defines, not entries an outsider can add, so a DoS-resistant hash buys nothing here,
/// while SipHash was most of the run time of a 100k-flow cleanup.
#[derive(Clone, Copy, Debug, Default)]
struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }
    fn write_u16(&mut self, n: u16) {
        self.add(n.into());
    }
    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_u128(&mut self, n: u128) {
        self.add(n as u64);
        self.add((n >> 64) as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        // The multiply leaves the best-mixed bits at the top; hashbrown picks buckets from the bottom.
        self.0.rotate_left(26)
    }
}

#[cfg(test)]
#[path = "stale_tests.rs"]
mod tests;
