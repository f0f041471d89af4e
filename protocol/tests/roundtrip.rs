//! Property tests: every structure gatehouse writes reads back as itself.
//!
//! - credentials (every type and category, optional fields, unit paths of 0..=8 levels, the
//!   consistency rules of `Credential::validate`) through `encode_payload`/`decode_payload`;
//! - issued credentials through `SignedCredential::decode`, verified strictly and on both
//!   backends;
//! - presentation tokens through `Token::decode`, their signatures, and `replay_id`;
//! - the QR text form for arbitrary bytes;
//! - every request and response variant through a frame;
//! - revocation lists (snapshots and deltas).
//!
//! Signing costs about a millisecond per case in the debug profile, so the signing properties
//! run 64 cases; the others run proptest's default 256.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_protocol::{
    from_qr_text, kind, split_frame, to_qr_text, verify, verify_strict, Attributes, Backend,
    Credential, CredentialType, Date, DecodeError, Entitlements, FrameHeader, HolderCategory,
    MdocRequest, Predicate, Presentation, PrivateKey, Reason, Request, Response, RevocationEntry,
    RevocationKind, RevocationList, SignError, SignatureError, SignedCredential, Token, UnitPath,
    Verdict, WireErrorCode, FRAME_HEADER_LEN, MAX_BATCH, MAX_CHALLENGE_LEN, MAX_CREDENTIAL_LEN,
    MAX_ERROR_TEXT, MAX_SESSION_TRANSCRIPT, MAX_TOKEN_LEN, MAX_UNIT_DEPTH, NONCE_LEN, QR_PREFIX,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// A u64 that lands on every CBOR head size and its boundaries.
fn cbor_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..24,
        24u64..=0xff,
        0x100u64..=0xffff,
        0x1_0000u64..=0xffff_ffff,
        any::<u64>(),
        select(vec![
            0u64,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX - 1,
            u64::MAX,
        ]),
    ]
}

/// Two distinct u64 in ascending order.
fn ascending_pair() -> impl Strategy<Value = (u64, u64)> {
    (cbor_u64(), cbor_u64()).prop_map(|(a, b)| match a.cmp(&b) {
        std::cmp::Ordering::Less => (a, b),
        std::cmp::Ordering::Greater => (b, a),
        std::cmp::Ordering::Equal if a == u64::MAX => (a - 1, a),
        std::cmp::Ordering::Equal => (a, a + 1),
    })
}

fn unit_path() -> impl Strategy<Value = UnitPath> {
    vec(
        prop_oneof![
            any::<u16>(),
            0u16..24,
            select(vec![0u16, 23, 24, 255, 256, u16::MAX])
        ],
        0..=MAX_UNIT_DEPTH,
    )
    .prop_map(|levels| UnitPath::new(&levels).unwrap())
}

/// Every date that exists between 1800 and 9999.
fn date() -> impl Strategy<Value = Date> {
    (1800u32..=9999, 1u32..=12, 1u32..=31)
        .prop_filter_map("a real calendar date", |(y, m, d)| Date::new(y, m, d).ok())
}

fn entitlements() -> impl Strategy<Value = Entitlements> {
    (0u64..=7).prop_map(|bits| Entitlements::from_bits(bits).unwrap())
}

/// A valid credential: the consistency rules of `Credential::validate` are respected by
/// construction. The device key is only well-formed (prefix 2 or 3), not necessarily a point;
/// the signing properties replace it with a real key.
fn credential() -> impl Strategy<Value = Credential> {
    let non_family: Vec<CredentialType> = CredentialType::ALL
        .iter()
        .copied()
        .filter(|t| *t != CredentialType::FamilyMember)
        .collect();
    let ids = (any::<[u8; 16]>(), any::<[u8; 16]>(), any::<[u8; 16]>());
    let kinds = (select(HolderCategory::ALL), select(non_family));
    let times = (ascending_pair(), ascending_pair());
    let attributes = (
        unit_path(),
        entitlements(),
        option::of(date()),
        option::of(any::<bool>()),
    );
    let device_key = (any::<bool>(), any::<[u8; 32]>()).prop_map(|(odd, x)| {
        let mut k = [0u8; 33];
        k[0] = if odd { 3 } else { 2 };
        k[1..].copy_from_slice(&x);
        k
    });
    (ids, kinds, times, attributes, device_key).prop_map(
        |(
            (id, subject, sponsor),
            (category, other_type),
            ((not_before, not_after), leave),
            (unit, entitlements, birth_date, age_over_19),
            device_key,
        )| {
            let credential_type = if category.is_family() {
                CredentialType::FamilyMember
            } else {
                other_type
            };
            Credential {
                id,
                credential_type,
                category,
                subject,
                sponsor: category.is_family().then_some(sponsor),
                not_before,
                not_after,
                leave: (credential_type == CredentialType::LeavePass).then_some(leave),
                unit,
                entitlements,
                birth_date,
                age_over_19,
                device_key,
            }
        },
    )
}

