//! Revocation state: a bloom filter answers "maybe revoked" fast, an exact set confirms every
//! positive, so a hash collision never turns a holder away.
//!
//! Updates arrive as numbered epochs. A new state is built aside and swapped in atomically:
//! verification never waits for an update, and always sees one whole epoch.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bloomfilter::Bloom;
use gatehouse_protocol::{Credential, Id, RevocationEntry, RevocationKind, RevocationList};

/// False-positive rate the bloom filter is sized for (positives are then confirmed exactly).
const BLOOM_FP_RATE: f64 = 0.01;

/// A fast hash for the exact set. Its keys are issuer-chosen random ids, and the set is only
/// ever built from revocation lists, never from what a peer sends: a peer's lookups cannot
/// degrade it, so a keyed (slower) hash buys nothing here. Fx-style multiply over 8-byte words.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdSet = HashSet<[u8; 17], std::hash::BuildHasherDefault<IdHasher>>;

/// Why an update was refused. The state in force is unchanged.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// A delta whose base is not the epoch in force (out of order or a gap).
    #[error("delta applies to epoch {base} but epoch {current} is in force (out of order or a gap: load a snapshot)")]
    EpochMismatch {
        /// The delta's base epoch.
        base: u64,
        /// The epoch in force.
        current: u64,
    },
    /// A snapshot older than, or equal to, the epoch in force.
    #[error("snapshot epoch {epoch} is not newer than epoch {current} in force")]
    StaleSnapshot {
        /// The snapshot's epoch.
        epoch: u64,
        /// The epoch in force.
        current: u64,
    },
    /// The bloom filter could not be sized.
    #[error("cannot size the bloom filter: {0}")]
    Bloom(&'static str),
}

/// One epoch of revocations, immutable once built.
pub struct RevocationState {
    epoch: u64,
    bloom: Bloom<[u8; 17]>,
    exact: IdSet,
}

impl std::fmt::Debug for RevocationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationState")
            .field("epoch", &self.epoch)
            .field("entries", &self.exact.len())
            .finish()
    }
}

fn key(kind: RevocationKind, id: &Id) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = kind as u8;
    k[1..].copy_from_slice(id);
    k
}

impl RevocationState {
    /// The empty state at epoch 0.
    pub fn empty() -> Result<Self, RevocationError> {
        Self::build(0, IdSet::default())
    }

