//! What the harness's integration tests share: the binaries they run, where their reports go,
//! and how a failed run is shown.

// Each test file uses some of these, not all.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The harness binary cargo built for these tests.
pub fn harness() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse-loadtest")
}

/// The `gatehouse` binary: `$GATEHOUSE_BIN`, or the one beside the harness (a workspace
/// `cargo test` builds it for the engine's own tests).
pub fn gatehouse() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEHOUSE_BIN") {
        return PathBuf::from(p);
    }
    let beside = Path::new(harness()).with_file_name("gatehouse");
    assert!(
        beside.is_file(),
        "no gatehouse binary at {}: run `cargo build -p gatehouse-engine --bin gatehouse` (same profile) or set GATEHOUSE_BIN",
        beside.display()
    );
    beside
}

/// A report file of this test process, named `name`.
pub fn report_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "gatehouse-loadtest-test-{}-{name}.json",
        std::process::id()
    ))
}

/// A finished run's exit status and output, for an assertion message.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A budget file of the harness's own (`loadtest/budgets/NAME`).
pub fn budget(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("budgets")
        .join(name)
}

/// The CI-sized rush: 10,000 holders at the modelled 1,000,000-holder rate, 1 s up, 3 s at the
/// peak (500 req/s), 1 s down, against engines the harness spawns.
pub const CI_RUSH: [&str; 12] = [
    "rush",
    "--holders",
    "10000",
    "--model-holders",
    "1000000",
    "--ramp-up-secs",
    "1",
    "--peak-secs",
    "3",
    "--ramp-down-secs",
    "1",
    "--spawn",
];

/// Runs a CI-sized rush with `args` after [`CI_RUSH`], writing its JSON report to `report`;
/// fails the test if it takes longer than `limit`. Returns the run's output and its report.
pub fn ci_rush(args: &[&str], report: &Path, limit: Duration) -> (Output, serde_json::Value) {
    let t0 = Instant::now();
    let out = Command::new(harness())
        .args(CI_RUSH)
        .args(args)
        .arg("--report")
        .arg(report)
        .arg("--gatehouse-bin")
        .arg(gatehouse())
        .output()
        .expect("running gatehouse-loadtest");
    assert!(
        t0.elapsed() < limit,
        "a CI-sized rush took {:?}",
        t0.elapsed()
    );
    let json = std::fs::read_to_string(report)
        .unwrap_or_else(|e| panic!("no report ({e}); {}", show(&out)));
    (out, serde_json::from_str(&json).unwrap())
}
