//! The synthetic fleet the harness presents: holders (device key, issued credential, status),
//! the revocations that apply to them, and the standard scanners. Generated once with
//! [`Population::generate`] on every core, then cached on disk in a compact binary file so
//! the next run starts in seconds.
//!
//! A loaded fleet keeps device keys as 32-byte scalars and credentials as their issued bytes
//! (one buffer, offsets into it): building a signing key costs a scalar multiplication, so it
//! is done when a token is signed, not for a million holders at load time.
//!
//! # Cache file (version 1, little-endian)
//!
//! ```text
//! "GHLTPOP\0"  version:u32  seed:u64  holders:u64  now:u64  revoked_per_mille:u32  expired_per_mille:u32
//! holders × { device_scalar:[u8;32]  status:u8  issued_len:u16  issued:[u8; issued_len] }
//! revocations_len:u32  revocations:[u8] (RevocationList::encode)
//! "GHLTEND\0"
//! ```
//!
//! TEST KEYS ONLY: every key is derived from the seed (see `gatehouse_engine::dev::population`).

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use gatehouse_engine::dev::population::{
    issuer_key, standard_scanners, trust_list, Population, PopulationSpec, Status,
};
use gatehouse_engine::dev::progress::{Progress, ProgressMode};
use gatehouse_engine::{ScannerRegistry, TrustList};
use gatehouse_protocol::{Credential, RevocationKind, RevocationList, SignedCredential};
use rayon::prelude::*;

const MAGIC: &[u8; 8] = b"GHLTPOP\0";
const FOOTER: &[u8; 8] = b"GHLTEND\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8 + 4 + 4;

/// Where populations are cached when neither `--cache-dir` nor `GATEHOUSE_LOADTEST_CACHE`
/// says: the user's cache directory (`$XDG_CACHE_HOME`, else `$HOME/.cache`), under
/// `gatehouse-loadtest/`; without either, `target/gatehouse-loadtest/` below the working
/// directory. Never a path compiled in from the machine that built the harness.
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(|k| std::env::var_os(k))
}

/// [`default_cache_dir`] over any environment lookup (the tests pass their own).
pub fn cache_dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    // An empty or relative XDG_CACHE_HOME is invalid by the XDG spec and is ignored.
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(dir) = env("XDG_CACHE_HOME").and_then(absolute) {
        return dir.join("gatehouse-loadtest");
    }
    if let Some(home) = env("HOME").and_then(absolute) {
        return home.join(".cache").join("gatehouse-loadtest");
    }
    PathBuf::from("target").join("gatehouse-loadtest")
}

/// The parameters that make a fleet: a cached file is reused only when they all match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetSpec {
    /// Number of holders.
    pub holders: usize,
    /// Seed of every key and id.
    pub seed: u64,
    /// Share revoked (by credential, subject or sponsor), per mille.
    pub revoked_per_mille: u32,
    /// Share expired, per mille.
    pub expired_per_mille: u32,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            holders: 1_000_000,
            seed: 1,
            revoked_per_mille: 30,
            expired_per_mille: 20,
        }
    }
}

/// Where a fleet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Read from the cache file.
    Cache,
    /// Generated in this run (and written to the cache).
    Generated,
}

/// A synthetic fleet of holders, ready to present tokens.
pub struct Fleet {
    /// What it was made from.
    pub spec: FleetSpec,
    /// The "now" validity dates were set around (Unix seconds).
    pub now: u64,
    keys: Vec<[u8; 32]>,
    status: Vec<Status>,
    issued: Vec<u8>,
    offsets: Vec<usize>,
    credentials: Vec<Credential>,
    revoked: Vec<bool>,
    /// The revocation snapshot the engine must load.
    pub revocations: RevocationList,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("spec", &self.spec)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Generates a fleet on every core, showing progress on stderr as `progress` says.
    pub fn generate(spec: FleetSpec, now: u64, progress: ProgressMode) -> Result<Fleet> {
        ensure!(spec.holders >= 2, "a fleet needs at least 2 holders");
        ensure!(
            spec.holders <= 20_000_000,
            "at most 20,000,000 holders (the cache addresses holders with u32)"
        );
        let bar = Progress::new(
            progress,
            "issuing credentials",
            spec.holders as u64,
            "holders",
        );
        let pop = Population::generate(
            &PopulationSpec {
                holders: spec.holders,
                seed: spec.seed,
                now,
                revoked_per_mille: spec.revoked_per_mille,
                expired_per_mille: spec.expired_per_mille,
            },
            &|n| bar.inc(n as u64),
        );
        bar.finish();
        let pop = pop.map_err(|e| anyhow::anyhow!("issuing credentials: {e}"))?;
        let mut issued = Vec::with_capacity(pop.holders.iter().map(|h| h.issued.len()).sum());
        let mut offsets = Vec::with_capacity(pop.holders.len() + 1);
        offsets.push(0);
        for h in &pop.holders {
            issued.extend_from_slice(&h.issued);
            offsets.push(issued.len());
        }
        let keys = pop.holders.iter().map(|h| h.device.to_bytes()).collect();
        let credentials: Vec<Credential> =
            pop.holders.iter().map(|h| h.credential.clone()).collect();
        let revoked = effective_revoked(&credentials, &pop.revocations);
        Ok(Fleet {
            spec,
            now,
            keys,
            status: pop.status,
            issued,
            offsets,
            credentials,
            revoked,
            revocations: pop.revocations,
        })
    }

