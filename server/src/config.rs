//! The `gatehouse serve --config file.toml` file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_protocol::{Backend, RevocationList, TokenParams};
use serde::Deserialize;

use crate::error::ServerError;
use crate::feed::{file_confirmed_at, FeedConfig, FeedSource, OfflinePolicy};
use crate::files::{load_certs, load_key, load_revocations, load_scanners, load_trust_list};
use crate::settings::TlsFiles;
use crate::settings::{Batching, Files, Limits, ServerConfig};
use crate::store::{RedisConfig, Risk, SharedStore, Store};
use gatehouse_core::Batching as BatchPath;
use gatehouse_core::{BatchMode, ConfigError, Engine, EngineConfig, ScannerRegistry, TrustList};

/// A sample configuration with every setting at its default (paths relative to the file).
pub const SAMPLE_CONFIG: &str = r#"# gatehouse serve --config gatehouse.toml
# Relative paths are relative to this file's directory.

# QUIC (UDP) address scanners connect to.
listen = "0.0.0.0:4433"
# Operations HTTP endpoint: /metrics, /healthz, /readyz. Keep it on an internal address.
metrics_listen = "127.0.0.1:9090"

[tls]
# Server certificate chain (leaf first) and key, PEM.
cert = "pki/server.pem"
key = "pki/server.key"
# CA that issues scanner client certificates; the certificate's subject CN is the scanner id.
client_ca = "pki/ca.pem"

[files]
# Reloaded on SIGHUP; a bad file is refused and the previous state kept.
trust = "trust.toml"
scanners = "scanners.toml"
# A revocation snapshot or delta (CBOR), as `gatehouse issuer revoke` writes it. Optional:
# leave the line out to run without revocations. When named, the file must exist.
revocations = "revocations.cbor"
# Where the node keeps the revocation state a reload put in force, so that a restart starts
# from it (a directory it may write; unset, systemd's $STATE_DIRECTORY is used). Without one a
# delta is not reloaded, as a restart could not start from it: write snapshots (`issuer
# revoke` without --base). Not used with a [revocations] feed (a restart takes the feed's).
#state_dir = "/var/lib/gatehouse"
# ISO/IEC 18013-5 mobile documents (SPEC §12): the IACA roots whose document signers this node
# trusts (PEM certificates), and the operator's revocations of signers and documents. Both
# optional and reloaded together; without mdoc_iaca every mdoc is denied `unknown_issuer`.
#mdoc_iaca = "mdoc-iaca.pem"
#mdoc_revocations = "mdoc-revocations.txt"

[engine]
# Acceptance window of a token (seconds) and allowed clock skew of a phone.
window_secs = 30
skew_secs = 5
# "ring" (fast, assembly) or "p256" (pure Rust).
backend = "ring"
# Also check the R y-parity of every signature (slower).
strict_signatures = false
# One-time-use entries: peak tokens per second x window, with headroom.
replay_capacity = 750000
# Credentials whose issuer signature is remembered (about 89 bytes each, allocated at start):
# the whole population, with headroom (the default holds 1,000,000 holders and a quarter more).
issuer_cache_capacity = 1310720
# Offset of local civil time from UTC, for age checks (Korea: +9 h).
utc_offset_secs = 32400
# Most verification turns at once, each on a runtime thread (0: one per core).
threads = 0
# How a verification turn checks the signatures of its batch: "auto" (multi-buffer where the
# CPU has AVX-512 IFMA and signatures are not strict, else the equation below), "multibuffer"
# (refuses to start where it cannot run), "equation", or "off" (one by one).
batch = "auto"
# A batch that needs at least this many signatures is checked with one multi-scalar equation
# (a failed equation sends its tokens to the single check); 0: no equation under "auto". 32
# is the measured crossover (README, "Batch verification").
batch_from = 32

[limits]
max_connections = 10000
# Concurrent request streams per connection once its scanner is admitted (16 before).
max_streams_per_connection = 256
idle_timeout_secs = 30
# Largest request frame body in bytes (at most 131072).
max_frame_body = 131072
body_timeout_secs = 5
# How long a shutdown waits for requests in flight.
drain_timeout_secs = 10
# Hostile traffic. Handshakes in progress: at most max_handshakes; from retry_threshold on, an
# address not yet validated gets a QUIC Retry and handshakes get the shorter timeout. Per IP
# address: a quarter of max_handshakes_per_source unvalidated (past it: Retry), and at most
# max_handshakes_per_source validated (past it, the oldest unfinished one is evicted).
max_handshakes = 1024
retry_threshold = 64
max_handshakes_per_source = 32
handshake_timeout_ms = 10000
pressure_handshake_timeout_ms = 1000
# One scanner (certificate): most connections, and most tokens queued (beyond: busy).
max_connections_per_scanner = 16
max_queued_per_scanner = 1024
# A request of a scanner at that share waits this long unread before it is read (then busy if
# the share is still full): a flooder that resends at once is slowed, not served faster.
busy_hold_ms = 100
# Request-body bytes one connection may hold read and unanswered (beyond: its streams wait).
max_buffered_per_connection = 1048576
# One memory budget for handshakes, connections and request bodies (bytes); over it new work
# is refused, memory does not grow.
memory_budget = 167772160

