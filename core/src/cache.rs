//! The issuer-signature cache: a credential's issuer signature is checked once and the result
//! (with the decoded device key, which costs a square root to decompress) remembered under the
//! SHA-256 of the credential's bytes.
//!
//! Sized for the whole population: a credential is valid for a year while its tokens live 30
//! seconds, so a node that keeps every credential it has verified finds, by the next morning's
//! rush, nearly every credential already checked, and a fresh token costs one verification
//! instead of two. To hold 1,000,000 credentials inside the memory target the cache is packed:
//! a fixed table of 88-byte slots allocated once (no per-entry allocation, no hash-map
//! slack), 8-way set-associative, with CLOCK eviction inside a set (an entry used since the
//! hand last passed survives). A slot holds the first 16 bytes of the digest (finding another
//! credential with the same 128-bit prefix as a cached one is a second preimage on SHA-256,
//! 2¹²⁸ work), the device key's affine coordinates (64 bytes: no square root on a hit) and the
//! issuer key id. Sets are grouped into shards, one lock each.

use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse_protocol::PublicKey;
use parking_lot::Mutex;

const SHARDS: usize = 256;
/// Slots per set.
const WAYS: usize = 8;
/// Digest bytes kept to recognise a credential.
const TAG_LEN: usize = 16;

/// What a verified credential leaves behind.
#[derive(Clone, Debug)]
pub struct CachedCredential {
    /// The holder's device key, validated and decompressed.
    pub device_key: PublicKey,
    /// The issuer key id whose signature was verified.
    pub issuer_kid: [u8; 8],
}

/// One remembered credential: 16 + 64 + 8 = 88 bytes.
#[derive(Clone, Copy)]
struct Slot {
    tag: [u8; TAG_LEN],
    /// The device key's x ‖ y (SEC1 uncompressed without its 04 prefix).
    point: [u8; 64],
    issuer_kid: [u8; 8],
}

const EMPTY_SLOT: Slot = Slot {
    tag: [0; TAG_LEN],
    point: [0; 64],
    issuer_kid: [0; 8],
};

#[derive(Clone, Copy)]
struct Set {
    slots: [Slot; WAYS],
    /// Bit i: slot i holds an entry.
    used: u8,
    /// Bit i: slot i was read since the CLOCK hand last passed it.
    referenced: u8,
    /// Where the CLOCK hand stands.
    hand: u8,
}

const EMPTY_SET: Set = Set {
    slots: [EMPTY_SLOT; WAYS],
    used: 0,
    referenced: 0,
    hand: 0,
};

impl Set {
    fn find(&self, tag: &[u8]) -> Option<usize> {
        (0..WAYS).find(|&i| self.used & (1 << i) != 0 && self.slots[i].tag == tag)
    }

    /// The slot a new entry takes: a free one, else the first the CLOCK hand finds
    /// unreferenced (clearing the references it passes).
    fn victim(&mut self) -> usize {
        if self.used != u8::MAX {
            return self.used.trailing_ones() as usize;
        }
        for _ in 0..WAYS {
            let i = usize::from(self.hand);
            self.hand = ((i + 1) % WAYS) as u8;
            if self.referenced & (1 << i) == 0 {
                return i;
            }
            self.referenced &= !(1 << i);
        }
        // Every slot was referenced: the hand has cleared them all and stands where it began.
        let i = usize::from(self.hand);
        self.hand = ((i + 1) % WAYS) as u8;
        i
    }
}

