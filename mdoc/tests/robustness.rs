//! Decoding mdoc data is total: every decoder of `gatehouse-mdoc` returns a value or a typed
//! error for any input and never panics; what decodes is what was received; and what verifies
//! is what the issuer and the device signed.
//!
//! Every input goes through every decoder ([`battery`]): `cbor::decode`,
//! `decode_device_response`, `decode_mso`, `session_transcript_bytes`, `Iaca::from_der`,
//! `Iaca::pinned_document_signer` and `TrustAnchors::document_signer`. A DeviceResponse that
//! decodes goes on through the checks of ISO §9.3 ([`chain`]: `decode_mso` on its issuerAuth
//! payload, `verify_issuer`, `check_document`, `verify_device`) with a fixed trust list (the
//! Annex D document signer pinned, the Annex D and interop IACAs) and the time, transcript and
//! reader key of the document it came from (now and then another time, key or MAC permission).
//!
//! Inputs are random byte strings and random CBOR items from a seeded SplitMix64, and mutations
//! of the ISO Annex D example and of the documents of an independent implementation
//! (`tests/data/`), of their session transcripts and certificates, and of VerifyMdoc requests
//! around them: bit flips, byte changes, truncations, insertions, deletions, duplicated ranges,
//! splices, CBOR and DER length-prefix tweaks, and edits of the decoded structure (an item
//! removed, duplicated, swapped, replaced by another, re-encoded with a longer head or with an
//! indefinite length). Mutations reach the inner layers: the tag-24 embedded items
//! (IssuerSignedItemBytes, the MSO inside the issuerAuth payload, DeviceNameSpacesBytes), the
//! COSE headers, signatures and the x5chain certificate are mutated apart and wrapped again
//! with correct lengths; certificate fields are mutated in the DER tree with every enclosing
//! length fixed, and mutated certificates are also signed again by a test IACA (the real IACAs'
//! subjects with a test key) so that they get past the signature to the profile checks.
//!
//! What decodes is checked:
//! - every CBOR item's `raw` is its own head followed by its children's `raw`, contiguous (and
//!   the break byte of an indefinite container), and decodes again to an equal item;
//! - a decoded document's signed and hashed bytes (`issuer_auth_raw`, `device_name_spaces`,
//!   every `IssuerSignedItemBytes`, the COSE fields) are slices of the input, and each element
//!   value is inside its own item;
//! - `session_transcript_bytes` wraps the input as it is; a decoded IACA keeps its input.
//!
//! What verifies is genuine. The sound statement is not "a mutated document that passes has
//! the original's bytes": the DeviceResponse around the signed parts is not signed at all (map
//! order, head lengths, indefinite lengths, unknown keys may change), nor is issuerAuth's
//! unprotected header (where the x5chain is) or its COSE tag, an ECDSA signature has two forms
//! (s and n − s), and a holder may disclose fewer elements. What the signatures do bind, for a
//! mutated input that passes (barring a forgery of ECDSA or a collision of SHA-256):
//! - `verify_issuer` passes ⇒ issuerAuth's protected header and payload (the MSO) are byte for
//!   byte those of an original, and the signer's key is that original's document signer;
//! - `check_document` passes too ⇒ the docType is that original's, and every disclosed element
//!   (namespace, digestID and its IssuerSignedItemBytes, hence identifier and value) is one the
//!   original disclosed;
//! - `verify_device` passes ⇒ (transcript, docType, DeviceNameSpacesBytes, the device auth's
//!   protected header, the device key) are those of an original that the device authenticated;
//! - `TrustAnchors::document_signer` passes ⇒ the key is a genuine document signer's.
//!
//! And `verify_issuer` gives the same result for the same issuerAuth bytes and time: the engine
//! caches its facts under SHA-256 of those bytes.
//!
//! The run counts how often a passing mutant differed from its original, in its bytes, its
//! issuerAuth bytes or its disclosed elements: the reason the stronger statement would be false.
//! It counts too how often `document_signer` accepted a document signer's certificate in other
//! bytes than published: NULL parameters after the outer signature algorithm, or the IACA's
//! signature as (r, n − s), change the certificate's bytes, hence its `fingerprint`, and not what
//! the IACA signed.
//!
//! Finally every file under `fuzz/regressions/` is replayed through every decoder.
//!
//! The seed and counts are fixed. For a longer or another search locally, set
//! `MDOC_ROBUSTNESS_SEED` (a number) and `MDOC_ROBUSTNESS_SCALE` (a multiplier of every count).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../protocol/tests/support/mutation.rs"]
mod mutation;
use mutation::{mutate, mutate_case, tweak_length_prefix, Rng};

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Instant;

use gatehouse_mdoc::cbor::{self, CborError, Node, Value};
use gatehouse_mdoc::{
    check_document, decode_device_response, decode_mso, head, session_transcript_bytes, tag24,
    verify_device, verify_issuer, CertError, DecodeError, DeviceAuth, DocumentSigner, Iaca,
    IssuerFacts, MdocError, Mso, TrustAnchors,
};
use gatehouse_protocol::{kind, MdocRequest, Request, FRAME_HEADER_LEN};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::SigningKey;
use sha2::{Digest, Sha256};

/// Debug builds (the CI's `cargo test --workspace`) run a mutation round about twice as slowly
/// (this crate unoptimised; the workspace optimises dependencies, the cryptography, even in
/// test builds): fewer rounds, and inner layers put back in their document half as often. The
/// cheap random inputs keep the total above [`MIN_DECODER_INPUTS`] in both builds.
const DEBUG: bool = cfg!(debug_assertions);
/// Random byte strings.
const RANDOM_INPUTS: usize = 80_000;
/// Random CBOR items (valid or nearly).
const RANDOM_ITEMS: usize = 30_000;
/// Mutation rounds; each feeds one to three inputs to every decoder.
const MUTATION_ROUNDS: usize = if DEBUG { 60_000 } else { 150_000 };
/// Decoder calls (one input through one decoder) that must be reached, in every build.
const MIN_DECODER_INPUTS: u64 = 1_000_000;

/// The decoders whose calls are counted as inputs (the checks of ISO §9.3 and the wire
/// decoder are counted apart).
const DECODERS: [&str; 9] = [
    "cbor::decode",
    "decode_device_response",
    "decode_mso",
    "decode_mso (issuerAuth payload)",
    "session_transcript_bytes",
    "Iaca::from_der",
    "Iaca::pinned_document_signer",
    "TrustAnchors::document_signer",
    "TrustAnchors::document_signer (re-signed)",
];

/// 2021-01-01T00:00:00Z: inside the Annex D example's validities.
const ANNEX_D_NOW: i64 = 1_609_459_200;
/// 2027-06-01T00:00:00Z: inside the interop fixtures' validities.
const INTEROP_NOW: i64 = 1_811_808_000;

/// CBOR initial bytes worth trying: boundaries of every head size, reserved and indefinite
/// values, tags 0, 18 and 24, simple values and floats.
const INTERESTING: [u8; 28] = [
    0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1f, 0x20, 0x3a, 0x40, 0x58, 0x5f, 0x60, 0x7f,
    0x80, 0x84, 0x9f, 0xa0, 0xbf, 0xc0, 0xd2, 0xd8, 0xf4, 0xf6, 0xf9, 0xff,
];

// ---------------------------------------------------------------------------------------------
// A small seeded PRNG (SplitMix64)
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Fixtures: the documents, transcripts and certificates, and what the signatures bind
// ---------------------------------------------------------------------------------------------

fn annex_d(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/data/annex_d/{name}.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    hex::decode(std::fs::read_to_string(&path).unwrap().trim()).unwrap()
}

fn interop(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/interop/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// How an inner layer sits in its document.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wrap {
    /// `#6.24(bstr content)`.
    Tag24,
    /// `bstr content`.
    Bstr,
    /// `bstr #6.24(bstr content)`: the issuerAuth payload around the MSO.
    BstrTag24,
}

fn bstr(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 9);
    head(&mut out, 2, content.len() as u64);
    out.extend_from_slice(content);
    out
}

fn wrap(w: Wrap, content: &[u8]) -> Vec<u8> {
    match w {
        Wrap::Tag24 => tag24(content),
        Wrap::Bstr => bstr(content),
        Wrap::BstrTag24 => bstr(&tag24(content)),
    }
}

/// An embedded structure of a document: mutated apart, wrapped again, put back.
struct Layer {
    what: &'static str,
    /// Where its wrapped item lies in the document.
    range: Range<usize>,
    wrap: Wrap,
    content: Vec<u8>,
    /// A certificate (DER) rather than CBOR.
    der: bool,
}

/// A document as published, with the context it verifies in.
struct Original {
    name: &'static str,
    bytes: Vec<u8>,
    transcript: Vec<u8>,
    reader_key: [u8; 32],
    allow_mac: bool,
    now: i64,
    layers: Vec<Layer>,
    /// What `verify_issuer` proves about it.
    facts: IssuerFacts,
}

/// What one issuer signature binds: issuerAuth's protected header and payload, the signer, and
/// the elements that originals disclosed under it.
struct Genuine {
    protected: Vec<u8>,
    payload: Vec<u8>,
    signer_key: Vec<u8>,
    doc_type: String,
    /// (namespace, digestID, IssuerSignedItemBytes).
    items: HashSet<(String, u64, Vec<u8>)>,
    /// Most elements one original disclosed.
    disclosed: usize,
    issuer_auth_raw: Vec<u8>,
}

