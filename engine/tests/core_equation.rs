//! The engine core's suite (`suite/core.rs`) on the memory one-time-use table with every batch
//! of two or more signatures checked by one equation (`batch = "equation"`, `batch_from = 2`),
//! and what only the equation has: a scanner whose tokens make equations fail is kept out of
//! them.

// Fixture helpers unwrap: a fixture that cannot be built is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "suite/core.rs"]
mod suite;
mod support;

use gatehouse_engine::BatchMode;

fn batch_path() -> Option<(BatchMode, usize)> {
    Some((BatchMode::Equation, 2))
}

fn store() -> support::TestStore {
    support::TestStore::Memory
}

use gatehouse_engine::{EngineConfig, Item, SUSPECT_SECS};
use gatehouse_protocol::Reason;
use suite::{world_on, NOW};

/// One scanner puts a forged token (a flipped device signature) into every batch of 8 it
/// shares with an honest gate. The first batch's equation fails and every token goes to the
/// single check; from then on the forger's tokens are checked singly and the equation over
/// the honest gate's tokens holds, batch after batch. The verdicts are the one-by-one
/// verdicts throughout. Without the routing every batch would fail its equation (4 of 4).
#[test]
fn a_scanner_whose_tokens_fail_equations_is_checked_singly() {
    let w = world_on(
        EngineConfig {
            batch: BatchMode::Equation,
            batch_from: 2,
            ..EngineConfig::default()
        },
        store(),
    );
    let honest = w.engine.scanner("gate-1-12").unwrap();
    let forger = w.engine.scanner("gate-2").unwrap();
    for round in 0..4u64 {
        let mut items = Vec::new();
        let mut expected = Vec::new();
        for i in 0..8 {
            let h = w.holder();
            let mut t = w.token(&h, NOW - 1);
            if i % 2 == 0 {
                items.push(Item::new(honest.clone(), t));
                expected.push(Reason::Accepted);
            } else {
                if i == 1 {
                    let n = t.len();
                    t[n - 3] ^= 0x40;
                    expected.push(Reason::BadDeviceSignature);
                } else {
                    // Its signatures hold; gate-2 (unit 2) does not admit unit 1/12.
                    expected.push(Reason::NotAdmitted);
                }
                items.push(Item::new(forger.clone(), t));
            }
        }
        let got: Vec<Reason> = w
            .engine
            .verify_batch_serial(&items, NOW + round)
            .into_iter()
            .map(|v| v.reason)
            .collect();
        assert_eq!(got, expected, "round {round}");
    }
    let stats = w.engine.batch_stats();
    assert_eq!(stats.batches(), 4, "one equation per batch");
    assert_eq!(stats.failed(), 1, "only the first equation failed");
    // Rounds 2-4: the forger's 4 tokens of distinct, uncached holders, 2 signatures each.
    assert_eq!(stats.routed(), 3 * 4 * 2);

    // Past SUSPECT_SECS the forger is trusted with equations again (and fails one at once).
    let later = NOW + 4 + SUSPECT_SECS;
    let h = w.holder();
    let mut bad = w.token(&h, later - 1);
    let n = bad.len();
    bad[n - 3] ^= 0x40;
    let items = vec![
        Item::new(honest.clone(), w.token(&w.holder(), later - 1)),
        Item::new(forger.clone(), bad),
    ];
    let got: Vec<Reason> = w
        .engine
        .verify_batch_serial(&items, later)
        .into_iter()
        .map(|v| v.reason)
        .collect();
    assert_eq!(got, [Reason::Accepted, Reason::BadDeviceSignature]);
    assert_eq!(stats.failed(), 2);
}
