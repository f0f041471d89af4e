//! A development PKI for the scanner ↔ engine link: a CA, a server certificate and one client
//! certificate per scanner, all ECDSA P-256, made with `rcgen`.
//!
//! **TEST AND DEVELOPMENT KEYS ONLY.** The keys are generated on this machine, written in clear
//! PEM, valid for decades and never revoked. A real deployment issues scanner certificates from
//! its own CA (ideally with keys kept in the scanner's secure element) and protects the CA key
//! accordingly. `gatehouse dev-pki`, `gatehouse demo` and the integration tests use this module.
//!
//! The scanner's identity is the client certificate's subject Common Name: the server maps it to
//! the scanner registry (`scanners.toml`, `id = …`). `server::files::subject_common_name` reads it
//! back from a DER certificate.
//!
//! ```
//! use gatehouse_engine::dev::pki::DevPki;
//! use gatehouse_engine::server::files::subject_common_name;
//!
//! let pki = DevPki::generate(&["gate-1-1".to_string()])?;
//! let scanner = pki.scanner("gate-1-1").unwrap();
//! assert_eq!(subject_common_name(&scanner.cert_der).as_deref(), Some("gate-1-1"));
//! # Ok::<(), gatehouse_engine::dev::pki::PkiError>(())
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Names the server certificate is valid for.
pub const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Longest scanner id (matches the registry's limit).
pub const MAX_SCANNER_ID: usize = 128;

/// Why a PKI could not be made, written or read.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key or certificate generation failed.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A scanner id cannot be a certificate name and a file name.
    #[error("scanner id {0:?} is not usable: 1 to 128 characters of A-Z a-z 0-9 . _ - (not starting with '.')")]
    BadScannerId(String),
    /// The same scanner id was given twice.
    #[error("scanner id {0:?} is listed twice")]
    DuplicateScannerId(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One issued certificate and its private key.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl Issued {
    fn new(cert: &rcgen::Certificate, key: &KeyPair) -> Issued {
        Issued {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The private key in the form rustls takes.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// The certificate chain (just this certificate: the CA is the trust anchor).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone()]
    }
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_der", &format_args!("{} bytes", self.cert_der.len()))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A development CA with a server certificate and scanner client certificates.
/// TEST AND DEVELOPMENT KEYS ONLY (see the module documentation).
pub struct DevPki {
    /// The CA certificate (self-signed) and its key.
    pub ca: Issued,
    /// The server certificate for [`SERVER_NAMES`], signed by the CA.
    pub server: Issued,
    /// One client certificate per scanner, in the order given; the subject CN is the id.
    pub scanners: Vec<(String, Issued)>,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl std::fmt::Debug for DevPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevPki")
            .field(
                "scanners",
                &self.scanners.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams) {
    // Long enough that a development setup never expires under anyone, starting in the past so
    // a machine whose clock is a little behind still accepts it.
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Whether `id` can serve as a certificate CN and a file name.
pub fn valid_scanner_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SCANNER_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl DevPki {
    /// A fresh CA, a server certificate for `localhost`, `127.0.0.1` and `::1`, and a client
    /// certificate for each scanner id.
    pub fn generate(scanner_ids: &[String]) -> Result<DevPki, PkiError> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        validity(&mut params);
        params.distinguished_name = common_name("gatehouse development CA (TEST ONLY)");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params.self_signed(&ca_key)?;
        let ca = Issued::new(&ca_cert, &ca_key);

        let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(
            SERVER_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )?;
        validity(&mut params);
        params.distinguished_name = common_name("gatehouse development server (TEST ONLY)");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let server_cert = params.signed_by(&server_key, &ca_cert, &ca_key)?;
        let server = Issued::new(&server_cert, &server_key);

        let mut pki = DevPki {
            ca,
            server,
            scanners: Vec::with_capacity(scanner_ids.len()),
            ca_cert,
            ca_key,
        };
        for id in scanner_ids {
            pki.issue_scanner(id)?;
        }
        Ok(pki)
    }

    /// Issues (and remembers) a client certificate for one more scanner.
    pub fn issue_scanner(&mut self, id: &str) -> Result<&Issued, PkiError> {
        if !valid_scanner_id(id) {
            return Err(PkiError::BadScannerId(id.to_string()));
        }
        if self.scanner(id).is_some() {
            return Err(PkiError::DuplicateScannerId(id.to_string()));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        validity(&mut params);
        params.distinguished_name = common_name(id);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key)?;
        self.scanners
            .push((id.to_string(), Issued::new(&cert, &key)));
        let last = self.scanners.len() - 1;
        Ok(&self.scanners[last].1)
    }

    /// The client certificate of this scanner.
    pub fn scanner(&self, id: &str) -> Option<&Issued> {
        self.scanners.iter().find(|(s, _)| s == id).map(|(_, i)| i)
    }

    /// Writes `ca.pem`, `server.pem`, `server.key`, `scanners/<id>.pem` and
    /// `scanners/<id>.key` under `dir` (created if missing). Keys are written owner-only on
    /// Unix. The CA key is not written: a development CA issues its certificates once.
    pub fn write_to(&self, dir: &Path) -> Result<(), PkiError> {
        let scanners = dir.join("scanners");
        fs::create_dir_all(&scanners).map_err(|source| PkiError::Io {
            path: scanners.clone(),
            source,
        })?;
        write_file(&dir.join("ca.pem"), &self.ca.cert_pem, false)?;
        write_file(&dir.join("server.pem"), &self.server.cert_pem, false)?;
        write_file(&dir.join("server.key"), &self.server.key_pem, true)?;
        for (id, issued) in &self.scanners {
            write_file(&scanners.join(format!("{id}.pem")), &issued.cert_pem, false)?;
            write_file(&scanners.join(format!("{id}.key")), &issued.key_pem, true)?;
        }
        Ok(())
    }
}

fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = options.open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::files::{load_certs, load_key, parse_certs, parse_key, subject_common_name};

    #[test]
    fn scanner_certificates_carry_the_id_as_common_name() {
        let ids = vec!["gate-1-1".to_string(), "partner-7".to_string()];
        let pki = DevPki::generate(&ids).unwrap();
        for id in &ids {
            let issued = pki.scanner(id).unwrap();
            assert_eq!(
                subject_common_name(&issued.cert_der).as_deref(),
                Some(id.as_str())
            );
            let back = parse_certs(issued.cert_pem.as_bytes(), Path::new("x")).unwrap();
            assert_eq!(back, vec![issued.cert_der.clone()]);
            let key = parse_key(issued.key_pem.as_bytes(), Path::new("x")).unwrap();
            assert_eq!(key.secret_der(), issued.key_der.as_slice());
        }
        assert!(subject_common_name(&pki.ca.cert_der)
            .unwrap()
            .contains("TEST ONLY"));
    }

    #[test]
    fn bad_ids_and_bad_input_are_refused() {
        for id in ["", "../x", "a/b", ".hidden", &"x".repeat(129)] {
            assert!(matches!(
                DevPki::generate(&[id.to_string()]),
                Err(PkiError::BadScannerId(_))
            ));
        }
        assert!(matches!(
            DevPki::generate(&["a".into(), "a".into()]),
            Err(PkiError::DuplicateScannerId(_))
        ));
        let pki = DevPki::generate(&["g".into()]).unwrap();
        let der = pki.scanner("g").unwrap().cert_der.to_vec();
        for cut in 0..der.len() {
            assert_eq!(subject_common_name(&der[..cut]), None);
        }
        assert!(parse_certs(b"nothing here", Path::new("x")).is_err());
        assert!(parse_key(pki.ca.cert_pem.as_bytes(), Path::new("x")).is_err());
    }

    #[test]
    fn writes_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("gatehouse-pki-{}", std::process::id()));
        let pki = DevPki::generate(&["gate-a".to_string()]).unwrap();
        pki.write_to(&dir).unwrap();
        assert_eq!(
            load_certs(&dir.join("ca.pem")).unwrap(),
            vec![pki.ca.cert_der.clone()]
        );
        assert!(load_key(&dir.join("server.key")).is_ok());
        assert_eq!(
            load_certs(&dir.join("scanners/gate-a.pem")).unwrap(),
            pki.scanner("gate-a").unwrap().chain()
        );
        assert!(load_key(&dir.join("scanners/gate-a.key")).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }
}
