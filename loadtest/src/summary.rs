//! What a run measured, in one place: the raw statistics of an open-loop run ([`RunStats`],
//! kept in HDR histograms) and the summaries that the report, the budget and the HTML page read
//! ([`RunSummary`], [`SweepSummary`], [`GooseSummary`], [`BaselineDiff`]), with the histogram
//! helpers every driver uses. It depends on the plan's vocabulary ([`Phase`], [`Scenario`]) and
//! nothing else of the harness, so the drivers, the budget and the report all build on it
//! without depending on one another.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::model::{Phase, Scenario, Shard};

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// One second of an open-loop run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Second {
    /// Second of the plan.
    pub t: u64,
    /// The plan's rate in the middle of it.
    pub planned_rps: f64,
    /// Requests scheduled in it.
    pub sent: u64,
    /// Of those, answered with a verdict.
    pub answered: u64,
    /// Of those, errors.
    pub errors: u64,
    /// Of those, mismatches.
    pub mismatches: u64,
    /// Median latency of those answered, µs (two significant digits; 0 in reports written
    /// before it was recorded).
    #[serde(default)]
    pub p50_us: u64,
    /// 99th percentile latency of those answered, µs (two significant digits).
    pub p99_us: u64,
}

/// CPU seconds used during a run, by the harness and (when it was spawned here) the engine.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Cpu {
    /// The harness process.
    pub harness_secs: Option<f64>,
    /// The engine process, when the harness started it (with several nodes, their sum).
    pub engine_secs: Option<f64>,
    /// The Redis server(s) the harness started for the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_secs: Option<f64>,
    /// Context switches, voluntary and involuntary, of the engine's threads, when the harness
    /// started it (with several nodes, their sum; Linux). Misses those of threads that exited
    /// during the run (see [`crate::cpu::process_context_switches`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_context_switches: Option<u64>,
    /// Wall-clock seconds over which they were measured.
    pub wall_secs: f64,
    /// The engine's CPU was read from the nodes' `/metrics` (`--metrics`): it is the nodes'
    /// whole CPU, whoever loaded them, so shards' figures overlap (`merge` takes the largest,
    /// not the sum). False when the harness started the engine itself.
    #[serde(default)]
    pub engine_shared: bool,
}

impl Cpu {
    /// The engine's CPU microseconds and context switches per answered request, each when
    /// known.
    pub fn engine_per_answer(&self, answered: u64) -> (Option<f64>, Option<f64>) {
        (
            per_answer(self.engine_secs.map(|s| s * 1e6), answered),
            per_answer(self.engine_context_switches.map(|n| n as f64), answered),
        )
    }
}

/// `total` / `answered` (`None` when nothing was answered).
pub fn per_answer(total: Option<f64>, answered: u64) -> Option<f64> {
    total.filter(|_| answered > 0).map(|t| t / answered as f64)
}

/// What one node was sent and answered during a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Index of the node (scanner `i` sends to node `(i / shards) % nodes`).
    pub node: usize,
    /// Where it listens.
    pub address: String,
    /// Requests sent to it (answered or not).
    pub requests: u64,
    /// Of those, answered with a verdict that judged the token.
    pub answered: u64,
    /// Of those, transport errors, timeouts and retry answers.
    pub errors: u64,
    /// Verdicts it gave that differ from the expected one.
    pub mismatches: u64,
    /// Verdicts it gave, by reason.
    pub verdicts: BTreeMap<String, u64>,
    /// Latency of its answered requests, from their intended send time.
    pub latency_us: Latency,
    /// CPU seconds the node used during the run, when the harness started it.
    pub cpu_secs: Option<f64>,
}

/// Replays sent to another node than the one that answered their original (several nodes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossNodeReplays {
    /// Such replays answered with a verdict.
    pub judged: u64,
    /// Of those, the ones whose original reached one-time use, so must come back `replayed`
    /// (a revoked or forged token is denied earlier, the same way on every node).
    pub expected_replayed: u64,
    /// Of those, how many came back `replayed`: every one when the nodes share one-time use.
    pub replayed: u64,
}

