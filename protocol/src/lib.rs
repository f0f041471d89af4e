//! # gatehouse-protocol
//!
//! The formats that holders' phones, scanners and the gatehouse engine share, and the
//! primitives to make and check them:
//!
//! - a **credential** ([`Credential`]), signed once by an issuer (ES256, COSE_Sign1);
//! - a **rotating presentation token** ([`Presentation`] to make, [`Token`] to read): the
//!   credential, a timestamp, a nonce and an optional scanner challenge, signed by the
//!   holder's device key; shown as QR text ([`to_qr_text`]) or sent raw over NFC;
//! - **revocation lists** ([`RevocationList`]): numbered snapshots and deltas, signed by a
//!   revocation key when they travel ([`SignedRevocationList`]);
//! - the **wire protocol** between scanners and the engine over QUIC ([`Request`],
//!   [`Response`], [`Verdict`], [`Reason`]).
//!
//! `protocol/SPEC.md` describes every byte, the checks a verifier makes in order, and test
//! vectors ([`vectors`]).
//!
//! This crate does no IO and reads no clock: time is an argument, randomness (the nonce) is an
//! argument. Decoding is total: any byte string yields a value or a typed [`DecodeError`],
//! never a panic, and every length is bounded before anything is allocated. Policy,
//! revocation and one-time use are the engine's (`gatehouse-engine`).
//!
//! ```
//! use gatehouse_protocol::*;
//!
//! let issuer = PrivateKey::from_bytes(&[1; 32])?;
//! let device = PrivateKey::from_bytes(&[2; 32])?;
//! let credential = Credential {
//!     id: [1; 16],
//!     credential_type: CredentialType::MilitaryId,
//!     category: HolderCategory::Enlisted,
//!     subject: [2; 16],
//!     sponsor: None,
//!     not_before: 1_700_000_000,
//!     not_after: 1_900_000_000,
//!     leave: None,
//!     unit: "1/12/103".parse()?,
//!     entitlements: Entitlements::BASE_ENTRY | Entitlements::MILITARY_DISCOUNT,
//!     birth_date: Some(Date::new(2004, 3, 1)?),
//!     age_over_19: None,
//!     device_key: *device.public().compressed(),
//! }
//! .issue(&issuer)?;
//! let token = Presentation { credential: &credential, timestamp: 1_800_000_000, nonce: [7; 16], challenge: None }
//!     .sign(&device)?;
//! let qr = to_qr_text(&token);
//! let read = Token::decode(&from_qr_text(&qr)?)?;
//! verify(Backend::Ring, issuer.public(), &read.credential.to_be_signed(), &read.credential.signature)?;
//! verify(Backend::Ring, &read.device_key()?, &read.to_be_signed(), &read.signature)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod basepoint;
mod cbor;
pub mod codes;
mod cose;
mod credential;
mod crypto;
mod error;
mod reason;
mod revocation;
mod text;
mod token;
mod types;
pub mod vectors;
mod wire;

pub use cose::{ALG_ES256, LABEL_R_Y_PARITY, TAG_COSE_SIGN1};
pub use credential::{
    Credential, Id, SignedCredential, CREDENTIAL_AAD, CREDENTIAL_VERSION, MAX_CREDENTIAL_LEN,
};
pub use crypto::{verify, verify_es256, verify_strict, Backend, PrivateKey, PublicKey, Signature};
pub use error::{DecodeError, SignError, SignatureError};
pub use reason::Reason;
pub use revocation::{
    RevocationEntry, RevocationKind, RevocationList, RevocationListError, SignedRevocationList,
    StateDigest, MAX_REVOCATION_ENTRIES, MAX_SIGNED_REVOCATION_LEN, REVOCATION_AAD,
    REVOCATION_VERSION, REVOCATION_VERSION_DIGEST,
};
pub use text::{from_qr_text, to_qr_text, QR_PREFIX};
pub use token::{
    Presentation, Token, TokenParams, MAX_CHALLENGE_LEN, MAX_TOKEN_LEN, NONCE_LEN, TOKEN_AAD,
    TOKEN_VERSION,
};
pub use types::{CredentialType, Date, Entitlements, HolderCategory, UnitPath, MAX_UNIT_DEPTH};
pub use wire::{
    kind, request_id, retry_tag, split_frame, Attributes, FrameHeader, MdocRequest, Predicate,
    Request, Response, Verdict, WireErrorCode, ALPN, FRAME_HEADER_LEN, MAX_BATCH, MAX_ERROR_TEXT,
    MAX_FRAME_BODY, MAX_MDOC_RESPONSE, MAX_SESSION_TRANSCRIPT, READER_KEY_LEN, RETRY_KEY_LEN,
    WIRE_VERSION,
};
