//! The engines under test: a running `gatehouse serve` the SRE names (address, CA, scanner
//! certificates), or nodes the harness starts itself on loopback with a development PKI and
//! the fleet's trust list, scanners and revocations — one, or several sharing their one-time
//! use on a loopback Redis it starts too. Plus the scanner connections to them.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use gatehouse_engine::client::{ClientIdentity, ClientOptions, ScannerClient};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::redis::RedisServer;
use gatehouse_protocol::Reason;

use crate::fleet::Fleet;
use crate::model::{ScannerSet, Shard};

/// The most nodes the harness starts (each is a process with its own cores to share).
pub const MAX_NODES: usize = 16;

/// The file beside `trust.toml` that a spawned node's `files.mdoc_iaca` names (the mdoc
/// pool's test IACA, `--mdoc-share`).
pub const MDOC_IACA_FILE: &str = "mdoc-iaca.pem";

/// Where spawned nodes record one-time use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// Each node's own table (one node only: several would not agree).
    #[default]
    Memory,
    /// A loopback Redis the harness starts, shared by every node.
    Redis,
}

impl StoreKind {
    /// The config's name for it.
    pub fn label(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis => "redis",
        }
    }
}

/// How to start the engines.
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
    /// Keep the working directory (config, PKI, logs) after the run.
    pub keep: bool,
    /// Engine nodes.
    pub nodes: usize,
    /// Where they record one-time use.
    pub store: StoreKind,
    /// Per node, the cores it runs on (`taskset -c` lists: "0", "2-3"); empty: not pinned.
    pub pins: Vec<String>,
    /// The cores the Redis server runs on (`taskset -p -c`); `None`: wherever the harness may.
    pub redis_pin: Option<String>,
    /// The nodes' Redis timeout (`[replay] timeout_ms`): slower marks are `unavailable`.
    pub redis_timeout_ms: u64,
    /// Give each node its own Redis: a fleet that does NOT agree, to prove that cross-node
    /// replays then fail the run.
    pub split_store: bool,
    /// The test IACA (PEM) the nodes trust for mdoc presentations: written as
    /// `mdoc-iaca.pem` beside `trust.toml` and named by `files.mdoc_iaca` (`None`: no mdoc
    /// roots, every mdoc is `unknown_issuer`).
    pub mdoc_iaca: Option<String>,
}

impl SpawnOptions {
    /// Refuses combinations that cannot make a fleet that agrees (or a measurable one).
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (1..=MAX_NODES).contains(&self.nodes),
            "--nodes must be 1 to {MAX_NODES}"
        );
        ensure!(
            self.nodes == 1 || self.store == StoreKind::Redis,
            "--nodes {} with --store memory: each node would keep its own one-time-use table, \
             so a token used on one node would be accepted again on another; use --store redis",
            self.nodes
        );
        ensure!(
            self.pins.is_empty() || self.pins.len() == self.nodes,
            "--pin names {} core lists for {} nodes: give one per node (e.g. --pin 0,1)",
            self.pins.len(),
            self.nodes
        );
        for p in self.pins.iter().chain(&self.redis_pin) {
            check_cores(p)?;
        }
        ensure!(
            !self.split_store || (self.store == StoreKind::Redis && self.nodes > 1),
            "--split-store needs --store redis and --nodes 2 or more"
        );
        ensure!(
            self.redis_timeout_ms > 0,
            "--redis-timeout-ms must be positive"
        );
        Ok(())
    }
}

/// Checks one `taskset -c` entry: a core ("3") or a range ("2-3").
pub fn check_cores(s: &str) -> Result<()> {
    let ok = |n: &str| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit());
    let valid = match s.split_once('-') {
        Some((a, b)) => ok(a) && ok(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok(),
        None => ok(s),
    };
    ensure!(
        valid,
        "{s:?} is not a core list entry: a core number (\"1\") or a range (\"0-1\")"
    );
    Ok(())
}

