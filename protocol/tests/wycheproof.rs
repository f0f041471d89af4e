//! Wycheproof ECDSA P-256 / SHA-256 vectors against both verification backends.
//!
//! - `verify_es256` is a stock ES256 verifier: every "valid" vector must verify, every
//!   "invalid" one must fail, on [`Backend::Ring`] and [`Backend::P256`] alike.
//! - `verify` adds gatehouse's form rule (low s): a valid vector verifies exactly when its s is
//!   low, and no vector with a high s ever verifies.
//! - `verify_strict` also checks the R y-parity: of the two parities, exactly one passes for a
//!   valid low-s vector.
//!
//! The P1363 (`r ‖ s`) file is the main source. The DER file is converted to `r ‖ s` with a
//! strict DER reader as a second, larger source; a signature that is not strict DER counts as
//! not verifying.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_protocol::{
    verify, verify_es256, verify_strict, Backend, PublicKey, Signature, SignatureError,
};
use wycheproof::ecdsa::{TestName, TestSet};
use wycheproof::{EllipticCurve, HashFunction, TestResult};

/// ⌊n/2⌋ of P-256, big-endian: the largest low s.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// One vector, reduced to what the verifiers see.
struct Case<'a> {
    id: String,
    result: TestResult,
    key: Option<PublicKey>,
    msg: &'a [u8],
    /// `r ‖ s`, or `None` when the signature has no such form (wrong length, bad DER).
    rs: Option<[u8; 64]>,
}

#[derive(Debug, Default)]
struct Counts {
    vectors: usize,
    runs: usize,
    valid: usize,
    invalid: usize,
    acceptable: usize,
    acceptable_verified: usize,
    bad_keys: usize,
    unusable_signatures: usize,
    valid_low_s: usize,
    valid_high_s: usize,
    high_s_seen: usize,
    strict_checked: usize,
}

fn is_high_s(rs: &[u8; 64]) -> bool {
    rs[32..] > HALF_ORDER[..]
}

/// Runs one case through every verifier and checks the expectations.
fn check(case: &Case<'_>, n: &mut Counts) {
    n.vectors += 1;
    match case.result {
        TestResult::Valid => n.valid += 1,
        TestResult::Invalid => n.invalid += 1,
        TestResult::Acceptable => n.acceptable += 1,
    }
    if case.key.is_none() {
        n.bad_keys += 1;
    }
    if case.rs.is_none() {
        n.unusable_signatures += 1;
    }
    let (key, rs) = match (&case.key, &case.rs) {
        (Some(k), Some(rs)) => (k, rs),
        _ => {
            // No key or no r ‖ s form: nothing can verify, which is only right if the vector
            // is not valid.
            assert_ne!(
                case.result,
                TestResult::Valid,
                "{}: valid vector has an unusable key or signature",
                case.id
            );
            n.runs += Backend::ALL.len();
            return;
        }
    };

    // Stock ES256.
    let mut verified = Vec::new();
    for backend in Backend::ALL {
        n.runs += 1;
        let ok = verify_es256(backend, key, case.msg, rs).is_ok();
        match case.result {
            TestResult::Valid => assert!(ok, "{}: valid vector fails on {backend:?}", case.id),
            TestResult::Invalid => {
                assert!(!ok, "{}: invalid vector verifies on {backend:?}", case.id)
            }
            TestResult::Acceptable => {}
        }
        verified.push(ok);
    }
    if case.result == TestResult::Acceptable {
        if verified.iter().any(|v| *v) {
            n.acceptable_verified += 1;
        }
        if verified.iter().any(|v| *v != verified[0]) {
            println!(
                "{}: acceptable vector, backends disagree: {verified:?}",
                case.id
            );
        }
    }

    // gatehouse's rule: low s only.
    let high = is_high_s(rs);
    if high {
        n.high_s_seen += 1;
    }
    let sig = Signature {
        rs: *rs,
        y_odd: false,
    };
    for backend in Backend::ALL {
        let got = verify(backend, key, case.msg, &sig);
        if high {
            assert!(
                got.is_err(),
                "{}: high-s vector verifies on {backend:?}",
                case.id
            );
        }
        match case.result {
            TestResult::Valid if !high => {
                assert_eq!(
                    got,
                    Ok(()),
                    "{}: valid low-s vector fails on {backend:?}",
                    case.id
                )
            }
            TestResult::Invalid => {
                assert!(
                    got.is_err(),
                    "{}: invalid vector verifies on {backend:?}",
                    case.id
                )
            }
            _ => {}
        }
    }
    if case.result == TestResult::Valid {
        if high {
            n.valid_high_s += 1;
            assert_eq!(
                verify(Backend::Ring, key, case.msg, &sig),
                Err(SignatureError::HighS),
                "{}",
                case.id
            );
        } else {
            n.valid_low_s += 1;
            // Exactly one R y-parity is right.
            n.strict_checked += 1;
            let even = verify_strict(
                key,
                case.msg,
                &Signature {
                    rs: *rs,
                    y_odd: false,
                },
            );
            let odd = verify_strict(
                key,
                case.msg,
                &Signature {
                    rs: *rs,
                    y_odd: true,
                },
            );
            match (even, odd) {
                (Ok(()), Err(SignatureError::WrongParity))
                | (Err(SignatureError::WrongParity), Ok(())) => {}
                other => panic!("{}: strict check on both parities gave {other:?}", case.id),
            }
        }
    } else if case.result == TestResult::Invalid {
        for y_odd in [false, true] {
            assert!(
                verify_strict(key, case.msg, &Signature { rs: *rs, y_odd }).is_err(),
                "{}: invalid vector passes the strict check",
                case.id
            );
        }
    }
}

