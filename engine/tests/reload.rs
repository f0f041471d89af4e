//! Reload in a running server (`server::run` with a `ReloadControl`, as SIGHUP drives it):
//!
//! - each file reloads on its own merits: a bad revocation file does not keep a new scanner
//!   registry out, and its result is reported per file in `/readyz` and `/metrics`;
//! - the TLS certificate, key and client CA are replaced without dropping the connections
//!   already open; new connections use the new ones; a bad key keeps the old ones in force.
//!
//! Every wait is bounded by `tokio::time::timeout` or a count.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_engine::client::{ClientError, ClientIdentity, ScannerClient};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population::{self, derive_key, Holder};
use gatehouse_engine::server::{self, ReloadControl, ServeConfig};
use gatehouse_protocol::Reason;
use tokio::sync::Notify;
use tokio::time::timeout;

const LONG: Duration = Duration::from_secs(20);

const CONFIG: &str = r#"
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
replay_capacity = 10000
"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn registry(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| format!("[[scanner]]\nid = \"{id}\"\nrole = \"gate\"\nunit = \"1\"\n\n"))
        .collect()
}

fn identity(pki: &DevPki, id: &str) -> ClientIdentity {
    ClientIdentity {
        roots: vec![pki.ca.cert_der.clone()],
        chain: pki.scanner(id).unwrap().chain(),
        key: pki.scanner(id).unwrap().key(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> String {
    gatehouse_testkit::get(addr, path).await.unwrap().body
}

/// Triggers a reload and waits until `/readyz` shows it done; returns the `/readyz` body.
async fn reload(trigger: &Notify, ops: SocketAddr, generation: u64) -> String {
    trigger.notify_one();
    for _ in 0..400 {
        let body = get(ops, "/readyz").await;
        if body.contains(&format!("reloads {generation}\n")) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("reload {generation} did not complete");
}

fn line<'a>(body: &'a str, file: &str) -> &'a str {
    body.lines()
        .find(|l| l.starts_with(&format!("reload {file} ")))
        .unwrap_or_else(|| panic!("no {file} line in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_tls_reload_each_on_their_own_without_dropping_connections() {
    let dir = std::env::temp_dir().join(format!("gatehouse-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let old = DevPki::generate(&["gate-1".into(), "gate-2".into()]).unwrap();
    old.write_to(&dir.join("pki")).unwrap();
    let issuer = population::issuer_key(9);
    std::fs::write(
        dir.join("trust.toml"),
        population::trust_list(&issuer).to_toml(),
    )
    .unwrap();
    std::fs::write(dir.join("scanners.toml"), registry(&["gate-1"])).unwrap();
    let list = gatehouse_protocol::RevocationList {
        epoch: 1,
        base: None,
        revoke: vec![],
        reinstate: vec![],
        digest: None,
    };
    std::fs::write(dir.join("revocations.cbor"), list.encode()).unwrap();

    let parts = ServeConfig::parse(&dir.join("gatehouse.toml"), CONFIG)
        .unwrap()
        .into_parts()
        .unwrap();
    // Not `build_engine`: its restart fence (node_restarted) would deny the tokens below, made
    // one second in the past; this test is about reload, not restarts.
    let engine = Arc::new(
        gatehouse_engine::Engine::new(
            parts.engine.clone(),
            parts.trust.clone(),
            parts.scanners.clone(),
        )
        .unwrap(),
    );
    engine
        .apply_revocations(parts.revocations.as_ref().unwrap())
        .unwrap();
    let trigger = Arc::new(Notify::new());
    let mut config = parts.server;
    config.reload = Some(ReloadControl {
        files: parts.files.clone(),
        trigger: Arc::clone(&trigger),
    });
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = ops.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(engine, config, socket, Some(ops), async move {
        let _ = stopped.await;
    }));

    let holder = Holder::issue(
        &issuer,
        derive_key("reload test device", 1),
        population::credential(now(), 1),
    )
    .unwrap();
    let nonce = std::sync::atomic::AtomicU64::new(1);
    let token = || {
        let mut n = [7u8; 16];
        n[..8].copy_from_slice(
            &nonce
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_be_bytes(),
        );
        holder.present(now() - 1, n, None).unwrap()
    };
    let connect = |id: ClientIdentity| async move {
        timeout(LONG, ScannerClient::connect(addr, "localhost", id))
            .await
            .unwrap()
    };
    let verify = |c: ScannerClient, t: Vec<u8>| async move {
        timeout(LONG, c.verify(&t, None)).await.unwrap()
    };
    let before = connect(identity(&old, "gate-1")).await.unwrap();
    assert_eq!(
        verify(before.clone(), token()).await.unwrap().reason,
        Reason::Accepted
    );

    // A broken revocation file and a new registry: the registry takes effect all the same.
    std::fs::write(dir.join("revocations.cbor"), b"not cbor").unwrap();
    std::fs::write(dir.join("scanners.toml"), registry(&["gate-1", "gate-2"])).unwrap();
    let body = reload(&trigger, ops_addr, 1).await;
    assert!(line(&body, "revocations").contains(" failed "), "{body}");
    assert!(line(&body, "scanners").contains(" ok "), "{body}");
    assert!(line(&body, "trust").contains(" ok "), "{body}");
    let gate2 = connect(identity(&old, "gate-2")).await.unwrap();
    assert_eq!(
        verify(gate2, token()).await.unwrap().reason,
        Reason::Accepted
    );
    let metrics = get(ops_addr, "/metrics").await;
    assert!(
        metrics.contains("gatehouse_reload_success{file=\"revocations\"} 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("gatehouse_reload_success{file=\"scanners\"} 1\n"));
    assert!(metrics.contains("gatehouse_reloads_total{file=\"revocations\",result=\"failed\"} 1\n"));
    std::fs::write(dir.join("revocations.cbor"), list.encode()).unwrap();

    // A new CA, server certificate and key. The connection already open is not dropped.
    let new = DevPki::generate(&["gate-1".into()]).unwrap();
    new.write_to(&dir.join("pki")).unwrap();
    let body = reload(&trigger, ops_addr, 2).await;
    assert!(line(&body, "tls").contains(" ok "), "{body}");
    assert!(line(&body, "revocations").contains(" ok "), "{body}");
    assert_eq!(
        verify(before.clone(), token()).await.unwrap().reason,
        Reason::Accepted
    );
    // New connections: the new PKI works, the old one no longer does (either side).
    let after = connect(identity(&new, "gate-1")).await.unwrap();
    assert_eq!(
        verify(after.clone(), token()).await.unwrap().reason,
        Reason::Accepted
    );
    let stale = connect(identity(&old, "gate-1")).await;
    assert!(
        matches!(stale, Err(ClientError::Handshake(_))),
        "{:?}",
        stale.err()
    );

    // A broken key is refused; the certificate in force stays, and so do the connections.
    let good_key = std::fs::read(dir.join("pki/server.key")).unwrap();
    std::fs::write(dir.join("pki/server.key"), b"no key here").unwrap();
    let body = reload(&trigger, ops_addr, 3).await;
    assert!(line(&body, "tls").contains(" failed "), "{body}");
    assert!(line(&body, "tls").contains("server.key"), "{body}");
    let again = connect(identity(&new, "gate-1")).await.unwrap();
    assert_eq!(
        verify(again, token()).await.unwrap().reason,
        Reason::Accepted
    );
    assert_eq!(
        verify(before, token()).await.unwrap().reason,
        Reason::Accepted
    );
    std::fs::write(dir.join("pki/server.key"), good_key).unwrap();
    let metrics = get(ops_addr, "/metrics").await;
    assert!(metrics.contains("gatehouse_reload_success{file=\"tls\"} 0\n"));
    // dev-pki certificates end on 31 December 2049.
    assert!(
        metrics.contains(
            "gatehouse_certificate_expiry_timestamp_seconds{certificate=\"server\"} 2524521600\n"
        ),
        "{metrics}"
    );

    let _ = stop.send(());
    timeout(LONG, task).await.unwrap().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Restart = reload: whatever a node reloaded, it starts from. A delta is reloaded only when
/// `[files] state_dir` can keep the state it leads to; the next start takes that state (the
/// file still holds the delta, which applies to nothing at a cold start). Without a state
/// directory the delta is refused at reload, and a cold start on it is a configuration error
/// naming the field (it used to be reloaded, and the restart then failed with exit 1).
#[test]
fn a_node_restarts_from_what_it_reloaded() {
    use gatehouse_protocol::{RevocationEntry, RevocationKind, RevocationList};
    let dir = std::env::temp_dir().join(format!("gatehouse-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    DevPki::generate(&["gate-1".into()])
        .unwrap()
        .write_to(&dir.join("pki"))
        .unwrap();
    let issuer = population::issuer_key(9);
    std::fs::write(
        dir.join("trust.toml"),
        population::trust_list(&issuer).to_toml(),
    )
    .unwrap();
    std::fs::write(dir.join("scanners.toml"), registry(&["gate-1"])).unwrap();
    let entry = |n: u8| RevocationEntry {
        kind: RevocationKind::Credential,
        id: [n; 16],
    };
    let snapshot = RevocationList {
        epoch: 1,
        base: None,
        revoke: vec![entry(1)],
        reinstate: vec![],
        digest: None,
    };
    let delta = RevocationList {
        epoch: 2,
        base: Some(1),
        revoke: vec![entry(2)],
        reinstate: vec![],
        digest: None,
    };
    let start = |config: &str| {
        ServeConfig::parse(&dir.join("gatehouse.toml"), config)
            .unwrap()
            .into_parts()
            .and_then(|parts| parts.build_engine().map(|e| (parts, e)))
    };

    // Without a state directory: the delta is refused at reload, the epoch in force stays.
    std::fs::write(dir.join("revocations.cbor"), snapshot.encode()).unwrap();
    let (parts, engine) = start(CONFIG).unwrap();
    std::fs::write(dir.join("revocations.cbor"), delta.encode()).unwrap();
    let refused = server::reload_revocations(&engine, &parts.files).unwrap_err();
    assert!(
        matches!(refused, server::ReloadError::NotKept { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("state_dir"), "{refused}");
    assert_eq!(engine.revocation_epoch(), (1, 1));
    // A cold start on the delta alone: a configuration error naming the field and the file.
    let Err(cold) = start(CONFIG) else {
        panic!("a lone delta must not start a node");
    };
    let cold = cold.to_string();
    assert!(
        cold.contains("files.revocations: ") && cold.contains("revocations.cbor"),
        "{cold}"
    );

    // With one: the delta is reloaded and kept; a restart starts at epoch 2.
    let with_state = CONFIG.replace(
        "revocations = \"revocations.cbor\"\n[engine]",
        "revocations = \"revocations.cbor\"\nstate_dir = \"state\"\n[engine]",
    );
    assert!(with_state.contains("state_dir"));
    let with_state = with_state.as_str();
    std::fs::write(dir.join("revocations.cbor"), snapshot.encode()).unwrap();
    let (parts, engine) = start(with_state).unwrap();
    assert!(
        dir.join("state").join(server::KEPT_REVOCATIONS).is_file(),
        "the state in force is kept from the start"
    );
    std::fs::write(dir.join("revocations.cbor"), delta.encode()).unwrap();
    let reloaded = server::reload_revocations(&engine, &parts.files).unwrap();
    assert_eq!((reloaded.epoch, reloaded.entries), (2, 2));
    let digest = engine.revocations().load().digest();
    drop(engine);
    let (_, restarted) = start(with_state).unwrap();
    assert_eq!(restarted.revocation_epoch(), (2, 2), "restart = reload");
    assert_eq!(restarted.revocations().load().digest(), digest);
    // A file older than the kept state does not take the node back.
    std::fs::write(dir.join("revocations.cbor"), snapshot.encode()).unwrap();
    let (_, older) = start(with_state).unwrap();
    assert_eq!(older.revocation_epoch(), (2, 2));
    // A newer snapshot does.
    let three = RevocationList {
        epoch: 3,
        base: None,
        revoke: vec![],
        reinstate: vec![],
        digest: None,
    };
    std::fs::write(dir.join("revocations.cbor"), three.encode()).unwrap();
    let (_, newer) = start(with_state).unwrap();
    assert_eq!(newer.revocation_epoch(), (3, 0));
    let _ = std::fs::remove_dir_all(&dir);
}
