//! The issuer and wallet tools behind `gatehouse issuer …` and `gatehouse wallet …`: key files,
//! issuing credentials, revocation epochs, rotating tokens as QR codes. For development and
//! tests: a real issuer keeps its key in an HSM, a real wallet in the phone's secure area.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gatehouse_protocol::{
    to_qr_text, Credential, CredentialType, Date, Entitlements, HolderCategory, Presentation,
    PrivateKey, RevocationEntry, RevocationKind, RevocationList, UnitPath,
};

use gatehouse_engine::client::ops;
use gatehouse_engine::server::feed::{
    parse_head, AnyTransport, FeedConfig, FeedError, FeedHead, FeedSource, Object, Transport,
};
use gatehouse_engine::{compact, IssuerKey, RevocationKey, TrustList};

/// Refuses to go on when one of `paths` exists, unless `force`: no command replaces a key, a
/// wallet or a list without being asked to.
pub fn refuse_overwrite(paths: &[PathBuf], force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!("{} exists (use --force to replace it)", p.display());
    }
    Ok(())
}

fn labels<T: Copy>(all: &[T], label: impl Fn(T) -> &'static str) -> String {
    all.iter().map(|t| label(*t)).collect::<Vec<_>>().join(", ")
}

/// Writes a private key as hex, readable by the owner only.
pub fn write_key(path: &Path, key: &PrivateKey) -> Result<()> {
    std::fs::write(path, format!("{}\n", hex::encode(key.to_bytes())))
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

/// Reads a hex private-key file.
pub fn read_key(path: &Path) -> Result<PrivateKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = hex::decode(text.trim()).with_context(|| format!("{}: not hex", path.display()))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{}: a key is 32 bytes", path.display()))?;
    PrivateKey::from_bytes(&arr).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use rand_core::{OsRng, RngCore};
    let mut b = [0u8; N];
    OsRng
        .try_fill_bytes(&mut b)
        .context("reading the system's random source")?;
    Ok(b)
}

/// A fresh random private key.
pub fn generate_key() -> Result<PrivateKey> {
    loop {
        if let Ok(k) = PrivateKey::from_bytes(&random_bytes::<32>()?) {
            return Ok(k);
        }
    }
}

/// `issuer keygen`: a new issuer key in `dir/issuer.key` and a trust list naming it in
/// `dir/trust.toml`.
pub fn issuer_keygen(dir: &Path, name: &str, now: u64, force: bool) -> Result<PathBuf> {
    let key_path = dir.join("issuer.key");
    refuse_overwrite(&[key_path.clone(), dir.join("trust.toml")], force)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = generate_key()?;
    write_key(&key_path, &key)?;
    let mut trust = TrustList::new();
    trust.insert(IssuerKey {
        name: name.into(),
        public: key.public().clone(),
        not_before: now.saturating_sub(86_400),
        not_after: u64::MAX,
        retired: false,
    });
    std::fs::write(dir.join("trust.toml"), trust.to_toml()).context("writing trust.toml")?;
    Ok(key_path)
}

/// What `issuer issue` puts in a credential.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Credential type label (e.g. `military_id`).
    pub credential_type: String,
    /// Holder category label (e.g. `enlisted`).
    pub category: String,
    /// Unit path (e.g. `1/12/103/2`).
    pub unit: String,
    /// Validity in days from now.
    pub days: u64,
    /// Birth date `YYYYMMDD`.
    pub birth: Option<u32>,
    /// Sponsor subject id (hex) for family members.
    pub sponsor: Option<String>,
    /// Entitlement labels: `base_entry`, `military_discount`, `welfare_facilities`.
    pub entitlements: Vec<String>,
}

