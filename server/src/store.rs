//! Where one-time use is recorded: the engine's own memory table, or a store shared by a fleet
//! (Redis or Valkey: one server, a primary found through Sentinel, or a Redis Cluster).
//!
//! The core says which marks a batch needs ([`MarkRequest`]) and turns the answers into
//! verdicts; this module performs the marks. A shared store is a [`SharedStore`]: the policy
//! (timeouts, up and down, the settings check, the one-time-use fence) over a [`Backend`] that
//! speaks to the store ([`RedisBackend`]; tests plug in stores that forget, change identity or
//! answer late).
//!
//! ## One round trip a batch, and the store's life with it
//!
//! A batch's marks are one Lua script call per shard ([`MARK_SCRIPT`]: one for a single server,
//! one per hash slot on a Cluster, sent together). For each mark it runs
//! `SET <prefix><replay id> <entry> NX PX <ms> GET`: it stores the entry only if the token is
//! unused, and returns the entry a first use stored. In the same call it reads the shard's
//! **life**: a key holding the `run_id` of the Redis process that holds it, a nonce and a
//! fence. A restarted process (with or without persistence), a promoted replica, `FLUSHALL`,
//! or the life key evicted: the life the script finds is not the one the node saw last, or
//! there is none and the script starts one. The node then moves its fence ([`LifeBook`]):
//! tokens signed up to now + skew are denied `node_restarted`, since their first use may be
//! what the store forgot. The node never has to catch the loss by a probe in time.
//!
//! ## What no life shows: the settings check
//!
//! One evicted mark, or an old primary that goes on taking writes after a failover, leaves the
//! life as it was. So the node reads the store's settings at start, on every reconnect and every
//! minute ([`Risk`]), and is not ready — marks are refused, tokens get `unavailable` — while
//! marks could vanish silently, unless the operator accepted that risk by name
//! (`accept_risk`). With `replica_acks = N` a mark counts only once N replicas have it (`WAIT`
//! in the same round trip).
//!
//! ## Fail closed, stay up
//!
//! A store that errs or does not answer within its timeout gives every token of the batch
//! [`MarkOutcome::Unavailable`] (the verdict `unavailable`, never `accepted`). The store is then
//! down: `/readyz` answers 503 and batches fail at once. A probe reconnects (through Sentinel,
//! asking which server is the primary now), reads the life and the settings, and only then
//! marks the store up, so what `/readyz` says and the verdicts agree. Nothing here blocks a
//! runtime thread.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ConnectionInfo, Value};
use tracing::{info, warn};

use crate::component::{Component, Rows, Totals};
use crate::invalid::Invalid;
use gatehouse_core::{Entry, Life, LifeBook, MarkOutcome, MarkRequest};

/// The script of a mark round trip (see the module documentation). KEYS[1] is the shard's
/// life key, KEYS[2..] the marks' keys; ARGV[1] and ARGV[2] are the fence and the nonce of a
/// life the script must start; ARGV[2i-1], ARGV[2i] the entry and TTL (ms) of KEYS[i]. It
/// answers the life, then the previous entry of each mark (nil when the mark is fresh).
pub const MARK_SCRIPT: &str = r#"-- gatehouse one-time use, version 1
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local life = redis.call('GET', KEYS[1])
if (not life) or string.sub(life, 1, #run + 1) ~= (run .. ' ') then
  life = run .. ' ' .. ARGV[2] .. ' ' .. ARGV[1]
  redis.call('SET', KEYS[1], life)
end
local out = {life}
for i = 2, #KEYS do
  out[i] = redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'NX', 'PX', ARGV[2 * i], 'GET')
end
return out
"#;

/// The longest a reconnect (with its reading of every shard's life) may take.
const RECONNECT_LIMIT: Duration = Duration::from_secs(30);

/// A risk the operator may accept by name (`[replay] accept_risk`): a way marks can vanish
/// that no life shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Risk {
    /// `maxmemory` is set and `maxmemory-policy` evicts keys: one mark can vanish while the
    /// store lives on.
    Eviction,
    /// The store has replicas and a mark counts before any replica has it (`replica_acks` 0):
    /// after a failover, an old primary that still takes writes (a split brain) holds marks
    /// the new primary never sees.
    SplitBrain,
}

impl Risk {
    /// Every risk.
    pub const ALL: [Risk; 2] = [Risk::Eviction, Risk::SplitBrain];

    /// Its name in `accept_risk`, logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Risk::Eviction => "eviction",
            Risk::SplitBrain => "split-brain",
        }
    }

    /// The risk with this name.
    pub fn parse(s: &str) -> Option<Risk> {
        Risk::ALL.into_iter().find(|r| r.label() == s)
    }
}

/// How a Redis store connects.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS) URLs: one server; the seed nodes of a Redis Cluster
    /// (with `cluster`); or the Sentinels (with `sentinel_master`).
    pub urls: Vec<String>,
    /// Treat the URLs as seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// Treat the URLs as Sentinels, and mark on the primary they name for this master.
    pub sentinel_master: Option<String>,
    /// Key prefix, so several fleets (or environments) can share one Redis.
    pub prefix: String,
    /// AUTH user name, when not in the URL (for the data nodes, not the Sentinels).
    pub username: Option<String>,
    /// A file holding the AUTH password (one line), when not in the URL.
    pub password_file: Option<PathBuf>,
    /// How long a batch's marks may take before its tokens get `unavailable`.
    pub timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How often a store marked down is probed.
    pub probe_interval: Duration,
    /// How often the store's settings are read again while it is up.
    pub settings_interval: Duration,
    /// Seconds added to each entry's lifetime, for clock differences between nodes; also the
    /// skew the fence adds after a store loss.
    pub skew_secs: u64,
    /// A mark counts only once this many replicas acknowledged it (`WAIT`); 0: at once.
    pub replica_acks: u32,
    /// Risks the operator accepted by name: the node runs although the settings allow them.
    pub accept_risk: Vec<Risk>,
    /// The clock the store's checks and fences read (the server's).
    pub clock: Arc<dyn gatehouse_core::Clock>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            sentinel_master: None,
            prefix: "gatehouse:used:".into(),
            username: None,
            password_file: None,
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_millis(500),
            settings_interval: Duration::from_secs(60),
            skew_secs: 5,
            replica_acks: 0,
            accept_risk: Vec::new(),
            clock: Arc::new(gatehouse_core::SystemClock),
        }
    }
}

