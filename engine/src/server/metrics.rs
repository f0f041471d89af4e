//! Service counters and their Prometheus text form. Counters are by kind, role and reason only:
//! no scanner, credential or holder identifier is ever a label.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use gatehouse_protocol::{Reason, WireErrorCode};
use parking_lot::Mutex;

use super::reload::{unix_now, FileResult, ReloadFile, ReloadReport};
use super::store::Store;
use crate::Engine;

/// Latency buckets (seconds): from frame received to response written.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Batch size buckets (tokens per engine batch).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

const ROLES: [&str; 3] = ["gate", "partner", "age_check"];

/// A fixed-bucket histogram of non-negative values, lock-free.
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last one is +Inf.
    counts: Box<[AtomicU64]>,
    /// Sum of observations, in units of `1 / scale`.
    sum: AtomicU64,
    count: AtomicU64,
    scale: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64], scale: f64) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            scale,
        }
    }

    fn observe(&self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum
            .fetch_add((value * self.scale).round() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// Request kinds, for counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Verify = 0,
    VerifyBatch = 1,
    Ping = 2,
}

const KINDS: [&str; 3] = ["verify", "verify_batch", "ping"];
const WIRE_ERRORS: [(WireErrorCode, &str); 4] = [
    (WireErrorCode::MalformedFrame, "malformed_frame"),
    (WireErrorCode::FrameTooLarge, "frame_too_large"),
    (WireErrorCode::UnsupportedVersion, "unsupported_version"),
    (WireErrorCode::UnknownKind, "unknown_kind"),
];

/// Everything the shell counts.
pub(crate) struct Metrics {
    pub connections: AtomicI64,
    pub streams: AtomicI64,
    pub refused_limit: AtomicU64,
    pub refused_unknown_scanner: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Handshakes in progress.
    pub handshakes: AtomicI64,
    /// Initials answered with a QUIC Retry (address validation under pressure).
    pub retries: AtomicU64,
    /// Connections refused at the handshake cap, the per-source cap, the per-scanner cap, or the
    /// memory budget.
    pub refused_handshakes: AtomicU64,
    pub refused_source: AtomicU64,
    pub refused_scanner_limit: AtomicU64,
    pub refused_budget: AtomicU64,
    /// Requests refused (answered `busy`) because the memory budget was spent.
    pub budget_busy: AtomicU64,
    /// Bytes of the memory budget in use, and the budget.
    pub budget_used: AtomicUsize,
    pub budget_total: AtomicUsize,
    /// Operations connections closed to make room for a new one.
    pub ops_evicted: AtomicU64,
    requests: [AtomicU64; 3],
    wire_errors: [AtomicU64; 4],
    /// Tokens answered by the shell, not the engine (queue full, engine gone), by role.
    busy: [AtomicU64; 3],
    unavailable: [AtomicU64; 3],
    /// Tokens admitted to the batcher and not yet answered.
    pub queue_depth: AtomicUsize,
    pub queue_capacity: usize,
    pub batches: AtomicU64,
    latency: Histogram,
    batch_size: Histogram,
    /// False once draining starts.
    pub accepting: AtomicBool,
    /// The one-time-use store.
    pub store: Store,
    /// Reload results, certificate expiry and the revocation epoch's age.
    pub reload: Mutex<ReloadState>,
    /// When this server started, Unix seconds.
    pub started: u64,
    /// The revocation feed's state (all zero when no feed is configured).
    pub feed: std::sync::Arc<super::feed::FeedStatus>,
}

/// What the last reloads did, for `/metrics`, `/readyz` and `gatehouse reload`.
#[derive(Debug, Default)]
pub(crate) struct ReloadState {
    /// Reloads completed since start (SIGHUP or otherwise).
    pub generation: u64,
    /// The last result per file, by [`ReloadFile::index`].
    pub last: [Option<FileResult>; 4],
    /// Results per file: [ok, failed].
    pub counts: [[u64; 2]; 4],
    /// The revocation epoch last seen in force, and since when (Unix seconds).
    pub epoch_seen: Option<(u64, u64)>,
    /// Server certificate (leaf) and client CA expiry, Unix seconds.
    pub server_cert_expiry: Option<u64>,
    /// The earliest expiry among the client CA certificates.
    pub client_ca_expiry: Option<u64>,
}

impl ReloadState {
    /// Notes the epoch in force; an epoch not seen before starts its age now.
    pub fn observe_epoch(&mut self, epoch: u64, now: u64) -> u64 {
        match self.epoch_seen {
            Some((e, since)) if e == epoch => now.saturating_sub(since),
            _ => {
                self.epoch_seen = Some((epoch, now));
                0
            }
        }
    }
}

impl Metrics {
    pub fn new(queue_capacity: usize, store: Store) -> Self {
        Metrics {
            connections: AtomicI64::new(0),
            streams: AtomicI64::new(0),
            refused_limit: AtomicU64::new(0),
            refused_unknown_scanner: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            handshakes: AtomicI64::new(0),
            retries: AtomicU64::new(0),
            refused_handshakes: AtomicU64::new(0),
            refused_source: AtomicU64::new(0),
            refused_scanner_limit: AtomicU64::new(0),
            refused_budget: AtomicU64::new(0),
            budget_busy: AtomicU64::new(0),
            budget_used: AtomicUsize::new(0),
            budget_total: AtomicUsize::new(0),
            ops_evicted: AtomicU64::new(0),
            requests: Default::default(),
            wire_errors: Default::default(),
            busy: Default::default(),
            unavailable: Default::default(),
            queue_depth: AtomicUsize::new(0),
            queue_capacity,
            batches: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_BUCKETS, 1e9),
            batch_size: Histogram::new(BATCH_BUCKETS, 1.0),
            accepting: AtomicBool::new(true),
            store,
            reload: Mutex::new(ReloadState::default()),
            started: unix_now(),
            feed: Default::default(),
        }
    }

    /// Whether the node can answer: not draining, and its one-time-use store answers.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.accepting.load(Ordering::Relaxed) {
            return Err("draining");
        }
        if !self.store.is_up() {
            return Err("one-time-use store unavailable");
        }
        if let Some(why) = self.feed.not_ready(super::batcher::unix_now()) {
            return Err(why);
        }
        Ok(())
    }

    /// Records a completed reload.
    pub fn record_reload(&self, report: &ReloadReport, engine: &Engine) {
        let mut state = self.reload.lock();
        state.generation += 1;
        for f in &report.files {
            let i = f.file.index();
            state.counts[i][usize::from(!f.ok)] += 1;
            state.last[i] = Some(f.clone());
        }
        state.observe_epoch(engine.revocation_epoch().0, unix_now());
    }

    /// The reload lines of `/readyz`: the number of reloads, the server's pid, then one line
    /// per file, `reload <file> ok|failed <unix time> <detail>`. `gatehouse reload` reads them.
    pub fn reload_detail(&self) -> String {
        let state = self.reload.lock();
        let mut out = format!("reloads {}\npid {}\n", state.generation, std::process::id());
        for file in ReloadFile::ALL {
            if let Some(f) = &state.last[file.index()] {
                let _ = writeln!(
                    out,
                    "reload {} {} {} {}",
                    file.label(),
                    if f.ok { "ok" } else { "failed" },
                    f.at,
                    f.detail.replace('\n', " ")
                );
            }
        }
        out
    }

    pub fn request(&self, kind: Kind) {
        self.requests[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn wire_error(&self, code: WireErrorCode) {
        if let Some(i) = WIRE_ERRORS.iter().position(|(c, _)| *c == code) {
            self.wire_errors[i].fetch_add(1, Ordering::Relaxed);
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

    pub fn latency(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    pub fn batch(&self, tokens: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_size.observe(tokens as f64);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, engine: &Engine) -> String {
        let mut out = String::with_capacity(8192);
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };

        let name = "gatehouse_verdicts_total";
        let _ = writeln!(out, "# HELP {name} Verdicts by scanner role and reason (engine verdicts, plus busy/unavailable answered by the server).");
        let _ = writeln!(out, "# TYPE {name} counter");
        let stats = engine.stats();
        for (ri, role) in ROLES.iter().enumerate() {
            for reason in Reason::ALL {
                let mut n = stats.verdicts(ri, *reason);
                if *reason == Reason::Busy {
                    n += self.busy[ri].load(Ordering::Relaxed);
                }
                if *reason == Reason::Unavailable {
                    n += self.unavailable[ri].load(Ordering::Relaxed);
                }
                let _ = writeln!(
                    out,
                    "{name}{{role=\"{role}\",reason=\"{}\"}} {n}",
                    reason.label()
                );
            }
        }

        let name = "gatehouse_requests_total";
        let _ = writeln!(out, "# HELP {name} Request frames read, by kind.");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (i, kind) in KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{kind=\"{kind}\"}} {}",
                self.requests[i].load(Ordering::Relaxed)
            );
        }

        let name = "gatehouse_wire_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Error responses to unreadable frames, by code."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for (i, (_, label)) in WIRE_ERRORS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{code=\"{label}\"}} {}",
                self.wire_errors[i].load(Ordering::Relaxed)
            );
        }

        self.latency.render(
            &mut out,
            "gatehouse_request_duration_seconds",
            "Time from a request frame received to its response written.",
        );
        self.batch_size.render(
            &mut out,
            "gatehouse_batch_size",
            "Tokens per batch handed to the verification pool.",
        );

        gauge(
            &mut out,
            "gatehouse_queue_depth",
            "Tokens admitted and not yet answered (queued or verifying).",
            self.queue_depth.load(Ordering::Relaxed) as i64,
        );
        gauge(
            &mut out,
            "gatehouse_queue_capacity",
            "Most tokens admitted at once; more are answered busy.",
            self.queue_capacity as i64,
        );
        gauge(
            &mut out,
            "gatehouse_connections",
            "Open scanner connections.",
            self.connections.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "gatehouse_streams",
            "Open request streams.",
            self.streams.load(Ordering::Relaxed),
        );
        let name = "gatehouse_connections_refused_total";
        let _ = writeln!(out, "# HELP {name} Connections refused: at the connection limit, scanner not registered, at the handshake cap, at the per-source or per-scanner cap, or over the memory budget.");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (cause, n) in [
            ("limit", &self.refused_limit),
            ("unknown_scanner", &self.refused_unknown_scanner),
            ("handshakes", &self.refused_handshakes),
            ("source", &self.refused_source),
            ("scanner_limit", &self.refused_scanner_limit),
            ("budget", &self.refused_budget),
        ] {
            let _ = writeln!(
                out,
                "{name}{{cause=\"{cause}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }

        counter(
            &mut out,
            "gatehouse_handshake_failures_total",
            "Failed or timed-out TLS handshakes, any cause (unknown scanners included).",
            self.handshake_failures.load(Ordering::Relaxed),
        );

        let name = "gatehouse_replay_store_up";
        let _ = writeln!(out, "# HELP {name} 1 when the one-time-use store answers (memory: always), by store.\n# TYPE {name} gauge");
        let _ = writeln!(
            out,
            "{name}{{store=\"{}\"}} {}",
            self.store.label(),
            u8::from(self.store.is_up())
        );
        if let Store::Redis(r) = &self.store {
            let h = r.health();
            counter(
                &mut out,
                "gatehouse_replay_store_marks_total",
                "Tokens marked used in the shared store.",
                h.marks.load(Ordering::Relaxed),
            );
            counter(
                &mut out,
                "gatehouse_replay_store_failures_total",
                "Batches whose marks failed, timed out, or met the store down (their tokens were answered unavailable).",
                h.failures.load(Ordering::Relaxed),
            );
            counter(
                &mut out,
                "gatehouse_replay_store_outages_total",
                "Times the shared store went down.",
                h.outages.load(Ordering::Relaxed),
            );
            let rt = h.round_trips.load(Ordering::Relaxed);
            let name = "gatehouse_replay_store_round_trip_seconds";
            let _ = writeln!(out, "# HELP {name} Round trips to the shared store (one per batch) and their total time.\n# TYPE {name} summary");
            let _ = writeln!(
                out,
                "{name}_sum {}\n{name}_count {rt}",
                h.round_trip_nanos.load(Ordering::Relaxed) as f64 / 1e9
            );
        }
        gauge(
            &mut out,
            "gatehouse_handshakes",
            "TLS handshakes in progress.",
            self.handshakes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "gatehouse_quic_retries_total",
            "Connection attempts answered with a QUIC Retry (address validation under pressure).",
            self.retries.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "gatehouse_budget_busy_total",
            "Requests answered busy because the memory budget was spent.",
            self.budget_busy.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "gatehouse_memory_budget_used_bytes",
            "Bytes of the memory budget held by handshakes, connections and request bodies.",
            self.budget_used.load(Ordering::Relaxed) as i64,
        );
        gauge(
            &mut out,
            "gatehouse_memory_budget_bytes",
            "The memory budget.",
            self.budget_total.load(Ordering::Relaxed) as i64,
        );
        counter(
            &mut out,
            "gatehouse_ops_connections_evicted_total",
            "Operations-port connections closed to make room for a new one.",
            self.ops_evicted.load(Ordering::Relaxed),
        );

        let ((hits, misses), replay_live, replay_capacity) = engine.occupancy();
        counter(
            &mut out,
            "gatehouse_issuer_cache_hits_total",
            "Issuer signatures found already verified.",
            hits,
        );
        counter(
            &mut out,
            "gatehouse_issuer_cache_misses_total",
            "Issuer signatures verified and remembered.",
            misses,
        );
        gauge(
            &mut out,
            "gatehouse_replay_entries",
            "Live one-time-use entries.",
            replay_live as i64,
        );
        gauge(
            &mut out,
            "gatehouse_replay_capacity",
            "One-time-use table capacity.",
            replay_capacity as i64,
        );
        let (epoch, size) = engine.revocation_epoch();
        gauge(
            &mut out,
            "gatehouse_revocation_epoch",
            "Revocation epoch in force.",
            epoch as i64,
        );
        gauge(
            &mut out,
            "gatehouse_revocation_entries",
            "Revoked identifiers in force.",
            size as i64,
        );
        self.feed.render(&mut out, super::batcher::unix_now());
        gauge(
            &mut out,
            "gatehouse_ready",
            "1 while accepting connections, 0 while draining.",
            i64::from(self.accepting.load(Ordering::Relaxed)),
        );
        self.render_operations(&mut out, epoch);
        out
    }

    /// Build, process, reload, certificate and revocation-age metrics.
    fn render_operations(&self, out: &mut String, epoch: u64) {
        let now = unix_now();
        let name = "gatehouse_build_info";
        let _ = writeln!(
            out,
            "# HELP {name} The running build; the value is always 1."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        process_metrics(out, self.started);

        let mut state = self.reload.lock();
        let age = state.observe_epoch(epoch, now);
        let _ = writeln!(out, "# HELP gatehouse_revocation_epoch_age_seconds Seconds since the revocation epoch in force was put in force.\n# TYPE gatehouse_revocation_epoch_age_seconds gauge\ngatehouse_revocation_epoch_age_seconds {age}");
        let _ = writeln!(out, "# HELP gatehouse_reloads_completed_total Reloads completed (all files).\n# TYPE gatehouse_reloads_completed_total counter\ngatehouse_reloads_completed_total {}", state.generation);
        let name = "gatehouse_reloads_total";
        let _ = writeln!(out, "# HELP {name} File reloads by file and result.");
        let _ = writeln!(out, "# TYPE {name} counter");
        for file in ReloadFile::ALL {
            for (j, result) in ["ok", "failed"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{file=\"{}\",result=\"{result}\"}} {}",
                    file.label(),
                    state.counts[file.index()][j]
                );
            }
        }
        let name = "gatehouse_reload_success";
        let _ = writeln!(out, "# HELP {name} 1 when the file's last reload succeeded, 0 when it was refused (previous state kept).");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for f in state.last.iter().flatten() {
            let _ = writeln!(
                out,
                "{name}{{file=\"{}\"}} {}",
                f.file.label(),
                u8::from(f.ok)
            );
        }
        let name = "gatehouse_reload_timestamp_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} When the file's last reload was attempted, Unix seconds."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        for f in state.last.iter().flatten() {
            let _ = writeln!(out, "{name}{{file=\"{}\"}} {}", f.file.label(), f.at);
        }
        let name = "gatehouse_certificate_expiry_timestamp_seconds";
        let _ = writeln!(out, "# HELP {name} When the TLS certificate in force expires, Unix seconds (client_ca: the earliest CA certificate).");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (which, t) in [
            ("server", state.server_cert_expiry),
            ("client_ca", state.client_ca_expiry),
        ] {
            if let Some(t) = t {
                let _ = writeln!(out, "{name}{{certificate=\"{which}\"}} {t}");
            }
        }
    }
}

/// The standard Prometheus process metrics, read from `/proc/self` (Linux; elsewhere only the
/// start time). CPU time is in the kernel's USER_HZ ticks, 100 per second on Linux.
fn process_metrics(out: &mut String, started: u64) {
    const USER_HZ: f64 = 100.0;
    let _ = writeln!(out, "# HELP process_start_time_seconds Start time of the process since the Unix epoch, seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {started}");
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
    if let (Some(u), Some(s)) = (
        fields.get(11).and_then(|v| v.parse::<f64>().ok()),
        fields.get(12).and_then(|v| v.parse::<f64>().ok()),
    ) {
        let _ = writeln!(out, "# HELP process_cpu_seconds_total Total user and system CPU time spent, seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}", (u + s) / USER_HZ);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
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
    if let Some(rss) = kb("VmRSS:") {
        let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory size, bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}", rss * 1024);
    }
    if let Some(vm) = kb("VmSize:") {
        let _ = writeln!(out, "# HELP process_virtual_memory_bytes Virtual memory size, bytes.\n# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes {}", vm * 1024);
    }
    // Bounded: a process near its descriptor limit must not make every scrape walk it all.
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let open = dir.take(1_000_000).count();
        let _ = writeln!(out, "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {open}");
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(max) = limits.lines().find_map(|l| {
        l.strip_prefix("Max open files")?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    }) {
        let _ = writeln!(out, "# HELP process_max_fds Most open file descriptors allowed.\n# TYPE process_max_fds gauge\nprocess_max_fds {max}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0], 1000.0);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"2\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_sum 6\n"), "{s}");
        assert!(s.contains("x_count 4\n"), "{s}");
    }
}
