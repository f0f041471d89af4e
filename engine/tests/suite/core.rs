//! The engine core's suite, driven with a fake clock and no network: every reason code, every
//! policy rule, retries, batches against one-by-one. Run over both one-time-use stores: the
//! engine's memory table (`tests/core.rs`) and Redis (`tests/core_redis.rs`).

use std::sync::Arc;

use gatehouse_engine::dev::population::{
    credential, derive_id, derive_key, issuer_key, trust_list, Holder,
};
use gatehouse_engine::*;
use gatehouse_protocol::{
    CredentialType, Date, Entitlements, HolderCategory, Predicate, Reason, RevocationEntry,
    RevocationKind, RevocationList, Verdict,
};
use proptest::prelude::*;

use crate::support::TestStore;

pub const NOW: u64 = crate::support::NOW;

pub struct World {
    pub engine: Engine,
    pub issuer: gatehouse_protocol::PrivateKey,
    next: std::cell::Cell<u64>,
    pub store: TestStore,
}

pub fn registry() -> ScannerRegistry {
    let mut r = ScannerRegistry::new();
    let gate = |id: &str, unit: &str, admits: &[CredentialType]| Scanner {
        id: id.into(),
        role: Role::Gate {
            unit: unit.parse().unwrap(),
            admits: admits.to_vec(),
        },
        mdoc: Default::default(),
    };
    r.insert(gate("gate-1-12", "1/12", DEFAULT_GATE_ADMITS));
    r.insert(gate("gate-2", "2", DEFAULT_GATE_ADMITS));
    r.insert(gate(
        "welfare-1-12",
        "1/12",
        &[CredentialType::FamilyMember],
    ));
    r.insert(Scanner {
        id: "partner".into(),
        role: Role::Partner,
        mdoc: Default::default(),
    });
    r.insert(Scanner {
        id: "age".into(),
        role: Role::AgeCheck,
        mdoc: Default::default(),
    });
    r
}

pub fn world() -> World {
    world_with(EngineConfig::default())
}

/// A world on the including test binary's store, with its batch path (`crate::batch_path()`)
/// where the test left the path to `Auto` and the path can run with the test's strictness.
pub fn world_with(config: EngineConfig) -> World {
    let config = match crate::batch_path() {
        Some((batch, batch_from))
            if config.batch == BatchMode::Auto
                && Batching::resolve(batch, config.strict_signatures, batch_from).is_ok() =>
        {
            EngineConfig {
                batch,
                batch_from,
                ..config
            }
        }
        _ => config,
    };
    world_on(config, crate::store())
}

/// Whether multi-buffer can run here; with `GATEHOUSE_REQUIRE_MB=1` it must.
pub fn multibuffer_runs() -> bool {
    let runs = Batching::resolve(BatchMode::Multibuffer, false, 0).is_ok();
    assert!(
        runs || std::env::var_os("GATEHOUSE_REQUIRE_MB").is_none_or(|v| v != "1"),
        "GATEHOUSE_REQUIRE_MB=1 but multi-buffer cannot run here"
    );
    runs
}

/// A world on a store of the test's choosing.
pub fn world_on(config: EngineConfig, store: TestStore) -> World {
    let issuer = issuer_key(7);
    let engine = Engine::new(config, trust_list(&issuer), registry()).unwrap();
    World {
        engine,
        issuer,
        next: std::cell::Cell::new(0),
        store,
    }
}

impl World {
    pub fn holder_with(&self, f: impl FnOnce(&mut gatehouse_protocol::Credential)) -> Holder {
        let n = self.next.get();
        self.next.set(n + 1);
        let mut c = credential(NOW, n);
        f(&mut c);
        Holder::issue(&self.issuer, derive_key("device", n), c).unwrap()
    }

    pub fn holder(&self) -> Holder {
        self.holder_with(|_| {})
    }

    pub fn token(&self, h: &Holder, ts: u64) -> Vec<u8> {
        let n = self.next.get();
        self.next.set(n + 1);
        h.present(ts, derive_id("nonce", n), None).unwrap()
    }

    pub fn verify(&self, scanner: &str, token: &[u8], now: u64) -> Verdict {
        self.scan(scanner, token, None, None, now)
    }

