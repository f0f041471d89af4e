//! One plan, many shards, merged, CI-sized: `rush --shard I/N` runs part of the CI rush, and
//! `merge` adds the shards' reports up.
//!
//! - two shards against a fleet a test helper started (`stage --spawn`: two nodes on one
//!   loopback Redis), named with `--target A,B`, merged: the plan one process draws with the
//!   same salt, every request answered, 0 mismatches, every cross-node replay refused, every
//!   node reached by both shards; `merge` exits with the merged budget result (0 held, 1
//!   missed);
//! - with `--spawn` each shard starts its own engine, and the shards still merge; a shard
//!   given `--start-at` waits for it, and one that starts after it fails its report (and so
//!   does the merge);
//! - a sweep of fixed rates split over two shards at the same instants merges step by step,
//!   its knee found from the merged steps;
//! - the harness refuses what cannot be one run: `sweep --shard` without `--rates`, `--spawn`
//!   with `--target`.
//!
//! Needs the `gatehouse` binary and `redis-server` as `tests/fleet.rs` does. Every process a
//! test starts is stopped when it ends, also on failure (the stage's guard closes its stdin,
//! then kills it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{budget, ci_rush, gatehouse, harness, report_path, show, CI_RUSH};

/// The runs share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const SALT: &str = "5a17ed0000c1c1c1";

/// Nodes `stage --spawn` keeps running until its stdin closes.
struct Stage {
    child: Child,
    stdin: Option<ChildStdin>,
    target: String,
    metrics: String,
    cert_dir: PathBuf,
}

impl Stage {
    /// Starts `stage --spawn` with `extra` and waits (at most 90 s) for its target, metrics
    /// and cert-dir lines.
    fn start(extra: &[&str], name: &str) -> Stage {
        let cert_dir = std::env::temp_dir().join(format!(
            "gatehouse-loadtest-stage-{}-{name}",
            std::process::id()
        ));
        let mut child = Command::new(harness())
            .args(["stage", "--spawn", "--holders", "10000", "--quiet"])
            .args(extra)
            .arg("--out")
            .arg(&cert_dir)
            .arg("--gatehouse-bin")
            .arg(gatehouse())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting gatehouse-loadtest stage");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stage = Stage {
            child,
            stdin,
            target: String::new(),
            metrics: String::new(),
            cert_dir,
        };
        let end = Instant::now() + Duration::from_secs(90);
        let mut ready = false;
        while !ready {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(t) = line.strip_prefix("target ") {
                        stage.target = t.to_string();
                    }
                    if let Some(m) = line.strip_prefix("metrics ") {
                        stage.metrics = m.to_string();
                    }
                    // The last line it prints.
                    ready = line.starts_with("cert-dir ");
                }
                Err(_) => panic!("stage printed no cert-dir within 90 s"),
            }
        }
        stage
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // Its stdin closed, it stops its nodes and Redis and exits; killed if it does not.
        drop(self.stdin.take());
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.cert_dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.cert_dir);
    }
}

/// The CI rush's arguments without `--spawn` (the last).
fn ci_plan() -> &'static [&'static str] {
    &CI_RUSH[..CI_RUSH.len() - 1]
}

