//! Reading the proxy from outside: its metrics, its memory, and the connection rate through a ClusterIP.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube_proxy_rs::lab::{Netns, http};

/// A metric's value from the Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub struct Metrics {
    pub last_sync: f64,
    pub full_count: f64,
    pub full_sum: f64,
    pub partial_count: f64,
    pub partial_sum: f64,
}

pub fn metrics(node: &Netns) -> Option<Metrics> {
    let text = http::get(node, "127.0.0.1:10249".parse().ok()?, "/metrics").ok()?.body;
    let m = |n| metric(&text, n);
    Some(Metrics {
        last_sync: m("kubeproxy_sync_proxy_rules_last_timestamp_seconds")?,
        full_count: m("kubeproxy_sync_full_proxy_rules_duration_seconds_count")?,
        full_sum: m("kubeproxy_sync_full_proxy_rules_duration_seconds_sum")?,
        partial_count: m("kubeproxy_sync_partial_proxy_rules_duration_seconds_count")?,
        partial_sum: m("kubeproxy_sync_partial_proxy_rules_duration_seconds_sum")?,
    })
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// New TCP connections per second to `target` from inside `netns`: `workers` threads each connect, read the
/// greeting line and close, for `seconds`.
pub fn connection_rate(netns: &Netns, target: SocketAddr, workers: usize, seconds: u64) -> f64 {
    let path = format!("/var/run/netns/{}", netns.name());
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (path, done, failed) = (path.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                let ns = std::fs::File::open(&path).expect("netns");
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                while Instant::now() < end {
                    let ok = TcpStream::connect_timeout(&target, Duration::from_secs(1)).ok().and_then(|s| {
                        // Close with a reset: no TIME_WAIT, so the client's ports never run out (that, not the
                        // proxy, would otherwise bound the rate after a few seconds).
                        let _ = nix::sys::socket::setsockopt(
                            &s,
                            nix::sys::socket::sockopt::Linger,
                            &libc::linger { l_onoff: 1, l_linger: 0 },
                        );
                        let mut line = String::new();
                        BufReader::new(s).read_line(&mut line).ok().filter(|n| *n > 0)
                    });
                    match ok {
                        Some(_) => done.fetch_add(1, Ordering::Relaxed),
                        None => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let start = Instant::now();
    for t in threads {
        let _ = t.join();
    }
    let failures = failed.load(Ordering::Relaxed);
    if failures > 0 {
        eprintln!("  ({failures} connections failed)");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// CPU time (user + system, the reaped children's included) of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3; utime..cstime are fields 14..17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace().skip(11).take(4).filter_map(|v| v.parse::<u64>().ok()).sum()
}

/// CPU time of a process so far, (user, system) in seconds, its reaped children's included. The proxy's system
/// time is mostly the kernel checking and committing its netlink transactions (and reading the manifests).
pub fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(4).filter_map(|v| v.parse().ok()).collect();
    let tick = 100.0; // /proc counts in USER_HZ, 100 on Linux whatever the kernel's HZ
    match f[..] {
        [u, s, cu, cs] => ((u + cu) as f64 / tick, (s + cs) as f64 / tick),
        _ => (f64::NAN, f64::NAN),
    }
}

/// Wait until the process has used at most one clock tick of CPU in 500 ms (so that work after a sync, such as
/// removing other modes' leftovers, does not share the CPU with a measurement). Samples at least once; returns
/// false when `limit` has passed.
pub fn wait_idle(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    let mut last = cpu_ticks(pid);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = cpu_ticks(pid);
        if now.saturating_sub(last) <= 1 {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        last = now;
    }
}

/// Entries in the conntrack table of a namespace.
pub fn conntrack_count(netns: &Netns) -> u64 {
    netns.run(&["conntrack", "-C"]).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Empty the conntrack table of each namespace (both families), so that measurements start from the same table.
pub fn conntrack_flush(namespaces: &[&Netns]) {
    for ns in namespaces {
        for family in ["ipv4", "ipv6"] {
            // Exit status 1 with "0 flow entries" is not an error worth reporting; the count below tells.
            let _ = ns.exec(&["conntrack", "-F", "-f", family]);
        }
    }
}

/// Wait until `f` holds, polling; returns how long it took.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}
