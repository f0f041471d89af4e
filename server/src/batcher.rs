//! The micro-batcher: tokens from every connection, through one bounded queue, to the engine in
//! batches.
//!
//! A dedicated OS thread moves requests from the queue's channel into a fair queue (deficit
//! round robin over scanners, [`Fair`]) and starts a batch on every idle verification thread.
//! A verification thread that finishes a batch takes the next one itself, so work waits in
//! the fair queue, in an order that is still ours to choose, until a thread is actually free,
//! and no thread idles while work waits. Each request's verdicts go back to its stream through
//! a oneshot channel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use gatehouse_protocol::{Reason, Verdict};
use tokio::sync::oneshot;

use super::fair::Fair;
use super::metrics::Metrics;
use super::store::Store;
use crate::component::Component;
use crate::settings::Batching;
use crate::tally::{Taken, Tally};
use gatehouse_core::{Clock, Engine, Item, Scanner};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Tokens admitted to the queue; released (the depth gauge falls) when dropped, whether the
/// verdicts were delivered or the work was lost.
struct Permit {
    tokens: usize,
    depth: Arc<Depth>,
    /// Counted in its scanner's share too, once admitted (given back when dropped).
    share: Option<Taken<String>>,
}

/// Tokens admitted and not yet answered (queued or verifying): the queue's own count, which
/// admission decides on and `/metrics` reads (a [`Component`]).
#[derive(Debug)]
pub(crate) struct Depth {
    tokens: AtomicUsize,
    capacity: usize,
}

