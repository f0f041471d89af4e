//! Following a revocation feed (SPEC §11.3): every node pulls the feed's head every few
//! seconds, applies the signed deltas after its epoch in order, and fetches the latest snapshot
//! when it is behind by more than a few deltas or finds a gap. An update is built aside and
//! swapped in, so verification goes on with the old epoch meanwhile.
//!
//! The follower runs on a thread of its own ([`FEED_THREAD`]) with a small runtime of its own,
//! so fetches never run on the server's runtime threads. A snapshot is verified and built, and
//! the state it replaces freed, on a further thread ([`SNAPSHOT_THREAD`]) at the lowest CPU
//! priority (SCHED_IDLE on Linux): that second of CPU is only taken when no verification
//! wants it. Deltas, the path by which a new revocation is enforced, stay at normal priority,
//! so a node whose cores are busy still enforces them within the interval.
//!
//! A feed is a directory, an HTTP(S) base URL or a Redis key prefix, holding `head.json`,
//! `snapshot-S.cose` and `delta-N.cose` (Redis: `PREFIX:head`, `PREFIX:snapshot:S`,
//! `PREFIX:delta:N`). Every list must be signed by a revocation key the trust list names; a
//! refused list is counted by why, logged, and changes nothing.
//!
//! The node's revocation **age** is the time since it last found itself current. Past
//! [`FeedConfig::max_age`], `/readyz` fails (unless [`FeedConfig::readiness`] is off) and, by
//! default ([`OfflinePolicy::FailClosed`]), the engine denies every token with
//! `revocations_stale` until the feed is back. An edge gate whose link is down is this same
//! code: it keeps verifying on its last signed epoch until the maximum age.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_protocol::{RevocationList, RevocationListError, SignedRevocationList};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::metrics::WhyLabel;
use gatehouse_core::short_hex;
use gatehouse_core::{Engine, RevocationError, RevocationState, TrustList};

/// Most deltas a node applies in one sync before it prefers the snapshot.
pub const MAX_DELTAS_PER_SYNC: u64 = 64;
/// Largest head object read.
const MAX_HEAD_BYTES: usize = 4096;
/// The name of the feed follower's thread (and of its runtime's blocking threads).
pub const FEED_THREAD: &str = "gatehouse-feed";
/// The name of the thread that verifies and builds a snapshot at the lowest priority.
pub const SNAPSHOT_THREAD: &str = "gatehouse-snap";
/// The short-lived thread that lowers its priority and starts a [`SNAPSHOT_THREAD`] from it.
pub const LAUNCH_THREAD: &str = "gatehouse-idle";
/// How long a replaced revocation state waits for the verifications that still hold it before
/// the feed lets it go all the same. A verification holds a state for one batch (well under
/// a millisecond), so this is only reached by a reader stuck for some other reason.
const RETIRE_WAIT: Duration = Duration::from_secs(2);

/// Why the calling thread could not be given the lowest CPU priority.
#[derive(Debug, thiserror::Error)]
#[error("cannot lower the thread's CPU priority: {0}")]
pub struct PriorityError(#[from] thread_priority::Error);

/// Puts the calling thread, and only it, at the lowest CPU priority: SCHED_IDLE on Linux, the
/// lowest nice value elsewhere. A SCHED_IDLE thread runs only on a core that nothing else
/// wants, and a waking verification thread preempts it at once; verification threads keep
/// their normal priority (lowering theirs made the tail worse).
pub fn lower_this_thread_priority() -> Result<(), PriorityError> {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
        thread_priority::set_thread_priority_and_policy(
            thread_priority::thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        )?;
    }
    #[cfg(not(target_os = "linux"))]
    thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)?;
    Ok(())
}

/// Runs `job` on a new [`SNAPSHOT_THREAD`] at the lowest CPU priority and waits for its answer
/// without holding the caller's runtime.
pub async fn at_lowest_priority<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    // A thread is created with its creator's policy, so a launcher lowers itself first and the
    // snapshot thread starts at the lowest priority: no instant of it runs at normal priority.
    std::thread::Builder::new()
        .name(LAUNCH_THREAD.into())
        .spawn(move || {
            if let Err(e) = lower_this_thread_priority() {
                warn!("revocation feed: {e}; the snapshot is built at normal priority");
            }
            let spawned = std::thread::Builder::new()
                .name(SNAPSHOT_THREAD.into())
                .spawn(move || {
                    let _ = answer.send(job());
                });
            if let Err(e) = spawned {
                warn!("revocation feed: cannot start the snapshot thread: {e}");
            }
        })?;
    answered
        .await
        .map_err(|_| std::io::Error::other("the snapshot thread ended without an answer"))
}