impl RedisConfig {
    /// The first value out of range, named by its key in `[replay]`.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.urls.is_empty() {
            return Err(Invalid::new("urls", "at least one URL is needed"));
        }
        if self.cluster && self.sentinel_master.is_some() {
            return Err(Invalid::new(
                "sentinel_master",
                "a Redis Cluster does not use Sentinel: set cluster = false or remove \
                 sentinel_master",
            ));
        }
        if !self.cluster && self.sentinel_master.is_none() && self.urls.len() > 1 {
            return Err(Invalid::new(
                "urls",
                "several URLs are the seed nodes of a cluster (cluster = true) or Sentinels \
                 (sentinel_master = \"name\")",
            ));
        }
        for u in &self.urls {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(Invalid::new(
                    "urls",
                    format!("{u:?} is not a redis:// or rediss:// URL"),
                ));
            }
        }
        if self.sentinel_master.as_deref().is_some_and(str::is_empty) {
            return Err(Invalid::new("sentinel_master", "must name the master"));
        }
        if self.prefix.len() > 64 {
            return Err(Invalid::new("prefix", "at most 64 bytes"));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(5) {
            return Err(Invalid::new(
                "timeout_ms",
                "must be more than 0 and at most 5 s",
            ));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(60) {
            return Err(Invalid::new(
                "connect_timeout_ms",
                "must be more than 0 and at most 60 s",
            ));
        }
        if self.probe_interval < Duration::from_millis(50)
            || self.probe_interval > Duration::from_secs(60)
        {
            return Err(Invalid::new("probe_interval_ms", "must be 50 ms to 60 s"));
        }
        if self.settings_interval < Duration::from_secs(1)
            || self.settings_interval > Duration::from_secs(3600)
        {
            return Err(Invalid::new(
                "settings_interval_secs",
                "must be 1 s to 1 hour",
            ));
        }
        if self.skew_secs > 300 {
            return Err(Invalid::new("skew_secs", "at most 300"));
        }
        if self.replica_acks > 16 {
            return Err(Invalid::new("replica_acks", "at most 16"));
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

/// Why one round trip to a shared store did not count.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The client or the server answered an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No connection (not yet made, or dropped after an error).
    #[error("not connected")]
    NotConnected,
    /// The answer was not of the script's form.
    #[error("unexpected answer: {0}")]
    Answer(&'static str),
    /// Fewer replicas than `replica_acks` acknowledged the marks in time.
    #[error("{got} of {want} replicas acknowledged the marks")]
    NotReplicated {
        /// Replicas that acknowledged.
        got: u64,
        /// Replicas required.
        want: u32,
    },
    /// A test store's own failure.
    #[error("{0}")]
    Other(String),
}

/// What a shard starts a life with, should a round trip find none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLife {
    /// The last timestamp the node cannot vouch for (now + skew).
    pub fence: u64,
    /// Distinguishes this life from any before it on the same process.
    pub nonce: String,
}

/// A backend's answer to one batch's marks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// For each mark, in order: the entry a first use stored, or `None` when this mark is the
    /// first use.
    pub taken: Vec<Option<Entry>>,
    /// The life of each shard the marks went to.
    pub lives: Vec<Life>,
}

/// What a backend could read of the store's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Risks the settings allow.
    pub risks: Vec<(Risk, String)>,
    /// Settings that could not be read (a managed Redis that disables `CONFIG`), and why.
    pub unchecked: Vec<String>,
    /// Why marks cannot count now (fewer replicas than `replica_acks`), if so.
    pub short: Option<String>,
}

/// The store a [`SharedStore`] speaks to: Redis, or a test's own.
pub trait Backend: Send + Sync + 'static {
    /// Its label in logs and metrics.
    fn label(&self) -> &'static str;

    /// Performs one batch's marks and reads the life of each shard they touch, in one round
    /// trip per shard.
    fn mark<'a>(
        &'a self,
        marks: &'a [MarkRequest],
        now: u64,
        new_life: &'a NewLife,
    ) -> BoxFuture<'a, Result<Answer, Fault>>;

    /// Connects afresh (through Sentinel: to the server that is primary now) and reads the
    /// life of every shard.
    fn reconnect<'a>(&'a self, new_life: &'a NewLife) -> BoxFuture<'a, Result<Vec<Life>, Fault>>;

    /// Reads the settings that decide whether marks can vanish silently.
    fn settings(&self) -> BoxFuture<'_, Settings>;
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
    /// Times a shard's life changed (the store may have forgotten marks): the fence moved.
    pub life_changes: AtomicU64,
    /// The first token timestamp this node may accept, as the store's lives require.
    pub accept_from: AtomicU64,
    /// The last settings read allow a risk the operator did not accept.
    pub unsafe_settings: AtomicBool,
    settings: Mutex<Settings>,
}

impl StoreHealth {
    fn new() -> Self {
        StoreHealth {
            up: AtomicBool::new(false),
            marks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            round_trip_nanos: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            life_changes: AtomicU64::new(0),
            accept_from: AtomicU64::new(0),
            unsafe_settings: AtomicBool::new(false),
            settings: Mutex::new(Settings::default()),
        }
    }

    /// Whether marks are made now: the store answered the last time it was asked, its life
    /// is known, and its settings allow no risk the operator did not accept.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The store's settings as last read.
    pub fn settings(&self) -> Settings {
        self.settings.lock().clone()
    }

    fn set_up(&self, up: bool) {
        let was = self.up.swap(up, Ordering::AcqRel);
        if was && !up {
            self.outages.fetch_add(1, Ordering::Relaxed);
            warn!("one-time-use store down: tokens that need it get `unavailable`");
        } else if !was && up {
            info!("one-time-use store up: its life and settings checked");
        }
    }
}

/// The one-time-use store of a running server.
#[derive(Clone)]
pub enum Store {
    /// The engine's own memory table (one node).
    Memory,
    /// A store shared by every node of a fleet.
    Shared(SharedStore),
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
            Store::Shared(s) => s.backend.label(),
        }
    }

    /// Whether tokens can be marked now (the memory store always can).
    pub fn is_up(&self) -> bool {
        match self {
            Store::Memory => true,
            Store::Shared(s) => s.health.is_up(),
        }
    }

    /// Why tokens cannot be marked now, for `/readyz`; `None` when they can.
    pub fn not_ready(&self) -> Option<&'static str> {
        match self {
            Store::Shared(s) if !s.health.is_up() => {
                Some(if s.health.unsafe_settings.load(Ordering::Acquire) {
                    "one-time-use store settings can lose marks (see the log; accept_risk)"
                } else {
                    "one-time-use store unavailable"
                })
            }
            _ => None,
        }
    }
}

/// What a [`SharedStore`] answered for one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    /// One outcome per mark, in order.
    pub outcomes: Vec<MarkOutcome>,
    /// The first token timestamp the node may accept, as the store's lives require now: give
    /// it to [`Engine::raise_fence`](gatehouse_core::Engine::raise_fence) before completing the batch.
    pub accept_from: u64,
}

