//! `gatehouse demo --mdoc-share`: a small rush on loopback in which a share of the genuine
//! presentations are ISO/IEC 18013-5 mDL presentations (VerifyMdoc). They must be sent, get
//! the verdicts the mDL pool implies (0 mismatches), and be counted in the report on their own.
//! Every wait is bounded; the demo process is killed if it outlives its bound.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_testkit::Killed;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// Runs `gatehouse demo args…` and returns its exit success, stdout and stderr; fails the test
/// if it takes longer than `bound`.
fn demo(args: &[&str], bound: Duration) -> (bool, String, String) {
    let mut child = Killed(
        Command::new(BIN)
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gatehouse demo"),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < bound,
            "gatehouse demo {args:?} still running after {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

#[test]
fn a_demo_with_an_mdoc_share_sends_mdoc_presentations_and_gets_their_verdicts() {
    let (ok, out, err) = demo(
        &[
            "--holders",
            "500",
            "--seconds",
            "2",
            "--rate",
            "200",
            "--mdoc-share",
            "0.3",
            "--json",
        ],
        Duration::from_secs(120),
    );
    assert!(ok, "the demo failed:\n{out}{err}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["mismatches"], 0, "{v:#}");
    assert_eq!(v["errors"], 0, "{v:#}");

    let m = &v["mdoc"];
    let sent = m["requests"].as_u64().unwrap();
    let requests = v["requests"].as_u64().unwrap();
    // About 400 requests, 93 % of them genuine presentations, 30 % of those mdoc ones.
    assert!(
        (40..requests).contains(&sent),
        "{sent} mdoc presentations of {requests} requests: {m:#}"
    );
    assert_eq!(m["share"], 0.3, "{m:#}");
    assert_eq!(m["mismatches"], 0, "{m:#}");
    assert_eq!(m["errors"], 0, "{m:#}");
    assert_eq!(m["documents"], 500, "{m:#}");
    let verdicts = m["verdicts"].as_object().unwrap();
    assert_eq!(
        verdicts.values().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        sent,
        "{m:#}"
    );
    // Division gates admit mDLs, partners cannot use them, age counters accept four holders
    // in five: both answers must come back.
    for reason in ["accepted", "not_eligible"] {
        assert!(
            verdicts.get(reason).and_then(|n| n.as_u64()).unwrap_or(0) > 0,
            "no {reason} among the mdoc verdicts: {m:#}"
        );
    }
    // They are counted with the rest too.
    for (reason, n) in verdicts {
        assert!(
            v["verdicts"][reason].as_u64().unwrap() >= n.as_u64().unwrap(),
            "{v:#}"
        );
    }
    assert!(m["latency_us"]["p99"].as_u64().unwrap() > 0, "{m:#}");
}

#[test]
fn an_mdoc_share_outside_zero_to_one_is_refused() {
    let (ok, out, err) = demo(
        &["--holders", "100", "--seconds", "1", "--mdoc-share", "1.5"],
        Duration::from_secs(30),
    );
    assert!(!ok, "--mdoc-share 1.5 was accepted:\n{out}{err}");
    assert!(err.contains("--mdoc-share"), "{err}");
}
