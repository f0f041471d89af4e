//! The open-loop driver: arrivals are sent at their scheduled time whatever the engine is
//! doing (a gate queue does not pause because the server is slow), and each latency is
//! measured from the request's *intended* send time, so queueing anywhere — in the engine,
//! the network or the harness — shows up in the numbers (no coordinated omission).
//!
//! Three kinds of threads:
//! - **signers** (a pool) sign each token shortly before its send time — no more than
//!   `sign_lead` ahead, so tokens are seconds old when shown, well inside the 30 s window —
//!   and work out the verdict the engine must give (and make each mdoc presentation of
//!   `--mdoc-share`, its reader session begun at its send time);
//! - **the sender** (one thread, sleeping to each arrival's time with the OS timer rather
//!   than the async runtime's millisecond wheel) hands each request to the async runtime;
//! - **the collector** (an async task) records latency into HDR histograms, compares every
//!   verdict with the expected one, and prints progress.
//!
//! A replay waits until its original was answered (otherwise it would not be a replay) and is
//! timed from the later of its intended time and that answer.
//!
//! With several nodes, scanner `i` sends to node `(i / shards) % nodes` and a replay goes to another node
//! than its original: a fleet that agrees answers it `replayed` (one-time use is shared), a
//! fleet that does not accepts it, and the run counts a mismatch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use gatehouse_engine::dev::population::{derive_id, derive_key};
use gatehouse_engine::dev::progress::{Progress, ProgressMode};
use gatehouse_protocol::{MdocRequest, Presentation, PrivateKey, Reason};
use hdrhistogram::Histogram;

use crate::expect::{expected, is_retry, repeated, Presented};
use crate::fleet::Fleet;
use crate::mdoc::MdocPool;
use crate::model::{Arrival, Kind, Phase, Plan, ScannerSet, Scenario, Shard};
use crate::summary::{
    histogram, histogram_with, CommonStart, CrossNodeReplays, MdocSummary, NodeStats, RunStats,
    Second,
};
use crate::target::{self, Connections};

/// Knobs of one open-loop run.
#[derive(Debug, Clone)]
pub struct OpenLoopOptions {
    /// How far ahead of its send time a token may be signed.
    pub sign_lead: Duration,
    /// Signing threads.
    pub signers: usize,
    /// How long a request may take before it counts as an error.
    pub request_timeout: Duration,
    /// The engine's local offset from UTC (age checks).
    pub utc_offset_secs: i32,
    /// Mixed into every nonce, so runs against the same engine never repeat a token.
    pub salt: u64,
    /// Progress on stderr, updated each second: a bar on a terminal, else a line per tenth.
    pub progress: ProgressMode,
    /// The part of the schedule this process sends (its scanners' requests).
    pub shard: Shard,
    /// `--start-at`: start the clock at this wall-clock instant (every shard of a run at
    /// once), after signing the first seconds; `None` starts as soon as they are signed.
    pub start_at: Option<SystemTime>,
    /// The mDL pool the schedule's mdoc arrivals present from (`--mdoc-share`; the nodes
    /// trust its IACA).
    pub mdoc: Option<Arc<MdocPool>>,
}

/// The longest signing lead.
pub const MAX_SIGN_LEAD: Duration = Duration::from_secs(10);

/// The longest wait for the tokens due within the lead before the clock starts anyway (the
/// rest is signed while the run goes, and any lag it causes is recorded). Tokens are signed in
/// send order, so one is at most max(prefill, lead) old when sent: inside the engine's 30 s
/// window with room for a slow answer.
pub const MAX_PREFILL: Duration = Duration::from_secs(20);

/// A replay of a token older than this is not sent (it could be refused as stale rather than
/// as a replay); it is counted as dropped, not as an error.
const MAX_REPLAY_AGE_SECS: u64 = 20;

/// What a request sends: a token, or an mdoc presentation.
#[derive(Clone)]
enum Payload {
    Token(Arc<[u8]>),
    Mdoc(Arc<MdocRequest>),
}

