//! The traffic client: connects (TCP) or sends a datagram (UDP) to a target a number of times and reports, per
//! attempt, which echo server answered and which client address it saw — enough to test load balancing, source
//! NAT (masquerade or not), session affinity and rejection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, sleep, timeout, timeout_at};

/// Transport protocols the probe speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProbeProtocol {
    Tcp,
    Udp,
}

/// What to probe and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// TCP or UDP.
    pub protocol: ProbeProtocol,
    /// Where to connect/send.
    pub target: SocketAddr,
    /// Number of attempts.
    pub count: u32,
    /// Per-attempt limit (TCP: connect plus greeting; UDP: reply).
    pub timeout: Duration,
    /// UDP only: send from this source port, through one socket for all attempts, so that every attempt belongs
    /// to the same conntrack entry (without it each attempt uses a fresh socket and ephemeral port).
    pub source_port: Option<u16>,
    /// Pause between attempts.
    pub interval: Duration,
}

impl ProbeSpec {
    /// One TCP attempt with a 1 s timeout.
    pub fn tcp(target: SocketAddr) -> ProbeSpec {
        ProbeSpec {
            protocol: ProbeProtocol::Tcp,
            target,
            count: 1,
            timeout: Duration::from_secs(1),
            source_port: None,
            interval: Duration::ZERO,
        }
    }

    /// One UDP attempt with a 1 s timeout.
    pub fn udp(target: SocketAddr) -> ProbeSpec {
        ProbeSpec { protocol: ProbeProtocol::Udp, ..ProbeSpec::tcp(target) }
    }

    /// Sets the number of attempts.
    pub fn count(self, count: u32) -> ProbeSpec {
        ProbeSpec { count, ..self }
    }

    /// Sets the per-attempt timeout.
    pub fn timeout(self, timeout: Duration) -> ProbeSpec {
        ProbeSpec { timeout, ..self }
    }

    /// Sets a fixed UDP source port.
    pub fn source_port(self, port: u16) -> ProbeSpec {
        ProbeSpec { source_port: Some(port), ..self }
    }

    /// Sets the pause between attempts.
    pub fn interval(self, interval: Duration) -> ProbeSpec {
        ProbeSpec { interval, ..self }
    }
}

/// The outcome of one attempt. Serialized as one JSON object per line by the `probe` helper.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProbeResult {
    /// An echo server answered: its name, and the client address it saw (after any NAT).
    Answered { pod: String, seen: SocketAddr },
    /// Actively refused: a TCP RST or an ICMP port unreachable (what a REJECT rule sends), i.e. ECONNREFUSED.
    Refused,
    /// No answer within the timeout (dropped, blackholed, or no route beyond the first hop).
    Timeout,
    /// Anything else (unreachable network, reset after connecting, garbled reply), as text.
    Error(String),
}

impl ProbeResult {
    /// The answering pod's name, if any.
    pub fn pod(&self) -> Option<&str> {
        match self {
            ProbeResult::Answered { pod, .. } => Some(pod),
            _ => None,
        }
    }

    /// The client address the server saw, if it answered.
    pub fn seen(&self) -> Option<SocketAddr> {
        match self {
            ProbeResult::Answered { seen, .. } => Some(*seen),
            _ => None,
        }
    }

    pub(crate) fn from_io(e: &io::Error) -> ProbeResult {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ProbeResult::Refused,
            io::ErrorKind::TimedOut => ProbeResult::Timeout,
            _ => ProbeResult::Error(e.to_string()),
        }
    }

    pub(crate) fn from_greeting(line: &str) -> ProbeResult {
        match parse_greeting(line) {
            Some((pod, seen)) => ProbeResult::Answered { pod, seen },
            None => ProbeResult::Error(format!("unexpected greeting {line:?}")),
        }
    }
}

/// Parses an echo server's greeting `"<name> <peer>"` (peer as `ip:port`, IPv6 as `[ip]:port`; trailing
/// newline optional).
pub fn parse_greeting(line: &str) -> Option<(String, SocketAddr)> {
    let (name, peer) = line.trim_end_matches(['\r', '\n']).split_once(' ')?;
    if name.is_empty() {
        return None;
    }
    Some((name.to_string(), peer.parse().ok()?))
}

/// Runs every attempt of `spec` in turn and returns one result per attempt.
pub async fn probe(spec: ProbeSpec) -> Vec<ProbeResult> {
    let mut results = Vec::with_capacity(spec.count as usize);
    // With a fixed source port the socket outlives the attempts (one conntrack entry); see ProbeSpec.
    let mut shared: Option<UdpSocket> = None;
    for i in 0..spec.count {
        if i > 0 && !spec.interval.is_zero() {
            sleep(spec.interval).await;
        }
        let result = match (spec.protocol, spec.source_port) {
            (ProbeProtocol::Tcp, _) => tcp_attempt(spec.target, spec.timeout).await,
            (ProbeProtocol::Udp, None) => match udp_socket(spec.target, 0).await {
                Ok(sock) => udp_attempt(&sock, spec.timeout).await,
                Err(e) => ProbeResult::Error(e.to_string()),
            },
            (ProbeProtocol::Udp, Some(port)) => {
                if shared.is_none() {
                    match udp_socket(spec.target, port).await {
                        Ok(sock) => shared = Some(sock),
                        Err(e) => {
                            // Port busy, say: this attempt fails, the next one tries again.
                            results.push(ProbeResult::Error(e.to_string()));
                            continue;
                        }
                    }
                }
                udp_attempt(shared.as_ref().expect("set above"), spec.timeout).await
            }
        };
        results.push(result);
    }
    results
}

