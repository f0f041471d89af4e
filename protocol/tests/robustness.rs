//! Decoding is total: every decoder returns a value or a typed error for any input, and never
//! panics.
//!
//! Every input goes through every decoder ([`battery`]): `Token::decode`,
//! `SignedCredential::decode`, `Credential::decode_payload`, `RevocationList::decode`,
//! `from_qr_text` (the input as text,
//! and the input mapped onto the base45 alphabet), `FrameHeader::decode`, `split_frame` and
//! `Request::decode`/`Response::decode` under the frame's kind, every defined kind and a
//! random one. Inputs are random byte strings from a seeded SplitMix64, and mutations of the
//! test vectors of `gatehouse_protocol::vectors` and of a few more structures built from the
//! same test keys: bit flips, byte changes, truncations, insertions, deletions, duplicated
//! ranges, splices and length-prefix tweaks, applied to whole vectors and to inner layers
//! (payloads, frame bodies) that are then wrapped again with correct lengths, so the mutations
//! reach the inner decoders.
//!
//! Whatever decodes is checked too: decoders keep the exact input bytes, and every gatehouse
//! encoding is canonical, so re-encoding what was decoded gives the input back byte for byte.
//! A sample of decoded token mutations is verified strictly: only a genuinely signed token may
//! pass both signatures, and the two backends agree.
//!
//! Finally every file under `fuzz/regressions/` (crashing inputs found by `cargo fuzz`) is
//! replayed through every decoder.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mutation.rs"]
mod mutation;
use mutation::{mutate, mutate_case, Rng};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::mem::{discriminant, Discriminant};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use gatehouse_protocol::vectors;
use gatehouse_protocol::{
    from_qr_text, kind, split_frame, to_qr_text, verify, verify_es256, verify_strict, Attributes,
    Backend, Credential, CredentialType, Date, DecodeError, Entitlements, FrameHeader,
    HolderCategory, MdocRequest, Predicate, Presentation, PublicKey, Reason, Request, Response,
    RevocationEntry, RevocationKind, RevocationList, SignedCredential, Token, UnitPath, Verdict,
    WireErrorCode, CREDENTIAL_AAD, FRAME_HEADER_LEN, MAX_TOKEN_LEN, QR_PREFIX, TOKEN_AAD,
    WIRE_VERSION,
};
use sha2::{Digest, Sha256};

/// Random byte strings fed to every decoder.
const RANDOM_INPUTS: usize = 140_000;
/// Mutation rounds; each feeds one to three inputs to every decoder.
const MUTATION_ROUNDS: usize = 140_000;
/// Decoded token mutations whose signatures are checked (a few milliseconds each).
const SIGNATURE_SAMPLES: usize = 120;
/// Every input counted, both kinds together, must reach this.
const MIN_INPUTS: u64 = 300_000;

const ALPHABET: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
const DEFINED_KINDS: [u8; 7] = [
    kind::VERIFY,
    kind::VERIFY_BATCH,
    kind::PING,
    kind::VERIFY_MDOC,
    kind::VERDICTS,
    kind::PONG,
    kind::ERROR,
];
/// CBOR initial bytes worth trying: boundaries of every head size, reserved and indefinite
/// values, the tag and array gatehouse starts with, simple values.
const INTERESTING: [u8; 24] = [
    0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1f, 0x20, 0x3a, 0x40, 0x58, 0x5f, 0x60, 0x7f,
    0x80, 0x84, 0xa0, 0xbf, 0xd2, 0xf4, 0xf5, 0xff,
];

// ---------------------------------------------------------------------------------------------
// A small seeded PRNG (SplitMix64)
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// A test-side encoder: COSE_Sign1 and frames by hand, to wrap mutated inner layers and to check
// that decoded values re-encode to their input
// ---------------------------------------------------------------------------------------------

