//! One scanner connection and its request streams.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_protocol::{
    kind, request_id, DecodeError, FrameHeader, Reason, Request, Response, Verdict, WireErrorCode,
    FRAME_HEADER_LEN, RETRY_KEY_LEN,
};
use quinn::{Connection, Incoming, ReadExactError, RecvStream, SendStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::batcher::{Queue, Refused};
use super::metrics::{Kind, Metrics};
use super::{codes, tls, Limits};
use crate::{Engine, Scanner};

/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle connection checks that its scanner is still registered.
const REGISTRY_CHECK: Duration = Duration::from_secs(1);
/// How long a finished stream waits for the peer to acknowledge its responses.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes reserved for a frame body before any of it has arrived.
const INITIAL_BODY_CAPACITY: usize = 4096;
/// Requests read ahead of their responses on one pipelined stream.
const PIPELINE_DEPTH: usize = 32;

/// What every connection task shares.
pub(crate) struct Shared {
    pub engine: Arc<Engine>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub queue: Queue,
    /// Becomes `true` when the drain starts.
    pub drain: watch::Receiver<bool>,
}

/// A gauge a task counts itself in.
#[derive(Clone, Copy)]
pub(crate) enum Gauge {
    Connections,
    Streams,
}

/// One unit of a gauge, taken before a task is spawned and moved into it: released when the
/// task ends, however it ends (even aborted before it first ran).
pub(crate) struct Held {
    metrics: Arc<Metrics>,
    gauge: Gauge,
}

impl Held {
    pub fn new(metrics: &Arc<Metrics>, gauge: Gauge) -> Held {
        Self::counter(metrics, gauge).fetch_add(1, Ordering::Relaxed);
        Held {
            metrics: Arc::clone(metrics),
            gauge,
        }
    }

    fn counter(metrics: &Metrics, gauge: Gauge) -> &AtomicI64 {
        match gauge {
            Gauge::Connections => &metrics.connections,
            Gauge::Streams => &metrics.streams,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        Self::counter(&self.metrics, self.gauge).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection: handshake, scanner lookup, then its streams, until the peer closes,
/// the scanner is removed, or the drain ends it. `_held` counts it in the connection gauge.
pub(crate) async fn connection(shared: Arc<Shared>, incoming: Incoming, _held: Held) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            debug!(%remote, "incoming connection failed: {e}");
            return;
        }
    };
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            // Certificate refusals were also logged by the verifier, with their cause.
            shared
                .metrics
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            debug!(%remote, "handshake failed: {e}");
            return;
        }
        Err(_) => {
            shared
                .metrics
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            debug!(%remote, "handshake timed out");
            return;
        }
    };
    let Some(id) = tls::scanner_id(&conn) else {
        // The verifier insists on a usable CN, so this is only reachable if that changes.
        refuse(&shared, &conn, "(none)");
        return;
    };
    let id: Arc<str> = Arc::from(id);
    if shared.engine.scanner(&id).is_none() {
        // Removed between the certificate check and now.
        refuse(&shared, &conn, &id);
        return;
    }
    info!(scanner = %id, %remote, "scanner connected");

    let mut streams = JoinSet::new();
    let mut drain = shared.drain.clone();
    let mut check = tokio::time::interval(REGISTRY_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let draining = loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let held = Held::new(&shared.metrics, Gauge::Streams);
                    streams.spawn(stream(
                        Arc::clone(&shared),
                        conn.clone(),
                        Arc::clone(&id),
                        send,
                        recv,
                        held,
                    ));
                }
                Err(e) => {
                    debug!(scanner = %id, "connection ended: {e}");
                    break false;
                }
            },
            _ = drain.wait_for(|d| *d) => break true,
            _ = check.tick() => {
                if shared.engine.scanner(&id).is_none() {
                    refuse(&shared, &conn, &id);
                    break false;
                }
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    };

    if draining {
        // Requests already read finish (each stream stops reading new ones); then goodbye.
        let finished = tokio::time::timeout(shared.limits.drain_timeout, async {
            while streams.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            warn!(scanner = %id, "drain timed out with requests in flight");
        }
        conn.close(codes::SHUTDOWN, b"server shutting down");
    }
    streams.abort_all();
    while streams.join_next().await.is_some() {}
    debug!(scanner = %id, "connection task done");
}

/// Closes a connection whose scanner is not registered.
fn refuse(shared: &Shared, conn: &Connection, id: &str) {
    if conn.close_reason().is_none() {
        shared
            .metrics
            .refused_unknown_scanner
            .fetch_add(1, Ordering::Relaxed);
        warn!(scanner = %id, "scanner not registered: closing its connection");
        conn.close(codes::UNKNOWN_SCANNER, b"unknown scanner");
    }
}