/// What one device authentication binds: (transcript, docType, DeviceNameSpacesBytes, the
/// deviceSignature's or deviceMac's protected header, the device key).
type DeviceBinding = (Vec<u8>, String, Vec<u8>, Vec<u8>, Vec<u8>);

struct Fixture {
    originals: Vec<Original>,
    /// Annex D's document signer pinned, Annex D's IACA, the interop IACA.
    anchors: TrustAnchors,
    /// The two IACAs' subjects with the test key: certificates signed again with it verify.
    resigning: TrustAnchors,
    test_iaca: SigningKey,
    /// The document signers signed again by the test IACA, with a time they are valid at.
    resigned_ds: Vec<(Vec<u8>, i64)>,
    /// The document signers' certificates as published.
    ds_der: Vec<Vec<u8>>,
    /// Certificates (IACAs, document signers, the test IACAs), with a time they are valid at.
    certs: Vec<(Vec<u8>, i64)>,
    /// Session transcripts, with the index of an original that was authenticated over it.
    transcripts: Vec<(Vec<u8>, usize)>,
    genuine: Vec<Genuine>,
    device: HashSet<DeviceBinding>,
    ds_keys: Vec<Vec<u8>>,
    /// Validity boundaries (±1 s) and extremes: other times to verify at.
    times: Vec<i64>,
    /// Everything, and every layer's content, for splices.
    pool: Vec<Vec<u8>>,
}

fn offset(outer: &[u8], inner: &[u8]) -> usize {
    let at = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
    assert!(
        at <= outer.len() && at + inner.len() <= outer.len(),
        "a slice that should lie in the input does not"
    );
    at
}

fn layers(doc: &[u8]) -> Vec<Layer> {
    let root = cbor::decode(doc).unwrap();
    let d = &root.get("documents").unwrap().array().unwrap()[0];
    let mut out = Vec::new();
    let mut add = |what: &'static str, n: &Node<'_>, wrap: Wrap, der: bool| {
        let content = match wrap {
            Wrap::Tag24 => n.embedded().unwrap(),
            Wrap::Bstr => n.bytes().unwrap(),
            Wrap::BstrTag24 => cbor::decode(n.bytes().unwrap())
                .unwrap()
                .embedded()
                .unwrap(),
        };
        let at = offset(doc, n.raw);
        out.push(Layer {
            what,
            range: at..at + n.raw.len(),
            wrap,
            content: content.to_vec(),
            der,
        });
    };
    let issuer_signed = d.get("issuerSigned").unwrap();
    for (_, items) in issuer_signed.get("nameSpaces").unwrap().map().unwrap() {
        for item in items.array().unwrap() {
            add("IssuerSignedItemBytes", item, Wrap::Tag24, false);
        }
    }
    let auth = issuer_signed
        .get("issuerAuth")
        .unwrap()
        .untag(18)
        .array()
        .unwrap();
    add("issuerAuth protected header", &auth[0], Wrap::Bstr, false);
    match &auth[1].get_int(33).unwrap().value {
        Value::Bytes(_) => add("x5chain", auth[1].get_int(33).unwrap(), Wrap::Bstr, true),
        Value::Array(certs) => {
            for c in certs {
                add("x5chain", c, Wrap::Bstr, true);
            }
        }
        other => panic!("x5chain {other:?}"),
    }
    add("MobileSecurityObjectBytes", &auth[2], Wrap::Bstr, false);
    add("MobileSecurityObject", &auth[2], Wrap::BstrTag24, false);
    add("issuerAuth signature", &auth[3], Wrap::Bstr, false);
    let device_signed = d.get("deviceSigned").unwrap();
    add(
        "DeviceNameSpacesBytes",
        device_signed.get("nameSpaces").unwrap(),
        Wrap::Tag24,
        false,
    );
    let device_auth = device_signed.get("deviceAuth").unwrap();
    let cose = device_auth
        .get("deviceSignature")
        .or_else(|| device_auth.get("deviceMac"))
        .unwrap()
        .untag(18)
        .untag(17)
        .array()
        .unwrap();
    add("deviceAuth protected header", &cose[0], Wrap::Bstr, false);
    add("deviceAuth signature or tag", &cose[3], Wrap::Bstr, false);
    out
}

/// The IACA certificate `der` with the test key in place of its own (same length: the
/// 65-byte point in the BIT STRING `03 42 00 04 …`); not validly self-signed, which nothing
/// checks for a trust anchor.
fn with_test_key(der: &[u8], key: &SigningKey) -> Vec<u8> {
    let at = der
        .windows(4)
        .position(|w| w == [0x03, 0x42, 0x00, 0x04])
        .unwrap();
    let point = key.verifying_key().to_encoded_point(false);
    let mut out = der.to_vec();
    out[at + 3..at + 3 + 65].copy_from_slice(point.as_bytes());
    out
}

fn device_binding(
    doc: &gatehouse_mdoc::Document<'_>,
    facts: &IssuerFacts,
    transcript: &[u8],
) -> DeviceBinding {
    let protected = match &doc.device_auth {
        DeviceAuth::Signature(s) => s.protected,
        DeviceAuth::Mac(m) => m.protected,
    };
    (
        transcript.to_vec(),
        doc.doc_type.to_owned(),
        doc.device_name_spaces.to_vec(),
        protected.to_vec(),
        facts.mso.device_key.clone(),
    )
}

