//! The echo server that plays a pod's application: it tells every client who answered and which client address
//! it saw, so tests can check load balancing and source NAT from the client side alone.
//!
//! - TCP: on accept it writes `"<name> <peer>\n"`, then echoes each received line as `"<name> <line>\n"` until
//!   the client closes, so long-lived connections can be tested.
//! - UDP: every datagram gets one reply datagram `"<name> <peer>\n"`.
//!
//! `<peer>` is `ip:port` (IPv6 as `[ip]:port`); IPv4-mapped IPv6 peers are reported as plain IPv4.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::{LabError, Result};

/// A bound echo server, not yet serving. Binding first lets the caller announce readiness only once clients can
/// connect.
#[derive(Debug)]
pub struct EchoServer {
    name: Arc<str>,
    port: u16,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

/// Binds the server and serves until an I/O error stops it.
pub async fn run_echo_server(name: String, port: u16) -> Result<()> {
    EchoServer::bind(name, port).await?.run().await
}

impl EchoServer {
    /// Binds TCP and UDP on every address at `port` (0 picks a free TCP port and binds UDP to the same
    /// number), dual-stack where the host has IPv6.
    pub async fn bind(name: String, port: u16) -> Result<EchoServer> {
        let (tcp, port) = bind_all(port, |a| {
            let l = std::net::TcpListener::bind(a)?;
            l.set_nonblocking(true)?;
            let port = l.local_addr()?.port();
            Ok((TcpListener::from_std(l)?, port))
        })
        .map_err(|e| LabError::io(format!("echo server: bind TCP port {port}"), e))?;
        let (udp, _) = bind_all(port, |a| {
            let s = std::net::UdpSocket::bind(a)?;
            s.set_nonblocking(true)?;
            let port = s.local_addr()?.port();
            Ok((UdpSocket::from_std(s)?, port))
        })
        .map_err(|e| LabError::io(format!("echo server: bind UDP port {port}"), e))?;
        Ok(EchoServer { name: name.into(), port, tcp, udp })
    }

    /// The port the server is bound to (useful after binding port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves forever; returns only when accepting or receiving fails. Errors on a single connection only end
    /// that connection.
    pub async fn run(self) -> Result<()> {
        let mut tasks = JoinSet::new();
        for listener in self.tcp {
            tasks.spawn(accept_loop(self.name.clone(), listener));
        }
        for sock in self.udp {
            tasks.spawn(udp_loop(self.name.clone(), sock));
        }
        match tasks.join_next().await {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(join)) => Err(LabError::io("echo server task", io::Error::other(join))),
            Some(Ok(Ok(()))) | None => Ok(()),
        }
    }
}

/// Binds `[::]:port`, then `0.0.0.0:port`, returning the sockets and the port. On Linux the IPv6 socket is
/// dual-stack by default (`net.ipv6.bindv6only=0`), in which case the IPv4 bind fails with EADDRINUSE and is not
/// needed; if the IPv6 socket is v6-only the IPv4 bind succeeds. A host without IPv6 gets the IPv4 socket only.
/// This avoids setting IPV6_V6ONLY, which neither std nor tokio exposes without unsafe code. `bind` returns the
/// socket and its local port, so that port 0 binds IPv4 to the port IPv6 got.
fn bind_all<T>(port: u16, bind: impl Fn(SocketAddr) -> io::Result<(T, u16)>) -> io::Result<(Vec<T>, u16)> {
    let mut sockets = Vec::new();
    let mut port = port;
    match bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
        Ok((s, bound)) => {
            sockets.push(s);
            port = bound;
        }
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) || e.kind() == io::ErrorKind::AddrNotAvailable => {}
        Err(e) => return Err(e),
    }
    match bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))) {
        Ok((s, bound)) => {
            sockets.push(s);
            port = bound;
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse && !sockets.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok((sockets, port))
}

/// The peer as clients expect to see it: `::ffff:a.b.c.d` becomes `a.b.c.d`.
fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

async fn accept_loop(name: Arc<str>, listener: TcpListener) -> Result<()> {
    loop {
        let (stream, peer) = listener.accept().await.map_err(|e| LabError::io("echo server: accept", e))?;
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(&name, stream, canonical(peer)).await {
                tracing::debug!(%peer, error = %e, "echo server: connection ended");
            }
        });
    }
}

async fn serve_connection(name: &str, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{name} {peer}\n").as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        write.write_all(format!("{name} {line}\n").as_bytes()).await?;
    }
    Ok(())
}

async fn udp_loop(name: Arc<str>, sock: UdpSocket) -> Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (_, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            // An ICMP error for an earlier reply can surface here on Linux; it concerns that client, not us.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(LabError::io("echo server: UDP receive", e)),
        };
        // Reply to the raw peer (possibly v4-mapped), but report it canonically.
        let reply = format!("{name} {}\n", canonical(peer));
        if let Err(e) = sock.send_to(reply.as_bytes(), peer).await {
            tracing::debug!(%peer, error = %e, "echo server: UDP reply failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_peers_are_reported_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.244.0.11]:5000".parse().unwrap();
        assert_eq!(canonical(mapped).to_string(), "10.244.0.11:5000");
        let v6: SocketAddr = "[fd00:10:244::11]:5000".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
