//! `merge`: the reports of the shards of one run (`rush --shard I/N`, on one machine or many),
//! added up into the report one process running the whole plan would have written.
//!
//! Counts, verdicts, errors, mismatches and CPU are added; latency percentiles are read from
//! the shards' merged HDR histograms (never averaged); the timeline's planned rate is the
//! plan's, and throughput is recomputed from the merged counts over the longest shard's span.
//! Shards of different plans or salts, a shard given twice, a missing shard (unless allowed:
//! the result is then marked partial) and a file that is not a shard report are refused, each
//! with the file named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::budget::Budget;
use crate::harness::judge_step;
use crate::report::{Merged, Report, ShardFacts};
use crate::summary::{
    decode_histogram, encode_histogram, histogram, histogram_with, latency, Cpu, CrossNodeReplays,
    Histograms, NodeSummary, RunSummary, Second, SweepStep, SweepSummary,
};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

/// The largest report `merge` reads (a shard's report is kilobytes to a few megabytes).
const MAX_REPORT_BYTES: u64 = 64 << 20;

/// Reads a report file, bounded in size.
pub fn read(path: &Path) -> Result<Report> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_REPORT_BYTES,
        "{}: {len} bytes, not a shard report (at most {MAX_REPORT_BYTES})",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a gatehouse-loadtest report (rush --shard I/N --report FILE writes one)",
            path.display()
        )
    })
}

/// One shard's report (or one step of a shard's sweep), checked to be one.
struct Part<'a> {
    file: String,
    report: &'a Report,
    run: &'a RunSummary,
    index: usize,
    count: usize,
    fingerprint: &'a str,
    histograms: &'a Histograms,
}

/// Refuses what is not a gatehouse-loadtest report.
fn check_tool(file: &str, report: &Report) -> Result<()> {
    if report.tool != "gatehouse-loadtest" {
        bail!("{file}: not a gatehouse-loadtest report");
    }
    Ok(())
}

/// The shard run `run` of `report` (read from `file`), or why it is not one.
fn part_of<'a>(file: &str, report: &'a Report, run: &'a RunSummary) -> Result<Part<'a>> {
    let not_shard = || {
        anyhow::anyhow!(
            "{file}: not a shard report (a rush or sweep with --shard I/N writes one; this run was not split)"
        )
    };
    let shard = run.shard.ok_or_else(not_shard)?;
    let histograms = run.histograms.as_ref().ok_or_else(not_shard)?;
    let fingerprint = run.plan_fingerprint.as_deref().ok_or_else(not_shard)?;
    Ok(Part {
        file: file.to_string(),
        report,
        run,
        index: shard.index,
        count: shard.count,
        fingerprint,
        histograms,
    })
}

fn part<'a>(file: &Path, report: &'a Report) -> Result<Part<'a>> {
    let file = file.display().to_string();
    check_tool(&file, report)?;
    if report.mode != "rush" {
        bail!(
            "{file}: a {} report among rush reports; merge reads the shard reports of one rush, \
             or of one sweep of fixed --rates",
            report.mode
        );
    }
    let run = report.run.as_ref().ok_or_else(|| {
        anyhow::anyhow!("{file}: not a shard report (a rush report without its run)")
    })?;
    part_of(&file, report, run)
}

