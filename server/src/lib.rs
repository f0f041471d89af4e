//! # gatehouse-server
//!
//! The QUIC service: a thin shell around [`Engine`].
//!
//! What the shell does, and the core does not: sockets, TLS, the clock, and the hand-over of
//! work from async tasks to the verification pool.
//!
//! - **Transport**: QUIC (quinn), TLS 1.3 only, ALPN [`gatehouse_protocol::ALPN`], no 0-RTT,
//!   no session resumption. Every scanner presents a client certificate from the configured CA;
//!   its subject Common Name is the scanner id, looked up in the engine's registry. A scanner
//!   that is not registered is refused at the handshake (TLS `access_denied`); one removed by a
//!   reload is disconnected with [`codes::UNKNOWN_SCANNER`] at its next request (or within a
//!   second when idle).
//! - **Streams**: a scanner opens a bidirectional stream per request, or pipelines several
//!   requests on one stream; responses come back in order on the same stream. An unreadable
//!   frame gets a `Response::Error` and the stream is closed; other streams and connections are
//!   not affected.
//! - **Micro-batching**: tokens from every connection go through one bounded queue to a
//!   batcher; a verification thread that is free takes what waits, scanner by scanner, up to
//!   [`Batching::max_batch`] tokens. When the queue is full a token is answered `busy` at once:
//!   a gate queue in the morning rush gets a fast "retry" rather than a slow answer.
//! - **Operations**: `/metrics` (Prometheus), `/healthz`, `/readyz` on a separate TCP listener;
//!   reload of trust list, scanner registry, revocations and TLS files, each on its own merits
//!   and without dropping connections ([`ReloadControl`], [`reload_files`]), with every file's
//!   result in the log, `/metrics` and `/readyz`; graceful drain on shutdown; systemd
//!   readiness notifications.
//!
//! Like mini-redis, [`run`] takes sockets the caller bound and a shutdown future, so tests bind
//! `127.0.0.1:0` and run the real server; [`run_with_signals`] and [`serve`] add SIGHUP reload
//! and SIGTERM/ctrl-c shutdown for the `gatehouse serve` binary.
//!
//! Logs carry no holder, credential or token data. Scanner ids (device names from the scanner
//! registry, not personal data) are logged on connect and refusal, because an operator needs
//! them to fix a misconfigured device.

mod batcher;
mod budget;
mod config;
mod conn;
mod fair;
pub mod feed;
pub mod files;
mod metrics;
mod ops;
mod reload;
pub mod store;
mod tls;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_protocol::MAX_FRAME_BODY;
use quinn::{Endpoint, EndpointConfig, TokioRuntime};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use files::FileError;
use gatehouse_core::{ConfigError, Engine, EngineError, RevocationError};

pub use config::{
    BatchingSection, EngineSection, FilesSection, LimitsSection, LogFormat, LogSection,
    ReplaySection, RevocationsSection, ServeConfig, ServeParts, TlsSection, SAMPLE_CONFIG,
};
pub use feed::{FeedConfig, FeedSource, OfflinePolicy};
pub use reload::{
    format_unix, reload, reload_files, reload_revocations, reload_scanners, reload_trust,
    FileResult, Files, ReloadControl, ReloadError, ReloadFile, ReloadReport, Reloaded,
    RevocationReload, TlsFiles, KEPT_REVOCATIONS,
};
pub use store::{
    Answer, Backend, Fault, Marked, NewLife, RedisBackend, RedisConfig, Risk, Settings,
    SharedStore, Store, StoreError, StoreHealth, StoreProbe, MARK_SCRIPT,
};

pub mod codes {
    //! The application error codes on the QUIC connection and its streams (SPEC §8.1,
    //! `gatehouse_protocol::codes`), as QUIC varints.
    use gatehouse_protocol::codes as wire;
    use quinn::VarInt;

    /// Connection closed on purpose: the server is shutting down (or the client said goodbye).
    pub const SHUTDOWN: VarInt = VarInt::from_u32(wire::SHUTDOWN);
    /// Connection closed: the client certificate's scanner is not (or no longer) registered.
    pub const UNKNOWN_SCANNER: VarInt = VarInt::from_u32(wire::UNKNOWN_SCANNER);
    /// Stream stopped: an unreadable or oversized frame (its error response was sent first).
    pub const BAD_FRAME: VarInt = VarInt::from_u32(wire::BAD_FRAME);
    /// Stream stopped: a frame body did not arrive in time, or the stream stayed idle.
    pub const STREAM_TIMEOUT: VarInt = VarInt::from_u32(wire::STREAM_TIMEOUT);
    /// Connection closed: this scanner already has its most connections open.
    pub const TOO_MANY_CONNECTIONS: VarInt = VarInt::from_u32(wire::TOO_MANY_CONNECTIONS);
    /// Stream stopped, or connection closed: the server's memory budget is spent.
    pub const OVER_BUDGET: VarInt = VarInt::from_u32(wire::OVER_BUDGET);
    /// The TLS alert an unregistered scanner gets at the handshake (`access_denied`).
    pub const TLS_ACCESS_DENIED: u8 = wire::TLS_ACCESS_DENIED;
}

