//! The QUIC service end to end: a real server (`server::run`) on 127.0.0.1:0, real scanner
//! clients (`client::ScannerClient`) with certificates from a development PKI, tokens signed
//! at the current system time (the server reads the system clock).
//!
//! - acceptance, and what each scanner role may see;
//! - every deny reason a network client can provoke, each reaching the scanner as a verdict;
//! - a full one-time-use table fails closed (`replay_capacity`);
//! - unregistered scanners, foreign client certificates and an untrusted server are refused;
//! - hot reload under traffic loses no request; a scanner removed by reload is disconnected;
//! - shutdown drains requests in flight; `/readyz` turns 503;
//! - garbage and oversized frames on one connection do not disturb another;
//! - a full queue answers `busy` at once;
//! - at low load a request crosses no thread (run to completion);
//! - `/metrics`, `/healthz`, `/readyz` and the HTTP error paths.
//!
//! Every wait is bounded by `tokio::time::timeout`, every loop by a count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/tokens.rs"]
mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_engine::client::{ClientError, ClientIdentity, ScannerClient};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population::{self, derive_key, Holder};
use gatehouse_engine::server::{self, Batching, Files, ServeConfig, ServerConfig, ServerError};
use gatehouse_engine::{
    BatchMode, Engine, EngineConfig, IssuerKey, Role, Scanner, ScannerRegistry, TrustList,
    DEFAULT_GATE_ADMITS,
};
use gatehouse_protocol::{
    kind, Attributes, Credential, CredentialType, Entitlements, HolderCategory, Predicate,
    Presentation, PrivateKey, Reason, Request, Response, RevocationEntry, RevocationKind,
    RevocationList, UnitPath, Verdict, WireErrorCode, MAX_FRAME_BODY,
};
use rayon::prelude::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use tokens::{nonce, now};

/// Scanner ids with client certificates: `rogue` is never registered, `temp` is removed by a
/// reload in one test.
const IDS: &[&str] = &["gate-a", "gate-b", "partner-1", "age-1", "rogue", "temp"];
const LONG: Duration = Duration::from_secs(20);

struct World {
    pki: DevPki,
    issuer: PrivateKey,
    retired: PrivateKey,
}

impl World {
    fn new() -> World {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let ids: Vec<String> = IDS.iter().map(|s| s.to_string()).collect();
        World {
            pki: DevPki::generate(&ids).unwrap(),
            issuer: population::issuer_key(7),
            retired: derive_key("quic test retired issuer", 0),
        }
    }

    fn trust(&self) -> TrustList {
        let mut t = population::trust_list(&self.issuer);
        t.insert(IssuerKey {
            name: "retired".into(),
            public: self.retired.public().clone(),
            not_before: 0,
            not_after: u64::MAX,
            retired: true,
        });
        t
    }

    fn engine(&self, tweak: impl FnOnce(&mut EngineConfig)) -> Arc<Engine> {
        let mut config = EngineConfig {
            threads: 1,
            replay_capacity: 100_000,
            issuer_cache_capacity: 10_000,
            ..EngineConfig::default()
        };
        tweak(&mut config);
        Arc::new(Engine::new(config, self.trust(), registry(true)).unwrap())
    }

    fn identity(&self, id: &str) -> ClientIdentity {
        let s = self.pki.scanner(id).unwrap();
        ClientIdentity {
            roots: vec![self.pki.ca.cert_der.clone()],
            chain: s.chain(),
            key: s.key(),
        }
    }

    fn server_config(&self) -> ServerConfig {
        ServerConfig::new(
            self.pki.server.chain(),
            self.pki.server.key(),
            vec![self.pki.ca.cert_der.clone()],
        )
    }

    fn holder(&self, index: u64, edit: impl FnOnce(&mut Credential)) -> Holder {
        let mut c = population::credential(now(), index);
        edit(&mut c);
        Holder::issue(&self.issuer, derive_key("quic test device", index), c).unwrap()
    }
}

fn registry(with_temp: bool) -> ScannerRegistry {
    let mut r = ScannerRegistry::new();
    let gate = |unit: &[u16]| Role::Gate {
        unit: UnitPath::new(unit).unwrap(),
        admits: DEFAULT_GATE_ADMITS.to_vec(),
    };
    r.insert(Scanner {
        id: "gate-a".into(),
        role: gate(&[1, 12]),
        mdoc: Default::default(),
    });
    r.insert(Scanner {
        id: "gate-b".into(),
        role: gate(&[2, 1]),
        mdoc: Default::default(),
    });
    r.insert(Scanner {
        id: "partner-1".into(),
        role: Role::Partner,
        mdoc: Default::default(),
    });
    r.insert(Scanner {
        id: "age-1".into(),
        role: Role::AgeCheck,
        mdoc: Default::default(),
    });
    if with_temp {
        r.insert(Scanner {
            id: "temp".into(),
            role: gate(&[1]),
            mdoc: Default::default(),
        });
    }
    r
}

/// A token made two seconds ago.
fn token(h: &Holder) -> Vec<u8> {
    h.present(now() - 2, nonce(), None).unwrap()
}

