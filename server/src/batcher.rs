//! The micro-batcher: tokens from every connection, through one bounded, fair queue, to the
//! engine in batches, verified on the runtime thread that read them.
//!
//! A request's tokens are admitted (queue capacity, the scanner's share) and queued in pieces
//! in a fair queue (deficit round robin over scanners, [`Fair`]). Up to `threads` verification
//! turns run at once, each a task on the async runtime: the connection that queues work while
//! a turn is free starts one, on its own thread (a spawned task waits in that worker's
//! next-task slot; no other thread is woken). A turn takes a batch fairly from the queue,
//! verifies it, answers its requests, yields to the runtime (the packets of other connections
//! on that thread are read between batches: bounded work per turn) and takes the next, until
//! nothing waits. At low load a request is therefore read, verified and answered on one thread
//! with no hand-off; under load work waits in the fair queue, in an order that is still ours to
//! choose, until a turn takes it. Each request's verdicts go back to its stream through a
//! oneshot channel, with the thread that sent them, so the node counts the requests whose path
//! crossed a thread ([`Hops`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

use gatehouse_core::MdocItem;
use gatehouse_protocol::{Reason, Verdict};
use tokio::sync::oneshot;

use super::fair::Fair;
use super::metrics::Metrics;
use super::store::Store;
use crate::component::{Component, Rows};
use crate::settings::Batching;
use crate::tally::{Taken, Tally};
use gatehouse_core::{Clock, Engine, Item, Scanner};
use prometheus_client::metrics::counter::ConstCounter;
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

/// The most tokens a turn takes while work is waiting, when the engine batches signatures:
/// about 64 signatures, one equation of about 2 ms on one core.
const BACKLOG_BATCH: usize = 32;

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

/// Verdicts for one piece, and the thread that sent them.
type Answer = (Vec<Verdict>, ThreadId);

/// A request's verdicts on their way back, a piece at a time.
pub(crate) struct Receipt {
    pieces: Vec<(usize, Option<oneshot::Receiver<Answer>>)>,
    hops: Arc<Hops>,
}