/// Transport limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most scanner connections at once; more are refused (QUIC `CONNECTION_REFUSED`).
    pub max_connections: usize,
    /// Most concurrent request streams per connection (QUIC flow control).
    pub max_streams_per_connection: u32,
    /// A connection with no traffic for this long is closed (scanners send keep-alives).
    pub idle_timeout: Duration,
    /// Largest request frame body accepted, at most [`MAX_FRAME_BODY`].
    pub max_frame_body: usize,
    /// How long a frame body may take to arrive once its header has.
    pub body_timeout: Duration,
    /// How long the drain on shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// Most TLS handshakes in progress at once; more connection attempts are refused.
    pub max_handshakes: usize,
    /// Handshakes in progress from which a connection attempt from an address not yet
    /// validated is answered with a QUIC Retry: a spoofed source never gets server state.
    pub retry_threshold: usize,
    /// Most handshakes in progress from one source IP address.
    pub max_handshakes_per_source: usize,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// … and how long while handshakes in progress are at or above `retry_threshold`.
    pub pressure_handshake_timeout: Duration,
    /// Most connections of one scanner (one certificate) at once.
    pub max_connections_per_scanner: usize,
    /// Most tokens of one scanner admitted and not yet answered; beyond it that scanner's
    /// tokens are answered `busy`, whatever room the queue has for others.
    pub max_queued_per_scanner: usize,
    /// How long a request of a scanner at its `max_queued_per_scanner` share waits, unread,
    /// before it is read (and, if the share is still full, answered `busy`). Without it a
    /// flooding scanner that resends at once makes the server read, decrypt and refuse its
    /// requests as fast as it can send them, at the expense of every other scanner; held, it
    /// is slowed to `max_streams_per_connection` requests per hold and per connection.
    pub busy_hold: Duration,
    /// Most request-body bytes one connection may have read and not yet answered; beyond it
    /// its streams wait (QUIC flow control then holds the peer back).
    pub max_buffered_per_connection: usize,
    /// The global memory budget, bytes: handshakes, connections and request bodies.
    pub memory_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_streams_per_connection: 256,
            idle_timeout: Duration::from_secs(30),
            max_frame_body: MAX_FRAME_BODY,
            body_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            max_handshakes: 1024,
            retry_threshold: 64,
            max_handshakes_per_source: 32,
            handshake_timeout: Duration::from_secs(10),
            pressure_handshake_timeout: Duration::from_secs(1),
            max_connections_per_scanner: 16,
            max_queued_per_scanner: 1024,
            busy_hold: Duration::from_millis(100),
            max_buffered_per_connection: 1024 * 1024,
            memory_budget: 160 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// The first value out of range, as (field, problem).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_connections == 0 {
            return Err(("max_connections", "must be at least 1".into()));
        }
        if !(1..=100_000).contains(&self.max_streams_per_connection) {
            return Err(("max_streams_per_connection", "must be 1 to 100000".into()));
        }
        if self.idle_timeout < Duration::from_millis(100)
            || self.idle_timeout > Duration::from_secs(3600)
        {
            return Err(("idle_timeout", "must be 0.1 s to 1 hour".into()));
        }
        if !(64..=MAX_FRAME_BODY).contains(&self.max_frame_body) {
            return Err((
                "max_frame_body",
                format!("must be 64 to {MAX_FRAME_BODY} bytes"),
            ));
        }
        if self.body_timeout.is_zero() {
            return Err(("body_timeout", "must be positive".into()));
        }
        if self.drain_timeout > Duration::from_secs(600) {
            return Err(("drain_timeout", "must be at most 600 s".into()));
        }
        if self.max_handshakes == 0 {
            return Err(("max_handshakes", "must be at least 1".into()));
        }
        if self.max_handshakes_per_source == 0 {
            return Err(("max_handshakes_per_source", "must be at least 1".into()));
        }
        if self.handshake_timeout < Duration::from_millis(100)
            || self.handshake_timeout > Duration::from_secs(60)
        {
            return Err(("handshake_timeout", "must be 0.1 s to 60 s".into()));
        }
        if self.pressure_handshake_timeout < Duration::from_millis(100)
            || self.pressure_handshake_timeout > self.handshake_timeout
        {
            return Err((
                "pressure_handshake_timeout",
                "must be 0.1 s to handshake_timeout".into(),
            ));
        }
        if self.max_connections_per_scanner == 0 {
            return Err(("max_connections_per_scanner", "must be at least 1".into()));
        }
        if self.max_queued_per_scanner == 0 {
            return Err(("max_queued_per_scanner", "must be at least 1".into()));
        }
        if self.busy_hold > Duration::from_secs(1) {
            return Err(("busy_hold_ms", "must be at most 1000".into()));
        }
        if self.max_buffered_per_connection < self.max_frame_body
            || self.max_buffered_per_connection > u32::MAX as usize
        {
            return Err((
                "max_buffered_per_connection",
                "must be at least max_frame_body, at most 4 GiB".into(),
            ));
        }
        if self.memory_budget < 4 * self.max_buffered_per_connection {
            return Err((
                "memory_budget",
                "must hold at least 4 connections' max_buffered_per_connection".into(),
            ));
        }
        Ok(())
    }
}

