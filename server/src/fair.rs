//! Deficit round robin over scanners: the order the batcher takes queued requests in.
//!
//! Each scanner with work waiting has its own FIFO; the scanners take turns, and each turn a
//! scanner may take up to `quantum` tokens' worth of requests (credit it does not use while it
//! still has work carries over to its next turn, so a request larger than the quantum goes after
//! a few turns). A scanner keeping hundreds of tokens queued therefore delays another scanner's
//! single token by at most one turn of each active scanner, not by its whole backlog. A
//! scanner's turn begins with its credit: one that arrives while another is being served is
//! served in the next turn, not credited on one pass and served on the one after.

use std::collections::{HashMap, VecDeque};

struct Lane<T> {
    items: VecDeque<(usize, T)>,
    deficit: usize,
    /// Whether this lane's current turn has had its quantum.
    credited: bool,
}

/// Items (each with a weight, in tokens) queued per key, taken out fairly.
pub(crate) struct Fair<T> {
    quantum: usize,
    lanes: HashMap<String, Lane<T>>,
    /// Keys with items, in turn order; the front one is being served.
    order: VecDeque<String>,
    len: usize,
}

impl<T> Fair<T> {
    /// An empty queue; a turn is worth `quantum` tokens (at least 1).
    pub fn new(quantum: usize) -> Self {
        Fair {
            quantum: quantum.max(1),
            lanes: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
        }
    }

    /// Items queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `item` of `weight` tokens behind the other items of `key`.
    pub fn push(&mut self, key: &str, weight: usize, item: T) {
        match self.lanes.get_mut(key) {
            Some(lane) => lane.items.push_back((weight, item)),
            None => {
                let mut items = VecDeque::new();
                items.push_back((weight, item));
                self.lanes.insert(
                    key.to_owned(),
                    Lane {
                        items,
                        deficit: 0,
                        credited: false,
                    },
                );
                self.order.push_back(key.to_owned());
            }
        }
        self.len += 1;
    }

    /// The next item in fair order.
    pub fn pop(&mut self) -> Option<T> {
        // Every turn of a lane adds a quantum to its credit, so the loop ends within (largest
        // weight / quantum + 1) turns of each lane.
        loop {
            let key = self.order.front()?;
            let Some(lane) = self.lanes.get_mut(key) else {
                // Not reachable (a key in `order` always has a lane); drop it rather than spin.
                self.order.pop_front();
                continue;
            };
            let Some(&(weight, _)) = lane.items.front() else {
                self.lanes.remove(key);
                self.order.pop_front();
                continue;
            };
            if !lane.credited {
                lane.credited = true;
                lane.deficit += self.quantum;
            }
            if lane.deficit >= weight {
                lane.deficit -= weight;
                let item = lane.items.pop_front().map(|(_, item)| item);
                if lane.items.is_empty() {
                    // An idle scanner keeps no credit.
                    if let Some(k) = self.order.pop_front() {
                        self.lanes.remove(&k);
                    }
                }
                self.len -= 1;
                return item;
            }
            // Its turn is over: the next one begins with a quantum.
            lane.credited = false;
            if let Some(k) = self.order.pop_front() {
                self.order.push_back(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_key_does_not_keep_another_waiting_behind_its_backlog() {
        let mut f = Fair::new(64);
        for i in 0..100 {
            f.push("flood", 128, ("flood", i));
        }
        f.push("gate", 1, ("gate", 0));
        let mut flood_before_gate = 0;
        while let Some((k, _)) = f.pop() {
            if k == "gate" {
                break;
            }
            flood_before_gate += 1;
        }
        assert!(
            flood_before_gate <= 1,
            "{flood_before_gate} flood requests went before the gate's"
        );
        assert_eq!(f.len(), 100 - flood_before_gate);
    }

    /// A scanner whose token arrives while a flood is being served goes in the next turn:
    /// one quantum of the flood ahead of it, not two. Before, a lane was credited on one pass
    /// and served on the next, so the newcomer waited while the flood, credited already, took
    /// a second turn (two pops of the flood here).
    #[test]
    fn a_key_that_arrives_while_another_is_served_goes_in_the_next_turn() {
        let mut f = Fair::new(8);
        for i in 0..16 {
            f.push("flood", 8, ("flood", i));
        }
        assert_eq!(f.pop(), Some(("flood", 0)));
        f.push("gate", 1, ("gate", 0));
        assert_eq!(f.pop(), Some(("gate", 0)));
        assert_eq!(f.pop(), Some(("flood", 1)));
        assert_eq!(f.len(), 14);
    }

    #[test]
    fn tokens_are_shared_equally_between_busy_keys_and_order_is_kept_per_key() {
        let mut f = Fair::new(16);
        for i in 0..64 {
            f.push("a", 8, ('a', i));
            f.push("b", 32, ('b', i));
        }
        let (mut a, mut b, mut last_a, mut last_b) = (0, 0, None, None);
        // The first 1024 tokens' worth: each key gets about half.
        while a * 8 + b * 32 < 1024 {
            match f.pop() {
                Some(('a', i)) => {
                    assert!(last_a < Some(i));
                    last_a = Some(i);
                    a += 1;
                }
                Some((_, i)) => {
                    assert!(last_b < Some(i));
                    last_b = Some(i);
                    b += 1;
                }
                None => break,
            }
        }
        let (ta, tb): (usize, usize) = (a * 8, b * 32);
        assert!(ta.abs_diff(tb) <= 64, "a got {ta} tokens, b {tb}");
        let mut rest = 0;
        while f.pop().is_some() {
            rest += 1;
        }
        assert_eq!(a + b + rest, 128);
        assert!(f.is_empty());
    }
}
