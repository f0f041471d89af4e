//! `gatehouse-loadtest faults`: one-time use under real faults, judged by a checker that reads
//! the whole history.
//!
//! Three `gatehouse serve` nodes (one, on the memory store) run on a Redis deployment the run
//! starts on loopback: one server (restarted without persistence, restarted with AOF,
//! `FLUSHALL`ed, filled to its memory limit), one server with one node cut off behind a proxy
//! (a partition), a primary with a replica and three Sentinels (the primary killed; the primary
//! stopped past the failover timeout and resumed: a split brain), or a Redis Cluster of three
//! masters with a replica each (a master killed; `CLUSTER FAILOVER`). Scanners send fresh
//! tokens at a steady rate, round robin over the nodes, while faults are injected on a
//! schedule; **every accepted token is shown again at another node**, once soon (0.2–2 s) and
//! once later (3–10 s), so each fault has used tokens replayed across it inside their window.
//!
//! The checker counts, over the whole history, tokens accepted more than once (repeats of a
//! retry aside: these replays are new scans), `unavailable` and `node_restarted` verdicts, and
//! per fault the time from the store answering again to the first fresh token accepted. Any
//! token accepted twice fails the run — unless the run names an accepted risk
//! (`--accept-risk`), where the checker must **find** the double accepts that risk allows.
//!
//! Every process it starts (nodes, Redis servers, Sentinels, the proxy) is stopped when the run
//! ends, also on failure; all traffic stays on 127.0.0.1; every loop is bounded in count and
//! time.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use gatehouse_engine::client::{ClientIdentity, ClientOptions, ScannerClient};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population::{
    credential, derive_id, derive_key, issuer_key, trust_list, Holder,
};
use gatehouse_engine::dev::redis::{free_port, RedisCluster, RedisSentinels, RedisServer};
use gatehouse_engine::{Role, Scanner, ScannerRegistry, DEFAULT_GATE_ADMITS};
use gatehouse_protocol::Reason;
use parking_lot::Mutex;

/// A Redis deployment and the faults it is put through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One server: restart without persistence, restart with AOF, `FLUSHALL`, memory filled.
    Single,
    /// One server; node 2 reaches it through a proxy that cuts the link for a while.
    Partition,
    /// A primary, a replica and three Sentinels: the primary killed (-9), or stopped past the
    /// failover timeout and resumed (a split brain).
    Sentinel,
    /// Three masters with a replica each: a master killed (-9), or `CLUSTER FAILOVER`.
    Cluster,
    /// One node on the memory store, restarted, with phone clocks up to the skew ahead.
    Memory,
}

impl Topology {
    /// Every topology, in the order a full run visits them.
    pub const ALL: [Topology; 5] = [
        Topology::Single,
        Topology::Partition,
        Topology::Sentinel,
        Topology::Cluster,
        Topology::Memory,
    ];

    /// Its name on the command line.
    pub fn label(self) -> &'static str {
        match self {
            Topology::Single => "single",
            Topology::Partition => "partition",
            Topology::Sentinel => "sentinel",
            Topology::Cluster => "cluster",
            Topology::Memory => "memory",
        }
    }

    /// The topology with this name.
    pub fn parse(s: &str) -> Result<Topology> {
        Topology::ALL
            .into_iter()
            .find(|t| t.label() == s)
            .with_context(|| {
                format!("unknown topology {s:?} (single, partition, sentinel, cluster, memory)")
            })
    }

    fn faults(self, risk: Option<&str>) -> &'static [Fault] {
        match (self, risk) {
            (Topology::Single, Some("eviction")) => &[Fault::Fill],
            (Topology::Single, _) => &[
                Fault::Restart,
                Fault::Flushall,
                Fault::RestartAof,
                Fault::Fill,
            ],
            (Topology::Partition, _) => &[Fault::Partition],
            (Topology::Sentinel, _) => &[Fault::KillPrimary, Fault::StopPrimary],
            (Topology::Cluster, _) => &[Fault::KillMaster, Fault::ClusterFailover],
            (Topology::Memory, _) => &[Fault::RestartNode],
        }
    }
}

