//! The kube-proxy-rs binary: parse flags, set up the node, wire sources → core → dataplane → runner, serve health
//! and metrics.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use kube_proxy_rs::admin::health::ProxyHealth;
use kube_proxy_rs::admin::http::{self, AdminState};
use kube_proxy_rs::admin::metrics::Metrics;
use kube_proxy_rs::admin::service_health::ServiceHealthServers;
use kube_proxy_rs::config::flags::Command;
use kube_proxy_rs::config::{BackendChoice, Config, Flags, NftablesTransport, ProxyMode};
use kube_proxy_rs::conntrack::ConntrackCleaner;
use kube_proxy_rs::core::ClusterState;
use kube_proxy_rs::dataplane::Dataplane;
use kube_proxy_rs::dataplane::iptables::{self, IptablesDataplane};
use kube_proxy_rs::dataplane::nftables::NftablesDataplane;
use kube_proxy_rs::dataplane::nftables::netlink::NetlinkTransport;
use kube_proxy_rs::dataplane::nftables::transport::{NftCommand, Transport};
use kube_proxy_rs::lab;
use kube_proxy_rs::model::IpFamily;
use kube_proxy_rs::nodesetup::NodeSetup;
use kube_proxy_rs::runner::pacer::Pacer;
use kube_proxy_rs::runner::{HealthCheckPorts, Runner, read_interface_addresses};
use kube_proxy_rs::sources::kube::ConnectSettings;
use kube_proxy_rs::sources::manifests::ManifestSource;
use kube_proxy_rs::sources::{self, Source};