[replay]
# Where one-time use is recorded. "memory": this node only; a node restarted on the memory
# store denies tokens signed up to its start + skew_secs (node_restarted, 22): it cannot know
# what it accepted before. "redis": shared by every node of a fleet (Redis 7 or Valkey; one
# URL, the Sentinels with sentinel_master, or the seed nodes of a Redis Cluster with
# cluster = true). When Redis errs or is slower than timeout_ms, the tokens that needed it are
# denied `unavailable` and /readyz answers 503. When Redis may have forgotten marks (restart,
# failover, FLUSHALL), tokens signed up to then + skew_secs are denied node_restarted.
store = "memory"
# urls = ["redis://127.0.0.1:6379"]   # rediss:// for TLS; redis://user:password@host works too
# cluster = false
# sentinel_master = "gatehouse"       # the urls are Sentinels watching this master
# replica_acks = 0                    # set to 1 (or more) when the store has replicas
# accept_risk = []                    # "eviction", "split-brain": run although the store allows them
# settings_interval_secs = 60
# prefix = "gatehouse:used:"
# username = "gatehouse"
# password_file = "redis.password"
# timeout_ms = 50
# connect_timeout_ms = 2000
# probe_interval_ms = 500

[batching]
# A verification turn takes the waiting requests, scanner by scanner, up to
# max_batch tokens. Small batches keep a token's wait short when another scanner has a backlog
# (signatures are checked one by one, so larger batches gain little).
max_batch = 8
# Tokens admitted and not yet answered; beyond it scanners get "busy" at once.
queue = 4096

[log]
# "text": plain lines on stderr, colour only when stderr is a terminal. "json": one object a line.
format = "text"
# Default filter (error, warn, info, debug, trace, or target=level,...); RUST_LOG overrides it.
level = "info"

# The revocation feed every node follows (SPEC §11). Without this section the node uses only
# [files] revocations, reloaded on SIGHUP. With it, [files] revocations is read once at start
# (a delta there is no longer fatal: the node fetches what it needs) and SIGHUP leaves
# revocations to the feed.
#[revocations]
# A directory, an http(s):// base URL, or a redis:// URL (then `key` is the key prefix).
#feed = "https://revocations.internal/gatehouse"
#key = "gatehouse:revocations"
# Seconds between pulls of the feed's head: a publication is enforced within one interval
# plus the time to fetch and apply it (a delta: milliseconds).
#interval_secs = 2
# Oldest revocation state the node vouches for (seconds since the feed last confirmed it).
#max_age_secs = 300
# Past max_age: "fail_closed" (deny with revocations_stale) or "keep_serving" (last epoch).
#offline = "fail_closed"
# Whether /readyz fails past max_age.
#readiness = true
# Largest list fetched, MiB; time allowed per fetch, seconds; extra CA (PEM) for HTTPS.
#max_list_mib = 64
#timeout_secs = 10
#ca = "pki/feed-ca.pem"
"#;

/// The configuration file of `gatehouse serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Operations HTTP listen address (none: no operations endpoint).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Certificates and keys.
    pub tls: TlsSection,
    /// The engine's files.
    pub files: FilesSection,
    /// Engine tunables.
    #[serde(default)]
    pub engine: EngineSection,
    /// Transport limits.
    #[serde(default)]
    pub limits: Limits,
    /// Micro-batching.
    #[serde(default)]
    pub batching: BatchingSection,
    /// The one-time-use store.
    #[serde(default)]
    pub replay: ReplaySection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// The revocation feed, if the node follows one.
    #[serde(default)]
    pub revocations: Option<RevocationsSection>,
    /// The file this was read from (for errors and relative paths).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// CA certificates for scanner client certificates, PEM.
    pub client_ca: PathBuf,
}

/// `[files]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSection {
    /// Trust list (TOML).
    pub trust: PathBuf,
    /// Scanner registry (TOML).
    pub scanners: PathBuf,
    /// Revocation list (CBOR), optional.
    #[serde(default)]
    pub revocations: Option<PathBuf>,
    /// IACA roots for mdoc presentations (PEM certificates), optional: without it every mdoc
    /// is denied `unknown_issuer`.
    #[serde(default)]
    pub mdoc_iaca: Option<PathBuf>,
    /// The operator's mdoc revocations (text), optional.
    #[serde(default)]
    pub mdoc_revocations: Option<PathBuf>,
    /// Where the node keeps the revocation state it reloaded, so it restarts from it (a
    /// directory it can write). Unset: `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else
    /// none, and then a delta is not reloaded (a restart could not start from it).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Default filter (`info`, `warn`, `gatehouse_engine=debug,info`, …); `RUST_LOG` overrides.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Plain text lines; ANSI colour only when stderr is a terminal.
    Text,
    /// One JSON object a line (for journald, Loki, Elasticsearch and the like).
    Json,
}

/// `[engine]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Token acceptance window, seconds.
    pub window_secs: u64,
    /// Allowed clock skew, seconds.
    pub skew_secs: u64,
    /// `"ring"` or `"p256"`.
    pub backend: String,
    /// Check R y-parity too.
    pub strict_signatures: bool,
    /// One-time-use table capacity.
    pub replay_capacity: usize,
    /// Issuer-signature cache capacity.
    pub issuer_cache_capacity: usize,
    /// Local offset from UTC for age checks, seconds.
    pub utc_offset_secs: i32,
    /// Most verification turns at once (0: one per core).
    pub threads: usize,
    /// `"auto"`, `"multibuffer"`, `"equation"` or `"off"`.
    pub batch: String,
    /// Signatures from which a batch is checked with one equation (0: never).
    pub batch_from: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = EngineConfig::default();
        EngineSection {
            window_secs: d.params.window_secs,
            skew_secs: d.clock_skew_secs,
            backend: "ring".into(),
            strict_signatures: d.strict_signatures,
            replay_capacity: d.replay_capacity,
            issuer_cache_capacity: d.issuer_cache_capacity,
            utc_offset_secs: d.utc_offset_secs,
            threads: d.threads,
            batch: d.batch.label().into(),
            batch_from: d.batch_from,
        }
    }
}

