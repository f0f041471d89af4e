//! What the demo prints: the human summary, or one JSON object with `--json`.

use std::collections::BTreeMap;

use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
}

impl Latency {
    /// The percentiles of a histogram of microseconds.
    pub fn of(hist: &hdrhistogram::Histogram<u64>) -> Latency {
        Latency {
            p50: hist.value_at_quantile(0.5),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        }
    }
}

/// What the demo prints (and `--json` emits).
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Requests answered.
    pub requests: u64,
    /// Answered requests per second of rush.
    pub throughput_rps: f64,
    /// From intended send time to verdict.
    pub latency_us: Latency,
    /// Verdicts by reason label.
    pub verdicts: BTreeMap<String, u64>,
    /// Verdicts that differ from the expected one.
    pub mismatches: u64,
    /// Requests that got no verdict (transport error or timeout).
    pub errors: u64,
    /// Mismatch examples (expected → got), at most 10.
    pub mismatch_examples: Vec<String>,
    /// Holders generated, and how long that took.
    pub holders: usize,
    /// Seconds spent generating the population.
    pub setup_secs: f64,
    /// Engine nodes.
    pub nodes: usize,
    /// Where one-time use was recorded (`memory`, or `redis` shared by the nodes).
    pub store: String,
    /// How the nodes checked signatures.
    pub signatures: SignaturePaths,
    /// The ISO/IEC 18013-5 presentations among the requests (`--mdoc-share`); they are
    /// counted in `requests`, `verdicts`, `latency_us` and `mismatches` too.
    pub mdoc: MdocSummary,
}

/// What the demo says of its mdoc presentations (fresh ones and replays of them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MdocSummary {
    /// `--mdoc-share`: the share of genuine presentations that are mdoc ones.
    pub share: f64,
    /// mdoc presentations answered.
    pub requests: u64,
    /// Their latency from the intended send time.
    pub latency_us: Latency,
    /// Their verdicts by reason label.
    pub verdicts: BTreeMap<String, u64>,
    /// Of them, verdicts other than the expected one (or none at all).
    pub mismatches: u64,
    /// Of them, presentations that got no verdict.
    pub errors: u64,
    /// Documents in the pool of test mDLs.
    pub documents: usize,
    /// Seconds spent issuing the pool.
    pub issue_secs: f64,
}

impl MdocSummary {
    /// The human lines, when the rush had an mdoc share.
    fn render(&self) -> String {
        if self.share <= 0.0 {
            return String::new();
        }
        let mut s = format!(
            "  mdoc            {} presentations (VerifyMdoc, share {}), pool of {} mDLs (issued in {:.1} s)\n",
            self.requests, self.share, self.documents, self.issue_secs
        );
        s.push_str(&format!(
            "    p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms\n",
            self.latency_us.p50 as f64 / 1e3,
            self.latency_us.p99 as f64 / 1e3,
            self.latency_us.p999 as f64 / 1e3,
            self.latency_us.max as f64 / 1e3
        ));
        for (k, v) in &self.verdicts {
            s.push_str(&format!("    {k:<22} {v}\n"));
        }
        s.push_str(&format!("    mismatches           {}\n", self.mismatches));
        s
    }
}

/// The batch path the nodes ran and what went through it (the engines' counters, summed). A
/// failed equation or a signature a multi-buffer call did not prove sends work to the single
/// check: on the demo's traffic only its forged signatures may do that.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SignaturePaths {
    /// `off`, `equation` or `multibuffer` (`[engine] batch`, resolved on this machine).
    pub path: String,
    /// Equations checked, how many failed, and the signatures in them.
    pub equations: u64,
    /// Of the equations, those that failed.
    pub equations_failed: u64,
    /// Signatures in equations.
    pub equation_signatures: u64,
    /// Multi-buffer calls.
    pub multibuffer_calls: u64,
    /// Signatures in multi-buffer calls.
    pub multibuffer_signatures: u64,
    /// Of those, signatures a call did not prove.
    pub multibuffer_unproven: u64,
}

impl DemoReport {
    /// The human summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "gatehouse demo: {} holders (issued in {:.1} s)\n",
            self.holders, self.setup_secs
        ));
        if self.nodes > 1 {
            s.push_str(&format!(
                "  nodes           {} (one-time use shared on {}; each scanner's connections spread over the nodes)\n",
                self.nodes, self.store
            ));
        }
        s.push_str(&format!(
            "  requests        {}\n  throughput      {:.0} req/s\n",
            self.requests, self.throughput_rps
        ));
        s.push_str(&format!(
            "  latency (open-loop, from intended send time)\n    p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms\n",
            self.latency_us.p50 as f64 / 1e3,
            self.latency_us.p99 as f64 / 1e3,
            self.latency_us.p999 as f64 / 1e3,
            self.latency_us.max as f64 / 1e3
        ));
        s.push_str("  verdicts\n");
        for (k, v) in &self.verdicts {
            s.push_str(&format!("    {k:<22} {v}\n"));
        }
        s.push_str(&self.mdoc.render());
        let g = &self.signatures;
        s.push_str(&format!(
            "  signatures      path {}: {} equations ({} failed, {} signatures), {} multi-buffer calls ({} signatures, {} not proven)\n",
            g.path,
            g.equations,
            g.equations_failed,
            g.equation_signatures,
            g.multibuffer_calls,
            g.multibuffer_signatures,
            g.multibuffer_unproven
        ));
        s.push_str(&format!("  mismatches      {}\n", self.mismatches));
        for e in &self.mismatch_examples {
            s.push_str(&format!("    {e}\n"));
        }
        s
    }
}