/// Checks that `parts` are the shards of one plan, each once, and all of them unless
/// `allow_missing`; sorts them by index. Returns the shard count and the missing shards.
fn check_parts(parts: &mut [Part<'_>], allow_missing: bool) -> Result<(usize, Vec<usize>)> {
    let first = &parts[0];
    for p in &parts[1..] {
        if p.count != first.count {
            bail!(
                "{}: shard {}/{}, but {} is a shard of {}",
                p.file,
                p.index,
                p.count,
                first.file,
                first.count
            );
        }
        if p.fingerprint != first.fingerprint {
            bail!(
                "{}: another plan than {} (plan {} with salt {}, against plan {} with salt {}): \
                 every shard needs the same arguments and --run-salt",
                p.file,
                first.file,
                p.fingerprint,
                p.run.run_salt.as_deref().unwrap_or("?"),
                first.fingerprint,
                first.run.run_salt.as_deref().unwrap_or("?")
            );
        }
    }
    parts.sort_by_key(|p| p.index);
    for w in parts.windows(2) {
        if w[0].index == w[1].index {
            bail!(
                "{}: shard {}/{} twice (also {})",
                w[1].file,
                w[1].index,
                w[1].count,
                w[0].file
            );
        }
    }
    let count = parts[0].count;
    let missing: Vec<usize> = (1..=count)
        .filter(|i| !parts.iter().any(|p| p.index == *i))
        .collect();
    if !missing.is_empty() && !allow_missing {
        let names: Vec<String> = missing.iter().map(|i| format!("{i}/{count}")).collect();
        bail!(
            "shards missing: {} (give every shard's report, or --allow-missing for a partial result)",
            names.join(", ")
        );
    }
    Ok((count, missing))
}

/// Each shard's own facts, from its parts (one per rush, one per step of a sweep).
fn facts(parts: &[Vec<Part<'_>>]) -> Vec<ShardFacts> {
    let Some(first) = parts.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let runs: Vec<&RunSummary> = parts
                .iter()
                .filter_map(|step| step.get(i))
                .map(|p| p.run)
                .collect();
            ShardFacts {
                index: p.index,
                file: p.file.clone(),
                command: p.report.command.clone(),
                host: p.report.host.clone(),
                cores: p.report.cores,
                started_unix: p.report.started_unix,
                planned: runs.iter().map(|r| r.planned).sum(),
                prefill_secs: runs.iter().map(|r| r.prefill_secs).fold(0.0, f64::max),
                harness_cpu_secs: runs.iter().map(|r| r.cpu.harness_secs).sum(),
                late_secs: runs
                    .iter()
                    .filter_map(|r| r.start.map(|s| s.late_secs))
                    .reduce(f64::max),
                clock_suspect: runs.iter().map(|r| r.clock_suspect).sum(),
            }
        })
        .collect()
}

/// The merged report's frame: the first shard's, with the merge's own command and the
/// shards' facts.
fn frame(parts: &[Vec<Part<'_>>], count: usize, missing: Vec<usize>) -> Report {
    let firsts = &parts[0];
    let base = firsts[0].report;
    let mut target = base.target.clone();
    target.connections = firsts.iter().map(|p| p.report.target.connections).sum();
    Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        // Each shard's machine is in its facts.
        host: None,
        started_unix: firsts
            .iter()
            .map(|p| p.report.started_unix)
            .min()
            .unwrap_or(0),
        cores: base.cores,
        target,
        run: None,
        sweep: None,
        goose: None,
        budget: None,
        baseline: Vec::new(),
        passed: false,
        merged: Some(Merged {
            count,
            shards: facts(parts),
            partial: !missing.is_empty(),
            missing,
        }),
        ..base.clone()
    }
}

/// Merges the shard reports `files` (each with the path it was read from) into one report:
/// a rush's, or a sweep's of fixed rates (its steps merged one by one; judge them with
/// [`judge_sweep`]).
pub fn merge(files: &[(PathBuf, Report)], allow_missing: bool) -> Result<Report> {
    anyhow::ensure!(!files.is_empty(), "merge: give the shards' report files");
    if files[0].1.mode == "sweep" {
        return merge_sweeps(files, allow_missing);
    }
    let mut parts = files
        .iter()
        .map(|(path, r)| part(path, r))
        .collect::<Result<Vec<_>>>()?;
    let (count, missing) = check_parts(&mut parts, allow_missing)?;
    let run = merge_runs(&parts)?;
    let parts = vec![parts];
    let mut report = frame(&parts, count, missing);
    report.run = Some(run);
    Ok(report)
}