/// A response in the making, in request order.
enum Pending {
    /// Known at once (pong, error, busy).
    Ready(Response, Instant),
    /// Waiting for the engine.
    Verdicts {
        id: u64,
        tokens: usize,
        role: usize,
        rx: oneshot::Receiver<Vec<Verdict>>,
        started: Instant,
    },
}

impl Pending {
    async fn resolve(self, metrics: &Metrics) -> (Response, Instant) {
        match self {
            Pending::Ready(r, started) => (r, started),
            Pending::Verdicts {
                id,
                tokens,
                role,
                rx,
                started,
            } => {
                let verdicts = match rx.await {
                    Ok(v) => v,
                    Err(_) => {
                        metrics.shed(role, Reason::Unavailable, tokens);
                        vec![Verdict::deny(Reason::Unavailable); tokens]
                    }
                };
                (Response::Verdicts { id, verdicts }, started)
            }
        }
    }
}

/// One request stream: a reader and a writer joined by a short queue of pending responses, so
/// pipelined requests are verified together and answered in order.
async fn stream(
    shared: Arc<Shared>,
    conn: Connection,
    id: Arc<str>,
    mut send: SendStream,
    mut recv: RecvStream,
    _held: Held,
) {
    let (tx, mut rx) = mpsc::channel::<Pending>(PIPELINE_DEPTH);
    let reader = read_requests(&shared, &conn, &id, &mut recv, tx);
    let writer = async {
        while let Some(p) = rx.recv().await {
            let (response, started) = p.resolve(&shared.metrics).await;
            if let Err(e) = send.write_all(&response.encode()).await {
                debug!("response not delivered: {e}");
                break;
            }
            shared.metrics.latency(started.elapsed());
        }
        // Dropping `rx` ends the reader at its next request.
        drop(rx);
        let _ = send.finish();
    };
    tokio::join!(reader, writer);
    // Until the peer has acknowledged the responses, they may still need retransmitting; a
    // drain closes the connection only after this (closing discards unacknowledged data).
    let _ = tokio::time::timeout(ACK_TIMEOUT, send.stopped()).await;
}

/// What ended the read loop of a stream.
enum End {
    /// The client finished the stream, went away, or the drain started.
    Done,
    /// An error response was queued: stop the client's sending side.
    Stop(quinn::VarInt),
}

async fn read_requests(
    shared: &Shared,
    conn: &Connection,
    id: &str,
    recv: &mut RecvStream,
    tx: mpsc::Sender<Pending>,
) {
    let end = read_loop(shared, conn, id, recv, &tx).await;
    if let End::Stop(code) = end {
        let _ = recv.stop(code);
    }
}