impl Payload {
    /// Sends it as scanner `scanner` to node `node`.
    async fn send(&self, conns: &Connections, node: usize, scanner: usize) -> Result<Reason> {
        match self {
            Payload::Token(token) => target::verify(conns, node, scanner, token).await,
            Payload::Mdoc(request) => crate::mdoc::verify(conns, node, scanner, request).await,
        }
    }
}

/// A request ready to send and the verdict it must get.
struct Prepared {
    payload: Payload,
    expect: Reason,
    /// The token's timestamp, or the mdoc session's start.
    signed_at: u64,
}

/// How a request ended, for replays that depend on it.
const PENDING: u8 = 0;
const JUDGED: u8 = 1;
const FAILED: u8 = 2;

/// How a request ended, as the collector counts it.
enum Outcome {
    Verdict { got: Reason, expect: Reason },
    Error(String),
    Skipped(String),
    Dropped,
}

/// A finished request, sent from its task to the collector.
struct Done {
    i: usize,
    /// The node it was sent to (`None`: not sent).
    node: Option<usize>,
    /// A replay sent to another node than its original's.
    cross_node: bool,
    outcome: Outcome,
    latency_us: u64,
    lag_us: u64,
}

/// What the signers, the sender and the requests in flight share: the schedule, each
/// request's signed token (`slots`) and how it ended (`state`), the connections and the clock.
struct Shared {
    fleet: Arc<Fleet>,
    scanners: Arc<ScannerSet>,
    schedule: Arc<Vec<Arrival>>,
    slots: Vec<OnceLock<Result<Prepared, String>>>,
    state: Vec<AtomicU8>,
    conns: Arc<Connections>,
    opts: OpenLoopOptions,
    thieves: Vec<PrivateKey>,
    start: OnceLock<Instant>,
    prepared: AtomicUsize,
    next_chunk: AtomicUsize,
    abort: AtomicBool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn nonce(salt: u64, i: usize) -> [u8; 16] {
    derive_id(
        "gatehouse-loadtest nonce",
        salt ^ (i as u64).rotate_left(40),
    )
}

/// Bytes that are not a token: a CBOR "break" byte (never valid where a token starts) and
/// noise.
fn garbage(salt: u64, i: usize) -> Vec<u8> {
    let len = 1 + (i.wrapping_mul(7919) % 300);
    let mut out = Vec::with_capacity(len + 1);
    out.push(0xFF);
    let mut k = 0u64;
    while out.len() < len + 1 {
        out.extend_from_slice(&derive_id(
            "gatehouse-loadtest garbage",
            salt ^ (i as u64) << 8 ^ k,
        ));
        k += 1;
    }
    out.truncate(len + 1);
    out
}

impl Shared {
    fn prepare(&self, i: usize) -> Result<Prepared, String> {
        let a = &self.schedule[i];
        let h = a.holder as usize;
        let c = self.fleet.credential(h);
        let role = &self.scanners.roles[a.scanner as usize];
        let now = unix_now();
        let presented = match a.kind {
            Kind::Genuine => Presented::Genuine,
            Kind::Forged => Presented::Forged,
            Kind::Garbage => Presented::Garbage,
            Kind::Stale => Presented::Stale,
            Kind::Mdoc => return self.prepare_mdoc(i),
            Kind::Replay { .. } => return Err("a replay is not signed".into()),
        };
        let expect = expected(
            c,
            self.fleet.is_revoked(h),
            role,
            presented,
            now,
            self.opts.utc_offset_secs,
        );
        let token = match presented {
            Presented::Garbage => garbage(self.opts.salt, i),
            _ => {
                let own;
                let key = match presented {
                    Presented::Forged => &self.thieves[i % self.thieves.len()],
                    _ => {
                        own = PrivateKey::from_bytes(self.fleet.device_key(h))
                            .map_err(|e| format!("holder {h}: device key: {e}"))?;
                        &own
                    }
                };
                let timestamp = if presented == Presented::Stale {
                    now.saturating_sub(3600)
                } else {
                    now
                };
                Presentation {
                    credential: self.fleet.issued(h),
                    timestamp,
                    nonce: nonce(self.opts.salt, i),
                    challenge: None,
                }
                .sign(key)
                .map_err(|e| format!("holder {h}: signing: {e}"))?
            }
        };
        Ok(Prepared {
            payload: Payload::Token(token.into()),
            expect,
            signed_at: now,
        })
    }

