//! The runner: applies source events to the core, paces syncs, calls the dataplane, and feeds health and
//! metrics. Nothing is programmed until every source has delivered its initial state.

pub mod pacer;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::time::sleep_until;

use crate::admin::health::ProxyHealth;
use crate::admin::metrics::Metrics;
use crate::admin::service_health::{self, ServiceHealthServers};
use crate::conntrack::ConntrackCleaner;
use crate::core::{Changes, ClusterState};
use crate::dataplane::settings::NodePortAddresses;
use crate::dataplane::{Dataplane, SyncKind};
use crate::model::IpFamily;
use crate::sources::SourceEvent;
use pacer::{Pacer, Reason};

/// Reads the addresses on this host's interfaces (the node IPs when no Node object names them).
pub type InterfaceAddresses = Box<dyn FnMut() -> Vec<IpAddr> + Send>;

/// Where health-check node ports listen: the NodePort addresses, as upstream.
pub struct HealthCheckPorts {
    pub servers: ServiceHealthServers,
    pub nodeport_addresses: NodePortAddresses,
    /// The mode's `--nodeport-addresses` default is `primary` (nftables) rather than every address.
    pub default_is_primary: bool,
}

pub struct Runner {
    pub state: ClusterState,
    pub dataplane: Box<dyn Dataplane>,
    pub pacer: Pacer,
    pub metrics: Arc<Metrics>,
    pub health: Arc<ProxyHealth>,
    pub interface_addresses: InterfaceAddresses,
    pub health_checks: HealthCheckPorts,
    /// UDP/SCTP conntrack reconciliation after syncs (None where conntrack netlink is unavailable).
    pub conntrack: Option<ConntrackCleaner>,
    /// Changes of a failed sync, kept for the retry.
    leftover: Option<Changes>,
    full_next: bool,
    last_full: Option<Instant>,
}

/// Even with nothing wrong, rewrite everything this often (as upstream), in case of drift the cheap checks miss.
const FULL_SYNC_PERIOD: std::time::Duration = std::time::Duration::from_secs(3600);

impl Runner {
    pub fn new(
        state: ClusterState,
        dataplane: Box<dyn Dataplane>,
        pacer: Pacer,
        metrics: Arc<Metrics>,
        interface_addresses: InterfaceAddresses,
        health_checks: HealthCheckPorts,
    ) -> Self {
        let health = health_checks.servers.proxy_health();
        Runner {
            state,
            dataplane,
            pacer,
            metrics,
            health,
            interface_addresses,
            health_checks,
            conntrack: None,
            leftover: None,
            full_next: true,
            last_full: None,
        }
    }

    fn apply(&mut self, event: SourceEvent) -> bool {
        let SourceEvent::Change(change) = event else { return false };
        let before = (self.state.pending().service_events, self.state.pending().endpoint_events);
        let relevant = self.state.apply(change);
        let after = self.state.pending();
        self.metrics.service_changes_total.inc_by(after.service_events - before.0);
        self.metrics.endpoint_changes_total.inc_by(after.endpoint_events - before.1);
        self.metrics.service_changes_pending.set(after.service_events as i64);
        self.metrics.endpoint_changes_pending.set(after.endpoint_events as i64);
        if relevant {
            self.health.queued_update();
            self.metrics.last_queued_timestamp.set(unix_now());
            self.pacer.changed();
        }
        relevant
    }