/// `[batching]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingSection {
    /// Tokens per batch.
    pub max_batch: usize,
    /// No longer used (a batch starts as soon as a verification turn is free); accepted so
    /// that older configuration files still load, with a warning.
    pub max_wait_us: Option<u64>,
    /// Tokens admitted and not yet answered.
    pub queue: usize,
}

impl Default for BatchingSection {
    fn default() -> Self {
        let d = Batching::default();
        BatchingSection {
            max_batch: d.max_batch,
            max_wait_us: None,
            queue: d.queue,
        }
    }
}

impl BatchingSection {
    /// As [`Batching`].
    pub fn to_batching(&self) -> Batching {
        Batching {
            max_batch: self.max_batch,
            queue: self.queue,
        }
    }
}

/// `[replay]`: where one-time use is recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplaySection {
    /// `"memory"` or `"redis"`.
    pub store: String,
    /// Redis URLs (one, or a cluster's seed nodes).
    pub urls: Vec<String>,
    /// The URLs are seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// Key prefix.
    pub prefix: String,
    /// AUTH user, when not in the URL.
    pub username: Option<String>,
    /// File holding the AUTH password, when not in the URL.
    pub password_file: Option<PathBuf>,
    /// Timeout of one batch's marks, milliseconds.
    pub timeout_ms: u64,
    /// Connect timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// Probe interval while the store is down, milliseconds.
    pub probe_interval_ms: u64,
    /// The URLs are Sentinels; mark on the primary they name for this master.
    pub sentinel_master: Option<String>,
    /// Replicas that must acknowledge a batch's marks before they count (`WAIT`).
    pub replica_acks: u32,
    /// Risks accepted by name: `"eviction"`, `"split-brain"`.
    pub accept_risk: Vec<String>,
    /// How often the store's settings are read again, seconds.
    pub settings_interval_secs: u64,
}

impl Default for ReplaySection {
    fn default() -> Self {
        let d = RedisConfig::default();
        ReplaySection {
            store: "memory".into(),
            // No default address: `store = "redis"` without `urls` is a configuration error,
            // not a node that answers `unavailable` to everything.
            urls: Vec::new(),
            cluster: d.cluster,
            prefix: d.prefix,
            username: None,
            password_file: None,
            timeout_ms: d.timeout.as_millis() as u64,
            connect_timeout_ms: d.connect_timeout.as_millis() as u64,
            probe_interval_ms: d.probe_interval.as_millis() as u64,
            sentinel_master: None,
            replica_acks: d.replica_acks,
            accept_risk: Vec::new(),
            settings_interval_secs: d.settings_interval.as_secs(),
        }
    }
}

impl ReplaySection {
    /// The Redis settings, when the store is Redis (`skew_secs`: the engine's clock skew).
    pub fn redis(&self, skew_secs: u64) -> Option<RedisConfig> {
        (self.store == "redis").then(|| RedisConfig {
            urls: self.urls.clone(),
            cluster: self.cluster,
            prefix: self.prefix.clone(),
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            probe_interval: Duration::from_millis(self.probe_interval_ms),
            settings_interval: Duration::from_secs(self.settings_interval_secs),
            sentinel_master: self.sentinel_master.clone(),
            replica_acks: self.replica_acks,
            // Unknown names are refused by the config check before this is used.
            accept_risk: self
                .accept_risk
                .iter()
                .filter_map(|r| Risk::parse(r))
                .collect(),
            clock: std::sync::Arc::new(gatehouse_core::SystemClock),
            skew_secs,
        })
    }
}

/// `[revocations]`: the feed this node follows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationsSection {
    /// A directory, an `http(s)://` base URL or a `redis://` URL.
    pub feed: String,
    /// Redis key prefix.
    #[serde(default)]
    pub key: Option<String>,
    /// Seconds between pulls.
    #[serde(default = "default_interval")]
    pub interval_secs: f64,
    /// Maximum age, seconds.
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
    /// Policy past the maximum age.
    #[serde(default)]
    pub offline: OfflinePolicy,
    /// Whether `/readyz` fails past the maximum age.
    #[serde(default = "default_true")]
    pub readiness: bool,
    /// Largest list fetched, MiB.
    #[serde(default = "default_max_list_mib")]
    pub max_list_mib: usize,
    /// Time per fetch, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Extra CA certificates for an HTTPS feed (PEM).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

fn default_interval() -> f64 {
    2.0
}
fn default_max_age() -> u64 {
    300
}
fn default_true() -> bool {
    true
}
fn default_max_list_mib() -> usize {
    64
}
fn default_timeout() -> u64 {
    10
}

