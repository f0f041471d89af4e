//! Batch verification of gatehouse ES256 signatures: one multi-scalar equation per batch.
//!
//! Every gatehouse signature carries the y-parity of its R (SPEC §2.4), so a verifier can
//! rebuild R from `r` and check a whole batch at once. With fresh random 128-bit coefficients
//! aᵢ, drawn after the batch is fixed, the batch is valid when
//!
//! ```text
//! Σ aᵢ·(u1ᵢ·G + u2ᵢ·Qᵢ − Rᵢ) = O,   u1ᵢ = zᵢ·sᵢ⁻¹,  u2ᵢ = rᵢ·sᵢ⁻¹
//! ```
//!
//! one multi-scalar multiplication over G, the distinct keys (signatures under one key are
//! merged into one point) and the Rᵢ. A batch with an invalid member fails except with
//! probability about 2⁻¹²⁸; a failed batch says nothing about which member is bad, so the
//! caller verifies each member singly with its own verifier (the same strictness it uses
//! everywhere), which settles the verdicts.
//!
//! Soundness rules, each tested:
//! - a signature joins only in form: 1 ≤ r < n and 1 ≤ s ≤ ⌊n/2⌋ (the equation alone cannot
//!   tell (r, s, parity) from (r, n − s, ¬parity));
//! - z is SHA-256 of the message reduced mod n, as ES256 defines it;
//! - R is rebuilt only from x = r, never from x = r + n (an honest signature with x(R) ≥ n is
//!   rare, about 2⁻¹²⁸, and is a false reject that the single verifier then settles);
//! - R and every key are points on the curve, never the point at infinity (a key is checked
//!   when it is parsed, and again here);
//! - −R is taken by choosing the square root of the other parity, never by negating aᵢ.
//!
//! What the batch proves equals the strict single check ([`gatehouse_protocol::verify_strict`]):
//! the parity must be right. The default single check ignores the parity, so a signature with
//! a wrong parity fails a batch and then passes alone; the verdict is the same either way.

#![forbid(unsafe_code)]

use std::collections::HashMap;

use ark_ec::short_weierstrass::SWCurveConfig;
use ark_ec::{AffineRepr, VariableBaseMSM};
use ark_ff::{BigInteger, Field, One, PrimeField, Zero};
use ark_secp256r1::{Affine, Config, Fq, Fr, Projective};
use gatehouse_protocol::{PublicKey, Signature};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// One signature to check: the key, the signed message (hashed here with SHA-256) and the
/// signature with its R parity.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The signer's public key.
    pub key: &'a PublicKey,
    /// The signed bytes.
    pub msg: &'a [u8],
    /// `r ‖ s` and the y-parity of R.
    pub sig: &'a Signature,
}

/// Why a batch did not verify. Only [`BatchError::Form`] names a member that is certainly
/// invalid; the others say the batch failed, not which member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Member `0` is out of form (r or s zero or out of range, or s high): invalid alone too.
    #[error("signature {0} is out of form")]
    Form(usize),
    /// Member `0`'s r is not the x coordinate of a curve point: no R to rebuild.
    #[error("signature {0} has no R on the curve")]
    NoPoint(usize),
    /// Member `0`'s key is not on the curve (cannot happen for a parsed key).
    #[error("key of signature {0} is not on the curve")]
    BadKey(usize),
    /// The equation does not hold: at least one member is invalid (or has a wrong parity).
    #[error("the batch equation does not hold")]
    Equation,
    /// The system's random number generator failed: the batch was not checked.
    #[error("no randomness for the batch coefficients")]
    Random,
}