/// Frees a replaced revocation state on the calling thread once no verification holds it:
/// the last reference to a million-entry state frees tens of MB, which must not fall to a
/// verification thread that loaded it just before the swap. Returns whether it was freed
/// here; after `wait` the reference is let go and the last reader frees it.
pub fn retire(state: Arc<RevocationState>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut state = state;
    loop {
        match Arc::try_unwrap(state) {
            Ok(unshared) => {
                drop(unshared);
                return true;
            }
            Err(shared) if Instant::now() < deadline => {
                state = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

/// Where a feed lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedSource {
    /// A local directory (what `gatehouse issuer revoke --feed DIR` writes).
    Dir(PathBuf),
    /// An HTTP(S) base URL; objects are fetched as `BASE/head.json` and so on.
    Http(String),
    /// A Redis server and a key prefix.
    Redis {
        /// `redis://` or `rediss://` URL.
        url: String,
        /// Key prefix (`PREFIX:head`, …).
        prefix: String,
    },
}

impl FeedSource {
    /// Parses `dir:PATH`, a path, `http(s)://…`, or `redis(s)://…` with `key` as the prefix.
    pub fn parse(text: &str, key: Option<&str>) -> FeedSource {
        if text.starts_with("http://") || text.starts_with("https://") {
            FeedSource::Http(text.trim_end_matches('/').to_string())
        } else if text.starts_with("redis://") || text.starts_with("rediss://") {
            FeedSource::Redis {
                url: text.to_string(),
                prefix: key.unwrap_or("gatehouse:revocations").to_string(),
            }
        } else {
            FeedSource::Dir(PathBuf::from(text.strip_prefix("dir:").unwrap_or(text)))
        }
    }
}

/// What a node does once its revocation state is older than the maximum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflinePolicy {
    /// Deny every token with `revocations_stale` until the feed confirms an epoch again.
    #[default]
    FailClosed,
    /// Keep verifying on the last signed epoch (reported not ready and stale all the same).
    KeepServing,
}

/// How a node follows its feed.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Where the feed lives.
    pub source: FeedSource,
    /// Time between two pulls of the head.
    pub interval: Duration,
    /// Oldest revocation state the node vouches for.
    pub max_age: Duration,
    /// What happens past `max_age`.
    pub policy: OfflinePolicy,
    /// Whether `/readyz` fails past `max_age`.
    pub readiness: bool,
    /// Largest list (snapshot or delta) fetched, bytes.
    pub max_list_bytes: usize,
    /// Time allowed for one fetch.
    pub timeout: Duration,
    /// Extra CA certificates (PEM) for an HTTPS feed on an internal PKI.
    pub ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// When the state the node starts with was last known current (Unix seconds; 0: never,
    /// so a node starts stale until its first pull).
    pub confirmed_at: u64,
    /// The clock ages are read from (the server sets its own).
    pub clock: Arc<dyn gatehouse_core::Clock>,
}

impl FeedConfig {
    /// A feed at `source` with the defaults: pull every 2 s, maximum age 300 s, fail closed,
    /// readiness follows the age, lists up to 64 MiB, 10 s per fetch.
    pub fn new(source: FeedSource) -> Self {
        FeedConfig {
            source,
            interval: Duration::from_secs(2),
            max_age: Duration::from_secs(300),
            policy: OfflinePolicy::FailClosed,
            readiness: true,
            max_list_bytes: 64 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            ca: Vec::new(),
            confirmed_at: 0,
            clock: Arc::new(gatehouse_core::SystemClock),
        }
    }
}

/// The feed's pointer object: the latest epoch and the latest snapshot's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedHead {
    /// The latest epoch.
    pub epoch: u64,
    /// The epoch of the latest snapshot (at most `epoch`).
    pub snapshot: u64,
}

/// An object of a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    /// The head.
    Head,
    /// The snapshot of this epoch.
    Snapshot(u64),
    /// The delta to this epoch.
    Delta(u64),
}

impl Object {
    /// The file name (directory and HTTP feeds).
    pub fn file_name(self) -> String {
        match self {
            Object::Head => "head.json".into(),
            Object::Snapshot(n) => format!("snapshot-{n}.cose"),
            Object::Delta(n) => format!("delta-{n}.cose"),
        }
    }

    /// The Redis key under `prefix`.
    pub fn redis_key(self, prefix: &str) -> String {
        match self {
            Object::Head => format!("{prefix}:head"),
            Object::Snapshot(n) => format!("{prefix}:snapshot:{n}"),
            Object::Delta(n) => format!("{prefix}:delta:{n}"),
        }
    }
}

/// Why a sync did not bring the node to the feed's head. The state in force is unchanged
/// (or advanced as far as the lists that did apply).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The feed could not be reached or read.
    #[error("{object}: {problem}")]
    Fetch {
        /// The object.
        object: String,
        /// What went wrong.
        problem: String,
    },
    /// The object does not exist.
    #[error("{0}: not found")]
    Missing(String),
    /// The object is larger than the configured limit.
    #[error("{object}: larger than {limit} bytes")]
    TooLarge {
        /// The object.
        object: String,
        /// The limit.
        limit: usize,
    },
    /// The head is not `{"epoch": E, "snapshot": S}` with S ≤ E.
    #[error("head: {0}")]
    Head(String),
    /// A list was refused: unsigned, forged, unknown key or malformed.
    #[error("{object}: {source}")]
    Refused {
        /// The object.
        object: String,
        /// Why.
        source: RevocationListError,
    },
    /// A list does not apply to the epoch in force.
    #[error("{object}: {source}")]
    Apply {
        /// The object.
        object: String,
        /// Why.
        source: RevocationError,
    },
    /// The feed's head is older than the epoch in force (a feed restored from a backup?).
    #[error("the feed is at epoch {feed} but epoch {node} is in force: keeping it")]
    Behind {
        /// The feed's epoch.
        feed: u64,
        /// The node's epoch.
        node: u64,
    },
}

const REFUSALS: [&str; 4] = ["unsigned", "malformed", "unknown_key", "bad_signature"];

/// What the feed follower reports, for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct FeedStatus {
    configured: AtomicBool,
    readiness: AtomicBool,
    max_age: AtomicU64,
    /// Unix seconds of the last time the node found itself current (0: never).
    confirmed: AtomicU64,
    /// Whether the node holds an epoch at all (a node started with only a delta does not).
    established: AtomicBool,
    head_epoch: AtomicU64,
    syncs: AtomicU64,
    errors: AtomicU64,
    refused: [AtomicU64; 4],
    snapshots: AtomicU64,
    deltas: AtomicU64,
    /// Milliseconds the last snapshot took to fetch and apply.
    snapshot_ms: AtomicU64,
    /// Whether the state in force is known to be the feed's: it came from the feed, or the
    /// state read from disk had the digest of the feed's list at its epoch (SPEC §11.3).
    matched: AtomicBool,
    /// States read from disk that were not the feed's and were replaced by its snapshot.
    replaced: AtomicU64,
}

