//! The engine core's suite (`suite/core.rs`) and the fence's (`suite/fence.rs`) over a fake
//! shared store that behaves as the mark script on Redis does, and forgets, changes identity or
//! answers late when told: the fence's logic with a fake clock and no network.

// Fixture helpers unwrap: a fixture that cannot be built is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "suite/fence.rs"]
mod fence;
#[path = "suite/core.rs"]
mod suite;
mod support;

use gatehouse_engine::BatchMode;

/// The batch path of the suite's worlds: the engine's own choice (`Auto`).
fn batch_path() -> Option<(BatchMode, usize)> {
    None
}

fn store() -> support::TestStore {
    support::TestStore::fake()
}

#[test]
fn a_store_that_forgets_reopens_no_used_token() {
    fence::a_store_that_forgets_reopens_no_used_token(store());
}

#[test]
fn a_retry_after_a_loss_gets_the_fence_denial() {
    fence::a_retry_after_a_loss_gets_the_fence_denial(store());
}

#[test]
fn a_store_with_a_new_identity_moves_the_fence() {
    fence::a_store_with_a_new_identity_moves_the_fence(store());
}

#[test]
fn a_late_store_fails_closed_and_recovers() {
    fence::a_late_store_fails_closed_and_recovers(store());
}
