//! Test ISO/IEC 18013-5 mobile driving licences (mDL): a test IACA, document signers it
//! issues, mDL documents they sign, and the `DeviceResponse`s a holder's device would send to
//! a reader, with a device signature or a device MAC, for a reader session made here too.
//!
//! **TEST KEYS ONLY.** Every key is generated on this machine and written in clear PEM; the
//! certificates say `TEST ONLY` in their common names. They exercise the verifier
//! (`gatehouse-mdoc`), the demo and the load harness; no reader should ever trust them.
//!
//! What is made follows the ISO profile the verifier checks: an IACA with basicConstraints
//! `cA` (path length 0) and keyUsage keyCertSign + cRLSign; a document signer (DS) with
//! keyUsage digitalSignature (critical) and extendedKeyUsage 1.0.18013.5.1.2; P-256 and
//! ECDSA-SHA256 throughout; an MSO over SHA-256 digests of each `IssuerSignedItemBytes`,
//! signed ES256 in an untagged COSE_Sign1 with the DS certificate in `x5chain`.
//!
//! ```
//! use gatehouse_dev::mdoc::*;
//! use gatehouse_protocol::PrivateKey;
//!
//! let now = 1_750_000_000;
//! let iaca = TestIaca::generate("KR", None, "example IACA", now - 86_400, now + 86_400 * 3650)?;
//! let ds = iaca.document_signer("example DS", now - 86_400, now + 86_400 * 365)?;
//! let device = PrivateKey::from_bytes(&[7; 32])?;
//! let elements = mdl_elements_for_test("1990-05-01", true);
//! let doc = ds.issue(&elements, now - 60, now + 86_400 * 30, &device, b"seed")?;
//! let session = ReaderSession::new(b"session");
//! let response = doc.present(&device, &session, &["age_over_19"]);
//! verify_presentation(&iaca.cert_der, &response, &session.transcript, None, now)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use gatehouse_mdoc::{
    check_document, decode_device_response, device_authentication_bytes, emac_key, head, tag24,
    verify_device, verify_issuer, Iaca, TrustAnchors, MDL_DOCTYPE, MDL_NAMESPACE,
};
use gatehouse_protocol::PrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};

/// The extended key usage of an mdoc document signer (ISO/IEC 18013-5 Annex B.1.4).
pub const MDOC_DS_EKU: [u64; 6] = [1, 0, 18013, 5, 1, 2];

/// What every test certificate's common name carries (appended when the name given lacks it).
pub const TEST_ONLY: &str = "TEST ONLY";

/// The first line of a key file written by [`TestIaca::key_pem`] or [`TestSigner::key_pem`].
pub const KEY_WARNING: &str =
    "# TEST ONLY: a gatehouse test mdoc key. Never use it, or what it signed, in production.\n";

/// Protected header `{1: -7}` (alg ES256).
const PROTECTED_ES256: [u8; 3] = [0xa1, 0x01, 0x26];
/// Protected header `{1: 5}` (alg HMAC 256/256).
const PROTECTED_HMAC: [u8; 3] = [0xa1, 0x01, 0x05];
/// `DeviceNameSpacesBytes` with no device-signed elements: `#6.24(bstr .cbor {})`.
const EMPTY_DEVICE_NAME_SPACES: [u8; 4] = [0xd8, 0x18, 0x41, 0xa0];
/// Unix seconds of 1950-01-01 and of 9999-12-31T23:59:59: the times these tools write.
const EARLIEST: i64 = -631_152_000;
const LATEST: i64 = 253_402_300_799;

