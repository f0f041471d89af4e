//! Revocation lists: what an issuer publishes and the engine loads, as numbered epochs.
//!
//! ```text
//! { 1: version (1), 2: epoch, ?3: base epoch (deltas only), 4: [entry...] revoked, ?5: [entry...] reinstated }
//! entry = bstr(17): kind (1 credential id, 2 subject id, 3 sponsor id) ‖ id (16 bytes)
//! ```
//!
//! A **snapshot** (no base) replaces the whole state; a **delta** applies to exactly the epoch
//! it names as base and yields `epoch = base + 1`.

use crate::cbor::{MapKeys, Reader, Writer};
use crate::credential::Id;
use crate::DecodeError;

/// Version of the revocation list format.
pub const REVOCATION_VERSION: u64 = 1;
/// Most entries one list may carry.
pub const MAX_REVOCATION_ENTRIES: usize = 16 * 1024 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;

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
