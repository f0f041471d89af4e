//! Revocation state: a bloom filter answers "maybe revoked" fast, an exact set confirms every
//! positive, so a hash collision never turns a holder away.
//!
//! Updates arrive as numbered epochs. A new state is built aside and swapped in atomically:
//! verification never waits for an update, and always sees one whole epoch.
//!
//! Deltas revoke and reinstate; [`compact`] folds a snapshot and the deltas after it into the
//! next snapshot (what `gatehouse issuer compact` publishes). The state carries how long it
//! may be trusted ([`Revocations::set_fresh_until`]): the shell moves that deadline each time
//! its feed confirms the epoch, and the core fails closed past it (SPEC §11.4).

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bloomfilter::Bloom;
use gatehouse_protocol::{
    Credential, Id, RevocationEntry, RevocationKind, RevocationList, StateDigest,
};

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
    /// The list carries a state digest, and applying it gives another one: the state it was
    /// applied to is not the one its publisher applied it to (SPEC §11.5).
    #[error("the state at epoch {epoch} would have digest {} but the list says {}: the state in force is not the publisher's", short_hex(.found), short_hex(.expected))]
    DigestMismatch {
        /// The list's epoch.
        epoch: u64,
        /// The digest the list carries.
        expected: [u8; 32],
        /// The digest applying it gives.
        found: [u8; 32],
    },
    /// Compaction needs a snapshot to start from.
    #[error("compaction starts from a snapshot, not a delta (epoch {epoch})")]
    NotASnapshot {
        /// The list's epoch.
        epoch: u64,
    },
}

