//! Fleet runs of the harness, CI-sized: `rush --spawn --nodes 2 --store redis` starts two
//! `gatehouse serve` nodes on one loopback Redis, spreads the scanners over them, and sends
//! every replay to the other node than its original's.
//!
//! - two nodes sharing Redis: per-node and total figures are reported, 0 mismatches, and the
//!   cross-node replays came back `replayed`;
//! - two nodes each on its own Redis (`--split-store`): they do not agree, so the cross-node
//!   replays are accepted again and the run fails — the first test would catch a fleet that
//!   does not share its one-time use;
//! - two nodes on the memory store are refused before anything starts.
//!
//! Needs the `gatehouse` binary as `tests/rush.rs` does, and `redis-server` (`scripts/test`
//! installs it). Every process a run starts is stopped by the harness when the run ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use support::{budget, ci_rush, gatehouse, harness, report_path, show};

/// The runs share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A CI-sized rush against two spawned nodes on Redis.
fn fleet_rush(extra: &[&str], report: &Path) -> (Output, serde_json::Value) {
    let budget = budget("ci.toml");
    let mut args = vec![
        "--nodes",
        "2",
        "--store",
        "redis",
        // Debug builds on two shared cores: a mark may wait for the CPU longer than the
        // production default of 50 ms.
        "--redis-timeout-ms",
        "1000",
        "--quiet",
        "--budget",
        budget.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ci_rush(&args, report, Duration::from_secs(120))
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn two_nodes_on_one_redis_agree_and_every_cross_node_replay_is_replayed() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let path = report_path("fleet-shared");
    let (out, r) = fleet_rush(&[], &path);
    assert!(out.status.success(), "{}", show(&out));
    let run = &r["run"];
    assert_eq!(run["mismatches"], 0, "{}", show(&out));
    assert_eq!(run["errors"], 0, "{}", show(&out));
    assert_eq!(r["target"]["nodes"].as_array().unwrap().len(), 2);
    assert!(
        r["target"]["store"].as_str().unwrap().starts_with("redis "),
        "{}",
        r["target"]
    );

    // Per node: each was sent requests, answered them, gave accepts, and was timed.
    let nodes = run["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{run}");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(u(&n["node"]), i as u64);
        assert!(u(&n["requests"]) > 200, "node {i}: {n}");
        assert_eq!(n["requests"], n["answered"], "node {i}: {n}");
        assert_eq!(n["mismatches"], 0, "node {i}: {n}");
        assert!(u(&n["verdicts"]["accepted"]) > 0, "node {i}: {n}");
        assert!(u(&n["verdicts"]["replayed"]) > 0, "node {i}: {n}");
        assert!(u(&n["latency_us"]["p50_us"]) > 0, "node {i}: {n}");
        assert!(u(&n["latency_us"]["p99_us"]) >= u(&n["latency_us"]["p50_us"]));
        assert!(n["cpu_secs"].as_f64().unwrap() > 0.0, "node {i}: {n}");
    }
    // The total is the nodes' sum.
    let sum = |k: &str| nodes.iter().map(|n| u(&n[k])).sum::<u64>();
    assert_eq!(sum("answered"), u(&run["answered"]));
    assert_eq!(
        nodes
            .iter()
            .map(|n| u(&n["verdicts"]["accepted"]))
            .sum::<u64>(),
        u(&run["verdicts"]["accepted"])
    );
    let engine_cpu = run["cpu"]["engine_secs"].as_f64().unwrap();
    let node_cpu: f64 = nodes.iter().map(|n| n["cpu_secs"].as_f64().unwrap()).sum();
    assert!((engine_cpu - node_cpu).abs() < 1e-6, "{}", run["cpu"]);
    // The Redis the harness started is accounted for too.
    assert!(
        run["cpu"]["redis_secs"].as_f64().is_some_and(|s| s >= 0.0),
        "{}",
        run["cpu"]
    );
    // So are the nodes' context switches (every answer wakes a thread of theirs).
    assert!(
        run["cpu"]["engine_context_switches"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{}",
        run["cpu"]
    );

    // Replays crossed nodes, and the other node knew the token was used.
    let c = &run["cross_node_replays"];
    assert!(u(&c["expected_replayed"]) > 0, "{c}");
    assert_eq!(c["replayed"], c["expected_replayed"], "{c}");
    assert!(u(&c["judged"]) >= u(&c["expected_replayed"]));
    let checks = r["budget"]["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|k| k["name"] == "cross-node replays" && k["passed"] == true),
        "{checks:?}"
    );
    // Both nodes enforce one revocation state, compared by digest from their /readyz.
    let states = run["revocation_states"].as_array().unwrap();
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(states[0], states[1]);
    assert!(
        states[0].as_str().unwrap().contains(" digest "),
        "{states:?}"
    );
    assert!(
        checks
            .iter()
            .any(|k| k["name"] == "revocation states agree" && k["passed"] == true),
        "{checks:?}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("per node"), "{text}");
    assert!(text.contains("cross-node replays"), "{text}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn nodes_on_separate_redis_servers_fail_on_cross_node_replays() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let path = report_path("fleet-split");
    let (out, r) = fleet_rush(&["--split-store"], &path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("budget missed: cross-node replays"),
        "{}",
        show(&out)
    );
    assert!(
        stderr.contains("budget missed: mismatches"),
        "{}",
        show(&out)
    );
    let run = &r["run"];
    let c = &run["cross_node_replays"];
    assert!(u(&c["expected_replayed"]) > 0, "{c}");
    // Each node saw only its own tokens: the first replay of one on the other node is
    // accepted (or denied by policy) instead of `replayed`. (A second replay of the same
    // token finds the first in that node's Redis, so a few do come back `replayed`.)
    let missed = u(&c["expected_replayed"]) - u(&c["replayed"]);
    assert!(missed * 2 > u(&c["expected_replayed"]), "{c}");
    assert!(u(&run["mismatches"]) >= missed, "{run}");
    assert!(run["mismatch_examples"][0]
        .as_str()
        .unwrap()
        .contains("expected replayed"));
    let _ = std::fs::remove_file(path);
}

/// Runs the harness with `args`; it must refuse them (exit 2) before starting anything.
/// Returns its standard error.
fn refused(args: &[&str]) -> String {
    let out = Command::new(harness())
        .args(args)
        .arg("--gatehouse-bin")
        .arg(gatehouse())
        .output()
        .expect("running gatehouse-loadtest");
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn several_nodes_on_the_memory_store_are_refused() {
    let stderr = refused(&[
        "rush",
        "--holders",
        "10000",
        "--spawn",
        "--nodes",
        "2",
        "--store",
        "memory",
        "--quiet",
    ]);
    assert!(
        stderr.contains("--nodes 2 with --store memory") && stderr.contains("use --store redis"),
        "{stderr}"
    );
    // One entry per node for --pin.
    let stderr = refused(&[
        "sweep",
        "--holders",
        "10000",
        "--spawn",
        "--nodes",
        "2",
        "--store",
        "redis",
        "--pin",
        "0",
        "--quiet",
    ]);
    assert!(stderr.contains("one per node"), "{stderr}");
}
