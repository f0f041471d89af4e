//! The engine core's suite (`suite/core.rs`) over the shared one-time-use store: Redis, started
//! on loopback for this test binary (and stopped with it); and the fence's suite
//! (`suite/fence.rs`) over Redis servers of each test's own, flushed, restarted and paused.

// Fixture helpers unwrap: a fixture that cannot be built is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "suite/fence.rs"]
mod fence;
#[path = "suite/core.rs"]
mod suite;
mod support;

fn store() -> support::TestStore {
    support::TestStore::redis()
}

#[test]
fn flushall_reopens_no_used_token() {
    fence::a_store_that_forgets_reopens_no_used_token(support::TestStore::redis_own());
}

#[test]
fn a_retry_after_flushall_gets_the_fence_denial() {
    fence::a_retry_after_a_loss_gets_the_fence_denial(support::TestStore::redis_own());
}

#[test]
fn a_restarted_redis_moves_the_fence() {
    fence::a_store_with_a_new_identity_moves_the_fence(support::TestStore::redis_own());
}

#[test]
fn a_paused_redis_fails_closed_and_recovers() {
    fence::a_late_store_fails_closed_and_recovers(support::TestStore::redis_own());
}