fn fixture() -> Fixture {
    let annex_d_ds = annex_d("ds_certificate");
    let annex_d_iaca = annex_d("iaca_certificate");
    let interop_ds = interop("ds.der");
    let interop_iaca = interop("iaca.der");
    let anchors = TrustAnchors::new(vec![
        Iaca::pinned_document_signer(&annex_d_ds).unwrap(),
        Iaca::from_der(&annex_d_iaca).unwrap(),
        Iaca::from_der(&interop_iaca).unwrap(),
    ]);
    let test_iaca = SigningKey::from_slice(&[0x42; 32]).unwrap();
    let test_annex_d_iaca = with_test_key(&annex_d_iaca, &test_iaca);
    let test_interop_iaca = with_test_key(&interop_iaca, &test_iaca);
    let resigning = TrustAnchors::new(vec![
        Iaca::from_der(&test_annex_d_iaca).unwrap(),
        Iaca::from_der(&test_interop_iaca).unwrap(),
    ]);

    let annex_d_reader: [u8; 32] = annex_d("reader_ephemeral_private").try_into().unwrap();
    let interop_reader: [u8; 32] = hex::decode(
        String::from_utf8(interop("reader_ephemeral_private.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap()
    .try_into()
    .unwrap();
    // (name, bytes, transcript, reader key, MAC allowed, now, whether the device part verifies)
    let published = [
        (
            "annex_d",
            annex_d("device_response"),
            annex_d("session_transcript"),
            annex_d_reader,
            true,
            ANNEX_D_NOW,
            true,
        ),
        (
            "interop sig",
            interop("device_response_sig.cbor"),
            interop("transcript_sig.cbor"),
            interop_reader,
            false,
            INTEROP_NOW,
            true,
        ),
        (
            "interop sig oid4vp",
            interop("device_response_sig_oid4vp.cbor"),
            interop("transcript_sig_oid4vp.cbor"),
            interop_reader,
            false,
            INTEROP_NOW,
            true,
        ),
        (
            "interop mac",
            interop("device_response_mac.cbor"),
            interop("transcript_mac.cbor"),
            interop_reader,
            true,
            INTEROP_NOW,
            true,
        ),
        (
            "interop mac (nonconformant)",
            interop("device_response_mac_owf_nonconformant.cbor"),
            interop("transcript_mac.cbor"),
            interop_reader,
            true,
            INTEROP_NOW,
            false,
        ),
    ];

    let mut originals = Vec::new();
    let mut genuine: Vec<Genuine> = Vec::new();
    let mut device = HashSet::new();
    let mut times = vec![i64::MIN, -1, 0, i64::MAX, ANNEX_D_NOW, INTEROP_NOW];
    let mut transcripts: Vec<(Vec<u8>, usize)> = Vec::new();
    for (i, (name, bytes, transcript, reader_key, allow_mac, now, device_ok)) in
        published.into_iter().enumerate()
    {
        let doc = decode_device_response(&bytes).unwrap().document;
        let facts = verify_issuer(&doc, &anchors, now).unwrap();
        check_document(&doc, &facts, now).unwrap();
        let d = verify_device(&doc, &facts, &transcript, Some(&reader_key), allow_mac);
        assert_eq!(d.is_ok(), device_ok, "{name}: {d:?}");
        if device_ok {
            device.insert(device_binding(&doc, &facts, &transcript));
        }
        let payload = doc.issuer_auth.payload.unwrap();
        let items: Vec<(String, u64, Vec<u8>)> = doc
            .name_spaces
            .iter()
            .flat_map(|(ns, items)| {
                items
                    .iter()
                    .map(|i| (ns.to_string(), i.digest_id, i.raw.to_vec()))
            })
            .collect();
        match genuine
            .iter_mut()
            .find(|g| g.protected == doc.issuer_auth.protected && g.payload == payload)
        {
            Some(g) => {
                g.disclosed = g.disclosed.max(items.len());
                g.items.extend(items);
            }
            None => genuine.push(Genuine {
                protected: doc.issuer_auth.protected.to_vec(),
                payload: payload.to_vec(),
                signer_key: facts.signer.key.clone(),
                doc_type: doc.doc_type.to_owned(),
                disclosed: items.len(),
                items: items.into_iter().collect(),
                issuer_auth_raw: doc.issuer_auth_raw.to_vec(),
            }),
        }
        for t in [
            facts.signer.not_before,
            facts.signer.not_after,
            facts.signer.ds_validity.0,
            facts.signer.ds_validity.1,
            facts.mso.signed,
            facts.mso.valid_from,
            facts.mso.valid_until,
        ] {
            times.extend([t - 1, t, t + 1]);
        }
        if !transcripts.iter().any(|(t, _)| *t == transcript) {
            transcripts.push((transcript.clone(), i));
        }
        originals.push(Original {
            name,
            layers: layers(&bytes),
            bytes,
            transcript,
            reader_key,
            allow_mac,
            now,
            facts,
        });
    }
    times.sort_unstable();
    times.dedup();
    let ds_keys: Vec<Vec<u8>> = [&annex_d_ds, &interop_ds]
        .iter()
        .map(|d| {
            anchors
                .document_signer(
                    d,
                    if d[..] == annex_d_ds[..] {
                        ANNEX_D_NOW
                    } else {
                        INTEROP_NOW
                    },
                )
                .unwrap()
                .key
        })
        .collect();
    // The document signers signed again by the test IACA are accepted by `resigning`.
    let mut resigned_ds = Vec::new();
    for (ds, now) in [(&annex_d_ds, ANNEX_D_NOW), (&interop_ds, INTEROP_NOW)] {
        let again = resign(ds, &test_iaca).unwrap();
        resigning.document_signer(&again, now).unwrap();
        assert_eq!(
            anchors.document_signer(&again, now).unwrap_err(),
            CertError::BadSignature
        );
        resigned_ds.push((again, now));
    }
    let ds_der = vec![annex_d_ds.clone(), interop_ds.clone()];
    let certs = vec![
        (annex_d_ds, ANNEX_D_NOW),
        (annex_d_iaca, ANNEX_D_NOW),
        (interop_ds, INTEROP_NOW),
        (interop_iaca, INTEROP_NOW),
        (test_annex_d_iaca, ANNEX_D_NOW),
        (test_interop_iaca, INTEROP_NOW),
    ];
    let mut pool: Vec<Vec<u8>> = Vec::new();
    for o in &originals {
        pool.push(o.bytes.clone());
        pool.extend(o.layers.iter().map(|l| l.content.clone()));
    }
    pool.extend(transcripts.iter().map(|t| t.0.clone()));
    pool.extend(certs.iter().map(|c| c.0.clone()));
    pool.push(annex_d("session_transcript_bytes"));

    Fixture {
        originals,
        anchors,
        resigning,
        test_iaca,
        resigned_ds,
        ds_der,
        certs,
        transcripts,
        genuine,
        device,
        ds_keys,
        times,
        pool,
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// An error's variant and a static detail (the field or structure it names), without
/// formatting: the run sees a million errors.
trait Shape: Debug {
    fn shape(&self) -> (&'static str, &'static str);
}

impl Shape for CborError {
    fn shape(&self) -> (&'static str, &'static str) {
        (cbor_variant(self), "")
    }
}

fn cbor_variant(e: &CborError) -> &'static str {
    match e {
        CborError::Truncated(_) => "Truncated",
        CborError::Trailing(_) => "Trailing",
        CborError::Reserved(..) => "Reserved",
        CborError::IndefiniteString(_) => "IndefiniteString",
        CborError::Utf8(_) => "Utf8",
        CborError::TooDeep => "TooDeep",
        CborError::TooMany => "TooMany",
        CborError::DuplicateKey(_) => "DuplicateKey",
        CborError::Simple(_) => "Simple",
        _ => "CborError (new variant)",
    }
}

impl Shape for DecodeError {
    fn shape(&self) -> (&'static str, &'static str) {
        match self {
            DecodeError::Cbor { what, source } => (
                match source {
                    CborError::Truncated(_) => "Cbor(Truncated)",
                    CborError::Trailing(_) => "Cbor(Trailing)",
                    CborError::Reserved(..) => "Cbor(Reserved)",
                    CborError::IndefiniteString(_) => "Cbor(IndefiniteString)",
                    CborError::Utf8(_) => "Cbor(Utf8)",
                    CborError::TooDeep => "Cbor(TooDeep)",
                    CborError::TooMany => "Cbor(TooMany)",
                    CborError::DuplicateKey(_) => "Cbor(DuplicateKey)",
                    CborError::Simple(_) => "Cbor(Simple)",
                    _ => "Cbor(new variant)",
                },
                what,
            ),
            DecodeError::Field(f) => ("Field", f),
            DecodeError::TooLong { what, .. } => ("TooLong", what),
            DecodeError::NotOneDocument { .. } => ("NotOneDocument", ""),
            DecodeError::Version { what, .. } => ("Version", what),
            _ => ("DecodeError (new variant)", ""),
        }
    }
}

impl Shape for CertError {
    fn shape(&self) -> (&'static str, &'static str) {
        match self {
            CertError::Der(_) => ("Der", ""),
            CertError::Profile(p) => ("Profile", p),
            CertError::Algorithm(a) => ("Algorithm", a),
            CertError::UnknownIssuer => ("UnknownIssuer", ""),
            CertError::BadSignature => ("BadSignature", ""),
            CertError::NotValid => ("NotValid", ""),
            _ => ("CertError (new variant)", ""),
        }
    }
}

impl Shape for MdocError {
    fn shape(&self) -> (&'static str, &'static str) {
        match self {
            MdocError::Decode(d) => ("Decode", d.shape().0),
            MdocError::UnsupportedAlgorithm(a) => ("UnsupportedAlgorithm", a),
            MdocError::UnknownIssuer => ("UnknownIssuer", ""),
            MdocError::IssuerCertificate(_) => ("IssuerCertificate", ""),
            MdocError::BadIssuerSignature => ("BadIssuerSignature", ""),
            MdocError::IssuerDataMismatch(_) => ("IssuerDataMismatch", ""),
            MdocError::NotYetValid => ("NotYetValid", ""),
            MdocError::Expired => ("Expired", ""),
            MdocError::BadDeviceAuth => ("BadDeviceAuth", ""),
            MdocError::MacNotAllowed => ("MacNotAllowed", ""),
            _ => ("MdocError (new variant)", ""),
        }
    }
}

impl Shape for gatehouse_protocol::DecodeError {
    fn shape(&self) -> (&'static str, &'static str) {
        use gatehouse_protocol::DecodeError as E;
        match self {
            E::Truncated => ("Truncated", ""),
            E::TrailingData(w) => ("TrailingData", w),
            E::NonCanonical(w) => ("NonCanonical", w),
            E::WrongType(w) => ("WrongType", w),
            E::TooLong(w) => ("TooLong", w),
            E::BadLength(w) => ("BadLength", w),
            E::OutOfRange(w) => ("OutOfRange", w),
            E::UnknownValue(w) => ("UnknownValue", w),
            E::UnknownKey(w) => ("UnknownKey", w),
            E::Missing(w) => ("Missing", w),
            E::Inconsistent(w) => ("Inconsistent", w),
            _ => ("other", ""),
        }
    }
}

#[derive(Default)]
struct Stats {
    calls: BTreeMap<&'static str, u64>,
    ok: BTreeMap<&'static str, u64>,
    /// (decoder, variant, detail) → (count, the first error's Debug form).
    errors: HashMap<(&'static str, &'static str, &'static str), (u64, String)>,
    /// Mutated or random inputs that passed every check of ISO §9.3, and how they differ from
    /// the original whose signatures they carry.
    accepted: u64,
    accepted_other_bytes: u64,
    accepted_other_issuer_auth: u64,
    accepted_fewer_elements: u64,
    /// Certificates a test IACA signed again that then passed `document_signer`.
    resigned_ok: u64,
    /// Certificates that `document_signer` accepted (with the real trust list) in bytes other
    /// than the document signer's as published: the same key and signed content, another
    /// `fingerprint` (SHA-256 of the bytes). With the first example.
    ds_other_encoding: u64,
    ds_other_encoding_example: Option<Vec<u8>>,
    /// verify_issuer results by (SHA-256 of issuerAuth's bytes, time): the engine caches the
    /// facts under that digest, so they must be a function of those bytes.
    issuer_cache: HashMap<([u8; 32], i64), String>,
    issuer_cache_hits: u64,
    /// Nodes decoded again from their `raw`.
    redecoded: u64,
}

impl Stats {
    fn record<T, E: Shape>(&mut self, decoder: &'static str, r: &Result<T, E>) {
        *self.calls.entry(decoder).or_default() += 1;
        match r {
            Ok(_) => *self.ok.entry(decoder).or_default() += 1,
            Err(e) => {
                let (variant, detail) = e.shape();
                let entry = self
                    .errors
                    .entry((decoder, variant, detail))
                    .or_insert_with(|| {
                        let mut s = format!("{e:?}");
                        s.truncate(160);
                        (0, s)
                    });
                entry.0 += 1;
            }
        }
    }

    fn decoder_inputs(&self) -> u64 {
        DECODERS
            .iter()
            .map(|d| self.calls.get(d).copied().unwrap_or(0))
            .sum()
    }

    /// Variants seen, by decoder or check.
    fn variants(&self) -> BTreeMap<&'static str, BTreeSet<&'static str>> {
        let mut out: BTreeMap<&'static str, BTreeSet<&'static str>> = BTreeMap::new();
        for (decoder, variant, _) in self.errors.keys() {
            out.entry(decoder).or_default().insert(variant);
        }
        out
    }

    fn report(&self) {
        println!("== {} decoder inputs", self.decoder_inputs());
        for (name, calls) in &self.calls {
            println!(
                "   {name:<42} {calls:>9} calls {:>9} ok",
                self.ok.get(name).copied().unwrap_or(0)
            );
        }
        println!(
            "   CBOR nodes decoded again from their raw bytes: {}",
            self.redecoded
        );
        println!(
            "   passed every check: {} ({} with other bytes than the original, {} with other \
             issuerAuth bytes, {} disclosing fewer elements)",
            self.accepted,
            self.accepted_other_bytes,
            self.accepted_other_issuer_auth,
            self.accepted_fewer_elements
        );
        println!(
            "   certificates signed again that passed document_signer: {}",
            self.resigned_ok
        );
        println!(
            "   verify_issuer results checked against an earlier one for the same issuerAuth \
             bytes and time: {}",
            self.issuer_cache_hits
        );
        println!(
            "   document signer certificates accepted in another encoding (another fingerprint): \
             {}",
            self.ds_other_encoding
        );
        if let Some(e) = &self.ds_other_encoding_example {
            println!("     e.g. {}", hex::encode(e));
        }
        println!("   error variants seen:");
        for (decoder, variants) in self.variants() {
            println!("     {decoder}: {variants:?}");
        }
        let mut errors: Vec<_> = self.errors.iter().collect();
        errors.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
        println!(
            "   {} distinct errors (variant and detail); the most frequent:",
            errors.len()
        );
        for ((decoder, _, _), (n, example)) in errors.iter().take(40) {
            println!("   {n:>9}  {decoder}: {example}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Invariants of what decodes
// ---------------------------------------------------------------------------------------------

/// (major type, additional information, argument, head length) of the head at `raw[0]`,
/// read independently of the decoder.
fn parse_head(raw: &[u8]) -> (u8, u8, u64, usize) {
    let (major, ai) = (raw[0] >> 5, raw[0] & 0x1f);
    let n = match ai {
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => 0,
    };
    let arg = if ai < 24 {
        u64::from(ai)
    } else {
        raw[1..1 + n]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    };
    (major, ai, arg, 1 + n)
}

fn at(s: &[u8]) -> usize {
    s.as_ptr() as usize
}

/// Checks one node's `raw` against its value and children (head, then the children's bytes,
/// contiguous, then the break of an indefinite container), and collects every node.
fn walk<'n, 'a>(n: &'n Node<'a>, out: &mut Vec<&'n Node<'a>>) {
    out.push(n);
    let raw = n.raw;
    let (major, ai, arg, hl) = parse_head(raw);
    let end = at(raw) + raw.len();
    let mut next = at(raw) + hl;
    let children: Vec<&'n Node<'a>> = match &n.value {
        Value::Uint(v) | Value::Neg(v) => {
            assert_eq!(
                (major, *v, raw.len()),
                (u8::from(matches!(n.value, Value::Neg(_))), arg, hl)
            );
            vec![]
        }
        Value::Bytes(b) => {
            assert_eq!((major, b.len() as u64, at(b)), (2, arg, next));
            next += b.len();
            vec![]
        }
        Value::Text(t) => {
            assert_eq!((major, t.len() as u64, at(t.as_bytes())), (3, arg, next));
            next += t.len();
            vec![]
        }
        Value::Array(items) => {
            assert_eq!(major, 4);
            assert!(ai == 31 || arg == items.len() as u64);
            items.iter().collect()
        }
        Value::Map(pairs) => {
            assert_eq!(major, 5);
            assert!(ai == 31 || arg == pairs.len() as u64);
            pairs.iter().flat_map(|(k, v)| [k, v]).collect()
        }
        Value::Tag(t, inner) => {
            assert_eq!((major, *t), (6, arg));
            vec![&**inner]
        }
        Value::Bool(_) | Value::Null | Value::Undefined => {
            assert!(major == 7 && (20..=23).contains(&ai) && raw.len() == 1);
            vec![]
        }
        Value::Float(f) => {
            assert!(major == 7 && (25..=27).contains(&ai) && raw.len() == hl);
            let b = &raw[1..];
            match ai {
                26 => assert_eq!(
                    f.to_bits(),
                    f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])).to_bits()
                ),
                27 => assert_eq!(
                    f.to_bits(),
                    f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]).to_bits()
                ),
                _ => {}
            }
            vec![]
        }
    };
    for c in children {
        assert_eq!(at(c.raw), next, "a child's raw bytes follow its sibling's");
        next += c.raw.len();
        walk(c, out);
    }
    if ai == 31 {
        assert_eq!(
            raw[raw.len() - 1],
            0xff,
            "an indefinite container ends in a break"
        );
        next += 1;
    }
    assert_eq!(next, end, "a node's raw bytes end with its last child");
}

/// Equal items, floats by their bits (NaN included).
fn same(a: &Node<'_>, b: &Node<'_>) -> bool {
    a.raw == b.raw
        && match (&a.value, &b.value) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
            }
            (Value::Map(x), Value::Map(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((k1, v1), (k2, v2))| same(k1, k2) && same(v1, v2))
            }
            (Value::Tag(s, x), Value::Tag(t, y)) => s == t && same(x, y),
            (x, y) => x == y,
        }
}

fn redecode(n: &Node<'_>, st: &mut Stats) {
    st.redecoded += 1;
    match cbor::decode(n.raw) {
        Ok(again) => assert!(
            same(n, &again),
            "raw bytes decode to another item: {}",
            hex::encode(n.raw)
        ),
        Err(e) => panic!(
            "an item's raw bytes do not decode alone ({e:?}): {}",
            hex::encode(n.raw)
        ),
    }
}

/// The tree invariants on a decoded item: `raw` bookkeeping everywhere, and a few nodes (all
/// of a small tree) decoded again from their `raw`.
fn check_tree(root: &Node<'_>, input: &[u8], rng: &mut Rng, st: &mut Stats) {
    offset(input, root.raw);
    let mut nodes = Vec::new();
    walk(root, &mut nodes);
    if root.raw.len() <= 160 || nodes.len() == 1 {
        for n in &nodes {
            redecode(n, st);
        }
    } else {
        for _ in 0..3 {
            let n = nodes[1 + rng.below(nodes.len() - 1)];
            redecode(n, st);
        }
    }
}

fn check_mso(m: &Mso) {
    assert!(m.device_key.len() == 33 || m.device_key.len() == 65);
    assert!(m
        .value_digests
        .windows(2)
        .all(|w| (w[0].0.as_str(), w[0].1) <= (w[1].0.as_str(), w[1].1)));
    for (ns, id, _) in &m.value_digests {
        assert!(m.digest(ns, *id).is_some());
    }
}

/// A decoded document: what is hashed and signed lies in the input, items are what they say.
fn check_document_bytes(
    doc: &gatehouse_mdoc::Document<'_>,
    input: &[u8],
    rng: &mut Rng,
    st: &mut Stats,
) {
    offset(input, doc.issuer_auth_raw);
    offset(input, doc.device_name_spaces);
    let dns = cbor::decode(doc.device_name_spaces).unwrap();
    assert!(cbor::decode(dns.embedded().unwrap())
        .unwrap()
        .map()
        .is_some());
    offset(input, doc.issuer_auth.protected);
    offset(input, doc.issuer_auth.signature);
    if let Some(p) = doc.issuer_auth.payload {
        offset(input, p);
    }
    for c in &doc.issuer_auth.x5chain {
        offset(input, c);
    }
    for (ns, items) in &doc.name_spaces {
        for item in items {
            offset(input, item.raw);
            let outer = cbor::decode(item.raw).unwrap();
            let inner = outer.embedded().unwrap();
            offset(item.raw, inner);
            offset(inner, item.value.raw);
            let n = cbor::decode(inner).unwrap();
            assert_eq!(
                n.get("elementIdentifier").and_then(Node::text),
                Some(item.identifier)
            );
            assert_eq!(n.get("digestID").and_then(Node::uint), Some(item.digest_id));
            assert!(same(n.get("elementValue").unwrap(), &item.value));
            check_tree(&item.value, inner, rng, st);
            assert!(doc.element(ns, item.identifier).is_some());
        }
    }
}

/// What `verify_issuer` accepted is an original's issuerAuth: its protected header and payload
/// byte for byte, under its document signer's key.
fn genuine_issuer<'f>(
    doc: &gatehouse_mdoc::Document<'_>,
    facts: &IssuerFacts,
    f: &'f Fixture,
) -> &'f Genuine {
    let payload = doc.issuer_auth.payload.unwrap_or_default();
    let g = f
        .genuine
        .iter()
        .find(|g| g.protected == doc.issuer_auth.protected && g.payload == payload)
        .unwrap_or_else(|| {
            panic!(
                "FORGERY: verify_issuer accepts an issuerAuth no issuer signed: protected {}, \
                 payload {}",
                hex::encode(doc.issuer_auth.protected),
                hex::encode(payload)
            )
        });
    assert_eq!(
        facts.signer.key, g.signer_key,
        "verify_issuer accepts the MSO under another key"
    );
    g
}

