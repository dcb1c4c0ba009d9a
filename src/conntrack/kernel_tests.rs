//! The cleanup against the real kernel, each test in a fresh network namespace of its own thread (conntrack
//! tables are per namespace, so nothing here touches the machine's). Entries are made with the `conntrack` CLI
//! (tests only; the product never runs it) or, for volume, with netlink create requests.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Instant;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use super::socket::ConntrackSocket;
use super::*;
use crate::core::{Change, ClusterState};
use crate::model::Protocol::{Sctp, Tcp, Udp};
use crate::model::fixtures::*;
use crate::model::{EndpointSlice, Service};

/// Run `test` on a thread moved into a fresh network namespace (it vanishes with the thread).
fn in_fresh_netns(name: &str, test: impl FnOnce() + Send + 'static) {
    if !crate::lab::root_or_skip(name) {
        return;
    }
    let handle = std::thread::spawn(move || {
        crate::testutil::enter_new_netns();
        test();
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

fn conntrack(args: &[&str]) -> String {
    let out = Command::new("conntrack").args(args).output().expect("the conntrack CLI (scripts/install-deps.sh)");
    assert!(out.status.success(), "conntrack {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Insert an entry: `proto` from `src` to `dst`, answered from `reply_src` (where it was DNATed to).
fn insert(proto: &str, src: &str, dst: &str, reply_src: &str, extra: &[&str]) {
    let [src, sport] = split(src);
    let [dst, dport] = split(dst);
    let [rsrc, rport] = split(reply_src);
    let mut args = vec!["-I", "-p", proto, "-s", src, "-d", dst, "--sport", sport, "--dport", dport];
    args.extend(["-r", rsrc, "-q", src, "--reply-port-src", rport, "--reply-port-dst", sport, "-t", "300"]);
    args.extend(extra);
    if proto == "sctp" {
        args.extend(["--state", "ESTABLISHED", "--orig-vtag", "1", "--reply-vtag", "2"]);
    } else if proto == "tcp" {
        args.extend(["--state", "ESTABLISHED"]);
    }
    conntrack(&args);
}

/// "10.0.0.1:53" or "[fd00::1]:53" → ["10.0.0.1", "53"].
fn split(addr: &str) -> [&str; 2] {
    let (ip, port) = addr.rsplit_once(':').unwrap();
    [ip.trim_start_matches('[').trim_end_matches(']'), port]
}

/// What `conntrack -L` shows, reduced to "proto orig-dst reply-src" per entry.
fn listed(family: &str) -> BTreeSet<String> {
    conntrack(&["-L", "-f", family])
        .lines()
        .map(|line| {
            let field = |key: &str, nth: usize| {
                line.split_whitespace().filter_map(|w| w.strip_prefix(key)).nth(nth).unwrap_or("?").to_string()
            };
            let proto = line.split_whitespace().next().unwrap_or("?");
            format!(
                "{proto} {}:{} <- {}:{}",
                field("dst=", 0),
                field("dport=", 0),
                field("src=", 1),
                field("sport=", 1)
            )
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn desired(services: &[Service], slices: &[EndpointSlice]) -> DesiredState {
    let mut st = ClusterState::new("node-a");
    for s in services {
        st.apply(Change::Upsert(svc_obj(s.clone())));
    }
    for s in slices {
        st.apply(Change::Upsert(slice_obj(s.clone())));
    }
    st.refresh();
    st.desired().clone()
}

/// dns (UDP 53 → 5353, NodePort 30053), diameter (SCTP 3868) and web (TCP 80 → 8080), each with one endpoint.
fn cluster(dns_ip: &str, sctp_ip: &str, web_ip: &str, endpoint_ip: &str) -> DesiredState {
    let mut dns = service("ns", "dns", dns_ip, &[("dns", Udp, 53)]);
    dns.ports[0].node_port = Some(30053);
    let sctp = service("ns", "diameter", sctp_ip, &[("diameter", Sctp, 3868)]);
    let web = service("ns", "web", web_ip, &[("http", Tcp, 80)]);
    let slices = [
        slice(&dns, "dns-1", &[("dns", Udp, 5353)], vec![endpoint(endpoint_ip, "node-a")]),
        slice(&sctp, "diameter-1", &[("diameter", Sctp, 3868)], vec![endpoint(endpoint_ip, "node-a")]),
        slice(&web, "web-1", &[("http", Tcp, 8080)], vec![endpoint(endpoint_ip, "node-a")]),
    ];
    desired(&[dns, sctp, web], &slices)
}

#[test]
fn ipv4_exactly_the_stale_udp_and_sctp_entries_are_deleted() {
    in_fresh_netns("ipv4_exactly_the_stale_udp_and_sctp_entries_are_deleted", || {
        let d = cluster("10.96.0.10", "10.96.0.12", "10.96.0.11", "10.244.1.2");
        // Stale: a removed endpoint, a flow made while there were no endpoints, a NodePort flow to a removed
        // endpoint, an SCTP flow to a removed endpoint, and a stale flow in conntrack zone 7.
        insert("udp", "10.244.9.9:40001", "10.96.0.10:53", "10.244.7.7:5353", &[]);
        insert("udp", "10.244.9.9:40002", "10.96.0.10:53", "10.96.0.10:53", &[]);
        insert("udp", "203.0.113.5:40003", "192.168.0.10:30053", "10.244.7.7:5353", &[]);
        insert("sctp", "10.244.9.9:40004", "10.96.0.12:3868", "10.244.7.7:3868", &[]);
        insert("udp", "10.244.9.9:40005", "10.96.0.10:53", "10.244.7.7:5353", &["-w", "7"]);
        // Kept: current endpoints, TCP, and traffic to no service.
        insert("udp", "10.244.9.9:40011", "10.96.0.10:53", "10.244.1.2:5353", &[]);
        insert("udp", "203.0.113.5:40012", "192.168.0.10:30053", "10.244.1.2:5353", &[]);
        insert("sctp", "10.244.9.9:40013", "10.96.0.12:3868", "10.244.1.2:3868", &[]);
        insert("tcp", "10.244.9.9:40014", "10.96.0.11:80", "10.244.7.7:8080", &[]);
        insert("udp", "10.244.9.9:40015", "8.8.8.8:53", "8.8.8.8:53", &[]);

        let mut cleaner = ConntrackCleaner::new().expect("conntrack netlink");
        let report = cleaner.reconcile(&d).expect("reconcile");
        assert_eq!(report, CleanupReport { examined: 9, deleted: 5, already_gone: 0, undecodable: 0 }, "TCP not read");
        assert_eq!(
            listed("ipv4"),
            set(&[
                "udp 10.96.0.10:53 <- 10.244.1.2:5353",
                "udp 192.168.0.10:30053 <- 10.244.1.2:5353",
                "sctp 10.96.0.12:3868 <- 10.244.1.2:3868",
                "tcp 10.96.0.11:80 <- 10.244.7.7:8080",
                "udp 8.8.8.8:53 <- 8.8.8.8:53",
            ])
        );
        // Our own dump agrees, and a second pass has nothing left to do.
        let mut socket = ConntrackSocket::open().unwrap();
        let mut flows = Vec::new();
        socket.dump(IpFamily::V4, &[IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_TCP], &mut flows).unwrap();
        assert_eq!(flows.len(), 5);
        assert!(flows.iter().all(|f| StaleIndex::new(&d).verdict(f) != Verdict::Stale), "{flows:?}");
        let again = cleaner.reconcile(&d).unwrap();
        assert_eq!(again, CleanupReport { examined: 4, ..CleanupReport::default() });
        // Filtering in userspace (kernels without CTA_FILTER) reads the same entries.
        let mut unfiltered = Vec::new();
        let mut socket = ConntrackSocket::open().unwrap().without_kernel_filter();
        socket.dump(IpFamily::V4, &[IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_TCP], &mut unfiltered).unwrap();
        let key = |f: &Flow| (f.protocol, f.original.src, f.original.dst);
        flows.sort_by_key(key);
        unfiltered.sort_by_key(key);
        assert_eq!(unfiltered, flows);
        unfiltered.clear();
        socket.dump(IpFamily::V4, &[IPPROTO_SCTP], &mut unfiltered).unwrap();
        assert_eq!(unfiltered.len(), 1, "{unfiltered:?}");
    });
}

#[test]
fn ipv6_exactly_the_stale_udp_entries_are_deleted() {
    in_fresh_netns("ipv6_exactly_the_stale_udp_entries_are_deleted", || {
        let d = cluster("fd00:96::10", "fd00:96::12", "fd00:96::11", "fd00:244::2");
        insert("udp", "[fd00:244::9]:40001", "[fd00:96::10]:53", "[fd00:244::7]:5353", &[]);
        insert("udp", "[fd00:244::9]:40002", "[fd00:96::10]:53", "[fd00:96::10]:53", &[]);
        insert("udp", "[2001:db8::5]:40003", "[2001:db8::1]:30053", "[fd00:244::7]:5353", &[]);
        insert("udp", "[fd00:244::9]:40011", "[fd00:96::10]:53", "[fd00:244::2]:5353", &[]);
        insert("tcp", "[fd00:244::9]:40014", "[fd00:96::11]:80", "[fd00:244::7]:8080", &[]);
        insert("udp", "[fd00:244::9]:40015", "[2001:4860::8888]:53", "[2001:4860::8888]:53", &[]);
        // An IPv4 entry that would be stale for an IPv4 service of the same shape: there is none, so it stays.
        insert("udp", "10.244.9.9:40001", "10.96.0.10:53", "10.244.7.7:5353", &[]);

        let report = ConntrackCleaner::new().unwrap().reconcile(&d).unwrap();
        assert_eq!(report, CleanupReport { examined: 5, deleted: 3, already_gone: 0, undecodable: 0 });
        assert_eq!(
            listed("ipv6"),
            set(&[
                "udp fd00:96::10:53 <- fd00:244::2:5353",
                "tcp fd00:96::11:80 <- fd00:244::7:8080",
                "udp 2001:4860::8888:53 <- 2001:4860::8888:53",
            ])
        );
        assert_eq!(listed("ipv4"), set(&["udp 10.96.0.10:53 <- 10.244.7.7:5353"]));
    });
}

#[test]
fn deleting_an_entry_that_is_already_gone_counts_as_done() {
    in_fresh_netns("deleting_an_entry_that_is_already_gone_counts_as_done", || {
        insert("udp", "10.244.9.9:40001", "10.96.0.10:53", "10.244.7.7:5353", &[]);
        let mut socket = ConntrackSocket::open().unwrap();
        let mut flows = Vec::new();
        socket.dump(IpFamily::V4, &[IPPROTO_UDP], &mut flows).unwrap();
        assert_eq!(flows.len(), 1);
        conntrack(&["-F"]);
        let stats = socket.delete(&[&flows[0]]).unwrap();
        assert_eq!((stats.deleted, stats.already_gone, stats.failed), (0, 1, 0));
        // Another entry with the same tuple but another id is not the dumped one: it survives.
        insert("udp", "10.244.9.9:40001", "10.96.0.10:53", "10.244.7.7:5353", &[]);
        let other_id = Flow { id: flows[0].id.map(|id| id ^ 1), ..flows[0] };
        let stats = socket.delete(&[&other_id]).unwrap();
        assert_eq!((stats.deleted, stats.already_gone), (0, 1));
        assert_eq!(listed("ipv4").len(), 1);
    });
}

#[test]
fn the_cleaner_follows_the_calling_threads_network_namespace() {
    in_fresh_netns("the_cleaner_follows_the_calling_threads_network_namespace", || {
        let d = cluster("10.96.0.10", "10.96.0.12", "10.96.0.11", "10.244.1.2");
        let first = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        insert("udp", "10.244.9.9:40001", "10.96.0.10:53", "10.244.7.7:5353", &[]);
        let mut cleaner = ConntrackCleaner::new().unwrap();
        // Move to a second namespace: the cleaner must work there, not in the one it was created in.
        crate::testutil::enter_new_netns();
        insert("udp", "10.244.9.9:40002", "10.96.0.10:53", "10.244.7.7:5353", &[]);
        assert_eq!(cleaner.reconcile(&d).unwrap().deleted, 1);
        assert!(listed("ipv4").is_empty());
        nix::sched::setns(first.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        assert_eq!(listed("ipv4").len(), 1, "the first namespace was left alone");
        assert_eq!(cleaner.reconcile(&d).unwrap().deleted, 1);
        assert!(listed("ipv4").is_empty());
    });
}

/// Create `flows` through netlink, `BATCH` per sendmsg (the CLI would take a process per entry).
fn create_many(flows: &[Flow]) {
    const BATCH: usize = 50;
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER).unwrap();
    socket.bind_auto().unwrap();
    socket.connect(&netlink_sys::SocketAddr::new(0, 0)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    for batch in flows.chunks(BATCH) {
        let mut request = Vec::new();
        for flow in batch {
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
            let attributes = vec![
                ConntrackAttribute::CtaTupleOrig(codec::tuple_attributes(flow.protocol, &flow.original)),
                ConntrackAttribute::CtaTupleReply(codec::tuple_attributes(flow.protocol, &flow.reply)),
                ConntrackAttribute::CtaTimeout(600),
            ];
            let inner = NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
                ConntrackMessage::New(attributes),
            );
            let mut message = NetlinkMessage::new(header, NetlinkPayload::from(inner));
            message.finalize();
            let start = request.len();
            request.resize(start + message.buffer_len(), 0);
            message.serialize(&mut request[start..]);
        }
        socket.send(&request, 0).unwrap();
        let mut acks = 0;
        while acks < batch.len() {
            let n = socket.recv(&mut &mut buf[..], 0).unwrap();
            for reply in codec::replies(&buf[..n]) {
                if let Ok((_, codec::Reply::Ack { code })) = reply {
                    assert_eq!(code, 0, "creating a conntrack entry");
                    acks += 1;
                }
            }
        }
    }
}

/// 100k UDP entries to 1k services, half of them stale: batching, ack accounting and the time it takes.
#[test]
fn a_hundred_thousand_entries_are_cleaned_in_one_pass() {
    in_fresh_netns("a_hundred_thousand_entries_are_cleaned_in_one_pass", || {
        const SERVICES: u32 = 1000;
        const FLOWS: u32 = 100_000;
        let services: Vec<Service> = (0..SERVICES)
            .map(|i| service("ns", &format!("s{i}"), &format!("10.96.{}.{}", i / 256, i % 256), &[("dns", Udp, 53)]))
            .collect();
        let slices: Vec<EndpointSlice> = services
            .iter()
            .enumerate()
            .map(|(i, svc)| {
                let ep = endpoint(&format!("10.244.{}.{}", i / 256, i % 256), "node-a");
                slice(svc, &format!("{}-1", svc.key.name), &[("dns", Udp, 5353)], vec![ep])
            })
            .collect();
        let d = desired(&services, &slices);
        let flows: Vec<Flow> = (0..FLOWS)
            .map(|n| {
                let i = n % SERVICES;
                let client = std::net::SocketAddr::from(([10, 1, (n / 60_000) as u8, 1], 1024 + (n % 60_000) as u16));
                let dst = std::net::SocketAddr::from(([10, 96, (i / 256) as u8, (i % 256) as u8], 53));
                // Even flows on the current endpoint, odd ones on a removed one.
                let ep = if n % 2 == 0 { [10, 244, (i / 256) as u8, (i % 256) as u8] } else { [10, 250, 0, 1] };
                let reply_src = std::net::SocketAddr::from((ep, 5353));
                Flow {
                    family: IpFamily::V4,
                    protocol: IPPROTO_UDP,
                    original: FlowTuple { src: client, dst },
                    reply: FlowTuple { src: reply_src, dst: client },
                    zone: 0,
                    id: None,
                }
            })
            .collect();
        let start = Instant::now();
        create_many(&flows);
        let created = start.elapsed();
        let mut cleaner = ConntrackCleaner::new().unwrap();
        let start = Instant::now();
        let report = cleaner.reconcile(&d).unwrap();
        let first = start.elapsed();
        let start = Instant::now();
        let again = cleaner.reconcile(&d).unwrap();
        let second = start.elapsed();
        println!(
            "conntrack: created {FLOWS} entries in {created:?}; reconcile deleted {} of {} in {first:?}; \
             a pass with nothing stale over {} took {second:?}",
            report.deleted, report.examined, again.examined
        );
        assert_eq!(
            report,
            CleanupReport { examined: FLOWS as usize, deleted: FLOWS as usize / 2, ..Default::default() }
        );
        assert_eq!(again, CleanupReport { examined: FLOWS as usize / 2, ..Default::default() });
    });
}
