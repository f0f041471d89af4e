//! The engine under test: a running `gatehouse serve` the SRE names (address, CA, scanner
//! certificates), or one the harness starts itself on loopback with a development PKI and
//! the fleet's trust list, scanners and revocations. Plus the scanner connections to it.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use gatehouse_engine::client::{ClientIdentity, ClientOptions, ScannerClient};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_protocol::Reason;

use crate::fleet::Fleet;
use crate::model::ScannerSet;

/// How to start an engine.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// The `gatehouse` binary.
    pub bin: PathBuf,
    /// Load the fleet's revocations (off: an engine that accepts revoked holders).
    pub revocations: bool,
    /// One-time-use entries (size for the highest rate × the window, with headroom).
    pub replay_capacity: usize,
    /// Offset of the engine's civil date from UTC (age checks).
    pub utc_offset_secs: i32,
    /// Keep the working directory (config, PKI, log) after the run.
    pub keep: bool,
}

/// A `gatehouse serve` started by the harness. Stopped (SIGTERM, then kill) on drop.
#[derive(Debug)]
pub struct SpawnedEngine {
    child: Option<Child>,
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    /// Its working directory: gatehouse.toml, pki/, trust.toml, scanners.toml, revocations.cbor,
    /// engine.log.
    pub dir: PathBuf,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    keep: bool,
}

/// The `gatehouse` binary: `$GATEHOUSE_BIN`, else beside this executable, else the
/// workspace's `target/release/gatehouse`, else `target/debug/gatehouse`.
pub fn find_gatehouse() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GATEHOUSE_BIN") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "GATEHOUSE_BIN={} is not a file", p.display());
        return Ok(p);
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            tried.push(dir.join("gatehouse"));
            // Test executables live in target/<profile>/deps.
            if dir.ends_with("deps") {
                if let Some(up) = dir.parent() {
                    tried.push(up.join("gatehouse"));
                }
            }
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    tried.push(workspace.join("target/release/gatehouse"));
    tried.push(workspace.join("target/debug/gatehouse"));
    for p in &tried {
        if p.is_file() {
            return Ok(p.clone());
        }
    }
    bail!(
        "no gatehouse binary: set GATEHOUSE_BIN, or build it with `cargo build --release -p gatehouse-engine --bin gatehouse` (looked in {})",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").context("binding a loopback UDP port")?;
    Ok(s.local_addr()?.port())
}