/// The mdoc presentations of a run (`--mdoc-share`): ISO/IEC 18013-5 VerifyMdoc requests
/// mixed among the tokens, and replays of them. Their latency is the `mdoc` scenario's (fresh
/// presentations) and the adversarial one's (replays); their verdicts are also in the run's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MdocSummary {
    /// The share of genuine arrivals that were mdoc presentations.
    pub share: f64,
    /// The mDL documents the presentations were drawn from (holder `i` shows document
    /// `i mod documents`).
    pub documents: usize,
    /// Fresh presentations scheduled.
    pub presentations: u64,
    /// Replays of a presentation scheduled (the same request bytes again).
    pub replays: u64,
    /// mdoc requests sent, fresh and replayed.
    pub sent: u64,
    /// Of those, answered with a verdict.
    pub answered: u64,
    /// Of those, transport errors, timeouts and retry answers.
    pub errors: u64,
    /// Verdicts that differ from the expected one.
    pub mismatches: u64,
    /// Verdicts received, by reason.
    pub verdicts: BTreeMap<String, u64>,
    /// Verdicts expected, by reason.
    pub expected: BTreeMap<String, u64>,
}

/// What one open-loop run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// Requests scheduled.
    pub planned: u64,
    /// Requests answered with a verdict that judged the token.
    pub answered: u64,
    /// Transport errors, timeouts and retry answers (busy, unavailable, replay capacity).
    pub errors: u64,
    /// Replays not sent because their original got no verdict.
    pub skipped: u64,
    /// Replays not sent because their original token was too old by then (not errors).
    #[serde(default)]
    pub dropped: u64,
    /// (errors + skipped) / planned.
    pub error_rate: f64,
    /// Verdicts that differ from the expected one.
    pub mismatches: u64,
    /// Answered requests per second of the run.
    pub throughput_rps: f64,
    /// Seconds from the first intended send to the last answer.
    pub elapsed_secs: f64,
    /// Seconds spent signing the first tokens before the clock started.
    pub prefill_secs: f64,
    /// Latency of every answered request, from its intended send time.
    pub latency_us: Latency,
    /// By phase: ramp_up, peak, ramp_down.
    pub phases: BTreeMap<String, Latency>,
    /// By scenario: gate, partner, age, mdoc, adversarial.
    pub scenarios: BTreeMap<String, Latency>,
    /// How late the harness itself sent requests (its own saturation, not the engine's).
    pub send_lag_us: Latency,
    /// Verdicts received, by reason.
    pub verdicts: BTreeMap<String, u64>,
    /// Verdicts expected, by reason.
    pub expected: BTreeMap<String, u64>,
    /// Up to 10 mismatches.
    pub mismatch_examples: Vec<String>,
    /// Up to 10 errors.
    pub error_examples: Vec<String>,
    /// CPU used.
    pub cpu: Cpu,
    /// Per node, in index order (one entry with one node; absent in reports written before
    /// fleet runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeSummary>,
    /// Replays sent across nodes (several nodes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_node_replays: Option<CrossNodeReplays>,
    /// The mdoc presentations (runs with `--mdoc-share` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdoc: Option<MdocSummary>,
    /// Each node's revocation state after the run (epoch, entries, digest; several spawned
    /// nodes only): a fleet that disagrees fails the budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocation_states: Vec<String>,
    /// Per second of the plan.
    pub timeline: Vec<Second>,
    /// The fingerprint of the drawn plan (see [`crate::model::fingerprint`]): the same for
    /// every shard of one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_fingerprint: Option<String>,
    /// The run's salt, hex: `--run-salt` draws the same schedule (and nonces) again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_salt: Option<String>,
    /// The part of the run this process sent (`--shard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// The latency histograms, for `merge` (a shard's summary carries them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histograms: Option<Histograms>,
    /// `--start-at`: when the run was to start, and how late its clock started (a shard whose
    /// signing ran past the common start fails its report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<CommonStart>,
    /// Tokens of the schedule that were not meant to be stale, answered `stale` or
    /// `from_future`: they point at this machine's clock against the engine's (also counted
    /// as mismatches).
    #[serde(default)]
    pub clock_suspect: u64,
}