/// `issuer issue`: a credential for a new holder; writes `dir/credential.cose` and the
/// holder's `dir/device.key`; returns the credential.
pub fn issuer_issue(
    issuer_key: &Path,
    dir: &Path,
    req: &IssueRequest,
    now: u64,
    force: bool,
) -> Result<Credential> {
    refuse_overwrite(
        &[dir.join("credential.cose"), dir.join("device.key")],
        force,
    )?;
    let issuer = read_key(issuer_key).context("--key")?;
    let credential_type = CredentialType::from_label(&req.credential_type).with_context(|| {
        format!(
            "--type: unknown credential type {:?} (valid: {})",
            req.credential_type,
            labels(CredentialType::ALL, CredentialType::label)
        )
    })?;
    let category = HolderCategory::from_label(&req.category).with_context(|| {
        format!(
            "--category: unknown holder category {:?} (valid: {})",
            req.category,
            labels(HolderCategory::ALL, HolderCategory::label)
        )
    })?;
    let unit: UnitPath = req.unit.parse().map_err(|e| {
        anyhow::anyhow!(
            "--unit {:?}: {e} (a unit path is like 1/12/103/2)",
            req.unit
        )
    })?;
    let mut entitlements = Entitlements::NONE;
    for e in &req.entitlements {
        entitlements = entitlements
            | match e.as_str() {
                "base_entry" => Entitlements::BASE_ENTRY,
                "military_discount" => Entitlements::MILITARY_DISCOUNT,
                "welfare_facilities" => Entitlements::WELFARE_FACILITIES,
                other => bail!(
                "--entitlement: unknown entitlement {other:?} (valid: base_entry, military_discount, welfare_facilities)"
            ),
            };
    }
    let sponsor = match &req.sponsor {
        None => None,
        Some(h) => Some(
            hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .with_context(|| {
                    format!("--sponsor {h:?}: a sponsor is a subject id, 16 bytes of hex (32 hex digits)")
                })?,
        ),
    };
    let device = generate_key()?;
    let not_after = now + req.days.max(1) * 86_400;
    let credential = Credential {
        id: random_bytes()?,
        credential_type,
        category,
        subject: random_bytes()?,
        sponsor,
        not_before: now.saturating_sub(60),
        not_after,
        leave: (credential_type == CredentialType::LeavePass)
            .then_some((now.saturating_sub(60), not_after)),
        unit,
        entitlements,
        birth_date: req
            .birth
            .map(|b| Date::from_yyyymmdd(u64::from(b)))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--birth: {e} (a date as YYYYMMDD)"))?,
        age_over_19: None,
        device_key: *device.public().compressed(),
    };
    let bytes = credential
        .issue(&issuer)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("credential.cose"), &bytes).context("writing credential.cose")?;
    write_key(&dir.join("device.key"), &device)?;
    Ok(credential)
}

/// `issuer revoke --out`: one revocation list (snapshot without `base`, delta with it),
/// signed when `key` is given (a bare list is only for a node's own disk).
pub fn issuer_revoke(
    out: &Path,
    epoch: u64,
    base: Option<u64>,
    ids: &[(RevocationKind, String)],
    reinstate: &[(RevocationKind, String)],
    key: Option<&PrivateKey>,
    force: bool,
) -> Result<RevocationList> {
    refuse_overwrite(&[out.to_path_buf()], force)?;
    let mut list = RevocationList {
        epoch,
        base,
        revoke: entries(ids)?,
        reinstate: entries(reinstate)?,
        digest: None,
    };
    list.validate()
        .map_err(|e| anyhow::anyhow!("--epoch/--base: {e}"))?;
    // A snapshot carries its state's digest (SPEC §11.5); a delta's base is not known here.
    if base.is_none() {
        list.digest = with_digest(&list)?.digest;
    }
    let bytes = match key {
        Some(k) => list.sign(k).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => list.encode(),
    };
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(list)
}