fn load(name: TestName) -> TestSet {
    let set = TestSet::load(name).unwrap();
    for group in &set.test_groups {
        assert_eq!(group.key.curve, EllipticCurve::Secp256r1);
        assert_eq!(group.hash, HashFunction::Sha2_256);
    }
    set
}

#[test]
fn p1363_vectors_on_both_backends() {
    let set = load(TestName::EcdsaSecp256r1Sha256P1363);
    let mut n = Counts::default();
    for group in &set.test_groups {
        // Public keys come as uncompressed SEC1.
        let key = PublicKey::from_sec1(&group.key.key).ok();
        for test in &group.tests {
            let case = Case {
                id: format!("p1363 tcId {} ({})", test.tc_id, test.comment),
                result: test.result,
                key: key.clone(),
                msg: &test.msg,
                rs: <[u8; 64]>::try_from(test.sig.as_slice()).ok(),
            };
            check(&case, &mut n);
        }
    }
    println!("wycheproof P1363: {n:?}");
    assert_eq!(n.vectors, set.number_of_tests);
    assert!(n.vectors >= 250, "only {} vectors", n.vectors);
    assert!(n.runs > 300, "only {} verifications ran", n.runs);
    assert!(n.valid > 100 && n.invalid > 50, "{n:?}");
    // Both halves of the low-s rule were exercised.
    assert!(n.valid_low_s > 0 && n.valid_high_s > 0, "{n:?}");
}

/// Reads a strict DER `SEQUENCE { INTEGER r, INTEGER s }` into `r ‖ s`: definite short or
/// minimal long lengths, minimal positive integers of at most 32 significant bytes, nothing
/// after the sequence.
fn der_to_p1363(der: &[u8]) -> Option<[u8; 64]> {
    fn length(input: &[u8]) -> Option<(usize, &[u8])> {
        let (&first, rest) = input.split_first()?;
        match first {
            0..=0x7f => Some((usize::from(first), rest)),
            0x81 => {
                let (&len, rest) = rest.split_first()?;
                (len >= 0x80).then_some((usize::from(len), rest))
            }
            _ => None,
        }
    }
    fn integer(input: &[u8]) -> Option<([u8; 32], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag != 0x02 {
            return None;
        }
        let (len, rest) = length(rest)?;
        if len == 0 || len > rest.len() {
            return None;
        }
        let (value, rest) = rest.split_at(len);
        if value[0] & 0x80 != 0 {
            return None; // negative
        }
        let value = if value[0] == 0 {
            if value.len() > 1 && value[1] & 0x80 == 0 {
                return None; // non-minimal
            }
            &value[1..]
        } else {
            value
        };
        if value.len() > 32 {
            return None;
        }
        let mut out = [0u8; 32];
        out[32 - value.len()..].copy_from_slice(value);
        Some((out, rest))
    }
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (len, rest) = length(rest)?;
    if len != rest.len() {
        return None;
    }
    let (r, rest) = integer(rest)?;
    let (s, rest) = integer(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut rs = [0u8; 64];
    rs[..32].copy_from_slice(&r);
    rs[32..].copy_from_slice(&s);
    Some(rs)
}

#[test]
fn der_vectors_converted_to_p1363_on_both_backends() {
    let set = load(TestName::EcdsaSecp256r1Sha256);
    let mut n = Counts::default();
    for group in &set.test_groups {
        let key = PublicKey::from_sec1(&group.key.key).ok();
        for test in &group.tests {
            let case = Case {
                id: format!("der tcId {} ({})", test.tc_id, test.comment),
                result: test.result,
                key: key.clone(),
                msg: &test.msg,
                rs: der_to_p1363(&test.sig),
            };
            check(&case, &mut n);
        }
    }
    println!("wycheproof DER→P1363: {n:?}");
    assert_eq!(n.vectors, set.number_of_tests);
    assert!(n.runs > 300, "only {} verifications ran", n.runs);
    assert!(n.valid > 100, "{n:?}");
    assert!(n.valid_low_s > 0 && n.valid_high_s > 0, "{n:?}");
}

#[test]
fn the_strict_der_reader_reads_what_it_should() {
    // SEQUENCE { INTEGER 1, INTEGER 0x80 } (0x80 needs a leading zero).
    let mut expect = [0u8; 64];
    expect[31] = 1;
    expect[63] = 0x80;
    assert_eq!(
        der_to_p1363(&[0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80]),
        Some(expect)
    );
    // Non-minimal integer, negative integer, long-form short length, trailing byte.
    assert_eq!(
        der_to_p1363(&[0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01]),
        None
    );
    assert_eq!(
        der_to_p1363(&[0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x01]),
        None
    );
    assert_eq!(
        der_to_p1363(&[0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01]),
        None
    );
    assert_eq!(
        der_to_p1363(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00]),
        None
    );
}