/// The policy over a shared store's [`Backend`]: cheap to clone.
#[derive(Clone)]
pub struct SharedStore {
    backend: Arc<dyn Backend>,
    book: Arc<LifeBook>,
    health: Arc<StoreHealth>,
    timeout: Duration,
    probe_interval: Duration,
    settings_interval: Duration,
    skew_secs: u64,
    accept_risk: Arc<[Risk]>,
    node: Arc<str>,
    lives_started: Arc<AtomicU64>,
    refreshing: Arc<AtomicBool>,
    /// The last check connected and read the lives, and only the settings kept it down.
    held_by_settings: Arc<AtomicBool>,
    clock: Arc<dyn gatehouse_core::Clock>,
}

impl SharedStore {
    /// Connects to Redis as `config` says and makes the first check (life and settings) within
    /// the connect timeout. Fails only on a bad setting; a store that does not answer at start
    /// is down (tokens that need it get `unavailable`) until the probe
    /// ([`SharedStore::probe`]) sees it answer.
    pub async fn connect(config: &RedisConfig) -> Result<SharedStore, StoreError> {
        let backend = RedisBackend::connect(config).await?;
        Ok(SharedStore::start(Arc::new(backend), config).await)
    }

    /// A store over `backend`, checked once (within the connect timeout).
    pub async fn start(backend: Arc<dyn Backend>, config: &RedisConfig) -> SharedStore {
        let store = SharedStore::new(backend, config);
        if !store.check(store.clock.now()).await {
            warn!("one-time-use store not answering at start: tokens that need it get `unavailable` until it does");
        }
        store
    }

    /// A store over `backend`, down until checked ([`SharedStore::check`] or the probe).
    pub fn new(backend: Arc<dyn Backend>, config: &RedisConfig) -> SharedStore {
        SharedStore {
            backend,
            book: Arc::new(LifeBook::new(config.skew_secs)),
            health: Arc::new(StoreHealth::new()),
            timeout: config.timeout,
            probe_interval: config.probe_interval,
            settings_interval: config.settings_interval,
            skew_secs: config.skew_secs,
            accept_risk: config.accept_risk.clone().into(),
            node: node_nonce().into(),
            lives_started: Arc::new(AtomicU64::new(0)),
            refreshing: Arc::new(AtomicBool::new(false)),
            held_by_settings: Arc::new(AtomicBool::new(false)),
            clock: Arc::clone(&config.clock),
        }
    }

    /// The task that reconnects a store that is down and reads the settings of one that is
    /// up (run it for the server's lifetime).
    pub fn probe(&self) -> StoreProbe {
        StoreProbe {
            store: self.clone(),
        }
    }

    /// The store's health and counters.
    pub fn health(&self) -> &Arc<StoreHealth> {
        &self.health
    }

    /// The first token timestamp the node may accept, as the store's lives require.
    pub fn accept_from(&self) -> u64 {
        self.health.accept_from.load(Ordering::Acquire)
    }

    fn new_life(&self, now: u64) -> NewLife {
        let n = self.lives_started.fetch_add(1, Ordering::Relaxed);
        NewLife {
            fence: now.saturating_add(self.skew_secs),
            nonce: format!("{}-{n}", self.node),
        }
    }

    /// Takes the lives a round trip showed: moves the fence when one changed.
    fn observe(&self, lives: &[Life], now: u64) {
        let seen = self.book.observe(lives, now);
        if seen.changes > 0 {
            self.health
                .life_changes
                .fetch_add(u64::from(seen.changes), Ordering::Relaxed);
            // A shard changed: read every shard's life now (a cluster's other slots on the
            // same master changed too), so the fence moves once rather than slot by slot.
            if lives.len() < self.book.len()
                && !self.refreshing.swap(true, Ordering::AcqRel)
                && tokio::runtime::Handle::try_current().is_ok()
            {
                let store = self.clone();
                tokio::spawn(async move {
                    let life = store.new_life(now);
                    if let Ok(Ok(lives)) =
                        tokio::time::timeout(RECONNECT_LIMIT, store.backend.reconnect(&life)).await
                    {
                        store.observe(&lives, store.clock.now());
                    }
                    store.refreshing.store(false, Ordering::Release);
                });
            }
        }
        if let Some(from) = seen.accept_from {
            let before = self.health.accept_from.fetch_max(from, Ordering::AcqRel);
            if seen.changes > 0 && from > before {
                warn!(
                    shards = seen.changes,
                    accept_from = from,
                    "one-time-use store may have forgotten marks (a new life: restart, failover \
                     or flush): tokens signed before accept_from are denied `node_restarted`"
                );
            }
        }
    }

    /// Reconnects, reads the life and the settings at `now` (Unix seconds); marks the store up
    /// when all is well. Returns whether it is up.
    pub async fn check(&self, now: u64) -> bool {
        // The last check connected and read the lives, and only the settings kept the store
        // down (a risk not accepted, or fewer replicas than replica_acks): read the settings
        // alone until they pass. A cluster's reconnect reads all 16,384 slots' lives; repeated
        // at every probe tick on a store already in trouble, it was the probe's whole load.
        if self.held_by_settings.load(Ordering::Acquire) {
            match self.read_settings_in_time().await {
                Some(false) => return false,
                // They pass, or could not be read (the connection may be gone): a full check.
                Some(true) | None => self.held_by_settings.store(false, Ordering::Release),
            }
        }
        let life = self.new_life(now);
        // The backend bounds each step itself (connect timeout, response timeout); this only
        // keeps a backend that hangs from holding the probe forever. A cluster's reconnect
        // reads all 16,384 slots' lives.
        let lives = tokio::time::timeout(RECONNECT_LIMIT, self.backend.reconnect(&life)).await;
        match lives {
            Ok(Ok(lives)) => self.observe(&lives, now),
            Ok(Err(e)) => {
                warn!("one-time-use store: reconnect failed: {e}");
                return false;
            }
            Err(_) => return false,
        }
        let safe = self.read_settings_in_time().await;
        self.held_by_settings
            .store(safe == Some(false), Ordering::Release);
        let safe = safe == Some(true);
        self.health.set_up(safe);
        safe
    }

    /// Reads the settings; returns whether they allow no risk the operator did not accept.
    async fn read_settings(&self) -> bool {
        self.read_settings_in_time().await == Some(true)
    }