/// `issuer revocation-keygen`: a new revocation key in `dir/revocation.key`; when `trust`
/// is given, the key is added to that trust list as a `[[revocation_key]]`.
pub fn revocation_keygen(
    dir: &Path,
    name: &str,
    trust: Option<&Path>,
    force: bool,
) -> Result<PathBuf> {
    let key_path = dir.join("revocation.key");
    // Nothing is replaced without force: not the private key, and not a trusted key of the
    // same name (a second one would keep the first trusted after its private key is gone).
    refuse_overwrite(std::slice::from_ref(&key_path), force)?;
    let mut list = match trust {
        Some(trust_path) => {
            let list = gatehouse_engine::server::files::load_trust_list(trust_path)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if list.has_revocation_key_named(name) && !force {
                bail!(
                    "{} already trusts a revocation key named {name:?} (use --force to replace it)",
                    trust_path.display()
                );
            }
            Some(list)
        }
        None => None,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = generate_key()?;
    write_key(&key_path, &key)?;
    if let (Some(trust_path), Some(list)) = (trust, list.as_mut()) {
        list.remove_revocation_keys_named(name);
        list.insert_revocation_key(RevocationKey {
            name: name.into(),
            public: key.public().clone(),
        });
        std::fs::write(trust_path, list.to_toml())
            .with_context(|| format!("writing {}", trust_path.display()))?;
    }
    Ok(key_path)
}

/// Where `issuer revoke --feed` and `issuer compact` publish: a directory (served as is by
/// any HTTP server for `https://` feeds) or a Redis key prefix. Objects are read and written
/// through the nodes' own feed transports, so the publisher and the nodes agree on where each
/// object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedTarget(FeedSource);

impl FeedTarget {
    /// Where `--feed` points, read as a node reads `[revocations] feed` (the same rules, so the
    /// publisher and the nodes agree on what a text names): `redis://…` (with `key` as prefix)
    /// or a directory (`dir:` prefix optional). An `http(s)://` feed is served from a
    /// directory: publish to that directory.
    pub fn parse(text: &str, key: Option<&str>) -> Result<FeedTarget> {
        match FeedSource::parse(text, key) {
            FeedSource::Http(url) => bail!(
                "--feed {url}: nodes read an HTTP feed, a publisher writes the directory the \
                 web server serves (give that directory)"
            ),
            source => Ok(FeedTarget(source)),
        }
    }

    /// The feed's transport, with a runtime of its own to drive it (the commands are not
    /// async).
    fn open(&self) -> Result<Publisher> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the feed's runtime")?;
        let transport = AnyTransport::open(&FeedConfig::new(self.0.clone()))
            .map_err(|e| Publisher::error(&self.0, e))?;
        Ok(Publisher {
            source: self.0.clone(),
            runtime,
            transport,
        })
    }
}

/// A feed open for publishing: its transport and the runtime that drives it.
struct Publisher {
    source: FeedSource,
    runtime: tokio::runtime::Runtime,
    transport: AnyTransport,
}

impl Publisher {
    /// The error of a transport, said as the publisher says it: what it was doing to which
    /// file, or the Redis client's own words.
    fn error(source: &FeedSource, e: FeedError) -> anyhow::Error {
        match (source, e) {
            (FeedSource::Dir(dir), FeedError::Fetch { object, problem }) => {
                anyhow::anyhow!("reading {}: {problem}", dir.join(object).display())
            }
            (_, FeedError::Fetch { problem, .. } | FeedError::Write { problem, .. }) => {
                anyhow::anyhow!(problem)
            }
            (_, e) => anyhow::anyhow!("{e}"),
        }
    }

    /// One object, whole (`None` when the feed does not hold it).
    fn read(&mut self, object: Object) -> Result<Option<Vec<u8>>> {
        match self
            .runtime
            .block_on(self.transport.get(object, usize::MAX))
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(FeedError::Missing(_)) => Ok(None),
            Err(e) => Err(Publisher::error(&self.source, e)),
        }
    }

    /// Writes one object; a directory gets it whole or not at all (write aside, rename).
    fn write(&mut self, object: Object, bytes: Vec<u8>) -> Result<()> {
        self.runtime
            .block_on(self.transport.put(object, bytes))
            .map_err(|e| Publisher::error(&self.source, e))
    }

    fn head(&mut self) -> Result<Option<FeedHead>> {
        self.read(Object::Head)?
            .map(|b| parse_head(&b).map_err(|e| anyhow::anyhow!("{e}")))
            .transpose()
    }

    fn write_head(&mut self, head: FeedHead) -> Result<()> {
        self.write(Object::Head, serde_json::to_vec(&head)?)
    }

    /// Reads and authenticates one list with the publisher's own key.
    fn list(&mut self, object: Object, key: &PrivateKey) -> Result<RevocationList> {
        let bytes = self
            .read(object)?
            .with_context(|| format!("the feed lacks {}", object.file_name()))?;
        gatehouse_protocol::SignedRevocationList::open(&bytes, |kid| {
            (*kid == key.public().key_id()).then_some(key.public())
        })
        .map_err(|e| anyhow::anyhow!("{}: {e}", object.file_name()))
    }
}

