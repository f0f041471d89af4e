//! The checks of ISO/IEC 18013-5 §9.3 on one document, as pure functions of their inputs and
//! `now`. The engine (`gatehouse-core`) runs them in the order SPEC §12 gives, caches what
//! [`verify_issuer`] proves, and adds freshness, revocation, one-time use and policy.

use crate::response::{
    decode_mso, device_authentication_bytes, DecodeError, DeviceAuth, Document, Mso,
};
use crate::x509::{CertError, DocumentSigner, TrustAnchors};
use gatehouse_protocol::{verify_es256, Backend, PublicKey, Reason};

/// COSE algorithm ES256 (ECDSA P-256 with SHA-256).
pub const ES256: i64 = -7;
/// COSE algorithm HMAC 256/256.
pub const HMAC_256: i64 = 5;

/// Why a document is denied, with the reason the verdict carries ([`MdocError::reason`]).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MdocError {
    /// The request, the DeviceResponse, the MSO or the SessionTranscript does not decode.
    #[error("malformed: {0}")]
    Decode(#[from] DecodeError),
    /// Signed with an algorithm gatehouse does not verify (ES384, EdDSA, …).
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(&'static str),
    /// The document signer was not issued by an IACA of the trust list.
    #[error("the document signer does not chain to a trusted IACA")]
    UnknownIssuer,
    /// The DS or IACA certificate breaks the Annex B profile or is outside its validity, or the
    /// MSO was signed outside the DS certificate's validity.
    #[error("issuer certificate not valid: {0}")]
    IssuerCertificate(String),
    /// The issuer's signature over the MSO does not verify.
    #[error("the issuer's signature over the MSO does not verify")]
    BadIssuerSignature,
    /// A disclosed element, or the docType, differs from what the issuer signed.
    #[error("not what the issuer signed: {0}")]
    IssuerDataMismatch(String),
    /// Before the MSO's validFrom.
    #[error("the MSO is not yet valid")]
    NotYetValid,
    /// At or after the MSO's validUntil.
    #[error("the MSO has expired")]
    Expired,
    /// The device key is not a P-256 point, or the device's signature or MAC does not verify.
    #[error("device authentication does not verify")]
    BadDeviceAuth,
    /// A MAC-authenticated response at a scanner whose role does not accept one.
    #[error("device MAC authentication is not accepted at this scanner")]
    MacNotAllowed,
}

impl MdocError {
    /// The verdict's reason (SPEC §9).
    pub fn reason(&self) -> Reason {
        match self {
            MdocError::Decode(_) => Reason::Malformed,
            MdocError::UnsupportedAlgorithm(_) => Reason::UnsupportedAlgorithm,
            MdocError::UnknownIssuer => Reason::UnknownIssuer,
            MdocError::IssuerCertificate(_) => Reason::IssuerKeyNotValid,
            MdocError::BadIssuerSignature => Reason::BadIssuerSignature,
            MdocError::IssuerDataMismatch(_) => Reason::IssuerDataMismatch,
            MdocError::NotYetValid => Reason::NotYetValid,
            MdocError::Expired => Reason::Expired,
            MdocError::BadDeviceAuth => Reason::BadDeviceSignature,
            MdocError::MacNotAllowed => Reason::DeviceMacNotAllowed,
        }
    }
}

fn cert_error(e: CertError) -> MdocError {
    match e {
        CertError::UnknownIssuer | CertError::BadSignature | CertError::NotIssued(_) => {
            MdocError::UnknownIssuer
        }
        CertError::Algorithm(what) => MdocError::UnsupportedAlgorithm(what),
        other => MdocError::IssuerCertificate(other.to_string()),
    }
}

fn alg_name(alg: i64) -> &'static str {
    match alg {
        -35 => "ES384 is not verified by gatehouse (ES256 only)",
        -36 => "ES512 is not verified by gatehouse (ES256 only)",
        -8 | -19 => "EdDSA is not verified by gatehouse (ES256 only)",
        _ => "the signature algorithm is not ES256",
    }
}

/// What the issuer's signature proves about a document: the same for every presentation of
/// it, so the engine caches it under SHA-256 of the `issuerAuth` bytes.
#[derive(Debug, Clone)]
pub struct IssuerFacts {
    /// The signed MSO.
    pub mso: Mso,
    /// The document signer and its chain's validity.
    pub signer: DocumentSigner,
    /// The MSO's device key.
    pub device_key: PublicKey,
}

