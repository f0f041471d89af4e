//! `gatehouse scan`'s exit codes and budget, `issuer` usage errors and `dev-pki` on an
//! existing PKI, each through the real binary, against real `gatehouse serve` processes on
//! free loopback ports (as `cli.rs` starts them, from a fresh directory). Every process a test
//! starts is killed when the test ends, also when it fails (`Server` and `Dir` guards); every
//! wait is bounded (`run` kills a command that outlives its limit).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Exit codes of `gatehouse scan` (see `gatehouse scan --help`).
const ACCEPTED: i32 = 0;
const DENIED: i32 = 1;
const USAGE: i32 = 2;
const UNREACHABLE: i32 = 3;
const RETRY: i32 = 4;
const FRESH_TOKEN: i32 = 5;
const LOCAL_SETUP: i32 = 6;
const SCANNER_REFUSED: i32 = 7;

/// Longest any one command may run before the test kills it and fails.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// A fresh directory, removed when the test ends.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("gatehouse-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `gatehouse serve` process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a command did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.took, self.stdout, self.stderr
        )
    }
}

/// Runs `gatehouse args…` in `dir`, killed (and the test failed) if it runs past
/// [`COMMAND_LIMIT`].
fn run(dir: &Path, args: &[&str]) -> Ran {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gatehouse");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > COMMAND_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gatehouse {args:?} still running after {COMMAND_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Ran {
        code: status.code(),
        stdout,
        stderr,
        took,
    }
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert_eq!(out.code, Some(0), "gatehouse {args:?}: {out:?}");
    out.stdout
}

/// A token of the wallet in `wallet`, from a phone `offset` seconds ahead.
fn present(dir: &Path, wallet: &str, offset: i64) -> String {
    ok(
        dir,
        &[
            "wallet",
            "present",
            "--wallet",
            wallet,
            "--text-only",
            "--clock-offset-secs",
            &offset.to_string(),
        ],
    )
    .trim()
    .to_string()
}

/// A site: a dev PKI with `gate-1-1` registered and `stranger` issued but not registered, an
/// issuer, a wallet, a revoked wallet, and the sample configuration on free loopback ports.
struct Site {
    dir: Dir,
    port: u16,
}