    /// [`SharedStore::read_settings`], `None` when they could not be read in time.
    async fn read_settings_in_time(&self) -> Option<bool> {
        let Ok(settings) = tokio::time::timeout(
            self.timeout.max(Duration::from_secs(2)),
            self.backend.settings(),
        )
        .await
        else {
            warn!("one-time-use store: its settings could not be read in time");
            return None;
        };
        let safe = settings
            .risks
            .iter()
            .all(|(risk, _)| self.accept_risk.contains(risk));
        let able = settings.short.is_none();
        // Said once when the findings change, not at every probe.
        if *self.health.settings.lock() != settings {
            for (risk, why) in &settings.risks {
                if self.accept_risk.contains(risk) {
                    warn!(
                        risk = risk.label(),
                        "one-time-use store: {why} (risk accepted by accept_risk)"
                    );
                } else {
                    warn!(
                        risk = risk.label(),
                        "one-time-use store: {why}: marks could vanish silently, so the node \
                         refuses them; fix the setting, or accept_risk = [\"{}\"]",
                        risk.label()
                    );
                }
            }
            for what in &settings.unchecked {
                warn!("one-time-use store: could not check {what}");
            }
            if let Some(why) = &settings.short {
                warn!(
                    "one-time-use store: {why}: marks cannot count until enough replicas are back"
                );
            }
        }
        *self.health.settings.lock() = settings;
        self.health.unsafe_settings.store(!safe, Ordering::Release);
        Some(safe && able)
    }

    /// Risks the store's settings allow, each with whether the operator accepted it.
    pub fn risks(&self) -> Vec<(Risk, bool)> {
        self.health
            .settings
            .lock()
            .risks
            .iter()
            .map(|(r, _)| (*r, self.accept_risk.contains(r)))
            .collect()
    }

    /// Performs the marks of one batch: one answer per mark, in order, and the fence the
    /// store's lives require. Never fails: a store that is down, errs or is too slow answers
    /// [`MarkOutcome::Unavailable`] for every mark.
    pub async fn mark(&self, marks: &[MarkRequest], now: u64) -> Marked {
        let outcomes = self.mark_outcomes(marks, now).await;
        Marked {
            outcomes,
            accept_from: self.accept_from(),
        }
    }

