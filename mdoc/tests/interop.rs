//! Documents made by an independent implementation, the OpenWallet Foundation's `@owf/mdoc`
//! (npm, `mdoc/interop/generate.mjs`, version in `tests/data/interop/manifest.json`), are
//! accepted, and tampered ones are refused with the right reason. Its IACA and DS certificates
//! come from `@peculiar/x509`. Test keys only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use gatehouse_mdoc::{
    check_document, decode_device_response, verify_device, verify_issuer, DeviceAuth, Iaca,
    MdocError, TrustAnchors, MDL_NAMESPACE,
};
use gatehouse_protocol::Reason;

fn file(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/interop/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// 2027-06-01T00:00:00Z, inside every validity of the fixtures (manifest.json).
const NOW: i64 = 1_811_808_000;

fn anchors() -> TrustAnchors {
    TrustAnchors::new(vec![Iaca::from_der(&file("iaca.der")).unwrap()])
}

fn reader_key() -> [u8; 32] {
    hex::decode(
        String::from_utf8(file("reader_ephemeral_private.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap()
    .try_into()
    .unwrap()
}

fn check(response: &str, transcript: &str, allow_mac: bool) -> Result<(), MdocError> {
    let bytes = file(response);
    let doc = decode_device_response(&bytes).unwrap().document;
    let facts = verify_issuer(&doc, &anchors(), NOW)?;
    check_document(&doc, &facts, NOW)?;
    verify_device(
        &doc,
        &facts,
        &file(transcript),
        Some(&reader_key()),
        allow_mac,
    )
}

#[test]
fn owf_mdoc_documents_are_accepted() {
    // A deviceSignature whose s is high (stock wallets' signatures are, half the time).
    check("device_response_sig.cbor", "transcript_sig.cbor", false).unwrap();
    // The OpenID4VP session transcript form.
    check(
        "device_response_sig_oid4vp.cbor",
        "transcript_sig_oid4vp.cbor",
        false,
    )
    .unwrap();
    // A deviceMac, where the role accepts one.
    check("device_response_mac.cbor", "transcript_mac.cbor", true).unwrap();
    assert_eq!(
        check("device_response_mac.cbor", "transcript_mac.cbor", false).unwrap_err(),
        MdocError::MacNotAllowed
    );

    let bytes = file("device_response_sig.cbor");
    let doc = decode_device_response(&bytes).unwrap().document;
    assert!(matches!(doc.device_auth, DeviceAuth::Signature(_)));
    assert_eq!(
        doc.element(MDL_NAMESPACE, "age_over_19")
            .unwrap()
            .value
            .value,
        gatehouse_mdoc::cbor::Value::Bool(true)
    );
    let facts = verify_issuer(&doc, &anchors(), NOW).unwrap();
    assert_eq!(facts.signer.authority, "US");
    // digestIDs are random 32-bit numbers in this implementation.
    assert!(facts
        .mso
        .value_digests
        .iter()
        .any(|(_, id, _)| *id > 1 << 20));
}

/// A DS certificate re-encoded outside its signature (NULL parameters in the unsigned outer
/// signatureAlgorithm) is refused, and a revoked signer's key is named by its
/// subjectPublicKeyInfo, which no re-encoding changes. With the whole certificate's digest as
/// the name, this re-encoding was accepted under another name and escaped revocation.
#[test]
fn a_re_encoded_document_signer_neither_passes_nor_escapes_revocation() {
    let ds = file("ds.der");
    let from = hex::decode("300a06082a8648ce3d040302").unwrap();
    let to = hex::decode("300c06082a8648ce3d0403020500").unwrap();
    let at = ds
        .windows(from.len())
        .rposition(|w| w == from.as_slice())
        .unwrap();
    let mut nulls = ds[..at].to_vec();
    nulls.extend_from_slice(&to);
    nulls.extend_from_slice(&ds[at + from.len()..]);
    // The outer SEQUENCE grows by two bytes (a long-form length, 0x82 LL LL).
    let len = u16::from_be_bytes([nulls[2], nulls[3]]) + 2;
    nulls[2..4].copy_from_slice(&len.to_be_bytes());
    let e = anchors().document_signer(&nulls, NOW).unwrap_err();
    assert!(e.to_string().contains("signatureAlgorithm"), "{e}");
    let genuine = anchors().document_signer(&ds, NOW).unwrap();
    assert_eq!(
        Ok(genuine.fingerprint),
        gatehouse_mdoc::signer_fingerprint(&nulls)
    );
}

#[test]
fn owf_mdoc_mac_without_the_empty_external_aad_is_refused() {
    // The library's default MAC leaves external_aad out of MAC_structure (RFC 9052 §6.3 has
    // it): the issuer's part is sound, the MAC is not.
    assert_eq!(
        check(
            "device_response_mac_owf_nonconformant.cbor",
            "transcript_mac.cbor",
            true
        )
        .unwrap_err(),
        MdocError::BadDeviceAuth
    );
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

#[test]
fn tampered_owf_mdoc_documents_are_refused_with_the_right_reason() {
    let bytes = file("device_response_sig.cbor");
    let transcript = file("transcript_sig.cbor");
    let reason = |b: &[u8], t: &[u8], now: i64| -> Reason {
        let doc = match decode_device_response(b) {
            Ok(r) => r.document,
            Err(_) => return Reason::Malformed,
        };
        let facts = match verify_issuer(&doc, &anchors(), now) {
            Ok(f) => f,
            Err(e) => return e.reason(),
        };
        check_document(&doc, &facts, now)
            .and_then(|()| verify_device(&doc, &facts, t, None, false))
            .map_or_else(|e| e.reason(), |()| Reason::Accepted)
    };
    assert_eq!(reason(&bytes, &transcript, NOW), Reason::Accepted);
    // age_over_19: true → false (0xf5 → 0xf4) in the disclosed item.
    let flipped = replace(
        &bytes,
        b"age_over_19\x6celementValue\xf5",
        b"age_over_19\x6celementValue\xf4",
    );
    assert_eq!(
        reason(&flipped, &transcript, NOW),
        Reason::IssuerDataMismatch
    );
    // Another session: the device signature covers the transcript.
    assert_eq!(
        reason(&bytes, &file("transcript_mac.cbor"), NOW),
        Reason::BadDeviceSignature
    );
    // After the MSO's validUntil (2029-12-31), before the DS's end (2030-01-01).
    assert_eq!(reason(&bytes, &transcript, 1_893_369_600), Reason::Expired);
    // Before the DS certificate (2025-12-01).
    assert_eq!(
        reason(&bytes, &transcript, 1_764_000_000),
        Reason::IssuerKeyNotValid
    );
    // The IACA of Annex D does not vouch for this issuer.
    let other = TrustAnchors::new(vec![]);
    let doc = decode_device_response(&bytes).unwrap().document;
    assert_eq!(
        verify_issuer(&doc, &other, NOW).unwrap_err().reason(),
        Reason::UnknownIssuer
    );
    // Truncated: malformed.
    assert_eq!(
        reason(&bytes[..bytes.len() - 1], &transcript, NOW),
        Reason::Malformed
    );
}
