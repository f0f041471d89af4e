//! Reading the files the shell loads: certificate chains, private keys, the trust list, the
//! scanner registry and revocation lists. The core parses text and bytes; opening files is
//! the shell's business, and lives here.

use std::fs;
use std::path::{Path, PathBuf};

use gatehouse_protocol::RevocationList;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{ConfigError, ScannerRegistry, TrustList};

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
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

    let mut rest = tbs_fields(cert)?;
    // serialNumber, signature, issuer, validity: skip.
    for _ in 0..4 {
        rest = der_tlv(rest)?.2;
    }
    let (tag, mut subject, _) = der_tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut found = None;
    while !subject.is_empty() {
        let (tag, mut rdn, next) = der_tlv(subject)?;
        subject = next;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, atv, next) = der_tlv(rdn)?;
            rdn = next;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = der_tlv(atv)?;
            if tag != OID || oid != CN_OID {
                continue;
            }
            let (tag, text, trailing) = der_tlv(value)?;
            if !trailing.is_empty() || !matches!(tag, 0x0C | 0x13 | 0x16) || found.is_some() {
                return None;
            }
            found = Some(std::str::from_utf8(text).ok()?.to_string());
        }
    }
    found
}

/// The end of a DER certificate's validity (`notAfter`), Unix seconds. Like
/// [`subject_common_name`] it reads, it does not verify; total: `None` for anything it cannot
/// read.
pub fn certificate_not_after(cert: &[u8]) -> Option<u64> {
    const SEQUENCE: u8 = 0x30;
    let mut rest = tbs_fields(cert)?;
    // serialNumber, signature, issuer: skip.
    for _ in 0..3 {
        rest = der_tlv(rest)?.2;
    }
    let (tag, validity, _) = der_tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _, after) = der_tlv(validity)?;
    let (tag, time, _) = der_tlv(after)?;
    let text = std::str::from_utf8(time).ok()?;
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        // UTCTime: YYMMDDHHMMSSZ, years 1950-2049 (RFC 5280 4.1.2.5.1).
        0x17 if digits.len() == 12 => {
            let yy: i64 = digits.get(..2)?.parse().ok()?;
            (
                if yy < 50 { 2000 + yy } else { 1900 + yy },
                digits.get(2..)?,
            )
        }
        // GeneralizedTime: YYYYMMDDHHMMSSZ.
        0x18 if digits.len() == 14 => (digits.get(..4)?.parse().ok()?, digits.get(4..)?),
        _ => return None,
    };
    let n = |r: std::ops::Range<usize>| rest.get(r)?.parse::<i64>().ok();
    let (month, day, h, m, sec) = (n(0..2)?, n(2..4)?, n(4..6)?, n(6..8)?, n(8..10)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from 1970-01-01 to the date (the proleptic Gregorian "days from civil" algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + sec).ok()
}

/// The fields of a DER certificate's TBSCertificate, from serialNumber on (the optional
/// `[0] EXPLICIT` version skipped); `None` when the outer structure is not two SEQUENCEs.
fn tbs_fields(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert_body, _) = der_tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_tlv(cert_body)?;
    if tag != SEQUENCE {
        return None;
    }
    if tbs.first() == Some(&0xA0) {
        return Some(der_tlv(tbs)?.2);
    }
    Some(tbs)
}

/// One DER tag-length-value: (tag, contents, rest). Single-byte tags, definite lengths up to
/// four length bytes; `None` for anything else or anything longer than the input.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

fn read_text(file: &Path) -> Result<String, ConfigError> {
    fs::read_to_string(file).map_err(|e| ConfigError::new(file, "(file)", e.to_string()))
}

/// Reads a trust list file (TOML, see the deployment reference).
pub fn load_trust_list(file: &Path) -> Result<TrustList, ConfigError> {
    TrustList::parse(file, &read_text(file)?)
}

/// Reads a scanner registry file (TOML, see the deployment reference).
pub fn load_scanners(file: &Path) -> Result<ScannerRegistry, ConfigError> {
    ScannerRegistry::parse(file, &read_text(file)?)
}

/// Reads a revocation list file.
pub fn load_revocations(file: &Path) -> Result<RevocationList, ConfigError> {
    let bytes = fs::read(file).map_err(|e| ConfigError::new(file, "(file)", e.to_string()))?;
    RevocationList::decode(&bytes)
        .map_err(|e| ConfigError::new(file, "(revocation list)", e.to_string()))
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
}
