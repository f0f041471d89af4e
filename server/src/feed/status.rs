//! What the feed follower reports, for `/metrics` and `/readyz`: a component that the
//! follower's driver keeps up to date and the operations endpoint reads at each scrape.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use prometheus_client::encoding::EncodeLabelSet;

use super::follower::{Follower, REFUSALS};
use super::source::FeedConfig;

/// Why a revocation list was refused (`gatehouse_revocation_lists_refused_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhyLabel {
    /// `unsigned`, `malformed`, `unknown_key` or `bad_signature`.
    why: &'static str,
}

/// What the feed follower reports, for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct FeedStatus {
    configured: AtomicBool,
    readiness: AtomicBool,
    max_age: AtomicU64,
    /// Unix seconds of the last time the node found itself current (0: never).
    confirmed: AtomicU64,
    /// Whether the node holds an epoch at all (a node started with only a delta does not).
    established: AtomicBool,
    head_epoch: AtomicU64,
    syncs: AtomicU64,
    errors: AtomicU64,
    refused: [AtomicU64; 4],
    snapshots: AtomicU64,
    deltas: AtomicU64,
    /// Milliseconds the last snapshot took to fetch and apply.
    snapshot_ms: AtomicU64,
    /// Whether the state in force is known to be the feed's: it came from the feed, or the
    /// state read from disk had the digest of the feed's list at its epoch (SPEC §11.3).
    matched: AtomicBool,
    /// States read from disk that were not the feed's and were replaced by its snapshot.
    replaced: AtomicU64,
}

impl FeedStatus {
    pub(super) fn configure(&self, config: &FeedConfig, established: bool, confirmed: u64) {
        self.configured.store(true, Ordering::Relaxed);
        self.readiness.store(config.readiness, Ordering::Relaxed);
        self.max_age
            .store(config.max_age.as_secs(), Ordering::Relaxed);
        self.established.store(established, Ordering::Relaxed);
        self.confirmed.store(confirmed, Ordering::Relaxed);
        self.matched.store(false, Ordering::Relaxed);
    }

    /// Takes in what `follower` knows and has counted since the last call.
    pub(super) fn record(&self, follower: &mut Follower) {
        let r = Ordering::Relaxed;
        self.established.store(follower.established(), r);
        self.matched.store(follower.matched(), r);
        self.confirmed.store(follower.confirmed(), r);
        self.head_epoch.store(follower.head_epoch(), r);
        let counts = follower.take_counts();
        for (total, n) in [
            (&self.syncs, counts.syncs),
            (&self.errors, counts.errors),
            (&self.snapshots, counts.snapshots),
            (&self.deltas, counts.deltas),
            (&self.replaced, counts.replaced),
        ] {
            total.fetch_add(n, r);
        }
        for (total, n) in self.refused.iter().zip(counts.refused) {
            total.fetch_add(n, r);
        }
    }

    /// Records how long the last snapshot took to fetch and apply.
    pub(super) fn snapshot_took(&self, took: Duration) {
        self.snapshot_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether a feed is configured.
    pub fn is_configured(&self) -> bool {
        self.configured.load(Ordering::Relaxed)
    }

    /// Whether the state in force is known to be the feed's (SPEC §11.3).
    pub fn matched(&self) -> bool {
        self.matched.load(Ordering::Relaxed)
    }

    /// States read from disk that the feed's snapshot replaced, because they were not the
    /// feed's.
    pub fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    /// Seconds since the node last found itself current, or `None` when it never has.
    pub fn age(&self, now: u64) -> Option<u64> {
        match self.confirmed.load(Ordering::Relaxed) {
            0 => None,
            t => Some(now.saturating_sub(t)),
        }
    }

    /// Whether the state is older than the maximum age (or was never established).
    pub fn stale(&self, now: u64) -> bool {
        if !self.configured.load(Ordering::Relaxed) {
            return false;
        }
        if !self.established.load(Ordering::Relaxed) {
            return true;
        }
        self.age(now)
            .is_none_or(|a| a >= self.max_age.load(Ordering::Relaxed))
    }

    /// Why `/readyz` should fail, if it should.
    pub fn not_ready(&self, now: u64) -> Option<&'static str> {
        (self.readiness.load(Ordering::Relaxed) && self.stale(now))
            .then_some("revocation state older than its maximum age")
    }