    /// One token through the core and this world's store, with a challenge and a retry key.
    pub fn scan(
        &self,
        scanner: &str,
        token: &[u8],
        challenge: Option<&[u8]>,
        retry: Option<[u8; 16]>,
        now: u64,
    ) -> Verdict {
        let item = Item {
            scanner: self.engine.scanner(scanner).unwrap(),
            token: token.to_vec(),
            challenge: challenge.map(<[u8]>::to_vec),
            retry,
            mdoc: None,
        };
        self.verify_batch(&[item], now).pop().unwrap()
    }

    /// A batch through the core and this world's store.
    pub fn verify_batch(&self, items: &[Item], now: u64) -> Vec<Verdict> {
        self.store.verify_batch(&self.engine, items, now)
    }

    pub fn reason(&self, scanner: &str, token: &[u8], now: u64) -> Reason {
        self.verify(scanner, token, now).reason
    }
}

#[test]
fn a_valid_token_is_accepted_once_and_the_gate_sees_its_attributes() {
    let w = world();
    let h = w.holder();
    let t = w.token(&h, NOW - 3);
    let v = w.verify("gate-1-12", &t, NOW);
    assert_eq!(v.reason, Reason::Accepted);
    assert_eq!(
        v.attributes.credential_type,
        Some(CredentialType::MilitaryId)
    );
    assert_eq!(v.attributes.category, Some(HolderCategory::Enlisted));
    assert_eq!(v.attributes.unit, Some("1/12/103/2".parse().unwrap()));
    assert_eq!(v.attributes.valid_until, Some(h.credential.not_after));
    assert_eq!(v.attributes.predicate, None);
    assert_eq!(w.reason("gate-1-12", &t, NOW + 1), Reason::Replayed);
    // Replayed at another scanner too: one use, anywhere.
    assert_eq!(w.reason("partner", &t, NOW + 1), Reason::Replayed);
    assert_eq!(w.engine.stats().verdicts(0, Reason::Accepted), 1);
    assert_eq!(w.engine.stats().verdicts(0, Reason::Replayed), 1);
}

#[test]
fn decode_failures_are_malformed_or_unsupported_version() {
    let w = world();
    assert_eq!(w.reason("gate-1-12", b"", NOW), Reason::Malformed);
    assert_eq!(w.reason("gate-1-12", &[0xd2; 300], NOW), Reason::Malformed);
    let h = w.holder();
    let t = w.token(&h, NOW);
    assert_eq!(
        w.reason("gate-1-12", &t[..t.len() - 1], NOW),
        Reason::Malformed
    );
    // A version-2 payload: rewrite the version byte inside the token payload (map key 1).
    let mut v2 = t.clone();
    let at = v2.windows(3).position(|x| x == [0xa4, 0x01, 0x01]).unwrap();
    v2[at + 2] = 0x02;
    assert_eq!(w.reason("gate-1-12", &v2, NOW), Reason::UnsupportedVersion);
}

#[test]
fn issuer_keys_unknown_retired_or_out_of_their_life_are_refused() {
    let w = world();
    let other = derive_key("another issuer", 1);
    let h = Holder::issue(&other, derive_key("device", 999), credential(NOW, 999)).unwrap();
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW), NOW),
        Reason::UnknownIssuer
    );

    let good = w.holder();
    let mut trust = TrustList::new();
    trust.insert(IssuerKey {
        name: "old".into(),
        public: w.issuer.public().clone(),
        not_before: 0,
        not_after: NOW + 10,
        retired: false,
    });
    w.engine.set_trust(trust);
    assert_eq!(
        w.reason("gate-1-12", &w.token(&good, NOW), NOW),
        Reason::Accepted
    );
    // After the key's end date it is refused, even for credentials it signed and the cache knows.
    assert_eq!(
        w.reason("gate-1-12", &w.token(&good, NOW + 10), NOW + 10),
        Reason::IssuerKeyNotValid
    );

    let mut trust = TrustList::new();
    trust.insert(IssuerKey {
        name: "retired".into(),
        public: w.issuer.public().clone(),
        not_before: 0,
        not_after: u64::MAX,
        retired: true,
    });
    w.engine.set_trust(trust);
    assert_eq!(
        w.reason("gate-1-12", &w.token(&good, NOW), NOW),
        Reason::IssuerKeyNotValid
    );

    // A credential claiming validity from before the key existed.
    let mut trust = TrustList::new();
    trust.insert(IssuerKey {
        name: "new".into(),
        public: w.issuer.public().clone(),
        not_before: NOW - 60,
        not_after: u64::MAX,
        retired: false,
    });
    w.engine.set_trust(trust);
    assert_eq!(
        w.reason("gate-1-12", &w.token(&good, NOW), NOW),
        Reason::IssuerKeyNotValid
    );
}

