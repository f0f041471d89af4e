//! The micro-batcher: tokens from every connection, through one bounded queue, to the engine in
//! batches.
//!
//! It runs on a dedicated OS thread rather than a runtime task: tokio's timer wheel has a
//! 1 ms resolution, so a 200 µs deadline could only be kept by spinning; a blocking
//! `recv_timeout` on a thread keeps it for free. The thread only moves requests; the signature
//! checks run on the engine's rayon pool ([`Engine::submit`]), and each request's verdicts go
//! back to its stream through a oneshot channel.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_protocol::{Reason, Verdict};
use tokio::sync::oneshot;

use super::fair::Fair;
use super::metrics::Metrics;
use super::store::Store;
use super::Batching;
use crate::{Engine, Item, Scanner};

/// The engine's `now`: the system clock, in Unix seconds (0 if the clock is before 1970, which
/// fails every check closed).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Tokens admitted to the queue; released (the depth gauge falls) when dropped, whether the
/// verdicts were delivered or the work was lost.
struct Permit {
    tokens: usize,
    metrics: Arc<Metrics>,
    /// Counted in its scanner's share too, once admitted.
    share: Option<(Arc<Shares>, Arc<Scanner>)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.metrics
            .queue_depth
            .fetch_sub(self.tokens, Ordering::Relaxed);
        if let Some((shares, scanner)) = self.share.take() {
            shares.release(&scanner.id, self.tokens);
        }
    }
}

/// Tokens admitted and not yet answered, per scanner id: one scanner cannot take the whole
/// queue. Only scanners with tokens in flight have an entry, so it is bounded by the registry.
#[derive(Default)]
struct Shares(parking_lot::Mutex<HashMap<String, usize>>);

impl Shares {
    /// Counts `n` tokens for `id` unless that takes it past `max` (a scanner with nothing in
    /// flight is always admitted once, however large its request).
    fn try_admit(&self, id: &str, n: usize, max: usize) -> bool {
        let mut m = self.0.lock();
        match m.get_mut(id) {
            Some(held) if *held > 0 && *held + n > max => false,
            Some(held) => {
                *held += n;
                true
            }
            None => {
                m.insert(id.to_owned(), n);
                true
            }
        }
    }

    /// Tokens `id` has admitted and unanswered.
    fn held(&self, id: &str) -> usize {
        self.0.lock().get(id).copied().unwrap_or(0)
    }

    fn release(&self, id: &str, n: usize) {
        let mut m = self.0.lock();
        if let Some(held) = m.get_mut(id) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                m.remove(id);
            }
        }
    }
}

/// The most tokens of one request in one job: larger requests are queued in pieces.
const PIECE: usize = 8;

impl Permit {
    /// `n` of this permit's tokens as a permit of their own (released on its own).
    fn split(&mut self, n: usize) -> Permit {
        let n = n.min(self.tokens);
        self.tokens -= n;
        // The last piece takes the share itself: the emptied permit then releases nothing.
        let share = if self.tokens == 0 {
            self.share.take()
        } else {
            self.share
                .as_ref()
                .map(|(s, scanner)| (Arc::clone(s), Arc::clone(scanner)))
        };
        Permit {
            tokens: n,
            metrics: Arc::clone(&self.metrics),
            share,
        }
    }
}

/// A request's verdicts on their way back, a piece at a time.
pub(crate) struct Receipt(Vec<(usize, Option<oneshot::Receiver<Vec<Verdict>>>)>);

impl Receipt {
    /// The verdicts in request order, and how many tokens were answered `busy` (a piece the
    /// queue had no room for) or `unavailable` (a piece whose work was lost).
    pub async fn verdicts(self) -> (Vec<Verdict>, usize, usize) {
        let (mut verdicts, mut busy, mut lost) = (Vec::new(), 0, 0);
        for (n, rx) in self.0 {
            match rx {
                None => {
                    busy += n;
                    verdicts.extend(std::iter::repeat_n(Verdict::deny(Reason::Busy), n));
                }
                Some(rx) => match rx.await {
                    Ok(mut v) => {
                        v.resize(n, Verdict::deny(Reason::Unavailable));
                        verdicts.append(&mut v);
                    }
                    Err(_) => {
                        lost += n;
                        verdicts.extend(std::iter::repeat_n(Verdict::deny(Reason::Unavailable), n));
                    }
                },
            }
        }
        (verdicts, busy, lost)
    }
}

/// One request's tokens on their way to the engine.
struct Job {
    scanner: Arc<Scanner>,
    tokens: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    retry: Option<[u8; gatehouse_protocol::RETRY_KEY_LEN]>,
    reply: oneshot::Sender<Vec<Verdict>>,
    permit: Permit,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue is full: answer `busy`.
    Busy,
    /// The batcher is gone (shutting down): answer `unavailable`.
    Unavailable,
}

