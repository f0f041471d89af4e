//! gatehouse-mb against `gatehouse_protocol::verify` (the non-strict check; the strict parity
//! check is not claimed), lane by lane.
//!
//! Tests that need the multi-buffer verifier check `status()` first: when it is not Ready they
//! assert that the reason is reported and return, unless `GATEHOUSE_REQUIRE_MB=1`, which turns
//! that into a failure (for a CI run that must exercise the library).
//! `GATEHOUSE_MB_SEED=<u64>` replays a differential run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_mb::{prove8, status, verify8, Lane, MbError, Status, LANES};
use gatehouse_protocol::{verify, Backend, PrivateKey, PublicKey, Signature};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::scalar::IsHigh;
use p256::elliptic_curve::PrimeField;
use p256::{ProjectivePoint, Scalar, U256};
use sha2::{Digest, Sha256};

/// The P-256 group order n, big-endian.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

fn required() -> bool {
    std::env::var("GATEHOUSE_REQUIRE_MB").is_ok_and(|v| v == "1")
}

/// True when the verifier can run. Otherwise checks that the reason is reported (and fails
/// when GATEHOUSE_REQUIRE_MB=1).
fn ready() -> bool {
    let st = status();
    if st == Status::Ready {
        return true;
    }
    assert!(
        !required(),
        "GATEHOUSE_REQUIRE_MB=1 but the multi-buffer verifier is {:?} ({})",
        st,
        st.label()
    );
    assert!(matches!(st, Status::NotBuilt | Status::NoCpu));
    let k = key_from(&[7; 32]);
    let sig = k.sign(b"x").unwrap();
    let lane = Lane {
        key: k.public(),
        msg: b"x",
        sig: &sig,
    };
    assert_eq!(verify8(&[lane]), Err(MbError::Unavailable(st.label())));
    assert_eq!(verify8(&[]), Err(MbError::Unavailable(st.label())));
    eprintln!("skipped: multi-buffer verifier {}", st.label());
    false
}

fn key_from(bytes: &[u8; 32]) -> PrivateKey {
    PrivateKey::from_bytes(bytes).unwrap()
}

/// SplitMix64: small, seedable, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let w = self.next().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
}