/// One fault and its repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Restart,
    RestartAof,
    Flushall,
    Fill,
    Partition,
    KillPrimary,
    StopPrimary,
    KillMaster,
    ClusterFailover,
    RestartNode,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::Restart => "restart without persistence (kill -9, data lost)",
            Fault::RestartAof => "restart with AOF everysec (kill -9)",
            Fault::Flushall => "FLUSHALL",
            Fault::Fill => "memory filled to maxmemory",
            Fault::Partition => "node 2 cut off from Redis for 3 s",
            Fault::KillPrimary => "primary killed (-9), Sentinel fails over",
            Fault::StopPrimary => "primary stopped past the failover timeout, then resumed",
            Fault::KillMaster => "a cluster master killed (-9), its replica promoted",
            Fault::ClusterFailover => "CLUSTER FAILOVER on a replica",
            Fault::RestartNode => "node restarted (kill -9), phones up to 5 s ahead",
        }
    }
}

/// What a fault run does.
#[derive(Debug, Clone)]
pub struct FaultOptions {
    /// The `gatehouse` binary.
    pub bin: PathBuf,
    /// Topologies, each run in turn.
    pub topologies: Vec<Topology>,
    /// Faults per topology.
    pub faults: usize,
    /// Fresh tokens per second, over all nodes.
    pub rate: f64,
    /// Steady traffic after each fault's recovery, seconds.
    pub settle_secs: f64,
    /// A risk the nodes accept (`eviction` or `split-brain`): the store is set up to allow it,
    /// and the run passes only when the checker finds double accepts.
    pub accept_risk: Option<String>,
}

/// One verdict in the history.
#[derive(Debug, Clone, Copy)]
struct Event {
    token: u64,
    node: usize,
    /// When the request was sent, seconds since the run's start.
    sent: f64,
    /// When its answer came.
    at: f64,
    reason: Option<Reason>,
    repeat: bool,
    replay: bool,
}

/// One injected fault and what followed it.
#[derive(Debug, Clone)]
struct Injected {
    fault: Fault,
    at: f64,
    repaired: f64,
    /// The node the fault cut off, when it hit one node only.
    node: Option<usize>,
}

/// What the checker found in one topology's history.
#[derive(Debug, Clone, Default)]
pub struct Verdicts {
    /// Tokens sent fresh.
    pub tokens: u64,
    /// Fresh tokens accepted.
    pub accepted: u64,
    /// Replays sent (every accepted token, twice, to another node).
    pub replays: u64,
    /// Tokens accepted more than once.
    pub double_accepts: u64,
    /// `unavailable` verdicts.
    pub unavailable: u64,
    /// `node_restarted` verdicts.
    pub fenced: u64,
    /// Requests that got no verdict (connection lost, timeout).
    pub errors: u64,
    /// Faults injected.
    pub faults: usize,
    /// Per fault: seconds from the store answering again to the answer accepting the first fresh
    /// token sent after that.
    pub recovery: Vec<Option<f64>>,
}

