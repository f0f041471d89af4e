//! Everything one invocation needs: the fleet, the engine (named, or one or more nodes
//! spawned), the scanner connections, and the knobs of open-loop runs. [`Harness::run_plan`] runs one plan (a rush,
//! or one step of a sweep) and summarises it; [`sweep`] steps the rate up to the knee.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::budget::Budget;
use crate::fleet::Fleet;
use crate::model::{fingerprint, schedule, Mix, Plan, ScannerSet};
use crate::openloop::{self, OpenLoopOptions};
use crate::report::TargetInfo;
use crate::summary::Histograms;
use crate::summary::{RunSummary, SweepStep, SweepSummary};
use crate::target::{Connections, SpawnedSite};

/// A fleet, connected to an engine.
pub struct Harness {
    /// The holders.
    pub fleet: Arc<Fleet>,
    /// The scanners, in index order.
    pub scanners: Arc<ScannerSet>,
    /// Connections, per scanner.
    pub conns: Arc<Connections>,
    /// The nodes (and their Redis), when the harness started them.
    pub site: Option<SpawnedSite>,
    /// Where requests go.
    pub target: TargetInfo,
    /// Open-loop knobs (the salt is replaced per run).
    pub opts: OpenLoopOptions,
    /// Adversarial mix.
    pub mix: Mix,
    /// Most requests one plan may schedule.
    pub max_requests: usize,
    /// Seed of schedules.
    pub seed: u64,
    /// `--run-salt`: the salt of the first plan run (each later one, a sweep's next step,
    /// derives its own from it); `None` draws a fresh one per plan, printed so it can be given
    /// again.
    pub run_salt: Option<u64>,
    /// Plans run so far.
    pub runs: std::sync::atomic::AtomicU64,
    /// `--metrics`: each `--target` node's operations port, whose `/metrics` gives its CPU
    /// (`process_cpu_seconds_total`); empty: unknown unless the harness started the nodes.
    pub metrics: Vec<std::net::SocketAddr>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The salt of the `run`-th plan (0-based) of a harness given `--run-salt base`: the base for
/// the first, then one derived per plan, the same in every shard.
pub fn plan_salt(base: u64, run: u64) -> u64 {
    if run == 0 {
        return base;
    }
    let id = gatehouse_engine::dev::population::derive_id(
        "gatehouse-loadtest plan salt",
        base ^ run.rotate_left(32),
    );
    u64::from_le_bytes(id[..8].try_into().unwrap_or([0; 8]))
}

fn fresh_salt() -> u64 {
    let mut b = [0u8; 8];
    if rand_core::OsRng.try_fill_bytes(&mut b).is_err() {
        // No OS randomness: the clock still makes this run's nonces differ from the last.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

use rand_core::RngCore as _;

impl Harness {
    /// Schedules and runs `plan` open loop, with tokens signed at most `sign_lead` ahead,
    /// starting at `--start-at` if one was given.
    pub async fn run_plan(&self, plan: &Plan, sign_lead: Duration) -> Result<RunSummary> {
        self.run_plan_at(plan, sign_lead, self.opts.start_at).await
    }

    /// [`Harness::run_plan`], its clock starting at `start_at` (or as soon as the first
    /// seconds are signed).
    pub async fn run_plan_at(
        &self,
        plan: &Plan,
        sign_lead: Duration,
        start_at: Option<std::time::SystemTime>,
    ) -> Result<RunSummary> {
        let fleet = self.fleet.clone();
        let scanners = self.scanners.clone();
        let (plan_c, mix, seed, max) = (*plan, self.mix, self.seed, self.max_requests);
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let salt = match self.run_salt {
            Some(base) => plan_salt(base, run),
            None => fresh_salt(),
        };
        let print = if self.run_salt.is_none() && run == 0 {
            format!(" (give --run-salt {salt:016x} to draw this schedule again)")
        } else {
            String::new()
        };
        let fingerprint = fingerprint(plan, &mix, seed, salt, self.fleet.len(), &self.scanners);
        if !matches!(
            self.opts.progress,
            gatehouse_engine::dev::progress::ProgressMode::Off
        ) || self.opts.shard.is_split()
        {
            eprintln!(
                "  plan {fingerprint}, salt {salt:016x}, shard {}{print}",
                self.opts.shard
            );
        }
        let sched = tokio::task::spawn_blocking(move || {
            schedule(
                &plan_c,
                &|i| fleet.credential(i),
                fleet.len(),
                &scanners,
                &mix,
                seed ^ salt,
                max,
            )
        })
        .await??;
        let node_cpu0 = self.node_cpu_secs().await;
        let redis_cpu0 = self.site.as_ref().and_then(SpawnedSite::redis_cpu_secs);
        let switches0 = self.site.as_ref().and_then(SpawnedSite::context_switches);
        let opts = OpenLoopOptions {
            sign_lead,
            salt,
            start_at,
            ..self.opts.clone()
        };
        let stats = openloop::run(
            self.fleet.clone(),
            self.scanners.clone(),
            self.conns.clone(),
            Arc::new(sched),
            plan,
            opts,
        )
        .await?;
        let node_cpu: Vec<Option<f64>> = node_cpu0
            .iter()
            .zip(self.node_cpu_secs().await)
            .map(|(a, b)| Some(b? - (*a)?))
            .collect();
        let mut summary = RunSummary::from_stats(&stats, &node_cpu);
        summary.cpu.engine_shared = self.site.is_none() && !self.metrics.is_empty();
        summary.plan_fingerprint = Some(fingerprint);
        summary.run_salt = Some(format!("{salt:016x}"));
        if self.opts.shard.is_split() {
            summary.shard = Some(self.opts.shard);
            summary.histograms = Some(Histograms::of(&stats));
        }
        summary.cpu.redis_secs = redis_cpu0
            .zip(self.site.as_ref().and_then(SpawnedSite::redis_cpu_secs))
            .map(|(a, b)| b - a);
        // A thread that exits takes its counts with it: a negative difference is unknown.
        summary.cpu.engine_context_switches = switches0
            .zip(self.site.as_ref().and_then(SpawnedSite::context_switches))
            .and_then(|(a, b)| b.checked_sub(a));
        if let Some(site) = self.site.as_ref().filter(|s| s.engines.len() > 1) {
            summary.revocation_states = site.revocation_states();
        }
        Ok(summary)
    }

    /// CPU seconds each node has used so far: read from the process of a node the harness
    /// started, else from the node's `/metrics` when `--metrics` names it (empty: unknown).
    async fn node_cpu_secs(&self) -> Vec<Option<f64>> {
        if let Some(site) = &self.site {
            return site.cpu_secs();
        }
        let mut out = Vec::with_capacity(self.metrics.len());
        for ops in &self.metrics {
            out.push(metrics_cpu_secs(*ops).await);
        }
        out
    }
}

/// How a capacity sweep steps.
#[derive(Debug, Clone, Copy)]
pub struct SweepOptions {
    /// First rate, requests per second.
    pub from_rps: f64,
    /// Each next rate is this many times the last.
    pub factor: f64,
    /// Seconds per step (at most the signing lead limit, so each step is signed before its
    /// clock starts and signing does not compete with the engine during the step).
    pub step_secs: f64,
    /// Stop above this rate.
    pub max_rps: f64,
    /// Stop after this many steps (refinement included).
    pub max_steps: usize,
    /// Bisection steps between the last rate that held and the first that broke.
    pub refine: usize,
    /// Pause between steps, so queues drain.
    pub pause: Duration,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            from_rps: 500.0,
            factor: 1.5,
            step_secs: 8.0,
            max_rps: 100_000.0,
            max_steps: 20,
            refine: 2,
            pause: Duration::from_secs(2),
        }
    }
}

/// Steps the open-loop rate up until `budget` breaks; the knee is the highest rate that
/// held it. Each step's numbers are in the result (timelines omitted).
pub async fn sweep(
    h: &Harness,
    budget: &Budget,
    opts: &SweepOptions,
    modelled_peak_rps: f64,
    progress: bool,
) -> Result<SweepSummary> {
    anyhow::ensure!(opts.factor > 1.0, "--factor must be above 1");
    anyhow::ensure!(opts.from_rps > 0.0, "--from must be positive");
    let sweep = Sweep {
        h,
        budget,
        opts,
        lead: Duration::from_secs_f64(opts.step_secs.min(openloop::MAX_SIGN_LEAD.as_secs_f64())),
        progress,
        steps: Vec::new(),
    };
    sweep.run(modelled_peak_rps).await
}

/// A node's `process_cpu_seconds_total`, read from its `/metrics` on `ops` (`None` when it
/// does not answer in 2 s or has no such line).
pub async fn metrics_cpu_secs(ops: std::net::SocketAddr) -> Option<f64> {
    let text = crate::cpu::metrics_text(ops).await?;
    crate::cpu::metric_value(&text, "process_cpu_seconds_total")
}

/// The steps of a sweep of fixed rates.
#[derive(Debug, Clone)]
pub struct FixedRates {
    /// The rates, req/s, in the order run.
    pub rates: Vec<f64>,
    /// Seconds per step.
    pub step_secs: f64,
    /// Between steps.
    pub gap: Duration,
    /// When the first step starts (every shard at once), if given.
    pub start_at: Option<std::time::SystemTime>,
}

/// A sweep of a fixed list of rates, each step run to the end whatever it shows (no stop at
/// the first break, no refinement), so that shards on several machines run the same steps.
/// With `start_at`, step k starts at start_at + k × (step + gap), the same instants on every
/// machine (a step whose signing ran past its instant says so and fails); without it, the
/// steps follow one another `gap` apart.
pub async fn sweep_rates(
    h: &Harness,
    budget: &Budget,
    fixed: &FixedRates,
    modelled_peak_rps: f64,
    progress: bool,
) -> Result<SweepSummary> {
    let (rates, step_secs, gap, start_at) =
        (&fixed.rates, fixed.step_secs, fixed.gap, fixed.start_at);
    anyhow::ensure!(!rates.is_empty(), "--rates: give at least one rate");
    anyhow::ensure!(
        rates.iter().all(|r| r.is_finite() && *r > 0.0),
        "--rates: every rate must be positive"
    );
    let lead = Duration::from_secs_f64(step_secs.min(openloop::MAX_SIGN_LEAD.as_secs_f64()));
    let mut steps = Vec::with_capacity(rates.len());
    for (k, &rate) in rates.iter().enumerate() {
        let at = start_at.map(|t| t + (Duration::from_secs_f64(step_secs) + gap) * k as u32);
        if k > 0 && at.is_none() {
            tokio::time::sleep(gap).await;
        }
        if progress {
            eprintln!("  step {}: {rate:.0} req/s for {step_secs} s", k + 1);
        }
        let plan = Plan::constant(rate, step_secs);
        let mut run = h.run_plan_at(&plan, lead, at).await?;
        run.timeline.clear();
        steps.push(judge_step(budget, rate, run, progress));
    }
    Ok(SweepSummary::of_steps(
        step_secs,
        steps,
        format!("ran every one of the {} rates given", rates.len()),
        modelled_peak_rps,
        true,
    ))
}

/// One step at `rate`, judged by the budget.
pub fn judge_step(budget: &Budget, rate: f64, run: RunSummary, progress: bool) -> SweepStep {
    let failed: Vec<String> = budget
        .check_run(&run)
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{} {} (limit {})", c.name, c.observed, c.limit))
        .collect();
    if progress {
        eprintln!(
            "    p99 {:.2} ms, p99.9 {:.2} ms, errors {}, mismatches {}: {}",
            run.latency_us.p99_us as f64 / 1e3,
            run.latency_us.p999_us as f64 / 1e3,
            run.errors,
            run.mismatches,
            if failed.is_empty() {
                "held".to_string()
            } else {
                failed.join("; ")
            }
        );
    }
    SweepStep {
        rate_rps: rate,
        passed: failed.is_empty(),
        failed_checks: failed,
        run,
    }
}

/// A capacity sweep in progress: what it runs against, how it steps, the steps so far.
struct Sweep<'a> {
    h: &'a Harness,
    budget: &'a Budget,
    opts: &'a SweepOptions,
    /// The signing lead of every step.
    lead: Duration,
    /// Whether to print each step on stderr.
    progress: bool,
    steps: Vec<SweepStep>,
}

