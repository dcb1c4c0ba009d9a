//! The hidden `echo-server` and `probe` subcommands: argument parsing (no clap, so the lab can also produce the
//! arguments with `to_args`), their entry points, and the readiness handshake the lab uses to start an echo
//! server.
//!
//! ```text
//! kube-proxy-rs echo-server --name NAME --port N
//! kube-proxy-rs probe (--tcp|--udp) ADDR [--count N] [--timeout-ms N] [--interval-ms N] [--source-port N] [--session]
//! ```
//! `ADDR` is `ip:port`, IPv6 as `[ip]:port`. The probe prints one JSON [`ProbeResult`](super::ProbeResult) per
//! attempt on stdout; with `--session` (TCP only) it prints the greeting, then one JSON
//! [`SessionReply`](super::SessionReply) per line read from stdin.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::echo::EchoServer;
use super::probe::{ProbeProtocol, ProbeSpec, probe};
use super::{LabError, Result, session};

/// Subcommand name of the echo server.
pub const ECHO_SUBCOMMAND: &str = "echo-server";
/// Subcommand name of the probe.
pub const PROBE_SUBCOMMAND: &str = "probe";
/// First word of the line the echo server prints on stdout once its sockets are bound.
pub const ECHO_READY: &str = "listening";

/// How long the lab waits for an echo server to bind.
const ECHO_READY_WAIT: Duration = Duration::from_secs(10);

/// Arguments of `echo-server`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoArgs {
    /// Name to answer with (one word).
    pub name: String,
    /// TCP and UDP port.
    pub port: u16,
}

/// Arguments of `probe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeArgs {
    /// What to probe.
    pub spec: ProbeSpec,
    /// Hold one TCP connection and echo stdin lines over it instead of counting attempts.
    pub session: bool,
}

/// Splits `--flag value` / `--flag=value` / `--switch` arguments; unknown flags are usage errors.
fn flags(args: &[String], valued: &[&str], switches: &[&str]) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        if switches.contains(&flag) && inline.is_none() {
            out.push((flag.to_string(), None));
        } else if valued.contains(&flag) {
            let value = inline.or_else(|| it.next().cloned());
            let value = value.ok_or_else(|| LabError::Usage(format!("{flag} needs a value")))?;
            out.push((flag.to_string(), Some(value)));
        } else {
            return Err(LabError::Usage(format!("unexpected argument {arg:?}")));
        }
    }
    Ok(out)
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T> {
    value.parse().map_err(|_| LabError::Usage(format!("{flag}: {value:?} is not a valid number")))
}

impl EchoArgs {
    /// Parses the arguments after the subcommand name.
    pub fn parse(args: &[String]) -> Result<EchoArgs> {
        let (mut name, mut port) = (None, None);
        for (flag, value) in flags(args, &["--name", "--port"], &[])? {
            let value = value.expect("valued flag");
            match flag.as_str() {
                "--name" => name = Some(value),
                _ => port = Some(number("--port", &value)?),
            }
        }
        let name = name.ok_or_else(|| LabError::Usage("--name is required".into()))?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(LabError::Usage(format!("--name {name:?} must be one word (it starts every reply)")));
        }
        Ok(EchoArgs { name, port: port.ok_or_else(|| LabError::Usage("--port is required".into()))? })
    }

    /// The command line (subcommand first) that [`EchoArgs::parse`] reads back as `self`.
    pub fn to_args(&self) -> Vec<String> {
        [ECHO_SUBCOMMAND, "--name", &self.name, "--port", &self.port.to_string()].map(String::from).to_vec()
    }
}

impl ProbeArgs {
    /// Parses the arguments after the subcommand name.
    pub fn parse(args: &[String]) -> Result<ProbeArgs> {
        let valued = ["--tcp", "--udp", "--count", "--timeout-ms", "--interval-ms", "--source-port"];
        let mut target: Option<(ProbeProtocol, SocketAddr)> = None;
        let (mut count, mut timeout_ms, mut interval_ms, mut source_port, mut session) = (1, 1000, 0, None, false);
        for (flag, value) in flags(args, &valued, &["--session"])? {
            let value = value.unwrap_or_default();
            match flag.as_str() {
                "--tcp" | "--udp" => {
                    let protocol = if flag == "--tcp" { ProbeProtocol::Tcp } else { ProbeProtocol::Udp };
                    let addr = value.parse().map_err(|_| {
                        LabError::Usage(format!("{flag}: {value:?} is not ip:port (IPv6 as [ip]:port)"))
                    })?;
                    if target.replace((protocol, addr)).is_some() {
                        return Err(LabError::Usage("give exactly one of --tcp and --udp".into()));
                    }
                }
                "--count" => count = number(&flag, &value)?,
                "--timeout-ms" => timeout_ms = number(&flag, &value)?,
                "--interval-ms" => interval_ms = number(&flag, &value)?,
                "--source-port" => source_port = Some(number(&flag, &value)?),
                _ => session = true,
            }
        }
        let (protocol, target) =
            target.ok_or_else(|| LabError::Usage("--tcp ADDR or --udp ADDR is required".into()))?;
        if source_port.is_some() && protocol != ProbeProtocol::Udp {
            // A fixed TCP source port would collide with its own TIME_WAIT from the previous attempt.
            return Err(LabError::Usage("--source-port is for --udp only".into()));
        }
        if session && protocol != ProbeProtocol::Tcp {
            return Err(LabError::Usage("--session is for --tcp only".into()));
        }
        let spec = ProbeSpec {
            protocol,
            target,
            count,
            timeout: Duration::from_millis(timeout_ms),
            source_port,
            interval: Duration::from_millis(interval_ms),
        };
        Ok(ProbeArgs { spec, session })
    }