/// Why a test IACA, signer, document or presentation could not be made or read.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum MdocToolError {
    /// Key or certificate generation failed.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A validity that is empty, or a time outside 1950–9999.
    #[error("validity {0}..{1} is empty or outside the years 1950 to 9999")]
    Validity(i64, i64),
    /// Not an ISO 3166-1 alpha-2 country code.
    #[error("country {0:?} is not two capital letters (ISO 3166-1 alpha-2)")]
    Country(String),
    /// A PEM certificate or key that does not read, or that does not belong with the other.
    #[error("{0}")]
    Pem(String),
    /// The certificate is not one the verifier accepts.
    #[error("certificate: {0}")]
    Certificate(#[from] gatehouse_mdoc::CertError),
    /// Signing failed (astronomically rare) or a key is not a P-256 scalar.
    #[error("{0}")]
    Sign(#[from] gatehouse_protocol::SignError),
    /// The same element identifier twice.
    #[error("element {0:?} is given twice")]
    DuplicateElement(String),
    /// Bytes that are not a document [`MdlDocument::to_bytes`] wrote.
    #[error("not an mDL document file: {0}")]
    Document(&'static str),
    /// The verifier refused a presentation ([`verify_presentation`]).
    #[error("the verifier refuses it: {0}")]
    Refused(#[from] gatehouse_mdoc::MdocError),
}

// ---------------------------------------------------------------------------------------------
// Certificates and keys

/// Checks a validity and gives rcgen's form of each end.
fn set_validity(
    params: &mut CertificateParams,
    not_before: i64,
    not_after: i64,
) -> Result<(), MdocToolError> {
    if not_before >= not_after || not_before < EARLIEST || not_after > LATEST {
        return Err(MdocToolError::Validity(not_before, not_after));
    }
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let at = |t: i64| {
        let d = std::time::Duration::from_secs(t.unsigned_abs());
        if t >= 0 {
            epoch + d
        } else {
            epoch - d
        }
    };
    params.not_before = at(not_before);
    params.not_after = at(not_after);
    Ok(())
}

/// `name`, with ` (TEST ONLY)` appended unless it already says so.
fn test_name(name: &str) -> String {
    if name.contains(TEST_ONLY) {
        name.to_string()
    } else {
        format!("{name} ({TEST_ONLY})")
    }
}

fn iaca_params(
    country: &str,
    state: Option<&str>,
    common_name: &str,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, MdocToolError> {
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(MdocToolError::Country(country.to_string()));
    }
    let mut params = CertificateParams::default();
    set_validity(&mut params, not_before, not_after)?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CountryName,
        DnValue::PrintableString(country.try_into()?),
    );
    if let Some(st) = state {
        dn.push(DnType::StateOrProvinceName, st);
    }
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// PEM text without comment lines (the key files' TEST ONLY warning).
fn strip_comments(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn read_key(key_pem: &str) -> Result<KeyPair, MdocToolError> {
    KeyPair::from_pem(&strip_comments(key_pem))
        .map_err(|e| MdocToolError::Pem(format!("not a PKCS#8 P-256 key: {e}")))
}

fn read_cert(cert_pem: &str) -> Result<Vec<u8>, MdocToolError> {
    let certs = gatehouse_certs::parse_certs(cert_pem.as_bytes(), std::path::Path::new("PEM"))
        .map_err(|e| MdocToolError::Pem(e.to_string()))?;
    Ok(certs.first().map(|c| c.to_vec()).unwrap_or_default())
}

/// Whether the certificate `der` carries the public key of `key` (its SubjectPublicKeyInfo,
/// byte for byte, is inside the certificate's).
fn holds_key(der: &[u8], key: &KeyPair) -> bool {
    let spki = key.public_key_der();
    der.windows(spki.len()).any(|w| w == spki.as_slice())
}

/// The private scalar of a P-256 PKCS#8 key, as the protocol's signing key.
fn signing_key(key: &KeyPair) -> Result<PrivateKey, MdocToolError> {
    use p256::pkcs8::DecodePrivateKey;
    let secret = p256::SecretKey::from_pkcs8_der(&key.serialize_der())
        .map_err(|e| MdocToolError::Pem(format!("not a P-256 key: {e}")))?;
    Ok(PrivateKey::from_bytes(&secret.to_bytes().into())?)
}

/// A test IACA (issuing authority CA): self-signed, P-256, ECDSA-SHA256, basicConstraints
/// `cA` with path length 0, keyUsage keyCertSign + cRLSign, subject
/// `C=<country>[, ST=<state>], CN=<name> (TEST ONLY)`. **TEST KEY ONLY.**
pub struct TestIaca {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    cert_pem: String,
    /// What rcgen signs document signers with: the IACA's subject and key identifier.
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for TestIaca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIaca")
            .field("cert_der", &format_args!("{} bytes", self.cert_der.len()))
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TestIaca {
    /// A new IACA with a fresh key, valid from `not_before` to `not_after` (Unix seconds).
    /// `country` is ISO 3166-1 alpha-2 (`KR`); `common_name` gets ` (TEST ONLY)` appended
    /// unless it says so.
    pub fn generate(
        country: &str,
        state: Option<&str>,
        common_name: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<TestIaca, MdocToolError> {
        let params = iaca_params(
            country,
            state,
            &test_name(common_name),
            not_before,
            not_after,
        )?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        Ok(TestIaca {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            cert,
            key,
        })
    }

    /// The certificate, PEM (what a verifier's trust list takes).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The private key, PKCS#8 PEM, after a `# TEST ONLY` comment line ([`KEY_WARNING`]).
    pub fn key_pem(&self) -> String {
        format!("{KEY_WARNING}{}", self.key.serialize_pem())
    }

    /// Reads back an IACA that [`TestIaca::cert_pem`] and [`TestIaca::key_pem`] wrote, to issue
    /// more document signers. The key must be the certificate's, and the certificate one
    /// these tools made (its subject is rebuilt to sign with): checked by issuing a probe
    /// document signer and verifying it against the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<TestIaca, MdocToolError> {
        let cert_der = read_cert(cert_pem)?;
        let key = read_key(key_pem)?;
        if !holds_key(&cert_der, &key) {
            return Err(MdocToolError::Pem(
                "the IACA key is not the IACA certificate's".into(),
            ));
        }
        let iaca = Iaca::from_der(&cert_der)?;
        let (country, state) = match iaca.authority.split_once('-') {
            Some((c, s)) => (c, Some(s)),
            None => (iaca.authority.as_str(), None),
        };
        let params = iaca_params(
            country,
            state,
            &iaca.common_name,
            iaca.not_before,
            iaca.not_after,
        )?;
        let cert = params.self_signed(&key)?;
        let loaded = TestIaca {
            cert_der,
            cert_pem: cert_pem.to_string(),
            cert,
            key,
        };
        let probe = loaded.document_signer("probe", iaca.not_before, iaca.not_after)?;
        TrustAnchors::new(vec![iaca.clone()])
            .document_signer(&probe.cert_der, iaca.not_before)
            .map_err(|e| {
                MdocToolError::Pem(format!(
                    "the IACA certificate is not one these tools made ({e})"
                ))
            })?;
        Ok(loaded)
    }

    /// A document signer certificate issued by this IACA, with a fresh P-256 key: keyUsage
    /// digitalSignature (critical), extendedKeyUsage 1.0.18013.5.1.2, the IACA's subject as
    /// issuer, an authority key identifier; `common_name` gets ` (TEST ONLY)` appended unless
    /// it says so.
    pub fn document_signer(
        &self,
        common_name: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<TestSigner, MdocToolError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        set_validity(&mut params, not_before, not_after)?;
        let mut dn = DistinguishedName::new();
        if let Some(country) = self
            .cert
            .params()
            .distinguished_name
            .get(&DnType::CountryName)
        {
            dn.push(DnType::CountryName, country.clone());
        }
        dn.push(DnType::CommonName, test_name(common_name));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(MDOC_DS_EKU.to_vec())];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(TestSigner {
            cert_der: cert.der().to_vec(),
            key: signing_key(&key)?,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A test document signer: its certificate (issued by a [`TestIaca`]) and its key, which signs
/// MSOs. **TEST KEY ONLY.**
#[derive(Clone)]
pub struct TestSigner {
    /// The certificate, DER (what `issuerAuth`'s `x5chain` carries).
    pub cert_der: Vec<u8>,
    /// The private key.
    pub key: PrivateKey,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for TestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestSigner")
            .field("cert_der", &format_args!("{} bytes", self.cert_der.len()))
            .field("key", &self.key)
            .finish()
    }
}

impl TestSigner {
    /// The certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The private key, PKCS#8 PEM, after a `# TEST ONLY` comment line ([`KEY_WARNING`]).
    pub fn key_pem(&self) -> String {
        format!("{KEY_WARNING}{}", self.key_pem)
    }

    /// How a verifier's revocations name this signer: SHA-256 of its certificate's
    /// subjectPublicKeyInfo ([`gatehouse_mdoc::signer_fingerprint`]).
    pub fn fingerprint(&self) -> [u8; 32] {
        gatehouse_mdoc::signer_fingerprint(&self.cert_der).unwrap_or_default()
    }

    /// Reads back a signer that [`TestSigner::cert_pem`] and [`TestSigner::key_pem`] wrote; the
    /// key must be the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<TestSigner, MdocToolError> {
        let cert_der = read_cert(cert_pem)?;
        let pair = read_key(key_pem)?;
        if !holds_key(&cert_der, &pair) {
            return Err(MdocToolError::Pem(
                "the document signer key is not the certificate's".into(),
            ));
        }
        Ok(TestSigner {
            cert_der,
            key: signing_key(&pair)?,
            cert_pem: cert_pem.to_string(),
            key_pem: pair.serialize_pem(),
        })
    }

    /// Issues an mDL (docType `org.iso.18013.5.1.mDL`, every element in namespace
    /// `org.iso.18013.5.1`): the elements get digestIDs 0, 1, … in the order given, each a
    /// 16-byte `random` (the first 16 bytes of SHA-256(`seed` ‖ index as 8 bytes big-endian),
    /// so the same seed gives the same document); the MSO holds their SHA-256 digests,
    /// `device`'s public key, and the validity `signed` = `validFrom` = `valid_from`,
    /// `validUntil` = `valid_until` (Unix seconds; `signed` must fall inside the DS
    /// certificate's validity for a verifier to accept it); `issuerAuth` is this signer's
    /// ES256 over it.
    pub fn issue(
        &self,
        elements: &[(&str, Element)],
        valid_from: i64,
        valid_until: i64,
        device: &PrivateKey,
        seed: &[u8],
    ) -> Result<MdlDocument, MdocToolError> {
        if valid_from >= valid_until || valid_from < 0 || valid_until > LATEST {
            return Err(MdocToolError::Validity(valid_from, valid_until));
        }
        let mut items = Vec::with_capacity(elements.len());
        for (index, (identifier, value)) in elements.iter().enumerate() {
            if items
                .iter()
                .any(|i: &IssuedItem| i.identifier == *identifier)
            {
                return Err(MdocToolError::DuplicateElement(identifier.to_string()));
            }
            let mut h = Sha256::new();
            h.update(seed);
            h.update((index as u64).to_be_bytes());
            let random = h.finalize();
            items.push(IssuedItem {
                identifier: identifier.to_string(),
                bytes: issuer_signed_item(index as u64, &random[..16], identifier, value),
            });
        }
        let mso = mso(&items, valid_from, valid_until, device);
        // The payload is MobileSecurityObjectBytes: tag 24 around the MSO's bytes.
        let payload = tag24(&mso);
        let mut tbs = Vec::with_capacity(payload.len() + 32);
        sig_structure(&mut tbs, b"Signature1", &PROTECTED_ES256, &payload);
        let signature = self.key.sign(&tbs)?;
        let mut issuer_auth = Vec::with_capacity(payload.len() + self.cert_der.len() + 96);
        issuer_auth.push(0x84);
        bstr(&mut issuer_auth, &PROTECTED_ES256);
        issuer_auth.extend_from_slice(&[0xa1, 0x18, 0x21]);
        bstr(&mut issuer_auth, &self.cert_der);
        bstr(&mut issuer_auth, &payload);
        bstr(&mut issuer_auth, &signature.rs);
        Ok(MdlDocument {
            doc_type: MDL_DOCTYPE.to_string(),
            items,
            issuer_auth,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// CBOR

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn bstr(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

/// `[context, protected, h'', payload]` (RFC 9052 §4.4, §6.3), `payload` as a byte string.
fn sig_structure(out: &mut Vec<u8>, context: &[u8], protected: &[u8], payload: &[u8]) {
    out.push(0x84);
    head(out, 3, context.len() as u64);
    out.extend_from_slice(context);
    bstr(out, protected);
    out.push(0x40);
    bstr(out, payload);
}

/// An EC2 P-256 COSE_Key `{1: 2, -1: 1, -2: x, -3: y}` (RFC 9053 §7.1.1).
fn cose_key(out: &mut Vec<u8>, key: &gatehouse_protocol::PublicKey) {
    let point = key.uncompressed();
    out.extend_from_slice(&[0xa4, 0x01, 0x02, 0x20, 0x01, 0x21]);
    bstr(out, &point[1..33]);
    out.push(0x22);
    bstr(out, &point[33..]);
}

/// A `tdate`: tag 0 around `YYYY-MM-DDTHH:MM:SSZ`.
fn tdate(out: &mut Vec<u8>, t: i64) {
    let (y, m, d) = gatehouse_mdoc::time::civil(t, 0);
    let s = t.rem_euclid(86_400);
    out.push(0xc0);
    text(
        out,
        &format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            s / 3600,
            s / 60 % 60,
            s % 60
        ),
    );
}

/// One data element's value, as ISO/IEC 18013-5 §7.2.1 types it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// `tstr`.
    Text(String),
    /// `bool` (`age_over_NN`).
    Bool(bool),
    /// `uint`.
    Uint(u64),
    /// `full-date`: tag 1004 around `YYYY-MM-DD`.
    FullDate(String),
    /// `bstr` (a portrait).
    Bytes(Vec<u8>),
}

impl Element {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Element::Text(s) => text(out, s),
            Element::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
            Element::Uint(n) => head(out, 0, *n),
            Element::FullDate(s) => {
                out.extend_from_slice(&[0xd9, 0x03, 0xec]);
                text(out, s);
            }
            Element::Bytes(b) => bstr(out, b),
        }
    }
}

/// `IssuerSignedItemBytes`: tag 24 around
/// `{"digestID", "random", "elementIdentifier", "elementValue"}`.
fn issuer_signed_item(id: u64, random: &[u8], identifier: &str, value: &Element) -> Vec<u8> {
    let mut item = Vec::with_capacity(64 + identifier.len());
    item.push(0xa4);
    text(&mut item, "digestID");
    head(&mut item, 0, id);
    text(&mut item, "random");
    bstr(&mut item, random);
    text(&mut item, "elementIdentifier");
    text(&mut item, identifier);
    text(&mut item, "elementValue");
    value.encode(&mut item);
    tag24(&item)
}

/// The MobileSecurityObject (ISO §9.1.2.4) over `items`.
fn mso(items: &[IssuedItem], valid_from: i64, valid_until: i64, device: &PrivateKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(256 + 40 * items.len());
    m.push(0xa6);
    text(&mut m, "version");
    text(&mut m, "1.0");
    text(&mut m, "digestAlgorithm");
    text(&mut m, "SHA-256");
    text(&mut m, "valueDigests");
    m.push(0xa1);
    text(&mut m, MDL_NAMESPACE);
    head(&mut m, 5, items.len() as u64);
    for (id, item) in items.iter().enumerate() {
        head(&mut m, 0, id as u64);
        bstr(&mut m, &Sha256::digest(&item.bytes));
    }
    text(&mut m, "deviceKeyInfo");
    m.push(0xa1);
    text(&mut m, "deviceKey");
    cose_key(&mut m, device.public());
    text(&mut m, "docType");
    text(&mut m, MDL_DOCTYPE);
    text(&mut m, "validityInfo");
    m.push(0xa3);
    text(&mut m, "signed");
    tdate(&mut m, valid_from);
    text(&mut m, "validFrom");
    tdate(&mut m, valid_from);
    text(&mut m, "validUntil");
    tdate(&mut m, valid_until);
    m
}

// ---------------------------------------------------------------------------------------------
// Documents and presentations

/// One issued data element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedItem {
    /// `elementIdentifier`.
    pub identifier: String,
    /// Its `IssuerSignedItemBytes` (tag 24 included), exactly as the MSO's digest covers them.
    pub bytes: Vec<u8>,
}

/// An issued mDL as its holder's device keeps it: the issuer-signed elements and
/// `issuerAuth`. Presenting copies the stored bytes; nothing the issuer signed is re-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdlDocument {
    /// `docType`.
    pub doc_type: String,
    /// The elements (namespace `org.iso.18013.5.1`) in the order of their digestIDs.
    pub items: Vec<IssuedItem>,
    /// `issuerAuth`: the COSE_Sign1's bytes.
    pub issuer_auth: Vec<u8>,
}

impl MdlDocument {
    /// The element identifiers, in issue order.
    pub fn identifiers(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|i| i.identifier.as_str())
    }

    /// The document as bytes, to keep in a file: the CBOR map
    /// `{"docType": tstr, "items": [IssuerSignedItemBytes…], "issuerAuth": COSE_Sign1}`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size = self.issuer_auth.len() + self.items.iter().map(|i| i.bytes.len()).sum::<usize>();
        let mut out = Vec::with_capacity(size + 64);
        out.push(0xa3);
        text(&mut out, "docType");
        text(&mut out, &self.doc_type);
        text(&mut out, "items");
        head(&mut out, 4, self.items.len() as u64);
        for item in &self.items {
            out.extend_from_slice(&item.bytes);
        }
        text(&mut out, "issuerAuth");
        out.extend_from_slice(&self.issuer_auth);
        out
    }

    /// Reads what [`MdlDocument::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<MdlDocument, MdocToolError> {
        use gatehouse_mdoc::cbor::{decode, Node};
        let root = decode(bytes).map_err(|_| MdocToolError::Document("not CBOR"))?;
        let doc_type = root
            .get("docType")
            .and_then(Node::text)
            .ok_or(MdocToolError::Document("docType"))?;
        let mut items = Vec::new();
        for n in root
            .get("items")
            .and_then(Node::array)
            .ok_or(MdocToolError::Document("items"))?
        {
            let inner = n
                .embedded()
                .ok_or(MdocToolError::Document("an item is not tag 24"))?;
            let item = decode(inner).map_err(|_| MdocToolError::Document("an item"))?;
            let identifier = item
                .get("elementIdentifier")
                .and_then(Node::text)
                .ok_or(MdocToolError::Document("elementIdentifier"))?;
            items.push(IssuedItem {
                identifier: identifier.to_string(),
                bytes: n.raw.to_vec(),
            });
        }
        let auth = root
            .get("issuerAuth")
            .filter(|a| a.array().is_some_and(|a| a.len() == 4))
            .ok_or(MdocToolError::Document("issuerAuth"))?;
        Ok(MdlDocument {
            doc_type: doc_type.to_string(),
            items,
            issuer_auth: auth.raw.to_vec(),
        })
    }

    /// The DeviceResponse up to `deviceAuth`'s one entry, with the elements named in
    /// `disclose` (in issue order; names the document lacks are ignored).
    fn response_head(&self, disclose: &[&str]) -> Vec<u8> {
        let chosen: Vec<&IssuedItem> = self
            .items
            .iter()
            .filter(|i| disclose.contains(&i.identifier.as_str()))
            .collect();
        let size = self.issuer_auth.len() + chosen.iter().map(|i| i.bytes.len()).sum::<usize>();
        let mut out = Vec::with_capacity(size + 320);
        out.push(0xa3);
        text(&mut out, "version");
        text(&mut out, "1.0");
        text(&mut out, "documents");
        out.extend_from_slice(&[0x81, 0xa3]);
        text(&mut out, "docType");
        text(&mut out, &self.doc_type);
        text(&mut out, "issuerSigned");
        if chosen.is_empty() {
            // IssuerNameSpaces needs one element at least: none disclosed, none sent.
            out.push(0xa1);
        } else {
            out.push(0xa2);
            text(&mut out, "nameSpaces");
            out.push(0xa1);
            text(&mut out, MDL_NAMESPACE);
            head(&mut out, 4, chosen.len() as u64);
            for item in chosen {
                out.extend_from_slice(&item.bytes);
            }
        }
        text(&mut out, "issuerAuth");
        out.extend_from_slice(&self.issuer_auth);
        text(&mut out, "deviceSigned");
        out.push(0xa2);
        text(&mut out, "nameSpaces");
        out.extend_from_slice(&EMPTY_DEVICE_NAME_SPACES);
        text(&mut out, "deviceAuth");
        out.push(0xa1);
        out
    }

    /// `DeviceAuthenticationBytes` for this document in `session`.
    fn device_authentication(&self, session: &ReaderSession) -> Vec<u8> {
        device_authentication_bytes(
            &session.transcript,
            &self.doc_type,
            &EMPTY_DEVICE_NAME_SPACES,
        )
    }

    /// A DeviceResponse (version 1.0, status 0) with this document: the elements named in
    /// `disclose` (in issue order; names it lacks are ignored), `issuerAuth` as issued, no
    /// device-signed elements, and a `deviceSignature`: ES256 by `device` over the detached
    /// `DeviceAuthenticationBytes` of `session`. Should signing fail (probability about
    /// 2⁻¹²⁸, see [`PrivateKey::sign`]), the signature is all zeros, which every verifier
    /// refuses.
    pub fn present(
        &self,
        device: &PrivateKey,
        session: &ReaderSession,
        disclose: &[&str],
    ) -> Vec<u8> {
        let payload = self.device_authentication(session);
        let mut tbs = Vec::with_capacity(payload.len() + 32);
        sig_structure(&mut tbs, b"Signature1", &PROTECTED_ES256, &payload);
        let rs = device.sign(&tbs).map(|s| s.rs).unwrap_or([0; 64]);
        self.response(disclose, "deviceSignature", &PROTECTED_ES256, &rs)
    }

    /// [`MdlDocument::present`] with a `deviceMac` instead: HMAC-SHA256 (COSE HMAC 256/256)
    /// with EMacKey, from `session.reader_key` and `device`'s public key (ISO §9.1.3.5), over
    /// the detached `DeviceAuthenticationBytes`. Should the key agreement fail (it cannot with
    /// a session from [`ReaderSession::new`]), the tag is all zeros.
    pub fn present_mac(
        &self,
        device: &PrivateKey,
        session: &ReaderSession,
        disclose: &[&str],
    ) -> Vec<u8> {
        use hmac::Mac;
        let payload = self.device_authentication(session);
        let mut mac_structure = Vec::with_capacity(payload.len() + 32);
        sig_structure(&mut mac_structure, b"MAC0", &PROTECTED_HMAC, &payload);
        let tag = emac_key(
            &session.reader_key,
            device.public().uncompressed(),
            &session.transcript,
        )
        .ok()
        .and_then(|key| hmac::Hmac::<Sha256>::new_from_slice(&key).ok())
        .map(|mut h| {
            h.update(&mac_structure);
            <[u8; 32]>::from(h.finalize().into_bytes())
        })
        .unwrap_or([0; 32]);
        self.response(disclose, "deviceMac", &PROTECTED_HMAC, &tag)
    }

    /// The whole DeviceResponse, its `deviceAuth` being `kind` (`deviceSignature` or
    /// `deviceMac`): `[protected, {}, nil, auth]`, a detached payload.
    fn response(&self, disclose: &[&str], kind: &str, protected: &[u8], auth: &[u8]) -> Vec<u8> {
        let mut out = self.response_head(disclose);
        text(&mut out, kind);
        out.push(0x84);
        bstr(&mut out, protected);
        out.extend_from_slice(&[0xa0, 0xf6]);
        bstr(&mut out, auth);
        status_ok(&mut out);
        out
    }
}

/// `"status": 0`, the DeviceResponse's last entry.
fn status_ok(out: &mut Vec<u8>) {
    text(out, "status");
    out.push(0x00);
}

/// A reader's session as ISO/IEC 18013-5 QR engagement makes it: the device's and the
/// reader's ephemeral keys, and the SessionTranscript
/// `[DeviceEngagementBytes, EReaderKeyBytes, null]`, where the DeviceEngagement is
/// `{0: "1.0", 1: [1, EDeviceKeyBytes]}` and each key an EC2 P-256 COSE_Key under tag 24.
#[derive(Clone)]
pub struct ReaderSession {
    /// The SessionTranscript's bytes (the bare array, as the verifier takes it).
    pub transcript: Vec<u8>,
    /// EReaderKey's private scalar (what the verifier needs to check a device MAC).
    pub reader_key: [u8; 32],
}

impl std::fmt::Debug for ReaderSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderSession")
            .field(
                "transcript",
                &format_args!("{} bytes", self.transcript.len()),
            )
            .field("reader_key", &"<redacted>")
            .finish()
    }
}

