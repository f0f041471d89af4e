//! The one-time-use fence over a shared store that forgets, changes identity or answers late:
//! no used token is ever accepted again, a retry of a fenced token gets the fence's denial, and
//! the holder's next token passes. Run over the fake backend (`tests/core_fake.rs`) and a real
//! Redis server of the test's own (`tests/core_redis.rs`).

use gatehouse_engine::EngineConfig;
use gatehouse_protocol::Reason;

use crate::suite::{world_on, NOW};
use crate::support::TestStore;

const GATE: &str = "gate-1-12";

/// A store that loses every mark (restart without persistence, `FLUSHALL`): the used token is
/// denied `node_restarted`, not accepted; tokens signed after now + skew are judged normally.
pub fn a_store_that_forgets_reopens_no_used_token(store: TestStore) {
    let w = world_on(EngineConfig::default(), store);
    let h = w.holder();
    let used = w.token(&h, NOW);
    assert_eq!(w.reason(GATE, &used, NOW), Reason::Accepted);
    assert_eq!(w.reason(GATE, &used, NOW + 1), Reason::Replayed);
    w.store.faults().forget();
    // The store forgot the mark; the same round trip shows the new life and the fence moves
    // to NOW + 2 + skew (5).
    assert_eq!(w.reason(GATE, &used, NOW + 2), Reason::NodeRestarted);
    assert_eq!(w.reason(GATE, &used, NOW + 3), Reason::NodeRestarted);
    assert_eq!(w.engine.accept_from(), NOW + 8);
    // A token signed at the fence itself is denied; the next one passes, once.
    let at_fence = w.token(&h, NOW + 7);
    assert_eq!(w.reason(GATE, &at_fence, NOW + 7), Reason::NodeRestarted);
    let next = w.token(&h, NOW + 8);
    assert_eq!(w.reason(GATE, &next, NOW + 8), Reason::Accepted);
    assert_eq!(w.reason(GATE, &next, NOW + 9), Reason::Replayed);
}

/// A retry of a scan (the same retry key) after the store forgot: the fence's denial, not the
/// first answer and never a second acceptance (SPEC §8.6).
pub fn a_retry_after_a_loss_gets_the_fence_denial(store: TestStore) {
    let w = world_on(EngineConfig::default(), store);
    let h = w.holder();
    let used = w.token(&h, NOW);
    let key = Some([9u8; 16]);
    assert_eq!(w.scan(GATE, &used, None, key, NOW).reason, Reason::Accepted);
    let again = w.scan(GATE, &used, None, key, NOW + 1);
    assert_eq!((again.reason, again.repeat), (Reason::Accepted, true));
    w.store.faults().forget();
    let retry = w.scan(GATE, &used, None, key, NOW + 2);
    assert_eq!(retry.reason, Reason::NodeRestarted);
    // And the fence is what every later retry gets too (the check before the mark).
    assert_eq!(
        w.scan(GATE, &used, None, key, NOW + 3).reason,
        Reason::NodeRestarted
    );
}

/// Another server that kept the marks (a restart with persistence, a promoted replica): only
/// its identity tells, and that is enough for the fence.
pub fn a_store_with_a_new_identity_moves_the_fence(store: TestStore) {
    let w = world_on(EngineConfig::default(), store);
    let h = w.holder();
    let used = w.token(&h, NOW);
    assert_eq!(w.reason(GATE, &used, NOW), Reason::Accepted);
    w.store.faults().change_identity();
    // A restarted server drops its connections: the node notices and reconnects.
    let first = w.reason(GATE, &used, NOW + 1);
    assert!(
        matches!(first, Reason::NodeRestarted | Reason::Unavailable),
        "{first:?}"
    );
    assert!(w.store.probe(NOW + 1), "the store comes back up");
    assert_eq!(w.reason(GATE, &used, NOW + 1), Reason::NodeRestarted);
    assert!(w.engine.accept_from() >= NOW + 7);
    let next = w.token(&h, NOW + 8);
    assert_eq!(w.reason(GATE, &next, NOW + 8), Reason::Accepted);
}

/// A store slower than its timeout: `unavailable` (never accepted), the store is down at once
/// for the next batch, and after it answers again (the probe) tokens are judged.
pub fn a_late_store_fails_closed_and_recovers(store: TestStore) {
    let w = world_on(EngineConfig::default(), store);
    let h = w.holder();
    assert_eq!(w.reason(GATE, &w.token(&h, NOW), NOW), Reason::Accepted);
    w.store.faults().slow(true);
    let late = w.token(&h, NOW + 1);
    assert_eq!(w.reason(GATE, &late, NOW + 1), Reason::Unavailable);
    // Down now: the next batch fails at once, without waiting for the store.
    let started = std::time::Instant::now();
    assert_eq!(
        w.reason(GATE, &w.token(&h, NOW + 1), NOW + 1),
        Reason::Unavailable
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(150));
    w.store.faults().slow(false);
    assert!(w.store.probe(NOW + 2), "the store comes back up");
    // Nothing was forgotten: no fence, and the next token passes at once.
    assert_eq!(
        w.reason(GATE, &w.token(&h, NOW + 2), NOW + 2),
        Reason::Accepted
    );
}