    fn build(epoch: u64, exact: IdSet) -> Result<Self, RevocationError> {
        // Room to grow by deltas before the false-positive rate degrades much.
        let capacity = (exact.len() + exact.len() / 4).max(1024);
        let mut bloom =
            Bloom::new_for_fp_rate(capacity, BLOOM_FP_RATE).map_err(RevocationError::Bloom)?;
        for k in &exact {
            bloom.set(k);
        }
        Ok(RevocationState {
            epoch,
            bloom,
            exact,
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of revoked identifiers.
    pub fn len(&self) -> usize {
        self.exact.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }

    /// Whether this identifier is revoked: bloom first, exact confirmation of every positive.
    pub fn is_revoked(&self, kind: RevocationKind, id: &Id) -> bool {
        let k = key(kind, id);
        self.bloom.check(&k) && self.exact.contains(&k)
    }

    /// Whether the bloom filter alone says "maybe" (for tests and metrics).
    pub fn bloom_says_maybe(&self, kind: RevocationKind, id: &Id) -> bool {
        self.bloom.check(&key(kind, id))
    }

    /// Whether a credential is revoked: by its id, its subject, or its sponsor.
    pub fn revokes(&self, c: &Credential) -> bool {
        self.is_revoked(RevocationKind::Credential, &c.id)
            || self.is_revoked(RevocationKind::Subject, &c.subject)
            || c.sponsor
                .as_ref()
                .is_some_and(|s| self.is_revoked(RevocationKind::Sponsor, s))
    }

    /// The state after `list`, built aside; `self` is untouched.
    pub fn apply(&self, list: &RevocationList) -> Result<RevocationState, RevocationError> {
        match list.base {
            None => {
                if list.epoch <= self.epoch && !(self.epoch == 0 && self.exact.is_empty()) {
                    return Err(RevocationError::StaleSnapshot {
                        epoch: list.epoch,
                        current: self.epoch,
                    });
                }
                let exact = list.revoke.iter().map(|e| key(e.kind, &e.id)).collect();
                Self::build(list.epoch, exact)
            }
            Some(base) => {
                if base != self.epoch {
                    return Err(RevocationError::EpochMismatch {
                        base,
                        current: self.epoch,
                    });
                }
                let mut exact = self.exact.clone();
                for RevocationEntry { kind, id } in &list.reinstate {
                    exact.remove(&key(*kind, id));
                }
                let added: Vec<[u8; 17]> = list.revoke.iter().map(|e| key(e.kind, &e.id)).collect();
                exact.extend(added.iter().copied());
                // Reinstated entries stay set in the bloom filter (bits cannot be cleared):
                // the exact set answers for them. Rebuild when the filter is overfull.
                let grown = exact.len() > (self.bloom.len() as usize / 10).max(1024);
                if grown || !list.reinstate.is_empty() && exact.len() < self.exact.len() / 2 {
                    return Self::build(list.epoch, exact);
                }
                let mut bloom = self.bloom.clone();
                for k in &added {
                    bloom.set(k);
                }
                Ok(RevocationState {
                    epoch: list.epoch,
                    bloom,
                    exact,
                })
            }
        }
    }
}

/// The revocation state in force, swappable while verification goes on.
pub struct Revocations {
    current: ArcSwap<RevocationState>,
    update: parking_lot::Mutex<()>,
}

impl Revocations {
    /// Starts from `state`.
    pub fn new(state: RevocationState) -> Self {
        Revocations {
            current: ArcSwap::from_pointee(state),
            update: parking_lot::Mutex::new(()),
        }
    }

    /// The state in force (a cheap snapshot; hold it for one verification).
    pub fn load(&self) -> Arc<RevocationState> {
        self.current.load_full()
    }

    /// Applies a list: builds the next state aside, then swaps it in. Updates are serialised
    /// among themselves; verification is never blocked. Returns the new epoch.
    pub fn apply(&self, list: &RevocationList) -> Result<u64, RevocationError> {
        let _one_at_a_time = self.update.lock();
        let next = self.current.load().apply(list)?;
        let epoch = next.epoch;
        self.current.store(Arc::new(next));
        Ok(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: RevocationKind, n: u64) -> RevocationEntry {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_le_bytes());
        RevocationEntry { kind, id }
    }

    #[test]
    fn snapshots_then_deltas_in_order() {
        let r = Revocations::new(RevocationState::empty().unwrap());
        let snap = RevocationList {
            epoch: 5,
            base: None,
            revoke: (0..100)
                .map(|n| entry(RevocationKind::Credential, n))
                .collect(),
            reinstate: vec![],
        };
        assert_eq!(r.apply(&snap), Ok(5));
        assert!(r.load().is_revoked(
            RevocationKind::Credential,
            &entry(RevocationKind::Credential, 7).id
        ));
        // The same id under another kind is not revoked.
        assert!(!r.load().is_revoked(
            RevocationKind::Subject,
            &entry(RevocationKind::Credential, 7).id
        ));
        let delta = RevocationList {
            epoch: 6,
            base: Some(5),
            revoke: vec![entry(RevocationKind::Sponsor, 1000)],
            reinstate: vec![entry(RevocationKind::Credential, 7)],
        };
        assert_eq!(r.apply(&delta), Ok(6));
        let s = r.load();
        assert!(!s.is_revoked(
            RevocationKind::Credential,
            &entry(RevocationKind::Credential, 7).id
        ));
        assert!(s.is_revoked(
            RevocationKind::Sponsor,
            &entry(RevocationKind::Sponsor, 1000).id
        ));
        assert_eq!(s.len(), 100);
    }

    #[test]
    fn gaps_and_replays_of_old_epochs_are_refused_and_change_nothing() {
        let r = Revocations::new(RevocationState::empty().unwrap());
        r.apply(&RevocationList {
            epoch: 3,
            ..Default::default()
        })
        .unwrap();
        let gap = RevocationList {
            epoch: 6,
            base: Some(5),
            ..Default::default()
        };
        assert_eq!(
            r.apply(&gap),
            Err(RevocationError::EpochMismatch {
                base: 5,
                current: 3
            })
        );
        let old = RevocationList {
            epoch: 2,
            ..Default::default()
        };
        assert_eq!(
            r.apply(&old),
            Err(RevocationError::StaleSnapshot {
                epoch: 2,
                current: 3
            })
        );
        assert_eq!(r.load().epoch(), 3);
    }
}
