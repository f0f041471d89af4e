//! The shipped Kubernetes configuration, run as a fleet: three `gatehouse serve` processes on
//! loopback, each started from the `gatehouse.toml` of `deploy/kubernetes/configmap.yaml`
//! with only three values changed, each named below (the QUIC address, the operations address
//! and the Redis URL), one `redis-server` on loopback with the password the configuration's
//! `password_file` names, and the files the configuration names written by the binary's own
//! commands. A token used on one node is refused on the others; with Redis down the nodes stay
//! ready for the Service (`/readyz/local`) while `/readyz` says why they cannot accept.
//!
//! Every process the test starts, it stops (on drop, also on failure); every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gatehouse_engine::dev::redis::RedisServer;
use serde::Deserialize;

use gatehouse_testkit::Killed as Node;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn run_in(dir: &Path, args: &[&str]) -> Output {
    gatehouse_testkit::run_in(BIN, dir, args)
}

fn ok_in(dir: &Path, args: &[&str]) -> String {
    gatehouse_testkit::ok_in(BIN, dir, args)
}

/// One bounded `GET` on the operations port: (status, body); (0, "") when nothing answers.
fn get(port: u16, path: &str) -> (u16, String) {
    gatehouse_testkit::get_blocking(([127, 0, 0, 1], port).into(), path)
        .map_or((0, String::new()), |r| (r.status, r.body))
}

/// The `gatehouse.toml` the shipped ConfigMap holds.
fn shipped_config() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/configmap.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let doc =
        serde_norway::Value::deserialize(serde_norway::Deserializer::from_str(&text)).unwrap();
    doc["data"]["gatehouse.toml"].as_str().unwrap().to_string()
}

/// Replaces exactly one line of the shipped configuration.
fn set(config: &str, line: &str, to: &str) -> String {
    assert_eq!(
        config.lines().filter(|l| l.trim() == line).count(),
        1,
        "the shipped configuration has no line {line:?}"
    );
    config
        .lines()
        .map(|l| if l.trim() == line { to } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn three_nodes_from_the_shipped_configmap_share_one_time_use() {
    let dir = std::env::temp_dir().join(format!("gatehouse-k8s-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("files")).unwrap();
    let d = dir.as_path();

    // The files the configuration names, made by the binary's own commands.
    ok_in(
        d,
        &[
            "dev-pki",
            "--out",
            "pki",
            "--scanner",
            "gate-1-1=gate:1/1",
            "--scanner",
            "gate-1-2=gate:1/1",
        ],
    );
    std::fs::rename(dir.join("scanners.toml"), dir.join("files/scanners.toml")).unwrap();
    ok_in(d, &["issuer", "keygen", "--out", "files"]);
    ok_in(
        d,
        &[
            "issuer",
            "issue",
            "--key",
            "files/issuer.key",
            "--out",
            "wallet",
            "--unit",
            "1/1",
        ],
    );
    ok_in(
        d,
        &[
            "issuer",
            "revoke",
            "--out",
            "files/revocations.cbor",
            "--epoch",
            "1",
        ],
    );

    // One Redis with the password the configuration's password_file names.
    let mut redis = RedisServer::start().unwrap();
    let password = "k8s-fleet-test-password (TEST ONLY)";
    std::fs::create_dir_all(dir.join("redis")).unwrap();
    std::fs::write(dir.join("redis/password"), format!("{password}\n")).unwrap();
    let reply = redis
        .command(&format!("CONFIG SET requirepass \"{password}\""))
        .unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");

    // Three nodes: the shipped configuration with three values changed, and nothing else.
    let shipped = shipped_config();
    let mut nodes = Vec::new();
    let mut ports = Vec::new();
    for i in 0..3 {
        let (quic, ops) = (
            gatehouse_testkit::free_udp_port(),
            gatehouse_testkit::free_tcp_port(),
        );
        let mut config = shipped.clone();
        config = set(
            &config,
            "listen = \"0.0.0.0:4433\"",
            &format!("listen = \"127.0.0.1:{quic}\""),
        );
        config = set(
            &config,
            "metrics_listen = \"0.0.0.0:9090\"",
            &format!("metrics_listen = \"127.0.0.1:{ops}\""),
        );
        config = set(
            &config,
            "urls = [\"redis://gatehouse-redis:6379\"]",
            &format!("urls = [\"{}\"]", redis.url()),
        );
        let name = format!("gatehouse-{i}.toml");
        std::fs::write(dir.join(&name), config).unwrap();
        let log = std::fs::File::create(dir.join(format!("node-{i}.log"))).unwrap();
        nodes.push(Node(
            Command::new(env!("CARGO_BIN_EXE_gatehouse"))
                .current_dir(d)
                .args(["serve", "--config", &name])
                .stdin(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
        ports.push((quic, ops));
    }
    let logs = || {
        (0..3)
            .map(|i| std::fs::read_to_string(dir.join(format!("node-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    let present = || {
        ok_in(
            d,
            &[
                "wallet",
                "present",
                "--wallet",
                "wallet",
                "--text-only",
                "--clock-offset-secs",
                "5",
            ],
        )
        .trim()
        .to_string()
    };
    let scan = |node: usize, scanner: &str, token: &str| {
        run_in(
            d,
            &[
                "scan",
                "--server",
                &format!("127.0.0.1:{}", ports[node].0),
                "--server-name",
                "localhost",
                "--timeout-secs",
                "5",
                "--ca",
                "pki/ca.pem",
                "--scanner-cert",
                &format!("pki/scanners/{scanner}.pem"),
                "--scanner-key",
                &format!("pki/scanners/{scanner}.key"),
                token,
            ],
        )
    };
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).to_string();

    // Every node ready (its Redis answers), then a token accepted on node 0 ...
    let deadline = Instant::now() + Duration::from_secs(30);
    for (_, ops) in &ports {
        while get(*ops, "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "nodes not ready:\n{}", logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (token, first) = loop {
        let token = present();
        let out = scan(0, "gate-1-1", &token);
        if text(&out).starts_with("accepted") || Instant::now() > deadline {
            break (token, out);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        text(&first).starts_with("accepted (0)"),
        "{} {}\n{}",
        text(&first),
        String::from_utf8_lossy(&first.stderr),
        logs()
    );
    // ... is refused on the others, by another scanner too.
    for (node, scanner) in [(1, "gate-1-2"), (2, "gate-1-1")] {
        let again = scan(node, scanner, &token);
        assert_eq!(again.status.code(), Some(1), "{}", text(&again));
        assert!(
            text(&again).starts_with("replayed (13)"),
            "{}",
            text(&again)
        );
    }

    // Redis down: every node answers `unavailable` and /readyz says why, but each stays in
    // the Service (/readyz/local), so scanners still get an answer. A node learns it on its
    // next mark (or its settings check), so each is asked once.
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (node, (_, ops)) in ports.iter().enumerate() {
        let down = scan(node, "gate-1-2", &present());
        assert!(
            text(&down).starts_with("unavailable (21)"),
            "{}",
            text(&down)
        );
        loop {
            let (all, body) = get(*ops, "/readyz");
            let (local, local_body) = get(*ops, "/readyz/local");
            if all == 503 {
                assert!(body.contains("store"), "{body}");
                assert_eq!(local, 200, "{local_body}");
                assert!(
                    local_body.starts_with("ready (this node; shared: "),
                    "{local_body}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "/readyz stayed {all}: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
