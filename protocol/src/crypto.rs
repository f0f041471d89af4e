//! ES256 (ECDSA P-256 with SHA-256) signing and verification.
//!
//! Signatures are the fixed-size `r ‖ s` of COSE, with two additions that keep them
//! acceptable to any stock ES256 verifier:
//! - **low s**: `s ≤ n/2`, so a signature has one valid form (no malleability);
//! - **the y-parity of R**, carried beside the signature (see `SPEC.md`), where
//!   `R = s⁻¹·(z·G + r·Q)` is the point whose x coordinate gives `r`. With the parity, a
//!   verifier can rebuild R from r and check many signatures in one multi-scalar equation.
//!
//! Two backends verify: [`Backend::Ring`] (ring's P-256 assembly, about 5× faster here) and
//! [`Backend::P256`] (pure Rust, the `p256` crate). The strict check,
//! [`verify_strict`], also checks the parity; it needs the point R, which ring does not expose,
//! so it always runs on `p256`.

use std::sync::OnceLock;

use p256::ecdsa::{Signature as P256Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::ops::{LinearCombination, Reduce};
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::scalar::IsHigh;
use p256::elliptic_curve::{Field, PrimeField};
use p256::{FieldBytes, NonZeroScalar, ProjectivePoint, Scalar, U256};
use sha2::{Digest, Sha256};

use crate::{basepoint, SignError, SignatureError};

/// The P-256 group order n, big-endian.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// ⌊n/2⌋, big-endian: the largest low s.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Which implementation verifies signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// ring (BoringSSL-derived P-256 assembly).
    Ring,
    /// The pure-Rust `p256` crate.
    P256,
}

impl Backend {
    /// Every backend, for benches and tests.
    pub const ALL: [Backend; 2] = [Backend::Ring, Backend::P256];

    /// A stable name for benches, logs and config.
    pub fn label(self) -> &'static str {
        match self {
            Backend::Ring => "ring",
            Backend::P256 => "p256",
        }
    }
}

/// An ES256 signature as gatehouse carries it: `r ‖ s` and the y-parity of R.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature {
    /// `r ‖ s`, 32 bytes each, big-endian.
    pub rs: [u8; 64],
    /// Whether R's y coordinate is odd.
    pub y_odd: bool,
}

impl Signature {
    fn r(&self) -> &[u8; 32] {
        self.rs[..32].try_into().unwrap_or(&[0; 32])
    }

    fn s(&self) -> &[u8; 32] {
        self.rs[32..].try_into().unwrap_or(&[0; 32])
    }

    /// Checks `0 < r, s < n` and `s ≤ n/2`, the form rules; costs nanoseconds.
    pub fn check_form(&self) -> Result<(), SignatureError> {
        let (r, s) = (self.r(), self.s());
        if *r == [0; 32]
            || *s == [0; 32]
            || r.as_slice() >= ORDER.as_slice()
            || s.as_slice() >= ORDER.as_slice()
        {
            return Err(SignatureError::OutOfRange);
        }
        if s.as_slice() > HALF_ORDER.as_slice() {
            return Err(SignatureError::HighS);
        }
        Ok(())
    }
}

