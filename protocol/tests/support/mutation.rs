//! What the robustness suites share (`protocol/tests/robustness.rs` and
//! `mdoc/tests/robustness.rs` include this file): a seeded SplitMix64, the mutation loop, the
//! byte-level mutations and the CBOR length-prefix tweak. Each suite's own `mutate_once` picks
//! among them and its own structure-aware operations, with its own interesting bytes.
#![allow(dead_code)]

use super::mutate_once;

/// A small seeded PRNG (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    pub fn one_in(&mut self, n: u64) -> bool {
        self.next() % n == 0
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// One to three mutations of `seed` (now and then up to ten more), each by the suite's own
/// `mutate_once`.
pub fn mutate(seed: &[u8], pool: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    let mut rounds = 1 + rng.below(3);
    if rng.one_in(8) {
        rounds += rng.below(8);
    }
    for _ in 0..rounds {
        mutate_once(&mut v, pool, rng);
    }
    v
}

/// One mutation of the kind `case` names: 0–1 a bit flip, 2 a random byte, 3 an interesting
/// byte, 4 a small arithmetic change, 5 a truncation, 6 an insertion, 7 a deletion, 8 a
/// duplicated range, 9 a length-prefix tweak, 10 a splice from `pool`, anything else (or a
/// case that needs bytes when `v` is empty) random bytes appended.
pub fn mutate_case(
    case: usize,
    v: &mut Vec<u8>,
    pool: &[Vec<u8>],
    interesting: &[u8],
    rng: &mut Rng,
) {
    let len = v.len();
    match case {
        0 | 1 if len > 0 => {
            let i = rng.below(len);
            v[i] ^= 1 << rng.below(8);
        }
        2 if len > 0 => {
            let i = rng.below(len);
            v[i] = rng.byte();
        }
        3 if len > 0 => {
            let i = rng.below(len);
            v[i] = *rng.pick(interesting);
        }
        4 if len > 0 => {
            let i = rng.below(len);
            let delta = [1u8, 255, 2, 254, 16, 240][rng.below(6)];
            v[i] = v[i].wrapping_add(delta);
        }
        5 => v.truncate(rng.below(len + 1)),
        6 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(4);
            let ins = rng.bytes(n);
            v.splice(at..at, ins);
        }
        7 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16)).min(len);
            v.drain(start..end);
        }
        8 if len > 0 => {
            // Duplicate a range somewhere.
            let start = rng.below(len);
            let end = (start + 1 + rng.below(48)).min(len);
            let copy = v[start..end].to_vec();
            let at = rng.below(len + 1);
            v.splice(at..at, copy);
        }
        9 => tweak_length_prefix(v, rng),
        10 => {
            // Splice a range of another seed over or into this one.
            let other = rng.pick(pool);
            if !other.is_empty() {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(64)).min(other.len());
                let piece = other[start..end].to_vec();
                let at = rng.below(len + 1);
                let over = if rng.one_in(2) {
                    piece.len().min(len - at)
                } else {
                    0
                };
                v.splice(at..at + over, piece);
            }
        }
        _ => {
            let n = 1 + rng.below(16);
            let tail = rng.bytes(n);
            v.extend_from_slice(&tail);
        }
    }
}

/// Finds a CBOR head of a byte string, text, array or map and changes its length: one more,
/// one less, a non-minimal longer form, or a reserved/indefinite length.
pub fn tweak_length_prefix(v: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..16 {
        if v.is_empty() {
            return;
        }
        let p = rng.below(v.len());
        let b = v[p];
        let (major, info) = (b >> 5, b & 0x1f);
        if !(2..=5).contains(&major) {
            continue;
        }
        let m = major << 5;
        match (info, rng.below(4)) {
            (0..=22, 0) => v[p] = m | (info + 1),
            (1..=23, 1) => v[p] = m | (info - 1),
            (0..=23, 2) => {
                // Same length, non-minimal head.
                v[p] = m | 24;
                v.insert(p + 1, info);
            }
            (24, 0 | 1) if p + 1 < v.len() => {
                v[p + 1] = v[p + 1].wrapping_add(if rng.one_in(2) { 1 } else { 255 })
            }
            (24, 2) if p + 1 < v.len() => {
                // Same length in a two-byte argument: non-minimal.
                v[p] = m | 25;
                v.insert(p + 1, 0);
            }
            (25, _) if p + 2 < v.len() => v[p + 2] = v[p + 2].wrapping_add(1),
            _ => v[p] = m | (24 + rng.below(8) as u8),
        }
        return;
    }
}
