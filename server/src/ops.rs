//! The operations endpoint: `/metrics`, `/healthz` and `/readyz` over HTTP/1.1 (hyper), GET only.
//! It should listen on an internal address only.
//!
//! A liveness probe must get its answer whatever the port's other clients do, or an orchestrator
//! restarts a healthy node at the worst moment. So a connection that has not sent its request
//! head within [`HEADER_TIMEOUT`] is closed, none lives longer than [`MAX_LIFETIME`], and at
//! [`MAX_CONNECTIONS`] a new connection is never refused: the oldest one is closed instead. A
//! probe is the newest connection and is answered in microseconds; idle or slow clients are the
//! oldest.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::feed::FeedStatus;
use crate::metrics::{self, Metrics};
use crate::reload::ReloadStatus;
use gatehouse_core::Engine;

/// Time allowed to send a request head (also between requests on a kept-alive connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest life of one connection, however busy.
const MAX_LIFETIME: Duration = Duration::from_secs(30);
/// How long a connection told to close may take to finish its response.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Connections held at once; at the limit the oldest is closed to make room.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Read buffer per connection (hyper's minimum): a request head is a few hundred bytes.
const MAX_BUF: usize = 8192;

/// Open connections, oldest first, each with the signal that closes it.
#[derive(Default)]
struct Open {
    next: u64,
    by_age: BTreeMap<u64, Arc<Notify>>,
}

/// What the operations endpoint reads: the engine, the metrics (which read every component),
/// and the two components whose state `/readyz` spells out.
pub(crate) struct Readers {
    /// The engine: its counters and the revocation state in force.
    pub engine: Arc<Engine>,
    /// The request counters and every component.
    pub metrics: Arc<Metrics>,
    /// Whether the revocation state in force is the feed's.
    pub feed: Arc<FeedStatus>,
    /// The reload results.
    pub reloads: Arc<ReloadStatus>,
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/readyz/local` on `listener`, forever.
pub(crate) async fn serve(listener: TcpListener, readers: Readers) {
    let readers = Arc::new(readers);
    let metrics = Arc::clone(&readers.metrics);
    let open = Arc::new(Mutex::new(Open::default()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUF)
        // One request per connection, as probes and scrapers use it: nothing idles between.
        .keep_alive(false);
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("operations endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let close = Arc::new(Notify::new());
        let id = {
            let mut o = open.lock();
            if o.by_age.len() >= MAX_CONNECTIONS {
                if let Some((_, oldest)) = o.by_age.pop_first() {
                    // `notify_one` keeps the signal even if the task is not waiting yet.
                    oldest.notify_one();
                    metrics.ops_evicted.inc();
                }
            }
            let id = o.next;
            o.next += 1;
            o.by_age.insert(id, Arc::clone(&close));
            id
        };
        let r = Arc::clone(&readers);
        let open = Arc::clone(&open);
        let conn = http.serve_connection(
            TokioIo::new(socket),
            hyper::service::service_fn(move |req| {
                let response = route(&req, &r);
                async move { Ok::<_, Infallible>(response) }
            }),
        );
        tokio::spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                () = close.notified() => None,
                () = tokio::time::sleep(MAX_LIFETIME) => None,
            };
            let result = match ended {
                Some(r) => r,
                None => {
                    // Finish a response being written, then close.
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(CLOSE_GRACE, conn.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                debug!("operations connection ended: {e}");
            }
            open.lock().by_age.remove(&id);
        });
    }
}

fn route(req: &Request<Incoming>, readers: &Readers) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        // The body, if any, is not read: close rather than resynchronise.
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let metrics = &readers.metrics;
    match req.uri().path() {
        "/metrics" => match metrics.render(&readers.engine) {
            Ok(body) => {
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(metrics::CONTENT_TYPE),
                );
                r
            }
            // Only a bug in a name or label could fail the encoder: a scraper told so beats
            // a truncated exposition it would take as whole.
            Err(_) => {
                warn!("metrics exposition failed to encode");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics encoding failed\n",
                )
            }
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        // This pod's own readiness: only what no other node shares (draining). A shared
        // dependency that is down leaves every node unable to accept, and taking every node
        // out of a load balancer at once answers nothing at all: the nodes stay and give
        // fail-closed verdicts, and alerts say why.
        "/readyz/local" => {
            let (status, first) = match (metrics.ready_local(), metrics.ready()) {
                (Err(why), _) => (StatusCode::SERVICE_UNAVAILABLE, why.to_string()),
                (Ok(()), Ok(())) => (StatusCode::OK, "ready".into()),
                (Ok(()), Err(why)) => (StatusCode::OK, format!("ready (this node; shared: {why})")),
            };
            readiness(status, &first, readers)
        }
        // A refused reload does not make the server unready: the previous files stay in force
        // and valid, and one bad push must not take a whole fleet out of its load balancer.
        "/readyz" => match metrics.ready() {
            Ok(()) => readiness(StatusCode::OK, "ready", readers),
            Err(why) => readiness(StatusCode::SERVICE_UNAVAILABLE, why, readers),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A `/readyz` answer: the status line, the revocation state line, then the reload lines
/// (`deploy/REFERENCE.md` documents the format; `gatehouse reload` reads it).
fn readiness(status: StatusCode, first: &str, readers: &Readers) -> Response<Full<Bytes>> {
    let body = format!(
        "{first}\n{}{}",
        revocation_line(&readers.engine, &readers.feed),
        readers.reloads.detail()
    );
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The `/readyz` line of the revocation state: `revocations epoch <E> entries <N> digest
/// <16 hex digits>`, then ` feed matched` or ` feed unconfirmed` when a feed is configured.
pub(crate) fn revocation_line(engine: &Engine, feed: &FeedStatus) -> String {
    let state = engine.revocations().load();
    let feed = if !feed.is_configured() {
        ""
    } else if feed.matched() {
        " feed matched"
    } else {
        " feed unconfirmed"
    };
    format!(
        "revocations epoch {} entries {} digest {}{feed}\n",
        state.epoch(),
        state.len(),
        gatehouse_core::short_hex(&state.digest())
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}