/// Micro-batching and admission.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most tokens a verification thread takes at once (a request larger than this is queued
    /// in pieces of at most 8 tokens, and a batch may exceed it by less than one piece).
    pub max_batch: usize,
    /// Most tokens admitted and not yet answered; beyond it tokens are answered `busy`. An idle
    /// server always admits one request, however large.
    pub queue: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_batch: 8,
            queue: 4096,
        }
    }
}

impl Batching {
    /// The first value out of range, as (field, problem).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=4096).contains(&self.max_batch) {
            return Err(("max_batch", "must be 1 to 4096".into()));
        }
        if !(1..=10_000_000).contains(&self.queue) {
            return Err(("queue", "must be 1 to 10000000".into()));
        }
        Ok(())
    }
}

/// What the server needs besides the engine and its sockets.
#[derive(Debug)]
pub struct ServerConfig {
    /// The server certificate chain (leaf first).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub key: PrivateKeyDer<'static>,
    /// CA certificates scanner client certificates must chain to.
    pub client_ca: Vec<CertificateDer<'static>>,
    /// Transport limits.
    pub limits: Limits,
    /// Micro-batching.
    pub batching: Batching,
    /// Where one-time use is recorded.
    pub store: Store,
    /// Hot reload of files and TLS while running (none: no reloads).
    pub reload: Option<ReloadControl>,
    /// The revocation feed the node follows (none: revocations come from files and SIGHUP).
    pub revocation_feed: Option<FeedConfig>,
    /// The one clock the shell reads (the system clock; tests give a manual one).
    pub clock: Arc<dyn gatehouse_core::Clock>,
}

impl Clone for ServerConfig {
    fn clone(&self) -> Self {
        ServerConfig {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            client_ca: self.client_ca.clone(),
            limits: self.limits.clone(),
            batching: self.batching,
            store: self.store.clone(),
            reload: self.reload.clone(),
            revocation_feed: self.revocation_feed.clone(),
            clock: Arc::clone(&self.clock),
        }
    }
}

impl ServerConfig {
    /// A configuration with default limits and batching.
    pub fn new(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_ca: Vec<CertificateDer<'static>>,
    ) -> Self {
        ServerConfig {
            cert_chain,
            key,
            client_ca,
            limits: Limits::default(),
            batching: Batching::default(),
            store: Store::Memory,
            reload: None,
            revocation_feed: None,
            clock: Arc::new(gatehouse_core::SystemClock),
        }
    }