#[test]
fn credential_dates_and_leave_dates_are_enforced() {
    let w = world();
    let h = w.holder_with(|c| {
        c.not_before = NOW + 100;
        c.not_after = NOW + 1000;
    });
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW), NOW),
        Reason::NotYetValid
    );
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW + 100), NOW + 100),
        Reason::Accepted
    );
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW + 1000), NOW + 1000),
        Reason::Expired
    );

    let leave = w.holder_with(|c| {
        c.credential_type = CredentialType::LeavePass;
        c.leave = Some((NOW + 50, NOW + 500));
    });
    assert_eq!(
        w.reason("gate-1-12", &w.token(&leave, NOW), NOW),
        Reason::OutsideLeave
    );
    let v = w.verify("gate-1-12", &w.token(&leave, NOW + 50), NOW + 50);
    assert_eq!(v.reason, Reason::Accepted);
    assert_eq!(v.attributes.valid_until, Some(NOW + 500));
    assert_eq!(
        w.reason("gate-1-12", &w.token(&leave, NOW + 500), NOW + 500),
        Reason::OutsideLeave
    );
}

#[test]
fn freshness_window_and_clock_skew() {
    let w = world();
    let h = w.holder();
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW - 29), NOW),
        Reason::Accepted
    );
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW - 30), NOW),
        Reason::Stale
    );
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW + 5), NOW),
        Reason::Accepted
    );
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW + 6), NOW),
        Reason::FromFuture
    );
}

#[test]
fn revocation_by_credential_subject_and_sponsor() {
    let w = world();
    let soldier = w.holder();
    let parent = w.holder_with(|c| {
        c.credential_type = CredentialType::FamilyMember;
        c.category = HolderCategory::Parent;
        c.sponsor = Some(soldier.credential.subject);
        c.entitlements = Entitlements::WELFARE_FACILITIES | Entitlements::MILITARY_DISCOUNT;
    });
    let other = w.holder();
    assert_eq!(
        w.reason("welfare-1-12", &w.token(&parent, NOW), NOW),
        Reason::Accepted
    );
    // The soldier is discharged: the issuer revokes the subject and, as sponsor, the family.
    let list = RevocationList {
        epoch: 1,
        base: None,
        revoke: vec![
            RevocationEntry {
                kind: RevocationKind::Subject,
                id: soldier.credential.subject,
            },
            RevocationEntry {
                kind: RevocationKind::Sponsor,
                id: soldier.credential.subject,
            },
        ],
        reinstate: vec![],
        digest: None,
    };
    assert_eq!(w.engine.apply_revocations(&list), Ok(1));
    assert_eq!(
        w.reason("gate-1-12", &w.token(&soldier, NOW), NOW),
        Reason::Revoked
    );
    assert_eq!(
        w.reason("welfare-1-12", &w.token(&parent, NOW), NOW),
        Reason::Revoked
    );
    assert_eq!(
        w.reason("gate-1-12", &w.token(&other, NOW), NOW),
        Reason::Accepted
    );
    // One credential, by id, in a delta; a gapped delta is refused and changes nothing.
    let delta = RevocationList {
        epoch: 2,
        base: Some(1),
        revoke: vec![RevocationEntry {
            kind: RevocationKind::Credential,
            id: other.credential.id,
        }],
        reinstate: vec![],
        digest: None,
    };
    let gapped = RevocationList {
        epoch: 4,
        base: Some(3),
        ..delta.clone()
    };
    assert!(w.engine.apply_revocations(&gapped).is_err());
    assert_eq!(
        w.reason("gate-1-12", &w.token(&other, NOW), NOW),
        Reason::Accepted
    );
    assert_eq!(w.engine.apply_revocations(&delta), Ok(2));
    assert_eq!(
        w.reason("gate-1-12", &w.token(&other, NOW), NOW),
        Reason::Revoked
    );
    assert_eq!(w.engine.revocation_epoch(), (2, 3));
}