    /// Arrival `i`'s mdoc presentation, its session begun at the arrival's send time.
    fn prepare_mdoc(&self, i: usize) -> Result<Prepared, String> {
        let a = &self.schedule[i];
        let pool = self
            .opts
            .mdoc
            .as_ref()
            .ok_or("an mdoc arrival without a pool")?;
        let start = self.send_unix(a.at);
        let (request, expect) = pool.prepare(
            i,
            a.holder,
            a.scanner,
            self.opts.salt,
            start,
            self.opts.utc_offset_secs,
        )?;
        Ok(Prepared {
            payload: Payload::Mdoc(Arc::new(request)),
            expect,
            signed_at: start,
        })
    }

    /// The Unix second an arrival planned at `at` is sent: from the run's clock once it has
    /// started, from `--start-at` before then, else now (it is sent later, never earlier).
    fn send_unix(&self, at: f64) -> u64 {
        let wall = match (self.start.get(), self.opts.start_at) {
            (Some(start), _) => {
                let intended = *start + Duration::from_secs_f64(at);
                SystemTime::now() + intended.saturating_duration_since(Instant::now())
            }
            (None, Some(t)) => t + Duration::from_secs_f64(at),
            (None, None) => SystemTime::now(),
        };
        wall.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// A signing thread: takes chunks of arrivals in order, waits until each is within the
    /// lead of its send time, signs it.
    fn sign_loop(&self) {
        const CHUNK: usize = 64;
        let lead = self.opts.sign_lead.as_secs_f64();
        let n = self.schedule.len();
        loop {
            let first = self.next_chunk.fetch_add(CHUNK, Ordering::Relaxed);
            if first >= n {
                return;
            }
            for i in first..(first + CHUNK).min(n) {
                if !self.mine(i) || matches!(self.schedule[i].kind, Kind::Replay { .. }) {
                    continue;
                }
                let at = self.schedule[i].at;
                loop {
                    if self.abort.load(Ordering::Relaxed) {
                        return;
                    }
                    match self.start.get() {
                        None if at < lead => break,
                        None => std::thread::sleep(Duration::from_millis(1)),
                        Some(start) => {
                            let wake = *start + Duration::from_secs_f64((at - lead).max(0.0));
                            let now = Instant::now();
                            if now >= wake {
                                break;
                            }
                            std::thread::sleep((wake - now).min(Duration::from_millis(50)));
                        }
                    }
                }
                let _ = self.slots[i].set(self.prepare(i));
                self.prepared.fetch_add(1, Ordering::Release);
            }
        }
    }
}

const TOO_OLD: &str = "original token too old to replay";

impl Shared {
    /// Whether request `i` is this shard's to send.
    fn mine(&self, i: usize) -> bool {
        self.opts.shard.owns(self.schedule[i].scanner as usize)
    }

    /// Requests this shard sends.
    fn planned(&self) -> usize {
        (0..self.schedule.len()).filter(|&i| self.mine(i)).count()
    }

    /// Whether request `i` is an mdoc presentation or a replay of one.
    fn is_mdoc(&self, i: usize) -> bool {
        match self.schedule[i].kind {
            Kind::Mdoc => true,
            Kind::Replay { of } => self.schedule[of as usize].kind == Kind::Mdoc,
            _ => false,
        }
    }

    /// The mdoc counts before the run (what this shard will send), when it has a pool.
    fn mdoc_summary(&self) -> Option<MdocSummary> {
        let pool = self.opts.mdoc.as_ref()?;
        let mine = |i: &usize| self.mine(*i) && self.is_mdoc(*i);
        let fresh = (0..self.schedule.len())
            .filter(mine)
            .filter(|&i| self.schedule[i].kind == Kind::Mdoc)
            .count() as u64;
        let all = (0..self.schedule.len()).filter(mine).count() as u64;
        Some(MdocSummary {
            share: pool.share,
            documents: pool.documents(),
            presentations: fresh,
            replays: all - fresh,
            ..MdocSummary::default()
        })
    }