fn private_key() -> impl Strategy<Value = PrivateKey> {
    any::<[u8; 32]>().prop_filter_map("a valid P-256 scalar", |b| PrivateKey::from_bytes(&b).ok())
}

fn predicate() -> impl Strategy<Value = Predicate> {
    prop_oneof![
        Just(Predicate::MilitaryDiscount),
        Just(Predicate::AgeOver19),
        Just(Predicate::IsoAgeOver19)
    ]
}

fn attributes() -> impl Strategy<Value = Attributes> {
    (
        option::of(select(CredentialType::ALL)),
        option::of(select(HolderCategory::ALL)),
        option::of(unit_path()),
        option::of(cbor_u64()),
        option::of(predicate()),
    )
        .prop_map(
            |(credential_type, category, unit, valid_until, predicate)| Attributes {
                credential_type,
                category,
                unit,
                valid_until,
                predicate,
            },
        )
}

fn verdict() -> impl Strategy<Value = Verdict> {
    (select(Reason::ALL), attributes(), any::<bool>()).prop_map(|(reason, attributes, repeat)| {
        Verdict {
            reason,
            attributes,
            repeat,
        }
    })
}

fn token_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..=64),
        1 => vec(any::<u8>(), 0..=MAX_TOKEN_LEN),
        1 => vec(any::<u8>(), MAX_TOKEN_LEN - 8..=MAX_TOKEN_LEN),
    ]
}

/// Every request variant, within the limits the decoder enforces.
fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            cbor_u64(),
            token_bytes(),
            option::of(vec(any::<u8>(), 1..=MAX_CHALLENGE_LEN)),
            option::of(any::<[u8; 16]>()),
        )
            .prop_map(|(id, token, challenge, retry)| Request::Verify {
                id,
                token,
                challenge,
                retry,
            }),
        (
            cbor_u64(),
            vec(token_bytes(), 0..=MAX_BATCH),
            option::of(any::<[u8; 16]>())
        )
            .prop_map(|(id, tokens, retry)| Request::VerifyBatch { id, tokens, retry }),
        cbor_u64().prop_map(|id| Request::Ping { id }),
        (
            cbor_u64(),
            vec(any::<u8>(), 1..2048),
            vec(any::<u8>(), 1..=MAX_SESSION_TRANSCRIPT),
            option::of(any::<[u8; 16]>()),
            cbor_u64(),
            option::of(any::<[u8; 32]>()),
        )
            .prop_map(
                |(id, device_response, transcript, retry, session_start, reader_key)| {
                    Request::VerifyMdoc(MdocRequest {
                        id,
                        device_response,
                        transcript,
                        retry,
                        session_start,
                        reader_key,
                    })
                }
            ),
    ]
}

fn wire_error_code() -> impl Strategy<Value = WireErrorCode> {
    select(vec![
        WireErrorCode::MalformedFrame,
        WireErrorCode::FrameTooLarge,
        WireErrorCode::UnsupportedVersion,
        WireErrorCode::UnknownKind,
    ])
}

/// Every response variant. Error messages may be longer than `MAX_ERROR_TEXT` bytes and hold
/// multi-byte characters: the encoder cuts them at a character boundary.
fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (cbor_u64(), vec(verdict(), 0..=MAX_BATCH))
            .prop_map(|(id, verdicts)| Response::Verdicts { id, verdicts }),
        cbor_u64().prop_map(|id| Response::Pong { id }),
        (
            cbor_u64(),
            wire_error_code(),
            prop_oneof![".{0,80}", "[a-z ]{0,250}", "[ㄱ-ㅎ가-힣]{60,80}"],
        )
            .prop_map(|(id, code, message)| Response::Error { id, code, message }),
    ]
}