impl Receipt {
    /// The verdicts in request order, and how many tokens were answered `busy` (a piece the
    /// queue had no room for) or `unavailable` (a piece whose work was lost). Awaited on the
    /// thread that writes the response: a piece answered from another thread counts a hop.
    pub async fn verdicts(self) -> (Vec<Verdict>, usize, usize) {
        let (mut verdicts, mut busy, mut lost) = (Vec::new(), 0, 0);
        for (n, rx) in self.pieces {
            match rx {
                None => {
                    busy += n;
                    verdicts.extend(std::iter::repeat_n(Verdict::deny(Reason::Busy), n));
                }
                Some(rx) => match rx.await {
                    Ok((mut v, from)) => {
                        if from != std::thread::current().id() {
                            self.hops.answer.fetch_add(1, Ordering::Relaxed);
                        }
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

/// Pieces of requests whose path crossed a thread: verified on a thread other than the one
/// that read them, or answered to the writing task from another thread. At low load both stay
/// at zero (run to completion); under load on several cores the runtime moves some work to an
/// idle core, and these say how much. Read by `/metrics` (a [`Component`]).
#[derive(Debug, Default)]
pub(crate) struct Hops {
    verify: AtomicU64,
    answer: AtomicU64,
}

impl Hops {
    #[cfg(test)]
    fn counts(&self) -> (u64, u64) {
        (
            self.verify.load(Ordering::Relaxed),
            self.answer.load(Ordering::Relaxed),
        )
    }
}

impl Component for Hops {
    fn register_metrics(&self, scrape: &mut Registry, _now: u64) {
        let hops = [("verify", &self.verify), ("answer", &self.answer)]
            .into_iter()
            .map(|(step, n)| {
                (
                    [("step", step)],
                    ConstCounter::new(n.load(Ordering::Relaxed)),
                )
            })
            .collect();
        scrape.register(
            "gatehouse_thread_hops",
            "Pieces of requests (up to 8 tokens) verified on a thread other than the one that \
             read them (step=verify), or answered from another thread (step=answer)",
            Rows(hops),
        );
    }
}

/// One request's tokens on their way to the engine.
struct Job {
    scanner: Arc<Scanner>,
    tokens: Vec<Work>,
    retry: Option<[u8; gatehouse_protocol::RETRY_KEY_LEN]>,
    reply: oneshot::Sender<Answer>,
    permit: Permit,
    /// The thread that read the request.
    read_on: ThreadId,
}

/// One thing to judge: a token (with the scanner's challenge, if any), or an mdoc
/// presentation (SPEC §12). Each counts as one token in the queue and the fair share.
#[derive(Debug)]
pub(crate) enum Work {
    /// A token and the challenge the scanner issued for it.
    Token(Vec<u8>, Option<Vec<u8>>),
    /// An mdoc presentation.
    Mdoc(Arc<MdocItem>),
}

impl Work {
    /// A token without a challenge.
    pub fn token(bytes: Vec<u8>) -> Work {
        Work::Token(bytes, None)
    }
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue is full, or the scanner at its share: answer `busy`.
    Busy,
}

impl Refused {
    pub fn reason(self) -> Reason {
        match self {
            Refused::Busy => Reason::Busy,
        }
    }
}

/// The admitting side of the queue, shared by every connection.
pub(crate) struct Queue {
    pool: Arc<Pool>,
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
    /// through the returned receipt. Never blocks; called on a runtime thread, where a free
    /// verification turn starts.
    pub fn submit(
        &self,
        scanner: Arc<Scanner>,
        mut tokens: Vec<Work>,
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
        // so no batch is large and a single token of another scanner waits for at most a small
        // batch ahead of it.
        let read_on = std::thread::current().id();
        let mut jobs = Vec::with_capacity(n.div_ceil(PIECE));
        let mut pieces = Vec::with_capacity(n.div_ceil(PIECE));
        let mut start = 0;
        while start < n {
            let len = PIECE.min(n - start);
            let rest = tokens.split_off(len);
            let piece = std::mem::replace(&mut tokens, rest);
            let (reply, rx) = oneshot::channel();
            jobs.push(Job {
                scanner: Arc::clone(&scanner),
                tokens: piece,
                retry,
                reply,
                permit: permit.split(len),
                read_on,
            });
            pieces.push((len, Some(rx)));
            start += len;
        }
        Pool::offer(&self.pool, jobs);
        Ok(Receipt {
            pieces,
            hops: Arc::clone(&self.pool.hops),
        })
    }
}

/// The queue of a node. Verification turns run as tasks on the runtime of the caller (which
/// must be inside one), at most `engine.config().threads` at once (0: one per core).
pub(crate) fn spawn(
    engine: Arc<Engine>,
    config: Batching,
    metrics: Arc<Metrics>,
    store: Store,
    clock: Arc<dyn Clock>,
) -> Queue {
    start(engine, config, metrics, store, clock).0
}

fn start(
    engine: Arc<Engine>,
    config: Batching,
    metrics: Arc<Metrics>,
    store: Store,
    clock: Arc<dyn Clock>,
) -> (Queue, Arc<Pool>) {
    let threads = match engine.config().threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let hops = Arc::new(Hops::default());
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
        hops: Arc::clone(&hops),
    });
    let depth = Arc::new(Depth::new(config.queue));
    metrics.add(Arc::clone(&depth) as Arc<dyn Component>);
    metrics.add(hops as Arc<dyn Component>);
    let queue = Queue {
        pool: Arc::clone(&pool),
        capacity: config.queue,
        depth,
        shares: Tally::default(),
        per_scanner: usize::MAX,
    };
    (queue, pool)
}

/// Requests waiting for a verification turn, and how many turns are running.
struct Waiting {
    fair: Fair<Job>,
    busy: usize,
}

/// What the connections and the verification turns share.
///
/// Work waits here, in fair order, until a turn takes it: a turn that finishes a batch takes
/// the next one itself, under the same lock a connection uses to see whether a turn is free.
/// No turn idles while work waits, no batch is taken before a turn can start it, and nothing
/// polls.
struct Pool {
    waiting: parking_lot::Mutex<Waiting>,
    threads: usize,
    max_batch: usize,
    engine: Arc<Engine>,
    /// Where a batch's marks go.
    store: Store,
    /// The runtime the turns (and the marks that are IO) run on.
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    /// The engine's `now` for each batch.
    clock: Arc<dyn Clock>,
    hops: Arc<Hops>,
}

/// Requests taken for one batch, and their tokens.
type Batch = (Vec<Job>, usize);

/// A running verification turn, counted in `Waiting::busy`; given back when it finds the queue
/// empty, or when dropped unfinished (its task cancelled).
struct Turn {
    pool: Arc<Pool>,
    counted: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.counted {
            self.pool.waiting.lock().busy -= 1;
        }
    }
}

impl Pool {
    /// The next batch, taken scanner by scanner (deficit round robin, [`Fair`]): a scanner with
    /// a deep backlog delays another's token by one turn, not by its backlog. Batches are small
    /// (max_batch, default 8, of requests queued in pieces of at most `PIECE` tokens), so a
    /// token that arrives waits for little work ahead of it.
    ///
    /// When the engine checks batches with one equation (`engine.batch`) and work is still
    /// waiting after a fair slice, the turn goes on taking, in the same fair order, up to
    /// [`BACKLOG_BATCH`] tokens: under a backlog the equation gets enough signatures to pay,
    /// and a turn's unit of work stays near two milliseconds. Multi-buffer calls need no more
    /// than a fair slice (8 tokens fill two calls), so turns stay short for the scanners
    /// waiting behind a flood.
    fn take(&self, waiting: &mut Waiting) -> Option<Batch> {
        let mut jobs = Vec::new();
        let mut tokens = 0;
        let limit = if matches!(
            self.engine.batching(),
            gatehouse_core::Batching::Equation(_)
        ) {
            BACKLOG_BATCH.max(self.max_batch)
        } else {
            self.max_batch
        };
        while tokens < self.max_batch || (tokens < limit && !waiting.fair.is_empty()) {
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

    /// Queues `jobs` and starts a turn for each of them while turns are free. A turn spawned
    /// from a runtime thread runs on that thread next (tokio's next-task slot), unless the
    /// runtime has an idle thread for a second one.
    fn offer(pool: &Arc<Self>, jobs: Vec<Job>) {
        let mut starts = 0;
        {
            let mut w = pool.waiting.lock();
            let n = jobs.len();
            for job in jobs {
                let key = Arc::clone(&job.scanner);
                w.fair.push(&key.id, job.tokens.len(), job);
            }
            while w.busy < pool.threads && starts < n {
                w.busy += 1;
                starts += 1;
            }
        }
        for _ in 0..starts {
            let turn = Turn {
                pool: Arc::clone(pool),
                counted: true,
            };
            pool.runtime.spawn(turn.work());
        }
    }

    /// Verifies one batch on this thread and answers its requests (or, with Redis, hands its
    /// marks to a task of their own on this runtime, which answers them).
    fn run(&self, (jobs, tokens): Batch) {
        self.metrics.batch(tokens);
        let here = std::thread::current().id();
        let mut items = Vec::with_capacity(tokens);
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            if job.read_on != here {
                self.hops.verify.fetch_add(1, Ordering::Relaxed);
            }
            let n = job.tokens.len();
            for work in job.tokens {
                let scanner = Arc::clone(&job.scanner);
                items.push(match work {
                    Work::Token(token, challenge) => Item {
                        challenge,
                        retry: job.retry,
                        ..Item::new(scanner, token)
                    },
                    Work::Mdoc(mdoc) => Item {
                        retry: job.retry,
                        mdoc: Some(mdoc),
                        ..Item::new(scanner, Vec::new())
                    },
                });
            }
            replies.push((n, job.reply, job.permit));
        }
        let deliver = move |verdicts: Vec<Verdict>| {
            let from = std::thread::current().id();
            let mut verdicts = verdicts.into_iter();
            for (n, reply, permit) in replies {
                let mut v: Vec<Verdict> = verdicts.by_ref().take(n).collect();
                // The engine answers every item; should it not, the rest are not judged.
                v.resize(n, Verdict::deny(Reason::Unavailable));
                drop(permit);
                let _ = reply.send((v, from));
            }
        };
        let now = self.clock.now();
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
                // The marks are IO: awaited by a task of their own, spawned on this thread,
                // while this turn goes on to the next batch.
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

impl Turn {
    /// One verification turn: batches from the queue until none waits. Between batches (about
    /// a millisecond of work each at most) the turn yields, so the other tasks of this runtime
    /// thread (other scanners' packets, the endpoint) run: a queue flood delays them by one
    /// batch, not by its backlog.
    async fn work(mut self) {
        loop {
            let batch = {
                let mut w = self.pool.waiting.lock();
                let batch = self.pool.take(&mut w);
                if batch.is_none() {
                    // Given back under the lock `offer` queues under: work queued after this
                    // sees the turn free and starts one.
                    w.busy -= 1;
                    self.counted = false;
                }
                batch
            };
            let Some(batch) = batch else {
                return;
            };
            self.pool.run(batch);
            tokio::task::yield_now().await;
        }
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
            mdoc: Default::default(),
        })
    }

    /// A queue of `queue` tokens, batches of up to 8, verified by up to `threads` turns.
    fn queue(threads: usize, queue: usize) -> (Queue, Arc<Pool>) {
        queue_on(threads, queue, gatehouse_core::BatchMode::Auto)
    }

    /// [`queue`] on an engine whose batch path is `batch`.
    fn queue_on(
        threads: usize,
        queue: usize,
        batch: gatehouse_core::BatchMode,
    ) -> (Queue, Arc<Pool>) {
        let engine = Engine::new(
            EngineConfig {
                threads,
                batch,
                ..EngineConfig::default()
            },
            TrustList::new(),
            ScannerRegistry::new(),
        )
        .unwrap();
        let config = Batching {
            max_batch: 8,
            queue,
        };
        start(
            Arc::new(engine),
            config,
            Arc::new(Metrics::new()),
            Store::Memory,
            Arc::new(gatehouse_core::SystemClock),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_is_answered_whole_and_the_turns_come_back_idle() {
        let (queue, pool) = queue(2, 10_000);
        // Three scanners, requests of 1 to 40 tokens (6,150 in all, many more than the two
        // turns take at once): every token is garbage, so every verdict is `malformed`.
        // (Verdict order within a request is checked end to end in tests/hostile.rs.)
        let mut receipts = Vec::new();
        for i in 0..300usize {
            let n = 1 + i % 40;
            let tokens = (0..n).map(|_| Work::token(vec![0u8; 3])).collect();
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
        // Every permit came back, and every turn was given back (a turn ends just after
        // answering its last batch).
        assert_eq!(queue.depth.tokens(), 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pool.waiting.lock().busy > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let w = pool.waiting.lock();
        assert_eq!(w.busy, 0);
        assert!(w.fair.is_empty());
    }

    /// Sends one garbage token as scanner `who` and waits for its verdict.
    async fn one(queue: &Queue, who: &str) -> Verdict {
        let receipt = queue
            .submit(scanner(who), vec![Work::token(vec![0u8; 3])], None)
            .unwrap();
        let (verdicts, busy, lost) = receipt.verdicts().await;
        assert_eq!((verdicts.len(), busy, lost), (1, 0, 0));
        verdicts[0]
    }

    #[tokio::test(flavor = "current_thread")]
    async fn at_low_load_a_request_is_verified_and_answered_on_the_thread_that_read_it() {
        let (queue, pool) = queue(1, 64);
        for i in 0..50 {
            assert_eq!(
                one(&queue, ["a", "b"][i % 2]).await.reason,
                Reason::Malformed
            );
        }
        assert_eq!(pool.hops.counts(), (0, 0));
        // The last turn ends when it next runs and finds the queue empty.
        for _ in 0..100 {
            if pool.waiting.lock().busy == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.waiting.lock().busy, 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_read_on_another_thread_counts_a_hop_each_way() {
        // The probe itself: a request queued from a thread outside the runtime is verified on
        // the runtime's thread and answered back to the outside thread.
        let (queue, pool) = queue(1, 64);
        let queue = Arc::new(queue);
        let outside = Arc::clone(&queue);
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = oneshot::channel();
        std::thread::spawn(move || {
            let receipt = outside
                .submit(scanner("a"), vec![Work::token(vec![0u8; 3])], None)
                .unwrap();
            let verdicts = handle.block_on(receipt.verdicts());
            let _ = tx.send(verdicts.0[0]);
        });
        let verdict = rx.await.unwrap();
        assert_eq!(verdict.reason, Reason::Malformed);
        assert_eq!(pool.hops.counts(), (1, 1));
    }

    /// Under a deep flood (one scanner with 8 requests of 128 tokens queued), another
    /// scanner's token waits for one small batch: with multi-buffer calls a turn takes a fair
    /// slice (8 tokens) and no more, so the gate's token goes in the second batch and when its
    /// verdict arrives the flood has had 16 tokens answered (the batch ahead of it and its own
    /// batch's). With the equation a turn under a backlog takes up to 32 (the equation needs
    /// them): 32. Before, multi-buffer turns took 32 too.
    #[tokio::test(flavor = "current_thread")]
    async fn under_a_deep_flood_another_scanners_token_waits_for_one_small_batch() {
        use gatehouse_core::BatchMode;
        let runs = gatehouse_core::Batching::resolve(BatchMode::Multibuffer, false, 0).is_ok();
        if !runs {
            assert!(
                std::env::var_os("GATEHOUSE_REQUIRE_MB").is_none_or(|v| v != "1"),
                "GATEHOUSE_REQUIRE_MB=1 but multi-buffer cannot run here"
            );
            return;
        }
        for (batch, most) in [(BatchMode::Multibuffer, 16), (BatchMode::Equation, 32)] {
            let (queue, _pool) = queue_on(1, 10_000, batch);
            let queue = queue.with_scanner_share(10_000);
            let flood: Vec<Receipt> = (0..8)
                .map(|_| {
                    let tokens = (0..128).map(|_| Work::token(vec![0u8; 3])).collect();
                    queue.submit(scanner("flood"), tokens, None).unwrap()
                })
                .collect();
            let gate = queue
                .submit(scanner("gate"), vec![Work::token(vec![0u8; 3])], None)
                .unwrap();
            // Nothing ran yet (one thread, not yielded): the turn starts now.
            let (verdicts, _, _) = gate.verdicts().await;
            assert_eq!(verdicts[0].reason, Reason::Malformed);
            let mut answered = 0;
            for mut r in flood {
                for (n, rx) in &mut r.pieces {
                    if let Some(rx) = rx {
                        if rx.try_recv().is_ok() {
                            answered += *n;
                        }
                    }
                }
            }
            assert!(
                answered <= most,
                "{batch:?}: {answered} flood tokens answered before the gate's one"
            );
            assert!(
                answered > 0,
                "{batch:?}: the flood was served too (fair order)"
            );
        }
    }
}
