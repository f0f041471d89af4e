//! ISO/IEC 18013-5 Annex D: the example DeviceResponse, SessionTranscript and document signer
//! certificate verify byte for byte as published (public copies from open-source mdoc
//! libraries' test suites, `tests/data/annex_d/notes.md` says which). The example's
//! certificates expired in 2021: the checks take `now` inside their validity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use gatehouse_mdoc::{
    check_document, decode_device_response, emac_key, verify_device, verify_issuer, DeviceAuth,
    Iaca, MdocError, TrustAnchors, MDL_DOCTYPE, MDL_NAMESPACE,
};
use gatehouse_protocol::Reason;

fn data(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/data/annex_d/{name}.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    hex::decode(std::fs::read_to_string(&path).unwrap().trim()).unwrap()
}

/// 2021-01-01T00:00:00Z: inside the DS certificate's and the MSO's validity.
const NOW: i64 = 1_609_459_200;

fn pinned() -> TrustAnchors {
    TrustAnchors::new(vec![
        Iaca::pinned_document_signer(&data("ds_certificate")).unwrap()
    ])
}

fn reader_key() -> [u8; 32] {
    data("reader_ephemeral_private").try_into().unwrap()
}

#[test]
fn the_annex_d_response_verifies_with_its_document_signer_as_the_anchor() {
    let bytes = data("device_response");
    let transcript = data("session_transcript");
    let response = decode_device_response(&bytes).unwrap();
    let doc = &response.document;
    assert_eq!(doc.doc_type, MDL_DOCTYPE);
    assert!(matches!(doc.device_auth, DeviceAuth::Mac(_)));
    let family = doc.element(MDL_NAMESPACE, "family_name").unwrap();
    assert_eq!(family.value.text(), Some("Doe"));
    assert_eq!(
        doc.element(MDL_NAMESPACE, "document_number")
            .unwrap()
            .value
            .text(),
        Some("123456789")
    );

    let facts = verify_issuer(doc, &pinned(), NOW).unwrap();
    assert_eq!(facts.mso.valid_from, 1_601_559_002); // 2020-10-01T13:30:02Z
    assert_eq!(facts.mso.valid_until, 1_633_095_002); // 2021-10-01T13:30:02Z
    check_document(doc, &facts, NOW).unwrap();
    verify_device(doc, &facts, &transcript, Some(&reader_key()), true).unwrap();

    // EMacKey as computed independently from the published keys (notes.md).
    let key = emac_key(&reader_key(), &facts.mso.device_key, &transcript).unwrap();
    assert_eq!(
        hex::encode(key),
        "dc2b9566fdaaae3c06baa40993cd0451aeba15e7677ef5305f6531f3533c35dd"
    );
}

#[test]
fn the_annex_d_document_signer_chains_to_the_utopia_iaca() {
    let iaca = Iaca::from_der(&data("iaca_certificate")).unwrap();
    assert_eq!(iaca.authority, "US");
    let anchors = TrustAnchors::new(vec![iaca]);
    let bytes = data("device_response");
    let doc = decode_device_response(&bytes).unwrap().document;
    let facts = verify_issuer(&doc, &anchors, NOW).unwrap();
    assert_eq!(facts.signer.authority, "US");
    // The DS certificate's own end (2021-10-01T00:00:00Z) bounds the chain.
    assert_eq!(facts.signer.not_after, 1_633_046_400);
    // The DS certificate is not an IACA: as a root it is refused.
    assert!(Iaca::from_der(&data("ds_certificate")).is_err());
    // Another IACA's list does not vouch for it.
    let other = TrustAnchors::new(vec![]);
    assert_eq!(
        verify_issuer(&doc, &other, NOW).unwrap_err(),
        MdocError::UnknownIssuer
    );
}