/// A private key derived from `seed` and `label`: SHA-256(seed ‖ label), or, when that is not
/// a scalar in range, SHA-256(seed ‖ label ‖ counter as 8 bytes big-endian) for counter 1, 2, ….
fn derived_key(seed: &[u8], label: &[u8]) -> PrivateKey {
    let mut counter = 0u64;
    loop {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(label);
        if counter > 0 {
            h.update(counter.to_be_bytes());
        }
        if let Ok(key) = PrivateKey::from_bytes(&h.finalize().into()) {
            return key;
        }
        counter += 1;
    }
}

impl ReaderSession {
    /// A session whose ephemeral keys are derived from `seed` (the same seed, the same
    /// session): the reader's from SHA-256(seed ‖ "reader"), the device's from
    /// SHA-256(seed ‖ "device"). Seed it with fresh randomness for a real-looking session.
    pub fn new(seed: &[u8]) -> ReaderSession {
        let reader = derived_key(seed, b"reader");
        let device = derived_key(seed, b"device");
        let mut device_key = Vec::with_capacity(80);
        cose_key(&mut device_key, device.public());
        let mut engagement = Vec::with_capacity(100);
        engagement.extend_from_slice(&[0xa2, 0x00]);
        text(&mut engagement, "1.0");
        engagement.extend_from_slice(&[0x01, 0x82, 0x01]);
        engagement.extend_from_slice(&tag24(&device_key));
        let mut reader_key = Vec::with_capacity(80);
        cose_key(&mut reader_key, reader.public());
        let mut transcript = Vec::with_capacity(200);
        transcript.push(0x83);
        transcript.extend_from_slice(&tag24(&engagement));
        transcript.extend_from_slice(&tag24(&reader_key));
        transcript.push(0xf6);
        ReaderSession {
            transcript,
            reader_key: reader.to_bytes(),
        }
    }
}