/// Everything `gatehouse serve` needs, loaded from the files a [`ServeConfig`] names.
#[derive(Debug)]
pub struct ServeParts {
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Operations HTTP listen address.
    pub metrics_listen: Option<SocketAddr>,
    /// Engine tunables.
    pub engine: EngineConfig,
    /// The trust list as loaded.
    pub trust: TrustList,
    /// The scanner registry as loaded.
    pub scanners: ScannerRegistry,
    /// The revocation list as loaded.
    pub revocations: Option<RevocationList>,
    /// The revocation state kept in `[files] state_dir` by the last reload, if any.
    pub kept_revocations: Option<RevocationList>,
    /// The IACA roots and revocations for mdoc presentations (`files.mdoc_iaca`,
    /// `files.mdoc_revocations`).
    pub mdoc: (
        gatehouse_mdoc::TrustAnchors,
        gatehouse_core::MdocRevocations,
    ),
    /// The files, for reloads.
    pub files: Files,
    /// The configuration file.
    pub source: PathBuf,
    /// Logging.
    pub log: LogSection,
    /// The server configuration (certificates loaded; the store is memory until
    /// [`ServeParts::connect_store`]).
    pub server: ServerConfig,
    /// The Redis store's settings, when one-time use is shared.
    pub redis: Option<RedisConfig>,
}

impl ServeParts {
    /// A new engine with the loaded trust list, scanners and revocations. On the memory store
    /// it denies tokens signed at or before this moment plus the clock skew (`node_restarted`):
    /// a restarted node cannot know which of them it already accepted.
    pub fn build_engine(&self) -> Result<Arc<Engine>, ServerError> {
        self.build_engine_at(self.server.clock.now())
    }

    /// [`ServeParts::build_engine`] for a node starting at `start` (Unix seconds).
    pub fn build_engine_at(&self, start: u64) -> Result<Arc<Engine>, ServerError> {
        let mut config = self.engine.clone();
        if self.redis.is_none() {
            // The process this one replaces may have accepted, in the second of the restart, a
            // token from a phone whose clock runs up to the skew ahead: the fence is past that.
            config.accept_from = gatehouse_core::restart_fence(start, config.clock_skew_secs);
        }
        let engine = Engine::new(config, self.trust.clone(), self.scanners.clone())?;
        engine.set_mdoc_trust(self.mdoc.0.clone());
        engine.set_mdoc_revocations(self.mdoc.1.clone());
        let file_error = |problem: String| {
            ServerError::Config(ConfigError {
                file: self.source.clone(),
                field: "files.revocations".into(),
                problem,
            })
        };
        if let Some(kept) = &self.kept_revocations {
            engine.apply_revocations(kept).map_err(|e| {
                ServerError::Config(ConfigError {
                    file: self.source.clone(),
                    field: "files.state_dir".into(),
                    problem: format!("the revocation state kept there: {e}"),
                })
            })?;
        }
        if let Some(list) = &self.revocations {
            let path = self.files.revocations.as_deref().unwrap_or(Path::new("?"));
            let (kept, _) = engine.revocation_epoch();
            if self.kept_revocations.is_some() && list.epoch <= kept {
                // The file is what was reloaded last, or older: the kept state stands.
                if list.epoch < kept {
                    tracing::warn!(
                        "{} holds revocation epoch {}, older than epoch {kept} kept in {} by the last reload: starting at epoch {kept}",
                        path.display(),
                        list.epoch,
                        self.files.state_dir.as_deref().unwrap_or(Path::new("?")).display()
                    );
                }
            } else {
                match (engine.apply_revocations(list), &self.server.revocation_feed) {
                    (Ok(_), _) => {}
                    // With a feed, a local list that does not stand alone (a delta) is not
                    // fatal: the node starts without an epoch (failing closed) and fetches the
                    // snapshot.
                    (Err(e), Some(_)) => tracing::warn!(
                        "local revocation list not applied ({e}); fetching from the feed"
                    ),
                    (Err(e), None) => {
                        let hint = if list.base.is_some() {
                            "; a node starts from a snapshot, or from the state it kept in \
                             [files] state_dir when it reloaded the delta"
                        } else {
                            ""
                        };
                        return Err(file_error(format!("{}: {e}{hint}", path.display())));
                    }
                }
            }
            if let Some(dir) = &self.files.state_dir {
                crate::reload::keep(dir, &engine.revocations().load()).map_err(|e| {
                    ServerError::Config(ConfigError {
                        file: self.source.clone(),
                        field: "files.state_dir".into(),
                        problem: e.to_string(),
                    })
                })?;
            }
        }
        Ok(Arc::new(engine))
    }
}

impl ServeParts {
    /// Connects the shared one-time-use store, if one is configured.
    pub async fn connect_store(&mut self) -> Result<(), ServerError> {
        if let Some(redis) = &self.redis {
            let redis = RedisConfig {
                clock: std::sync::Arc::clone(&self.server.clock),
                ..redis.clone()
            };
            self.server.store = Store::Shared(SharedStore::connect(&redis).await?);
        }
        Ok(())
    }
}