/// The snapshot `list` with the digest of its state (SPEC §11.5).
fn with_digest(list: &RevocationList) -> Result<RevocationList> {
    compact(list, &[]).map_err(|e| anyhow::anyhow!("{e}"))
}

fn entries(ids: &[(RevocationKind, String)]) -> Result<Vec<RevocationEntry>> {
    ids.iter()
        .map(|(kind, h)| {
            let flag = match kind {
                RevocationKind::Credential => "credential",
                RevocationKind::Subject => "subject",
                RevocationKind::Sponsor => "sponsor",
            };
            let id = hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .with_context(|| {
                    format!("--{flag} {h:?}: an id is 16 bytes of hex (32 hex digits)")
                })?;
            Ok(RevocationEntry { kind: *kind, id })
        })
        .collect()
}

/// `issuer revoke --feed`: publishes the next epoch, signed: the first publication is
/// snapshot 1, every later one a delta on the feed's head. The list is written before the
/// head, so a node never reads a head naming a list that is not there. One publisher at a
/// time per feed.
pub fn feed_publish(
    target: &FeedTarget,
    key: &PrivateKey,
    revoke: &[(RevocationKind, String)],
    reinstate: &[(RevocationKind, String)],
) -> Result<RevocationList> {
    let (revoke, reinstate) = (entries(revoke)?, entries(reinstate)?);
    let mut feed = target.open()?;
    let (list, object, head) = match feed.head()? {
        None => {
            if !reinstate.is_empty() {
                bail!("the feed is empty: there is nothing to reinstate");
            }
            let mut list = RevocationList {
                epoch: 1,
                base: None,
                revoke,
                reinstate,
                digest: None,
            };
            list.digest = with_digest(&list)?.digest;
            (
                list,
                Object::Snapshot(1),
                FeedHead {
                    epoch: 1,
                    snapshot: 1,
                },
            )
        }
        Some(h) => {
            let epoch = h.epoch + 1;
            let mut list = RevocationList {
                epoch,
                base: Some(h.epoch),
                revoke,
                reinstate,
                digest: None,
            };
            // The digest of the state this delta brings a node to (SPEC §11.5): the feed's
            // state at its head, folded from its lists, with this delta applied.
            let snapshot = feed.list(Object::Snapshot(h.snapshot), key)?;
            let mut deltas = (h.snapshot + 1..=h.epoch)
                .map(|n| feed.list(Object::Delta(n), key))
                .collect::<Result<Vec<_>>>()?;
            deltas.push(list.clone());
            let after = compact(&snapshot, &deltas).map_err(|e| anyhow::anyhow!("{e}"))?;
            list.digest = after.digest;
            (
                list,
                Object::Delta(epoch),
                FeedHead {
                    epoch,
                    snapshot: h.snapshot,
                },
            )
        }
    };
    let signed = list.sign(key).map_err(|e| anyhow::anyhow!("{e}"))?;
    feed.write(object, signed)?;
    feed.write_head(head)?;
    Ok(list)
}

/// `issuer compact`: folds the feed's snapshot and the deltas after it into a snapshot at the
/// head's epoch, signed, and points the head at it. Older objects stay for nodes part-way.
pub fn feed_compact(target: &FeedTarget, key: &PrivateKey) -> Result<RevocationList> {
    let mut feed = target.open()?;
    let head = feed
        .head()?
        .context("the feed is empty: nothing to compact")?;
    let snapshot = feed.list(Object::Snapshot(head.snapshot), key)?;
    let deltas = (head.snapshot + 1..=head.epoch)
        .map(|n| feed.list(Object::Delta(n), key))
        .collect::<Result<Vec<_>>>()?;
    let folded = compact(&snapshot, &deltas).map_err(|e| anyhow::anyhow!("{e}"))?;
    if head.snapshot != head.epoch {
        let signed = folded.sign(key).map_err(|e| anyhow::anyhow!("{e}"))?;
        feed.write(Object::Snapshot(folded.epoch), signed)?;
        feed.write_head(FeedHead {
            epoch: head.epoch,
            snapshot: folded.epoch,
        })?;
    }
    Ok(folded)
}

