//! Revocation lists: what an issuer publishes and the engine loads, as numbered epochs.
//!
//! ```text
//! { 1: version (1), 2: epoch, ?3: base epoch (deltas only), 4: [entry...] revoked, ?5: [entry...] reinstated }
//! entry = bstr(17): kind (1 credential id, 2 subject id, 3 sponsor id) ‖ id (16 bytes)
//! ```
//!
//! A **snapshot** (no base) replaces the whole state; a **delta** applies to exactly the epoch
//! it names as base and yields `epoch = base + 1`.
//!
//! Lists that travel (a feed, SPEC §11) are **signed**: a COSE_Sign1 whose payload is the list,
//! signed by a revocation key the trust list names ([`RevocationList::sign`],
//! [`SignedRevocationList`]). A bare list is refused by every node that fetches it.

use crate::cbor::{MapKeys, Reader, Writer};
use crate::cose::{self, Kid, Sign1};
use crate::credential::Id;
use crate::crypto::{verify_strict, PrivateKey, PublicKey, Signature};
use crate::{DecodeError, SignError, SignatureError};

/// Version of the revocation list format.
pub const REVOCATION_VERSION: u64 = 1;
/// Most entries one list may carry.
pub const MAX_REVOCATION_ENTRIES: usize = 16 * 1024 * 1024;

/// `external_aad` of revocation-list signatures: separates them from credential and token
/// signatures, so no signature of one kind can pass for another.
pub const REVOCATION_AAD: &[u8] = b"gatehouse/revocation/1";
/// Bytes of one encoded entry (a 17-byte byte string with its 1-byte head).
const ENTRY_LEN: usize = 18;
/// Largest signed list a decoder reads: [`MAX_REVOCATION_ENTRIES`] entries and the headers.
pub const MAX_SIGNED_REVOCATION_LEN: usize = MAX_REVOCATION_ENTRIES * ENTRY_LEN + 256;

/// Which identifier an entry revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RevocationKind {
    /// One credential, by its id.
    Credential = 1,
    /// Every credential whose subject is this id.
    Subject = 2,
    /// Every family credential whose sponsor is this id (a discharged service member).
    Sponsor = 3,
}

impl RevocationKind {
    fn from_code(c: u8) -> Result<Self, DecodeError> {
        match c {
            1 => Ok(RevocationKind::Credential),
            2 => Ok(RevocationKind::Subject),
            3 => Ok(RevocationKind::Sponsor),
            _ => Err(DecodeError::UnknownValue("revocation kind")),
        }
    }
}

/// One revoked identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevocationEntry {
    /// What the id names.
    pub kind: RevocationKind,
    /// The id.
    pub id: Id,
}

/// A snapshot or delta of revocations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevocationList {
    /// The epoch this list brings the state to.
    pub epoch: u64,
    /// For a delta: the epoch it applies to (`epoch - 1`). `None` for a snapshot.
    pub base: Option<u64>,
    /// Entries revoked.
    pub revoke: Vec<RevocationEntry>,
    /// Entries reinstated (deltas only).
    pub reinstate: Vec<RevocationEntry>,
}

fn write_entries(w: &mut Writer<'_>, entries: &[RevocationEntry]) {
    w.array(entries.len());
    let mut buf = [0u8; 17];
    for e in entries {
        buf[0] = e.kind as u8;
        buf[1..].copy_from_slice(&e.id);
        w.bytes(&buf);
    }
}

fn read_entries(
    r: &mut Reader<'_>,
    what: &'static str,
) -> Result<Vec<RevocationEntry>, DecodeError> {
    let n = r.array(what, MAX_REVOCATION_ENTRIES)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let b = r.bytes_exact::<17>("revocation entry")?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[1..]);
        out.push(RevocationEntry {
            kind: RevocationKind::from_code(b[0])?,
            id,
        });
    }
    Ok(out)
}

impl RevocationList {
    /// Checks the rules that tie the fields together.
    pub fn validate(&self) -> Result<(), DecodeError> {
        match self.base {
            None if !self.reinstate.is_empty() => Err(DecodeError::Inconsistent(
                "a snapshot cannot reinstate entries",
            )),
            Some(b) if b.checked_add(1) != Some(self.epoch) => Err(DecodeError::Inconsistent(
                "a delta's epoch must be its base + 1",
            )),
            _ => Ok(()),
        }
    }

