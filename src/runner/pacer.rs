//! When to sync: no more often than the min sync period, at least every sync period, and after a failure
//! again after a growing back-off. Pure: time is passed in, so it is tested without sleeping.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Pacer {
    min_period: Duration,
    max_period: Duration,
    last_sync: Option<Instant>,
    pending: bool,
    retry_at: Option<Instant>,
    failures: u32,
}

/// Why the next sync runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Changes are waiting.
    Changes,
    /// A previous sync failed.
    Retry,
    /// Nothing changed for a whole sync period: check and resync.
    Periodic,
}

impl Pacer {
    pub fn new(min_period: Duration, max_period: Duration) -> Self {
        Pacer { min_period, max_period, last_sync: None, pending: true, retry_at: None, failures: 0 }
    }

    /// Something changed that the kernel does not reflect yet.
    pub fn changed(&mut self) {
        self.pending = true;
    }

    /// When the next sync is due, and why.
    pub fn next(&self, now: Instant) -> (Instant, Reason) {
        if let Some(at) = self.retry_at {
            return (at, Reason::Retry);
        }
        match self.last_sync {
            None => (now, Reason::Changes),
            Some(last) if self.pending => ((last + self.min_period).max(now), Reason::Changes),
            Some(last) => (last + self.max_period, Reason::Periodic),
        }
    }

    /// A sync ran at `started`; on failure the next is retried after 1 s, 2 s, 4 s … up to the sync period.
    pub fn finished(&mut self, started: Instant, ok: bool) {
        self.last_sync = Some(started);
        if ok {
            self.failures = 0;
            self.retry_at = None;
            self.pending = false;
        } else {
            self.failures = self.failures.saturating_add(1);
            let backoff = Duration::from_secs(1u64 << (self.failures - 1).min(16)).min(self.max_period);
            self.retry_at = Some(started + backoff.max(self.min_period));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn first_sync_is_immediate() {
        let p = Pacer::new(MIN, MAX);
        let now = Instant::now();
        assert_eq!(p.next(now), (now, Reason::Changes));
    }

    #[test]
    fn changes_wait_for_the_min_period_and_quiet_waits_for_the_max() {
        let mut p = Pacer::new(MIN, MAX);
        let t0 = Instant::now();
        p.finished(t0, true);
        assert_eq!(p.next(t0), (t0 + MAX, Reason::Periodic));
        p.changed();
        assert_eq!(p.next(t0 + Duration::from_millis(100)), (t0 + MIN, Reason::Changes));
        // Long after the last sync a change is synced at once.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(p.next(later), (later, Reason::Changes));
    }

    #[test]
    fn failures_back_off_up_to_the_sync_period() {
        let mut p = Pacer::new(Duration::ZERO, MAX);
        let t0 = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..8 {
            p.finished(t0, false);
            let (at, reason) = p.next(t0);
            assert_eq!(reason, Reason::Retry);
            delays.push((at - t0).as_secs());
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        p.finished(t0, true);
        assert_eq!(p.next(t0).1, Reason::Periodic);
    }
}
