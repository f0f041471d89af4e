//! Reading the files the shell loads: certificate chains and private keys (from
//! `gatehouse-certs`, re-exported), the trust list, the scanner registry and revocation lists.
//! The core parses text and bytes; opening files is the shell's business, and lives here.

use std::fs;
use std::path::Path;

pub use gatehouse_certs::{
    certificate_not_after, load_certs, load_key, parse_certs, parse_key, subject_common_name,
    FileError,
};
use gatehouse_protocol::RevocationList;

use gatehouse_core::{ConfigError, MdocRevocations, ScannerRegistry, TrustList};
use gatehouse_mdoc::{Iaca, TrustAnchors};

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

/// Reads `files.mdoc_iaca`, the IACA roots for mdoc presentations: PEM certificates, each
/// checked against the IACA profile (SPEC §12.2). None configured: an empty list.
pub fn load_mdoc_iaca(file: Option<&Path>) -> Result<TrustAnchors, ConfigError> {
    let Some(file) = file else {
        return Ok(TrustAnchors::default());
    };
    let certs = load_certs(file).map_err(|e| ConfigError::new(file, "(file)", e.to_string()))?;
    let anchors = certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Iaca::from_der(c).map_err(|e| {
                ConfigError::new(file, format!("certificate {}", i + 1), e.to_string())
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrustAnchors::new(anchors))
}

/// Reads `files.mdoc_revocations` (SPEC §12.5). None configured: nothing revoked.
pub fn load_mdoc_revocations(file: Option<&Path>) -> Result<MdocRevocations, ConfigError> {
    match file {
        None => Ok(MdocRevocations::default()),
        Some(file) => MdocRevocations::parse(file, &read_text(file)?),
    }
}

/// Reads a revocation list file.
pub fn load_revocations(file: &Path) -> Result<RevocationList, ConfigError> {
    let bytes = fs::read(file).map_err(|e| ConfigError::new(file, "(file)", e.to_string()))?;
    RevocationList::decode(&bytes)
        .map_err(|e| ConfigError::new(file, "(revocation list)", e.to_string()))
}