/// ISO §9.3.1 steps 1–2: the DS certificate in `x5chain` chains to a trusted IACA (Annex B
/// profile, validity at `now`), and its ES256 signature over the MSO verifies; the MSO decodes
/// and was signed inside the DS certificate's validity.
pub fn verify_issuer(
    doc: &Document<'_>,
    anchors: &TrustAnchors,
    now: i64,
) -> Result<IssuerFacts, MdocError> {
    let auth = &doc.issuer_auth;
    if auth.alg != ES256 {
        return Err(MdocError::UnsupportedAlgorithm(alg_name(auth.alg)));
    }
    let ds = auth
        .x5chain
        .first()
        .ok_or(DecodeError::Field("x5chain in issuerAuth"))?;
    let signer = anchors.document_signer(ds, now).map_err(cert_error)?;
    let payload = auth
        .payload
        .ok_or(DecodeError::Field("issuerAuth payload"))?;
    let rs: &[u8; 64] = auth
        .signature
        .try_into()
        .map_err(|_| MdocError::BadIssuerSignature)?;
    let key = PublicKey::from_sec1(&signer.key).map_err(|_| MdocError::BadIssuerSignature)?;
    verify_es256(Backend::Ring, &key, &auth.to_be_signed(payload), rs)
        .map_err(|_| MdocError::BadIssuerSignature)?;
    let mso = decode_mso(payload)?;
    if mso.signed < signer.ds_validity.0 || mso.signed >= signer.ds_validity.1 {
        return Err(MdocError::IssuerCertificate(
            "the MSO was signed outside the document signer's validity".into(),
        ));
    }
    // A deviceKey that is not a P-256 point: the MSO does not decode (SPEC §12.2 step 4).
    let device_key = PublicKey::from_sec1(&mso.device_key)
        .map_err(|_| DecodeError::Field("deviceKey (a point on P-256)"))?;
    Ok(IssuerFacts {
        mso,
        signer,
        device_key,
    })
}

/// ISO §9.3.1 steps 3–5 with what the issuer proved (fresh or cached): the certificates are
/// still valid at `now`, every disclosed element's digest is in the MSO, the docType is the
/// MSO's, and `now` is inside the MSO's validity.
pub fn check_document(doc: &Document<'_>, facts: &IssuerFacts, now: i64) -> Result<(), MdocError> {
    if now < facts.signer.not_before || now >= facts.signer.not_after {
        return Err(MdocError::IssuerCertificate(
            CertError::NotValid.to_string(),
        ));
    }
    let mso = &facts.mso;
    for (ns, items) in &doc.name_spaces {
        for item in items {
            let expected = mso.digest(ns, item.digest_id).ok_or_else(|| {
                MdocError::IssuerDataMismatch(format!(
                    "{ns}/{}: digest ID {} is not in the MSO",
                    item.identifier, item.digest_id
                ))
            })?;
            if mso.digest_algorithm.digest(item.raw) != expected {
                return Err(MdocError::IssuerDataMismatch(format!(
                    "{ns}/{}: digest differs from the MSO's",
                    item.identifier
                )));
            }
        }
    }
    if doc.doc_type != mso.doc_type {
        return Err(MdocError::IssuerDataMismatch(
            "the document's docType is not the MSO's".into(),
        ));
    }
    if now < mso.valid_from {
        return Err(MdocError::NotYetValid);
    }
    if now >= mso.valid_until {
        return Err(MdocError::Expired);
    }
    Ok(())
}

/// ISO §9.1.3: the device authenticated this session's response. `transcript` is the
/// SessionTranscript's bytes (the bare array). A `deviceSignature` is checked with plain ES256
/// (no low-s rule: stock wallets' signatures are high-s half the time). A `deviceMac` is
/// checked only when `allow_mac`, with the reader's ephemeral private key `reader_key` (from
/// which, with the MSO's device key, EMacKey is derived: HKDF-SHA-256 of the ECDH secret,
/// salt SHA-256(SessionTranscriptBytes), info "EMacKey").
pub fn verify_device(
    doc: &Document<'_>,
    facts: &IssuerFacts,
    transcript: &[u8],
    reader_key: Option<&[u8; 32]>,
    allow_mac: bool,
) -> Result<(), MdocError> {
    match device_check(doc, facts, transcript, reader_key, allow_mac)? {
        DeviceCheck::Done => Ok(()),
        DeviceCheck::Signature { signed, rs } => {
            verify_es256(Backend::Ring, &facts.device_key, &signed, &rs)
                .map_err(|_| MdocError::BadDeviceAuth)
        }
    }
}