/// The first 8 bytes of a digest in hex, as logs and metrics show it.
pub fn short_hex(digest: &[u8; 32]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// One epoch of revocations, immutable once built.
pub struct RevocationState {
    epoch: u64,
    bloom: Bloom<[u8; 17]>,
    exact: IdSet,
    /// The digest of `exact` (SPEC §11.5), kept up to date entry by entry.
    digest: StateDigest,
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
        let mut digest = StateDigest::default();
        for k in &exact {
            if let Some(e) = entry(k) {
                digest.add(e.kind, &e.id);
            }
        }
        Self::build_with(epoch, exact, digest)
    }

    fn build_with(epoch: u64, exact: IdSet, digest: StateDigest) -> Result<Self, RevocationError> {
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
            digest,
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The state's digest (SPEC §11.5): two states with the same entries have the same one.
    pub fn digest(&self) -> [u8; 32] {
        self.digest.digest()
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

    /// Every revoked identifier, in order (kind, then id).
    pub fn entries(&self) -> Vec<RevocationEntry> {
        let mut out: Vec<RevocationEntry> = self.exact.iter().filter_map(entry).collect();
        out.sort_unstable();
        out
    }

    /// This state as a snapshot list (what a compaction publishes).
    pub fn to_snapshot(&self) -> RevocationList {
        RevocationList {
            epoch: self.epoch,
            base: None,
            revoke: self.entries(),
            reinstate: Vec::new(),
            digest: Some(self.digest()),
        }
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

    /// The state after `list`, built aside; `self` is untouched. A list that carries a state
    /// digest must lead to a state with that digest, or it is refused and nothing changes.
    pub fn apply(&self, list: &RevocationList) -> Result<RevocationState, RevocationError> {
        let next = self.apply_unchecked(list)?;
        match list.digest {
            Some(expected) if expected != next.digest() => Err(RevocationError::DigestMismatch {
                epoch: list.epoch,
                expected,
                found: next.digest(),
            }),
            _ => Ok(next),
        }
    }

    /// The state after the snapshot `list`, whatever the epoch in force: for a state that is
    /// not the feed's (SPEC §11.3), which the feed's snapshot replaces.
    pub fn replace(list: &RevocationList) -> Result<RevocationState, RevocationError> {
        if list.base.is_some() {
            return Err(RevocationError::NotASnapshot { epoch: list.epoch });
        }
        RevocationState::empty()?.apply(list)
    }

    fn apply_unchecked(&self, list: &RevocationList) -> Result<RevocationState, RevocationError> {
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
                let mut digest = self.digest;
                for RevocationEntry { kind, id } in &list.reinstate {
                    if exact.remove(&key(*kind, id)) {
                        digest.remove(*kind, id);
                    }
                }
                let added: Vec<[u8; 17]> = list.revoke.iter().map(|e| key(e.kind, &e.id)).collect();
                for (k, e) in added.iter().zip(&list.revoke) {
                    if exact.insert(*k) {
                        digest.add(e.kind, &e.id);
                    }
                }
                // Reinstated entries stay set in the bloom filter (bits cannot be cleared):
                // the exact set answers for them. Rebuild when the filter is overfull.
                let grown = exact.len() > (self.bloom.len() as usize / 10).max(1024);
                if grown || !list.reinstate.is_empty() && exact.len() < self.exact.len() / 2 {
                    return Self::build_with(list.epoch, exact, digest);
                }
                let mut bloom = self.bloom.clone();
                for k in &added {
                    bloom.set(k);
                }
                Ok(RevocationState {
                    epoch: list.epoch,
                    bloom,
                    exact,
                    digest,
                })
            }
        }
    }
}

fn entry(k: &[u8; 17]) -> Option<RevocationEntry> {
    let kind = match k[0] {
        1 => RevocationKind::Credential,
        2 => RevocationKind::Subject,
        3 => RevocationKind::Sponsor,
        _ => return None,
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&k[1..]);
    Some(RevocationEntry { kind, id })
}

/// Folds `deltas` (in order, each on the epoch before it) into `snapshot`: the snapshot at
/// the last delta's epoch. Works on the lists alone, so a publisher needs no bloom filter;
/// the result is what applying the same lists one by one gives.
pub fn compact(
    snapshot: &RevocationList,
    deltas: &[RevocationList],
) -> Result<RevocationList, RevocationError> {
    if snapshot.base.is_some() {
        return Err(RevocationError::NotASnapshot {
            epoch: snapshot.epoch,
        });
    }
    let mut set: BTreeSet<RevocationEntry> = snapshot.revoke.iter().copied().collect();
    let mut epoch = snapshot.epoch;
    for d in deltas {
        match d.base {
            Some(base) if base == epoch => {}
            Some(base) => {
                return Err(RevocationError::EpochMismatch {
                    base,
                    current: epoch,
                })
            }
            None => {
                return Err(RevocationError::StaleSnapshot {
                    epoch: d.epoch,
                    current: epoch,
                })
            }
        }
        for e in &d.reinstate {
            set.remove(e);
        }
        set.extend(d.revoke.iter().copied());
        epoch = d.epoch;
    }
    Ok(RevocationList {
        epoch,
        base: None,
        digest: Some(StateDigest::of(&set).digest()),
        revoke: set.into_iter().collect(),
        reinstate: Vec::new(),
    })
}

/// The revocation state in force, swappable while verification goes on.
pub struct Revocations {
    current: ArcSwap<RevocationState>,
    update: parking_lot::Mutex<()>,
    /// Unix seconds from which the state is too old to vouch for (`u64::MAX`: no limit).
    fresh_until: AtomicU64,
}

impl Revocations {
    /// Starts from `state`, with no age limit.
    pub fn new(state: RevocationState) -> Self {
        Revocations {
            current: ArcSwap::from_pointee(state),
            update: parking_lot::Mutex::new(()),
            fresh_until: AtomicU64::new(u64::MAX),
        }
    }

    /// From `at` (Unix seconds) on, the state is too old to vouch for and
    /// [`Revocations::in_force_at`] is false. The shell moves it forward each time its feed
    /// confirms the epoch; `u64::MAX` removes the limit, `0` marks a state never established.
    pub fn set_fresh_until(&self, at: u64) {
        self.fresh_until.store(at, Ordering::Relaxed);
    }

    /// The deadline set by [`Revocations::set_fresh_until`].
    pub fn fresh_until(&self) -> u64 {
        self.fresh_until.load(Ordering::Relaxed)
    }

    /// Whether the state may be relied on at `now`; past the deadline the engine denies with
    /// `revocations_stale` (fail closed).
    pub fn in_force_at(&self, now: u64) -> bool {
        now < self.fresh_until.load(Ordering::Relaxed)
    }

    /// The state in force (a cheap snapshot; hold it for one verification).
    pub fn load(&self) -> Arc<RevocationState> {
        self.current.load_full()
    }

    /// Applies a list: builds the next state aside, then swaps it in. Updates are serialised
    /// among themselves; verification is never blocked. Returns the new epoch.
    ///
    /// The previous state is let go here: whichever thread holds its last reference frees it.
    /// A caller that must keep a large free off the verification threads uses
    /// [`Revocations::apply_returning_previous`].
    pub fn apply(&self, list: &RevocationList) -> Result<u64, RevocationError> {
        self.apply_returning_previous(list).map(|(epoch, _)| epoch)
    }

    /// Like [`Revocations::apply`], and hands the state it replaced back to the caller, who
    /// decides where it is freed. Verifications that loaded the previous state before the swap
    /// still hold references to it; were it simply dropped here, the last of them would free
    /// a million-entry set (tens of MB) on a verification thread. The swap itself is one
    /// atomic pointer exchange: a reader sees the old epoch or the new one, never a mix.
    pub fn apply_returning_previous(
        &self,
        list: &RevocationList,
    ) -> Result<(u64, Arc<RevocationState>), RevocationError> {
        self.swap_in(|current| current.apply(list))
    }

    /// Replaces the state with the snapshot `list`, whatever the epoch in force (a state that
    /// is not the feed's, SPEC §11.3); hands back the state replaced.
    pub fn replace_returning_previous(
        &self,
        list: &RevocationList,
    ) -> Result<(u64, Arc<RevocationState>), RevocationError> {
        self.swap_in(|_| RevocationState::replace(list))
    }

    fn swap_in(
        &self,
        build: impl FnOnce(&RevocationState) -> Result<RevocationState, RevocationError>,
    ) -> Result<(u64, Arc<RevocationState>), RevocationError> {
        let _one_at_a_time = self.update.lock();
        let next = build(&self.current.load())?;
        let epoch = next.epoch;
        let previous = self.current.swap(Arc::new(next));
        Ok((epoch, previous))
    }
}

// Tests count, per thread, the revocation states freed on it: they show where the last
// reference to a replaced state goes.
#[cfg(any(test, feature = "test-hooks"))]
thread_local! {
    static FREED_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(any(test, feature = "test-hooks"))]
impl Drop for RevocationState {
    fn drop(&mut self) {
        FREED_HERE.with(|n| n.set(n.get() + 1));
    }
}

#[cfg(any(test, feature = "test-hooks"))]
impl RevocationState {
    /// Revocation states freed on the calling thread so far (tests only: the `test-hooks`
    /// feature).
    pub fn freed_on_this_thread() -> u64 {
        FREED_HERE.with(std::cell::Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(kind: RevocationKind, n: u64) -> RevocationEntry {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_le_bytes());
        RevocationEntry { kind, id }
    }

    /// A snapshot at epoch 5 revoking credentials 0 to 99.
    fn hundred_credentials_at_epoch_5() -> RevocationList {
        RevocationList {
            epoch: 5,
            base: None,
            revoke: (0..100)
                .map(|n| entry(RevocationKind::Credential, n))
                .collect(),
            reinstate: vec![],
            digest: None,
        }
    }

    #[test]
    fn snapshots_then_deltas_in_order() {
        let r = Revocations::new(RevocationState::empty().unwrap());
        let snap = hundred_credentials_at_epoch_5();
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
            digest: None,
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

    #[test]
    fn reinstating_and_compacting() {
        let r = Revocations::new(RevocationState::empty().unwrap());
        let snap = RevocationList {
            epoch: 1,
            base: None,
            revoke: vec![
                entry(RevocationKind::Sponsor, 1),
                entry(RevocationKind::Credential, 2),
            ],
            reinstate: vec![],
            digest: None,
        };
        let d2 = RevocationList {
            epoch: 2,
            base: Some(1),
            revoke: vec![entry(RevocationKind::Subject, 3)],
            reinstate: vec![entry(RevocationKind::Sponsor, 1)],
            digest: None,
        };
        r.apply(&snap).unwrap();
        r.apply(&d2).unwrap();
        let folded = compact(&snap, std::slice::from_ref(&d2)).unwrap();
        assert_eq!(folded, r.load().to_snapshot());
        assert_eq!(folded.epoch, 2);
        assert_eq!(
            folded.revoke,
            vec![
                entry(RevocationKind::Credential, 2),
                entry(RevocationKind::Subject, 3)
            ]
        );
        assert_eq!(
            compact(&d2, &[]),
            Err(RevocationError::NotASnapshot { epoch: 2 })
        );
        assert_eq!(
            compact(&snap, &[d2.clone(), d2]),
            Err(RevocationError::EpochMismatch {
                base: 1,
                current: 2
            })
        );
    }

    #[test]
    fn the_replaced_state_goes_back_to_the_caller_whole_and_readers_keep_their_epoch() {
        let r = Revocations::new(RevocationState::empty().unwrap());
        let snap = hundred_credentials_at_epoch_5();
        r.apply(&snap).unwrap();
        // A verification that loaded epoch 5 before the swap.
        let reader = r.load();
        let delta = RevocationList {
            epoch: 6,
            base: Some(5),
            revoke: vec![],
            reinstate: vec![entry(RevocationKind::Credential, 7)],
            digest: None,
        };
        let freed_before = RevocationState::freed_on_this_thread();
        let (epoch, previous) = r.apply_returning_previous(&delta).unwrap();
        assert_eq!(epoch, 6);
        assert!(
            Arc::ptr_eq(&previous, &reader),
            "the state replaced is handed back"
        );
        // The reader still answers on the whole of epoch 5; new loads see epoch 6.
        assert_eq!(reader.epoch(), 5);
        let seven = entry(RevocationKind::Credential, 7).id;
        assert!(reader.is_revoked(RevocationKind::Credential, &seven));
        assert_eq!(r.load().epoch(), 6);
        assert!(!r.load().is_revoked(RevocationKind::Credential, &seven));
        // Nothing was freed by the swap; the caller's reference outlives the reader's.
        assert_eq!(RevocationState::freed_on_this_thread(), freed_before);
        drop(reader);
        assert_eq!(Arc::strong_count(&previous), 1);
        drop(previous);
        assert_eq!(RevocationState::freed_on_this_thread(), freed_before + 1);
        // A refused list changes nothing and hands nothing back.
        assert_eq!(
            r.apply_returning_previous(&delta).map(|(e, _)| e),
            Err(RevocationError::EpochMismatch {
                base: 5,
                current: 6
            })
        );
        assert_eq!(r.load().epoch(), 6);
    }

    #[test]
    fn the_age_limit_is_a_deadline() {
        let r = Revocations::new(RevocationState::empty().unwrap());
        assert!(r.in_force_at(u64::MAX - 1));
        r.set_fresh_until(100);
        assert!(r.in_force_at(99));
        assert!(!r.in_force_at(100));
        r.set_fresh_until(0);
        assert!(!r.in_force_at(0));
    }

    fn entries() -> impl Strategy<Value = Vec<RevocationEntry>> {
        prop::collection::vec(
            (1u8..=3, 0u64..12).prop_map(|(k, n)| {
                let kind = match k {
                    1 => RevocationKind::Credential,
                    2 => RevocationKind::Subject,
                    _ => RevocationKind::Sponsor,
                };
                entry(kind, n)
            }),
            0..6,
        )
    }

    /// A node that catches up the way a feed follower does: the deltas after its epoch when
    /// the snapshot is not newer, else the snapshot and the deltas after it.
    fn catch_up(node: &Revocations, snapshot: &RevocationList, deltas: &[RevocationList]) {
        let at = node.load().epoch();
        if at < snapshot.epoch || (at == 0 && node.load().is_empty()) {
            node.apply(snapshot).unwrap();
        }
        for d in deltas.iter().filter(|d| d.epoch > node.load().epoch()) {
            node.apply(d).unwrap();
        }
    }

    #[test]
    fn a_list_whose_digest_is_not_the_result_is_refused_and_nothing_changes() {
        let r = Revocations::new(RevocationState::empty().unwrap());
        r.apply(&hundred_credentials_at_epoch_5()).unwrap();
        let before = r.load().digest();
        let mut delta = RevocationList {
            epoch: 6,
            base: Some(5),
            revoke: vec![entry(RevocationKind::Sponsor, 1)],
            reinstate: vec![],
            digest: Some([0; 32]),
        };
        assert!(matches!(
            r.apply(&delta),
            Err(RevocationError::DigestMismatch { epoch: 6, .. })
        ));
        assert_eq!((r.load().epoch(), r.load().digest()), (5, before));
        // Revoking what is already revoked changes nothing in the digest.
        let mut same: Vec<_> = r.load().entries();
        same.push(entry(RevocationKind::Sponsor, 1));
        delta.digest = Some(StateDigest::of(&same).digest());
        delta.revoke.push(entry(RevocationKind::Credential, 3));
        assert_eq!(r.apply(&delta), Ok(6));
        // A snapshot replaces whatever is in force, even at an older epoch.
        let older = RevocationList {
            epoch: 2,
            base: None,
            revoke: vec![],
            reinstate: vec![],
            digest: Some(StateDigest::default().digest()),
        };
        assert!(r.apply(&older).is_err());
        r.replace_returning_previous(&older).unwrap();
        assert_eq!((r.load().epoch(), r.load().len()), (2, 0));
    }

    proptest! {
        /// Any interleaving of deltas applied at once, deltas missed, compactions by the
        /// publisher and catch-ups from the latest snapshot leaves the node with exactly the
        /// entries that applying every change directly gives.
        #[test]
        fn any_sequence_of_snapshots_deltas_and_compactions_equals_direct_application(
            steps in prop::collection::vec((entries(), entries(), 0u8..4), 1..30)
        ) {
            let mut model: BTreeSet<RevocationEntry> = BTreeSet::new();
            let mut snapshot = RevocationList::default();
            let mut deltas: Vec<RevocationList> = Vec::new();
            let node = Revocations::new(RevocationState::empty().unwrap());
            for (i, (revoke, reinstate, action)) in steps.into_iter().enumerate() {
                let epoch = i as u64 + 1;
                for e in &reinstate {
                    model.remove(e);
                }
                model.extend(revoke.iter().copied());
                // Each delta carries the model's digest: every application below checks the
                // node's incremental digest against it.
                let digest = Some(StateDigest::of(&model).digest());
                let delta = RevocationList { epoch, base: Some(epoch - 1), revoke, reinstate, digest };
                deltas.push(delta.clone());
                match action {
                    0 => {
                        let before = node.load().epoch();
                        match node.apply(&delta) {
                            Ok(e) => prop_assert_eq!(e, epoch),
                            Err(err) => {
                                // Behind: the delta is refused and nothing changes.
                                prop_assert_eq!(err, RevocationError::EpochMismatch { base: epoch - 1, current: before });
                                prop_assert_eq!(node.load().epoch(), before);
                            }
                        }
                    }
                    1 => {}
                    2 => {
                        snapshot = compact(&snapshot, &deltas).unwrap();
                        deltas.clear();
                    }
                    _ => catch_up(&node, &snapshot, &deltas),
                }
            }
            catch_up(&node, &snapshot, &deltas);
            let want: Vec<RevocationEntry> = model.iter().copied().collect();
            prop_assert_eq!(node.load().entries(), want.clone());
            prop_assert_eq!(node.load().digest(), StateDigest::of(&want).digest());
            prop_assert_eq!(compact(&snapshot, &deltas).unwrap().revoke, want.clone());
            // A fresh node from the final compacted snapshot agrees too, and every revoked id
            // is found by the lookup path the engine uses.
            let fresh = RevocationState::empty().unwrap().apply(&compact(&snapshot, &deltas).unwrap()).unwrap();
            prop_assert_eq!(fresh.entries(), want.clone());
            for e in &want {
                prop_assert!(node.load().is_revoked(e.kind, &e.id));
            }
        }
    }
}