/// A run that started at a common instant (`--start-at`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CommonStart {
    /// The instant, Unix seconds.
    pub at_unix: f64,
    /// Seconds the clock started after it (0 when on time).
    pub late_secs: f64,
}

/// A run's latency histograms in HdrHistogram's V2 serialised form, base64 (as in its
/// interval logs): what `merge` adds up, so merged percentiles are read from merged
/// histograms, never averaged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Histograms {
    /// Every answered request.
    pub all: String,
    /// By phase label.
    pub phases: BTreeMap<String, String>,
    /// By scenario label.
    pub scenarios: BTreeMap<String, String>,
    /// Send lag.
    pub send_lag: String,
    /// Per node, in index order.
    pub nodes: Vec<String>,
    /// Per second of the timeline (two significant digits).
    pub timeline: Vec<String>,
}

/// `h` in V2 form, base64.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    use base64::Engine as _;
    use hdrhistogram::serialization::{Serializer as _, V2Serializer};
    let mut bytes = Vec::new();
    // Writing to a Vec fails only for a histogram V2 cannot describe; an empty string then
    // makes `merge` refuse the file.
    if V2Serializer::new().serialize(h, &mut bytes).is_err() {
        return String::new();
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A histogram [`encode_histogram`] wrote.
pub fn decode_histogram(s: &str) -> Result<Histogram<u64>, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("not base64: {e}"))?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| format!("not an HdrHistogram: {e:?}"))
}

impl Histograms {
    /// The histograms of `s`.
    pub fn of(s: &RunStats) -> Histograms {
        Histograms {
            all: encode_histogram(&s.all),
            phases: s
                .by_phase
                .iter()
                .map(|(p, h)| (p.label().to_string(), encode_histogram(h)))
                .collect(),
            scenarios: s
                .by_scenario
                .iter()
                .map(|(p, h)| (p.label().to_string(), encode_histogram(h)))
                .collect(),
            send_lag: encode_histogram(&s.send_lag),
            nodes: s
                .nodes
                .iter()
                .map(|n| encode_histogram(&n.latency))
                .collect(),
            timeline: s.per_second.iter().map(encode_histogram).collect(),
        }
    }
}

impl RunSummary {
    /// From the raw statistics of a run and, per node it started, the CPU seconds each node
    /// used (empty for an engine the harness did not start). The engine total is their sum.
    pub fn from_stats(s: &RunStats, node_cpu_secs: &[Option<f64>]) -> RunSummary {
        let engine_cpu_secs = if node_cpu_secs.is_empty() {
            None
        } else {
            node_cpu_secs.iter().copied().sum::<Option<f64>>()
        };
        RunSummary {
            planned: s.planned,
            answered: s.answered,
            errors: s.errors,
            skipped: s.skipped,
            dropped: s.dropped,
            error_rate: s.error_rate(),
            mismatches: s.mismatches,
            throughput_rps: s.answered as f64 / s.elapsed_secs.max(1e-9),
            elapsed_secs: s.elapsed_secs,
            prefill_secs: s.prefill_secs,
            latency_us: latency(&s.all),
            phases: s
                .by_phase
                .iter()
                .filter(|(_, h)| !h.is_empty())
                .map(|(p, h)| (p.label().to_string(), latency(h)))
                .collect(),
            scenarios: s
                .by_scenario
                .iter()
                .filter(|(_, h)| !h.is_empty())
                .map(|(p, h)| (p.label().to_string(), latency(h)))
                .collect(),
            send_lag_us: latency(&s.send_lag),
            verdicts: s.verdicts.clone(),
            expected: s.expected.clone(),
            mismatch_examples: s.mismatch_examples.clone(),
            error_examples: s.error_examples.clone(),
            cpu: Cpu {
                harness_secs: s.harness_cpu_secs,
                engine_secs: engine_cpu_secs,
                redis_secs: None,
                engine_context_switches: None,
                wall_secs: s.elapsed_secs + s.prefill_secs,
                engine_shared: false,
            },
            nodes: s
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| NodeSummary {
                    node: i,
                    address: n.addr.clone(),
                    requests: n.requests,
                    answered: n.answered,
                    errors: n.errors,
                    mismatches: n.mismatches,
                    verdicts: n.verdicts.clone(),
                    latency_us: latency(&n.latency),
                    cpu_secs: node_cpu_secs.get(i).copied().flatten(),
                })
                .collect(),
            cross_node_replays: s.cross_node,
            mdoc: s.mdoc.clone(),
            revocation_states: Vec::new(),
            timeline: s.timeline.clone(),
            plan_fingerprint: None,
            run_salt: None,
            shard: None,
            histograms: None,
            start: s.start,
            clock_suspect: s.clock_suspect,
        }
    }
}