    /// Number of holders.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the fleet has no holders.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Holder `i`'s device key scalar.
    pub fn device_key(&self, i: usize) -> &[u8; 32] {
        &self.keys[i]
    }

    /// Holder `i`'s credential as issued (COSE_Sign1 bytes).
    pub fn issued(&self, i: usize) -> &[u8] {
        &self.issued[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Holder `i`'s credential fields.
    pub fn credential(&self, i: usize) -> &Credential {
        &self.credentials[i]
    }

    /// What the population meant holder `i` to be.
    pub fn status(&self, i: usize) -> Status {
        self.status[i]
    }

    /// Whether holder `i` is revoked under the fleet's revocations (credential, subject or
    /// sponsor).
    pub fn is_revoked(&self, i: usize) -> bool {
        self.revoked[i]
    }

    /// Holders per status: (valid, revoked, expired).
    pub fn census(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for s in &self.status {
            match s {
                Status::Valid => c.0 += 1,
                Status::Revoked => c.1 += 1,
                Status::Expired => c.2 += 1,
            }
        }
        c
    }

    /// The trust list naming the fleet's issuer.
    pub fn trust_list(&self) -> TrustList {
        trust_list(&issuer_key(self.spec.seed))
    }

    /// The scanners the fleet is presented to (gates and welfare gates per division,
    /// partners, age-check counters).
    pub fn scanners(&self) -> ScannerRegistry {
        standard_scanners()
    }

    /// Writes the cache file (atomically: a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let rev = self.revocations.encode();
        let mut out =
            Vec::with_capacity(HEADER_LEN + self.issued.len() + self.len() * 35 + rev.len() + 12);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.spec.seed.to_le_bytes());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.now.to_le_bytes());
        out.extend_from_slice(&self.spec.revoked_per_mille.to_le_bytes());
        out.extend_from_slice(&self.spec.expired_per_mille.to_le_bytes());
        for i in 0..self.len() {
            let issued = self.issued(i);
            let len = u16::try_from(issued.len()).context("credential longer than 64 KiB")?;
            out.extend_from_slice(&self.keys[i]);
            out.push(status_code(self.status[i]));
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(issued);
        }
        let rev_len = u32::try_from(rev.len()).context("revocation list too long")?;
        out.extend_from_slice(&rev_len.to_le_bytes());
        out.extend_from_slice(&rev);
        out.extend_from_slice(FOOTER);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&out)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ok();
        fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }

    /// Reads a cache file; `Ok(None)` when it was made with other parameters (or by another
    /// version of this format).
    pub fn load(path: &Path, expect: &FleetSpec) -> Result<Option<Fleet>> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        if r.take(8)? != MAGIC || r.u32()? != VERSION {
            return Ok(None);
        }
        let seed = r.u64()?;
        let holders = usize::try_from(r.u64()?).context("holder count")?;
        let now = r.u64()?;
        let spec = FleetSpec {
            holders,
            seed,
            revoked_per_mille: r.u32()?,
            expired_per_mille: r.u32()?,
        };
        if spec != *expect {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(holders);
        let mut status = Vec::with_capacity(holders);
        let mut ranges = Vec::with_capacity(holders);
        for _ in 0..holders {
            let mut key = [0u8; 32];
            key.copy_from_slice(r.take(32)?);
            keys.push(key);
            status.push(match r.take(1)?[0] {
                0 => Status::Valid,
                1 => Status::Revoked,
                2 => Status::Expired,
                s => bail!("{}: unknown holder status {s}", path.display()),
            });
            let len = usize::from(r.u16()?);
            let start = r.at;
            r.take(len)?;
            ranges.push(start..start + len);
        }
        let rev_len = r.u32()? as usize;
        let revocations = RevocationList::decode(r.take(rev_len)?)
            .map_err(|e| anyhow::anyhow!("{}: revocation list: {e}", path.display()))?;
        ensure!(
            r.take(8)? == FOOTER && r.at == bytes.len(),
            "{}: truncated or trailing data",
            path.display()
        );
        let credentials: Vec<Credential> = ranges
            .par_iter()
            .map(|range| SignedCredential::decode(&bytes[range.clone()]).map(|s| s.credential))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{}: credential: {e}", path.display()))?;
        let mut issued = Vec::with_capacity(ranges.iter().map(|r| r.len()).sum());
        let mut offsets = Vec::with_capacity(holders + 1);
        offsets.push(0);
        for range in ranges {
            issued.extend_from_slice(&bytes[range]);
            offsets.push(issued.len());
        }
        let revoked = effective_revoked(&credentials, &revocations);
        Ok(Some(Fleet {
            spec,
            now,
            keys,
            status,
            issued,
            offsets,
            credentials,
            revoked,
            revocations,
        }))
    }

    /// The cache file for `spec` under `dir`.
    pub fn cache_path(dir: &Path, spec: &FleetSpec) -> PathBuf {
        dir.join(format!(
            "population-v{VERSION}-h{}-s{}-r{}-e{}.bin",
            spec.holders, spec.seed, spec.revoked_per_mille, spec.expired_per_mille
        ))
    }

    /// The cached fleet for `spec` if there is one no older than `max_age`, else a new one
    /// (written to the cache). Returns the fleet, where it came from, and the seconds taken.
    pub fn load_or_generate(
        dir: &Path,
        spec: FleetSpec,
        now: u64,
        max_age: Duration,
        progress: ProgressMode,
    ) -> Result<(Fleet, Origin, f64)> {
        let t0 = Instant::now();
        let path = Self::cache_path(dir, &spec);
        if path.exists() {
            match Self::load(&path, &spec) {
                Ok(Some(f)) if f.now <= now && now - f.now <= max_age.as_secs() => {
                    return Ok((f, Origin::Cache, t0.elapsed().as_secs_f64()));
                }
                Ok(Some(f)) => {
                    if progress.is_on() {
                        eprintln!(
                            "  cached population {} is {} h old (limit {} h): regenerating",
                            path.display(),
                            now.saturating_sub(f.now) / 3600,
                            max_age.as_secs() / 3600
                        );
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    if progress.is_on() {
                        eprintln!("  cached population unusable ({e:#}): regenerating");
                    }
                }
            }
        }
        if progress.is_on() {
            eprintln!(
                "  generating {} holders (seed {}) on {} threads …",
                spec.holders,
                spec.seed,
                rayon::current_num_threads()
            );
        }
        let fleet = Self::generate(spec, now, progress)?;
        let secs = t0.elapsed().as_secs_f64();
        fleet.save(&path)?;
        if progress.is_on() {
            eprintln!(
                "  generated in {secs:.1} s, cached at {} ({} MB)",
                path.display(),
                fs::metadata(&path).map(|m| m.len() >> 20).unwrap_or(0)
            );
        }
        Ok((fleet, Origin::Generated, secs))
    }
}

