//! The harness against a real `gatehouse serve` on loopback, CI-sized: 10,000 holders, the
//! modelled 1,000,000-holder rush rate (500 req/s at the peak) for a few seconds.
//!
//! - a correct engine passes its budget with zero mismatches;
//! - the same rush with an impossible budget (p99 ≤ 1 µs) exits non-zero, naming p99;
//! - an engine started without its revocation list accepts revoked holders, and the run fails
//!   on mismatches.
//!
//! Needs the `gatehouse` binary: `$GATEHOUSE_BIN`, or `target/<profile>/gatehouse` beside the
//! harness (a workspace `cargo test` builds it for the engine's own tests; alone, run
//! `cargo build -p gatehouse-engine --bin gatehouse` first). The population is cached under
//! `loadtest/cache/` (about 12 s to generate the first time, in a debug build).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use support::{budget, ci_rush, gatehouse, harness, report_path, show};

/// The runs share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A CI-sized rush against one spawned engine.
fn rush(extra: &[&str], report: &Path) -> (Output, serde_json::Value) {
    let mut args = vec!["--quiet"];
    args.extend_from_slice(extra);
    ci_rush(&args, report, Duration::from_secs(90))
}

#[test]
fn rush_against_a_real_engine_passes_its_budget_with_zero_mismatches() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let path = report_path("pass");
    let budget = budget("ci.toml");
    let (out, r) = rush(&["--budget", budget.to_str().unwrap()], &path);
    assert!(out.status.success(), "{}", show(&out));
    let run = &r["run"];
    assert_eq!(run["mismatches"], 0, "{}", show(&out));
    assert_eq!(run["errors"], 0, "{}", show(&out));
    assert!(run["answered"].as_u64().unwrap() > 1000, "{run}");
    // The mix reached the engine: each kind of deny was asked for and given.
    for reason in [
        "accepted",
        "revoked",
        "expired",
        "replayed",
        "bad_device_signature",
        "malformed",
        "stale",
    ] {
        assert!(
            run["verdicts"][reason].as_u64().unwrap_or(0) > 0,
            "no {reason} verdict: {}",
            run["verdicts"]
        );
    }
    assert_eq!(r["passed"], true);
    assert!(r["budget"]["checks"].as_array().unwrap().len() >= 4);
    assert!(run["latency_us"]["p99_us"].as_u64().unwrap() > 0);
    assert!(run["phases"]["peak"]["count"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_file(path);
}

#[test]
fn an_impossible_budget_fails_the_run() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let path = report_path("impossible");
    let budget = budget("impossible.toml");
    let (out, r) = rush(&["--budget", budget.to_str().unwrap()], &path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("budget missed: p99"), "{}", show(&out));
    assert_eq!(r["passed"], false);
    assert_eq!(r["run"]["mismatches"], 0, "only latency missed");
    let _ = std::fs::remove_file(path);
}

#[test]
fn an_engine_without_revocations_fails_on_mismatches() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let path = report_path("norev");
    let (out, r) = rush(&["--no-revocations"], &path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("budget missed: mismatches"),
        "{}",
        show(&out)
    );
    let run = &r["run"];
    assert!(run["mismatches"].as_u64().unwrap() > 0);
    assert!(run["expected"]["revoked"].as_u64().unwrap() > 0);
    assert_eq!(run["verdicts"]["revoked"].as_u64().unwrap_or(0), 0);
    assert_eq!(r["target"]["revocations_loaded"], false);
    assert!(run["mismatch_examples"][0]
        .as_str()
        .unwrap()
        .contains("expected revoked"));
    let _ = std::fs::remove_file(path);
}

#[test]
fn goose_scenarios_run_closed_loop_and_write_goose_reports() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("gatehouse-loadtest-goose-{}", std::process::id()));
    let path = report_path("goose");
    let out = Command::new(harness())
        .args([
            "goose",
            "--holders",
            "10000",
            "--spawn",
            "--quiet",
            "--users",
            "12",
            "--ramp-up-secs",
            "1",
            "--peak-secs",
            "3",
            "--ramp-down-secs",
            "1",
            "--think-min-ms",
            "50",
            "--think-max-ms",
            "150",
            "--report-dir",
        ])
        .arg(&dir)
        .arg("--report")
        .arg(&path)
        .arg("--gatehouse-bin")
        .arg(gatehouse())
        .output()
        .expect("running gatehouse-loadtest goose");
    assert!(out.status.success(), "{}", show(&out));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let g = &r["goose"];
    assert!(g["requests"].as_u64().unwrap() > 50, "{g}");
    assert_eq!(g["mismatches"], 0);
    for ext in ["html", "json", "md"] {
        let f = dir.join(format!("goose.{ext}"));
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.contains("QUIC"),
            "{} names the QUIC requests",
            f.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(path);
}