#[test]
fn bad_signatures_are_caught_on_both_layers() {
    let w = world();
    let h = w.holder();
    // Device signature: flip a bit of r (the last 64 bytes are r ‖ s).
    let mut t = w.token(&h, NOW);
    let n = t.len();
    t[n - 40] ^= 1;
    assert_eq!(w.reason("gate-1-12", &t, NOW), Reason::BadDeviceSignature);
    // A token signed by another device key than the credential binds.
    let thief = derive_key("thief", 1);
    let forged = gatehouse_protocol::Presentation {
        credential: &h.issued,
        timestamp: NOW,
        nonce: [9; 16],
        challenge: None,
    }
    .sign(&thief)
    .unwrap();
    assert_eq!(
        w.reason("gate-1-12", &forged, NOW),
        Reason::BadDeviceSignature
    );
    // Issuer signature: a credential whose fields were altered after issuing.
    let mut issued = h.issued.clone();
    let unit_at = issued.windows(2).position(|x| x == [0x0a, 0x84]).unwrap();
    issued[unit_at + 3] = 13; // 1/12 → 1/13
    let altered = gatehouse_protocol::Presentation {
        credential: &issued,
        timestamp: NOW,
        nonce: [8; 16],
        challenge: None,
    }
    .sign(&h.device)
    .unwrap();
    assert_eq!(
        w.reason("gate-1-12", &altered, NOW),
        Reason::BadIssuerSignature
    );
    let (hits, misses) = w.engine.occupancy().0;
    assert!(misses >= 2 && hits >= 1, "hits {hits} misses {misses}");
}

#[test]
fn strict_mode_denies_a_flipped_parity_the_default_cannot_see() {
    let v = gatehouse_protocol::vectors::all()
        .unwrap()
        .into_iter()
        .find(|v| v.name == "invalid-wrong-parity")
        .unwrap();
    let mut trust = TrustList::new();
    trust.insert(IssuerKey {
        name: "vectors".into(),
        public: gatehouse_protocol::vectors::issuer_key().public().clone(),
        not_before: 0,
        not_after: u64::MAX,
        retired: false,
    });
    let now = gatehouse_protocol::vectors::NOW;
    for (strict, expect) in [
        (true, Reason::BadIssuerSignature),
        (false, Reason::Accepted),
    ] {
        let config = EngineConfig {
            strict_signatures: strict,
            ..EngineConfig::default()
        };
        let e = Engine::new(config, trust.clone(), registry()).unwrap();
        let s = e.scanner("gate-1-12").unwrap();
        assert_eq!(
            e.verify(&s, &v.bytes, None, now).reason,
            expect,
            "strict={strict}"
        );
    }
}

#[test]
fn the_scanner_challenge_must_be_answered() {
    let w = world();
    let h = w.holder();
    let nfc = h.present(NOW, [1; 16], Some(b"challenge-A")).unwrap();
    assert_eq!(
        w.scan("gate-1-12", &nfc, Some(b"challenge-B"), None, NOW)
            .reason,
        Reason::ChallengeMismatch
    );
    let nfc = h.present(NOW, [2; 16], Some(b"challenge-A")).unwrap();
    assert_eq!(
        w.scan("gate-1-12", &nfc, Some(b"challenge-A"), None, NOW)
            .reason,
        Reason::Accepted
    );
    // A challenge token shown where no challenge was asked, and the reverse.
    let nfc = h.present(NOW, [3; 16], Some(b"challenge-A")).unwrap();
    assert_eq!(
        w.scan("gate-1-12", &nfc, None, None, NOW).reason,
        Reason::ChallengeMismatch
    );
    let qr = h.present(NOW, [4; 16], None).unwrap();
    assert_eq!(
        w.scan("gate-1-12", &qr, Some(b"challenge-A"), None, NOW)
            .reason,
        Reason::ChallengeMismatch
    );
}

