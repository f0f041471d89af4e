//! Latency budgets as files (`loadtest/budgets/*.toml`): what a run must hold, checked after
//! it; the process exits non-zero naming each check that missed.
//!
//! ```toml
//! p99_ms = 100            # 99th percentile, from intended send time
//! p999_ms = 250
//! max_error_rate = 0      # transport errors, timeouts, "busy" answers, over planned requests
//! max_mismatches = 0      # verdicts that differ from the expected one
//! scope = "all"           # or "peak": judge latency on the plan's peak phase only
//! ```
//!
//! Correctness is always judged: `max_mismatches` and `max_error_rate` default to 0, and a
//! run that answered nothing fails.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::summary::{BaselineDiff, Latency, RunSummary, SweepSummary};

/// Which requests latency checks judge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every answered request.
    #[default]
    All,
    /// Requests of the plan's peak phase.
    Peak,
}

/// A budget file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// What this budget is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Which requests latency checks judge.
    #[serde(default)]
    pub scope: Scope,
    /// Median limit, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile limit, ms.
    pub p99_ms: Option<f64>,
    /// 99.9th percentile limit, ms.
    pub p999_ms: Option<f64>,
    /// Slowest request limit, ms.
    pub max_ms: Option<f64>,
    /// Most (errors + skipped) / planned.
    #[serde(default)]
    pub max_error_rate: f64,
    /// Most mismatched verdicts.
    #[serde(default)]
    pub max_mismatches: u64,
    /// Most harness send lag at p99, ms: beyond it the run measured the harness's own
    /// saturation, and its latency numbers do not describe the engine.
    pub max_send_lag_p99_ms: Option<f64>,
    /// Sweeps: the knee must be at least this many times the modelled peak.
    pub min_headroom: Option<f64>,
    /// With `--baseline`: most p99 growth over the baseline, percent.
    pub max_p99_regression_pct: Option<f64>,
    /// With `--baseline`: most knee loss against the baseline, percent.
    pub max_knee_regression_pct: Option<f64>,
}

/// One check of a budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// The limit, as written.
    pub limit: String,
    /// What the run did.
    pub observed: String,
    /// Whether it held.
    pub passed: bool,
}

/// The name of the check that replays sent to another node came back `replayed`.
pub const CROSS_NODE_CHECK: &str = "cross-node replays";

/// The name of the harness's own send-lag check.
pub const SEND_LAG_CHECK: &str = "harness send lag p99";

/// What a latency check that missed says when the harness itself fell behind.
const HARNESS_LIMITED: &str =
    "harness-limited: the harness sent late, so this is not the engine's latency";

/// A budget's verdict on a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BudgetResult {
    /// The budget file.
    pub file: String,
    /// Every check.
    pub checks: Vec<Check>,
    /// Whether all held.
    pub passed: bool,
    /// Whether the harness's own send lag broke: the run then measured the harness, and its
    /// latency misses are not the engine's.
    #[serde(default)]
    pub harness_limited: bool,
}

impl BudgetResult {
    /// Collects checks.
    pub fn new(file: &str, checks: Vec<Check>) -> BudgetResult {
        BudgetResult {
            file: file.to_string(),
            passed: checks.iter().all(|c| c.passed),
            harness_limited: checks.iter().any(|c| c.name == SEND_LAG_CHECK && !c.passed),
            checks,
        }
    }

    /// The checks that missed, one line each.
    pub fn missed(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {} (limit {})", c.name, c.observed, c.limit))
            .collect()
    }
}

fn latency_check(name: &str, limit_ms: Option<f64>, observed_us: u64) -> Option<Check> {
    let limit = limit_ms?;
    Some(Check {
        name: name.into(),
        limit: format!("≤ {limit} ms"),
        observed: format!("{:.3} ms", observed_us as f64 / 1e3),
        passed: (observed_us as f64) <= limit * 1e3,
    })
}

