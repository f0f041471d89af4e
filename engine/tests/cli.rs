//! The `gatehouse` binary end to end, as an operator would use it: dev PKI, issuer key, a
//! credential, `gatehouse serve` on loopback with the sample configuration, `wallet present`,
//! `scan`, a revocation and `gatehouse reload`, and a graceful stop. Every process a test
//! starts, it stops (`Server` kills on drop); every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gatehouse_testkit::Killed as Server;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn run_in(dir: &Path, args: &[&str]) -> Output {
    gatehouse_testkit::run_in(BIN, dir, args)
}

fn ok_in(dir: &Path, args: &[&str]) -> String {
    gatehouse_testkit::ok_in(BIN, dir, args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The operator sequence README's "Run it yourself" shows, command for command, from a fresh
/// directory (only the ports differ, so that tests can run side by side): dev PKI, issuer key,
/// a credential, a revocation list, the sample configuration as shipped, `serve`, `scan`, a
/// revocation and `gatehouse reload` (a refused file too), and a drain.
#[test]
fn the_readme_operator_sequence_runs_from_a_fresh_directory() {
    let dir: PathBuf = std::env::temp_dir().join(format!("gatehouse-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.as_path();

    let pki = ok_in(
        d,
        &[
            "dev-pki",
            "--out",
            "pki",
            "--scanner",
            "gate-1-1=gate:1/1",
            "--scanner",
            "partner-1=partner",
        ],
    );
    assert!(
        pki.contains("registered in scanners.toml: gate-1-1, partner-1"),
        "{pki}"
    );
    ok_in(d, &["issuer", "keygen", "--out", "."]);
    let issued = ok_in(
        d,
        &[
            "issuer",
            "issue",
            "--key",
            "issuer.key",
            "--out",
            "wallet",
            "--unit",
            "1/1/7/3",
        ],
    );
    assert!(issued.starts_with("credential "), "{issued}");
    let credential_id = issued.split_whitespace().nth(1).unwrap().to_string();
    ok_in(
        d,
        &[
            "issuer",
            "revoke",
            "--out",
            "revocations.cbor",
            "--epoch",
            "1",
        ],
    );

    // Nothing is overwritten without --force; errors name the flag and list valid values.
    let again = run_in(d, &["issuer", "keygen", "--out", "."]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let bad = run_in(
        d,
        &[
            "issuer",
            "issue",
            "--key",
            "issuer.key",
            "--out",
            "w2",
            "--type",
            "tank",
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("--type") && err.contains("military_id"),
        "{err}"
    );

    // The sample configuration as shipped, on free loopback ports.
    let on_free_ports = || {
        let port = gatehouse_testkit::free_udp_port();
        let ops = gatehouse_testkit::free_tcp_port();
        let config = gatehouse_engine::server::SAMPLE_CONFIG
            .replace(
                "listen = \"0.0.0.0:4433\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace(
                "metrics_listen = \"127.0.0.1:9090\"",
                &format!("metrics_listen = \"127.0.0.1:{ops}\""),
            );
        std::fs::write(dir.join("gatehouse.toml"), config).unwrap();
        (port, ops)
    };
    let (mut port, mut _ops) = on_free_ports();

    // A broken config is refused with exit code 64 and the field named.
    std::fs::write(dir.join("bad.toml"), "listen = 5\n").unwrap();
    let bad = run_in(d, &["serve", "--config", "bad.toml"]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("listen"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // A closed stderr never stops the server (`serve … 2>&1 | head -1`): the reader is gone
    // before the server writes its first line. It keeps serving until `timeout` ends it
    // (124), and a bad config still exits 64; both exited 101 (a panic) before.
    let closed_stderr = |config: &str, secs: &str| {
        Command::new("bash")
            .current_dir(d)
            .args([
                "-c",
                r#"{ sleep 0.3; exec timeout "$1" "$0" serve --config "$2"; } 2>&1 | true; echo "${PIPESTATUS[0]}""#,
                env!("CARGO_BIN_EXE_gatehouse"),
                secs,
                config,
            ])
            .output()
            .unwrap()
    };
    // A port that was free a moment ago may have been taken since by another test's client
    // socket (the node then cannot start: 64, its message lost with the stderr): new ports,
    // at most three tries.
    let mut exit = stdout(&closed_stderr("gatehouse.toml", "3"))
        .trim()
        .to_string();
    for _ in 0..2 {
        if exit != "64" {
            break;
        }
        (port, _ops) = on_free_ports();
        exit = stdout(&closed_stderr("gatehouse.toml", "3"))
            .trim()
            .to_string();
    }
    assert_eq!(exit, "124");
    assert_eq!(stdout(&closed_stderr("bad.toml", "10")).trim(), "64");

    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .current_dir(d)
            .args(["serve", "--config", "gatehouse.toml"])
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let server_addr = format!("127.0.0.1:{port}");
    let scan = |scanner: &str, token: &str| {
        run_in(
            d,
            &[
                "scan",
                "--server",
                &server_addr,
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
    // A phone whose clock runs the whole skew (5 s) ahead: its tokens pass the fence of a node
    // on the memory store (node_restarted up to its start + skew) a second after the start.
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

    // Wait (bounded) until the server answers: exit 3 means not reachable yet. A node on the
    // memory store denies tokens signed up to its start + skew (node_restarted): a wallet shows
    // a new token, so present again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (token, first) = loop {
        let token = present();
        let out = scan("gate-1-1", &token);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let answered = out.status.code() != Some(3) && !text.contains("node_restarted");
        if answered || Instant::now() > deadline {
            break (token, out);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = stdout(&first);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(text.starts_with("accepted (0)"), "{text}");
    assert!(text.contains("unit: 1/1/7/3"), "{text}");
    assert!(
        text.contains("valid until: 20") && text.contains(" UTC ("),
        "{text}"
    );

    // Denied: exit 1.
    let again = scan("gate-1-1", &token);
    assert_eq!(again.status.code(), Some(1));
    assert!(stdout(&again).starts_with("replayed (13)"));
    // A closed stdout (`scan … | head -0`) keeps the verdict's exit code; it was a panic (101).
    let closed_stdout = Command::new("bash")
        .current_dir(d)
        .args([
            "-c",
            r#"{ sleep 0.2; exec "$0" scan --server "$1" --ca pki/ca.pem --scanner-cert pki/scanners/gate-1-1.pem --scanner-key pki/scanners/gate-1-1.key "$2"; } | true; echo "${PIPESTATUS[0]}""#,
            env!("CARGO_BIN_EXE_gatehouse"),
            &server_addr,
            &token,
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&closed_stdout).trim(), "1", "{closed_stdout:?}");

    let partner = scan("partner-1", &present());
    let text = stdout(&partner);
    assert!(
        text.starts_with("accepted (0)") && text.contains("predicate: military_discount"),
        "{text}"
    );
    assert!(
        !text.contains("unit"),
        "a partner must not learn the unit: {text}"
    );

    // A usage error is 2, an unreachable server 3, and DNS names are resolved.
    assert_eq!(scan("gate-1-1", "not a token").status.code(), Some(2));
    let unreachable = run_in(
        d,
        &[
            "scan",
            "--server",
            &format!("localhost:{}", gatehouse_testkit::free_udp_port()),
            "--timeout-secs",
            "1",
            "--ca",
            "pki/ca.pem",
            "--scanner-cert",
            "pki/scanners/gate-1-1.pem",
            "--scanner-key",
            "pki/scanners/gate-1-1.key",
            &present(),
        ],
    );
    assert_eq!(unreachable.status.code(), Some(3));
    let scan_as = |scanner: &str, server: &str| {
        run_in(
            d,
            &[
                "scan",
                "--server",
                server,
                "--ca",
                "pki/ca.pem",
                "--scanner-cert",
                &format!("pki/scanners/{scanner}.pem"),
                "--scanner-key",
                &format!("pki/scanners/{scanner}.key"),
                &present(),
            ],
        )
    };
    let localhost = format!("localhost:{port}");
    // By DNS name.
    let by_name = scan_as("gate-1-1", &localhost);
    assert_eq!(by_name.status.code(), Some(0), "{}", stdout(&by_name));

    // A scanner added while the server runs, by the CA dev-pki kept, is refused until a
    // reload registers it.
    let added = ok_in(
        d,
        &["dev-pki", "--out", "pki", "--scanner", "age-1=age_check"],
    );
    assert!(added.contains("existing CA kept"), "{added}");
    let early = scan_as("age-1", &localhost);
    assert_eq!(early.status.code(), Some(7), "{}", stdout(&early));
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("not registered"),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );

    // A delta is not reloaded without [files] state_dir: a restart could not start from it
    // (it used to be, and the restart then failed with exit 1, naming no file).
    ok_in(
        d,
        &[
            "issuer",
            "revoke",
            "--out",
            "revocations.cbor",
            "--epoch",
            "2",
            "--base",
            "1",
            "--credential",
            &credential_id,
            "--force",
        ],
    );
    let delta = run_in(d, &["reload", "--config", "gatehouse.toml"]);
    assert_eq!(delta.status.code(), Some(1), "{}", stdout(&delta));
    assert!(
        stdout(&delta).contains("revocations  FAILED") && stdout(&delta).contains("state_dir"),
        "{}",
        stdout(&delta)
    );
    // Revoke the credential in a snapshot and reload: `gatehouse reload` waits for the result.
    ok_in(
        d,
        &[
            "issuer",
            "revoke",
            "--out",
            "revocations.cbor",
            "--epoch",
            "2",
            "--credential",
            &credential_id,
            "--force",
        ],
    );
    // `reload --pid` signals only the server the config names: another process is refused
    // and left alone (it used to get the SIGHUP).
    let mut bystander = Command::new("sleep").arg("30").spawn().unwrap();
    let wrong = run_in(
        d,
        &[
            "reload",
            "--config",
            "gatehouse.toml",
            "--pid",
            &bystander.id().to_string(),
        ],
    );
    assert_eq!(wrong.status.code(), Some(64), "{}", stdout(&wrong));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("is not the server"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    let reloaded = ok_in(d, &["reload", "--config", "gatehouse.toml"]);
    assert!(
        reloaded.contains("revocations") && reloaded.contains("epoch 2"),
        "{reloaded}"
    );
    assert!(
        reloaded.contains("tls") && reloaded.contains("3 scanners"),
        "{reloaded}"
    );
    let revoked = scan("gate-1-1", &present());
    assert_eq!(revoked.status.code(), Some(1));
    assert!(
        stdout(&revoked).starts_with("revoked (11)"),
        "{}",
        stdout(&revoked)
    );
    // The counter registered by this reload now gets verdicts.
    let late = scan_as("age-1", &localhost);
    assert!(
        stdout(&late).starts_with("revoked (11)"),
        "{}",
        stdout(&late)
    );

    // A refused file fails the reload (exit 1) and names it; the others still reload.
    let registry = std::fs::read_to_string(dir.join("scanners.toml")).unwrap();
    std::fs::write(dir.join("scanners.toml"), "[[scanner]]\nid = 1\n").unwrap();
    let refused = run_in(d, &["reload", "--config", "gatehouse.toml"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    let text = stdout(&refused);
    assert!(text.contains("scanners     FAILED"), "{text}");
    assert!(text.contains("trust        ok"), "{text}");
    std::fs::write(dir.join("scanners.toml"), registry).unwrap();
    ok_in(d, &["reload", "--config", "gatehouse.toml"]);

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

    // Restart = reload: the node starts from what it reloaded (epoch 2, the token revoked).
    let log2 = std::fs::File::create(dir.join("serve2.log")).unwrap();
    let restarted = Server(
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .current_dir(d)
            .args(["serve", "--config", "gatehouse.toml"])
            .stderr(log2)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let after_restart = loop {
        let out = scan("gate-1-1", &present());
        let text = stdout(&out);
        if out.status.code() != Some(3) && !text.contains("node_restarted")
            || Instant::now() > deadline
        {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        stdout(&after_restart).starts_with("revoked (11)"),
        "{} {}",
        stdout(&after_restart),
        std::fs::read_to_string(dir.join("serve2.log")).unwrap_or_default()
    );
    drop(restarted);
    // A lone delta at start, with nothing kept: exit 64, naming the field and the file.
    std::fs::rename(dir.join("revocations.cbor"), dir.join("snapshot-2.cbor")).unwrap();
    ok_in(
        d,
        &[
            "issuer",
            "revoke",
            "--out",
            "revocations.cbor",
            "--epoch",
            "3",
            "--base",
            "2",
        ],
    );
    let lone = run_in(d, &["serve", "--config", "gatehouse.toml"]);
    let err = String::from_utf8_lossy(&lone.stderr);
    assert_eq!(lone.status.code(), Some(64), "{err}");
    assert!(
        err.contains("gatehouse.toml: files.revocations: ")
            && err.contains("revocations.cbor")
            && err.contains("state_dir"),
        "{err}"
    );

    // The log: a start-up line with version, config, backend, addresses and counts; no ANSI
    // colour (stderr is a file); no holder or credential ids.
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    let start = log
        .lines()
        .find(|l| l.contains("gatehouse starting"))
        .unwrap_or_else(|| panic!("{log}"));
    for field in [
        "version=",
        "config=gatehouse.toml",
        "backend=Ring",
        &format!("listen=127.0.0.1:{port}"),
        "issuers=1",
        "scanners=2",
        "revocation_epoch=1",
    ] {
        assert!(start.contains(field), "{field} missing from {start}");
    }
    assert!(!log.contains('\u{1b}'), "ANSI escape in a non-terminal log");
    assert!(!log.contains(&credential_id), "a credential id in the log");
    assert!(
        log.contains("file=\"revocations\"") || log.contains("file=revocations"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[log] format = "json"`: one JSON object a line.
#[test]
fn json_logs_are_one_object_a_line() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("gatehouse-cli-json-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.as_path();
    ok_in(d, &["dev-pki", "--out", "pki"]);
    ok_in(d, &["issuer", "keygen", "--out", "."]);
    ok_in(
        d,
        &[
            "issuer",
            "revoke",
            "--out",
            "revocations.cbor",
            "--epoch",
            "1",
        ],
    );
    let config = gatehouse_engine::server::SAMPLE_CONFIG
        .replace(
            "0.0.0.0:4433",
            &format!("127.0.0.1:{}", gatehouse_testkit::free_udp_port()),
        )
        .replace(
            "127.0.0.1:9090",
            &format!("127.0.0.1:{}", gatehouse_testkit::free_tcp_port()),
        )
        .replace("format = \"text\"", "format = \"json\"");
    std::fs::write(dir.join("gatehouse.toml"), config).unwrap();
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .current_dir(d)
            .args(["serve", "--config", "gatehouse.toml"])
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(dir.join("serve.log")).unwrap();
        if text.contains("gatehouse listening") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = server.0.kill();
    let _ = server.0.wait();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(text.contains("\"issuers\":1"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `gatehouse demo` with stderr to a pipe (as under CI or in a log): its progress is a few
/// plain lines, with no carriage return and no escape sequence, and the summary still prints.
#[test]
fn demo_progress_on_a_pipe_is_plain_lines() {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args([
            "demo",
            "--holders",
            "2000",
            "--seconds",
            "2",
            "--rate",
            "200",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run gatehouse demo");
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "{:?}",
        t0.elapsed()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}{err}", stdout(&out));
    assert!(
        stdout(&out).contains("mismatches      0"),
        "{}",
        stdout(&out)
    );
    assert!(!err.contains('\r'), "a carriage return on a pipe: {err:?}");
    assert!(
        !err.contains('\u{1b}'),
        "an escape sequence on a pipe: {err:?}"
    );
    for line in [
        "  issuing credentials: 0/2000 holders",
        "  issuing credentials: 50% (",
        "  issuing credentials: done, 2000/2000 holders in ",
        "  rush: done, ",
    ] {
        assert!(err.contains(line), "no {line:?} in:\n{err}");
    }
    for label in ["  issuing credentials: ", "  rush: "] {
        let n = err.lines().filter(|l| l.starts_with(label)).count();
        assert!((2..=11).contains(&n), "{n} lines of {label:?}:\n{err}");
    }

    // --json: the summary on stdout, and no progress at all.
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args([
            "demo",
            "--holders",
            "2000",
            "--seconds",
            "1",
            "--rate",
            "100",
            "--json",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run gatehouse demo --json");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("issuing credentials") && !err.contains("rush: "),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["mismatches"], 0);
}

/// `issuer revoke --feed` reads the feed's text as a node reads `[revocations] feed`: `dir:`
/// names a directory (it used to create a directory called `dir:feed`), and an `https://`
/// feed is refused with the way to publish it (the directory its web server serves).
#[test]
fn a_publisher_reads_feed_as_a_node_does() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("gatehouse-publish-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.as_path();
    ok_in(d, &["issuer", "revocation-keygen", "--out", "issuer"]);
    let id = "00112233445566778899aabbccddeeff";
    let revoke = |feed: &str| {
        run_in(
            d,
            &[
                "issuer",
                "revoke",
                "--feed",
                feed,
                "--key",
                "issuer/revocation.key",
                "--credential",
                id,
            ],
        )
    };
    let published = revoke("dir:feed");
    assert!(published.status.success(), "{published:?}");
    assert!(dir.join("feed/head.json").is_file());
    assert!(dir.join("feed/snapshot-1.cose").is_file());
    assert!(!dir.join("dir:feed").exists());
    let http = revoke("https://revocations.example/feed");
    assert!(!http.status.success());
    let err = String::from_utf8_lossy(&http.stderr);
    assert!(err.contains("directory"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
