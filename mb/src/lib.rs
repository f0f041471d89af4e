//! # gatehouse-mb
//!
//! ES256 verification of up to eight signatures in one call, with Intel's crypto_mb
//! multi-buffer ECDSA P-256 (`mbx_nistp256_ecdsa_verify_mb8`, AVX-512 IFMA: eight independent
//! verifications computed side by side in the 52-bit lanes of the vector registers).
//!
//! The verdict for every lane is [`gatehouse_protocol::verify`]'s, the non-strict check: the
//! form rules (`0 < r < n`, `0 < s ≤ n/2`), then standard ES256. The R y-parity bit is not
//! checked (that is [`gatehouse_protocol::verify_strict`], which this crate does not claim).
//! crypto_mb alone does not give that verdict; this wrapper closes three gaps:
//! - crypto_mb refuses a digest `≥ n` (a valid ES256 input): the digest is reduced mod n first;
//! - crypto_mb accepts a high s: [`Signature::check_form`] runs first, and a lane that fails it
//!   is false and is not sent at all;
//! - crypto_mb range-checks the key's coordinates but never checks that the point is on the
//!   curve: keys here are [`PublicKey`]s, validated when parsed;
//! - crypto_mb refuses some valid signatures in ECDSA's exceptional case `u1·G = u2·Q` (which
//!   only a signer choosing its key from the message can build): a lane it refuses is checked
//!   again with the single verifier, so an invalid signature costs its lane plus one single
//!   verification, and a valid one its lane alone.
//!
//! The library is linked statically when the build finds it (`scripts/fetch-ippcp` puts it in
//! `target/ippcp/`, or `GATEHOUSE_IPPCP_DIR` names another copy). Without it, or on a CPU
//! without AVX-512 IFMA, the crate still builds and [`status`] says why it cannot run;
//! [`verify8`] then returns [`MbError::Unavailable`] and the caller verifies another way.
//!
//! Byte orders at the C boundary: r, s and the digest are 32-byte big-endian octet strings (the
//! order of `r ‖ s` and of SHA-256 output); the key coordinates are four little-endian 64-bit
//! limbs, least significant first. The tests prove both (a known answer fails with r reversed).

use std::sync::OnceLock;

use gatehouse_protocol::{Backend, PublicKey, Signature};
use sha2::{Digest, Sha256};

/// Whether the multi-buffer verifier can run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Built with crypto_mb, and this CPU runs it.
    Ready,
    /// Built without crypto_mb (not fetched: `scripts/fetch-ippcp`, or not x86-64 Linux).
    NotBuilt,
    /// Built with crypto_mb, but this CPU lacks AVX-512 IFMA (or another instruction set
    /// crypto_mb's AVX-512 code needs).
    NoCpu,
}

impl Status {
    /// A short description for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ready => "ready",
            Status::NotBuilt => "not built",
            Status::NoCpu => "cpu lacks avx512ifma",
        }
    }
}

/// Whether the multi-buffer verifier can run in this process (detected once, then cached).
pub fn status() -> Status {
    static STATUS: OnceLock<Status> = OnceLock::new();
    *STATUS.get_or_init(ffi::detect)
}

/// Signatures per multi-buffer call.
pub const LANES: usize = 8;

/// One signature: the signer's key (validated at parse, always on the curve), the signed bytes, the signature.
#[derive(Debug, Clone, Copy)]
pub struct Lane<'a> {
    /// The signer's public key.
    pub key: &'a PublicKey,
    /// The signed bytes (hashed here with SHA-256).
    pub msg: &'a [u8],
    /// The signature, `r ‖ s` and the R parity (the parity is not checked).
    pub sig: &'a Signature,
}

/// Why [`verify8`] gave no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MbError {
    /// More than [`LANES`] lanes were passed: a caller bug.
    #[error("more than 8 lanes")]
    TooMany,
    /// The verifier cannot run here; the text is [`Status::label`].
    #[error("multi-buffer verifier unavailable: {0}")]
    Unavailable(&'static str),
}