impl FeedStatus {
    fn configure(&self, config: &FeedConfig, established: bool, confirmed: u64) {
        self.configured.store(true, Ordering::Relaxed);
        self.readiness.store(config.readiness, Ordering::Relaxed);
        self.max_age
            .store(config.max_age.as_secs(), Ordering::Relaxed);
        self.established.store(established, Ordering::Relaxed);
        self.confirmed.store(confirmed, Ordering::Relaxed);
        self.matched.store(false, Ordering::Relaxed);
    }

    /// Whether a feed is configured.
    pub fn is_configured(&self) -> bool {
        self.configured.load(Ordering::Relaxed)
    }

    /// Whether the state in force is known to be the feed's (SPEC §11.3).
    pub fn matched(&self) -> bool {
        self.matched.load(Ordering::Relaxed)
    }

    /// States read from disk that the feed's snapshot replaced, because they were not the
    /// feed's.
    pub fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    /// Seconds since the node last found itself current, or `None` when it never has.
    pub fn age(&self, now: u64) -> Option<u64> {
        match self.confirmed.load(Ordering::Relaxed) {
            0 => None,
            t => Some(now.saturating_sub(t)),
        }
    }

    /// Whether the state is older than the maximum age (or was never established).
    pub fn stale(&self, now: u64) -> bool {
        if !self.configured.load(Ordering::Relaxed) {
            return false;
        }
        if !self.established.load(Ordering::Relaxed) {
            return true;
        }
        self.age(now)
            .is_none_or(|a| a >= self.max_age.load(Ordering::Relaxed))
    }

    /// Why `/readyz` should fail, if it should.
    pub fn not_ready(&self, now: u64) -> Option<&'static str> {
        (self.readiness.load(Ordering::Relaxed) && self.stale(now))
            .then_some("revocation state older than its maximum age")
    }

    /// Lists refused for this reason (`unsigned`, `malformed`, `unknown_key`,
    /// `bad_signature`).
    pub fn refused(&self, why: &str) -> u64 {
        REFUSALS
            .iter()
            .position(|r| *r == why)
            .map_or(0, |i| self.refused[i].load(Ordering::Relaxed))
    }

    /// Snapshots fetched and applied so far.
    pub fn snapshots(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    fn refuse(&self, e: RevocationListError) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == e.label()) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Its metrics, read now into `scrape` (none when no feed is configured).
    pub(crate) fn register_metrics(&self, scrape: &mut Registry, now: u64) {
        if !self.configured.load(Ordering::Relaxed) {
            return;
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Help texts are registered without their final full stop: the registry adds it.
        let age = match self.age(now) {
            Some(a) if self.established.load(Ordering::Relaxed) => a as f64,
            _ => f64::INFINITY,
        };
        scrape.register(
            "gatehouse_revocation_age_seconds",
            "Seconds since the feed last confirmed the revocation epoch in force",
            ConstGauge::new(age),
        );
        scrape.register(
            "gatehouse_revocation_max_age_seconds",
            "Oldest revocation state this node vouches for",
            ConstGauge::new(load(&self.max_age)),
        );
        scrape.register(
            "gatehouse_revocation_stale",
            "1 when the revocation state is older than its maximum age (or never established)",
            ConstGauge::new(u64::from(self.stale(now))),
        );
        scrape.register(
            "gatehouse_revocation_feed_epoch",
            "Latest epoch the feed's head announced",
            ConstGauge::new(load(&self.head_epoch)),
        );
        // Counters are named without `_total`: the encoder appends it.
        for (name, help, value) in [
            (
                "gatehouse_revocation_feed_syncs",
                "Pulls that left the node current",
                &self.syncs,
            ),
            (
                "gatehouse_revocation_feed_errors",
                "Pulls that did not (feed unreachable, list refused or not applicable)",
                &self.errors,
            ),
            (
                "gatehouse_revocation_snapshots",
                "Snapshots fetched and applied",
                &self.snapshots,
            ),
            (
                "gatehouse_revocation_deltas",
                "Deltas fetched and applied",
                &self.deltas,
            ),
            (
                "gatehouse_revocation_disk_state_replaced",
                "States read from disk that were not the feed's, replaced by its snapshot",
                &self.replaced,
            ),
        ] {
            scrape.register(name, help, ConstCounter::new(load(value)));
        }
        scrape.register(
            "gatehouse_revocation_snapshot_apply_seconds",
            "Time the last snapshot took to fetch, verify and apply",
            ConstGauge::new(load(&self.snapshot_ms) as f64 / 1000.0),
        );
        let refused = Family::<WhyLabel, Counter>::default();
        for (why, n) in REFUSALS.iter().zip(&self.refused) {
            refused.get_or_create(&WhyLabel { why }).inc_by(load(n));
        }
        scrape.register(
            "gatehouse_revocation_lists_refused",
            "Revocation lists refused (state kept), by why",
            refused,
        );
    }
}

/// Reads feed objects from one source, each bounded in size and time.
pub struct Fetcher {
    source: FeedSource,
    http: Option<reqwest::Client>,
    redis: Option<redis::Client>,
    redis_conn: Option<redis::aio::MultiplexedConnection>,
    timeout: Duration,
}

