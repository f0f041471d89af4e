//! One scanner connection and its request streams.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_protocol::{
    kind, request_id, DecodeError, FrameHeader, Reason, Request, Response, Verdict, WireErrorCode,
    FRAME_HEADER_LEN, RETRY_KEY_LEN,
};
use quinn::{Connection, Incoming, ReadExactError, RecvStream, SendStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Handshake, Held, Refusal};
use crate::batcher::{Queue, Receipt, Refused};
use crate::budget::Charge;
use crate::metrics::{Kind, Metrics};
use crate::settings::Limits;
use crate::{codes, tls};
use gatehouse_core::{Engine, Scanner};

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
    /// The caps and what counts against them.
    pub admission: Arc<Admission>,
}

/// Serves one connection: handshake, scanner lookup, then its streams, until the peer closes,
/// the scanner is removed, or the drain ends it. `_held` counts it in the connection gauge;
/// `handshake` holds its handshake's share of the limits until the handshake is over.
pub(crate) async fn connection(
    shared: Arc<Shared>,
    incoming: Incoming,
    handshake: Handshake,
    _held: Held,
) {
    let remote = incoming.remote_address();
    let failed = |what: &str| {
        shared.admission.handshake_failed();
        debug!(%remote, "handshake failed: {what}");
    };
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            // The first flight already failed (no common ALPN, for example): a failed
            // handshake too.
            failed(&e.to_string());
            return;
        }
    };
    tokio::pin!(connecting);
    let limits = &shared.limits;
    // Under pressure a handshake gets the short timeout: a half-open connection holds a slot
    // for a second, not ten. A scanner on a working network finishes in milliseconds.
    let result =
        match tokio::time::timeout(limits.pressure_handshake_timeout, &mut connecting).await {
            Ok(r) => Some(r),
            Err(_) => {
                if shared.admission.under_pressure() {
                    None
                } else {
                    let rest = limits
                        .handshake_timeout
                        .saturating_sub(limits.pressure_handshake_timeout);
                    tokio::time::timeout(rest, &mut connecting).await.ok()
                }
            }
        };
    drop(handshake);
    let conn = match result {
        Some(Ok(conn)) => conn,
        // Certificate refusals were also logged by the verifier, with their cause.
        Some(Err(e)) => return failed(&e.to_string()),
        None => return failed("timed out"),
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
    let _admitted = match shared.admission.admit_scanner(&id) {
        Ok(admitted) => admitted,
        Err(Refusal::TooManyConnections) => {
            debug!(scanner = %id, "connection refused: the scanner is at its connection limit");
            conn.close(
                codes::TOO_MANY_CONNECTIONS,
                b"too many connections for this scanner",
            );
            return;
        }
        Err(Refusal::OverBudget) => {
            conn.close(codes::OVER_BUDGET, b"server over its memory budget");
            return;
        }
    };
    // Request bodies this connection holds, read and not yet answered.
    let buffered = Arc::new(Semaphore::new(limits.max_buffered_per_connection));
    info!(scanner = %id, %remote, "scanner connected");

    let mut streams = JoinSet::new();
    let mut drain = shared.drain.clone();
    let mut check = tokio::time::interval(REGISTRY_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let draining = loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let held = shared.admission.stream();
                    streams.spawn(stream(
                        Arc::clone(&shared),
                        conn.clone(),
                        Arc::clone(&id),
                        Arc::clone(&buffered),
                        (send, recv),
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
        shared.admission.refused_unknown_scanner();
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
        rx: Receipt,
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
                let (verdicts, busy, lost) = rx.verdicts().await;
                if busy > 0 {
                    metrics.shed(role, Reason::Busy, busy);
                }
                if lost > 0 {
                    metrics.shed(role, Reason::Unavailable, lost);
                }
                debug_assert_eq!(verdicts.len(), tokens);
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
    buffered: Arc<Semaphore>,
    (mut send, mut recv): (SendStream, RecvStream),
    _held: Held,
) {
    let (tx, mut rx) = mpsc::channel::<(Pending, Option<Hold>)>(PIPELINE_DEPTH);
    let reader = read_requests(&shared, &conn, &id, &buffered, &mut recv, tx);
    let writer = async {
        while let Some((p, hold)) = rx.recv().await {
            let (response, started) = p.resolve(&shared.metrics).await;
            // The request's bytes are gone once its verdicts are back.
            drop(hold);
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

/// A request body's hold on the connection's buffer and on the global budget.
struct Hold {
    _buffered: OwnedSemaphorePermit,
    _charge: Charge,
}

async fn read_requests(
    shared: &Shared,
    conn: &Connection,
    id: &str,
    buffered: &Arc<Semaphore>,
    recv: &mut RecvStream,
    tx: mpsc::Sender<(Pending, Option<Hold>)>,
) {
    let end = read_loop(shared, conn, id, buffered, recv, &tx).await;
    if let End::Stop(code) = end {
        let _ = recv.stop(code);
    }
}

async fn read_loop(
    shared: &Shared,
    conn: &Connection,
    id: &str,
    buffered: &Arc<Semaphore>,
    recv: &mut RecvStream,
    tx: &mpsc::Sender<(Pending, Option<Hold>)>,
) -> End {
    let metrics = &shared.metrics;
    let mut drain = shared.drain.clone();
    let error = |code: WireErrorCode, message: String| {
        metrics.wire_error(code);
        (
            Pending::Ready(
                Response::Error {
                    id: 0,
                    code,
                    message,
                },
                Instant::now(),
            ),
            None,
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

        // A scanner at its share of the queue waits, its request unread (flow control holds
        // it back), before the request is read and perhaps refused: answering `busy` at once
        // would let a flooder make the server read and refuse as fast as it can resend.
        if h.kind != kind::PING && shared.queue.saturated(id) {
            shared.admission.busy_hold();
            tokio::select! {
                biased;
                _ = drain.wait_for(|d| *d) => {}
                _ = tokio::time::sleep(shared.limits.busy_hold) => {}
            }
        }

        // Room for the body before reading it: in this connection's buffer (waiting for it
        // holds the peer back through flow control), then in the global budget (none left:
        // the request is refused unread, the peer may retry).
        let room = tokio::time::timeout(
            shared.limits.body_timeout,
            Arc::clone(buffered).acquire_many_owned(h.len as u32),
        )
        .await;
        let Ok(Ok(in_buffer)) = room else {
            return End::Stop(codes::STREAM_TIMEOUT);
        };
        let Some(charge) = shared.admission.charge_body(h.len) else {
            debug!("memory budget spent: refusing a request unread");
            return End::Stop(codes::OVER_BUDGET);
        };
        let hold = Hold {
            _buffered: in_buffer,
            _charge: charge,
        };
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
                if let (Pending::Ready(Response::Error { id, .. }, _), _) = &mut response {
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
        if tx.send((pending, Some(hold))).await.is_err() {
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
