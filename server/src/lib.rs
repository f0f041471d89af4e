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
//! - **Micro-batching, run to completion**: tokens from every connection go through one bounded,
//!   fair queue; a verification turn on the runtime thread that read them takes what waits,
//!   scanner by scanner, up to [`Batching::max_batch`] tokens at a time, and yields between
//!   batches. When the queue is full a token is answered `busy` at once:
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

mod admission;
mod batcher;
mod budget;
pub mod codes;
mod component;
mod config;
mod conn;
mod error;
mod fair;
pub mod feed;
pub mod files;
mod invalid;
mod metrics;
mod ops;
mod reload;
mod service;
mod settings;
pub mod store;
mod tally;
mod tls;

pub use config::{
    BatchingSection, EngineSection, FilesSection, LogFormat, LogSection, ReplaySection,
    RevocationsSection, ServeConfig, ServeParts, TlsSection, SAMPLE_CONFIG,
};
pub use error::ServerError;
pub use feed::{FeedConfig, FeedSource, OfflinePolicy};
pub use reload::{
    format_unix, reload, reload_files, reload_revocations, reload_scanners, reload_trust,
    FileResult, ReloadError, ReloadFile, ReloadReport, Reloaded, RevocationReload,
    KEPT_REVOCATIONS,
};
pub use service::{run, run_with_signals, serve};
pub use settings::{Batching, Files, Invalid, Limits, ReloadControl, ServerConfig, TlsFiles};
pub use store::{
    Answer, Backend, Fault, Marked, NewLife, RedisBackend, RedisConfig, Risk, Settings,
    SharedStore, Store, StoreError, StoreHealth, StoreProbe, MARK_SCRIPT,
};