/// A P-256 public key, held in the forms both backends want.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    uncompressed: [u8; 65],
    compressed: [u8; 33],
    point: VerifyingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.compressed {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl PublicKey {
    /// From SEC1 bytes, compressed (33) or uncompressed (65); the point is validated.
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, SignatureError> {
        let point = VerifyingKey::from_sec1_bytes(bytes).map_err(|_| SignatureError::BadKey)?;
        Ok(Self::from_verifying_key(point))
    }

    fn from_verifying_key(point: VerifyingKey) -> Self {
        let mut uncompressed = [0u8; 65];
        uncompressed.copy_from_slice(point.to_encoded_point(false).as_bytes());
        let mut compressed = [0u8; 33];
        compressed.copy_from_slice(point.to_encoded_point(true).as_bytes());
        PublicKey {
            uncompressed,
            compressed,
            point,
        }
    }

    /// SEC1 compressed form (what credentials carry).
    pub fn compressed(&self) -> &[u8; 33] {
        &self.compressed
    }

    /// SEC1 uncompressed form.
    pub fn uncompressed(&self) -> &[u8; 65] {
        &self.uncompressed
    }

    /// The 8-byte key id: the first 8 bytes of SHA-256 over the compressed key.
    pub fn key_id(&self) -> [u8; 8] {
        let d = Sha256::digest(self.compressed);
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        id
    }
}

/// A P-256 private key that signs gatehouse structures (an issuer's or a device's).
///
/// Signing and key derivation multiply the generator with a precomputed table
/// (`basepoint`, constant time); the public key is derived on first use, so a key that only
/// signs (a load harness rebuilding device keys from stored scalars) never pays for it.
#[derive(Clone)]
pub struct PrivateKey {
    secret: NonZeroScalar,
    public: OnceLock<PublicKey>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "PrivateKey(public: {:?})", self.public())
    }
}

impl PrivateKey {
    /// From the 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SignError> {
        let secret = Option::<NonZeroScalar>::from(NonZeroScalar::from_repr((*bytes).into()))
            .ok_or(SignError::BadKey)?;
        Ok(PrivateKey {
            secret,
            public: OnceLock::new(),
        })
    }

    /// The 32-byte big-endian scalar.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.secret.to_repr().into()
    }

    /// The public key.
    pub fn public(&self) -> &PublicKey {
        self.public.get_or_init(|| {
            let q = basepoint::mul_base(&self.secret).to_affine();
            // d is non-zero and below n, so d·G is never the identity.
            let point = VerifyingKey::from_affine(q)
                .unwrap_or_else(|_| *SigningKey::from(self.secret).verifying_key());
            PublicKey::from_verifying_key(point)
        })
    }

    /// Signs `msg` (hashed with SHA-256) with a deterministic RFC 6979 nonce; returns the
    /// low-s signature and the y-parity of its R.
    ///
    /// The same signature, bit for bit, as the `p256` crate's `sign_prehash_recoverable`
    /// followed by low-s normalisation (a test holds it to that), computed with the
    /// fixed-base table.
    pub fn sign(&self, msg: &[u8]) -> Result<Signature, SignError> {
        let digest = Sha256::digest(msg);
        let d: Scalar = *self.secret;
        let k =
            Option::<NonZeroScalar>::from(NonZeroScalar::from_repr(
                rfc6979::generate_k::<Sha256, _>(&d.to_repr(), &ORDER.into(), &digest, &[]),
            ))
            .ok_or(SignError::Failed)?;
        let k_inv = Option::<Scalar>::from(k.invert()).ok_or(SignError::Failed)?;
        let big_r = basepoint::mul_base(&k).to_affine();
        let r = <Scalar as Reduce<U256>>::reduce_bytes(&big_r.x());
        if r.to_repr() != big_r.x() {
            // r = R.x − n: a verifier could not rebuild R from r. Happens with probability
            // about 2⁻¹²⁸; refuse rather than emit a signature batch verifiers cannot use.
            return Err(SignError::Failed);
        }
        let z = <Scalar as Reduce<U256>>::reduce_bytes(&digest);
        let s = k_inv * (z + r * d);
        if bool::from(r.is_zero()) || bool::from(s.is_zero()) {
            return Err(SignError::Failed);
        }
        let mut y_odd = bool::from(big_r.y_is_odd());
        // Low s: negating s negates the verifier's R, which flips its y-parity.
        let s = if bool::from(s.is_high()) {
            y_odd = !y_odd;
            -s
        } else {
            s
        };
        let mut rs = [0u8; 64];
        rs[..32].copy_from_slice(&r.to_repr());
        rs[32..].copy_from_slice(&s.to_repr());
        Ok(Signature { rs, y_odd })
    }
}

