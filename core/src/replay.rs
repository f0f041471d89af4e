//! One-time use: a token accepted once is refused for the rest of its acceptance window.
//!
//! The core decides which marks a batch needs ([`MarkRequest`]) and how the store's answers
//! ([`MarkOutcome`]) become verdicts; a store performs the marks. [`ReplayGuard`] is the
//! in-memory store of one node; the shell has a shared one (Redis) for a fleet.
//!
//! `ReplayGuard`: sharded maps from replay id to expiry and [`Entry`], each with a FIFO of
//! insertions for expiry. An entry is never dropped before its expiry; memory is bounded by
//! the capacity (about rate × window), and when a shard is full of live entries new tokens are
//! refused (fail closed) rather than a live entry forgotten. Nothing else about the token is
//! kept, and nothing outlives its window.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

use gatehouse_protocol::Reason;
use parking_lot::Mutex;

const SHARDS: usize = 64;

/// What a one-time-use entry remembers besides its expiry: the first verdict's reason, and the
/// retry tag of the scan that made it (SPEC §8.6), so that scan's retry gets the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The reason of the first verdict.
    pub reason: Reason,
    /// `retry_tag(scanner, retry key)` of the first scan, if it carried a retry key.
    pub retry: Option<[u8; 16]>,
}

impl Entry {
    /// Encoded length.
    pub const LEN: usize = 19;
    const VERSION: u8 = 1;

    /// The bytes a shared store keeps: version 1, reason code, 1 if a tag follows (else 0),
    /// then 16 tag bytes (zero when none).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = Self::VERSION;
        b[1] = self.reason.code();
        if let Some(tag) = self.retry {
            b[2] = 1;
            b[3..].copy_from_slice(&tag);
        }
        b
    }

    /// Reads stored bytes. Anything unreadable is an entry no retry matches, so the token is
    /// `replayed`: a used token is never reopened by a value this version does not know.
    pub fn decode(b: &[u8]) -> Entry {
        let unknown = Entry {
            reason: Reason::Replayed,
            retry: None,
        };
        if b.len() != Self::LEN || b[0] != Self::VERSION || b[2] > 1 {
            return unknown;
        }
        let Some(reason) = Reason::from_code(u64::from(b[1])) else {
            return unknown;
        };
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&b[3..]);
        Entry {
            reason,
            retry: (b[2] == 1).then_some(tag),
        }
    }
}

/// One mark a batch needs: `replay_id` used until `expiry` (Unix seconds, exclusive), keeping
/// `entry`, unless it is already used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkRequest {
    /// The token's replay id (a hash: no personal data).
    pub replay_id: [u8; 16],
    /// When the entry may be forgotten.
    pub expiry: u64,
    /// What the entry keeps.
    pub entry: Entry,
}

/// What the store answered for one [`MarkRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkOutcome {
    /// First use: the entry was stored.
    Fresh,
    /// Already used within its window; this is the entry the first use stored.
    Taken(Entry),
    /// The store is full of live entries: refuse (fail closed).
    Full,
    /// The store could not answer (unreachable, too slow): refuse (fail closed).
    Unavailable,
}

/// Result of marking a token used in a [`ReplayGuard`] (without entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// First use: the token may be accepted.
    Fresh,
    /// Already used within its window.
    Replayed,
    /// The table is full of live entries: refuse (fail closed).
    Full,
}

#[derive(Default)]
struct Shard {
    live: HashMap<[u8; 16], (u64, Entry)>,
    order: VecDeque<(u64, [u8; 16])>,
}

impl Shard {
    fn purge(&mut self, now: u64) {
        while let Some(&(expiry, id)) = self.order.front() {
            if expiry > now {
                break;
            }
            self.order.pop_front();
            if self.live.get(&id).map(|e| e.0) == Some(expiry) {
                self.live.remove(&id);
            }
        }
    }
}

/// The one-time-use table.
pub struct ReplayGuard {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    len: AtomicUsize,
}

impl ReplayGuard {
    /// A table for at most about `capacity` live tokens.
    pub fn new(capacity: usize) -> Self {
        ReplayGuard {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            len: AtomicUsize::new(0),
        }
    }

    /// Marks `id` used until `expiry` (Unix seconds, exclusive) if it is not already.
    pub fn mark(&self, id: &[u8; 16], expiry: u64, now: u64) -> Mark {
        let entry = Entry {
            reason: Reason::Accepted,
            retry: None,
        };
        match self.mark_entry(id, expiry, entry, now) {
            MarkOutcome::Fresh => Mark::Fresh,
            MarkOutcome::Taken(_) => Mark::Replayed,
            MarkOutcome::Full | MarkOutcome::Unavailable => Mark::Full,
        }
    }