impl Refused {
    pub fn reason(self) -> Reason {
        match self {
            Refused::Busy => Reason::Busy,
            Refused::Unavailable => Reason::Unavailable,
        }
    }
}

/// The sending side of the queue, shared by every connection.
pub(crate) struct Queue {
    tx: SyncSender<Job>,
    capacity: usize,
    metrics: Arc<Metrics>,
    shares: Arc<Shares>,
    /// Most tokens of one scanner admitted at once.
    per_scanner: usize,
}

impl Queue {
    /// Sets the most tokens one scanner may have admitted and not yet answered.
    pub fn with_scanner_share(mut self, per_scanner: usize) -> Queue {
        self.per_scanner = per_scanner.max(1);
        self
    }

    /// Queues one request's tokens (each with its challenge); the verdicts, in order, arrive on
    /// the returned channel. Never blocks.
    /// Whether scanner `id` is at its share: a largest batch more would be refused `busy`.
    pub fn saturated(&self, id: &str) -> bool {
        let held = self.shares.held(id);
        held > 0 && held.saturating_add(gatehouse_protocol::MAX_BATCH) > self.per_scanner
    }

    pub fn submit(
        &self,
        scanner: Arc<Scanner>,
        mut tokens: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        retry: Option<[u8; gatehouse_protocol::RETRY_KEY_LEN]>,
    ) -> Result<Receipt, Refused> {
        let n = tokens.len();
        let before = self.metrics.queue_depth.fetch_add(n, Ordering::Relaxed);
        let mut permit = Permit {
            tokens: n,
            metrics: Arc::clone(&self.metrics),
            share: None,
        };
        // An idle server takes any one request, so a batch larger than a tiny queue still
        // makes progress.
        if before > 0 && before + n > self.capacity {
            return Err(Refused::Busy);
        }
        // A scanner past its share is busy, however much room the queue has for the others.
        if !self.shares.try_admit(&scanner.id, n, self.per_scanner) {
            return Err(Refused::Busy);
        }
        permit.share = Some((Arc::clone(&self.shares), Arc::clone(&scanner)));
        // Admitted whole, queued in pieces: a large request is verified as several small jobs,
        // so no batch in the pool is large and a single token of another scanner waits for
        // at most a small batch ahead of it.
        let mut pieces = Vec::with_capacity(n.div_ceil(PIECE));
        let mut start = 0;
        while start < n {
            let len = PIECE.min(n - start);
            let rest = tokens.split_off(len);
            let piece = std::mem::replace(&mut tokens, rest);
            let (reply, rx) = oneshot::channel();
            let job = Job {
                scanner: Arc::clone(&scanner),
                tokens: piece,
                retry,
                reply,
                permit: permit.split(len),
            };
            match self.tx.try_send(job) {
                Ok(()) => pieces.push((len, Some(rx))),
                // A piece that cannot be queued is answered like a refused request; the
                // pieces already queued are verified.
                Err(TrySendError::Full(_)) => pieces.push((len, None)),
                Err(TrySendError::Disconnected(_)) => return Err(Refused::Unavailable),
            }
            start += len;
        }
        if pieces.iter().all(|(_, rx)| rx.is_none()) {
            return Err(Refused::Busy);
        }
        Ok(Receipt(pieces))
    }
}

/// Starts the batcher thread. It ends when the last [`Queue`] is dropped, after handing over
/// what it holds.
pub(crate) fn spawn(
    engine: Arc<Engine>,
    config: Batching,
    metrics: Arc<Metrics>,
    store: Store,
) -> std::io::Result<(Queue, JoinHandle<()>)> {
    let shell = Shell {
        store,
        runtime: tokio::runtime::Handle::current(),
    };
    // Jobs never outnumber admitted tokens, so the channel fills only if admission is wrong.
    let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
    let m = Arc::clone(&metrics);
    let thread = std::thread::Builder::new()
        .name("gatehouse-batcher".into())
        .spawn(move || collect(rx, &engine, &shell, config, &m))?;
    Ok((
        Queue {
            tx,
            capacity: config.queue,
            metrics,
            shares: Arc::default(),
            per_scanner: usize::MAX,
        },
        thread,
    ))
}

/// Batches in the engine's hands and not yet answered.
type InFlight = Arc<std::sync::atomic::AtomicUsize>;

/// Where a batch's marks go, and the runtime that performs those that are IO.
struct Shell {
    store: Store,
    runtime: tokio::runtime::Handle,
}

