//! A scanner talking to a fleet: several servers (addresses or DNS names) behind which any
//! engine node may answer. This is the part of a scanner vendors copy, so it is kept small:
//!
//! - **Spread**: each client starts at a random server of its list, so scanners spread over
//!   the fleet.
//! - **Fail over**: a connection that is lost, refused, drained (closed with code 0), or a
//!   verdict `unavailable` / `busy`, moves the client to the next server; a server that failed
//!   is skipped for a backoff that doubles (100 ms up to 5 s) while it keeps failing.
//! - **Retry idempotently**: each [`FleetClient::verify`] is one scan with a fresh random retry
//!   key, sent with every attempt (SPEC §8.6). If the first attempt's answer was lost, the next
//!   node answers with the first verdict (marked as a repeat), not `replayed`.
//!   After the fleet's store lost records (a restart, a failover, `FLUSHALL`), the retry of a
//!   token signed before that moment gets `node_restarted` instead of its first verdict: the
//!   record of the first verdict may be what was lost (SPEC §8.6).
//! - **`node_restarted` is final for the token**: it is not sent to another node, since every
//!   node fences it (a node that had not noticed the store's loss notices on the same round
//!   trip). The holder presents a fresh token.
//! - **Bounded**: at most [`FleetOptions::attempts`] attempts and [`FleetOptions::deadline`]
//!   of time per scan.
//!
//! DNS names are resolved when a connection is made, so a changed record is seen at the next
//! reconnect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_protocol::{MdocRequest, Reason, Verdict, RETRY_KEY_LEN};
use parking_lot::Mutex;

/// What one scan shows: a token (and the scanner's challenge), or an mdoc presentation.
#[derive(Clone, Copy)]
enum Shown<'a> {
    Token(&'a [u8], Option<&'a [u8]>),
    Mdoc(&'a MdocRequest),
}
use tracing::debug;

use super::{ClientError, ClientIdentity, ClientOptions, ScannerClient};

