//! The engine core with its memory one-time-use table: the shared suite (`suite/core.rs`), plus
//! what only the memory table has (its capacity limit) and the big revocation checks.

// Fixture helpers unwrap: a fixture that cannot be built is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use gatehouse_engine::dev::population::{credential, derive_id, derive_key, Holder};
use gatehouse_engine::*;
use gatehouse_protocol::{Reason, RevocationEntry, RevocationKind, RevocationList, UnitPath};

#[path = "suite/core.rs"]
mod suite;
mod support;

use suite::{world, world_with, NOW};

/// The batch path of the suite's worlds: the engine's own choice (`Auto`).
fn batch_path() -> Option<(BatchMode, usize)> {
    None
}

fn store() -> support::TestStore {
    support::TestStore::Memory
}

/// A phone whose clock runs 4 s ahead (inside the 5 s skew) shows a token; the node accepts it
/// and restarts in the same second on an empty memory table. The fence of the restarted node
/// (`restart_fence(start, skew)`) denies the same token; the old fence (the second after the
/// start) accepted it twice.
#[test]
fn a_phone_clock_ahead_cannot_replay_across_a_memory_restart() {
    let start = NOW;
    let before = world();
    let h = before.holder();
    let ahead = before.token(&h, start + 4);
    assert_eq!(before.reason("gate-1-12", &ahead, start), Reason::Accepted);
    // The restarted node: a new engine, a new (empty) table, the same clock second.
    let restarted = world_with(EngineConfig {
        accept_from: restart_fence(start, 5),
        ..EngineConfig::default()
    });
    assert_eq!(
        restarted.reason("gate-1-12", &ahead, start),
        Reason::NodeRestarted
    );
    // What the old fence (start + 1) did: the same token accepted a second time.
    let old = world_with(EngineConfig {
        accept_from: start + 1,
        ..EngineConfig::default()
    });
    assert_eq!(old.reason("gate-1-12", &ahead, start), Reason::Accepted);
    // The holder's next token, signed past the fence, passes.
    let next = restarted.token(&h, start + 6);
    assert_eq!(
        restarted.reason("gate-1-12", &next, start + 1),
        Reason::Accepted
    );
}

/// SPEC §6's fence vector: `token` (signed at NOW − 5) under a fence learned at NOW − 10 is
/// `node_restarted`; under one learned at NOW − 11 it is accepted.
#[test]
fn the_spec_fence_vector_holds() {
    let vectors = gatehouse_protocol::vectors::all().unwrap();
    let token = vectors.iter().find(|v| v.name == "token").unwrap();
    let now = gatehouse_protocol::vectors::NOW;
    for (learned, want) in [
        (now - 10, Reason::NodeRestarted),
        (now - 11, Reason::Accepted),
    ] {
        let mut trust = TrustList::new();
        trust.insert(IssuerKey {
            name: "test".into(),
            public: gatehouse_protocol::vectors::issuer_key().public().clone(),
            not_before: 0,
            not_after: u64::MAX,
            retired: false,
        });
        let mut scanners = ScannerRegistry::new();
        scanners.insert(Scanner {
            id: "gate".into(),
            role: Role::Gate {
                unit: "1/12".parse().unwrap(),
                admits: DEFAULT_GATE_ADMITS.to_vec(),
            },
            mdoc: Default::default(),
        });
        let engine = Engine::new(EngineConfig::default(), trust, scanners).unwrap();
        // What a store's new life seen at `learned` does: the fence moves to learned + skew.
        let book = LifeBook::new(5);
        book.observe(
            &[Life {
                shard: 0,
                id: "old".into(),
                fence: 0,
            }],
            learned - 100,
        );
        let seen = book.observe(
            &[Life {
                shard: 0,
                id: "new".into(),
                fence: 0,
            }],
            learned,
        );
        engine.raise_fence(seen.accept_from.unwrap());
        let gate = engine.scanner("gate").unwrap();
        assert_eq!(engine.verify(&gate, &token.bytes, None, now).reason, want);
    }
}

#[test]
fn a_full_replay_table_fails_closed() {
    let w = world_with(EngineConfig {
        replay_capacity: 64,
        ..EngineConfig::default()
    });
    let h = w.holder();
    let mut reasons = Vec::new();
    for _ in 0..200 {
        reasons.push(w.reason("gate-1-12", &w.token(&h, NOW), NOW));
    }
    assert!(reasons.contains(&Reason::ReplayCapacity));
    assert!(reasons
        .iter()
        .all(|r| matches!(r, Reason::Accepted | Reason::ReplayCapacity)));
    // After the window the table drains and tokens are accepted again.
    w.engine.purge(NOW + 31);
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW + 31), NOW + 31),
        Reason::Accepted
    );
}

#[test]
fn a_revocation_state_past_its_age_limit_fails_closed() {
    let w = world_with(EngineConfig::default());
    let h = w.holder();
    // The feed last confirmed the epoch long enough ago: every token is denied, not judged.
    w.engine.revocations().set_fresh_until(NOW);
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW), NOW),
        Reason::RevocationsStale
    );
    assert!(Reason::RevocationsStale.is_retryable());
    // Confirmed again: the same holder is accepted (the denied token was not marked used).
    w.engine.revocations().set_fresh_until(NOW + 10);
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW), NOW),
        Reason::Accepted
    );
}