/// A test holder's mDL elements: `family_name`, `given_name`, `birth_date` (as given,
/// `YYYY-MM-DD`), `issue_date`, `expiry_date`, `issuing_country` (`KR`),
/// `issuing_authority`, `document_number`, and `age_over_18`, `age_over_19`, `age_over_21`.
/// The test holder is either under 18 or over 21: all three age flags are `age_over_19`.
pub fn mdl_elements_for_test(birth_date: &str, age_over_19: bool) -> Vec<(&'static str, Element)> {
    let t = |s: &str| Element::Text(s.to_string());
    let date = |s: &str| Element::FullDate(s.to_string());
    vec![
        ("family_name", t("TEST")),
        ("given_name", t("HOLDER")),
        ("birth_date", date(birth_date)),
        ("issue_date", date("2025-01-01")),
        ("expiry_date", date("2035-01-01")),
        ("issuing_country", t("KR")),
        (
            "issuing_authority",
            t("gatehouse test authority (TEST ONLY)"),
        ),
        ("document_number", t("TEST-0000001")),
        ("age_over_18", Element::Bool(age_over_19)),
        ("age_over_19", Element::Bool(age_over_19)),
        ("age_over_21", Element::Bool(age_over_19)),
    ]
}

/// Full years of age at Unix time `now` (UTC) of someone born on `birth_date` (`YYYY-MM-DD`),
/// as `age_over_NN` counts them; `None` when the date is not one.
pub fn age_at(birth_date: &str, now: i64) -> Option<i64> {
    let birth = gatehouse_mdoc::time::full_date(birth_date)?;
    Some(gatehouse_mdoc::time::full_years(
        birth,
        gatehouse_mdoc::time::civil(now, 0),
    ))
}