/// jemalloc, whose background thread returns freed pages to the kernel: a full sync's transient memory (the
/// desired state being built, the netlink batch) does not stay resident afterwards, as it does in glibc's arenas.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol (`malloc_conf`, prefixed as tikv-jemallocator builds it):
/// purge dirty pages after 1 s, from a background thread, so an idle proxy shrinks too.
// SAFETY: the symbol is a NUL-terminated C string that jemalloc only reads, once, at start-up.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let flags = Flags::parse();
    if flags.version {
        println!("kube-proxy-rs v{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    match &flags.command {
        Some(Command::EchoServer { args }) => return exit_code(lab::cli::echo_main(args)),
        Some(Command::Probe { args }) => return exit_code(lab::cli::probe_main(args)),
        Some(Command::Demo { requests }) => return kube_proxy_rs::demo::main(*requests),
        None => {}
    }
    let (config, warnings) = match Config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kube-proxy-rs: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(config.verbosity);
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let Some(path) = &flags.write_config_to {
        return match std::fs::write(path, config.to_yaml()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kube-proxy-rs: --write-config-to {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    if config.cleanup {
        return cleanup(&config);
    }
    if matches!(config.mode, ProxyMode::Ipvs | ProxyMode::Userspace) {
        eprintln!(
            "kube-proxy-rs: --proxy-mode={}: not built yet; use --proxy-mode=iptables or --proxy-mode=nftables",
            config.mode.name()
        );
        return ExitCode::FAILURE;
    }
    if let Some(dir) = &config.manifests
        && let Err(e) = ManifestSource::check(dir)
    {
        eprintln!("kube-proxy-rs: --manifests: {e}");
        return ExitCode::FAILURE;
    }
    // As upstream: set the conntrack sysctls before anything else, and stop if that fails.
    match NodeSetup::host().apply(&config.node_setup()) {
        Ok(report) => {
            tracing::info!(changes = report.changes.len(), conntrack_max = ?report.conntrack_max, "node set up")
        }
        Err(e) => {
            eprintln!("kube-proxy-rs: could not set conntrack parameters: {e}");
            return ExitCode::FAILURE;
        }
    }
    if config.init_only {
        return ExitCode::SUCCESS;
    }
    let dataplane = match dataplane(&config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kube-proxy-rs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    match runtime {
        Ok(rt) => rt.block_on(run(config, flags.config.clone(), dataplane)),
        Err(e) => {
            eprintln!("kube-proxy-rs: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("kube_proxy_rs={level},warn")));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The IP families this kernel supports.
fn families() -> Vec<IpFamily> {
    let mut f = vec![IpFamily::V4];
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        f.push(IpFamily::V6);
    }
    f
}

/// The nftables dataplane with the transport `--nftables-transport` asks for. The netlink socket belongs to
/// the network namespace this process runs in.
fn nftables(config: &Config) -> Result<NftablesDataplane, String> {
    let transport: Box<dyn Transport> = match config.nftables_transport {
        NftablesTransport::Netlink => Box::new(NetlinkTransport::new().map_err(|e| e.to_string())?),
        NftablesTransport::Nft => Box::new(NftCommand),
    };
    Ok(NftablesDataplane::new(config.proxy_settings(), transport, &families()))
}

/// The dataplane of the chosen mode.
fn dataplane(config: &Config) -> Result<Box<dyn Dataplane>, String> {
    match config.mode {
        ProxyMode::Nftables => Ok(Box::new(nftables(config)?)),
        _ => {
            let backend = match config.iptables_backend {
                BackendChoice::Auto => iptables::backend::detect(),
                BackendChoice::Fixed(b) => b,
            };
            Ok(Box::new(IptablesDataplane::new(config.proxy_settings(), backend, &families())))
        }
    }
}

/// `--cleanup`: remove what every mode creates.
fn cleanup(config: &Config) -> ExitCode {
    match kube_proxy_rs::dataplane::remove_everything(&config.proxy_settings()) {
        Ok(()) => {
            tracing::info!("removed every rule kube-proxy-rs creates");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kube-proxy-rs: cleanup: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, flags_config: Option<std::path::PathBuf>, dataplane: Box<dyn Dataplane>) -> ExitCode {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(ProxyHealth::new(2 * config.sync_period));
    let admin = Arc::new(AdminState {
        health: health.clone(),
        metrics: metrics.clone(),
        mode: config.mode.name(),
        configz: serde_json::to_value(config.to_kube_proxy_configuration()).unwrap_or_default(),
    });
    if let Some(addr) = config.healthz_bind_address {
        tokio::spawn(http::serve("healthz", addr, http::health_router(admin.clone())));
    }
    if let Some(addr) = config.metrics_bind_address {
        tokio::spawn(http::serve("metrics", addr, http::metrics_router(admin.clone())));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let source = match &config.manifests {
        Some(dir) => Source::Manifests(dir.clone()),
        None => Source::Api(ConnectSettings { kubeconfig: config.kubeconfig.clone(), master: config.master.clone() }),
    };
    if let Err(e) = sources::start(source, config.node_name(), tx).await {
        eprintln!("kube-proxy-rs: {e}");
        return ExitCode::FAILURE;
    }
    let mut runner = Runner::new(
        ClusterState::new(config.node_name()),
        dataplane,
        Pacer::new(config.min_sync_period, config.sync_period),
        metrics,
        Box::new(read_interface_addresses),
        HealthCheckPorts {
            servers: ServiceHealthServers::new(health),
            nodeport_addresses: config.proxy_settings().nodeport_addresses,
            default_is_primary: config.mode == ProxyMode::Nftables,
        },
    );
    runner.conntrack = match ConntrackCleaner::new() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "no conntrack netlink: stale UDP/SCTP flows will not be cleaned");
            None
        }
    };
    tracing::info!(
        mode = config.mode.name(),
        nftables_transport = config.nftables_transport.name(),
        iptables_backend = ?config.iptables_backend,
        node = %config.node_name(),
        "kube-proxy-rs starting"
    );
    let config_changed = async {
        match &flags_config {
            Some(path) => kube_proxy_rs::config::file_changed(path).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = runner.run(rx, 1) => ExitCode::FAILURE,
        _ = config_changed => {
            // As upstream: exit, and let the DaemonSet restart us with the new configuration.
            tracing::error!("the configuration file changed; exiting to restart with it");
            ExitCode::FAILURE
        }
        _ = shutdown_signal() => {
            // As upstream: the rules stay, so traffic keeps flowing until the next instance takes over.
            tracing::info!("terminating; rules stay in place");
            ExitCode::SUCCESS
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
