//! One-time use: a token accepted once is refused for the rest of its acceptance window.
//!
//! Sharded maps from replay id to expiry, each with a FIFO of insertions for expiry. An entry is
//! never dropped before its expiry; memory is bounded by the capacity (about rate × window),
//! and when a shard is full of live entries new tokens are refused (fail closed) rather than a
//! live entry forgotten. Nothing else about the token is kept, and nothing outlives its window.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

const SHARDS: usize = 64;

/// Result of marking a token used.
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
    live: HashMap<[u8; 16], u64>,
    order: VecDeque<(u64, [u8; 16])>,
}

impl Shard {
    fn purge(&mut self, now: u64) {
        while let Some(&(expiry, id)) = self.order.front() {
            if expiry > now {
                break;
            }
            self.order.pop_front();
            if self.live.get(&id) == Some(&expiry) {
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
        let mut s = self.shards[usize::from(id[0]) % SHARDS].lock();
        let before = s.live.len();
        if let Some(&e) = s.live.get(id) {
            if e > now {
                return Mark::Replayed;
            }
        }
        if s.live.len() >= self.per_shard {
            s.purge(now);
        }
        let after_purge = s.live.len();
        let result = if after_purge >= self.per_shard {
            Mark::Full
        } else {
            s.live.insert(*id, expiry);
            s.order.push_back((expiry, *id));
            Mark::Fresh
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
