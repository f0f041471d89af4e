//! `--mdoc-share`: ISO/IEC 18013-5 mdoc presentations mixed into a rush against a real
//! `gatehouse serve` on loopback (the CI-sized rush: 10,000 holders, 500 req/s at the peak,
//! 1 s up, 3 s peak, 1 s down), the node started trusting the pool's test IACA.
//!
//! - a fifth of the genuine arrivals go as VerifyMdoc requests: every one answered, as the
//!   pool expects (gates admit the mDL, partners say not eligible, age counters judge
//!   age_over_19), replays of them `replayed`, 0 mismatches, 0 errors;
//! - a fixed-rate sweep step carries the same counts;
//! - with `--target` or `--shard` (processes whose nodes do not trust this IACA) the share is
//!   refused before anything runs.
//!
//! Needs the `gatehouse` binary (see `tests/rush.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use support::{budget, ci_rush, gatehouse, harness, report_path, show};

/// The runs share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The salt of the rush: its schedule (which arrivals are mdoc, which replays repeat one) is
/// the same every time, and the spawned engine is new, so repeating it is no replay.
const SALT: &str = "5a17ed00000d0c01";

#[test]
fn mdoc_presentations_in_a_rush_get_the_verdicts_the_pool_expects() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let path = report_path("mdoc");
    let ci = budget("ci.toml");
    let (out, r) = ci_rush(
        &[
            "--quiet",
            "--mdoc-share",
            "0.2",
            "--run-salt",
            SALT,
            "--budget",
            ci.to_str().unwrap(),
        ],
        &path,
        Duration::from_secs(90),
    );
    assert!(out.status.success(), "{}", show(&out));
    let run = &r["run"];
    assert_eq!(run["mismatches"], 0, "{}", show(&out));
    assert_eq!(run["errors"], 0, "{}", show(&out));
    assert_eq!(r["model"]["mdoc_share"], 0.2);
    let m = &run["mdoc"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let (presentations, replays) = (n(&m["presentations"]), n(&m["replays"]));
    // About a fifth of the ~1,850 genuine arrivals of the plan.
    assert!(
        (250..500).contains(&presentations),
        "{presentations} mdoc presentations: {m}"
    );
    assert!(replays > 0, "no replay of an mdoc presentation: {m}");
    assert_eq!(n(&m["sent"]), presentations + replays, "{m}");
    assert_eq!(n(&m["answered"]), n(&m["sent"]), "{m}");
    assert_eq!(m["errors"], 0, "{m}");
    assert_eq!(m["mismatches"], 0, "{m}");
    assert_eq!(m["documents"], 2000, "{m}");
    assert_eq!(m["verdicts"], m["expected"], "{m}");
    // Gates and age counters accept, partners (and age counters, for the under-19s) deny,
    // welfare gates do not admit an mDL, and a repeated session is a replay.
    for reason in ["accepted", "not_eligible", "not_admitted", "replayed"] {
        assert!(n(&m["verdicts"][reason]) > 0, "no {reason}: {m}");
    }
    assert_eq!(n(&m["verdicts"]["replayed"]), replays, "{m}");
    // Their own latency line, and their verdicts among the run's.
    assert_eq!(
        n(&run["scenarios"]["mdoc"]["count"]),
        presentations,
        "{run}"
    );
    assert!(n(&run["verdicts"]["accepted"]) > n(&m["verdicts"]["accepted"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "mdoc       {presentations} presentations and {replays} replays of them"
        )),
        "{text}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_sweep_step_carries_its_mdoc_presentations() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let path = report_path("mdoc-sweep");
    let out = Command::new(harness())
        .args([
            "sweep",
            "--holders",
            "10000",
            "--spawn",
            "--quiet",
            "--rates",
            "200",
            "--step-secs",
            "2",
            "--mdoc-share",
            "0.5",
            "--budget",
        ])
        .arg(budget("ci.toml"))
        .arg("--report")
        .arg(&path)
        .arg("--gatehouse-bin")
        .arg(gatehouse())
        .output()
        .expect("running gatehouse-loadtest sweep");
    assert!(out.status.success(), "{}", show(&out));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let m = &r["sweep"]["steps"][0]["run"]["mdoc"];
    assert!(m["answered"].as_u64().unwrap() > 100, "{m}");
    assert_eq!(m["mismatches"], 0, "{m}");
    assert_eq!(m["errors"], 0, "{m}");
    assert_eq!(r["model"]["mdoc_share"], 0.5);
    let _ = std::fs::remove_file(path);
}

#[test]
fn an_mdoc_share_is_refused_where_the_nodes_cannot_trust_this_processs_iaca() {
    let refused = |args: &[&str], says: &str| {
        let out = Command::new(harness())
            .args(["rush", "--holders", "100", "--quiet"])
            .args(args)
            .output()
            .expect("running gatehouse-loadtest");
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{}", show(&out));
    };
    refused(
        &[
            "--target",
            "127.0.0.1:9",
            "--cert-dir",
            "/nonexistent",
            "--mdoc-share",
            "0.2",
        ],
        "--mdoc-share needs --spawn",
    );
    refused(
        &["--spawn", "--shard", "1/2", "--mdoc-share", "0.2"],
        "cannot be split with --shard",
    );
    refused(
        &["--spawn", "--mdoc-share", "1.5"],
        "give a share from 0 to 1",
    );
}
