//! # gatehouse-certs
//!
//! Certificates and private keys from PEM files, and the two X.509 fields the server reads
//! from a certificate it has already verified: the subject Common Name (the scanner id) and the
//! end of validity (the certificate-expiry gauge). The server, the scanner client and the
//! development PKI all read their certificates here, so a PEM error reads the same everywhere.

use std::fs;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::Certificate;

/// Why a certificate or key file could not be used.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable item of the expected kind.
    #[error("{path}: {problem}")]
    Pem {
        /// The file (or `<inline>`).
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

fn read_file(path: &Path) -> Result<Vec<u8>, FileError> {
    fs::read(path).map_err(|source| FileError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A PEM error in words: the markers and lines it quotes as text, not as byte lists.
fn pem_problem(e: &rustls::pki_types::pem::Error, kind: &str) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::NoItemsFound => format!("no {kind} section"),
        Error::MissingSectionEnd { end_marker } => format!(
            "a section does not end (no \"-----END {}-----\" line): the file is cut short or damaged",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "a section starts with a line that is not a PEM BEGIN line: \"{}\"",
            String::from_utf8_lossy(line).chars().take(80).collect::<String>()
        ),
        other => other.to_string(),
    }
}

/// Every certificate in PEM text (`path` only names the source in errors).
pub fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::Pem {
            path: path.to_path_buf(),
            problem: pem_problem(&e, "CERTIFICATE"),
        })?;
    if certs.is_empty() {
        return Err(FileError::Pem {
            path: path.to_path_buf(),
            problem: "no CERTIFICATE section".into(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in PEM text.
pub fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| FileError::Pem {
        path: path.to_path_buf(),
        problem: pem_problem(&e, "PRIVATE KEY"),
    })
}

/// Reads every certificate from a PEM file (a chain, or CA certificates).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    parse_certs(&read_file(path)?, path)
}

/// Reads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    parse_key(&read_file(path)?, path)
}

/// The subject Common Name of a DER certificate, if it has exactly one and it is a UTF-8,
/// printable or IA5 string. The certificate must already have been verified: this reads the
/// name, it checks nothing else. Total: any input yields a value or `None`.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    /// id-at-commonName, 2.5.4.3.
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = Certificate::from_der(cert).ok()?;
    let mut found = None;
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter().filter(|atv| atv.oid == CN) {
            if found.is_some() {
                return None;
            }
            let text = match atv.value.tag() {
                Tag::Utf8String => atv.value.decode_as::<Utf8StringRef<'_>>().ok()?.to_string(),
                Tag::PrintableString => atv
                    .value
                    .decode_as::<PrintableStringRef<'_>>()
                    .ok()?
                    .to_string(),
                Tag::Ia5String => atv.value.decode_as::<Ia5StringRef<'_>>().ok()?.to_string(),
                _ => return None,
            };
            found = Some(text);
        }
    }
    found
}

/// The end of a DER certificate's validity (`notAfter`), Unix seconds. Like
/// [`subject_common_name`] it reads, it does not verify; total: `None` for anything it cannot
/// read.
pub fn certificate_not_after(cert: &[u8]) -> Option<u64> {
    let cert = Certificate::from_der(cert).ok()?;
    Some(
        cert.tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_errors_quote_text_not_bytes() {
        let cut = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        let e = parse_certs(cut, Path::new("server.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"-----END CERTIFICATE-----\""), "{e}");
        assert!(!e.contains("[45, 45"), "{e}");
        let e = parse_key(b"", Path::new("server.key"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "server.key: no PRIVATE KEY section");
    }

    #[test]
    fn fields_of_anything_that_is_not_a_certificate_are_none() {
        for bytes in [&b""[..], b"\x30", b"\x30\x03\x30\x01\x00", &[0xFF; 64]] {
            assert_eq!(subject_common_name(bytes), None);
            assert_eq!(certificate_not_after(bytes), None);
        }
    }

    fn certificate(names: &[(rcgen::DnType, &str)], year: i32) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.not_after = rcgen::date_time_ymd(year, 6, 30);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_read_when_there_is_exactly_one() {
        let one = certificate(
            &[
                (rcgen::DnType::OrganizationName, "org"),
                (rcgen::DnType::CommonName, "gate-1-1"),
            ],
            2030,
        );
        assert_eq!(subject_common_name(&one).as_deref(), Some("gate-1-1"));
        let none = certificate(&[(rcgen::DnType::OrganizationName, "org")], 2030);
        assert_eq!(subject_common_name(&none), None);
        for cut in 0..one.len() {
            assert_eq!(subject_common_name(&one[..cut]), None);
        }
    }

    #[test]
    fn the_end_of_validity_is_unix_seconds_in_both_time_encodings() {
        // 2030-06-30T00:00:00Z as UTCTime, 2051-06-30T00:00:00Z as GeneralizedTime.
        let utc = certificate(&[(rcgen::DnType::CommonName, "x")], 2030);
        assert_eq!(certificate_not_after(&utc), Some(1_909_008_000));
        let generalized = certificate(&[(rcgen::DnType::CommonName, "x")], 2051);
        assert_eq!(certificate_not_after(&generalized), Some(2_571_696_000));
    }
}