struct Server {
    addr: SocketAddr,
    ops: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

async fn start(engine: Arc<Engine>, config: ServerConfig) -> Server {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = ops.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(engine, config, socket, Some(ops), async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        ops: ops_addr,
        stop: Some(stop),
        task,
    }
}

impl Server {
    async fn connect(&self, identity: ClientIdentity) -> Result<ScannerClient, ClientError> {
        ScannerClient::connect(self.addr, "localhost", identity).await
    }

    async fn client(&self, world: &World, id: &str) -> ScannerClient {
        self.connect(world.identity(id)).await.unwrap()
    }

    fn trigger_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and insists on a clean drain in time.
    async fn shutdown(mut self) {
        self.trigger_shutdown();
        timeout(LONG, self.task)
            .await
            .expect("the drain ends in time")
            .unwrap()
            .unwrap();
    }
}

/// One HTTP/1.1 exchange with the operations endpoint: (status, body).
async fn http(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String)> {
    gatehouse_testkit::request(addr, request)
        .await
        .map(|r| (r.status, r.body))
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = gatehouse_testkit::get(addr, path).await.unwrap();
    (r.status, r.body)
}

/// The value of one sample line (`name{labels}`) of a Prometheus exposition.
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gatehouse-quic-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_and_discloses_only_what_the_role_may_see() {
    let world = World::new();
    let server = start(world.engine(|_| {}), world.server_config()).await;
    let h = world.holder(1, |_| {});

    let gate = server.client(&world, "gate-a").await;
    let v = gate.verify(&token(&h), None).await.unwrap();
    assert_eq!(v.reason, Reason::Accepted);
    assert_eq!(
        v.attributes,
        Attributes {
            credential_type: Some(CredentialType::MilitaryId),
            category: Some(HolderCategory::Enlisted),
            unit: Some(h.credential.unit),
            valid_until: Some(h.credential.not_after),
            predicate: None,
        }
    );

    let partner = server.client(&world, "partner-1").await;
    let v = partner.verify(&token(&h), None).await.unwrap();
    assert_eq!(
        v,
        Verdict {
            reason: Reason::Accepted,
            attributes: Attributes {
                predicate: Some(Predicate::MilitaryDiscount),
                ..Attributes::default()
            },
            repeat: false,
        },
        "a partner learns the predicate and nothing else"
    );
    let age = server.client(&world, "age-1").await;
    let v = age.verify(&token(&h), None).await.unwrap();
    assert_eq!(
        v.attributes,
        Attributes {
            predicate: Some(Predicate::AgeOver19),
            ..Attributes::default()
        }
    );

    // NFC: a token answering this scanner's challenge.
    let challenge = b"gate-a-challenge-0001";
    let nfc = h.present(now() - 1, nonce(), Some(challenge)).unwrap();
    let v = gate.verify(&nfc, Some(challenge)).await.unwrap();
    assert_eq!(v.reason, Reason::Accepted);

    // A batch, and many concurrent requests on one connection.
    let batch: Vec<Vec<u8>> = (0..3).map(|_| token(&h)).collect();
    let verdicts = gate.verify_batch(&batch).await.unwrap();
    assert_eq!(verdicts.len(), 3);
    assert!(verdicts.iter().all(|v| v.reason == Reason::Accepted));
    assert!(gate.verify_batch(&[]).await.unwrap().is_empty());
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let c = gate.clone();
            let t = token(&h);
            tokio::spawn(async move { c.verify(&t, None).await })
        })
        .collect();
    for t in tasks {
        let v = timeout(LONG, t).await.unwrap().unwrap().unwrap();
        assert_eq!(v.reason, Reason::Accepted);
    }
    assert!(gate.ping().await.unwrap() < LONG);
    assert!(matches!(
        gate.verify_batch(&vec![token(&h); 129]).await,
        Err(ClientError::BatchTooLarge(129))
    ));

    // Pipelined requests on one stream are answered in order.
    let mut frames = Request::Ping { id: 7 }.encode();
    frames.extend(
        Request::Verify {
            id: 8,
            token: token(&h),
            challenge: None,
            retry: None,
        }
        .encode(),
    );
    frames.extend(Request::Ping { id: 9 }.encode());
    let responses = gate.send_raw(&frames).await.unwrap();
    assert_eq!(responses.len(), 3);
    assert_eq!(responses[0], Response::Pong { id: 7 });
    assert!(
        matches!(&responses[1], Response::Verdicts { id: 8, verdicts } if verdicts[0].reason == Reason::Accepted)
    );
    assert_eq!(responses[2], Response::Pong { id: 9 });

    gate.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deny_reason_reaches_the_scanner() {
    let world = World::new();
    let engine = world.engine(|_| {});
    let t = now();
    let base = world.holder(10, |_| {});
    let device = derive_key("quic test device", 10);

    let stranger = derive_key("quic test unknown issuer", 0);
    let unknown_issuer =
        Holder::issue(&stranger, device.clone(), population::credential(t, 11)).unwrap();
    let retired = Holder::issue(
        &world.retired,
        device.clone(),
        population::credential(t, 12),
    )
    .unwrap();
    let mut bad_issuer_sig = world.holder(13, |_| {});
    let n = bad_issuer_sig.issued.len();
    bad_issuer_sig.issued[n - 33] ^= 0x01; // the last byte of r
    let not_yet = world.holder(14, |c| {
        c.not_before = t + 86_400;
        c.not_after = t + 2 * 86_400;
    });
    let expired = world.holder(15, |c| {
        c.not_before = t - 10 * 86_400;
        c.not_after = t - 86_400;
    });
    let outside_leave = world.holder(16, |c| {
        c.credential_type = CredentialType::LeavePass;
        c.leave = Some((t + 86_400, t + 3 * 86_400));
    });
    let revoked = world.holder(17, |_| {});
    engine
        .apply_revocations(&RevocationList {
            epoch: 1,
            base: None,
            revoke: vec![RevocationEntry {
                kind: RevocationKind::Credential,
                id: revoked.credential.id,
            }],
            reinstate: vec![],
            digest: None,
        })
        .unwrap();
    let no_discount = world.holder(18, |c| {
        c.category = HolderCategory::CivilianEmployee;
        c.entitlements = Entitlements::BASE_ENTRY;
    });
    let no_birth_date = world.holder(19, |c| {
        c.birth_date = None;
        c.age_over_19 = None;
    });
    let child = world.holder(20, |c| {
        c.birth_date = gatehouse_protocol::Date::new(2015, 5, 5).ok();
    });

    let wrong_device = Presentation {
        credential: &base.issued,
        timestamp: t - 2,
        nonce: nonce(),
        challenge: None,
    }
    .sign(&derive_key("quic test some other phone", 0))
    .unwrap();
    let mut future_version = token(&base);
    let at = future_version
        .windows(4)
        .position(|w| w == [0xA4, 0x01, 0x01, 0x02])
        .expect("the token payload starts {1: 1, 2: …}");
    future_version[at + 2] = 0x02;
    let replayed = token(&base);
    let nfc = base
        .present(t - 2, nonce(), Some(b"challenge-one"))
        .unwrap();
    let nfc_unasked = base
        .present(t - 2, nonce(), Some(b"challenge-two"))
        .unwrap();

    let server = start(Arc::clone(&engine), world.server_config()).await;
    let gate = server.client(&world, "gate-a").await;
    let gate_b = server.client(&world, "gate-b").await;
    let partner = server.client(&world, "partner-1").await;
    let age = server.client(&world, "age-1").await;

    assert_eq!(
        gate.verify(&replayed, None).await.unwrap().reason,
        Reason::Accepted
    );
    /// Scanner, token, the scanner's challenge, expected reason.
    type Case<'a> = (&'a ScannerClient, Vec<u8>, Option<&'a [u8]>, Reason);
    let cases: Vec<Case<'_>> = vec![
        (
            &gate,
            b"definitely not a token".to_vec(),
            None,
            Reason::Malformed,
        ),
        (&gate, future_version, None, Reason::UnsupportedVersion),
        (&gate, token(&unknown_issuer), None, Reason::UnknownIssuer),
        (&gate, token(&retired), None, Reason::IssuerKeyNotValid),
        (
            &gate,
            token(&bad_issuer_sig),
            None,
            Reason::BadIssuerSignature,
        ),
        (&gate, token(&not_yet), None, Reason::NotYetValid),
        (&gate, token(&expired), None, Reason::Expired),
        (&gate, token(&outside_leave), None, Reason::OutsideLeave),
        (
            &gate,
            base.present(t - 60, nonce(), None).unwrap(),
            None,
            Reason::Stale,
        ),
        (
            &gate,
            base.present(t + 60, nonce(), None).unwrap(),
            None,
            Reason::FromFuture,
        ),
        (&gate, token(&revoked), None, Reason::Revoked),
        (&gate, wrong_device, None, Reason::BadDeviceSignature),
        (&gate, replayed, None, Reason::Replayed),
        (
            &gate,
            nfc,
            Some(b"challenge-other"),
            Reason::ChallengeMismatch,
        ),
        (&gate, nfc_unasked, None, Reason::ChallengeMismatch),
        (&gate_b, token(&base), None, Reason::NotAdmitted),
        (&partner, token(&no_discount), None, Reason::NotEligible),
        (&age, token(&child), None, Reason::NotEligible),
        (&age, token(&no_birth_date), None, Reason::AttributeMissing),
    ];
    for (i, (client, tok, challenge, expected)) in cases.into_iter().enumerate() {
        let v = client.verify(&tok, challenge).await.unwrap();
        assert_eq!(v.reason, expected, "case {i}");
        assert!(
            v.attributes.is_empty(),
            "a denial discloses nothing (case {i})"
        );
    }

    let (_, body) = get(server.ops, "/metrics").await;
    assert_eq!(
        metric(
            &body,
            "gatehouse_verdicts_total{role=\"gate\",reason=\"replayed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&body, "gatehouse_revocation_epoch"), Some(1.0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_one_time_use_table_fails_closed() {
    let world = World::new();
    // One entry per shard: 65 distinct tokens cannot all fit in 64 shards.
    let server = start(
        world.engine(|c| c.replay_capacity = 1),
        world.server_config(),
    )
    .await;
    let h = world.holder(30, |_| {});
    let tokens: Vec<Vec<u8>> = (0..65).map(|_| token(&h)).collect();
    let gate = server.client(&world, "gate-a").await;
    let verdicts = gate.verify_batch(&tokens).await.unwrap();
    let full = verdicts
        .iter()
        .filter(|v| v.reason == Reason::ReplayCapacity)
        .count();
    assert!(full >= 1, "{verdicts:?}");
    assert!(verdicts
        .iter()
        .all(|v| matches!(v.reason, Reason::Accepted | Reason::ReplayCapacity)));
    assert!(Reason::ReplayCapacity.is_retryable());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_scanners_and_foreign_certificates_are_refused() {
    let world = World::new();
    let server = start(world.engine(|_| {}), world.server_config()).await;
    let h = world.holder(40, |_| {});

    // A valid certificate from our CA, for a scanner that is not registered.
    let refused = match server.connect(world.identity("rogue")).await {
        Err(e) => e,
        Ok(c) => c.verify(&token(&h), None).await.unwrap_err(),
    };
    assert!(
        matches!(refused, ClientError::UnknownScanner),
        "{refused:?}"
    );

    // A registered name on a certificate from another CA.
    let other = DevPki::generate(&["gate-a".to_string()]).unwrap();
    let foreign = ClientIdentity {
        roots: vec![world.pki.ca.cert_der.clone()],
        chain: other.scanner("gate-a").unwrap().chain(),
        key: other.scanner("gate-a").unwrap().key(),
    };
    let refused = match server.connect(foreign).await {
        Err(e) => e,
        Ok(c) => c.verify(&token(&h), None).await.unwrap_err(),
    };
    assert!(matches!(refused, ClientError::Handshake(_)), "{refused:?}");

    // A server whose certificate the scanner does not trust.
    let mut distrusting = world.identity("gate-a");
    distrusting.roots = vec![other.ca.cert_der.clone()];
    let refused = server.connect(distrusting).await.unwrap_err();
    assert!(matches!(refused, ClientError::Handshake(_)), "{refused:?}");

    // Registered scanners are unaffected.
    let gate = server.client(&world, "gate-a").await;
    assert_eq!(
        gate.verify(&token(&h), None).await.unwrap().reason,
        Reason::Accepted
    );
    let (_, body) = get(server.ops, "/metrics").await;
    assert!(
        metric(
            &body,
            "gatehouse_connections_refused_total{cause=\"unknown_scanner\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(metric(&body, "gatehouse_handshake_failures_total").unwrap() >= 2.0);
    server.shutdown().await;
}

fn write_revocations(path: &Path, epoch: u64, revoke: Vec<RevocationEntry>) {
    let list = RevocationList {
        epoch,
        base: None,
        revoke,
        reinstate: vec![],
        digest: None,
    };
    std::fs::write(path, list.encode()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_traffic_loses_no_request() {
    let world = World::new();
    let dir = temp_dir("reload");
    world.pki.write_to(&dir.join("pki")).unwrap();
    std::fs::write(dir.join("trust.toml"), world.trust().to_toml()).unwrap();
    std::fs::write(dir.join("scanners.toml"), registry(true).to_toml()).unwrap();
    let unrelated = |i: u8| RevocationEntry {
        kind: RevocationKind::Subject,
        id: [i; 16],
    };
    write_revocations(&dir.join("revocations.cbor"), 1, vec![unrelated(1)]);
    // The same path `gatehouse serve --config` takes.
    let config_text = r#"
listen = "127.0.0.1:0"
[tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"
[files]
trust = "trust.toml"
scanners = "scanners.toml"
revocations = "revocations.cbor"
[engine]
threads = 1
replay_capacity = 100000
"#;
    let config = ServeConfig::parse(&dir.join("gatehouse.toml"), config_text).unwrap();
    let parts = config.into_parts().unwrap();
    // Built as by a node that started a minute ago: the memory store's restart fence
    // (node_restarted, start + skew) lies behind the tokens below, dated 2 s before they are
    // made, with no wait on the real clock.
    let engine = parts.build_engine_at(now() - 60).unwrap();
    assert_eq!(engine.revocation_epoch(), (1, 1));
    let files: Files = parts.files.clone();
    let server = start(Arc::clone(&engine), parts.server).await;

    let holders: Vec<Holder> = (0..8).map(|i| world.holder(100 + i, |_| {})).collect();
    let temp = server.client(&world, "temp").await;
    assert_eq!(
        temp.verify(&token(&holders[0]), None).await.unwrap().reason,
        Reason::Accepted
    );

    // Four scanners' worth of traffic on one connection while the files reload.
    const WORKERS: usize = 4;
    const PER_WORKER: usize = 40;
    let gate = server.client(&world, "gate-a").await;
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let gate = gate.clone();
            let tokens: Vec<Vec<u8>> = (0..PER_WORKER)
                .map(|i| token(&holders[(w + i) % holders.len()]))
                .collect();
            tokio::spawn(async move {
                let mut verdicts = Vec::with_capacity(tokens.len());
                for t in tokens {
                    verdicts.push(gate.verify(&t, None).await);
                }
                verdicts
            })
        })
        .collect();
    let reloader = {
        let engine = Arc::clone(&engine);
        let files = files.clone();
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let trust_text = std::fs::read_to_string(dir.join("trust.toml")).unwrap();
            for epoch in 2..=11u64 {
                write_revocations(
                    &dir.join("revocations.cbor"),
                    epoch,
                    vec![unrelated(epoch as u8)],
                );
                let r = server::reload(&engine, &files).unwrap();
                assert_eq!(r.revocation_epoch, epoch);
                assert!(r.revocations_changed);
                if epoch == 6 {
                    // A broken file is refused and nothing changes.
                    std::fs::write(dir.join("trust.toml"), "[[issuer]]\nname = 1\n").unwrap();
                    assert!(server::reload(&engine, &files).is_err());
                    std::fs::write(dir.join("trust.toml"), &trust_text).unwrap();
                    // An unchanged revocation file is not an error.
                    let again = server::reload(&engine, &files).unwrap();
                    assert!(!again.revocations_changed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    for w in workers {
        let verdicts = timeout(LONG, w).await.unwrap().unwrap();
        assert_eq!(verdicts.len(), PER_WORKER);
        for v in verdicts {
            assert_eq!(v.unwrap().reason, Reason::Accepted);
        }
    }
    timeout(LONG, reloader).await.unwrap().unwrap();
    assert_eq!(engine.revocation_epoch(), (11, 1));

    // A revocation arriving by reload takes effect; so does a scanner's removal.
    write_revocations(
        &dir.join("revocations.cbor"),
        12,
        vec![RevocationEntry {
            kind: RevocationKind::Credential,
            id: holders[3].credential.id,
        }],
    );
    std::fs::write(dir.join("scanners.toml"), registry(false).to_toml()).unwrap();
    server::reload(&engine, &files).unwrap();
    assert_eq!(
        gate.verify(&token(&holders[3]), None).await.unwrap().reason,
        Reason::Revoked
    );
    assert_eq!(
        gate.verify(&token(&holders[4]), None).await.unwrap().reason,
        Reason::Accepted
    );
    let removed = temp.verify(&token(&holders[0]), None).await.unwrap_err();
    assert!(
        matches!(removed, ClientError::UnknownScanner),
        "{removed:?}"
    );
    let again = match server.connect(world.identity("temp")).await {
        Err(e) => e,
        Ok(c) => c.verify(&token(&holders[0]), None).await.unwrap_err(),
    };
    assert!(matches!(again, ClientError::UnknownScanner), "{again:?}");

    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight() {
    let world = World::new();
    // Strict signatures on one thread: slow enough that requests are still in flight when the
    // shutdown starts.
    let engine = world.engine(|c| c.strict_signatures = true);
    let mut server = start(engine, world.server_config()).await;

    const REQUESTS: usize = 16;
    const TOKENS: usize = 64;
    let holders: Vec<Holder> = (0..REQUESTS as u64)
        .map(|i| world.holder(200 + i, |_| {}))
        .collect();
    let batches: Vec<Vec<Vec<u8>>> = holders
        .par_iter()
        .map(|h| (0..TOKENS).map(|_| token(h)).collect())
        .collect();

    let gate = server.client(&world, "gate-a").await;
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|b| {
            let gate = gate.clone();
            tokio::spawn(async move { gate.verify_batch(&b).await })
        })
        .collect();

    // Shut down once the server has read every request.
    let mut depth = 0.0;
    let mut received = false;
    for _ in 0..2000 {
        let (_, body) = get(server.ops, "/metrics").await;
        if metric(&body, "gatehouse_requests_total{kind=\"verify_batch\"}") == Some(REQUESTS as f64)
        {
            depth = metric(&body, "gatehouse_queue_depth").unwrap();
            received = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(received, "the server read every request");
    server.trigger_shutdown();

    // Readiness turns to 503 while draining (or the endpoint is already gone).
    let mut not_ready = false;
    for _ in 0..500 {
        match http(server.ops, "GET /readyz HTTP/1.1\r\n\r\n").await {
            Ok((200, _)) => tokio::time::sleep(Duration::from_millis(2)).await,
            Ok((503, body)) => {
                assert!(body.starts_with("draining\n"), "{body}");
                not_ready = true;
                break;
            }
            _ => {
                not_ready = true;
                break;
            }
        }
    }
    assert!(not_ready);

    for t in tasks {
        let verdicts = timeout(LONG, t).await.unwrap().unwrap().unwrap();
        assert_eq!(verdicts.len(), TOKENS);
        assert!(verdicts.iter().all(|v| v.reason == Reason::Accepted));
    }
    assert!(
        depth > 0.0,
        "requests were still in flight when the drain started"
    );
    timeout(LONG, server.task)
        .await
        .expect("the drain ends in time")
        .unwrap()
        .unwrap();
    // The connection was closed as a shutdown, and nothing listens any more.
    let after = gate.ping().await.unwrap_err();
    assert!(
        matches!(
            after,
            ClientError::ShuttingDown | ClientError::Connection(_)
        ),
        "{after:?}"
    );
}

/// SplitMix64, for reproducible garbage.
use gatehouse_engine::dev::rng::SplitMix64 as Rng;

fn error_code(responses: &[Response]) -> Option<WireErrorCode> {
    match responses {
        [Response::Error { code, id: 0, .. }] => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_one_connection_does_not_disturb_another() {
    let world = World::new();
    let server = start(world.engine(|_| {}), world.server_config()).await;
    let h = world.holder(300, |_| {});
    let good_tokens: Vec<Vec<u8>> = (0..100).map(|_| token(&h)).collect();

    let bad = server.client(&world, "gate-b").await;
    let good = server.client(&world, "gate-a").await;
    let traffic = {
        let good = good.clone();
        tokio::spawn(async move {
            let mut verdicts = Vec::new();
            for t in good_tokens {
                verdicts.push(good.verify(&t, None).await);
            }
            verdicts
        })
    };

    // Each malformed frame gets its typed error response.
    let header = |version: u8, kind: u8, len: u32| {
        let mut f = vec![version, kind];
        f.extend_from_slice(&len.to_be_bytes());
        f
    };
    let r = bad.send_raw(&header(2, kind::PING, 0)).await.unwrap();
    assert_eq!(
        error_code(&r),
        Some(WireErrorCode::UnsupportedVersion),
        "{r:?}"
    );
    let r = bad
        .send_raw(&header(1, kind::VERIFY, 1 << 20))
        .await
        .unwrap();
    assert_eq!(error_code(&r), Some(WireErrorCode::FrameTooLarge), "{r:?}");
    let r = bad.send_raw(&header(1, 0x7f, 0)).await.unwrap();
    assert_eq!(error_code(&r), Some(WireErrorCode::UnknownKind), "{r:?}");
    let r = bad.send_raw(&header(1, kind::VERDICTS, 0)).await.unwrap();
    assert_eq!(error_code(&r), Some(WireErrorCode::UnknownKind), "{r:?}");
    let mut garbage_body = header(1, kind::VERIFY, 3);
    garbage_body.extend_from_slice(&[0xff, 0xff, 0xff]);
    let r = bad.send_raw(&garbage_body).await.unwrap();
    assert_eq!(error_code(&r), Some(WireErrorCode::MalformedFrame), "{r:?}");
    let r = bad.send_raw(&[1, 1, 0]).await.unwrap();
    assert_eq!(error_code(&r), Some(WireErrorCode::MalformedFrame), "{r:?}");
    let mut short_body = header(1, kind::VERIFY, 100);
    short_body.extend_from_slice(&[0; 10]);
    let r = bad.send_raw(&short_body).await.unwrap();
    assert_eq!(error_code(&r), Some(WireErrorCode::MalformedFrame), "{r:?}");

    // An oversized frame actually sent: the server answers from the header and stops reading.
    let mut huge = header(1, kind::VERIFY, (MAX_FRAME_BODY + 1) as u32);
    huge.resize(6 + 300 * 1024, 0);
    let r = bad.send_raw(&huge).await.unwrap();
    assert_eq!(error_code(&r), Some(WireErrorCode::FrameTooLarge), "{r:?}");

    // A good request, then garbage, on one stream: the good one is answered first.
    let mut mixed = Request::Ping { id: 5 }.encode();
    mixed.extend_from_slice(&header(9, 9, 9));
    let r = bad.send_raw(&mixed).await.unwrap();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0], Response::Pong { id: 5 });

    // Random bytes, some behind a plausible header.
    let mut rng = Rng(0x5eed);
    for i in 0..60 {
        let len = (rng.next_u64() % 300) as usize;
        let mut bytes = if i % 2 == 0 {
            let k = [kind::VERIFY, kind::VERIFY_BATCH, kind::PING][(rng.next_u64() % 3) as usize];
            header(1, k, (rng.next_u64() % 400) as u32)
        } else {
            Vec::new()
        };
        bytes.extend(rng.bytes(len));
        match bad.send_raw(&bytes).await {
            Ok(responses) => assert!(responses.len() <= 1, "{responses:?}"),
            Err(e) => assert!(matches!(e, ClientError::StreamReset(_)), "{e:?}"),
        }
    }

    // The misbehaving connection itself is still usable, and the other saw nothing.
    bad.ping().await.unwrap();
    let verdicts = timeout(LONG, traffic).await.unwrap().unwrap();
    assert_eq!(verdicts.len(), 100);
    for v in verdicts {
        assert_eq!(v.unwrap().reason, Reason::Accepted);
    }
    let (_, body) = get(server.ops, "/metrics").await;
    assert!(
        metric(
            &body,
            "gatehouse_wire_errors_total{code=\"frame_too_large\"}"
        )
        .unwrap()
            >= 2.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_busy_at_once() {
    let world = World::new();
    let mut config = world.server_config();
    // Four tokens admitted at a time.
    config.batching = Batching {
        max_batch: 4096,
        queue: 4,
    };
    let server = start(world.engine(|_| {}), config).await;
    let h = world.holder(400, |_| {});
    // Many more than the queue holds, all at once: some must find it full, however fast the
    // node verifies (64 were once all verified in time on a fast path).
    let tokens: Vec<Vec<u8>> = (0..256).map(|_| token(&h)).collect();
    let gate = server.client(&world, "gate-a").await;

    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let gate = gate.clone();
            tokio::spawn(async move { gate.verify(&t, None).await })
        })
        .collect();
    let (mut accepted, mut busy) = (0, 0);
    for t in tasks {
        let v = timeout(LONG, t).await.unwrap().unwrap().unwrap();
        match v.reason {
            Reason::Accepted => accepted += 1,
            Reason::Busy => busy += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        accepted >= 1 && busy >= 1,
        "accepted {accepted}, busy {busy}"
    );
    assert!(Reason::Busy.is_retryable());

    // The flood is over: the next token goes through.
    assert_eq!(
        gate.verify(&token(&h), None).await.unwrap().reason,
        Reason::Accepted
    );
    let (_, body) = get(server.ops, "/metrics").await;
    assert_eq!(
        metric(
            &body,
            "gatehouse_verdicts_total{role=\"gate\",reason=\"busy\"}"
        ),
        Some(f64::from(busy))
    );
    assert_eq!(metric(&body, "gatehouse_queue_depth"), Some(0.0));
    server.shutdown().await;
}

/// Run to completion: at low load a request is read, verified and answered on the thread that
/// received it. The runtime here has one thread, so any hand-off (to a batcher thread, a
/// verification pool, a blocking task) is a hop the node counts in
/// `gatehouse_thread_hops_total`; with the old batcher thread every request counted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn at_low_load_a_request_crosses_no_thread() {
    let world = World::new();
    let server = start(world.engine(|_| {}), world.server_config()).await;
    let h = world.holder(410, |_| {});
    let gate = server.client(&world, "gate-a").await;
    for _ in 0..20 {
        let v = timeout(LONG, gate.verify(&token(&h), None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v.reason, Reason::Accepted);
    }
    // A batch of 20 is verified in three pieces, one after another on the same thread.
    let batch: Vec<Vec<u8>> = (0..20).map(|_| token(&h)).collect();
    let verdicts = timeout(LONG, gate.verify_batch(&batch))
        .await
        .unwrap()
        .unwrap();
    assert!(verdicts.iter().all(|v| v.reason == Reason::Accepted));
    let (_, body) = get(server.ops, "/metrics").await;
    assert_eq!(
        metric(
            &body,
            "gatehouse_verdicts_total{role=\"gate\",reason=\"accepted\"}"
        ),
        Some(40.0)
    );
    for step in ["verify", "answer"] {
        let series = format!("gatehouse_thread_hops_total{{step=\"{step}\"}}");
        assert_eq!(metric(&body, &series), Some(0.0), "{series}");
    }
    server.shutdown().await;
}

/// One-time use and retries are node-wide, whichever connection a request arrives on: a token
/// accepted on one connection is `replayed` on another; the same scan's retry (same key) on a
/// third gets the first verdict back, marked as a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_use_and_retries_hold_across_connections() {
    let world = World::new();
    let server = start(world.engine(|_| {}), world.server_config()).await;
    let h = world.holder(430, |_| {});
    let t = token(&h);
    let key = [5u8; 16];
    let first = server.client(&world, "gate-a").await;
    let v = timeout(LONG, first.verify_scan(&t, None, Some(key)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v.reason, v.repeat), (Reason::Accepted, false));
    let other = server.client(&world, "gate-a").await;
    let again = timeout(LONG, other.verify(&t, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.reason, Reason::Replayed);
    let third = server.client(&world, "gate-a").await;
    let retry = timeout(LONG, third.verify_scan(&t, None, Some(key)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((retry.reason, retry.repeat), (Reason::Accepted, true));
    server.shutdown().await;
}

/// With `batch = "equation"`, a request's signatures go through one equation: a batch of
/// valid tokens is accepted through it, and a batch with one forged token fails the equation,
/// falls back to single checks and still gets every verdict right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_checked_with_one_equation_give_the_same_verdicts() {
    let body = batch_path_verdicts(BatchMode::Equation, 420).await;
    let batches = metric(&body, "gatehouse_signature_batches_total").unwrap();
    let failed = metric(&body, "gatehouse_signature_batches_failed_total").unwrap();
    assert!(batches >= 2.0, "{batches} equations");
    assert!(failed >= 1.0, "{failed} failed equations");
    assert!(
        body.contains("batch=\"equation\""),
        "gatehouse_signature_paths names the path"
    );
}

/// With `batch = "multibuffer"` (where the CPU has AVX-512 IFMA), a request's signatures go
/// through multi-buffer calls: the same verdicts, the forged one not proven by its call and
/// denied by the single check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_checked_in_multibuffer_calls_give_the_same_verdicts() {
    let runs = gatehouse_engine::Batching::resolve(BatchMode::Multibuffer, false, 0).is_ok();
    if !runs {
        assert!(
            std::env::var_os("GATEHOUSE_REQUIRE_MB").is_none_or(|v| v != "1"),
            "GATEHOUSE_REQUIRE_MB=1 but multi-buffer cannot run here"
        );
        eprintln!("multi-buffer cannot run here: skipped");
        return;
    }
    let body = batch_path_verdicts(BatchMode::Multibuffer, 430).await;
    let calls = metric(&body, "gatehouse_multibuffer_calls_total").unwrap();
    let signatures = metric(&body, "gatehouse_multibuffer_signatures_total").unwrap();
    let unproven = metric(&body, "gatehouse_multibuffer_unproven_total").unwrap();
    // 12 signatures of 6 new holders (calls of 8 and 4), then their 6 device signatures
    // (the issuer's are cached): one call of 6.
    assert_eq!(calls, 3.0, "{calls} calls");
    assert_eq!(signatures, 18.0);
    assert_eq!(unproven, 1.0, "the forged signature");
    assert_eq!(
        metric(&body, "gatehouse_signature_batches_total"),
        Some(0.0)
    );
    assert!(
        body.contains("batch=\"multibuffer\""),
        "gatehouse_signature_paths names the path"
    );
}

/// Two batches of six tokens through a node on `batch`: all accepted, then the same holders
/// with the third token's device signature forged. Returns `/metrics`.
async fn batch_path_verdicts(batch: BatchMode, first_holder: u64) -> String {
    let world = World::new();
    let server = start(
        world.engine(|c| {
            c.batch = batch;
            c.batch_from = 1;
        }),
        world.server_config(),
    )
    .await;
    let gate = server.client(&world, "gate-a").await;
    let holders: Vec<Holder> = (0..6)
        .map(|i| world.holder(first_holder + i, |_| {}))
        .collect();
    let batch: Vec<Vec<u8>> = holders.iter().map(token).collect();
    let verdicts = timeout(LONG, gate.verify_batch(&batch))
        .await
        .unwrap()
        .unwrap();
    assert!(verdicts.iter().all(|v| v.reason == Reason::Accepted));
    // The third token's device signature is forged (its last byte flipped).
    let mut batch: Vec<Vec<u8>> = holders.iter().map(token).collect();
    let last = batch[2].len() - 1;
    batch[2][last] ^= 1;
    let reasons: Vec<Reason> = timeout(LONG, gate.verify_batch(&batch))
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|v| v.reason)
        .collect();
    let mut want = vec![Reason::Accepted; 6];
    want[2] = Reason::BadDeviceSignature;
    assert_eq!(reasons, want);
    let (_, body) = get(server.ops, "/metrics").await;
    server.shutdown().await;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoint() {
    let world = World::new();
    let server = start(world.engine(|_| {}), world.server_config()).await;
    let h = world.holder(500, |_| {});
    let gate = server.client(&world, "gate-a").await;
    gate.verify(&token(&h), None).await.unwrap();

    assert_eq!(get(server.ops, "/healthz").await, (200, "ok\n".into()));
    let (status, ready) = get(server.ops, "/readyz").await;
    assert_eq!(status, 200);
    assert!(
        ready.starts_with(
            "ready\nrevocations epoch 0 entries 0 digest b7dd154d23525089\nreloads 0\n"
        ),
        "{ready}"
    );
    // The Service's probe: this node's own readiness, the same lines after it.
    let (status, local) = get(server.ops, "/readyz/local").await;
    assert_eq!(status, 200);
    assert!(local.starts_with("ready\nrevocations epoch 0 "), "{local}");
    // The latency is recorded just after the response is written: wait for it.
    let mut body = String::new();
    for _ in 0..500 {
        let (status, b) = get(server.ops, "/metrics?x=1").await;
        assert_eq!(status, 200);
        body = b;
        if metric(&body, "gatehouse_request_duration_seconds_count") == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for (series, value) in [
        (
            "gatehouse_verdicts_total{role=\"gate\",reason=\"accepted\"}",
            1.0,
        ),
        ("gatehouse_requests_total{kind=\"verify\"}", 1.0),
        ("gatehouse_request_duration_seconds_count", 1.0),
        ("gatehouse_batch_size_count", 1.0),
        ("gatehouse_batch_size_bucket{le=\"1\"}", 1.0),
        ("gatehouse_connections", 1.0),
        ("gatehouse_replay_entries", 1.0),
        ("gatehouse_issuer_cache_misses_total", 1.0),
        ("gatehouse_revocation_epoch", 0.0),
        ("gatehouse_ready", 1.0),
    ] {
        assert_eq!(metric(&body, series), Some(value), "{series}\n{body}");
    }
    assert!(body.contains("# TYPE gatehouse_request_duration_seconds histogram"));
    assert!(body.contains("gatehouse_request_duration_seconds_bucket{le=\"0.0005\"}"));
    assert!(body.contains("gatehouse_request_duration_seconds_bucket{le=\"+Inf\"} 1"));

    let post = http(server.ops, "POST /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(post.0, 405);
    assert_eq!(get(server.ops, "/nope").await.0, 404);
    assert_eq!(http(server.ops, "garbage\r\n\r\n").await.unwrap().0, 400);
    // 431 Request Header Fields Too Large: the head is over the 8 KiB read buffer.
    let oversized = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(http(server.ops, &oversized).await.unwrap().0, 431);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused() {
    let world = World::new();
    let mut config = world.server_config();
    config.limits.max_connections = 1;
    let server = start(world.engine(|_| {}), config).await;
    let h = world.holder(600, |_| {});
    let first = server.client(&world, "gate-a").await;
    let refused = match server.connect(world.identity("partner-1")).await {
        Err(e) => e,
        Ok(c) => c.ping().await.unwrap_err(),
    };
    assert!(matches!(refused, ClientError::Refused), "{refused:?}");
    assert!(refused.is_retryable());
    assert_eq!(
        first.verify(&token(&h), None).await.unwrap().reason,
        Reason::Accepted
    );

    // A slot frees when a scanner leaves.
    first.close().await;
    let mut second = None;
    for _ in 0..100 {
        if let Ok(c) = server.connect(world.identity("partner-1")).await {
            second = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = second.expect("a connection slot frees up");
    assert_eq!(
        second.verify(&token(&h), None).await.unwrap().reason,
        Reason::Accepted
    );
    let (_, body) = get(server.ops, "/metrics").await;
    assert!(
        metric(
            &body,
            "gatehouse_connections_refused_total{cause=\"limit\"}"
        )
        .unwrap()
            >= 1.0
    );
    server.shutdown().await;
}
