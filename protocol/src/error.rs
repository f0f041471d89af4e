//! Typed errors. Decoding errors are precise, allocation-free and carry the name of the field
//! that failed, so a scanner vendor can tell which byte of their encoder is wrong.

/// Why a byte string is not a valid gatehouse structure.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended in the middle of an item.
    #[error("input ends early")]
    Truncated,
    /// Bytes follow the end of the structure.
    #[error("trailing data after {0}")]
    TrailingData(&'static str),
    /// The item is valid CBOR but not in deterministic encoding (non-minimal integer head,
    /// indefinite length, reserved value, map keys out of order or repeated).
    #[error("{0} is not deterministically encoded")]
    NonCanonical(&'static str),
    /// The item has another CBOR type than the field requires.
    #[error("{0} has the wrong type")]
    WrongType(&'static str),
    /// A length is larger than the format allows.
    #[error("{0} is too long")]
    TooLong(&'static str),
    /// A fixed-size field has another size.
    #[error("{0} has the wrong length")]
    BadLength(&'static str),
    /// A number lies outside the field's range.
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    /// An enumerated field holds a value this version does not define.
    #[error("{0} has an unknown value")]
    UnknownValue(&'static str),
    /// A map holds a key this version does not define.
    #[error("{0} has an unknown key")]
    UnknownKey(&'static str),
    /// A required field is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// The structure's version is not one this library reads.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u64),
    /// The fields are each valid but contradict each other.
    #[error("inconsistent fields: {0}")]
    Inconsistent(&'static str),
    /// The QR text form lacks the `GH1:` prefix.
    #[error("QR text does not start with GH1:")]
    BadPrefix,
    /// The QR text form is not valid base45.
    #[error("QR text is not valid base45")]
    BadBase45,
}

/// Why a signature does not verify.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// r or s is zero or not below the group order.
    #[error("r or s out of range")]
    OutOfRange,
    /// s is above n/2: gatehouse signatures use the low form only.
    #[error("s is not in low form")]
    HighS,
    /// The signature does not verify under the key.
    #[error("signature does not verify")]
    Invalid,
    /// The signature verifies but its R y-parity bit is wrong (checked by strict verifiers).
    #[error("R y-parity bit is wrong")]
    WrongParity,
    /// The public key is not a valid P-256 point.
    #[error("public key is not a valid P-256 point")]
    BadKey,
}

/// Why a structure could not be signed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The private key bytes are not a valid P-256 scalar.
    #[error("private key is not a valid P-256 scalar")]
    BadKey,
    /// The signer failed (a nonce that made r or s zero; astronomically rare).
    #[error("signing failed")]
    Failed,
    /// The structure violates a limit of the format.
    #[error("structure is invalid: {0}")]
    Invalid(DecodeError),
}
