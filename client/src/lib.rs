//! # gatehouse-client
//!
//! The reference scanner client: what a gate terminal or point-of-sale device embeds to ask the
//! engine for verdicts over QUIC.
//!
//! One connection per scanner, authenticated by the scanner's client certificate (its subject
//! Common Name is the scanner id the server looks up). Every request goes on its own
//! bidirectional stream, so any number of requests run concurrently on one connection and a slow
//! answer never holds up another. [`ScannerClient`] is cheap to clone and every method takes
//! `&self`: share one per device.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gatehouse_client::ClientError> {
//! use std::path::Path;
//! use gatehouse_client::{ClientIdentity, ScannerClient};
//!
//! let identity = ClientIdentity::from_files(
//!     Path::new("pki/ca.pem"),
//!     Path::new("pki/scanners/gate-1-1.pem"),
//!     Path::new("pki/scanners/gate-1-1.key"),
//! )?;
//! let client = ScannerClient::connect("127.0.0.1:4433".parse().unwrap(), "localhost", identity).await?;
//! # let token: Vec<u8> = vec![];
//! let verdict = client.verify(&token, None).await?;
//! println!("{}", verdict.reason);
//! # Ok(()) }
//! ```
//!
//! Responses are read header first: the body length is bounded (by
//! [`gatehouse_protocol::MAX_FRAME_BODY`]) before anything is allocated, so a misbehaving
//! server cannot make a scanner allocate without limit.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_protocol::{
    kind, DecodeError, FrameHeader, MdocRequest, Request, Response, Verdict, WireErrorCode, ALPN,
    FRAME_HEADER_LEN, MAX_BATCH, RETRY_KEY_LEN,
};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{
    Connection, ConnectionError, Endpoint, IdleTimeout, ReadError, ReadExactError, RecvStream,
    TransportConfig, TransportErrorCode, VarInt, WriteError,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use gatehouse_protocol::codes;
mod fleet;
pub mod ops;

pub use fleet::{FleetClient, FleetOptions};

use gatehouse_certs::{load_certs, load_key, parse_certs, parse_key, FileError};

/// Most response frames [`ScannerClient::send_raw`] reads from one stream.
const MAX_RAW_RESPONSES: usize = 1024;

/// Why a request did not get a verdict.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The certificates or key could not be read or used.
    #[error("client configuration: {0}")]
    Config(String),
    /// rustls refused the TLS configuration (a key that does not match the certificate …).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The local UDP socket could not be opened.
    #[error("cannot open a local UDP endpoint: {0}")]
    Endpoint(std::io::Error),
    /// The connection could not be started (bad server name, …).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The TLS handshake failed: the server certificate is not trusted, the client
    /// certificate was refused, or no common ALPN. [`HandshakeFailure::by_server`] says which
    /// side refused.
    #[error("TLS handshake failed: {0}")]
    Handshake(HandshakeFailure),
    /// A server's name could not be resolved to an address.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The server does not know this scanner (its certificate is valid, but the scanner is not
    /// registered, or was removed).
    #[error("the server does not know this scanner (not registered, or removed)")]
    UnknownScanner,
    /// The server refused the connection (at its connection limit, or draining). Retry later.
    #[error("the server refused the connection (busy or draining); retry")]
    Refused,
    /// The server is shutting down. Reconnect (to another instance) and retry.
    #[error("the server is shutting down; reconnect and retry")]
    ShuttingDown,
    /// The connection was lost.
    #[error("connection lost: {0}")]
    Connection(ConnectionError),
    /// The server reset or stopped the request stream without an answer.
    #[error("the server abandoned the request stream (code {0})")]
    StreamReset(u64),
    /// The response could not be decoded.
    #[error("response could not be decoded: {0}")]
    Decode(#[from] DecodeError),
    /// The server could not read the request and said why.
    #[error("the server could not read the request ({code:?}): {message}")]
    Server {
        /// What went wrong.
        code: WireErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The response does not answer the request (wrong id, kind or verdict count).
    #[error("unexpected response: {0}")]
    Protocol(&'static str),
    /// No response in time.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// A batch request holds more than [`MAX_BATCH`] tokens.
    #[error("a batch holds at most {MAX_BATCH} tokens, not {0}")]
    BatchTooLarge(usize),
}

/// A failed TLS handshake, and which side refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// The server sent the TLS alert: it did not accept this scanner's certificate (another
    /// CA, expired, no single subject CN). Otherwise this scanner refused the handshake: the
    /// server's certificate does not chain to the scanner's CA or is not for the server name.
    pub by_server: bool,
    /// The QUIC error, as text.
    pub message: String,
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.by_server {
            write!(
                f,
                "the server refused this scanner's certificate ({})",
                self.message
            )
        } else {
            write!(
                f,
                "the server's certificate is not trusted by this scanner's CA or is not for the server name ({})",
                self.message
            )
        }
    }
}

impl ClientError {
    /// Whether this scanner's own setup is at fault, so that no server would answer
    /// otherwise: its certificate, key or CA files (unreadable, or a key that does not match
    /// the certificate), or its trust in the server's certificate (another CA, another name).
    pub fn is_local(&self) -> bool {
        match self {
            ClientError::Config(_) | ClientError::Tls(_) | ClientError::Endpoint(_) => true,
            ClientError::Handshake(h) => !h.by_server,
            _ => false,
        }
    }

    /// Whether the server refused this scanner: not registered (or removed by a reload), or
    /// its certificate not accepted in the handshake (SPEC §8.1). Reconnecting does not help;
    /// the registration or the certificate is what is missing.
    pub fn is_scanner_refused(&self) -> bool {
        match self {
            ClientError::UnknownScanner => true,
            ClientError::Handshake(h) => h.by_server,
            _ => false,
        }
    }

    /// Whether the same request may succeed if retried (possibly after reconnecting).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Refused
                | ClientError::ShuttingDown
                | ClientError::Connection(_)
                | ClientError::StreamReset(_)
                | ClientError::Timeout(_)
        )
    }
}

