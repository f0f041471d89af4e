//! The rules SPEC states about edge cases, held to the code: the one rule for the empty
//! challenge (§1.2, §8.3), the request id echoed in error responses whenever it was readable
//! (§8.4), what a too-long token, challenge or batch is (§8.3), and which of
//! `unsupported_version` and `malformed` wins (§6 step 1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_protocol::vectors::{self, reference_check};
use gatehouse_protocol::{
    kind, request_id, DecodeError, Reason, Request, TokenParams, MAX_BATCH, MAX_CHALLENGE_LEN,
    MAX_TOKEN_LEN,
};

/// Deterministic CBOR head for major type `major` and argument `n`.
fn head(major: u8, n: usize) -> Vec<u8> {
    let m = major << 5;
    match n {
        0..=23 => vec![m | n as u8],
        24..=0xff => vec![m | 24, n as u8],
        0x100..=0xffff => {
            let mut v = vec![m | 25];
            v.extend_from_slice(&(n as u16).to_be_bytes());
            v
        }
        _ => {
            let mut v = vec![m | 26];
            v.extend_from_slice(&(n as u32).to_be_bytes());
            v
        }
    }
}

fn bstr(b: &[u8]) -> Vec<u8> {
    let mut v = head(2, b.len());
    v.extend_from_slice(b);
    v
}

/// A Verify body `{1: id, 2: token, ? 3: challenge}` written by hand, so that it can break the
/// rules the encoder keeps.
fn verify_body(id: u8, token: &[u8], challenge: Option<&[u8]>) -> Vec<u8> {
    let mut v = head(5, 2 + usize::from(challenge.is_some()));
    v.extend_from_slice(&[0x01, id, 0x02]);
    v.extend(bstr(token));
    if let Some(c) = challenge {
        v.push(0x03);
        v.extend(bstr(c));
    }
    v
}

#[test]
fn an_empty_challenge_is_refused_everywhere() {
    // §1.2: a challenge is 1 to 32 bytes. A request carrying an empty one is unreadable (an
    // error response), and so is a token carrying one.
    let body = verify_body(7, b"token", Some(b""));
    assert_eq!(
        Request::decode(kind::VERIFY, &body),
        Err(DecodeError::BadLength("challenge"))
    );
    assert_eq!(request_id(&body), Some(7));
    // One byte and 32 bytes are fine; 33 is too long.
    for len in [1, MAX_CHALLENGE_LEN] {
        let body = verify_body(7, b"token", Some(&vec![0xaa; len]));
        assert!(Request::decode(kind::VERIFY, &body).is_ok(), "{len}");
    }
    let body = verify_body(7, b"token", Some(&[0xaa; MAX_CHALLENGE_LEN + 1]));
    assert!(Request::decode(kind::VERIFY, &body).is_err());
    assert_eq!(request_id(&body), Some(7));
    // The wallet side refuses to sign one.
    let credential = vectors::all()
        .unwrap()
        .into_iter()
        .find(|v| v.name == "credential")
        .unwrap()
        .bytes;
    let signed = gatehouse_protocol::Presentation {
        credential: &credential,
        timestamp: vectors::NOW,
        nonce: [0; 16],
        challenge: Some(b""),
    }
    .sign(&vectors::device_key());
    assert!(signed.is_err());
}

#[test]
fn too_long_tokens_and_batches_make_the_request_unreadable_but_keep_the_id() {
    let body = verify_body(9, &vec![0; MAX_TOKEN_LEN + 1], None);
    assert_eq!(
        Request::decode(kind::VERIFY, &body),
        Err(DecodeError::TooLong("token"))
    );
    assert_eq!(request_id(&body), Some(9));

    let mut batch = vec![0xa2, 0x01, 0x18, 0x2a, 0x02];
    batch.extend(head(4, MAX_BATCH + 1));
    for _ in 0..=MAX_BATCH {
        batch.extend(bstr(b"t"));
    }
    assert!(Request::decode(kind::VERIFY_BATCH, &batch).is_err());
    assert_eq!(request_id(&batch), Some(42));

    // Unreadable ids: not a map, id not first, id not a uint, empty map, non-minimal head.
    for body in [
        &[0xff, 0xff][..],
        &[0xa1, 0x02, 0x40],
        &[0xa1, 0x01, 0x40],
        &[0xa0],
        &[0xa1, 0x01, 0x18, 0x05],
        &[],
    ] {
        assert_eq!(request_id(body), None, "{body:02x?}");
    }
}

/// A COSE_Sign1 around `payload` with a well-formed but meaningless signature.
fn sign1(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0xd2, 0x84, 0x43, 0xa1, 0x01, 0x26];
    v.extend_from_slice(&[0xa1, 0x3a, 0x00, 0x01, 0x00, 0x00, 0x00]);
    v.extend(bstr(payload));
    v.extend(bstr(&[0x01; 64]));
    v
}

fn check(bytes: &[u8]) -> Reason {
    let issuer = vectors::issuer_key();
    let kid = issuer.public().key_id();
    reference_check(
        bytes,
        &[(&kid, issuer.public())],
        vectors::NOW,
        TokenParams::default(),
        5,
        true,
    )
}

#[test]
fn unsupported_version_wins_over_what_follows_it_and_malformed_before_it() {
    // Version 2 (key 1, read first), then an undefined key with garbage: the version decides.
    let payload = [0xa2, 0x01, 0x02, 0x18, 0x63, 0xff];
    assert_eq!(check(&sign1(&payload)), Reason::UnsupportedVersion);
    // A version 1 payload with the same garbage is malformed.
    let payload = [0xa2, 0x01, 0x01, 0x18, 0x63, 0xff];
    assert_eq!(check(&sign1(&payload)), Reason::Malformed);
    // Damage before the version (the COSE envelope) is malformed, whatever the version says.
    let mut bytes = sign1(&[0xa1, 0x01, 0x02]);
    bytes[0] = 0xd3;
    assert_eq!(check(&bytes), Reason::Malformed);
    // A payload that does not start with its version is malformed too: the version must come first.
    let payload = [0xa2, 0x02, 0x40, 0x01, 0x02];
    assert_eq!(check(&sign1(&payload)), Reason::Malformed);
}