fn collect(
    rx: Receiver<Job>,
    engine: &Arc<Engine>,
    shell: &Shell,
    config: Batching,
    metrics: &Arc<Metrics>,
) {
    // While the verification pool has an idle thread, a batch goes at once with whatever is
    // already queued: at low load a token waits for nobody. When every thread is busy, work
    // waits here, not in the pool's queue: at most one batch more than there are threads is
    // handed over (so a thread that finishes finds its next batch at once), and the order of
    // everything else is still ours to choose. Batches are small (max_batch, default 8, of
    // requests queued in pieces of at most `PIECE` tokens), so a token that arrives waits for
    // little work ahead of it. Waiting requests
    // are taken scanner by scanner (deficit round robin, [`Fair`]), so a scanner with a deep
    // backlog delays another's token by one turn, not by its backlog.
    let threads = match engine.config().threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let in_flight: InFlight = Arc::default();
    let mut waiting: Fair<Job> = Fair::new(config.max_batch);
    let mut disconnected = false;
    loop {
        if waiting.is_empty() {
            if disconnected {
                break;
            }
            match rx.recv() {
                Ok(job) => push(&mut waiting, job),
                Err(_) => break,
            }
        }
        // Everything already sent joins the fair queue.
        loop {
            match rx.try_recv() {
                Ok(job) => push(&mut waiting, job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        // A free verification thread (or one about to be): until then, keep collecting. The
        // pool gives no wake-up, so the wait polls the channel at a fine grain.
        while !disconnected && in_flight.load(Ordering::Acquire) > threads {
            match rx.recv_timeout(POOL_POLL) {
                Ok(job) => push(&mut waiting, job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
        }
        // Every thread busy and one batch may still go ahead: hold it open for up to max_wait
        // (from its oldest request) or max_batch tokens, so work accumulates into larger
        // batches exactly when batching pays. (From now, not from the oldest request: those may
        // have waited for a thread already, and holding them longer would not help.)
        if in_flight.load(Ordering::Acquire) >= threads {
            let deadline = Instant::now() + config.max_wait;
            while !disconnected && waiting.weight() < config.max_batch {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                match rx.recv_timeout(left) {
                    Ok(job) => push(&mut waiting, job),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => disconnected = true,
                }
            }
        }
        let mut jobs = Vec::new();
        let mut tokens = 0;
        while tokens < config.max_batch {
            match waiting.pop() {
                Some(job) => {
                    tokens += job.tokens.len();
                    jobs.push(job);
                }
                None => break,
            }
        }
        if !jobs.is_empty() {
            dispatch(engine, shell, jobs, tokens, metrics, &in_flight);
        }
    }
}

/// How often the batcher looks for a free verification thread while every one is busy.
const POOL_POLL: Duration = Duration::from_micros(50);

fn push(waiting: &mut Fair<Job>, job: Job) {
    let key = Arc::clone(&job.scanner);
    waiting.push(&key.id, job.tokens.len(), job);
}

fn dispatch(
    engine: &Arc<Engine>,
    shell: &Shell,
    jobs: Vec<Job>,
    tokens: usize,
    metrics: &Metrics,
    in_flight: &InFlight,
) {
    metrics.batch(tokens);
    in_flight.fetch_add(1, Ordering::AcqRel);
    let in_flight = Arc::clone(in_flight);
    let mut items = Vec::with_capacity(tokens);
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        let n = job.tokens.len();
        for (token, challenge) in job.tokens {
            items.push(Item {
                scanner: Arc::clone(&job.scanner),
                token,
                challenge,
                retry: job.retry,
            });
        }
        replies.push((n, job.reply, job.permit));
    }
    let deliver = move |verdicts: Vec<Verdict>| {
        let mut verdicts = verdicts.into_iter();
        for (n, reply, permit) in replies {
            let mut v: Vec<Verdict> = verdicts.by_ref().take(n).collect();
            // The engine answers every item; should it not, the rest are not judged.
            v.resize(n, Verdict::deny(Reason::Unavailable));
            drop(permit);
            let _ = reply.send(v);
        }
    };
    let now = unix_now();
    match &shell.store {
        Store::Memory => engine.submit(items, now, move |verdicts| {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            deliver(verdicts);
        }),
        Store::Redis(redis) => {
            let e = Arc::clone(engine);
            let redis = redis.clone();
            let runtime = shell.runtime.clone();
            engine.spawn(move || {
                let prepared = e.prepare(&items, now);
                // The pool thread is free again: the marks are IO, on the runtime.
                in_flight.fetch_sub(1, Ordering::AcqRel);
                if prepared.marks().is_empty() {
                    deliver(e.complete(prepared, &[], &items));
                    return;
                }
                runtime.spawn(async move {
                    let outcomes = redis.mark(prepared.marks(), now).await;
                    deliver(e.complete(prepared, &outcomes, &items));
                });
            });
        }
    }
}
