//! The batch equation against the single checks on more than 100,000 signatures: valid ones and
//! every kind of mutation (flipped bits in the message, r or s; high s; r or s zero or ≥ n; the
//! wrong parity; the wrong key), in random batch compositions of 1 to 128 members, distinct keys
//! and shared ones mixed.
//!
//! The equation is tested alone here, with no fallback: a batch must verify exactly when every
//! member passes the strict single check (`verify_strict`), and a verified batch must also pass
//! the default check (`verify`) member by member. So a verifier that always fails, or always
//! holds, fails this test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use gatehouse_batch::{verify_batch, Entry};
use gatehouse_protocol::{verify, verify_strict, Backend, PrivateKey, PublicKey, Signature};

/// The group order n, big-endian.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone)]
struct Signed {
    key: PublicKey,
    msg: Vec<u8>,
    sig: Signature,
}

/// s → n − s (and the parity flipped): the same signature in its high-s form.
fn high_s(sig: &mut Signature) {
    let mut borrow = 0i16;
    let mut out = [0u8; 32];
    for i in (0..32).rev() {
        let d = i16::from(ORDER[i]) - i16::from(sig.rs[32 + i]) - borrow;
        out[i] = d.rem_euclid(256) as u8;
        borrow = i16::from(d < 0);
    }
    sig.rs[32..].copy_from_slice(&out);
    sig.y_odd = !sig.y_odd;
}

const MUTATIONS: usize = 12;

/// Applies mutation `m` (0: none). Returns its name.
fn mutate(s: &mut Signed, m: usize, rng: &mut Rng, other_key: &PublicKey) -> &'static str {
    match m {
        0 => "none",
        1 => {
            let i = rng.below(s.msg.len());
            s.msg[i] ^= 1 << rng.below(8);
            "message bit"
        }
        2 => {
            s.sig.rs[rng.below(32)] ^= 1 << rng.below(8);
            "r bit"
        }
        3 => {
            s.sig.rs[32 + rng.below(32)] ^= 1 << rng.below(8);
            "s bit"
        }
        4 => {
            high_s(&mut s.sig);
            "high s"
        }
        5 => {
            s.sig.rs[..32].fill(0);
            "r zero"
        }
        6 => {
            s.sig.rs[32..].fill(0);
            "s zero"
        }
        7 => {
            s.sig.rs[..32].copy_from_slice(&ORDER);
            s.sig.rs[31] = s.sig.rs[31].wrapping_add(rng.below(3) as u8);
            "r ≥ n"
        }
        8 => {
            s.sig.rs[32..].copy_from_slice(&ORDER);
            "s = n"
        }
        9 => {
            s.sig.y_odd = !s.sig.y_odd;
            "wrong parity"
        }
        10 => {
            s.key = other_key.clone();
            "wrong key"
        }
        _ => {
            s.msg.push(rng.next() as u8);
            "message extended"
        }
    }
}

#[test]
fn over_100k_signatures_in_random_batches_agree_with_the_single_checks() {
    let seed = 0x5eed_ba7c_4000_0001u64;
    let mut rng = Rng(seed);
    // 64 keys, 2,048 valid signatures: every batch draws from them (so some share keys).
    let keys: Vec<PrivateKey> = (0..64u32)
        .map(|i| {
            let mut k = [0u8; 32];
            k[0] = 1;
            k[28..].copy_from_slice(&(i + 11).to_be_bytes());
            PrivateKey::from_bytes(&k).unwrap()
        })
        .collect();
    let pool: Vec<Signed> = (0..2048usize)
        .map(|i| {
            let key = &keys[i % keys.len()];
            let msg: Vec<u8> = (0..16 + i % 48).map(|_| rng.next() as u8).collect();
            let sig = key.sign(&msg).unwrap();
            Signed {
                key: key.public().clone(),
                msg,
                sig,
            }
        })
        .collect();

    let (mut signatures, mut batches, mut held, mut failed) = (0usize, 0usize, 0usize, 0usize);
    let mut seen = [0usize; MUTATIONS];
    while signatures < 100_000 {
        let n = 1 + rng.below(128);
        // Most batches are all valid (the rush); the rest carry one to three bad members.
        let bad = if rng.below(3) == 0 {
            1 + rng.below(3)
        } else {
            0
        };
        let mut batch: Vec<Signed> = (0..n)
            .map(|_| pool[rng.below(pool.len())].clone())
            .collect();
        let mut what = Vec::new();
        for _ in 0..bad {
            let at = rng.below(n);
            let m = 1 + rng.below(MUTATIONS - 1);
            let other = keys[rng.below(keys.len())].public().clone();
            what.push((at, mutate(&mut batch[at], m, &mut rng, &other)));
            seen[m] += 1;
        }
        let entries: Vec<Entry<'_>> = batch
            .iter()
            .map(|s| Entry {
                key: &s.key,
                msg: &s.msg,
                sig: &s.sig,
            })
            .collect();
        let strict = batch
            .iter()
            .all(|s| verify_strict(&s.key, &s.msg, &s.sig).is_ok());
        let equation = verify_batch(&entries).is_ok();
        assert_eq!(
            equation, strict,
            "seed {seed:#x}, batch {batches} of {n}, mutations {what:?}: equation {equation}, \
             strict single checks {strict}"
        );
        if equation {
            held += 1;
            for s in &batch {
                assert!(
                    verify(Backend::Ring, &s.key, &s.msg, &s.sig).is_ok(),
                    "seed {seed:#x}, batch {batches}: a verified batch holds a member the \
                     default check denies"
                );
            }
        } else {
            failed += 1;
        }
        signatures += n;
        batches += 1;
    }
    assert!(signatures >= 100_000);
    // Both outcomes occurred many times, and every mutation was drawn.
    assert!(held > 200 && failed > 200, "held {held}, failed {failed}");
    assert!(
        seen[1..].iter().all(|&c| c > 20),
        "mutations drawn: {seen:?}"
    );
    eprintln!("{signatures} signatures in {batches} batches: {held} held, {failed} failed");
}

/// A key that is not a point on the curve cannot join a batch: it cannot be parsed.
#[test]
fn a_key_off_the_curve_is_refused_before_any_batch() {
    let key = PrivateKey::from_bytes(&[9; 32]).unwrap();
    let mut bytes = *key.public().uncompressed();
    assert!(PublicKey::from_sec1(&bytes).is_ok());
    bytes[64] ^= 1;
    assert!(PublicKey::from_sec1(&bytes).is_err());
}