/// Runs every topology in turn; prints each fault and each topology's verdict. Returns whether
/// the run passed.
pub async fn run(opts: FaultOptions) -> Result<bool> {
    ensure!(
        opts.rate > 0.0 && opts.rate <= 500.0,
        "--rate must be in (0, 500]"
    );
    ensure!(
        opts.faults >= 1 && opts.faults <= 200,
        "--faults must be 1 to 200"
    );
    ensure!(
        opts.settle_secs >= 0.5 && opts.settle_secs <= 60.0,
        "--settle-secs must be 0.5 to 60"
    );
    if let Some(r) = &opts.accept_risk {
        ensure!(
            r == "eviction" || r == "split-brain",
            "--accept-risk takes eviction or split-brain"
        );
    }
    let mut total = Verdicts::default();
    let mut passed = true;
    for &topology in &opts.topologies {
        let v = run_topology(topology, &opts)
            .await
            .with_context(|| format!("topology {}", topology.label()))?;
        let ok = match &opts.accept_risk {
            None => v.double_accepts == 0,
            Some(_) => v.double_accepts > 0,
        };
        passed &= ok;
        println!(
            "{:<9} faults {:>3}  tokens {:>6}  accepted {:>6}  replays {:>6}  double accepts {:>4}  \
             unavailable {:>5}  node_restarted {:>5}  no answer {:>4}  recovery max {}  {}",
            topology.label(),
            v.faults,
            v.tokens,
            v.accepted,
            v.replays,
            v.double_accepts,
            v.unavailable,
            v.fenced,
            v.errors,
            max_recovery(&v.recovery),
            if ok { "pass" } else { "FAIL" }
        );
        total.tokens += v.tokens;
        total.accepted += v.accepted;
        total.replays += v.replays;
        total.double_accepts += v.double_accepts;
        total.unavailable += v.unavailable;
        total.fenced += v.fenced;
        total.errors += v.errors;
        total.faults += v.faults;
        total.recovery.extend(v.recovery);
    }
    println!(
        "total     faults {:>3}  tokens {:>6}  accepted {:>6}  replays {:>6}  double accepts {:>4}  \
         unavailable {:>5}  node_restarted {:>5}  no answer {:>4}  recovery max {}",
        total.faults,
        total.tokens,
        total.accepted,
        total.replays,
        total.double_accepts,
        total.unavailable,
        total.fenced,
        total.errors,
        max_recovery(&total.recovery),
    );
    match &opts.accept_risk {
        None => println!(
            "faults: {} — {} tokens accepted twice",
            if passed { "pass" } else { "FAIL" },
            total.double_accepts
        ),
        Some(r) => println!(
            "faults (accept_risk = [\"{r}\"]): {} — the checker found {} tokens accepted twice",
            if passed { "pass" } else { "FAIL" },
            total.double_accepts
        ),
    }
    Ok(passed)
}

fn max_recovery(r: &[Option<f64>]) -> String {
    if r.iter().any(Option::is_none) {
        return "never (a fault did not recover)".into();
    }
    let max = r.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    format!("{max:.2} s")
}

/// The site: a dev PKI (TEST ONLY), an issuer, scanners and holders, in a temp dir removed
/// at the end.
struct Site {
    dir: PathBuf,
    pki: DevPki,
    holders: Vec<Holder>,
    nonce: AtomicU64,
}

const SCANNERS: usize = 6;
const HOLDERS: u64 = 512;

