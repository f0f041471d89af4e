//! Hot reload of the files the service reads: trust list, scanner registry, revocation list, and
//! (in the running server) the TLS certificate, key and client CA.
//!
//! Each file reloads on its own merits: a bad revocation file does not keep a corrected trust
//! list or scanner registry from taking effect, and a bad file never replaces a good state.
//! Every file's result is reported ([`ReloadReport`]): logged one line per file, counted in
//! `/metrics` by file with its time, shown in `/readyz`, and read back by `gatehouse reload`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sd_notify::NotifyState;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::files::{
    certificate_not_after, load_certs, load_key, load_revocations, load_scanners, load_trust_list,
};
use super::metrics::Metrics;
use super::tls::quinn_server_config;
use super::ServerConfig;
use gatehouse_core::{ConfigError, Engine, RevocationError};

/// The engine's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// Trusted issuer keys (TOML).
    pub trust: PathBuf,
    /// Registered scanners (TOML).
    pub scanners: PathBuf,
    /// The revocation list (CBOR snapshot or delta), if any.
    pub revocations: Option<PathBuf>,
    /// Where the revocation state a reload put in force is kept (see [`keep`]), if anywhere.
    pub state_dir: Option<PathBuf>,
    /// The server's TLS files, reloaded by the running server (not by [`reload`]).
    pub tls: Option<TlsFiles>,
}

/// The TLS files of `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// CA certificates for scanner client certificates, PEM.
    pub client_ca: PathBuf,
}

/// A file (or group of files) that reloads on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadFile {
    /// The trust list.
    Trust,
    /// The scanner registry.
    Scanners,
    /// The revocation list.
    Revocations,
    /// Server certificate, key and client CA, together (a certificate needs its key).
    Tls,
}

impl ReloadFile {
    /// Every file, in reload order.
    pub const ALL: [ReloadFile; 4] = [
        ReloadFile::Trust,
        ReloadFile::Scanners,
        ReloadFile::Revocations,
        ReloadFile::Tls,
    ];

    /// Stable name for metrics, logs and `/readyz`.
    pub fn label(self) -> &'static str {
        match self {
            ReloadFile::Trust => "trust",
            ReloadFile::Scanners => "scanners",
            ReloadFile::Revocations => "revocations",
            ReloadFile::Tls => "tls",
        }
    }

    /// Index into per-file tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The outcome of one file's reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileResult {
    /// Which file.
    pub file: ReloadFile,
    /// Whether its new content is in force (or it was unchanged and valid).
    pub ok: bool,
    /// What was loaded (`2 issuers`), or why it was refused.
    pub detail: String,
    /// When the reload was attempted, Unix seconds.
    pub at: u64,
}

/// The outcome of one reload: one result per file it covered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadReport {
    /// One entry per file, in [`ReloadFile::ALL`] order.
    pub files: Vec<FileResult>,
}

impl ReloadReport {
    /// Whether every file reloaded.
    pub fn ok(&self) -> bool {
        self.files.iter().all(|f| f.ok)
    }

    /// The result for one file, if this reload covered it.
    pub fn file(&self, file: ReloadFile) -> Option<&FileResult> {
        self.files.iter().find(|f| f.file == file)
    }

    fn push(&mut self, file: ReloadFile, result: Result<String, String>) {
        self.files.push(FileResult {
            file,
            ok: result.is_ok(),
            detail: result.unwrap_or_else(|e| e),
            at: unix_now(),
        });
    }

    /// Logs one line per file: INFO when it reloaded, ERROR when it was refused.
    pub fn log(&self) {
        for f in &self.files {
            if f.ok {
                info!(file = f.file.label(), result = "ok", detail = %f.detail, "reloaded");
            } else {
                error!(file = f.file.label(), result = "failed", detail = %f.detail, "reload refused, previous state kept");
            }
        }
    }
}

/// What a reload of the engine's files put in force.
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

/// What a revocation reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationReload {
    /// The epoch in force afterwards.
    pub epoch: u64,
    /// Revoked identifiers in force afterwards.
    pub entries: usize,
    /// Whether the file held a new epoch (an unchanged file is not an error).
    pub changed: bool,
}

/// Why a reload was refused.
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
    /// A delta, and no `[files] state_dir` to keep the state it leads to: a restart could not
    /// start from it, so it is not put in force either.
    #[error("{file}: a delta, and no [files] state_dir to keep the state it leads to (a restart could not start from it): write a snapshot (`issuer revoke` without --base) or set state_dir")]
    NotKept {
        /// The revocation file.
        file: PathBuf,
    },
    /// The new revocation state is in force but could not be kept for a restart.
    #[error("epoch {epoch} is in force but could not be kept in {dir} ({source}): a restart would not start from it")]
    Keep {
        /// The state directory.
        dir: PathBuf,
        /// The epoch in force.
        epoch: u64,
        /// Why.
        source: std::io::Error,
    },
    /// At least one file was refused; the others reloaded (see the report).
    #[error("reload refused for {}", failed(.0))]
    Failed(ReloadReport),
}