/// Standard ES256 verification of `r ‖ s` over `msg`, exactly as a stock verifier does it:
/// no low-s rule, no parity. This is what the Wycheproof vectors test.
pub fn verify_es256(
    backend: Backend,
    key: &PublicKey,
    msg: &[u8],
    rs: &[u8; 64],
) -> Result<(), SignatureError> {
    match backend {
        Backend::Ring => {
            let k = ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                &key.uncompressed[..],
            );
            k.verify(msg, rs).map_err(|_| SignatureError::Invalid)
        }
        Backend::P256 => {
            use p256::ecdsa::signature::Verifier;
            let sig = P256Signature::from_slice(rs).map_err(|_| SignatureError::OutOfRange)?;
            key.point
                .verify(msg, &sig)
                .map_err(|_| SignatureError::Invalid)
        }
    }
}

/// gatehouse's verification: form rules (range, low s) and then ES256 with `backend`.
/// The parity bit is not checked (see [`verify_strict`]).
pub fn verify(
    backend: Backend,
    key: &PublicKey,
    msg: &[u8],
    sig: &Signature,
) -> Result<(), SignatureError> {
    sig.check_form()?;
    verify_es256(backend, key, msg, &sig.rs)
}

/// The strict check: form rules, ES256, and the y-parity of R. Computes R itself, so it
/// costs one p256 verification whatever backend the caller uses elsewhere.
pub fn verify_strict(key: &PublicKey, msg: &[u8], sig: &Signature) -> Result<(), SignatureError> {
    sig.check_form()?;
    let z = <Scalar as Reduce<U256>>::reduce_bytes(&Sha256::digest(msg));
    let r = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(*sig.r()));
    let s = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(*sig.s()));
    let s_inv = Option::<Scalar>::from(s.invert()).ok_or(SignatureError::OutOfRange)?;
    let q = ProjectivePoint::from(*key.point.as_affine());
    let big_r =
        ProjectivePoint::lincomb(&ProjectivePoint::GENERATOR, &(z * s_inv), &q, &(r * s_inv))
            .to_affine();
    let x = <Scalar as Reduce<U256>>::reduce_bytes(&big_r.x());
    if x != r {
        return Err(SignatureError::Invalid);
    }
    if bool::from(big_r.y_is_odd()) != sig.y_odd {
        return Err(SignatureError::WrongParity);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from_bytes(&[seed; 32]).unwrap()
    }

    #[test]
    fn signatures_are_low_s_and_verify_on_every_backend_and_strictly() {
        let k = key(7);
        for i in 0..64u8 {
            let msg = [i; 40];
            let sig = k.sign(&msg).unwrap();
            sig.check_form().unwrap();
            for b in Backend::ALL {
                verify(b, k.public(), &msg, &sig).unwrap();
            }
            verify_strict(k.public(), &msg, &sig).unwrap();
        }
    }

    #[test]
    fn high_s_verifies_for_a_stock_verifier_but_not_for_gatehouse() {
        let k = key(9);
        let msg = b"high s";
        let sig = k.sign(msg).unwrap();
        let high = with_negated_s(&sig);
        for b in Backend::ALL {
            verify_es256(b, k.public(), msg, &high.rs).unwrap();
            assert_eq!(
                verify(b, k.public(), msg, &high),
                Err(SignatureError::HighS)
            );
        }
    }

    #[test]
    fn the_strict_check_catches_a_flipped_parity_bit() {
        let k = key(3);
        let msg = b"parity";
        let mut sig = k.sign(msg).unwrap();
        sig.y_odd = !sig.y_odd;
        // A stock verifier cannot see the bit...
        verify(Backend::Ring, k.public(), msg, &sig).unwrap();
        // ...the strict check can.
        assert_eq!(
            verify_strict(k.public(), msg, &sig),
            Err(SignatureError::WrongParity)
        );
    }

    #[test]
    fn a_wrong_key_or_message_fails() {
        let (a, b) = (key(1), key(2));
        let sig = a.sign(b"m").unwrap();
        for be in Backend::ALL {
            assert_eq!(
                verify(be, b.public(), b"m", &sig),
                Err(SignatureError::Invalid)
            );
            assert_eq!(
                verify(be, a.public(), b"n", &sig),
                Err(SignatureError::Invalid)
            );
        }
        assert_eq!(
            verify_strict(b.public(), b"m", &sig),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn form_rules_refuse_zero_and_order() {
        let mut rs = [0u8; 64];
        rs[63] = 1;
        assert_eq!(
            Signature { rs, y_odd: false }.check_form(),
            Err(SignatureError::OutOfRange)
        );
        let mut rs = [0u8; 64];
        rs[..32].copy_from_slice(&ORDER);
        rs[63] = 1;
        assert_eq!(
            Signature { rs, y_odd: false }.check_form(),
            Err(SignatureError::OutOfRange)
        );
        let mut rs = [0u8; 64];
        rs[31] = 1;
        rs[32..].copy_from_slice(&HALF_ORDER);
        assert_eq!(Signature { rs, y_odd: false }.check_form(), Ok(()));
        rs[63] += 1;
        assert_eq!(
            Signature { rs, y_odd: false }.check_form(),
            Err(SignatureError::HighS)
        );
    }

    #[test]
    fn keys_round_trip_and_refuse_points_off_the_curve() {
        let k = key(5);
        let pk = PublicKey::from_sec1(k.public().compressed()).unwrap();
        assert_eq!(&pk, k.public());
        assert_eq!(PublicKey::from_sec1(k.public().uncompressed()).unwrap(), pk);
        let mut bad = *k.public().uncompressed();
        bad[64] ^= 1;
        assert_eq!(PublicKey::from_sec1(&bad), Err(SignatureError::BadKey));
        assert_eq!(
            PrivateKey::from_bytes(&k.to_bytes()).unwrap().public(),
            k.public()
        );
        assert!(PrivateKey::from_bytes(&[0; 32]).is_err());
        assert!(PrivateKey::from_bytes(&ORDER).is_err());
    }

    /// The signer before the fixed-base table: the `p256` crate's RFC 6979 signer, then low s.
    fn reference_sign(key: &PrivateKey, msg: &[u8]) -> Signature {
        let sk = SigningKey::from_slice(&key.to_bytes()).unwrap();
        let (sig, recid) = sk.sign_prehash_recoverable(&Sha256::digest(msg)).unwrap();
        let mut y_odd = recid.is_y_odd();
        let sig = match sig.normalize_s() {
            Some(low) => {
                y_odd = !y_odd;
                low
            }
            None => sig,
        };
        Signature {
            rs: sig.to_bytes().into(),
            y_odd,
        }
    }

    #[test]
    fn the_fixed_base_signer_matches_the_p256_signer_and_passes_the_strict_check() {
        for seed in 1..=40u8 {
            let mut bytes = [seed; 32];
            bytes[0] = seed.wrapping_mul(37);
            let k = PrivateKey::from_bytes(&bytes).unwrap();
            let reference = SigningKey::from_slice(&bytes).unwrap();
            let pk = PublicKey::from_verifying_key(*reference.verifying_key());
            assert_eq!(k.public(), &pk, "derived public key");
            for i in 0..25u32 {
                let msg = [&i.to_be_bytes()[..], &[seed; 90][..]].concat();
                let sig = k.sign(&msg).unwrap();
                assert_eq!(sig, reference_sign(&k, &msg), "seed {seed}, message {i}");
                verify_strict(k.public(), &msg, &sig).unwrap();
                verify(Backend::Ring, k.public(), &msg, &sig).unwrap();
            }
        }
    }

    /// The same signature with s replaced by n − s.
    pub(crate) fn with_negated_s(sig: &Signature) -> Signature {
        let s = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(
            <[u8; 32]>::try_from(&sig.rs[32..]).unwrap_or([0; 32]),
        ));
        let mut rs = sig.rs;
        rs[32..].copy_from_slice(&(-s).to_bytes());
        Signature {
            rs,
            y_odd: !sig.y_odd,
        }
    }
}