/// The shards' sweeps of the same fixed rates, step by step.
fn merge_sweeps(files: &[(PathBuf, Report)], allow_missing: bool) -> Result<Report> {
    let mut sweeps = Vec::with_capacity(files.len());
    for (path, r) in files {
        let file = path.display().to_string();
        check_tool(&file, r)?;
        let s = match (r.mode.as_str(), &r.sweep) {
            ("sweep", Some(s)) => s,
            _ => bail!(
                "{file}: a {} report among sweep reports; merge reads the shard reports of one \
                 sweep of fixed --rates, or of one rush",
                r.mode
            ),
        };
        if !s.fixed_rates {
            bail!(
                "{file}: a sweep that climbed until its budget broke; shards must run the same \
                 steps: sweep --rates R1,R2,… --shard I/N"
            );
        }
        sweeps.push((file, r, s));
    }
    let (first_file, _, first) = &sweeps[0];
    let rates = |s: &SweepSummary| s.steps.iter().map(|st| st.rate_rps).collect::<Vec<_>>();
    for (file, _, s) in &sweeps[1..] {
        if rates(s) != rates(first) {
            bail!(
                "{file}: steps at {:?} req/s, but {first_file} ran {:?}: every shard needs the same --rates",
                rates(s),
                rates(first)
            );
        }
    }
    anyhow::ensure!(
        !first.steps.is_empty(),
        "{first_file}: a sweep without steps"
    );
    let mut steps_parts = Vec::with_capacity(first.steps.len());
    let (mut count, mut missing) = (0, Vec::new());
    for k in 0..first.steps.len() {
        let mut parts = sweeps
            .iter()
            .map(|(file, r, s)| part_of(file, r, &s.steps[k].run))
            .collect::<Result<Vec<_>>>()?;
        (count, missing) = check_parts(&mut parts, allow_missing)?;
        steps_parts.push(parts);
    }
    let mut steps = Vec::with_capacity(steps_parts.len());
    for (k, parts) in steps_parts.iter().enumerate() {
        steps.push(SweepStep {
            rate_rps: first.steps[k].rate_rps,
            passed: false,
            failed_checks: vec!["not judged yet".into()],
            run: merge_runs(parts)?,
        });
    }
    let mut report = frame(&steps_parts, count, missing);
    report.sweep = Some(SweepSummary::of_steps(
        first.step_secs,
        steps,
        first.stopped.clone(),
        first.modelled_peak_rps,
        true,
    ));
    Ok(report)
}

/// Judges each step of a merged sweep by `budget` and finds its knee.
pub fn judge_sweep(s: &mut SweepSummary, budget: &Budget) {
    let steps = std::mem::take(&mut s.steps)
        .into_iter()
        .map(|st| judge_step(budget, st.rate_rps, st.run, false))
        .collect();
    *s = SweepSummary::of_steps(
        s.step_secs,
        steps,
        s.stopped.clone(),
        s.modelled_peak_rps,
        true,
    );
}

/// A histogram of a shard's report, or why it is not one.
fn decode(p: &Part<'_>, what: &str, s: &str) -> Result<Histogram<u64>> {
    decode_histogram(s).map_err(|e| anyhow::anyhow!("{}: histogram {what}: {e}", p.file))
}

/// `into` += `h`.
fn add(into: &mut Histogram<u64>, h: &Histogram<u64>, p: &Part<'_>, what: &str) -> Result<()> {
    into.add(h)
        .map_err(|e| anyhow::anyhow!("{}: histogram {what}: {e:?}", p.file))
}

