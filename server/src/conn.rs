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
use crate::batcher::{Queue, Receipt, Refused, Work};
use crate::budget::Charge;
use crate::metrics::{Kind, Metrics};
use crate::settings::Limits;
use crate::{codes, tls};
use gatehouse_core::{Engine, MdocItem, Scanner};

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
    let result = tokio::select! {
        r = complete_handshake(&shared, incoming) => r,
        () = handshake.evicted() => Err("evicted by a newer handshake from its address".into()),
    };
    drop(handshake);
    let conn = match result {
        Ok(conn) => conn,
        Err(what) => {
            // Certificate refusals were also logged by the verifier, with their cause.
            shared.admission.handshake_failed();
            debug!(%remote, "handshake failed: {what}");
            return;
        }
    };
    let Some(id) = identify(&shared, &conn) else {
        return;
    };
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
    tls::full_streams(&conn, &shared.limits);
    info!(scanner = %id, %remote, "scanner connected");
    let mut streams = JoinSet::new();
    if serve_streams(&shared, &conn, &id, &mut streams).await {
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

/// The handshake, within its time: under pressure a handshake gets the short timeout (a
/// half-open connection holds a slot for a second, not ten; a scanner on a working network
/// finishes in milliseconds). `Err` says why it failed.
async fn complete_handshake(shared: &Shared, incoming: Incoming) -> Result<Connection, String> {
    // The first flight may already have failed (no common ALPN, for example).
    let connecting = incoming.accept().map_err(|e| e.to_string())?;
    tokio::pin!(connecting);
    let limits = &shared.limits;
    let result =
        match tokio::time::timeout(limits.pressure_handshake_timeout, &mut connecting).await {
            Ok(r) => Some(r),
            Err(_) if shared.admission.under_pressure() => None,
            Err(_) => {
                let rest = limits
                    .handshake_timeout
                    .saturating_sub(limits.pressure_handshake_timeout);
                tokio::time::timeout(rest, &mut connecting).await.ok()
            }
        };
    match result {
        Some(r) => r.map_err(|e| e.to_string()),
        None => Err("timed out".into()),
    }
}

/// The registered scanner a completed handshake belongs to; `None` (the connection closed
/// with `unknown scanner`) when it is not, or no longer, registered.
fn identify(shared: &Shared, conn: &Connection) -> Option<Arc<str>> {
    let Some(id) = tls::scanner_id(conn) else {
        // The verifier insists on a usable CN, so this is only reachable if that changes.
        refuse(shared, conn, "(none)");
        return None;
    };
    let id: Arc<str> = Arc::from(id);
    if shared.engine.scanner(&id).is_none() {
        // Removed between the certificate check and now.
        refuse(shared, conn, &id);
        return None;
    }
    Some(id)
}

/// Accepts the connection's request streams until the peer goes, the scanner is removed from
/// the registry (checked every [`REGISTRY_CHECK`] while idle) or the drain starts; `true` for
/// the drain.
async fn serve_streams(
    shared: &Arc<Shared>,
    conn: &Connection,
    id: &Arc<str>,
    streams: &mut JoinSet<()>,
) -> bool {
    // Request bodies this connection holds, read and not yet answered.
    let buffered = Arc::new(Semaphore::new(shared.limits.max_buffered_per_connection));
    let mut drain = shared.drain.clone();
    let mut check = tokio::time::interval(REGISTRY_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let held = shared.admission.stream();
                    streams.spawn(stream(
                        Arc::clone(shared),
                        conn.clone(),
                        Arc::clone(id),
                        Arc::clone(&buffered),
                        (send, recv),
                        held,
                    ));
                }
                Err(e) => {
                    debug!(scanner = %id, "connection ended: {e}");
                    return false;
                }
            },
            _ = drain.wait_for(|d| *d) => return true,
            _ = check.tick() => {
                if shared.engine.scanner(id).is_none() {
                    refuse(shared, conn, id);
                    return false;
                }
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
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

/// Reads the requests of one stream, in order, and queues what each will be answered; stops the
/// peer's sending side with the code of whatever ended it.
async fn read_requests(
    shared: &Shared,
    conn: &Connection,
    id: &str,
    buffered: &Arc<Semaphore>,
    recv: &mut RecvStream,
    tx: mpsc::Sender<(Pending, Option<Hold>)>,
) {
    let mut reader = Reader {
        shared,
        conn,
        id,
        buffered,
        recv,
        tx: &tx,
        drain: shared.drain.clone(),
    };
    if let End::Stop(code) = reader.run().await {
        let _ = reader.recv.stop(code);
    }
}

/// The read side of one stream.
struct Reader<'a> {
    shared: &'a Shared,
    conn: &'a Connection,
    /// The scanner's id.
    id: &'a str,
    /// This connection's buffer for request bodies.
    buffered: &'a Arc<Semaphore>,
    recv: &'a mut RecvStream,
    tx: &'a mpsc::Sender<(Pending, Option<Hold>)>,
    drain: watch::Receiver<bool>,
}

impl Reader<'_> {
    /// One request after another until the stream ends, a frame is refused or the drain starts.
    async fn run(&mut self) -> End {
        loop {
            let header = match self.next_header().await {
                Ok(h) => h,
                Err(end) => return end,
            };
            self.hold_while_saturated(&header).await;
            let hold = match self.reserve(&header).await {
                Ok(hold) => hold,
                Err(end) => return end,
            };
            let body = match self.body(&header).await {
                Ok(body) => body,
                Err(end) => return end,
            };
            let started = Instant::now();
            let request = match Request::decode(header.kind, &body) {
                Ok(r) => r,
                Err(e) => {
                    // SPEC §8.4: the id is echoed whenever it could be read (it is the first
                    // key).
                    let id = request_id(&body).unwrap_or(0);
                    let message = e.to_string();
                    return self
                        .refuse_frame(
                            WireErrorCode::MalformedFrame,
                            message,
                            id,
                            End::Stop(codes::BAD_FRAME),
                        )
                        .await;
                }
            };
            // Looked up per request: a reload may change the role, or remove the scanner.
            let Some(scanner) = self.shared.engine.scanner(self.id) else {
                refuse(self.shared, self.conn, self.id);
                return End::Done;
            };
            let pending = self.pending(scanner, request, started);
            if self.tx.send((pending, Some(hold))).await.is_err() {
                return End::Done;
            }
        }
    }

    /// Queues an error response (counted by code) and ends the stream with `end`.
    async fn refuse_frame(&self, code: WireErrorCode, message: String, id: u64, end: End) -> End {
        self.shared.metrics.wire_error(code);
        let response = Response::Error { id, code, message };
        let _ = self
            .tx
            .send((Pending::Ready(response, Instant::now()), None))
            .await;
        end
    }

    /// The next frame header, checked (version, size within the limit, a request kind) before
    /// anything is read or allocated for its body. A stream idle between requests may be
    /// closed by the drain or the idle timeout.
    async fn next_header(&mut self) -> Result<FrameHeader, End> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        let limits = &self.shared.limits;
        let read = tokio::select! {
            biased;
            r = tokio::time::timeout(limits.idle_timeout, self.recv.read_exact(&mut header)) => r,
            _ = self.drain.wait_for(|d| *d) => return Err(End::Done),
        };
        match read {
            Ok(Ok(())) => {}
            Ok(Err(ReadExactError::FinishedEarly(0))) => return Err(End::Done),
            Ok(Err(ReadExactError::FinishedEarly(_))) => {
                let message = "frame header truncated".into();
                let code = WireErrorCode::MalformedFrame;
                return Err(self.refuse_frame(code, message, 0, End::Done).await);
            }
            Ok(Err(ReadExactError::ReadError(e))) => {
                debug!("stream read ended: {e}");
                return Err(End::Done);
            }
            Err(_) => return Err(End::Stop(codes::STREAM_TIMEOUT)),
        }
        let (code, message) = match FrameHeader::decode(&header) {
            Err(DecodeError::UnsupportedVersion(v)) => (
                WireErrorCode::UnsupportedVersion,
                format!("wire version {v} is not supported (this server speaks 1)"),
            ),
            Err(e) => (WireErrorCode::FrameTooLarge, e.to_string()),
            Ok(h) if h.len > limits.max_frame_body => (
                WireErrorCode::FrameTooLarge,
                format!(
                    "frame body of {} bytes exceeds the limit of {}",
                    h.len, limits.max_frame_body
                ),
            ),
            Ok(h)
                if !matches!(
                    h.kind,
                    kind::VERIFY | kind::VERIFY_BATCH | kind::PING | kind::VERIFY_MDOC
                ) =>
            {
                (
                    WireErrorCode::UnknownKind,
                    format!("frame kind {:#04x} is not a request", h.kind),
                )
            }
            Ok(h) => return Ok(h),
        };
        let end = End::Stop(codes::BAD_FRAME);
        Err(self.refuse_frame(code, message, 0, end).await)
    }

    /// A scanner at its share of the queue waits, its request unread (flow control holds it
    /// back), before the request is read and perhaps refused: answering `busy` at once would
    /// let a flooder make the server read and refuse as fast as it can resend.
    async fn hold_while_saturated(&mut self, header: &FrameHeader) {
        if header.kind != kind::PING && self.shared.queue.saturated(self.id) {
            self.shared.admission.busy_hold();
            tokio::select! {
                biased;
                _ = self.drain.wait_for(|d| *d) => {}
                _ = tokio::time::sleep(self.shared.limits.busy_hold) => {}
            }
        }
    }

    /// Room for the body before reading it: in this connection's buffer (waiting for it holds
    /// the peer back through flow control), then in the global budget (none left: the request
    /// is refused unread, the peer may retry).
    async fn reserve(&self, header: &FrameHeader) -> Result<Hold, End> {
        let room = tokio::time::timeout(
            self.shared.limits.body_timeout,
            Arc::clone(self.buffered).acquire_many_owned(header.len as u32),
        )
        .await;
        let Ok(Ok(in_buffer)) = room else {
            return Err(End::Stop(codes::STREAM_TIMEOUT));
        };
        let Some(charge) = self.shared.admission.charge_body(header.len) else {
            debug!("memory budget spent: refusing a request unread");
            return Err(End::Stop(codes::OVER_BUDGET));
        };
        Ok(Hold {
            _buffered: in_buffer,
            _charge: charge,
        })
    }

    /// The frame body, within the body timeout.
    async fn body(&mut self, header: &FrameHeader) -> Result<Vec<u8>, End> {
        let timeout = self.shared.limits.body_timeout;
        match tokio::time::timeout(timeout, read_body(self.recv, header.len)).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(ReadExactError::FinishedEarly(_))) => {
                let message = "frame body truncated".into();
                let code = WireErrorCode::MalformedFrame;
                Err(self.refuse_frame(code, message, 0, End::Done).await)
            }
            Ok(Err(ReadExactError::ReadError(e))) => {
                debug!("stream read ended: {e}");
                Err(End::Done)
            }
            Err(_) => Err(End::Stop(codes::STREAM_TIMEOUT)),
        }
    }

    /// What a decoded request will be answered: a pong now, or verdicts from the queue.
    fn pending(&self, scanner: Arc<Scanner>, request: Request, started: Instant) -> Pending {
        let metrics = &self.shared.metrics;
        match request {
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
                let tokens = vec![Work::Token(token, challenge)];
                submit(self.shared, scanner, id, tokens, retry, started)
            }
            Request::VerifyBatch { id, tokens, retry } => {
                metrics.request(Kind::VerifyBatch);
                let tokens = tokens.into_iter().map(Work::token).collect();
                submit(self.shared, scanner, id, tokens, retry, started)
            }
            Request::VerifyMdoc(m) => {
                metrics.request(Kind::VerifyMdoc);
                let (id, retry) = (m.id, m.retry);
                let work = vec![Work::Mdoc(Arc::new(MdocItem::from(m)))];
                submit(self.shared, scanner, id, work, retry, started)
            }
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
    tokens: Vec<Work>,
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
