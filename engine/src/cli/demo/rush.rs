//! The rush itself: the planned requests sent open-loop at their intended times, each
//! latency measured from that time (no coordinated omission), each verdict compared with the
//! expected one. mdoc presentations are counted with the rest, and on their own too.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gatehouse_engine::dev::progress::{Progress, ProgressMode};
use gatehouse_protocol::Verdict;
use hdrhistogram::Histogram;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;

use super::mdoc::MdocTally;
use super::options::DemoOptions;
use super::plan::{Payload, Planned};
use super::report::{DemoReport, Latency};

/// What sends a token or an mdoc presentation and returns the verdict (the QUIC client in the
/// demo).
pub trait Transport: Send + Sync + 'static {
    /// Sends `payload` on scanner connection `scanner` (Verify, or VerifyMdoc).
    fn verify(
        &self,
        scanner: usize,
        payload: Payload,
    ) -> Pin<Box<dyn Future<Output = Result<Verdict>> + Send + '_>>;
}

/// What one request came to: its index, the verdict (or why there is none), and its latency
/// from the intended send time.
type Outcome = (usize, Result<Verdict>, Duration);

/// Runs the planned requests open-loop through `transport` and returns the report.
pub async fn rush(
    transport: Arc<dyn Transport>,
    planned: Vec<Planned>,
    opts: &DemoOptions,
) -> Result<DemoReport> {
    let total = planned.len();
    let rush = Arc::new(Rush {
        transport,
        start: Instant::now() + Duration::from_millis(50),
        answered: Answered::new(total),
        progress: Progress::new(
            ProgressMode::enabled(opts.progress),
            "rush",
            total as u64,
            "requests",
        ),
        planned,
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    for i in 0..total {
        tokio::time::sleep_until((rush.start + rush.planned[i].at).into()).await;
        tokio::spawn(rush.clone().send(i, tx.clone()));
    }
    drop(tx);
    let mut tally = Tally::new()?;
    let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds + 30.0);
    while let Ok(Some((i, r, latency))) = tokio::time::timeout_at(deadline.into(), rx.recv()).await
    {
        tally.record(i, r, latency, &rush.planned[i]);
    }
    let elapsed = rush.start.elapsed().as_secs_f64().max(opts.seconds);
    rush.progress.finish();
    Ok(tally.report(elapsed, opts.mdoc_share))
}

/// What the requests of a rush share.
struct Rush {
    /// Where the tokens go.
    transport: Arc<dyn Transport>,
    /// The schedule.
    planned: Vec<Planned>,
    /// The instant the schedule's offsets count from.
    start: Instant,
    /// Which requests have been answered.
    answered: Answered,
    /// Requests answered, on stderr.
    progress: Progress,
}

impl Rush {
    /// Sends request `i` (a replay once its original is answered) and reports its outcome.
    async fn send(self: Arc<Self>, i: usize, tx: UnboundedSender<Outcome>) {
        let p = &self.planned[i];
        if let Some(j) = p.after {
            // A replay is only a replay once the original was answered.
            self.answered.wait(j).await;
        }
        let intended = self.start + p.at;
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            self.transport.verify(p.scanner, p.payload.clone()),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
        let latency = intended.elapsed();
        self.answered.mark(i);
        self.progress.inc(1);
        let _ = tx.send((i, r, latency));
    }
}

/// Per request: whether it has been answered, and a wake-up for the replays that wait on it.
struct Answered {
    /// Set once the request is answered.
    flags: Vec<AtomicBool>,
    /// Notified when the request is answered.
    notify: Vec<Notify>,
}

impl Answered {
    /// `total` requests, none answered.
    fn new(total: usize) -> Answered {
        Answered {
            flags: (0..total).map(|_| AtomicBool::new(false)).collect(),
            notify: (0..total).map(|_| Notify::new()).collect(),
        }
    }

    /// Waits until request `j` is answered (looking again every 100 ms, in case the wake-up
    /// came between the look and the wait).
    async fn wait(&self, j: usize) {
        while !self.flags[j].load(Ordering::Acquire) {
            let notified = self.notify[j].notified();
            if self.flags[j].load(Ordering::Acquire) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    /// Marks request `i` answered and wakes those waiting on it.
    fn mark(&self, i: usize) {
        self.flags[i].store(true, Ordering::Release);
        self.notify[i].notify_waiters();
    }
}

/// The rush's running count: latencies, verdicts, mismatches and errors.
struct Tally {
    /// Latency from the intended send time, microseconds.
    hist: Histogram<u64>,
    /// Verdicts by reason label.
    verdicts: BTreeMap<String, u64>,
    /// Requests answered.
    requests: u64,
    /// Verdicts other than the expected one.
    mismatches: u64,
    /// Requests without a verdict.
    errors: u64,
    /// The first few mismatches and errors.
    examples: Vec<String>,
    /// The mdoc presentations on their own.
    mdoc: MdocTally,
}

impl Tally {
    /// Nothing counted yet.
    fn new() -> Result<Tally> {
        Ok(Tally {
            hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
            verdicts: BTreeMap::new(),
            requests: 0,
            mismatches: 0,
            errors: 0,
            examples: Vec::new(),
            mdoc: MdocTally::new()?,
        })
    }

    /// Counts request `i`'s outcome against the verdict planned `p` expects: its reason, and
    /// its attributes too where the plan knows them (fresh mdoc presentations).
    fn record(&mut self, i: usize, r: Result<Verdict>, latency: Duration, p: &Planned) {
        let is_mdoc = matches!(p.payload, Payload::Mdoc(_));
        let what = if is_mdoc { "mdoc request" } else { "request" };
        match r {
            Ok(v) => {
                self.requests += 1;
                let _ = self.hist.record((latency.as_micros() as u64).max(1));
                *self
                    .verdicts
                    .entry(v.reason.label().to_string())
                    .or_default() += 1;
                let matched =
                    v.reason == p.expect && p.attributes.is_none_or(|a| a == v.attributes);
                if is_mdoc {
                    self.mdoc.answered(v.reason, latency, matched);
                }
                if !matched {
                    self.mismatches += 1;
                    if self.examples.len() < 10 {
                        self.examples.push(match p.attributes {
                            Some(a) => format!(
                                "{what} {i}: expected {} {a:?}, got {} {:?}",
                                p.expect, v.reason, v.attributes
                            ),
                            None => format!("{what} {i}: expected {}, got {}", p.expect, v.reason),
                        });
                    }
                }
            }
            Err(e) => {
                self.errors += 1;
                if is_mdoc {
                    self.mdoc.failed();
                }
                if self.examples.len() < 10 {
                    self.examples.push(format!("{what} {i}: {e:#}"));
                }
            }
        }
    }

    /// The report of a rush that lasted `elapsed` seconds with an mdoc share of `mdoc_share`
    /// (one node, memory store, no mdoc pool: the caller fills in the deployment and the pool).
    fn report(self, elapsed: f64, mdoc_share: f64) -> DemoReport {
        DemoReport {
            requests: self.requests,
            throughput_rps: self.requests as f64 / elapsed,
            latency_us: Latency::of(&self.hist),
            verdicts: self.verdicts,
            mismatches: self.mismatches + self.errors,
            errors: self.errors,
            mismatch_examples: self.examples,
            holders: 0,
            setup_secs: 0.0,
            nodes: 1,
            store: "memory".into(),
            signatures: Default::default(),
            mdoc: self.mdoc.summary(mdoc_share),
        }
    }
}
