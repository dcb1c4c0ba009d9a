//! Prometheus metrics under upstream kube-proxy's names (prefix `kubeproxy_`), so existing dashboards and
//! alerts keep working.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    pub sync_full_duration: Histogram,
    pub sync_partial_duration: Histogram,
    pub network_programming_duration: Histogram,
    pub last_sync_timestamp: Gauge<f64, AtomicU64>,
    pub last_queued_timestamp: Gauge<f64, AtomicU64>,
    pub endpoint_changes_pending: Gauge,
    pub endpoint_changes_total: Counter,
    pub service_changes_pending: Gauge,
    pub service_changes_total: Counter,
    pub nftables_sync_failures: Counter,
    pub nftables_cleanup_failures: Counter,
    pub iptables_restore_failures: Counter,
    pub iptables_partial_restore_failures: Counter,
    pub no_local_endpoints: Family<Labels, Gauge>,
    pub healthz_total: Family<Labels, Counter>,
    pub livez_total: Family<Labels, Counter>,
}

/// Upstream's sync-duration buckets: 1 ms doubling, 15 buckets.
fn sync_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubeproxy");
        // Upstream: 0.25 s steps to 0.5 s, 1 s steps to 59 s, 5 s steps to 115 s, 30 s steps to 5 min.
        let programming_buckets: Vec<f64> = linear_buckets(0.25, 0.25, 2)
            .chain(linear_buckets(1.0, 1.0, 59))
            .chain(linear_buckets(60.0, 5.0, 12))
            .chain(linear_buckets(120.0, 30.0, 7))
            .collect();
        let m = Metrics {
            sync_duration: Histogram::new(sync_buckets()),
            sync_full_duration: Histogram::new(sync_buckets()),
            sync_partial_duration: Histogram::new(sync_buckets()),
            network_programming_duration: Histogram::new(programming_buckets),
            last_sync_timestamp: Gauge::default(),
            last_queued_timestamp: Gauge::default(),
            endpoint_changes_pending: Gauge::default(),
            endpoint_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            service_changes_total: Counter::default(),
            nftables_sync_failures: Counter::default(),
            nftables_cleanup_failures: Counter::default(),
            iptables_restore_failures: Counter::default(),
            iptables_partial_restore_failures: Counter::default(),
            no_local_endpoints: Family::default(),
            healthz_total: Family::default(),
            livez_total: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", m.sync_duration.clone());
        r.register(
            "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full_duration.clone(),
        );
        r.register(
            "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial_duration.clone(),
        );
        r.register(
            "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming_duration.clone(),
        );
        r.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync_timestamp.clone(),
        );
        r.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued_timestamp.clone(),
        );
        r.register(
            "sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.endpoint_changes_pending.clone(),
        );
        r.register(
            "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes_total.clone(),
        );
        r.register(
            "sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.service_changes_pending.clone(),
        );
        r.register(
            "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes_total.clone(),
        );
        r.register(
            "sync_proxy_rules_nftables_sync_failures",
            "Cumulative proxy nftables sync failures",
            m.nftables_sync_failures.clone(),
        );
        r.register(
            "sync_proxy_rules_nftables_cleanup_failures",
            "Cumulative proxy nftables cleanup failures",
            m.nftables_cleanup_failures.clone(),
        );
        r.register(
            "sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            m.iptables_restore_failures.clone(),
        );
        r.register(
            "sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures",
            m.iptables_partial_restore_failures.clone(),
        );
        // A gauge despite its name, as upstream's.
        r.register(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        r.register("proxy_healthz", "Cumulative proxy healthz HTTP status", m.healthz_total.clone());
        r.register("proxy_livez", "Cumulative proxy livez HTTP status", m.livez_total.clone());
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn count_healthz(&self, code: u16) {
        self.healthz_total.get_or_create(&vec![("code".into(), code.to_string())]).inc();
    }

    pub fn count_livez(&self, code: u16) {
        self.livez_total.get_or_create(&vec![("code".into(), code.to_string())]).inc();
    }

    pub fn set_no_local_endpoints(&self, internal: i64, external: i64) {
        self.no_local_endpoints.get_or_create(&vec![("traffic_policy".into(), "internal".into())]).set(internal);
        self.no_local_endpoints.get_or_create(&vec![("traffic_policy".into(), "external".into())]).set(external);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_upstream() {
        let m = Metrics::new();
        m.count_healthz(200);
        m.sync_full_duration.observe(0.002);
        m.endpoint_changes_total.inc();
        m.set_no_local_endpoints(0, 1);
        let text = m.render();
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\"}",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count 0",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"300.0\"}",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 1",
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 0",
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 0",
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total 0",
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"16.384\"}"), "{text}");
    }
}