    /// Performs the marks of a batch, in order.
    pub fn mark_all(&self, marks: &[MarkRequest], now: u64) -> Vec<MarkOutcome> {
        marks
            .iter()
            .map(|m| self.mark_entry(&m.replay_id, m.expiry, m.entry, now))
            .collect()
    }

    /// Marks `id` used until `expiry`, keeping `entry`, if it is not already; if it is, the
    /// entry its first use stored.
    pub fn mark_entry(&self, id: &[u8; 16], expiry: u64, entry: Entry, now: u64) -> MarkOutcome {
        let mut s = self.shards[usize::from(id[0]) % SHARDS].lock();
        let before = s.live.len();
        if let Some(&(e, first)) = s.live.get(id) {
            if e > now {
                return MarkOutcome::Taken(first);
            }
        }
        if s.live.len() >= self.per_shard {
            s.purge(now);
        }
        let after_purge = s.live.len();
        let result = if after_purge >= self.per_shard {
            MarkOutcome::Full
        } else {
            s.live.insert(*id, (expiry, entry));
            s.order.push_back((expiry, *id));
            MarkOutcome::Fresh
        };
        let after = s.live.len();
        drop(s);
        if after >= before {
            self.len.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.len.fetch_sub(before - after, Ordering::Relaxed);
        }
        result
    }

    /// Drops every expired entry (the engine calls this periodically, so memory falls back
    /// after a rush even without new traffic).
    pub fn purge(&self, now: u64) {
        for s in self.shards.iter() {
            let mut s = s.lock();
            let before = s.live.len();
            s.purge(now);
            let removed = before - s.live.len();
            self.len.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    /// Live entries (approximately, while inserts run).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_unknown_bytes_stay_used() {
        for e in [
            Entry {
                reason: Reason::Accepted,
                retry: Some([7; 16]),
            },
            Entry {
                reason: Reason::NotAdmitted,
                retry: None,
            },
        ] {
            assert_eq!(Entry::decode(&e.encode()), e);
        }
        let replayed = Entry {
            reason: Reason::Replayed,
            retry: None,
        };
        let good = Entry {
            reason: Reason::Accepted,
            retry: Some([7; 16]),
        }
        .encode();
        assert_eq!(Entry::decode(&[]), replayed);
        assert_eq!(Entry::decode(&good[..18]), replayed);
        let mut v2 = good;
        v2[0] = 2;
        assert_eq!(Entry::decode(&v2), replayed);
        let mut bad_reason = good;
        bad_reason[1] = 250;
        assert_eq!(Entry::decode(&bad_reason), replayed);
    }

    #[test]
    fn a_taken_mark_returns_the_first_entry() {
        let g = ReplayGuard::new(1000);
        let first = Entry {
            reason: Reason::NotEligible,
            retry: Some([1; 16]),
        };
        let second = Entry {
            reason: Reason::Accepted,
            retry: Some([2; 16]),
        };
        assert_eq!(g.mark_entry(&id(9), 130, first, 100), MarkOutcome::Fresh);
        assert_eq!(
            g.mark_entry(&id(9), 130, second, 101),
            MarkOutcome::Taken(first)
        );
    }

    fn id(n: u32) -> [u8; 16] {
        let mut i = [0u8; 16];
        i[..4].copy_from_slice(&n.to_le_bytes());
        i
    }

    #[test]
    fn a_token_is_fresh_once_then_replayed_until_expiry() {
        let g = ReplayGuard::new(1000);
        assert_eq!(g.mark(&id(1), 130, 100), Mark::Fresh);
        assert_eq!(g.mark(&id(1), 130, 101), Mark::Replayed);
        assert_eq!(g.mark(&id(1), 130, 129), Mark::Replayed);
        // After its window the id may be seen again (and is then fresh, for its new window).
        assert_eq!(g.mark(&id(1), 160, 130), Mark::Fresh);
    }

    #[test]
    fn when_full_of_live_entries_it_fails_closed_then_recovers_after_expiry() {
        let g = ReplayGuard::new(64 * 4);
        let mut full = 0;
        for n in 0..10_000 {
            match g.mark(&id(n), 200, 100) {
                Mark::Fresh => {}
                Mark::Full => full += 1,
                Mark::Replayed => panic!("distinct ids"),
            }
        }
        assert!(g.len() <= g.capacity());
        assert!(full > 9_000);
        // Live entries were not forgotten to make room.
        assert_eq!(g.mark(&id(0), 200, 150), Mark::Replayed);
        // Once they expire, room comes back.
        assert_eq!(g.mark(&id(50_000), 300, 200), Mark::Fresh);
        g.purge(200);
        assert!(g.len() <= 1);
    }
}