impl Depth {
    pub(crate) fn new(capacity: usize) -> Depth {
        Depth {
            tokens: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Tokens admitted and not yet answered.
    pub fn tokens(&self) -> usize {
        self.tokens.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn set(&self, tokens: usize) {
        self.tokens.store(tokens, Ordering::Relaxed);
    }
}

impl Component for Depth {
    fn register_metrics(&self, scrape: &mut Registry, _now: u64) {
        scrape.register(
            "gatehouse_queue_depth",
            "Tokens admitted and not yet answered (queued or verifying)",
            ConstGauge::new(self.tokens() as u64),
        );
        scrape.register(
            "gatehouse_queue_capacity",
            "Most tokens admitted at once; more are answered busy",
            ConstGauge::new(self.capacity as u64),
        );
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.depth.tokens.fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

/// The most tokens of one request in one job: larger requests are queued in pieces.
const PIECE: usize = 8;

impl Permit {
    /// `n` of this permit's tokens as a permit of their own (released on its own).
    fn split(&mut self, n: usize) -> Permit {
        let n = n.min(self.tokens);
        self.tokens -= n;
        let share = self.share.as_mut().map(|share| share.split(n));
        Permit {
            tokens: n,
            depth: Arc::clone(&self.depth),
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
    depth: Arc<Depth>,
    /// Tokens admitted and not yet answered, per scanner id: one scanner cannot take the
    /// whole queue.
    shares: Tally<String>,
    /// Most tokens of one scanner admitted at once.
    per_scanner: usize,
}

impl Queue {
    /// Sets the most tokens one scanner may have admitted and not yet answered.
    pub fn with_scanner_share(mut self, per_scanner: usize) -> Queue {
        self.per_scanner = per_scanner.max(1);
        self
    }

    /// Whether scanner `id` is at its share: a largest batch more would be refused `busy`.
    pub fn saturated(&self, id: &str) -> bool {
        let held = self.shares.held(id);
        held > 0 && held.saturating_add(gatehouse_protocol::MAX_BATCH) > self.per_scanner
    }

    /// Queues one request's tokens (each with its challenge); the verdicts, in order, arrive
    /// through the returned receipt. Never blocks.
    pub fn submit(
        &self,
        scanner: Arc<Scanner>,
        mut tokens: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        retry: Option<[u8; gatehouse_protocol::RETRY_KEY_LEN]>,
    ) -> Result<Receipt, Refused> {
        let n = tokens.len();
        let before = self.depth.tokens.fetch_add(n, Ordering::Relaxed);
        let mut permit = Permit {
            tokens: n,
            depth: Arc::clone(&self.depth),
            share: None,
        };
        // An idle server takes any one request, so a batch larger than a tiny queue still
        // makes progress.
        if before > 0 && before + n > self.capacity {
            return Err(Refused::Busy);
        }
        // A scanner past its share is busy, however much room the queue has for the others.
        let Some(share) = self.shares.try_take(&scanner.id, n, self.per_scanner) else {
            return Err(Refused::Busy);
        };
        permit.share = Some(share);
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

/// Starts the batcher thread. It ends when the last [`Queue`] is dropped; what it had handed
/// over is still verified and answered.
pub(crate) fn spawn(
    engine: Arc<Engine>,
    config: Batching,
    metrics: Arc<Metrics>,
    store: Store,
    clock: Arc<dyn Clock>,
) -> std::io::Result<(Queue, JoinHandle<()>)> {
    start(engine, config, metrics, store, clock).map(|(queue, thread, _)| (queue, thread))
}

fn start(
    engine: Arc<Engine>,
    config: Batching,
    metrics: Arc<Metrics>,
    store: Store,
    clock: Arc<dyn Clock>,
) -> std::io::Result<(Queue, JoinHandle<()>, Arc<Pool>)> {
    let threads = match engine.config().threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let pool = Arc::new(Pool {
        waiting: parking_lot::Mutex::new(Waiting {
            fair: Fair::new(config.max_batch),
            busy: 0,
        }),
        threads,
        max_batch: config.max_batch,
        engine,
        store,
        runtime: tokio::runtime::Handle::current(),
        metrics: Arc::clone(&metrics),
        clock,
    });
    // Jobs never outnumber admitted tokens, so the channel fills only if admission is wrong.
    let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
    let shared = Arc::clone(&pool);
    let thread = std::thread::Builder::new()
        .name("gatehouse-batcher".into())
        .spawn(move || collect(&rx, &shared))?;
    let depth = Arc::new(Depth::new(config.queue));
    metrics.add(Arc::clone(&depth) as Arc<dyn Component>);
    Ok((
        Queue {
            tx,
            capacity: config.queue,
            depth,
            shares: Tally::default(),
            per_scanner: usize::MAX,
        },
        thread,
        pool,
    ))
}

/// Requests waiting for a verification thread, and how many threads are on a batch.
struct Waiting {
    fair: Fair<Job>,
    busy: usize,
}

/// What the batcher thread and the verification threads share.
///
/// Work waits here, not in the pool's queue, so its order stays ours to choose until a thread
/// is actually free: a thread that finishes a batch takes the next one itself, under the same
/// lock the batcher uses to see whether a thread is idle. No thread idles while work waits, no
/// batch is handed out before a thread can start it, and nothing polls.
struct Pool {
    waiting: parking_lot::Mutex<Waiting>,
    threads: usize,
    max_batch: usize,
    engine: Arc<Engine>,
    /// Where a batch's marks go, and the runtime that performs those that are IO.
    store: Store,
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    /// The engine's `now` for each batch.
    clock: Arc<dyn Clock>,
}

/// Requests taken for one batch, and their tokens.
type Batch = (Vec<Job>, usize);

impl Pool {
    /// The next batch, taken scanner by scanner (deficit round robin, [`Fair`]): a scanner with
    /// a deep backlog delays another's token by one turn, not by its backlog. Batches are small
    /// (max_batch, default 8, of requests queued in pieces of at most `PIECE` tokens), so a
    /// token that arrives waits for little work ahead of it.
    fn take(&self, waiting: &mut Waiting) -> Option<Batch> {
        let mut jobs = Vec::new();
        let mut tokens = 0;
        while tokens < self.max_batch {
            match waiting.fair.pop() {
                Some(job) => {
                    tokens += job.tokens.len();
                    jobs.push(job);
                }
                None => break,
            }
        }
        (!jobs.is_empty()).then_some((jobs, tokens))
    }

    /// Queues `jobs` and starts a batch on every idle verification thread.
    fn offer(self: &Arc<Self>, jobs: Vec<Job>) {
        let mut starts = Vec::new();
        {
            let mut w = self.waiting.lock();
            for job in jobs {
                let key = Arc::clone(&job.scanner);
                w.fair.push(&key.id, job.tokens.len(), job);
            }
            debug_assert!(w.busy <= self.threads);
            while w.busy < self.threads {
                let Some(batch) = self.take(&mut w) else {
                    break;
                };
                w.busy += 1;
                starts.push(batch);
            }
        }
        for batch in starts {
            let pool = Arc::clone(self);
            self.engine.spawn(move || pool.work(batch));
        }
    }

    /// One verification thread's turn: this batch, then whatever is waiting, until nothing is.
    fn work(&self, mut batch: Batch) {
        loop {
            self.run(batch);
            let mut w = self.waiting.lock();
            match self.take(&mut w) {
                Some(next) => batch = next,
                None => {
                    w.busy -= 1;
                    return;
                }
            }
            drop(w);
            // Under load every core is verifying: let a runtime thread that has a packet to
            // read (another scanner's request) have the core now, not when this thread's time
            // slice ends. One batch is about a millisecond of work.
            std::thread::yield_now();
        }
    }

    /// Verifies one batch on this thread and answers its requests (or, with Redis, hands its
    /// marks to the runtime, which answers them).
    fn run(&self, (jobs, tokens): Batch) {
        self.metrics.batch(tokens);
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
        let now = self.clock.now();
        // One batch per thread, its checks in order: a thread waiting on parallel parts of
        // its batch could be handed another batch meanwhile and answer its own late.
        match &self.store {
            Store::Memory => deliver(self.engine.verify_batch_serial(&items, now)),
            Store::Shared(store) => {
                // A fence the store's probe learned applies before anything is marked.
                self.engine.raise_fence(store.accept_from());
                let prepared = self.engine.prepare_serial(&items, now);
                if prepared.marks().is_empty() {
                    deliver(self.engine.complete(prepared, &[], &items));
                    return;
                }
                // The marks are IO, on the runtime; this thread goes on to the next batch.
                let engine = Arc::clone(&self.engine);
                let store = store.clone();
                self.runtime.spawn(async move {
                    let marked = store.mark(prepared.marks(), now).await;
                    // The round trip may have shown a new life: the fence moves first, and
                    // `complete` denies the batch's tokens it now covers.
                    engine.raise_fence(marked.accept_from);
                    deliver(engine.complete(prepared, &marked.outcomes, &items));
                });
            }
        }
    }
}

/// The batcher thread: moves requests from the channel to the verification threads.
fn collect(rx: &Receiver<Job>, pool: &Arc<Pool>) {
    // While a verification thread is idle, a batch goes at once with whatever is already
    // queued: at low load a token waits for nobody. When every thread is busy, requests wait
    // in `Pool`, and a thread that finishes takes the next batch fairly from there.
    while let Ok(job) = rx.recv() {
        let mut jobs = vec![job];
        // Everything already sent joins the fair queue at once.
        jobs.extend(rx.try_iter());
        pool.offer(jobs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_core::{EngineConfig, Role, ScannerRegistry, TrustList};

    fn scanner(id: &str) -> Arc<Scanner> {
        Arc::new(Scanner {
            id: id.into(),
            role: Role::Partner,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_is_answered_whole_and_the_threads_come_back_idle() {
        let engine = Engine::new(
            EngineConfig {
                threads: 2,
                ..EngineConfig::default()
            },
            TrustList::new(),
            ScannerRegistry::new(),
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let config = Batching {
            max_batch: 8,
            queue: 10_000,
        };
        let (queue, thread, pool) = start(
            Arc::new(engine),
            config,
            Arc::clone(&metrics),
            Store::Memory,
            Arc::new(gatehouse_core::SystemClock),
        )
        .unwrap();
        // Three scanners, requests of 1 to 40 tokens (6,150 in all, many more than the two
        // threads take at once): every token is garbage, so every verdict is `malformed`.
        // (Verdict order within a request is checked end to end in tests/hostile.rs.)
        let mut receipts = Vec::new();
        for i in 0..300usize {
            let n = 1 + i % 40;
            let tokens = (0..n).map(|_| (vec![0u8; 3], None)).collect();
            let who = scanner(["a", "b", "c"][i % 3]);
            receipts.push((n, queue.submit(who, tokens, None).unwrap()));
        }
        let mut answered = 0;
        for (n, receipt) in receipts {
            // A request the threads never took would hang here: bounded.
            let (verdicts, busy, lost) =
                tokio::time::timeout(std::time::Duration::from_secs(30), receipt.verdicts())
                    .await
                    .expect("every request is answered");
            assert_eq!(verdicts.len(), n);
            assert_eq!((busy, lost), (0, 0));
            assert!(verdicts.iter().all(|v| v.reason == Reason::Malformed));
            answered += n;
        }
        assert_eq!(answered, (0..300).map(|i| 1 + i % 40).sum::<usize>());
        // Every permit came back, and every thread gave its turn back (a thread marks itself
        // idle just after answering its last batch).
        assert_eq!(queue.depth.tokens(), 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pool.waiting.lock().busy > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let w = pool.waiting.lock();
        assert_eq!(w.busy, 0);
        assert!(w.fair.is_empty());
        drop(w);
        drop(queue);
        thread.join().unwrap();
    }
}
