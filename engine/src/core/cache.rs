//! The issuer-signature cache: a credential's issuer signature is checked once and the result
//! (with the decoded device key, which costs a square root to decompress) remembered under the
//! SHA-256 of the credential's bytes.
//!
//! Sharded by the digest's first byte, each shard a two-generation map: lookups see both
//! generations, inserts go to the young one, and when it is full the old one is dropped. Memory
//! is bounded by the capacity, eviction is O(1), and anything used recently survives a turnover.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse_protocol::PublicKey;
use parking_lot::Mutex;

const SHARDS: usize = 64;

/// What a verified credential leaves behind.
#[derive(Clone, Debug)]
pub struct CachedCredential {
    /// The holder's device key, validated and decompressed.
    pub device_key: PublicKey,
    /// The issuer key id whose signature was verified.
    pub issuer_kid: [u8; 8],
}

#[derive(Default)]
struct Shard {
    young: HashMap<[u8; 32], CachedCredential>,
    old: HashMap<[u8; 32], CachedCredential>,
}

/// Bounded, sharded cache of verified credentials.
pub struct IssuerCache {
    shards: Box<[Mutex<Shard>]>,
    per_generation: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl IssuerCache {
    /// A cache holding at most about `capacity` credentials.
    pub fn new(capacity: usize) -> Self {
        let per_generation = (capacity / SHARDS / 2).max(1);
        IssuerCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_generation,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, digest: &[u8; 32]) -> &Mutex<Shard> {
        &self.shards[usize::from(digest[0]) % SHARDS]
    }

    /// The cached entry for a credential digest.
    pub fn get(&self, digest: &[u8; 32]) -> Option<CachedCredential> {
        let mut s = self.shard(digest).lock();
        let found = match s.young.get(digest) {
            Some(c) => Some(c.clone()),
            None => {
                // Promote from the old generation so a busy credential is not evicted.
                let c = s.old.remove(digest);
                if let Some(c) = &c {
                    Self::insert_locked(&mut s, self.per_generation, *digest, c.clone());
                }
                c
            }
        };
        drop(s);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Remembers a verified credential.
    pub fn insert(&self, digest: [u8; 32], entry: CachedCredential) {
        let mut s = self.shard(&digest).lock();
        Self::insert_locked(&mut s, self.per_generation, digest, entry);
    }

    fn insert_locked(s: &mut Shard, cap: usize, digest: [u8; 32], entry: CachedCredential) {
        if s.young.len() >= cap && !s.young.contains_key(&digest) {
            s.old = std::mem::take(&mut s.young);
        }
        s.young.insert(digest, entry);
    }

    /// Drops everything (after a trust-list change, so a retired key's credentials are checked
    /// again).
    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.lock();
            s.young.clear();
            s.old.clear();
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.young.len() + s.old.len()
            })
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (hits, misses) since start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_protocol::PrivateKey;

    fn entry() -> CachedCredential {
        let k = PrivateKey::from_bytes(&[3; 32]).unwrap();
        CachedCredential {
            device_key: k.public().clone(),
            issuer_kid: [1; 8],
        }
    }

    fn digest(n: u32) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&n.to_le_bytes());
        d
    }

    #[test]
    fn stays_bounded_and_keeps_what_is_used() {
        let c = IssuerCache::new(1280);
        let e = entry();
        c.insert(digest(0), e.clone());
        for n in 1..100_000 {
            c.insert(digest(n), e.clone());
            // Keep one entry busy: it must survive every turnover.
            assert!(c.get(&digest(0)).is_some(), "evicted at {n}");
        }
        assert!(c.len() <= 1280, "{} entries", c.len());
        assert!(c.get(&digest(5)).is_none());
        let (hits, misses) = c.stats();
        assert_eq!((hits, misses), (99_999, 1));
        c.clear();
        assert!(c.is_empty());
    }
}
