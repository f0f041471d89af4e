//! The issuing authority's certificates (ISO/IEC 18013-5 Annex B): the operator's trust list of
//! IACA roots, and the check of a document signer (DS) certificate from an `x5chain` against it.
//!
//! Checked for an IACA when it is loaded: a CA certificate (basicConstraints cA), key usage
//! `keyCertSign`, an EC key on P-256 or P-384, and a country in its subject. Checked for a DS
//! certificate at every verification (the result is cached with the MSO): issued by a loaded
//! IACA (issuer name equals the IACA's subject, signature verifies with its key), key usage
//! `digitalSignature`, extended key usage `1.0.18013.5.1.2` (mdoc DS), an EC key on P-256, and
//! both certificates valid at the verification time.

use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use x509_cert::Certificate;

const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";
/// Extended key usage of an mdoc document signer (ISO/IEC 18013-5 Annex B.1.4).
const MDOC_DS: &str = "1.0.18013.5.1.2";
const COUNTRY: &str = "2.5.4.6";
const STATE: &str = "2.5.4.8";
const CN: &str = "2.5.4.3";

/// Why a certificate is not an IACA or DS certificate gatehouse uses.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not DER X.509.
    #[error("not an X.509 certificate: {0}")]
    Der(String),
    /// The certificate breaks the Annex B profile.
    #[error("{0}")]
    Profile(&'static str),
    /// A key or signature algorithm gatehouse does not verify.
    #[error("{0}")]
    Algorithm(&'static str),
    /// No loaded IACA issued it.
    #[error("no IACA in the trust list issued this document signer")]
    UnknownIssuer,
    /// The document signer certificate cannot be shown to come from an IACA: it does not
    /// parse, its signature is not ECDSA with SHA-256 or SHA-384, or its unsigned outer
    /// algorithm differs from the signed one.
    #[error("the document signer certificate cannot be checked: {0}")]
    NotIssued(String),
    /// The issuer's signature on the certificate does not verify.
    #[error("the IACA's signature on the document signer certificate does not verify")]
    BadSignature,
    /// Outside its validity (or the IACA's).
    #[error("certificate not valid at this time")]
    NotValid,
}

/// One trusted IACA root.
#[derive(Debug, Clone)]
pub struct Iaca {
    /// Its DER bytes.
    pub der: Vec<u8>,
    subject: Vec<u8>,
    /// Its SEC1 public key.
    key: Vec<u8>,
    p384: bool,
    /// Validity, Unix seconds.
    pub not_before: i64,
    /// End of validity.
    pub not_after: i64,
    /// The issuing authority's name for allow-lists: the subject's country, with `-` and the
    /// state or province when the subject names one (`US`, `US-CA`).
    pub authority: String,
    /// The subject's common name, for people.
    pub common_name: String,
    /// A pinned document signer (tests of published data whose IACA is not public): trusted as
    /// itself, its own issuer.
    pub pinned_ds: bool,
}

/// The operator's trust list of IACAs.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    anchors: Vec<Iaca>,
}

fn parse(der: &[u8]) -> Result<Certificate, CertError> {
    Certificate::from_der(der).map_err(|e| CertError::Der(e.to_string()))
}

fn secs(t: x509_cert::time::Time) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

fn extension<T: for<'a> Decode<'a>>(cert: &Certificate, oid: &str) -> Option<Result<T, CertError>> {
    let ext = cert
        .tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id.to_string() == oid)?;
    Some(T::from_der(ext.extn_value.as_bytes()).map_err(|e| CertError::Der(e.to_string())))
}

/// The EC public key of a certificate: (SEC1 point, whether on P-384).
fn ec_key(cert: &Certificate) -> Result<(Vec<u8>, bool), CertError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid.to_string() != EC_PUBLIC_KEY {
        return Err(CertError::Algorithm(
            "the certificate's key is not an EC key",
        ));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<x509_cert::der::asn1::ObjectIdentifier>().ok())
        .map(|o| o.to_string());
    let p384 = match curve.as_deref() {
        Some(P256) => false,
        Some(P384) => true,
        _ => {
            return Err(CertError::Algorithm(
                "the certificate's key is not on P-256 or P-384",
            ))
        }
    };
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or(CertError::Der("public key bit string".into()))?;
    Ok((point.to_vec(), p384))
}

fn name_attr(cert: &Certificate, oid: &str) -> Option<String> {
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find_map(|atv| {
            if atv.oid.to_string() != oid {
                return None;
            }
            let v = &atv.value;
            std::str::from_utf8(v.value()).ok().map(str::to_owned)
        })
}

