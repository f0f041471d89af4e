//! The `gatehouse` binary end to end, as an operator would use it: dev PKI, issuer key, a
//! credential, `gatehouse serve` on loopback, `wallet present`, `scan`, and a graceful stop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn gatehouse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .output()
        .expect("run gatehouse")
}

fn ok(args: &[&str]) -> String {
    let out = gatehouse(args);
    assert!(
        out.status.success(),
        "gatehouse {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn p(dir: &Path, rel: &str) -> String {
    dir.join(rel).to_str().unwrap().to_string()
}

#[test]
fn issue_serve_present_scan_and_stop() {
    let dir: PathBuf = std::env::temp_dir().join(format!("gatehouse-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    ok(&[
        "dev-pki",
        "--out",
        &p(&dir, "pki"),
        "--scanner",
        "gate-1-1",
        "--scanner",
        "partner-1",
    ]);
    ok(&["issuer", "keygen", "--out", &p(&dir, ".")]);
    let issued = ok(&[
        "issuer",
        "issue",
        "--key",
        &p(&dir, "issuer.key"),
        "--out",
        &p(&dir, "wallet"),
        "--unit",
        "1/1/7/3",
    ]);
    assert!(issued.starts_with("credential "), "{issued}");
    ok(&[
        "issuer",
        "revoke",
        "--out",
        &p(&dir, "revocations.cbor"),
        "--epoch",
        "1",
    ]);
    std::fs::write(
        dir.join("scanners.toml"),
        "[[scanner]]\nid = \"gate-1-1\"\nrole = \"gate\"\nunit = \"1/1\"\n\n[[scanner]]\nid = \"partner-1\"\nrole = \"partner\"\n",
    )
    .unwrap();
    let port = free_udp_port();
    let config = gatehouse_engine::server::SAMPLE_CONFIG
        .replace(
            "listen = \"0.0.0.0:4433\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(
            "metrics_listen = \"127.0.0.1:9090\"",
            &format!("metrics_listen = \"127.0.0.1:{}\"", free_tcp_port()),
        );
    std::fs::write(dir.join("gatehouse.toml"), config).unwrap();

    // A broken config is refused with exit code 64 and the field named.
    std::fs::write(dir.join("bad.toml"), "listen = 5\n").unwrap();
    let bad = gatehouse(&["serve", "--config", &p(&dir, "bad.toml")]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("listen"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["serve", "--config", &p(&dir, "gatehouse.toml")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let scan = |scanner: &str, token: &str| {
        gatehouse(&[
            "scan",
            "--server",
            &format!("127.0.0.1:{port}"),
            "--ca",
            &p(&dir, "pki/ca.pem"),
            "--scanner-cert",
            &p(&dir, &format!("pki/scanners/{scanner}.pem")),
            "--scanner-key",
            &p(&dir, &format!("pki/scanners/{scanner}.key")),
            token,
        ])
    };
    let present = || {
        ok(&[
            "wallet",
            "present",
            "--wallet",
            &p(&dir, "wallet"),
            "--text-only",
        ])
        .trim()
        .to_string()
    };

    // Wait (bounded) until the server answers. A node on the memory store denies tokens signed
    // before the second after it started (node_restarted): a wallet shows a new token, so
    // present again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (token, first) = loop {
        let token = present();
        let out = scan("gate-1-1", &token);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let answered = text.contains("(") && !text.contains("node_restarted");
        if out.status.success() || answered || Instant::now() > deadline {
            break (token, out);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(text.starts_with("accepted (0)"), "{text}");
    assert!(text.contains("unit: 1/1/7/3"), "{text}");

    let again = scan("gate-1-1", &token);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("replayed (13)"));

    let partner = scan("partner-1", &present());
    let text = String::from_utf8_lossy(&partner.stdout);
    assert!(
        text.starts_with("accepted (0)") && text.contains("predicate: military_discount"),
        "{text}"
    );
    assert!(
        !text.contains("unit"),
        "a partner must not learn the unit: {text}"
    );

    // SIGTERM drains and exits cleanly.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}