/// What `check_document` accepted discloses only elements an original disclosed, under its
/// docType.
fn genuine_elements(doc: &gatehouse_mdoc::Document<'_>, g: &Genuine) {
    assert_eq!(doc.doc_type, g.doc_type, "FORGERY: docType");
    for (ns, items) in &doc.name_spaces {
        for item in items {
            assert!(
                g.items
                    .contains(&(ns.to_string(), item.digest_id, item.raw.to_vec())),
                "FORGERY: check_document accepts an element no issuer signed: {ns} {} {}",
                item.identifier,
                hex::encode(item.raw)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The battery: one input through every decoder
// ---------------------------------------------------------------------------------------------

/// The checks of ISO §9.3 on a decoded document, in the context of original `o` (its time,
/// transcript and reader key, now and then others).
fn chain(
    doc: &gatehouse_mdoc::Document<'_>,
    input: &[u8],
    o: &Original,
    f: &Fixture,
    rng: &mut Rng,
    st: &mut Stats,
) {
    if let Some(p) = doc.issuer_auth.payload {
        let m = decode_mso(p);
        if let Ok(m) = &m {
            check_mso(m);
        }
        st.record("decode_mso (issuerAuth payload)", &m);
    }
    let now = if rng.one_in(8) {
        *rng.pick(&f.times)
    } else {
        o.now
    };
    let r = verify_issuer(doc, &f.anchors, now);
    st.record("verify_issuer", &r);
    let key: [u8; 32] = Sha256::digest(doc.issuer_auth_raw).into();
    let result = format!("{r:?}");
    match st.issuer_cache.get(&(key, now)) {
        Some(earlier) => {
            assert_eq!(
                *earlier,
                result,
                "verify_issuer differs for the same issuerAuth bytes: {}",
                hex::encode(input)
            );
            st.issuer_cache_hits += 1;
        }
        None => {
            st.issuer_cache.insert((key, now), result);
        }
    }
    let Ok(facts) = r else { return };
    let g = genuine_issuer(doc, &facts, f);
    // Facts proved earlier are used later (a cache hit): check the document at another time.
    let now = if rng.one_in(8) {
        *rng.pick(&f.times)
    } else {
        now
    };
    let c = check_document(doc, &facts, now);
    st.record("check_document", &c);
    if c.is_ok() {
        genuine_elements(doc, g);
    }
    let (reader, allow_mac) = match rng.below(16) {
        0 => (None, o.allow_mac),
        1 => (Some(&o.reader_key), !o.allow_mac),
        _ => (Some(&o.reader_key), o.allow_mac),
    };
    let d = verify_device(doc, &facts, &o.transcript, reader, allow_mac);
    st.record("verify_device", &d);
    if d.is_ok() {
        let binding = device_binding(doc, &facts, &o.transcript);
        assert!(
            f.device.contains(&binding),
            "FORGERY: verify_device accepts what no device authenticated: {}",
            hex::encode(input)
        );
    }
    if c.is_ok() && d.is_ok() {
        st.accepted += 1;
        st.accepted_other_bytes += u64::from(input != o.bytes);
        st.accepted_other_issuer_auth += u64::from(doc.issuer_auth_raw != g.issuer_auth_raw);
        let disclosed: usize = doc.name_spaces.iter().map(|(_, i)| i.len()).sum();
        st.accepted_fewer_elements += u64::from(disclosed < g.disclosed);
    }
}

fn check_signer(s: &DocumentSigner, der: &[u8], now: i64) {
    assert!(s.not_before <= now && now < s.not_after);
    assert!(s.ds_validity.0 <= s.not_before && s.not_after <= s.ds_validity.1);
    // The revocation key names the signed key, not the certificate's bytes: a re-encoding
    // outside the signature keeps it.
    assert_eq!(Ok(s.fingerprint), gatehouse_mdoc::signer_fingerprint(der));
}

/// One input through every decoder; a DeviceResponse that decodes goes on through [`chain`].
fn battery(input: &[u8], o: &Original, f: &Fixture, rng: &mut Rng, st: &mut Stats) {
    let r = cbor::decode(input);
    if let Ok(n) = &r {
        assert_eq!(n.raw, input);
        check_tree(n, input, rng, st);
    }
    st.record("cbor::decode", &r);

    let r = decode_device_response(input);
    if let Ok(resp) = &r {
        check_document_bytes(&resp.document, input, rng, st);
        chain(&resp.document, input, o, f, rng, st);
    }
    st.record("decode_device_response", &r);

    let r = decode_mso(input);
    if let Ok(m) = &r {
        check_mso(m);
    }
    st.record("decode_mso", &r);

    let r = session_transcript_bytes(input);
    if let Ok(t) = &r {
        assert_eq!(*t, tag24(input));
        assert_eq!(
            cbor::decode(input).unwrap().array().map(<[_]>::len),
            Some(3)
        );
    }
    st.record("session_transcript_bytes", &r);

    let r = Iaca::from_der(input);
    if let Ok(iaca) = &r {
        assert!(iaca.der == input && !iaca.pinned_ds);
    }
    st.record("Iaca::from_der", &r);
    let r = Iaca::pinned_document_signer(input);
    if let Ok(iaca) = &r {
        assert!(iaca.der == input && iaca.pinned_ds);
    }
    st.record("Iaca::pinned_document_signer", &r);

    let now = if rng.one_in(4) {
        *rng.pick(&f.times)
    } else {
        o.now
    };
    let r = f.anchors.document_signer(input, now);
    if let Ok(s) = &r {
        check_signer(s, input, now);
        assert!(
            f.ds_keys.contains(&s.key),
            "FORGERY: document_signer accepts a certificate no IACA issued: {}",
            hex::encode(input)
        );
        if !f.ds_der.iter().any(|d| d == input) {
            st.ds_other_encoding += 1;
            st.ds_other_encoding_example
                .get_or_insert_with(|| input.to_vec());
        }
    }
    st.record("TrustAnchors::document_signer", &r);
}

thread_local! {
    /// Where the last panic on this thread happened (set by the hook [`run`] installs).
    static PANIC_AT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Panicking inputs (up to [`MAX_PANICS`]), each with where and why: the test fails with them.
#[derive(Default)]
struct Panics(Vec<String>);

const MAX_PANICS: usize = 12;

/// Runs `f` on `input`, catching a panic and keeping the input (hex), its origin and the
/// panic's location and message.
fn run(input: &[u8], origin: &str, panics: &mut Panics, f: impl FnOnce()) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            PANIC_AT.with(|p| *p.borrow_mut() = at);
            default(info);
        }));
    });
    if panics.0.len() >= MAX_PANICS {
        return;
    }
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        let at = PANIC_AT.with(|p| p.borrow().clone());
        let report = format!(
            "PANIC at {at} on input from {origin} ({} bytes): {message}\n  input: {}",
            input.len(),
            hex::encode(input)
        );
        println!("{report}");
        panics.0.push(report);
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