#[test]
fn gate_policy_unit_type_and_entitlement() {
    let w = world();
    let h = w.holder();
    // Unit 1/12/103/2 is not under gate 2.
    assert_eq!(
        w.reason("gate-2", &w.token(&h, NOW), NOW),
        Reason::NotAdmitted
    );
    // A civil-servant card is not in the gate's admitted types.
    let cs = w.holder_with(|c| {
        c.credential_type = CredentialType::CivilServantId;
        c.category = HolderCategory::CivilServant;
    });
    assert_eq!(
        w.reason("gate-1-12", &w.token(&cs, NOW), NOW),
        Reason::NotAdmitted
    );
    // No base-entry entitlement.
    let noentry = w.holder_with(|c| c.entitlements = Entitlements::MILITARY_DISCOUNT);
    assert_eq!(
        w.reason("gate-1-12", &w.token(&noentry, NOW), NOW),
        Reason::NotAdmitted
    );
    // Family members: only at welfare gates, and only with the welfare entitlement.
    let family = |ent| {
        w.holder_with(|c| {
            c.credential_type = CredentialType::FamilyMember;
            c.category = HolderCategory::Spouse;
            c.sponsor = Some([5; 16]);
            c.entitlements = ent;
        })
    };
    let spouse = family(Entitlements::WELFARE_FACILITIES);
    assert_eq!(
        w.reason("gate-1-12", &w.token(&spouse, NOW), NOW),
        Reason::NotAdmitted
    );
    assert_eq!(
        w.reason("welfare-1-12", &w.token(&spouse, NOW), NOW),
        Reason::Accepted
    );
    let plain = family(Entitlements::MILITARY_DISCOUNT);
    assert_eq!(
        w.reason("welfare-1-12", &w.token(&plain, NOW), NOW),
        Reason::NotAdmitted
    );
    // The soldier at the welfare gate: not a family credential.
    assert_eq!(
        w.reason("welfare-1-12", &w.token(&h, NOW), NOW),
        Reason::NotAdmitted
    );
}

#[test]
fn partners_learn_only_the_discount_predicate() {
    let w = world();
    type Case = (
        CredentialType,
        HolderCategory,
        Entitlements,
        Option<[u8; 16]>,
        bool,
    );
    let cases: &[Case] = &[
        (
            CredentialType::MilitaryId,
            HolderCategory::Enlisted,
            Entitlements::MILITARY_DISCOUNT,
            None,
            true,
        ),
        (
            CredentialType::MilitaryId,
            HolderCategory::Officer,
            Entitlements::MILITARY_DISCOUNT,
            None,
            true,
        ),
        (
            CredentialType::FamilyMember,
            HolderCategory::Parent,
            Entitlements::MILITARY_DISCOUNT,
            Some([1; 16]),
            true,
        ),
        (
            CredentialType::Reservist,
            HolderCategory::Reservist,
            Entitlements::MILITARY_DISCOUNT,
            None,
            true,
        ),
        (
            CredentialType::MilitaryId,
            HolderCategory::LongServiceVeteran,
            Entitlements::MILITARY_DISCOUNT,
            None,
            true,
        ),
        (
            CredentialType::MilitaryId,
            HolderCategory::Enlisted,
            Entitlements::BASE_ENTRY,
            None,
            false,
        ),
        (
            CredentialType::MilitaryId,
            HolderCategory::CivilianEmployee,
            Entitlements::MILITARY_DISCOUNT,
            None,
            false,
        ),
        (
            CredentialType::CivilServantId,
            HolderCategory::CivilServant,
            Entitlements::MILITARY_DISCOUNT,
            None,
            false,
        ),
    ];
    for &(t, cat, ent, sponsor, eligible) in cases {
        let h = w.holder_with(|c| {
            c.credential_type = t;
            c.category = cat;
            c.entitlements = ent;
            c.sponsor = sponsor;
        });
        let v = w.verify("partner", &w.token(&h, NOW), NOW);
        if eligible {
            assert_eq!(v.reason, Reason::Accepted, "{cat}");
            assert_eq!(
                v.attributes,
                gatehouse_protocol::Attributes {
                    predicate: Some(Predicate::MilitaryDiscount),
                    ..Default::default()
                }
            );
        } else {
            assert_eq!(v.reason, Reason::NotEligible, "{cat}");
            assert!(v.attributes.is_empty());
        }
    }
}

