//! What the harness's integration tests share: the binaries they run.

use std::path::{Path, PathBuf};

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
