//! The harness's own JSON summary (what CI and scripts read), its human rendering, and the
//! comparison with a previous report (the baseline).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::budget::BudgetResult;
use crate::fleet::Origin;
use crate::model::{Plan, RushModel};
use crate::openloop::{latency, RunStats};

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
    /// Wall-clock seconds over which they were measured.
    pub wall_secs: f64,
}

/// What one node was sent and answered during a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Index of the node (scanner `i` sends to node `i % nodes`).
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
    /// By scenario: gate, partner, age, adversarial.
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
    /// Each node's revocation state after the run (epoch, entries, digest; several spawned
    /// nodes only): a fleet that disagrees fails the budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocation_states: Vec<String>,
    /// Per second of the plan.
    pub timeline: Vec<Second>,
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
                wall_secs: s.elapsed_secs + s.prefill_secs,
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
            revocation_states: Vec::new(),
            timeline: s.timeline.clone(),
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
}

/// Where the population came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PopulationInfo {
    /// Holders.
    pub holders: usize,
    /// Seed.
    pub seed: u64,
    /// "cache" or "generated".
    pub origin: String,
    /// Seconds to load or generate.
    pub secs: f64,
    /// Holders meant valid, revoked, expired.
    pub valid: usize,
    /// Revoked holders.
    pub revoked: usize,
    /// Expired holders.
    pub expired: usize,
}

impl PopulationInfo {
    /// Describes a fleet.
    pub fn new(fleet: &crate::fleet::Fleet, origin: Origin, secs: f64) -> PopulationInfo {
        let (valid, revoked, expired) = fleet.census();
        PopulationInfo {
            holders: fleet.len(),
            seed: fleet.spec.seed,
            origin: match origin {
                Origin::Cache => "cache".into(),
                Origin::Generated => "generated".into(),
            },
            secs,
            valid,
            revoked,
            expired,
        }
    }
}

/// The engine the run went to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Address.
    pub address: String,
    /// Started by the harness on this machine (so the two shared its cores).
    pub spawned: bool,
    /// Whether the fleet's revocations were loaded (spawned engines only).
    pub revocations_loaded: Option<bool>,
    /// Scanner connections.
    pub connections: usize,
    /// Every node's address, in index order (one for a single engine).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Where spawned nodes record one-time use ("memory", "redis redis://…"); absent for an
    /// engine the harness did not start.
    #[serde(default)]
    pub store: Option<String>,
    /// Per node, the cores it was pinned to (`taskset -c`; empty: not pinned).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<String>,
}

/// The rush model and the plan drawn from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Holders modelled.
    pub holders: u64,
    /// Share presenting during the rush.
    pub share: f64,
    /// Rush length.
    pub rush_minutes: f64,
    /// Peak over mean.
    pub peak_factor: f64,
    /// The modelled peak rate.
    pub peak_rps: f64,
    /// The arithmetic.
    pub explanation: String,
    /// The compressed plan run.
    pub plan_ramp_up_secs: f64,
    /// Seconds at the peak.
    pub plan_peak_secs: f64,
    /// Seconds of ramp down.
    pub plan_ramp_down_secs: f64,
    /// The plan's peak rate (the model's, times any rate scale).
    pub plan_peak_rps: f64,
}

