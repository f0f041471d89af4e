//! The harness's offline HTML report: the same [`Report`] the JSON summary serialises, as one
//! self-contained page an SRE can open anywhere, attach to a ticket or archive with CI logs.
//!
//! Charts are drawn with `plotters` to SVG and inlined; the style sheet is inline too. The page
//! loads nothing: no script, no external style sheet, no web font, no image from a URL (the
//! SVG namespace attribute, which names a URL without loading it, is dropped: HTML5 does not
//! need it for inline SVG). It shows, as far as the report has them:
//! - the run's latency over time (p50 and p99 per second) and its rate over time (planned,
//!   sent, answered, errors per second);
//! - percentiles per phase (ramp up, peak, ramp down) and per scenario;
//! - each capacity-sweep step's percentiles against the offered rate, held and broken steps
//!   told apart and the knee marked;
//! - verdict counts, received against expected;
//! - the budget checks and the comparison with a baseline.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::Report;
use crate::summary::{per_answer, Latency, RunSummary, Second, SweepStep, SweepSummary};

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 360;
const FONT: &str = "sans-serif";

/// Series colours (colour-blind-safe palette).
const COLOURS: [RGBColor; 5] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
];
const HELD: RGBColor = RGBColor(0, 158, 115);
const BROKE: RGBColor = RGBColor(213, 0, 0);
const KNEE: RGBColor = RGBColor(230, 159, 0);