fn seed() -> u64 {
    match std::env::var("GATEHOUSE_MB_SEED") {
        Ok(s) => s.parse().expect("GATEHOUSE_MB_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// `a − b` for 32-byte big-endian a ≥ b.
fn sub_be(a: &[u8], b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = d.rem_euclid(256) as u8;
    }
    out
}

/// `a + b` for 32-byte big-endian values (mod 2^256).
fn add_be(a: &[u8], b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let d = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = d as u8;
        carry = d >> 8;
    }
    out
}

/// A value in [n, 2^256): n plus a random offset below 2^256 − n.
fn at_least_n(rng: &mut Rng) -> [u8; 32] {
    let room = sub_be(&[0xff; 32], &ORDER); // 2^256 − 1 − n, about 2^224
    let mut off = [0u8; 32];
    match rng.below(3) {
        0 => {}                       // exactly n
        1 => off = room,              // 2^256 − 1
        _ => rng.fill(&mut off[5..]), // below 2^216
    }
    add_be(&ORDER, &off)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutation {
    None,
    MsgBit,
    RBit,
    SBit,
    HighS,
    RZero,
    SZero,
    RAtLeastN,
    SAtLeastN,
    WrongKey,
    WrongParity,
}

const MUTATIONS: [Mutation; 11] = [
    Mutation::None,
    Mutation::MsgBit,
    Mutation::RBit,
    Mutation::SBit,
    Mutation::HighS,
    Mutation::RZero,
    Mutation::SZero,
    Mutation::RAtLeastN,
    Mutation::SAtLeastN,
    Mutation::WrongKey,
    Mutation::WrongParity,
];

struct Case {
    key: usize,
    msg: Vec<u8>,
    sig: Signature,
    mutation: Mutation,
}

#[test]
fn every_lane_agrees_with_the_single_verifier_on_random_and_mutated_signatures() {
    if !ready() {
        return;
    }
    let seed = seed();
    eprintln!("seed {seed} (GATEHOUSE_MB_SEED={seed} replays)");
    let mut rng = Rng(seed);
    let keys: Vec<PrivateKey> = (0..32)
        .map(|_| loop {
            let mut b = [0u8; 32];
            rng.fill(&mut b);
            if let Ok(k) = PrivateKey::from_bytes(&b) {
                return k;
            }
        })
        .collect();

    let target = 24_000;
    let (mut lanes_checked, mut calls, mut verified) = (0usize, 0usize, 0usize);
    let mut per_mutation = [0usize; MUTATIONS.len()];
    while lanes_checked < target {
        let count = 1 + rng.below(LANES as u64) as usize;
        let mut cases = Vec::with_capacity(count);
        for _ in 0..count {
            let key = rng.below(keys.len() as u64) as usize;
            let mut msg = vec![0u8; rng.below(120) as usize];
            rng.fill(&mut msg);
            let mut sig = keys[key].sign(&msg).unwrap();
            // Half of the lanes valid, the rest spread over the mutations.
            let m = if rng.below(2) == 0 {
                0
            } else {
                1 + rng.below(MUTATIONS.len() as u64 - 1) as usize
            };
            let mutation = MUTATIONS[m];
            per_mutation[m] += 1;
            let mut signer = key;
            match mutation {
                Mutation::None => {}
                Mutation::MsgBit => {
                    if msg.is_empty() {
                        msg.push(0);
                    } else {
                        let bit = rng.below(8 * msg.len() as u64) as usize;
                        msg[bit / 8] ^= 1 << (bit % 8);
                    }
                }
                Mutation::RBit => {
                    let bit = rng.below(256) as usize;
                    sig.rs[bit / 8] ^= 1 << (bit % 8);
                }
                Mutation::SBit => {
                    let bit = 256 + rng.below(256) as usize;
                    sig.rs[bit / 8] ^= 1 << (bit % 8);
                }
                Mutation::HighS => {
                    let high = sub_be(&ORDER, &sig.rs[32..]);
                    sig.rs[32..].copy_from_slice(&high);
                    sig.y_odd = !sig.y_odd;
                }
                Mutation::RZero => sig.rs[..32].fill(0),
                Mutation::SZero => sig.rs[32..].fill(0),
                Mutation::RAtLeastN => sig.rs[..32].copy_from_slice(&at_least_n(&mut rng)),
                Mutation::SAtLeastN => sig.rs[32..].copy_from_slice(&at_least_n(&mut rng)),
                Mutation::WrongKey => {
                    signer = (key + 1 + rng.below(keys.len() as u64 - 1) as usize) % keys.len();
                }
                Mutation::WrongParity => sig.y_odd = !sig.y_odd,
            }
            cases.push(Case {
                key: signer,
                msg,
                sig,
                mutation,
            });
        }
        let lanes: Vec<Lane<'_>> = cases
            .iter()
            .map(|c| Lane {
                key: keys[c.key].public(),
                msg: &c.msg,
                sig: &c.sig,
            })
            .collect();
        let got = verify8(&lanes).unwrap();
        // crypto_mb's own answer too: verify8's second look at refused lanes must not be what
        // makes them agree (these random cases never hit the exceptional case it is for).
        let raw = prove8(&lanes).unwrap();
        let mut want = 0u8;
        for (i, c) in cases.iter().enumerate() {
            if verify(Backend::Ring, keys[c.key].public(), &c.msg, &c.sig).is_ok() {
                want |= 1 << i;
            }
        }
        if got != want || raw != want {
            let detail: Vec<String> = cases
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    format!(
                        "lane {i}: {:?} want {} got {} (crypto_mb alone {})",
                        c.mutation,
                        want >> i & 1,
                        got >> i & 1,
                        raw >> i & 1
                    )
                })
                .collect();
            panic!(
                "seed {seed}, call {calls}: verify8 {got:#010b}, crypto_mb alone {raw:#010b}, \
                 verify {want:#010b}\n{}",
                detail.join("\n")
            );
        }
        lanes_checked += count;
        verified += want.count_ones() as usize;
        calls += 1;
    }
    eprintln!(
        "{lanes_checked} signatures in {calls} calls, {verified} verified; per mutation \
         {:?}",
        MUTATIONS.iter().zip(per_mutation).collect::<Vec<_>>()
    );
    // The mix is what it claims: every mutation drawn, and about half the lanes valid.
    assert!(per_mutation.iter().all(|&n| n > 500));
    assert!(verified > lanes_checked / 3);
}

/// A fixed known answer: key d = [7; 32], its RFC 6979 signature over `KAT_MSG`.
const KAT_MSG: &[u8] = b"gatehouse-mb known answer";
const KAT_PUBLIC: &str = "041e18532fd4754c02f3041d9c75ceb33b83ffd81ac7ce4fe882ccb1c98bc5896e\
                          a46c311c4e2ff40dd96a3653e6e45445d32dfe486eced75c7a90c6a18881c0a3";
