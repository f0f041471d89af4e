//! What the server is configured with, as values: transport limits, batching, the TLS
//! material, the store, the files it reloads and the clock it reads. `config` builds these
//! from the TOML file; tests build them directly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_protocol::MAX_FRAME_BODY;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Deserializer};
use tokio::sync::Notify;

use crate::error::ServerError;
use crate::feed::FeedConfig;
pub use crate::invalid::Invalid;
use crate::store::Store;

/// A `Duration` written in whole seconds.
pub(crate) mod seconds {
    use super::{Deserialize, Deserializer, Duration};

    /// Reads whole seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// A `Duration` written in whole milliseconds.
pub(crate) mod millis {
    use super::{Deserialize, Deserializer, Duration};

    /// Reads whole milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Transport limits: `[limits]` in the configuration file, read as they are (times in the unit
/// their key names).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most scanner connections at once; more are refused (QUIC `CONNECTION_REFUSED`).
    pub max_connections: usize,
    /// Most concurrent request streams per connection (QUIC flow control), once its scanner is
    /// admitted; 16 until then.
    pub max_streams_per_connection: u32,
    /// A connection with no traffic for this long is closed (scanners send keep-alives).
    #[serde(rename = "idle_timeout_secs", with = "seconds")]
    pub idle_timeout: Duration,
    /// Largest request frame body accepted, at most [`MAX_FRAME_BODY`].
    pub max_frame_body: usize,
    /// How long a frame body may take to arrive once its header has.
    #[serde(rename = "body_timeout_secs", with = "seconds")]
    pub body_timeout: Duration,
    /// How long the drain on shutdown waits for requests in flight.
    #[serde(rename = "drain_timeout_secs", with = "seconds")]
    pub drain_timeout: Duration,
    /// Most TLS handshakes in progress at once; more connection attempts are refused.
    pub max_handshakes: usize,
    /// Handshakes in progress from which a connection attempt from an address not yet
    /// validated is answered with a QUIC Retry: a spoofed source never gets server state.
    pub retry_threshold: usize,
    /// Most validated handshakes in progress from one source IP address (a new one evicts the
    /// oldest unfinished one); a quarter of it is the address's share of unvalidated ones,
    /// past which its new attempts get a QUIC Retry.
    pub max_handshakes_per_source: usize,
    /// How long a handshake may take.
    #[serde(rename = "handshake_timeout_ms", with = "millis")]
    pub handshake_timeout: Duration,
    /// … and how long while handshakes in progress are at or above `retry_threshold`.
    #[serde(rename = "pressure_handshake_timeout_ms", with = "millis")]
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
    #[serde(rename = "busy_hold_ms", with = "millis")]
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
    /// The first value out of range, named by its key in the configuration file.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.max_connections == 0 {
            return Err(Invalid::new("max_connections", "must be at least 1"));
        }
        if !(1..=100_000).contains(&self.max_streams_per_connection) {
            return Err(Invalid::new(
                "max_streams_per_connection",
                "must be 1 to 100000",
            ));
        }
        if self.idle_timeout < Duration::from_millis(100)
            || self.idle_timeout > Duration::from_secs(3600)
        {
            return Err(Invalid::new("idle_timeout_secs", "must be 0.1 s to 1 hour"));
        }
        if !(64..=MAX_FRAME_BODY).contains(&self.max_frame_body) {
            return Err(Invalid::new(
                "max_frame_body",
                format!("must be 64 to {MAX_FRAME_BODY} bytes"),
            ));
        }
        if self.body_timeout.is_zero() {
            return Err(Invalid::new("body_timeout_secs", "must be positive"));
        }
        if self.drain_timeout > Duration::from_secs(600) {
            return Err(Invalid::new("drain_timeout_secs", "must be at most 600 s"));
        }
        if self.max_handshakes == 0 {
            return Err(Invalid::new("max_handshakes", "must be at least 1"));
        }
        if self.max_handshakes_per_source == 0 {
            return Err(Invalid::new(
                "max_handshakes_per_source",
                "must be at least 1",
            ));
        }
        if self.handshake_timeout < Duration::from_millis(100)
            || self.handshake_timeout > Duration::from_secs(60)
        {
            return Err(Invalid::new(
                "handshake_timeout_ms",
                "must be 0.1 s to 60 s",
            ));
        }
        if self.pressure_handshake_timeout < Duration::from_millis(100)
            || self.pressure_handshake_timeout > self.handshake_timeout
        {
            return Err(Invalid::new(
                "pressure_handshake_timeout_ms",
                "must be 0.1 s to handshake_timeout",
            ));
        }
        if self.max_connections_per_scanner == 0 {
            return Err(Invalid::new(
                "max_connections_per_scanner",
                "must be at least 1",
            ));
        }
        if self.max_queued_per_scanner == 0 {
            return Err(Invalid::new("max_queued_per_scanner", "must be at least 1"));
        }
        if self.busy_hold > Duration::from_secs(1) {
            return Err(Invalid::new("busy_hold_ms", "must be at most 1000"));
        }
        if self.max_buffered_per_connection < self.max_frame_body
            || self.max_buffered_per_connection > u32::MAX as usize
        {
            return Err(Invalid::new(
                "max_buffered_per_connection",
                "must be at least max_frame_body, at most 4 GiB",
            ));
        }
        if self.memory_budget < 4 * self.max_buffered_per_connection {
            return Err(Invalid::new(
                "memory_budget",
                "must hold at least 4 connections' max_buffered_per_connection",
            ));
        }
        Ok(())
    }
}

