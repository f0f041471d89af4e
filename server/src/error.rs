//! Why the server could not start, or a configuration could not be loaded.

use crate::files::FileError;
use crate::store::StoreError;
use gatehouse_core::{ConfigError, EngineError, RevocationError};

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