    /// The request of `of` and the verdict its replay must get, once `of` was judged
    /// (waiting at most a request timeout and a second); `from`, where the replay's latency
    /// starts, moves to when that verdict was seen.
    async fn replay_token(
        &self,
        of: usize,
        from: &mut Instant,
    ) -> Result<(Payload, Reason), String> {
        let limit = Instant::now() + self.opts.request_timeout + Duration::from_secs(1);
        loop {
            match self.state[of].load(Ordering::Acquire) {
                PENDING if Instant::now() < limit => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                JUDGED => {
                    *from = (*from).max(Instant::now());
                    return match self.slots[of].get() {
                        Some(Ok(p))
                            if unix_now().saturating_sub(p.signed_at) > MAX_REPLAY_AGE_SECS =>
                        {
                            Err(TOO_OLD.into())
                        }
                        Some(Ok(p)) => Ok((p.payload.clone(), repeated(p.expect))),
                        _ => Err("original not prepared".into()),
                    };
                }
                _ => return Err("its original got no verdict".into()),
            }
        }
    }
}

/// Sends request `i` (intended at `intended`), waits for its answer and reports it on `tx`.
async fn send_one(
    shared: Arc<Shared>,
    i: usize,
    intended: Instant,
    tx: tokio::sync::mpsc::UnboundedSender<Done>,
) {
    let a = shared.schedule[i];
    let lag_us = intended.elapsed().as_micros() as u64;
    let mut from = intended;
    let conns = &shared.conns;
    let node = match a.kind {
        Kind::Replay { of } => {
            conns.other(conns.home(shared.schedule[of as usize].scanner as usize))
        }
        _ => conns.home(a.scanner as usize),
    };
    let cross_node = matches!(a.kind, Kind::Replay { .. }) && conns.nodes() > 1;
    let mut sent = false;
    let prepared: Result<(Payload, Reason), String> = match a.kind {
        Kind::Replay { of } => shared.replay_token(of as usize, &mut from).await,
        _ => match shared.slots[i].get() {
            Some(Ok(p)) => Ok((p.payload.clone(), p.expect)),
            Some(Err(e)) => Err(e.clone()),
            None => Err("not signed in time".into()),
        },
    };
    let outcome = match prepared {
        Err(e) if e == TOO_OLD => Outcome::Dropped,
        Err(e) if matches!(a.kind, Kind::Replay { .. }) => Outcome::Skipped(e),
        Err(e) => Outcome::Error(format!("harness: {e}")),
        Ok((payload, expect)) => {
            sent = true;
            let r = tokio::time::timeout(
                shared.opts.request_timeout,
                payload.send(&shared.conns, node, a.scanner as usize),
            )
            .await;
            match r {
                Ok(Ok(got)) if !is_retry(got) => Outcome::Verdict { got, expect },
                Ok(Ok(got)) => Outcome::Error(format!("engine answered {got} (retry)")),
                Ok(Err(e)) => Outcome::Error(format!("{e:#}")),
                Err(_) => Outcome::Error(format!(
                    "no answer within {:?}",
                    shared.opts.request_timeout
                )),
            }
        }
    };
    let latency_us = (from.elapsed().as_micros() as u64).max(1);
    shared.state[i].store(
        match outcome {
            Outcome::Verdict { .. } => JUDGED,
            _ => FAILED,
        },
        Ordering::Release,
    );
    let _ = tx.send(Done {
        i,
        node: sent.then_some(node),
        cross_node,
        outcome,
        latency_us,
        lag_us,
    });
}

/// Runs `schedule` (drawn from `plan`) open loop against `conns` and measures it.
pub async fn run(
    fleet: Arc<Fleet>,
    scanners: Arc<ScannerSet>,
    conns: Arc<Connections>,
    schedule: Arc<Vec<Arrival>>,
    plan: &Plan,
    opts: OpenLoopOptions,
) -> Result<RunStats> {
    anyhow::ensure!(
        opts.sign_lead <= MAX_SIGN_LEAD,
        "the signing lead is at most {MAX_SIGN_LEAD:?}"
    );
    let cpu0 = crate::cpu::process_cpu_secs("self");
    let (progress, timeout, signers) = (opts.progress, opts.request_timeout, opts.signers.max(1));
    let shared = Arc::new(Shared::new(fleet, scanners, conns, schedule, opts));
    let threads = spawn_signers(&shared, signers)?;
    let prefill_secs = prefill(&shared).await;
    let (start, common_start) = clock_start(shared.opts.start_at);
    let _ = shared.start.set(start);
    tokio::time::sleep_until(start.into()).await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let sender = spawn_sender(&shared, start, tx)?;
    let deadline =
        start + Duration::from_secs_f64(plan.duration()) + timeout * 2 + Duration::from_secs(15);
    let mut collector = Collector::new(shared.clone(), plan, prefill_secs, progress);
    collector.collect(&mut rx, start, deadline).await;
    collector.close_progress();
    shared.abort.store(true, Ordering::Relaxed);
    let mut stats = collector.into_stats(start, deadline);
    stats.start = common_start;
    let _ = tokio::task::spawn_blocking(move || {
        let _ = sender.join();
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    stats.harness_cpu_secs = match (cpu0, crate::cpu::process_cpu_secs("self")) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(stats)
}

impl Shared {
    /// The state the signers, the sender and the senders' tasks share, nothing signed yet.
    fn new(
        fleet: Arc<Fleet>,
        scanners: Arc<ScannerSet>,
        conns: Arc<Connections>,
        schedule: Arc<Vec<Arrival>>,
        opts: OpenLoopOptions,
    ) -> Shared {
        let n = schedule.len();
        Shared {
            fleet,
            scanners,
            schedule,
            slots: (0..n).map(|_| OnceLock::new()).collect(),
            state: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            conns,
            opts,
            thieves: (0..16)
                .map(|k| derive_key("gatehouse-loadtest thief", k))
                .collect(),
            start: OnceLock::new(),
            prepared: AtomicUsize::new(0),
            next_chunk: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
        }
    }
}

/// The instant the run's clock starts: 20 ms from now, or `start_at` (mapped once from the
/// wall clock to the monotonic one), then how late that was.
fn clock_start(start_at: Option<SystemTime>) -> (Instant, Option<CommonStart>) {
    let soon = Instant::now() + Duration::from_millis(20);
    let Some(at) = start_at else {
        return (soon, None);
    };
    let at_unix = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let (now_wall, now) = (SystemTime::now(), Instant::now());
    match at.duration_since(now_wall) {
        Ok(ahead) => (
            now + ahead,
            Some(CommonStart {
                at_unix,
                late_secs: 0.0,
            }),
        ),
        Err(past) => (
            soon,
            Some(CommonStart {
                at_unix,
                late_secs: past.duration().as_secs_f64(),
            }),
        ),
    }
}

/// Starts `count` signing threads (see [`Shared::sign_loop`]).
fn spawn_signers(shared: &Arc<Shared>, count: usize) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let mut threads = Vec::new();
    for k in 0..count {
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("signer-{k}"))
                .spawn(move || s.sign_loop())?,
        );
    }
    Ok(threads)
}

/// Waits (at most [`MAX_PREFILL`]) until every token due within the lead is signed, so the
/// clock starts with them ready; returns the seconds it took.
async fn prefill(shared: &Shared) -> f64 {
    let lead = shared.opts.sign_lead.as_secs_f64();
    let prefix = shared.schedule.iter().take_while(|a| a.at < lead).count();
    let signable_prefix = (0..prefix)
        .filter(|&i| shared.mine(i) && !matches!(shared.schedule[i].kind, Kind::Replay { .. }))
        .count();
    let t_prefill = Instant::now();
    while shared.prepared.load(Ordering::Acquire) < signable_prefix {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if t_prefill.elapsed() > MAX_PREFILL {
            break;
        }
    }
    t_prefill.elapsed().as_secs_f64()
}

/// Starts the sender thread: it sleeps to each arrival's time (from `start`) and hands the
/// request to the async runtime, which reports it on `tx` when it ends.
fn spawn_sender(
    shared: &Arc<Shared>,
    start: Instant,
    tx: tokio::sync::mpsc::UnboundedSender<Done>,
) -> Result<std::thread::JoinHandle<()>> {
    let handle = tokio::runtime::Handle::current();
    let shared = shared.clone();
    Ok(std::thread::Builder::new()
        .name("sender".into())
        .spawn(move || {
            for (i, a) in shared.schedule.iter().enumerate() {
                if shared.abort.load(Ordering::Relaxed) {
                    break;
                }
                if !shared.mine(i) {
                    continue;
                }
                let intended = start + Duration::from_secs_f64(a.at);
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                if !matches!(a.kind, Kind::Replay { .. }) {
                    // The signers are behind: wait for this token (the lag is recorded).
                    let give_up = intended + Duration::from_secs(10);
                    while shared.slots[i].get().is_none() && Instant::now() < give_up {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                handle.spawn(send_one(shared.clone(), i, intended, tx.clone()));
            }
        })?)
}

/// Per second of the plan: its counts, and a coarse histogram of its answered latencies.
struct Timeline(Vec<(Second, Histogram<u64>)>);

impl Timeline {
    /// One entry per second of `plan`, with the requests of `schedule` that `mine` says this
    /// shard sends in each.
    fn new(plan: &Plan, schedule: &[Arrival], mine: impl Fn(usize) -> bool) -> Timeline {
        let seconds = plan.duration().ceil() as usize + 1;
        let mut per_second: Vec<(Second, Histogram<u64>)> = (0..seconds)
            .map(|t| {
                (
                    Second {
                        t: t as u64,
                        planned_rps: plan.rate_at(t as f64 + 0.5),
                        sent: 0,
                        answered: 0,
                        errors: 0,
                        mismatches: 0,
                        p50_us: 0,
                        p99_us: 0,
                    },
                    histogram_with(2),
                )
            })
            .collect();
        for (i, a) in schedule.iter().enumerate() {
            if !mine(i) {
                continue;
            }
            if let Some(s) = per_second.get_mut(a.at as usize) {
                s.0.sent += 1;
            }
        }
        Timeline(per_second)
    }

    /// The second an arrival planned at `at` belongs to.
    fn at(&mut self, at: f64) -> Option<&mut (Second, Histogram<u64>)> {
        self.0.get_mut(at as usize)
    }

    /// The seconds, each with its median and 99th percentile, and their histograms.
    fn into_seconds(self) -> (Vec<Second>, Vec<Histogram<u64>>) {
        self.0
            .into_iter()
            .map(|(mut s, h)| {
                s.p50_us = h.value_at_quantile(0.50);
                s.p99_us = h.value_at_quantile(0.99);
                (s, h)
            })
            .unzip()
    }
}

/// Statistics with nothing recorded yet, one entry per node of `conns`, and the mdoc
/// presentations' counts when the run has any (`mdoc`).
fn empty_stats(
    planned: u64,
    conns: &Connections,
    prefill_secs: f64,
    mdoc: Option<MdocSummary>,
) -> RunStats {
    RunStats {
        planned,
        answered: 0,
        errors: 0,
        mismatches: 0,
        skipped: 0,
        dropped: 0,
        all: histogram(),
        by_phase: Phase::ALL.iter().map(|p| (*p, histogram())).collect(),
        by_scenario: Scenario::ALL.iter().map(|s| (*s, histogram())).collect(),
        send_lag: histogram(),
        verdicts: BTreeMap::new(),
        expected: BTreeMap::new(),
        mismatch_examples: Vec::new(),
        error_examples: Vec::new(),
        elapsed_secs: 0.0,
        prefill_secs,
        timeline: Vec::new(),
        per_second: Vec::new(),
        start: None,
        clock_suspect: 0,
        harness_cpu_secs: None,
        nodes: conns
            .addrs()
            .iter()
            .map(|addr| NodeStats {
                addr: addr.to_string(),
                requests: 0,
                answered: 0,
                errors: 0,
                mismatches: 0,
                verdicts: BTreeMap::new(),
                latency: histogram(),
            })
            .collect(),
        cross_node: (conns.nodes() > 1).then(CrossNodeReplays::default),
        mdoc,
    }
}

/// The collector: records each finished request into the statistics and the timeline, and
/// shows progress each second.
struct Collector<'p> {
    shared: Arc<Shared>,
    plan: &'p Plan,
    stats: RunStats,
    timeline: Timeline,
    /// Requests finished so far.
    received: usize,
    bar: Progress,
    /// Answered at the last progress line.
    last_answered: u64,
    /// Latencies since the last progress line.
    last_p99: Histogram<u64>,
}

impl<'p> Collector<'p> {
    /// A collector for `shared`'s schedule, drawn from `plan`.
    fn new(shared: Arc<Shared>, plan: &'p Plan, prefill_secs: f64, progress: ProgressMode) -> Self {
        let n = shared.planned();
        Collector {
            stats: empty_stats(n as u64, &shared.conns, prefill_secs, shared.mdoc_summary()),
            timeline: Timeline::new(plan, &shared.schedule, |i| shared.mine(i)),
            received: 0,
            bar: Progress::new(progress, "run", n as u64, "requests"),
            last_answered: 0,
            last_p99: histogram(),
            shared,
            plan,
        }
    }

    /// Records requests as they finish, until every one has or `deadline` passes.
    async fn collect(
        &mut self,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Done>,
        start: Instant,
        deadline: Instant,
    ) {
        let n = self.stats.planned as usize;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        while self.received < n {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(d) = msg else { break };
                    self.record(&d);
                }
                _ = ticker.tick() => self.show_progress(start),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    break;
                }
            }
        }
    }

    /// Records one finished request.
    fn record(&mut self, d: &Done) {
        self.received += 1;
        let a = self.shared.schedule[d.i];
        self.record_mdoc(d);
        let _ = self.stats.send_lag.record(d.lag_us.max(1));
        if let Some(n) = d.node.and_then(|n| self.stats.nodes.get_mut(n)) {
            n.requests += 1;
        }
        match &d.outcome {
            Outcome::Verdict { got, expect } => self.record_verdict(d, &a, *got, *expect),
            Outcome::Error(e) => {
                self.stats.errors += 1;
                if let Some(n) = d.node.and_then(|n| self.stats.nodes.get_mut(n)) {
                    n.errors += 1;
                }
                if self.stats.error_examples.len() < 10 {
                    self.stats
                        .error_examples
                        .push(format!("request {}: {e}", d.i));
                }
                if let Some((s, _)) = self.timeline.at(a.at) {
                    s.errors += 1;
                }
            }
            Outcome::Dropped => self.stats.dropped += 1,
            Outcome::Skipped(e) => {
                self.stats.skipped += 1;
                if self.stats.error_examples.len() < 10 {
                    self.stats
                        .error_examples
                        .push(format!("replay {} skipped: {e}", d.i));
                }
            }
        }
    }

    /// Records a verdict: latency everywhere it counts, the verdict against the expected one.
    fn record_verdict(&mut self, d: &Done, a: &Arrival, got: Reason, expect: Reason) {
        let stats = &mut self.stats;
        let us = d.latency_us;
        let mismatch = got != expect;
        stats.answered += 1;
        if let Some(n) = d.node.and_then(|n| stats.nodes.get_mut(n)) {
            n.answered += 1;
            n.mismatches += u64::from(mismatch);
            *n.verdicts.entry(got.label().to_string()).or_default() += 1;
            let _ = n.latency.record(us);
        }
        if let (true, Some(c)) = (d.cross_node, stats.cross_node.as_mut()) {
            c.judged += 1;
            if expect == Reason::Replayed {
                c.expected_replayed += 1;
                c.replayed += u64::from(got == Reason::Replayed);
            }
        }
        let _ = stats.all.record(us);
        let _ = self.last_p99.record(us);
        if let Some(h) = stats.by_phase.get_mut(&a.phase) {
            let _ = h.record(us);
        }
        if let Some(h) = stats.by_scenario.get_mut(&a.scenario) {
            let _ = h.record(us);
        }
        *stats.verdicts.entry(got.label().to_string()).or_default() += 1;
        *stats
            .expected
            .entry(expect.label().to_string())
            .or_default() += 1;
        if mismatch
            && matches!(got, Reason::Stale | Reason::FromFuture)
            && !matches!(a.kind, Kind::Stale)
        {
            stats.clock_suspect += 1;
        }
        if mismatch {
            stats.mismatches += 1;
            if stats.mismatch_examples.len() < 10 {
                stats.mismatch_examples.push(format!(
                    "request {} ({}, {:?}, holder {} at {}): expected {expect}, got {got}",
                    d.i,
                    a.scenario.label(),
                    a.kind,
                    a.holder,
                    self.shared.scanners.ids[a.scanner as usize]
                ));
            }
        }
        if let Some((s, h)) = self.timeline.at(a.at) {
            s.answered += 1;
            s.mismatches += u64::from(mismatch);
            let _ = h.record(us);
        }
    }

    /// Counts request `d` among the mdoc presentations if it is one (or a replay of one).
    fn record_mdoc(&mut self, d: &Done) {
        let Some(m) = self.stats.mdoc.as_mut() else {
            return;
        };
        if !self.shared.is_mdoc(d.i) {
            return;
        }
        m.sent += u64::from(d.node.is_some());
        match &d.outcome {
            Outcome::Verdict { got, expect } => {
                m.answered += 1;
                m.mismatches += u64::from(got != expect);
                *m.verdicts.entry(got.label().to_string()).or_default() += 1;
                *m.expected.entry(expect.label().to_string()).or_default() += 1;
            }
            Outcome::Error(_) => m.errors += 1,
            Outcome::Skipped(_) | Outcome::Dropped => {}
        }
    }

    /// The progress line of the last second.
    fn show_progress(&mut self, start: Instant) {
        let t = start.elapsed().as_secs_f64();
        let (plan, stats) = (self.plan, &self.stats);
        let (last_answered, last_p99) = (self.last_answered, &self.last_p99);
        self.bar.set_position_with(self.received as u64, || {
            format!(
                "{} t={t:.0}s  rate {:.0}/s  answered {} (+{})  p99(1s) {:.2} ms  errors {}  mismatches {}",
                plan.phase_at(t).label(),
                plan.rate_at(t),
                stats.answered,
                stats.answered - last_answered,
                last_p99.value_at_quantile(0.99) as f64 / 1e3,
                stats.errors,
                stats.mismatches
            )
        });
        self.last_answered = self.stats.answered;
        self.last_p99.reset();
    }

    /// Leaves the bar on the whole run's counts, not the last second's.
    fn close_progress(&self) {
        let stats = &self.stats;
        self.bar.set_position_with(self.received as u64, || {
            format!(
                "answered {}  errors {}  mismatches {}",
                stats.answered, stats.errors, stats.mismatches
            )
        });
        self.bar.finish();
    }

    /// The statistics: requests unanswered at `deadline` count as errors.
    fn into_stats(self, start: Instant, deadline: Instant) -> RunStats {
        let mut stats = self.stats;
        let missing = stats.planned - self.received as u64;
        if missing > 0 {
            stats.errors += missing;
            stats.error_examples.push(format!(
                "{missing} requests unanswered at the run's deadline"
            ));
        }
        stats.elapsed_secs = start
            .elapsed()
            .as_secs_f64()
            .min((deadline - start).as_secs_f64());
        (stats.timeline, stats.per_second) = self.timeline.into_seconds();
        stats
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_common_start_maps_the_wall_clock_once_and_says_when_it_was_missed() {
        let (start, common) = clock_start(None);
        assert!(common.is_none());
        assert!(start <= Instant::now() + Duration::from_millis(20));
        let ahead = SystemTime::now() + Duration::from_secs(5);
        let (start, common) = clock_start(Some(ahead));
        let left = start.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(4) && left <= Duration::from_secs(5),
            "{left:?}"
        );
        assert_eq!(common.unwrap().late_secs, 0.0);
        let past = SystemTime::now() - Duration::from_secs(3);
        let (start, common) = clock_start(Some(past));
        assert!(start <= Instant::now() + Duration::from_millis(20));
        let late = common.unwrap().late_secs;
        assert!((3.0..4.0).contains(&late), "{late}");
    }
}
