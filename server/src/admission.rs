//! Admission: what the server lets in before it spends anything on it. It owns every cap and
//! what counts against it — connections, handshakes in progress (in all and per source
//! address), connections per scanner, the memory budget, the drain — and the counters of what
//! it refused. Each unit it grants is an RAII permit ([`Held`], [`Slot`], [`Charge`]) moved into
//! the task that uses it and given back when that task ends, however it ends (as mini-redis's
//! `limit_connections` does with a semaphore).
//!
//! Admission decides only from what it holds; `/metrics` reads it as a [`Component`].

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use quinn::Incoming;
use tracing::debug;

use crate::budget::{Budget, Charge, CONNECTION_COST, HANDSHAKE_COST};
use crate::component::{Component, Rows};
use crate::settings::Limits;
use crate::tally::{Taken, Tally};

/// Why a connection was refused: the `cause` label of `gatehouse_connections_refused`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// At the connection limit.
    Limit,
    /// The scanner is not registered.
    UnknownScanner,
    /// At the cap of handshakes in progress.
    Handshakes,
    /// At the per-source cap of handshakes in progress.
    Source,
    /// The scanner already has its most connections.
    ScannerLimit,
    /// Over the memory budget.
    Budget,
}

impl Cause {
    const ALL: [Cause; 6] = [
        Cause::Limit,
        Cause::UnknownScanner,
        Cause::Handshakes,
        Cause::Source,
        Cause::ScannerLimit,
        Cause::Budget,
    ];

