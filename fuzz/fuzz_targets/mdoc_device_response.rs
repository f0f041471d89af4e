//! `decode_device_response` on arbitrary bytes and, when it decodes, `decode_mso` on the
//! issuerAuth payload and the checks of ISO §9.3 (`verify_issuer`, then `check_document` and
//! `verify_device`, with and without the reader key and MAC permission) against a fixed trust
//! list, the Annex D document signer pinned, at a fixed time inside its validity, with the
//! Annex D session transcript and reader key. Never a panic. (Seed the corpus with the Annex D
//! and interop documents to get past the issuer's signature: fuzz/README.md.)
#![no_main]

use std::sync::OnceLock;

use gatehouse_mdoc::{
    check_document, decode_device_response, decode_mso, verify_device, verify_issuer, Iaca,
    TrustAnchors,
};

/// 2021-01-01T00:00:00Z: inside the Annex D example's validities.
const NOW: i64 = 1_609_459_200;

struct Fixed {
    anchors: TrustAnchors,
    transcript: Vec<u8>,
    reader_key: [u8; 32],
}

fn hex(text: &str) -> Vec<u8> {
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let ds = hex(include_str!(
            "../../mdoc/tests/data/annex_d/ds_certificate.hex"
        ));
        Fixed {
            anchors: TrustAnchors::new(vec![
                Iaca::pinned_document_signer(&ds).expect("the Annex D DS certificate")
            ]),
            transcript: hex(include_str!(
                "../../mdoc/tests/data/annex_d/session_transcript.hex"
            )),
            reader_key: hex(include_str!(
                "../../mdoc/tests/data/annex_d/reader_ephemeral_private.hex"
            ))
            .try_into()
            .expect("a 32-byte key"),
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(response) = decode_device_response(data) else {
        return;
    };
    let doc = &response.document;
    if let Some(payload) = doc.issuer_auth.payload {
        let _ = decode_mso(payload);
    }
    let f = fixed();
    let Ok(facts) = verify_issuer(doc, &f.anchors, NOW) else {
        return;
    };
    let _ = check_document(doc, &facts, NOW);
    let _ = verify_device(doc, &facts, &f.transcript, Some(&f.reader_key), true);
    let _ = verify_device(doc, &facts, &f.transcript, None, false);
});