/// One step of a capacity sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepStep {
    /// Offered rate, requests per second.
    pub rate_rps: f64,
    /// Whether the step held the budget.
    pub passed: bool,
    /// The budget checks that failed.
    pub failed_checks: Vec<String>,
    /// What the step measured (timeline omitted).
    pub run: RunSummary,
}

/// A capacity sweep's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepSummary {
    /// Seconds per step.
    pub step_secs: f64,
    /// Every step, in the order run.
    pub steps: Vec<SweepStep>,
    /// The highest rate that held the budget (0 when none did).
    pub knee_rps: f64,
    /// The lowest rate that broke it, if one did.
    pub first_failure_rps: Option<f64>,
    /// Why the sweep stopped.
    pub stopped: String,
    /// The modelled rush peak.
    pub modelled_peak_rps: f64,
    /// knee / modelled peak.
    pub headroom: f64,
    /// Whether the harness lagged at the knee's next step (its numbers then measure the
    /// harness as much as the engine).
    pub harness_limited: bool,
    /// A sweep of a fixed list of rates (`--rates`), each run to the end: the steps of its
    /// shards line up one by one, and `merge` finds the knee from the merged steps.
    #[serde(default)]
    pub fixed_rates: bool,
}

impl SweepSummary {
    /// Judges `steps` (each by its own budget checks, `failed`) into a sweep: the knee is the
    /// highest rate that held, the first failure the lowest that broke.
    pub fn of_steps(
        step_secs: f64,
        steps: Vec<SweepStep>,
        stopped: String,
        modelled_peak_rps: f64,
        fixed_rates: bool,
    ) -> SweepSummary {
        let knee_rps = steps
            .iter()
            .filter(|s| s.passed)
            .map(|s| s.rate_rps)
            .fold(0.0, f64::max);
        let first_failure_rps = steps
            .iter()
            .filter(|s| !s.passed)
            .map(|s| s.rate_rps)
            .reduce(f64::min);
        // The harness measured itself if it could not send on time where the budget broke.
        let harness_limited = steps
            .iter()
            .filter(|s| !s.passed)
            .any(|s| s.run.send_lag_us.p99_us > 20_000);
        SweepSummary {
            step_secs,
            steps,
            knee_rps,
            first_failure_rps,
            stopped,
            modelled_peak_rps,
            headroom: knee_rps / modelled_peak_rps.max(1e-9),
            harness_limited,
            fixed_rates,
        }
    }
}

/// A closed-loop (goose) run's summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GooseSummary {
    /// Requests made.
    pub requests: u64,
    /// Verdicts that differ from the expected one.
    pub mismatches: u64,
    /// Requests without a verdict.
    pub errors: u64,
    /// Latency from send to answer (closed loop: a user waits for its answer).
    pub latency_us: Latency,
    /// Verdicts received, by reason.
    pub verdicts: BTreeMap<String, u64>,
    /// Up to 10 mismatches or errors.
    pub examples: Vec<String>,
    /// The goose threshold results, as goose judged them.
    pub thresholds: Vec<String>,
    /// The goose reports written.
    pub goose_reports: Vec<String>,
    /// The goose test plan run.
    pub test_plan: String,
}

/// One metric compared with the baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineDiff {
    /// Metric name.
    pub metric: String,
    /// In the baseline.
    pub before: f64,
    /// Now.
    pub now: f64,
    /// Change in percent (positive: larger now).
    pub change_pct: f64,
    /// Whether the change is for the worse.
    pub worse: bool,
}