/// `wallet present`: a fresh token from `dir/credential.cose` and `dir/device.key`.
pub fn wallet_present(dir: &Path, now: u64, challenge: Option<&[u8]>) -> Result<Vec<u8>> {
    let credential =
        std::fs::read(dir.join("credential.cose")).context("reading credential.cose")?;
    let device = read_key(&dir.join("device.key"))?;
    Presentation {
        credential: &credential,
        timestamp: now,
        nonce: random_bytes()?,
        challenge,
    }
    .sign(&device)
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The QR text of a token rendered for a terminal (two rows of modules per line), and as SVG.
pub fn qr_renderings(token: &[u8]) -> Result<(String, String, String)> {
    use qrcode::render::{svg, unicode};
    use qrcode::{EcLevel, QrCode};
    let text = to_qr_text(token);
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)
        .context("the token does not fit a QR code")?;
    let term = code.render::<unicode::Dense1x2>().quiet_zone(true).build();
    let svg = code
        .render::<svg::Color<'_>>()
        .min_dimensions(400, 400)
        .build();
    Ok((text, term, svg))
}

/// A scanner named on `dev-pki --scanner ID[=ROLE[:UNIT]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannerSpec {
    /// The id (the certificate's common name).
    pub id: String,
    /// `gate`, `partner` or `age_check`, when given.
    pub role: Option<String>,
    /// A gate's unit path.
    pub unit: Option<String>,
}

impl std::str::FromStr for ScannerSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (id, rest) = match s.split_once('=') {
            Some((id, rest)) => (id, Some(rest)),
            None => (s, None),
        };
        let (role, unit) =
            match rest.map(|r| r.split_once(':').map_or((r, None), |(a, b)| (a, Some(b)))) {
                None => (None, None),
                Some((role, unit)) => {
                    if !matches!(role, "gate" | "partner" | "age_check") {
                        return Err(format!(
                            "role {role:?} in {s:?}: valid roles are gate, partner, age_check"
                        ));
                    }
                    if role == "gate" && unit.is_none() {
                        return Err(format!("{s:?}: a gate needs its unit, e.g. {id}=gate:1/12"));
                    }
                    if role != "gate" && unit.is_some() {
                        return Err(format!("{s:?}: only a gate takes a unit"));
                    }
                    if let Some(u) = unit {
                        u.parse::<UnitPath>()
                            .map_err(|e| format!("unit {u:?} in {s:?}: {e}"))?;
                    }
                    (Some(role.to_string()), unit.map(str::to_string))
                }
            };
        Ok(ScannerSpec {
            id: id.to_string(),
            role,
            unit,
        })
    }
}

/// Adds the scanners that have a role to the registry file at `path` (created if missing).
/// Entries already there are kept as they are (an operator may have edited them); scanners
/// already registered are skipped. Returns the ids added.
pub fn register_scanners(path: &Path, specs: &[ScannerSpec]) -> Result<Vec<String>> {
    let existing = if path.exists() {
        gatehouse_engine::server::files::load_scanners(path)?
    } else {
        gatehouse_engine::ScannerRegistry::new()
    };
    let mut text = if path.exists() {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        String::from("# Registered scanners (see deploy/REFERENCE.md). id = the client certificate's common name.\n")
    };
    let mut added = Vec::new();
    for spec in specs {
        let Some(role) = &spec.role else { continue };
        if existing.get(&spec.id).is_some() {
            continue;
        }
        text.push_str(&format!(
            "\n[[scanner]]\nid = {:?}\nrole = \"{role}\"\n",
            spec.id
        ));
        if let Some(unit) = &spec.unit {
            text.push_str(&format!("unit = \"{unit}\"\n"));
        }
        added.push(spec.id.clone());
    }
    if !added.is_empty() {
        // Parse what would be written before writing it.
        gatehouse_engine::ScannerRegistry::parse(path, &text)?;
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(added)
}

/// The reload part of a server's `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads completed since the server started.
    pub reloads: u64,
    /// The server's process id.
    pub pid: u32,
    /// Per file: (file, ok, detail).
    pub files: Vec<(String, bool, String)>,
}

