//! The harness's own JSON summary (what CI and scripts read), its human rendering, and the
//! comparison with a previous report (the baseline). What each run measured is in
//! [`crate::summary`]; this module adds where it ran and how the budget judged it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::budget::BudgetResult;
use crate::fleet::Origin;
use crate::model::{Plan, RushModel};
use crate::summary::{
    per_answer, BaselineDiff, GooseSummary, Latency, MdocSummary, RunSummary, SweepSummary,
};

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
    /// The share of genuine arrivals that were mdoc presentations (`--mdoc-share`; absent
    /// when none were).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mdoc_share: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
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
            mdoc_share: 0.0,
        }
    }
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
    /// The machine the harness ran on (its host name), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
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
    /// A report `merge` made of shard reports: the shards it added up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<Merged>,
}

/// What the merged report says of its shards.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Merged {
    /// Shards in the run.
    pub count: usize,
    /// Each shard merged, in index order.
    pub shards: Vec<ShardFacts>,
    /// Shards whose reports were not given (`--allow-missing`).
    pub missing: Vec<usize>,
    /// Whether shards are missing: the figures then cover part of the plan only.
    pub partial: bool,
}

/// One shard's own facts, as its report gave them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardFacts {
    /// Its index (1-based).
    pub index: usize,
    /// The report file.
    pub file: String,
    /// Its command line.
    pub command: String,
    /// The machine it ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Cores of the machine it ran on.
    pub cores: usize,
    /// When it started (Unix seconds).
    pub started_unix: u64,
    /// Requests it sent.
    pub planned: u64,
    /// Seconds it signed before its clock started.
    pub prefill_secs: f64,
    /// CPU seconds it used.
    pub harness_cpu_secs: Option<f64>,
    /// How late its clock started after `--start-at`, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_secs: Option<f64>,
    /// Genuine tokens it sent that were answered `stale` or `from_future` (its clock).
    #[serde(default)]
    pub clock_suspect: u64,
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
    ("mdoc share", "/model/mdoc_share"),
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

/// " (500.0 µs, 2.5 switches per answered request)": the engine's CPU and context switches
/// per answered request, as far as they are known ("" when neither is).
fn per_request(cpu_us: Option<f64>, switches: Option<f64>) -> String {
    let parts: Vec<String> = [
        cpu_us.map(|us| format!("{us:.1} µs")),
        switches.map(|n| format!("{n:.1} switches")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({} per answered request)", parts.join(", "))
    }
}

/// The engine CPU of a sweep step: the total, per node when there are several, and per
/// answered request.
fn engine_cpu(r: &RunSummary) -> String {
    let one = |x: Option<f64>| x.map_or("-".to_string(), |s| format!("{s:.1}"));
    let (us, switches) = r.cpu.engine_per_answer(r.answered);
    let engine = if r.nodes.len() > 1 {
        let per: Vec<String> = r.nodes.iter().map(|n| one(n.cpu_secs)).collect();
        format!("{} ({})", one(r.cpu.engine_secs), per.join("+"))
    } else {
        one(r.cpu.engine_secs)
    } + &per_request(us, switches);
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
    if let Some(m) = &r.mdoc {
        render_mdoc(out, m);
    }
    let cpu = |x: Option<f64>| x.map_or("n/a".to_string(), |s| format!("{s:.1} s"));
    let (us, switches) = r.cpu.engine_per_answer(r.answered);
    let harness_us = per_answer(r.cpu.harness_secs.map(|s| s * 1e6), r.answered);
    let _ = writeln!(
        out,
        "  cpu        harness {}{}, engine {}{}{} over {:.1} s wall",
        cpu(r.cpu.harness_secs),
        harness_us.map_or(String::new(), |us| format!(
            " ({us:.1} µs per answered request)"
        )),
        cpu(r.cpu.engine_secs),
        per_request(us, switches),
        r.cpu
            .redis_secs
            .map_or(String::new(), |s| format!(", redis {s:.1} s")),
        r.cpu.wall_secs
    );
    if r.nodes.len() > 1 {
        render_nodes(out, r);
    }
}

/// The mdoc presentations: how many, what they got against what they should have.
fn render_mdoc(out: &mut String, m: &MdocSummary) {
    let _ = writeln!(
        out,
        "  mdoc       {} presentations and {} replays of them ({:.0} % of genuine arrivals, {} mDL documents): {} sent, {} answered, {} errors, {} mismatches",
        m.presentations,
        m.replays,
        m.share * 100.0,
        m.documents,
        m.sent,
        m.answered,
        m.errors,
        m.mismatches
    );
    let mut keys: Vec<&String> = m.verdicts.keys().chain(m.expected.keys()).collect();
    keys.sort();
    keys.dedup();
    let verdicts: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{k} {} / {}",
                m.verdicts.get(*k).copied().unwrap_or(0),
                m.expected.get(*k).copied().unwrap_or(0)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "    verdicts (received / expected): {}",
        if verdicts.is_empty() {
            "none".to_string()
        } else {
            verdicts.join(", ")
        }
    );
}