fn mutate_once(v: &mut Vec<u8>, pool: &[Vec<u8>], rng: &mut Rng) {
    match rng.below(15) {
        11 | 12 => cbor_surgery(v, rng),
        13 => tweak_der_length(v, rng),
        case => mutate_case(case, v, pool, &INTERESTING, rng),
    }
}

/// The head of major type `major` and argument `arg`, in its shortest form or (`longer`) in
/// a longer one.
fn head_bytes(major: u8, arg: u64, longer: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    if !longer {
        head(&mut out, major, arg);
        return out;
    }
    let m = major << 5;
    if arg <= 0xff {
        out.extend_from_slice(&[m | 25, 0, arg as u8]);
    } else if arg <= 0xffff {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
    out
}

/// An edit of the decoded structure, when `v` decodes: a node re-encoded with a longer head,
/// an item (or key and value) of a container removed, duplicated or swapped with the next, a
/// container re-encoded with an indefinite length (or a definite one), or a node replaced by
/// another node of the tree. A length tweak when `v` does not decode.
fn cbor_surgery(v: &mut Vec<u8>, rng: &mut Rng) {
    let Some((range, replacement)) = surgery_plan(v, rng) else {
        tweak_length_prefix(v, rng);
        return;
    };
    v.splice(range, replacement);
}

fn surgery_plan(v: &[u8], rng: &mut Rng) -> Option<(Range<usize>, Vec<u8>)> {
    let root = cbor::decode(v).ok()?;
    let mut nodes = Vec::new();
    collect(&root, &mut nodes);
    let n = nodes[rng.below(nodes.len())];
    let start = offset(v, n.raw);
    let range = start..start + n.raw.len();
    let (major, ai, arg, hl) = parse_head(n.raw);
    // The children as units: items of an array, (key, value) pairs of a map.
    let units: Vec<&[u8]> = match &n.value {
        Value::Array(items) => items.iter().map(|i| i.raw).collect(),
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| {
                let s = offset(n.raw, k.raw);
                &n.raw[s..s + k.raw.len() + v.raw.len()]
            })
            .collect(),
        _ => Vec::new(),
    };
    let container = matches!(n.value, Value::Array(_) | Value::Map(_));
    let rebuild = |units: &[&[u8]], indefinite: bool| {
        let mut out = if indefinite {
            vec![(major << 5) | 31]
        } else {
            head_bytes(major, units.len() as u64, false)
        };
        for u in units {
            out.extend_from_slice(u);
        }
        if indefinite {
            out.push(0xff);
        }
        out
    };
    let replacement = match rng.below(6) {
        0 if major != 7 && ai != 31 => {
            let mut out = head_bytes(major, arg, true);
            out.extend_from_slice(&n.raw[hl..]);
            out
        }
        1 if !units.is_empty() => {
            let mut u = units.clone();
            u.remove(rng.below(units.len()));
            rebuild(&u, ai == 31)
        }
        2 if !units.is_empty() => {
            let mut u = units.clone();
            let i = rng.below(units.len());
            u.insert(i, units[i]);
            rebuild(&u, ai == 31)
        }
        3 if units.len() >= 2 => {
            let mut u = units.clone();
            let i = rng.below(units.len() - 1);
            u.swap(i, i + 1);
            rebuild(&u, ai == 31)
        }
        4 if container => rebuild(&units, ai != 31),
        _ => nodes[rng.below(nodes.len())].raw.to_vec(),
    };
    Some((range, replacement))
}