impl ReloadStatus {
    /// Reads the lines `Metrics::reload_detail` writes.
    pub fn parse(body: &str) -> Option<ReloadStatus> {
        let mut reloads = None;
        let mut pid = None;
        let mut files = Vec::new();
        for line in body.lines() {
            let mut words = line.splitn(5, ' ');
            match words.next() {
                Some("reloads") => reloads = words.next()?.parse().ok(),
                Some("pid") => pid = words.next()?.parse().ok(),
                Some("reload") => {
                    let file = words.next()?.to_string();
                    let ok = words.next()? == "ok";
                    let _at = words.next()?;
                    files.push((file, ok, words.next().unwrap_or("").to_string()));
                }
                _ => {}
            }
        }
        Some(ReloadStatus {
            reloads: reloads?,
            pid: pid?,
            files,
        })
    }
}

#[cfg(unix)]
fn hangup(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("not a process id"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).map_err(std::io::Error::from)
}

#[cfg(not(unix))]
fn hangup(_pid: u32) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "reload by signal needs a Unix system",
    ))
}

/// Why `gatehouse reload` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadCommandError {
    /// The configuration cannot be used to find the server.
    #[error("{0}")]
    Config(String),
    /// The server did not answer, or did not finish the reload in time.
    #[error("{0}")]
    Unreachable(String),
}