/// Verifies every signature of `batch` at once; `Ok` when all are valid (parity included).
pub fn verify_batch(batch: &[Entry<'_>]) -> Result<(), BatchError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut z = Vec::with_capacity(batch.len());
    let mut r = Vec::with_capacity(batch.len());
    let mut s_inv = Vec::with_capacity(batch.len());
    let mut bases: Vec<Affine> = Vec::with_capacity(2 * batch.len() + 1);
    bases.push(Config::GENERATOR);
    // −Rᵢ, in batch order, after G and the keys.
    let mut minus_r = Vec::with_capacity(batch.len());
    for (i, e) in batch.iter().enumerate() {
        e.sig.check_form().map_err(|_| BatchError::Form(i))?;
        let (r_bytes, s_bytes) = e.sig.rs.split_at(32);
        z.push(Fr::from_be_bytes_mod_order(&Sha256::digest(e.msg)));
        // Both are below n (the form check), so the reduction is exact.
        r.push(Fr::from_be_bytes_mod_order(r_bytes));
        s_inv.push(Fr::from_be_bytes_mod_order(s_bytes));
        minus_r.push(minus_big_r(r_bytes, e.sig.y_odd).ok_or(BatchError::NoPoint(i))?);
    }
    // s ≠ 0 (the form check): one inversion for the whole batch.
    ark_ff::batch_inversion(&mut s_inv);
    let coefficients = random_coefficients(batch.len())?;

    // Scalars: G gets Σ aᵢ·u1ᵢ, each distinct key Σ aᵢ·u2ᵢ over its signatures, −Rᵢ gets aᵢ.
    let mut scalars: Vec<Fr> = Vec::with_capacity(2 * batch.len() + 1);
    scalars.push(Fr::zero());
    let mut key_index: HashMap<&[u8; 33], usize> = HashMap::new();
    for (i, e) in batch.iter().enumerate() {
        let a = coefficients[i];
        scalars[0] += a * z[i] * s_inv[i];
        let k = match key_index.get(e.key.compressed()) {
            Some(&k) => k,
            None => {
                let q = key_point(e.key).ok_or(BatchError::BadKey(i))?;
                bases.push(q);
                scalars.push(Fr::zero());
                key_index.insert(e.key.compressed(), bases.len() - 1);
                bases.len() - 1
            }
        };
        scalars[k] += a * r[i] * s_inv[i];
    }
    bases.extend(minus_r);
    scalars.extend(coefficients);
    let sum = Projective::msm(&bases, &scalars).map_err(|_| BatchError::Equation)?;
    if sum.is_zero() {
        Ok(())
    } else {
        Err(BatchError::Equation)
    }
}

/// −R for a signature whose R has x = `r` and y of parity `y_odd`: the point (r, y′) with y′
/// the square root of r³ − 3r + b of the *other* parity. `None` when r³ − 3r + b has no square
/// root (no such R), or when the only root is 0 and the parity says odd.
fn minus_big_r(r: &[u8], y_odd: bool) -> Option<Affine> {
    // r < n < p: an exact field element.
    let x = Fq::from_be_bytes_mod_order(r);
    let rhs = (x.square() + Config::COEFF_A) * x + Config::COEFF_B;
    let y = rhs.sqrt()?;
    if y.is_zero() {
        // R = −R = (x, 0), whose y is even.
        return (!y_odd).then(|| Affine::new_unchecked(x, y));
    }
    let odd = y.into_bigint().is_odd();
    // R has the signature's parity; −R = (x, p − y) has the other one (p is odd).
    let y_minus_r = if odd == y_odd { -y } else { y };
    let point = Affine::new_unchecked(x, y_minus_r);
    point.is_on_curve().then_some(point)
}

/// A parsed key as a curve point, checked on the curve and not the identity.
fn key_point(key: &PublicKey) -> Option<Affine> {
    let bytes = key.uncompressed();
    let x = Fq::from_be_bytes_mod_order(&bytes[1..33]);
    let y = Fq::from_be_bytes_mod_order(&bytes[33..65]);
    let point = Affine::new_unchecked(x, y);
    (point.is_on_curve() && !point.is_zero()).then_some(point)
}

/// `n` coefficients of 128 random bits each from the system's CSPRNG, drawn now (after the
/// batch is fixed), never zero.
fn random_coefficients(n: usize) -> Result<Vec<Fr>, BatchError> {
    let mut bytes = vec![0u8; 16 * n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| BatchError::Random)?;
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            let a = Fr::from_le_bytes_mod_order(c);
            // A zero coefficient would leave its signature unchecked (probability 2⁻¹²⁸).
            if a.is_zero() {
                Fr::one()
            } else {
                a
            }
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use gatehouse_protocol::{verify_strict, PrivateKey};

    /// The group order n, big-endian.
    const ORDER: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];

    struct Signed {
        key: PublicKey,
        msg: Vec<u8>,
        sig: Signature,
    }

    fn signed(key_seed: u8, i: usize) -> Signed {
        let mut k = [key_seed; 32];
        k[0] = 1;
        let private = PrivateKey::from_bytes(&k).unwrap();
        let msg = format!("message {i} under key {key_seed}").into_bytes();
        let sig = private.sign(&msg).unwrap();
        Signed {
            key: private.public().clone(),
            msg,
            sig,
        }
    }

    fn entries(all: &[Signed]) -> Vec<Entry<'_>> {
        all.iter()
            .map(|s| Entry {
                key: &s.key,
                msg: &s.msg,
                sig: &s.sig,
            })
            .collect()
    }

    #[test]
    fn every_all_valid_batch_verifies_distinct_keys_and_one_key() {
        for n in [1usize, 2, 3, 8, 17, 64] {
            let distinct: Vec<Signed> = (0..n).map(|i| signed(i as u8 + 2, i)).collect();
            assert_eq!(
                verify_batch(&entries(&distinct)),
                Ok(()),
                "{n} distinct keys"
            );
            let one: Vec<Signed> = (0..n).map(|i| signed(7, i)).collect();
            assert_eq!(verify_batch(&entries(&one)), Ok(()), "{n} under one key");
        }
        assert_eq!(verify_batch(&[]), Ok(()));
    }

    /// s → n − s: a valid ECDSA signature again (high s), whose R is −R.
    fn negate_s(rs: &mut [u8; 64]) {
        let mut borrow = 0i16;
        let mut out = [0u8; 32];
        for i in (0..32).rev() {
            let d = i16::from(ORDER[i]) - i16::from(rs[32 + i]) - borrow;
            out[i] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
        rs[32..].copy_from_slice(&out);
    }

    /// Every way a member can be wrong, each placed at every position of a batch of 9 valid
    /// signatures: the batch fails, and agrees with the strict single check on that member.
    #[test]
    fn one_invalid_member_anywhere_fails_the_batch() {
        type Mutation = fn(&mut Signed);
        let mutations: [(&str, Mutation); 9] = [
            ("message bit", |s| s.msg[0] ^= 1),
            ("r bit", |s| s.sig.rs[31] ^= 1),
            ("s bit", |s| s.sig.rs[63] ^= 1),
            ("parity", |s| s.sig.y_odd = !s.sig.y_odd),
            ("wrong key", |s| s.key = signed(200, 0).key),
            ("high s, parity flipped", |s| {
                negate_s(&mut s.sig.rs);
                s.sig.y_odd = !s.sig.y_odd;
            }),
            ("r zero", |s| s.sig.rs[..32].fill(0)),
            ("s zero", |s| s.sig.rs[32..].fill(0)),
            ("r = n", |s| s.sig.rs[..32].copy_from_slice(&ORDER)),
        ];
        for (what, mutate) in mutations {
            for position in 0..9 {
                let mut batch: Vec<Signed> = (0..9).map(|i| signed(i as u8 % 3 + 2, i)).collect();
                mutate(&mut batch[position]);
                let bad = &batch[position];
                assert!(
                    verify_strict(&bad.key, &bad.msg, &bad.sig).is_err(),
                    "{what}: the mutated member is invalid alone"
                );
                assert!(
                    verify_batch(&entries(&batch)).is_err(),
                    "{what} at {position}: the batch verified"
                );
            }
        }
    }

    #[test]
    fn a_member_out_of_form_is_named() {
        let mut batch: Vec<Signed> = (0..4).map(|i| signed(3, i)).collect();
        negate_s(&mut batch[2].sig.rs);
        assert_eq!(verify_batch(&entries(&batch)), Err(BatchError::Form(2)));
    }

    /// r whose r³ − 3r + b is not a square: no point has that x.
    #[test]
    fn an_r_with_no_point_fails_without_an_equation() {
        let mut batch: Vec<Signed> = (0..3).map(|i| signed(4, i)).collect();
        let mut x = 1u8;
        loop {
            let mut r = [0u8; 32];
            r[31] = x;
            if minus_big_r(&r, false).is_none() {
                batch[1].sig.rs[..32].copy_from_slice(&r);
                break;
            }
            x += 1;
        }
        assert_eq!(verify_batch(&entries(&batch)), Err(BatchError::NoPoint(1)));
    }

    /// Random compositions: the batch verifies exactly when every member passes the strict
    /// single check.
    #[test]
    fn the_batch_agrees_with_the_strict_single_check_on_random_compositions() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pool: Vec<Signed> = (0..40).map(|i| signed((i % 5) as u8 + 2, i)).collect();
        for _ in 0..200 {
            let n = 1 + (next() % 24) as usize;
            let mut batch: Vec<Signed> = (0..n)
                .map(|_| {
                    let s = &pool[(next() % 40) as usize];
                    Signed {
                        key: s.key.clone(),
                        msg: s.msg.clone(),
                        sig: s.sig,
                    }
                })
                .collect();
            for s in batch.iter_mut() {
                match next() % 16 {
                    0 => s.sig.y_odd = !s.sig.y_odd,
                    1 => s.msg.push(0),
                    2 => s.sig.rs[(next() % 64) as usize] ^= 1 << (next() % 8),
                    _ => {}
                }
            }
            let singles = batch
                .iter()
                .all(|s| verify_strict(&s.key, &s.msg, &s.sig).is_ok());
            assert_eq!(verify_batch(&entries(&batch)).is_ok(), singles);
        }
    }
}
