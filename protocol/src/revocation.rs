//! Revocation lists: what an issuer publishes and the engine loads, as numbered epochs.
//!
//! ```text
//! { 1: version (1 or 2), 2: epoch, ?3: base epoch (deltas only), 4: [entry...] revoked,
//!   ?5: [entry...] reinstated, ?6: state digest (version 2 only, and required there) }
//! entry = bstr(17): kind (1 credential id, 2 subject id, 3 sponsor id) ‖ id (16 bytes)
//! ```
//!
//! A version 2 list carries the [`StateDigest`] of the state it brings a verifier to, so a
//! verifier can tell its state at an epoch from a feed's state at the same epoch.
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

/// Version of the revocation list format without a state digest.
pub const REVOCATION_VERSION: u64 = 1;
/// Version of the revocation list format with a state digest (key 6).
pub const REVOCATION_VERSION_DIGEST: u64 = 2;
/// Domain of an entry's hash in a [`StateDigest`].
const ENTRY_HASH_DOMAIN: &[u8] = b"gatehouse/revocation-entry/1";
/// Domain of the final hash of a [`StateDigest`].
const STATE_DIGEST_DOMAIN: &[u8] = b"gatehouse/revocation-state/1";
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
    /// The digest of the state after this list (SPEC §11.5); a list that has one is encoded
    /// as version 2.
    pub digest: Option<[u8; 32]>,
}

/// An order-independent digest of a set of revocation entries (SPEC §11.5): the number of
/// entries and the sum, mod 2^256, of each entry's SHA-256, hashed once more. Adding or
/// removing one entry costs one hash, so a verifier keeps it up to date as it applies deltas.
/// It detects two states that differ; it is not a signature (the lists that carry it are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateDigest {
    /// The sum of the entries' hashes, as a 256-bit big-endian integer in four limbs, most
    /// significant first.
    sum: [u64; 4],
    count: u64,
}

fn entry_hash(kind: RevocationKind, id: &Id) -> [u64; 4] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(ENTRY_HASH_DOMAIN);
    h.update([kind as u8]);
    h.update(id);
    let out = h.finalize();
    let mut limbs = [0u64; 4];
    for (limb, chunk) in limbs.iter_mut().zip(out.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *limb = u64::from_be_bytes(b);
    }
    limbs
}