/// Renders `report` as one self-contained HTML page.
pub fn render(report: &Report) -> Result<String> {
    let mut out = String::new();
    let title = format!(
        "gatehouse-loadtest {} — {}",
        report.mode,
        if report.passed { "PASS" } else { "FAIL" }
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    overview(&mut out, report);
    if let Some(run) = &report.run {
        run_section(&mut out, run)?;
    }
    if let Some(sweep) = &report.sweep {
        sweep_section(&mut out, sweep)?;
    }
    if let Some(g) = &report.goose {
        out.push_str("<h2>Closed loop (goose)</h2>\n");
        let _ = writeln!(
            out,
            "<p>Test plan {}: {} requests, {} errors, {} mismatches. Latency from send to \
             answer (a terminal waits for its answer).</p>",
            esc(&g.test_plan),
            g.requests,
            g.errors,
            g.mismatches
        );
        latency_table(&mut out, &[("all".to_string(), g.latency_us)]);
        verdict_table(&mut out, &g.verdicts, &BTreeMap::new());
        list(&mut out, "Thresholds", &g.thresholds);
        list(&mut out, "Examples", &g.examples);
    }
    budget_section(&mut out, report);
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1040px}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:right;font-size:13px}th{background:#f0f0f0}td.l,th.l{text-align:left}\
.pass{color:#007a4d;font-weight:bold}.fail{color:#c00000;font-weight:bold}\
.bar{display:inline-block;height:10px;background:#0072b2}.bar.e{background:#bbb}\
figure{margin:12px 0}code{font-size:12px}";

fn overview(out: &mut String, r: &Report) {
    out.push_str("<table>\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(
            out,
            "<tr><th class=\"l\">{k}</th><td class=\"l\">{v}</td></tr>"
        );
    };
    row(
        "result",
        if r.passed {
            "<span class=\"pass\">PASS</span>".into()
        } else {
            "<span class=\"fail\">FAIL</span> (see the budget checks)".into()
        },
    );
    row(
        "engine",
        format!(
            "{}{}, {} scanner connections",
            esc(&r.target.address),
            if r.target.spawned {
                format!(
                    " (spawned here, sharing {} cores with the harness)",
                    r.cores
                )
            } else {
                String::new()
            },
            r.target.connections
        ),
    );
    row(
        "population",
        format!(
            "{} holders ({} valid, {} revoked, {} expired), seed {}, {} in {:.1} s",
            r.population.holders,
            r.population.valid,
            r.population.revoked,
            r.population.expired,
            r.population.seed,
            esc(&r.population.origin),
            r.population.secs
        ),
    );
    row("model", esc(&r.model.explanation));
    if r.run.is_some() {
        row(
            "plan",
            format!(
                "ramp up {:.0} s, peak {:.0} s at {:.0} req/s, ramp down {:.0} s",
                r.model.plan_ramp_up_secs,
                r.model.plan_peak_secs,
                r.model.plan_peak_rps,
                r.model.plan_ramp_down_secs
            ),
        );
    }
    row(
        "harness",
        format!(
            "{} {}, started at Unix {}",
            esc(&r.tool),
            esc(&r.version),
            r.started_unix
        ),
    );
    row("command", format!("<code>{}</code>", esc(&r.command)));
    out.push_str("</table>\n");
}

/// The open-loop run: its counts, its charts over time, percentiles, verdicts, nodes and
/// examples.
fn run_section(out: &mut String, r: &RunSummary) -> Result<()> {
    out.push_str("<h2>Open-loop run</h2>\n");
    let _ = writeln!(
        out,
        "<p>{} planned, {} answered, {} errors, {} replays skipped, {} too old to replay \
         (error rate {:.4}%); {:.0} req/s over {:.1} s; {} mismatches. Latency is measured \
         from each request's intended send time.</p>",
        r.planned,
        r.answered,
        r.errors,
        r.skipped,
        r.dropped,
        r.error_rate * 100.0,
        r.throughput_rps,
        r.elapsed_secs,
        r.mismatches
    );
    if !r.timeline.is_empty() {
        timeline_charts(out, &r.timeline)?;
    }
    percentile_sections(out, r)?;
    out.push_str("<h3>Harness send lag</h3>\n");
    latency_table(out, &[("send lag".to_string(), r.send_lag_us)]);
    out.push_str("<h3>Verdicts</h3>\n");
    verdict_table(out, &r.verdicts, &r.expected);
    if r.nodes.len() > 1 {
        node_table(out, r);
    }
    list(out, "Mismatches and errors (examples)", &{
        let mut v = r.mismatch_examples.clone();
        v.extend(r.error_examples.iter().cloned());
        v
    });
    Ok(())
}

/// Two charts per second of the plan: latency (p50, p99 of the seconds with answers) and
/// rate (planned, sent, answered, errors).
fn timeline_charts(out: &mut String, timeline: &[Second]) -> Result<()> {
    let ms = |v: u64| v as f64 / 1e3;
    let answered: Vec<&Second> = timeline.iter().filter(|s| s.answered > 0).collect();
    let latency = |f: fn(&Second) -> u64| -> Vec<(f64, f64)> {
        answered.iter().map(|s| (s.t as f64, ms(f(s)))).collect()
    };
    figure(
        out,
        &line_chart(
            "Latency over time (per second of the plan)",
            "second",
            "ms",
            &[
                ("p50", latency(|s| s.p50_us)),
                ("p99", latency(|s| s.p99_us)),
            ],
            &[],
            None,
        )?,
    );
    let rate = |f: fn(&Second) -> f64| -> Vec<(f64, f64)> {
        timeline.iter().map(|s| (s.t as f64, f(s))).collect()
    };
    figure(
        out,
        &line_chart(
            "Rate over time",
            "second",
            "requests per second",
            &[
                ("planned", rate(|s| s.planned_rps)),
                ("sent", rate(|s| s.sent as f64)),
                ("answered", rate(|s| s.answered as f64)),
                ("errors", rate(|s| s.errors as f64)),
            ],
            &[],
            None,
        )?,
    );
    Ok(())
}

/// Percentiles per phase (chart and table, with the whole run) and per scenario.
fn percentile_sections(out: &mut String, r: &RunSummary) -> Result<()> {
    out.push_str("<h3>Percentiles per phase</h3>\n");
    let phases = ordered_phases(&r.phases);
    if !phases.is_empty() {
        figure(out, &percentile_bars("Latency per phase", &phases)?);
    }
    let mut rows = vec![("all".to_string(), r.latency_us)];
    rows.extend(phases.iter().cloned());
    latency_table(out, &rows);
    if !r.scenarios.is_empty() {
        out.push_str("<h3>Percentiles per scenario</h3>\n");
        let scenarios: Vec<(String, Latency)> =
            r.scenarios.iter().map(|(k, v)| (k.clone(), *v)).collect();
        figure(out, &percentile_bars("Latency per scenario", &scenarios)?);
        latency_table(out, &scenarios);
    }
    Ok(())
}

/// Several nodes: per node and in total, and the replays sent across nodes.
fn node_table(out: &mut String, r: &RunSummary) {
    let _ = writeln!(
        out,
        "<h3>Per node (scanner i sends to node i % {})</h3>",
        r.nodes.len()
    );
    out.push_str(
        "<table>\n<tr><th class=\"l\">node</th><th>requests</th><th>answered</th>\
         <th>errors</th><th>mismatches</th><th>accepted</th><th>replayed</th>\
         <th>p50 ms</th><th>p99 ms</th><th>CPU s</th><th>CPU µs per answer</th>\
         <th>switches per answer</th></tr>\n",
    );
    let ms = |us: u64| format!("{:.2}", us as f64 / 1e3);
    let cpu = |s: Option<f64>| s.map_or("–".to_string(), |s| format!("{s:.1}"));
    let per = |total: Option<f64>, answered: u64| cpu(per_answer(total, answered));
    let count = |v: &BTreeMap<String, u64>, k: &str| v.get(k).copied().unwrap_or(0);
    for n in &r.nodes {
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>–</td></tr>",
            n.node,
            esc(&n.address),
            n.requests,
            n.answered,
            n.errors,
            n.mismatches,
            count(&n.verdicts, "accepted"),
            count(&n.verdicts, "replayed"),
            ms(n.latency_us.p50_us),
            ms(n.latency_us.p99_us),
            cpu(n.cpu_secs),
            per(n.cpu_secs.map(|s| s * 1e6), n.answered)
        );
    }
    let _ = writeln!(
        out,
        "<tr><td class=\"l\">total</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n</table>",
        r.nodes.iter().map(|n| n.requests).sum::<u64>(),
        r.answered,
        r.errors,
        r.mismatches,
        count(&r.verdicts, "accepted"),
        count(&r.verdicts, "replayed"),
        ms(r.latency_us.p50_us),
        ms(r.latency_us.p99_us),
        cpu(r.cpu.engine_secs),
        per(r.cpu.engine_secs.map(|s| s * 1e6), r.answered),
        per(r.cpu.engine_context_switches.map(|n| n as f64), r.answered)
    );
    if let Some(c) = &r.cross_node_replays {
        let _ = writeln!(
            out,
            "<p>Cross-node replays: {} answered; {} of the {} whose original reached \
             one-time use came back <code>replayed</code>.</p>",
            c.judged, c.replayed, c.expected_replayed
        );
    }
}

/// The phases in plan order (the map is alphabetical).
fn ordered_phases(phases: &BTreeMap<String, Latency>) -> Vec<(String, Latency)> {
    let order = ["ramp_up", "peak", "ramp_down"];
    let mut v: Vec<(String, Latency)> = order
        .iter()
        .filter_map(|k| phases.get(*k).map(|l| (k.to_string(), *l)))
        .collect();
    v.extend(
        phases
            .iter()
            .filter(|(k, _)| !order.contains(&k.as_str()))
            .map(|(k, l)| (k.clone(), *l)),
    );
    v
}

/// The capacity sweep: the knee, each step's percentiles against its rate, the step table
/// and the verdicts of all steps.
fn sweep_section(out: &mut String, s: &SweepSummary) -> Result<()> {
    out.push_str("<h2>Capacity sweep</h2>\n");
    let _ = writeln!(
        out,
        "<p>Knee <b>{:.0} req/s</b> = {:.1} × the modelled peak of {:.0} req/s; first failure {}; \
         {} steps of {:.0} s ({}).{}</p>",
        s.knee_rps,
        s.headroom,
        s.modelled_peak_rps,
        s.first_failure_rps
            .map_or("none".to_string(), |r| format!("{r:.0} req/s")),
        s.steps.len(),
        s.step_secs,
        esc(&s.stopped),
        if s.harness_limited {
            " The harness lagged past the knee: the engine may carry more."
        } else {
            ""
        }
    );
    let mut steps: Vec<&SweepStep> = s.steps.iter().collect();
    steps.sort_by(|a, b| a.rate_rps.total_cmp(&b.rate_rps));
    let ms = |v: u64| v as f64 / 1e3;
    let line = |f: fn(&Latency) -> u64| -> Vec<(f64, f64)> {
        steps
            .iter()
            .map(|st| (st.rate_rps, ms(f(&st.run.latency_us))))
            .collect()
    };
    let marks: Vec<(f64, f64, bool)> = steps
        .iter()
        .map(|st| (st.rate_rps, ms(st.run.latency_us.p99_us), st.passed))
        .collect();
    if !steps.is_empty() {
        figure(
            out,
            &line_chart(
                "Latency per sweep step (dots on p99: green held the budget, red broke it)",
                "offered rate, requests per second",
                "ms",
                &[
                    ("p50", line(|l| l.p50_us)),
                    ("p99", line(|l| l.p99_us)),
                    ("p99.9", line(|l| l.p999_us)),
                ],
                &marks,
                (s.knee_rps > 0.0).then_some(s.knee_rps),
            )?,
        );
    }
    step_table(out, s);
    let mut verdicts = BTreeMap::<String, u64>::new();
    let mut expected = BTreeMap::<String, u64>::new();
    for st in &s.steps {
        for (k, v) in &st.run.verdicts {
            *verdicts.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &st.run.expected {
            *expected.entry(k.clone()).or_default() += v;
        }
    }
    out.push_str("<h3>Verdicts, all steps</h3>\n");
    verdict_table(out, &verdicts, &expected);
    Ok(())
}

/// One row per sweep step: the offered rate (the knee marked), held or broke, percentiles,
/// errors, send lag and the checks that failed.
fn step_table(out: &mut String, s: &SweepSummary) {
    let ms = |v: u64| v as f64 / 1e3;
    out.push_str(
        "<table>\n<tr><th>offered req/s</th><th class=\"l\">budget</th><th>answered</th>\
         <th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th>\
         <th>errors</th><th>mismatches</th><th>send lag p99 ms</th><th class=\"l\">failed checks</th></tr>\n",
    );
    for st in &s.steps {
        let l = &st.run.latency_us;
        let _ = writeln!(
            out,
            "<tr><td>{:.0}{}</td><td class=\"l\">{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td>\
             <td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{:.2}</td>\
             <td class=\"l\">{}</td></tr>",
            st.rate_rps,
            if (st.rate_rps - s.knee_rps).abs() < 1e-9 && s.knee_rps > 0.0 {
                " (knee)"
            } else {
                ""
            },
            if st.passed {
                "<span class=\"pass\">held</span>"
            } else {
                "<span class=\"fail\">broke</span>"
            },
            st.run.answered,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            st.run.errors,
            st.run.mismatches,
            ms(st.run.send_lag_us.p99_us),
            esc(&st.failed_checks.join("; "))
        );
    }
    out.push_str("</table>\n");
}

fn budget_section(out: &mut String, r: &Report) {
    if let Some(b) = &r.budget {
        let _ = writeln!(out, "<h2>Budget {}</h2>", esc(&b.file));
        out.push_str(
            "<table>\n<tr><th class=\"l\">check</th><th class=\"l\">result</th>\
             <th class=\"l\">observed</th><th class=\"l\">limit</th></tr>\n",
        );
        for c in &b.checks {
            let _ = writeln!(
                out,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
                 <td class=\"l\">{}</td></tr>",
                esc(&c.name),
                if c.passed {
                    "<span class=\"pass\">ok</span>"
                } else {
                    "<span class=\"fail\">MISS</span>"
                },
                esc(&c.observed),
                esc(&c.limit)
            );
        }
        out.push_str("</table>\n");
    }
    if !r.baseline.is_empty() {
        out.push_str(
            "<h2>Against the baseline</h2>\n<table>\n<tr><th class=\"l\">metric</th>\
             <th>before</th><th>now</th><th>change</th></tr>\n",
        );
        for d in &r.baseline {
            let _ = writeln!(
                out,
                "<tr><td class=\"l\">{}</td><td>{:.1}</td><td>{:.1}</td><td>{}{:+.1}%</td></tr>",
                esc(&d.metric),
                d.before,
                d.now,
                if d.worse && d.change_pct.abs() > 0.05 {
                    "worse "
                } else {
                    ""
                },
                d.change_pct
            );
        }
        out.push_str("</table>\n");
    }
}

fn latency_table(out: &mut String, rows: &[(String, Latency)]) {
    out.push_str(
        "<table>\n<tr><th class=\"l\"></th><th>count</th><th>mean ms</th><th>p50 ms</th>\
         <th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th></tr>\n",
    );
    for (name, l) in rows {
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td>\
             <td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            esc(name),
            l.count,
            l.mean_us / 1e3,
            l.p50_us as f64 / 1e3,
            l.p90_us as f64 / 1e3,
            l.p99_us as f64 / 1e3,
            l.p999_us as f64 / 1e3,
            l.max_us as f64 / 1e3
        );
    }
    out.push_str("</table>\n");
}

/// Received against expected, with a bar each (CSS, scaled to the largest count).
fn verdict_table(out: &mut String, got: &BTreeMap<String, u64>, expected: &BTreeMap<String, u64>) {
    let mut keys: Vec<&String> = got.keys().chain(expected.keys()).collect();
    keys.sort();
    keys.dedup();
    let max = got
        .values()
        .chain(expected.values())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let has_expected = !expected.is_empty();
    out.push_str("<table>\n<tr><th class=\"l\">verdict</th><th>received</th>");
    if has_expected {
        out.push_str("<th>expected</th>");
    }
    out.push_str("<th class=\"l\"></th></tr>\n");
    for k in keys {
        let g = got.get(k).copied().unwrap_or(0);
        let e = expected.get(k).copied().unwrap_or(0);
        let px = |n: u64| (n as f64 / max as f64 * 300.0).round() as u64;
        let _ = write!(out, "<tr><td class=\"l\">{}</td><td>{g}</td>", esc(k));
        if has_expected {
            let _ = write!(out, "<td>{e}</td>");
        }
        let _ = write!(
            out,
            "<td class=\"l\"><span class=\"bar\" style=\"width:{}px\"></span>",
            px(g)
        );
        if has_expected {
            let _ = write!(
                out,
                "<br><span class=\"bar e\" style=\"width:{}px\"></span>",
                px(e)
            );
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</table>\n");
}

fn list(out: &mut String, title: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "<h3>{}</h3>\n<ul>", esc(title));
    for i in items {
        let _ = writeln!(out, "<li><code>{}</code></li>", esc(i));
    }
    out.push_str("</ul>\n");
}

fn figure(out: &mut String, svg: &str) {
    out.push_str("<figure>\n");
    out.push_str(svg);
    out.push_str("</figure>\n");
}

/// Escapes text for HTML (element content and quoted attributes).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The SVG as inline markup: without the XML namespace attribute (a URL, though one never
/// loaded), which inline SVG in HTML does not need.
fn inline(svg: String) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

fn draw_err<E: std::error::Error>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

/// The series legend, the same on every chart: upper left, on a light panel.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(draw_err)
}

/// The upper end of a value axis: a little above the largest value, never empty.
fn top(max: f64) -> f64 {
    if max.is_finite() && max > 0.0 {
        max * 1.1
    } else {
        1.0
    }
}

/// A line chart of `series` (name, points), with optional marks (x, y, held) drawn as dots and
/// an optional knee drawn as a vertical line.
fn line_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    marks: &[(f64, f64, bool)],
    knee: Option<f64>,
) -> Result<String> {
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let (x0, x1) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| {
        (a.min(*x), b.max(*x))
    });
    let (x0, x1) = if x0.is_finite() && x1 > x0 {
        let pad = (x1 - x0) * 0.03;
        ((x0 - pad).max(0.0), x1 + pad)
    } else if x0.is_finite() {
        ((x0 - 1.0).max(0.0), x0 + 1.0)
    } else {
        (0.0, 1.0)
    };
    let y1 = top(points().map(|(_, y)| *y).fold(0.0, f64::max));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, 0.0..y1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style((FONT, 13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(draw_err)?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                .map_err(draw_err)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        if !marks.is_empty() {
            chart
                .draw_series(marks.iter().map(|(x, y, held)| {
                    Circle::new((*x, *y), 5, if *held { HELD } else { BROKE }.filled())
                }))
                .map_err(draw_err)?;
        }
        if let Some(k) = knee {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(k, 0.0), (k, y1)],
                    KNEE.stroke_width(3),
                )))
                .map_err(draw_err)?
                .label(format!("knee {k:.0} req/s"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], KNEE.stroke_width(3)));
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("knee {k:.0} req/s"),
                    (k, y1 * 0.97),
                    (FONT, 14).into_font().color(&BLACK),
                )))
                .map_err(draw_err)?;
        }
        legend(&mut chart)?;
        root.present().map_err(draw_err)?;
    }
    Ok(inline(svg))
}