impl Budget {
    /// Reads a budget file.
    pub fn load(path: &Path) -> Result<Budget> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading budget {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("budget {}", path.display()))
    }

    /// The checks of one open-loop run.
    pub fn check_run(&self, r: &RunSummary) -> Vec<Check> {
        let (scope, lat): (&str, Latency) = match self.scope {
            Scope::All => ("", r.latency_us),
            Scope::Peak => (
                " (peak)",
                r.phases.get("peak").copied().unwrap_or(r.latency_us),
            ),
        };
        let mut checks: Vec<Check> = [
            latency_check(&format!("p50{scope}"), self.p50_ms, lat.p50_us),
            latency_check(&format!("p99{scope}"), self.p99_ms, lat.p99_us),
            latency_check(&format!("p99.9{scope}"), self.p999_ms, lat.p999_us),
            latency_check(&format!("max{scope}"), self.max_ms, lat.max_us),
        ]
        .into_iter()
        .flatten()
        .collect();
        let latency_checks = checks.len();
        checks.push(Check {
            name: "mismatches".into(),
            limit: format!("≤ {}", self.max_mismatches),
            observed: r.mismatches.to_string(),
            passed: r.mismatches <= self.max_mismatches,
        });
        checks.push(Check {
            name: "error rate".into(),
            limit: format!("≤ {}", self.max_error_rate),
            observed: format!("{:.6} ({} errors)", r.error_rate, r.errors + r.skipped),
            passed: r.error_rate <= self.max_error_rate,
        });
        checks.push(Check {
            name: "answered".into(),
            limit: "≥ 1".into(),
            observed: r.answered.to_string(),
            passed: r.answered >= 1,
        });
        if let Some(c) = &r.cross_node_replays {
            // Several nodes: the run proves they agree only if replays crossed nodes and
            // each came back `replayed` (a wrong one is also a mismatch).
            checks.push(Check {
                name: CROSS_NODE_CHECK.into(),
                limit: "≥ 1, every one replayed".into(),
                observed: format!("{} of {} replayed", c.replayed, c.expected_replayed),
                passed: c.expected_replayed >= 1 && c.replayed == c.expected_replayed,
            });
        }
        if !r.revocation_states.is_empty() {
            // Several nodes: they must enforce one revocation state (the epoch alone can match
            // while the entries differ; the digest cannot).
            let distinct: std::collections::BTreeSet<&String> =
                r.revocation_states.iter().collect();
            checks.push(Check {
                name: "revocation states agree".into(),
                limit: "1 state on every node".into(),
                observed: if distinct.len() == 1 {
                    format!(
                        "{} nodes: {}",
                        r.revocation_states.len(),
                        r.revocation_states[0]
                    )
                } else {
                    r.revocation_states.join(" | ")
                },
                passed: distinct.len() == 1,
            });
        }
        if let Some(start) = &r.start {
            // Shards started together, or their seconds do not line up.
            checks.push(Check {
                name: "common start".into(),
                limit: "clock started at --start-at".into(),
                observed: if start.late_secs > 0.0 {
                    format!("{:.2} s late (signing ran past it)", start.late_secs)
                } else {
                    "on time".into()
                },
                passed: start.late_secs <= 0.0,
            });
        }
        if let Some(lag) = latency_check(
            SEND_LAG_CHECK,
            self.max_send_lag_p99_ms,
            r.send_lag_us.p99_us,
        ) {
            if !lag.passed {
                // Latency is timed from the intended send time: when the harness sent late,
                // its own queue is in every figure. Say so beside each latency miss.
                for c in checks.iter_mut().take(latency_checks).filter(|c| !c.passed) {
                    c.observed = format!("{} ({HARNESS_LIMITED})", c.observed);
                }
            }
            checks.push(lag);
        }
        checks
    }

    /// The checks of a capacity sweep (each step was judged by [`Budget::check_run`]).
    pub fn check_sweep(&self, s: &SweepSummary) -> Vec<Check> {
        let mismatches: u64 = s.steps.iter().map(|st| st.run.mismatches).sum();
        let mut checks = vec![
            Check {
                name: "mismatches (all steps)".into(),
                limit: format!("≤ {}", self.max_mismatches),
                observed: mismatches.to_string(),
                passed: mismatches <= self.max_mismatches,
            },
            Check {
                name: "knee".into(),
                limit: "> 0 (some step held the budget)".into(),
                observed: format!("{:.0} req/s", s.knee_rps),
                passed: s.knee_rps > 0.0,
            },
        ];
        if let Some(h) = self.min_headroom {
            checks.push(Check {
                name: "headroom".into(),
                limit: format!("≥ {h} × modelled peak"),
                observed: format!(
                    "{:.1} × ({:.0} / {:.0} req/s)",
                    s.headroom, s.knee_rps, s.modelled_peak_rps
                ),
                passed: s.headroom >= h,
            });
        }
        checks
    }

    /// The checks against a baseline.
    pub fn check_baseline(&self, diffs: &[BaselineDiff]) -> Vec<Check> {
        let mut checks = Vec::new();
        let find = |m: &str| diffs.iter().find(|d| d.metric == m);
        if let (Some(limit), Some(d)) = (self.max_p99_regression_pct, find("p99_us")) {
            checks.push(Check {
                name: "p99 regression".into(),
                limit: format!("≤ +{limit}%"),
                observed: format!("{:+.1}% ({:.0} → {:.0} µs)", d.change_pct, d.before, d.now),
                passed: d.change_pct <= limit,
            });
        }
        if let (Some(limit), Some(d)) = (self.max_knee_regression_pct, find("knee_rps")) {
            checks.push(Check {
                name: "knee regression".into(),
                limit: format!("≥ -{limit}%"),
                observed: format!(
                    "{:+.1}% ({:.0} → {:.0} req/s)",
                    d.change_pct, d.before, d.now
                ),
                passed: d.change_pct >= -limit,
            });
        }
        checks
    }

    /// The budget as goose thresholds (closed-loop runs).
    pub fn goose_thresholds(&self) -> Vec<String> {
        let mut t = Vec::new();
        for (name, limit) in [
            ("p50", self.p50_ms),
            ("p99", self.p99_ms),
            ("p99.9", self.p999_ms),
            ("max", self.max_ms),
        ] {
            if let Some(v) = limit {
                t.push(format!("{name}<={v}ms"));
            }
        }
        t.push(format!("error-rate<={}%", self.max_error_rate * 100.0));
        t
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::summary::CrossNodeReplays;

    #[test]
    fn shipped_budgets_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("budgets");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Budget::load(&path).unwrap();
                n += 1;
            }
        }
        assert!(n >= 3);
        let d = Budget::load(&dir.join("default.toml")).unwrap();
        assert_eq!(d.p99_ms, Some(100.0));
        assert_eq!(d.max_mismatches, 0);
        assert!(
            toml::from_str::<Budget>("p99 = 1").is_err(),
            "unknown keys are refused"
        );
    }

    fn run_with(p99_us: u64, send_lag_p99_us: u64) -> RunSummary {
        let lat = |p99_us| Latency {
            count: 1000,
            mean_us: 1.0,
            p50_us: 1,
            p90_us: 1,
            p99_us,
            p999_us: p99_us,
            max_us: p99_us,
        };
        RunSummary {
            planned: 1000,
            answered: 1000,
            errors: 0,
            mismatches: 0,
            skipped: 0,
            dropped: 0,
            error_rate: 0.0,
            throughput_rps: 1000.0,
            elapsed_secs: 1.0,
            prefill_secs: 0.0,
            latency_us: lat(p99_us),
            phases: Default::default(),
            scenarios: Default::default(),
            send_lag_us: lat(send_lag_p99_us),
            verdicts: Default::default(),
            expected: Default::default(),
            mismatch_examples: vec![],
            error_examples: vec![],
            cpu: crate::summary::Cpu {
                harness_secs: None,
                engine_secs: None,
                redis_secs: None,
                engine_context_switches: None,
                wall_secs: 1.0,
                engine_shared: false,
            },
            nodes: vec![],
            cross_node_replays: None,
            mdoc: None,
            revocation_states: Vec::new(),
            plan_fingerprint: None,
            run_salt: None,
            shard: None,
            histograms: None,
            start: None,
            clock_suspect: 0,
            timeline: vec![],
        }
    }

    #[test]
    fn the_default_budget_blames_the_harness_when_its_send_lag_broke() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("budgets");
        let b = Budget::load(&dir.join("default.toml")).unwrap();
        assert!(
            b.max_send_lag_p99_ms.is_some(),
            "default budget checks send lag"
        );
        // Slow answers, harness on time: the engine missed, the harness is not blamed.
        let r = BudgetResult::new("d", b.check_run(&run_with(500_000, 1_000)));
        assert!(!r.passed);
        assert!(!r.harness_limited);
        assert!(r.missed().iter().all(|m| !m.contains("harness-limited")));
        // The harness sent a second late: every latency miss says it is the harness's.
        let r = BudgetResult::new("d", b.check_run(&run_with(1_500_000, 1_000_000)));
        assert!(!r.passed);
        assert!(r.harness_limited);
        let missed = r.missed();
        assert!(missed.iter().any(|m| m.starts_with(SEND_LAG_CHECK)));
        assert!(missed
            .iter()
            .filter(|m| m.starts_with("p99"))
            .all(|m| m.contains("harness-limited")));
        // Both fine: passes.
        assert!(BudgetResult::new("d", b.check_run(&run_with(2_000, 1_000))).passed);
    }

    #[test]
    fn several_nodes_pass_only_when_they_enforce_one_revocation_state() {
        let b = Budget::default();
        let with = |states: &[&str]| {
            let mut r = run_with(2_000, 1_000);
            r.revocation_states = states.iter().map(|s| s.to_string()).collect();
            BudgetResult::new("d", b.check_run(&r))
        };
        let one = with(&[]);
        assert!(
            one.passed
                && one
                    .checks
                    .iter()
                    .all(|c| c.name != "revocation states agree")
        );
        let same = "epoch 4 entries 310 digest 00f4d42436380167";
        assert!(with(&[same, same, same]).passed);
        // The same epoch, other entries: the digest differs and the run fails.
        let other = with(&[same, "epoch 4 entries 2 digest 9a3e0c11d2b4f001"]);
        assert!(!other.passed);
        assert!(other
            .missed()
            .iter()
            .any(|m| m.starts_with("revocation states agree")));
    }

    #[test]
    fn several_nodes_pass_only_when_cross_node_replays_came_back_replayed() {
        let b = Budget::default();
        let with = |c: Option<CrossNodeReplays>| {
            let mut r = run_with(2_000, 1_000);
            r.cross_node_replays = c;
            BudgetResult::new("d", b.check_run(&r))
        };
        // One node: no such check.
        let one = with(None);
        assert!(one.passed && one.checks.iter().all(|c| c.name != CROSS_NODE_CHECK));
        // Nodes sharing one-time use: every cross-node replay is `replayed`.
        let shared = with(Some(CrossNodeReplays {
            judged: 40,
            expected_replayed: 31,
            replayed: 31,
        }));
        assert!(shared.passed, "{:?}", shared.missed());
        // Nodes on separate stores accept what another node accepted: the check misses
        // (besides the mismatches those verdicts are).
        let split = with(Some(CrossNodeReplays {
            judged: 40,
            expected_replayed: 31,
            replayed: 0,
        }));
        assert!(!split.passed);
        assert!(split.missed()[0].starts_with("cross-node replays: 0 of 31"));
        // No replay crossed nodes: nothing was shown, so the run does not pass.
        assert!(!with(Some(CrossNodeReplays::default())).passed);
    }

    #[test]
    fn goose_thresholds_parse_in_goose() {
        let b = Budget {
            p50_ms: Some(0.001),
            p99_ms: Some(100.0),
            p999_ms: Some(250.0),
            ..Budget::default()
        };
        let rules = b.goose_thresholds();
        assert_eq!(rules[1], "p99<=100ms");
        for t in rules {
            t.parse::<goose::threshold::Threshold>()
                .unwrap_or_else(|e| panic!("{t}: {e:?}"));
        }
    }
}