impl Fetcher {
    /// A fetcher for `config.source`.
    pub fn new(config: &FeedConfig) -> Result<Fetcher, FeedError> {
        let setup = |problem: String| FeedError::Fetch {
            object: "(feed)".into(),
            problem,
        };
        let (mut http, mut redis) = (None, None);
        match &config.source {
            FeedSource::Dir(_) => {}
            FeedSource::Http(_) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                for c in &config.ca {
                    roots
                        .add(c.clone())
                        .map_err(|e| setup(format!("feed CA: {e}")))?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| setup(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                http = Some(
                    reqwest::Client::builder()
                        .use_preconfigured_tls(tls)
                        .timeout(config.timeout)
                        .connect_timeout(config.timeout)
                        .build()
                        .map_err(|e| setup(e.to_string()))?,
                );
            }
            FeedSource::Redis { url, .. } => {
                redis = Some(redis::Client::open(url.as_str()).map_err(|e| setup(e.to_string()))?);
            }
        }
        Ok(Fetcher {
            source: config.source.clone(),
            http,
            redis,
            redis_conn: None,
            timeout: config.timeout,
        })
    }

    /// The object's bytes, at most `limit` of them.
    pub async fn get(&mut self, object: Object, limit: usize) -> Result<Vec<u8>, FeedError> {
        let name = object.file_name();
        let fetch = |problem: String| FeedError::Fetch {
            object: name.clone(),
            problem,
        };
        let too_large = || FeedError::TooLarge {
            object: name.clone(),
            limit,
        };
        match &self.source {
            FeedSource::Dir(dir) => {
                let path = dir.join(&name);
                // Plain file reads, off the runtime threads (a snapshot may be tens of MB).
                let read = tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let file = match std::fs::File::open(&path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(e.to_string()),
                    };
                    // Bounded while reading: one byte past the limit says "too large". Sized
                    // once from the file's length (bounded too), not grown by doubling.
                    let expected = file.metadata().map_or(0, |m| m.len()).min(limit as u64 + 1);
                    let mut bytes = Vec::with_capacity(expected as usize);
                    file.take(limit as u64 + 1)
                        .read_to_end(&mut bytes)
                        .map_err(|e| e.to_string())?;
                    Ok(Some(bytes))
                });
                match tokio::time::timeout(self.timeout, read).await {
                    Err(_) => Err(fetch("timed out".into())),
                    Ok(Err(e)) => Err(fetch(e.to_string())),
                    Ok(Ok(Err(e))) => Err(fetch(e)),
                    Ok(Ok(Ok(None))) => Err(FeedError::Missing(name.clone())),
                    Ok(Ok(Ok(Some(b)))) if b.len() > limit => Err(too_large()),
                    Ok(Ok(Ok(Some(b)))) => Ok(b),
                }
            }
            FeedSource::Http(base) => {
                let Some(client) = &self.http else {
                    return Err(fetch("no HTTP client".into()));
                };
                let url = format!("{base}/{name}");
                let mut response = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| fetch(e.to_string()))?;
                let status = response.status();
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Err(FeedError::Missing(name.clone()));
                }
                if !status.is_success() {
                    return Err(fetch(format!("HTTP {status}")));
                }
                if response.content_length().is_some_and(|n| n > limit as u64) {
                    return Err(too_large());
                }
                // Sized once from the announced length (checked against the limit above)
                // rather than grown by doubling: an 18 MB snapshot would otherwise be copied
                // and page-faulted several times over.
                let announced = response.content_length().unwrap_or(0) as usize;
                let mut body = Vec::with_capacity(announced);
                while let Some(chunk) = response.chunk().await.map_err(|e| fetch(e.to_string()))? {
                    if body.len() + chunk.len() > limit {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
            FeedSource::Redis { prefix, .. } => {
                let key = object.redis_key(prefix);
                let timeout = self.timeout;
                if self.redis_conn.is_none() {
                    let Some(client) = &self.redis else {
                        return Err(fetch("no Redis client".into()));
                    };
                    let conn =
                        tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
                            .await
                            .map_err(|_| fetch("connect timed out".into()))?
                            .map_err(|e| fetch(e.to_string()))?;
                    self.redis_conn = Some(conn);
                }
                let Some(conn) = self.redis_conn.as_mut() else {
                    return Err(fetch("no Redis connection".into()));
                };
                let result = tokio::time::timeout(timeout, async {
                    // Bounded before it is read: STRLEN first (0 also for a missing key).
                    let len: u64 = redis::cmd("STRLEN").arg(&key).query_async(conn).await?;
                    if len == 0 {
                        return Ok(None);
                    }
                    if len > limit as u64 {
                        return Ok(Some(Err(())));
                    }
                    let bytes: Option<Vec<u8>> =
                        redis::cmd("GET").arg(&key).query_async(conn).await?;
                    Ok::<_, redis::RedisError>(bytes.map(Ok))
                })
                .await;
                match result {
                    Err(_) => {
                        self.redis_conn = None;
                        Err(fetch("timed out".into()))
                    }
                    Ok(Err(e)) => {
                        self.redis_conn = None;
                        Err(fetch(e.to_string()))
                    }
                    Ok(Ok(None)) => Err(FeedError::Missing(key)),
                    Ok(Ok(Some(Err(())))) => Err(too_large()),
                    Ok(Ok(Some(Ok(b)))) if b.len() > limit => Err(too_large()),
                    Ok(Ok(Some(Ok(b)))) => Ok(b),
                }
            }
        }
    }

    /// The feed's head.
    pub async fn head(&mut self) -> Result<FeedHead, FeedError> {
        let bytes = self.get(Object::Head, MAX_HEAD_BYTES).await?;
        parse_head(&bytes)
    }
}

/// Parses and checks a head object.
pub fn parse_head(bytes: &[u8]) -> Result<FeedHead, FeedError> {
    let head: FeedHead =
        serde_json::from_slice(bytes).map_err(|e| FeedError::Head(e.to_string()))?;
    if head.snapshot > head.epoch {
        return Err(FeedError::Head(format!(
            "snapshot {} is after epoch {}",
            head.snapshot, head.epoch
        )));
    }
    Ok(head)
}