    /// The command line (subcommand first) that [`ProbeArgs::parse`] reads back as `self` (durations in whole
    /// milliseconds).
    pub fn to_args(&self) -> Vec<String> {
        let s = &self.spec;
        let proto = if s.protocol == ProbeProtocol::Tcp { "--tcp" } else { "--udp" };
        let mut args = vec![PROBE_SUBCOMMAND.into(), proto.into(), s.target.to_string()];
        args.extend(["--count".into(), s.count.to_string(), "--timeout-ms".into(), s.timeout.as_millis().to_string()]);
        if !s.interval.is_zero() {
            args.extend(["--interval-ms".into(), s.interval.as_millis().to_string()]);
        }
        if let Some(port) = s.source_port {
            args.extend(["--source-port".into(), port.to_string()]);
        }
        if self.session {
            args.push("--session".into());
        }
        args
    }
}

/// Runs the echo server: binds, prints `listening <port>` on stdout, serves until an I/O error.
pub async fn echo_command(args: EchoArgs) -> Result<()> {
    let server = EchoServer::bind(args.name, args.port).await?;
    println!("{ECHO_READY} {}", server.port());
    server.run().await
}

/// Runs the probe, printing one JSON line per attempt (or per session step).
pub async fn probe_command(args: ProbeArgs) -> Result<()> {
    if args.session {
        let input = session::stdin_lines();
        return session::run_session(args.spec.target, args.spec.timeout, input, |line| println!("{line}")).await;
    }
    for result in probe(args.spec).await {
        println!("{}", serde_json::to_string(&result).expect("plain enum serializes"));
    }
    Ok(())
}

/// Entry point for `kube-proxy-rs echo-server ARGS` from a synchronous `main` (it builds its own runtime):
/// returns the process exit code (2 for usage errors).
pub fn echo_main(args: &[String]) -> i32 {
    main_with(EchoArgs::parse(args), echo_command)
}

/// Entry point for `kube-proxy-rs probe ARGS`; see [`echo_main`].
pub fn probe_main(args: &[String]) -> i32 {
    main_with(ProbeArgs::parse(args), probe_command)
}

fn main_with<A, F: Future<Output = Result<()>>>(parsed: Result<A>, run: impl FnOnce(A) -> F) -> i32 {
    let args = match parsed {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Spawns an `echo-server` helper command and waits for its ready line; the child's stdout keeps being drained
/// by a thread so the helper can never block on a full pipe.
pub(crate) fn start_echo_helper(mut cmd: Command, name: &str) -> Result<Child> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn { argv: format!("{cmd:?}"), source })?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        lines.for_each(drop);
    });
    let what = format!("echo server {name}");
    let failure = match rx.recv_timeout(ECHO_READY_WAIT) {
        Ok(Some(Ok(line))) if line.split_whitespace().next() == Some(ECHO_READY) => return Ok(child),
        Ok(Some(Ok(line))) => LabError::Protocol { what, line },
        // Exited (its stderr, inherited, says why) or too slow.
        _ => LabError::NotReady { what, waited: ECHO_READY_WAIT },
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn echo_args_round_trip_and_reject_bad_input() {
        let args = EchoArgs { name: "pod-a".into(), port: 8080 };
        assert_eq!(EchoArgs::parse(&args.to_args()[1..]).unwrap(), args);
        assert_eq!(EchoArgs::parse(&strings(&["--name=b", "--port=1"])).unwrap().name, "b");
        for bad in [&["--name", "a"][..], &["--port", "1"], &["--name", "a b", "--port", "1"], &["--name"], &["x"]] {
            assert!(matches!(EchoArgs::parse(&strings(bad)), Err(LabError::Usage(_))), "{bad:?}");
        }
        assert!(EchoArgs::parse(&strings(&["--name", "a", "--port", "70000"])).is_err());
    }

    #[test]
    fn probe_args_round_trip() {
        let v6: SocketAddr = "[fd00:96::a]:53".parse().unwrap();
        let specs = [
            ProbeSpec::tcp("10.96.0.10:80".parse().unwrap()),
            ProbeSpec::udp(v6).count(5).timeout(Duration::from_millis(250)).source_port(4000),
            ProbeSpec::tcp(v6).interval(Duration::from_millis(10)),
        ];
        for spec in specs {
            let args = ProbeArgs { spec, session: false };
            assert_eq!(ProbeArgs::parse(&args.to_args()[1..]).unwrap(), args);
        }
        let session = ProbeArgs { spec: ProbeSpec::tcp(v6), session: true };
        assert_eq!(ProbeArgs::parse(&session.to_args()[1..]).unwrap(), session);
    }

    #[test]
    fn probe_args_defaults_and_errors() {
        let parsed = ProbeArgs::parse(&strings(&["--udp", "1.2.3.4:5"])).unwrap();
        assert_eq!(parsed.spec, ProbeSpec::udp("1.2.3.4:5".parse().unwrap()));
        for bad in [
            &[][..],
            &["--tcp", "1.2.3.4:5", "--udp", "1.2.3.4:5"],
            &["--tcp", "fd00::1:80"],
            &["--tcp", "1.2.3.4:5", "--source-port", "9"],
            &["--udp", "1.2.3.4:5", "--session"],
            &["--tcp", "1.2.3.4:5", "--count", "many"],
            &["--tcp", "1.2.3.4:5", "--session=yes"],
        ] {
            assert!(matches!(ProbeArgs::parse(&strings(bad)), Err(LabError::Usage(_))), "{bad:?}");
        }
    }
}