/// One line: the metric, before → now, the change, and `worse` when it is (a change within
/// 0.05 % is not called worse).
impl std::fmt::Display for BaselineDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let worse = if self.worse && self.change_pct.abs() > 0.05 {
            "  worse"
        } else {
            ""
        };
        write!(
            f,
            "{:<16} {:>12.1} → {:>12.1}  ({:+.1}%){worse}",
            self.metric, self.before, self.now, self.change_pct
        )
    }
}

/// What one open-loop run measured, raw: counts and HDR histograms.
#[derive(Debug)]
pub struct RunStats {
    /// Requests planned.
    pub planned: u64,
    /// Requests that got a verdict which judged the token.
    pub answered: u64,
    /// Requests without such a verdict: transport errors, timeouts, retry answers (busy …).
    pub errors: u64,
    /// Verdicts that differ from the expected one.
    pub mismatches: u64,
    /// Replays not sent because their original got no verdict.
    pub skipped: u64,
    /// Replays not sent because their original token was too old by then.
    pub dropped: u64,
    /// Latency of every answered request, µs from intended send time.
    pub all: Histogram<u64>,
    /// By phase of the plan.
    pub by_phase: BTreeMap<Phase, Histogram<u64>>,
    /// By scenario.
    pub by_scenario: BTreeMap<Scenario, Histogram<u64>>,
    /// How late the harness sent each request, µs (its own lag, not the engine's).
    pub send_lag: Histogram<u64>,
    /// Verdicts received, by reason label.
    pub verdicts: BTreeMap<String, u64>,
    /// Verdicts expected, by reason label.
    pub expected: BTreeMap<String, u64>,
    /// Up to 10 mismatches, described.
    pub mismatch_examples: Vec<String>,
    /// Up to 10 errors, described.
    pub error_examples: Vec<String>,
    /// Seconds from the first intended send to the last answer.
    pub elapsed_secs: f64,
    /// Seconds spent signing before the clock started.
    pub prefill_secs: f64,
    /// Per second of the plan.
    pub timeline: Vec<Second>,
    /// Per second of the plan, the latencies of its answered requests (two significant
    /// digits).
    pub per_second: Vec<Histogram<u64>>,
    /// The common start (`--start-at`), if the run had one.
    pub start: Option<CommonStart>,
    /// Tokens not meant to be stale answered `stale` or `from_future`.
    pub clock_suspect: u64,
    /// CPU seconds the harness used during the run (Linux).
    pub harness_cpu_secs: Option<f64>,
    /// Per node, in index order.
    pub nodes: Vec<NodeStats>,
    /// Replays sent to another node than their original (several nodes only).
    pub cross_node: Option<CrossNodeReplays>,
    /// The mdoc presentations (runs with an mdoc share only).
    pub mdoc: Option<MdocSummary>,
}

/// What one node was sent and answered.
#[derive(Debug)]
pub struct NodeStats {
    /// Where it listens.
    pub addr: String,
    /// Requests sent to it (answered or not).
    pub requests: u64,
    /// Of those, answered with a verdict that judged the token.
    pub answered: u64,
    /// Of those, without such a verdict.
    pub errors: u64,
    /// Verdicts that differ from the expected one.
    pub mismatches: u64,
    /// Verdicts received, by reason label.
    pub verdicts: BTreeMap<String, u64>,
    /// Latency of its answered requests, µs from intended send time.
    pub latency: Histogram<u64>,
}

impl RunStats {
    /// Errors over planned requests (replays skipped because of an earlier error count too).
    pub fn error_rate(&self) -> f64 {
        (self.errors + self.skipped) as f64 / (self.planned.max(1)) as f64
    }
}

/// 1 µs to 2 minutes, three significant digits.
pub fn histogram() -> Histogram<u64> {
    histogram_with(3)
}

/// 1 µs to 2 minutes, with `significant_digits` (coarser histograms are smaller and faster).
#[allow(clippy::expect_used)] // Constant bounds that hdrhistogram accepts.
pub fn histogram_with(significant_digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, significant_digits).expect("valid histogram bounds")
}

/// Percentiles of a histogram.
pub fn latency(h: &Histogram<u64>) -> Latency {
    Latency {
        count: h.len(),
        mean_us: h.mean(),
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}
