//! Handshake attackers for the hostile-traffic tests and the abuse harness: QUIC clients that
//! start gatehouse handshakes and never finish them. Loopback only; every one ends when its
//! task does.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::pki::DevPki;

/// A QUIC client config that offers gatehouse's ALPN and no client certificate: enough to
/// start handshakes and answer Retry, never to finish one.
pub fn stranger_config() -> Result<quinn::ClientConfig, Box<dyn std::error::Error + Send + Sync>> {
    let pki = DevPki::generate(&[])?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![gatehouse_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Whether a datagram from the server is a QUIC v1 Retry (long header, type 3).
pub fn is_retry(d: &[u8]) -> bool {
    d.first()
        .is_some_and(|b| b & 0x80 != 0 && (b >> 4) & 0x03 == 3)
}

/// One attacker at 127.0.0.1 that answers Retry and then goes silent, for `life`: a relay
/// socket on 127.0.0.1 passes the client's first datagram, and one more after each Retry, to
/// `server`, and nothing after that, so the server holds an unfinished handshake from
/// 127.0.0.1 (validated, once it sent a Retry) until it times out or is evicted. The relay
/// task ends after `life` (or when aborted), and the connection attempt with it.
pub async fn silent_after_retry(
    server: SocketAddr,
    client: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    life: Duration,
) -> std::io::Result<JoinHandle<()>> {
    let relay = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let connecting = client
        .connect_with(config.clone(), relay.local_addr()?, "localhost")
        .map_err(std::io::Error::other)?;
    Ok(tokio::spawn(async move {
        let _connecting = connecting;
        let end = tokio::time::Instant::now() + life;
        let (mut peer, mut allowed) = (None, 1u32);
        let mut buf = vec![0u8; 2048];
        for _ in 0..256 {
            let Ok(Ok((n, from))) = tokio::time::timeout_at(end, relay.recv_from(&mut buf)).await
            else {
                return;
            };
            if from == server {
                allowed += u32::from(is_retry(&buf[..n]));
                if let Some(p) = peer {
                    let _ = relay.send_to(&buf[..n], p).await;
                }
            } else {
                peer = Some(from);
                if allowed > 0 {
                    allowed -= 1;
                    let _ = relay.send_to(&buf[..n], server).await;
                }
            }
        }
        tokio::time::sleep_until(end).await;
    }))
}
