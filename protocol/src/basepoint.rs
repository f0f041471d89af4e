//! Fixed-base scalar multiplication `k·G` with a precomputed table, in constant time.
//!
//! Signing (`R = k·G`) and deriving a public key (`Q = d·G`) both multiply the generator.
//! The `p256` crate does it with a generic double-and-add (about 255 doublings and 64
//! additions); with the multiples of G precomputed once per process, it takes one mixed
//! addition per window and no doublings.
//!
//! The scalar is secret (a nonce or a private key), so the multiplication is constant time:
//! the scalar is recoded into signed digits `d_i ∈ [−2^(W−1), 2^(W−1)]`, and each digit's table
//! entry is read by scanning the whole row with conditional selects (no secret-dependent
//! memory access or branch), then conditionally negated. Adding the identity (a zero digit)
//! is handled by the complete addition formulas, without a branch.

use std::sync::OnceLock;

use p256::elliptic_curve::subtle::{
    Choice, ConditionallyNegatable, ConditionallySelectable, ConstantTimeEq,
};
use p256::elliptic_curve::PrimeField;
use p256::{AffinePoint, ProjectivePoint, Scalar};

/// Window width in bits. Measured on the project machine (`cargo bench -p gatehouse-benches
/// --bench core -- sign`): 6 bits is the fastest of 4–7; the row scan grows as 2^(W−1)
/// and the additions shrink as 256/W.
const W: usize = 6;
/// Entries per row: the multiples 1..=2^(W−1) of the row's base.
const ROW: usize = 1 << (W - 1);
/// Digits of a 256-bit scalar, plus one for the final carry of the signed recoding.
const WINDOWS: usize = 256_usize.div_ceil(W) + 1;

/// `TABLE[i][j] = (j + 1) · 2^(W·i) · G`.
type Table = Vec<[AffinePoint; ROW]>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rows = Vec::with_capacity(WINDOWS);
        let mut base = ProjectivePoint::GENERATOR;
        for _ in 0..WINDOWS {
            let mut multiples = [ProjectivePoint::IDENTITY; ROW];
            let mut acc = base;
            for m in multiples.iter_mut() {
                *m = acc;
                acc += base;
            }
            // `acc` is now (ROW + 1)·base; the next row's base is 2^W·base = 2·ROW·base.
            base = multiples[ROW - 1] + multiples[ROW - 1];
            // One inversion per entry, once per process (about 1,400 of them, milliseconds).
            rows.push(multiples.map(|p| p.to_affine()));
        }
        rows
    })
}

/// Signed radix-2^W digits of `k` (little-endian), each in `[−2^(W−1), 2^(W−1)]`.
fn recode(k: &Scalar) -> [i8; WINDOWS] {
    let repr = k.to_repr();
    let mut le = [0u8; 33];
    for (i, b) in repr.iter().rev().enumerate() {
        le[i] = *b;
    }
    let bits = |at: usize| -> u32 {
        // W ≤ 8 bits starting at bit `at`, read from two bytes.
        let byte = at / 8;
        let lo = u32::from(le[byte]) | (u32::from(le.get(byte + 1).copied().unwrap_or(0)) << 8);
        (lo >> (at % 8)) & ((1 << W) - 1)
    };
    let mut digits = [0i8; WINDOWS];
    let mut carry = 0u32;
    for (i, d) in digits.iter_mut().enumerate().take(WINDOWS - 1) {
        let v = bits(i * W) + carry;
        // Branch-free: a digit above 2^(W−1) becomes v − 2^W with a carry into the next.
        carry = (v + (ROW as u32) - 1) >> W;
        *d = (v as i32 - ((carry as i32) << W)) as i8;
    }
    digits[WINDOWS - 1] = carry as i8;
    digits
}

/// `k·G`, constant time in `k`.
pub(crate) fn mul_base(k: &Scalar) -> ProjectivePoint {
    let table = table();
    let digits = recode(k);
    let mut acc = ProjectivePoint::IDENTITY;
    for (row, &d) in table.iter().zip(digits.iter()) {
        let negative = Choice::from(((d as u8) >> 7) & 1);
        let magnitude = (d as i16).unsigned_abs() as u8;
        let mut entry = AffinePoint::IDENTITY;
        for (j, candidate) in row.iter().enumerate() {
            let hit = magnitude.ct_eq(&((j + 1) as u8));
            entry.conditional_assign(candidate, hit);
        }
        entry.conditional_negate(negative);
        acc += entry;
    }
    acc
}

#[cfg(test)]
mod tests {
    use p256::elliptic_curve::ops::Reduce;
    use p256::U256;

    use super::*;

    #[test]
    fn agrees_with_the_generic_multiplication() {
        let mut cases = vec![
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::from(31u64),
            Scalar::from(32u64),
            Scalar::from(33u64),
            -Scalar::from(32u64),
        ];
        // Every digit at its extremes: all-ones and alternating bytes.
        for byte in [0xffu8, 0xaa, 0x55, 0x80, 0x7f, 0x01] {
            cases.push(<Scalar as Reduce<U256>>::reduce_bytes(&[byte; 32].into()));
        }
        let mut x = Scalar::from(0x1234_5678_9abc_def0u64);
        for _ in 0..200 {
            x = x.square() + Scalar::from(7u64);
            cases.push(x);
        }
        for k in cases {
            assert_eq!(
                mul_base(&k).to_affine(),
                (ProjectivePoint::GENERATOR * k).to_affine(),
                "k = {:?}",
                k
            );
        }
    }

    #[test]
    fn recoded_digits_are_in_range_and_sum_to_the_scalar() {
        let k = -Scalar::from(5u64);
        let digits = recode(&k);
        let half = ROW as i8;
        assert!(digits.iter().all(|d| (-half..=half).contains(d)));
        let mut sum = Scalar::ZERO;
        let radix = Scalar::from(1u64 << W);
        for d in digits.iter().rev() {
            let dd = Scalar::from(u64::from(d.unsigned_abs()));
            sum = sum * radix + if *d < 0 { -dd } else { dd };
        }
        assert_eq!(sum, k);
    }
}
