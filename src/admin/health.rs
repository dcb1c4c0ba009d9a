//! The proxy's health, with upstream's rules: healthy unless an update has been queued for longer than the
//! health timeout (2 × sync period) without being applied; /healthz also wants the node to be eligible (not
//! being deleted, not tainted ToBeDeletedByClusterAutoscaler).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Shared between the runner (which reports updates) and the HTTP handlers (which read them).
pub struct ProxyHealth {
    timeout: Duration,
    started: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<Instant>,
    node_eligible: bool,
}

/// What a health endpoint answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub healthy: bool,
    pub node_eligible: bool,
    /// Go-formatted, as upstream prints it.
    pub last_updated: String,
    pub current_time: String,
}

impl ProxyHealth {
    pub fn new(timeout: Duration) -> Self {
        ProxyHealth {
            timeout,
            started: Instant::now(),
            inner: Mutex::new(Inner { last_updated: None, oldest_pending: None, node_eligible: true }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change arrived that the rules do not reflect yet.
    pub fn queued_update(&self) {
        let mut inner = self.lock();
        inner.oldest_pending.get_or_insert_with(Instant::now);
    }

    /// The rules now reflect every change received.
    pub fn updated(&self) {
        let mut inner = self.lock();
        inner.oldest_pending = None;
        inner.last_updated = Some(SystemTime::now());
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    fn report(&self, with_node: bool) -> HealthReport {
        let inner = self.lock();
        let now = SystemTime::now();
        let late = inner.oldest_pending.is_some_and(|t| t.elapsed() >= self.timeout);
        let healthy = !late && (!with_node || inner.node_eligible);
        // Upstream reports "now" as lastUpdated while healthy, for compatibility with older releases.
        let last = if healthy { Some(now) } else { inner.last_updated };
        HealthReport {
            healthy,
            node_eligible: inner.node_eligible,
            last_updated: go_time(last, None),
            current_time: go_time(Some(now), Some(self.started.elapsed())),
        }
    }

    /// For /healthz: proxy health and node eligibility.
    pub fn healthz(&self) -> HealthReport {
        self.report(true)
    }

    /// For /livez: proxy health only.
    pub fn livez(&self) -> HealthReport {
        self.report(false)
    }
}

/// Go's `time.Time.String()`: "2006-01-02 15:04:05.999999999 +0000 UTC", plus the monotonic reading
/// ("m=+1.000000001") for times taken from the clock, as upstream's `%q` of `time.Now()` prints.
pub fn go_time(t: Option<SystemTime>, monotonic: Option<Duration>) -> String {
    let Some(t) = t else {
        return "0001-01-01 00:00:00 +0000 UTC".into();
    };
    let ts = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let dt = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let nanos = dt.subsec_nanosecond();
    let frac = if nanos == 0 { String::new() } else { format!(".{nanos:09}").trim_end_matches('0').to_string() };
    let mut s = format!("{}{frac} +0000 UTC", dt.strftime("%Y-%m-%d %H:%M:%S"));
    if let Some(m) = monotonic {
        s.push_str(&format!(" m=+{}.{:09}", m.as_secs(), m.subsec_nanos()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_until_a_queued_update_is_late() {
        let h = ProxyHealth::new(Duration::from_millis(50));
        assert!(h.healthz().healthy, "healthy while starting");
        h.queued_update();
        assert!(h.healthz().healthy, "not late yet");
        std::thread::sleep(Duration::from_millis(80));
        assert!(!h.healthz().healthy);
        assert!(!h.livez().healthy);
        h.updated();
        assert!(h.healthz().healthy);
    }

    #[test]
    fn node_eligibility_affects_healthz_only() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        h.set_node_eligible(false);
        let r = h.healthz();
        assert!(!r.healthy && !r.node_eligible);
        assert!(h.livez().healthy);
    }

    #[test]
    fn go_time_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(go_time(Some(t), None), "2023-11-14 22:13:20.12 +0000 UTC");
        assert_eq!(go_time(Some(t), Some(Duration::new(3, 5))), "2023-11-14 22:13:20.12 +0000 UTC m=+3.000000005");
        assert_eq!(go_time(None, None), "0001-01-01 00:00:00 +0000 UTC");
    }
}