/// What [`device_check`] leaves to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCheck {
    /// Nothing: the device MAC verified.
    Done,
    /// The device signature `rs` over `signed` (a `Sig_structure`) with the MSO's device key:
    /// plain ES256, which the caller checks singly or with others.
    Signature {
        /// The bytes signed.
        signed: Vec<u8>,
        /// `r ‖ s` as received.
        rs: [u8; 64],
    },
}

/// [`verify_device`] up to the device signature's verification, which it returns: a caller
/// that checks several signatures at once (the engine's multi-buffer path) takes it from here.
/// A MAC is checked here, whole.
pub fn device_check(
    doc: &Document<'_>,
    facts: &IssuerFacts,
    transcript: &[u8],
    reader_key: Option<&[u8; 32]>,
    allow_mac: bool,
) -> Result<DeviceCheck, MdocError> {
    let payload = device_authentication_bytes(transcript, doc.doc_type, doc.device_name_spaces);
    match &doc.device_auth {
        DeviceAuth::Signature(sig) => {
            if sig.alg != ES256 {
                return Err(MdocError::UnsupportedAlgorithm(alg_name(sig.alg)));
            }
            if sig.payload.is_some() {
                return Err(
                    DecodeError::Field("deviceSignature payload (must be detached)").into(),
                );
            }
            let rs: [u8; 64] = sig
                .signature
                .try_into()
                .map_err(|_| MdocError::BadDeviceAuth)?;
            Ok(DeviceCheck::Signature {
                signed: sig.to_be_signed(&payload),
                rs,
            })
        }
        DeviceAuth::Mac(mac) => {
            if !allow_mac {
                return Err(MdocError::MacNotAllowed);
            }
            // SPEC §12.2 step 8: the reader key's absence before the algorithm.
            let reader = reader_key.ok_or(DecodeError::Field(
                "the reader's ephemeral key (request key 6), which a deviceMac needs",
            ))?;
            if mac.alg != HMAC_256 {
                return Err(MdocError::UnsupportedAlgorithm(
                    "the device MAC algorithm is not HMAC 256/256",
                ));
            }
            let key = emac_key(reader, &facts.mso.device_key, transcript)?;
            use hmac::Mac;
            let mut h = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key)
                .map_err(|_| MdocError::BadDeviceAuth)?;
            h.update(&mac.to_be_maced(&payload));
            h.verify_slice(mac.tag)
                .map(|()| DeviceCheck::Done)
                .map_err(|_| MdocError::BadDeviceAuth)
        }
    }
}

/// The same ES256 signature with a low s: (r, n − s) when s > n/2, else as it is. ES256 accepts
/// (r, s) exactly when it accepts (r, n − s), so a verifier that requires a low s (the engine's
/// multi-buffer path) checks a stock wallet's signature through this without changing the
/// verdict. `None` when r or s is out of range (the signature is invalid either way).
pub fn low_s(rs: &[u8; 64]) -> Option<[u8; 64]> {
    let sig = p256::ecdsa::Signature::from_slice(rs).ok()?;
    let low = sig.normalize_s().unwrap_or(sig);
    let mut out = [0u8; 64];
    out.copy_from_slice(&low.to_bytes());
    Some(out)
}

/// EMacKey (ISO §9.1.3.5) from the reader's ephemeral private key and the device key.
pub fn emac_key(
    reader: &[u8; 32],
    device_key: &[u8],
    transcript: &[u8],
) -> Result<[u8; 32], MdocError> {
    use sha2::Digest;
    let secret = p256::SecretKey::from_slice(reader)
        .map_err(|_| DecodeError::Field("reader key (a P-256 scalar)"))?;
    let device =
        p256::PublicKey::from_sec1_bytes(device_key).map_err(|_| MdocError::BadDeviceAuth)?;
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), device.as_affine());
    let salt = sha2::Sha256::digest(crate::response::tag24(transcript));
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), shared.raw_secret_bytes());
    let mut okm = [0u8; 32];
    hk.expand(b"EMacKey", &mut okm)
        .map_err(|_| MdocError::BadDeviceAuth)?;
    Ok(okm)
}
