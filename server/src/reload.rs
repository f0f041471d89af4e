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

use std::fmt::Write as _;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sd_notify::NotifyState;
use tracing::{error, info, warn};

use super::files::{
    certificate_not_after, load_certs, load_key, load_revocations, load_scanners, load_trust_list,
};
use crate::admission::Admission;
use crate::component::{Component, Rows};
use crate::settings::{Files, ReloadControl, ServerConfig, TlsFiles};
use crate::tls::quinn_server_config;
use gatehouse_core::{ConfigError, Engine, RevocationError};
use gatehouse_protocol::Date;

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
    /// The mdoc IACA roots and mdoc revocations, together (SPEC §12).
    Mdoc,
}

impl ReloadFile {
    /// Every file, in reload order.
    pub const ALL: [ReloadFile; 5] = [
        ReloadFile::Trust,
        ReloadFile::Scanners,
        ReloadFile::Revocations,
        ReloadFile::Tls,
        ReloadFile::Mdoc,
    ];

    /// Stable name for metrics, logs and `/readyz`.
    pub fn label(self) -> &'static str {
        match self {
            ReloadFile::Trust => "trust",
            ReloadFile::Scanners => "scanners",
            ReloadFile::Revocations => "revocations",
            ReloadFile::Tls => "tls",
            ReloadFile::Mdoc => "mdoc",
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

/// Re-reads the mdoc IACA roots and revocations and puts them in force, both or neither:
/// (IACAs, revocations). An invalid file changes nothing.
pub fn reload_mdoc(engine: &Engine, files: &Files) -> Result<(usize, usize), ConfigError> {
    let anchors = crate::files::load_mdoc_iaca(files.mdoc_iaca.as_deref())?;
    let revocations = crate::files::load_mdoc_revocations(files.mdoc_revocations.as_deref())?;
    let counts = (anchors.anchors().len(), revocations.len());
    // Revocations first: a newly trusted IACA is never in force under the old revocations.
    engine.set_mdoc_revocations(revocations);
    engine.set_mdoc_trust(anchors);
    Ok(counts)
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
    if files.mdoc_iaca.is_some() || files.mdoc_revocations.is_some() {
        report.push(
            ReloadFile::Mdoc,
            reload_mdoc(engine, files)
                .map(|(iacas, revoked)| format!("{iacas} IACAs, {revoked} mdoc revocations"))
                .map_err(|e| e.to_string()),
        );
    }
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

/// The reloader's state: what the last reloads did, the certificates' expiry and the age of the
/// revocation epoch in force. A [`Component`]: `/metrics` and `/readyz` read it.
pub(crate) struct ReloadStatus {
    state: Mutex<ReloadState>,
    engine: Arc<Engine>,
}

impl ReloadStatus {
    /// What the start loaded, recorded as each configured file's first result, with the
    /// certificates' expiry: the first scrape already has them.
    pub fn at_start(
        engine: Arc<Engine>,
        expiry: Expiry,
        files: Option<&Files>,
        now: u64,
    ) -> Arc<ReloadStatus> {
        let mut state = ReloadState::default();
        state.observe_epoch(engine.revocation_epoch().0, now);
        (state.server_cert_expiry, state.client_ca_expiry) = expiry;
        if let Some(files) = files {
            state.record_start(files, now);
        }
        Arc::new(ReloadStatus {
            state: Mutex::new(state),
            engine,
        })
    }

    /// Records a completed reload, at `now`.
    pub fn record(&self, report: &ReloadReport, now: u64) {
        let mut state = self.state.lock();
        state.generation += 1;
        for f in &report.files {
            let i = f.file.index();
            state.counts[i][usize::from(!f.ok)] += 1;
            state.last[i] = Some(f.clone());
        }
        state.observe_epoch(self.engine.revocation_epoch().0, now);
    }

    /// The certificates now in force expire at these times (server leaf, earliest client CA).
    fn set_cert_expiry(&self, expiry: Expiry) {
        let mut state = self.state.lock();
        (state.server_cert_expiry, state.client_ca_expiry) = expiry;
    }

    /// The reload lines of `/readyz`: the number of reloads, the server's pid, then one line
    /// per file, `reload <file> ok|failed <unix time> <detail>`. `gatehouse reload` reads them.
    pub fn detail(&self) -> String {
        let state = self.state.lock();
        let mut out = format!("reloads {}\npid {}\n", state.generation, std::process::id());
        for file in ReloadFile::ALL {
            if let Some(f) = &state.last[file.index()] {
                let _ = writeln!(
                    out,
                    "reload {} {} {} {}",
                    file.label(),
                    if f.ok { "ok" } else { "failed" },
                    f.at,
                    f.detail.replace('\n', " ")
                );
            }
        }
        out
    }
}

impl Component for ReloadStatus {
    /// Reload, certificate and revocation-age metrics.
    fn register_metrics(&self, scrape: &mut Registry, now: u64) {
        let epoch = self.engine.revocation_epoch().0;
        let mut state = self.state.lock();
        let age = state.observe_epoch(epoch, now);
        scrape.register(
            "gatehouse_revocation_epoch_age_seconds",
            "Seconds since the revocation epoch in force was put in force",
            ConstGauge::new(age),
        );
        scrape.register(
            "gatehouse_reloads_completed",
            "Reloads completed (all files)",
            ConstCounter::new(state.generation),
        );
        let mut counts = Vec::with_capacity(ReloadFile::ALL.len() * 2);
        for file in ReloadFile::ALL {
            for (j, result) in ["ok", "failed"].into_iter().enumerate() {
                let labels = ReloadLabels {
                    file: file.label(),
                    result,
                };
                counts.push((labels, ConstCounter::new(state.counts[file.index()][j])));
            }
        }
        scrape.register(
            "gatehouse_reloads",
            "File reloads by file and result",
            Rows(counts),
        );
        let last = || state.last.iter().flatten();
        let by_file = |f: &FileResult, value: u64| {
            let labels = FileLabel {
                file: f.file.label(),
            };
            (labels, ConstGauge::new(value))
        };
        scrape.register(
            "gatehouse_reload_success",
            "1 when the file's last reload succeeded, 0 when it was refused (previous state \
             kept)",
            Rows(last().map(|f| by_file(f, u64::from(f.ok))).collect()),
        );
        scrape.register(
            "gatehouse_reload_timestamp_seconds",
            "When the file's last reload was attempted, Unix seconds",
            Rows(last().map(|f| by_file(f, f.at)).collect()),
        );
        let expiry = [
            ("server", state.server_cert_expiry),
            ("client_ca", state.client_ca_expiry),
        ]
        .into_iter()
        .filter_map(|(certificate, t)| {
            Some((CertificateLabel { certificate }, ConstGauge::new(t?)))
        })
        .collect();
        scrape.register(
            "gatehouse_certificate_expiry_timestamp_seconds",
            "When the TLS certificate in force expires, Unix seconds (client_ca: the earliest \
             CA certificate)",
            Rows(expiry),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabel {
    file: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    file: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabel {
    certificate: &'static str,
}

/// What the last reloads did, for `/metrics`, `/readyz` and `gatehouse reload`.
#[derive(Debug, Default)]
struct ReloadState {
    /// Reloads completed since start (SIGHUP or otherwise).
    generation: u64,
    /// The last result per file, by [`ReloadFile::index`].
    last: [Option<FileResult>; 5],
    /// Results per file: [ok, failed].
    counts: [[u64; 2]; 5],
    /// The revocation epoch last seen in force, and since when (Unix seconds).
    epoch_seen: Option<(u64, u64)>,
    /// Server certificate (leaf) and client CA expiry, Unix seconds.
    server_cert_expiry: Option<u64>,
    /// The earliest expiry among the client CA certificates.
    client_ca_expiry: Option<u64>,
}

impl ReloadState {
    /// Records what the start loaded as each configured file's last result (ok: a node that
    /// could not load a file did not start), so `gatehouse_reload_success{file}` and its
    /// timestamp exist from the first scrape. Not counted as a reload.
    fn record_start(&mut self, files: &Files, now: u64) {
        for file in ReloadFile::ALL {
            let configured = match file {
                ReloadFile::Revocations => files.revocations.is_some(),
                ReloadFile::Tls => files.tls.is_some(),
                ReloadFile::Mdoc => files.mdoc_iaca.is_some() || files.mdoc_revocations.is_some(),
                ReloadFile::Trust | ReloadFile::Scanners => true,
            };
            if configured && self.last[file.index()].is_none() {
                self.last[file.index()] = Some(FileResult {
                    file,
                    ok: true,
                    detail: "loaded at start".into(),
                    at: now,
                });
            }
        }
    }

    /// Notes the epoch in force; an epoch not seen before starts its age now.
    fn observe_epoch(&mut self, epoch: u64, now: u64) -> u64 {
        match self.epoch_seen {
            Some((e, since)) if e == epoch => now.saturating_sub(since),
            _ => {
                self.epoch_seen = Some((epoch, now));
                0
            }
        }
    }
}

/// The reload loop of a running server.
pub(crate) async fn serve_reloads(
    control: ReloadControl,
    engine: Arc<Engine>,
    endpoint: quinn::Endpoint,
    base: ServerConfig,
    admission: Arc<Admission>,
    status: Arc<ReloadStatus>,
) {
    loop {
        control.trigger.notified().await;
        notify_reloading();
        let files = control.files.clone();
        let (e, a, st) = (
            Arc::clone(&engine),
            Arc::clone(&admission),
            Arc::clone(&status),
        );
        let endpoint = endpoint.clone();
        let base = base.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut report = reload_files(&e, &files);
            if let Some(tls) = &files.tls {
                let result = reload_tls(tls, &base, Arc::clone(&e), a, &endpoint);
                if let Ok((_, expiry)) = &result {
                    st.set_cert_expiry(*expiry);
                }
                report.push(ReloadFile::Tls, result.map(|(detail, _)| detail));
            }
            report.log();
            st.record(&report, base.clock.now());
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
/// in force for new connections; returns what to report and the new certificates' expiry.
/// Connections already open keep the keys they were set up with. Any error leaves the
/// configuration in force.
pub(crate) fn reload_tls(
    tls: &TlsFiles,
    base: &ServerConfig,
    engine: Arc<Engine>,
    admission: Arc<Admission>,
    endpoint: &quinn::Endpoint,
) -> Result<(String, Expiry), String> {
    let mut config = base.clone();
    config.cert_chain = load_certs(&tls.cert).map_err(|e| e.to_string())?;
    config.key = load_key(&tls.key).map_err(|e| e.to_string())?;
    config.client_ca = load_certs(&tls.client_ca).map_err(|e| e.to_string())?;
    let expiry = cert_expiry(&config);
    let quic = quinn_server_config(&config, engine, admission).map_err(|e| e.to_string())?;
    endpoint.set_server_config(Some(quic));
    let detail = match expiry.0 {
        Some(t) => format!("server certificate valid until {}", format_unix(t)),
        None => "server certificate in force".into(),
    };
    Ok((detail, expiry))
}

/// When the server certificate (leaf) and the earliest client CA certificate expire, Unix
/// seconds (`None`: not readable).
pub(crate) type Expiry = (Option<u64>, Option<u64>);

/// The server leaf's and the earliest client CA certificate's expiry.
pub(crate) fn cert_expiry(config: &ServerConfig) -> Expiry {
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

/// `YYYY-MM-DD HH:MM:SS UTC` for Unix seconds (the calendar date from the protocol's [`Date`],
/// one civil-date computation for the whole project).
pub fn format_unix(t: u64) -> String {
    let date = Date::from_unix(t, 0).yyyymmdd();
    let secs = t % 86_400;
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        date / 10_000,
        date / 100 % 100,
        date % 100,
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