    /// Lists refused for this reason (`unsigned`, `malformed`, `unknown_key`,
    /// `bad_signature`).
    pub fn refused(&self, why: &str) -> u64 {
        REFUSALS
            .iter()
            .position(|r| *r == why)
            .map_or(0, |i| self.refused[i].load(Ordering::Relaxed))
    }

    /// Snapshots fetched and applied so far.
    pub fn snapshots(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// Its metrics, read now into `scrape` (none when no feed is configured).
    pub(crate) fn register_metrics(&self, scrape: &mut Registry, now: u64) {
        if !self.configured.load(Ordering::Relaxed) {
            return;
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Help texts are registered without their final full stop: the registry adds it.
        let age = match self.age(now) {
            Some(a) if self.established.load(Ordering::Relaxed) => a as f64,
            _ => f64::INFINITY,
        };
        scrape.register(
            "gatehouse_revocation_age_seconds",
            "Seconds since the feed last confirmed the revocation epoch in force",
            ConstGauge::new(age),
        );
        scrape.register(
            "gatehouse_revocation_max_age_seconds",
            "Oldest revocation state this node vouches for",
            ConstGauge::new(load(&self.max_age)),
        );
        scrape.register(
            "gatehouse_revocation_stale",
            "1 when the revocation state is older than its maximum age (or never established)",
            ConstGauge::new(u64::from(self.stale(now))),
        );
        scrape.register(
            "gatehouse_revocation_feed_epoch",
            "Latest epoch the feed's head announced",
            ConstGauge::new(load(&self.head_epoch)),
        );
        // Counters are named without `_total`: the encoder appends it.
        for (name, help, value) in [
            (
                "gatehouse_revocation_feed_syncs",
                "Pulls that left the node current",
                &self.syncs,
            ),
            (
                "gatehouse_revocation_feed_errors",
                "Pulls that did not (feed unreachable, list refused or not applicable)",
                &self.errors,
            ),
            (
                "gatehouse_revocation_snapshots",
                "Snapshots fetched and applied",
                &self.snapshots,
            ),
            (
                "gatehouse_revocation_deltas",
                "Deltas fetched and applied",
                &self.deltas,
            ),
            (
                "gatehouse_revocation_disk_state_replaced",
                "States read from disk that were not the feed's, replaced by its snapshot",
                &self.replaced,
            ),
        ] {
            scrape.register(name, help, ConstCounter::new(load(value)));
        }
        scrape.register(
            "gatehouse_revocation_snapshot_apply_seconds",
            "Time the last snapshot took to fetch, verify and apply",
            ConstGauge::new(load(&self.snapshot_ms) as f64 / 1000.0),
        );
        let refused = Family::<WhyLabel, Counter>::default();
        for (why, n) in REFUSALS.iter().zip(&self.refused) {
            refused.get_or_create(&WhyLabel { why }).inc_by(load(n));
        }
        scrape.register(
            "gatehouse_revocation_lists_refused",
            "Revocation lists refused (state kept), by why",
            refused,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::source::FeedSource;
    use super::*;

    #[test]
    fn staleness_follows_the_age_and_establishment() {
        let s = FeedStatus::default();
        assert!(!s.stale(1000), "no feed configured: never stale");
        let mut c = FeedConfig::new(FeedSource::Dir("x".into()));
        c.max_age = Duration::from_secs(60);
        s.configure(&c, true, 1000);
        assert!(!s.stale(1059));
        assert!(s.stale(1060));
        assert!(s.not_ready(1060).is_some());
        s.configure(&c, false, 1000);
        assert!(s.stale(1000), "never established: stale from the start");
        c.readiness = false;
        s.configure(&c, true, 1000);
        assert!(s.stale(2000) && s.not_ready(2000).is_none());
    }
}