/// Bounded, sharded cache of verified credentials.
pub struct IssuerCache {
    shards: Box<[Mutex<Box<[Set]>>]>,
    sets_per_shard: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl IssuerCache {
    /// A cache holding at most `capacity` credentials (rounded up to a whole number of sets
    /// per shard); its memory, about 89 bytes a credential, is allocated here, once.
    pub fn new(capacity: usize) -> Self {
        let sets_per_shard = capacity.div_ceil(WAYS * SHARDS).max(1);
        IssuerCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(vec![EMPTY_SET; sets_per_shard].into_boxed_slice()))
                .collect(),
            sets_per_shard,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Slots in all.
    pub fn capacity(&self) -> usize {
        SHARDS * self.sets_per_shard * WAYS
    }

    /// The shard and the set within it: from digest bytes the tag does not use, so the tag
    /// stays independent of where it is stored.
    fn locate(&self, digest: &[u8; 32]) -> (&Mutex<Box<[Set]>>, usize) {
        let mut b = [0u8; 8];
        b.copy_from_slice(&digest[TAG_LEN..TAG_LEN + 8]);
        let h = u64::from_le_bytes(b);
        let shard = (h % SHARDS as u64) as usize;
        let set = ((h / SHARDS as u64) % self.sets_per_shard as u64) as usize;
        (&self.shards[shard], set)
    }

    /// The cached entry for a credential digest.
    pub fn get(&self, digest: &[u8; 32]) -> Option<CachedCredential> {
        let (shard, set) = self.locate(digest);
        let found = {
            let mut sets = shard.lock();
            let s = &mut sets[set];
            s.find(&digest[..TAG_LEN]).map(|i| {
                s.referenced |= 1 << i;
                s.slots[i]
            })
        };
        let found = found.and_then(|slot| {
            let mut sec1 = [0u8; 65];
            sec1[0] = 0x04;
            sec1[1..].copy_from_slice(&slot.point);
            // The point was validated when it was cached; decoding checks it again (a few
            // field multiplications), which a corrupted slot would fail: then it is a miss.
            let device_key = PublicKey::from_sec1(&sec1).ok()?;
            Some(CachedCredential {
                device_key,
                issuer_kid: slot.issuer_kid,
            })
        });
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
        let mut slot = Slot {
            tag: [0; TAG_LEN],
            point: [0; 64],
            issuer_kid: entry.issuer_kid,
        };
        slot.tag.copy_from_slice(&digest[..TAG_LEN]);
        slot.point
            .copy_from_slice(&entry.device_key.uncompressed()[1..]);
        let (shard, set) = self.locate(&digest);
        let mut sets = shard.lock();
        let s = &mut sets[set];
        let i = match s.find(&slot.tag) {
            Some(i) => i,
            None => s.victim(),
        };
        s.slots[i] = slot;
        s.used |= 1 << i;
        s.referenced &= !(1 << i);
    }

    /// Drops everything (after a trust-list change, so a retired key's credentials are checked
    /// again).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            for s in shard.lock().iter_mut() {
                s.used = 0;
                s.referenced = 0;
            }
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .iter()
                    .map(|s| s.used.count_ones() as usize)
                    .sum::<usize>()
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

    /// A digest as SHA-256 would spread it (the cache indexes by its bytes).
    fn digest(n: u32) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(n.to_le_bytes()).into()
    }

    #[test]
    fn stays_bounded_and_keeps_what_is_used() {
        let c = IssuerCache::new(4096);
        assert_eq!(c.capacity(), 4096);
        let e = entry();
        c.insert(digest(0), e.clone());
        for n in 1..100_000 {
            c.insert(digest(n), e.clone());
            // Keep one entry busy: it must survive every turnover of its set.
            assert!(c.get(&digest(0)).is_some(), "evicted at {n}");
        }
        assert!(c.len() <= 4096, "{} entries", c.len());
        assert!(c.get(&digest(5)).is_none());
        let (hits, misses) = c.stats();
        assert_eq!((hits, misses), (99_999, 1));
        c.clear();
        assert!(c.is_empty());
        assert!(c.get(&digest(0)).is_none());
    }

    #[test]
    fn returns_what_was_stored_and_tells_credentials_apart() {
        let c = IssuerCache::new(1 << 16);
        let keys: Vec<PrivateKey> = (1..=8u8)
            .map(|i| PrivateKey::from_bytes(&[i; 32]).unwrap())
            .collect();
        for n in 0..40_000u32 {
            let k = &keys[n as usize % keys.len()];
            c.insert(
                digest(n),
                CachedCredential {
                    device_key: k.public().clone(),
                    issuer_kid: [n as u8; 8],
                },
            );
        }
        let mut held = 0;
        for n in 0..40_000u32 {
            if let Some(hit) = c.get(&digest(n)) {
                held += 1;
                assert_eq!(&hit.device_key, keys[n as usize % keys.len()].public());
                assert_eq!(hit.issuer_kid, [n as u8; 8]);
            }
        }
        // 40,000 credentials in 65,536 slots: a set overflows only by bad luck.
        assert!(held > 39_000, "{held} of 40,000 held");
        // Re-inserting a credential updates it in place rather than taking a second slot.
        let before = c.len();
        c.insert(
            digest(7),
            CachedCredential {
                device_key: keys[0].public().clone(),
                issuer_kid: [0xee; 8],
            },
        );
        assert_eq!(c.len(), before);
        assert_eq!(c.get(&digest(7)).unwrap().issuer_kid, [0xee; 8]);
        // A digest differing only outside the tag and the index bytes is the same slot's
        // credential only if the tag matches: flip a tag byte and it is a miss.
        let mut other = digest(9);
        other[0] ^= 1;
        assert!(c.get(&other).is_none());
    }
}
