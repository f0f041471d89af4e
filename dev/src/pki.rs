//! A development PKI for the scanner ↔ engine link: a CA, a server certificate and one client
//! certificate per scanner, all ECDSA P-256, made with `rcgen`.
//!
//! **TEST AND DEVELOPMENT KEYS ONLY.** The keys are generated on this machine, written in clear
//! PEM (the CA key too, in `ca.key`, so that scanners and server names can be added later),
//! valid for decades and never revoked. A real deployment issues scanner certificates from
//! its own CA (ideally with keys kept in the scanner's secure element) and protects the CA key
//! accordingly. `gatehouse dev-pki`, `gatehouse demo` and the integration tests use this module.
//!
//! The scanner's identity is the client certificate's subject Common Name: the server maps it to
//! the scanner registry (`scanners.toml`, `id = …`). `gatehouse_certs::subject_common_name` reads it
//! back from a DER certificate.
//!
//! ```
//! use gatehouse_dev::pki::DevPki;
//! use gatehouse_certs::subject_common_name;
//!
//! let pki = DevPki::generate(&["gate-1-1".to_string()])?;
//! let scanner = pki.scanner("gate-1-1").unwrap();
//! assert_eq!(subject_common_name(&scanner.cert_der).as_deref(), Some("gate-1-1"));
//! # Ok::<(), gatehouse_dev::pki::PkiError>(())
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
    /// A file exists with other content; nothing is overwritten unless asked (`--force`).
    #[error("{0} exists with other content (use --force to replace it)")]
    Exists(PathBuf),
    /// A directory holds a CA certificate but not its key, so no certificate can be added.
    #[error("{0} is missing: this CA's key was not kept, so it cannot issue more certificates (write a new PKI into another directory)")]
    NoCaKey(PathBuf),
    /// A PKI file could not be read back.
    #[error("{path}: {problem}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
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
    /// The server certificate for [`SERVER_NAMES`] (and any names added), signed by the CA.
    pub server: Issued,
    /// The names on the server certificate.
    pub server_names: Vec<String>,
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

