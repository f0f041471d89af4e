//! What the harness's integration tests share: the binaries they run, where their reports go,
//! and how a failed run is shown.

// Each test file uses some of these, not all.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

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