#[test]
fn age_checks_learn_only_19_or_older() {
    let w = world();
    // NOW is 2027-01-15 08:00 UTC (17:00 in Korea). Under the Youth Protection Act everyone
    // born in 2008 or before is an adult in 2027, whatever their birthday.
    let born = |d: Option<Date>, flag: Option<bool>| {
        w.holder_with(|c| {
            c.birth_date = d;
            c.age_over_19 = flag;
            c.not_before = NOW - 60 * 86_400;
        })
    };
    let late_2008 = born(Date::new(2008, 12, 31).ok(), None);
    let v = w.verify("age", &w.token(&late_2008, NOW), NOW);
    assert_eq!(v.reason, Reason::Accepted);
    assert_eq!(
        v.attributes,
        gatehouse_protocol::Attributes {
            predicate: Some(Predicate::AgeOver19),
            ..Default::default()
        }
    );
    let early_2009 = born(Date::new(2009, 1, 1).ok(), None);
    assert_eq!(
        w.reason("age", &w.token(&early_2009, NOW), NOW),
        Reason::NotEligible
    );
    assert_eq!(
        w.reason("age", &w.token(&born(None, Some(true)), NOW), NOW),
        Reason::Accepted
    );
    assert_eq!(
        w.reason("age", &w.token(&born(None, Some(false)), NOW), NOW),
        Reason::NotEligible
    );
    assert_eq!(
        w.reason("age", &w.token(&born(None, None), NOW), NOW),
        Reason::AttributeMissing
    );
    // The civil date is Korea's: at 2026-12-31T15:00Z it is already 2027 there.
    let born_2008 = born(Date::new(2008, 6, 1).ok(), None);
    let new_year_kst: u64 = 1_798_729_200; // 2026-12-31T15:00:00Z
    let before = new_year_kst - 1;
    assert_eq!(
        w.reason("age", &w.token(&born_2008, before), before),
        Reason::NotEligible
    );
    assert_eq!(
        w.reason("age", &w.token(&born_2008, new_year_kst), new_year_kst),
        Reason::Accepted
    );
}

#[derive(Debug, Clone)]
enum Kind {
    Valid,
    Garbage(Vec<u8>),
    Truncated,
    Replay(usize),
    Stale,
    WrongGate,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Valid),
        1 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(Kind::Garbage),
        1 => Just(Kind::Truncated),
        2 => (0usize..64).prop_map(Kind::Replay),
        1 => Just(Kind::Stale),
        1 => Just(Kind::WrongGate),
    ]
}

/// (scanner, token) for each kind, in order, from `holders` in turn; `nonce` labels the fresh
/// tokens' nonces, and a replay repeats an earlier token of the list.
fn scans(kinds: &[Kind], holders: &[Holder], nonce: &str) -> Vec<(String, Vec<u8>)> {
    let mut items: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        let h = &holders[i % holders.len()];
        let fresh = || {
            h.present(NOW - 1, derive_id(nonce, i as u64), None)
                .unwrap()
        };
        let (scanner, token) = match k {
            Kind::Valid => ("gate-1-12", fresh()),
            Kind::Garbage(g) => ("partner", g.clone()),
            Kind::Truncated => {
                let t = fresh();
                ("gate-1-12", t[..t.len() / 2].to_vec())
            }
            Kind::Replay(j) => match items.get(*j % items.len().max(1)) {
                Some((_, t)) => ("age", t.clone()),
                None => ("gate-1-12", fresh()),
            },
            Kind::Stale => ("gate-1-12", h.present(NOW - 60, [0; 16], None).unwrap()),
            Kind::WrongGate => ("gate-2", fresh()),
        };
        items.push((scanner.to_string(), token));
    }
    items
}

