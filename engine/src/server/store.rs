//! Where one-time use is recorded: the engine's own memory table, or Redis shared by a fleet.
//!
//! The core says which marks a batch needs ([`MarkRequest`]) and turns the answers into
//! verdicts; this module performs the marks. A mark on Redis is
//! `SET <prefix><replay id> <entry> NX PX <ms> GET`: it stores the entry only if the token is
//! unused, and in the same round trip returns the entry a first use stored. A batch is one
//! pipeline on a single server; on a Redis Cluster the marks go out together on the cluster
//! connection, which multiplexes them per master.
//!
//! Fail closed, stay up: a store that errs or does not answer within its timeout gives every
//! token of the batch [`MarkOutcome::Unavailable`] (the verdict `unavailable`, never
//! `accepted`). The store is then marked down: `/readyz` answers 503, batches fail at once
//! instead of waiting out the timeout, and a probe (PING every `probe_interval`) marks it up
//! again when it answers. Nothing here blocks a runtime thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tracing::{info, warn};

use crate::{Entry, MarkOutcome, MarkRequest};

/// How a Redis store connects.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS) URLs; several for a Redis Cluster (its seed nodes).
    pub urls: Vec<String>,
    /// Treat the URLs as seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// Key prefix, so several fleets (or environments) can share one Redis.
    pub prefix: String,
    /// AUTH user name, when not in the URL.
    pub username: Option<String>,
    /// A file holding the AUTH password (one line), when not in the URL.
    pub password_file: Option<PathBuf>,
    /// How long a batch's marks may take before its tokens get `unavailable`.
    pub timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How often a store marked down is probed.
    pub probe_interval: Duration,
    /// Seconds added to each entry's lifetime, for clock differences between nodes.
    pub skew_secs: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            prefix: "gatehouse:used:".into(),
            username: None,
            password_file: None,
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_millis(500),
            skew_secs: 5,
        }
    }
}

impl RedisConfig {
    /// The first value out of range, as (field, problem).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.urls.is_empty() {
            return Err(("urls", "at least one URL is needed".into()));
        }
        if !self.cluster && self.urls.len() > 1 {
            return Err((
                "urls",
                "several URLs are the seed nodes of a cluster: set cluster = true".into(),
            ));
        }
        for u in &self.urls {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(("urls", format!("{u:?} is not a redis:// or rediss:// URL")));
            }
        }
        if self.prefix.len() > 64 {
            return Err(("prefix", "at most 64 bytes".into()));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(5) {
            return Err(("timeout", "must be more than 0 and at most 5 s".into()));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(60) {
            return Err((
                "connect_timeout",
                "must be more than 0 and at most 60 s".into(),
            ));
        }
        if self.probe_interval < Duration::from_millis(50)
            || self.probe_interval > Duration::from_secs(60)
        {
            return Err(("probe_interval", "must be 50 ms to 60 s".into()));
        }
        if self.skew_secs > 300 {
            return Err(("skew_secs", "at most 300".into()));
        }
        Ok(())
    }
}

/// Why a store could not be set up.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A URL or setting was refused by the client.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The password file could not be read.
    #[error("{path}: {source}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Counters of a store, for metrics.
#[derive(Debug)]
pub struct StoreHealth {
    up: AtomicBool,
    /// Marks performed (answered by the store).
    pub marks: AtomicU64,
    /// Batches whose marks failed (error or timeout) or were refused while the store was down.
    pub failures: AtomicU64,
    /// Times the store went down.
    pub outages: AtomicU64,
    /// Sum of the store's round-trip times, nanoseconds, and their count.
    pub round_trip_nanos: AtomicU64,
    /// Round trips measured.
    pub round_trips: AtomicU64,
}

impl StoreHealth {
    fn new(up: bool) -> Self {
        StoreHealth {
            up: AtomicBool::new(up),
            marks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            round_trip_nanos: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
        }
    }

    /// Whether the store answered the last time it was asked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool) {
        let was = self.up.swap(up, Ordering::Relaxed);
        if was && !up {
            self.outages.fetch_add(1, Ordering::Relaxed);
            warn!("one-time-use store down: tokens that need it get `unavailable`");
        } else if !was && up {
            info!("one-time-use store up again");
        }
    }
}