fn failed(report: &ReloadReport) -> String {
    report
        .files
        .iter()
        .filter(|f| !f.ok)
        .map(|f| format!("{}: {}", f.file.label(), f.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Re-reads the trust list and puts it in force. An invalid file changes nothing.
pub fn reload_trust(engine: &Engine, files: &Files) -> Result<usize, ConfigError> {
    let trust = load_trust_list(&files.trust)?;
    if trust.is_empty() {
        warn!(file = %files.trust.display(), "trust list is empty: every token will be denied unknown_issuer");
    }
    let n = trust.len();
    engine.set_trust(trust);
    Ok(n)
}

/// Re-reads the scanner registry and puts it in force. An invalid file changes nothing.
/// Connected scanners that are no longer registered are closed at their next request.
pub fn reload_scanners(engine: &Engine, files: &Files) -> Result<usize, ConfigError> {
    let scanners = load_scanners(&files.scanners)?;
    if scanners.is_empty() {
        warn!(file = %files.scanners.display(), "scanner registry is empty: every scanner will be refused");
    }
    let n = scanners.len();
    engine.set_scanners(scanners);
    Ok(n)
}

/// The file in `[files] state_dir` that holds the revocation state in force.
pub const KEPT_REVOCATIONS: &str = "revocations.cbor";

/// Writes `state` to `dir` as a bare snapshot (with its digest), atomically: written aside,
/// flushed, then renamed over the previous one. The node restarts from it.
pub fn keep(dir: &Path, state: &gatehouse_core::RevocationState) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let target = dir.join(KEPT_REVOCATIONS);
    let aside = dir.join(format!("{KEPT_REVOCATIONS}.new"));
    let mut f = std::fs::File::create(&aside)?;
    f.write_all(&state.to_snapshot().encode())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&aside, &target)?;
    Ok(())
}

/// Reads the state [`keep`] wrote, if there is one.
pub fn read_kept(dir: &Path) -> Result<Option<gatehouse_protocol::RevocationList>, ConfigError> {
    let path = dir.join(KEPT_REVOCATIONS);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::new(&path, "(file)", e.to_string())),
        Ok(_) => load_revocations(&path).map(Some),
    }
}

/// The revocation step of a reload, self-contained: reads the revocation file and applies it
/// when it holds another epoch than the one in force (a snapshot, or a delta on the epoch in
/// force). A file whose epoch is already in force is left alone and is not an error; a gapped
/// or out-of-order delta is refused and the epoch in force stays. No revocation file
/// configured: nothing to do.
pub fn reload_revocations(engine: &Engine, files: &Files) -> Result<RevocationReload, ReloadError> {
    let Some(path) = &files.revocations else {
        let (epoch, entries) = engine.revocation_epoch();
        return Ok(RevocationReload {
            epoch,
            entries,
            changed: false,
        });
    };
    let list = load_revocations(path)?;
    let (epoch, _) = engine.revocation_epoch();
    let changed = list.epoch != epoch;
    if changed {
        // Restart = reload: a node restarts from its files, so it takes a delta only when it
        // can keep the state the delta leads to.
        if list.base.is_some() && files.state_dir.is_none() {
            return Err(ReloadError::NotKept { file: path.clone() });
        }
        engine
            .apply_revocations(&list)
            .map_err(|source| ReloadError::Revocation {
                file: path.clone(),
                source,
            })?;
        if let Some(dir) = &files.state_dir {
            keep(dir, &engine.revocations().load()).map_err(|source| ReloadError::Keep {
                dir: dir.clone(),
                epoch: list.epoch,
                source,
            })?;
        }
    }
    let (epoch, entries) = engine.revocation_epoch();
    Ok(RevocationReload {
        epoch,
        entries,
        changed,
    })
}

/// Reloads the trust list, the scanner registry and the revocation list, each on its own
/// merits, and reports every file's result. Connections and requests in flight are not
/// disturbed: each request sees one whole trust list and registry, old or new.
///
/// Blocking (reads files, may rebuild a large revocation set): call it from a plain thread or
/// `spawn_blocking`.
pub fn reload_files(engine: &Engine, files: &Files) -> ReloadReport {
    reload_each(engine, files).0
}

type Counts = (Option<usize>, Option<usize>, Option<RevocationReload>);