fn collect<'n, 'a>(n: &'n Node<'a>, out: &mut Vec<&'n Node<'a>>) {
    out.push(n);
    match &n.value {
        Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            collect(k, out);
            collect(v, out);
        }),
        Value::Tag(_, inner) => collect(inner, out),
        _ => {}
    }
}

/// Finds a DER tag and changes its length: one more or less, a long form (minimal or not), an
/// indefinite (BER) or an oversized one.
fn tweak_der_length(v: &mut Vec<u8>, rng: &mut Rng) {
    const TAGS: [u8; 14] = [
        0x30, 0x31, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0c, 0x13, 0x17, 0x18, 0x01, 0xa0, 0xa3,
    ];
    for _ in 0..16 {
        if v.len() < 2 {
            return;
        }
        let p = rng.below(v.len() - 1);
        if !TAGS.contains(&v[p]) {
            continue;
        }
        let l = v[p + 1];
        match rng.below(6) {
            0 => v[p + 1] = l.wrapping_add(1),
            1 => v[p + 1] = l.wrapping_sub(1),
            2 if l < 0x80 => v.splice(p + 1..p + 2, [0x81, l]).for_each(drop),
            3 if l < 0x80 => v.splice(p + 1..p + 2, [0x82, 0, l]).for_each(drop),
            4 => v[p + 1] = 0x80,
            _ => v
                .splice(p + 1..p + 2, [0x84, 0xff, 0xff, 0xff, 0xf0])
                .for_each(drop),
        }
        return;
    }
}

// ---------------------------------------------------------------------------------------------
// DER: certificates as trees of TLVs, edited with every enclosing length fixed
// ---------------------------------------------------------------------------------------------

/// A DER TLV at the start of `b` (single-byte tags): (tag, header length, content length).
fn der_tlv(b: &[u8]) -> Option<(u8, usize, usize)> {
    let tag = *b.first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let first = *b.get(1)?;
    let (len, hl) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 {
            return None;
        }
        let len = b
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, 2 + n)
    };
    (hl + len <= b.len()).then_some((tag, hl, len))
}

