//! The engine core's suite (`suite/core.rs`) on the memory one-time-use table with every
//! signature checked one by one (`batch = "off"`).

// Fixture helpers unwrap: a fixture that cannot be built is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "suite/core.rs"]
mod suite;
mod support;

use gatehouse_engine::BatchMode;

fn batch_path() -> Option<(BatchMode, usize)> {
    Some((BatchMode::Off, 0))
}

fn store() -> support::TestStore {
    support::TestStore::Memory
}
