//! COSE_Sign1 (RFC 9052 §4.2) with ES256, in the one shape gatehouse uses:
//!
//! ```text
//! 18([ protected: bstr .cbor {1: -7, ?4: kid(8 bytes)},
//!      unprotected: {-65537: y-parity (0 or 1)},
//!      payload: bstr,
//!      signature: bstr(64) r ‖ s ])
//! ```
//!
//! The signed bytes are the standard `Sig_structure`
//! `["Signature1", protected, external_aad, payload]`, with a per-structure `external_aad`
//! that separates credential signatures from token signatures.

use std::ops::Range;

use crate::cbor::{MapKeys, Reader, Writer};
use crate::crypto::{PrivateKey, Signature};
use crate::{DecodeError, SignError};

/// CBOR tag of a COSE_Sign1 message.
pub const TAG_COSE_SIGN1: u64 = 18;
/// COSE header label `alg`.
pub const LABEL_ALG: i64 = 1;
/// COSE header label `kid`.
pub const LABEL_KID: i64 = 4;
/// COSE algorithm ES256.
pub const ALG_ES256: i64 = -7;
/// Private-use header label (unprotected) carrying the y-parity of R: 0 even, 1 odd.
pub const LABEL_R_Y_PARITY: i64 = -65537;

/// A decoded COSE_Sign1; ranges point into the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sign1 {
    pub(crate) protected: Range<usize>,
    pub(crate) payload: Range<usize>,
    pub(crate) kid: Option<[u8; 8]>,
    pub(crate) signature: Signature,
}

/// Whether a message must, or must not, carry a key id.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kid {
    Required,
    Absent,
}

impl Sign1 {
    /// Reads a whole COSE_Sign1 from `bytes`; nothing may follow it.
    pub(crate) fn decode(bytes: &[u8], kid: Kid, max_payload: usize) -> Result<Sign1, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.tag("COSE_Sign1 tag")? != TAG_COSE_SIGN1 {
            return Err(DecodeError::UnknownValue("COSE_Sign1 tag"));
        }
        r.array_exact("COSE_Sign1", 4)?;
        let protected_bytes = r.bytes("protected header", 16)?;
        let protected_end = r.position();
        let protected = protected_end - protected_bytes.len()..protected_end;
        let found_kid = decode_protected(protected_bytes)?;
        match (kid, found_kid) {
            (Kid::Required, None) => return Err(DecodeError::Missing("kid")),
            (Kid::Absent, Some(_)) => return Err(DecodeError::UnknownKey("protected header")),
            _ => {}
        }
        if r.map("unprotected header", 1)? != 1 {
            return Err(DecodeError::Missing("R y-parity"));
        }
        if r.int("unprotected header")? != LABEL_R_Y_PARITY {
            return Err(DecodeError::UnknownKey("unprotected header"));
        }
        let y_odd = match r.uint("R y-parity")? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::OutOfRange("R y-parity")),
        };
        let payload_bytes = r.bytes("payload", max_payload)?;
        let payload_end = r.position();
        let payload = payload_end - payload_bytes.len()..payload_end;
        let rs = r.bytes_exact::<64>("signature")?;
        r.finish("COSE_Sign1")?;
        Ok(Sign1 {
            protected,
            payload,
            kid: found_kid,
            signature: Signature { rs, y_odd },
        })
    }
}

fn decode_protected(bytes: &[u8]) -> Result<Option<[u8; 8]>, DecodeError> {
    let mut r = Reader::new(bytes);
    let n = r.map("protected header", 2)?;
    let mut keys = MapKeys::new("protected header");
    let (mut alg, mut kid) = (None, None);
    for _ in 0..n {
        match keys.next(&mut r)? {
            LABEL_ALG => alg = Some(r.int("alg")?),
            LABEL_KID => kid = Some(r.bytes_exact::<8>("kid")?),
            _ => return Err(DecodeError::UnknownKey("protected header")),
        }
    }
    r.finish("protected header")?;
    match alg {
        Some(ALG_ES256) => Ok(kid),
        Some(_) => Err(DecodeError::UnknownValue("alg")),
        None => Err(DecodeError::Missing("alg")),
    }
}