    /// The CBOR bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 19 * (self.revoke.len() + self.reinstate.len()));
        let mut w = Writer::new(&mut out);
        let n = 3 + usize::from(self.base.is_some()) + usize::from(!self.reinstate.is_empty());
        w.map(n)
            .uint(1)
            .uint(REVOCATION_VERSION)
            .uint(2)
            .uint(self.epoch);
        if let Some(b) = self.base {
            w.uint(3).uint(b);
        }
        w.uint(4);
        write_entries(&mut w, &self.revoke);
        if !self.reinstate.is_empty() {
            w.uint(5);
            write_entries(&mut w, &self.reinstate);
        }
        out
    }

    /// Reads a list; the whole input must be one list.
    pub fn decode(bytes: &[u8]) -> Result<RevocationList, DecodeError> {
        let mut r = Reader::new(bytes);
        let n = r.map("revocation list", 5)?;
        let mut keys = MapKeys::new("revocation list");
        let mut list = RevocationList::default();
        let (mut version, mut epoch, mut revoke) = (None, None, None);
        for _ in 0..n {
            match keys.next(&mut r)? {
                1 => {
                    let v = r.uint("version")?;
                    if v != REVOCATION_VERSION {
                        return Err(DecodeError::UnsupportedVersion(v));
                    }
                    version = Some(v);
                }
                2 => epoch = Some(r.uint("epoch")?),
                3 => list.base = Some(r.uint("base epoch")?),
                4 => revoke = Some(read_entries(&mut r, "revoked entries")?),
                5 => list.reinstate = read_entries(&mut r, "reinstated entries")?,
                _ => return Err(DecodeError::UnknownKey("revocation list")),
            }
        }
        r.finish("revocation list")?;
        version.ok_or(DecodeError::Missing("version"))?;
        list.epoch = epoch.ok_or(DecodeError::Missing("epoch"))?;
        list.revoke = revoke.ok_or(DecodeError::Missing("revoked entries"))?;
        list.validate()?;
        Ok(list)
    }
}

impl RevocationList {
    /// The list as a COSE_Sign1 signed by a revocation key (its kid in the protected header).
    pub fn sign(&self, key: &PrivateKey) -> Result<Vec<u8>, SignError> {
        self.validate().map_err(SignError::Invalid)?;
        let kid = key.public().key_id();
        cose::sign(key, Some(&kid), REVOCATION_AAD, &self.encode())
    }
}

/// Why a signed revocation list was refused. A node that refuses a list keeps its state.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RevocationListError {
    /// The bytes are a bare (unsigned) revocation list: lists that travel must be signed.
    #[error("the revocation list is not signed")]
    Unsigned,
    /// The bytes are not a signed revocation list.
    #[error("malformed signed revocation list: {0}")]
    Malformed(DecodeError),
    /// The list is signed by a key the trust list does not name as a revocation key.
    #[error("revocation list signed by key {} which the trust list does not name", hex_kid(.0))]
    UnknownKey([u8; 8]),
    /// The signature does not verify under the named key (a forged or altered list).
    #[error("revocation list signature does not verify: {0}")]
    BadSignature(SignatureError),
}

impl RevocationListError {
    /// Stable snake_case name, for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            RevocationListError::Unsigned => "unsigned",
            RevocationListError::Malformed(_) => "malformed",
            RevocationListError::UnknownKey(_) => "unknown_key",
            RevocationListError::BadSignature(_) => "bad_signature",
        }
    }
}

fn hex_kid(kid: &[u8; 8]) -> String {
    kid.iter().map(|b| format!("{b:02x}")).collect()
}

/// A signed revocation list as decoded, before its signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRevocationList {
    /// The revocation key that signed it.
    pub kid: [u8; 8],
    /// The list (not yet authenticated: check with [`SignedRevocationList::verify`]).
    pub list: RevocationList,
    signature: Signature,
    to_be_signed: Vec<u8>,
}

impl SignedRevocationList {
    /// Reads a signed list; the whole input must be one COSE_Sign1 with a kid. A bare list is
    /// [`RevocationListError::Unsigned`].
    pub fn decode(bytes: &[u8]) -> Result<SignedRevocationList, RevocationListError> {
        // A bare list is a CBOR map (major type 5); a signed one starts with tag 18.
        if bytes.first().is_some_and(|b| b >> 5 == 5) {
            return Err(RevocationListError::Unsigned);
        }
        let m = Sign1::decode(bytes, Kid::Required, MAX_SIGNED_REVOCATION_LEN)
            .map_err(RevocationListError::Malformed)?;
        let kid = m
            .kid
            .ok_or(RevocationListError::Malformed(DecodeError::Missing("kid")))?;
        let payload = &bytes[m.payload.clone()];
        let list = RevocationList::decode(payload).map_err(RevocationListError::Malformed)?;
        Ok(SignedRevocationList {
            kid,
            list,
            signature: m.signature,
            to_be_signed: cose::sig_structure(&bytes[m.protected], REVOCATION_AAD, payload),
        })
    }