fn is_crypto(code: TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

impl From<ConnectionError> for ClientError {
    fn from(e: ConnectionError) -> Self {
        match &e {
            ConnectionError::ApplicationClosed(c)
                if c.error_code == VarInt::from_u32(codes::UNKNOWN_SCANNER) =>
            {
                ClientError::UnknownScanner
            }
            ConnectionError::ApplicationClosed(c)
                if c.error_code == VarInt::from_u32(codes::SHUTDOWN) =>
            {
                ClientError::ShuttingDown
            }
            ConnectionError::ConnectionClosed(c)
                if c.error_code == TransportErrorCode::crypto(codes::TLS_ACCESS_DENIED) =>
            {
                ClientError::UnknownScanner
            }
            ConnectionError::ConnectionClosed(c)
                if c.error_code == TransportErrorCode::CONNECTION_REFUSED =>
            {
                ClientError::Refused
            }
            // The server's TLS alert, sent to us: it refused this scanner's certificate.
            ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code) => {
                ClientError::Handshake(HandshakeFailure {
                    by_server: true,
                    message: e.to_string(),
                })
            }
            // Our own TLS stack's alert: this scanner refused the server's certificate.
            ConnectionError::TransportError(t) if is_crypto(t.code) => {
                ClientError::Handshake(HandshakeFailure {
                    by_server: false,
                    message: e.to_string(),
                })
            }
            _ => ClientError::Connection(e),
        }
    }
}

impl From<ReadError> for ClientError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::ConnectionLost(c) => c.into(),
            ReadError::Reset(code) => ClientError::StreamReset(code.into_inner()),
            _ => ClientError::Protocol("response stream unusable"),
        }
    }
}

impl From<WriteError> for ClientError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::ConnectionLost(c) => c.into(),
            WriteError::Stopped(code) => ClientError::StreamReset(code.into_inner()),
            _ => ClientError::Protocol("request stream unusable"),
        }
    }
}

/// A scanner's TLS identity: the CA that issued the server certificate, and the scanner's own
/// certificate chain and key.
pub struct ClientIdentity {
    /// CA certificates the server certificate must chain to.
    pub roots: Vec<CertificateDer<'static>>,
    /// The scanner's certificate chain (leaf first).
    pub chain: Vec<CertificateDer<'static>>,
    /// The scanner's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClientIdentity {
    /// From PEM text: CA certificate(s), the scanner's certificate chain, its key.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, ClientError> {
        let config = |e: FileError| ClientError::Config(e.to_string());
        Ok(ClientIdentity {
            roots: parse_certs(ca, Path::new("<ca>")).map_err(config)?,
            chain: parse_certs(cert, Path::new("<certificate>")).map_err(config)?,
            key: parse_key(key, Path::new("<key>")).map_err(config)?,
        })
    }

    /// From PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let config = |e: FileError| ClientError::Config(e.to_string());
        Ok(ClientIdentity {
            roots: load_certs(ca).map_err(config)?,
            chain: load_certs(cert).map_err(config)?,
            key: load_key(key).map_err(config)?,
        })
    }

    /// Checks, without any network, that the TLS configuration can be made: the CA
    /// certificates are usable and the key matches the certificate.
    pub fn check(&self) -> Result<(), ClientError> {
        tls_config(self.clone()).map(|_| ())
    }
}