fn validity(cert: &Certificate) -> (i64, i64) {
    let v = &cert.tbs_certificate.validity;
    (secs(v.not_before), secs(v.not_after))
}

impl Iaca {
    /// An IACA root from its DER bytes, checked against the Annex B profile.
    pub fn from_der(der: &[u8]) -> Result<Iaca, CertError> {
        let cert = parse(der)?;
        let ca = extension::<BasicConstraints>(&cert, "2.5.29.19")
            .transpose()?
            .is_some_and(|b| b.ca);
        if !ca {
            return Err(CertError::Profile(
                "an IACA must be a CA certificate (basicConstraints cA)",
            ));
        }
        let ku = extension::<KeyUsage>(&cert, "2.5.29.15").transpose()?;
        if !ku.is_some_and(|k| k.key_cert_sign()) {
            return Err(CertError::Profile(
                "an IACA's key usage must include keyCertSign",
            ));
        }
        Self::build(der, &cert, false)
    }

    /// A document signer certificate trusted as itself (for published test data whose IACA is
    /// not public). Not for production trust lists: nothing above the DS is checked.
    pub fn pinned_document_signer(der: &[u8]) -> Result<Iaca, CertError> {
        let cert = parse(der)?;
        Self::build(der, &cert, true)
    }

    fn build(der: &[u8], cert: &Certificate, pinned_ds: bool) -> Result<Iaca, CertError> {
        let (key, p384) = ec_key(cert)?;
        let country =
            name_attr(cert, COUNTRY)
                .filter(|c| !c.is_empty())
                .ok_or(CertError::Profile(
                    "the subject names no country (countryName)",
                ))?;
        let authority = match name_attr(cert, STATE) {
            Some(st) => format!("{country}-{st}"),
            None => country,
        };
        let (not_before, not_after) = validity(cert);
        Ok(Iaca {
            der: der.to_vec(),
            subject: cert
                .tbs_certificate
                .subject
                .to_der()
                .map_err(|e| CertError::Der(e.to_string()))?,
            key,
            p384,
            not_before,
            not_after,
            authority,
            common_name: name_attr(cert, CN).unwrap_or_default(),
            pinned_ds,
        })
    }
}

/// A document signer certificate that chains to a trusted IACA.
#[derive(Debug, Clone)]
pub struct DocumentSigner {
    /// Its SEC1 P-256 public key.
    pub key: Vec<u8>,
    /// Where the DS's and the IACA's validities overlap, Unix seconds.
    pub not_before: i64,
    /// End of that overlap.
    pub not_after: i64,
    /// The DS certificate's own validity (the MSO must be signed inside it).
    pub ds_validity: (i64, i64),
    /// The IACA's issuing authority (`US`, `US-CA`).
    pub authority: String,
    /// The signer's revocation key: SHA-256 of the DS certificate's subjectPublicKeyInfo
    /// ([`signer_fingerprint`]).
    pub fingerprint: [u8; 32],
}

impl TrustAnchors {
    /// A trust list of these IACAs.
    pub fn new(anchors: Vec<Iaca>) -> Self {
        TrustAnchors { anchors }
    }

    /// The IACAs.
    pub fn anchors(&self) -> &[Iaca] {
        &self.anchors
    }

    /// Whether the list is empty (no mdoc can be verified).
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Checks a DS certificate against the list at time `now` (Unix seconds).
    pub fn document_signer(&self, der: &[u8], now: i64) -> Result<DocumentSigner, CertError> {
        let fingerprint = signer_fingerprint(der)?;
        if let Some(pin) = self.anchors.iter().find(|a| a.pinned_ds && a.der == der) {
            if pin.p384 {
                return Err(CertError::Algorithm(
                    "the document signer's key is not on P-256",
                ));
            }
            if now < pin.not_before || now >= pin.not_after {
                return Err(CertError::NotValid);
            }
            return Ok(DocumentSigner {
                key: pin.key.clone(),
                not_before: pin.not_before,
                not_after: pin.not_after,
                ds_validity: (pin.not_before, pin.not_after),
                authority: pin.authority.clone(),
                fingerprint,
            });
        }
        let cert = Certificate::from_der(der).map_err(|e| CertError::NotIssued(e.to_string()))?;
        let iaca = self.issuer_of(&cert, der)?;
        let (key, p384) = ec_key(&cert)?;
        if p384 {
            return Err(CertError::Algorithm(
                "the document signer's key is not on P-256 (ES256)",
            ));
        }
        let ku = extension::<KeyUsage>(&cert, "2.5.29.15").transpose()?;
        if !ku.is_some_and(|k| k.digital_signature()) {
            return Err(CertError::Profile(
                "a document signer's key usage must include digitalSignature",
            ));
        }
        let eku = extension::<ExtendedKeyUsage>(&cert, "2.5.29.37").transpose()?;
        if !eku.is_some_and(|e| e.0.iter().any(|o| o.to_string() == MDOC_DS)) {
            return Err(CertError::Profile(
                "a document signer's extended key usage must include 1.0.18013.5.1.2",
            ));
        }
        let ds_validity = validity(&cert);
        let not_before = ds_validity.0.max(iaca.not_before);
        let not_after = ds_validity.1.min(iaca.not_after);
        if now < not_before || now >= not_after {
            return Err(CertError::NotValid);
        }
        Ok(DocumentSigner {
            key,
            not_before,
            not_after,
            ds_validity,
            authority: iaca.authority.clone(),
            fingerprint,
        })
    }
}