/// Shard `i` of `n` of the CI rush against `stage`, writing its report to `report`.
fn shard_against(stage: &Stage, i: usize, n: usize, report: &Path) -> std::process::Child {
    Command::new(harness())
        .args(ci_plan())
        .args([
            "--quiet",
            "--run-salt",
            SALT,
            "--request-timeout-ms",
            "10000",
        ])
        .arg("--shard")
        .arg(format!("{i}/{n}"))
        .arg("--target")
        .arg(&stage.target)
        .arg("--metrics")
        .arg(&stage.metrics)
        .arg("--cert-dir")
        .arg(&stage.cert_dir)
        .arg("--budget")
        .arg(budget("ci.toml"))
        .arg("--report")
        .arg(report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a shard")
}

/// Waits (at most 120 s) for a shard and returns its output.
fn finish(child: std::process::Child) -> Output {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("a shard ran over 120 s")
        .expect("a shard's output")
}

fn merge(files: &[&Path], budget_name: &str, report: &Path) -> (Output, serde_json::Value) {
    let out = Command::new(harness())
        .arg("merge")
        .args(files)
        .arg("--budget")
        .arg(budget(budget_name))
        .arg("--report")
        .arg(report)
        .output()
        .expect("running merge");
    let json = std::fs::read_to_string(report)
        .unwrap_or_else(|e| panic!("merge wrote no report ({e}); {}", show(&out)));
    (out, serde_json::from_str(&json).unwrap())
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn two_shards_against_a_staged_fleet_merge_into_the_plan_one_process_draws() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // The plan as one process draws it with this salt (against an engine of its own: the
    // same salt gives the same nonces, which the fleet would answer `replayed`).
    let single_path = report_path("shard-single");
    let (out, single) = ci_rush(
        &[
            "--quiet",
            "--run-salt",
            SALT,
            "--budget",
            budget("ci.toml").to_str().unwrap(),
        ],
        &single_path,
        Duration::from_secs(90),
    );
    assert!(out.status.success(), "{}", show(&out));
    let planned = u(&single["run"]["planned"]);
    assert!(planned > 1000, "{planned}");

    let stage = Stage::start(
        &[
            "--nodes",
            "2",
            "--store",
            "redis",
            "--redis-timeout-ms",
            "1000",
        ],
        "fleet",
    );
    assert_eq!(stage.target.split(',').count(), 2, "{}", stage.target);
    let paths: Vec<PathBuf> = (1..=2)
        .map(|i| report_path(&format!("shard-{i}")))
        .collect();
    // Both shards at once, as from two machines.
    let running: Vec<_> = (1..=2)
        .map(|i| shard_against(&stage, i, 2, &paths[i - 1]))
        .collect();
    let outs: Vec<Output> = running.into_iter().map(finish).collect();
    for out in &outs {
        assert!(out.status.success(), "{}", show(out));
    }
    let shards: Vec<serde_json::Value> = paths
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    for (i, s) in shards.iter().enumerate() {
        let run = &s["run"];
        assert_eq!(run["shard"]["index"], i + 1);
        assert_eq!(run["plan_fingerprint"], single["run"]["plan_fingerprint"]);
        // Every shard reached both nodes.
        for node in run["nodes"].as_array().unwrap() {
            assert!(
                u(&node["requests"]) > 0,
                "shard {}: {}",
                i + 1,
                run["nodes"]
            );
        }
    }

    let merged_path = report_path("shard-merged");
    let files: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let (out, merged) = merge(&files, "ci.toml", &merged_path);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let run = &merged["run"];
    assert_eq!(
        u(&run["planned"]),
        planned,
        "the merged plan is the single one"
    );
    let answered: u64 = shards.iter().map(|s| u(&s["run"]["answered"])).sum();
    assert_eq!(u(&run["answered"]), answered);
    assert_eq!(u(&run["answered"]), planned - u(&run["dropped"]));
    assert_eq!(u(&run["mismatches"]), 0, "{}", show(&out));
    assert_eq!(u(&run["errors"]), 0, "{}", show(&out));
    let cross = &run["cross_node_replays"];
    assert!(u(&cross["expected_replayed"]) > 0, "{cross}");
    assert_eq!(cross["replayed"], cross["expected_replayed"], "{cross}");
    assert_eq!(merged["merged"]["count"], 2);
    assert_eq!(merged["passed"], true);
    // The nodes' CPU, read from their /metrics (--metrics): the nodes' whole CPU in each
    // shard's window, so the merge takes the largest, never the sum.
    assert_eq!(run["cpu"]["engine_shared"], true);
    let engine = run["cpu"]["engine_secs"]
        .as_f64()
        .expect("engine CPU known");
    let per_shard: Vec<f64> = shards
        .iter()
        .map(|s| s["run"]["cpu"]["engine_secs"].as_f64().unwrap())
        .collect();
    assert!(engine > 0.0, "{engine}");
    assert_eq!(engine, per_shard.iter().copied().fold(0.0, f64::max));
    for node in run["nodes"].as_array().unwrap() {
        assert!(node["cpu_secs"].as_f64().unwrap() > 0.0, "{node}");
    }
    // The same shards judged by a budget they miss: merge exits 1.
    let (out, missed) = merge(&files, "impossible.toml", &merged_path);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(missed["passed"], false);
    // A missing shard is refused.
    let out = Command::new(harness())
        .args(["merge"])
        .arg(&paths[0])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shards missing: 2/2"),
        "{}",
        show(&out)
    );
    drop(stage);
    for p in paths.iter().chain([&single_path, &merged_path]) {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn with_spawn_each_shard_starts_its_own_engine_at_a_common_start_and_the_shards_merge() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let paths: Vec<PathBuf> = (1..=2)
        .map(|i| report_path(&format!("spawned-shard-{i}")))
        .collect();
    let unix = |ahead: f64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        format!("{:.3}", now + ahead)
    };
    // Shard 1 starts at a common instant 14 s ahead, on time (its node's start and fence, the
    // skew after it, come first); shard 2 is told an instant already past, so its clock starts
    // late and its report fails.
    for (i, start_at, code) in [(1usize, unix(14.0), 0), (2, unix(-1.0), 1)] {
        let shard = format!("{i}/2");
        let t0 = Instant::now();
        let (out, r) = ci_rush(
            &[
                "--quiet",
                "--run-salt",
                SALT,
                "--shard",
                &shard,
                "--start-at",
                &start_at,
                "--budget",
                budget("ci.toml").to_str().unwrap(),
            ],
            &paths[i - 1],
            Duration::from_secs(90),
        );
        assert_eq!(out.status.code(), Some(code), "{}", show(&out));
        assert_eq!(r["target"]["spawned"], true);
        assert_eq!(u(&r["run"]["mismatches"]), 0);
        let late = r["run"]["start"]["late_secs"].as_f64().unwrap();
        if i == 1 {
            assert_eq!(late, 0.0);
            assert!(
                t0.elapsed() >= Duration::from_secs(14),
                "started before its instant"
            );
        } else {
            assert!(late >= 1.0, "{late}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("budget missed: common start"),
                "{}",
                show(&out)
            );
        }
    }
    let merged_path = report_path("spawned-merged");
    let files: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let (out, merged) = merge(&files, "ci.toml", &merged_path);
    // The merged run started as late as its latest shard: it fails the same check.
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(u(&merged["run"]["answered"]) > 1000);
    assert!(merged["merged"]["shards"][1]["late_secs"].as_f64().unwrap() >= 1.0);
    for p in paths.iter().chain([&merged_path]) {
        let _ = std::fs::remove_file(p);
    }
}

