//! Service counters and their Prometheus text form, through `prometheus-client`: the shell's own
//! request counters and histograms live in one registry built at start, and what the engine and
//! every [`Component`] (admission, the queue, the one-time-use store, the revocation feed, the
//! reloader) hold is read at scrape time into a second one. Counters are by kind, role and reason only: no scanner, credential or holder
//! identifier is ever a label.
//!
//! Names are registered without the `_total` (counters) and `_info` (build info) suffixes: the
//! encoder appends them, so the exported names are the ones the dashboard and the docs use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_protocol::{Reason, WireErrorCode};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::component::{Component, Rows};
use gatehouse_core::Engine;

/// The `Content-Type` of `/metrics`: the Prometheus text format, version 0.0.4.
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Latency buckets (seconds): from frame received to response written.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Batch size buckets (tokens per engine batch).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

const ROLES: [&str; 3] = ["gate", "partner", "age_check"];

/// A fixed-bucket histogram of non-negative values, lock-free, encoded by `prometheus-client`.
/// Not the crate's own `Histogram`: that one takes a mutex on every observation, and this one is
/// observed once per request on every tokio worker.
#[derive(Clone, Debug)]
pub(crate) struct Histogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last one is +Inf.
    counts: Box<[AtomicU64]>,
    /// Sum of observations, in units of `1 / scale`.
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64], scale: f64) -> Self {
        Histogram(Arc::new(HistogramCells {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }))
    }

    fn observe(&self, value: f64) {
        let h = &self.0;
        let i = h
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(h.bounds.len());
        if let Some(c) = h.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        h.sum
            .fetch_add((value * h.scale).round() as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        // The +Inf bucket is passed explicitly and the count is the buckets' total, so a
        // scrape racing an observation still reads a histogram whose +Inf bucket equals its
        // count (the crate would otherwise write `count` for +Inf, possibly below a bucket).
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = h.sum.load(Ordering::Relaxed) as f64 / h.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    epoch: String,
    digest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignatureLabels {
    single: &'static str,
    batch: &'static str,
    multibuffer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    role: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Request kinds, for counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Verify = 0,
    VerifyBatch = 1,
    Ping = 2,
    VerifyMdoc = 3,
}

const KINDS: [&str; 4] = ["verify", "verify_batch", "ping", "verify_mdoc"];
const WIRE_ERRORS: [(WireErrorCode, &str); 4] = [
    (WireErrorCode::MalformedFrame, "malformed_frame"),
    (WireErrorCode::FrameTooLarge, "frame_too_large"),
    (WireErrorCode::UnsupportedVersion, "unsupported_version"),
    (WireErrorCode::UnknownKind, "unknown_kind"),
];

/// The shell's request counters (kinds, wire errors, latency, batch sizes, what the shell
/// answered itself) and the reader of every [`Component`]. The counters are `prometheus-client`
/// handles (an `Arc` around one atomic each): counting is one relaxed atomic add.
pub(crate) struct Metrics {
    /// Operations connections closed to make room for a new one.
    pub ops_evicted: Counter,
    requests: [Counter; 4],
    wire_errors: [Counter; 4],
    /// Tokens answered by the shell, not the engine (queue full, engine gone), by role; added to
    /// the engine's own verdict counts at scrape time.
    busy: [AtomicU64; 3],
    unavailable: [AtomicU64; 3],
    latency: Histogram,
    batch_size: Histogram,
    /// The metrics above (and the build and process metrics), for encoding.
    registry: Registry,
    /// The shell's clock (ages, readiness).
    clock: Arc<dyn gatehouse_core::Clock>,
    /// Components that own their state and say it at each scrape, in readiness order.
    components: Mutex<Vec<Arc<dyn Component>>>,
}

impl Component for super::feed::FeedStatus {
    fn register_metrics(&self, scrape: &mut Registry, now: u64) {
        super::feed::FeedStatus::register_metrics(self, scrape, now);
    }

    fn not_ready(&self, now: u64) -> Option<&'static str> {
        super::feed::FeedStatus::not_ready(self, now)
    }
}

impl Metrics {
    /// The request counters, registered; no component yet ([`Metrics::add`]).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // Help texts are registered without their final full stop: the registry adds it.
        // Each label value's counter is created once here and kept: counting never goes through
        // the family's map and lock.
        let requests = Family::<KindLabel, Counter>::default();
        let request_counters = KINDS.map(|kind| requests.get_or_create_owned(&KindLabel { kind }));
        registry.register(
            "gatehouse_requests",
            "Request frames read, by kind",
            requests,
        );
        let wire_errors = Family::<CodeLabel, Counter>::default();
        let wire_error_counters =
            WIRE_ERRORS.map(|(_, code)| wire_errors.get_or_create_owned(&CodeLabel { code }));
        registry.register(
            "gatehouse_wire_errors",
            "Error responses to unreadable frames, by code",
            wire_errors,
        );
        let ops_evicted = Counter::default();
        registry.register(
            "gatehouse_ops_connections_evicted",
            "Operations-port connections closed to make room for a new one",
            ops_evicted.clone(),
        );
        let latency = Histogram::new(LATENCY_BUCKETS, 1e9);
        registry.register(
            "gatehouse_request_duration_seconds",
            "Time from a request frame received to its response written",
            latency.clone(),
        );
        let batch_size = Histogram::new(BATCH_BUCKETS, 1.0);
        registry.register(
            "gatehouse_batch_size",
            "Tokens per batch handed to the verification pool",
            batch_size.clone(),
        );

        registry.register(
            "gatehouse_build",
            "The running build; the value is always 1",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        registry.register_collector(Box::new(ProcessCollector {
            started: gatehouse_core::Clock::now(&gatehouse_core::SystemClock),
        }));

        Metrics {
            ops_evicted,
            requests: request_counters,
            wire_errors: wire_error_counters,
            busy: Default::default(),
            unavailable: Default::default(),
            latency,
            batch_size,
            registry,
            clock: Arc::new(gatehouse_core::SystemClock),
            components: Mutex::new(Vec::new()),
        }
    }

    /// Adds a component: each scrape reads its metrics, and readiness asks it after the
    /// components added before it.
    pub(crate) fn add(&self, component: Arc<dyn Component>) {
        self.components.lock().push(component);
    }

    /// The same, reading `clock` for ages and readiness.
    pub fn with_clock(mut self, clock: Arc<dyn gatehouse_core::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Whether this node, apart from what it shares with others, can answer (not draining):
    /// `/readyz/local`.
    pub fn ready_local(&self) -> Result<(), &'static str> {
        let now = self.clock.now();
        match self
            .components
            .lock()
            .iter()
            .find_map(|c| c.not_ready_local(now))
        {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Whether the node can answer: every component ready (not draining, the one-time-use store
    /// answers, the revocation state is within its age, …), asked in the order they were added.
    pub fn ready(&self) -> Result<(), &'static str> {
        let now = self.clock.now();
        match self.components.lock().iter().find_map(|c| c.not_ready(now)) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// A request frame of `kind` was read.
    pub fn request(&self, kind: Kind) {
        self.requests[kind as usize].inc();
    }

    /// An error response with `code` was sent for an unreadable frame.
    pub fn wire_error(&self, code: WireErrorCode) {
        if let Some(i) = WIRE_ERRORS.iter().position(|(c, _)| *c == code) {
            self.wire_errors[i].inc();
        }
    }

    /// Tokens the shell answered itself with `reason` (busy or unavailable).
    pub fn shed(&self, role_index: usize, reason: Reason, tokens: usize) {
        let table = if reason == Reason::Busy {
            &self.busy
        } else {
            &self.unavailable
        };
        table[role_index % ROLES.len()].fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// A request took `d` from its frame received to its response written.
    pub fn latency(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    /// A batch of `tokens` went to the verification pool.
    pub fn batch(&self, tokens: usize) {
        self.batch_size.observe(tokens as f64);
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]): the live metrics, then
    /// what is read now from the engine and from every component.
    pub fn render(&self, engine: &Engine) -> Result<String, std::fmt::Error> {
        let mut scrape = Registry::default();
        self.read_engine(&mut scrape, engine);
        let now = self.clock.now();
        for component in self.components.lock().iter() {
            component.register_metrics(&mut scrape, now);
        }
        let mut out = String::with_capacity(16 * 1024);
        prometheus_text::encode(&mut out, &self.registry)?;
        prometheus_text::encode(&mut out, &scrape)?;
        Ok(out)
    }

    /// Verdicts, caches and the revocation state in force.
    fn read_engine(&self, scrape: &mut Registry, engine: &Engine) {
        let stats = engine.stats();
        let mut verdicts = Vec::with_capacity(ROLES.len() * Reason::ALL.len());
        for (ri, role) in ROLES.iter().enumerate() {
            for reason in Reason::ALL {
                let mut n = stats.verdicts(ri, *reason);
                if *reason == Reason::Busy {
                    n += self.busy[ri].load(Ordering::Relaxed);
                }
                if *reason == Reason::Unavailable {
                    n += self.unavailable[ri].load(Ordering::Relaxed);
                }
                let labels = VerdictLabels {
                    role,
                    reason: reason.label(),
                };
                verdicts.push((labels, ConstCounter::new(n)));
            }
        }
        scrape.register(
            "gatehouse_verdicts",
            "Verdicts by scanner role and reason (engine verdicts, plus busy/unavailable \
             answered by the server)",
            Rows(verdicts),
        );

        register_signatures(scrape, engine);
        let ((hits, misses), replay_live, replay_capacity) = engine.occupancy();
        scrape.register(
            "gatehouse_issuer_cache_hits",
            "Issuer signatures found already verified",
            ConstCounter::new(hits),
        );
        scrape.register(
            "gatehouse_issuer_cache_misses",
            "Issuer signatures verified and remembered",
            ConstCounter::new(misses),
        );
        scrape.register(
            "gatehouse_replay_entries",
            "Live one-time-use entries",
            ConstGauge::new(replay_live as u64),
        );
        scrape.register(
            "gatehouse_replay_capacity",
            "One-time-use table capacity",
            ConstGauge::new(replay_capacity as u64),
        );
        let (epoch, size) = engine.revocation_epoch();
        scrape.register(
            "gatehouse_revocation_epoch",
            "Revocation epoch in force",
            ConstGauge::new(epoch),
        );
        scrape.register(
            "gatehouse_revocation_entries",
            "Revoked identifiers in force",
            ConstGauge::new(size as u64),
        );
        let state = engine.revocations().load();
        scrape.register(
            "gatehouse_revocation_state",
            "The revocation state in force: its epoch and the first 8 bytes of its digest \
             (SPEC 11.5); nodes with the same state show the same labels",
            Info::new(StateLabels {
                epoch: state.epoch().to_string(),
                digest: gatehouse_core::short_hex(&state.digest()),
            }),
        );
    }
}

/// The standard Prometheus process metrics, read from `/proc/self` at each scrape (Linux;
/// elsewhere only the start time). `prometheus-client` has no process collector of its own.
#[derive(Debug)]
struct ProcessCollector {
    /// When this server started, Unix seconds.
    started: u64,
}

/// What `/proc/self` says about this process; `None` where a file was unreadable.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl ProcessStats {
    fn read() -> Self {
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        let mut stats = ProcessStats::parse(
            &read("/proc/self/stat"),
            &read("/proc/self/status"),
            &read("/proc/self/limits"),
        );
        // Bounded: a process near its descriptor limit must not make every scrape walk it all.
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            stats.open_fds = Some(dir.take(1_000_000).count() as u64);
        }
        stats
    }

    /// Parses the texts of `/proc/self/stat`, `status` and `limits`. CPU time is in the
    /// kernel's USER_HZ ticks, 100 per second on Linux.
    fn parse(stat: &str, status: &str, limits: &str) -> Self {
        const USER_HZ: f64 = 100.0;
        // Fields after the command name (which is in parentheses and may hold spaces).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
        let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        let cpu_seconds = match (tick(11), tick(12)) {
            (Some(u), Some(s)) => Some((u + s) / USER_HZ),
            _ => None,
        };
        let kb = |key: &str| {
            status.lines().find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        };
        let max_fds = limits.lines().find_map(|l| {
            l.strip_prefix("Max open files")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        });
        ProcessStats {
            cpu_seconds,
            resident_bytes: kb("VmRSS:").map(|v| v.saturating_mul(1024)),
            virtual_bytes: kb("VmSize:").map(|v| v.saturating_mul(1024)),
            open_fds: None,
            max_fds,
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Help texts end in a full stop here: a collector's descriptors are written as given.
        fn put(
            encoder: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            metric: impl EncodeMetric,
        ) -> Result<(), std::fmt::Error> {
            let kind = metric.metric_type();
            metric.encode(encoder.encode_descriptor(name, help, None, kind)?)
        }
        let p = ProcessStats::read();
        let e = &mut encoder;
        put(
            e,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, seconds.",
            ConstGauge::new(self.started),
        )?;
        if let Some(cpu) = p.cpu_seconds {
            put(
                e,
                "process_cpu_seconds",
                "Total user and system CPU time spent, seconds.",
                ConstCounter::new(cpu),
            )?;
        }
        for (value, name, help) in [
            (
                p.resident_bytes,
                "process_resident_memory_bytes",
                "Resident memory size, bytes.",
            ),
            (
                p.virtual_bytes,
                "process_virtual_memory_bytes",
                "Virtual memory size, bytes.",
            ),
            (p.open_fds, "process_open_fds", "Open file descriptors."),
            (
                p.max_fds,
                "process_max_fds",
                "Most open file descriptors allowed.",
            ),
        ] {
            if let Some(v) = value {
                put(e, name, help, ConstGauge::new(v))?;
            }
        }
        Ok(())
    }
}

/// How signatures are checked: the paths in force and the batch paths' counters.
fn register_signatures(scrape: &mut Registry, engine: &Engine) {
    let config = engine.config();
    scrape.register(
        "gatehouse_signature_paths",
        "How signatures are checked: the single verifier (ring, p256, or strict), the batch \
             path in force (off, equation, multibuffer) and whether multi-buffer can run here",
        Info::new(SignatureLabels {
            single: if config.strict_signatures {
                "strict"
            } else {
                config.backend.label()
            },
            batch: engine.batching().label(),
            multibuffer: gatehouse_mb::status().label(),
        }),
    );
    let batches = engine.batch_stats();
    scrape.register(
        "gatehouse_signature_batches",
        "Batches whose signatures were checked with one multi-scalar equation",
        ConstCounter::new(batches.batches()),
    );
    scrape.register(
        "gatehouse_signature_batches_failed",
        "Of those, equations that failed: every token of the batch was then checked singly",
        ConstCounter::new(batches.failed()),
    );
    scrape.register(
        "gatehouse_signatures_batched",
        "Signatures that went into batch equations",
        ConstCounter::new(batches.signatures()),
    );
    scrape.register(
        "gatehouse_signatures_routed_single",
        "Signatures kept out of an equation because their scanner's tokens made one fail \
             recently (checked singly)",
        ConstCounter::new(batches.routed()),
    );
    scrape.register(
        "gatehouse_multibuffer_calls",
        "Multi-buffer (AVX-512 IFMA) calls of up to eight signatures",
        ConstCounter::new(batches.mb_calls()),
    );
    scrape.register(
        "gatehouse_multibuffer_signatures",
        "Signatures checked in multi-buffer calls",
        ConstCounter::new(batches.mb_signatures()),
    );
    scrape.register(
        "gatehouse_multibuffer_unproven",
        "Of those, signatures a call did not prove (then checked singly)",
        ConstCounter::new(batches.mb_unproven()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Admission;
    use crate::component::Totals;
    use crate::reload::ReloadStatus;
    use crate::settings::Limits;
    use gatehouse_core::{EngineConfig, ScannerRegistry, TrustList};

    fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, registry).unwrap();
        out
    }

    /// The value of the one sample named exactly `series` (name and labels).
    fn sample(body: &str, series: &str) -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0], 1000.0);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let mut registry = Registry::default();
        registry.register("x", "help", h);
        let s = encode(&registry);
        assert!(s.contains("# TYPE x histogram\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"2\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 4\n"), "{s}");
        assert_eq!(sample(&s, "x_sum"), Some(6.0), "{s}");
        assert!(s.contains("x_count 4\n"), "{s}");
    }

    #[test]
    fn a_sum_and_count_histogram_has_one_inf_bucket() {
        let mut registry = Registry::default();
        registry.register("rt", "help", Totals { sum: 1.5, count: 3 });
        let s = encode(&registry);
        assert!(s.contains("# TYPE rt histogram\n"), "{s}");
        assert!(s.contains("rt_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert_eq!(sample(&s, "rt_sum"), Some(1.5), "{s}");
        assert!(s.contains("rt_count 3\n"), "{s}");
    }

    #[test]
    fn names_keep_their_suffixes_and_counts_move() {
        let engine = Arc::new(
            Engine::new(
                EngineConfig::default(),
                TrustList::new(),
                ScannerRegistry::new(),
            )
            .unwrap(),
        );
        let m = Metrics::new();
        // The components own their state; the scrape reads it from them.
        let admission = Admission::new(&Limits::default());
        m.add(Arc::clone(&admission) as Arc<dyn Component>);
        m.add(ReloadStatus::at_start(
            Arc::clone(&engine),
            (None, None),
            None,
            0,
        ));
        let depth = Arc::new(crate::batcher::Depth::new(64));
        m.add(Arc::clone(&depth) as Arc<dyn Component>);
        let before = m.render(&engine).unwrap();
        // The encoder appends `_total` and `_info` itself: registering a name that already
        // had one would export `_total_total`.
        assert!(!before.contains("_total_total"), "{before}");
        assert!(!before.contains("_info_info"), "{before}");
        for family in [
            "# TYPE gatehouse_verdicts_total counter\n",
            "# TYPE gatehouse_requests_total counter\n",
            "# TYPE gatehouse_connections_refused_total counter\n",
            "# TYPE gatehouse_build_info gauge\n",
            "# TYPE gatehouse_reloads_completed_total counter\n",
            "# TYPE process_start_time_seconds gauge\n",
            "# TYPE gatehouse_queue_capacity gauge\n",
        ] {
            assert!(before.contains(family), "{family}\n{before}");
        }
        assert_eq!(sample(&before, "gatehouse_queue_capacity"), Some(64.0));
        let build = format!(
            "gatehouse_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(before.contains(&build), "{before}");

        let busy = "gatehouse_verdicts_total{role=\"gate\",reason=\"busy\"}";
        let verify = "gatehouse_requests_total{kind=\"verify\"}";
        let limit = "gatehouse_connections_refused_total{cause=\"unknown_scanner\"}";
        let code = "gatehouse_wire_errors_total{code=\"frame_too_large\"}";
        for series in [busy, verify, limit, code] {
            assert_eq!(sample(&before, series), Some(0.0), "{series}\n{before}");
        }
        m.shed(0, Reason::Busy, 3);
        m.request(Kind::Verify);
        m.request(Kind::Verify);
        admission.refused_unknown_scanner();
        m.wire_error(WireErrorCode::FrameTooLarge);
        let _stream = admission.stream();
        m.latency(Duration::from_micros(300));
        m.batch(5);
        depth.set(7);
        let after = m.render(&engine).unwrap();
        for (series, value) in [
            (busy, 3.0),
            (verify, 2.0),
            (limit, 1.0),
            (code, 1.0),
            ("gatehouse_streams", 1.0),
            ("gatehouse_queue_depth", 7.0),
            (
                "gatehouse_request_duration_seconds_bucket{le=\"0.0005\"}",
                1.0,
            ),
            ("gatehouse_request_duration_seconds_count", 1.0),
            ("gatehouse_batch_size_bucket{le=\"4\"}", 0.0),
            ("gatehouse_batch_size_bucket{le=\"8\"}", 1.0),
            ("gatehouse_batch_size_sum", 5.0),
        ] {
            assert_eq!(sample(&after, series), Some(value), "{series}\n{after}");
        }
    }

    #[test]
    fn process_stats_are_parsed_from_proc_texts() {
        let stat = "1234 (gate house) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0";
        let status = "Name:\tgatehouse\nVmSize:\t  20000 kB\nVmRSS:\t    3000 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let p = ProcessStats::parse(stat, status, limits);
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: Some(3.0),
                resident_bytes: Some(3000 * 1024),
                virtual_bytes: Some(20000 * 1024),
                open_fds: None,
                max_fds: Some(1024),
            }
        );
        assert_eq!(ProcessStats::parse("", "", ""), ProcessStats::default());
    }
}