    fn check(&self) -> Result<(), ServerError> {
        let invalid =
            |(field, problem): (&'static str, String)| ServerError::Invalid { field, problem };
        self.limits.check().map_err(invalid)?;
        self.batching.check().map_err(invalid)?;
        if self.cert_chain.is_empty() {
            return Err(invalid(("cert_chain", "is empty".into())));
        }
        if self.client_ca.is_empty() {
            return Err(invalid((
                "client_ca",
                "is empty: client certificates are required".into(),
            )));
        }
        Ok(())
    }
}

/// Why the server could not start (or a configuration could not be loaded).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is out of range.
    #[error("invalid server setting {field}: {problem}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The server certificate or key was refused by rustls.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client CA could not be used to verify client certificates.
    #[error("client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
    /// The TLS configuration cannot carry QUIC.
    #[error("QUIC configuration: {0}")]
    Quic(String),
    /// A socket operation failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// A listen address could not be bound.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        /// Which listener (`listen`, `metrics_listen`).
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A configuration file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate or key file is wrong.
    #[error(transparent)]
    File(#[from] FileError),
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The initial revocation list could not be applied.
    #[error("revocations: {0}")]
    Revocation(#[from] RevocationError),
    /// The one-time-use store could not be set up.
    #[error("one-time-use store: {0}")]
    Store(#[from] StoreError),
}

/// Runs the service on `socket` (a bound UDP socket) and, if given, the operations HTTP server on
/// `ops`, until `shutdown` resolves; then drains: stops accepting connections, lets requests in
/// flight finish (at most [`Limits::drain_timeout`]), closes every connection with
/// [`codes::SHUTDOWN`] and waits for the peers to be told. Returns `Ok` after a clean drain.
pub async fn run(
    engine: Arc<Engine>,
    config: ServerConfig,
    socket: std::net::UdpSocket,
    ops: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    config.check()?;
    let metrics =
        Arc::new(metrics::Metrics::new(config.store.clone()).with_clock(Arc::clone(&config.clock)));
    let quic = tls::quinn_server_config(&config, Arc::clone(&engine), Arc::clone(&metrics))?;
    let endpoint = Endpoint::new(
        EndpointConfig::default(),
        Some(quic),
        socket,
        Arc::new(TokioRuntime),
    )?;
    let (queue, batcher) = batcher::spawn(
        Arc::clone(&engine),
        config.batching,
        Arc::clone(&metrics),
        config.store.clone(),
        Arc::clone(&config.clock),
    )?;
    let probe_task = match &config.store {
        Store::Shared(r) => Some(tokio::spawn(r.probe().run())),
        Store::Memory => None,
    };
    let queue = queue.with_scanner_share(config.limits.max_queued_per_scanner);
    let budget = budget::Budget::new(config.limits.memory_budget, Arc::clone(&metrics));
    let (drain_tx, drain_rx) = watch::channel(false);
    let shared = Arc::new(conn::Shared {
        engine: Arc::clone(&engine),
        limits: config.limits.clone(),
        metrics: Arc::clone(&metrics),
        queue,
        drain: drain_rx.clone(),
        budget,
        sources: conn::Counts::default(),
        scanners: conn::Counts::default(),
    });

    // What the start loaded, recorded before the operations endpoint answers: the first
    // scrape already has the certificate expiry and a result per file (the start's load).
    {
        let mut state = metrics.reload.lock();
        let now = config.clock.now();
        state.observe_epoch(engine.revocation_epoch().0, now);
        (state.server_cert_expiry, state.client_ca_expiry) = reload::cert_expiry(&config);
        if let Some(control) = &config.reload {
            state.record_start(&control.files, now);
        }
    }
    let ops_task = match ops {
        Some(listener) => {
            info!(addr = %listener.local_addr()?, "operations endpoint listening");
            Some(tokio::spawn(ops::serve(
                listener,
                Arc::clone(&engine),
                Arc::clone(&metrics),
            )))
        }
        None => None,
    };
    let purge_task = tokio::spawn(purge_replay_table(
        Arc::clone(&engine),
        Arc::clone(&config.clock),
    ));
    // Reloads (files and TLS) and their results: a separate task, see `reload`.
    let reload_task = config.reload.clone().map(|control| {
        tokio::spawn(reload::serve_reloads(
            control,
            Arc::clone(&engine),
            endpoint.clone(),
            config.clone(),
            Arc::clone(&metrics),
        ))
    });
    info!(addr = %endpoint.local_addr()?, store = config.store.label(), "gatehouse listening (QUIC)");
    // systemd `Type=notify`: ready once the sockets are bound and the engine loaded.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let feed_task = config.revocation_feed.clone().map(|mut feed| {
        feed.clock = Arc::clone(&config.clock);
        tokio::spawn(feed::follow(
            Arc::clone(&engine),
            feed,
            Arc::clone(&metrics.feed),
        ))
    });

    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    let open = metrics.connections.get();
                    if open >= config.limits.max_connections as i64 {
                        // Counted, not logged one by one: a flood would flood the log.
                        metrics.refused_limit.inc();
                        debug!(open, "connection refused: at the connection limit");
                        incoming.refuse();
                        continue;
                    }
                    // Handshake caps, Retry and the budget; counted here, before the task
                    // runs, so a burst cannot overshoot a limit.
                    let Some((incoming, handshake)) = conn::admit(&shared, incoming) else {
                        continue;
                    };
                    let held = conn::Held::new(&metrics, conn::Gauge::Connections);
                    connections.spawn(conn::connection(
                        Arc::clone(&shared),
                        incoming,
                        handshake,
                        held,
                    ));
                }
                None => {
                    error!("QUIC endpoint closed unexpectedly");
                    break;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    info!(
        connections = connections.len(),
        "shutting down: draining requests in flight"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(t) = &reload_task {
        t.abort();
    }
    metrics.accepting.store(false, Ordering::Relaxed);
    let _ = drain_tx.send(true);
    let grace = config.limits.drain_timeout + Duration::from_millis(500);
    let clean = {
        let drained = async {
            tokio::time::timeout(grace, async {
                while connections.join_next().await.is_some() {}
            })
            .await
            .is_ok()
        };
        tokio::pin!(drained);
        loop {
            tokio::select! {
                clean = &mut drained => break clean,
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => incoming.refuse(),
                    None => break false,
                },
            }
        }
    };
    if !clean {
        warn!("drain timed out: closing the remaining connections");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    endpoint.close(codes::SHUTDOWN, b"server shutting down");
    if tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle())
        .await
        .is_err()
    {
        warn!("peers did not acknowledge the close in time");
    }

    purge_task.abort();
    if let Some(t) = probe_task {
        t.abort();
    }
    if let Some(t) = feed_task {
        t.abort();
    }
    // The batcher thread ends once the last queue handle is gone.
    drop(shared);
    let joined = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::task::spawn_blocking(move || batcher.join()),
    )
    .await;
    if joined.is_err() {
        warn!("the batcher thread did not stop in time");
    }
    if let Some(t) = ops_task {
        t.abort();
    }
    info!("gatehouse stopped");
    Ok(())
}

