//! # gatehouse-mdoc
//!
//! ISO/IEC 18013-5 mobile documents (mdoc, mDL) as a reader forwards them to gatehouse: the
//! `DeviceResponse` of one session and that session's `SessionTranscript`. Decoding in the mdoc
//! profile of CBOR ([`cbor`]: bounded, total, typed errors, every hashed byte kept as received),
//! the issuer's certificates ([`TrustAnchors`]: IACA roots, Annex B profiles), and the checks of
//! ISO §9.3 as pure functions of their inputs and `now` ([`verify_issuer`], [`check_document`],
//! [`verify_device`]). No IO, no clock. SPEC §12 is the contract.

pub mod cbor;
mod response;
pub mod time;
mod verify;
mod x509;

pub use response::{
    decode_device_response, decode_mso, device_authentication_bytes, head,
    session_transcript_bytes, tag24, DecodeError, DeviceAuth, DeviceResponse, DigestAlgorithm,
    Document, IssuerSignedItem, Mac0, Mso, Sign1, MAX_DEVICE_RESPONSE, MAX_SESSION_TRANSCRIPT,
    MAX_X5CHAIN, MDL_DOCTYPE, MDL_NAMESPACE,
};
pub use verify::{
    check_document, device_check, emac_key, low_s, verify_device, verify_issuer, DeviceCheck,
    IssuerFacts, MdocError, ES256, HMAC_256,
};
pub use x509::{signer_fingerprint, CertError, DocumentSigner, Iaca, TrustAnchors};