fn revocation_entry() -> impl Strategy<Value = RevocationEntry> {
    (
        select(vec![
            RevocationKind::Credential,
            RevocationKind::Subject,
            RevocationKind::Sponsor,
        ]),
        any::<[u8; 16]>(),
    )
        .prop_map(|(kind, id)| RevocationEntry { kind, id })
}

/// A snapshot (no base, nothing reinstated) or a delta (base = epoch − 1).
fn revocation_list() -> impl Strategy<Value = RevocationList> {
    prop_oneof![
        (cbor_u64(), vec(revocation_entry(), 0..40)).prop_map(|(epoch, revoke)| {
            RevocationList {
                epoch,
                base: None,
                revoke,
                reinstate: vec![],
                digest: None,
            }
        }),
        (
            cbor_u64().prop_map(|e| e.max(1)),
            vec(revocation_entry(), 0..40),
            vec(revocation_entry(), 0..20),
        )
            .prop_map(|(epoch, revoke, reinstate)| RevocationList {
                epoch,
                base: Some(epoch - 1),
                revoke,
                reinstate,
                digest: None,
            }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `cases` cases, and no regression files: proptest cannot place them beside an integration
/// test (it looks for `lib.rs`), and a failure prints its shrunk input anyway.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// Splits a frame both ways (header alone, whole frame) and checks they agree.
fn split(frame: &[u8]) -> (u8, &[u8]) {
    let header: &[u8; FRAME_HEADER_LEN] = frame[..FRAME_HEADER_LEN].try_into().unwrap();
    let h = FrameHeader::decode(header).unwrap();
    let (k, body) = split_frame(frame).unwrap();
    assert_eq!(h.kind, k);
    assert_eq!(h.len, body.len());
    (k, body)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncated(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

fn replay_id_of(payload: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(payload);
    d[..16].try_into().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Properties without signing
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn credential_payloads_round_trip(c in credential()) {
        prop_assert_eq!(c.validate(), Ok(()));
        let bytes = c.encode_payload();
        let back = Credential::decode_payload(&bytes)?;
        prop_assert_eq!(&back, &c);
        // One credential, one encoding.
        prop_assert_eq!(back.encode_payload(), bytes);
    }

    #[test]
    fn inconsistent_credentials_are_refused_by_decoder_and_issuer(
        c in credential(),
        rule in 0usize..6,
    ) {
        let mut bad = c.clone();
        let expect = match rule {
            0 => {
                bad.not_after = bad.not_before;
                DecodeError::Inconsistent("not_before must precede not_after")
            }
            1 => {
                bad.sponsor = if bad.sponsor.is_some() { None } else { Some([9; 16]) };
                DecodeError::Inconsistent("a sponsor is named exactly for family members")
            }
            2 => {
                // Flip the family-ness of the type but keep sponsor and category consistent.
                bad.credential_type = if bad.category.is_family() {
                    CredentialType::MilitaryId
                } else {
                    CredentialType::FamilyMember
                };
                bad.leave = None;
                DecodeError::Inconsistent("family_member credentials are for family categories")
            }
            3 => {
                bad.leave = if bad.leave.is_some() { None } else { Some((1, 2)) };
                DecodeError::Inconsistent("leave dates are carried exactly by leave passes")
            }
            4 => {
                if bad.category.is_family() {
                    // A family member cannot hold a leave pass; reverse the validity instead.
                    bad.not_after = bad.not_before.saturating_sub(1);
                    if bad.not_after == bad.not_before {
                        bad.not_before = 1;
                        bad.not_after = 0;
                    }
                    DecodeError::Inconsistent("not_before must precede not_after")
                } else {
                    bad.credential_type = CredentialType::LeavePass;
                    bad.leave = Some((7, 7));
                    DecodeError::Inconsistent("leave start must precede leave end")
                }
            }
            _ => {
                bad.device_key[0] = 4;
                DecodeError::UnknownValue("device key")
            }
        };
        prop_assert_eq!(bad.validate(), Err(expect));
        prop_assert_eq!(Credential::decode_payload(&bad.encode_payload()), Err(expect));
        let issuer = PrivateKey::from_bytes(&[1; 32]).unwrap();
        prop_assert_eq!(bad.issue(&issuer), Err(SignError::Invalid(expect)));
    }

    #[test]
    fn qr_text_round_trips_any_bytes(bytes in vec(any::<u8>(), 0..=MAX_TOKEN_LEN)) {
        let text = to_qr_text(&bytes);
        prop_assert!(text.starts_with(QR_PREFIX));
        let body = &text[QR_PREFIX.len()..];
        prop_assert!(body
            .bytes()
            .all(|c| b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:".contains(&c)));
        prop_assert_eq!(body.len(), bytes.len() / 2 * 3 + bytes.len() % 2 * 2);
        prop_assert_eq!(from_qr_text(&text)?, bytes);
    }

    #[test]
    fn qr_text_longer_than_a_token_is_refused(len in MAX_TOKEN_LEN + 1..MAX_TOKEN_LEN * 2) {
        let text = to_qr_text(&vec![0xa5; len]);
        prop_assert_eq!(from_qr_text(&text), Err(DecodeError::TooLong("QR text")));
    }

    #[test]
    fn requests_round_trip_through_a_frame(req in request()) {
        let frame = req.encode();
        let (k, body) = split(&frame);
        let own = match &req {
            Request::Verify { .. } => kind::VERIFY,
            Request::VerifyBatch { .. } => kind::VERIFY_BATCH,
            Request::Ping { .. } => kind::PING,
            Request::VerifyMdoc(_) => kind::VERIFY_MDOC,
        };
        prop_assert_eq!(k, own);
        let back = Request::decode(k, body)?;
        prop_assert_eq!(back.id(), req.id());
        prop_assert_eq!(&back, &req);
        prop_assert_eq!(&back.encode(), &frame);
        // Under any other kind byte the body is refused.
        for other in 0..=u8::MAX {
            if other != own {
                prop_assert!(Request::decode(other, body).is_err(), "kind {:#04x}", other);
            }
        }
    }

    #[test]
    fn an_empty_request_challenge_is_refused(id in cbor_u64(), token in token_bytes()) {
        let frame = Request::Verify { id, token, challenge: Some(vec![]), retry: None }.encode();
        let (k, body) = split(&frame);
        prop_assert_eq!(Request::decode(k, body), Err(DecodeError::BadLength("challenge")));
    }

    #[test]
    fn revocation_lists_round_trip(list in revocation_list()) {
        prop_assert_eq!(list.validate(), Ok(()));
        let bytes = list.encode();
        let back = RevocationList::decode(&bytes)?;
        prop_assert_eq!(&back, &list);
        prop_assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn inconsistent_revocation_lists_are_refused(
        list in revocation_list(),
        entry in revocation_entry(),
        skew in 2u64..,
    ) {
        let mut bad = list.clone();
        let expect = match bad.base {
            // A snapshot that reinstates.
            None => {
                bad.reinstate.push(entry);
                DecodeError::Inconsistent("a snapshot cannot reinstate entries")
            }
            // A delta whose base is not epoch - 1.
            Some(base) => {
                bad.base = Some(base.wrapping_add(skew));
                DecodeError::Inconsistent("a delta's epoch must be its base + 1")
            }
        };
        prop_assert_eq!(bad.validate(), Err(expect));
        prop_assert_eq!(RevocationList::decode(&bad.encode()), Err(expect));
    }

    #[test]
    fn responses_round_trip_through_a_frame(resp in response()) {
        let frame = resp.encode();
        let (k, body) = split(&frame);
        let own = match &resp {
            Response::Verdicts { .. } => kind::VERDICTS,
            Response::Pong { .. } => kind::PONG,
            Response::Error { .. } => kind::ERROR,
        };
        prop_assert_eq!(k, own);
        let back = Response::decode(k, body)?;
        let expect = match &resp {
            Response::Error { id, code, message } => Response::Error {
                id: *id,
                code: *code,
                message: truncated(message, MAX_ERROR_TEXT),
            },
            other => other.clone(),
        };
        prop_assert_eq!(&back, &expect);
        prop_assert_eq!(&back.encode(), &frame);
        for other in 0..=u8::MAX {
            if other != own {
                prop_assert!(Response::decode(other, body).is_err(), "kind {:#04x}", other);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties with signing
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn issued_credentials_decode_and_verify(c in credential(), issuer in private_key()) {
        let bytes = c.issue(&issuer)?;
        prop_assert!(bytes.len() <= MAX_CREDENTIAL_LEN);
        let signed = SignedCredential::decode(&bytes)?;
        prop_assert_eq!(&signed.credential, &c);
        prop_assert_eq!(signed.issuer_kid, issuer.public().key_id());
        prop_assert_eq!(signed.bytes(), &bytes[..]);
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        prop_assert_eq!(signed.digest(), digest);
        prop_assert_eq!(signed.signature.check_form(), Ok(()));
        let tbs = signed.to_be_signed();
        prop_assert_eq!(verify_strict(issuer.public(), &tbs, &signed.signature), Ok(()));
        for backend in Backend::ALL {
            prop_assert_eq!(verify(backend, issuer.public(), &tbs, &signed.signature), Ok(()));
        }
        // Issuing is deterministic (RFC 6979): the same credential has the same bytes.
        prop_assert_eq!(c.issue(&issuer)?, bytes);
        // A flipped parity bit is caught by the strict check only.
        let mut flipped = signed.signature;
        flipped.y_odd = !flipped.y_odd;
        prop_assert_eq!(
            verify_strict(issuer.public(), &tbs, &flipped),
            Err(SignatureError::WrongParity)
        );
        prop_assert_eq!(verify(Backend::Ring, issuer.public(), &tbs, &flipped), Ok(()));
    }

    #[test]
    fn tokens_round_trip_and_verify(
        mut c in credential(),
        issuer in private_key(),
        device in private_key(),
        timestamp in cbor_u64(),
        nonce in any::<[u8; NONCE_LEN]>(),
        (flip_at, flip_with) in (0..NONCE_LEN, 1u8..=u8::MAX),
        challenge in option::of(vec(any::<u8>(), 1..=MAX_CHALLENGE_LEN)),
    ) {
        c.device_key = *device.public().compressed();
        let credential = c.issue(&issuer)?;
        let presentation = Presentation {
            credential: &credential,
            timestamp,
            nonce,
            challenge: challenge.as_deref(),
        };
        let bytes = presentation.sign(&device)?;
        prop_assert!(bytes.len() <= MAX_TOKEN_LEN);

        let token = Token::decode(&bytes)?;
        prop_assert_eq!(token.bytes(), &bytes[..]);
        prop_assert_eq!(&token.credential, &SignedCredential::decode(&credential)?);
        prop_assert_eq!(&token.credential.credential, &c);
        prop_assert_eq!(token.credential.bytes(), &credential[..]);
        prop_assert_eq!(token.timestamp, timestamp);
        prop_assert_eq!(token.nonce, nonce);
        prop_assert_eq!(&token.challenge, &challenge);

        // Both signatures verify, strictly and on both backends.
        let device_key = token.device_key()?;
        prop_assert_eq!(&device_key, device.public());
        let tbs = token.to_be_signed();
        prop_assert_eq!(verify_strict(&device_key, &tbs, &token.signature), Ok(()));
        let issuer_tbs = token.credential.to_be_signed();
        prop_assert_eq!(
            verify_strict(issuer.public(), &issuer_tbs, &token.credential.signature),
            Ok(())
        );
        for backend in Backend::ALL {
            prop_assert_eq!(verify(backend, &device_key, &tbs, &token.signature), Ok(()));
            prop_assert_eq!(
                verify(backend, issuer.public(), &issuer_tbs, &token.credential.signature),
                Ok(())
            );
        }

        // The replay id is SHA-256 of the signed payload, and stable: decoding again and
        // signing the same presentation again give the same id.
        let payload = presentation.encode_payload()?;
        prop_assert_eq!(token.replay_id(), replay_id_of(&payload));
        prop_assert_eq!(Token::decode(&bytes)?.replay_id(), token.replay_id());
        let again = presentation.sign(&device)?;
        prop_assert_eq!(Token::decode(&again)?.replay_id(), token.replay_id());

        // Another nonce is another token.
        let mut other_nonce = nonce;
        other_nonce[flip_at] ^= flip_with;
        let other = Presentation { nonce: other_nonce, ..presentation.clone() }.sign(&device)?;
        let other = Token::decode(&other)?;
        prop_assert_eq!(other.nonce, other_nonce);
        prop_assert_ne!(other.replay_id(), token.replay_id());
        prop_assert_eq!(
            verify(Backend::Ring, &device_key, &other.to_be_signed(), &other.signature),
            Ok(())
        );

        // The QR text form carries the same token.
        let from_qr = Token::decode(&from_qr_text(&to_qr_text(&bytes))?)?;
        prop_assert_eq!(&from_qr, &token);
    }
}