/// `gatehouse reload`: asks the server to reload (SIGHUP to `pid`, or to the pid the server
/// reports), waits for the reload to complete and returns its status.
pub fn reload_server(
    config: &Path,
    pid: Option<u32>,
    timeout: Duration,
) -> std::result::Result<ReloadStatus, ReloadCommandError> {
    let c = gatehouse_engine::server::ServeConfig::load(config)
        .map_err(|e| ReloadCommandError::Config(e.to_string()))?;
    let Some(mut addr) = c.metrics_listen else {
        return Err(ReloadCommandError::Config(format!(
            "{}: metrics_listen is not set; `gatehouse reload` reads the reload result from the operations endpoint",
            config.display()
        )));
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let unreachable =
        |e: String| ReloadCommandError::Unreachable(format!("operations endpoint {addr}: {e}"));
    let status = || -> std::result::Result<ReloadStatus, ReloadCommandError> {
        let r = ops::get(addr, "/readyz", Duration::from_secs(5), 1 << 20)
            .map_err(|e| unreachable(e.to_string()))?;
        ReloadStatus::parse(&r.body).ok_or_else(|| {
            unreachable(format!(
                "/readyz answered {} without reload status",
                r.status
            ))
        })
    };
    let before = status()?;
    // Signal only the server this config names: a pid that is not the one its operations
    // endpoint reports is refused, never signalled.
    if let Some(p) = pid {
        if p != before.pid {
            return Err(ReloadCommandError::Config(format!(
                "process {p} is not the server of {} (its operations endpoint {addr} reports pid {}); nothing was signalled",
                config.display(),
                before.pid
            )));
        }
    }
    let pid = before.pid;
    hangup(pid).map_err(|e| unreachable(format!("sending SIGHUP to process {pid}: {e}")))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = status()?;
        if now.reloads > before.reloads {
            return Ok(now);
        }
        if std::time::Instant::now() > deadline {
            return Err(unreachable(format!(
                "the reload did not complete within {} s",
                timeout.as_secs()
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_specs_and_the_registry_they_write() {
        let g: ScannerSpec = "gate-1=gate:1/12".parse().unwrap();
        assert_eq!(g.unit.as_deref(), Some("1/12"));
        let bare: ScannerSpec = "x".parse().unwrap();
        assert_eq!(bare.role, None);
        for bad in ["g=gate", "p=partner:1", "t=tank", "g=gate:a/b"] {
            assert!(bad.parse::<ScannerSpec>().is_err(), "{bad}");
        }
        let e = "t=tank".parse::<ScannerSpec>().unwrap_err();
        assert!(e.contains("gate, partner, age_check"), "{e}");
        let dir = std::env::temp_dir().join(format!("gatehouse-reg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("scanners.toml");
        let p: ScannerSpec = "p-1=partner".parse().unwrap();
        assert_eq!(
            register_scanners(&path, &[g.clone(), bare, p.clone()]).unwrap(),
            ["gate-1", "p-1"]
        );
        assert!(register_scanners(&path, &[g, p]).unwrap().is_empty());
        let reg = gatehouse_engine::server::files::load_scanners(&path).unwrap();
        assert_eq!(reg.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The publisher writes a Redis feed through the nodes' own transport: what it publishes
    /// is what a node's transport reads, under the same keys.
    #[test]
    fn a_feed_published_to_redis_is_what_a_node_reads() {
        let redis = match gatehouse_engine::dev::redis::RedisServer::start() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("no redis-server ({e}): the Redis publisher is not exercised");
                return;
            }
        };
        let key = generate_key().unwrap();
        let mut trust = TrustList::new();
        trust.insert_revocation_key(RevocationKey {
            name: "publisher test (TEST ONLY)".into(),
            public: key.public().clone(),
        });
        let target = FeedTarget::parse(&redis.url(), Some("pub-test")).unwrap();
        let ids = |n: u8| vec![(RevocationKind::Credential, hex::encode([n; 16]))];
        assert_eq!(feed_publish(&target, &key, &ids(1), &[]).unwrap().epoch, 1);
        let second = feed_publish(&target, &key, &ids(2), &ids(1)).unwrap();
        assert_eq!((second.epoch, second.base), (2, Some(1)));
        let folded = feed_compact(&target, &key).unwrap();
        assert_eq!(folded.revoke, entries(&ids(2)).unwrap());

        let source = FeedSource::parse(&redis.url(), Some("pub-test"));
        let mut node = AnyTransport::open(&FeedConfig::new(source)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            assert_eq!(
                node.head().await.unwrap(),
                FeedHead {
                    epoch: 2,
                    snapshot: 2
                }
            );
            let delta = node.get(Object::Delta(2), 1 << 20).await.unwrap();
            assert_eq!(
                gatehouse_engine::server::feed::open_list(&delta, &trust).unwrap(),
                second
            );
            let snapshot = node.get(Object::Snapshot(2), 1 << 20).await.unwrap();
            assert_eq!(
                gatehouse_engine::server::feed::open_list(&snapshot, &trust).unwrap(),
                folded
            );
        });
        assert!(redis
            .command("EXISTS pub-test:snapshot:1")
            .unwrap()
            .contains('1'));
    }

    #[test]
    fn reload_status_reads_what_readyz_writes() {
        let body = "ready\nreloads 2\npid 77\nreload trust ok 1800000000 1 issuer keys\nreload revocations failed 1800000000 revocations.cbor: (file): No such file\n";
        let s = ReloadStatus::parse(body).unwrap();
        assert_eq!((s.reloads, s.pid), (2, 77));
        assert_eq!(s.files[0], ("trust".into(), true, "1 issuer keys".into()));
        assert!(!s.files[1].1);
        assert!(ReloadStatus::parse("ready\n").is_none());
    }

    #[test]
    fn issue_present_and_revoke_through_files() {
        let dir = std::env::temp_dir().join(format!("gatehouse-tools-{}", std::process::id()));
        let now = 1_800_000_000;
        let _ = std::fs::remove_dir_all(&dir);
        let key = issuer_keygen(&dir, "test-issuer", now, false).unwrap();
        // Nothing is overwritten without force.
        let e = issuer_keygen(&dir, "test-issuer", now, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        let trust =
            gatehouse_engine::server::files::load_trust_list(&dir.join("trust.toml")).unwrap();
        assert_eq!(trust.len(), 1);
        let req = IssueRequest {
            credential_type: "leave_pass".into(),
            category: "enlisted".into(),
            unit: "1/12".into(),
            days: 3,
            birth: Some(20040301),
            sponsor: None,
            entitlements: vec!["base_entry".into()],
        };
        let c = issuer_issue(&key, &dir.join("holder"), &req, now, false).unwrap();
        assert!(issuer_issue(&key, &dir.join("holder"), &req, now, false).is_err());
        let bad_type = IssueRequest {
            credential_type: "tank".into(),
            ..req.clone()
        };
        let e = issuer_issue(&key, &dir.join("t"), &bad_type, now, false).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("--type") && text.contains("leave_pass"),
            "{text}"
        );
        let bad_sponsor = IssueRequest {
            sponsor: Some("abc".into()),
            ..req.clone()
        };
        let e = issuer_issue(&key, &dir.join("s"), &bad_sponsor, now, false).unwrap_err();
        assert!(format!("{e:#}").contains("--sponsor"), "{e:#}");
        assert!(c.leave.is_some());
        let token = wallet_present(&dir.join("holder"), now, None).unwrap();
        let t = gatehouse_protocol::Token::decode(&token).unwrap();
        assert_eq!(t.credential.credential, c);
        let (text, term, svg) = qr_renderings(&token).unwrap();
        assert_eq!(gatehouse_protocol::from_qr_text(&text).unwrap(), token);
        assert!(term.lines().count() > 20 && svg.contains("<svg"));
        let list = issuer_revoke(
            &dir.join("rev.cbor"),
            1,
            None,
            &[(RevocationKind::Credential, hex::encode(c.id))],
            &[],
            None,
            false,
        )
        .unwrap();
        let e = issuer_revoke(
            &dir.join("rev2.cbor"),
            1,
            None,
            &[(RevocationKind::Sponsor, "zz".into())],
            &[],
            None,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--sponsor"), "{e}");
        assert_eq!(
            gatehouse_engine::server::files::load_revocations(&dir.join("rev.cbor")).unwrap(),
            list
        );
        // A feed: publish, revoke more, reinstate, compact.
        let rkey =
            revocation_keygen(&dir, "revocations", Some(&dir.join("trust.toml")), false).unwrap();
        // Run again: refused (the key and the trusted name exist), nothing changed.
        let before = std::fs::read(&rkey).unwrap();
        let e = revocation_keygen(&dir, "revocations", Some(&dir.join("trust.toml")), false)
            .unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read(&rkey).unwrap(), before);
        // Another directory, the same trusted name: refused too.
        let e = revocation_keygen(
            &dir.join("other"),
            "revocations",
            Some(&dir.join("trust.toml")),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("already trusts"), "{e}");
        // With force: replaced, and the trust list holds the new key only.
        let rkey =
            revocation_keygen(&dir, "revocations", Some(&dir.join("trust.toml")), true).unwrap();
        assert_ne!(std::fs::read(&rkey).unwrap(), before);
        let trust =
            gatehouse_engine::server::files::load_trust_list(&dir.join("trust.toml")).unwrap();
        assert_eq!(trust.revocation_keys(), 1);
        let rk = read_key(&rkey).unwrap();
        assert!(trust.revocation_key(&rk.public().key_id()).is_some());
        let feed = FeedTarget(FeedSource::Dir(dir.join("feed")));
        let cid = (RevocationKind::Credential, hex::encode(c.id));
        let sid = (RevocationKind::Sponsor, hex::encode(c.subject));
        assert!(feed_publish(&feed, &rk, &[], std::slice::from_ref(&cid)).is_err());
        let first = feed_publish(&feed, &rk, std::slice::from_ref(&cid), &[]).unwrap();
        assert_eq!((first.epoch, first.base), (1, None));
        let second = feed_publish(
            &feed,
            &rk,
            std::slice::from_ref(&sid),
            std::slice::from_ref(&cid),
        )
        .unwrap();
        assert_eq!((second.epoch, second.base), (2, Some(1)));
        let folded = feed_compact(&feed, &rk).unwrap();
        assert_eq!(folded.epoch, 2);
        assert_eq!(folded.revoke, entries(&[sid]).unwrap());
        assert_eq!(
            feed.open().unwrap().head().unwrap(),
            Some(FeedHead {
                epoch: 2,
                snapshot: 2
            })
        );
        // What a node reads: the compacted snapshot opens with the trust list's key.
        let bytes = std::fs::read(dir.join("feed/snapshot-2.cose")).unwrap();
        assert_eq!(
            gatehouse_engine::server::feed::open_list(&bytes, &trust).unwrap(),
            folded
        );
        assert!(issuer_issue(
            &key,
            &dir.join("x"),
            &IssueRequest {
                unit: "a/b".into(),
                ..req
            },
            now,
            false
        )
        .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