impl StateDigest {
    /// The digest of a set given as a list of distinct entries.
    pub fn of<'a>(entries: impl IntoIterator<Item = &'a RevocationEntry>) -> StateDigest {
        let mut d = StateDigest::default();
        for e in entries {
            d.add(e.kind, &e.id);
        }
        d
    }

    /// Adds one entry that is not in the set.
    pub fn add(&mut self, kind: RevocationKind, id: &Id) {
        let h = entry_hash(kind, id);
        let mut carry = false;
        for i in (0..4).rev() {
            let (a, c1) = self.sum[i].overflowing_add(h[i]);
            let (b, c2) = a.overflowing_add(u64::from(carry));
            self.sum[i] = b;
            carry = c1 || c2;
        }
        self.count = self.count.wrapping_add(1);
    }

    /// Removes one entry that is in the set.
    pub fn remove(&mut self, kind: RevocationKind, id: &Id) {
        let h = entry_hash(kind, id);
        let mut borrow = false;
        for i in (0..4).rev() {
            let (a, b1) = self.sum[i].overflowing_sub(h[i]);
            let (b, b2) = a.overflowing_sub(u64::from(borrow));
            self.sum[i] = b;
            borrow = b1 || b2;
        }
        self.count = self.count.wrapping_sub(1);
    }

    /// Number of entries in the set.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The 32-byte digest: SHA-256(domain ‖ count as 8 bytes big-endian ‖ sum as 32 bytes
    /// big-endian).
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(STATE_DIGEST_DOMAIN);
        h.update(self.count.to_be_bytes());
        for limb in self.sum {
            h.update(limb.to_be_bytes());
        }
        h.finalize().into()
    }
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
        let n = 3
            + usize::from(self.base.is_some())
            + usize::from(!self.reinstate.is_empty())
            + usize::from(self.digest.is_some());
        let version = match self.digest {
            Some(_) => REVOCATION_VERSION_DIGEST,
            None => REVOCATION_VERSION,
        };
        w.map(n).uint(1).uint(version).uint(2).uint(self.epoch);
        if let Some(b) = self.base {
            w.uint(3).uint(b);
        }
        w.uint(4);
        write_entries(&mut w, &self.revoke);
        if !self.reinstate.is_empty() {
            w.uint(5);
            write_entries(&mut w, &self.reinstate);
        }
        if let Some(d) = &self.digest {
            w.uint(6).bytes(d);
        }
        out
    }

    /// Reads a list; the whole input must be one list.
    pub fn decode(bytes: &[u8]) -> Result<RevocationList, DecodeError> {
        let mut r = Reader::new(bytes);
        let n = r.map("revocation list", 6)?;
        let mut keys = MapKeys::new("revocation list");
        let mut list = RevocationList::default();
        let (mut version, mut epoch, mut revoke) = (None, None, None);
        for _ in 0..n {
            match keys.next(&mut r)? {
                1 => {
                    let v = r.uint("version")?;
                    if v != REVOCATION_VERSION && v != REVOCATION_VERSION_DIGEST {
                        return Err(DecodeError::UnsupportedVersion(v));
                    }
                    version = Some(v);
                }
                2 => epoch = Some(r.uint("epoch")?),
                3 => list.base = Some(r.uint("base epoch")?),
                4 => revoke = Some(read_entries(&mut r, "revoked entries")?),
                5 => {
                    list.reinstate = read_entries(&mut r, "reinstated entries")?;
                    // Absent when empty (SPEC §11.1): one list, one encoding.
                    if list.reinstate.is_empty() {
                        return Err(DecodeError::Inconsistent(
                            "an empty reinstated list is left out, not sent empty",
                        ));
                    }
                }
                // Key 1 comes first (deterministic order), so the version is known here.
                6 if version == Some(REVOCATION_VERSION_DIGEST) => {
                    list.digest = Some(r.bytes_exact::<32>("state digest")?);
                }
                _ => return Err(DecodeError::UnknownKey("revocation list")),
            }
        }
        r.finish("revocation list")?;
        let version = version.ok_or(DecodeError::Missing("version"))?;
        if version == REVOCATION_VERSION_DIGEST && list.digest.is_none() {
            return Err(DecodeError::Missing("state digest"));
        }
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

    fn e(kind: RevocationKind, n: u8) -> RevocationEntry {
        RevocationEntry { kind, id: [n; 16] }
    }

    #[test]
    fn the_state_digest_is_the_sets_whatever_the_order_and_path() {
        let (x, y, z) = (
            e(RevocationKind::Credential, 1),
            e(RevocationKind::Subject, 1),
            e(RevocationKind::Sponsor, 9),
        );
        let xyz = StateDigest::of([&x, &y, &z]);
        assert_eq!(xyz, StateDigest::of([&z, &x, &y]));
        assert_eq!(xyz.digest(), StateDigest::of([&y, &z, &x]).digest());
        // Same id, another kind: another entry.
        assert_ne!(
            StateDigest::of([&x]).digest(),
            StateDigest::of([&y]).digest()
        );
        // Incremental: add then remove is the state without it.
        let mut d = StateDigest::of([&x, &y]);
        d.add(z.kind, &z.id);
        assert_eq!(d, xyz);
        d.remove(y.kind, &y.id);
        assert_eq!(d.digest(), StateDigest::of([&x, &z]).digest());
        assert_eq!(d.count(), 2);
        d.remove(x.kind, &x.id);
        d.remove(z.kind, &z.id);
        assert_eq!(d.digest(), StateDigest::default().digest());
        // The count is part of it, and the empty state has a digest of its own.
        assert_ne!(StateDigest::default().digest(), [0; 32]);
    }

    #[test]
    fn the_sum_carries_across_limbs_both_ways() {
        // Hashes whose sum overflows a limb: adding many and removing them all returns to zero.
        let entries: Vec<_> = (0..=255u8)
            .map(|n| e(RevocationKind::Credential, n))
            .collect();
        let mut d = StateDigest::default();
        for x in &entries {
            d.add(x.kind, &x.id);
        }
        assert_eq!(d, StateDigest::of(entries.iter().rev()));
        for x in entries.iter().rev() {
            d.remove(x.kind, &x.id);
        }
        assert_eq!(d, StateDigest::default());
    }

    #[test]
    fn a_list_with_a_digest_is_version_2_and_one_without_is_version_1() {
        let mut list = RevocationList {
            epoch: 3,
            base: None,
            revoke: vec![e(RevocationKind::Credential, 3)],
            reinstate: vec![],
            digest: None,
        };
        let v1 = list.encode();
        assert_eq!(&v1[..3], &[0xa3, 0x01, 0x01], "version 1");
        assert_eq!(RevocationList::decode(&v1), Ok(list.clone()));
        list.digest = Some([0xab; 32]);
        let v2 = list.encode();
        assert_eq!(&v2[..3], &[0xa4, 0x01, 0x02], "version 2");
        assert_eq!(&v2[v2.len() - 35..v2.len() - 32], &[0x06, 0x58, 0x20]);
        assert_eq!(RevocationList::decode(&v2), Ok(list.clone()));
        // Version 2 without a digest, and version 1 with one, are refused.
        let mut no_digest = v1.clone();
        no_digest[2] = 0x02;
        assert_eq!(
            RevocationList::decode(&no_digest),
            Err(DecodeError::Missing("state digest"))
        );
        let mut v1_with = v2.clone();
        v1_with[2] = 0x01;
        assert_eq!(
            RevocationList::decode(&v1_with),
            Err(DecodeError::UnknownKey("revocation list"))
        );
        // A digest of another length.
        let mut short = v2[..v2.len() - 1].to_vec();
        short[v2.len() - 34] = 0x58;
        short[v2.len() - 33] = 0x1f;
        assert!(RevocationList::decode(&short).is_err());
        // An empty reinstated list is left out, not sent.
        assert!(RevocationList::decode(&[
            0xa5, 0x01, 0x01, 0x02, 0x02, 0x03, 0x01, 0x04, 0x80, 0x05, 0x80
        ])
        .is_err());
        // Version 3 is not known.
        let mut v3 = v2;
        v3[2] = 0x03;
        assert_eq!(
            RevocationList::decode(&v3),
            Err(DecodeError::UnsupportedVersion(3))
        );
    }

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
            digest: None,
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
            digest: None,
        };
        assert_eq!(RevocationList::decode(&snap.encode()).unwrap(), snap);
        let delta = RevocationList {
            epoch: 8,
            base: Some(7),
            revoke: vec![e(RevocationKind::Subject, 3)],
            reinstate: vec![e(RevocationKind::Credential, 1)],
            digest: None,
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