    /// Checks the signature under `key` (strictly: range, low s, and R's y-parity).
    pub fn verify(&self, key: &PublicKey) -> Result<(), RevocationListError> {
        if key.key_id() != self.kid {
            return Err(RevocationListError::UnknownKey(self.kid));
        }
        verify_strict(key, &self.to_be_signed, &self.signature)
            .map_err(RevocationListError::BadSignature)
    }

    /// Decodes and authenticates in one step: `key` finds the revocation key by kid.
    pub fn open<'k>(
        bytes: &[u8],
        key: impl FnOnce(&[u8; 8]) -> Option<&'k PublicKey>,
    ) -> Result<RevocationList, RevocationListError> {
        let signed = Self::decode(bytes)?;
        let public = key(&signed.kid).ok_or(RevocationListError::UnknownKey(signed.kid))?;
        signed.verify(public)?;
        Ok(signed.list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_lists_open_only_with_their_key() {
        let key = PrivateKey::from_bytes(&[7; 32]).unwrap();
        let other = PrivateKey::from_bytes(&[8; 32]).unwrap();
        let list = RevocationList {
            epoch: 4,
            base: Some(3),
            revoke: vec![RevocationEntry {
                kind: RevocationKind::Sponsor,
                id: [5; 16],
            }],
            reinstate: vec![RevocationEntry {
                kind: RevocationKind::Credential,
                id: [6; 16],
            }],
        };
        let bytes = list.sign(&key).unwrap();
        let kid = key.public().key_id();
        let find = |k: &[u8; 8]| (*k == kid).then_some(key.public());
        assert_eq!(SignedRevocationList::open(&bytes, find), Ok(list.clone()));
        // Signed by a key the trust list does not name.
        let foreign = list.sign(&other).unwrap();
        assert_eq!(
            SignedRevocationList::open(&foreign, find),
            Err(RevocationListError::UnknownKey(other.public().key_id()))
        );
        // A forged list: the payload altered after signing (one id byte).
        let mut forged = bytes.clone();
        let at = forged.len() - 64 - 3;
        forged[at] ^= 1;
        assert!(matches!(
            SignedRevocationList::open(&forged, find),
            Err(RevocationListError::BadSignature(_))
        ));
        // A bare list, and garbage.
        assert_eq!(
            SignedRevocationList::open(&list.encode(), find),
            Err(RevocationListError::Unsigned)
        );
        assert!(matches!(
            SignedRevocationList::open(&bytes[..bytes.len() - 1], find),
            Err(RevocationListError::Malformed(_))
        ));
        // A credential-style signature over the same payload does not pass (other aad).
        let cross =
            cose::sign(&key, Some(&kid), b"gatehouse/credential/1", &list.encode()).unwrap();
        assert!(matches!(
            SignedRevocationList::open(&cross, find),
            Err(RevocationListError::BadSignature(_))
        ));
    }

    #[test]
    fn snapshots_and_deltas_round_trip() {
        let e = |k, b| RevocationEntry {
            kind: k,
            id: [b; 16],
        };
        let snap = RevocationList {
            epoch: 7,
            base: None,
            revoke: vec![
                e(RevocationKind::Credential, 1),
                e(RevocationKind::Sponsor, 2),
            ],
            reinstate: vec![],
        };
        assert_eq!(RevocationList::decode(&snap.encode()).unwrap(), snap);
        let delta = RevocationList {
            epoch: 8,
            base: Some(7),
            revoke: vec![e(RevocationKind::Subject, 3)],
            reinstate: vec![e(RevocationKind::Credential, 1)],
        };
        assert_eq!(RevocationList::decode(&delta.encode()).unwrap(), delta);
    }

    #[test]
    fn inconsistent_lists_are_refused() {
        let bad = RevocationList {
            epoch: 9,
            base: Some(7),
            ..Default::default()
        };
        assert!(RevocationList::decode(&bad.encode()).is_err());
        let mut bytes = RevocationList {
            epoch: 1,
            ..Default::default()
        }
        .encode();
        bytes.push(0);
        assert_eq!(
            RevocationList::decode(&bytes),
            Err(DecodeError::TrailingData("revocation list"))
        );
    }
}
