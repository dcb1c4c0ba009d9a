//! A minimal HTTP/1.0 GET made from inside a lab namespace, to read the proxy's health and metrics servers,
//! which listen in the node namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::{LabError, Netns, Result};

/// A response: status code, headers (lower-cased names) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == &name.to_ascii_lowercase()).map(|(_, v)| v.as_str())
    }
}

/// GET `path` from `addr` inside `netns`. The request runs on a thread that joins the namespace, so the
/// caller's own namespace is never changed.
pub fn get(netns: &Netns, addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    let ns_path = format!("/var/run/netns/{}", netns.name());
    let path = path.to_string();
    let handle = std::thread::spawn(move || -> Result<HttpResponse> {
        let ns = std::fs::File::open(&ns_path).map_err(|e| LabError::io(format!("open {ns_path}"), e))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| LabError::io(format!("setns {ns_path}"), e.into()))?;
        let io = |e| LabError::io(format!("GET http://{addr}{path}"), e);
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io)?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(io)?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).map_err(io)?;
        parse(&raw).ok_or_else(|| LabError::Protocol { what: format!("GET {path}"), line: raw.clone() })
    });
    handle.join().unwrap_or_else(|_| Err(LabError::Usage("http thread panicked".into())))
}

fn parse(raw: &str) -> Option<HttpResponse> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(HttpResponse { status, headers, body: body.to_string() })
}