/// Drops expired one-time-use entries every second, off the runtime threads, so memory falls
/// back after a rush even without traffic.
async fn purge_replay_table(engine: Arc<Engine>, clock: Arc<dyn gatehouse_core::Clock>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let e = Arc::clone(&engine);
        let now = clock.now();
        let _ = tokio::task::spawn_blocking(move || e.purge(now)).await;
    }
}

/// [`run`] with process signals: SIGHUP reloads `files` and the TLS files, each on its own
/// merits (a refused file keeps its previous state; results in the log, `/metrics` and
/// `/readyz`), SIGTERM or ctrl-c start the drain.
pub async fn run_with_signals(
    engine: Arc<Engine>,
    config: ServerConfig,
    files: Files,
    socket: std::net::UdpSocket,
    ops: Option<TcpListener>,
) -> Result<(), ServerError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let trigger = Arc::new(tokio::sync::Notify::new());
        let mut config = config;
        config.reload = Some(ReloadControl {
            files,
            trigger: Arc::clone(&trigger),
        });
        let reloader = tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                info!("SIGHUP: reloading trust list, scanners, revocations and TLS");
                // Results are logged and recorded by the server's reload task; a refused file
                // keeps its previous state in force.
                trigger.notify_one();
            }
        });
        let shutdown = async move {
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    if let Err(e) = r {
                        error!("cannot listen for ctrl-c: {e}");
                    }
                    info!("interrupt: shutting down");
                }
                _ = terminate.recv() => info!("SIGTERM: shutting down"),
            }
        };
        let result = run(engine, config, socket, ops, shutdown).await;
        reloader.abort();
        result
    }
    #[cfg(not(unix))]
    {
        let _ = files;
        let shutdown = async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                error!("cannot listen for ctrl-c: {e}");
            }
            info!("interrupt: shutting down");
        };
        run(engine, config, socket, ops, shutdown).await
    }
}

/// Everything `gatehouse serve --config file.toml` does after loading the file: builds the
/// engine, binds the sockets and runs with signals.
pub async fn serve(mut parts: ServeParts) -> Result<(), ServerError> {
    parts.connect_store().await?;
    let engine = parts.build_engine()?;
    let socket = std::net::UdpSocket::bind(parts.listen).map_err(|source| ServerError::Bind {
        what: "listen",
        addr: parts.listen,
        source,
    })?;
    let ops = match parts.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "metrics_listen",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    let (epoch, revoked) = engine.revocation_epoch();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %parts.source.display(),
        backend = ?parts.engine.backend,
        strict_signatures = parts.engine.strict_signatures,
        listen = %parts.listen,
        metrics_listen = %parts.metrics_listen.map_or("none".to_string(), |a| a.to_string()),
        issuers = parts.trust.len(),
        scanners = parts.scanners.len(),
        revocation_epoch = epoch,
        revoked,
        "gatehouse starting"
    );
    run_with_signals(engine, parts.server, parts.files, socket, ops).await
}