/// Whether a token denied (or accepted) for `r` got as far as its signatures: every check
/// before them passed.
fn reaches_signatures(r: &Reason) -> bool {
    !matches!(
        r,
        Reason::Malformed
            | Reason::UnsupportedVersion
            | Reason::UnknownIssuer
            | Reason::IssuerKeyNotValid
            | Reason::NotYetValid
            | Reason::Expired
            | Reason::OutsideLeave
            | Reason::FromFuture
            | Reason::Stale
            | Reason::NodeRestarted
            | Reason::RevocationsStale
            | Reason::Revoked
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A batch gives exactly the verdicts of one-by-one checks, in order, with invalid tokens
    /// and replays (also within the batch) mixed in.
    #[test]
    fn a_batch_equals_one_by_one(kinds in proptest::collection::vec(kind(), 1..64)) {
        let seq = world();
        let bat = world_with(EngineConfig { threads: 2, ..EngineConfig::default() });
        let holders: Vec<Holder> = (0..4).map(|_| seq.holder()).collect();
        let items = scans(&kinds, &holders, "batch nonce");
        let one_by_one: Vec<Reason> = items.iter().map(|(s, t)| seq.reason(s, t, NOW)).collect();
        let batch_items: Vec<Item> = items
            .iter()
            .map(|(s, t)| Item::new(bat.engine.scanner(s).unwrap(), t.clone()))
            .collect();
        let batched: Vec<Reason> = bat.verify_batch(&batch_items, NOW).into_iter().map(|v| v.reason).collect();
        prop_assert_eq!(batched, one_by_one);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A batch whose signatures are checked with one equation (`batch_from`), or with
    /// multi-buffer calls where they run (not strict), gives exactly the verdicts of one-by-one
    /// checks, strict or not, with tokens whose bytes were flipped anywhere (signatures, parity
    /// bits, keys) mixed in: a failed equation, or a signature a call did not prove, falls back
    /// to the engine's own single check.
    #[test]
    fn a_batch_checked_with_one_equation_equals_one_by_one(
        kinds in proptest::collection::vec(kind(), 1..48),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..6),
        strict in any::<bool>(),
        multibuffer in any::<bool>(),
    ) {
        let multibuffer = multibuffer && !strict && multibuffer_runs();
        let config = |batch| EngineConfig {
            strict_signatures: strict,
            batch,
            batch_from: 1,
            ..EngineConfig::default()
        };
        let seq = world_with(config(BatchMode::Off));
        let eq = world_with(config(if multibuffer {
            BatchMode::Multibuffer
        } else {
            BatchMode::Equation
        }));
        let holders: Vec<Holder> = (0..4).map(|_| seq.holder()).collect();
        let mut items = scans(&kinds, &holders, "equation nonce");
        for (at, mask) in &flips {
            let (_, t) = &mut items[at % kinds.len()];
            if !t.is_empty() {
                let n = t.len();
                t[(at / 7) % n] ^= mask;
            }
        }
        let to_items = |w: &World| -> Vec<Item> {
            items
                .iter()
                .map(|(s, t)| Item::new(w.engine.scanner(s).unwrap(), t.clone()))
                .collect()
        };
        let one_by_one: Vec<Reason> = to_items(&seq)
            .iter()
            .map(|it| seq.engine.verify_batch_serial(std::slice::from_ref(it), NOW)[0].reason)
            .collect();
        let together: Vec<Reason> = eq
            .engine
            .verify_batch_serial(&to_items(&eq), NOW)
            .into_iter()
            .map(|v| v.reason)
            .collect();
        prop_assert_eq!(&together, &one_by_one);
        // The equation ran whenever a token reached its signatures, and failed whenever one
        // of them was bad.
        let reached = one_by_one.iter().any(reaches_signatures);
        let bad = one_by_one.iter().any(|r| matches!(
            r,
            Reason::BadIssuerSignature | Reason::BadDeviceSignature
        ));
        let stats = eq.engine.batch_stats();
        if multibuffer {
            // Every token that reached its signatures put at least one into a call; a call
            // takes three or more.
            let reaching = one_by_one.iter().filter(|r| reaches_signatures(r)).count();
            prop_assert_eq!(stats.batches(), 0);
            if reaching >= MB_FROM {
                prop_assert!(stats.mb_calls() >= 1);
            }
            if !bad {
                prop_assert_eq!(stats.mb_unproven(), 0);
            }
        } else {
            prop_assert_eq!(stats.batches(), u64::from(reached));
            if bad {
                prop_assert_eq!(stats.failed(), 1);
            }
        }
        prop_assert_eq!(seq.engine.batch_stats().batches(), 0);
        prop_assert_eq!(seq.engine.batch_stats().mb_calls(), 0);
    }
}

#[test]
fn a_retry_of_the_same_scan_gets_the_first_verdict_marked_as_a_repeat() {
    let w = world();
    let h = w.holder();
    let t = w.token(&h, NOW - 2);
    let key = [7u8; 16];
    let first = w.scan("gate-1-12", &t, None, Some(key), NOW);
    assert_eq!(first.reason, Reason::Accepted);
    assert!(!first.repeat);
    assert!(first.attributes.unit.is_some());
    // The same scanner, the same key, a second later: the first answer again, as a repeat.
    let again = w.scan("gate-1-12", &t, None, Some(key), NOW + 1);
    assert_eq!(again, first.repeated());
    // A new scan of the used token: another key, no key, or another scanner with the key.
    assert_eq!(
        w.scan("gate-1-12", &t, None, Some([8; 16]), NOW + 1).reason,
        Reason::Replayed
    );
    assert_eq!(w.reason("gate-1-12", &t, NOW + 1), Reason::Replayed);
    let other = w.scan("gate-2", &t, None, Some(key), NOW + 1);
    assert_eq!(other.reason, Reason::Replayed);
    assert!(!other.repeat);
    // A token first used without a key cannot be claimed by a retry later.
    let t2 = w.token(&h, NOW - 2);
    assert_eq!(w.reason("gate-1-12", &t2, NOW), Reason::Accepted);
    assert_eq!(
        w.scan("gate-1-12", &t2, None, Some(key), NOW).reason,
        Reason::Replayed
    );
    // Checks 1-6 run again on a retry: once stale, stale.
    assert_eq!(
        w.scan("gate-1-12", &t, None, Some(key), NOW + 40).reason,
        Reason::Stale
    );
}

#[test]
fn a_retry_repeats_a_denial_too_and_within_one_batch() {
    let w = world();
    let h = w.holder();
    // Gate 2 does not admit unit 1/12: the first verdict is a deny, and its retry repeats it.
    let t = w.token(&h, NOW);
    let key = [9u8; 16];
    let first = w.scan("gate-2", &t, None, Some(key), NOW);
    assert_eq!(first.reason, Reason::NotAdmitted);
    let again = w.scan("gate-2", &t, None, Some(key), NOW);
    assert_eq!((again.reason, again.repeat), (Reason::NotAdmitted, true));
    // The same token twice in one batch, same scan: the second is the first's repeat.
    let t = w.token(&h, NOW);
    let gate = w.engine.scanner("gate-1-12").unwrap();
    let item = |retry| Item {
        scanner: Arc::clone(&gate),
        token: t.clone(),
        challenge: None,
        retry,
        mdoc: None,
    };
    let v = w.verify_batch(
        &[item(Some(key)), item(Some(key)), item(Some([1; 16]))],
        NOW,
    );
    assert_eq!(
        v.iter().map(|v| (v.reason, v.repeat)).collect::<Vec<_>>(),
        vec![
            (Reason::Accepted, false),
            (Reason::Accepted, true),
            (Reason::Replayed, false)
        ]
    );
}

#[test]
fn after_a_restart_tokens_signed_before_it_are_not_accepted() {
    // A node on a memory table sets accept_from past its start plus the skew
    // (`restart_fence`); here the fence is set directly.
    let w = world_with(EngineConfig {
        accept_from: NOW - 3,
        ..EngineConfig::default()
    });
    let h = w.holder();
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW - 4), NOW),
        Reason::NodeRestarted
    );
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW - 3), NOW),
        Reason::Accepted
    );
    // Stale still wins over the fence (checks in SPEC order).
    assert_eq!(
        w.reason("gate-1-12", &w.token(&h, NOW - 40), NOW),
        Reason::Stale
    );
}
