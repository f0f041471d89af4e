//! SPEC §12.1's VerifyMdoc vector: the annotated frame in SPEC.md is the Annex D example's
//! request as `gatehouse-protocol` encodes it, it decodes back, and what it carries is
//! authentic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use gatehouse_mdoc::{
    check_document, decode_device_response, verify_device, verify_issuer, Iaca, TrustAnchors,
};
use gatehouse_protocol::{kind, split_frame, MdocRequest, Request};

fn data(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/data/annex_d/{name}.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    hex::decode(std::fs::read_to_string(&path).unwrap().trim()).unwrap()
}

fn request() -> MdocRequest {
    MdocRequest {
        id: 1,
        device_response: data("device_response"),
        transcript: data("session_transcript"),
        retry: None,
        session_start: 1_609_459_200,
        reader_key: Some(data("reader_ephemeral_private").try_into().unwrap()),
    }
}

/// The annotated block after "Vector (the Annex D example" in SPEC §12.1: each line's hex, up
/// to `..` or the annotation.
fn annotated_lines() -> Vec<Vec<u8>> {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/SPEC.md"))
        .unwrap();
    let at = spec.find("Vector (the Annex D example").unwrap();
    let block = &spec[at..];
    let start = block.find("```text\n").unwrap() + 8;
    let end = start + block[start..].find("```").unwrap();
    block[start..end]
        .lines()
        .map(|line| {
            let hex_part = line.split("  ").next().unwrap();
            let hex_part = hex_part.split("..").next().unwrap();
            hex::decode(hex_part.split_whitespace().collect::<String>()).unwrap()
        })
        .collect()
}

#[test]
fn the_spec_vector_is_the_annex_d_request() {
    let frame = Request::VerifyMdoc(request()).encode();
    // Every annotated line is in the frame, in order, the first at the start.
    let mut pos = 0;
    for (i, line) in annotated_lines().iter().enumerate() {
        let found = frame[pos..]
            .windows(line.len())
            .position(|w| w == line.as_slice())
            .unwrap_or_else(|| {
                panic!(
                    "SPEC §12.1 line {i} ({}) is not in the frame",
                    hex::encode(line)
                )
            });
        if i == 0 {
            assert_eq!(found, 0);
        }
        pos += found + line.len();
    }
    let (k, body) = split_frame(&frame).unwrap();
    assert_eq!(k, kind::VERIFY_MDOC);
    assert_eq!(
        Request::decode(k, body).unwrap(),
        Request::VerifyMdoc(request())
    );

    let req = request();
    let doc = decode_device_response(&req.device_response)
        .unwrap()
        .document;
    let anchors = TrustAnchors::new(vec![
        Iaca::pinned_document_signer(&data("ds_certificate")).unwrap()
    ]);
    let now = 1_609_459_200;
    let facts = verify_issuer(&doc, &anchors, now).unwrap();
    check_document(&doc, &facts, now).unwrap();
    verify_device(&doc, &facts, &req.transcript, req.reader_key.as_ref(), true).unwrap();
}

#[test]
fn verify_mdoc_bodies_out_of_bounds_are_unreadable() {
    let body = |req: &MdocRequest| {
        let f = Request::VerifyMdoc(req.clone()).encode();
        f[6..].to_vec()
    };
    let ok = request();
    assert!(Request::decode(kind::VERIFY_MDOC, &body(&ok)).is_ok());
    let too_long = MdocRequest {
        device_response: vec![0; gatehouse_protocol::MAX_MDOC_RESPONSE + 1],
        ..request()
    };
    assert!(Request::decode(kind::VERIFY_MDOC, &body(&too_long)).is_err());
    let empty = MdocRequest {
        transcript: vec![],
        ..request()
    };
    assert!(Request::decode(kind::VERIFY_MDOC, &body(&empty)).is_err());
    // The session start is required: a body without key 5 (id, response, transcript only).
    let mut b = vec![0xa3, 0x01, 0x01, 0x02, 0x41, 0x00, 0x03, 0x41, 0x00];
    assert!(Request::decode(kind::VERIFY_MDOC, &b).is_err());
    b[0] = 0xa4;
    b.extend_from_slice(&[0x05, 0x00]);
    assert!(Request::decode(kind::VERIFY_MDOC, &b).is_ok());
    // Keys out of order are refused: the frame is deterministic CBOR.
    let swapped = [
        0xa4, 0x01, 0x01, 0x03, 0x41, 0x00, 0x02, 0x41, 0x00, 0x05, 0x00,
    ];
    assert!(Request::decode(kind::VERIFY_MDOC, &swapped).is_err());
    assert_eq!(gatehouse_protocol::request_id(&body(&ok)), Some(1));
}