impl ServeConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            field: "(file)".into(),
            problem: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks configuration TOML; `path` names the source in errors and is the base
    /// of relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<ServeConfig, ConfigError> {
        let mut config: ServeConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            field: e
                .span()
                .map(|s| locate(text, s.start))
                .unwrap_or_else(|| "(document)".into()),
            problem: e.message().to_string(),
        })?;
        config.source = path.to_path_buf();
        config.check()?;
        Ok(config)
    }

    /// Settings that are accepted but have no effect, one sentence each (the server logs them
    /// at start).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.batching.max_wait_us.is_some() {
            w.push(format!(
                "{}: batching.max_wait_us no longer has an effect (a batch starts as soon as a verification turn is free); remove it",
                self.source.display()
            ));
        }
        w
    }

    /// A file this configuration names could not be read: the error names this file and the
    /// field too (`gatehouse.toml: files.trust: trust.toml: No such file …`). Errors inside
    /// the file keep their own file and field.
    fn named<T, E: Into<ServerError>>(
        &self,
        field: &str,
        r: Result<T, E>,
    ) -> Result<T, ServerError> {
        r.map_err(|e| match e.into() {
            ServerError::Config(c) if c.field == "(file)" => ServerError::Config(
                self.error(field, format!("{}: {}", c.file.display(), c.problem)),
            ),
            ServerError::File(crate::files::FileError::Io { path, source }) => {
                ServerError::Config(self.error(field, format!("{}: {source}", path.display())))
            }
            other => other,
        })
    }

    fn error(&self, field: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.source.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// `engine.batch` and `engine.batch_from`: a known path that can run here, as configured.
    fn check_batch(&self) -> Result<(), ConfigError> {
        let e = &self.engine;
        match BatchMode::from_label(&e.batch) {
            None => {
                return Err(self.error(
                    "engine.batch",
                    format!(
                        "unknown batch path {:?} (auto, multibuffer, equation, off)",
                        e.batch
                    ),
                ))
            }
            Some(mode) => {
                if let Err(why) = BatchPath::resolve(mode, e.strict_signatures, e.batch_from) {
                    return Err(self.error("engine.batch", why));
                }
                if mode == BatchMode::Equation && e.batch_from == 0 {
                    return Err(self.error(
                        "engine.batch_from",
                        "must be at least 1 with batch = \"equation\"",
                    ));
                }
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let e = &self.engine;
        if !(1..=3600).contains(&e.window_secs) {
            return Err(self.error("engine.window_secs", "must be 1 to 3600"));
        }
        if e.skew_secs > 300 {
            return Err(self.error("engine.skew_secs", "must be at most 300"));
        }
        if backend(&e.backend).is_none() {
            return Err(self.error(
                "engine.backend",
                format!("unknown backend {:?} (ring, p256)", e.backend),
            ));
        }
        if e.replay_capacity == 0 {
            return Err(self.error("engine.replay_capacity", "must be at least 1"));
        }
        if e.issuer_cache_capacity == 0 {
            return Err(self.error("engine.issuer_cache_capacity", "must be at least 1"));
        }
        if e.utc_offset_secs.abs() > 14 * 3600 {
            return Err(self.error("engine.utc_offset_secs", "must be within ±14 hours"));
        }
        if e.threads > 1024 {
            return Err(self.error("engine.threads", "must be at most 1024"));
        }
        if e.batch_from > 4096 {
            return Err(self.error("engine.batch_from", "must be at most 4096"));
        }
        self.check_batch()?;
        match self.replay.store.as_str() {
            "memory" => {}
            "redis" => {
                if let Some(r) = self
                    .replay
                    .accept_risk
                    .iter()
                    .find(|r| Risk::parse(r).is_none())
                {
                    return Err(self.error(
                        "replay.accept_risk",
                        format!("unknown risk {r:?} (eviction, split-brain)"),
                    ));
                }
                let mut redis = self.replay.redis(e.skew_secs).unwrap_or_default();
                redis.password_file = redis.password_file.map(|p| self.path(&p));
                redis
                    .check()
                    .map_err(|e| self.error(&format!("replay.{}", e.field), e.problem))?;
            }
            other => {
                return Err(self.error(
                    "replay.store",
                    format!("unknown store {other:?} (memory, redis)"),
                ))
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(self.error(
                "log.level",
                format!(
                    "{:?} is not a filter (error, warn, info, debug, trace, or target=level,…)",
                    self.log.level
                ),
            ));
        }
        if let Some(r) = &self.revocations {
            if !(0.05..=3600.0).contains(&r.interval_secs) {
                return Err(self.error("revocations.interval_secs", "must be 0.05 to 3600"));
            }
            if r.max_age_secs == 0 || (r.max_age_secs as f64) < r.interval_secs {
                return Err(self.error("revocations.max_age_secs", "must be at least one interval"));
            }
            if !(1..=1024).contains(&r.max_list_mib) {
                return Err(self.error("revocations.max_list_mib", "must be 1 to 1024"));
            }
            if !(1..=600).contains(&r.timeout_secs) {
                return Err(self.error("revocations.timeout_secs", "must be 1 to 600"));
            }
            if r.feed.is_empty() {
                return Err(self.error("revocations.feed", "must not be empty"));
            }
        }
        self.limits
            .check()
            .map_err(|e| self.error(&format!("limits.{}", e.field), e.problem))?;
        self.batching
            .to_batching()
            .check()
            .map_err(|e| self.error(&format!("batching.{}", e.field), e.problem))?;
        Ok(())
    }

    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match self.source.parent() {
            Some(dir) => dir.join(p),
            None => p.to_path_buf(),
        }
    }

    /// `[files] state_dir` resolved, else `$STATE_DIRECTORY` (the first, when systemd gives
    /// several); none with a feed, which holds the node's revocation state for it.
    pub fn state_dir(&self) -> Option<PathBuf> {
        if self.revocations.is_some() {
            return None;
        }
        match &self.files.state_dir {
            Some(p) => Some(self.path(p)),
            None => std::env::var_os("STATE_DIRECTORY")
                .and_then(|v| {
                    v.to_str()
                        .and_then(|s| s.split(':').next())
                        .map(PathBuf::from)
                })
                .filter(|p| p.is_absolute()),
        }
    }

    /// The engine's files, with paths resolved.
    pub fn files(&self) -> Files {
        Files {
            trust: self.path(&self.files.trust),
            scanners: self.path(&self.files.scanners),
            revocations: self.files.revocations.as_deref().map(|p| self.path(p)),
            mdoc_iaca: self.files.mdoc_iaca.as_deref().map(|p| self.path(p)),
            mdoc_revocations: self.files.mdoc_revocations.as_deref().map(|p| self.path(p)),
            state_dir: self.state_dir(),
            tls: Some(TlsFiles {
                cert: self.path(&self.tls.cert),
                key: self.path(&self.tls.key),
                client_ca: self.path(&self.tls.client_ca),
            }),
        }
    }

    /// The engine tunables.
    pub fn engine_config(&self) -> EngineConfig {
        let e = &self.engine;
        let defaults = EngineConfig::default();
        EngineConfig {
            params: TokenParams {
                rotation_secs: defaults.params.rotation_secs.min(e.window_secs),
                window_secs: e.window_secs,
            },
            clock_skew_secs: e.skew_secs,
            backend: backend(&e.backend).unwrap_or(Backend::Ring),
            strict_signatures: e.strict_signatures,
            issuer_cache_capacity: e.issuer_cache_capacity,
            replay_capacity: e.replay_capacity,
            mdoc_cache_capacity: defaults.mdoc_cache_capacity,
            utc_offset_secs: e.utc_offset_secs,
            threads: e.threads,
            batch: BatchMode::from_label(&e.batch).unwrap_or(BatchMode::Auto),
            batch_from: e.batch_from,
            accept_from: 0,
        }
    }

    /// The feed configuration of `[revocations]`, paths resolved and CA loaded.
    pub fn feed_config(&self) -> Result<Option<FeedConfig>, ServerError> {
        let Some(r) = &self.revocations else {
            return Ok(None);
        };
        let mut source = FeedSource::parse(&r.feed, r.key.as_deref());
        if let FeedSource::Dir(dir) = &source {
            source = FeedSource::Dir(self.path(dir));
        }
        let mut c = FeedConfig::new(source);
        c.interval = Duration::from_secs_f64(r.interval_secs);
        c.max_age = Duration::from_secs(r.max_age_secs);
        c.policy = r.offline;
        c.readiness = r.readiness;
        c.max_list_bytes = r.max_list_mib * 1024 * 1024;
        c.timeout = Duration::from_secs(r.timeout_secs);
        if let Some(ca) = &r.ca {
            c.ca = self.named("revocations.ca", load_certs(&self.path(ca)))?;
        }
        Ok(Some(c))
    }

    /// Loads the certificates, key and engine files the configuration names.
    pub fn into_parts(self) -> Result<ServeParts, ServerError> {
        let server = ServerConfig {
            cert_chain: self.named("tls.cert", load_certs(&self.path(&self.tls.cert)))?,
            key: self.named("tls.key", load_key(&self.path(&self.tls.key)))?,
            client_ca: self.named("tls.client_ca", load_certs(&self.path(&self.tls.client_ca)))?,
            limits: self.limits.clone(),
            batching: self.batching.to_batching(),
            store: Store::Memory,
            reload: None,
            revocation_feed: self.feed_config()?,
            clock: std::sync::Arc::new(gatehouse_core::SystemClock),
        };
        let redis = self.replay.redis(self.engine.skew_secs).map(|mut r| {
            r.password_file = r.password_file.map(|p| self.path(&p));
            r
        });
        let mut files = self.files();
        let trust = self.named("files.trust", load_trust_list(&files.trust))?;
        let scanners = self.named("files.scanners", load_scanners(&files.scanners))?;
        let revocations = files
            .revocations
            .as_deref()
            .map(|p| self.named("files.revocations", load_revocation_file(p, &trust)))
            .transpose()?;
        let mdoc = (
            self.named(
                "files.mdoc_iaca",
                crate::files::load_mdoc_iaca(files.mdoc_iaca.as_deref()),
            )?,
            self.named(
                "files.mdoc_revocations",
                crate::files::load_mdoc_revocations(files.mdoc_revocations.as_deref()),
            )?,
        );
        let kept_revocations = match &files.state_dir {
            Some(dir) => self.named("files.state_dir", crate::reload::read_kept(dir))?,
            None => None,
        };
        let mut server = server;
        if let Some(feed) = server.revocation_feed.as_mut() {
            // The local file counts as confirmed when it was written; after start the feed
            // owns revocations and SIGHUP no longer re-reads the file.
            feed.confirmed_at = files
                .revocations
                .as_deref()
                .and_then(file_confirmed_at)
                .unwrap_or(0);
            files.revocations = None;
        }
        Ok(ServeParts {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            engine: self.engine_config(),
            trust,
            scanners,
            revocations,
            kept_revocations,
            mdoc,
            files,
            source: self.source.clone(),
            log: self.log.clone(),
            server,
            redis,
        })
    }
}

/// Reads a local revocation file: a signed list (checked against the trust list's revocation
/// keys) or, as before feeds, a bare one (the operator's own disk).
fn load_revocation_file(path: &Path, trust: &TrustList) -> Result<RevocationList, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError::new(path, "(file)", e.to_string()))?;
    if bytes.first().is_some_and(|b| b >> 5 == 5) {
        return load_revocations(path);
    }
    crate::feed::open_list(&bytes, trust)
        .map_err(|e| ConfigError::new(path, "(revocation list)", e.to_string()))
}

