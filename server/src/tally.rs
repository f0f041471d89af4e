//! How much of something each key holds, with a cap per key: handshakes per source address and
//! connections per scanner (admission), tokens in flight per scanner (the queue). A key holding
//! none has no entry, so the map is as large as the keys in use, never larger.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

type Held<K> = Arc<Mutex<HashMap<K, usize>>>;

/// Per-key amounts in use.
pub(crate) struct Tally<K>(Held<K>);

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Tally(Arc::default())
    }
}

impl<K: Hash + Eq + Clone> Tally<K> {
    /// Takes `n` for `key` if that keeps it within `max`, or if it holds none yet (so one
    /// request larger than the cap still makes progress when nothing else of its key is in
    /// flight); `None`, nothing taken, otherwise.
    pub fn try_take(&self, key: &K, n: usize, max: usize) -> Option<Taken<K>> {
        let mut m = self.0.lock();
        match m.get_mut(key) {
            Some(held) if *held > 0 && held.saturating_add(n) > max => return None,
            Some(held) => *held += n,
            None => {
                m.insert(key.clone(), n);
            }
        }
        Some(Taken {
            held: Arc::clone(&self.0),
            key: key.clone(),
            n,
        })
    }

    /// What `key` holds now.
    pub fn held<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().get(key).copied().unwrap_or(0)
    }

    /// Keys holding something.
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.0.lock().len()
    }
}

/// An amount taken for one key, given back when dropped.
pub(crate) struct Taken<K: Hash + Eq> {
    held: Held<K>,
    key: K,
    n: usize,
}

impl<K: Hash + Eq + Clone> Taken<K> {
    /// `n` of this amount as one of its own, given back on its own.
    pub fn split(&mut self, n: usize) -> Taken<K> {
        let n = n.min(self.n);
        self.n -= n;
        Taken {
            held: Arc::clone(&self.held),
            key: self.key.clone(),
            n,
        }
    }
}

impl<K: Hash + Eq> Drop for Taken<K> {
    fn drop(&mut self) {
        if self.n == 0 {
            return;
        }
        let mut m = self.held.lock();
        if let Some(held) = m.get_mut(&self.key) {
            *held = held.saturating_sub(self.n);
            if *held == 0 {
                m.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_up_to_its_cap_and_what_it_gave_back() {
        let t = Tally::<&str>::default();
        let a = t.try_take(&"gate", 3, 4).unwrap();
        assert!(t.try_take(&"gate", 2, 4).is_none(), "3 + 2 > 4");
        let b = t.try_take(&"gate", 1, 4).unwrap();
        assert_eq!(t.held("gate"), 4);
        assert!(
            t.try_take(&"other", 4, 4).is_some(),
            "keys are capped apart"
        );
        drop(a);
        assert_eq!(t.held("gate"), 1);
        drop(b);
        assert_eq!(t.keys(), 0, "no entry for a key holding none");
    }

    #[test]
    fn a_key_holding_none_takes_even_more_than_its_cap() {
        let t = Tally::<u8>::default();
        let big = t.try_take(&1, 10, 4).unwrap();
        assert!(t.try_take(&1, 1, 4).is_none());
        drop(big);
        assert!(t.try_take(&1, 1, 4).is_some());
    }

    #[test]
    fn split_parts_are_given_back_on_their_own() {
        let t = Tally::<u8>::default();
        let mut whole = t.try_take(&1, 5, 8).unwrap();
        let part = whole.split(2);
        assert_eq!(t.held(&1), 5);
        drop(part);
        assert_eq!(t.held(&1), 3);
        let rest = whole.split(10);
        drop(whole);
        assert_eq!(t.held(&1), 3, "the emptied whole gives back nothing");
        drop(rest);
        assert_eq!(t.keys(), 0);
    }
}