impl Site {
    fn new(name: &str, store: &str) -> Site {
        let dir = Dir::new(name);
        let d = dir.path();
        ok(
            d,
            &[
                "dev-pki",
                "--out",
                "pki",
                "--scanner",
                "gate-1-1=gate:1/1",
                "--scanner",
                "stranger",
            ],
        );
        ok(d, &["issuer", "keygen", "--out", "."]);
        let issue = |wallet: &str| {
            ok(
                d,
                &[
                    "issuer",
                    "issue",
                    "--key",
                    "issuer.key",
                    "--out",
                    wallet,
                    "--unit",
                    "1/1/7/3",
                ],
            )
        };
        issue("wallet");
        // "credential ID for subject …"
        let issued = issue("revoked");
        let id = issued.split_whitespace().nth(1).unwrap().to_string();
        ok(
            d,
            &[
                "issuer",
                "revoke",
                "--out",
                "revocations.cbor",
                "--epoch",
                "1",
                "--credential",
                &id,
            ],
        );
        let port = gatehouse_testkit::free_udp_port();
        let config = gatehouse_engine::server::SAMPLE_CONFIG
            .replace(
                "listen = \"0.0.0.0:4433\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace(
                "metrics_listen = \"127.0.0.1:9090\"",
                &format!(
                    "metrics_listen = \"127.0.0.1:{}\"",
                    gatehouse_testkit::free_tcp_port()
                ),
            )
            .replace("store = \"memory\"\n", &format!("{store}\n"));
        std::fs::write(d.join("gatehouse.toml"), config).unwrap();
        Site { dir, port }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn serve(&self) -> Server {
        let log = std::fs::File::create(self.d().join("serve.log")).unwrap();
        Server(
            Command::new(env!("CARGO_BIN_EXE_gatehouse"))
                .current_dir(self.d())
                .args(["serve", "--config", "gatehouse.toml"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// `gatehouse scan` to this site's server as `cert`/`key` (files under pki/scanners),
    /// with more options before the token.
    fn scan_as(&self, cert: &str, key: &str, more: &[&str], token: &str) -> Ran {
        let server = format!("127.0.0.1:{}", self.port);
        let cert = format!("pki/scanners/{cert}.pem");
        let key = format!("pki/scanners/{key}.key");
        let mut args = vec![
            "scan",
            "--server",
            &server,
            "--ca",
            "pki/ca.pem",
            "--scanner-cert",
            &cert,
            "--scanner-key",
            &key,
        ];
        args.extend_from_slice(more);
        if !token.is_empty() {
            args.push(token);
        }
        run(self.d(), &args)
    }

    fn scan(&self, more: &[&str], token: &str) -> Ran {
        self.scan_as("gate-1-1", "gate-1-1", more, token)
    }

    /// Scans `token` until the server answers (bounded): exit 3 means not listening yet.
    fn first_answer(&self, token: &str) -> Ran {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.scan(&["--timeout-secs", "1"], token);
            if out.code != Some(UNREACHABLE) {
                return out;
            }
            let log = std::fs::read_to_string(self.d().join("serve.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "no answer: {out:?}\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Every exit code of `scan` that one memory node can give, for real: a token from before the
/// node's start (5), accepted (0), a retry with the same retry key (0, a repeat), a new scan of
/// the used token (1), a revoked credential (1), a key that is not the certificate's (6, before
/// any network), an unreadable CA (6), an unregistered scanner (7), a certificate from another
/// CA (7), usage errors (2).
#[test]
fn scan_exit_codes_against_a_real_node() {
    let site = Site::new("scan-codes", "store = \"memory\"");
    let d = site.d();
    // Signed before the node starts: the node cannot know whether it accepted it in a former
    // life, so it is `node_restarted` (exit 5: present a fresh token), however often it is sent.
    let before = present(d, "wallet", 0);
    let _server = site.serve();
    let out = site.first_answer(&before);
    assert_eq!(out.code, Some(FRESH_TOKEN), "{out:?}");
    assert!(out.stdout.starts_with("node_restarted (22)"), "{out:?}");
    assert!(out.stderr.contains("present a fresh"), "{out:?}");

    // A phone 5 s ahead (the skew) passes the fence a second after the start.
    let deadline = Instant::now() + Duration::from_secs(20);
    let key = "00112233445566778899aabbccddeeff";
    let (token, first) = loop {
        let token = present(d, "wallet", 5);
        let out = site.scan(&["--retry-key", key], &token);
        if out.code != Some(FRESH_TOKEN) || Instant::now() > deadline {
            break (token, out);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(first.code, Some(ACCEPTED), "{first:?}");
    assert!(first.stdout.starts_with("accepted (0)"), "{first:?}");
    assert!(!first.stdout.contains("repeat"), "{first:?}");

    // The same scan again (same token, same retry key): the first verdict, marked as a repeat.
    let retry = site.scan(&["--retry-key", key], &token);
    assert_eq!(retry.code, Some(ACCEPTED), "{retry:?}");
    assert!(retry.stdout.starts_with("accepted (0)"), "{retry:?}");
    assert!(retry.stdout.contains("(repeat:"), "{retry:?}");
    assert!(retry.stdout.contains("unit: 1/1/7/3"), "{retry:?}");
    // A new scan (a fresh key, or another one) of the used token: replayed, a real deny.
    let replayed = site.scan(&[], &token);
    assert_eq!(replayed.code, Some(DENIED), "{replayed:?}");
    assert!(replayed.stdout.starts_with("replayed (13)"), "{replayed:?}");
    let other_key = site.scan(&["--retry-key", &"ab".repeat(16)], &token);
    assert_eq!(other_key.code, Some(DENIED), "{other_key:?}");

    let revoked = site.scan(&[], &present(d, "revoked", 5));
    assert_eq!(revoked.code, Some(DENIED), "{revoked:?}");
    assert!(revoked.stdout.starts_with("revoked (11)"), "{revoked:?}");

    // This scanner's own files: exit 6, and no network needed to say so.
    let mismatch = site.scan_as("gate-1-1", "stranger", &[], &present(d, "wallet", 5));
    assert_eq!(mismatch.code, Some(LOCAL_SETUP), "{mismatch:?}");
    assert!(mismatch.stderr.contains("--scanner-key"), "{mismatch:?}");
    let server = format!("127.0.0.1:{}", site.port);
    let token = present(d, "wallet", 5);
    let scan_files = |ca: &str, cert: &str, key: &str| {
        run(
            d,
            &[
                "scan",
                "--server",
                &server,
                "--ca",
                ca,
                "--scanner-cert",
                cert,
                "--scanner-key",
                key,
                &token,
            ],
        )
    };
    let no_ca = scan_files(
        "pki/missing.pem",
        "pki/scanners/gate-1-1.pem",
        "pki/scanners/gate-1-1.key",
    );
    assert_eq!(no_ca.code, Some(LOCAL_SETUP), "{no_ca:?}");

    // The server refuses this scanner: not registered (its certificate is from the CA) …
    let stranger = site.scan_as("stranger", "stranger", &[], &present(d, "wallet", 5));
    assert_eq!(stranger.code, Some(SCANNER_REFUSED), "{stranger:?}");
    assert!(stranger.stderr.contains("not registered"), "{stranger:?}");
    // … or a registered name on a certificate from another CA.
    ok(
        d,
        &[
            "dev-pki",
            "--out",
            "other",
            "--registry",
            "other.toml",
            "--scanner",
            "gate-1-1=gate:1/1",
        ],
    );
    let foreign = scan_files(
        "pki/ca.pem",
        "other/scanners/gate-1-1.pem",
        "other/scanners/gate-1-1.key",
    );
    assert_eq!(foreign.code, Some(SCANNER_REFUSED), "{foreign:?}");
    // Our CA does not vouch for the server's certificate: our setup (6), not the server's.
    let distrust = scan_files(
        "other/ca.pem",
        "pki/scanners/gate-1-1.pem",
        "pki/scanners/gate-1-1.key",
    );
    assert_eq!(distrust.code, Some(LOCAL_SETUP), "{distrust:?}");

    // Usage errors: clap's code 2.
    for (more, token) in [
        (&[][..], "not a token"),
        (&["--retry-key", "0011"][..], token.as_str()),
        (&["--retry-key", &"zz".repeat(16)][..], token.as_str()),
        (&["--server-name", "not a name"][..], token.as_str()),
    ] {
        let out = site.scan(more, token);
        assert_eq!(out.code, Some(USAGE), "{more:?}: {out:?}");
    }
    let help = ok(d, &["scan", "--help"]);
    for line in [
        "Exit codes:",
        "  3  unreachable",
        "  4  retry",
        "  5  present a fresh token",
        "  6  local setup",
        "  7  the server refused this scanner",
    ] {
        assert!(help.contains(line), "{line:?} not in:\n{help}");
    }
}

/// `--timeout-secs` is the whole budget: to a port where nothing answers, `scan` keeps trying
/// for 3 s (it gave up after about 2 s, "no response within 500ms", whatever it was given),
/// then exits 3 and prints the retry key to send the same scan again with.
#[test]
fn a_dead_port_gets_the_whole_timeout() {
    let dir = Dir::new("scan-dead");
    let d = dir.path();
    ok(
        d,
        &["dev-pki", "--out", "pki", "--scanner", "gate-1-1=gate:1/1"],
    );
    // Hex bytes: the token is not looked at before an answer.
    let token = "00";
    let dead = format!("127.0.0.1:{}", gatehouse_testkit::free_udp_port());
    let out = run(
        d,
        &[
            "scan",
            "--server",
            &dead,
            "--timeout-secs",
            "3",
            "--ca",
            "pki/ca.pem",
            "--scanner-cert",
            "pki/scanners/gate-1-1.pem",
            "--scanner-key",
            "pki/scanners/gate-1-1.key",
            token,
        ],
    );
    assert_eq!(out.code, Some(UNREACHABLE), "{out:?}");
    assert!(
        out.took >= Duration::from_secs(3) && out.took < Duration::from_secs(6),
        "{out:?}"
    );
    assert!(out.stderr.contains("no answer within 3 s"), "{out:?}");
    assert!(out.stderr.contains("--retry-key "), "{out:?}");
}

/// A node whose one-time-use store (Redis, at a closed port) does not answer cannot judge a
/// token: `unavailable`, a retryable reason (SPEC §9), is exit 4, not a deny (it was 1).
#[test]
fn a_node_that_cannot_judge_is_retry_not_deny() {
    let closed = gatehouse_testkit::free_tcp_port();
    let store = format!("store = \"redis\"\nurls = [\"redis://127.0.0.1:{closed}\"]");
    let site = Site::new("scan-retry", &store);
    let _server = site.serve();
    let out = site.first_answer(&present(site.d(), "wallet", 5));
    assert_eq!(out.code, Some(RETRY), "{out:?}");
    assert!(out.stdout.starts_with("unavailable (21)"), "{out:?}");
    assert!(out.stderr.contains("--retry-key "), "{out:?}");
}

/// `issuer …` usage errors exit 2, clap's own code, and name the flag (they exited 1, as a
/// failure of the command would): a missing or contradictory option, a value that is not one
/// of those listed, an id that is not 16 bytes of hex. A refused overwrite is not a usage
/// error: it stays 1.
#[test]
fn issuer_usage_errors_exit_2() {
    let dir = Dir::new("issuer-usage");
    let d = dir.path();
    ok(d, &["issuer", "keygen", "--out", "."]);
    ok(d, &["issuer", "revocation-keygen", "--out", "."]);
    let id = "00112233445566778899aabbccddeeff";
    let cases: &[(&[&str], &str)] = &[
        (&["revoke", "--out", "r.cbor"], "--epoch"),
        (&["revoke", "--feed", "feed"], "--key"),
        (
            &[
                "revoke",
                "--feed",
                "feed",
                "--key",
                "revocation.key",
                "--epoch",
                "2",
            ],
            "--epoch",
        ),
        (
            &[
                "revoke",
                "--feed",
                "feed",
                "--key",
                "revocation.key",
                "--out",
                "r.cbor",
            ],
            "--out",
        ),
        (&["revoke", "--feed-key", "k", "--epoch", "1"], "--feed"),
        (
            &["revoke", "--epoch", "1", "--reinstate-credential", id],
            "--base",
        ),
        (
            &["revoke", "--epoch", "1", "--credential", "0011"],
            "--credential",
        ),
        (&["revoke", "--epoch", "1", "--subject", "xyz"], "--subject"),
        (
            &["issue", "--key", "issuer.key", "--type", "tank"],
            "military_id",
        ),
        (
            &["issue", "--key", "issuer.key", "--category", "general"],
            "enlisted",
        ),
        (&["issue", "--key", "issuer.key", "--unit", "1/x"], "--unit"),
        (
            &["issue", "--key", "issuer.key", "--birth", "20011340"],
            "--birth",
        ),
        (
            &["issue", "--key", "issuer.key", "--sponsor", "00"],
            "--sponsor",
        ),
        (
            &[
                "issue",
                "--key",
                "issuer.key",
                "--entitlement",
                "free_lunch",
            ],
            "welfare_facilities",
        ),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, named) in cases {
        let mut all = vec!["issuer"];
        all.extend_from_slice(args);
        let out = run(d, &all);
        assert_eq!(out.code, Some(USAGE), "{all:?}: {out:?}");
        assert!(
            out.stderr.contains(named),
            "{all:?} does not name {named}: {out:?}"
        );
    }
    // Nothing was written by any of them.
    assert!(!d.join("r.cbor").exists() && !d.join("feed").exists() && !d.join("wallet").exists());

    // The same commands, well formed, run.
    ok(
        d,
        &[
            "issuer",
            "revoke",
            "--out",
            "r.cbor",
            "--epoch",
            "1",
            "--credential",
            id,
        ],
    );
    ok(
        d,
        &[
            "issuer",
            "revoke",
            "--out",
            "d.cbor",
            "--epoch",
            "2",
            "--base",
            "1",
            "--reinstate-credential",
            id,
        ],
    );
    ok(
        d,
        &[
            "issuer",
            "revoke",
            "--feed",
            "feed",
            "--key",
            "revocation.key",
            "--subject",
            id,
        ],
    );
    ok(
        d,
        &[
            "issuer",
            "issue",
            "--key",
            "issuer.key",
            "--type",
            "family_member",
            "--category",
            "spouse",
            "--unit",
            "1/12",
            "--birth",
            "20010101",
            "--sponsor",
            id,
            "--entitlement",
            "base_entry",
        ],
    );
    ok(
        d,
        &[
            "issuer",
            "issue",
            "--key",
            "issuer.key",
            "--out",
            "leave",
            "--type",
            "leave_pass",
            "--category",
            "officer",
        ],
    );
    // A refusal to overwrite is the command failing, not a usage error.
    let again = run(d, &["issuer", "keygen", "--out", "."]);
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("--force"), "{again:?}");
}

/// Every file under `dir` (recursively) and its bytes.
fn files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

/// The ids registered in a scanner registry, in order.
fn registered(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("id = \""))
        .map(|l| l.trim_end_matches('"').to_string())
        .collect()
}

/// `dev-pki` on an existing PKI adds only what it is told to, and replaces a key or a
/// certificate only when asked by name and with --force. `dev-pki --out p --force` on a PKI
/// with only gate-9 used to register the three default scanners and issue them keys; it now
/// changes nothing. The default scanners are for a new PKI only. Wallets, lists and keys are
/// not replaced without --force either.
#[test]
fn dev_pki_adds_only_what_it_is_told_to() {
    let dir = Dir::new("dev-pki-add");
    let d = dir.path();
    let registry = d.join("scanners.toml");
    let pki = d.join("p");
    ok(d, &["dev-pki", "--out", "p", "--scanner", "gate-9=gate:9"]);
    assert_eq!(registered(&registry), ["gate-9"]);
    let first = files(&pki);
    assert_eq!(
        first
            .keys()
            .map(|p| p.to_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "ca.key",
            "ca.pem",
            "scanners/gate-9.key",
            "scanners/gate-9.pem",
            "server.key",
            "server.pem"
        ]
    );

    // The reproduction: nothing named, with and without --force. Nothing is issued, nothing
    // registered, no file changed.
    for args in [&["--force"][..], &[][..]] {
        let mut all = vec!["dev-pki", "--out", "p"];
        all.extend_from_slice(args);
        let out = ok(d, &all);
        assert!(out.contains("0 files written"), "{out}");
        assert!(!out.contains("registered"), "{out}");
        assert_eq!(registered(&registry), ["gate-9"], "{all:?}");
        assert!(files(&pki) == first, "{all:?} changed files");
    }

    // One scanner added: its two files, and nothing else changes.
    let out = ok(
        d,
        &["dev-pki", "--out", "p", "--scanner", "gate-10=gate:10"],
    );
    assert!(out.contains("2 files written (existing CA kept)"), "{out}");
    assert_eq!(registered(&registry), ["gate-9", "gate-10"]);
    let second = files(&pki);
    for (path, bytes) in &first {
        assert!(second[path] == *bytes, "{} changed", path.display());
    }
    assert_eq!(second.len(), first.len() + 2);

    // A scanner named again without --force is kept as it is.
    ok(d, &["dev-pki", "--out", "p", "--scanner", "gate-9=gate:9"]);
    assert!(files(&pki) == second);

    // With --force, only what is named is replaced: gate-9's key and certificate.
    ok(
        d,
        &["dev-pki", "--out", "p", "--scanner", "gate-9", "--force"],
    );
    let third = files(&pki);
    for (path, bytes) in &second {
        let replaced = path.to_str().unwrap().starts_with("scanners/gate-9.");
        assert_eq!(third[path] != *bytes, replaced, "{}", path.display());
    }
    assert_eq!(registered(&registry), ["gate-9", "gate-10"]);

    // A server name reissues the server certificate: refused without --force (nothing
    // written), and with it only server.pem and server.key change.
    let refused = run(
        d,
        &["dev-pki", "--out", "p", "--server-name", "gate.example"],
    );
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("--force"), "{refused:?}");
    assert!(files(&pki) == third);
    ok(
        d,
        &[
            "dev-pki",
            "--out",
            "p",
            "--server-name",
            "gate.example",
            "--force",
        ],
    );
    let fourth = files(&pki);
    for (path, bytes) in &third {
        let replaced = path.to_str().unwrap().starts_with("server.");
        assert_eq!(fourth[path] != *bytes, replaced, "{}", path.display());
    }

    // A CA key whose certificate is gone is not replaced by a new CA, even with --force.
    std::fs::rename(pki.join("ca.pem"), d.join("ca.pem.aside")).unwrap();
    let lost = run(
        d,
        &["dev-pki", "--out", "p", "--scanner", "gate-11", "--force"],
    );
    assert_ne!(lost.code, Some(0), "{lost:?}");
    assert!(lost.stderr.contains("ca.pem"), "{lost:?}");
    assert!(files(&pki)[Path::new("ca.key")] == fourth[Path::new("ca.key")]);
    assert!(!pki.join("scanners/gate-11.pem").exists());
    std::fs::rename(d.join("ca.pem.aside"), pki.join("ca.pem")).unwrap();

    // A bad scanner is a usage error (2), and nothing is written.
    for bad in ["gate/9", "x=boss", "g=gate"] {
        let out = run(d, &["dev-pki", "--out", "p", "--scanner", bad]);
        assert_eq!(out.code, Some(USAGE), "{bad}: {out:?}");
    }
    assert!(files(&pki) == fourth);

    // A new PKI with no scanner named gets the documented defaults.
    let fresh = Dir::new("dev-pki-new");
    let out = ok(fresh.path(), &["dev-pki", "--out", "pki"]);
    assert!(
        out.contains("registered in scanners.toml: gate-1-1, partner-1, age-1"),
        "{out}"
    );

    // Wallets, lists and keys: refused without --force (exit 1, the file unchanged), replaced
    // with it.
    ok(d, &["issuer", "keygen", "--out", "."]);
    ok(d, &["issuer", "revocation-keygen", "--out", "."]);
    ok(
        d,
        &["issuer", "issue", "--key", "issuer.key", "--out", "wallet"],
    );
    ok(d, &["issuer", "revoke", "--out", "r.cbor", "--epoch", "1"]);
    for args in [
        &["issuer", "keygen", "--out", "."][..],
        &["issuer", "revocation-keygen", "--out", "."][..],
        &["issuer", "issue", "--key", "issuer.key", "--out", "wallet"][..],
        &["issuer", "revoke", "--out", "r.cbor", "--epoch", "2"][..],
    ] {
        let kept = files(d);
        let out = run(d, args);
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.contains("--force"), "{args:?}: {out:?}");
        assert!(files(d) == kept, "{args:?} changed files");
        let mut forced = args.to_vec();
        forced.push("--force");
        ok(d, &forced);
        assert!(files(d) != kept, "{forced:?} replaced nothing");
    }
}

/// The mdoc reader's flow through the real binaries, as the README shows it: `gatehouse mdoc`
/// makes a test IACA, a document signer, an mDL and a presentation; the node trusts the IACA
/// (`files.mdoc_iaca`); `gatehouse scan --mdoc` sends the presentation. An age counter learns
/// `iso_age_over_19` (exit 0); the same session again is `replayed` (exit 1); a gate without
/// `mdoc_doc_types` does not admit it; a token and `--mdoc` together are a usage error.
#[test]
fn an_mdoc_presentation_goes_from_gatehouse_mdoc_to_gatehouse_scan() {
    let site = Site::new("scan-mdoc", "store = \"memory\"");
    let d = site.d();
    ok(
        d,
        &["dev-pki", "--out", "pki", "--scanner", "age-1=age_check"],
    );
    ok(d, &["mdoc", "iaca", "--out", "iaca"]);
    ok(d, &["mdoc", "signer", "--iaca", "iaca", "--out", "ds"]);
    ok(
        d,
        &[
            "mdoc",
            "issue",
            "--signer",
            "ds",
            "--out",
            "jane.mdl",
            "--birth-date",
            "1990-05-01",
        ],
    );
    let config = std::fs::read_to_string(d.join("gatehouse.toml")).unwrap();
    let config = config.replacen("[files]\n", "[files]\nmdoc_iaca = \"iaca/iaca.pem\"\n", 1);
    std::fs::write(d.join("gatehouse.toml"), config).unwrap();
    let _server = site.serve();
    // Up when a token gets an answer; a session that began before the node's fence (its start
    // plus the 5 s skew) would be `node_restarted`: begin it after.
    let token = present(d, "wallet", 0);
    site.first_answer(&token);
    std::thread::sleep(Duration::from_secs(7));
    ok(
        d,
        &[
            "mdoc",
            "present",
            "--document",
            "jane.mdl",
            "--disclose",
            "age_over_19",
            "--out",
            "session",
        ],
    );

    let age = site.scan_as("age-1", "age-1", &["--mdoc", "session"], "");
    assert_eq!(age.code, Some(ACCEPTED), "{age:?}");
    assert!(age.stdout.contains("iso_age_over_19"), "{age:?}");
    let again = site.scan_as("age-1", "age-1", &["--mdoc", "session"], "");
    assert_eq!(again.code, Some(DENIED), "{again:?}");
    assert!(again.stdout.starts_with("replayed (13)"), "{again:?}");

    ok(
        d,
        &[
            "mdoc",
            "present",
            "--document",
            "jane.mdl",
            "--out",
            "session2",
        ],
    );
    let gate = site.scan(&["--mdoc", "session2"], "");
    assert_eq!(gate.code, Some(DENIED), "{gate:?}");
    assert!(gate.stdout.starts_with("not_admitted (15)"), "{gate:?}");

    let both = site.scan(&["--mdoc", "session2"], &token);
    assert_eq!(both.code, Some(USAGE), "{both:?}");
}