/// Grouped bars: for each group (a phase, a scenario), its p50, p90, p99 and p99.9, in ms.
fn percentile_bars(title: &str, groups: &[(String, Latency)]) -> Result<String> {
    let names = ["p50", "p90", "p99", "p99.9"];
    let values = |l: &Latency| [l.p50_us, l.p90_us, l.p99_us, l.p999_us].map(|v| v as f64 / 1e3);
    let y1 = top(groups
        .iter()
        .flat_map(|(_, l)| values(l))
        .fold(0.0, f64::max));
    let n = groups.len().max(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n, 0.0..y1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("ms")
            .label_style((FONT, 13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(draw_err)?;
        let width = 0.8 / names.len() as f64;
        for (k, name) in names.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            chart
                .draw_series(groups.iter().enumerate().map(|(g, (_, l))| {
                    let x = g as f64 + 0.1 + k as f64 * width;
                    Rectangle::new([(x, 0.0), (x + width * 0.9, values(l)[k])], colour.filled())
                }))
                .map_err(draw_err)?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                });
        }
        // Group names under the axis, centred on their group.
        for (g, (name, _)) in groups.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                name.clone(),
                (px - (name.len() as i32 * 7) / 2, py + 8),
                (FONT, 14).into_font().color(&BLACK),
            ))
            .map_err(draw_err)?;
        }
        legend(&mut chart)?;
        root.present().map_err(draw_err)?;
    }
    Ok(inline(svg))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::budget::{BudgetResult, Check};
    use crate::summary::{Cpu, CrossNodeReplays, NodeSummary};

    fn lat(count: u64, p50: u64, p99: u64) -> Latency {
        Latency {
            count,
            mean_us: p50 as f64 * 1.1,
            p50_us: p50,
            p90_us: (p50 + p99) / 2,
            p99_us: p99,
            p999_us: p99 * 2,
            max_us: p99 * 3,
        }
    }

    fn run(answered: u64, p50: u64, p99: u64) -> RunSummary {
        let map = |v: &[(&str, u64)]| v.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        RunSummary {
            planned: answered + 10,
            answered,
            errors: 3,
            skipped: 1,
            dropped: 0,
            error_rate: 0.001,
            mismatches: 2,
            throughput_rps: 432.1,
            elapsed_secs: 10.0,
            prefill_secs: 0.5,
            latency_us: lat(answered, p50, p99),
            phases: [
                ("peak".to_string(), lat(3000, p50, 12_340)),
                ("ramp_down".to_string(), lat(600, p50, p99)),
                ("ramp_up".to_string(), lat(721, p50, p99)),
            ]
            .into_iter()
            .collect(),
            scenarios: [
                ("gate".to_string(), lat(3000, p50, p99)),
                ("partner".to_string(), lat(1321, p50, p99)),
            ]
            .into_iter()
            .collect(),
            send_lag_us: lat(answered, 50, 400),
            verdicts: map(&[("accept", 4000), ("revoked", 117), ("replayed", 204)]),
            expected: map(&[("accept", 4001), ("revoked", 118), ("replayed", 202)]),
            mismatch_examples: vec!["request 7: expected revoked, got accept".into()],
            error_examples: vec!["request 9: timed out".into()],
            cpu: Cpu {
                harness_secs: Some(4.0),
                engine_secs: Some(6.0),
                redis_secs: None,
                engine_context_switches: Some(30_000),
                wall_secs: 10.5,
                engine_shared: false,
            },
            nodes: Vec::new(),
            cross_node_replays: None,
            mdoc: None,
            revocation_states: Vec::new(),
            plan_fingerprint: None,
            run_salt: None,
            shard: None,
            histograms: None,
            start: None,
            clock_suspect: 0,
            timeline: (0..10)
                .map(|t| Second {
                    t,
                    planned_rps: 100.0 * t as f64,
                    sent: 100 * t,
                    answered: 100 * t,
                    errors: u64::from(t == 5),
                    mismatches: 0,
                    p50_us: 900 + 10 * t,
                    p99_us: 5000 + 500 * t,
                })
                .collect(),
        }
    }

    fn base(mode: &str) -> Report {
        crate::report::sample(mode)
    }

    /// A fixed rush report and a fixed sweep report (the figures are recognisable).
    fn sample_reports() -> (Report, Report) {
        let mut rush = base("rush");
        rush.run = Some(run(4321, 1_000, 8_000));
        rush.budget = Some(BudgetResult::new(
            "budgets/default.toml",
            vec![
                Check {
                    name: "p99 at the peak".into(),
                    limit: "≤ 10 ms".into(),
                    observed: "12.34 ms".into(),
                    passed: false,
                },
                Check {
                    name: "mismatches".into(),
                    limit: "≤ 0".into(),
                    observed: "2".into(),
                    passed: false,
                },
            ],
        ));
        let mut sweep = base("sweep");
        let step = |rate: f64, p99: u64, passed: bool| SweepStep {
            rate_rps: rate,
            passed,
            failed_checks: if passed {
                Vec::new()
            } else {
                vec![format!("p99 {:.2} ms (limit ≤ 20 ms)", p99 as f64 / 1e3)]
            },
            run: RunSummary {
                timeline: Vec::new(),
                ..run((rate * 8.0) as u64, 1_200, p99)
            },
        };
        sweep.sweep = Some(SweepSummary {
            step_secs: 8.0,
            steps: vec![
                step(500.0, 6_000, true),
                step(1125.0, 45_600, false),
                step(750.0, 9_000, true),
            ],
            knee_rps: 750.0,
            first_failure_rps: Some(1125.0),
            stopped: "refined between 750 and 1125 req/s".into(),
            modelled_peak_rps: 500.0,
            headroom: 1.5,
            harness_limited: false,
            fixed_rates: false,
        });
        sweep.passed = true;
        (rush, sweep)
    }

    #[test]
    fn a_rush_report_has_its_charts_and_figures_and_loads_nothing() {
        let (rush, _) = sample_reports();
        let html = render(&rush).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        // Latency and rate over time, per phase, per scenario.
        assert_eq!(html.matches("<svg").count(), 4, "{html}");
        assert!(html.contains("Latency over time"));
        assert!(html.contains("Latency per phase"));
        // The run's own figures: peak p99 12.34 ms, answered count, verdict counts.
        assert!(html.contains("12.34"));
        assert!(html.contains("4321 answered"));
        assert!(html.contains("<td class=\"l\">revoked</td><td>117</td><td>118</td>"));
        assert!(html.contains("ramp_up") && html.contains("ramp_down"));
        // The budget's checks.
        assert!(html.contains("MISS") && html.contains("p99 at the peak"));
        assert_offline(&html);
    }

    #[test]
    fn a_sweep_report_marks_the_knee_and_tells_held_from_broken_steps() {
        let (_, sweep) = sample_reports();
        let html = render(&sweep).unwrap();
        assert_eq!(html.matches("<svg").count(), 1);
        assert!(html.contains("Latency per sweep step"));
        assert!(html.contains("knee 750 req/s"), "the knee is drawn");
        assert!(html.contains("750 (knee)"), "and marked in the table");
        assert_eq!(html.matches("<span class=\"fail\">broke</span>").count(), 1);
        assert_eq!(html.matches("<span class=\"pass\">held</span>").count(), 2);
        // The broken step's failed check and its p99.
        assert!(html.contains("p99 45.60 ms (limit ≤ 20 ms)"));
        assert!(html.contains("<td>45.60</td>"));
        assert_offline(&html);
    }

    #[test]
    fn a_fleet_run_has_a_row_per_node_a_total_and_its_cross_node_replays() {
        let (mut rush, _) = sample_reports();
        let one = render(&rush).unwrap();
        assert!(!one.contains("Per node"), "one node: no node table");
        let run = rush.run.as_mut().unwrap();
        let node = |i: usize, requests: u64, replayed: u64| NodeSummary {
            node: i,
            address: format!("127.0.0.1:{}", 4433 + i),
            requests,
            answered: requests,
            verdicts: [
                ("accepted".to_string(), requests - replayed),
                ("replayed".to_string(), replayed),
            ]
            .into_iter()
            .collect(),
            latency_us: lat(requests, 800, 2_500 + 1_000 * i as u64),
            cpu_secs: Some(2.5 + i as f64),
            ..Default::default()
        };
        run.nodes = vec![node(0, 2_111, 97), node(1, 2_210, 107)];
        run.cross_node_replays = Some(CrossNodeReplays {
            judged: 210,
            expected_replayed: 204,
            replayed: 204,
        });
        let html = render(&rush).unwrap();
        assert!(html.contains("Per node (scanner i sends to node i % 2)"));
        assert!(html.contains("<td class=\"l\">0 127.0.0.1:4433</td><td>2111</td>"));
        assert!(html.contains("<td class=\"l\">1 127.0.0.1:4434</td><td>2210</td>"));
        // The second node's p99, CPU and CPU per answer (3.5 s over 2,210); the total row
        // sums the requests and gives the engine's CPU and switches per answer (6.0 s and
        // 30,000 over 4,321).
        assert!(html.contains("<td>3.50</td><td>3.5</td><td>1583.7</td><td>–</td>"));
        assert!(html.contains("<td class=\"l\">total</td><td>4321</td>"));
        assert!(html.contains("<td>6.0</td><td>1388.6</td><td>6.9</td></tr>"));
        assert!(html.contains("204 of the 204 whose original reached"));
        assert_offline(&html);
    }

    #[test]
    fn text_from_the_report_is_escaped() {
        let (mut rush, _) = sample_reports();
        rush.command = "gatehouse-loadtest rush <script>alert(1)</script>".into();
        let html = render(&rush).unwrap();
        assert!(!html.contains("<script"));
        assert!(html.contains("&lt;script&gt;"));
    }

    #[test]
    fn an_empty_run_still_renders() {
        let (mut rush, _) = sample_reports();
        if let Some(r) = rush.run.as_mut() {
            r.timeline.clear();
            r.phases.clear();
            r.scenarios.clear();
            r.verdicts.clear();
            r.expected.clear();
        }
        let html = render(&rush).unwrap();
        assert_eq!(html.matches("<svg").count(), 0);
        assert!(html.contains("Open-loop run"));
        assert_offline(&html);
    }

    /// Nothing the page would fetch: no script, no style sheet or font link, no URL at all.
    fn assert_offline(html: &str) {
        let lower = html.to_ascii_lowercase();
        for bad in [
            "http://",
            "https://",
            "<script",
            "<link",
            "src=",
            "href=",
            "url(",
            "@import",
            "@font-face",
        ] {
            assert!(!lower.contains(bad), "the report contains {bad:?}");
        }
    }
}
