//! Forward compatibility and per-token limits on the wire (SPEC §8.3, §9).

use gatehouse_protocol::{kind, split_frame, Reason, Request, Response, MAX_TOKEN_LEN};

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
        .collect()
}

/// The §9 vector: a Verdicts response whose one verdict carries reason 99, a code this version
/// does not define. It reads as a deny, not retryable, and the frame stays readable.
#[test]
fn an_unknown_reason_code_reads_as_a_non_retryable_deny() {
    let frame = unhex("01 81 00 00 00 09  a2 01 01 02 81 82 18 63 a0");
    let (k, body) = split_frame(&frame).expect("the frame splits");
    assert_eq!(k, kind::VERDICTS);
    let Response::Verdicts { id, verdicts } = Response::decode(k, body).expect("it decodes") else {
        panic!("not a Verdicts response");
    };
    assert_eq!(id, 1);
    assert_eq!(verdicts.len(), 1);
    let r = verdicts[0].reason;
    assert_eq!(r, Reason::Unrecognized);
    assert!(!r.is_accept());
    assert!(!r.is_retryable());
}

#[test]
fn every_undefined_code_is_unrecognized_and_every_defined_one_is_itself() {
    for code in 0..=1000u64 {
        let r = Reason::from_wire(code);
        match Reason::from_code(code) {
            Some(known) => assert_eq!(r, known),
            None => assert_eq!(r, Reason::Unrecognized, "code {code}"),
        }
    }
    assert!(!Reason::ALL.contains(&Reason::Unrecognized));
    assert_eq!(Reason::from_wire(u64::MAX), Reason::Unrecognized);
}

/// CBOR byte string header for `len` bytes (major type 2).
fn bstr(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=23 => out.push(0x40 | len as u8),
        24..=255 => out.extend([0x58, len as u8]),
        _ => {
            out.push(0x59);
            out.extend((len as u16).to_be_bytes());
        }
    }
}

#[test]
fn a_batch_token_over_the_limit_is_an_empty_token_and_the_others_are_kept() {
    let sizes = [10, MAX_TOKEN_LEN + 1, MAX_TOKEN_LEN, 4000];
    let mut body = vec![0xa2, 0x01, 0x07, 0x02, 0x80 | sizes.len() as u8];
    for (i, &n) in sizes.iter().enumerate() {
        bstr(&mut body, n);
        body.extend(std::iter::repeat_n(i as u8 + 1, n));
    }
    let Request::VerifyBatch { id, tokens, .. } =
        Request::decode(kind::VERIFY_BATCH, &body).expect("the batch decodes")
    else {
        panic!("not a batch");
    };
    assert_eq!(id, 7);
    assert_eq!(tokens.len(), 4);
    assert_eq!(tokens[0], vec![1u8; 10]);
    assert!(tokens[1].is_empty(), "the oversized token is not copied");
    assert_eq!(tokens[2], vec![3u8; MAX_TOKEN_LEN]);
    assert!(tokens[3].is_empty());
}

#[test]
fn a_single_verify_over_the_limit_is_still_unreadable() {
    let mut body = vec![0xa2, 0x01, 0x07, 0x02];
    bstr(&mut body, MAX_TOKEN_LEN + 1);
    body.extend(std::iter::repeat_n(0u8, MAX_TOKEN_LEN + 1));
    assert!(Request::decode(kind::VERIFY, &body).is_err());
}

#[test]
fn a_batch_token_longer_than_the_body_is_truncated_not_allocated() {
    // Claims 60000 bytes, carries 3.
    let body = vec![0xa2, 0x01, 0x07, 0x02, 0x81, 0x59, 0xea, 0x60, 1, 2, 3];
    assert!(Request::decode(kind::VERIFY_BATCH, &body).is_err());
}