/// Verifies a presentation as gatehouse would, against `iaca_der` alone, at `now`: the issuer
/// (chain, signature, digests, docType, validity) and the device (signature, or MAC when
/// `reader_key` is given). For tests and tools that check what they made.
pub fn verify_presentation(
    iaca_der: &[u8],
    device_response: &[u8],
    transcript: &[u8],
    reader_key: Option<&[u8; 32]>,
    now: i64,
) -> Result<(), MdocToolError> {
    use gatehouse_mdoc::MdocError;
    let anchors = TrustAnchors::new(vec![Iaca::from_der(iaca_der)?]);
    let response = decode_device_response(device_response).map_err(MdocError::from)?;
    let doc = &response.document;
    let facts = verify_issuer(doc, &anchors, now)?;
    check_document(doc, &facts, now)?;
    verify_device(doc, &facts, transcript, reader_key, true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use gatehouse_mdoc::{DeviceAuth, MdocError};

    const NOW: i64 = 1_750_000_000;
    const DAY: i64 = 86_400;

    /// An IACA renewed under the same name with a new key: with both listed, document signers
    /// of either verify (every IACA of the issuer's name is tried, not the first).
    #[test]
    fn a_renewed_iaca_of_the_same_name_vouches_for_its_signers() {
        let make = || TestIaca::generate("KR", None, "renewed IACA", NOW - DAY, NOW + 365 * DAY);
        let (old, renewed) = (make().unwrap(), make().unwrap());
        let anchors = TrustAnchors::new(vec![
            Iaca::from_der(&old.cert_der).unwrap(),
            Iaca::from_der(&renewed.cert_der).unwrap(),
        ]);
        for iaca in [&old, &renewed] {
            let ds = iaca.document_signer("ds", NOW - DAY, NOW + DAY).unwrap();
            assert!(anchors.document_signer(&ds.cert_der, NOW).is_ok());
        }
        let stranger = make()
            .unwrap()
            .document_signer("ds", NOW - DAY, NOW + DAY)
            .unwrap();
        let e = anchors
            .document_signer(&stranger.cert_der, NOW)
            .unwrap_err();
        assert!(matches!(e, gatehouse_mdoc::CertError::BadSignature), "{e}");
    }

    fn world() -> (TestIaca, TestSigner, PrivateKey, MdlDocument) {
        let iaca = TestIaca::generate(
            "KR",
            Some("Seoul"),
            "gatehouse test IACA",
            NOW - DAY,
            NOW + 3650 * DAY,
        )
        .unwrap();
        let ds = iaca
            .document_signer("gatehouse test DS", NOW - DAY, NOW + 365 * DAY)
            .unwrap();
        let device = PrivateKey::from_bytes(&[9; 32]).unwrap();
        let doc = ds
            .issue(
                &mdl_elements_for_test("1990-05-01", true),
                NOW - 60,
                NOW + 30 * DAY,
                &device,
                b"test seed",
            )
            .unwrap();
        (iaca, ds, device, doc)
    }

    #[test]
    fn signed_and_maced_presentations_verify() {
        let (iaca, _, device, doc) = world();
        let session = ReaderSession::new(b"one session");
        let all: Vec<&str> = doc.identifiers().collect();
        let signed = doc.present(&device, &session, &all);
        let maced = doc.present_mac(&device, &session, &all);
        for (response, key) in [(&signed, None), (&maced, Some(&session.reader_key))] {
            for at in [NOW, NOW + 29 * DAY] {
                verify_presentation(&iaca.cert_der, response, &session.transcript, key, at)
                    .unwrap();
            }
            // Outside the MSO's validity.
            assert!(matches!(
                verify_presentation(
                    &iaca.cert_der,
                    response,
                    &session.transcript,
                    key,
                    NOW + 31 * DAY
                ),
                Err(MdocToolError::Refused(MdocError::Expired))
            ));
        }
        let decoded = decode_device_response(&signed).unwrap();
        assert!(matches!(
            decoded.document.device_auth,
            DeviceAuth::Signature(_)
        ));
        assert_eq!(decoded.document.issuer_auth_raw, doc.issuer_auth.as_slice());
        let decoded = decode_device_response(&maced).unwrap();
        assert!(matches!(decoded.document.device_auth, DeviceAuth::Mac(_)));
        // The verifier's own steps, with the trust list built as a server builds it.
        let anchors = TrustAnchors::new(vec![Iaca::from_der(&iaca.cert_der).unwrap()]);
        let d = decode_device_response(&signed).unwrap();
        let facts = verify_issuer(&d.document, &anchors, NOW).unwrap();
        assert_eq!(facts.signer.authority, "KR-Seoul");
        assert_eq!(facts.mso.value_digests.len(), all.len());
        check_document(&d.document, &facts, NOW).unwrap();
        verify_device(&d.document, &facts, &session.transcript, None, false).unwrap();
        let d = decode_device_response(&maced).unwrap();
        assert!(matches!(
            verify_device(
                &d.document,
                &facts,
                &session.transcript,
                Some(&session.reader_key),
                false
            ),
            Err(MdocError::MacNotAllowed)
        ));
    }

    #[test]
    fn another_sessions_transcript_is_refused() {
        let (iaca, _, device, doc) = world();
        let session = ReaderSession::new(b"the device's session");
        let other = ReaderSession::new(b"another session");
        assert_ne!(session.transcript, other.transcript);
        let signed = doc.present(&device, &session, &["age_over_19"]);
        let maced = doc.present_mac(&device, &session, &["age_over_19"]);
        for (response, key) in [(&signed, None), (&maced, Some(&other.reader_key))] {
            assert!(matches!(
                verify_presentation(&iaca.cert_der, response, &other.transcript, key, NOW),
                Err(MdocToolError::Refused(MdocError::BadDeviceAuth))
            ));
        }
        // Another device's key, the right session.
        let thief = PrivateKey::from_bytes(&[10; 32]).unwrap();
        let stolen = doc.present(&thief, &session, &["age_over_19"]);
        assert!(matches!(
            verify_presentation(&iaca.cert_der, &stolen, &session.transcript, None, NOW),
            Err(MdocToolError::Refused(MdocError::BadDeviceAuth))
        ));
        // Another IACA does not vouch for this signer.
        let stranger = TestIaca::generate("KR", None, "other", NOW - DAY, NOW + DAY).unwrap();
        assert!(matches!(
            verify_presentation(&stranger.cert_der, &signed, &session.transcript, None, NOW),
            Err(MdocToolError::Refused(MdocError::UnknownIssuer))
        ));
    }

    #[test]
    fn disclosing_a_subset_sends_only_those_elements() {
        let (iaca, _, device, doc) = world();
        let session = ReaderSession::new(&[1, 2, 3]);
        let response = doc.present(&device, &session, &["birth_date", "age_over_19", "nope"]);
        verify_presentation(&iaca.cert_der, &response, &session.transcript, None, NOW).unwrap();
        let d = decode_device_response(&response).unwrap();
        let names: Vec<&str> = d.document.name_spaces[0]
            .1
            .iter()
            .map(|i| i.identifier)
            .collect();
        assert_eq!(d.document.name_spaces[0].0, MDL_NAMESPACE);
        assert_eq!(names, ["birth_date", "age_over_19"]);
        let over = d.document.element(MDL_NAMESPACE, "age_over_19").unwrap();
        assert_eq!(over.value.value, gatehouse_mdoc::cbor::Value::Bool(true));
        let birth = d.document.element(MDL_NAMESPACE, "birth_date").unwrap();
        let gatehouse_mdoc::cbor::Value::Tag(1004, date) = &birth.value.value else {
            panic!("birth_date is not a full-date");
        };
        assert_eq!(date.text(), Some("1990-05-01"));
        // Nothing disclosed: no nameSpaces at all, and it still verifies.
        let none = doc.present(&device, &session, &[]);
        verify_presentation(&iaca.cert_der, &none, &session.transcript, None, NOW).unwrap();
        assert!(decode_device_response(&none)
            .unwrap()
            .document
            .name_spaces
            .is_empty());
    }

    #[test]
    fn the_document_signer_meets_the_annex_b_profile() {
        let (iaca, ds, _, _) = world();
        let anchors = TrustAnchors::new(vec![Iaca::from_der(&iaca.cert_der).unwrap()]);
        let signer = anchors.document_signer(&ds.cert_der, NOW).unwrap();
        assert_eq!(signer.fingerprint, ds.fingerprint());
        assert_eq!(signer.key, ds.key.public().uncompressed().to_vec());
        assert_eq!(signer.ds_validity, (NOW - DAY, NOW + 365 * DAY));
        assert!(anchors
            .document_signer(&ds.cert_der, NOW - 2 * DAY)
            .is_err());
        let root = Iaca::from_der(&iaca.cert_der).unwrap();
        assert_eq!(root.authority, "KR-Seoul");
        assert!(root.common_name.contains(TEST_ONLY));
        assert_eq!(
            (root.not_before, root.not_after),
            (NOW - DAY, NOW + 3650 * DAY)
        );
        assert!(gatehouse_certs::subject_common_name(&ds.cert_der)
            .unwrap()
            .contains(TEST_ONLY));
        assert!(matches!(
            TestIaca::generate("Korea", None, "x", NOW, NOW + DAY),
            Err(MdocToolError::Country(_))
        ));
        assert!(matches!(
            TestIaca::generate("KR", None, "x", NOW, NOW),
            Err(MdocToolError::Validity(..))
        ));
    }

    #[test]
    fn pem_and_document_bytes_round_trip() {
        let (iaca, ds, device, doc) = world();
        assert!(iaca.key_pem().starts_with(KEY_WARNING));
        let iaca2 = TestIaca::from_pem(&iaca.cert_pem(), &iaca.key_pem()).unwrap();
        assert_eq!(iaca2.cert_der, iaca.cert_der);
        // The reloaded IACA issues signers that chain to the certificate on disk.
        let ds2 = iaca2
            .document_signer("second DS", NOW - DAY, NOW + DAY)
            .unwrap();
        let anchors = TrustAnchors::new(vec![Iaca::from_der(&iaca.cert_der).unwrap()]);
        anchors.document_signer(&ds2.cert_der, NOW).unwrap();
        let ds3 = TestSigner::from_pem(&ds.cert_pem(), &ds.key_pem()).unwrap();
        assert_eq!(ds3.cert_der, ds.cert_der);
        assert_eq!(ds3.key.to_bytes(), ds.key.to_bytes());
        // Mismatched pairs are refused.
        assert!(TestIaca::from_pem(&iaca.cert_pem(), &ds.key_pem()).is_err());
        assert!(TestSigner::from_pem(&ds.cert_pem(), &iaca.key_pem()).is_err());
        assert!(TestIaca::from_pem(&ds.cert_pem(), &ds.key_pem()).is_err());
        assert!(TestSigner::from_pem("junk", &ds.key_pem()).is_err());
        // Documents.
        let back = MdlDocument::from_bytes(&doc.to_bytes()).unwrap();
        assert_eq!(back, doc);
        assert!(MdlDocument::from_bytes(&doc.to_bytes()[1..]).is_err());
        let session = ReaderSession::new(b"s");
        assert_eq!(
            back.present(&device, &session, &["age_over_19"]),
            doc.present(&device, &session, &["age_over_19"])
        );
        // The same seed, the same document; another seed, other randoms.
        let again = ds3
            .issue(
                &mdl_elements_for_test("1990-05-01", true),
                NOW - 60,
                NOW + 30 * DAY,
                &device,
                b"test seed",
            )
            .unwrap();
        assert_eq!(again.items, doc.items);
        let other = ds3
            .issue(
                &mdl_elements_for_test("1990-05-01", true),
                NOW - 60,
                NOW + 30 * DAY,
                &device,
                b"x",
            )
            .unwrap();
        assert_ne!(other.items, doc.items);
        assert!(matches!(
            ds3.issue(
                &[("a", Element::Uint(1)), ("a", Element::Uint(2))],
                NOW,
                NOW + 1,
                &device,
                b""
            ),
            Err(MdocToolError::DuplicateElement(_))
        ));
    }

    #[test]
    fn every_element_type_encodes_and_verifies() {
        let (iaca, ds, device, _) = world();
        let elements = [
            ("given_name", Element::Text("Ünïcode".into())),
            ("age_in_years", Element::Uint(300)),
            ("portrait", Element::Bytes(vec![0xff; 300])),
            ("birth_date", Element::FullDate("2000-02-29".into())),
            ("age_over_65", Element::Bool(false)),
        ];
        let doc = ds
            .issue(&elements, NOW - 60, NOW + DAY, &device, b"e")
            .unwrap();
        let session = ReaderSession::new(b"e");
        let all: Vec<&str> = doc.identifiers().collect();
        let response = doc.present(&device, &session, &all);
        verify_presentation(&iaca.cert_der, &response, &session.transcript, None, NOW).unwrap();
        let d = decode_device_response(&response).unwrap();
        let v = |n: &str| d.document.element(MDL_NAMESPACE, n).unwrap().value.clone();
        assert_eq!(v("age_in_years").uint(), Some(300));
        assert_eq!(v("portrait").bytes().map(<[u8]>::len), Some(300));
        assert_eq!(v("given_name").text(), Some("Ünïcode"));
        assert_eq!(age_at("2000-02-29", NOW), Some(25));
        assert_eq!(age_at("2000-02-30", NOW), None);
    }

    #[test]
    fn the_transcript_is_what_iso_engagement_makes() {
        let s = ReaderSession::new(b"t");
        let t = gatehouse_mdoc::cbor::decode(&s.transcript).unwrap();
        let a = t.array().unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[2].value, gatehouse_mdoc::cbor::Value::Null);
        let engagement = gatehouse_mdoc::cbor::decode(a[0].embedded().unwrap()).unwrap();
        assert_eq!(engagement.get_int(0).unwrap().text(), Some("1.0"));
        let security = engagement.get_int(1).unwrap().array().unwrap();
        assert_eq!(security[0].uint(), Some(1));
        let reader = gatehouse_mdoc::cbor::decode(a[1].embedded().unwrap()).unwrap();
        let x = reader.get_int(-2).unwrap().bytes().unwrap();
        let key = PrivateKey::from_bytes(&s.reader_key).unwrap();
        assert_eq!(x, &key.public().uncompressed()[1..33]);
        assert_eq!(ReaderSession::new(b"t").transcript, s.transcript);
        gatehouse_mdoc::session_transcript_bytes(&s.transcript).unwrap();
    }
}