impl TrustAnchors {
    /// The IACA whose subject is the certificate's issuer and whose key verifies its
    /// signature: every such IACA is tried (a renewed IACA may keep its name with a new key).
    fn issuer_of(&self, cert: &Certificate, der: &[u8]) -> Result<&Iaca, CertError> {
        let not_issued = |why: &str| CertError::NotIssued(why.to_string());
        // RFC 5280 §4.1.1.2: the outer algorithm is the signed one's (the outer is unsigned).
        if cert.signature_algorithm != cert.tbs_certificate.signature {
            return Err(not_issued(
                "its signatureAlgorithm differs from its tbsCertificate's",
            ));
        }
        let issuer = cert
            .tbs_certificate
            .issuer
            .to_der()
            .map_err(|e| CertError::NotIssued(e.to_string()))?;
        let tbs = tbs_bytes(der).ok_or_else(|| not_issued("certificate structure"))?;
        let sig = cert
            .signature
            .as_bytes()
            .ok_or_else(|| not_issued("signature bit string"))?;
        let sha384 = match cert.signature_algorithm.oid.to_string().as_str() {
            ECDSA_SHA256 => false,
            ECDSA_SHA384 => true,
            _ => {
                return Err(not_issued(
                    "its signature is not ECDSA with SHA-256 or SHA-384",
                ))
            }
        };
        let mut named = false;
        for iaca in self
            .anchors
            .iter()
            .filter(|a| !a.pinned_ds && a.subject == issuer)
        {
            named = true;
            let alg: &dyn ring::signature::VerificationAlgorithm = match (iaca.p384, sha384) {
                (false, false) => &ring::signature::ECDSA_P256_SHA256_ASN1,
                (false, true) => &ring::signature::ECDSA_P256_SHA384_ASN1,
                (true, false) => &ring::signature::ECDSA_P384_SHA256_ASN1,
                (true, true) => &ring::signature::ECDSA_P384_SHA384_ASN1,
            };
            if ring::signature::UnparsedPublicKey::new(alg, &iaca.key)
                .verify(tbs, sig)
                .is_ok()
            {
                return Ok(iaca);
            }
        }
        Err(if named {
            CertError::BadSignature
        } else {
            CertError::UnknownIssuer
        })
    }
}

/// A document signer's revocation key (SPEC §12.5): SHA-256 of its certificate's
/// subjectPublicKeyInfo in DER, the key's usual fingerprint
/// (`openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`). It names
/// the key, inside the signed part of the certificate: a certificate re-encoded outside its
/// signature (the `x5chain` header is not signed) has the same one.
pub fn signer_fingerprint(der: &[u8]) -> Result<[u8; 32], CertError> {
    use sha2::Digest;
    let cert = parse(der)?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| CertError::Der(e.to_string()))?;
    Ok(sha2::Sha256::digest(spki).into())
}

/// The `tbsCertificate` bytes of a DER certificate, as received (what the IACA signed).
fn tbs_bytes(der: &[u8]) -> Option<&[u8]> {
    let (_, outer) = tlv(der, 0x30)?;
    let (len, _) = tlv(outer, 0x30)?;
    outer.get(..len)
}

/// A DER TLV with tag `tag` at the start of `b`: (its whole length, its content).
fn tlv(b: &[u8], tag: u8) -> Option<(usize, &[u8])> {
    if *b.first()? != tag {
        return None;
    }
    let first = *b.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = b
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    Some((end, b.get(hdr..end)?))
}