    /// Run until the event channel closes. `sources` is how many `Synced` events to wait for.
    pub async fn run(mut self, mut events: mpsc::Receiver<SourceEvent>, sources: usize) {
        let (mut synced, mut objects) = (0, 0);
        while synced < sources {
            match events.recv().await {
                Some(SourceEvent::Synced) => synced += 1,
                Some(event) => {
                    objects += 1;
                    self.apply(event);
                }
                None => return,
            }
        }
        // (The desired state is computed at the first sync; until then only the events can be counted.)
        tracing::info!(events = objects, "sources synced; programming starts");
        loop {
            let (due, reason) = self.pacer.next(Instant::now());
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { return };
                    self.apply(event);
                    // Take whatever else is already queued before deciding when to sync.
                    while let Ok(event) = events.try_recv() {
                        self.apply(event);
                    }
                }
                _ = sleep_until(due.into()) => self.sync(reason),
            }
        }
    }

    fn sync(&mut self, reason: Reason) {
        let started = Instant::now();
        if reason == Reason::Periodic {
            match tokio::task::block_in_place(|| self.dataplane.verify()) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("our kernel state was changed behind our back; restoring it with a full sync");
                    self.full_next = true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot verify kernel state"),
            }
        }
        self.state.set_interface_addresses((self.interface_addresses)());
        let mut changes = self.state.take_changes();
        if let Some(mut earlier) = self.leftover.take() {
            earlier.merge(changes);
            changes = earlier;
        }
        self.health.set_node_eligible(!self.state.desired().node.being_deleted);
        let full = self.full_next || self.last_full.is_none_or(|t| t.elapsed() > FULL_SYNC_PERIOD);
        let result = tokio::task::block_in_place(|| self.dataplane.sync(self.state.desired(), &changes, full));
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics.sync_duration.observe(elapsed);
        self.metrics.service_changes_pending.set(0);
        self.metrics.endpoint_changes_pending.set(0);
        match result {
            Ok(kind) => {
                match kind {
                    SyncKind::Full => {
                        self.metrics.sync_full_duration.observe(elapsed);
                        self.last_full = Some(started);
                    }
                    SyncKind::Partial => self.metrics.sync_partial_duration.observe(elapsed),
                    SyncKind::Nothing => {}
                }
                if kind != SyncKind::Nothing {
                    tracing::info!(?kind, ?reason, seconds = elapsed, "synced");
                }
                self.full_next = false;
                self.health.updated();
                self.metrics.last_sync_timestamp.set(unix_now());
                let now = jiff::Timestamp::now();
                for t in &changes.trigger_times {
                    let latency = now.duration_since(*t).as_secs_f64();
                    if latency >= 0.0 {
                        self.metrics.network_programming_duration.observe(latency);
                    }
                }
                self.count_no_local_endpoints();
                self.sync_health_checks();
                if kind != SyncKind::Nothing || reason == Reason::Periodic {
                    self.clean_conntrack();
                }
                self.pacer.finished(started, true);
            }
            Err(e) => {
                tracing::error!(error = %e, "sync failed; will retry with a full sync");
                match self.dataplane.mode() {
                    "nftables" => self.metrics.nftables_sync_failures.inc(),
                    "iptables" => {
                        // A partial sync was asked for; the dataplane may have found it had to be full.
                        if !full {
                            self.metrics.iptables_partial_restore_failures.inc();
                        }
                        self.metrics.iptables_restore_failures.inc()
                    }
                    _ => 0,
                };
                self.full_next = true;
                self.leftover = Some(changes);
                self.pacer.finished(started, false);
            }
        }
    }

    /// Delete UDP/SCTP flows that still point where the rules no longer send them.
    fn clean_conntrack(&mut self) {
        let Some(cleaner) = self.conntrack.as_mut() else { return };
        let desired = self.state.desired();
        match tokio::task::block_in_place(|| cleaner.reconcile(desired)) {
            Ok(report) if report.deleted > 0 => tracing::info!(?report, "deleted stale conntrack entries"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "conntrack cleanup failed; retried after the next sync"),
        }
    }

    fn sync_health_checks(&mut self) {
        let desired = self.state.desired();
        let hc = &mut self.health_checks;
        let addresses: Vec<IpAddr> = IpFamily::ALL
            .iter()
            .filter_map(|f| hc.nodeport_addresses.addresses(*f, &desired.node, hc.default_is_primary))
            .flatten()
            .collect();
        hc.servers.sync(&service_health::wanted(desired), &addresses);
    }

    fn count_no_local_endpoints(&self) {
        let (mut internal, mut external) = (0, 0);
        for family in IpFamily::ALL {
            for p in self.state.desired().family(family).ports.values() {
                if p.local_endpoints.is_empty() {
                    internal += i64::from(p.internal_policy_local);
                    external += i64::from(p.external_policy_local && p.externally_accessible());
                }
            }
        }
        self.metrics.set_no_local_endpoints(internal, external);
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Every address on this host's interfaces, read with getifaddrs.
pub fn read_interface_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}