impl ModelInfo {
    /// Describes a model and a plan.
    pub fn new(m: &RushModel, plan: Option<&Plan>) -> ModelInfo {
        ModelInfo {
            holders: m.holders,
            share: m.share,
            rush_minutes: m.rush_minutes,
            peak_factor: m.peak_factor,
            peak_rps: m.peak_rps(),
            explanation: m.explain(),
            plan_ramp_up_secs: plan.map_or(0.0, |p| p.ramp_up_secs),
            plan_peak_secs: plan.map_or(0.0, |p| p.peak_secs),
            plan_ramp_down_secs: plan.map_or(0.0, |p| p.ramp_down_secs),
            plan_peak_rps: plan.map_or(0.0, |p| p.peak_rps),
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

/// The whole JSON summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// "gatehouse-loadtest".
    pub tool: String,
    /// Harness version.
    pub version: String,
    /// "rush", "sweep" or "goose".
    pub mode: String,
    /// When the run started (Unix seconds).
    pub started_unix: u64,
    /// Cores of the machine the harness ran on.
    pub cores: usize,
    /// The command line.
    pub command: String,
    /// The engine.
    pub target: TargetInfo,
    /// The fleet.
    pub population: PopulationInfo,
    /// The rush model.
    pub model: ModelInfo,
    /// An open-loop rush.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunSummary>,
    /// A capacity sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSummary>,
    /// A goose closed-loop run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goose: Option<GooseSummary>,
    /// The budget and how the run fared against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetResult>,
    /// Against a previous report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline: Vec<BaselineDiff>,
    /// Whether every budget check held.
    pub passed: bool,
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

/// The metrics compared with a baseline: name, JSON pointer, whether higher is better.
const COMPARED: &[(&str, &str, bool)] = &[
    ("p50_us", "/run/latency_us/p50_us", false),
    ("p99_us", "/run/latency_us/p99_us", false),
    ("p999_us", "/run/latency_us/p999_us", false),
    ("peak_p99_us", "/run/phases/peak/p99_us", false),
    ("throughput_rps", "/run/throughput_rps", true),
    ("mismatches", "/run/mismatches", false),
    ("error_rate", "/run/error_rate", false),
    ("knee_rps", "/sweep/knee_rps", true),
    ("goose_p99_us", "/goose/latency_us/p99_us", false),
];

/// Compares two reports (as JSON) on the metrics both have.
pub fn compare(before: &serde_json::Value, now: &serde_json::Value) -> Vec<BaselineDiff> {
    COMPARED
        .iter()
        .filter_map(|(name, pointer, higher_better)| {
            let b = before.pointer(pointer)?.as_f64()?;
            let n = now.pointer(pointer)?.as_f64()?;
            let change_pct = if b == 0.0 {
                if n == 0.0 {
                    0.0
                } else {
                    100.0
                }
            } else {
                (n - b) / b * 100.0
            };
            Some(BaselineDiff {
                metric: name.to_string(),
                before: b,
                now: n,
                change_pct,
                worse: if *higher_better { n < b } else { n > b },
            })
        })
        .collect()
}

/// What makes two runs comparable: the mode, the population and the plan. Name, JSON pointer.
const PLAN_FIELDS: &[(&str, &str)] = &[
    ("mode", "/mode"),
    ("holders", "/population/holders"),
    ("population seed", "/population/seed"),
    ("ramp-up seconds", "/model/plan_ramp_up_secs"),
    ("peak seconds", "/model/plan_peak_secs"),
    ("ramp-down seconds", "/model/plan_ramp_down_secs"),
    ("peak req/s", "/model/plan_peak_rps"),
    ("sweep step seconds", "/sweep/step_secs"),
];

/// How the two reports' plans differ, one line per field (empty: the same plan). Throughput,
/// latency and the knee depend on the plan, so a comparison across plans says nothing about
/// the engine; `compare` refuses one unless told otherwise, and a run's `--baseline` check
/// fails on one.
pub fn plan_differences(before: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    PLAN_FIELDS
        .iter()
        .filter_map(|(name, pointer)| {
            let (b, n) = (before.pointer(pointer), now.pointer(pointer));
            let same = match (b.and_then(|v| v.as_f64()), n.and_then(|v| v.as_f64())) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                _ => b == n,
            };
            let show =
                |v: Option<&serde_json::Value>| v.map_or("absent".to_string(), |v| v.to_string());
            (!same).then(|| format!("{name}: {} → {}", show(b), show(n)))
        })
        .collect()
}

/// The engine CPU of a sweep step: the total, and per node when there are several.
fn engine_cpu(r: &RunSummary) -> String {
    let one = |x: Option<f64>| x.map_or("-".to_string(), |s| format!("{s:.1}"));
    let engine = if r.nodes.len() > 1 {
        let per: Vec<String> = r.nodes.iter().map(|n| one(n.cpu_secs)).collect();
        format!("{} ({})", one(r.cpu.engine_secs), per.join("+"))
    } else {
        one(r.cpu.engine_secs)
    };
    match r.cpu.redis_secs {
        Some(s) => format!("{engine} redis {s:.1}"),
        None => engine,
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1e3)
}

fn render_latency(out: &mut String, name: &str, l: &Latency) {
    let _ = writeln!(
        out,
        "    {name:<12} n={:<8} p50 {:>9}  p90 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}",
        l.count,
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.p999_us),
        ms(l.max_us)
    );
}

fn render_run(out: &mut String, r: &RunSummary) {
    let _ = writeln!(
        out,
        "  requests   {} planned, {} answered, {} errors, {} replays skipped, {} too old to replay (error rate {:.4}%)",
        r.planned,
        r.answered,
        r.errors,
        r.skipped,
        r.dropped,
        r.error_rate * 100.0
    );
    let _ = writeln!(
        out,
        "  throughput {:.0} req/s over {:.1} s (tokens for the first seconds signed in {:.1} s before the clock started)",
        r.throughput_rps, r.elapsed_secs, r.prefill_secs
    );
    let _ = writeln!(out, "  latency, open loop, from intended send time:");
    render_latency(out, "all", &r.latency_us);
    for (k, l) in &r.phases {
        render_latency(out, k, l);
    }
    for (k, l) in &r.scenarios {
        render_latency(out, k, l);
    }
    render_latency(out, "send lag", &r.send_lag_us);
    let _ = writeln!(out, "  verdicts (received / expected):");
    let mut keys: Vec<&String> = r.verdicts.keys().chain(r.expected.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let _ = writeln!(
            out,
            "    {k:<22} {:>9} / {:>9}",
            r.verdicts.get(k).copied().unwrap_or(0),
            r.expected.get(k).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(out, "  mismatches {}", r.mismatches);
    for e in r.mismatch_examples.iter().chain(&r.error_examples) {
        let _ = writeln!(out, "    {e}");
    }
    let cpu = |x: Option<f64>| x.map_or("n/a".to_string(), |s| format!("{s:.1} s"));
    let _ = writeln!(
        out,
        "  cpu        harness {}, engine {}{} over {:.1} s wall",
        cpu(r.cpu.harness_secs),
        cpu(r.cpu.engine_secs),
        r.cpu
            .redis_secs
            .map_or(String::new(), |s| format!(", redis {s:.1} s")),
        r.cpu.wall_secs
    );
    if r.nodes.len() > 1 {
        render_nodes(out, r);
    }
}

/// Per node and in total: requests, verdicts, p50/p99, CPU; then the cross-node replays.
fn render_nodes(out: &mut String, r: &RunSummary) {
    let _ = writeln!(out, "  per node (scanner i → node i % {}):", r.nodes.len());
    let row = |out: &mut String,
               name: &str,
               requests: u64,
               answered: u64,
               errors: u64,
               mismatches: u64,
               l: &Latency,
               cpu: Option<f64>,
               verdicts: &BTreeMap<String, u64>| {
        let v: Vec<String> = verdicts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "    {name:<24} requests {requests:>8}  answered {answered:>8}  errors {errors:>5}  mismatches {mismatches:>3}  p50 {:>9}  p99 {:>9}  cpu {}",
            ms(l.p50_us),
            ms(l.p99_us),
            cpu.map_or("n/a".to_string(), |s| format!("{s:.1} s")),
        );
        let _ = writeln!(out, "      verdicts {}", v.join(", "));
    };
    for n in &r.nodes {
        row(
            out,
            &format!("node {} {}", n.node, n.address),
            n.requests,
            n.answered,
            n.errors,
            n.mismatches,
            &n.latency_us,
            n.cpu_secs,
            &n.verdicts,
        );
    }
    row(
        out,
        "total",
        r.nodes.iter().map(|n| n.requests).sum(),
        r.answered,
        r.errors,
        r.mismatches,
        &r.latency_us,
        r.cpu.engine_secs,
        &r.verdicts,
    );
    if let Some(c) = &r.cross_node_replays {
        let _ = writeln!(
            out,
            "  cross-node replays {} answered; {} of the {} whose original reached one-time use came back replayed",
            c.judged, c.replayed, c.expected_replayed
        );
    }
}

impl Report {
    /// The human summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "gatehouse-loadtest {}: {} → {}{}",
            self.mode,
            self.population.holders,
            self.target.address,
            if self.target.spawned {
                format!(
                    " (spawned here, sharing {} cores with the harness{})",
                    self.cores,
                    match self.target.revocations_loaded {
                        Some(false) => ", revocations NOT loaded",
                        _ => "",
                    }
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "  population {} holders ({} valid, {} revoked, {} expired), {} in {:.1} s",
            self.population.holders,
            self.population.valid,
            self.population.revoked,
            self.population.expired,
            self.population.origin,
            self.population.secs
        );
        if let Some(store) = &self.target.store {
            let pins = if self.target.pins.iter().any(|p| !p.is_empty()) {
                format!(", pinned to cores {}", self.target.pins.join(" / "))
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  nodes      {} ({}), one-time use: {store}{pins}",
                self.target.nodes.len().max(1),
                self.target.nodes.join(", ")
            );
        }
        let _ = writeln!(out, "  model      {}", self.model.explanation);
        if let Some(r) = &self.run {
            let _ = writeln!(
                out,
                "  plan       ramp up {:.0} s, peak {:.0} s at {:.0} req/s, ramp down {:.0} s",
                self.model.plan_ramp_up_secs,
                self.model.plan_peak_secs,
                self.model.plan_peak_rps,
                self.model.plan_ramp_down_secs
            );
            render_run(&mut out, r);
        }
        if let Some(s) = &self.sweep {
            let _ = writeln!(out, "  capacity sweep, {:.0} s per step:", s.step_secs);
            for st in &s.steps {
                let _ = writeln!(
                    out,
                    "    {:>9.0} req/s  {}  answered {:>8}  p50 {:>9}  p99 {:>9}  p99.9 {:>9}  errors {:>6}  mismatches {}  lag p99 {:>9}  cpu h/e {}/{}{}{}",
                    st.rate_rps,
                    if st.passed { "held " } else { "BROKE" },
                    st.run.answered,
                    ms(st.run.latency_us.p50_us),
                    ms(st.run.latency_us.p99_us),
                    ms(st.run.latency_us.p999_us),
                    st.run.errors,
                    st.run.mismatches,
                    ms(st.run.send_lag_us.p99_us),
                    st.run.cpu.harness_secs.map_or("-".into(), |s| format!("{s:.1}")),
                    engine_cpu(&st.run),
                    st.run.cross_node_replays.map_or(String::new(), |c| format!(
                        "  cross-node replayed {}/{}",
                        c.replayed, c.expected_replayed
                    )),
                    if st.failed_checks.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", st.failed_checks.join("; "))
                    }
                );
            }
            let _ = writeln!(
                out,
                "  knee       {:.0} req/s = {:.1} × the modelled peak of {:.0} req/s ({}){}",
                s.knee_rps,
                s.headroom,
                s.modelled_peak_rps,
                s.stopped,
                if s.harness_limited {
                    "; the harness lagged past the knee: the engine may carry more"
                } else {
                    ""
                }
            );
        }
        if let Some(g) = &self.goose {
            let _ = writeln!(
                out,
                "  goose (closed loop) test plan {}: {} requests, {} errors, {} mismatches",
                g.test_plan, g.requests, g.errors, g.mismatches
            );
            render_latency(&mut out, "all", &g.latency_us);
            for t in &g.thresholds {
                let _ = writeln!(out, "    threshold {t}");
            }
            for e in &g.examples {
                let _ = writeln!(out, "    {e}");
            }
            for r in &g.goose_reports {
                let _ = writeln!(out, "    goose report: {r}");
            }
        }
        if !self.baseline.is_empty() {
            let _ = writeln!(out, "  against the baseline:");
            for d in &self.baseline {
                let _ = writeln!(
                    out,
                    "    {:<16} {:>12.1} → {:>12.1}  ({:+.1}%){}",
                    d.metric,
                    d.before,
                    d.now,
                    d.change_pct,
                    if d.worse && d.change_pct.abs() > 0.05 {
                        "  worse"
                    } else {
                        ""
                    }
                );
            }
        }
        if let Some(b) = &self.budget {
            let _ = writeln!(out, "  budget {}:", b.file);
            for c in &b.checks {
                let _ = writeln!(
                    out,
                    "    {} {:<22} observed {:>14}  limit {}",
                    if c.passed { "ok  " } else { "MISS" },
                    c.name,
                    c.observed,
                    c.limit
                );
            }
        }
        let _ = writeln!(
            out,
            "  result     {}",
            if self.passed {
                "PASS"
            } else {
                "FAIL (see the checks marked MISS)"
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn baseline_comparison_knows_better_from_worse() {
        let before =
            serde_json::json!({"run": {"latency_us": {"p99_us": 1000}, "throughput_rps": 500.0}});
        let now =
            serde_json::json!({"run": {"latency_us": {"p99_us": 1500}, "throughput_rps": 600.0}});
        let d = compare(&before, &now);
        assert_eq!(d.len(), 2);
        let p99 = d.iter().find(|d| d.metric == "p99_us").unwrap();
        assert!(p99.worse && (p99.change_pct - 50.0).abs() < 1e-9);
        let tput = d.iter().find(|d| d.metric == "throughput_rps").unwrap();
        assert!(!tput.worse);
    }

    #[test]
    fn plan_differences_name_each_field_that_differs() {
        let report = |mode: &str, peak: f64, holders: u64| {
            serde_json::json!({
                "mode": mode,
                "population": {"holders": holders, "seed": 1},
                "model": {"plan_ramp_up_secs": 30.0, "plan_peak_secs": 120.0,
                          "plan_ramp_down_secs": 30.0, "plan_peak_rps": peak},
                "run": {"throughput_rps": peak},
            })
        };
        let a = report("rush", 500.0, 1_000_000);
        assert!(plan_differences(&a, &a.clone()).is_empty());
        let d = plan_differences(&a, &report("rush", 1000.0, 1_000_000));
        assert_eq!(d, vec!["peak req/s: 500.0 → 1000.0".to_string()]);
        let d = plan_differences(&a, &report("sweep", 500.0, 50_000));
        assert_eq!(d.len(), 2);
        assert!(d[0].starts_with("mode") && d[1].starts_with("holders"));
    }
}