async fn read_loop(
    shared: &Shared,
    conn: &Connection,
    id: &str,
    recv: &mut RecvStream,
    tx: &mpsc::Sender<Pending>,
) -> End {
    let metrics = &shared.metrics;
    let mut drain = shared.drain.clone();
    let error = |code: WireErrorCode, message: String| {
        metrics.wire_error(code);
        Pending::Ready(
            Response::Error {
                id: 0,
                code,
                message,
            },
            Instant::now(),
        )
    };
    loop {
        // The next frame header; a stream idle between requests may be closed by the drain.
        let mut header = [0u8; FRAME_HEADER_LEN];
        let read = tokio::select! {
            biased;
            r = tokio::time::timeout(shared.limits.idle_timeout, recv.read_exact(&mut header)) => r,
            _ = drain.wait_for(|d| *d) => return End::Done,
        };
        match read {
            Ok(Ok(())) => {}
            Ok(Err(ReadExactError::FinishedEarly(0))) => return End::Done,
            Ok(Err(ReadExactError::FinishedEarly(_))) => {
                let _ = tx
                    .send(error(
                        WireErrorCode::MalformedFrame,
                        "frame header truncated".into(),
                    ))
                    .await;
                return End::Done;
            }
            Ok(Err(ReadExactError::ReadError(e))) => {
                debug!("stream read ended: {e}");
                return End::Done;
            }
            Err(_) => return End::Stop(codes::STREAM_TIMEOUT),
        }

        // Bound the length before reading or allocating anything.
        let h = match FrameHeader::decode(&header) {
            Ok(h) => h,
            Err(DecodeError::UnsupportedVersion(v)) => {
                let _ = tx
                    .send(error(
                        WireErrorCode::UnsupportedVersion,
                        format!("wire version {v} is not supported (this server speaks 1)"),
                    ))
                    .await;
                return End::Stop(codes::BAD_FRAME);
            }
            Err(e) => {
                let _ = tx
                    .send(error(WireErrorCode::FrameTooLarge, e.to_string()))
                    .await;
                return End::Stop(codes::BAD_FRAME);
            }
        };
        if h.len > shared.limits.max_frame_body {
            let _ = tx
                .send(error(
                    WireErrorCode::FrameTooLarge,
                    format!(
                        "frame body of {} bytes exceeds the limit of {}",
                        h.len, shared.limits.max_frame_body
                    ),
                ))
                .await;
            return End::Stop(codes::BAD_FRAME);
        }
        if !matches!(h.kind, kind::VERIFY | kind::VERIFY_BATCH | kind::PING) {
            let _ = tx
                .send(error(
                    WireErrorCode::UnknownKind,
                    format!("frame kind {:#04x} is not a request", h.kind),
                ))
                .await;
            return End::Stop(codes::BAD_FRAME);
        }

        let body =
            match tokio::time::timeout(shared.limits.body_timeout, read_body(recv, h.len)).await {
                Ok(Ok(body)) => body,
                Ok(Err(ReadExactError::FinishedEarly(_))) => {
                    let _ = tx
                        .send(error(
                            WireErrorCode::MalformedFrame,
                            "frame body truncated".into(),
                        ))
                        .await;
                    return End::Done;
                }
                Ok(Err(ReadExactError::ReadError(e))) => {
                    debug!("stream read ended: {e}");
                    return End::Done;
                }
                Err(_) => return End::Stop(codes::STREAM_TIMEOUT),
            };
        let started = Instant::now();
        let request = match Request::decode(h.kind, &body) {
            Ok(r) => r,
            Err(e) => {
                // SPEC §8.4: the id is echoed whenever it could be read (it is the first key).
                let mut response = error(WireErrorCode::MalformedFrame, e.to_string());
                if let Pending::Ready(Response::Error { id, .. }, _) = &mut response {
                    *id = request_id(&body).unwrap_or(0);
                }
                let _ = tx.send(response).await;
                return End::Stop(codes::BAD_FRAME);
            }
        };

        // Looked up per request: a reload may change the role, or remove the scanner.
        let Some(scanner) = shared.engine.scanner(id) else {
            refuse(shared, conn, id);
            return End::Done;
        };
        let pending = match request {
            Request::Ping { id } => {
                metrics.request(Kind::Ping);
                Pending::Ready(Response::Pong { id }, started)
            }
            Request::Verify {
                id,
                token,
                challenge,
                retry,
            } => {
                metrics.request(Kind::Verify);
                submit(
                    shared,
                    scanner,
                    id,
                    vec![(token, challenge)],
                    retry,
                    started,
                )
            }
            Request::VerifyBatch { id, tokens, retry } => {
                metrics.request(Kind::VerifyBatch);
                let tokens = tokens.into_iter().map(|t| (t, None)).collect();
                submit(shared, scanner, id, tokens, retry, started)
            }
        };
        if tx.send(pending).await.is_err() {
            return End::Done;
        }
    }
}

/// Reads a frame body of `len` bytes. Memory grows with the bytes that actually arrive (which
/// flow control bounds), not with the length a header claims.
async fn read_body(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>, ReadExactError> {
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => return Err(ReadExactError::FinishedEarly(body.len())),
        }
    }
    Ok(body)
}

fn submit(
    shared: &Shared,
    scanner: Arc<Scanner>,
    id: u64,
    tokens: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    retry: Option<[u8; RETRY_KEY_LEN]>,
    started: Instant,
) -> Pending {
    let n = tokens.len();
    if n == 0 {
        return Pending::Ready(
            Response::Verdicts {
                id,
                verdicts: vec![],
            },
            started,
        );
    }
    let role = scanner.role.index();
    match shared.queue.submit(scanner, tokens, retry) {
        Ok(rx) => Pending::Verdicts {
            id,
            tokens: n,
            role,
            rx,
            started,
        },
        Err(refused) => {
            let reason = refused.reason();
            if refused == Refused::Busy {
                debug!(tokens = n, "queue full: answering busy");
            }
            shared.metrics.shed(role, reason, n);
            Pending::Ready(
                Response::Verdicts {
                    id,
                    verdicts: vec![Verdict::deny(reason); n],
                },
                started,
            )
        }
    }
}