impl SpawnedEngine {
    /// Writes a development PKI, the fleet's files and a configuration, starts
    /// `gatehouse serve` on a free loopback port, and waits until a scanner can connect.
    /// Returns the engine and the PKI (whose scanner certificates the harness uses).
    pub async fn start(
        fleet: &Fleet,
        scanners: &ScannerSet,
        opts: &SpawnOptions,
    ) -> Result<(SpawnedEngine, DevPki)> {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-loadtest-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = DevPki::generate(&scanners.ids).context("development PKI")?;
        pki.write_to(&dir.join("pki"))?;
        std::fs::write(dir.join("trust.toml"), fleet.trust_list().to_toml())?;
        std::fs::write(dir.join("scanners.toml"), fleet.scanners().to_toml())?;
        std::fs::write(dir.join("revocations.cbor"), fleet.revocations.encode())?;
        let port = free_udp_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let revocations = if opts.revocations {
            "revocations = \"revocations.cbor\"\n"
        } else {
            "# revocations deliberately not loaded (--no-revocations)\n"
        };
        let config = format!(
            "# Written by gatehouse-loadtest for one run (TEST PKI ONLY).\n\
             listen = \"{addr}\"\n\n\
             [tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\nclient_ca = \"pki/ca.pem\"\n\n\
             [files]\ntrust = \"trust.toml\"\nscanners = \"scanners.toml\"\n{revocations}\n\
             [engine]\nreplay_capacity = {}\nutc_offset_secs = {}\n",
            opts.replay_capacity, opts.utc_offset_secs
        );
        let config_path = dir.join("gatehouse.toml");
        std::fs::write(&config_path, config)?;
        let log = dir.join("engine.log");
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(&opts.bin)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", opts.bin.display()))?;
        let mut engine = SpawnedEngine {
            child: Some(child),
            addr,
            dir,
            log,
            keep: opts.keep,
        };
        // Ready when a scanner completes a handshake.
        let (id, issued) = pki.scanners.first().context("no scanners")?;
        let identity = ClientIdentity {
            roots: pki.ca.chain(),
            chain: issued.chain(),
            key: issued.key(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let quick = ClientOptions {
            connect_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        };
        loop {
            if let Some(status) = engine
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "gatehouse serve exited ({status}) before it was ready:\n{}",
                    engine.log_tail()
                );
            }
            match ScannerClient::connect_with(addr, "localhost", identity.clone(), quick).await {
                Ok(c) => {
                    c.close().await;
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "gatehouse serve not ready after 60 s (scanner {id}: {e}):\n{}",
                        engine.log_tail()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        // A node on the memory store denies tokens signed before the whole second after it
        // built its engine (`node_restarted`, SPEC §8.6): it cannot know which of them the
        // process it replaces accepted. The engine is built before it binds, so the fence is
        // at most the second after this one; the first token is signed once it has passed.
        tokio::time::sleep(until_next_second(SystemTime::now())).await;
        Ok((engine, pki))
    }

    /// The engine process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU seconds the engine has used so far (Linux).
    pub fn cpu_secs(&self) -> Option<f64> {
        self.pid()
            .and_then(|p| crate::cpu::process_cpu_secs(&p.to_string()))
    }

    /// The last lines of the engine's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the engine: SIGTERM (a graceful drain), then a kill after 15 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let _ = child.wait();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How long from `now` until the next whole Unix second begins.
pub fn until_next_second(now: SystemTime) -> Duration {
    let frac = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_nanos(1_000_000_000 - u64::from(frac))
}

impl Drop for SpawnedEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Scanner identities for an engine the SRE runs: `ca` and, per scanner id,
/// `<cert_dir>/scanners/<id>.pem` and `.key` (the `gatehouse dev-pki` layout) or
/// `<cert_dir>/<id>.pem` and `.key`.
pub fn identities_from_dir(
    ca: &Path,
    cert_dir: &Path,
    scanners: &ScannerSet,
) -> Result<Vec<ClientIdentity>> {
    scanners
        .ids
        .iter()
        .map(|id| {
            let nested = cert_dir.join("scanners");
            let base = if nested.join(format!("{id}.pem")).is_file() {
                nested
            } else {
                cert_dir.to_path_buf()
            };
            ClientIdentity::from_files(
                ca,
                &base.join(format!("{id}.pem")),
                &base.join(format!("{id}.key")),
            )
            .with_context(|| format!("certificate of scanner {id} under {}", cert_dir.display()))
        })
        .collect()
}

/// Scanner identities from a development PKI (a spawned engine).
pub fn identities_from_pki(pki: &DevPki, scanners: &ScannerSet) -> Result<Vec<ClientIdentity>> {
    scanners
        .ids
        .iter()
        .map(|id| {
            let issued = pki
                .scanner(id)
                .with_context(|| format!("no certificate for scanner {id}"))?;
            Ok(ClientIdentity {
                roots: pki.ca.chain(),
                chain: issued.chain(),
                key: issued.key(),
            })
        })
        .collect()
}

/// Refuses addresses that are not one engine: unspecified, multicast or broadcast.
pub fn check_target(addr: SocketAddr) -> Result<()> {
    let ip = addr.ip();
    ensure!(
        !ip.is_unspecified() && !ip.is_multicast(),
        "--target {addr}: name one engine's address (not unspecified or multicast)"
    );
    if let std::net::IpAddr::V4(v4) = ip {
        ensure!(!v4.is_broadcast(), "--target {addr}: broadcast address");
    }
    Ok(())
}

/// One or more QUIC connections per scanner, each authenticated as that scanner.
#[derive(Debug)]
pub struct Connections {
    by_scanner: Vec<Vec<ScannerClient>>,
    next: Vec<AtomicUsize>,
}

impl Connections {
    /// Connects `per_scanner` times as each identity (in scanner index order).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        identities: Vec<ClientIdentity>,
        per_scanner: usize,
        options: ClientOptions,
    ) -> Result<Connections> {
        let mut by_scanner = Vec::with_capacity(identities.len());
        for identity in identities {
            let mut conns = Vec::with_capacity(per_scanner);
            for _ in 0..per_scanner.max(1) {
                conns.push(
                    ScannerClient::connect_with(addr, server_name, identity.clone(), options)
                        .await
                        .with_context(|| format!("connecting to {addr}"))?,
                );
            }
            by_scanner.push(conns);
        }
        let next = by_scanner.iter().map(|_| AtomicUsize::new(0)).collect();
        Ok(Connections { by_scanner, next })
    }

    /// A connection of scanner `i` (round robin).
    pub fn get(&self, i: usize) -> Option<&ScannerClient> {
        let conns = self.by_scanner.get(i)?;
        let n = self.next.get(i)?.fetch_add(1, Ordering::Relaxed);
        conns.get(n % conns.len().max(1))
    }

    /// Number of connections.
    pub fn count(&self) -> usize {
        self.by_scanner.iter().map(Vec::len).sum()
    }

    /// Closes every connection.
    pub async fn close(&self) {
        for c in self.by_scanner.iter().flatten() {
            c.close().await;
        }
    }
}

/// Sends one token as scanner `i`: the verdict's reason, or why there is none.
pub async fn verify(conns: &Connections, scanner: usize, token: &[u8]) -> Result<Reason> {
    let c = conns
        .get(scanner)
        .context("no connection for this scanner")?;
    Ok(c.verify(token, None).await?.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_ends_at_the_next_whole_second() {
        let at = |s: u64, ns: u32| UNIX_EPOCH + Duration::new(s, ns);
        assert_eq!(until_next_second(at(100, 0)), Duration::from_secs(1));
        assert_eq!(
            until_next_second(at(100, 250_000_000)),
            Duration::from_millis(750)
        );
        let end = at(100, 999_999_999) + until_next_second(at(100, 999_999_999));
        assert_eq!(end, at(101, 0));
    }
}
