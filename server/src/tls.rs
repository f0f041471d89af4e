//! TLS and QUIC transport configuration of the server.

use std::sync::Arc;

use gatehouse_protocol::ALPN;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use tracing::warn;

use super::files::subject_common_name;
use crate::admission::Admission;
use crate::error::ServerError;
use crate::settings::ServerConfig;
use gatehouse_core::Engine;

/// Bytes a connection may have in flight towards the server, over all its streams.
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;
/// Request streams a connection may open before its scanner is admitted. The QUIC stack sets
/// up its state for every stream a connection may open when the connection is accepted, so a
/// half-open handshake (a flood that answers Retry, then goes silent) would cost the full
/// `max_streams_per_connection` of it; an admitted scanner gets the rest at once
/// ([`full_streams`]).
pub(crate) const HANDSHAKE_STREAMS: u32 = 16;
/// Connection attempts quinn holds before the accept loop has decided on them.
const INCOMING_MAX: usize = 4096;
/// Bytes of further packets quinn holds per undecided attempt, and over all of them.
const INCOMING_BUFFER: u64 = 16 * 1024;
const INCOMING_BUFFER_TOTAL: u64 = 4 * 1024 * 1024;

/// The quinn server configuration: TLS 1.3 only, ALPN `gatehouse/1`, client certificates
/// required and checked against the CA and the scanner registry, no 0-RTT, no resumption.
pub(crate) fn quinn_server_config(
    config: &ServerConfig,
    engine: Arc<Engine>,
    admission: Arc<Admission>,
) -> Result<quinn::ServerConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in &config.client_ca {
        roots.add(ca.clone())?;
    }
    let webpki =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()?;
    let verifier = Arc::new(ScannerVerifier {
        webpki,
        engine,
        admission,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(config.cert_chain.clone(), config.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: a replayed early-data request would reach the engine twice. (The engine's
    // one-time-use check would still catch a token, but there is no reason to allow it.)
    tls.max_early_data_size = 0;
    // No resumption: every connection is authenticated by a full handshake, so a scanner
    // removed from the registry cannot come back on an old ticket.
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(NoServerSessionStorage {});

    let crypto = QuicServerConfig::try_from(tls).map_err(|e| ServerError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(config)?));
    // Connection attempts not yet handed to the accept loop, and the packets that follow their
    // first one, are held by quinn: bound them well below its generous defaults (65,536 and
    // 100 MiB). The accept loop decides on each attempt at once, so few ever wait.
    server
        .max_incoming(INCOMING_MAX)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(server)
}

fn transport(config: &ServerConfig) -> Result<TransportConfig, ServerError> {
    let limits = &config.limits;
    // Requests are small (a batch of 128 tokens is under 100 KiB): flow-control windows sized
    // for them bound what one scanner can make the server buffer.
    let stream_window = (2 * limits.max_frame_body) as u32;
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(
        limits.max_streams_per_connection.min(HANDSHAKE_STREAMS),
    ))
    .max_concurrent_uni_streams(VarInt::from_u32(0))
    .stream_receive_window(VarInt::from_u32(stream_window))
    .receive_window(VarInt::from_u32(CONNECTION_WINDOW.max(stream_window)))
    .max_idle_timeout(Some(
        IdleTimeout::try_from(limits.idle_timeout)
            .map_err(|e| ServerError::Quic(format!("idle timeout: {e}")))?,
    ));
    Ok(t)
}

/// Gives an admitted scanner's connection its full `max_streams_per_connection` request streams
/// (it could open [`HANDSHAKE_STREAMS`] until now).
pub(crate) fn full_streams(conn: &quinn::Connection, limits: &crate::settings::Limits) {
    if limits.max_streams_per_connection > HANDSHAKE_STREAMS {
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(limits.max_streams_per_connection));
    }
}

/// WebPKI client verification against the CA, then: the subject CN must name a registered
/// scanner. A valid certificate of an unregistered scanner fails the handshake with
/// `access_denied`, before any request is read.
struct ScannerVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    engine: Arc<Engine>,
    admission: Arc<Admission>,
}

impl std::fmt::Debug for ScannerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScannerVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ScannerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| warn!("client certificate refused: {e}"))?;
        match subject_common_name(end_entity) {
            Some(id) if self.engine.scanner(&id).is_some() => Ok(verified),
            Some(id) => {
                self.admission.refused_unknown_scanner();
                warn!(scanner = %id, "handshake refused: valid certificate, but the scanner is not registered");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
            None => {
                warn!("handshake refused: client certificate has no single usable subject common name");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The scanner id of an established connection: its client certificate's subject CN.
pub(crate) fn scanner_id(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    subject_common_name(certs.first()?)
}