#[test]
fn annex_d_outside_its_validity_and_without_mac_permission_is_denied_with_its_reason() {
    let bytes = data("device_response");
    let transcript = data("session_transcript");
    let doc = decode_device_response(&bytes).unwrap().document;
    // After the DS certificate expired.
    let late = 1_633_046_400;
    let e = verify_issuer(&doc, &pinned(), late).unwrap_err();
    assert_eq!(e.reason(), Reason::IssuerKeyNotValid, "{e}");
    // Facts proved in time, then used after the end of the chain's validity (a cache hit).
    let facts = verify_issuer(&doc, &pinned(), NOW).unwrap();
    assert_eq!(
        check_document(&doc, &facts, late).unwrap_err().reason(),
        Reason::IssuerKeyNotValid
    );
    // Before validFrom (the DS is valid from midnight, the MSO from 13:30:02).
    let early = 1_601_559_001;
    assert_eq!(
        check_document(&doc, &facts, early).unwrap_err(),
        MdocError::NotYetValid
    );
    // A MAC at a scanner that does not accept one; a MAC without the reader's key.
    assert_eq!(
        verify_device(&doc, &facts, &transcript, Some(&reader_key()), false).unwrap_err(),
        MdocError::MacNotAllowed
    );
    assert_eq!(
        verify_device(&doc, &facts, &transcript, None, true)
            .unwrap_err()
            .reason(),
        Reason::Malformed
    );
    // Another session's transcript, or another reader key: the MAC does not verify.
    let mut other = transcript.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    assert_eq!(
        verify_device(&doc, &facts, &other, Some(&reader_key()), true).unwrap_err(),
        MdocError::BadDeviceAuth
    );
    let mut key = reader_key();
    key[31] ^= 1;
    assert_eq!(
        verify_device(&doc, &facts, &transcript, Some(&key), true).unwrap_err(),
        MdocError::BadDeviceAuth
    );
}

/// Replaces the first occurrence of `from` in `bytes` by `to` (same length).
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

#[test]
fn tampered_annex_d_data_is_refused_with_the_right_reason() {
    let bytes = data("device_response");
    // A disclosed element changed: "Doe" → "Dot".
    let tampered = replace(&bytes, b"\x63Doe", b"\x63Dot");
    let doc = decode_device_response(&tampered).unwrap().document;
    let facts = verify_issuer(&doc, &pinned(), NOW).unwrap();
    let e = check_document(&doc, &facts, NOW).unwrap_err();
    assert_eq!(e.reason(), Reason::IssuerDataMismatch, "{e}");

    // The document's docType changed (the MSO's is signed and unchanged).
    let tampered = replace(
        &bytes,
        b"\x75org.iso.18013.5.1.mDL",
        b"\x75org.iso.18013.5.1.mDX",
    );
    let doc = decode_device_response(&tampered).unwrap().document;
    let facts = verify_issuer(&doc, &pinned(), NOW).unwrap();
    assert_eq!(
        check_document(&doc, &facts, NOW).unwrap_err().reason(),
        Reason::IssuerDataMismatch
    );

    // The MSO changed inside the issuer's signature ("SHA-256" → "SHA-257" is refused as a
    // field; flip a validity digit instead).
    let tampered = replace(&bytes, b"2021-10-01T13:30:02Z", b"2031-10-01T13:30:02Z");
    let doc = decode_device_response(&tampered).unwrap().document;
    assert_eq!(
        verify_issuer(&doc, &pinned(), NOW).unwrap_err(),
        MdocError::BadIssuerSignature
    );

    // A MAC whose algorithm is not HMAC 256/256 (alg 6): without the reader's key the request
    // is incomplete (malformed, SPEC §12.2 step 8 checks that first); with it, unsupported.
    let tampered = replace(&bytes, &[0x43, 0xa1, 0x01, 0x05], &[0x43, 0xa1, 0x01, 0x06]);
    let doc = decode_device_response(&tampered).unwrap().document;
    let facts = verify_issuer(&doc, &pinned(), NOW).unwrap();
    let transcript = data("session_transcript");
    let no_key = verify_device(&doc, &facts, &transcript, None, true).unwrap_err();
    assert_eq!(no_key.reason(), Reason::Malformed, "{no_key}");
    let with_key = verify_device(&doc, &facts, &transcript, Some(&reader_key()), true);
    assert_eq!(with_key.unwrap_err().reason(), Reason::UnsupportedAlgorithm);

    // Signed with EdDSA (-8; the protected header says so): refused before any signature check.
    let tampered = replace(&bytes, &[0x43, 0xa1, 0x01, 0x26], &[0x43, 0xa1, 0x01, 0x27]);
    let doc = decode_device_response(&tampered).unwrap();
    let e = verify_issuer(&doc.document, &pinned(), NOW).unwrap_err();
    assert_eq!(e.reason(), Reason::UnsupportedAlgorithm, "{e}");
}
