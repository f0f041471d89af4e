//! `Iaca::from_der`, `Iaca::pinned_document_signer` and `TrustAnchors::document_signer` on
//! arbitrary bytes, the trust list holding the Annex D and interop IACAs and the Annex D
//! document signer pinned, at a time inside each fixture's validity. Never a panic.
#![no_main]

use std::sync::OnceLock;

use gatehouse_mdoc::{Iaca, TrustAnchors};

/// 2021-01-01T00:00:00Z and 2027-06-01T00:00:00Z: inside the Annex D and interop validities.
const TIMES: [i64; 2] = [1_609_459_200, 1_811_808_000];

fn hex(text: &str) -> Vec<u8> {
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn anchors() -> &'static TrustAnchors {
    static ANCHORS: OnceLock<TrustAnchors> = OnceLock::new();
    ANCHORS.get_or_init(|| {
        let ds = hex(include_str!(
            "../../mdoc/tests/data/annex_d/ds_certificate.hex"
        ));
        let iaca = hex(include_str!(
            "../../mdoc/tests/data/annex_d/iaca_certificate.hex"
        ));
        TrustAnchors::new(vec![
            Iaca::pinned_document_signer(&ds).expect("the Annex D DS certificate"),
            Iaca::from_der(&iaca).expect("the Annex D IACA"),
            Iaca::from_der(include_bytes!("../../mdoc/tests/data/interop/iaca.der"))
                .expect("the interop IACA"),
        ])
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = (Iaca::from_der(data), Iaca::pinned_document_signer(data));
    for now in TIMES {
        let _ = anchors().document_signer(data, now);
    }
});