const KAT_RS: &str = "40dc9fea0d4df51708f56a21c871fcff196306d3632bf20ded478bd48407f724\
                      5dd6df055050dbb8624ed498e10d0bf430f21a4cedcb12a4fd91c6eb5fb7f19a";

/// The byte orders at the C boundary: the known answer verifies only if r, s and the digest
/// go in as big-endian octet strings and the key as little-endian limbs (any other order
/// turns them into unrelated numbers). Reversing r's bytes (still in range, so it reaches
/// crypto_mb) must fail, so the library is not just accepting. Also in every lane position,
/// behind lanes that fail the form rules and are sent as NULL.
#[test]
fn known_answer_fixes_the_byte_orders() {
    if !ready() {
        return;
    }
    let key = PublicKey::from_sec1(&hex::decode(KAT_PUBLIC).unwrap()).unwrap();
    let rs: [u8; 64] = hex::decode(KAT_RS).unwrap().try_into().unwrap();
    let signer = key_from(&[7; 32]);
    assert_eq!(signer.public(), &key, "the vector's key is d = [7; 32]");
    let sig = Signature { rs, y_odd: false };
    assert_eq!(
        signer.sign(KAT_MSG).unwrap().rs,
        rs,
        "RFC 6979 is deterministic"
    );
    assert!(verify(Backend::Ring, &key, KAT_MSG, &sig).is_ok());
    // crypto_mb's own answer (verify8 would look again at a refused lane with ring).
    let one = |sig: &Signature| {
        let lane = [Lane {
            key: &key,
            msg: KAT_MSG,
            sig,
        }];
        let raw = prove8(&lane).unwrap();
        assert_eq!(verify8(&lane).unwrap(), raw);
        raw
    };
    assert_eq!(one(&sig), 1);

    let mut reversed_r = sig;
    reversed_r.rs[..32].reverse();
    reversed_r.check_form().unwrap();
    assert_eq!(one(&reversed_r), 0);
    assert!(verify(Backend::Ring, &key, KAT_MSG, &reversed_r).is_err());

    // The parity is not checked (non-strict), either way.
    let mut flipped = sig;
    flipped.y_odd = true;
    assert_eq!(one(&flipped), 1);

    let mut zero_r = sig;
    zero_r.rs[..32].fill(0);
    for pos in 0..LANES {
        let mut lanes = vec![
            Lane {
                key: &key,
                msg: KAT_MSG,
                sig: &zero_r,
            };
            pos
        ];
        lanes.push(Lane {
            key: &key,
            msg: KAT_MSG,
            sig: &sig,
        });
        assert_eq!(prove8(&lanes), Ok(1 << pos), "known answer in lane {pos}");
        assert_eq!(verify8(&lanes), Ok(1 << pos), "known answer in lane {pos}");
    }
}

#[test]
fn too_many_lanes_is_an_error_in_every_mode() {
    let k = key_from(&[3; 32]);
    let sig = k.sign(b"m").unwrap();
    let lane = Lane {
        key: k.public(),
        msg: b"m",
        sig: &sig,
    };
    assert_eq!(verify8(&[lane; 9]), Err(MbError::TooMany));
    assert_eq!(verify8(&[lane; 16]), Err(MbError::TooMany));
}

#[test]
fn status_matches_the_build_and_the_cpu() {
    let st = status();
    assert_eq!(st, status(), "cached");
    if cfg!(gatehouse_mb) {
        assert_ne!(st, Status::NotBuilt, "linked with crypto_mb");
        #[cfg(target_arch = "x86_64")]
        {
            let cpu = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512ifma")
                && std::arch::is_x86_feature_detected!("avx512vbmi2")
                && std::arch::is_x86_feature_detected!("bmi2");
            assert_eq!(st == Status::Ready, cpu, "{st:?}");
        }
    } else {
        assert_eq!(st, Status::NotBuilt);
    }
    if required() {
        assert_eq!(st, Status::Ready, "GATEHOUSE_REQUIRE_MB=1");
    }
}

/// Keys for the lane-count tests: distinct, deterministic.
fn keys(n: usize) -> Vec<PrivateKey> {
    (1..=n as u8).map(|i| key_from(&[i; 32])).collect()
}