/// The first line of `ca.key`: the CA key is kept so that `gatehouse dev-pki` can add scanners
/// and server names later, and it is a test key.
pub const CA_KEY_WARNING: &str =
    "# TEST ONLY: gatehouse development CA key. Never use it, or certificates it signed, in production.\n";

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    validity(&mut params);
    params.distinguished_name = common_name("gatehouse development CA (TEST ONLY)");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn server_issued(
    names: &[String],
    ca_cert: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> Result<Issued, PkiError> {
    let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    validity(&mut params);
    params.distinguished_name = common_name("gatehouse development server (TEST ONLY)");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let server_cert = params.signed_by(&server_key, ca_cert, ca_key)?;
    Ok(Issued::new(&server_cert, &server_key))
}

/// [`SERVER_NAMES`] followed by `extra`, without repeats.
fn all_server_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A certificate and key read back from PEM files.
fn load_issued(cert: &Path, key: &Path) -> Result<(Issued, KeyPair), PkiError> {
    let load = |path: &Path, problem: String| PkiError::Load {
        path: path.to_path_buf(),
        problem,
    };
    let cert_pem = read_text(cert)?;
    let key_text = read_text(key)?;
    // Comment lines (the TEST ONLY warning) are not PEM.
    let key_pem: String = key_text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let der = gatehouse_certs::parse_certs(cert_pem.as_bytes(), cert)
        .map_err(|e| load(cert, e.to_string()))?;
    let pair = KeyPair::from_pem(&key_pem).map_err(|e| load(key, e.to_string()))?;
    let issued = Issued {
        cert_der: der[0].clone(),
        cert_pem,
        key_der: pair.serialize_der(),
        key_pem: key_text,
    };
    Ok((issued, pair))
}

impl DevPki {
    /// A fresh CA, a server certificate for `localhost`, `127.0.0.1` and `::1`, and a client
    /// certificate for each scanner id.
    pub fn generate(scanner_ids: &[String]) -> Result<DevPki, PkiError> {
        Self::generate_with_names(scanner_ids, &[])
    }

    /// [`DevPki::generate`] with more names (DNS names or IP addresses) on the server
    /// certificate.
    pub fn generate_with_names(
        scanner_ids: &[String],
        server_names: &[String],
    ) -> Result<DevPki, PkiError> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let ca_cert = ca_params().self_signed(&ca_key)?;
        let mut ca = Issued::new(&ca_cert, &ca_key);
        ca.key_pem = format!("{CA_KEY_WARNING}{}", ca.key_pem);
        let names = all_server_names(server_names);
        let server = server_issued(&names, &ca_cert, &ca_key)?;
        let mut pki = DevPki {
            ca,
            server,
            server_names: names,
            scanners: Vec::with_capacity(scanner_ids.len()),
            ca_cert,
            ca_key,
        };
        for id in scanner_ids {
            pki.issue_scanner(id)?;
        }
        Ok(pki)
    }

    /// Opens a PKI that [`DevPki::write_to`] wrote, to issue more certificates with its CA:
    /// reads `ca.pem`, `ca.key`, and the server certificate and key. Scanners already written
    /// are not read (they stay as they are on disk).
    pub fn open(dir: &Path) -> Result<DevPki, PkiError> {
        let key_path = dir.join("ca.key");
        if !key_path.exists() {
            return Err(PkiError::NoCaKey(key_path));
        }
        let (ca, ca_key) = load_issued(&dir.join("ca.pem"), &key_path)?;
        // The same subject and key as the CA certificate on disk: what it signs chains to it.
        let ca_cert = ca_params().self_signed(&ca_key)?;
        let (server, _) = load_issued(&dir.join("server.pem"), &dir.join("server.key"))?;
        Ok(DevPki {
            ca,
            server,
            server_names: Vec::new(),
            scanners: Vec::new(),
            ca_cert,
            ca_key,
        })
    }

    /// Issues a new server certificate for [`SERVER_NAMES`] and `extra` (replacing the one
    /// held).
    pub fn reissue_server(&mut self, extra: &[String]) -> Result<(), PkiError> {
        let names = all_server_names(extra);
        self.server = server_issued(&names, &self.ca_cert, &self.ca_key)?;
        self.server_names = names;
        Ok(())
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

    /// Writes every file like [`DevPki::write_checked`] with `force`: replaces what is there.
    /// For tests and tools that write into a directory of their own.
    pub fn write_to(&self, dir: &Path) -> Result<(), PkiError> {
        self.write_checked(dir, true).map(|_| ())
    }

    /// Writes `ca.pem`, `ca.key` (marked TEST ONLY), `server.pem`, `server.key`,
    /// `scanners/<id>.pem` and `scanners/<id>.key` under `dir` (created if missing). Keys are
    /// written owner-only on Unix. A file that exists with the same content is left alone; one
    /// with other content is an error ([`PkiError::Exists`]) unless `force`. Checks every file
    /// before writing any, so a refusal writes nothing.
    pub fn write_checked(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, PkiError> {
        let scanners = dir.join("scanners");
        let mut files = vec![
            (dir.join("ca.pem"), &self.ca.cert_pem, false),
            (dir.join("ca.key"), &self.ca.key_pem, true),
            (dir.join("server.pem"), &self.server.cert_pem, false),
            (dir.join("server.key"), &self.server.key_pem, true),
        ];
        for (id, issued) in &self.scanners {
            files.push((scanners.join(format!("{id}.pem")), &issued.cert_pem, false));
            files.push((scanners.join(format!("{id}.key")), &issued.key_pem, true));
        }
        let mut changed = Vec::new();
        for (path, text, _) in &files {
            match fs::read_to_string(path) {
                Ok(old) if old == **text => {}
                Ok(_) if !force => return Err(PkiError::Exists(path.clone())),
                _ => changed.push(path.clone()),
            }
        }
        fs::create_dir_all(&scanners).map_err(|source| PkiError::Io {
            path: scanners.clone(),
            source,
        })?;
        for (path, text, secret) in &files {
            if changed.contains(path) {
                write_file(path, text, *secret)?;
            }
        }
        Ok(changed)
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
    use gatehouse_certs::{load_certs, load_key, parse_certs, parse_key, subject_common_name};

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
        let _ = fs::remove_dir_all(&dir);
        let pki = DevPki::generate(&["gate-a".to_string()]).unwrap();
        pki.write_checked(&dir, false).unwrap();
        // Written again: identical files are left alone; a different PKI is refused.
        assert!(pki.write_checked(&dir, false).unwrap().is_empty());
        let other = DevPki::generate(&["gate-a".to_string()]).unwrap();
        assert!(matches!(
            other.write_checked(&dir, false),
            Err(PkiError::Exists(_))
        ));
        assert!(std::fs::read_to_string(dir.join("ca.key"))
            .unwrap()
            .starts_with(CA_KEY_WARNING));

        // Reopened, the CA issues a scanner and server names that chain to the ca.pem on disk.
        let mut again = DevPki::open(&dir).unwrap();
        again.issue_scanner("gate-b").unwrap();
        again.reissue_server(&["gate.example".to_string()]).unwrap();
        assert!(matches!(
            again.write_checked(&dir, false),
            Err(PkiError::Exists(p)) if p.ends_with("server.pem")
        ));
        let written = again.write_checked(&dir, true).unwrap();
        assert!(written.iter().any(|p| p.ends_with("scanners/gate-b.pem")));
        assert!(!written.iter().any(|p| p.ends_with("ca.pem")));
        let ca = load_certs(&dir.join("ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca[0].clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let b = load_certs(&dir.join("scanners/gate-b.pem")).unwrap();
        assert!(verifier
            .verify_client_cert(&b[0], &[], rustls::pki_types::UnixTime::now())
            .is_ok());
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