/// One `gatehouse serve` started by the harness. Stopped (SIGTERM, then kill) on drop.
#[derive(Debug)]
pub struct SpawnedEngine {
    child: Option<Child>,
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    /// Its operations endpoint (`/metrics`, `/readyz`; loopback).
    pub ops: SocketAddr,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// The cores it is pinned to, if any.
    pub pin: Option<String>,
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

fn free_tcp_port() -> Result<u16> {
    let s = std::net::TcpListener::bind("127.0.0.1:0").context("binding a loopback TCP port")?;
    Ok(s.local_addr()?.port())
}

/// The `revocations …` line of a node's `/readyz` (its revocation epoch, entries and state
/// digest), or why it could not be read.
pub fn revocation_state(ops: SocketAddr) -> String {
    match gatehouse_engine::client::ops::get(ops, "/readyz", Duration::from_secs(2), 64 * 1024) {
        Ok(r) => r
            .body
            .lines()
            .find_map(|l| l.strip_prefix("revocations "))
            .map_or_else(|| "(no revocations line)".to_string(), str::to_string),
        Err(e) => format!("(unreadable: {e})"),
    }
}

fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").context("binding a loopback UDP port")?;
    Ok(s.local_addr()?.port())
}

/// The nodes the harness started, the Redis servers they share, and their working directory
/// (gatehouse-N.toml, engine-N.log, pki/, trust.toml, scanners.toml, revocations.cbor, and
/// with an mdoc share mdoc-iaca.pem).
/// Everything is stopped, engines first, when it is dropped.
#[derive(Debug)]
pub struct SpawnedSite {
    /// The nodes, in index order.
    pub engines: Vec<SpawnedEngine>,
    redis: Vec<RedisServer>,
    /// The Redis servers' own process ids (for their CPU time).
    redis_pids: Vec<String>,
    /// The working directory.
    pub dir: PathBuf,
    /// Where one-time use is recorded ("memory", "redis redis://127.0.0.1:PORT", …).
    pub store: String,
    keep: bool,
}

impl SpawnedSite {
    /// Writes a development PKI, the fleet's files and one configuration per node, starts
    /// Redis when the store is Redis, starts the nodes on free loopback ports, and waits until
    /// a scanner can connect to each. Returns the site and the PKI (whose scanner certificates
    /// the harness uses). On any error, what was started is stopped.
    pub async fn start(
        fleet: &Fleet,
        scanners: &ScannerSet,
        opts: &SpawnOptions,
    ) -> Result<(SpawnedSite, DevPki)> {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        opts.validate()?;
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-loadtest-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut site = SpawnedSite {
            engines: Vec::with_capacity(opts.nodes),
            redis: Vec::new(),
            redis_pids: Vec::new(),
            dir,
            store: opts.store.label().to_string(),
            keep: opts.keep,
        };
        let dir = site.dir.clone();
        let pki = DevPki::generate(&scanners.ids).context("development PKI")?;
        pki.write_to(&dir.join("pki"))?;
        std::fs::write(dir.join("trust.toml"), fleet.trust_list().to_toml())?;
        std::fs::write(dir.join("scanners.toml"), fleet.scanners().to_toml())?;
        std::fs::write(dir.join("revocations.cbor"), fleet.revocations.encode())?;
        if let Some(pem) = &opts.mdoc_iaca {
            std::fs::write(dir.join(MDOC_IACA_FILE), pem)?;
        }
        if opts.store == StoreKind::Redis {
            let servers = if opts.split_store { opts.nodes } else { 1 };
            for _ in 0..servers {
                let redis = tokio::task::spawn_blocking(RedisServer::start)
                    .await?
                    .context("starting a loopback Redis (scripts/test installs redis-server)")?;
                let pid = redis_pid(&redis)?;
                if let Some(cores) = &opts.redis_pin {
                    pin(&pid, cores)?;
                }
                site.redis_pids.push(pid);
                site.redis.push(redis);
            }
            let urls: Vec<String> = site.redis.iter().map(RedisServer::url).collect();
            site.store = if opts.split_store {
                format!("redis, one server per node (split: {})", urls.join(", "))
            } else {
                format!("redis {}", urls.join(", "))
            };
        }
        for i in 0..opts.nodes {
            let redis = site.redis.get(i % site.redis.len().max(1));
            let engine = SpawnedEngine::launch(&dir, i, redis, opts)?;
            site.engines.push(engine);
        }
        // Ready when a scanner completes a handshake with each node.
        let (id, issued) = pki.scanners.first().context("no scanners")?;
        let identity = ClientIdentity {
            roots: pki.ca.chain(),
            chain: issued.chain(),
            key: issued.key(),
        };
        for engine in &mut site.engines {
            engine.wait_ready(id, &identity).await?;
        }
        // A node on the memory store denies tokens signed up to the moment it built its
        // engine plus the clock skew (`node_restarted`, SPEC §6): it cannot know which of them
        // the process it replaces accepted. A new Redis store's first life fences the same
        // way. A node builds its engine before it answers a handshake, so every node's fence
        // is at most the moment the last one answered, plus the skew: the first token is
        // signed once that has passed. (Counting from the launch instead lost the first
        // seconds of a run whenever a loaded machine took seconds to start a node.)
        let ready = SystemTime::now();
        tokio::time::sleep(until_past_fence(ready, SystemTime::now())).await;
        Ok((site, pki))
    }