/// Micro-batching and admission.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most tokens a verification turn takes at once (a request larger than this is queued
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
    /// The first value out of range, named by its key in the configuration file.
    pub fn check(&self) -> Result<(), Invalid> {
        if !(1..=4096).contains(&self.max_batch) {
            return Err(Invalid::new("max_batch", "must be 1 to 4096"));
        }
        if !(1..=10_000_000).contains(&self.queue) {
            return Err(Invalid::new("queue", "must be 1 to 10000000"));
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

    pub(crate) fn check(&self) -> Result<(), ServerError> {
        let invalid = |Invalid { field, problem }| ServerError::Invalid { field, problem };
        self.limits.check().map_err(invalid)?;
        self.batching.check().map_err(invalid)?;
        if self.cert_chain.is_empty() {
            return Err(invalid(Invalid::new("cert_chain", "is empty")));
        }
        if self.client_ca.is_empty() {
            return Err(invalid(Invalid::new(
                "client_ca",
                "is empty: client certificates are required",
            )));
        }
        Ok(())
    }
}

/// The engine's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// Trusted issuer keys (TOML).
    pub trust: PathBuf,
    /// Registered scanners (TOML).
    pub scanners: PathBuf,
    /// The revocation list (CBOR snapshot or delta), if any.
    pub revocations: Option<PathBuf>,
    /// The IACA roots trusted for mdoc presentations (PEM certificates), if any (SPEC §12).
    pub mdoc_iaca: Option<PathBuf>,
    /// The operator's mdoc revocations (text, SPEC §12.5), if any.
    pub mdoc_revocations: Option<PathBuf>,
    /// Where the revocation state a reload put in force is kept (see [`keep`](crate::reload::keep)), if anywhere.
    pub state_dir: Option<PathBuf>,
    /// The server's TLS files, reloaded by the running server (not by [`reload`](crate::reload())).
    pub tls: Option<TlsFiles>,
}

/// The TLS files of `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// CA certificates for scanner client certificates, PEM.
    pub client_ca: PathBuf,
}

/// How a running server is told to reload, and what it reloads: [`run`](crate::run) reloads
/// `files` (engine files and TLS) each time `trigger` is notified, and records the result in
/// `/metrics` and `/readyz`. [`run_with_signals`](crate::run_with_signals) notifies it on SIGHUP.
#[derive(Debug, Clone)]
pub struct ReloadControl {
    /// The files to reload.
    pub files: Files,
    /// Notified to start a reload; notifications during a reload coalesce into one more.
    pub trigger: Arc<Notify>,
}
