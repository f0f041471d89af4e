//! The micro-batcher: tokens from every connection, through one bounded queue, to the engine in
//! batches.
//!
//! It runs on a dedicated OS thread rather than a runtime task: tokio's timer wheel has a
//! 1 ms resolution, so a 200 µs deadline could only be kept by spinning; a blocking
//! `recv_timeout` on a thread keeps it for free. The thread only moves requests; the signature
//! checks run on the engine's rayon pool ([`Engine::submit`]), and each request's verdicts go
//! back to its stream through a oneshot channel.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gatehouse_protocol::{Reason, Verdict};
use tokio::sync::oneshot;

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
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.metrics
            .queue_depth
            .fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

/// One request's tokens on their way to the engine.
struct Job {
    scanner: Arc<Scanner>,
    tokens: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    retry: Option<[u8; gatehouse_protocol::RETRY_KEY_LEN]>,
    reply: oneshot::Sender<Vec<Verdict>>,
    enqueued: Instant,
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
}

impl Queue {
    /// Queues one request's tokens (each with its challenge); the verdicts, in order, arrive on
    /// the returned channel. Never blocks.
    pub fn submit(
        &self,
        scanner: Arc<Scanner>,
        tokens: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        retry: Option<[u8; gatehouse_protocol::RETRY_KEY_LEN]>,
    ) -> Result<oneshot::Receiver<Vec<Verdict>>, Refused> {
        let n = tokens.len();
        let before = self.metrics.queue_depth.fetch_add(n, Ordering::Relaxed);
        let permit = Permit {
            tokens: n,
            metrics: Arc::clone(&self.metrics),
        };
        // An idle server takes any one request, so a batch larger than a tiny queue still
        // makes progress.
        if before > 0 && before + n > self.capacity {
            return Err(Refused::Busy);
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            scanner,
            tokens,
            retry,
            reply,
            enqueued: Instant::now(),
            permit,
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(Refused::Busy),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Unavailable),
        }
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
    // already queued: at low load a token waits for nobody. Only when every thread is busy does
    // the batcher hold a batch open (up to max_batch tokens or max_wait), so work accumulates
    // into larger batches exactly when batching pays.
    let threads = match engine.config().threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let in_flight: InFlight = Arc::default();
    while let Ok(first) = rx.recv() {
        let deadline = first.enqueued + config.max_wait;
        let mut tokens = first.tokens.len();
        let mut jobs = vec![first];
        let mut disconnected = false;
        while tokens < config.max_batch {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
                Err(TryRecvError::Empty) => {
                    if in_flight.load(Ordering::Acquire) < threads {
                        break;
                    }
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        break;
                    };
                    match rx.recv_timeout(left) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    }
                }
            };
            tokens += job.tokens.len();
            jobs.push(job);
        }
        dispatch(engine, shell, jobs, tokens, metrics, &in_flight);
        if disconnected {
            break;
        }
    }
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