fn reload_each(engine: &Engine, files: &Files) -> (ReloadReport, Counts) {
    let mut report = ReloadReport::default();
    let trust = reload_trust(engine, files);
    let issuers = trust.as_ref().ok().copied();
    report.push(
        ReloadFile::Trust,
        trust
            .map(|n| format!("{n} issuer keys"))
            .map_err(|e| e.to_string()),
    );
    let registry = reload_scanners(engine, files);
    let scanners = registry.as_ref().ok().copied();
    report.push(
        ReloadFile::Scanners,
        registry
            .map(|n| format!("{n} scanners"))
            .map_err(|e| e.to_string()),
    );
    let revocations = reload_revocations(engine, files);
    let revoked = revocations.as_ref().ok().copied();
    report.push(
        ReloadFile::Revocations,
        revocations
            .map(|r| {
                format!(
                    "epoch {} ({} entries){}",
                    r.epoch,
                    r.entries,
                    if r.changed { "" } else { ", unchanged" }
                )
            })
            .map_err(|e| e.to_string()),
    );
    (report, (issuers, scanners, revoked))
}

/// [`reload_files`], logged, as one result: `Ok` when every file reloaded, else
/// [`ReloadError::Failed`] with the report (the files that were valid are in force).
pub fn reload(engine: &Engine, files: &Files) -> Result<Reloaded, ReloadError> {
    let (report, counts) = reload_each(engine, files);
    report.log();
    match counts {
        (Some(issuers), Some(scanners), Some(r)) => Ok(Reloaded {
            issuers,
            scanners,
            revocation_epoch: r.epoch,
            revocations_changed: r.changed,
        }),
        _ => Err(ReloadError::Failed(report)),
    }
}

/// How a running server is told to reload, and what it reloads: [`run`](super::run) reloads
/// `files` (engine files and TLS) each time `trigger` is notified, and records the result in
/// `/metrics` and `/readyz`. [`run_with_signals`](super::run_with_signals) notifies it on SIGHUP.
#[derive(Debug, Clone)]
pub struct ReloadControl {
    /// The files to reload.
    pub files: Files,
    /// Notified to start a reload; notifications during a reload coalesce into one more.
    pub trigger: Arc<Notify>,
}

/// The reload loop of a running server.
pub(crate) async fn serve_reloads(
    control: ReloadControl,
    engine: Arc<Engine>,
    endpoint: quinn::Endpoint,
    base: ServerConfig,
    metrics: Arc<Metrics>,
) {
    loop {
        control.trigger.notified().await;
        notify_reloading();
        let files = control.files.clone();
        let e = Arc::clone(&engine);
        let m = Arc::clone(&metrics);
        let endpoint = endpoint.clone();
        let base = base.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut report = reload_files(&e, &files);
            if let Some(tls) = &files.tls {
                report.push(
                    ReloadFile::Tls,
                    reload_tls(tls, &base, Arc::clone(&e), Arc::clone(&m), &endpoint),
                );
            }
            report.log();
            m.record_reload(&report, &e);
        })
        .await;
        if let Err(e) = done {
            error!("reload task failed: {e}");
        }
        let _ = sd_notify::notify(&[NotifyState::Ready]);
    }
}

/// RELOADING=1 with MONOTONIC_USEC, which systemd 253 and newer require beside it (older
/// versions ignore it). A no-op outside systemd.
fn notify_reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    let _ = sd_notify::notify(&states);
}

/// Loads the server certificate, key and client CA, builds a new TLS configuration and puts it
/// in force for new connections. Connections already open keep the keys they were set up with.
/// Any error leaves the configuration in force.
pub(crate) fn reload_tls(
    tls: &TlsFiles,
    base: &ServerConfig,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    endpoint: &quinn::Endpoint,
) -> Result<String, String> {
    let mut config = base.clone();
    config.cert_chain = load_certs(&tls.cert).map_err(|e| e.to_string())?;
    config.key = load_key(&tls.key).map_err(|e| e.to_string())?;
    config.client_ca = load_certs(&tls.client_ca).map_err(|e| e.to_string())?;
    let expiry = cert_expiry(&config);
    let quic =
        quinn_server_config(&config, engine, Arc::clone(&metrics)).map_err(|e| e.to_string())?;
    endpoint.set_server_config(Some(quic));
    {
        let mut state = metrics.reload.lock();
        (state.server_cert_expiry, state.client_ca_expiry) = expiry;
    }
    Ok(match expiry.0 {
        Some(t) => format!("server certificate valid until {}", format_unix(t)),
        None => "server certificate in force".into(),
    })
}

/// The server leaf's and the earliest client CA certificate's expiry.
pub(crate) fn cert_expiry(config: &ServerConfig) -> (Option<u64>, Option<u64>) {
    (
        config
            .cert_chain
            .first()
            .and_then(|c| certificate_not_after(c)),
        config
            .client_ca
            .iter()
            .filter_map(|c| certificate_not_after(c))
            .min(),
    )
}

/// `YYYY-MM-DD HH:MM:SS UTC` for Unix seconds.
pub fn format_unix(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Civil from days (the inverse of the days-from-civil algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_print_as_utc() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(1_800_000_000), "2027-01-15 08:00:00 UTC");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