/// Every reason code the core can give is reached by a test above; this keeps the list honest
/// when a reason is added.
#[test]
fn every_reason_code_is_known() {
    let core = [
        Reason::Accepted,
        Reason::Malformed,
        Reason::UnsupportedVersion,
        Reason::UnknownIssuer,
        Reason::IssuerKeyNotValid,
        Reason::BadIssuerSignature,
        Reason::NotYetValid,
        Reason::Expired,
        Reason::OutsideLeave,
        Reason::Stale,
        Reason::FromFuture,
        Reason::Revoked,
        Reason::BadDeviceSignature,
        Reason::Replayed,
        Reason::ChallengeMismatch,
        Reason::NotAdmitted,
        Reason::NotEligible,
        Reason::AttributeMissing,
        Reason::ReplayCapacity,
        Reason::NodeRestarted,
        Reason::RevocationsStale,
    ];
    // Busy, UnknownScanner and Unavailable belong to the service, which tests them over QUIC
    // (Unavailable also comes from a shared store that does not answer: tests/fleet.rs).
    let service = [Reason::Busy, Reason::UnknownScanner, Reason::Unavailable];
    // Given only to mdoc presentations: tests/mdoc.rs and the gatehouse-mdoc suite.
    let mdoc = [
        Reason::UnsupportedAlgorithm,
        Reason::IssuerDataMismatch,
        Reason::DeviceMacNotAllowed,
    ];
    assert_eq!(core.len() + service.len() + mdoc.len(), Reason::ALL.len());
}

#[test]
fn submit_hands_verdicts_back_in_order() {
    let w = world();
    let engine = Arc::new(w.engine);
    let issuer = w.issuer;
    let h = Holder::issue(&issuer, derive_key("device", 4242), credential(NOW, 4242)).unwrap();
    let gate = engine.scanner("gate-1-12").unwrap();
    let t = h.present(NOW, [1; 16], None).unwrap();
    let items = vec![
        Item {
            scanner: gate.clone(),
            token: t.clone(),
            challenge: None,
            retry: None,
            mdoc: None,
        },
        Item {
            scanner: gate.clone(),
            token: b"junk".to_vec(),
            challenge: None,
            retry: None,
            mdoc: None,
        },
        Item {
            scanner: gate,
            token: t,
            challenge: None,
            retry: None,
            mdoc: None,
        },
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    engine.submit(items, NOW, move |v| {
        let _ = tx.send(v);
    });
    let got: Vec<Reason> = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap()
        .into_iter()
        .map(|v| v.reason)
        .collect();
    assert_eq!(
        got,
        vec![Reason::Accepted, Reason::Malformed, Reason::Replayed]
    );
}

/// A million revocation entries: zero false denials over a million valid credentials (the
/// bloom filter's positives are all confirmed exactly), and every revoked one denied.
#[test]
fn a_million_revocations_no_false_denial() {
    let revoked: Vec<RevocationEntry> = (0..1_000_000u64)
        .map(|i| RevocationEntry {
            kind: RevocationKind::Credential,
            id: derive_id("revoked", i),
        })
        .collect();
    let list = RevocationList {
        epoch: 1,
        base: None,
        revoke: revoked.clone(),
        reinstate: vec![],
        digest: None,
    };
    let state = RevocationState::empty().unwrap().apply(&list).unwrap();
    assert_eq!(state.len(), 1_000_000);
    let mut bloom_positives = 0;
    for i in 0..1_000_000u64 {
        let mut c = credential(NOW, i);
        c.id = derive_id("valid", i);
        c.subject = derive_id("valid subject", i);
        if state.bloom_says_maybe(RevocationKind::Credential, &c.id) {
            bloom_positives += 1;
        }
        assert!(!state.revokes(&c), "false denial of valid credential {i}");
    }
    for e in &revoked {
        assert!(state.is_revoked(e.kind, &e.id));
    }
    // The filter did see false positives (so the exact confirmation was exercised)...
    assert!(bloom_positives > 1000, "bloom positives: {bloom_positives}");
    // ...about at its design rate of 1 %.
    assert!(
        bloom_positives < 30_000,
        "bloom positives: {bloom_positives}"
    );
    println!(
        "bloom false positives over 1,000,000 valid ids: {bloom_positives} (all confirmed away)"
    );
}

#[test]
fn a_million_revocations_end_to_end_through_the_engine() {
    // The engine with 1M entries plus the holders' own: revoked holders are denied, the rest
    // accepted.
    let w = world();
    let holders: Vec<Holder> = (0..200).map(|_| w.holder()).collect();
    let mut revoke: Vec<RevocationEntry> = (0..1_000_000u64)
        .map(|i| RevocationEntry {
            kind: RevocationKind::Subject,
            id: derive_id("someone else", i),
        })
        .collect();
    revoke.extend(holders.iter().step_by(10).map(|h| RevocationEntry {
        kind: RevocationKind::Credential,
        id: h.credential.id,
    }));
    w.engine
        .apply_revocations(&RevocationList {
            epoch: 9,
            base: None,
            revoke,
            reinstate: vec![],
            digest: None,
        })
        .unwrap();
    for (i, h) in holders.iter().enumerate() {
        let expect = if i % 10 == 0 {
            Reason::Revoked
        } else {
            Reason::Accepted
        };
        assert_eq!(
            w.reason("gate-1-12", &w.token(h, NOW), NOW),
            expect,
            "holder {i}"
        );
    }
}

#[test]
fn unit_paths_parse_for_tests() {
    // Guard for the fixtures above: the default synthetic unit lies under gate 1/12.
    let u: UnitPath = "1/12/103/2".parse().unwrap();
    assert!(u.is_under(&"1/12".parse().unwrap()));
}