    async fn mark_outcomes(&self, marks: &[MarkRequest], now: u64) -> Vec<MarkOutcome> {
        if marks.is_empty() {
            return Vec::new();
        }
        if !self.health.is_up() {
            self.health.failures.fetch_add(1, Ordering::Relaxed);
            return vec![MarkOutcome::Unavailable; marks.len()];
        }
        let started = Instant::now();
        let life = self.new_life(now);
        let result = tokio::time::timeout(self.timeout, self.backend.mark(marks, now, &life)).await;
        match result {
            Ok(Ok(answer)) if answer.taken.len() == marks.len() => {
                self.observe(&answer.lives, now);
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.health
                    .round_trip_nanos
                    .fetch_add(nanos, Ordering::Relaxed);
                self.health.round_trips.fetch_add(1, Ordering::Relaxed);
                self.health
                    .marks
                    .fetch_add(marks.len() as u64, Ordering::Relaxed);
                answer
                    .taken
                    .into_iter()
                    .map(|t| match t {
                        None => MarkOutcome::Fresh,
                        Some(first) => MarkOutcome::Taken(first),
                    })
                    .collect()
            }
            Ok(Ok(_)) => {
                warn!("one-time-use store answered a different number of marks");
                self.fail(marks.len())
            }
            Ok(Err(Fault::NotReplicated { got, want })) => {
                // The marks are on the primary but not on enough replicas: they do not count.
                // The store is down until the probe sees enough replicas again (its settings
                // check), so /readyz and the verdicts agree.
                warn!(
                    got,
                    want, "one-time-use store: marks not acknowledged by the replicas in time"
                );
                self.fail(marks.len())
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
}

/// A random nonce for this node's new lives.
fn node_nonce() -> String {
    use rand_core::{OsRng, RngCore};
    let mut b = [0u8; 6];
    if OsRng.try_fill_bytes(&mut b).is_err() {
        // Uniqueness is what matters; time and pid are enough should the OS refuse.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        return format!("{t:x}{:x}", std::process::id());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Watches a shared store for the server's lifetime: reconnects and re-checks it while it is
/// down, and reads its settings again every `settings_interval` while it is up.
pub struct StoreProbe {
    store: SharedStore,
}

impl StoreProbe {
    /// Probes until dropped.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.store.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_settings = Instant::now();
        loop {
            tick.tick().await;
            if !self.store.health.is_up() {
                if self.store.check(self.store.clock.now()).await {
                    last_settings = Instant::now();
                }
                continue;
            }
            if last_settings.elapsed() >= self.store.settings_interval {
                last_settings = Instant::now();
                if !self.store.read_settings().await {
                    self.store.health.set_up(false);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

enum Conn {
    /// One server, or the primary Sentinel names: our own connection, replaced on reconnect.
    Single(RwLock<Option<MultiplexedConnection>>),
    /// A Redis Cluster: its client follows the topology while up; a reconnect makes a new
    /// connection, which reads the slots afresh.
    Cluster(Box<ClusterClient>, RwLock<ClusterConnection>),
}

enum Target {
    Server(Box<ConnectionInfo>),
    Sentinel(Box<redis::sentinel::SentinelClient>),
}

/// A Redis (or Valkey) store: one server, a Sentinel-managed primary, or a Redis Cluster.
pub struct RedisBackend {
    conn: Conn,
    target: Option<tokio::sync::Mutex<Target>>,
    label: &'static str,
    prefix: Vec<u8>,
    slot_lives: Vec<Option<Vec<u8>>>,
    sha: String,
    skew_secs: u64,
    replica_acks: u32,
    timeout: Duration,
    connect_timeout: Duration,
    sentinel: bool,
}

impl RedisBackend {
    /// A backend for `config`. A single server or Sentinel is connected on the first
    /// [`Backend::reconnect`]; a cluster client is made at once (within the connect timeout)
    /// and follows the cluster by itself.
    pub async fn connect(config: &RedisConfig) -> Result<RedisBackend, StoreError> {
        let credentials = Credentials::read(config)?;
        let infos = config
            .urls
            .iter()
            .map(|u| redis::IntoConnectionInfo::into_connection_info(u.as_str()))
            .collect::<Result<Vec<_>, redis::RedisError>>()?;
        let prefix = config.prefix.as_bytes().to_vec();
        let (conn, target, label, slot_lives) = if config.cluster {
            let conn = connect_cluster(config, &credentials, infos).await?;
            (conn, None, "redis-cluster", slot_life_keys(&prefix))
        } else if let Some(master) = &config.sentinel_master {
            let target = sentinel_target(master, &credentials, infos)?;
            (
                Conn::Single(RwLock::new(None)),
                Some(target),
                "redis-sentinel",
                Vec::new(),
            )
        } else {
            let info = infos.into_iter().next().ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no URL"))
            })?;
            let target = Target::Server(Box::new(credentials.apply(info)));
            let target = Some(tokio::sync::Mutex::new(target));
            (Conn::Single(RwLock::new(None)), target, "redis", Vec::new())
        };
        Ok(RedisBackend {
            conn,
            target,
            label,
            prefix,
            slot_lives,
            sha: redis::Script::new(MARK_SCRIPT).get_hash().to_string(),
            skew_secs: config.skew_secs,
            replica_acks: config.replica_acks,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            sentinel: config.sentinel_master.is_some(),
        })
    }

    /// How long `WAIT` waits for the replicas: two thirds of the batch's timeout, so that its
    /// answer (too few) arrives before the batch times out and the store is not marked down.
    fn wait_ms(&self) -> u64 {
        (self.timeout.as_millis() as u64 * 2 / 3).max(1)
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

    fn single_life_key(&self) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(b"life");
        k
    }

    /// The script call for `marks` (all of one shard), with the shard's life key.
    fn script_args(
        &self,
        life_key: &[u8],
        marks: &[&MarkRequest],
        now: u64,
        new_life: &NewLife,
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut keys = Vec::with_capacity(marks.len() + 1);
        let mut args = Vec::with_capacity(2 * marks.len() + 2);
        keys.push(life_key.to_vec());
        args.push(new_life.fence.to_string().into_bytes());
        args.push(new_life.nonce.clone().into_bytes());
        for m in marks {
            // The entry lives until the token's expiry as this node sees it, plus the skew
            // other nodes' clocks may have: no node of the fleet may still find the token
            // fresh once its entry is gone.
            let ttl_ms = m
                .expiry
                .saturating_sub(now)
                .saturating_add(self.skew_secs)
                .max(1)
                .saturating_mul(1000);
            keys.push(self.key(&m.replay_id));
            args.push(m.entry.encode().to_vec());
            args.push(ttl_ms.to_string().into_bytes());
        }
        (keys, args)
    }

    /// The script call, and `WAIT` for the replicas after it when `wait`.
    fn script_pipeline(
        &self,
        by_sha: bool,
        keys: &[Vec<u8>],
        args: &[Vec<u8>],
        wait: bool,
    ) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.add_command(self.script_cmd(by_sha, keys, args));
        if wait {
            pipe.cmd("WAIT").arg(self.replica_acks).arg(self.wait_ms());
        }
        pipe
    }

    fn script_cmd(&self, by_sha: bool, keys: &[Vec<u8>], args: &[Vec<u8>]) -> redis::Cmd {
        let mut cmd = if by_sha {
            let mut c = redis::cmd("EVALSHA");
            c.arg(&self.sha);
            c
        } else {
            let mut c = redis::cmd("EVAL");
            c.arg(MARK_SCRIPT);
            c
        };
        cmd.arg(keys.len()).arg(keys).arg(args);
        cmd
    }

    fn connection(&self) -> Result<MultiplexedConnection, Fault> {
        match &self.conn {
            Conn::Single(c) => c.read().clone().ok_or(Fault::NotConnected),
            Conn::Cluster(..) => Err(Fault::NotConnected),
        }
    }

    /// One shard's script call on a single server (with `WAIT` in the same round trip when
    /// replicas must acknowledge). Falls back to `EVAL` once when the server does not know the
    /// script yet (a new process).
    async fn call_single(
        &self,
        keys: &[Vec<u8>],
        args: &[Vec<u8>],
        wait: bool,
    ) -> Result<Vec<Value>, Fault> {
        let mut conn = self.connection()?;
        let mut by_sha = true;
        let wait = wait && self.replica_acks > 0;
        loop {
            let pipe = self.script_pipeline(by_sha, keys, args, wait);
            // A server error inside the pipeline (NOSCRIPT, OOM, READONLY) may come back as a
            // value: it is an error all the same.
            let answer: Result<Vec<Value>, redis::RedisError> = pipe
                .query_async(&mut conn)
                .await
                .and_then(Self::no_server_error);
            match answer {
                Err(e) if by_sha && is_noscript(&e) => by_sha = false,
                Err(e) => {
                    // Drop the connection: the probe makes a new one and checks the life.
                    if let Conn::Single(c) = &self.conn {
                        *c.write() = None;
                    }
                    return Err(e.into());
                }
                Ok(values) => return self.script_answer(values, wait),
            }
        }
    }

    /// One slot's script call on its master (with `WAIT` in the same round trip when replicas
    /// must acknowledge).
    async fn call_cluster(
        &self,
        cc: &ClusterConnection,
        slot: u16,
        keys: &[Vec<u8>],
        args: &[Vec<u8>],
        wait: bool,
    ) -> Result<Vec<Value>, Fault> {
        use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
        let mut cc = cc.clone();
        let mut by_sha = true;
        let wait = wait && self.replica_acks > 0;
        loop {
            let pipe = self.script_pipeline(by_sha, keys, args, wait);
            let n = if wait { 2 } else { 1 };
            let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
            match cc
                .route_pipeline(pipe, 0, n, route)
                .await
                .and_then(Self::no_server_error)
            {
                Err(e) if by_sha && is_noscript(&e) => by_sha = false,
                Err(e) => return Err(e.into()),
                Ok(values) => return self.script_answer(values, wait),
            }
        }
    }

    /// The script's list from a pipeline's answers, after checking `WAIT`'s count.
    fn script_answer(&self, mut values: Vec<Value>, wait: bool) -> Result<Vec<Value>, Fault> {
        if wait {
            let acks = match values.pop() {
                Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
                _ => return Err(Fault::Answer("WAIT answered no count")),
            };
            if acks < u64::from(self.replica_acks) {
                return Err(Fault::NotReplicated {
                    got: acks,
                    want: self.replica_acks,
                });
            }
        }
        match values.pop() {
            Some(Value::Array(v)) => Ok(v),
            Some(Value::ServerError(e)) => Err(Fault::Redis(e.into())),
            _ => Err(Fault::Answer("the script answered no list")),
        }
    }

    /// A pipeline's answers with the first server error among them made an error (the
    /// cluster client hands them back as values).
    fn no_server_error(values: Vec<Value>) -> Result<Vec<Value>, redis::RedisError> {
        match values.iter().find_map(|v| match v {
            Value::ServerError(e) => Some(e.clone()),
            _ => None,
        }) {
            Some(e) => Err(e.into()),
            None => Ok(values),
        }
    }

    /// Reads (or starts) one hash slot's life.
    async fn slot_life(
        &self,
        cc: &ClusterConnection,
        slot: u16,
        new_life: &NewLife,
    ) -> Result<Life, Fault> {
        let key = self
            .slot_lives
            .get(usize::from(slot))
            .and_then(Option::as_ref)
            .ok_or(Fault::Answer("no life key for a hash slot"))?;
        let (keys, args) = self.script_args(key, &[], 0, new_life);
        // A life is read without waiting for replicas: one WAIT per slot would hold the
        // connection for each of them; a life lost with its master shows as a new life anyway.
        let values = self.call_cluster(cc, slot, &keys, &args, false).await?;
        let life = values
            .first()
            .ok_or(Fault::Answer("the script answered no life"))?;
        parse_life(slot, life)
    }

    async fn connect_single(&self) -> Result<(), Fault> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let mut target = target.lock().await;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout.max(Duration::from_millis(500))));
        let client = match &mut *target {
            Target::Server(info) => redis::Client::open((**info).clone())?,
            // Which server is primary now: asked anew on every reconnect.
            Target::Sentinel(s) => s.async_get_client().await?,
        };
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if let Conn::Single(c) = &self.conn {
            *c.write() = Some(conn);
        }
        Ok(())
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// The life in a script's first answer.
fn parse_life(shard: u16, v: &Value) -> Result<Life, Fault> {
    let bytes = match v {
        Value::BulkString(b) => b.as_slice(),
        Value::SimpleString(s) => s.as_bytes(),
        _ => return Err(Fault::Answer("the life is not a string")),
    };
    let text = String::from_utf8_lossy(bytes);
    // "<run id> <nonce> <fence>": a value of another form is still a life (its id is what it
    // is), with no fence of its own.
    let (id, fence) = match text.rsplit_once(' ') {
        Some((id, fence)) => match fence.parse::<u64>() {
            Ok(f) => (id.to_string(), f),
            Err(_) => (text.to_string(), 0),
        },
        None => (text.to_string(), 0),
    };
    Ok(Life { shard, id, fence })
}

/// The previous entries in a script's answer after the life.
fn parse_taken(values: &[Value]) -> Result<Vec<Option<Entry>>, Fault> {
    values
        .iter()
        .map(|v| match v {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(Entry::decode(b))),
            _ => Err(Fault::Answer("a mark's answer is not an entry")),
        })
        .collect()
}

impl Backend for RedisBackend {
    fn label(&self) -> &'static str {
        self.label
    }

    fn mark<'a>(
        &'a self,
        marks: &'a [MarkRequest],
        now: u64,
        new_life: &'a NewLife,
    ) -> BoxFuture<'a, Result<Answer, Fault>> {
        Box::pin(async move {
            match &self.conn {
                Conn::Single(_) => {
                    let refs: Vec<&MarkRequest> = marks.iter().collect();
                    let (keys, args) =
                        self.script_args(&self.single_life_key(), &refs, now, new_life);
                    let values = self.call_single(&keys, &args, true).await?;
                    let (life, rest) = values
                        .split_first()
                        .ok_or(Fault::Answer("the script answered no life"))?;
                    Ok(Answer {
                        taken: parse_taken(rest)?,
                        lives: vec![parse_life(0, life)?],
                    })
                }
                Conn::Cluster(_, cc) => {
                    let cc = &cc.read().clone();
                    // One script call per hash slot, sent together: the cluster client
                    // answers them in one round trip per master.
                    let mut groups: HashMap<u16, Vec<usize>> = HashMap::new();
                    for (i, m) in marks.iter().enumerate() {
                        groups
                            .entry(slot(&self.key(&m.replay_id)))
                            .or_default()
                            .push(i);
                    }
                    let calls = groups.into_iter().map(|(slot, idx)| async move {
                        let life_key = self
                            .slot_lives
                            .get(usize::from(slot))
                            .and_then(Option::as_ref)
                            .ok_or(Fault::Answer("no life key for a hash slot"))?;
                        let refs: Vec<&MarkRequest> = idx.iter().map(|&i| &marks[i]).collect();
                        let (keys, args) = self.script_args(life_key, &refs, now, new_life);
                        let values = self.call_cluster(cc, slot, &keys, &args, true).await?;
                        Ok::<_, Fault>((slot, idx, values))
                    });
                    let answers = futures_util::future::try_join_all(calls).await?;
                    let mut taken = vec![None; marks.len()];
                    let mut lives = Vec::with_capacity(answers.len());
                    for (slot, idx, values) in answers {
                        let (life, rest) = values
                            .split_first()
                            .ok_or(Fault::Answer("the script answered no life"))?;
                        lives.push(parse_life(slot, life)?);
                        let t = parse_taken(rest)?;
                        if t.len() != idx.len() {
                            return Err(Fault::Answer(
                                "a shard answered a different number of marks",
                            ));
                        }
                        for (i, e) in idx.into_iter().zip(t) {
                            taken[i] = e;
                        }
                    }
                    Ok(Answer { taken, lives })
                }
            }
        })
    }

    fn reconnect<'a>(&'a self, new_life: &'a NewLife) -> BoxFuture<'a, Result<Vec<Life>, Fault>> {
        Box::pin(async move {
            match &self.conn {
                Conn::Single(_) => {
                    self.connect_single().await?;
                    let (keys, args) = self.script_args(&self.single_life_key(), &[], 0, new_life);
                    let values = self.call_single(&keys, &args, false).await?;
                    let life = values
                        .first()
                        .ok_or(Fault::Answer("the script answered no life"))?;
                    Ok(vec![parse_life(0, life)?])
                }
                Conn::Cluster(client, conn) => {
                    // A new connection reads the slots afresh (after a failover the old one may
                    // still point at a dead master). Every slot's life is read (and started
                    // where there is none) at once: a slot first touched by a mark long after
                    // a loss would otherwise move the fence again, then.
                    use futures_util::{StreamExt, TryStreamExt};
                    let fresh = client.get_async_connection().await?;
                    *conn.write() = fresh.clone();
                    let cc = &fresh;
                    let calls: Vec<_> = (0..self.slot_lives.len())
                        .filter(|&slot| self.slot_lives[slot].is_some())
                        .filter_map(|slot| u16::try_from(slot).ok())
                        .map(|slot| self.slot_life(cc, slot, new_life))
                        .collect();
                    // The first failure ends the sweep (the probe tries again).
                    futures_util::stream::iter(calls)
                        .buffer_unordered(256)
                        .try_collect()
                        .await
                }
            }
        })
    }

    fn settings(&self) -> BoxFuture<'_, Settings> {
        Box::pin(async move {
            let mut s = Settings::default();
            let (policy, maxmemory, replicas) = match &self.conn {
                Conn::Single(_) => match self.connection() {
                    Ok(mut c) => (
                        config_get(&mut c, "maxmemory-policy").await,
                        config_get(&mut c, "maxmemory").await,
                        connected_replicas(&mut c).await,
                    ),
                    Err(e) => {
                        s.unchecked.push(format!("the settings ({e})"));
                        return s;
                    }
                },
                Conn::Cluster(_, cc) => {
                    // One node's settings (set them alike on every node); the replicas from
                    // the cluster's own view.
                    let mut c = cc.read().clone();
                    (
                        config_get(&mut c, "maxmemory-policy").await,
                        config_get(&mut c, "maxmemory").await,
                        cluster_replicas(&mut c).await,
                    )
                }
            };
            match (policy, maxmemory) {
                (Ok(p), Ok(m)) => {
                    if p != "noeviction" && m != "0" {
                        s.risks.push((
                            Risk::Eviction,
                            format!("maxmemory-policy is {p} with maxmemory {m}: a full store evicts marks"),
                        ));
                    }
                }
                (Err(e), _) | (_, Err(e)) => s.unchecked.push(format!(
                    "maxmemory-policy ({e}); make sure it is noeviction"
                )),
            }
            if let Ok(n) = &replicas {
                if *n < u64::from(self.replica_acks) {
                    s.short = Some(format!(
                        "{n} replica(s) can acknowledge marks and replica_acks is {}",
                        self.replica_acks
                    ));
                }
            }
            match replicas {
                Ok(n) if (n > 0 || self.sentinel) && self.replica_acks == 0 => s.risks.push((
                    Risk::SplitBrain,
                    format!(
                        "the primary has {n} replica(s) and replica_acks is 0: after a failover an \
                         old primary can keep taking marks the new one never sees"
                    ),
                )),
                Ok(_) => {}
                Err(e) => s.unchecked.push(format!("the replicas ({e})")),
            }
            s
        })
    }
}