fn status_code(s: Status) -> u8 {
    match s {
        Status::Valid => 0,
        Status::Revoked => 1,
        Status::Expired => 2,
    }
}

/// Revoking a sponsor revokes every family member naming it, and revoking a subject every
/// credential of it (the same rule as `population::effective_revoked`, over credentials).
pub fn effective_revoked(credentials: &[Credential], list: &RevocationList) -> Vec<bool> {
    let set: HashSet<(RevocationKind, [u8; 16])> =
        list.revoke.iter().map(|e| (e.kind, e.id)).collect();
    credentials
        .par_iter()
        .map(|c| {
            set.contains(&(RevocationKind::Credential, c.id))
                || set.contains(&(RevocationKind::Subject, c.subject))
                || c.sponsor
                    .is_some_and(|s| set.contains(&(RevocationKind::Sponsor, s)))
        })
        .collect()
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).context("length overflow")?;
        ensure!(end <= self.bytes.len(), "cache file truncated");
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_default_cache_dir_comes_from_the_environment_not_the_build() {
        use std::ffi::OsString;
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            cache_dir_from(env(&[("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")])),
            Path::new("/xdg/gatehouse-loadtest")
        );
        assert_eq!(
            cache_dir_from(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/home/u")])),
            Path::new("/home/u/.cache/gatehouse-loadtest")
        );
        assert_eq!(
            cache_dir_from(env(&[])),
            Path::new("target/gatehouse-loadtest")
        );
        // Nothing of the machine the harness was built on is in the default.
        let built_in = env!("CARGO_MANIFEST_DIR");
        assert!(!cache_dir_from(env(&[])).starts_with(built_in));
        assert!(!default_cache_dir().starts_with(built_in));
    }

    #[test]
    fn cache_round_trips_and_refuses_other_parameters() {
        let spec = FleetSpec {
            holders: 200,
            seed: 7,
            revoked_per_mille: 100,
            expired_per_mille: 50,
        };
        let fleet = Fleet::generate(spec, 1_800_000_000, ProgressMode::Off).unwrap();
        let dir = std::env::temp_dir().join(format!("gh-fleet-{}", std::process::id()));
        let path = Fleet::cache_path(&dir, &spec);
        fleet.save(&path).unwrap();
        let back = Fleet::load(&path, &spec).unwrap().unwrap();
        assert_eq!(back.len(), 200);
        assert_eq!(back.now, fleet.now);
        for i in 0..200 {
            assert_eq!(back.device_key(i), fleet.device_key(i));
            assert_eq!(back.issued(i), fleet.issued(i));
            assert_eq!(back.credential(i), fleet.credential(i));
            assert_eq!(back.status(i), fleet.status(i));
            assert_eq!(back.is_revoked(i), fleet.is_revoked(i));
        }
        assert!(fleet.census().1 > 0, "some holders are revoked");
        let other = FleetSpec { seed: 8, ..spec };
        assert!(Fleet::load(&path, &other).unwrap().is_none());
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(Fleet::load(&path, &spec).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