fn head(out: &mut Vec<u8>, major: u8, v: u64) {
    let m = major << 5;
    if v < 24 {
        out.push(m | v as u8);
    } else if v <= 0xff {
        out.extend_from_slice(&[m | 24, v as u8]);
    } else if v <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn bstr(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

/// The protected header of a token: `{1: -7}`.
const TOKEN_PROTECTED: [u8; 3] = [0xa1, 0x01, 0x26];

/// The protected header of a credential: `{1: -7, 4: kid}`.
fn credential_protected(kid: &[u8; 8]) -> Vec<u8> {
    let mut out = vec![0xa2, 0x01, 0x26, 0x04, 0x48];
    out.extend_from_slice(kid);
    out
}

/// `18([protected, {-65537: parity}, payload, r ‖ s])`.
fn cose_sign1(protected: &[u8], y_odd: bool, payload: &[u8], rs: &[u8]) -> Vec<u8> {
    let mut out = vec![0xd2, 0x84];
    bstr(&mut out, protected);
    out.extend_from_slice(&[0xa1, 0x3a, 0x00, 0x01, 0x00, 0x00, u8::from(y_odd)]);
    bstr(&mut out, payload);
    bstr(&mut out, rs);
    out
}

/// `["Signature1", protected, aad, payload]`.
fn sig_structure(protected: &[u8], aad: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x84, 0x6a];
    out.extend_from_slice(b"Signature1");
    bstr(&mut out, protected);
    bstr(&mut out, aad);
    bstr(&mut out, payload);
    out
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION, kind];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A token payload around `credential`, written by hand (so the credential may be anything).
fn token_payload(
    credential: &[u8],
    timestamp: u64,
    nonce: &[u8],
    challenge: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    head(&mut out, 5, 4 + u64::from(challenge.is_some()));
    out.extend_from_slice(&[0x01, 0x01, 0x02]);
    bstr(&mut out, credential);
    out.push(0x03);
    head(&mut out, 0, timestamp);
    out.push(0x04);
    bstr(&mut out, nonce);
    if let Some(c) = challenge {
        out.push(0x05);
        bstr(&mut out, c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// Distinct errors of one decoder and variant, each with its count.
type Seen = Vec<(DecodeError, u64)>;

#[derive(Default)]
struct Stats {
    inputs: u64,
    ok: BTreeMap<&'static str, u64>,
    /// Distinct errors per decoder and variant, with counts.
    errors: HashMap<(&'static str, Discriminant<DecodeError>), Seen>,
    /// Inputs that decoded but re-encode to other bytes (allowed only where noted).
    noncanonical: BTreeMap<&'static str, u64>,
}

impl Stats {
    fn record<T>(&mut self, decoder: &'static str, r: &Result<T, DecodeError>) {
        match r {
            Ok(_) => *self.ok.entry(decoder).or_default() += 1,
            Err(e) => {
                let seen = self.errors.entry((decoder, discriminant(e))).or_default();
                match seen.iter_mut().find(|(x, _)| x == e) {
                    Some((_, n)) => *n += 1,
                    None => seen.push((*e, 1)),
                }
            }
        }
    }

    fn total_ok(&self) -> u64 {
        self.ok.values().sum()
    }

    /// Names of the error variants seen (over all decoders).
    fn variants(&self) -> BTreeSet<String> {
        self.errors
            .values()
            .flatten()
            .map(|(e, _)| {
                let s = format!("{e:?}");
                s.split('(').next().unwrap_or_default().to_owned()
            })
            .collect()
    }

    fn report(&self, name: &str) {
        println!("== {name}: {} inputs", self.inputs);
        println!("   ok: {:?}", self.ok);
        println!("   decoded but not canonical: {:?}", self.noncanonical);
        let mut errors: Vec<(String, u64)> = self
            .errors
            .iter()
            .flat_map(|((decoder, _), v)| {
                v.iter()
                    .map(move |(e, n)| (format!("{decoder}: {e:?}"), *n))
            })
            .collect();
        errors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        println!(
            "   {} distinct errors; variants {:?}",
            errors.len(),
            self.variants()
        );
        for (e, n) in errors.iter().take(25) {
            println!("   {n:>9}  {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The battery: one input through every decoder
// ---------------------------------------------------------------------------------------------

/// Checks a decoded credential against its input: exact bytes kept, canonical encoding.
fn check_credential(c: &SignedCredential, input: &[u8]) {
    assert_eq!(c.bytes(), input, "credential keeps its exact bytes");
    assert_eq!(c.credential.validate(), Ok(()));
    let protected = credential_protected(&c.issuer_kid);
    let payload = c.credential.encode_payload();
    assert_eq!(
        cose_sign1(&protected, c.signature.y_odd, &payload, &c.signature.rs),
        input,
        "a decoded credential re-encodes to its input"
    );
    assert_eq!(
        c.to_be_signed(),
        sig_structure(&protected, CREDENTIAL_AAD, &payload)
    );
    let digest: [u8; 32] = Sha256::digest(input).into();
    assert_eq!(c.digest(), digest);
}

/// Checks a decoded token against its input: exact bytes kept, canonical encoding, replay id.
fn check_token(t: &Token, input: &[u8]) {
    assert_eq!(t.bytes(), input, "a decoded token keeps its exact bytes");
    let cred = t.credential.bytes();
    assert!(
        input.windows(cred.len()).any(|w| w == cred),
        "the credential bytes lie inside the token"
    );
    check_credential(&t.credential, cred);
    let payload = Presentation {
        credential: cred,
        timestamp: t.timestamp,
        nonce: t.nonce,
        challenge: t.challenge.as_deref(),
    }
    .encode_payload()
    .expect("a decoded token's fields are within the limits");
    assert_eq!(
        cose_sign1(
            &TOKEN_PROTECTED,
            t.signature.y_odd,
            &payload,
            &t.signature.rs
        ),
        input,
        "a decoded token re-encodes to its input"
    );
    assert_eq!(
        t.to_be_signed(),
        sig_structure(&TOKEN_PROTECTED, TOKEN_AAD, &payload)
    );
    assert_eq!(t.replay_id()[..], Sha256::digest(&payload)[..16]);
    let _ = t.device_key();
}

/// Checks a decoded revocation list: consistent, and re-encoding gives the input back, except
/// that an empty `reinstate` array (key 5) is accepted and then left out.
fn check_revocation(list: &RevocationList, input: &[u8], st: &mut Stats) {
    assert_eq!(list.validate(), Ok(()));
    let again = list.encode();
    if again != input {
        assert!(
            list.reinstate.is_empty(),
            "a decoded revocation list re-encodes to its input: {list:?} from {}",
            hex::encode(input)
        );
        *st.noncanonical.entry("revocation").or_default() += 1;
    }
    assert_eq!(RevocationList::decode(&again).as_ref(), Ok(list));
}

fn check_qr(text: &str, bytes: &[u8]) {
    assert!(bytes.len() <= MAX_TOKEN_LEN);
    assert_eq!(
        to_qr_text(bytes),
        text,
        "base45 has one encoding per byte string"
    );
}

fn check_request(req: &Request, k: u8, body: &[u8]) {
    // A batch token over the limit reads as an empty token (SPEC §8.3): such a batch does not
    // re-encode to its frame.
    if matches!(req, Request::VerifyBatch { tokens, .. } if tokens.iter().any(|t| t.is_empty()))
        && req.encode() != frame(k, body)
    {
        return;
    }
    assert_eq!(
        req.encode(),
        frame(k, body),
        "a decoded request re-encodes to its frame"
    );
}

fn check_response(resp: &Response, k: u8, body: &[u8], st: &mut Stats) {
    let again = resp.encode();
    if again != frame(k, body) {
        // An error response without a message decodes with an empty one, which is then
        // written; a reason code this version does not know reads as `unrecognized` (SPEC §9),
        // which is written as 255. No other response fails to re-encode byte for byte.
        let unrecognized = matches!(resp, Response::Verdicts { verdicts, .. }
            if verdicts.iter().any(|v| v.reason == Reason::Unrecognized));
        assert!(
            unrecognized || matches!(resp, Response::Error { message, .. } if message.is_empty()),
            "a decoded response re-encodes to its frame: {resp:?} from {}",
            hex::encode(body)
        );
        *st.noncanonical.entry("response").or_default() += 1;
    }
    let (k2, body2) = split_frame(&again).unwrap();
    assert_eq!(Response::decode(k2, body2).as_ref(), Ok(resp));
}

fn decode_wire(k: u8, body: &[u8], st: &mut Stats) {
    let r = Request::decode(k, body);
    if let Ok(req) = &r {
        check_request(req, k, body);
    }
    st.record("request", &r);
    let r = Response::decode(k, body);
    if let Ok(resp) = &r {
        check_response(resp, k, body, st);
    }
    st.record("response", &r);
}

/// `GH1:` and the input mapped onto the base45 alphabet, so it gets past the prefix and the
/// alphabet and tests the arithmetic.
fn mapped_qr_text(input: &[u8], rng: &mut Rng) -> String {
    let mut s = String::with_capacity(QR_PREFIX.len() + input.len());
    s.push_str(QR_PREFIX);
    // Keep most triples below 45³ > 65535 overflow so some texts decode.
    let gentle = rng.one_in(2);
    for (i, b) in input.iter().enumerate() {
        let mut v = usize::from(*b) % 45;
        if gentle && i % 3 == 2 {
            v %= 32;
        }
        s.push(char::from(ALPHABET[v]));
    }
    s
}

/// One input through every decoder; returns the token if it decoded.
fn battery(input: &[u8], rng: &mut Rng, st: &mut Stats) -> Option<Token> {
    st.inputs += 1;

    let token = Token::decode(input);
    if let Ok(t) = &token {
        check_token(t, input);
    }
    st.record("token", &token);

    let c = SignedCredential::decode(input);
    if let Ok(c) = &c {
        check_credential(c, input);
    }
    st.record("credential", &c);

    let p = Credential::decode_payload(input);
    if let Ok(p) = &p {
        assert_eq!(
            p.encode_payload(),
            input,
            "a decoded payload re-encodes to its input"
        );
    }
    st.record("payload", &p);

    let rl = RevocationList::decode(input);
    if let Ok(l) = &rl {
        check_revocation(l, input, st);
    }
    st.record("revocation", &rl);

    if let Ok(text) = std::str::from_utf8(input) {
        let r = from_qr_text(text);
        if let Ok(b) = &r {
            check_qr(text, b);
        }
        st.record("qr_text", &r);
    }
    let text = mapped_qr_text(input, rng);
    let r = from_qr_text(&text);
    if let Ok(b) = &r {
        check_qr(&text, b);
        st.record("qr_text_token", &Token::decode(b));
    }
    st.record("qr_text_mapped", &r);
    if input.len() <= MAX_TOKEN_LEN && rng.one_in(8) {
        assert_eq!(from_qr_text(&to_qr_text(input)).as_deref(), Ok(input));
    }

    if let Some(h) = input.first_chunk::<FRAME_HEADER_LEN>() {
        let r = FrameHeader::decode(h);
        if let Ok(fh) = &r {
            assert_eq!(fh.kind, h[1]);
            assert_eq!(
                fh.len,
                u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize
            );
        }
        st.record("frame_header", &r);
    }
    let split = split_frame(input);
    st.record("split_frame", &split);
    if let Ok((k, body)) = split {
        decode_wire(k, body, st);
    }
    // The input (and what follows a would-be header) as a body, under every defined kind
    // and a random one.
    let random_kind = rng.byte();
    for k in DEFINED_KINDS.into_iter().chain([random_kind]) {
        decode_wire(k, input, st);
        if input.len() > FRAME_HEADER_LEN {
            decode_wire(k, &input[FRAME_HEADER_LEN..], st);
        }
    }
    token.ok()
}

/// [`battery`], printing the input if anything panics.
fn run(input: &[u8], rng: &mut Rng, st: &mut Stats, origin: &str) -> Option<Token> {
    match catch_unwind(AssertUnwindSafe(|| battery(input, rng, st))) {
        Ok(t) => t,
        Err(panic) => {
            println!(
                "PANIC on input from {origin} ({} bytes): {}",
                input.len(),
                hex::encode(input)
            );
            resume_unwind(panic)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

fn mutate_once(v: &mut Vec<u8>, pool: &[Vec<u8>], rng: &mut Rng) {
    let case = rng.below(12);
    mutate_case(case, v, pool, &INTERESTING, rng);
}

/// Mutates QR text, mostly keeping to the base45 alphabet.
fn mutate_text(text: &str, rng: &mut Rng) -> String {
    let mut v = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = v.len();
        match rng.below(6) {
            0 | 1 if len > 0 => {
                let i = rng.below(len);
                v[i] = *rng.pick(ALPHABET);
            }
            2 => v.truncate(rng.below(len + 1)),
            3 => {
                let at = rng.below(len + 1);
                v.insert(at, *rng.pick(ALPHABET));
            }
            4 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.byte();
            }
            _ => {
                let at = rng.below(len + 1);
                v.splice(at..at, b":::".iter().copied());
            }
        }
    }
    String::from_utf8_lossy(&v).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

struct Seeds {
    /// Every whole structure (vectors, frames, QR text as bytes).
    whole: Vec<Vec<u8>>,
    /// Tokens whose two signatures verify strictly.
    signed_tokens: HashSet<Vec<u8>>,
    /// Credential payloads, with an issued credential's kid and signature to wrap them.
    payloads: Vec<Vec<u8>>,
    kid: [u8; 8],
    rs: [u8; 64],
    /// Token payloads.
    token_payloads: Vec<Vec<u8>>,
    /// (kind, body) of frames.
    bodies: Vec<(u8, Vec<u8>)>,
    /// The bodies alone, for splicing.
    body_pool: Vec<Vec<u8>>,
    qr_texts: Vec<String>,
    issuer: PublicKey,
}

fn seeds() -> Seeds {
    let issuer = vectors::issuer_key();
    let device = vectors::device_key();
    let base = vectors::sample_credential();
    let family = Credential {
        id: [0x11; 16],
        credential_type: CredentialType::FamilyMember,
        category: HolderCategory::Spouse,
        sponsor: Some(base.subject),
        subject: [0x22; 16],
        entitlements: Entitlements::WELFARE_FACILITIES | Entitlements::BASE_ENTRY,
        birth_date: None,
        age_over_19: Some(true),
        unit: UnitPath::new(&[]).unwrap(),
        ..base.clone()
    };
    let leave = Credential {
        id: [0x33; 16],
        credential_type: CredentialType::LeavePass,
        leave: Some((1_799_000_000, u64::from(u32::MAX) + 7)),
        unit: UnitPath::new(&[1, 300, 65_535, 24, 23, 0, 7, 256]).unwrap(),
        entitlements: Entitlements::ALL,
        birth_date: Some(Date::new(2000, 2, 29).unwrap()),
        age_over_19: Some(false),
        not_after: u64::MAX,
        ..base.clone()
    };
    let credentials = [base, family, leave];

    let mut whole = Vec::new();
    let mut signed_tokens = HashSet::new();
    let mut payloads = Vec::new();
    let mut token_payloads = Vec::new();
    let mut bodies = Vec::new();
    let mut qr_texts = Vec::new();

    for v in vectors::all().unwrap() {
        whole.push(v.bytes.clone());
    }
    let mut tokens = Vec::new();
    for (i, c) in credentials.iter().enumerate() {
        payloads.push(c.encode_payload());
        let issued = c.issue(&issuer).unwrap();
        whole.push(issued.clone());
        let challenge = [0xc4; 32];
        let p = Presentation {
            credential: &issued,
            timestamp: [vectors::NOW - 5, 7, u64::MAX][i],
            nonce: [i as u8; 16],
            challenge: (i > 0).then_some(&challenge[..1 + 15 * i]),
        };
        token_payloads.push(p.encode_payload().unwrap());
        let t = p.sign(&device).unwrap();
        whole.push(t.clone());
        tokens.push(t);
    }
    for v in &whole {
        if let Ok(t) = Token::decode(v) {
            let strict_ok = t
                .device_key()
                .is_ok_and(|d| verify_strict(&d, &t.to_be_signed(), &t.signature).is_ok())
                && verify_strict(
                    issuer.public(),
                    &t.credential.to_be_signed(),
                    &t.credential.signature,
                )
                .is_ok();
            if strict_ok {
                signed_tokens.insert(v.clone());
            }
            qr_texts.push(to_qr_text(v));
        }
    }
    let first = SignedCredential::decode(&whole[0]).unwrap();

    let attributes = Attributes {
        credential_type: Some(CredentialType::LeavePass),
        category: Some(HolderCategory::Officer),
        unit: UnitPath::new(&[1, 12, 1000]).ok(),
        valid_until: Some(u64::MAX),
        predicate: Some(Predicate::AgeOver19),
    };
    let frames = [
        Request::Verify {
            id: 7,
            token: tokens[2].clone(),
            challenge: Some(vec![0xc4; 31]),
            retry: Some([0x5a; 16]),
        }
        .encode(),
        Request::VerifyBatch {
            id: 1 << 40,
            tokens: tokens.clone(),
            retry: None,
        }
        .encode(),
        Request::Ping { id: 24 }.encode(),
        // VerifyMdoc with every optional field and with none. The wire decoder does not read
        // the mdoc structures in the byte strings (gatehouse-mdoc's robustness test mutates
        // real ones); a DeviceResponse-shaped one and a token stand in.
        Request::VerifyMdoc(MdocRequest {
            id: 13,
            device_response: b"\xa3\x67version\x631.0\x66status\x00\x69documents\x80".to_vec(),
            transcript: vec![0x83, 0xf6, 0xf6, 0xf6],
            retry: Some([0x5a; 16]),
            session_start: vectors::NOW,
            reader_key: Some([0x42; 32]),
        })
        .encode(),
        Request::VerifyMdoc(MdocRequest {
            id: u64::MAX,
            device_response: tokens[0].clone(),
            transcript: vec![0x80; 300],
            retry: None,
            session_start: 0,
            reader_key: None,
        })
        .encode(),
        Response::Verdicts {
            id: 300,
            verdicts: Reason::ALL
                .iter()
                .map(|r| Verdict {
                    reason: *r,
                    attributes,
                    repeat: r.code() % 2 == 1,
                })
                .collect(),
        }
        .encode(),
        Response::Pong { id: 0 }.encode(),
        Response::Error {
            id: 9,
            code: WireErrorCode::FrameTooLarge,
            message: "frame larger than 131072 bytes".into(),
        }
        .encode(),
    ];
    for f in vectors::all()
        .unwrap()
        .iter()
        .map(|v| &v.bytes)
        .chain(frames.iter())
    {
        if let Ok((k, body)) = split_frame(f) {
            bodies.push((k, body.to_vec()));
        }
    }
    whole.extend(frames);
    let entry = |kind, b| RevocationEntry { kind, id: [b; 16] };
    whole.push(
        RevocationList {
            epoch: 41,
            base: None,
            revoke: vec![
                entry(RevocationKind::Credential, 1),
                entry(RevocationKind::Subject, 2),
                entry(RevocationKind::Sponsor, 3),
            ],
            reinstate: vec![],
            digest: None,
        }
        .encode(),
    );
    whole.push(
        RevocationList {
            epoch: 1 << 33,
            base: Some((1 << 33) - 1),
            revoke: vec![entry(RevocationKind::Sponsor, 0xff)],
            reinstate: vec![
                entry(RevocationKind::Credential, 1),
                entry(RevocationKind::Subject, 0),
            ],
            digest: None,
        }
        .encode(),
    );
    whole.extend(qr_texts.iter().map(|t| t.as_bytes().to_vec()));
    whole.extend(payloads.iter().cloned());
    whole.extend(token_payloads.iter().cloned());

    assert!(
        signed_tokens.len() >= 5,
        "the genuine tokens verify: {}",
        signed_tokens.len()
    );
    assert!(bodies.len() >= 8);
    Seeds {
        whole,
        signed_tokens,
        payloads,
        kid: first.issuer_kid,
        rs: first.signature.rs,
        token_payloads,
        body_pool: bodies.iter().map(|b| b.1.clone()).collect(),
        bodies,
        qr_texts,
        issuer: issuer.public().clone(),
    }
}

/// Verifies a decoded token mutation: both backends agree, and only a genuinely signed token
/// passes both strict checks. Returns whether it passed.
fn check_signatures(t: &Token, s: &Seeds) -> bool {
    let c = &t.credential;
    let issuer_tbs = c.to_be_signed();
    let issuer_ok = verify_strict(&s.issuer, &issuer_tbs, &c.signature).is_ok();
    assert_eq!(
        verify_es256(Backend::Ring, &s.issuer, &issuer_tbs, &c.signature.rs).is_ok(),
        verify_es256(Backend::P256, &s.issuer, &issuer_tbs, &c.signature.rs).is_ok(),
        "backends disagree on {}",
        hex::encode(t.bytes())
    );
    let device_ok = match t.device_key() {
        Ok(key) => {
            let tbs = t.to_be_signed();
            let ring = verify(Backend::Ring, &key, &tbs, &t.signature);
            let p256 = verify(Backend::P256, &key, &tbs, &t.signature);
            assert_eq!(
                ring,
                p256,
                "backends disagree on {}",
                hex::encode(t.bytes())
            );
            let strict = verify_strict(&key, &tbs, &t.signature);
            if strict.is_ok() {
                assert_eq!(ring, Ok(()));
            }
            strict.is_ok()
        }
        Err(_) => false,
    };
    if issuer_ok && device_ok {
        assert!(
            s.signed_tokens.contains(t.bytes()),
            "a mutated token passes both strict signature checks: {}",
            hex::encode(t.bytes())
        );
    }
    issuer_ok && device_ok
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn decoders_survive_random_and_mutated_inputs() {
    let started = Instant::now();
    let s = seeds();
    let mut rng = Rng(0x6761_7465_686f_7573); // "gatehous"
    let mut random = Stats::default();
    let mut mutated = Stats::default();

    // Random byte strings: uniform bytes, or bytes drawn from interesting CBOR heads.
    for _ in 0..RANDOM_INPUTS {
        let len = rng.below(1200);
        let input = if rng.one_in(2) {
            rng.bytes(len)
        } else {
            (0..len)
                .map(|_| {
                    if rng.one_in(2) {
                        *rng.pick(&INTERESTING)
                    } else {
                        rng.byte()
                    }
                })
                .collect()
        };
        run(&input, &mut rng, &mut random, "random");
    }
    let random_done = started.elapsed();

    let mut sampled = 0usize;
    let mut sampled_genuine = 0usize;
    for round in 0..MUTATION_ROUNDS {
        match rng.below(10) {
            // A whole structure, mutated.
            0..=3 => {
                let seed = rng.pick(&s.whole[..]);
                let input = mutate(seed, &s.whole, &mut rng);
                let token = run(&input, &mut rng, &mut mutated, "whole");
                if let Some(t) = token {
                    if sampled < SIGNATURE_SAMPLES && (round % 3 == 0 || input == *seed) {
                        sampled += 1;
                        sampled_genuine += usize::from(check_signatures(&t, &s));
                    }
                }
            }
            // A credential payload, mutated, then wrapped as a credential and as a token.
            4 | 5 => {
                let payload = mutate(rng.pick::<Vec<u8>>(&s.payloads), &s.payloads, &mut rng);
                run(&payload, &mut rng, &mut mutated, "payload");
                let cred = cose_sign1(
                    &credential_protected(&s.kid),
                    rng.one_in(2),
                    &payload,
                    &s.rs,
                );
                run(&cred, &mut rng, &mut mutated, "payload in credential");
                if rng.one_in(2) {
                    let challenge_len = 1 + rng.below(32);
                    let challenge = rng.one_in(3).then(|| rng.bytes(challenge_len));
                    let tp = token_payload(&cred, rng.next(), &rng.bytes(16), challenge.as_deref());
                    let token = cose_sign1(&TOKEN_PROTECTED, rng.one_in(2), &tp, &s.rs);
                    run(&token, &mut rng, &mut mutated, "payload in token");
                }
            }
            // A token payload, mutated, then wrapped.
            6 => {
                let tp = mutate(
                    rng.pick::<Vec<u8>>(&s.token_payloads),
                    &s.token_payloads,
                    &mut rng,
                );
                let token = cose_sign1(&TOKEN_PROTECTED, rng.one_in(2), &tp, &s.rs);
                run(&token, &mut rng, &mut mutated, "token payload");
            }
            // A frame body, mutated, then framed with its length, under its kind or another.
            7 | 8 => {
                let (k, body) = rng.pick(&s.bodies[..]);
                let body = mutate(body, &s.body_pool, &mut rng);
                let k = match rng.below(4) {
                    0 => rng.byte(),
                    1 => *rng.pick(&DEFINED_KINDS),
                    _ => *k,
                };
                run(&frame(k, &body), &mut rng, &mut mutated, "frame body");
            }
            // QR text, mutated.
            _ => {
                let text = mutate_text(rng.pick::<String>(&s.qr_texts), &mut rng);
                mutated.inputs += 1;
                let r = from_qr_text(&text);
                mutated.record("qr_text", &r);
                if let Ok(bytes) = &r {
                    check_qr(&text, bytes);
                    run(bytes, &mut rng, &mut mutated, "qr text");
                }
            }
        }
    }
    let elapsed = started.elapsed();

    random.report("random inputs");
    mutated.report("mutated inputs");
    println!("signature checks on decoded token mutations: {sampled} ({sampled_genuine} genuine)");
    println!(
        "random: {:?}; total: {:?} for {} inputs",
        random_done,
        elapsed,
        random.inputs + mutated.inputs
    );

    assert!(
        random.inputs + mutated.inputs >= MIN_INPUTS,
        "only {} inputs",
        random.inputs + mutated.inputs
    );
    // Not vacuous: mutations decode sometimes, and fail in many different ways.
    for decoder in [
        "token",
        "credential",
        "payload",
        "revocation",
        "request",
        "response",
        "qr_text",
    ] {
        assert!(
            mutated.ok.get(decoder).copied().unwrap_or(0) > 0,
            "no mutated input decoded as {decoder}: {:?}",
            mutated.ok
        );
    }
    let variants = mutated.variants();
    assert!(variants.len() >= 8, "only error variants {variants:?}");
    assert!(mutated.total_ok() > 1000, "{:?}", mutated.ok);
    assert!(
        sampled >= SIGNATURE_SAMPLES / 2,
        "only {sampled} signature samples"
    );
}

/// Every file under `fuzz/regressions/`, through every decoder.
#[test]
fn fuzz_regressions_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    if !dir.is_dir() {
        println!("no {}", dir.display());
        return;
    }
    let mut files = Vec::new();
    walk(&dir, &mut files);
    files.sort();
    let mut rng = Rng(1);
    let mut st = Stats::default();
    for f in &files {
        let input = std::fs::read(f).unwrap();
        let origin = f.display().to_string();
        println!("replaying {origin}");
        run(&input, &mut rng, &mut st, &origin);
    }
    println!("replayed {} files", files.len());
    assert_eq!(st.inputs, files.len() as u64);
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') || n.eq_ignore_ascii_case("README.md"));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}