/// A sweep of fixed rates split over two shards running at once against one staged engine,
/// every step at the same instants (`--start-at`, `--step-gap-secs`): `merge` merges it step
/// by step and finds the knee from the merged steps.
#[test]
fn a_sweep_of_fixed_rates_split_over_two_shards_merges_step_by_step() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let stage = Stage::start(&[], "sweep");
    let start_at = format!(
        "{:.3}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            + 6.0
    );
    let paths: Vec<PathBuf> = (1..=2)
        .map(|i| report_path(&format!("sweep-shard-{i}")))
        .collect();
    let running: Vec<_> = (1..=2)
        .map(|i| {
            Command::new(harness())
                .args(["sweep", "--holders", "10000", "--quiet", "--run-salt", SALT])
                .args([
                    "--rates",
                    "200,400",
                    "--step-secs",
                    "2",
                    "--step-gap-secs",
                    "3",
                ])
                .args(["--request-timeout-ms", "10000", "--start-at", &start_at])
                .arg("--shard")
                .arg(format!("{i}/2"))
                .arg("--target")
                .arg(&stage.target)
                .arg("--cert-dir")
                .arg(&stage.cert_dir)
                .arg("--budget")
                .arg(budget("ci.toml"))
                .arg("--report")
                .arg(&paths[i - 1])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting a sweep shard")
        })
        .collect();
    let outs: Vec<Output> = running.into_iter().map(finish).collect();
    for out in &outs {
        assert!(out.status.success(), "{}", show(out));
    }
    let merged_path = report_path("sweep-merged");
    let files: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let (out, merged) = merge(&files, "ci.toml", &merged_path);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let sweep = &merged["sweep"];
    assert_eq!(sweep["fixed_rates"], true);
    let steps = sweep["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for (k, step) in steps.iter().enumerate() {
        let planned: u64 = paths
            .iter()
            .map(|p| {
                let r: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
                u(&r["sweep"]["steps"][k]["run"]["planned"])
            })
            .sum();
        assert_eq!(u(&step["run"]["planned"]), planned);
        assert_eq!(u(&step["run"]["mismatches"]), 0, "{}", show(&out));
        assert_eq!(
            step["run"]["start"]["late_secs"], 0.0,
            "step {k} started late"
        );
        assert_eq!(step["passed"], true, "{step}");
    }
    assert_eq!(sweep["knee_rps"], 400.0);
    drop(stage);
    for p in paths.iter().chain([&merged_path]) {
        let _ = std::fs::remove_file(p);
    }
}

fn refused(args: &[&str]) -> String {
    let out = Command::new(harness()).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn what_cannot_be_one_run_is_refused() {
    let e = refused(&["sweep", "--holders", "10", "--spawn", "--shard", "1/2"]);
    assert!(
        e.contains("sweep --shard and --start-at need --rates"),
        "{e}"
    );
    let e = refused(&[
        "rush",
        "--holders",
        "10",
        "--spawn",
        "--target",
        "127.0.0.1:4433",
    ]);
    assert!(
        e.contains("--spawn starts engines here; --target names running ones"),
        "{e}"
    );
    let e = refused(&["rush", "--holders", "10", "--shard", "3/2", "--spawn"]);
    assert!(e.contains("--shard \"3/2\""), "{e}");
    let e = refused(&["rush", "--holders", "10", "--run-salt", "xyz", "--spawn"]);
    assert!(e.contains("--run-salt"), "{e}");
    let e = refused(&[
        "rush",
        "--holders",
        "10",
        "--start-at",
        "tomorrow",
        "--spawn",
    ]);
    assert!(e.contains("Unix seconds or RFC 3339"), "{e}");
}
