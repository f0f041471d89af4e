//! What SPEC says the server does at the edges, held to a real server on 127.0.0.1:0:
//!
//! - §8.4: an error response echoes the request id whenever the id could be read (a too-long
//!   token, a too-long batch, an empty or too-long challenge), and carries 0 only when it
//!   could not;
//! - §8.3: the error code for all of these is `MalformedFrame` (1);
//! - §7 / deploy/REFERENCE.md: a gate with `admits = []` admits nothing (`not_admitted`);
//! - §6 / §8.1: an unregistered scanner never gets a verdict: its handshake is refused.
//!
//! Every wait is bounded by `tokio::time::timeout`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_engine::client::{ClientError, ClientIdentity, ScannerClient};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population::{self, derive_key, Holder};
use gatehouse_engine::server::{self, ServerConfig};
use gatehouse_engine::{Engine, EngineConfig, ScannerRegistry};
use gatehouse_protocol::{
    kind, Reason, Response, WireErrorCode, MAX_BATCH, MAX_CHALLENGE_LEN, MAX_TOKEN_LEN,
};
use tokio::sync::oneshot;
use tokio::time::timeout;

const LONG: Duration = Duration::from_secs(20);

const REGISTRY: &str = r#"
[[scanner]]
id = "gate-a"
role = "gate"
unit = "1"

[[scanner]]
id = "closed-gate"
role = "gate"
unit = "1"
admits = []
"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn head(major: u8, n: usize) -> Vec<u8> {
    let m = major << 5;
    match n {
        0..=23 => vec![m | n as u8],
        24..=0xff => vec![m | 24, n as u8],
        _ => {
            let mut v = vec![m | 25];
            v.extend_from_slice(&(n as u16).to_be_bytes());
            v
        }
    }
}

fn bstr(b: &[u8]) -> Vec<u8> {
    let mut v = head(2, b.len());
    v.extend_from_slice(b);
    v
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![1, kind];
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn verify(id: u8, token: &[u8], challenge: Option<&[u8]>) -> Vec<u8> {
    let mut body = head(5, 2 + usize::from(challenge.is_some()));
    body.extend_from_slice(&[0x01, id, 0x02]);
    body.extend(bstr(token));
    if let Some(c) = challenge {
        body.push(0x03);
        body.extend(bstr(c));
    }
    frame(kind::VERIFY, &body)
}

fn error(responses: &[Response]) -> (u64, WireErrorCode) {
    match responses {
        [Response::Error { id, code, .. }] => (*id, *code),
        other => panic!("expected one error response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_the_edge_rules_of_the_spec() {
    let pki = DevPki::generate(&["gate-a".into(), "closed-gate".into(), "rogue".into()]).unwrap();
    let issuer = population::issuer_key(3);
    let scanners = ScannerRegistry::parse(Path::new("scanners.toml"), REGISTRY).unwrap();
    let config = EngineConfig {
        threads: 1,
        replay_capacity: 10_000,
        issuer_cache_capacity: 1_000,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::new(config, population::trust_list(&issuer), scanners).unwrap());
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server_config = ServerConfig::new(
        pki.server.chain(),
        pki.server.key(),
        vec![pki.ca.cert_der.clone()],
    );
    let task = tokio::spawn(server::run(
        engine,
        server_config,
        socket,
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let identity = |id: &str| ClientIdentity {
        roots: vec![pki.ca.cert_der.clone()],
        chain: pki.scanner(id).unwrap().chain(),
        key: pki.scanner(id).unwrap().key(),
    };
    let gate = timeout(
        LONG,
        ScannerClient::connect(addr, "localhost", identity("gate-a")),
    )
    .await
    .unwrap()
    .unwrap();

    // §8.4: the id is echoed whenever it was readable; §8.3: the code is MalformedFrame.
    let cases: [(&str, Vec<u8>, u64); 5] = [
        (
            "token too long",
            verify(9, &vec![0; MAX_TOKEN_LEN + 1], None),
            9,
        ),
        ("empty challenge", verify(7, b"t", Some(b"")), 7),
        (
            "challenge too long",
            verify(8, b"t", Some(&[1; MAX_CHALLENGE_LEN + 1])),
            8,
        ),
        (
            "batch too long",
            {
                let mut body = vec![0xa2, 0x01, 0x0b, 0x02];
                body.extend(head(4, MAX_BATCH + 1));
                for _ in 0..=MAX_BATCH {
                    body.extend(bstr(b"t"));
                }
                frame(kind::VERIFY_BATCH, &body)
            },
            11,
        ),
        ("id unreadable", frame(kind::VERIFY, &[0xa1, 0x02, 0x40]), 0),
    ];
    for (what, bytes, want_id) in cases {
        let r = timeout(LONG, gate.send_raw(&bytes)).await.unwrap().unwrap();
        assert_eq!(
            error(&r),
            (want_id, WireErrorCode::MalformedFrame),
            "{what}"
        );
    }

    // A one-byte challenge is a readable request: it gets a verdict, not an error.
    let r = timeout(LONG, gate.send_raw(&verify(12, b"t", Some(&[1]))))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&r[..], [Response::Verdicts { id: 12, verdicts }] if verdicts[0].reason == Reason::Malformed),
        "{r:?}"
    );

    // `admits = []`: a gate that admits no credential type denies everything `not_admitted`.
    let holder = Holder::issue(
        &issuer,
        derive_key("spec test device", 1),
        population::credential(now(), 1),
    )
    .unwrap();
    let token = || holder.present(now() - 1, rand_nonce(), None).unwrap();
    let closed = timeout(
        LONG,
        ScannerClient::connect(addr, "localhost", identity("closed-gate")),
    )
    .await
    .unwrap()
    .unwrap();
    let v = timeout(LONG, closed.verify(&token(), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.reason, Reason::NotAdmitted);
    let v = timeout(LONG, gate.verify(&token(), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.reason, Reason::Accepted);

    // An unregistered scanner never gets a verdict (no `unknown_scanner` (19) on the wire):
    // the handshake is refused with the TLS alert access_denied.
    let refused = match timeout(
        LONG,
        ScannerClient::connect(addr, "localhost", identity("rogue")),
    )
    .await
    .unwrap()
    {
        Err(e) => e,
        Ok(c) => timeout(LONG, c.verify(&token(), None))
            .await
            .unwrap()
            .unwrap_err(),
    };
    assert!(
        matches!(refused, ClientError::UnknownScanner),
        "{refused:?}"
    );

    let _ = stop.send(());
    timeout(LONG, task).await.unwrap().unwrap().unwrap();
}

fn rand_nonce() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let mut n = [0u8; 16];
    n[..8].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    n[8..].copy_from_slice(b"spectest");
    n
}