    fn label(self) -> &'static str {
        match self {
            Cause::Limit => "limit",
            Cause::UnknownScanner => "unknown_scanner",
            Cause::Handshakes => "handshakes",
            Cause::Source => "source",
            Cause::ScannerLimit => "scanner_limit",
            Cause::Budget => "budget",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

/// Why a scanner's established connection was not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The scanner already has `max_connections_per_scanner` connections.
    TooManyConnections,
    /// The memory budget is spent.
    OverBudget,
}

/// The caps, the counts against them and what was refused.
pub(crate) struct Admission {
    max_connections: usize,
    max_handshakes: usize,
    retry_threshold: usize,
    max_handshakes_per_source: usize,
    max_connections_per_scanner: usize,
    budget: Arc<Budget>,
    /// Handshakes in progress per source address from addresses not yet validated.
    sources: Tally<IpAddr>,
    /// Handshakes in progress per source address from validated addresses (a Retry answered),
    /// oldest first: the one a new validated handshake evicts when its source is at the cap.
    validated: Arc<Mutex<HashMap<IpAddr, VecDeque<Arc<Eviction>>>>>,
    next_handshake: AtomicU64,
    evicted: Counter,
    /// Open connections per scanner.
    scanners: Tally<Arc<str>>,
    connections: Gauge,
    streams: Gauge,
    handshakes: Gauge,
    refused: [Counter; 6],
    handshake_failures: Counter,
    retries: Counter,
    budget_busy: Counter,
    busy_holds: Counter,
    /// False once draining starts.
    accepting: AtomicBool,
}

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: &Limits) -> Arc<Admission> {
        Arc::new(Admission {
            max_connections: limits.max_connections,
            max_handshakes: limits.max_handshakes,
            retry_threshold: limits.retry_threshold,
            max_handshakes_per_source: limits.max_handshakes_per_source,
            max_connections_per_scanner: limits.max_connections_per_scanner,
            budget: Budget::new(limits.memory_budget),
            sources: Tally::default(),
            validated: Arc::default(),
            next_handshake: AtomicU64::new(0),
            evicted: Counter::default(),
            scanners: Tally::default(),
            connections: Gauge::default(),
            streams: Gauge::default(),
            handshakes: Gauge::default(),
            refused: Default::default(),
            handshake_failures: Counter::default(),
            retries: Counter::default(),
            budget_busy: Counter::default(),
            busy_holds: Counter::default(),
            accepting: AtomicBool::new(true),
        })
    }

    fn refuse(&self, cause: Cause) {
        self.refused[cause as usize].inc();
    }

    fn handshakes_in_progress(&self) -> usize {
        usize::try_from(self.handshakes.get()).unwrap_or(0)
    }

    /// Whether handshakes in progress are at or above the Retry threshold: new attempts from
    /// addresses not yet validated get a Retry, and handshakes get the short timeout.
    pub fn under_pressure(&self) -> bool {
        self.handshakes_in_progress() >= self.retry_threshold
    }

    /// Unvalidated handshakes in progress from one address from which its new attempts get a
    /// QUIC Retry: a quarter of `max_handshakes_per_source` (8 by default), at least one.
    fn source_retry_from(&self) -> usize {
        (self.max_handshakes_per_source / 4).max(1)
    }

    /// Answers `incoming` with a QUIC Retry (counted), or refuses it with `cause` where a
    /// Retry cannot be sent.
    fn retry(&self, incoming: Incoming, cause: Cause) {
        if !incoming.may_retry() {
            self.refuse(cause);
            incoming.refuse();
            return;
        }
        match incoming.retry() {
            Ok(()) => {
                self.retries.inc();
            }
            // Cannot happen after `may_retry`; refuse rather than guess.
            Err(e) => {
                e.into_incoming().refuse();
                self.refuse(cause);
            }
        }
    }

    /// Decides on a connection attempt before any state is spent on it: at the connection
    /// limit, the handshake cap or the budget it is refused. An address not yet validated gets
    /// a QUIC Retry under pressure, or when its own unvalidated handshakes in progress reach
    /// [`source_retry_from`](Self::source_retry_from) (stateless: a flood from spoofed or
    /// unresponsive sources ends there, and a scanner behind the same address answers the
    /// Retry and comes back validated). A validated address holds at most
    /// `max_handshakes_per_source` handshakes; a new one evicts its oldest unfinished one, so
    /// a scanner that completes Retry and the TLS handshake always gets a slot, whatever else
    /// shares its address. What is let in comes with its permits: the handshake's (until the
    /// handshake ends) and the connection's (until the connection ends).
    pub fn admit(&self, incoming: Incoming) -> Option<(Incoming, Handshake, Held)> {
        // Counted, not logged one by one: a flood would flood the log.
        let open = usize::try_from(self.connections.get()).unwrap_or(0);
        if open >= self.max_connections {
            self.refuse(Cause::Limit);
            debug!(open, "connection refused: at the connection limit");
            incoming.refuse();
            return None;
        }
        let in_progress = self.handshakes_in_progress();
        if in_progress >= self.max_handshakes {
            self.refuse(Cause::Handshakes);
            incoming.refuse();
            return None;
        }
        let validated = incoming.remote_address_validated();
        if in_progress >= self.retry_threshold && !validated && incoming.may_retry() {
            self.retry(incoming, Cause::Handshakes);
            return None;
        }
        let ip = incoming.remote_address().ip();
        let source = if validated {
            match self.take_validated(ip) {
                Some(slot) => Source::Validated(slot),
                None => {
                    self.refuse(Cause::Source);
                    incoming.refuse();
                    return None;
                }
            }
        } else {
            match self.sources.try_take(&ip, 1, self.source_retry_from()) {
                Some(taken) => Source::Unvalidated(taken),
                None => {
                    self.retry(incoming, Cause::Source);
                    return None;
                }
            }
        };
        let Some(charge) = self.budget.try_take(HANDSHAKE_COST) else {
            self.refuse(Cause::Budget);
            incoming.refuse();
            return None;
        };
        let handshake = Handshake {
            source,
            _charge: charge,
            _gauge: Held::new(&self.handshakes),
        };
        Some((incoming, handshake, Held::new(&self.connections)))
    }

    /// A slot among `ip`'s validated handshakes. At the cap the oldest unfinished one is
    /// evicted if it has run for [`EVICT_AFTER`] (a scanner's handshake takes milliseconds, a
    /// stalled one ages); `None` (refused, as before the cap had eviction) when even the oldest
    /// is younger, so a burst of honest scanners behind one address never evicts itself.
    fn take_validated(&self, ip: IpAddr) -> Option<ValidatedSlot> {
        let mut m = self.validated.lock();
        let queue = m.entry(ip).or_default();
        while queue.len() >= self.max_handshakes_per_source {
            match queue.front() {
                Some(oldest) if oldest.since.elapsed() >= EVICT_AFTER => {
                    oldest.notify.notify_one();
                    queue.pop_front();
                    self.evicted.inc();
                }
                _ => return None,
            }
        }
        let eviction = Arc::new(Eviction {
            id: self.next_handshake.fetch_add(1, Ordering::Relaxed),
            notify: Notify::new(),
            since: std::time::Instant::now(),
        });
        queue.push_back(Arc::clone(&eviction));
        Some(ValidatedSlot {
            table: Arc::clone(&self.validated),
            ip,
            eviction,
        })
    }

    /// Lets an established connection of scanner `id` in: a place among the scanner's
    /// connections and the connection's share of the budget, both held until dropped.
    pub fn admit_scanner(&self, id: &Arc<str>) -> Result<(Taken<Arc<str>>, Charge), Refusal> {
        let Some(slot) = self
            .scanners
            .try_take(id, 1, self.max_connections_per_scanner)
        else {
            self.refuse(Cause::ScannerLimit);
            return Err(Refusal::TooManyConnections);
        };
        let Some(charge) = self.budget.try_take(CONNECTION_COST) else {
            self.refuse(Cause::Budget);
            return Err(Refusal::OverBudget);
        };
        Ok((slot, charge))
    }

    /// `bytes` of a request body from the budget, or `None` (counted: the request is refused
    /// unread).
    pub fn charge_body(&self, bytes: usize) -> Option<Charge> {
        let charge = self.budget.try_take(bytes);
        if charge.is_none() {
            self.budget_busy.inc();
        }
        charge
    }

    /// A stream, counted in the stream gauge until dropped.
    pub fn stream(&self) -> Held {
        Held::new(&self.streams)
    }

    /// A handshake failed or timed out.
    pub fn handshake_failed(&self) {
        self.handshake_failures.inc();
    }

    /// A scanner that is not (or no longer) registered was refused.
    pub fn refused_unknown_scanner(&self) {
        self.refuse(Cause::UnknownScanner);
    }

    /// A request was held unread because its scanner had its share of the queue.
    pub fn busy_hold(&self) {
        self.busy_holds.inc();
    }

    /// Draining starts: the node stops being ready.
    pub fn start_drain(&self) {
        self.accepting.store(false, Ordering::Relaxed);
    }

    fn draining(&self) -> bool {
        !self.accepting.load(Ordering::Relaxed)
    }

    /// Bytes of the budget in use.
    #[cfg(test)]
    pub fn budget_used(&self) -> usize {
        self.budget.used()
    }
}

