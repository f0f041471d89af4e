//! The one-time-use fence: the moment before which a node cannot vouch for one-time use.
//!
//! A token accepted at time `a` (the accepting node's clock) carries a timestamp of at most
//! `a + skew`. So when a node learns, at `now`, that the records of one-time use it relies on
//! may be gone — it restarted on a memory table, or the shared store it marks in lost data,
//! was replaced by another server, or was failed over to a replica that missed writes — every
//! token that could have been accepted before that loss has a timestamp of at most
//! `now + skew`. Those tokens are denied `node_restarted` (22); the holder's next token (a
//! wallet rotates every 15 s) is judged normally. The fence only moves forward.
//!
//! A shared store shows its **life** with every mark (SPEC §6 step 7, README "fleet mode"): an
//! identifier that changes whenever the store may have forgotten, and the fence its first
//! observer set. [`LifeBook`] remembers the life of each shard (one for a single server or a
//! Sentinel-managed primary, one per hash slot on a Redis Cluster) and says how far the fence
//! must move. It is pure: no clock, no IO.

use std::collections::HashMap;

use parking_lot::Mutex;

/// The fence of a node that starts on a memory table at `start` (Unix seconds) with a clock
/// skew allowance of `skew_secs`: the first timestamp it may accept. A token accepted by the
/// process it replaces, in the second of the restart, carries a timestamp of at most
/// `start + skew`.
pub fn restart_fence(start: u64, skew_secs: u64) -> u64 {
    start.saturating_add(skew_secs).saturating_add(1)
}

/// What a shared store showed of its life, for one shard, on the round trip of a mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Life {
    /// The shard (0 for a single server; the hash slot on a Redis Cluster).
    pub shard: u16,
    /// Changes whenever the shard may have forgotten marks (a new process, a promoted replica,
    /// a wiped data set).
    pub id: String,
    /// The last timestamp the observer that started this life could not vouch for: tokens
    /// with a timestamp at or before it are denied.
    pub fence: u64,
}

/// What [`LifeBook::observe`] concluded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// The first timestamp that may be accepted from now on, when the fence must move.
    pub accept_from: Option<u64>,
    /// Shards whose life changed since this node last saw them.
    pub changes: u32,
}

/// The lives of a store's shards as this node last saw them.
#[derive(Debug)]
pub struct LifeBook {
    skew_secs: u64,
    known: Mutex<HashMap<u16, String>>,
}

impl LifeBook {
    /// A book for a node that allows `skew_secs` of clock skew.
    pub fn new(skew_secs: u64) -> Self {
        LifeBook {
            skew_secs,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the lives a round trip showed, at `now` (Unix seconds).
    ///
    /// - A shard seen for the first time: this node accepted nothing there yet, but other
    ///   nodes may have, before the life began; the life's own fence applies.
    /// - A shard whose life changed: whatever this node or any other accepted there may be
    ///   forgotten, so the fence moves to `now + skew` (or the life's fence, if later).
    /// - The same life: nothing moves.
    pub fn observe(&self, lives: &[Life], now: u64) -> Observed {
        let mut out = Observed::default();
        let mut fence: Option<u64> = None;
        let mut known = self.known.lock();
        for life in lives {
            let last_unvouched = match known.get(&life.shard) {
                Some(id) if *id == life.id => continue,
                Some(_) => {
                    out.changes += 1;
                    now.saturating_add(self.skew_secs).max(life.fence)
                }
                None => life.fence,
            };
            known.insert(life.shard, life.id.clone());
            fence = Some(fence.map_or(last_unvouched, |f| f.max(last_unvouched)));
        }
        out.accept_from = fence.map(|f| f.saturating_add(1));
        out
    }

    /// Shards whose life this node knows.
    pub fn len(&self) -> usize {
        self.known.lock().len()
    }

    /// Whether no shard's life is known yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(shard: u16, id: &str, fence: u64) -> Life {
        Life {
            shard,
            id: id.into(),
            fence,
        }
    }

    #[test]
    fn the_restart_fence_covers_a_phone_clock_ahead_by_the_skew() {
        // Accepted in the restart's second by a phone 5 s ahead: timestamp start + 5.
        assert_eq!(restart_fence(1000, 5), 1006);
        assert_eq!(restart_fence(u64::MAX, 5), u64::MAX);
    }

    #[test]
    fn a_first_life_brings_its_own_fence_and_the_same_life_moves_nothing() {
        let b = LifeBook::new(5);
        let o = b.observe(&[life(0, "a", 990)], 1000);
        assert_eq!(o.accept_from, Some(991));
        assert_eq!(o.changes, 0);
        assert_eq!(b.observe(&[life(0, "a", 990)], 1010), Observed::default());
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_changed_life_fences_now_plus_skew_or_the_life_fence_if_later() {
        let b = LifeBook::new(5);
        b.observe(&[life(0, "a", 0)], 1000);
        let o = b.observe(&[life(0, "b", 0)], 1020);
        assert_eq!(o.accept_from, Some(1026));
        assert_eq!(o.changes, 1);
        // Another node started the life later than this one noticed it: the later fence.
        let o = b.observe(&[life(0, "c", 1100)], 1030);
        assert_eq!(o.accept_from, Some(1101));
    }

    #[test]
    fn shards_are_tracked_apart_and_the_latest_fence_of_a_round_trip_wins() {
        let b = LifeBook::new(5);
        b.observe(&[life(1, "x", 0), life(2, "y", 0)], 1000);
        let o = b.observe(
            &[life(1, "x", 0), life(2, "y2", 0), life(3, "z", 1500)],
            1200,
        );
        assert_eq!(o.changes, 1);
        assert_eq!(o.accept_from, Some(1501));
        assert_eq!(b.len(), 3);
    }
}