fn der_encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n <= 0xff {
        out.extend_from_slice(&[0x81, n as u8]);
    } else if n <= 0xffff {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    } else {
        out.extend_from_slice(&[0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// The TLVs that exactly tile `content`, if they do (constructed types, and OCTET STRINGs
/// that hold DER, as extension values do).
fn der_children(content: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < content.len() {
        let (_, hl, len) = der_tlv(&content[at..])?;
        out.push(at..at + hl + len);
        at += hl + len;
    }
    Some(out)
}

fn der_nested(tag: u8, content: &[u8]) -> Option<Vec<Range<usize>>> {
    if tag & 0x20 != 0 || (tag == 0x04 && !content.is_empty()) {
        der_children(content)
    } else {
        None
    }
}

/// Every TLV's path (child indices from the root).
fn der_paths(b: &[u8], path: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    out.push(path.clone());
    let Some((tag, hl, len)) = der_tlv(b) else {
        return;
    };
    let content = &b[hl..hl + len];
    if let Some(kids) = der_nested(tag, content) {
        for (i, r) in kids.into_iter().enumerate() {
            path.push(i);
            der_paths(&content[r], path, out);
            path.pop();
        }
    }
}

/// The TLV at `path`.
fn der_at<'a>(b: &'a [u8], path: &[usize]) -> Option<&'a [u8]> {
    let (tag, hl, len) = der_tlv(b)?;
    let Some((&i, rest)) = path.split_first() else {
        return Some(&b[..hl + len]);
    };
    let content = &b[hl..hl + len];
    let kids = der_nested(tag, content)?;
    der_at(&content[kids.get(i)?.clone()], rest)
}

/// `b` with the TLV at `path` replaced by `edit(tlv)`, every enclosing length written again.
fn der_rewrite(b: &[u8], path: &[usize], edit: &mut dyn FnMut(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let Some((tag, hl, len)) = der_tlv(b) else {
        return edit(b);
    };
    let Some((&i, rest)) = path.split_first() else {
        return edit(&b[..hl + len]);
    };
    let content = &b[hl..hl + len];
    let Some(kids) = der_nested(tag, content) else {
        return edit(&b[..hl + len]);
    };
    let mut out = Vec::with_capacity(content.len() + 16);
    for (j, r) in kids.into_iter().enumerate() {
        if j == i {
            out.extend(der_rewrite(&content[r], rest, edit));
        } else {
            out.extend_from_slice(&content[r]);
        }
    }
    der_encode(tag, &out)
}

/// Whole TLVs worth substituting: algorithm, curve and attribute OIDs, booleans, times at and
/// past the edges, odd strings, key usages, a CA basicConstraints extension, huge lengths.
fn der_interesting() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [
        &b"\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"[..],
        b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07",
        b"\x06\x05\x2b\x81\x04\x00\x22",
        b"\x06\x05\x2b\x81\x04\x00\x23",
        b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02",
        b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x03",
        b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x04",
        b"\x06\x03\x2b\x65\x70",
        b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0b",
        b"\x06\x03\x55\x04\x06",
        b"\x06\x03\x55\x04\x08",
        b"\x06\x03\x55\x04\x03",
        b"\x06\x03\x55\x1d\x13",
        b"\x06\x03\x55\x1d\x0f",
        b"\x06\x03\x55\x1d\x25",
        b"\x06\x07\x28\x81\x8c\x5d\x05\x01\x02",
        b"\x06\x00",
        b"\x06\x01\x80",
        b"\x01\x01\xff",
        b"\x01\x01\x00",
        b"\x05\x00",
        b"\x17\x0d491231235959Z",
        b"\x17\x0d500101000000Z",
        b"\x17\x0d000229000000Z",
        b"\x17\x0d210101000000Z",
        b"\x17\x0d991301000000Z",
        b"\x18\x0f99991231235959Z",
        b"\x18\x0f19700101000000Z",
        b"\x18\x0f00000101000000Z",
        b"\x18\x0f20210101000000Z",
        b"\x18\x1320210101000000.123Z",
        b"\x13\x02US",
        b"\x0c\x02KR",
        b"\x0c\x00",
        b"\x0c\x02\xff\xfe",
        b"\x1e\x04\x00U\x00S",
        b"\x02\x01\x00",
        b"\x02\x01\xff",
        b"\x02\x09\x00\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\x03\x02\x07\x80",
        b"\x03\x02\x01\x06",
        b"\x03\x01\x00",
        b"\x03\x00",
        b"\x03\x02\x08\xff",
        b"\x30\x00",
        b"\x31\x00",
        b"\x30\x03\x01\x01\xff",
        b"\x30\x0f\x06\x03\x55\x1d\x13\x01\x01\xff\x04\x05\x30\x03\x01\x01\xff",
        b"\x30\x0e\x06\x03\x55\x1d\x0f\x01\x01\xff\x04\x04\x03\x02\x01\x06",
        b"\x30\x84\xff\xff\xff\xff",
        b"\x04\x82\xff\xff",
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    // An uncompressed point off the curve, and one of the wrong length.
    let mut point = vec![0x03, 0x42, 0x00, 0x04];
    point.extend([0x11; 64]);
    out.push(point);
    out.push(
        vec![0x03, 0x22, 0x00, 0x02]
            .into_iter()
            .chain([0x22; 31])
            .collect(),
    );
    out
}

/// A certificate with one TLV of its tree edited and every length fixed: its content mutated,
/// replaced by an interesting TLV or by another TLV of the certificate, removed, duplicated.
fn der_surgery(cert: &[u8], interesting: &[Vec<u8>], pool: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut paths = Vec::new();
    der_paths(cert, &mut Vec::new(), &mut paths);
    let path = rng.pick::<Vec<usize>>(&paths).clone();
    let other = der_at(cert, rng.pick::<Vec<usize>>(&paths))
        .unwrap_or_default()
        .to_vec();
    let choice = rng.below(7);
    let mut edit = |tlv: &[u8]| -> Vec<u8> {
        let Some((tag, hl, _)) = der_tlv(tlv) else {
            return mutate(tlv, pool, rng);
        };
        match choice {
            0 | 1 => der_encode(tag, &mutate(&tlv[hl..], pool, rng)),
            2 => rng.pick(interesting).clone(),
            3 => other.clone(),
            4 => Vec::new(),
            5 => [tlv, tlv].concat(),
            _ => {
                let n = rng.below(40);
                der_encode(tag, &rng.bytes(n))
            }
        }
    };
    der_rewrite(cert, &path, &mut edit)
}

/// The certificate with its tbsCertificate signed again by `key` (ECDSA P-256 SHA-256), the
/// signature algorithm left as it is.
fn resign(cert: &[u8], key: &SigningKey) -> Option<Vec<u8>> {
    let (tag, hl, len) = der_tlv(cert)?;
    let content = &cert[hl..hl + len];
    let kids = der_children(content)?;
    if kids.len() < 2 {
        return None;
    }
    let tbs = &content[kids[0].clone()];
    let signature: p256::ecdsa::Signature = key.sign(tbs);
    let mut bits = vec![0];
    bits.extend_from_slice(signature.to_der().as_bytes());
    let mut body = tbs.to_vec();
    body.extend_from_slice(&content[kids[1].clone()]);
    body.extend(der_encode(0x03, &bits));
    Some(der_encode(tag, &body))
}

/// `r ‖ s` as `r ‖ n − s`: the other valid form of an ECDSA signature.
fn negate_s(rs: &[u8]) -> Option<Vec<u8>> {
    let sig = p256::ecdsa::Signature::from_slice(rs).ok()?;
    let (r, s) = sig.split_scalars();
    let negated = -*s;
    let other = p256::ecdsa::Signature::from_scalars(r.to_bytes(), negated.to_bytes()).ok()?;
    Some(other.to_bytes().to_vec())
}

/// The certificate in another encoding that its issuer's signature still covers: the signature
/// as (r, n − s), or NULL parameters (or the OID again) after the outer signatureAlgorithm's
/// OID, which is outside tbsCertificate. Its bytes, hence its SHA-256, change; what was signed
/// does not.
fn malleate_certificate(cert: &[u8], rng: &mut Rng) -> Vec<u8> {
    match rng.below(3) {
        0 => der_rewrite(cert, &[2], &mut |tlv: &[u8]| {
            let negated = der_tlv(tlv)
                .and_then(|(_, hl, _)| tlv.get(hl + 1..))
                .and_then(|der| p256::ecdsa::Signature::from_der(der).ok())
                .and_then(|sig| {
                    let (r, s) = sig.split_scalars();
                    let negated = -*s;
                    p256::ecdsa::Signature::from_scalars(r.to_bytes(), negated.to_bytes()).ok()
                });
            match negated {
                Some(sig) => {
                    let mut bits = vec![0];
                    bits.extend_from_slice(sig.to_der().as_bytes());
                    der_encode(0x03, &bits)
                }
                None => tlv.to_vec(),
            }
        }),
        k => der_rewrite(cert, &[1], &mut |tlv: &[u8]| match der_tlv(tlv) {
            Some((tag, hl, len)) => {
                let oid = &tlv[hl..hl + len];
                let params: &[u8] = if k == 1 { &[0x05, 0x00] } else { oid };
                der_encode(tag, &[oid, params].concat())
            }
            None => tlv.to_vec(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Random CBOR items
// ---------------------------------------------------------------------------------------------

const NAMES: [&str; 30] = [
    "version",
    "status",
    "documents",
    "docType",
    "issuerSigned",
    "deviceSigned",
    "nameSpaces",
    "issuerAuth",
    "deviceAuth",
    "deviceSignature",
    "deviceMac",
    "digestID",
    "random",
    "elementIdentifier",
    "elementValue",
    "valueDigests",
    "digestAlgorithm",
    "deviceKeyInfo",
    "deviceKey",
    "validityInfo",
    "signed",
    "validFrom",
    "validUntil",
    "org.iso.18013.5.1",
    "org.iso.18013.5.1.mDL",
    "1.0",
    "SHA-256",
    "2021-01-01T00:00:00Z",
    "age_over_19",
    "family_name",
];

/// A head, usually minimal, now and then longer.
fn random_head(out: &mut Vec<u8>, major: u8, arg: u64, rng: &mut Rng) {
    out.extend(head_bytes(major, arg, rng.one_in(8)));
}

/// A random item close to mdoc data: integers, strings, mdoc names, containers (definite or
/// indefinite), tags 0, 1004, 17, 18 and 24 (around an embedded item), simple values, floats;
/// with a little noise.
fn random_item(out: &mut Vec<u8>, depth: usize, rng: &mut Rng) {
    let kinds = if depth >= 5 { 4 } else { 9 };
    match rng.below(kinds) {
        0 => {
            let v = [0, 1, 23, 24, 255, 256, 65_536, u64::MAX, rng.next()][rng.below(9)];
            random_head(out, rng.below(2) as u8, v, rng);
        }
        1 => {
            let n = rng.below(40);
            random_head(out, 2, n as u64, rng);
            out.extend(rng.bytes(n));
        }
        2 => {
            let s = if rng.one_in(4) {
                let n = rng.below(12);
                String::from_utf8_lossy(&rng.bytes(n)).into_owned()
            } else {
                (*rng.pick(&NAMES)).to_owned()
            };
            random_head(out, 3, s.len() as u64, rng);
            out.extend_from_slice(s.as_bytes());
        }
        3 => {
            let simple: [&[u8]; 10] = [
                &[0xf4],
                &[0xf5],
                &[0xf6],
                &[0xf7],
                &[0xf8, 0x20],
                &[0xf8, 0x10],
                &[0xf9, 0x7e, 0x00],
                &[0xf9, 0x3c, 0x00],
                &[0xfa, 0x7f, 0xc0, 0x00, 0x01],
                &[0xfb, 0xff, 0xf8, 0, 0, 0, 0, 0, 1],
            ];
            out.extend_from_slice(rng.pick::<&[u8]>(&simple));
        }
        4 | 5 => {
            let n = rng.below(5);
            let indefinite = rng.one_in(5);
            if indefinite {
                out.push(0x9f);
            } else {
                random_head(out, 4, n as u64, rng);
            }
            for _ in 0..n {
                random_item(out, depth + 1, rng);
            }
            if indefinite {
                out.push(0xff);
            }
        }
        6 | 7 => {
            let n = rng.below(5);
            let indefinite = rng.one_in(5);
            if indefinite {
                out.push(0xbf);
            } else {
                random_head(out, 5, n as u64, rng);
            }
            for _ in 0..n {
                if rng.one_in(3) {
                    let k = [1u64, 2, 3, 4, 33][rng.below(5)];
                    random_head(out, 0, k, rng);
                } else {
                    let s = rng.pick(&NAMES);
                    random_head(out, 3, s.len() as u64, rng);
                    out.extend_from_slice(s.as_bytes());
                }
                random_item(out, depth + 1, rng);
            }
            if indefinite {
                out.push(0xff);
            }
        }
        _ => {
            let t = [0u64, 1004, 17, 18, 24, 24, rng.next()][rng.below(7)];
            random_head(out, 6, t, rng);
            if t == 24 {
                let mut inner = Vec::new();
                random_item(&mut inner, depth + 1, rng);
                random_head(out, 2, inner.len() as u64, rng);
                out.extend(inner);
            } else {
                random_item(out, depth + 1, rng);
            }
        }
    }
    if rng.one_in(200) {
        out.push(rng.byte());
    }
}

// ---------------------------------------------------------------------------------------------
// Rounds
// ---------------------------------------------------------------------------------------------

/// An inner layer of an original, mutated and wrapped again: the layer alone (as its decoder
/// reads it) and, with `whole`, the document around it.
fn layer_round(
    f: &Fixture,
    interesting: &[Vec<u8>],
    rng: &mut Rng,
    st: &mut Stats,
    panics: &mut Panics,
    whole: bool,
) {
    let oi = rng.below(f.originals.len());
    let o = &f.originals[oi];
    let layer = rng.pick(&o.layers);
    let content = if layer.der {
        match rng.below(8) {
            0..=2 => mutate(&layer.content, &f.pool, rng),
            3 => malleate_certificate(&layer.content, rng),
            _ => der_surgery(&layer.content, interesting, &f.pool, rng),
        }
    } else if layer.content.len() == 64 && rng.one_in(8) {
        // A raw ECDSA signature r ‖ s, as r ‖ n − s: as valid as the original.
        negate_s(&layer.content).unwrap_or_default()
    } else {
        mutate(&layer.content, &f.pool, rng)
    };
    let wrapped = wrap(layer.wrap, &content);
    // The layer alone: the MSO as the issuerAuth payload holds it, a byte string's content
    // (header, certificate, signature) as it is, an embedded item with its tag.
    let alone = match layer.wrap {
        Wrap::BstrTag24 => tag24(&content),
        Wrap::Bstr => content.clone(),
        Wrap::Tag24 => wrapped.clone(),
    };
    let origin = format!("{} {}", o.name, layer.what);
    run(&alone, &origin, panics, || battery(&alone, o, f, rng, st));
    if whole {
        let mut doc = o.bytes.clone();
        doc.splice(layer.range.clone(), wrapped);
        run(&doc, &origin, panics, || battery(&doc, o, f, rng, st));
    }
}

/// A certificate mutated (bytes, DER tree), through every decoder, and signed again by the
/// test IACA: through `document_signer` with the test IACAs, and as a trust anchor itself.
fn certificate_round(
    f: &Fixture,
    interesting: &[Vec<u8>],
    rng: &mut Rng,
    st: &mut Stats,
    panics: &mut Panics,
) {
    let (cert, now) = rng.pick(&f.certs);
    let o = f
        .originals
        .iter()
        .find(|o| o.now == *now)
        .unwrap_or(&f.originals[0]);
    let mutated = match rng.below(16) {
        0..=4 => mutate(cert, &f.pool, rng),
        5 => malleate_certificate(cert, rng),
        _ => der_surgery(cert, interesting, &f.pool, rng),
    };
    run(&mutated, "certificate", panics, || {
        battery(&mutated, o, f, rng, st)
    });
    if rng.one_in(3) {
        let Some(again) = resign(&mutated, &f.test_iaca) else {
            return;
        };
        run(&again, "certificate signed again", panics, || {
            let now = if rng.one_in(4) {
                *rng.pick(&f.times)
            } else {
                *now
            };
            let r = f.resigning.document_signer(&again, now);
            if let Ok(s) = &r {
                check_signer(s, &again, now);
                st.resigned_ok += 1;
            }
            st.record("TrustAnchors::document_signer (re-signed)", &r);
            // A mutated IACA that still loads, as the only anchor of a list.
            if let Ok(iaca) = Iaca::from_der(&mutated) {
                let anchors = TrustAnchors::new(vec![iaca]);
                for (ds, _) in &f.resigned_ds {
                    let r = anchors.document_signer(ds, now);
                    if let Ok(s) = &r {
                        check_signer(s, ds, now);
                    }
                    st.record("TrustAnchors::document_signer (re-signed)", &r);
                }
            }
        });
    }
}

/// A transcript mutated: through every decoder, and as the transcript a document's device
/// authentication is checked over.
fn transcript_round(f: &Fixture, rng: &mut Rng, st: &mut Stats, panics: &mut Panics) {
    let (t, oi) = rng.pick(&f.transcripts);
    let o = &f.originals[*oi];
    let mutated = mutate(t, &f.pool, rng);
    run(&mutated, "transcript", panics, || {
        battery(&mutated, o, f, rng, st);
        let r = decode_device_response(&o.bytes);
        st.record("decode_device_response", &r);
        let doc = r.unwrap().document;
        let d = verify_device(&doc, &o.facts, &mutated, Some(&o.reader_key), o.allow_mac);
        st.record("verify_device", &d);
        if d.is_ok() {
            assert!(
                f.device.contains(&device_binding(&doc, &o.facts, &mutated)),
                "FORGERY: verify_device accepts another transcript: {}",
                hex::encode(&mutated)
            );
        }
    });
}

/// A VerifyMdoc request around an original or mutated document and transcript, perhaps
/// mutated itself: `Request::decode`, then its transcript and document through every decoder.
fn request_round(f: &Fixture, rng: &mut Rng, st: &mut Stats, panics: &mut Panics) {
    let o = rng.pick(&f.originals);
    let device_response = if rng.one_in(2) {
        o.bytes.clone()
    } else {
        mutate(&o.bytes, &f.pool, rng)
    };
    let transcript = if rng.one_in(2) {
        o.transcript.clone()
    } else {
        mutate(&o.transcript, &f.pool, rng)
    };
    let request = Request::VerifyMdoc(MdocRequest {
        id: rng.next() >> rng.below(64),
        device_response,
        transcript,
        retry: rng.one_in(2).then_some([0x5a; 16]),
        session_start: o.now as u64,
        reader_key: rng.one_in(2).then_some(o.reader_key),
    });
    let frame = request.encode();
    let mut body = frame[FRAME_HEADER_LEN..].to_vec();
    if rng.one_in(3) {
        body = mutate(&body, &f.pool, rng);
    }
    run(&body, "VerifyMdoc request", panics, || {
        let r = Request::decode(kind::VERIFY_MDOC, &body);
        st.record("Request::decode (VerifyMdoc)", &r);
        if let Ok(Request::VerifyMdoc(m)) = &r {
            let t = session_transcript_bytes(&m.transcript);
            st.record("session_transcript_bytes", &t);
            battery(&m.transcript, o, f, rng, st);
            battery(&m.device_response, o, f, rng, st);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn mdoc_decoders_survive_random_and_mutated_inputs() {
    let started = Instant::now();
    let f = fixture();
    let interesting = der_interesting();
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seed = env("MDOC_ROBUSTNESS_SEED").unwrap_or(0x6d64_6f63_6761_7465); // "mdocgate"
    let scale = env("MDOC_ROBUSTNESS_SCALE").unwrap_or(1).max(1) as usize;
    let mut rng = Rng(seed);
    let mut st = Stats::default();
    let mut panics = Panics::default();

    // Random byte strings, mostly short: uniform bytes, or drawn from interesting CBOR heads.
    for _ in 0..RANDOM_INPUTS * scale {
        let len = if rng.one_in(8) {
            rng.below(600)
        } else {
            rng.below(48)
        };
        let input: Vec<u8> = if rng.one_in(2) {
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
        let o = rng.pick(&f.originals);
        run(&input, "random", &mut panics, || {
            battery(&input, o, &f, &mut rng, &mut st)
        });
    }
    // Random CBOR items.
    for _ in 0..RANDOM_ITEMS * scale {
        let mut input = Vec::new();
        random_item(&mut input, 0, &mut rng);
        let o = rng.pick(&f.originals);
        run(&input, "random item", &mut panics, || {
            battery(&input, o, &f, &mut rng, &mut st)
        });
    }
    let random_done = started.elapsed();

    let mut by_kind: BTreeMap<&str, std::time::Duration> = BTreeMap::new();
    for _ in 0..MUTATION_ROUNDS * scale {
        let round = Instant::now();
        let k = rng.below(20);
        match k {
            // A whole document, mutated.
            0..=3 => {
                let o = rng.pick(&f.originals);
                let input = mutate(&o.bytes, &f.pool, &mut rng);
                run(&input, o.name, &mut panics, || {
                    battery(&input, o, &f, &mut rng, &mut st)
                });
            }
            // An inner layer, mutated and wrapped again (alone, and in its document).
            4..=8 => {
                let whole = !DEBUG || rng.one_in(2);
                layer_round(&f, &interesting, &mut rng, &mut st, &mut panics, whole);
            }
            9..=10 => layer_round(&f, &interesting, &mut rng, &mut st, &mut panics, false),
            // A certificate.
            11..=14 => certificate_round(&f, &interesting, &mut rng, &mut st, &mut panics),
            // A transcript.
            15..=17 => transcript_round(&f, &mut rng, &mut st, &mut panics),
            // A VerifyMdoc request.
            _ => request_round(&f, &mut rng, &mut st, &mut panics),
        }
        let name = match k {
            0..=3 => "document",
            4..=10 => "layer",
            11..=14 => "certificate",
            15..=17 => "transcript",
            _ => "request",
        };
        *by_kind.entry(name).or_default() += round.elapsed();
        if panics.0.len() >= MAX_PANICS {
            break;
        }
    }
    let elapsed = started.elapsed();

    st.report();
    println!("mutation rounds by kind: {by_kind:?}");
    println!(
        "seed {seed:#x}, scale {scale}; random: {random_done:?}; total: {elapsed:?} ({} build)",
        if DEBUG { "debug" } else { "release" }
    );
    assert!(
        panics.0.is_empty(),
        "{} inputs panicked:\n{}",
        panics.0.len(),
        panics.0.join("\n")
    );
    assert!(
        st.decoder_inputs() >= MIN_DECODER_INPUTS,
        "only {} decoder inputs",
        st.decoder_inputs()
    );
    // Not vacuous: mutations decode at every layer, some pass every check, and they fail in
    // many ways.
    for decoder in DECODERS
        .iter()
        .chain(&["verify_issuer", "check_document", "verify_device"])
    {
        assert!(
            st.ok.get(decoder).copied().unwrap_or(0) > 0,
            "nothing passed {decoder}: {:?}",
            st.ok
        );
    }
    assert!(st.accepted > 100, "only {} accepted", st.accepted);
    let variants = st.variants();
    let count = |d: &str| variants.get(d).map_or(0, BTreeSet::len);
    assert!(count("cbor::decode") >= 8, "{variants:?}");
    assert!(count("decode_device_response") >= 10, "{variants:?}");
    assert!(count("Iaca::from_der") >= 3, "{variants:?}");
    assert!(count("verify_issuer") >= 5, "{variants:?}");
}

/// Every file under `fuzz/regressions/`, through every decoder (and as a VerifyMdoc body).
#[test]
fn fuzz_regressions_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    if !dir.is_dir() {
        println!("no {}", dir.display());
        return;
    }
    let mut files = Vec::new();
    walk_dir(&dir, &mut files);
    files.sort();
    let f = fixture();
    let mut rng = Rng(1);
    let mut st = Stats::default();
    let mut panics = Panics::default();
    for file in &files {
        let input = std::fs::read(file).unwrap();
        let origin = file.display().to_string();
        println!("replaying {origin}");
        for o in &f.originals {
            run(&input, &origin, &mut panics, || {
                battery(&input, o, &f, &mut rng, &mut st);
                if let Ok(Request::VerifyMdoc(m)) = Request::decode(kind::VERIFY_MDOC, &input) {
                    let _ = session_transcript_bytes(&m.transcript);
                    battery(&m.device_response, o, &f, &mut rng, &mut st);
                }
            });
        }
    }
    println!("replayed {} files", files.len());
    assert!(panics.0.is_empty(), "{}", panics.0.join("\n"));
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) {
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
            walk_dir(&path, out);
        } else {
            out.push(path);
        }
    }
}