/// Decodes and authenticates a fetched list with the trust list's revocation keys.
pub fn open_list(bytes: &[u8], trust: &TrustList) -> Result<RevocationList, RevocationListError> {
    SignedRevocationList::open(bytes, |kid| trust.revocation_key(kid).map(|k| &k.public))
}

/// Verifies and applies one fetched list, and frees the state it replaces, all on the calling
/// thread. Verification keeps the old epoch until the swap.
fn verify_and_apply(engine: &Engine, object: Object, bytes: Vec<u8>) -> Result<u64, FeedError> {
    verify_and_swap(engine, object, bytes, false)
}

/// Like [`verify_and_apply`]; with `replace`, a snapshot replaces the state whatever its epoch
/// (the state in force is not the feed's).
fn verify_and_swap(
    engine: &Engine,
    object: Object,
    bytes: Vec<u8>,
    replace: bool,
) -> Result<u64, FeedError> {
    let refused = |source: RevocationListError| FeedError::Refused {
        object: object.file_name(),
        source,
    };
    let list = open_list(&bytes, &engine.trust()).map_err(refused)?;
    drop(bytes);
    let wrong_kind = match object {
        Object::Snapshot(n) => list.base.is_some() || list.epoch != n,
        Object::Delta(n) => list.base.is_none() || list.epoch != n,
        Object::Head => true,
    };
    if wrong_kind {
        return Err(refused(RevocationListError::Malformed(
            gatehouse_protocol::DecodeError::Inconsistent("list is not the object it is named as"),
        )));
    }
    let revocations = engine.revocations();
    let swapped = if replace {
        revocations.replace_returning_previous(&list)
    } else {
        revocations.apply_returning_previous(&list)
    };
    let (epoch, previous) = swapped.map_err(|source| FeedError::Apply {
        object: object.file_name(),
        source,
    })?;
    drop(list);
    if !retire(previous, RETIRE_WAIT) {
        debug!("a verification held the replaced revocation state: it frees it");
    }
    Ok(epoch)
}

/// Applies a delta on the feed's thread, at normal priority: a delta is how a new revocation
/// reaches the node, and it is small. Refusals are counted.
fn apply_delta(
    engine: &Engine,
    status: &FeedStatus,
    n: u64,
    bytes: Vec<u8>,
) -> Result<u64, FeedError> {
    counted(status, verify_and_apply(engine, Object::Delta(n), bytes))
}

/// Verifies and builds a snapshot on a [`SNAPSHOT_THREAD`] at the lowest priority (a million
/// entries take about a second of CPU). Refusals are counted.
async fn apply_snapshot(
    engine: &Arc<Engine>,
    status: &FeedStatus,
    n: u64,
    bytes: Vec<u8>,
    replace: bool,
) -> Result<u64, FeedError> {
    let e = Arc::clone(engine);
    let result =
        at_lowest_priority(move || verify_and_swap(&e, Object::Snapshot(n), bytes, replace))
            .await
            .map_err(|e| FeedError::Fetch {
                object: Object::Snapshot(n).file_name(),
                problem: format!("snapshot thread: {e}"),
            })?;
    counted(status, result)
}

fn counted(status: &FeedStatus, result: Result<u64, FeedError>) -> Result<u64, FeedError> {
    if let Err(FeedError::Refused { source, .. }) = &result {
        status.refuse(*source);
    }
    result
}

