//! `gatehouse-loadtest abuse`: the heavier hostile-traffic floods against a `gatehouse serve`
//! this harness starts on loopback, while a well-behaved gate scanner sends 100 valid verifies a
//! second (open loop) and measures. Prints one row per attack: the gate's p99, errors and wrong
//! verdicts, the engine's RSS, and whether the row meets the targets (p99 ≤ 10 ms, no errors,
//! no wrong verdicts, `/healthz` answers every probe; over the whole run peak RSS ≤ 256 MB and
//! back within 32 MB of the baseline after it).
//!
//! Attackers use other loopback addresses (127.0.0.2 and up) or other scanner certificates;
//! every attack is bounded in count and time and stops what it started. TEST PKI ONLY.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use gatehouse_engine::client::{ClientIdentity, ClientOptions, ScannerClient};
use gatehouse_engine::dev::attack::{silent_after_retry, stranger_config};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population::{self, derive_key, Holder};
use gatehouse_engine::{Role, Scanner, ScannerRegistry, DEFAULT_GATE_ADMITS};
use gatehouse_protocol::{Reason, UnitPath, FRAME_HEADER_LEN};
use tokio::net::TcpStream;

/// The scanners: the measuring gate, the queue flooder, the slow-body sender.
const IDS: [&str; 3] = ["gate-a", "flood-1", "slow-1"];
/// Seconds each attack runs while the gate measures.
const ATTACK_SECS: u64 = 6;
/// The gate's rate, verifies per second.
const GATE_RPS: u64 = 100;

/// One row of the table.
struct Row {
    attack: &'static str,
    p99: Duration,
    max: Duration,
    sent: usize,
    errors: usize,
    wrong: usize,
    rss: u64,
    note: String,
    pass: bool,
}

/// The engine process, stopped (SIGTERM, then kill) on drop.
struct Engine {
    child: Child,
    dir: PathBuf,
}

impl Engine {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn free_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct World {
    pki: DevPki,
    issuer: gatehouse_protocol::PrivateKey,
    next_holder: AtomicU64,
    next_nonce: AtomicU64,
}

impl World {
    fn identity(&self, id: &str) -> Result<ClientIdentity> {
        let s = self.pki.scanner(id).context("scanner certificate")?;
        Ok(ClientIdentity {
            roots: vec![self.pki.ca.cert_der.clone()],
            chain: s.chain(),
            key: s.key(),
        })
    }