fn encode_protected(kid: Option<&[u8; 8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(13);
    let mut w = Writer::new(&mut out);
    w.map(if kid.is_some() { 2 } else { 1 })
        .int(LABEL_ALG)
        .int(ALG_ES256);
    if let Some(kid) = kid {
        w.int(LABEL_KID).bytes(kid);
    }
    out
}

/// The bytes an ES256 signature covers: `["Signature1", protected, external_aad, payload]`.
pub(crate) fn sig_structure(protected: &[u8], external_aad: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + protected.len() + external_aad.len() + payload.len());
    Writer::new(&mut out)
        .array(4)
        .text("Signature1")
        .bytes(protected)
        .bytes(external_aad)
        .bytes(payload);
    out
}

/// Signs `payload` and returns the tagged COSE_Sign1 bytes.
pub(crate) fn sign(
    key: &PrivateKey,
    kid: Option<&[u8; 8]>,
    external_aad: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, SignError> {
    let protected = encode_protected(kid);
    let signature = key.sign(&sig_structure(&protected, external_aad, payload))?;
    Ok(encode(&protected, payload, &signature))
}

/// Assembles a tagged COSE_Sign1 from its parts (tests use it to build invalid messages).
pub(crate) fn encode(protected: &[u8], payload: &[u8], signature: &Signature) -> Vec<u8> {
    let mut out = Vec::with_capacity(protected.len() + payload.len() + 84);
    Writer::new(&mut out)
        .tag(TAG_COSE_SIGN1)
        .array(4)
        .bytes(protected)
        .map(1)
        .int(LABEL_R_Y_PARITY)
        .uint(u64::from(signature.y_odd))
        .bytes(payload)
        .bytes(&signature.rs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_message_decodes_to_its_parts() {
        let key = PrivateKey::from_bytes(&[4; 32]).unwrap();
        let kid = [9u8; 8];
        let bytes = sign(&key, Some(&kid), b"aad", b"hello").unwrap();
        let m = Sign1::decode(&bytes, Kid::Required, 64).unwrap();
        assert_eq!(&bytes[m.payload.clone()], b"hello");
        assert_eq!(m.kid, Some(kid));
        let tbs = sig_structure(&bytes[m.protected.clone()], b"aad", b"hello");
        crate::crypto::verify_strict(key.public(), &tbs, &m.signature).unwrap();
        assert_eq!(
            Sign1::decode(&bytes, Kid::Absent, 64),
            Err(DecodeError::UnknownKey("protected header"))
        );
        assert_eq!(
            Sign1::decode(&bytes, Kid::Required, 4),
            Err(DecodeError::TooLong("payload"))
        );
    }

    #[test]
    fn other_algorithms_and_headers_are_refused() {
        let sig = Signature {
            rs: [1; 64],
            y_odd: false,
        };
        let mut p = Vec::new();
        Writer::new(&mut p).map(1).int(LABEL_ALG).int(-35);
        assert_eq!(
            Sign1::decode(&encode(&p, b"x", &sig), Kid::Absent, 8),
            Err(DecodeError::UnknownValue("alg"))
        );
        let mut p = Vec::new();
        Writer::new(&mut p)
            .map(2)
            .int(LABEL_ALG)
            .int(ALG_ES256)
            .int(3)
            .uint(0);
        assert_eq!(
            Sign1::decode(&encode(&p, b"x", &sig), Kid::Absent, 8),
            Err(DecodeError::UnknownKey("protected header"))
        );
        let mut p = Vec::new();
        Writer::new(&mut p).map(0);
        assert_eq!(
            Sign1::decode(&encode(&p, b"x", &sig), Kid::Absent, 8),
            Err(DecodeError::Missing("alg"))
        );
    }
}
