//! Manifests for N services × M endpoints, 10% of them NodePorts, written 100 services to a file.

use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use kube_proxy_rs::lab::manifests::{endpoint, endpoint_slice, service, to_yaml};

/// Cluster IP of bench service `i` (10.100.0.0/14: room for 262k).
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    let n = i as u32 + 1;
    Ipv4Addr::new(10, 100 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// Endpoint `j` of service `i`: addresses that exist nowhere (only rule programming is measured for them).
fn endpoint_ip(i: usize, j: usize) -> Ipv4Addr {
    let n = (i * 16 + j) as u32;
    Ipv4Addr::new(10, 128 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// One service with its slice, as YAML documents.
pub fn service_docs(i: usize, endpoints: usize, node: &str, out: &mut String) {
    let name = format!("svc-{i}");
    let mut svc = service("bench", &name, &[cluster_ip(i).into()]).port("http", "TCP", 80, 8080);
    if i.is_multiple_of(10) {
        svc = svc.node_port(30000 + (i / 10 % 2700) as u16);
    }
    let eps = (0..endpoints)
        .map(|j| endpoint(endpoint_ip(i, j).into(), if j % 2 == 0 { node } else { "elsewhere" }))
        .collect();
    let slice = endpoint_slice("bench", &format!("{name}-abcde"), &name, false, &[("http", "TCP", 8080)], eps);
    let _ = write!(out, "{}---\n{}---\n", svc.yaml(), to_yaml(&slice));
}

/// The file that holds the services from `start` on.
pub fn file_name(start: usize) -> std::ffi::OsString {
    format!("bench-{start:06}.yaml").into()
}

/// Write services `range` into `dir`, 100 to a file. Returns the bytes written.
pub fn write_services(dir: &Path, range: std::ops::Range<usize>, endpoints: usize, node: &str) -> usize {
    let mut total = 0;
    let mut start = range.start;
    while start < range.end {
        let end = (start + 100).min(range.end);
        let mut text = String::new();
        for i in start..end {
            service_docs(i, endpoints, node, &mut text);
        }
        total += text.len();
        let tmp = dir.join(format!(".bench-{start}.tmp"));
        std::fs::write(&tmp, text).expect("write manifests");
        std::fs::rename(&tmp, dir.join(file_name(start))).expect("rename manifests");
        start = end;
    }
    total
}