impl Component for Admission {
    fn register_metrics(&self, scrape: &mut Registry, _now: u64) {
        scrape.register(
            "gatehouse_connections",
            "Open scanner connections",
            self.connections.clone(),
        );
        scrape.register(
            "gatehouse_streams",
            "Open request streams",
            self.streams.clone(),
        );
        scrape.register(
            "gatehouse_handshakes",
            "TLS handshakes in progress",
            self.handshakes.clone(),
        );
        let refused = Cause::ALL
            .iter()
            .map(|c| {
                let label = CauseLabel { cause: c.label() };
                (label, self.refused[*c as usize].clone())
            })
            .collect();
        scrape.register(
            "gatehouse_connections_refused",
            "Connections refused: at the connection limit, scanner not registered, at the \
             handshake cap, at the per-source or per-scanner cap, or over the memory budget",
            Rows(refused),
        );
        let counters = [
            (
                "gatehouse_handshake_failures",
                "Failed or timed-out TLS handshakes, any cause (unknown scanners included)",
                &self.handshake_failures,
            ),
            (
                "gatehouse_handshakes_evicted",
                "Unfinished handshakes from a validated address ended to make room for a newer \
                 one from that address (at max_handshakes_per_source)",
                &self.evicted,
            ),
            (
                "gatehouse_quic_retries",
                "Connection attempts answered with a QUIC Retry (address validation: under \
                 pressure, or from an address at its share of unvalidated handshakes)",
                &self.retries,
            ),
            (
                "gatehouse_budget_busy",
                "Requests answered busy because the memory budget was spent",
                &self.budget_busy,
            ),
            (
                "gatehouse_busy_holds",
                "Requests held unread for busy_hold_ms because their scanner had its share of the queue",
                &self.busy_holds,
            ),
        ];
        for (name, help, counter) in counters {
            scrape.register(name, help, counter.clone());
        }
        self.budget.register_metrics(scrape);
        scrape.register(
            "gatehouse_ready",
            "1 while accepting connections, 0 while draining",
            ConstGauge::new(u64::from(!self.draining())),
        );
    }

    fn not_ready(&self, now: u64) -> Option<&'static str> {
        self.not_ready_local(now)
    }

    fn not_ready_local(&self, _now: u64) -> Option<&'static str> {
        self.draining().then_some("draining")
    }
}

/// A handshake in progress: counted in the handshake gauge and against its source address, and
/// charged to the budget, until dropped (when the handshake ends, however it ends).
pub(crate) struct Handshake {
    source: Source,
    _charge: Charge,
    _gauge: Held,
}

impl Handshake {
    /// Resolves when a newer validated handshake from the same address evicted this one
    /// (never for a handshake from an address not yet validated).
    pub async fn evicted(&self) {
        match &self.source {
            Source::Validated(slot) => slot.eviction.notify.notified().await,
            Source::Unvalidated(_) => std::future::pending().await,
        }
    }
}