#[test]
fn every_lane_count_from_zero_to_eight() {
    if !ready() {
        return;
    }
    let ks = keys(LANES);
    let msgs: Vec<Vec<u8>> = (0..LANES).map(|i| vec![i as u8; 10 + i]).collect();
    let sigs: Vec<Signature> = ks
        .iter()
        .zip(&msgs)
        .map(|(k, m)| k.sign(m).unwrap())
        .collect();
    let lanes: Vec<Lane<'_>> = (0..LANES)
        .map(|i| Lane {
            key: ks[i].public(),
            msg: &msgs[i],
            sig: &sigs[i],
        })
        .collect();
    for n in 0..=LANES {
        let all = ((1u16 << n) - 1) as u8;
        assert_eq!(verify8(&lanes[..n]), Ok(all), "{n} valid lanes");
        assert_eq!(prove8(&lanes[..n]), Ok(all), "{n} valid lanes");
        // Each lane broken in turn (its message swapped for another's): only that bit clears.
        for bad in 0..n {
            let mut l = lanes[..n].to_vec();
            l[bad].msg = if bad == 0 { b"other" } else { &msgs[0] };
            assert_eq!(
                verify8(&l),
                Ok(all & !(1 << bad)),
                "{n} lanes, lane {bad} bad"
            );
            assert_eq!(
                prove8(&l),
                Ok(all & !(1 << bad)),
                "{n} lanes, lane {bad} bad"
            );
        }
    }
}

/// ECDSA's exceptional case for the final addition: u1·G = u2·Q, so R = u1·G + u2·Q must be
/// computed as a doubling. A signer who picks its key can force it: with nonce k, r = x(k·G)
/// and z the message's digest, the key d = z/r gives u1 = z/s and u2·d = r·d/s = z/s. The
/// signature is valid and every verifier must accept it. With d = −z/r instead, u1·G + u2·Q
/// is the point at infinity and every verifier must refuse.
#[test]
fn the_doubling_and_infinity_cases_of_the_last_addition() {
    if !ready() {
        return;
    }
    let mut owned: Vec<(PrivateKey, Vec<u8>, Signature, bool)> = Vec::new();
    for i in 1..=64u64 {
        let msg = format!("exceptional {i}").into_bytes();
        let z = <Scalar as Reduce<U256>>::reduce_bytes(&Sha256::digest(&msg));
        let k = Scalar::from(1000 + i) * Scalar::from(0x1234_5678_9abc_def0u64);
        let big_r = (ProjectivePoint::GENERATOR * k).to_affine();
        let r = <Scalar as Reduce<U256>>::reduce_bytes(&big_r.x());
        let r_inv = Option::<Scalar>::from(r.invert()).unwrap();
        for doubling in [true, false] {
            let d = if doubling { z * r_inv } else { -(z * r_inv) };
            let key = PrivateKey::from_bytes(&d.to_repr().into()).unwrap();
            // s = (z + r·d)/k; with d = −z/r that is 0, so take any s instead. Then low s
            // (negating s negates both u1 and u2, which keeps u1·G = ±u2·Q).
            let k_inv = Option::<Scalar>::from(k.invert()).unwrap();
            let s = if doubling {
                k_inv * (z + r * d)
            } else {
                Scalar::from(7 + i)
            };
            let s = if bool::from(s.is_high()) { -s } else { s };
            let mut rs = [0u8; 64];
            rs[..32].copy_from_slice(&r.to_repr());
            rs[32..].copy_from_slice(&s.to_repr());
            let sig = Signature { rs, y_odd: false };
            owned.push((key, msg.clone(), sig, doubling));
        }
    }
    let (mut accepted, mut refused_by_crypto_mb) = (0, 0);
    for chunk in owned.chunks(LANES) {
        let lanes: Vec<Lane<'_>> = chunk
            .iter()
            .map(|(k, m, s, _)| Lane {
                key: k.public(),
                msg: m,
                sig: s,
            })
            .collect();
        let got = verify8(&lanes).unwrap();
        let raw = prove8(&lanes).unwrap();
        for (i, (k, m, s, doubling)) in chunk.iter().enumerate() {
            let want = verify(Backend::Ring, k.public(), m, s).is_ok();
            assert_eq!(want, *doubling, "ring on the constructed case {i}");
            assert_eq!(got >> i & 1 == 1, want, "lane {i}, doubling {doubling}");
            // crypto_mb alone may refuse a valid one here (verify8 looks again), but it never
            // accepts an invalid one.
            assert!(
                want || raw >> i & 1 == 0,
                "crypto_mb accepted infinity, lane {i}"
            );
            accepted += usize::from(want);
            refused_by_crypto_mb += usize::from(want && raw >> i & 1 == 0);
        }
    }
    assert_eq!(accepted, 64);
    eprintln!("crypto_mb alone refused {refused_by_crypto_mb} of the 64 valid doubling cases");
}