impl Site {
    fn new(label: &str) -> Result<Site> {
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-faults-{label}-{}-{}",
            std::process::id(),
            unix_now()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ids: Vec<String> = (0..SCANNERS).map(|i| format!("gate-{i}")).collect();
        let pki = DevPki::generate(&ids)?;
        pki.write_to(&dir.join("pki"))?;
        let issuer = issuer_key(23);
        std::fs::write(dir.join("trust.toml"), trust_list(&issuer).to_toml())?;
        let mut reg = ScannerRegistry::new();
        for id in &ids {
            reg.insert(Scanner {
                id: id.clone(),
                role: Role::Gate {
                    unit: "1".parse()?,
                    admits: DEFAULT_GATE_ADMITS.to_vec(),
                },
                mdoc: Default::default(),
            });
        }
        std::fs::write(dir.join("scanners.toml"), reg.to_toml())?;
        let now = unix_now();
        let holders = (0..HOLDERS)
            .map(|n| Holder::issue(&issuer, derive_key("faults device", n), credential(now, n)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Site {
            dir,
            pki,
            holders,
            nonce: AtomicU64::new(0),
        })
    }

    fn identity(&self, scanner: usize) -> Result<ClientIdentity> {
        let s = self
            .pki
            .scanner(&format!("gate-{scanner}"))
            .context("scanner certificate")?;
        Ok(ClientIdentity {
            roots: self.pki.ca.chain(),
            chain: s.chain(),
            key: s.key(),
        })
    }

    fn token(&self, holder: usize, ts: u64) -> Result<Vec<u8>> {
        let n = self.nonce.fetch_add(1, Ordering::Relaxed);
        Ok(self.holders[holder % self.holders.len()].present(
            ts,
            derive_id("faults nonce", n),
            None,
        )?)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `gatehouse serve` process, killed when dropped.
struct Node {
    config: PathBuf,
    addr: SocketAddr,
    ops: u16,
    bin: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn new(site: &Site, bin: &Path, index: usize, replay: &str) -> Result<Node> {
        let port = free_udp_port()?;
        let ops = free_port()?;
        let config = gatehouse_engine::server::SAMPLE_CONFIG
            .replace(
                "listen = \"0.0.0.0:4433\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace(
                "metrics_listen = \"127.0.0.1:9090\"",
                &format!("metrics_listen = \"127.0.0.1:{ops}\""),
            )
            .replace("revocations = \"revocations.cbor\"\n", "")
            .replace("store = \"memory\"\n", &format!("{replay}\n"));
        ensure!(
            config.contains(replay),
            "the sample config has no [replay] store line"
        );
        let path = site.dir.join(format!("node{index}.toml"));
        std::fs::write(&path, config)?;
        let mut node = Node {
            config: path,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            ops,
            bin: bin.to_path_buf(),
            child: None,
        };
        node.start()?;
        Ok(node)
    }

    fn start(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.config.with_extension("log"))?;
        let child = Command::new(&self.bin)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(self.ops, "/healthz") != Some(200) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("node exited at start ({status}): {}", self.log_tail());
            }
            ensure!(
                Instant::now() < deadline,
                "node did not start: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy on loopback that can cut its link (a partition): while cut, bytes are dropped
/// both ways; on healing, every connection is closed so the client reconnects.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: u16) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, g, s) = (cut.clone(), generation.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let gen = g.load(Ordering::Relaxed);
                        for (from, to) in [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ] {
                            if let (Ok(from), Ok(to)) = (from, to) {
                                let (c, g, s) = (c.clone(), g.clone(), s.clone());
                                std::thread::spawn(move || pump(from, to, &c, &g, gen, &s));
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Proxy {
            port,
            cut,
            generation,
            stop,
        })
    }

    fn set_cut(&self, cut: bool) {
        if !cut {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        self.cut.store(cut, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    cut: &AtomicBool,
    generation: &AtomicU64,
    gen: u64,
    stop: &AtomicBool,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if generation.load(Ordering::Relaxed) != gen || stop.load(Ordering::Relaxed) {
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
            return;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
            Ok(n) => {
                if !cut.load(Ordering::Relaxed) && to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }
}

/// The Redis side of a topology.
enum Deployment {
    Single {
        server: RedisServer,
        proxy: Option<Proxy>,
    },
    Sentinel(RedisSentinels),
    Cluster(RedisCluster),
    Memory,
}

const FILL_MAXMEMORY: &str = "16mb";

impl Deployment {
    fn start(topology: Topology, risk: Option<&str>) -> Result<Deployment> {
        Ok(match topology {
            Topology::Single | Topology::Partition => {
                let policy = if risk == Some("eviction") {
                    "volatile-lru"
                } else {
                    "noeviction"
                };
                let server = RedisServer::start_with_args(vec![
                    "--appendonly".into(),
                    "yes".into(),
                    "--appendfsync".into(),
                    "everysec".into(),
                    "--maxmemory".into(),
                    FILL_MAXMEMORY.into(),
                    "--maxmemory-policy".into(),
                    policy.into(),
                ])?;
                let proxy = if topology == Topology::Partition {
                    println!(
                        "  partition: node 2 reaches Redis through a TCP proxy on loopback that \
                         cuts the link (loopback, not a network namespace)"
                    );
                    Some(Proxy::start(server.port())?)
                } else {
                    None
                };
                Deployment::Single { server, proxy }
            }
            Topology::Sentinel => {
                Deployment::Sentinel(RedisSentinels::start("gatehouse", 1, 3, 1000, 3000)?)
            }
            Topology::Cluster => Deployment::Cluster(RedisCluster::start_with_replicas(3, 1)?),
            Topology::Memory => Deployment::Memory,
        })
    }

    /// The `[replay]` section's body for node `i`.
    fn replay(&self, i: usize, risk: Option<&str>) -> String {
        let common = "timeout_ms = 300\nprobe_interval_ms = 100";
        let risk_line = risk
            .map(|r| format!("\naccept_risk = [\"{r}\"]"))
            .unwrap_or_default();
        match self {
            Deployment::Single { server, proxy } => {
                let port = match proxy {
                    Some(p) if i == 2 => p.port,
                    _ => server.port(),
                };
                format!(
                    "store = \"redis\"\nurls = [\"redis://127.0.0.1:{port}\"]\n{common}{risk_line}"
                )
            }
            Deployment::Sentinel(s) => {
                let urls = quoted(&s.sentinel_urls());
                let acks = if risk == Some("split-brain") { 0 } else { 1 };
                format!(
                    "store = \"redis\"\nurls = [{urls}]\nsentinel_master = \"{}\"\n\
                     replica_acks = {acks}\n{common}{risk_line}",
                    s.master_name()
                )
            }
            Deployment::Cluster(c) => {
                let urls = quoted(&c.urls());
                let acks = if risk == Some("split-brain") { 0 } else { 1 };
                format!(
                    "store = \"redis\"\ncluster = true\nurls = [{urls}]\nreplica_acks = {acks}\n\
                     {common}{risk_line}"
                )
            }
            Deployment::Memory => "store = \"memory\"".into(),
        }
    }

    /// Injects `fault` and repairs it; returns (injected, store answering again) as seconds
    /// since `t0`.
    fn inject(
        &mut self,
        fault: Fault,
        nodes: &Mutex<Vec<Node>>,
        t0: Instant,
    ) -> Result<(f64, f64)> {
        let at = t0.elapsed().as_secs_f64();
        match self {
            Deployment::Single { server, proxy } => inject_single(server, proxy.as_ref(), fault)?,
            Deployment::Sentinel(s) => inject_sentinel(s, fault)?,
            Deployment::Cluster(c) => inject_cluster(c, fault)?,
            Deployment::Memory if fault == Fault::RestartNode => {
                let mut nodes = nodes.lock();
                let node = nodes.first_mut().context("no node")?;
                node.kill();
                node.start()?;
            }
            Deployment::Memory => bail!("fault {fault:?} does not fit this topology"),
        }
        Ok((at, t0.elapsed().as_secs_f64()))
    }
}

/// Injects `fault` into one Redis server (reached through `proxy` by node 2 on the partition
/// topology) and repairs it.
fn inject_single(server: &mut RedisServer, proxy: Option<&Proxy>, fault: Fault) -> Result<()> {
    match (fault, proxy) {
        (Fault::Restart, _) => {
            server.stop();
            // Without persistence: the data is gone (the AOF removed with the process).
            remove_aof(server)?;
            server.restart()?;
        }
        (Fault::RestartAof, _) => {
            server.stop();
            server.restart()?;
        }
        (Fault::Flushall, _) => {
            let r = server.command("FLUSHALL")?;
            ensure!(r.starts_with("+OK"), "FLUSHALL: {r}");
        }
        (Fault::Fill, _) => {
            // Fill past maxmemory with keys that never expire (64 KiB each, at most 40 MiB;
            // the script stops at the first refused write), hold it a second, free it.
            let r = server.command(
                "EVAL \"for i = 1, 640 do local ok = redis.pcall('SET', 'gatehouse-filler:' .. i, \
                 string.rep('x', 65536)) if type(ok) == 'table' and ok.err then return i end \
                 end return 0\" 0",
            )?;
            ensure!(r.starts_with(':'), "filling: {}", r.trim());
            std::thread::sleep(Duration::from_secs(1));
            let r = server.command(
                "EVAL \"for i = 1, 640 do redis.call('DEL', 'gatehouse-filler:' .. i) end \
                 return 0\" 0",
            )?;
            ensure!(r.starts_with(':'), "freeing: {}", r.trim());
        }
        (Fault::Partition, Some(p)) => {
            p.set_cut(true);
            std::thread::sleep(Duration::from_secs(3));
            p.set_cut(false);
        }
        (f, _) => bail!("fault {f:?} does not fit this topology"),
    }
    Ok(())
}

/// Injects `fault` into a Sentinel deployment and waits until the store answers marks again.
fn inject_sentinel(s: &mut RedisSentinels, fault: Fault) -> Result<()> {
    match fault {
        Fault::KillPrimary => {
            let old = s.primary_port()?;
            s.server(old).context("the primary's server")?.stop();
            s.wait_primary_change(old, Duration::from_secs(30))?;
            s.server(old).context("the old primary")?.restart()?;
            // The store answers marks again once a replica can acknowledge them
            // (replica_acks = 1): the old primary, back as a replica.
            s.wait_replicas(1, Duration::from_secs(30))?;
        }
        Fault::StopPrimary => {
            let old = s.primary_port()?;
            s.server(old).context("the primary's server")?.pause()?;
            let changed = s.wait_primary_change(old, Duration::from_secs(30));
            // The old primary comes back believing it is the primary, until the
            // Sentinels demote it: the split brain.
            s.server(old).context("the old primary")?.resume()?;
            changed?;
            s.wait_replicas(1, Duration::from_secs(30))?;
        }
        f => bail!("fault {f:?} does not fit this topology"),
    }
    Ok(())
}

/// Injects `fault` into a Redis Cluster and waits until every slot answers marks again.
fn inject_cluster(c: &mut RedisCluster, fault: Fault) -> Result<()> {
    match fault {
        Fault::KillMaster => {
            let master = *c.masters().first().context("no master")?;
            let node = c
                .nodes_mut()
                .iter_mut()
                .find(|n| n.port() == master)
                .context("the master's server")?;
            node.stop();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.wait_ok(Duration::from_millis(500)).is_err() || c.masters().len() < 3 {
                ensure!(Instant::now() < deadline, "the cluster did not fail over");
            }
            if let Some(node) = c.nodes_mut().iter_mut().find(|n| n.port() == master) {
                node.restart()?;
            }
            // Its slots answer marks again once the old master is back as a replica of
            // the promoted one (replica_acks = 1).
            c.wait_ok(Duration::from_secs(30))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.masters().iter().any(|m| c.replicas_of(*m).is_empty()) {
                ensure!(
                    Instant::now() < deadline,
                    "the old master did not come back as a replica"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Fault::ClusterFailover => {
            let master = *c.masters().first().context("no master")?;
            let replica = *c.replicas_of(master).first().context("no replica")?;
            c.failover(replica)?;
            c.wait_ok(Duration::from_secs(30))?;
        }
        f => bail!("fault {f:?} does not fit this topology"),
    }
    Ok(())
}

fn remove_aof(server: &RedisServer) -> Result<()> {
    let dir = server.dir();
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("appendonly") {
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

fn quoted(urls: &[String]) -> String {
    urls.iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One scanner connection per node, made again after a loss.
struct Conns {
    site: Arc<Site>,
    addrs: Vec<SocketAddr>,
    conns: Vec<tokio::sync::Mutex<Option<ScannerClient>>>,
}

impl Conns {
    /// One scan on `node` by `scanner`; `None` when no verdict came (no connection, timeout).
    /// A connection is used by one request at a time.
    async fn verify(&self, node: usize, scanner: usize, token: &[u8]) -> Option<(Reason, bool)> {
        let mut slot = self.conns[node * SCANNERS + scanner].lock().await;
        if slot.is_none() {
            let options = ClientOptions {
                connect_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(2),
                ..ClientOptions::default()
            };
            let identity = self.site.identity(scanner).ok()?;
            *slot = ScannerClient::connect_with(self.addrs[node], "localhost", identity, options)
                .await
                .ok();
        }
        let answer = slot.as_ref()?.verify(token, None).await;
        match answer {
            Ok(v) => Some((v.reason, v.repeat)),
            Err(_) => {
                *slot = None;
                None
            }
        }
    }
}

async fn run_topology(topology: Topology, opts: &FaultOptions) -> Result<Verdicts> {
    let risk = opts.accept_risk.as_deref();
    let site = Arc::new(Site::new(topology.label())?);
    let mut deployment = tokio::task::block_in_place(|| Deployment::start(topology, risk))?;
    let node_count = if topology == Topology::Memory { 1 } else { 3 };
    let launched = SystemTime::now();
    let nodes = (0..node_count)
        .map(|i| Node::new(&site, &opts.bin, i, &deployment.replay(i, risk)))
        .collect::<Result<Vec<_>>>()?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let nodes = Arc::new(Mutex::new(nodes));
    // Tokens pass the fences of nodes and of the store's first life from launch + skew on.
    tokio::time::sleep(gatehouse_loadtest::target::until_past_fence(
        launched,
        SystemTime::now(),
    ))
    .await;
    let conns = Arc::new(Conns {
        site: Arc::clone(&site),
        addrs,
        conns: (0..node_count * SCANNERS)
            .map(|_| tokio::sync::Mutex::new(None))
            .collect(),
    });
    let events: Arc<Mutex<Vec<Event>>> = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(traffic(
        Arc::clone(&site),
        Arc::clone(&conns),
        Arc::clone(&events),
        Arc::clone(&stop),
        opts.rate,
        node_count,
        t0,
    ));

    // Warm up, then the faults, each followed by steady traffic.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut injected = Vec::new();
    let faults = topology.faults(risk);
    for k in 0..opts.faults {
        let fault = faults[k % faults.len()];
        let nodes2 = Arc::clone(&nodes);
        let (at, repaired) = {
            let dep = &mut deployment;
            tokio::task::block_in_place(|| dep.inject(fault, &nodes2, t0))
        }
        .with_context(|| format!("fault {}", fault.label()))?;
        println!(
            "  [{:>6.1} s] {:<9} {}: store answering again after {:.2} s",
            at,
            topology.label(),
            fault.label(),
            repaired - at
        );
        injected.push(Injected {
            fault,
            at,
            repaired,
            node: (fault == Fault::Partition).then_some(2),
        });
        // Steady traffic until a fresh token is accepted (bounded), then the settle time.
        let deadline = Instant::now() + Duration::from_secs(30);
        let node = injected.last().and_then(|f| f.node);
        while Instant::now() < deadline && !accepted_after(&events.lock(), repaired, node) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs_f64(opts.settle_secs)).await;
    }
    // The last replays land within 10 s of their token.
    stop.store(true, Ordering::Relaxed);
    traffic.await.context("traffic task")??;
    drop(nodes);
    drop(deployment);
    let events = events.lock().clone();
    Ok(check(&events, &injected, topology))
}

/// Whether a fresh token was accepted after `t` (on `node`, when given).
fn accepted_after(events: &[Event], t: f64, node: Option<usize>) -> bool {
    events.iter().any(|e| {
        !e.replay
            && e.sent > t
            && e.reason == Some(Reason::Accepted)
            && node.is_none_or(|n| n == e.node)
    })
}

/// The checker: reads the whole history.
fn check(events: &[Event], injected: &[Injected], topology: Topology) -> Verdicts {
    let mut v = Verdicts {
        faults: injected.len(),
        ..Verdicts::default()
    };
    let mut accepts: HashMap<u64, Vec<&Event>> = HashMap::new();
    for e in events {
        if e.replay {
            v.replays += 1;
        } else {
            v.tokens += 1;
        }
        match e.reason {
            Some(Reason::Accepted) if !e.repeat => {
                if !e.replay {
                    v.accepted += 1;
                }
                accepts.entry(e.token).or_default().push(e);
            }
            Some(Reason::Unavailable) => v.unavailable += 1,
            Some(Reason::NodeRestarted) => v.fenced += 1,
            Some(_) => {}
            None => v.errors += 1,
        }
    }
    let mut doubles: Vec<(&u64, &Vec<&Event>)> =
        accepts.iter().filter(|(_, a)| a.len() > 1).collect();
    doubles.sort_by(|a, b| a.1[0].at.total_cmp(&b.1[0].at));
    v.double_accepts = doubles.len() as u64;
    for (token, a) in doubles.iter().take(5) {
        let when: Vec<String> = a
            .iter()
            .map(|e| format!("node {} at {:.2} s", e.node, e.at))
            .collect();
        println!(
            "  {} token {token} accepted {} times: {}",
            topology.label(),
            a.len(),
            when.join(", ")
        );
    }
    v.recovery = injected
        .iter()
        .map(|f| {
            events
                .iter()
                .filter(|e| {
                    !e.replay
                        && e.sent > f.repaired
                        && e.reason == Some(Reason::Accepted)
                        && f.node.is_none_or(|n| n == e.node)
                })
                .map(|e| e.at - f.repaired)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))))
        })
        .collect();
    for (f, r) in injected.iter().zip(&v.recovery) {
        let (u, n) = events
            .iter()
            .filter(|e| e.at >= f.at && r.is_none_or(|r| e.at <= f.repaired + r))
            .fold((0, 0), |(u, n), e| match e.reason {
                Some(Reason::Unavailable) => (u + 1, n),
                Some(Reason::NodeRestarted) => (u, n + 1),
                _ => (u, n),
            });
        println!(
            "  {} {:<55} unavailable {u:>4}  node_restarted {n:>4}  accepted again {}",
            topology.label(),
            f.fault.label(),
            r.map_or("never".into(), |r| format!(
                "{r:.2} s after the store answered"
            ))
        );
    }
    v
}

/// Fresh tokens at `rate`, round robin over nodes and scanners; every accepted one shown again
/// at another node soon (0.2–2 s) and later (3–10 s).
#[allow(clippy::too_many_arguments)]
async fn traffic(
    site: Arc<Site>,
    conns: Arc<Conns>,
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    rate: f64,
    nodes: usize,
    t0: Instant,
) -> Result<()> {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut i: u64 = 0;
    // Bounded: at most an hour of tokens.
    while !stop.load(Ordering::Relaxed) && i < (rate * 3600.0) as u64 {
        tick.tick().await;
        let node = (i as usize) % nodes;
        let scanner = (i as usize / nodes) % SCANNERS;
        rng = splitmix(rng);
        // Phones whose clocks run 0 to 5 s ahead (inside the skew): a restart fence must cover
        // them (the memory topology's point), and the fastest show how soon tokens signed
        // after a fence pass.
        let skew_ahead = rng % 6;
        let token = site.token(i as usize, unix_now() + skew_ahead)?;
        let id = i;
        i += 1;
        let (conns, events, in_flight) = (conns.clone(), events.clone(), in_flight.clone());
        let (soon, later) = (
            0.2 + (rng >> 11) as f64 / (1u64 << 53) as f64 * 1.8,
            3.0 + (splitmix(rng) >> 11) as f64 / (1u64 << 53) as f64 * 7.0,
        );
        in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let sent = t0.elapsed().as_secs_f64();
            let got = conns.verify(node, scanner, &token).await;
            record(&events, id, node, (t0, sent), got, false);
            if got.map(|g| g.0) == Some(Reason::Accepted) {
                // Shown again at another node (the memory topology has one: the same node,
                // across its restarts), by another scanner: a new scan, never a retry.
                let other = (node + 1) % nodes;
                let other2 = (node + nodes - 1) % nodes;
                for (delay, n) in [(soon, other), (later, other2)] {
                    let target = t0 + Duration::from_secs_f64(t0.elapsed().as_secs_f64() + delay);
                    tokio::time::sleep_until(target.into()).await;
                    let s = (scanner + 1) % SCANNERS;
                    let sent = t0.elapsed().as_secs_f64();
                    let got = conns.verify(n, s, &token).await;
                    record(&events, id, n, (t0, sent), got, true);
                }
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Every started scan and its replays end (bounded: a replay is at most 10 s out, a request
    // at most a few seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn record(
    events: &Mutex<Vec<Event>>,
    token: u64,
    node: usize,
    (t0, sent): (Instant, f64),
    got: Option<(Reason, bool)>,
    replay: bool,
) {
    events.lock().push(Event {
        token,
        node,
        sent,
        at: t0.elapsed().as_secs_f64(),
        reason: got.map(|g| g.0),
        repeat: got.is_some_and(|g| g.1),
        replay,
    });
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let r =
        gatehouse_engine::client::ops::get(addr, path, Duration::from_secs(1), 64 * 1024).ok()?;
    (r.status != 0).then_some(r.status)
}