/// The one-time-use store of a running server.
#[derive(Clone)]
pub enum Store {
    /// The engine's own memory table (one node).
    Memory,
    /// Redis (or Valkey), shared by every node of a fleet.
    Redis(RedisStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl Store {
    /// Its label in logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Redis(r) if r.cluster => "redis-cluster",
            Store::Redis(_) => "redis",
        }
    }

    /// Whether tokens can be marked now (the memory store always can).
    pub fn is_up(&self) -> bool {
        match self {
            Store::Memory => true,
            Store::Redis(r) => r.health.is_up(),
        }
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A Redis one-time-use store: cheap to clone (one multiplexed connection, shared).
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    cluster: bool,
    prefix: Arc<[u8]>,
    timeout: Duration,
    probe_interval: Duration,
    skew_secs: u64,
    health: Arc<StoreHealth>,
}

impl RedisStore {
    /// Connects, and asks the store once (PING, within the connect timeout). Fails only on a
    /// bad setting; a store that does not answer at start is down (tokens that need it get
    /// `unavailable`) until the probe ([`RedisStore::probe`]) sees it answer.
    pub async fn connect(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let password = match &config.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| StoreError::PasswordFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => None,
        };
        let infos = config
            .urls
            .iter()
            .map(|u| {
                let mut info = redis::IntoConnectionInfo::into_connection_info(u.as_str())?;
                let mut redis_info = info.redis_settings().clone();
                if let Some(user) = &config.username {
                    redis_info = redis_info.set_username(user.clone());
                }
                if let Some(p) = &password {
                    redis_info = redis_info.set_password(p.clone());
                }
                info = info.set_redis_settings(redis_info);
                Ok(info)
            })
            .collect::<Result<Vec<_>, redis::RedisError>>()?;
        let health = Arc::new(StoreHealth::new(false));
        let conn = if config.cluster {
            let client = ClusterClient::builder(infos)
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.timeout)
                .build()?;
            Conn::Cluster(connect_cluster(&client, config.connect_timeout).await?)
        } else {
            let info = infos.into_iter().next().ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no URL"))
            })?;
            let client = redis::Client::open(info)?;
            let cm = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(ConnectionManager::new_lazy_with_config(client, cm)?)
        };
        let store = RedisStore {
            conn,
            cluster: config.cluster,
            prefix: Arc::from(config.prefix.as_bytes()),
            timeout: config.timeout,
            probe_interval: config.probe_interval,
            skew_secs: config.skew_secs,
            health,
        };
        // Up from the start if it answers now; else down until the probe sees it answer.
        let answered = matches!(
            tokio::time::timeout(config.connect_timeout, store.ping()).await,
            Ok(Ok(()))
        );
        if answered {
            store.health.up.store(true, Ordering::Relaxed);
        } else {
            warn!("one-time-use store not answering at start: tokens that need it get `unavailable` until it does");
        }
        Ok(store)
    }

    /// The task that marks the store up when it answers (run it for the server's lifetime).
    pub fn probe(&self) -> StoreProbe {
        StoreProbe {
            store: self.clone(),
            interval: self.probe_interval,
        }
    }

    /// The store's health and counters.
    pub fn health(&self) -> &Arc<StoreHealth> {
        &self.health
    }

    /// Performs the marks of one batch: one answer per mark, in order. Never fails: a store
    /// that is down, errs or is too slow answers [`MarkOutcome::Unavailable`] for every mark.
    pub async fn mark(&self, marks: &[MarkRequest], now: u64) -> Vec<MarkOutcome> {
        if marks.is_empty() {
            return Vec::new();
        }
        if !self.health.is_up() {
            self.health.failures.fetch_add(1, Ordering::Relaxed);
            return vec![MarkOutcome::Unavailable; marks.len()];
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.mark_on_redis(marks, now)).await;
        match result {
            Ok(Ok(outcomes)) => {
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.health
                    .round_trip_nanos
                    .fetch_add(nanos, Ordering::Relaxed);
                self.health.round_trips.fetch_add(1, Ordering::Relaxed);
                self.health
                    .marks
                    .fetch_add(marks.len() as u64, Ordering::Relaxed);
                outcomes
            }
            Ok(Err(e)) => {
                warn!("one-time-use store error: {e}");
                self.fail(marks.len())
            }
            Err(_) => {
                warn!(
                    timeout_ms = self.timeout.as_millis() as u64,
                    "one-time-use store did not answer in time"
                );
                self.fail(marks.len())
            }
        }
    }

    fn fail(&self, n: usize) -> Vec<MarkOutcome> {
        self.health.failures.fetch_add(1, Ordering::Relaxed);
        self.health.set_up(false);
        vec![MarkOutcome::Unavailable; n]
    }

    fn key(&self, replay_id: &[u8; 16]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 32);
        k.extend_from_slice(&self.prefix);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in replay_id {
            k.push(HEX[usize::from(b >> 4)]);
            k.push(HEX[usize::from(b & 15)]);
        }
        k
    }

    fn set_command(&self, m: &MarkRequest, now: u64) -> redis::Cmd {
        // The entry lives until the token's expiry as this node sees it, plus the skew other
        // nodes' clocks may have: no node of the fleet may still find the token fresh once its
        // entry is gone.
        let ttl_ms = m
            .expiry
            .saturating_sub(now)
            .saturating_add(self.skew_secs)
            .max(1)
            .saturating_mul(1000);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&m.replay_id))
            .arg(&m.entry.encode()[..])
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .arg("GET");
        cmd
    }

    async fn mark_on_redis(
        &self,
        marks: &[MarkRequest],
        now: u64,
    ) -> Result<Vec<MarkOutcome>, redis::RedisError> {
        let answers: Vec<Option<Vec<u8>>> = match &self.conn {
            Conn::Single(cm) => {
                let mut pipe = redis::pipe();
                for m in marks {
                    pipe.add_command(self.set_command(m, now));
                }
                let mut cm = cm.clone();
                pipe.query_async(&mut cm).await?
            }
            Conn::Cluster(cc) => {
                // Commands issued together share the cluster connection's per-master
                // multiplexed links; they are answered in one round trip per master.
                let futures = marks.iter().map(|m| {
                    let mut cc = cc.clone();
                    let cmd = self.set_command(m, now);
                    async move { cmd.query_async::<Option<Vec<u8>>>(&mut cc).await }
                });
                futures_util::future::try_join_all(futures).await?
            }
        };
        if answers.len() != marks.len() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "pipeline answered a different number of commands",
            )));
        }
        Ok(answers
            .into_iter()
            .map(|a| match a {
                None => MarkOutcome::Fresh,
                Some(bytes) => MarkOutcome::Taken(Entry::decode(&bytes)),
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), redis::RedisError> {
        match &self.conn {
            Conn::Single(cm) => {
                let mut cm = cm.clone();
                redis::cmd("PING").query_async::<()>(&mut cm).await
            }
            Conn::Cluster(cc) => {
                let mut cc = cc.clone();
                redis::cmd("PING").query_async::<()>(&mut cc).await
            }
        }
    }
}

async fn connect_cluster(
    client: &ClusterClient,
    timeout: Duration,
) -> Result<ClusterConnection, redis::RedisError> {
    match tokio::time::timeout(timeout, client.get_async_connection()).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "connecting to the cluster timed out",
        ))),
    }
}

/// Watches a Redis store: probes it while it is down (and once at start), marks it up when it
/// answers. Run it as a task for the server's lifetime.
pub struct StoreProbe {
    store: RedisStore,
    interval: Duration,
}

impl StoreProbe {
    /// Probes until dropped.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.store.health.is_up() {
                continue;
            }
            let ok = matches!(
                tokio::time::timeout(
                    self.store.timeout.max(Duration::from_millis(200)),
                    self.store.ping()
                )
                .await,
                Ok(Ok(()))
            );
            if ok {
                self.store.health.set_up(true);
            }
        }
    }
}