async fn config_get<C: redis::aio::ConnectionLike>(c: &mut C, name: &str) -> Result<String, Fault> {
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(c)
        .await?;
    v.get(1)
        .cloned()
        .ok_or(Fault::Answer("CONFIG GET answered nothing"))
}

async fn connected_replicas<C: redis::aio::ConnectionLike>(c: &mut C) -> Result<u64, Fault> {
    let info: String = redis::cmd("INFO").arg("replication").query_async(c).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or(Fault::Answer("INFO replication has no connected_slaves"))
}

/// The fewest healthy replicas any master of the cluster has (from `CLUSTER NODES`).
async fn cluster_replicas<C: redis::aio::ConnectionLike>(c: &mut C) -> Result<u64, Fault> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
    let mut masters: HashMap<&str, u64> = HashMap::new();
    let mut replicas: Vec<&str> = Vec::new();
    for l in nodes.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let (Some(id), Some(flags), Some(master)) = (f.first(), f.get(2), f.get(3)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if flags
            .iter()
            .any(|f| *f == "fail" || *f == "fail?" || *f == "noaddr")
        {
            continue;
        }
        if flags.contains(&"master") && f.len() > 8 {
            masters.entry(id).or_insert(0);
        } else if flags.iter().any(|f| *f == "slave" || *f == "replica") {
            replicas.push(master);
        }
    }
    for m in replicas {
        if let Some(n) = masters.get_mut(m) {
            *n += 1;
        }
    }
    masters
        .values()
        .min()
        .copied()
        .ok_or(Fault::Answer("CLUSTER NODES lists no master with slots"))
}