/// A handshake's place among its source address's handshakes in progress (each given back
/// when dropped).
enum Source {
    Unvalidated(#[allow(dead_code)] Taken<IpAddr>),
    Validated(ValidatedSlot),
}

/// How an unfinished validated handshake is told it was evicted.
struct Eviction {
    id: u64,
    notify: Notify,
    since: std::time::Instant,
}

/// How long an unfinished validated handshake runs before a newer one from its address may
/// evict it (at `max_handshakes_per_source`).
const EVICT_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// A place among an address's validated handshakes; given back when dropped (if not evicted).
struct ValidatedSlot {
    table: Arc<Mutex<HashMap<IpAddr, VecDeque<Arc<Eviction>>>>>,
    ip: IpAddr,
    eviction: Arc<Eviction>,
}

impl Drop for ValidatedSlot {
    fn drop(&mut self) {
        let mut m = self.table.lock();
        if let Some(queue) = m.get_mut(&self.ip) {
            queue.retain(|e| e.id != self.eviction.id);
            if queue.is_empty() {
                m.remove(&self.ip);
            }
        }
    }
}

/// One unit of a gauge, taken before a task is spawned and moved into it: released when the
/// task ends, however it ends (even aborted before it first ran).
pub(crate) struct Held(Gauge);

impl Held {
    fn new(gauge: &Gauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections_per_scanner: 2,
            memory_budget: 4 * HANDSHAKE_COST,
            ..Limits::default()
        }
    }

    #[test]
    fn a_scanner_gets_its_most_connections_and_its_place_back_when_one_ends() {
        let a = Admission::new(&limits());
        let id: Arc<str> = Arc::from("gate-1");
        let first = a.admit_scanner(&id).unwrap();
        let second = a.admit_scanner(&id).unwrap();
        assert_eq!(
            a.admit_scanner(&id).err(),
            Some(Refusal::TooManyConnections)
        );
        assert!(a.admit_scanner(&Arc::from("gate-2")).is_ok());
        drop(first);
        let third = a.admit_scanner(&id).unwrap();
        assert_eq!(a.refused[Cause::ScannerLimit as usize].get(), 1);
        drop((second, third));
        assert_eq!(a.scanners.keys(), 0, "no entry for a key holding none");
    }

    #[test]
    fn bodies_are_charged_to_the_budget_and_refusals_counted() {
        let a = Admission::new(&limits());
        let all = a.charge_body(4 * HANDSHAKE_COST).unwrap();
        assert!(a.charge_body(1).is_none());
        assert_eq!(a.budget_busy.get(), 1);
        assert_eq!(
            a.admit_scanner(&Arc::from("gate-1")).err(),
            Some(Refusal::OverBudget)
        );
        drop(all);
        assert_eq!(a.budget_used(), 0);
    }

    /// A validated address holds at most max_handshakes_per_source handshakes; the next one
    /// evicts the oldest unfinished one once that has run for EVICT_AFTER (its `evicted()`
    /// resolves), and is refused before; a finished one gives its place back.
    #[tokio::test]
    async fn a_validated_handshake_at_the_cap_evicts_the_oldest_of_its_address() {
        let a = Admission::new(&Limits {
            max_handshakes_per_source: 3,
            ..Limits::default()
        });
        let ip: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        let mut slots: Vec<ValidatedSlot> = (0..3).map(|_| a.take_validated(ip).unwrap()).collect();
        let elsewhere = a.take_validated(other).unwrap();
        // The oldest has not run for EVICT_AFTER yet: refused, nothing evicted.
        assert!(a.take_validated(ip).is_none());
        assert_eq!(a.evicted.get(), 0);
        std::thread::sleep(EVICT_AFTER);
        let newest = a.take_validated(ip).unwrap();
        assert_eq!(a.evicted.get(), 1, "the oldest of 127.0.0.1 made room");
        let oldest = Handshake {
            source: Source::Validated(slots.remove(0)),
            _charge: a.budget.try_take(1).unwrap(),
            _gauge: Held::new(&a.handshakes),
        };
        tokio::time::timeout(std::time::Duration::from_secs(1), oldest.evicted())
            .await
            .expect("the oldest handshake is told it was evicted");
        assert_eq!(a.validated.lock()[&ip].len(), 3);
        assert_eq!(
            a.validated.lock()[&other].len(),
            1,
            "another address is untouched"
        );
        drop((newest, elsewhere, oldest));
        assert_eq!(
            a.validated.lock()[&ip].len(),
            2,
            "the two still in progress"
        );
        drop(slots);
        assert!(a.validated.lock().is_empty());
        assert!(
            !a.validated.lock().contains_key(&other),
            "no entry for an address holding none"
        );
    }

    #[test]
    fn streams_are_counted_while_held_and_draining_is_not_ready() {
        let a = Admission::new(&limits());
        let s = a.stream();
        assert_eq!(a.streams.get(), 1);
        drop(s);
        assert_eq!(a.streams.get(), 0);
        assert_eq!(a.not_ready(0), None);
        a.start_drain();
        assert_eq!(a.not_ready(0), Some("draining"));
        assert_eq!(a.not_ready_local(0), Some("draining"));
    }
}