/// Fleet client tunables.
#[derive(Debug, Clone, Copy)]
pub struct FleetOptions {
    /// Per-connection options (connect and request timeouts, keep-alive).
    pub client: ClientOptions,
    /// Most attempts for one scan.
    pub attempts: usize,
    /// Most time for one scan, all attempts together.
    pub deadline: Duration,
    /// First backoff of a failed server.
    pub backoff_min: Duration,
    /// Longest backoff of a failed server.
    pub backoff_max: Duration,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            client: ClientOptions {
                // A verdict takes milliseconds; a node that says nothing for this long is
                // gone (a killed process sends no close), and the scan moves on at once.
                connect_timeout: Duration::from_millis(500),
                request_timeout: Duration::from_millis(400),
                ..ClientOptions::default()
            },
            attempts: 4,
            deadline: Duration::from_secs(4),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// One server of the list, and how it has been doing.
struct Server {
    /// `host:port` (a DNS name or an address).
    target: String,
    /// Skip until then.
    down_until: Option<Instant>,
    backoff: Duration,
}

struct State {
    servers: Vec<Server>,
    /// The server in use.
    current: usize,
    conn: Option<ScannerClient>,
}

/// A scanner's client for a fleet of gatehouse nodes. Clone it to share.
#[derive(Clone)]
pub struct FleetClient {
    state: Arc<Mutex<State>>,
    server_name: Arc<str>,
    identity: Arc<ClientIdentity>,
    options: FleetOptions,
}

impl std::fmt::Debug for FleetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("FleetClient")
            .field(
                "servers",
                &s.servers.iter().map(|s| &s.target).collect::<Vec<_>>(),
            )
            .field("current", &s.current)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Attempt {
    Done(Verdict),
    /// Try another server (the verdict, if any, is the last one seen).
    Next(Option<Verdict>, Option<ClientError>),
    /// Stop: another server would answer the same (this scanner is unknown, a bad request).
    Fail(ClientError),
}

impl FleetClient {
    /// A client for these servers (`host:port` each, names or addresses), checking every
    /// server's certificate for `server_name`. Connects lazily, at the first request.
    pub fn new(
        servers: &[String],
        server_name: &str,
        identity: ClientIdentity,
        options: FleetOptions,
    ) -> Result<FleetClient, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::Config("no server given".into()));
        }
        let start =
            usize::from(random_bytes::<2>().map_err(ClientError::Config)?[0]) % servers.len();
        Ok(FleetClient {
            state: Arc::new(Mutex::new(State {
                servers: servers
                    .iter()
                    .map(|t| Server {
                        target: t.clone(),
                        down_until: None,
                        backoff: options.backoff_min,
                    })
                    .collect(),
                current: start,
                conn: None,
            })),
            server_name: Arc::from(server_name),
            identity: Arc::new(identity),
            options,
        })
    }

    /// Starts with (or moves to) the server at `index` of the list (for example the scanner's
    /// nearest node), dropping the connection in use.
    pub fn set_current(&self, index: usize) {
        let mut s = self.state.lock();
        s.current = index % s.servers.len();
        s.conn = None;
    }

    /// The server in use (its `host:port` as given).
    pub fn current(&self) -> String {
        let s = self.state.lock();
        s.servers[s.current].target.clone()
    }

    /// Verifies one token as one scan: a fresh retry key, sent with every attempt, moving to
    /// another server when one fails. Returns the verdict, or the last error when every
    /// attempt failed (the scanner shows "try again", never an accept).
    pub async fn verify(
        &self,
        token: &[u8],
        challenge: Option<&[u8]>,
    ) -> Result<Verdict, ClientError> {
        let key = random_bytes::<RETRY_KEY_LEN>().map_err(ClientError::Config)?;
        self.verify_scan(token, challenge, key).await
    }

    /// [`FleetClient::verify`] with the caller's retry key (one per scan).
    pub async fn verify_scan(
        &self,
        token: &[u8],
        challenge: Option<&[u8]>,
        key: [u8; RETRY_KEY_LEN],
    ) -> Result<Verdict, ClientError> {
        self.scan(Shown::Token(token, challenge), key).await
    }

    /// One mdoc presentation (SPEC §12) as one scan, like [`FleetClient::verify_scan`]: the
    /// caller's retry key with every attempt, failing over between nodes. The request's own
    /// retry key is replaced by `key`.
    pub async fn verify_mdoc(
        &self,
        request: &MdocRequest,
        key: [u8; RETRY_KEY_LEN],
    ) -> Result<Verdict, ClientError> {
        self.scan(Shown::Mdoc(request), key).await
    }

    async fn scan(
        &self,
        shown: Shown<'_>,
        key: [u8; RETRY_KEY_LEN],
    ) -> Result<Verdict, ClientError> {
        let started = Instant::now();
        let mut last_verdict = None;
        let mut last_error = None;
        for attempt in 0..self.options.attempts.max(1) {
            if attempt > 0 && started.elapsed() >= self.options.deadline {
                break;
            }
            match self.attempt(shown, key, started).await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Next(v, e) => {
                    if v.is_some() {
                        last_verdict = v;
                    }
                    if e.is_some() {
                        last_error = e;
                    }
                }
            }
        }
        match (last_verdict, last_error) {
            // A retryable verdict (busy, unavailable) is an answer: the scanner says "retry".
            (Some(v), _) => Ok(v),
            (None, Some(e)) => Err(e),
            (None, None) => Err(ClientError::Timeout(self.options.deadline)),
        }
    }

    async fn attempt(
        &self,
        shown: Shown<'_>,
        key: [u8; RETRY_KEY_LEN],
        started: Instant,
    ) -> Attempt {
        let left = self.options.deadline.saturating_sub(started.elapsed());
        let conn = match tokio::time::timeout(left, self.connection()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Attempt::Next(None, Some(e)),
            Err(_) => return Attempt::Next(None, Some(ClientError::Timeout(left))),
        };
        // The request too ends with the scan's deadline (and with its own timeout before).
        let left = self.options.deadline.saturating_sub(started.elapsed());
        let request = async {
            match shown {
                Shown::Token(token, challenge) => {
                    conn.verify_scan(token, challenge, Some(key)).await
                }
                Shown::Mdoc(m) => {
                    let m = MdocRequest {
                        retry: Some(key),
                        ..m.clone()
                    };
                    conn.verify_mdoc(m).await
                }
            }
        };
        let answer = tokio::time::timeout(left, request)
            .await
            .unwrap_or(Err(ClientError::Timeout(left)));
        match answer {
            Ok(v) if matches!(v.reason, Reason::Unavailable | Reason::Busy) => {
                debug!(reason = %v.reason, "node could not judge: trying another");
                self.failed(&conn, false);
                Attempt::Next(Some(v), None)
            }
            Ok(v) => {
                self.succeeded();
                Attempt::Done(v)
            }
            Err(e) if e.is_retryable() => {
                debug!("request failed ({e}): trying another node");
                self.failed(&conn, true);
                Attempt::Next(None, Some(e))
            }
            Err(e) => Attempt::Fail(e),
        }
    }

    /// The connection in use, or a new one to the next server that is not backing off.
    async fn connection(&self) -> Result<ScannerClient, ClientError> {
        let mut last = None;
        let n = self.state.lock().servers.len();
        for _ in 0..n {
            let (target, conn) = {
                let mut s = self.state.lock();
                if let Some(c) = &s.conn {
                    if c.connection().close_reason().is_none() {
                        return Ok(c.clone());
                    }
                    s.conn = None;
                }
                let now = Instant::now();
                // The current server unless it is backing off; else the next one that is not;
                // if all are, the one whose backoff ends first.
                let pick = (0..n)
                    .map(|i| (s.current + i) % n)
                    .find(|i| s.servers[*i].down_until.is_none_or(|t| t <= now))
                    .unwrap_or_else(|| {
                        (0..n)
                            .min_by_key(|i| s.servers[*i].down_until)
                            .unwrap_or(s.current)
                    });
                s.current = pick;
                (s.servers[pick].target.clone(), s.conn.clone())
            };
            if let Some(c) = conn {
                return Ok(c);
            }
            match self.connect(&target).await {
                Ok(c) => {
                    self.state.lock().conn = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => {
                    debug!(server = %target, "cannot connect: {e}");
                    self.mark_down();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ClientError::Refused))
    }

    async fn connect(&self, target: &str) -> Result<ScannerClient, ClientError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
            .await
            .map_err(|e| ClientError::Resolve(format!("{target}: {e}")))?
            .collect();
        let mut last = ClientError::Resolve(format!("{target}: no address"));
        for addr in addrs {
            match ScannerClient::connect_with(
                addr,
                &self.server_name,
                (*self.identity).clone(),
                self.options.client,
            )
            .await
            {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn mark_down(&self) {
        let mut s = self.state.lock();
        let i = s.current;
        let max = self.options.backoff_max;
        let server = &mut s.servers[i];
        server.down_until = Some(Instant::now() + server.backoff);
        server.backoff = (server.backoff * 2).min(max);
        let n = s.servers.len();
        s.current = (i + 1) % n;
    }

    /// The server in use failed: drop its connection (if `close`) and move on.
    fn failed(&self, conn: &ScannerClient, close: bool) {
        if close {
            conn.connection().close(
                quinn::VarInt::from_u32(super::codes::SHUTDOWN),
                b"failing over",
            );
        }
        let mut s = self.state.lock();
        s.conn = None;
        drop(s);
        self.mark_down();
    }

    fn succeeded(&self) {
        let mut s = self.state.lock();
        let i = s.current;
        s.servers[i].down_until = None;
        s.servers[i].backoff = self.options.backoff_min;
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    use rand_core::{OsRng, RngCore};
    let mut b = [0u8; N];
    OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| format!("no randomness: {e}"))?;
    Ok(b)
}