    /// The nodes' addresses, in index order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.engines.iter().map(|e| e.addr).collect()
    }

    /// Each node's revocation state (the `revocations` line of its `/readyz`), in index order.
    pub fn revocation_states(&self) -> Vec<String> {
        self.engines
            .iter()
            .map(|e| revocation_state(e.ops))
            .collect()
    }

    /// CPU seconds each node has used so far (Linux), in index order.
    pub fn cpu_secs(&self) -> Vec<Option<f64>> {
        self.engines.iter().map(SpawnedEngine::cpu_secs).collect()
    }

    /// Context switches of the nodes' threads so far, summed over the nodes (Linux; `None`
    /// when one of them cannot be read).
    pub fn context_switches(&self) -> Option<u64> {
        self.engines
            .iter()
            .map(SpawnedEngine::context_switches)
            .sum()
    }

    /// CPU seconds the Redis servers have used so far (Linux; `None` without Redis).
    pub fn redis_cpu_secs(&self) -> Option<f64> {
        if self.redis_pids.is_empty() {
            return None;
        }
        self.redis_pids
            .iter()
            .map(|p| crate::cpu::process_cpu_secs(p))
            .sum()
    }

    /// The nodes' pins, in index order ("" where not pinned).
    pub fn pins(&self) -> Vec<String> {
        self.engines
            .iter()
            .map(|e| e.pin.clone().unwrap_or_default())
            .collect()
    }

    /// Stops the nodes (gracefully, all at once), then Redis, then removes the directory
    /// unless it is kept.
    pub fn stop(&mut self) {
        for e in &mut self.engines {
            e.terminate();
        }
        for e in &mut self.engines {
            e.stop();
        }
        self.redis.clear();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for SpawnedSite {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running Redis server's process id, as it reports it (it runs under a watchdog shell, so
/// it is not our child).
fn redis_pid(redis: &RedisServer) -> Result<String> {
    let info = redis
        .command("INFO server")
        .context("asking Redis its pid")?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .context("Redis did not report its process_id")
}

/// Moves a running process (all its threads) onto `cores`.
fn pin(pid: &str, cores: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cores, pid])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux) to pin Redis")?;
    ensure!(status.success(), "taskset -p -c {cores} {pid} failed");
    Ok(())
}