/// The scanner's TLS 1.3 configuration: the CA as the only roots, the client certificate, the
/// ALPN, no 0-RTT.
fn tls_config(identity: ClientIdentity) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in identity.roots {
        roots.add(ca)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: requests are not idempotent (a token is accepted once).
    tls.enable_early_data = false;
    Ok(tls)
}

/// Client tunables.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// How long a handshake may take.
    pub connect_timeout: Duration,
    /// How long one request may take, end to end.
    pub request_timeout: Duration,
    /// Keep-alive interval, so an idle scanner stays connected.
    pub keep_alive: Duration,
    /// The connection is given up after this long without hearing from the server.
    pub idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// A connection to a gatehouse server, as one scanner. Clone it to share.
#[derive(Clone)]
pub struct ScannerClient {
    endpoint: Endpoint,
    conn: Connection,
    next_id: Arc<AtomicU64>,
    options: ClientOptions,
}

impl std::fmt::Debug for ScannerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScannerClient")
            .field("server", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl ScannerClient {
    /// Connects to `server`, checking its certificate for `server_name`, with default options.
    pub async fn connect(
        server: SocketAddr,
        server_name: &str,
        identity: ClientIdentity,
    ) -> Result<ScannerClient, ClientError> {
        Self::connect_with(server, server_name, identity, ClientOptions::default()).await
    }

    /// Connects with these options.
    pub async fn connect_with(
        server: SocketAddr,
        server_name: &str,
        identity: ClientIdentity,
        options: ClientOptions,
    ) -> Result<ScannerClient, ClientError> {
        let tls = tls_config(identity)?;
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| ClientError::Config(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = TransportConfig::default();
        transport
            .keep_alive_interval(Some(options.keep_alive))
            .max_idle_timeout(Some(
                IdleTimeout::try_from(options.idle_timeout)
                    .map_err(|e| ClientError::Config(format!("idle timeout: {e}")))?,
            ))
            // The server never opens streams towards a scanner.
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(0));
        config.transport_config(Arc::new(transport));

        let bind: SocketAddr = if server.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = Endpoint::client(bind).map_err(ClientError::Endpoint)?;
        endpoint.set_default_client_config(config);
        let connecting = endpoint.connect(server, server_name)?;
        let conn = tokio::time::timeout(options.connect_timeout, connecting)
            .await
            .map_err(|_| ClientError::Timeout(options.connect_timeout))??;
        Ok(ScannerClient {
            endpoint,
            conn,
            next_id: Arc::new(AtomicU64::new(1)),
            options,
        })
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Verifies one token; `challenge` is the challenge this scanner issued (NFC), if any.
    pub async fn verify(
        &self,
        token: &[u8],
        challenge: Option<&[u8]>,
    ) -> Result<Verdict, ClientError> {
        self.verify_scan(token, challenge, None).await
    }

    /// Verifies one token with the scan's retry key (SPEC §8.6): sending the same token with
    /// the same key again, here or to another node of the fleet, gets the first verdict back.
    pub async fn verify_scan(
        &self,
        token: &[u8],
        challenge: Option<&[u8]>,
        retry: Option<[u8; RETRY_KEY_LEN]>,
    ) -> Result<Verdict, ClientError> {
        let id = self.next_id();
        let response = self
            .request(&Request::Verify {
                id,
                token: token.to_vec(),
                challenge: challenge.map(<[u8]>::to_vec),
                retry,
            })
            .await?;
        verdicts(response, id, 1)?
            .pop()
            .ok_or(ClientError::Protocol("no verdict"))
    }

    /// Verifies one ISO/IEC 18013-5 presentation (SPEC §12): the reader's side of the flow,
    /// after its session with the phone. `request.id` is replaced by this client's next id.
    pub async fn verify_mdoc(&self, request: MdocRequest) -> Result<Verdict, ClientError> {
        let id = self.next_id();
        let response = self
            .request(&Request::VerifyMdoc(MdocRequest { id, ..request }))
            .await?;
        verdicts(response, id, 1)?
            .pop()
            .ok_or(ClientError::Protocol("no verdict"))
    }

    /// Verifies up to [`MAX_BATCH`] tokens (QR, no challenge); verdicts in the same order.
    pub async fn verify_batch(&self, tokens: &[Vec<u8>]) -> Result<Vec<Verdict>, ClientError> {
        if tokens.len() > MAX_BATCH {
            return Err(ClientError::BatchTooLarge(tokens.len()));
        }
        let id = self.next_id();
        let response = self
            .request(&Request::VerifyBatch {
                id,
                tokens: tokens.to_vec(),
                retry: None,
            })
            .await?;
        verdicts(response, id, tokens.len())
    }

    /// A liveness check; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let id = self.next_id();
        let start = Instant::now();
        match self.request(&Request::Ping { id }).await? {
            Response::Pong { id: got } if got == id => Ok(start.elapsed()),
            Response::Error { code, message, .. } => Err(ClientError::Server { code, message }),
            _ => Err(ClientError::Protocol("a ping was not answered by its pong")),
        }
    }

    /// Sends any request on a new stream and returns the server's response as it is (an error
    /// response is `Ok(Response::Error { .. })`).
    pub async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        let frame = request.encode();
        let limit = self.options.request_timeout;
        tokio::time::timeout(limit, async {
            let mut responses = self.exchange(&frame, 1).await?;
            responses
                .pop()
                .ok_or(ClientError::Protocol("the stream ended without a response"))
        })
        .await
        .map_err(|_| ClientError::Timeout(limit))?
    }

    /// Sends raw bytes (any number of frames, or garbage) on a new stream, finishes it, and
    /// returns every response frame the server sends back before it ends the stream. For
    /// conformance testing.
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<Vec<Response>, ClientError> {
        let limit = self.options.request_timeout;
        tokio::time::timeout(limit, self.exchange(bytes, MAX_RAW_RESPONSES))
            .await
            .map_err(|_| ClientError::Timeout(limit))?
    }

    async fn exchange(&self, bytes: &[u8], most: usize) -> Result<Vec<Response>, ClientError> {
        let (mut send, mut recv) = self.conn.open_bi().await?;
        match send.write_all(bytes).await {
            Ok(()) => {
                // Only fails if the stream was already reset: the read below will say why.
                let _ = send.finish();
            }
            // The server stopped reading (an unreadable frame): its answer is on the way.
            Err(WriteError::Stopped(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let mut responses = Vec::new();
        while responses.len() < most {
            match read_response(&mut recv).await? {
                Some(r) => responses.push(r),
                None => break,
            }
        }
        Ok(responses)
    }

    /// The underlying QUIC connection (for statistics, or for tests that misbehave on purpose).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Closes the connection (for every clone) and waits briefly for the server to hear it.
    pub async fn close(&self) {
        self.conn
            .close(VarInt::from_u32(codes::SHUTDOWN), b"scanner closing");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Reads one response frame, header first; `None` when the server ended the stream cleanly.
async fn read_response(recv: &mut RecvStream) -> Result<Option<Response>, ClientError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(_)) => {
            return Err(ClientError::Protocol("response header truncated"))
        }
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let h = FrameHeader::decode(&header)?;
    if !matches!(h.kind, kind::VERDICTS | kind::PONG | kind::ERROR) {
        return Err(ClientError::Protocol("frame kind is not a response"));
    }
    let mut body = vec![0u8; h.len];
    match recv.read_exact(&mut body).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(_)) => {
            return Err(ClientError::Protocol("response body truncated"))
        }
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    Ok(Some(Response::decode(h.kind, &body)?))
}

fn verdicts(response: Response, id: u64, count: usize) -> Result<Vec<Verdict>, ClientError> {
    match response {
        Response::Verdicts { id: got, verdicts } if got == id && verdicts.len() == count => {
            Ok(verdicts)
        }
        Response::Verdicts { .. } => Err(ClientError::Protocol(
            "verdicts for another request, or the wrong number of them",
        )),
        Response::Error { code, message, .. } => Err(ClientError::Server { code, message }),
        Response::Pong { .. } => Err(ClientError::Protocol("a pong in answer to a verify")),
    }
}