fn backend(name: &str) -> Option<Backend> {
    match name {
        "ring" => Some(Backend::Ring),
        "p256" => Some(Backend::P256),
        _ => None,
    }
}

/// Names the place of a parse error: `section.key (line N)` when the line is a `key = value`,
/// else `line N`.
fn locate(text: &str, offset: usize) -> String {
    let bytes = text.as_bytes();
    let offset = offset.min(bytes.len());
    let line_no = bytes[..offset].iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = bytes[..offset]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let line = text
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('#'));
    let section = text.get(..line_start).and_then(|before| {
        before.lines().rev().find_map(|l| {
            let t = l.trim();
            t.starts_with('[')
                .then(|| t.trim_matches(|c| c == '[' || c == ']').trim().to_string())
        })
    });
    match (section, key) {
        (Some(s), Some(k)) => format!("{s}.{k} (line {line_no})"),
        (None, Some(k)) => format!("{k} (line {line_no})"),
        _ => format!("line {line_no}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_parses_with_defaults() {
        let c =
            ServeConfig::parse(Path::new("/etc/gatehouse/gatehouse.toml"), SAMPLE_CONFIG).unwrap();
        assert_eq!(c.listen, "0.0.0.0:4433".parse().unwrap());
        let files = c.files();
        assert_eq!(files.trust, Path::new("/etc/gatehouse/trust.toml"));
        assert_eq!(
            files.revocations.as_deref(),
            Some(Path::new("/etc/gatehouse/revocations.cbor"))
        );
        let e = c.engine_config();
        let d = EngineConfig::default();
        assert_eq!(e.params, d.params);
        assert_eq!(e.replay_capacity, d.replay_capacity);
        assert_eq!(e.issuer_cache_capacity, d.issuer_cache_capacity);
        assert_eq!(c.batching.to_batching().max_batch, 8);
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn a_retired_setting_still_loads_with_a_warning() {
        let minimal = "listen = \"127.0.0.1:1\"\n[tls]\ncert = \"a\"\nkey = \"b\"\nclient_ca = \"c\"\n[files]\ntrust = \"t\"\nscanners = \"s\"\n";
        let f = Path::new("old.toml");
        assert!(ServeConfig::parse(f, minimal)
            .unwrap()
            .warnings()
            .is_empty());
        let old =
            ServeConfig::parse(f, &format!("{minimal}[batching]\nmax_wait_us = 200\n")).unwrap();
        let w = old.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("old.toml") && w[0].contains("batching.max_wait_us"),
            "{w:?}"
        );
        assert_eq!(old.batching.to_batching().max_batch, 8);
    }

    #[test]
    fn a_missing_file_is_named_with_its_field() {
        let minimal = "listen = \"127.0.0.1:1\"\n[tls]\ncert = \"nope.pem\"\nkey = \"b\"\nclient_ca = \"c\"\n[files]\ntrust = \"t\"\nscanners = \"s\"\n";
        let dir = std::env::temp_dir().join(format!("gatehouse-config-{}", std::process::id()));
        let e = ServeConfig::parse(&dir.join("g.toml"), minimal)
            .unwrap()
            .into_parts()
            .unwrap_err()
            .to_string();
        assert!(e.contains("g.toml: tls.cert: "), "{e}");
        assert!(e.contains("nope.pem: "), "{e}");
        assert!(!e.contains("(file)"), "{e}");
    }

    #[test]
    fn times_and_store_settings_are_named_by_their_key_in_the_file() {
        let minimal = "listen = \"127.0.0.1:1\"\n[tls]\ncert = \"a\"\nkey = \"b\"\nclient_ca = \"c\"\n[files]\ntrust = \"t\"\nscanners = \"s\"\n";
        let f = Path::new("g.toml");
        // Times are named by their key in the file, unit and all, from the check itself.
        let e = ServeConfig::parse(f, &format!("{minimal}[limits]\nidle_timeout_secs = 0\n"))
            .unwrap_err();
        assert_eq!(e.field, "limits.idle_timeout_secs");
        let e = ServeConfig::parse(f, &format!("{minimal}[limits]\nbusy_hold_ms = 5000\n"))
            .unwrap_err();
        assert_eq!(e.field, "limits.busy_hold_ms");
        let e =
            ServeConfig::parse(f, &format!("{minimal}[limits]\nidle_timeout = 5\n")).unwrap_err();
        assert!(e.to_string().contains("idle_timeout"), "{e}");
        let e = ServeConfig::parse(
            f,
            &format!(
                "{minimal}[replay]\nstore = \"redis\"\nurls = [\"redis://x\"]\ntimeout_ms = 0\n"
            ),
        )
        .unwrap_err();
        assert_eq!(e.field, "replay.timeout_ms");
    }

    #[test]
    fn errors_name_the_field() {
        let minimal = "listen = \"127.0.0.1:1\"\n[tls]\ncert = \"a\"\nkey = \"b\"\nclient_ca = \"c\"\n[files]\ntrust = \"t\"\nscanners = \"s\"\n";
        let f = Path::new("g.toml");
        assert!(ServeConfig::parse(f, minimal).is_ok());

        let e = ServeConfig::parse(f, &format!("{minimal}[engine]\nbackend = \"openssl\"\n"))
            .unwrap_err();
        assert_eq!(e.field, "engine.backend");
        let e =
            ServeConfig::parse(f, &format!("{minimal}[engine]\nbatch = \"gpu\"\n")).unwrap_err();
        assert_eq!(e.field, "engine.batch");
        // Multi-buffer does not check the R parity: strict signatures cannot use it.
        let e = ServeConfig::parse(
            f,
            &format!("{minimal}[engine]\nbatch = \"multibuffer\"\nstrict_signatures = true\n"),
        )
        .unwrap_err();
        assert_eq!(e.field, "engine.batch");
        assert!(e.to_string().contains("strict"), "{e}");
        let e = ServeConfig::parse(
            f,
            &format!("{minimal}[engine]\nbatch = \"equation\"\nbatch_from = 0\n"),
        )
        .unwrap_err();
        assert_eq!(e.field, "engine.batch_from");
        for ok in ["auto", "equation", "off"] {
            let c =
                ServeConfig::parse(f, &format!("{minimal}[engine]\nbatch = \"{ok}\"\n")).unwrap();
            assert_eq!(c.engine.batch, ok);
        }
        let e =
            ServeConfig::parse(f, &format!("{minimal}[batching]\nmax_batch = 0\n")).unwrap_err();
        assert_eq!(e.field, "batching.max_batch");
        let e = ServeConfig::parse(f, &format!("{minimal}[limits]\nmax_frame_body = 999999\n"))
            .unwrap_err();
        assert_eq!(e.field, "limits.max_frame_body");
        let e = ServeConfig::parse(f, &format!("{minimal}[engine]\nwindow_secs = \"x\"\n"))
            .unwrap_err();
        assert_eq!(e.field, "engine.window_secs (line 10)", "{e}");
        let e = ServeConfig::parse(f, &format!("{minimal}[batching]\ncolour = 1\n")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e =
            ServeConfig::parse(f, &format!("{minimal}[replay]\nstore = \"etcd\"\n")).unwrap_err();
        assert_eq!(e.field, "replay.store");
        let e = ServeConfig::parse(
            f,
            &format!("{minimal}[replay]\nstore = \"redis\"\nurls = [\"http://x\"]\n"),
        )
        .unwrap_err();
        assert_eq!(e.field, "replay.urls");
        let e = ServeConfig::parse(
            f,
            &format!(
                "{minimal}[replay]\nstore = \"redis\"\nurls = [\"redis://127.0.0.1:1\"]\ntimeout_ms = 0\n"
            ),
        )
        .unwrap_err();
        assert_eq!(e.field, "replay.timeout_ms");
        // `store = "redis"` without `urls` is refused (it used to start on a default address
        // and answer `unavailable` to everything).
        let e =
            ServeConfig::parse(f, &format!("{minimal}[replay]\nstore = \"redis\"\n")).unwrap_err();
        assert_eq!(e.field, "replay.urls");
        assert!(e.to_string().contains("at least one URL"), "{e}");
        let e = ServeConfig::parse(
            f,
            &format!(
                "{minimal}[replay]\nstore = \"redis\"\nurls = [\"redis://127.0.0.1:1\"]\naccept_risk = [\"everything\"]\n"
            ),
        )
        .unwrap_err();
        assert_eq!(e.field, "replay.accept_risk");
        let e = ServeConfig::parse(
            f,
            &format!(
                "{minimal}[replay]\nstore = \"redis\"\nurls = [\"redis://127.0.0.1:1\"]\ncluster = true\nsentinel_master = \"m\"\n"
            ),
        )
        .unwrap_err();
        assert_eq!(e.field, "replay.sentinel_master");
        let ok = ServeConfig::parse(
            f,
            &format!("{minimal}[replay]\nstore = \"redis\"\nurls = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\ncluster = true\n"),
        )
        .unwrap();
        assert!(ok
            .replay
            .redis(5)
            .is_some_and(|r| r.cluster && r.urls.len() == 2));
        let feed = ServeConfig::parse(
            f,
            &format!("{minimal}[revocations]\nfeed = \"http://127.0.0.1:8080/rev\"\noffline = \"keep_serving\"\n"),
        )
        .unwrap();
        let c = feed.feed_config().unwrap().unwrap();
        assert_eq!(
            c.source,
            FeedSource::Http("http://127.0.0.1:8080/rev".into())
        );
        assert_eq!(c.policy, OfflinePolicy::KeepServing);
        assert_eq!(c.interval, Duration::from_secs(2));
        let e = ServeConfig::parse(
            f,
            &format!("{minimal}[revocations]\nfeed = \"x\"\nmax_age_secs = 0\n"),
        )
        .unwrap_err();
        assert_eq!(e.field, "revocations.max_age_secs");
        let e = ServeConfig::parse(
            f,
            &format!("{minimal}[revocations]\nfeed = \"x\"\noffline = \"open\"\n"),
        )
        .unwrap_err();
        assert!(e.field.starts_with("revocations.offline"), "{e}");
        let e = ServeConfig::parse(f, "listen = \"nowhere\"\n").unwrap_err();
        assert!(e.field.starts_with("listen"), "{e}");
    }
}