/// Per node and in total: requests, verdicts, p50/p99, CPU; then the cross-node replays.
fn render_nodes(out: &mut String, r: &RunSummary) {
    let _ = writeln!(
        out,
        "  per node (scanner i → node (i / shards) % {}):",
        r.nodes.len()
    );
    let row = |out: &mut String,
               name: &str,
               requests: u64,
               answered: u64,
               errors: u64,
               mismatches: u64,
               l: &Latency,
               cpu: Option<f64>,
               switches: Option<u64>,
               verdicts: &BTreeMap<String, u64>| {
        let v: Vec<String> = verdicts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "    {name:<24} requests {requests:>8}  answered {answered:>8}  errors {errors:>5}  mismatches {mismatches:>3}  p50 {:>9}  p99 {:>9}  cpu {}{}",
            ms(l.p50_us),
            ms(l.p99_us),
            cpu.map_or("n/a".to_string(), |s| format!("{s:.1} s")),
            per_request(
                per_answer(cpu.map(|s| s * 1e6), answered),
                per_answer(switches.map(|n| n as f64), answered)
            ),
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
            None,
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
        r.cpu.engine_context_switches,
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
        self.render_setting(&mut out);
        if let Some(m) = &self.merged {
            let _ = writeln!(
                out,
                "  merged     {} of {} shards{}",
                m.shards.len(),
                m.count,
                if m.partial {
                    let missing: Vec<String> = m.missing.iter().map(|i| i.to_string()).collect();
                    format!(" (PARTIAL: shard {} missing)", missing.join(", "))
                } else {
                    String::new()
                }
            );
            for s in &m.shards {
                let _ = writeln!(
                    out,
                    "    shard {}/{}{}: {} requests, {} cores, prefill {:.1} s, harness CPU {}{}{}  ({})",
                    s.index,
                    m.count,
                    s.host.as_deref().map_or(String::new(), |h| format!(" on {h}")),
                    s.planned,
                    s.cores,
                    s.prefill_secs,
                    s.harness_cpu_secs
                        .map_or("unknown".to_string(), |c| format!("{c:.1} s")),
                    s.late_secs
                        .filter(|l| *l > 0.0)
                        .map_or(String::new(), |l| format!(", started {l:.2} s LATE")),
                    if s.clock_suspect > 0 {
                        format!(
                            ", {} genuine tokens stale or from the future (check its clock)",
                            s.clock_suspect
                        )
                    } else {
                        String::new()
                    },
                    s.file
                );
            }
        }
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
            render_sweep(&mut out, s);
        }
        if let Some(g) = &self.goose {
            render_goose(&mut out, g);
        }
        render_baseline(&mut out, &self.baseline);
        if let Some(b) = &self.budget {
            render_budget(&mut out, b);
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

    /// The first lines: the mode and the engine, the population, the nodes, the model.
    fn render_setting(&self, out: &mut String) {
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
    }
}

/// A capacity sweep: one line per step, then the knee.
fn render_sweep(out: &mut String, s: &SweepSummary) {
    let _ = writeln!(out, "  capacity sweep, {:.0} s per step:", s.step_secs);
    for st in &s.steps {
        let _ = writeln!(
            out,
            "    {:>9.0} req/s  {}  answered {:>8}  p50 {:>9}  p99 {:>9}  p99.9 {:>9}  errors {:>6}  mismatches {}  lag p99 {:>9}  cpu h/e {}/{}{}{}{}",
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
            st.run.mdoc.as_ref().map_or(String::new(), |m| format!(
                "  mdoc {} answered, {} mismatches",
                m.answered, m.mismatches
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

/// A closed-loop run: its counts, latency, thresholds, examples and goose's reports.
fn render_goose(out: &mut String, g: &GooseSummary) {
    let _ = writeln!(
        out,
        "  goose (closed loop) test plan {}: {} requests, {} errors, {} mismatches",
        g.test_plan, g.requests, g.errors, g.mismatches
    );
    render_latency(out, "all", &g.latency_us);
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

/// The comparison with the baseline, one line per metric (nothing without one).
fn render_baseline(out: &mut String, baseline: &[BaselineDiff]) {
    if baseline.is_empty() {
        return;
    }
    let _ = writeln!(out, "  against the baseline:");
    for d in baseline {
        let _ = writeln!(out, "    {d}");
    }
}

/// The budget's checks, each marked ok or MISS.
fn render_budget(out: &mut String, b: &BudgetResult) {
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

/// A report of `mode` with fixed figures and nothing run (tests).
#[cfg(test)]
pub(crate) fn sample(mode: &str) -> Report {
    Report {
        tool: "gatehouse-loadtest".into(),
        version: "0.1.0".into(),
        mode: mode.into(),
        started_unix: 1_800_000_000,
        cores: 2,
        command: format!("gatehouse-loadtest {mode} --spawn"),
        host: None,
        target: TargetInfo {
            address: "127.0.0.1:4433".into(),
            spawned: true,
            revocations_loaded: Some(true),
            connections: 36,
            nodes: vec!["127.0.0.1:4433".into()],
            store: Some("memory".into()),
            pins: Vec::new(),
        },
        population: PopulationInfo {
            holders: 10_000,
            seed: 1,
            origin: "cache".into(),
            secs: 0.2,
            valid: 9_500,
            revoked: 300,
            expired: 200,
        },
        model: ModelInfo {
            holders: 1_000_000,
            share: 0.6,
            rush_minutes: 60.0,
            peak_factor: 3.0,
            peak_rps: 500.0,
            explanation: "1000000 holders × 0.6 over 60 min × 3 = 500 req/s".into(),
            plan_ramp_up_secs: 2.0,
            plan_peak_secs: 6.0,
            plan_ramp_down_secs: 2.0,
            plan_peak_rps: 500.0,
            mdoc_share: 0.0,
        },
        run: None,
        sweep: None,
        goose: None,
        budget: None,
        baseline: Vec::new(),
        passed: false,
        merged: None,
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

    /// A run that answered 12,000 requests, its engine using 6.0 s of CPU and switched 30,000
    /// times (two nodes when `nodes`).
    fn run_with_engine_cpu(nodes: bool) -> RunSummary {
        use crate::summary::{Cpu, NodeSummary};
        let node = |i: usize, answered: u64, cpu: f64| NodeSummary {
            node: i,
            address: format!("127.0.0.1:{}", 4433 + i),
            requests: answered,
            answered,
            cpu_secs: Some(cpu),
            ..Default::default()
        };
        RunSummary {
            planned: 12_000,
            answered: 12_000,
            errors: 0,
            skipped: 0,
            dropped: 0,
            error_rate: 0.0,
            mismatches: 0,
            throughput_rps: 1_200.0,
            elapsed_secs: 10.0,
            prefill_secs: 0.5,
            latency_us: Latency::default(),
            phases: BTreeMap::new(),
            scenarios: BTreeMap::new(),
            send_lag_us: Latency::default(),
            verdicts: BTreeMap::new(),
            expected: BTreeMap::new(),
            mismatch_examples: Vec::new(),
            error_examples: Vec::new(),
            cpu: Cpu {
                harness_secs: Some(4.0),
                engine_secs: Some(6.0),
                redis_secs: None,
                engine_context_switches: Some(30_000),
                wall_secs: 10.5,
                engine_shared: false,
            },
            nodes: if nodes {
                vec![node(0, 4_000, 2.5), node(1, 8_000, 3.5)]
            } else {
                Vec::new()
            },
            cross_node_replays: None,
            mdoc: None,
            revocation_states: Vec::new(),
            plan_fingerprint: None,
            run_salt: None,
            shard: None,
            histograms: None,
            start: None,
            clock_suspect: 0,
            timeline: Vec::new(),
        }
    }

    #[test]
    fn the_report_gives_harness_and_engine_cpu_and_context_switches_per_answered_request() {
        let per = "(500.0 µs, 2.5 switches per answered request)";
        let mut out = String::new();
        render_run(&mut out, &run_with_engine_cpu(false));
        assert!(
            out.contains(&format!(
                "harness 4.0 s (333.3 µs per answered request), engine 6.0 s {per} over 10.5 s wall"
            )),
            "{out}"
        );
        // Per node: its CPU per answered request (its switches are not counted apart); in
        // total, both.
        let mut out = String::new();
        render_run(&mut out, &run_with_engine_cpu(true));
        assert!(
            out.contains("cpu 2.5 s (625.0 µs per answered request)"),
            "{out}"
        );
        assert!(
            out.contains("cpu 3.5 s (437.5 µs per answered request)"),
            "{out}"
        );
        assert!(out.contains(&format!("cpu 6.0 s {per}\n")), "{out}");
        // A sweep step, one node and two.
        assert_eq!(
            engine_cpu(&run_with_engine_cpu(false)),
            format!("6.0 {per}")
        );
        assert_eq!(
            engine_cpu(&run_with_engine_cpu(true)),
            format!("6.0 (2.5+3.5) {per}")
        );
        // Unknown (not spawned, or an older report): nothing added.
        let mut r = run_with_engine_cpu(false);
        r.cpu.engine_secs = None;
        r.cpu.engine_context_switches = None;
        assert_eq!(engine_cpu(&r), "-");
        r.cpu.engine_secs = Some(6.0);
        assert_eq!(engine_cpu(&r), "6.0 (500.0 µs per answered request)");
    }

    #[test]
    fn a_report_without_context_switches_still_loads() {
        let cpu: crate::summary::Cpu = serde_json::from_value(serde_json::json!(
            {"harness_secs": 4.0, "engine_secs": 6.0, "wall_secs": 10.5}
        ))
        .unwrap();
        assert_eq!(cpu.engine_context_switches, None);
        let json = serde_json::to_value(cpu).unwrap();
        assert!(json.get("engine_context_switches").is_none(), "{json}");
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
        // A run with mdoc presentations is another plan than one without.
        let mut m = a.clone();
        m["model"]["mdoc_share"] = serde_json::json!(0.2);
        assert_eq!(
            plan_differences(&a, &m),
            vec!["mdoc share: absent → 0.2".to_string()]
        );
    }

    /// The mdoc presentations have a line of their own in the text (counts, then verdicts
    /// received against expected) and a block in the JSON; a run without them has neither,
    /// nor an mdoc share in its model.
    #[test]
    fn the_report_counts_mdoc_presentations_and_their_verdicts() {
        let mut run = run_with_engine_cpu(false);
        let mut out = String::new();
        render_run(&mut out, &run);
        assert!(!out.contains("mdoc"), "{out}");
        let json = serde_json::to_value(&run).unwrap();
        assert!(json.get("mdoc").is_none(), "{json}");
        let counts = |pairs: &[(&str, u64)]| {
            pairs
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect::<BTreeMap<_, _>>()
        };
        run.mdoc = Some(MdocSummary {
            share: 0.2,
            documents: 2000,
            presentations: 148,
            replays: 6,
            sent: 154,
            answered: 154,
            errors: 0,
            mismatches: 1,
            verdicts: counts(&[("accepted", 85), ("not_eligible", 63), ("replayed", 6)]),
            expected: counts(&[("accepted", 84), ("not_eligible", 64), ("replayed", 6)]),
        });
        let mut out = String::new();
        render_run(&mut out, &run);
        assert!(
            out.contains(
                "mdoc       148 presentations and 6 replays of them (20 % of genuine arrivals, \
                 2000 mDL documents): 154 sent, 154 answered, 0 errors, 1 mismatches\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("accepted 85 / 84, not_eligible 63 / 64, replayed 6 / 6"),
            "{out}"
        );
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(json["mdoc"]["sent"], 154);
        assert_eq!(json["mdoc"]["verdicts"]["accepted"], 85);
        let back: RunSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back.mdoc, run.mdoc);
        let model = serde_json::to_value(ModelInfo::new(&RushModel::default(), None)).unwrap();
        assert!(model.get("mdoc_share").is_none(), "{model}");
    }
}