impl SpawnedEngine {
    /// Writes node `i`'s configuration and starts it (under `taskset -c` when pinned).
    fn launch(
        dir: &Path,
        i: usize,
        redis: Option<&RedisServer>,
        opts: &SpawnOptions,
    ) -> Result<SpawnedEngine> {
        let port = free_udp_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let ops: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
        let config = node_config(addr, ops, redis.map(RedisServer::url).as_deref(), opts);
        let config_path = dir.join(format!("gatehouse-{i}.toml"));
        std::fs::write(&config_path, config)?;
        let log = dir.join(format!("engine-{i}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let pin = opts.pins.get(i).cloned();
        // taskset execs the engine, so the child's pid (signals, CPU time) is the engine's.
        let mut cmd = match &pin {
            Some(cores) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cores]).arg(&opts.bin);
                c
            }
            None => Command::new(&opts.bin),
        };
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| match &pin {
                Some(_) => format!("starting taskset (util-linux) for {}", opts.bin.display()),
                None => format!("starting {}", opts.bin.display()),
            })?;
        Ok(SpawnedEngine {
            child: Some(child),
            addr,
            ops,
            config: config_path,
            log,
            pin,
        })
    }

    async fn wait_ready(&mut self, id: &str, identity: &ClientIdentity) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let quick = ClientOptions {
            connect_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        };
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "gatehouse serve ({}) exited ({status}) before it was ready:\n{}",
                    self.addr,
                    self.log_tail()
                );
            }
            match ScannerClient::connect_with(self.addr, "localhost", identity.clone(), quick).await
            {
                Ok(c) => {
                    c.close().await;
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "gatehouse serve ({}) not ready after 60 s (scanner {id}: {e}):\n{}",
                        self.addr,
                        self.log_tail()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
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

    /// Context switches of the engine's threads so far (Linux).
    pub fn context_switches(&self) -> Option<u64> {
        self.pid()
            .and_then(|p| crate::cpu::process_context_switches(&p.to_string()))
    }

    /// The last lines of the engine's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Asks the engine to drain (SIGTERM) without waiting.
    fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Stops the engine: SIGTERM (a graceful drain), then a kill after 15 s.
    pub fn stop(&mut self) {
        if self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        {
            self.terminate();
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
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
    }
}

impl Drop for SpawnedEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One node's configuration: loopback, the site's PKI and files, and its `[replay]` store.
fn node_config(
    addr: SocketAddr,
    ops: SocketAddr,
    redis_url: Option<&str>,
    opts: &SpawnOptions,
) -> String {
    let revocations = if opts.revocations {
        "revocations = \"revocations.cbor\"\n"
    } else {
        "# revocations deliberately not loaded (--no-revocations)\n"
    };
    let mdoc = if opts.mdoc_iaca.is_some() {
        format!("mdoc_iaca = \"{}\"\n", MDOC_IACA_FILE)
    } else {
        String::new()
    };
    let replay = match redis_url {
        // The store is the harness's own loopback server: no TLS, no AUTH.
        Some(url) => format!(
            "\n[replay]\nstore = \"redis\"\nurls = [\"{url}\"]\ntimeout_ms = {}\n",
            opts.redis_timeout_ms
        ),
        None => "\n[replay]\nstore = \"memory\"\n".to_string(),
    };
    format!(
        "# Written by gatehouse-loadtest for one run (TEST PKI ONLY).\n\
         listen = \"{addr}\"\nmetrics_listen = \"{ops}\"\n\n\
         [tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\nclient_ca = \"pki/ca.pem\"\n\n\
         [files]\ntrust = \"trust.toml\"\nscanners = \"scanners.toml\"\n{revocations}{mdoc}\n\
         [engine]\nreplay_capacity = {}\nutc_offset_secs = {}\n{replay}",
        opts.replay_capacity, opts.utc_offset_secs
    )
}

/// How long from `now` until the next whole Unix second begins.
/// How long from `now` until tokens signed then pass the fence of nodes launched at
/// `launched`: the whole second after `launched` + the engine's clock skew.
pub fn until_past_fence(launched: SystemTime, now: SystemTime) -> Duration {
    let skew = gatehouse_engine::EngineConfig::default().clock_skew_secs;
    let secs = launched
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let fence = UNIX_EPOCH + Duration::from_secs(secs + skew + 1);
    fence.duration_since(now).unwrap_or(Duration::ZERO)
}

/// How long from `now` to the next whole second.
pub fn until_next_second(now: SystemTime) -> Duration {
    let frac = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_nanos(1_000_000_000 - u64::from(frac))
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

/// One or more QUIC connections per scanner to each node, each authenticated as that
/// scanner (for the scanners of this process's shard). Scanner `i` sends to its home node
/// ([`Connections::home`]); a replay goes to the next node after its original's, so with
/// several nodes every replay crosses nodes.
#[derive(Debug)]
pub struct Connections {
    addrs: Vec<SocketAddr>,
    /// Node, then scanner, then its connections.
    by_node: Vec<Vec<Vec<ScannerClient>>>,
    /// Round-robin position per (node, scanner).
    next: Vec<AtomicUsize>,
    scanners: usize,
    /// Shards in the run: scanners are spread over the nodes in runs of this many, so a
    /// shard (every `stride`-th scanner) still reaches every node.
    stride: usize,
}

impl Connections {
    /// Connects `per_scanner` times as each identity (in scanner index order) to each node,
    /// for the scanners `mine` says this process sends for (a shard connects only its own).
    pub async fn connect(
        addrs: &[SocketAddr],
        server_name: &str,
        identities: Vec<ClientIdentity>,
        per_scanner: usize,
        options: ClientOptions,
        shard: Shard,
    ) -> Result<Connections> {
        ensure!(!addrs.is_empty(), "no engine to connect to");
        let mut by_node = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let mut by_scanner = Vec::with_capacity(identities.len());
            for (scanner, identity) in identities.iter().enumerate() {
                let mut conns = Vec::with_capacity(per_scanner.max(1));
                if !shard.owns(scanner) {
                    by_scanner.push(conns);
                    continue;
                }
                for _ in 0..per_scanner.max(1) {
                    conns.push(
                        ScannerClient::connect_with(*addr, server_name, identity.clone(), options)
                            .await
                            .with_context(|| format!("connecting to {addr}"))?,
                    );
                }
                by_scanner.push(conns);
            }
            by_node.push(by_scanner);
        }
        let scanners = identities.len();
        let next = (0..addrs.len() * scanners)
            .map(|_| AtomicUsize::new(0))
            .collect();
        Ok(Connections {
            addrs: addrs.to_vec(),
            by_node,
            next,
            scanners,
            stride: shard.count.max(1),
        })
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.addrs.len()
    }

    /// Node `node`'s address.
    pub fn addr(&self, node: usize) -> Option<SocketAddr> {
        self.addrs.get(node).copied()
    }

    /// Every node's address, in index order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The node scanner `scanner` sends its scans to: `(scanner / shards) % nodes`, which is
    /// `scanner % nodes` in a run that is not split. With N shards and N nodes, shard I (its
    /// scanners I-1, I-1+N, …) still reaches every node.
    pub fn home(&self, scanner: usize) -> usize {
        (scanner / self.stride) % self.nodes().max(1)
    }

    /// The node a replay of a scan answered by `node` goes to: another one when there is one.
    pub fn other(&self, node: usize) -> usize {
        (node + 1) % self.nodes().max(1)
    }

    /// A connection of scanner `scanner` to node `node` (round robin).
    pub fn get(&self, node: usize, scanner: usize) -> Option<&ScannerClient> {
        let conns = self.by_node.get(node)?.get(scanner)?;
        let n = self
            .next
            .get(node * self.scanners + scanner)?
            .fetch_add(1, Ordering::Relaxed);
        conns.get(n % conns.len().max(1))
    }

    /// Number of connections.
    pub fn count(&self) -> usize {
        self.by_node.iter().flatten().map(Vec::len).sum()
    }

    /// Closes every connection.
    pub async fn close(&self) {
        for c in self.by_node.iter().flatten().flatten() {
            c.close().await;
        }
    }
}

/// Sends one token as scanner `scanner` to node `node`: the verdict's reason, or why there is
/// none.
pub async fn verify(
    conns: &Connections,
    node: usize,
    scanner: usize,
    token: &[u8],
) -> Result<Reason> {
    let c = conns
        .get(node, scanner)
        .context("no connection for this scanner and node")?;
    Ok(c.verify(token, None).await?.reason)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_wait_ends_at_the_next_whole_second() {
        let at = |s: u64, ns: u32| UNIX_EPOCH + Duration::new(s, ns);
        assert_eq!(until_next_second(at(100, 0)), Duration::from_secs(1));
        // Launched at 100.25 with a 5 s skew: tokens from 106 on.
        assert_eq!(
            until_past_fence(at(100, 250_000_000), at(101, 0)),
            Duration::from_secs(5)
        );
        assert_eq!(
            until_past_fence(at(100, 250_000_000), at(107, 0)),
            Duration::ZERO
        );
        assert_eq!(
            until_next_second(at(100, 250_000_000)),
            Duration::from_millis(750)
        );
        let end = at(100, 999_999_999) + until_next_second(at(100, 999_999_999));
        assert_eq!(end, at(101, 0));
    }

    fn opts(nodes: usize, store: StoreKind) -> SpawnOptions {
        SpawnOptions {
            bin: PathBuf::from("gatehouse"),
            revocations: true,
            replay_capacity: 1000,
            utc_offset_secs: 0,
            keep: false,
            nodes,
            store,
            pins: Vec::new(),
            redis_pin: None,
            redis_timeout_ms: 50,
            split_store: false,
            mdoc_iaca: None,
        }
    }

    #[test]
    fn several_nodes_need_a_shared_store_and_one_pin_each() {
        assert!(opts(1, StoreKind::Memory).validate().is_ok());
        assert!(opts(2, StoreKind::Redis).validate().is_ok());
        let e = opts(2, StoreKind::Memory)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--store redis"), "{e}");
        assert!(opts(0, StoreKind::Redis).validate().is_err());
        assert!(opts(MAX_NODES + 1, StoreKind::Redis).validate().is_err());
        let mut o = opts(2, StoreKind::Redis);
        o.pins = vec!["0".into()];
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("one per node"));
        o.pins = vec!["0".into(), "1-1".into()];
        assert!(o.validate().is_ok());
        o.pins = vec!["0".into(), "1;rm".into()];
        assert!(o.validate().is_err());
        o.pins = vec!["0".into(), "2-1".into()];
        assert!(o.validate().is_err());
        let mut split = opts(1, StoreKind::Redis);
        split.split_store = true;
        assert!(split.validate().is_err());
    }

    #[test]
    fn the_config_points_every_node_at_its_store() {
        let addr: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let o = opts(2, StoreKind::Redis);
        let ops: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        let c = node_config(addr, ops, Some("redis://127.0.0.1:7001"), &o);
        assert!(c.contains("listen = \"127.0.0.1:4433\""));
        assert!(c.contains("metrics_listen = \"127.0.0.1:9999\""));
        assert!(c.contains("[replay]\nstore = \"redis\"\nurls = [\"redis://127.0.0.1:7001\"]"));
        assert!(c.contains("timeout_ms = 50"));
        let m = node_config(addr, ops, None, &opts(1, StoreKind::Memory));
        assert!(m.contains("store = \"memory\""));
        assert!(!m.contains("urls"));
        assert!(!m.contains("mdoc_iaca"));
        let mut with_mdoc = opts(1, StoreKind::Memory);
        with_mdoc.mdoc_iaca = Some("-----BEGIN CERTIFICATE-----\n".into());
        let m = node_config(addr, ops, None, &with_mdoc);
        let files = m
            .split("[files]")
            .nth(1)
            .unwrap()
            .split("\n[")
            .next()
            .unwrap();
        assert!(files.contains("mdoc_iaca = \"mdoc-iaca.pem\"\n"), "{m}");
        let parsed: toml::Value = toml::from_str(&m).unwrap();
        assert_eq!(parsed["files"]["mdoc_iaca"].as_str(), Some("mdoc-iaca.pem"));
    }
}