/// The hash slot of a key (CRC16/XMODEM of the key or its `{hash tag}`, mod 16384).
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// For each hash slot, a life key of this prefix that lies in it: `<prefix>life{<n>}` for the
/// first `n` that hashes there. (A prefix with a hash tag of its own puts every key in one
/// slot, and only that slot gets a life key.)
fn slot_life_keys(prefix: &[u8]) -> Vec<Option<Vec<u8>>> {
    let mut table: Vec<Option<Vec<u8>>> = vec![None; 16384];
    let mut missing = 16384usize;
    for n in 0u32..1 << 21 {
        let mut k = prefix.to_vec();
        k.extend_from_slice(format!("life{{{n}}}").as_bytes());
        let s = usize::from(slot(&k));
        if table[s].is_none() {
            table[s] = Some(k);
            missing -= 1;
            if missing == 0 {
                break;
            }
        }
    }
    table
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RiskLabel {
    risk: &'static str,
    accepted: &'static str,
}

/// The one-time-use store: whether it answers, and the shared store's counters.
impl Component for Store {
    fn register_metrics(&self, scrape: &mut Registry, _now: u64) {
        let labels = StoreLabel {
            store: self.label(),
        };
        scrape.register(
            "gatehouse_replay_store_up",
            "1 when the one-time-use store answers (memory: always), by store",
            Rows(vec![(labels, ConstGauge::new(u64::from(self.is_up())))]),
        );
        if let Store::Shared(r) = self {
            let h = r.health();
            scrape.register(
                "gatehouse_replay_store_marks",
                "Tokens marked used in the shared store",
                ConstCounter::new(h.marks.load(Ordering::Relaxed)),
            );
            scrape.register(
                "gatehouse_replay_store_failures",
                "Batches whose marks failed, timed out, or met the store down (their tokens \
                 were answered unavailable)",
                ConstCounter::new(h.failures.load(Ordering::Relaxed)),
            );
            scrape.register(
                "gatehouse_replay_store_outages",
                "Times the shared store went down",
                ConstCounter::new(h.outages.load(Ordering::Relaxed)),
            );
            scrape.register(
                "gatehouse_replay_store_life_changes",
                "Times a shard of the shared store showed a new life (restart, failover, flush): \
                 it may have forgotten marks, and the fence moved",
                ConstCounter::new(h.life_changes.load(Ordering::Relaxed)),
            );
            scrape.register(
                "gatehouse_replay_fence_seconds",
                "Tokens signed before this Unix time are denied node_restarted (the fence the \
                 store's lives require)",
                ConstGauge::new(h.accept_from.load(Ordering::Relaxed)),
            );
            let risks: Vec<(RiskLabel, ConstGauge<u64>)> = r
                .risks()
                .into_iter()
                .map(|(risk, accepted)| {
                    (
                        RiskLabel {
                            risk: risk.label(),
                            accepted: if accepted { "true" } else { "false" },
                        },
                        ConstGauge::new(1),
                    )
                })
                .collect();
            scrape.register(
                "gatehouse_replay_store_risk",
                "1 for each way the store's settings let marks vanish silently (eviction, \
                 split-brain); accepted=\"true\" when accept_risk names it (the node runs), \
                 else the node refuses marks",
                Rows(risks),
            );
            scrape.register(
                "gatehouse_replay_store_round_trip_seconds",
                "Round trips to the shared store (one per batch) and their total time",
                Totals {
                    sum: h.round_trip_nanos.load(Ordering::Relaxed) as f64 / 1e9,
                    count: h.round_trips.load(Ordering::Relaxed),
                },
            );
        }
    }

    fn not_ready(&self, _now: u64) -> Option<&'static str> {
        Store::not_ready(self)
    }
}