/// Where the climb stopped: the last rate that held, the first that broke, and why.
struct Climb {
    last_pass: Option<f64>,
    first_fail: Option<f64>,
    stopped: String,
}

impl Sweep<'_> {
    /// Climbs, refines between the last rate that held and the first that broke, summarises.
    async fn run(mut self, modelled_peak_rps: f64) -> Result<SweepSummary> {
        let climb = self.climb().await?;
        if let (Some(lo), Some(hi)) = (climb.last_pass, climb.first_fail) {
            self.refine(lo, hi).await?;
        }
        Ok(self.summary(climb.stopped, modelled_peak_rps))
    }

    /// Runs one step at `rate` and judges it by the budget.
    async fn step(&self, rate: f64) -> Result<SweepStep> {
        let plan = Plan::constant(rate, self.opts.step_secs);
        if self.progress {
            eprintln!("  step: {rate:.0} req/s for {} s", self.opts.step_secs);
        }
        let mut run = self.h.run_plan(&plan, self.lead).await?;
        run.timeline.clear();
        Ok(judge_step(self.budget, rate, run, self.progress))
    }

    /// Steps up by the factor from the first rate until a step breaks the budget or gives a
    /// wrong verdict, the rate passes the maximum, or the steps run out.
    async fn climb(&mut self) -> Result<Climb> {
        let opts = self.opts;
        let mut rate = opts.from_rps;
        let mut last_pass = None;
        let (first_fail, stopped) = loop {
            if self.steps.len() >= opts.max_steps {
                break (
                    None,
                    format!("stopped after --max-steps {}", opts.max_steps),
                );
            }
            if rate > opts.max_rps {
                break (
                    None,
                    format!("every step up to --max-rps {} held", opts.max_rps),
                );
            }
            let step = self.step(rate).await?;
            let passed = step.passed;
            let wrong = step.run.mismatches > 0;
            self.steps.push(step);
            if wrong {
                break (
                    Some(rate),
                    "wrong verdicts: the sweep stops at the first mismatch".into(),
                );
            }
            if !passed {
                break (Some(rate), format!("the budget broke at {rate:.0} req/s"));
            }
            last_pass = Some(rate);
            rate *= opts.factor;
            tokio::time::sleep(opts.pause).await;
        };
        Ok(Climb {
            last_pass,
            first_fail,
            stopped,
        })
    }

    /// Bisects (geometrically) between `lo`, which held, and `hi`, which broke, for the
    /// refinement steps left; never after a wrong verdict.
    async fn refine(&mut self, mut lo: f64, mut hi: f64) -> Result<()> {
        for _ in 0..self.opts.refine {
            if self.steps.len() >= self.opts.max_steps
                || self.steps.iter().any(|s| s.run.mismatches > 0)
            {
                break;
            }
            tokio::time::sleep(self.opts.pause).await;
            let mid = (lo * hi).sqrt();
            let step = self.step(mid).await?;
            if step.passed {
                lo = mid;
            } else {
                hi = mid;
            }
            self.steps.push(step);
        }
        Ok(())
    }

    /// The sweep's result: the knee, the first failure, the headroom over the modelled peak.
    fn summary(self, stopped: String, modelled_peak_rps: f64) -> SweepSummary {
        SweepSummary::of_steps(
            self.opts.step_secs,
            self.steps,
            stopped,
            modelled_peak_rps,
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_nodes_cpu_is_read_from_its_metrics() {
        use crate::cpu::metric_value;
        let text = "# HELP process_cpu_seconds Total user and system CPU time\n\
                    # TYPE process_cpu_seconds counter\n\
                    process_cpu_seconds_total 12.5\n\
                    process_resident_memory_bytes 1000\n";
        assert_eq!(metric_value(text, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(
            metric_value("gatehouse_ready 1\n", "process_cpu_seconds_total"),
            None
        );
        assert_eq!(
            metric_value(
                "process_cpu_seconds_total_x 3\n",
                "process_cpu_seconds_total"
            ),
            None
        );
        assert_eq!(plan_salt(7, 0), 7);
        assert_ne!(plan_salt(7, 1), plan_salt(7, 2));
        assert_eq!(plan_salt(7, 1), plan_salt(7, 1));
    }
}
