//! Every Wycheproof ECDSA P-256 / SHA-256 vector (the P1363 `r ‖ s` file) through the batch
//! equation, with each of the two R parities: alone, and mixed into a batch of seven valid
//! gatehouse signatures. The equation must agree with the strict single check
//! (`verify_strict`) every time: a batch verifies exactly when the vector, with that parity,
//! passes it (so invalid vectors and high-s forms never verify, and of a valid low-s vector's
//! two parities exactly one does).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use gatehouse_batch::{verify_batch, Entry};
use gatehouse_protocol::{verify_strict, PrivateKey, PublicKey, Signature};
use wycheproof::ecdsa::{TestName, TestSet};
use wycheproof::TestResult;

#[test]
fn every_p1363_vector_agrees_with_the_strict_check_alone_and_in_a_batch() {
    let set = TestSet::load(TestName::EcdsaSecp256r1Sha256P1363).unwrap();
    let valid: Vec<(PublicKey, Vec<u8>, Signature)> = (0..7u8)
        .map(|i| {
            let mut k = [i + 3; 32];
            k[0] = 1;
            let key = PrivateKey::from_bytes(&k).unwrap();
            let msg = vec![i; 40];
            let sig = key.sign(&msg).unwrap();
            (key.public().clone(), msg, sig)
        })
        .collect();
    let (mut runs, mut verified, mut valid_vectors_verified) = (0usize, 0usize, 0usize);
    for group in &set.test_groups {
        let Ok(key) = PublicKey::from_sec1(&group.key.key) else {
            continue;
        };
        for test in &group.tests {
            let Ok(rs) = <[u8; 64]>::try_from(test.sig.as_slice()) else {
                continue;
            };
            for y_odd in [false, true] {
                let sig = Signature { rs, y_odd };
                let strict = verify_strict(&key, &test.msg, &sig).is_ok();
                let alone = verify_batch(&[Entry {
                    key: &key,
                    msg: &test.msg,
                    sig: &sig,
                }])
                .is_ok();
                assert_eq!(alone, strict, "tcId {} parity {y_odd}: alone", test.tc_id);
                let mut batch: Vec<Entry<'_>> = valid
                    .iter()
                    .map(|(key, msg, sig)| Entry { key, msg, sig })
                    .collect();
                let at = test.tc_id % (batch.len() + 1);
                batch.insert(
                    at,
                    Entry {
                        key: &key,
                        msg: &test.msg,
                        sig: &sig,
                    },
                );
                let mixed = verify_batch(&batch).is_ok();
                assert_eq!(
                    mixed, strict,
                    "tcId {} parity {y_odd}: in a batch",
                    test.tc_id
                );
                runs += 1;
                if strict {
                    verified += 1;
                    if test.result == TestResult::Valid {
                        valid_vectors_verified += 1;
                    }
                }
                assert!(
                    !(strict && test.result == TestResult::Invalid),
                    "tcId {}: an invalid vector verified",
                    test.tc_id
                );
            }
        }
    }
    println!("{runs} runs, {verified} verified ({valid_vectors_verified} of valid vectors)");
    assert!(runs > 400, "only {runs} runs");
    assert!(verified > 20, "only {verified} verified");
}