/// One pull: brings the node to the feed's head if it can. Returns the epoch in force.
///
/// Deltas are verified and applied on the calling thread (a delta on a million-entry state
/// copies it: tens of milliseconds): call it from the feed's own thread ([`FEED_THREAD`]), not
/// from a runtime that serves scanners. Snapshots go to a [`SNAPSHOT_THREAD`].
pub async fn sync_once(
    engine: &Arc<Engine>,
    fetcher: &mut Fetcher,
    config: &FeedConfig,
    status: &FeedStatus,
) -> Result<u64, FeedError> {
    let head = fetcher.head().await?;
    status.head_epoch.store(head.epoch, Ordering::Relaxed);
    let established = status.established.load(Ordering::Relaxed);
    let (current, _) = engine.revocation_epoch();
    // First contact with a state read from disk: it is the feed's only if the feed's list at
    // its epoch has its digest. Otherwise the feed's snapshot replaces it: the feed's deltas
    // are never stacked on a state that is not the feed's.
    if established && !status.matched() {
        let state = engine.revocations().load();
        match seed_matches(fetcher, config, engine, &head, &state).await? {
            None => status.matched.store(true, Ordering::Relaxed),
            Some(why) => {
                warn!(
                    "revocation feed: the revocation state read from disk (epoch {}, {} entries, \
                     digest {}) is not the feed's: {why}; replacing it with the feed's snapshot {}",
                    state.epoch(),
                    state.len(),
                    short_hex(&state.digest()),
                    head.snapshot
                );
                drop(state);
                let started = Instant::now();
                let bytes = fetcher
                    .get(Object::Snapshot(head.snapshot), config.max_list_bytes)
                    .await?;
                apply_snapshot(engine, status, head.snapshot, bytes, true).await?;
                status.snapshots.fetch_add(1, Ordering::Relaxed);
                status.replaced.fetch_add(1, Ordering::Relaxed);
                status.matched.store(true, Ordering::Relaxed);
                status
                    .snapshot_ms
                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                let (after, _) = engine.revocation_epoch();
                for n in after + 1..=head.epoch {
                    let bytes = fetcher.get(Object::Delta(n), config.max_list_bytes).await?;
                    apply_delta(engine, status, n, bytes)?;
                    status.deltas.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(engine.revocation_epoch().0);
            }
        }
    }
    if established && current == head.epoch {
        return Ok(current);
    }
    if established && current > head.epoch {
        return Err(FeedError::Behind {
            feed: head.epoch,
            node: current,
        });
    }
    let limit = config.max_list_bytes;
    // Deltas first when there are few: a node a few epochs behind should not rebuild a
    // million-entry snapshot. The snapshot settles the rest.
    let mut need_snapshot = !established || head.epoch - current > MAX_DELTAS_PER_SYNC;
    if !need_snapshot {
        for n in current + 1..=head.epoch {
            let result = match fetcher.get(Object::Delta(n), limit).await {
                Ok(bytes) => apply_delta(engine, status, n, bytes),
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => {
                    status.deltas.fetch_add(1, Ordering::Relaxed);
                }
                // A gap (a delta missing, or not on the epoch in force): the snapshot settles
                // it when it is newer than what the node holds.
                Err(e @ (FeedError::Missing(_) | FeedError::Apply { .. }))
                    if engine.revocation_epoch().0 < head.snapshot =>
                {
                    info!("revocation feed: {e}; fetching snapshot {}", head.snapshot);
                    need_snapshot = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    if need_snapshot {
        let (now_epoch, _) = engine.revocation_epoch();
        if !established || now_epoch < head.snapshot {
            let started = Instant::now();
            let bytes = fetcher.get(Object::Snapshot(head.snapshot), limit).await?;
            apply_snapshot(engine, status, head.snapshot, bytes, false).await?;
            status.established.store(true, Ordering::Relaxed);
            status.matched.store(true, Ordering::Relaxed);
            status.snapshots.fetch_add(1, Ordering::Relaxed);
            status
                .snapshot_ms
                .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        let (after, _) = engine.revocation_epoch();
        for n in after + 1..=head.epoch {
            let bytes = fetcher.get(Object::Delta(n), limit).await?;
            apply_delta(engine, status, n, bytes)?;
            status.deltas.fetch_add(1, Ordering::Relaxed);
        }
    }
    let (epoch, _) = engine.revocation_epoch();
    if epoch != head.epoch {
        return Err(FeedError::Behind {
            feed: head.epoch,
            node: epoch,
        });
    }
    Ok(epoch)
}

/// Whether `state` (read from disk) is the feed's state at its epoch: `None` when the feed's
/// list at that epoch is there, authentic, and carries `state`'s digest; otherwise why not.
/// Errors only when the feed cannot be read (the question stays open until the next pull).
async fn seed_matches(
    fetcher: &mut Fetcher,
    config: &FeedConfig,
    engine: &Engine,
    head: &FeedHead,
    state: &RevocationState,
) -> Result<Option<String>, FeedError> {
    let epoch = state.epoch();
    if epoch > head.epoch {
        return Ok(Some(format!("the feed is at epoch {}", head.epoch)));
    }
    let object = if epoch == head.snapshot {
        Object::Snapshot(epoch)
    } else {
        Object::Delta(epoch)
    };
    let bytes = match fetcher.get(object, config.max_list_bytes).await {
        Ok(b) => b,
        Err(FeedError::Missing(name)) => {
            return Ok(Some(format!(
                "the feed has no list at epoch {epoch} ({name})"
            )))
        }
        Err(e) => return Err(e),
    };
    let list = match open_list(&bytes, &engine.trust()) {
        Ok(l) => l,
        Err(e) => {
            return Ok(Some(format!(
                "the feed's {} is refused: {e}",
                object.file_name()
            )))
        }
    };
    Ok(match list.digest {
        None => Some(format!(
            "the feed's {} carries no state digest to compare (version 1)",
            object.file_name()
        )),
        Some(d) if list.epoch == epoch && d == state.digest() => None,
        Some(d) => Some(format!(
            "the feed's state at epoch {epoch} has digest {}",
            short_hex(&d)
        )),
    })
}

/// The modification time of a local revocation file, as Unix seconds (the file counts as
/// confirmed when it was written).
pub fn file_confirmed_at(path: &Path) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    modified
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Sets the engine's revocation deadline from the node's state and policy.
fn set_deadline(engine: &Engine, config: &FeedConfig, status: &FeedStatus) {
    let deadline = if !status.established.load(Ordering::Relaxed) {
        0
    } else if config.policy == OfflinePolicy::KeepServing {
        u64::MAX
    } else {
        match status.confirmed.load(Ordering::Relaxed) {
            0 => 0,
            t => t.saturating_add(config.max_age.as_secs()),
        }
    };
    engine.revocations().set_fresh_until(deadline);
}

/// Follows the feed until the task is dropped: pulls every `config.interval`, and after each
/// pull moves the engine's revocation deadline. A node whose engine holds no epoch yet (epoch
/// 0, nothing revoked) starts unestablished: it fails closed until the first snapshot.
///
/// The pulls run on the [`FEED_THREAD`], with a single-threaded runtime of their own (snapshots
/// are built at the lowest priority, see [`sync_once`]); this task only holds that thread's
/// lifetime, and dropping (aborting)
/// it stops the thread at its next await. Should the thread not start, nothing is fetched:
/// the age grows and the offline policy takes over (fail closed by default), as when the feed
/// cannot be set up at all.
pub(crate) async fn follow(engine: Arc<Engine>, config: FeedConfig, status: Arc<FeedStatus>) {
    let (epoch, entries) = engine.revocation_epoch();
    status.configure(&config, epoch > 0 || entries > 0, config.confirmed_at);
    set_deadline(&engine, &config, &status);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(FEED_THREAD.into())
        .spawn(move || follow_on_this_thread(engine, config, status, stopped));
    match spawned {
        Ok(_detached) => {
            // Held until this task is dropped: then `stopped` fires on the feed's thread.
            let _stop = stop;
            std::future::pending::<()>().await;
        }
        Err(err) => warn!("revocation feed cannot start its thread: {err}"),
    }
}

/// The feed's thread: a single-threaded runtime that pulls until `stopped`.
fn follow_on_this_thread(
    engine: Arc<Engine>,
    config: FeedConfig,
    status: Arc<FeedStatus>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(FEED_THREAD)
        .build();
    match runtime {
        Ok(runtime) => {
            runtime.block_on(async move {
                tokio::select! {
                    _ = stopped => {}
                    () = pull_forever(engine, config, status) => {}
                }
            });
            // A file read still in flight must not hold the server's shutdown.
            runtime.shutdown_background();
        }
        Err(e) => warn!("revocation feed cannot start its runtime: {e}"),
    }
}

/// The pull loop (see [`follow`]): returns only when the feed cannot be set up at all.
async fn pull_forever(engine: Arc<Engine>, config: FeedConfig, status: Arc<FeedStatus>) {
    let mut fetcher = match Fetcher::new(&config) {
        Ok(f) => f,
        Err(e) => {
            // Nothing can be fetched: the age grows and the policy takes over.
            warn!("revocation feed cannot start: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut was_stale = false;
    loop {
        tick.tick().await;
        match sync_once(&engine, &mut fetcher, &config, &status).await {
            Ok(epoch) => {
                status.established.store(true, Ordering::Relaxed);
                status
                    .confirmed
                    .store(config.clock.now(), Ordering::Relaxed);
                status.syncs.fetch_add(1, Ordering::Relaxed);
                if failing {
                    info!(epoch, "revocation feed reachable again: current");
                    failing = false;
                }
                debug!(epoch, "revocation feed: current");
            }
            Err(e) => {
                status.errors.fetch_add(1, Ordering::Relaxed);
                // Logged once per outage, then at debug: a dead link must not flood the log.
                if failing {
                    debug!("revocation feed: {e}");
                } else {
                    warn!(
                        "revocation feed: {e}; keeping epoch {}",
                        engine.revocation_epoch().0
                    );
                    failing = true;
                }
            }
        }
        set_deadline(&engine, &config, &status);
        let stale = status.stale(config.clock.now());
        if let Some((refusing, line)) = stale_change(
            was_stale,
            stale,
            config.policy,
            engine.revocation_epoch().0,
            status.established.load(Ordering::Relaxed),
            config.max_age,
        ) {
            if refusing {
                warn!("{line}");
            } else {
                info!("{line}");
            }
        }
        was_stale = stale;
    }
}

/// The log line for a change of the revocation state's staleness, once per change: the moment
/// a node starts refusing every token (or answering on a state it no longer vouches for), and
/// the moment it stops. `(true, …)` is a warning.
fn stale_change(
    was: bool,
    now: bool,
    policy: OfflinePolicy,
    epoch: u64,
    established: bool,
    max_age: Duration,
) -> Option<(bool, String)> {
    match (was, now) {
        (false, true) if !established => Some((
            true,
            "revocation feed: no revocation state yet: every token is denied \
             `revocations_stale` until the feed's snapshot is applied"
                .to_string(),
        )),
        (false, true) if policy == OfflinePolicy::FailClosed => Some((
            true,
            format!(
                "revocation feed: epoch {epoch} is older than max_age_secs ({} s): every token \
                 is denied `revocations_stale` until the feed confirms a state (offline = \
                 \"fail_closed\")",
                max_age.as_secs()
            ),
        )),
        (false, true) => Some((
            true,
            format!(
                "revocation feed: epoch {epoch} is older than max_age_secs ({} s): tokens are \
                 still judged on it (offline = \"keep_serving\"), and the node reports itself \
                 not ready",
                max_age.as_secs()
            ),
        )),
        (true, false) => Some((
            false,
            format!("revocation feed: epoch {epoch} confirmed: tokens are judged again"),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_protocol::{RevocationEntry, RevocationKind};

    use super::*;

    #[test]
    fn refusing_every_token_is_logged_once_when_it_starts_and_once_when_it_ends() {
        let age = Duration::from_secs(6);
        let fail = OfflinePolicy::FailClosed;
        // No change, nothing said.
        assert_eq!(stale_change(false, false, fail, 3, true, age), None);
        assert_eq!(stale_change(true, true, fail, 3, true, age), None);
        let (warn, line) = stale_change(false, true, fail, 3, true, age).unwrap();
        assert!(warn);
        assert!(
            line.contains("epoch 3") && line.contains("6 s") && line.contains("every token"),
            "{line}"
        );
        let (warn, line) =
            stale_change(false, true, OfflinePolicy::KeepServing, 3, true, age).unwrap();
        assert!(warn && line.contains("still judged"), "{line}");
        let (warn, line) = stale_change(false, true, fail, 0, false, age).unwrap();
        assert!(warn && line.contains("no revocation state yet"), "{line}");
        let (warn, line) = stale_change(true, false, fail, 4, true, age).unwrap();
        assert!(!warn && line.contains("judged again"), "{line}");
    }
    use gatehouse_core::{EngineConfig, RevocationKey, ScannerRegistry};
    use gatehouse_dev::population;

    /// The scheduling policy of the calling thread, read back from the kernel (field 41 of
    /// `/proc/thread-self/stat`; SCHED_OTHER is 0, SCHED_IDLE 5).
    #[cfg(target_os = "linux")]
    fn policy_of_this_thread() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name may hold spaces: fields are counted after its closing parenthesis.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_lowered_thread_runs_sched_idle_and_no_other_thread_does() {
        let caller = policy_of_this_thread();
        let lowered = std::thread::spawn(|| {
            let before = policy_of_this_thread();
            lower_this_thread_priority().unwrap();
            (before, policy_of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (0, 5), "SCHED_OTHER before, SCHED_IDLE after");
        assert_eq!(
            policy_of_this_thread(),
            caller,
            "the caller's thread is unchanged"
        );
        assert_eq!(caller, 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn snapshot_jobs_run_at_sched_idle_and_answer_the_caller() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (policy, name) = runtime
            .block_on(at_lowest_priority(|| {
                let name = std::thread::current().name().map(str::to_string);
                (policy_of_this_thread(), name)
            }))
            .unwrap();
        assert_eq!(policy, 5, "SCHED_IDLE");
        assert_eq!(name.as_deref(), Some(SNAPSHOT_THREAD));
        assert_eq!(policy_of_this_thread(), 0, "the caller keeps SCHED_OTHER");
    }

    fn test_engine(key: &gatehouse_protocol::PrivateKey) -> Arc<Engine> {
        let mut trust = population::trust_list(&population::issuer_key(3));
        trust.insert_revocation_key(RevocationKey {
            name: "feed unit test revocations (TEST ONLY)".into(),
            public: key.public().clone(),
        });
        let config = EngineConfig {
            threads: 1,
            replay_capacity: 1024,
            issuer_cache_capacity: 1024,
            ..EngineConfig::default()
        };
        Arc::new(Engine::new(config, trust, ScannerRegistry::new()).unwrap())
    }

    fn snapshot(key: &gatehouse_protocol::PrivateKey, epoch: u64, n: u64) -> Vec<u8> {
        RevocationList {
            epoch,
            base: None,
            revoke: (0..n)
                .map(|i| {
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&i.to_le_bytes());
                    id[8..].copy_from_slice(&epoch.to_le_bytes());
                    RevocationEntry {
                        kind: RevocationKind::Credential,
                        id,
                    }
                })
                .collect(),
            reinstate: vec![],
            digest: None,
        }
        .sign(key)
        .unwrap()
    }

    /// A verification that loaded the old epoch just before the swap lets go of it after the
    /// swap: it must not be the one that frees it. The thread that applied the list frees it
    /// (`Revocations::apply`, which simply drops it, fails this test).
    #[test]
    fn the_replaced_state_is_freed_by_the_applying_thread_not_by_the_last_verification() {
        let key = population::derive_key("feed unit test revocation key (TEST ONLY)", 0);
        let engine = test_engine(&key);
        verify_and_apply(&engine, Object::Snapshot(1), snapshot(&key, 1, 5000)).unwrap();
        // A verification on this thread holds epoch 1.
        let held = engine.revocations().load();
        assert_eq!(held.epoch(), 1);
        let second = snapshot(&key, 2, 5000);
        let applier = std::thread::spawn({
            let engine = Arc::clone(&engine);
            move || {
                let freed = RevocationState::freed_on_this_thread();
                let epoch = verify_and_apply(&engine, Object::Snapshot(2), second);
                (
                    epoch.unwrap(),
                    RevocationState::freed_on_this_thread() - freed,
                )
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while engine.revocation_epoch().0 != 2 {
            assert!(Instant::now() < deadline, "epoch 2 was never swapped in");
            std::thread::sleep(Duration::from_millis(1));
        }
        let freed_here = RevocationState::freed_on_this_thread();
        drop(held);
        assert_eq!(
            RevocationState::freed_on_this_thread(),
            freed_here,
            "the verification's thread freed the replaced state"
        );
        let (epoch, freed_there) = applier.join().unwrap();
        assert_eq!(epoch, 2);
        assert_eq!(
            freed_there, 1,
            "the applying thread freed the replaced state"
        );
        assert_eq!(engine.revocation_epoch(), (2, 5000));
    }

    #[test]
    fn a_state_held_past_the_wait_is_let_go_to_its_last_reader() {
        let wait = Duration::from_millis(50);
        let freed = RevocationState::freed_on_this_thread();
        assert!(retire(Arc::new(RevocationState::empty().unwrap()), wait));
        assert_eq!(RevocationState::freed_on_this_thread(), freed + 1);
        let state = Arc::new(RevocationState::empty().unwrap());
        let reader = Arc::clone(&state);
        let started = Instant::now();
        assert!(!retire(state, wait), "a reader still holds it");
        assert!(started.elapsed() >= wait);
        assert_eq!(Arc::strong_count(&reader), 1, "the reader frees it");
    }

    #[test]
    fn sources_and_heads_parse() {
        assert_eq!(
            FeedSource::parse("https://feed.example/rev/", None),
            FeedSource::Http("https://feed.example/rev".into())
        );
        assert_eq!(
            FeedSource::parse("redis://127.0.0.1/", Some("gh")),
            FeedSource::Redis {
                url: "redis://127.0.0.1/".into(),
                prefix: "gh".into()
            }
        );
        assert_eq!(
            FeedSource::parse("/var/lib/feed", None),
            FeedSource::Dir("/var/lib/feed".into())
        );
        assert_eq!(
            parse_head(br#"{"epoch": 7, "snapshot": 5}"#).unwrap(),
            FeedHead {
                epoch: 7,
                snapshot: 5
            }
        );
        assert!(parse_head(br#"{"epoch": 4, "snapshot": 5}"#).is_err());
        assert!(parse_head(b"7").is_err());
        assert_eq!(Object::Delta(3).redis_key("p"), "p:delta:3");
        assert_eq!(Object::Snapshot(3).file_name(), "snapshot-3.cose");
    }

    #[test]
    fn staleness_follows_the_age_and_establishment() {
        let s = FeedStatus::default();
        assert!(!s.stale(1000), "no feed configured: never stale");
        let mut c = FeedConfig::new(FeedSource::Dir("x".into()));
        c.max_age = Duration::from_secs(60);
        s.configure(&c, true, 1000);
        assert!(!s.stale(1059));
        assert!(s.stale(1060));
        assert!(s.not_ready(1060).is_some());
        s.configure(&c, false, 1000);
        assert!(s.stale(1000), "never established: stale from the start");
        c.readiness = false;
        s.configure(&c, true, 1000);
        assert!(s.stale(2000) && s.not_ready(2000).is_none());
    }
}
