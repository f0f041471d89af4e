//! The demo's ISO/IEC 18013-5 share (`--mdoc-share`): a pool of test mDLs issued at start,
//! which requests of the rush are mdoc presentations (and at which scanners), and their own
//! count in the report.
//!
//! Which requests are mdoc presentations is drawn from a generator of its own, seeded per
//! request, so the token schedule (arrivals, holders, kinds) is the same at every share, and
//! the whole schedule is the same on every run with the same options.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gatehouse_engine::core::Scanner;
use gatehouse_engine::dev::mdoc_population::MdocPopulation;
use gatehouse_engine::dev::population::derive_id;
use gatehouse_engine::dev::progress::{Progress, ProgressMode};
use gatehouse_engine::dev::rng::SplitMix64;
use gatehouse_protocol::{MdocRequest, Reason, Verdict};
use hdrhistogram::Histogram;

use super::options::DemoOptions;
use super::report::{Latency, MdocSummary};

/// Most documents in the pool (fewer with fewer holders): a presentation is fresh per scan
/// whatever the pool, the pool only has to be large enough that the nodes' issuer cache sees
/// both misses and hits.
pub const POOL_MAX: usize = 2_000;

/// The pool's seed (the token population's is 1 too).
const POOL_SEED: u64 = 1;

/// The pool of the demo's mDL holders, and how long issuing it took.
pub struct Pool {
    /// The IACA, its document signer and the holders.
    pub population: MdocPopulation,
    /// Seconds spent issuing it.
    pub secs: f64,
}

/// Issues the pool of `min(holders, POOL_MAX)` documents (in parallel, on every core) when
/// `--mdoc-share` is above 0; nothing otherwise.
pub fn pool(opts: &DemoOptions, now: u64) -> Result<Option<Pool>> {
    if opts.mdoc_share <= 0.0 {
        return Ok(None);
    }
    let count = opts.holders.min(POOL_MAX);
    let t0 = Instant::now();
    // The pool is issued in one call (one IACA, one signer): a bar on a terminal, filled at
    // the end; otherwise the start and the end lines of the population's progress.
    let mode = ProgressMode::enabled(opts.progress);
    let bar = mode
        .draws_bar()
        .then(|| Progress::new(mode, "issuing mDLs", count as u64, "documents"));
    if bar.is_none() && mode.is_on() {
        eprintln!("  issuing mDLs: 0/{count} documents");
    }
    let now = i64::try_from(now).context("the clock is past 2262")?;
    let population =
        MdocPopulation::generate(POOL_SEED, count, now).context("issuing the test mDLs")?;
    let secs = t0.elapsed().as_secs_f64();
    match bar {
        Some(b) => {
            b.inc(count as u64);
            b.finish();
        }
        None if mode.is_on() => {
            eprintln!("  issuing mDLs: done, {count}/{count} documents in {secs:.1} s");
        }
        None => {}
    }
    Ok(Some(Pool { population, secs }))
}

/// Which genuine presentations of the rush are mdoc ones, by whom and at which scanner.
pub struct MdocMix {
    /// Share of the genuine presentations that are mdoc presentations.
    share: f64,
    /// Documents in the pool (0: no mdoc presentation at all).
    documents: usize,
    /// The division gates (which admit mDLs).
    gates: Vec<usize>,
    /// The partners' scanners.
    partners: Vec<usize>,
    /// The age checks' scanners.
    ages: Vec<usize>,
    /// All scanners.
    count: usize,
}

impl MdocMix {
    /// The mix of `share` over a pool of `documents`, at the scanners `scanner_ids` names.
    pub fn new(scanner_ids: &[String], share: f64, documents: usize) -> MdocMix {
        let starting = |prefix: &str| super::plan::starting_with(scanner_ids, prefix);
        MdocMix {
            share,
            documents,
            gates: starting("gate"),
            partners: starting("partner"),
            ages: starting("age"),
            count: scanner_ids.len(),
        }
    }

    /// For request `i`, a genuine presentation: whether it is an mdoc presentation, and if so
    /// its holder in the pool and its scanner. The kinds of scanners are the tokens' (six in
    /// ten a division gate, three a partner, one an age check); any scanner where there is
    /// none of the kind.
    pub fn pick(&self, i: usize) -> Option<(usize, usize)> {
        if self.documents == 0 || self.share <= 0.0 {
            return None;
        }
        let mut rng = SplitMix64(0x6d64_6f63_0000_0000 ^ (i as u64).wrapping_mul(0x9e37_79b9));
        if rng.unit() >= self.share {
            return None;
        }
        let holder = rng.below(self.documents as u64) as usize;
        let kind = match rng.below(10) {
            0..=5 => &self.gates,
            6..=8 => &self.partners,
            _ => &self.ages,
        };
        let any = rng.below(self.count as u64) as usize;
        let scanner = kind
            .get(rng.below(kind.len() as u64) as usize)
            .copied()
            .unwrap_or(any);
        Some((holder, scanner))
    }
}

/// Request `i`'s presentation by pool holder `holder`, its reader session begun at `now`
/// (derived from `i`: the same schedule, the same sessions), and the verdict `scanner` should
/// give it.
pub fn present(
    pool: &MdocPopulation,
    holder: usize,
    i: usize,
    scanner: &Scanner,
    now: u64,
    utc_offset: i32,
) -> (MdocRequest, Verdict) {
    let request = pool.present(holder, &derive_id("demo mdoc session", i as u64), now);
    (request, pool.expected(holder, scanner, now, utc_offset))
}

/// The rush's count of its mdoc presentations (a replay of one included).
pub struct MdocTally {
    /// Latency from the intended send time, microseconds.
    hist: Histogram<u64>,
    /// Verdicts by reason label.
    verdicts: BTreeMap<String, u64>,
    /// Presentations answered.
    requests: u64,
    /// Verdicts other than the expected one.
    mismatches: u64,
    /// Presentations without a verdict.
    errors: u64,
}

impl MdocTally {
    /// Nothing counted yet.
    pub fn new() -> Result<MdocTally> {
        Ok(MdocTally {
            hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
            verdicts: BTreeMap::new(),
            requests: 0,
            mismatches: 0,
            errors: 0,
        })
    }

    /// Counts one answered presentation: its verdict's reason, its latency, and whether it
    /// was the expected verdict.
    pub fn answered(&mut self, reason: Reason, latency: Duration, matched: bool) {
        self.requests += 1;
        let _ = self.hist.record((latency.as_micros() as u64).max(1));
        *self.verdicts.entry(reason.label().to_string()).or_default() += 1;
        if !matched {
            self.mismatches += 1;
        }
    }

    /// Counts one presentation that got no verdict.
    pub fn failed(&mut self) {
        self.errors += 1;
    }

    /// What the report says of the mdoc presentations (the pool's size and issuing time are
    /// the caller's).
    pub fn summary(self, share: f64) -> MdocSummary {
        MdocSummary {
            share,
            requests: self.requests,
            latency_us: Latency::of(&self.hist),
            verdicts: self.verdicts,
            mismatches: self.mismatches + self.errors,
            errors: self.errors,
            documents: 0,
            issue_secs: 0.0,
        }
    }
}
