//! Long-lived TCP connections: the `probe --session` helper holds one connection open and, for every line on its
//! stdin, sends it and prints the echo server's reply as JSON. [`Session`] drives that helper from a test, so a
//! test can open a connection, change the cluster, and check whether the same connection still reaches the same
//! pod.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, Lines};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

use super::probe::ProbeResult;
use super::{LabError, Result};

/// The outcome of one line sent on a held connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionReply {
    /// The echo server `pod` sent back `text`.
    Echoed { pod: String, text: String },
    /// The server (or something in between) closed the connection cleanly.
    Closed,
    /// The connection was reset (ECONNRESET), e.g. by a REJECT with TCP reset or a dead backend's host.
    Reset,
    /// No reply within the timeout.
    Timeout,
    /// Anything else, as text.
    Error(String),
}

/// Helper side: connects to `target`, emits the greeting as a [`ProbeResult`], then for every input line sends it
/// and emits a [`SessionReply`], until `input` closes. Each item is emitted as one JSON line through `emit`.
pub async fn run_session(
    target: SocketAddr,
    limit: Duration,
    mut input: UnboundedReceiver<String>,
    mut emit: impl FnMut(String),
) -> Result<()> {
    let (greeting, conn) = open(target, limit).await;
    emit(json(&greeting));
    let Some((mut write, mut replies)) = conn else { return Ok(()) };
    while let Some(line) = input.recv().await {
        let reply = match write.write_all(format!("{line}\n").as_bytes()).await {
            Err(e) => io_reply(&e),
            Ok(()) => match timeout(limit, replies.next_line()).await {
                Err(_) => SessionReply::Timeout,
                Ok(Err(e)) => io_reply(&e),
                Ok(Ok(None)) => SessionReply::Closed,
                Ok(Ok(Some(reply))) => match reply.split_once(' ') {
                    Some((pod, text)) => SessionReply::Echoed { pod: pod.into(), text: text.into() },
                    None => SessionReply::Error(format!("unexpected reply {reply:?}")),
                },
            },
        };
        emit(json(&reply));
    }
    Ok(())
}

type Replies = Lines<tokio::io::BufReader<OwnedReadHalf>>;

/// Connects and reads the greeting; the connection is returned only if an echo server answered.
async fn open(target: SocketAddr, limit: Duration) -> (ProbeResult, Option<(OwnedWriteHalf, Replies)>) {
    let stream = match timeout(limit, TcpStream::connect(target)).await {
        Err(_) => return (ProbeResult::Timeout, None),
        Ok(Err(e)) => return (ProbeResult::from_io(&e), None),
        Ok(Ok(s)) => s,
    };
    let (read, write) = stream.into_split();
    let mut replies = tokio::io::BufReader::new(read).lines();
    let greeting = match timeout(limit, replies.next_line()).await {
        Err(_) => ProbeResult::Timeout,
        Ok(Err(e)) => ProbeResult::from_io(&e),
        Ok(Ok(None)) => ProbeResult::Error("connection closed before the greeting".into()),
        Ok(Ok(Some(line))) => ProbeResult::from_greeting(&line),
    };
    let answered = matches!(greeting, ProbeResult::Answered { .. });
    (greeting, answered.then_some((write, replies)))
}

fn io_reply(e: &std::io::Error) -> SessionReply {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => SessionReply::Reset,
        _ => SessionReply::Error(e.to_string()),
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain enums serialize")
}

/// Feeds stdin's lines to [`run_session`]. A plain thread, because tokio's stdin needs a feature we do not
/// enable, and a thread blocked on stdin must not hold up the runtime's shutdown.
pub(crate) fn stdin_lines() -> UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(std::result::Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Test side: one held connection, made by a `probe --session` helper running in some namespace. Dropping it
/// kills the helper, which closes the connection.
#[derive(Debug)]
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    greeting: ProbeResult,
}

impl Session {
    /// Starts the helper command (already pointed at `probe --session …`) and waits for its greeting line.
    pub(crate) fn start(mut cmd: Command) -> Result<Session> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| LabError::Spawn { argv: format!("{cmd:?}"), source })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut session = Session { child, stdin, stdout, greeting: ProbeResult::Timeout };
        session.greeting = session.read_json("session greeting")?;
        Ok(session)
    }

    /// How the connection was answered when it was opened.
    pub fn greeting(&self) -> &ProbeResult {
        &self.greeting
    }

    /// Sends one line (without newline) on the held connection and returns the reply. Blocks at most about the
    /// session's timeout, which the helper enforces.
    pub fn send(&mut self, text: &str) -> Result<SessionReply> {
        if text.contains('\n') {
            return Err(LabError::Usage("session lines cannot contain a newline".into()));
        }
        writeln!(self.stdin, "{text}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| LabError::io("session: write to helper (did the connection fail to open?)", e))?;
        self.read_json("session reply")
    }

    fn read_json<T: serde::de::DeserializeOwned>(&mut self, what: &str) -> Result<T> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| LabError::io(format!("{what}: read helper"), e))?;
        serde_json::from_str(line.trim_end()).map_err(|_| LabError::Protocol { what: what.into(), line })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_echoes_lines_until_its_input_closes() {
        let server = crate::lab::echo::EchoServer::bind("held".into(), 0).await.unwrap();
        let target: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
        tokio::spawn(server.run());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for line in ["one", "two words"] {
            tx.send(line.to_string()).unwrap();
        }
        drop(tx);
        let mut emitted = Vec::new();
        run_session(target, Duration::from_secs(2), rx, |l| emitted.push(l)).await.unwrap();
        assert_eq!(emitted.len(), 3, "{emitted:?}");
        let greeting: ProbeResult = serde_json::from_str(&emitted[0]).unwrap();
        assert_eq!(greeting.pod(), Some("held"));
        let replies: Vec<SessionReply> = emitted[1..].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(
            replies,
            [
                SessionReply::Echoed { pod: "held".into(), text: "one".into() },
                SessionReply::Echoed { pod: "held".into(), text: "two words".into() },
            ]
        );
    }
}