/// Verifies up to 8 signatures in one multi-buffer call. Returns a bitmask: bit i set = lane i verified.
/// Same verdict as `gatehouse_protocol::verify` (the non-strict check: low s required, R parity ignored) for every lane.
/// Lanes beyond `lanes.len()` are left empty. Panics never; more than 8 lanes is a caller bug: return Err.
pub fn verify8(lanes: &[Lane<'_>]) -> Result<u8, MbError> {
    let (mut ok, sent) = multi_buffer(lanes)?;
    // A lane crypto_mb refuses is checked again by the single verifier. crypto_mb refuses some
    // valid signatures in ECDSA's exceptional case, u1·G = u2·Q, where its last point addition
    // is a doubling it does not always detect (a few percent of the cases the tests build).
    // Only a signer choosing its key from the message can produce one, but the verdict must be
    // `verify`'s. Its accepts need no second look: a missed exceptional case leaves the point
    // at infinity (Z ≡ 0), which never matches r. The cost: an invalid signature pays one
    // single verification on top of its lane; a valid one, nothing.
    for (i, lane) in lanes.iter().enumerate() {
        let bit = 1u8 << i;
        if sent & bit != 0
            && ok & bit == 0
            && gatehouse_protocol::verify(Backend::Ring, lane.key, lane.msg, lane.sig).is_ok()
        {
            ok |= bit;
        }
    }
    Ok(ok)
}

/// crypto_mb's own answer, without [`verify8`]'s second look at the lanes it refuses: a set
/// bit proves lane i valid (what `gatehouse_protocol::verify` accepts; never a false accept), a
/// clear bit proves nothing (see [`verify8`]). For a caller that settles every lane not proven
/// with its own single verifier anyway (the engine does, with its own backend and
/// strictness), and for the tests, which must see the library's answer.
pub fn prove8(lanes: &[Lane<'_>]) -> Result<u8, MbError> {
    multi_buffer(lanes).map(|(ok, _)| ok)
}

/// The checks, the conversions and the multi-buffer call: (lanes verified, lanes sent).
fn multi_buffer(lanes: &[Lane<'_>]) -> Result<(u8, u8), MbError> {
    if lanes.len() > LANES {
        return Err(MbError::TooMany);
    }
    match status() {
        Status::Ready => {}
        other => return Err(MbError::Unavailable(other.label())),
    }

    let mut input = ffi::Input::EMPTY;
    let mut sent = 0u8;
    for (i, lane) in lanes.iter().enumerate() {
        // The form rules first: a lane that breaks them is false and is not sent (its pointers
        // stay NULL, which crypto_mb reports for that lane alone).
        if lane.sig.check_form().is_err() {
            continue;
        }
        input.digest[i] = reduce_mod_n(&Sha256::digest(lane.msg).into());
        let sec1 = lane.key.uncompressed();
        input.x[i] = limbs(&sec1[1..33]);
        input.y[i] = limbs(&sec1[33..65]);
        input.sig[i] = Some(lane.sig);
        sent |= 1 << i;
    }
    if sent == 0 {
        return Ok((0, 0));
    }
    Ok((ffi::verify(&input) & sent, sent))
}

/// The P-256 group order n, big-endian.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `z mod n` for a 32-byte big-endian z. ECDSA uses the digest as an integer mod n, and
/// crypto_mb refuses one `≥ n`; since `2^256 < 2n`, one conditional subtraction reduces it.
fn reduce_mod_n(z: &[u8; 32]) -> [u8; 32] {
    if z.as_slice() < ORDER.as_slice() {
        return *z;
    }
    let mut out = [0u8; 32];
    let mut borrow = 0u16;
    for i in (0..32).rev() {
        let d = u16::from(z[i])
            .wrapping_sub(u16::from(ORDER[i]))
            .wrapping_sub(borrow);
        out[i] = d as u8;
        borrow = (d >> 15) & 1;
    }
    out
}

/// A 32-byte big-endian coordinate as four little-endian 64-bit limbs (crypto_mb's `int64u[4]`).
fn limbs(be: &[u8]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (limb, chunk) in out.iter_mut().zip(be.rchunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        *limb = u64::from_be_bytes(word);
    }
    out
}

/// The checked lanes' data, on the stack, in the form crypto_mb reads.
#[cfg_attr(not(gatehouse_mb), allow(dead_code))]
mod input {
    use super::{Signature, LANES};

    /// One call's inputs; a lane with `sig: None` is not sent.
    pub(crate) struct Input<'a> {
        /// SHA-256 of the message reduced mod n, big-endian.
        pub(crate) digest: [[u8; 32]; LANES],
        /// The key's x coordinate, little-endian limbs.
        pub(crate) x: [[u64; 4]; LANES],
        /// The key's y coordinate, little-endian limbs.
        pub(crate) y: [[u64; 4]; LANES],
        /// The signature (`r ‖ s`, big-endian, read in place).
        pub(crate) sig: [Option<&'a Signature>; LANES],
    }

    impl Input<'_> {
        pub(crate) const EMPTY: Input<'static> = Input {
            digest: [[0; 32]; LANES],
            x: [[0; 4]; LANES],
            y: [[0; 4]; LANES],
            sig: [None; LANES],
        };
    }
}

#[cfg(gatehouse_mb)]
mod ffi {
    //! The calls into crypto_mb (`crypto_mb/ec_nistp256.h`, `crypto_mb/cpu_features.h`).

    use std::ffi::{c_int, c_void};
    use std::ptr;

    pub(crate) use crate::input::Input;
    use crate::{Status, LANES};

    extern "C" {
        fn mbx_get_cpu_features() -> u64;
        fn mbx_is_crypto_mb_applicable(features: u64) -> c_int;
        fn mbx_nistp256_ecdsa_verify_mb8(
            pa_sign_r: *const *const u8,
            pa_sign_s: *const *const u8,
            pa_msg: *const *const u8,
            pa_pubx: *const *const u64,
            pa_puby: *const *const u64,
            pa_pubz: *const *const u64,
            p_buffer: *mut u8,
        ) -> u32;
    }

    /// Ready when the CPU has `MBX_AVX512_GENERAL_ISA` (the instruction sets crypto_mb's
    /// AVX-512 code uses) and crypto_mb agrees.
    pub(crate) fn detect() -> Status {
        let cpu = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vbmi2")
            && std::arch::is_x86_feature_detected!("bmi2");
        if !cpu {
            return Status::NoCpu;
        }
        #[allow(unsafe_code)]
        // SAFETY: takes nothing and returns an integer; it only executes CPUID (and XGETBV,
        // which CPUID's OSXSAVE bit, required for the AVX-512 checks above, makes valid).
        let features = unsafe { mbx_get_cpu_features() };
        #[allow(unsafe_code)]
        // SAFETY: takes and returns plain integers; no memory is passed, nothing can alias.
        let applicable = unsafe { mbx_is_crypto_mb_applicable(features) };
        if applicable != 0 {
            Status::Ready
        } else {
            Status::NoCpu
        }
    }

    /// Runs one multi-buffer verification; bit i set = lane i was sent and verified.
    /// Only called once [`crate::status`] is `Ready`.
    pub(crate) fn verify(input: &Input<'_>) -> u8 {
        let mut r = [ptr::null::<u8>(); LANES];
        let mut s = [ptr::null::<u8>(); LANES];
        let mut msg = [ptr::null::<u8>(); LANES];
        let mut x = [ptr::null::<u64>(); LANES];
        let mut y = [ptr::null::<u64>(); LANES];
        for i in 0..LANES {
            if let Some(sig) = input.sig[i] {
                r[i] = sig.rs[..32].as_ptr();
                s[i] = sig.rs[32..].as_ptr();
                msg[i] = input.digest[i].as_ptr();
                x[i] = input.x[i].as_ptr();
                y[i] = input.y[i].as_ptr();
            }
        }
        #[allow(unsafe_code)]
        // SAFETY:
        // - CPU: only reached when `status()` is Ready, i.e. the CPU has every instruction set
        //   of MBX_AVX512_GENERAL_ISA and crypto_mb itself said it is applicable here.
        // - The five pointer arguments are arrays of exactly 8 pointers (the C side's `[8]`),
        //   alive on this stack frame for the whole call. Each non-NULL entry points to 32
        //   readable bytes: r and s into the `[u8; 64]` of a `&Signature` borrowed for the
        //   call, the digest into `input.digest[i]` (`[u8; 32]`), x and y into `[u64; 4]`
        //   (32 bytes, 8-aligned; crypto_mb reads them with unaligned masked loads of exactly
        //   32 bytes). A lane's entries are all set or all NULL; crypto_mb skips a NULL lane
        //   (MBX_STATUS_NULL_PARAM_ERR for that lane only).
        // - crypto_mb only reads these inputs (all `const`), so shared borrows suffice and
        //   nothing is written that Rust holds.
        // - pa_pubz is NULL: affine coordinates, as the header allows. pBuffer is NULL: the
        //   verification uses no scratch buffer (the header allows NULL).
        // - The call keeps no pointer after it returns.
        let status = unsafe {
            mbx_nistp256_ecdsa_verify_mb8(
                r.as_ptr(),
                s.as_ptr(),
                msg.as_ptr(),
                x.as_ptr(),
                y.as_ptr(),
                ptr::null(),
                ptr::null_mut(),
            )
        };
        let mut ok = 0u8;
        for i in 0..LANES {
            // MBX_GET_STS: four status bits per lane, 0 = MBX_STATUS_OK.
            if input.sig[i].is_some() && (status >> (4 * i)) & 0xF == 0 {
                ok |= 1 << i;
            }
        }
        ok
    }

    // crypto_mb's OpenSSL-flavoured entry points (`*_ssl_mb8`, BIGNUM arguments) sit in the same
    // object files as the ones used here, so linking pulls in their references to these four
    // OpenSSL functions. This crate never calls an `_ssl_` function, so they are never
    // reached; these definitions satisfy the linker without linking OpenSSL, and abort if ever
    // called. (A binary that also links OpenSSL's libcrypto would clash with them: not done in
    // this workspace, which uses ring and rustls.)

    /// Never called (see above): aborts.
    #[allow(unsafe_code, non_snake_case)]
    // SAFETY: an exported symbol that only aborts; it reads none of its arguments.
    #[no_mangle]
    extern "C" fn BN_bin2bn(_s: *const u8, _len: c_int, _ret: *mut c_void) -> *mut c_void {
        std::process::abort()
    }

    /// Never called (see above): aborts.
    #[allow(unsafe_code, non_snake_case)]
    // SAFETY: an exported symbol that only aborts; it reads none of its arguments.
    #[no_mangle]
    extern "C" fn BN_bn2lebinpad(_a: *const c_void, _to: *mut u8, _tolen: c_int) -> c_int {
        std::process::abort()
    }

    /// Never called (see above): aborts.
    #[allow(unsafe_code, non_snake_case)]
    // SAFETY: an exported symbol that only aborts; it reads none of its arguments.
    #[no_mangle]
    extern "C" fn BN_num_bits(_a: *const c_void) -> c_int {
        std::process::abort()
    }

    /// Never called (see above): aborts.
    #[allow(unsafe_code, non_snake_case)]
    // SAFETY: an exported symbol that only aborts; it reads none of its arguments.
    #[no_mangle]
    extern "C" fn ECDSA_SIG_get0(
        _sig: *const c_void,
        _pr: *mut *const c_void,
        _ps: *mut *const c_void,
    ) {
        std::process::abort()
    }
}

#[cfg(not(gatehouse_mb))]
mod ffi {
    //! Built without crypto_mb: nothing to call.

    pub(crate) use crate::input::Input;
    use crate::Status;

    pub(crate) fn detect() -> Status {
        Status::NotBuilt
    }

    /// Never reached: `verify8` returns `Unavailable` first.
    pub(crate) fn verify(_input: &Input<'_>) -> u8 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_bigint::BigUint;

    fn big(bytes: &[u8]) -> BigUint {
        BigUint::from_bytes_be(bytes)
    }

    fn be32(v: &BigUint) -> [u8; 32] {
        let b = v.to_bytes_be();
        let mut out = [0u8; 32];
        out[32 - b.len()..].copy_from_slice(&b);
        out
    }

    #[test]
    fn digest_reduction_matches_big_integer_arithmetic() {
        let n = big(&ORDER);
        let max = (BigUint::from(1u8) << 256u32) - 1u8;
        let one = BigUint::from(1u8);
        let mut cases = vec![
            BigUint::from(0u8),
            one.clone(),
            &n - 1u8,
            n.clone(),
            &n + 1u8,
            &n + 0xffu8,
            max.clone(),
            &max - 1u8,
            // Borrows across every byte: n + 2^k for each k below 2^256 − n.
            &n + (&one << 64u32),
            &n + (&one << 127u32),
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut bytes = [0u8; 32];
            for b in bytes.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            // Half of them at or above n (top bytes forced to 0xff).
            if x & 1 == 1 {
                bytes[..4].copy_from_slice(&[0xff; 4]);
            }
            cases.push(big(&bytes));
        }
        for z in cases {
            assert!(z <= max);
            let want = be32(&(&z % &n));
            assert_eq!(reduce_mod_n(&be32(&z)), want, "z = {z:x}");
        }
    }

    #[test]
    fn limbs_are_little_endian_words() {
        let mut be = [0u8; 32];
        for (i, b) in be.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(
            limbs(&be),
            [
                0x18191a1b1c1d1e1f,
                0x1011121314151617,
                0x08090a0b0c0d0e0f,
                0x0001020304050607
            ]
        );
    }

    #[test]
    fn labels() {
        assert_eq!(Status::Ready.label(), "ready");
        assert_eq!(Status::NotBuilt.label(), "not built");
        assert_eq!(Status::NoCpu.label(), "cpu lacks avx512ifma");
        assert_eq!(
            MbError::Unavailable(Status::NoCpu.label()).to_string(),
            "multi-buffer verifier unavailable: cpu lacks avx512ifma"
        );
        assert_eq!(MbError::TooMany.to_string(), "more than 8 lanes");
    }
}
