//! Hot reload of the engine's files.

use std::path::PathBuf;

use tracing::{error, info, warn};

use super::files::{load_revocations, load_scanners, load_trust_list};
use crate::{ConfigError, Engine, RevocationError};

/// The engine's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// Trusted issuer keys (TOML).
    pub trust: PathBuf,
    /// Registered scanners (TOML).
    pub scanners: PathBuf,
    /// The revocation list (CBOR snapshot or delta), if any.
    pub revocations: Option<PathBuf>,
}

/// What a reload put in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    /// Trusted issuer keys.
    pub issuers: usize,
    /// Registered scanners.
    pub scanners: usize,
    /// Revocation epoch in force.
    pub revocation_epoch: u64,
    /// Whether the revocation file held a new epoch (an unchanged file is not an error).
    pub revocations_changed: bool,
}

/// Why a reload was refused. Nothing was changed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A file could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The revocation list does not follow the epoch in force.
    #[error("{file}: {source}")]
    Revocation {
        /// The revocation file.
        file: PathBuf,
        /// Why it does not apply.
        source: RevocationError,
    },
}

/// Re-reads the trust list, the scanner registry and the revocation list and puts them in force
/// together; connections and requests in flight are not disturbed (each request sees one whole
/// state, old or new). If any file is wrong, nothing changes and the error is logged and
/// returned. A revocation file whose epoch is already in force is left alone.
///
/// Blocking (reads files, may rebuild a large revocation set): call it from a plain thread or
/// `spawn_blocking`.
pub fn reload(engine: &Engine, files: &Files) -> Result<Reloaded, ReloadError> {
    let result = load_and_apply(engine, files);
    match &result {
        Ok(r) => info!(
            issuers = r.issuers,
            scanners = r.scanners,
            revocation_epoch = r.revocation_epoch,
            revocations_changed = r.revocations_changed,
            "reloaded"
        ),
        Err(e) => error!("reload refused, previous state kept: {e}"),
    }
    result
}

fn load_and_apply(engine: &Engine, files: &Files) -> Result<Reloaded, ReloadError> {
    // Read and validate everything before changing anything.
    let trust = load_trust_list(&files.trust)?;
    let scanners = load_scanners(&files.scanners)?;
    let revocations = match &files.revocations {
        Some(path) => Some((path, load_revocations(path)?)),
        None => None,
    };
    if trust.is_empty() {
        warn!(file = %files.trust.display(), "trust list is empty: every token will be denied unknown_issuer");
    }
    if scanners.is_empty() {
        warn!(file = %files.scanners.display(), "scanner registry is empty: every scanner will be refused");
    }

    // Revocations first: the only step that can still fail.
    let mut revocations_changed = false;
    if let Some((path, list)) = revocations {
        let (epoch, _) = engine.revocation_epoch();
        if list.epoch != epoch {
            engine
                .apply_revocations(&list)
                .map_err(|source| ReloadError::Revocation {
                    file: path.clone(),
                    source,
                })?;
            revocations_changed = true;
        }
    }
    let (issuers, registered) = (trust.len(), scanners.len());
    engine.set_trust(trust);
    engine.set_scanners(scanners);
    Ok(Reloaded {
        issuers,
        scanners: registered,
        revocation_epoch: engine.revocation_epoch().0,
        revocations_changed,
    })
}