/// Adds the labelled histograms of every part (phases or scenarios).
fn merge_labelled(
    parts: &[Part<'_>],
    of: impl Fn(&Histograms) -> &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Histogram<u64>>> {
    let mut out: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for p in parts {
        for (label, s) in of(p.histograms) {
            let h = decode(p, label, s)?;
            add(
                out.entry(label.clone()).or_insert_with(histogram),
                &h,
                p,
                label,
            )?;
        }
    }
    Ok(out)
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// The sum of `f` over the parts, when every part knows it.
fn sum_known(parts: &[Part<'_>], f: impl Fn(&RunSummary) -> Option<f64>) -> Option<f64> {
    parts.iter().map(|p| f(p.run)).sum()
}

/// The shards' runs added up: one run of the whole plan.
fn merge_runs(parts: &[Part<'_>]) -> Result<RunSummary> {
    let mut all = histogram();
    let mut send_lag = histogram();
    for p in parts {
        add(&mut all, &decode(p, "all", &p.histograms.all)?, p, "all")?;
        add(
            &mut send_lag,
            &decode(p, "send_lag", &p.histograms.send_lag)?,
            p,
            "send_lag",
        )?;
    }
    let phases = merge_labelled(parts, |h| &h.phases)?;
    let scenarios = merge_labelled(parts, |h| &h.scenarios)?;
    let mut run = RunSummary {
        histograms: None,
        shard: None,
        ..parts[0].run.clone()
    };
    add_up_counts(&mut run, parts);
    run.latency_us = latency(&all);
    run.send_lag_us = latency(&send_lag);
    let percentiles = |m: &BTreeMap<String, Histogram<u64>>| {
        m.iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(k, h)| (k.clone(), latency(h)))
            .collect()
    };
    run.phases = percentiles(&phases);
    run.scenarios = percentiles(&scenarios);
    run.cpu = merge_cpu(parts);
    run.nodes = merge_nodes(parts)?;
    run.timeline = merge_timeline(parts)?;
    let encoded = |m: &BTreeMap<String, Histogram<u64>>| {
        m.iter()
            .map(|(k, h)| (k.clone(), encode_histogram(h)))
            .collect()
    };
    run.histograms = Some(Histograms {
        all: encode_histogram(&all),
        send_lag: encode_histogram(&send_lag),
        phases: encoded(&phases),
        scenarios: encoded(&scenarios),
        nodes: Vec::new(),
        timeline: Vec::new(),
    });
    Ok(run)
}

/// Counts, verdicts, examples (naming their shard), the latest start, the longest span, the
/// fleet's agreement: added up or taken from the shards into `run`.
fn add_up_counts(run: &mut RunSummary, parts: &[Part<'_>]) {
    let sum = |f: fn(&RunSummary) -> u64| parts.iter().map(|p| f(p.run)).sum::<u64>();
    run.planned = sum(|r| r.planned);
    run.answered = sum(|r| r.answered);
    run.errors = sum(|r| r.errors);
    run.skipped = sum(|r| r.skipped);
    run.dropped = sum(|r| r.dropped);
    run.mismatches = sum(|r| r.mismatches);
    run.clock_suspect = sum(|r| r.clock_suspect);
    // The latest start among the shards says how far off the common start the run was.
    run.start = parts.iter().filter_map(|p| p.run.start).reduce(|a, b| {
        if b.late_secs > a.late_secs {
            b
        } else {
            a
        }
    });
    run.error_rate = (run.errors + run.skipped) as f64 / run.planned.max(1) as f64;
    run.elapsed_secs = parts.iter().map(|p| p.run.elapsed_secs).fold(0.0, f64::max);
    run.prefill_secs = parts.iter().map(|p| p.run.prefill_secs).fold(0.0, f64::max);
    run.throughput_rps = run.answered as f64 / run.elapsed_secs.max(1e-9);
    run.verdicts = BTreeMap::new();
    run.expected = BTreeMap::new();
    run.mismatch_examples = Vec::new();
    run.error_examples = Vec::new();
    run.revocation_states = Vec::new();
    for p in parts {
        add_counts(&mut run.verdicts, &p.run.verdicts);
        add_counts(&mut run.expected, &p.run.expected);
        let tag = |e: &String| format!("shard {}: {e}", p.index);
        run.mismatch_examples
            .extend(p.run.mismatch_examples.iter().map(tag));
        run.error_examples
            .extend(p.run.error_examples.iter().map(tag));
        for s in &p.run.revocation_states {
            if !run.revocation_states.contains(s) {
                run.revocation_states.push(s.clone());
            }
        }
    }
    run.mismatch_examples.truncate(10);
    run.error_examples.truncate(10);
    run.cross_node_replays = parts
        .iter()
        .filter_map(|p| p.run.cross_node_replays)
        .reduce(|a, b| CrossNodeReplays {
            judged: a.judged + b.judged,
            expected_replayed: a.expected_replayed + b.expected_replayed,
            replayed: a.replayed + b.replayed,
        });
}

/// The CPU of the whole run: the harnesses' added up; the engine's added up when each shard
/// started its own, the largest shard's when they loaded the same nodes and read their
/// `/metrics` (each read the nodes' whole CPU over its own window: a sum would count it once
/// per shard).
fn merge_cpu(parts: &[Part<'_>]) -> Cpu {
    let shared = parts.iter().all(|p| p.run.cpu.engine_shared);
    Cpu {
        harness_secs: sum_known(parts, |r| r.cpu.harness_secs),
        engine_secs: if shared {
            parts
                .iter()
                .map(|p| p.run.cpu.engine_secs)
                .reduce(|a, b| a.zip(b).map(|(a, b)| a.max(b)))
                .flatten()
        } else {
            sum_known(parts, |r| r.cpu.engine_secs)
        },
        redis_secs: sum_known(parts, |r| r.cpu.redis_secs),
        engine_context_switches: parts
            .iter()
            .map(|p| p.run.cpu.engine_context_switches)
            .sum(),
        wall_secs: parts
            .iter()
            .map(|p| p.run.cpu.wall_secs)
            .fold(0.0, f64::max),
        engine_shared: shared,
    }
}

/// Per node (by index): counts added, latency from the merged histograms.
fn merge_nodes(parts: &[Part<'_>]) -> Result<Vec<NodeSummary>> {
    let n = parts.iter().map(|p| p.run.nodes.len()).max().unwrap_or(0);
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let mut node = NodeSummary {
            node: i,
            ..NodeSummary::default()
        };
        let mut h = histogram();
        let mut cpu = Some(0.0);
        for p in parts {
            let Some(s) = p.run.nodes.get(i) else {
                continue;
            };
            if node.address.is_empty() {
                node.address = s.address.clone();
            }
            node.requests += s.requests;
            node.answered += s.answered;
            node.errors += s.errors;
            node.mismatches += s.mismatches;
            add_counts(&mut node.verdicts, &s.verdicts);
            let shared = p.run.cpu.engine_shared;
            cpu = cpu
                .zip(s.cpu_secs)
                .map(|(a, b): (f64, f64)| if shared { a.max(b) } else { a + b });
            let what = format!("node {i}");
            let encoded =
                p.histograms.nodes.get(i).ok_or_else(|| {
                    anyhow::anyhow!("{}: no latency histogram for node {i}", p.file)
                })?;
            add(&mut h, &decode(p, &what, encoded)?, p, &what)?;
        }
        node.latency_us = latency(&h);
        node.cpu_secs = cpu;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Per second of the plan: counts added, the plan's rate (not the sum), percentiles from the
/// merged histograms.
fn merge_timeline(parts: &[Part<'_>]) -> Result<Vec<Second>> {
    let n = parts
        .iter()
        .map(|p| p.run.timeline.len())
        .max()
        .unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    for t in 0..n {
        let mut second: Option<Second> = None;
        let mut h = histogram_with(2);
        for p in parts {
            let Some(s) = p.run.timeline.get(t) else {
                continue;
            };
            let what = format!("second {t}");
            let encoded = p.histograms.timeline.get(t).ok_or_else(|| {
                anyhow::anyhow!("{}: no latency histogram for second {t}", p.file)
            })?;
            add(&mut h, &decode(p, &what, encoded)?, p, &what)?;
            match second.as_mut() {
                None => second = Some(s.clone()),
                Some(m) => {
                    m.sent += s.sent;
                    m.answered += s.answered;
                    m.errors += s.errors;
                    m.mismatches += s.mismatches;
                }
            }
        }
        if let Some(mut s) = second {
            s.p50_us = h.value_at_quantile(0.50);
            s.p99_us = h.value_at_quantile(0.99);
            out.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::model::{Phase, Scenario, Shard};
    use crate::summary::RunStats;

    fn report(run: RunSummary) -> Report {
        Report {
            command: "gatehouse-loadtest rush --shard".into(),
            host: Some("b1".into()),
            run: Some(run),
            ..crate::report::sample("rush")
        }
    }

    /// A shard's report whose answered requests took `samples` µs (second `i % 3` of the
    /// plan, gate scenario, peak phase), `errors` errors and `mismatches` mismatches.
    fn shard(index: usize, count: usize, samples: &[u64], errors: u64, mismatches: u64) -> Report {
        let mut stats = RunStats {
            planned: samples.len() as u64 + errors,
            answered: samples.len() as u64,
            errors,
            mismatches,
            skipped: 0,
            dropped: 0,
            all: histogram(),
            by_phase: Phase::ALL.iter().map(|p| (*p, histogram())).collect(),
            by_scenario: Scenario::ALL.iter().map(|s| (*s, histogram())).collect(),
            send_lag: histogram(),
            verdicts: [("accepted".to_string(), samples.len() as u64)].into(),
            expected: [("accepted".to_string(), samples.len() as u64)].into(),
            mismatch_examples: (0..mismatches).map(|m| format!("request {m}")).collect(),
            error_examples: Vec::new(),
            elapsed_secs: 3.0 + index as f64 / 10.0,
            prefill_secs: 0.5,
            timeline: (0..3)
                .map(|t| Second {
                    t,
                    planned_rps: 500.0,
                    sent: 0,
                    answered: 0,
                    errors: 0,
                    mismatches: 0,
                    p50_us: 0,
                    p99_us: 0,
                })
                .collect(),
            per_second: (0..3).map(|_| histogram_with(2)).collect(),
            start: None,
            clock_suspect: 0,
            harness_cpu_secs: Some(1.0),
            nodes: Vec::new(),
            cross_node: None,
            mdoc: None,
        };
        for (i, &us) in samples.iter().enumerate() {
            stats.all.record(us).unwrap();
            stats
                .by_phase
                .get_mut(&Phase::Peak)
                .unwrap()
                .record(us)
                .unwrap();
            stats
                .by_scenario
                .get_mut(&Scenario::Gate)
                .unwrap()
                .record(us)
                .unwrap();
            stats.send_lag.record(10).unwrap();
            stats.timeline[i % 3].sent += 1;
            stats.timeline[i % 3].answered += 1;
            stats.per_second[i % 3].record(us).unwrap();
        }
        let mut run = RunSummary::from_stats(&stats, &[]);
        run.plan_fingerprint = Some("0123456789abcdef".into());
        run.run_salt = Some("00000000c0ffee00".into());
        run.shard = Some(Shard { index, count });
        run.histograms = Some(Histograms::of(&stats));
        report(run)
    }

    fn files(reports: Vec<Report>) -> Vec<(PathBuf, Report)> {
        reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| (PathBuf::from(format!("shard-{i}.json")), r))
            .collect()
    }

    /// Uneven shards: one with 990 fast answers, one with 10 slow ones. The mean of the
    /// shards' p99s is far from the whole's p99; the merge reads the whole's.
    #[test]
    fn merging_is_exact_where_averaging_percentiles_is_not() {
        let fast: Vec<u64> = (0..990).map(|i| 1_000 + i).collect();
        let slow: Vec<u64> = (0..10).map(|i| 50_000 + 1_000 * i).collect();
        let mut whole = histogram();
        for us in fast.iter().chain(&slow) {
            whole.record(*us).unwrap();
        }
        let a = shard(1, 2, &fast, 2, 1);
        let b = shard(2, 2, &slow, 0, 0);
        let mean_p99 = (a.run.as_ref().unwrap().latency_us.p99_us
            + b.run.as_ref().unwrap().latency_us.p99_us)
            / 2;
        let merged = merge(&files(vec![b, a]), false).unwrap();
        let run = merged.run.as_ref().unwrap();
        let want = latency(&whole);
        assert_eq!(run.latency_us.p99_us, want.p99_us);
        assert_eq!(run.latency_us.p50_us, want.p50_us);
        assert_eq!(run.latency_us.max_us, want.max_us);
        assert_eq!(run.latency_us.count, 1000);
        assert!(
            mean_p99.abs_diff(want.p99_us) > 10_000,
            "the example must separate the two: mean of p99s {mean_p99}, whole {}",
            want.p99_us
        );
        assert_eq!(run.phases["peak"].p99_us, want.p99_us);
        assert_eq!(run.scenarios["gate"].p99_us, want.p99_us);
        // Counts add; the rate per second is the plan's, not the sum of the shards'.
        assert_eq!(run.planned, 1002);
        assert_eq!((run.answered, run.errors, run.mismatches), (1000, 2, 1));
        assert_eq!(run.verdicts["accepted"], 1000);
        assert_eq!(run.timeline.len(), 3);
        assert_eq!(run.timeline.iter().map(|s| s.answered).sum::<u64>(), 1000);
        assert_eq!(run.timeline[0].planned_rps, 500.0);
        assert_eq!(run.cpu.harness_secs, Some(2.0));
        // Throughput over the longest shard's span; examples name their shard.
        assert!((run.elapsed_secs - 3.2).abs() < 1e-9);
        assert!((run.throughput_rps - 1000.0 / 3.2).abs() < 1e-6);
        assert_eq!(
            run.mismatch_examples,
            vec!["shard 1: request 0".to_string()]
        );
        let m = merged.merged.as_ref().unwrap();
        assert_eq!(m.shards.iter().map(|s| s.index).collect::<Vec<_>>(), [1, 2]);
        assert!(!m.partial);
        // The merged report renders, as text and as the HTML page.
        assert!(merged.render().contains("merged     2 of 2 shards"));
        assert!(crate::html::render(&merged)
            .unwrap()
            .starts_with("<!DOCTYPE html>"));
    }

    fn refused(reports: Vec<Report>, allow_missing: bool) -> String {
        format!("{:#}", merge(&files(reports), allow_missing).unwrap_err())
    }

    #[test]
    fn shards_of_another_plan_twice_or_missing_are_refused_naming_the_file() {
        let s = |i| shard(i, 3, &[1_000, 2_000], 0, 0);
        let mut other = s(2);
        other.run.as_mut().unwrap().plan_fingerprint = Some("fedcba9876543210".into());
        let e = refused(vec![s(1), other], false);
        assert!(e.contains("shard-1.json: another plan"), "{e}");
        let e = refused(vec![s(1), s(2), s(2)], false);
        assert!(
            e.contains("shard-2.json: shard 2/3 twice (also shard-1.json)"),
            "{e}"
        );
        let e = refused(vec![s(1), s(3)], false);
        assert!(e.contains("shards missing: 2/3"), "{e}");
        let e = refused(vec![s(1), shard(2, 2, &[1], 0, 0)], false);
        assert!(
            e.contains("shard-1.json: shard 2/2, but shard-0.json is a shard of 3"),
            "{e}"
        );
        // Allowed missing: merged, and marked partial.
        let m = merge(&files(vec![s(1), s(3)]), true).unwrap();
        let merged = m.merged.unwrap();
        assert!(merged.partial);
        assert_eq!(merged.missing, vec![2]);
        // Not shard reports.
        let mut whole = s(1);
        whole.run.as_mut().unwrap().shard = None;
        let e = refused(vec![whole], false);
        assert!(e.contains("shard-0.json: not a shard report"), "{e}");
        let mut sweep = s(1);
        sweep.mode = "sweep".into();
        let e = refused(vec![sweep], false);
        assert!(e.contains("shard-0.json: a sweep report"), "{e}");
        let mut other_tool = s(1);
        other_tool.tool = "wrk".into();
        let e = refused(vec![other_tool], false);
        assert!(
            e.contains("shard-0.json: not a gatehouse-loadtest report"),
            "{e}"
        );
        let mut broken = s(1);
        broken
            .run
            .as_mut()
            .unwrap()
            .histograms
            .as_mut()
            .unwrap()
            .all = "!!".into();
        let e = refused(vec![broken, s(2), s(3)], false);
        assert!(e.contains("shard-0.json: histogram all: not base64"), "{e}");
    }

    /// A shard's sweep of fixed rates: one step per (rate, samples) of [`shard`]'s runs.
    fn sweep_shard(index: usize, steps: &[(f64, Vec<u64>)]) -> Report {
        let mut r = shard(index, 2, &[1], 0, 0);
        r.mode = "sweep".into();
        r.run = None;
        let steps = steps
            .iter()
            .map(|(rate, samples)| SweepStep {
                rate_rps: *rate,
                passed: true,
                failed_checks: Vec::new(),
                run: shard(index, 2, samples, 0, 0).run.unwrap(),
            })
            .collect();
        r.sweep = Some(SweepSummary::of_steps(
            3.0,
            steps,
            "fixed".into(),
            500.0,
            true,
        ));
        r
    }

    /// Each step merged on its own, then judged: the knee comes from the merged steps (at
    /// 2,000 req/s the second shard's slow answers break a 20 ms p99 of the merged step).
    #[test]
    fn a_sweep_of_fixed_rates_merges_step_by_step_and_finds_the_knee_from_merged_steps() {
        let fast = |n: u64| (0..n).map(|i| 1_000 + i).collect::<Vec<u64>>();
        let mut slow = fast(50);
        slow.extend((0..20).map(|i| 60_000 + i));
        let a = sweep_shard(1, &[(1_000.0, fast(500)), (2_000.0, fast(900))]);
        let b = sweep_shard(2, &[(1_000.0, fast(500)), (2_000.0, slow)]);
        let mut merged = merge(&files(vec![a, b]), false).unwrap();
        let s = merged.sweep.as_mut().unwrap();
        assert_eq!(s.steps.len(), 2);
        assert_eq!(s.steps[0].run.answered, 1_000);
        assert_eq!(s.steps[1].run.answered, 970);
        let budget: Budget = toml::from_str("p99_ms = 20.0").unwrap();
        judge_sweep(s, &budget);
        assert!(s.steps[0].passed);
        assert!(!s.steps[1].passed, "{:?}", s.steps[1].failed_checks);
        assert_eq!(s.knee_rps, 1_000.0);
        assert_eq!(s.first_failure_rps, Some(2_000.0));
        assert!(merged.render().contains("merged     2 of 2 shards"));
    }

    #[test]
    fn sweeps_that_climbed_or_ran_other_rates_are_refused() {
        let a = sweep_shard(1, &[(1_000.0, vec![1_000])]);
        let mut climbed = sweep_shard(2, &[(1_000.0, vec![1_000])]);
        climbed.sweep.as_mut().unwrap().fixed_rates = false;
        let e = refused(vec![a.clone(), climbed], false);
        assert!(e.contains("shard-1.json: a sweep that climbed"), "{e}");
        let other = sweep_shard(2, &[(1_500.0, vec![1_000])]);
        let e = refused(vec![a.clone(), other], false);
        assert!(e.contains("shard-1.json: steps at [1500.0] req/s"), "{e}");
        let e = refused(vec![a, shard(2, 2, &[1], 0, 0)], false);
        assert!(
            e.contains("shard-1.json: a rush report among sweep reports"),
            "{e}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_report_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("gatehouse-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notes.json");
        std::fs::write(&path, "{\"hello\": 1}").unwrap();
        let e = format!("{:#}", read(&path).unwrap_err());
        assert!(
            e.contains("notes.json: not a gatehouse-loadtest report"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
