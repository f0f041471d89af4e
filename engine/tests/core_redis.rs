//! The engine core's suite (`suite/core.rs`) over the shared one-time-use store: Redis, started
//! on loopback for this test binary (and stopped with it).

// Fixture helpers unwrap: a fixture that cannot be built is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "suite/core.rs"]
mod suite;
mod support;

fn store() -> support::TestStore {
    support::TestStore::redis()
}