/// The AUTH user and password a store connection uses when the URLs do not carry them (the
/// password from `password_file`, its line end trimmed).
struct Credentials {
    username: Option<String>,
    password: Option<String>,
}

impl Credentials {
    fn read(config: &RedisConfig) -> Result<Credentials, StoreError> {
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
        Ok(Credentials {
            username: config.username.clone(),
            password,
        })
    }

    /// `settings` with the user and password set (those the URL gave are replaced).
    fn apply_to(&self, mut settings: redis::RedisConnectionInfo) -> redis::RedisConnectionInfo {
        if let Some(user) = &self.username {
            settings = settings.set_username(user.clone());
        }
        if let Some(p) = &self.password {
            settings = settings.set_password(p.clone());
        }
        settings
    }

    fn apply(&self, info: ConnectionInfo) -> ConnectionInfo {
        let settings = self.apply_to(info.redis_settings().clone());
        info.set_redis_settings(settings)
    }
}

/// A Redis Cluster connection from its seed nodes, within the connect timeout. One retry of
/// its own (to follow a MOVED redirect); the batch's timeout bounds it, and past that the probe
/// reconnects.
async fn connect_cluster(
    config: &RedisConfig,
    credentials: &Credentials,
    infos: Vec<ConnectionInfo>,
) -> Result<Conn, StoreError> {
    let infos: Vec<_> = infos.into_iter().map(|i| credentials.apply(i)).collect();
    let client = ClusterClient::builder(infos)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.timeout)
        .retries(1)
        .build()?;
    let conn =
        match tokio::time::timeout(config.connect_timeout, client.get_async_connection()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(StoreError::Redis(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "connecting to the cluster timed out",
                ))))
            }
        };
    Ok(Conn::Cluster(Box::new(client), RwLock::new(conn)))
}

/// The Sentinels (`infos`) to ask which server is `master`'s primary; the primary is reached
/// with the first URL's settings and the credentials.
fn sentinel_target(
    master: &str,
    credentials: &Credentials,
    infos: Vec<ConnectionInfo>,
) -> Result<tokio::sync::Mutex<Target>, StoreError> {
    let node = infos
        .first()
        .map(|i| i.redis_settings().clone())
        .unwrap_or_default();
    let node_info = redis::sentinel::SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(credentials.apply_to(node));
    let client = redis::sentinel::SentinelClient::build(
        infos,
        master,
        Some(node_info),
        redis::sentinel::SentinelServerType::Master,
    )?;
    Ok(tokio::sync::Mutex::new(Target::Sentinel(Box::new(client))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that connects and reads its lives at once, counts reconnects, and whose settings
    /// a test sets.
    struct Counting {
        reconnects: AtomicU64,
        settings_reads: AtomicU64,
        settings: parking_lot::Mutex<Settings>,
    }

    impl Backend for Counting {
        fn label(&self) -> &'static str {
            "counting"
        }

        fn mark<'a>(
            &'a self,
            _marks: &'a [MarkRequest],
            _now: u64,
            _new_life: &'a NewLife,
        ) -> BoxFuture<'a, Result<Answer, Fault>> {
            Box::pin(async { Err(Fault::Other("not in this test".into())) })
        }

        fn reconnect<'a>(
            &'a self,
            _new_life: &'a NewLife,
        ) -> BoxFuture<'a, Result<Vec<Life>, Fault>> {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            Box::pin(async {
                Ok(vec![Life {
                    shard: 0,
                    id: "run1 n".into(),
                    fence: 0,
                }])
            })
        }

        fn settings(&self) -> BoxFuture<'_, Settings> {
            self.settings_reads.fetch_add(1, Ordering::Relaxed);
            let settings = self.settings.lock().clone();
            Box::pin(async move { settings })
        }
    }

    /// While only the settings keep a store down, the probe reads the settings alone: a
    /// cluster's reconnect (all 16,384 slots' lives) is not repeated at every tick. Once they
    /// pass, a full check (reconnect and lives) brings it up.
    #[tokio::test]
    async fn a_store_held_down_by_its_settings_is_not_reconnected_at_every_probe() {
        let backend = Arc::new(Counting {
            reconnects: AtomicU64::new(0),
            settings_reads: AtomicU64::new(0),
            settings: parking_lot::Mutex::new(Settings {
                short: Some("1 replica of 2 required".into()),
                ..Settings::default()
            }),
        });
        let store = SharedStore::new(backend.clone(), &RedisConfig::default());
        for _ in 0..20 {
            assert!(!store.check(1_800_000_000).await);
        }
        assert_eq!(backend.reconnects.load(Ordering::Relaxed), 1);
        assert_eq!(backend.settings_reads.load(Ordering::Relaxed), 20);
        assert!(!store.health.is_up());
        // The settings pass: one full check, and the store is up.
        *backend.settings.lock() = Settings::default();
        assert!(store.check(1_800_000_001).await);
        assert_eq!(backend.reconnects.load(Ordering::Relaxed), 2);
        assert!(store.health.is_up());
    }

    #[test]
    fn slots_follow_the_cluster_spec() {
        // The examples of the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot(b"foo{{bar}}zap"), crc16(b"{bar") % 16384);
        assert_eq!(slot(b"foo{bar}{zap}"), crc16(b"bar") % 16384);
    }

    #[test]
    fn every_slot_gets_a_life_key_in_it() {
        let table = slot_life_keys(b"gatehouse:used:");
        for (s, k) in table.iter().enumerate() {
            let k = k.as_ref().expect("a life key for every slot");
            assert_eq!(usize::from(slot(k)), s);
        }
        // A prefix with a hash tag: every key in one slot, and that slot has its life key.
        let table = slot_life_keys(b"{fleet}:");
        let s = slot(b"{fleet}:0123");
        assert!(table[usize::from(s)].is_some());
    }

    #[test]
    fn lives_parse_and_odd_values_are_lives_without_fence() {
        let v = Value::BulkString(b"abc123 n-1 1800000005".to_vec());
        assert_eq!(
            parse_life(3, &v).unwrap(),
            Life {
                shard: 3,
                id: "abc123 n-1".into(),
                fence: 1_800_000_005
            }
        );
        let v = Value::BulkString(b"garbage".to_vec());
        assert_eq!(parse_life(0, &v).unwrap().fence, 0);
        assert!(parse_life(0, &Value::Nil).is_err());
    }

    #[test]
    fn risks_have_stable_names() {
        for r in Risk::ALL {
            assert_eq!(Risk::parse(r.label()), Some(r));
        }
        assert_eq!(Risk::parse("nope"), None);
    }
}