    /// A fresh valid token of a fresh holder (the gate admits it).
    fn token(&self) -> Result<Vec<u8>> {
        let i = self.next_holder.fetch_add(1, Ordering::Relaxed);
        let h = Holder::issue(
            &self.issuer,
            derive_key("abuse device", i),
            population::credential(now(), i),
        )?;
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(
            &self
                .next_nonce
                .fetch_add(1, Ordering::Relaxed)
                .to_be_bytes(),
        );
        Ok(h.present(now().saturating_sub(1), nonce, None)?)
    }
}

/// Runs the suite against `bin`; the exit code says whether every row passed.
pub async fn run(bin: PathBuf, engine_batch: &str, rows: Option<Vec<String>>) -> Result<bool> {
    anyhow::ensure!(
        ["auto", "multibuffer", "equation", "off"].contains(&engine_batch),
        "--engine-batch: auto, multibuffer, equation or off"
    );
    if let Some(rows) = &rows {
        for r in rows {
            anyhow::ensure!(
                ROWS.contains(&r.as_str()),
                "--rows: unknown row {r:?} (one or more of {})",
                ROWS.join(", ")
            );
        }
    }
    let mut target = Target::start(bin, engine_batch).await?;
    target.rows = rows;
    let rows = attack(&target).await?;
    drop(target);
    Ok(print_table(&rows))
}

/// The engine under attack, what the attackers and the gate need to reach it.
struct Target {
    engine: Engine,
    world: Arc<World>,
    /// Where the measuring gate (and the attackers' scanners) connect.
    probe: Probe,
    /// The engine's operations port (`/healthz`, metrics).
    ops: SocketAddr,
    /// The attack rows to run (`None`: all).
    rows: Option<Vec<String>>,
}

/// The attack rows `--rows` can name (the baseline and the row after always run).
pub const ROWS: [&str; 9] = [
    "handshake",
    "same-address",
    "same-address-retry",
    "queue",
    "over-limit",
    "oversized",
    "forged",
    "slow",
    "ops",
];

impl Target {
    /// Writes the engine's files, starts `bin serve` on loopback and waits until a gate can
    /// connect and the start fence has passed.
    async fn start(bin: PathBuf, engine_batch: &str) -> Result<Target> {
        let dir = std::env::temp_dir().join(format!("gatehouse-abuse-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ids: Vec<String> = IDS.iter().map(|s| s.to_string()).collect();
        let world = Arc::new(World {
            pki: DevPki::generate(&ids)?,
            issuer: population::issuer_key(21),
            next_holder: AtomicU64::new(1),
            next_nonce: AtomicU64::new(1),
        });
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let ops: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        write_config(&dir, &world, addr, ops, engine_batch)?;
        let log = std::fs::File::create(dir.join("engine.log"))?;
        let child = Command::new(&bin)
            .args(["serve", "--config"])
            .arg(dir.join("gatehouse.toml"))
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let engine = Engine { child, dir };
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        };
        let probe = Probe { addr, options };
        wait_ready(&world, &probe).await?;
        Ok(Target {
            engine,
            world,
            probe,
            ops,
            rows: None,
        })
    }

    /// Runs `attack` under the measuring gate (see [`measure`]).
    async fn measure(
        &self,
        name: &'static str,
        attack: impl std::future::Future<Output = Result<String>>,
    ) -> Result<Row> {
        measure(&self.world, &self.probe, name, &self.engine, attack).await
    }
}

/// Writes the PKI, the trust list, the scanners and `gatehouse.toml` (listening on `addr`,
/// operations on `ops`) into `dir`.
fn write_config(
    dir: &Path,
    world: &World,
    addr: SocketAddr,
    ops: SocketAddr,
    engine_batch: &str,
) -> Result<()> {
    world.pki.write_to(&dir.join("pki"))?;
    std::fs::write(
        dir.join("trust.toml"),
        population::trust_list(&world.issuer).to_toml(),
    )?;
    let mut registry = ScannerRegistry::new();
    for id in IDS {
        registry.insert(Scanner {
            id: id.into(),
            role: Role::Gate {
                unit: UnitPath::new(&[1, 12])?,
                admits: DEFAULT_GATE_ADMITS.to_vec(),
            },
            mdoc: Default::default(),
        });
    }
    std::fs::write(dir.join("scanners.toml"), registry.to_toml())?;
    std::fs::write(
        dir.join("gatehouse.toml"),
        format!(
            "# Written by gatehouse-loadtest abuse (TEST PKI ONLY).\n\
             listen = \"{addr}\"\nmetrics_listen = \"{ops}\"\n\n\
             [tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\nclient_ca = \"pki/ca.pem\"\n\n\
             [files]\ntrust = \"trust.toml\"\nscanners = \"scanners.toml\"\n\n\
             [engine]\nbatch = \"{engine_batch}\"\nbatch_from = {}\n",
            if engine_batch == "equation" { 16 } else { 32 }
        ),
    )?;
    Ok(())
}

/// Waits (at most 30 s) until the gate connects, then past the memory store's start fence
/// (`node_restarted`). The node started before the gate could connect, so its fence is at most
/// that second + the skew + 1; the gate's tokens are signed a second back ([`World::token`]),
/// so they pass it a second later still. (Counting from the launch instead let the baseline's
/// tokens meet the fence: all 600 were denied `node_restarted`.)
async fn wait_ready(world: &World, probe: &Probe) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let gate = loop {
        match ScannerClient::connect_with(
            probe.addr,
            "localhost",
            world.identity("gate-a")?,
            probe.options,
        )
        .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => bail!("the engine is not ready: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let connected = SystemTime::now();
    let past = gatehouse_loadtest::target::until_past_fence(connected, SystemTime::now());
    tokio::time::sleep(past + Duration::from_secs(1)).await;
    // Each row's gate gets its own connection on its own thread (see `measure`).
    gate.close().await;
    Ok(())
}

/// The rows: a baseline, each attack (every row, or those of `--rows` in the order given, a
/// row named twice run twice: the row after then says whether memory grows with repeats or
/// stays at a high-water mark), and the memory after them.
async fn attack(t: &Target) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let row = t.measure("baseline", async { Ok(String::new()) }).await?;
    let baseline_rss = row.rss;
    rows.push(row);
    let names: Vec<String> = match &t.rows {
        Some(r) => r.clone(),
        None => ROWS.iter().map(|s| s.to_string()).collect(),
    };
    for name in &names {
        attack_row(t, name, &mut rows).await?;
    }
    // After: memory back near the baseline (the half-open state and buffers are freed).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut after = t.measure("after", async { Ok(String::new()) }).await?;
    let peak_rss = rows
        .iter()
        .map(|r| r.rss)
        .fold(t.engine.rss("VmHWM:"), u64::max);
    let back = after.rss.saturating_sub(baseline_rss) <= 32 * 1024 * 1024;
    after.note = format!(
        "peak RSS over the run {:.1} MiB; {} the baseline",
        mib(peak_rss),
        if back {
            "back within 32 MB of"
        } else {
            "NOT back within 32 MB of"
        }
    );
    after.pass = after.pass && back && peak_rss <= 256 * 1000 * 1000;
    rows.push(after);
    Ok(rows)
}

/// Runs the attack row `name` (one of [`ROWS`]) and adds its rows.
async fn attack_row(t: &Target, name: &str, rows: &mut Vec<Row>) -> Result<()> {
    match name {
        "handshake" => {
            let initials = capture_initials((ATTACK_SECS * 2000) as usize).await?;
            let from = (2..10).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
            let flood = handshake_flood(Arc::clone(&t.world), initials, t.probe, from);
            rows.push(t.measure("handshake flood", flood).await?);
        }
        "same-address" => {
            let initials = capture_initials((ATTACK_SECS * 2000) as usize).await?;
            let flood = handshake_flood(
                Arc::clone(&t.world),
                initials,
                t.probe,
                vec![Ipv4Addr::LOCALHOST],
            );
            rows.push(
                t.measure("handshake flood from the gate's address", flood)
                    .await?,
            );
        }
        "same-address-retry" => {
            let flood = retry_answering_flood(Arc::clone(&t.world), t.probe);
            rows.push(
                t.measure("Retry-answering flood from the gate's address", flood)
                    .await?,
            );
        }
        "queue" => {
            let queue = queue_flood(Arc::clone(&t.world), t.probe);
            rows.push(t.measure("queue flood (1 scanner)", queue).await?);
        }
        "over-limit" => {
            let over = raw_loops(Arc::clone(&t.world), t.probe, over_limit_frames(&t.world)?);
            rows.push(t.measure("over-limit batches (1 scanner)", over).await?);
        }
        "oversized" => {
            let big = raw_loops(Arc::clone(&t.world), t.probe, oversized_frames(&t.world)?);
            rows.push(t.measure("oversized tokens (1 scanner)", big).await?);
        }
        "forged" => {
            let clean = eights(Arc::clone(&t.world), t.probe, t.engine.pid(), t.ops, false);
            let clean = t.measure("batches of 8 (1 scanner)", clean).await?;
            let forged = eights(Arc::clone(&t.world), t.probe, t.engine.pid(), t.ops, true);
            let mut forged = t.measure("1 forged token in 8 (1 scanner)", forged).await?;
            if let (Some(a), Some(b)) = (cpu_of(&clean.note), cpu_of(&forged.note)) {
                forged.note = format!(
                    "{}; {:.2} x the CPU per token of the row above",
                    forged.note,
                    b / a
                );
            }
            rows.push(clean);
            rows.push(forged);
        }
        "slow" => {
            let slow = slow_bodies(Arc::clone(&t.world), t.probe);
            rows.push(t.measure("slow bodies", slow).await?);
        }
        "ops" => {
            rows.push(
                t.measure("ops port held open", hold_ops_port(t.ops))
                    .await?,
            );
        }
        other => bail!("no attack row {other} (rows: {})", ROWS.join(", ")),
    }
    Ok(())
}

/// 1. Half-open handshake flood: 2,000 Initials/s from eight addresses, never answered, while
///    the gate connects afresh every 400 ms; fails when one connect takes a second.
async fn handshake_flood(
    world: Arc<World>,
    initials: Vec<Vec<u8>>,
    probe: Probe,
    from: Vec<Ipv4Addr>,
) -> Result<String> {
    let Probe { addr, options } = probe;
    let initials = Arc::new(initials);
    let sender = tokio::task::spawn_blocking(move || send_initials(&initials, addr, &from));
    // Meanwhile, fresh connections of the gate, each timed.
    let mut worst = Duration::ZERO;
    for _ in 0..(ATTACK_SECS * 2) {
        let t = Instant::now();
        let c = ScannerClient::connect_with(addr, "localhost", world.identity("gate-a")?, options)
            .await;
        worst = worst.max(t.elapsed());
        if let Ok(c) = c {
            c.close().await;
        } else {
            worst = Duration::from_secs(99);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let sent = sender.await??;
    if worst >= Duration::from_secs(1) {
        bail!("a scanner took {worst:?} to connect");
    }
    Ok(format!("{sent} Initials; slowest connect {worst:.1?}"))
}

/// Requests one flooding scanner keeps in flight on each of its 3 connections (the outside
/// probe's depth).
const FLOOD_DEPTH: usize = 48;

/// 2. One scanner keeps 3 × FLOOD_DEPTH batches of 128 valid tokens in flight on 3 connections.
async fn queue_flood(world: Arc<World>, probe: Probe) -> Result<String> {
    let Probe { addr, options } = probe;
    let batch: Arc<Vec<Vec<u8>>> =
        Arc::new((0..128).map(|_| world.token()).collect::<Result<_>>()?);
    let busy = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let c = ScannerClient::connect_with(addr, "localhost", world.identity("flood-1")?, options)
            .await?;
        for _ in 0..FLOOD_DEPTH {
            let (c, batch, busy) = (c.clone(), Arc::clone(&batch), Arc::clone(&busy));
            tasks.push(tokio::spawn(async move {
                let end = Instant::now() + Duration::from_secs(ATTACK_SECS);
                for _ in 0..100_000 {
                    if Instant::now() > end {
                        break;
                    }
                    if let Ok(v) = c.verify_batch(&batch).await {
                        let b = v.iter().filter(|v| v.reason == Reason::Busy).count();
                        busy.fetch_add(b as u64, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(format!(
        "flooder told busy for {} tokens",
        busy.load(Ordering::Relaxed)
    ))
}

/// Request frames one scanner sends in turn: batches over the limits, which the server must
/// refuse whole (more than 128 tokens, 5,000 empty ones) or judge (128 real ones). Each with
/// what must come back: `None` for a refusal (an error response), or the verdict count.
type Frames = Vec<(Vec<u8>, Option<usize>)>;

/// A `VerifyBatch` frame of `tokens`.
fn batch(tokens: Vec<Vec<u8>>) -> Vec<u8> {
    gatehouse_protocol::Request::VerifyBatch {
        id: 1,
        tokens,
        retry: None,
    }
    .encode()
}

/// 2c. Over-limit batches: 129 empty tokens, 129 real ones, 5,000 empty ones (each refused
///     whole, error 1) and 128 real ones (judged).
fn over_limit_frames(world: &World) -> Result<Frames> {
    let real: Vec<Vec<u8>> = (0..129).map(|_| world.token()).collect::<Result<_>>()?;
    Ok(vec![
        (batch(vec![Vec::new(); 129]), None),
        (batch(real.clone()), None),
        (batch(vec![Vec::new(); 5000]), None),
        (batch(real[..128].to_vec()), Some(128)),
    ])
}

/// 2d. Oversized tokens: 127 real tokens and one of 769 bytes (the big one malformed, the
///     others judged), 128 tokens of 1,000 bytes (all malformed), and single verifies with an
///     oversized token and an oversized challenge (refused).
fn oversized_frames(world: &World) -> Result<Frames> {
    let mut mixed: Vec<Vec<u8>> = (0..127).map(|_| world.token()).collect::<Result<_>>()?;
    mixed.push(vec![0xa5; 769]);
    let single = |token: Vec<u8>, challenge: Option<Vec<u8>>| {
        gatehouse_protocol::Request::Verify {
            id: 1,
            token,
            challenge,
            retry: None,
        }
        .encode()
    };
    Ok(vec![
        (batch(mixed), Some(128)),
        (batch(vec![vec![0xa5; 1000]; 128]), Some(128)),
        (single(vec![0xa5; 769], None), None),
        (single(world.token()?, Some(vec![7; 4096])), None),
    ])
}

/// Runs 8 loops of one scanner, each sending `frames` in turn for ATTACK_SECS: every answer
/// must be what the frame asks for (an error for a refused frame, the right number of
/// verdicts for a judged one).
async fn raw_loops(world: Arc<World>, probe: Probe, frames: Frames) -> Result<String> {
    let Probe { addr, options } = probe;
    let c =
        ScannerClient::connect_with(addr, "localhost", world.identity("flood-1")?, options).await?;
    let frames = Arc::new(frames);
    let wrong = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for l in 0..8usize {
        let (c, frames, wrong, sent) = (
            c.clone(),
            Arc::clone(&frames),
            Arc::clone(&wrong),
            Arc::clone(&sent),
        );
        tasks.push(tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(ATTACK_SECS);
            for i in 0..1_000_000usize {
                if Instant::now() > end {
                    break;
                }
                let (frame, want) = &frames[(i + l) % frames.len()];
                sent.fetch_add(1, Ordering::Relaxed);
                let ok = match c.send_raw(frame).await {
                    Ok(responses) => match (responses.as_slice(), want) {
                        ([gatehouse_protocol::Response::Error { .. }], None) => true,
                        ([gatehouse_protocol::Response::Verdicts { verdicts, .. }], Some(n)) => {
                            verdicts.len() == *n
                        }
                        _ => false,
                    },
                    // A refused frame may also end its stream without an answer.
                    Err(_) => want.is_none(),
                };
                if !ok {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    c.close().await;
    let (wrong, sent) = (wrong.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
    if wrong > 0 {
        bail!("{wrong} of {sent} requests not answered as the SPEC says");
    }
    Ok(format!("{sent} requests, each answered as the SPEC says"))
}

/// Batches of 8 from one scanner a second.
const EIGHTS_PER_SEC: u64 = 250;

/// 2b. One scanner sends `VerifyBatch` of 8 fresh tokens, 250 a second (2,000 tokens/s), with
///     (`forged`) or without the third token's device signature forged. Every verdict is
///     checked. The note gives the engine's CPU per token over the row and its signature
///     counters (`/metrics`): failed equations, signatures routed to single checks, signatures
///     a multi-buffer call did not prove.
async fn eights(
    world: Arc<World>,
    probe: Probe,
    pid: u32,
    ops: SocketAddr,
    forged: bool,
) -> Result<String> {
    let Probe { addr, options } = probe;
    let batches = (ATTACK_SECS * EIGHTS_PER_SEC) as usize;
    let mut planned = Vec::with_capacity(batches);
    for _ in 0..batches {
        let mut batch: Vec<Vec<u8>> = (0..8).map(|_| world.token()).collect::<Result<_>>()?;
        if forged {
            let last = batch[2].len() - 1;
            batch[2][last] ^= 1;
        }
        planned.push(batch);
    }
    let c =
        ScannerClient::connect_with(addr, "localhost", world.identity("flood-1")?, options).await?;
    let before = gatehouse_loadtest::cpu::metrics_text(ops)
        .await
        .unwrap_or_default();
    let cpu0 = gatehouse_loadtest::cpu::process_cpu_secs(&pid.to_string());
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(batches);
    for (i, batch) in planned.into_iter().enumerate() {
        let at = start + Duration::from_micros(i as u64 * 1_000_000 / EIGHTS_PER_SEC);
        tokio::time::sleep_until(at.into()).await;
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.verify_batch(&batch).await }));
    }
    let (mut wrong, mut busy, mut failed) = (0usize, 0usize, 0usize);
    for t in tasks {
        match t.await? {
            Ok(v) => {
                for (j, v) in v.iter().enumerate() {
                    let want = if forged && j == 2 {
                        Reason::BadDeviceSignature
                    } else {
                        Reason::Accepted
                    };
                    match v.reason {
                        Reason::Busy => busy += 1,
                        r if r != want => wrong += 1,
                        _ => {}
                    }
                }
            }
            Err(_) => failed += 1,
        }
    }
    let cpu1 = gatehouse_loadtest::cpu::process_cpu_secs(&pid.to_string());
    let after = gatehouse_loadtest::cpu::metrics_text(ops)
        .await
        .unwrap_or_default();
    c.close().await;
    let delta = |name: &str| {
        let read = |body: &str| gatehouse_loadtest::cpu::metric_value(body, name);
        match (read(&before), read(&after)) {
            (Some(a), Some(b)) => format!("{}", b - a),
            _ => "?".into(),
        }
    };
    let tokens = (batches * 8) as f64;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => format!("{:.1} µs CPU/token", (b - a) / tokens * 1e6),
        _ => "CPU unknown".into(),
    };
    let note = format!(
        "{cpu}; {} busy; equations failed {}, signatures routed single {}, multi-buffer not \
         proven {}",
        busy,
        delta("gatehouse_signature_batches_failed_total"),
        delta("gatehouse_signatures_routed_single_total"),
        delta("gatehouse_multibuffer_unproven_total"),
    );
    if wrong > 0 || failed > 0 {
        bail!("{wrong} wrong verdicts, {failed} batches unanswered to the scanner; {note}");
    }
    Ok(note)
}

/// The µs of CPU per token a row's note gives.
fn cpu_of(note: &str) -> Option<f64> {
    note.split(" µs CPU/token").next()?.parse().ok()
}

/// 3. Slow bodies: 16 connections x 64 streams, each announcing 128 KiB and sending 100 KiB.
async fn slow_bodies(world: Arc<World>, probe: Probe) -> Result<String> {
    let Probe { addr, options } = probe;
    let mut held = Vec::new();
    let mut conns = Vec::new();
    let mut opened = 0;
    for _ in 0..16 {
        let Ok(c) =
            ScannerClient::connect_with(addr, "localhost", world.identity("slow-1")?, options)
                .await
        else {
            continue;
        };
        for _ in 0..64 {
            let Ok(Ok((mut send, recv))) =
                tokio::time::timeout(Duration::from_millis(200), c.connection().open_bi()).await
            else {
                break;
            };
            let mut head = [0u8; FRAME_HEADER_LEN];
            head[0] = gatehouse_protocol::WIRE_VERSION;
            head[1] = gatehouse_protocol::kind::VERIFY_BATCH;
            head[2..].copy_from_slice(&(128u32 * 1024).to_be_bytes());
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                send.write_all(&head).await?;
                send.write_all(&vec![0u8; 100 * 1024]).await
            })
            .await;
            opened += 1;
            held.push((send, recv));
        }
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_secs(ATTACK_SECS.saturating_sub(3))).await;
    drop(held);
    for c in conns {
        c.close().await;
    }
    Ok(format!("{opened} stalled bodies"))
}

/// 4. The operations port held open by 300 idle connections; /healthz probed 10 times a
///    second.
async fn hold_ops_port(ops: SocketAddr) -> Result<String> {
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(ops)).await
        {
            idle.push(s);
        }
    }
    let (mut ok, mut probes) = (0, 0);
    for _ in 0..(ATTACK_SECS * 10) {
        probes += 1;
        if healthz(ops).await {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(idle);
    if ok != probes {
        bail!("/healthz answered {ok} of {probes}");
    }
    Ok(format!("/healthz {ok}/{probes}"))
}

/// Prints the table; whether every row passed.
fn print_table(rows: &[Row]) -> bool {
    println!(
        "| attack | gate p99 | gate max | gate requests | errors | wrong verdicts | engine RSS | pass | notes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut all = true;
    for r in rows {
        all &= r.pass;
        let ms = |d: Duration| {
            if d == Duration::MAX {
                "no answer".to_string()
            } else {
                format!("{:.2} ms", d.as_secs_f64() * 1e3)
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} MiB | {} | {} |",
            r.attack,
            ms(r.p99),
            ms(r.max),
            r.sent,
            r.errors,
            r.wrong,
            mib(r.rss),
            if r.pass { "pass" } else { "FAIL" },
            r.note
        );
    }
    all
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Where the measuring gate connects, and how.
#[derive(Clone, Copy)]
struct Probe {
    addr: SocketAddr,
    options: ClientOptions,
}

/// The gate's answers: latency and reason of each verify (`None`: no answer).
type GateAnswers = Vec<(Duration, Option<Reason>)>;

/// Runs `attack` while the gate sends 100 verifies a second (open loop: each at its time,
/// whatever the answers do), for the attack's duration or ATTACK_SECS, whichever is longer.
///
/// The gate runs on a thread and runtime of its own, on a connection of its own: a real gate
/// is another device, so its latency must be the server's, not the time its requests wait
/// behind the attacker's tasks in this process's runtime.
async fn measure(
    world: &Arc<World>,
    probe: &Probe,
    attack: &'static str,
    engine: &Engine,
    run: impl std::future::Future<Output = Result<String>>,
) -> Result<Row> {
    let n = (ATTACK_SECS * GATE_RPS) as usize;
    // Signed ahead: the gate's own CPU must not slow its sending.
    let tokens: Vec<Vec<u8>> = (0..n).map(|_| world.token()).collect::<Result<_>>()?;
    let sampler = RssSampler::start(engine.child.id());
    let drops_before = udp_receive_drops();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let gate = spawn_gate(&engine.dir, probe.addr, tokens, ready_tx)?;
    // The attack starts once the gate is connected (a failed connect ends the gate thread).
    let _ = ready_rx.await;
    let attack_result = run.await;
    let answers = tokio::task::spawn_blocking(move || gate.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the gate thread panicked"))?;
    // A gate that could not connect (refused during the attack) fails the row, not the run:
    // every request it had to send counts as an error.
    let (answers, gate_failed) = match answers {
        Ok(a) => (a, None),
        Err(e) => (vec![(Duration::MAX, None); n], Some(format!("{e:#}"))),
    };
    let tally = GateTally::of(answers);
    let rss = sampler.stop().await;
    let (mut note, attack_ok) = match attack_result {
        Ok(note) => (note, true),
        Err(e) => (format!("{e:#}"), false),
    };
    if let Some(e) = gate_failed {
        note = format!("{note}; the gate: {e}");
    }
    if let (Some(a), Some(b)) = (drops_before, udp_receive_drops()) {
        let sep = if note.is_empty() { "" } else { "; " };
        note = format!(
            "{note}{sep}{} UDP datagrams dropped (host)",
            b.saturating_sub(a)
        );
    }
    Ok(Row {
        attack,
        p99: tally.p99,
        max: tally.max,
        sent: n,
        errors: tally.errors,
        wrong: tally.wrong,
        rss,
        pass: attack_ok
            && tally.errors == 0
            && tally.wrong == 0
            && tally.p99 <= Duration::from_millis(10),
        note,
    })
}

/// Samples the engine's resident memory every 100 ms and keeps the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling process `pid`.
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            tokio::spawn(async move {
                for _ in 0..10_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let s =
                        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                    if let Some(kb) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    {
                        peak.fetch_max(kb * 1024, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        RssSampler { stop, peak, task }
    }

    /// Stops sampling; the peak RSS seen, bytes.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

/// Starts the measuring gate in a process of its own (this binary's hidden `abuse-gate`
/// command): a real gate is another device, so its latency must be the server's, not time its
/// requests wait behind the attackers' tasks, or for a core, inside this process. It connects
/// as `gate-a` with the PKI under `dir`, says when it is connected (`ready`), sends `tokens`
/// at GATE_RPS (open loop), and prints each answer's latency and reason. The thread returned
/// waits for it (bounded: the gate's own requests time out).
fn spawn_gate(
    dir: &Path,
    addr: SocketAddr,
    tokens: Vec<Vec<u8>>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<std::thread::JoinHandle<Result<GateAnswers>>> {
    use std::io::{BufRead, BufReader, Write};
    let file = dir.join(format!(
        "gate-tokens-{}.bin",
        GATES.fetch_add(1, Ordering::Relaxed)
    ));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
    for t in &tokens {
        out.write_all(&u32::try_from(t.len())?.to_be_bytes())?;
        out.write_all(t)?;
    }
    out.flush()?;
    drop(out);
    let pki = dir.join("pki");
    let mut child = Command::new(std::env::current_exe()?)
        .arg("abuse-gate")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--pki")
        .arg(&pki)
        .arg("--tokens")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the gate process")?;
    let stdout = child.stdout.take().context("the gate's output")?;
    Ok(std::thread::Builder::new()
        .name("abuse-gate".into())
        .spawn(move || -> Result<GateAnswers> {
            let mut ready = Some(ready);
            let mut answers = Vec::with_capacity(tokens.len());
            for line in BufReader::new(stdout).lines() {
                let line = line?;
                if line == "ready" {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (Some(ns), Some(code)) = (parts.next(), parts.next()) else {
                    bail!("the gate printed {line:?}");
                };
                let latency = Duration::from_nanos(ns.parse()?);
                answers.push((latency, Reason::from_code(code.parse()?)));
            }
            let status = child.wait()?;
            let _ = std::fs::remove_file(&file);
            anyhow::ensure!(status.success(), "the gate process failed: {status}");
            Ok(answers)
        })?)
}

/// Gate processes started, for their token files' names.
static GATES: AtomicU64 = AtomicU64::new(0);

/// The hidden `abuse-gate` command: the measuring gate's process (see [`spawn_gate`]).
/// Prints `ready` once connected, then `<latency ns> <reason code>` per token (reason code
/// 255: no answer).
pub async fn gate_process(addr: SocketAddr, pki: &Path, tokens: &Path) -> Result<()> {
    let bytes = std::fs::read(tokens)?;
    let mut list = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 4 {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_be_bytes(len.try_into()?) as usize;
        anyhow::ensure!(len <= tail.len(), "truncated token file");
        let (t, tail) = tail.split_at(len);
        list.push(t.to_vec());
        rest = tail;
    }
    let identity = ClientIdentity::from_files(
        &pki.join("ca.pem"),
        &pki.join("scanners/gate-a.pem"),
        &pki.join("scanners/gate-a.key"),
    )?;
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let gate = ScannerClient::connect_with(addr, "localhost", identity, options)
        .await
        .context("the gate cannot connect")?;
    let start = Instant::now() + Duration::from_millis(200);
    println!("ready");
    let n = list.len();
    let mut sends = Vec::with_capacity(n);
    for (i, t) in list.into_iter().enumerate() {
        let gate = gate.clone();
        let at = start + Duration::from_micros(1_000_000 / GATE_RPS * i as u64);
        sends.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let r = gate.verify(&t, None).await;
            (at.elapsed(), r.ok().map(|v| v.reason))
        }));
    }
    let mut lines = String::with_capacity(n * 16);
    for s in sends {
        let (d, reason) = s.await.unwrap_or((Duration::MAX, None));
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        lines.push_str(&format!("{ns} {}\n", reason.map_or(255, |r| r.code())));
    }
    gate.close().await;
    print!("{lines}");
    Ok(())
}

/// What the gate's answers add up to.
struct GateTally {
    /// 99th percentile latency of the verdicts (`Duration::MAX`: none).
    p99: Duration,
    /// Slowest verdict.
    max: Duration,
    /// Verifies without an answer.
    errors: usize,
    /// Verdicts other than accepted.
    wrong: usize,
}

impl GateTally {
    /// Counts the errors and wrong verdicts of `answers`, and their latency percentiles.
    fn of(answers: GateAnswers) -> GateTally {
        let mut latencies = Vec::with_capacity(answers.len());
        let (mut errors, mut wrong) = (0, 0);
        for (d, reason) in answers {
            match reason {
                Some(Reason::Accepted) => latencies.push(d),
                Some(_) => {
                    latencies.push(d);
                    wrong += 1;
                }
                None => errors += 1,
            }
        }
        latencies.sort();
        GateTally {
            p99: latencies
                .get((latencies.len() * 99 / 100).saturating_sub(1))
                .copied()
                .unwrap_or(Duration::MAX),
            max: latencies.last().copied().unwrap_or(Duration::MAX),
            errors,
            wrong,
        }
    }
}

/// Datagrams this host dropped for a full socket receive buffer (`RcvbufErrors` in
/// `/proc/net/snmp`; every socket of the host, so other traffic counts too).
fn udp_receive_drops() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

async fn healthz(ops: SocketAddr) -> bool {
    let got =
        gatehouse_engine::client::ops::get_async(ops, "/healthz", Duration::from_secs(1), 4096);
    matches!(got.await, Ok(r) if r.status == 200)
}

/// 1c. Attackers at the gate's own address that answer Retry and go silent, 100 new ones a
///     second (each relayed, each alive for the row), while the gate connects afresh every
///     400 ms; fails when one connect takes a second.
async fn retry_answering_flood(world: Arc<World>, probe: Probe) -> Result<String> {
    let Probe { addr, options } = probe;
    let client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into())?;
    let config = stranger_config().map_err(|e| anyhow::anyhow!("{e}"))?;
    let attackers = {
        let client = client.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < Duration::from_secs(ATTACK_SECS) && n < ATTACK_SECS * 100 {
                let life = Duration::from_secs(ATTACK_SECS + 1).saturating_sub(start.elapsed());
                if silent_after_retry(addr, &client, &config, life)
                    .await
                    .is_ok()
                {
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };
    let mut worst = Duration::ZERO;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..(ATTACK_SECS * 2) {
        let t = Instant::now();
        let c = ScannerClient::connect_with(addr, "localhost", world.identity("gate-a")?, options)
            .await;
        worst = worst.max(t.elapsed());
        match c {
            Ok(c) => c.close().await,
            Err(_) => worst = Duration::from_secs(99),
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let n = attackers.await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    client.close(0u32.into(), b"");
    if worst >= Duration::from_secs(1) {
        bail!("{n} attackers; a scanner took {worst:?} to connect");
    }
    Ok(format!(
        "{n} attackers answering Retry; slowest connect {worst:.1?}"
    ))
}

/// `count` distinct client Initial datagrams (no client certificate), as a QUIC client sends
/// them: captured on a socket of ours, never sent anywhere by quinn.
async fn capture_initials(count: usize) -> Result<Vec<Vec<u8>>> {
    let sink = UdpSocket::bind("127.0.0.1:0")?;
    sink.set_read_timeout(Some(Duration::from_millis(200)))?;
    let target = sink.local_addr()?;
    let mut endpoint = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into())?;
    endpoint.set_default_client_config(stranger_config().map_err(|e| anyhow::anyhow!("{e}"))?);
    let mut out = Vec::with_capacity(count);
    // In rounds, so the client's own state stays small.
    while out.len() < count {
        let round = (count - out.len()).min(1000);
        let mut pending = Vec::with_capacity(round);
        for _ in 0..round {
            pending.push(endpoint.connect(target, "localhost")?);
        }
        let sink = sink.try_clone()?;
        let got = tokio::task::spawn_blocking(move || {
            let mut got = Vec::with_capacity(round);
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(10);
            while got.len() < round && Instant::now() < deadline {
                if let Ok(n) = sink.recv(&mut buf) {
                    got.push(buf[..n].to_vec());
                }
            }
            got
        })
        .await?;
        drop(pending);
        if got.is_empty() {
            bail!("no Initials captured");
        }
        out.extend(got);
    }
    endpoint.close(0u32.into(), b"");
    out.truncate(count);
    Ok(out)
}

/// Sends the Initials at 2,000 a second from 127.0.0.2–127.0.0.9; returns how many went.
fn send_initials(initials: &[Vec<u8>], target: SocketAddr, from: &[Ipv4Addr]) -> Result<usize> {
    let sockets = from
        .iter()
        .map(|ip| UdpSocket::bind((*ip, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let start = Instant::now();
    let mut sent = 0;
    for (i, d) in initials.iter().enumerate() {
        let due = start + Duration::from_micros(500 * i as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if start.elapsed() > Duration::from_secs(ATTACK_SECS + 5) {
            break;
        }
        if sockets[i % sockets.len()].send_to(d, target).is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}