async fn tcp_attempt(target: SocketAddr, limit: Duration) -> ProbeResult {
    // One deadline for connect and greeting: the timeout is per attempt, not per step.
    let deadline = Instant::now() + limit;
    let stream = match timeout_at(deadline, TcpStream::connect(target)).await {
        Err(_) => return ProbeResult::Timeout,
        Ok(Err(e)) => return ProbeResult::from_io(&e),
        Ok(Ok(s)) => s,
    };
    let mut line = String::new();
    match timeout_at(deadline, BufReader::new(stream).read_line(&mut line)).await {
        Err(_) => ProbeResult::Timeout,
        Ok(Err(e)) => ProbeResult::from_io(&e),
        Ok(Ok(0)) => ProbeResult::Error("connection closed before the greeting".into()),
        Ok(Ok(_)) => ProbeResult::from_greeting(&line),
    }
}

/// A UDP socket of the target's family, connected so that ICMP errors are reported to it and replies from any
/// other address (a reply that escaped reverse NAT) are not mistaken for answers.
async fn udp_socket(target: SocketAddr, port: u16) -> io::Result<UdpSocket> {
    let any: IpAddr = if target.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let sock = UdpSocket::bind(SocketAddr::new(any, port)).await?;
    sock.connect(target).await?;
    Ok(sock)
}

async fn udp_attempt(sock: &UdpSocket, limit: Duration) -> ProbeResult {
    let mut buf = [0u8; 1024];
    // Late replies and ICMP errors belonging to earlier attempts on a shared socket are not this attempt's.
    while sock.try_recv(&mut buf).map(|_| true).unwrap_or_else(|e| e.kind() != io::ErrorKind::WouldBlock) {}
    if let Err(e) = sock.send(b"probe\n").await {
        return ProbeResult::from_io(&e);
    }
    match timeout(limit, sock.recv(&mut buf)).await {
        Err(_) => ProbeResult::Timeout,
        Ok(Err(e)) => ProbeResult::from_io(&e),
        Ok(Ok(n)) => ProbeResult::from_greeting(&String::from_utf8_lossy(&buf[..n])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_parse_for_both_families() {
        assert_eq!(
            parse_greeting("pod-a 10.244.0.11:40000\n"),
            Some(("pod-a".into(), "10.244.0.11:40000".parse().unwrap()))
        );
        assert_eq!(parse_greeting("b [fd00:50::2]:1234"), Some(("b".into(), "[fd00:50::2]:1234".parse().unwrap())));
        assert_eq!(parse_greeting("no-peer"), None);
        assert_eq!(parse_greeting(" 1.2.3.4:5"), None);
        assert_eq!(parse_greeting("a fd00::1:5"), None, "unbracketed IPv6 is ambiguous and rejected");
    }

    #[test]
    fn results_serialize_as_one_json_object_each() {
        let answered = ProbeResult::Answered { pod: "a".into(), seen: "[fd00::1]:7".parse().unwrap() };
        let cases = [
            (answered, r#"{"Answered":{"pod":"a","seen":"[fd00::1]:7"}}"#),
            (ProbeResult::Refused, r#""Refused""#),
            (ProbeResult::Timeout, r#""Timeout""#),
            (ProbeResult::Error("x".into()), r#"{"Error":"x"}"#),
        ];
        for (result, json) in cases {
            assert_eq!(serde_json::to_string(&result).unwrap(), json);
            assert_eq!(serde_json::from_str::<ProbeResult>(json).unwrap(), result);
        }
    }

    #[tokio::test]
    async fn probes_an_in_process_echo_server_over_loopback() {
        let server = crate::lab::echo::EchoServer::bind("solo".into(), 0).await.unwrap();
        let port = server.port();
        tokio::spawn(server.run());
        // IPv6 loopback is missing in some containers; the namespace tests cover IPv6 there.
        let has_v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
        for ip in ["127.0.0.1", "[::1]"].into_iter().filter(|ip| has_v6 || !ip.starts_with('[')) {
            let target: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            for spec in [ProbeSpec::tcp(target).count(2), ProbeSpec::udp(target).count(2).source_port(0)] {
                let results = probe(spec.clone()).await;
                assert_eq!(results.len(), 2, "{spec:?}");
                for r in results {
                    assert_eq!(r.pod(), Some("solo"), "{spec:?}: {r:?}");
                    assert_eq!(r.seen().unwrap().ip(), target.ip(), "mapped addresses are reported plainly");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_for_tcp_and_udp() {
        // Bind then drop to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(probe(ProbeSpec::tcp(target)).await, [ProbeResult::Refused]);
        assert_eq!(probe(ProbeSpec::udp(target)).await, [ProbeResult::Refused]);
    }
}
