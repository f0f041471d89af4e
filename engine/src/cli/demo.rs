//! `gatehouse demo`: a morning rush over real QUIC, on embedded defaults.
//!
//! Generates a development PKI, an issuer and a synthetic population, starts the engine on
//! loopback, and sends an open-loop mix of valid, revoked, expired, replayed, forged and garbage
//! tokens from many scanner connections. Latency is measured from each request's *intended*
//! send time, so a slow server cannot hide its queueing (no coordinated omission). Every
//! verdict is compared with the one the population implies; a mismatch fails the run.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gatehouse_protocol::{Presentation, Reason};
use hdrhistogram::Histogram;
use rayon::prelude::*;
use serde::Serialize;

use gatehouse_engine::dev::population::{
    derive_id, derive_key, effective_revoked, expected, repeated, Population, PopulationSpec,
    Presented,
};
use gatehouse_engine::dev::progress::{Progress, ProgressMode};
use gatehouse_engine::Role;

/// Knobs of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Holders in the synthetic population.
    pub holders: usize,
    /// Scanner connections (spread over the standard gates, partners and counters).
    pub scanners: usize,
    /// Length of the rush.
    pub seconds: f64,
    /// Mean arrival rate (requests per second, Poisson).
    pub rate: f64,
    /// Print progress to stderr.
    pub progress: bool,
    /// Engine nodes; more than one share their one-time use on a loopback Redis.
    pub nodes: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            holders: 100_000,
            scanners: 36,
            seconds: 10.0,
            rate: 1000.0,
            progress: true,
            nodes: 1,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
}

/// What the demo prints (and `--json` emits).
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Requests answered.
    pub requests: u64,
    /// Answered requests per second of rush.
    pub throughput_rps: f64,
    /// From intended send time to verdict.
    pub latency_us: Latency,
    /// Verdicts by reason label.
    pub verdicts: BTreeMap<String, u64>,
    /// Verdicts that differ from the expected one.
    pub mismatches: u64,
    /// Requests that got no verdict (transport error or timeout).
    pub errors: u64,
    /// Mismatch examples (expected → got), at most 10.
    pub mismatch_examples: Vec<String>,
    /// Holders generated, and how long that took.
    pub holders: usize,
    /// Seconds spent generating the population.
    pub setup_secs: f64,
    /// Engine nodes.
    pub nodes: usize,
    /// Where one-time use was recorded (`memory`, or `redis` shared by the nodes).
    pub store: String,
}

/// One planned request.
#[derive(Clone)]
pub struct Planned {
    /// Offset of the intended send time from the start.
    pub at: Duration,
    /// Index of the scanner connection to send it on.
    pub scanner: usize,
    /// Token bytes.
    pub token: Vec<u8>,
    /// The verdict the population implies.
    pub expect: Reason,
    /// For replays: index of the request whose token this repeats (sent first).
    pub after: Option<usize>,
}

/// What sends a token and returns the verdict's reason (the QUIC client in the demo).
pub trait Transport: Send + Sync + 'static {
    /// Sends `token` on scanner connection `scanner`.
    fn verify(
        &self,
        scanner: usize,
        token: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reason>> + Send + '_>>;
}

/// A small deterministic PRNG (splitmix64) for the schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The request mix (per mille): the rest are valid presentations.
const MIX_REPLAY: u64 = 30;
const MIX_FORGED: u64 = 20;
const MIX_GARBAGE: u64 = 20;

/// Plans the rush: Poisson arrivals at `rate`, each a holder at a scanner its kind would
/// visit, with the verdict the population implies. Tokens are signed here, before the clock
/// starts, with timestamp `now` (the rush is shorter than the acceptance window).
pub fn plan(
    pop: &Population,
    scanner_ids: &[String],
    opts: &DemoOptions,
    now: u64,
    utc_offset: i32,
) -> Vec<Planned> {
    let revoked = effective_revoked(&pop.holders, &pop.revocations);
    let index: BTreeMap<&str, usize> = scanner_ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let partners: Vec<usize> = scanner_ids
        .iter()
        .enumerate()
        .filter(|(_, s)| s.starts_with("partner"))
        .map(|(i, _)| i)
        .collect();
    let ages: Vec<usize> = scanner_ids
        .iter()
        .enumerate()
        .filter(|(_, s)| s.starts_with("age"))
        .map(|(i, _)| i)
        .collect();
    let mut rng = Rng(0x6a7e_4008);
    let mut t = 0.0f64;
    let n = (opts.rate * opts.seconds).ceil() as usize;
    // Pass 1: arrival times, kinds, holders, scanners (cheap, sequential).
    struct Draft {
        at: f64,
        holder: usize,
        scanner: usize,
        kind: u64,
        replay_of: Option<usize>,
    }
    let mut drafts: Vec<Draft> = Vec::with_capacity(n);
    for _ in 0..n {
        t += -(1.0 - rng.unit()).ln() / opts.rate;
        if t >= opts.seconds {
            break;
        }
        let holder = rng.below(pop.holders.len() as u64) as usize;
        let c = &pop.holders[holder].credential;
        let gate = if c.category.is_family() {
            "welfare"
        } else {
            "gate"
        };
        let gate_id = format!("{gate}-{}-{}", c.unit.levels()[0], c.unit.levels()[1]);
        let where_ = rng.below(10);
        let scanner = match where_ {
            0..=5 => index.get(gate_id.as_str()).copied(),
            6..=8 => partners
                .get(rng.below(partners.len() as u64) as usize)
                .copied(),
            _ => ages.get(rng.below(ages.len() as u64) as usize).copied(),
        }
        .unwrap_or((rng.below(scanner_ids.len() as u64)) as usize);
        let kind = rng.below(1000);
        // A replay repeats a valid request sent at least 0.5 s earlier.
        let replay_of = if kind < MIX_REPLAY {
            let cutoff = t - 0.5;
            drafts
                .iter()
                .rposition(|d| {
                    d.at <= cutoff
                        && d.kind >= MIX_REPLAY + MIX_FORGED + MIX_GARBAGE
                        && d.replay_of.is_none()
                })
                .map(|j| j.saturating_sub(rng.below(50) as usize))
                .filter(|&j| {
                    drafts[j].kind >= MIX_REPLAY + MIX_FORGED + MIX_GARBAGE
                        && drafts[j].replay_of.is_none()
                })
        } else {
            None
        };
        let kind = if kind < MIX_REPLAY && replay_of.is_none() {
            999
        } else {
            kind
        };
        drafts.push(Draft {
            at: t,
            holder,
            scanner,
            kind,
            replay_of,
        });
    }
    // Pass 2: sign tokens in parallel.
    let tokens: Vec<(Vec<u8>, Reason)> = drafts
        .par_iter()
        .enumerate()
        .map(|(i, d)| {
            let h = &pop.holders[d.holder];
            let nonce = derive_id("demo nonce", i as u64);
            let role = &pop
                .scanners
                .get(&scanner_ids[d.scanner])
                .map(|s| s.role.clone())
                .unwrap_or(Role::Partner);
            if d.replay_of.is_some() {
                return (Vec::new(), Reason::Replayed);
            }
            if d.kind < MIX_REPLAY + MIX_FORGED {
                // Forged: signed by a key that is not the credential's device key.
                let thief = derive_key("demo thief", i as u64 % 64);
                let t = Presentation {
                    credential: &h.issued,
                    timestamp: now,
                    nonce,
                    challenge: None,
                }
                .sign(&thief);
                return (
                    t.unwrap_or_default(),
                    expected(
                        &h.credential,
                        revoked[d.holder],
                        role,
                        Presented::Forged,
                        now,
                        utc_offset,
                    ),
                );
            }
            if d.kind < MIX_REPLAY + MIX_FORGED + MIX_GARBAGE {
                let len = 1 + (i * 7919) % 400;
                let garbage: Vec<u8> = (0..len)
                    .map(|j| derive_id("garbage", (i * 1000 + j) as u64)[0])
                    .collect();
                return (garbage, Reason::Malformed);
            }
            let t = h.present(now, nonce, None).unwrap_or_default();
            (
                t,
                expected(
                    &h.credential,
                    revoked[d.holder],
                    role,
                    Presented::Genuine,
                    now,
                    utc_offset,
                ),
            )
        })
        .collect();
    let mut out: Vec<Planned> = drafts
        .iter()
        .zip(tokens)
        .map(|(d, (token, expect))| Planned {
            at: Duration::from_secs_f64(d.at),
            scanner: d.scanner,
            token,
            expect,
            after: d.replay_of,
        })
        .collect();
    // A replay repeats its original's bytes. If the original reached one-time use, the repeat
    // is a replay wherever it is shown; if it was refused before (revoked, expired, forged),
    // the repeat is refused for the same reason.
    for i in 0..out.len() {
        if let Some(j) = out[i].after {
            let orig = out[j].expect;
            out[i].token = out[j].token.clone();
            out[i].expect = repeated(orig);
        }
    }
    out
}

/// Runs the planned requests open-loop through `transport` and returns the report.
pub async fn rush(
    transport: Arc<dyn Transport>,
    planned: Vec<Planned>,
    opts: &DemoOptions,
) -> Result<DemoReport> {
    let planned = Arc::new(planned);
    let total = planned.len();
    let start = Instant::now() + Duration::from_millis(50);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Result<Reason>, Duration)>();
    let answered: Arc<Vec<tokio::sync::Notify>> =
        Arc::new((0..total).map(|_| tokio::sync::Notify::new()).collect());
    let flags: Arc<Vec<std::sync::atomic::AtomicBool>> = Arc::new(
        (0..total)
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect(),
    );

    let progress = Arc::new(Progress::new(
        ProgressMode::enabled(opts.progress),
        "rush",
        total as u64,
        "requests",
    ));

    for i in 0..total {
        let p = &planned[i];
        tokio::time::sleep_until((start + p.at).into()).await;
        let (transport, planned, tx, progress, answered, flags) = (
            transport.clone(),
            planned.clone(),
            tx.clone(),
            progress.clone(),
            answered.clone(),
            flags.clone(),
        );
        tokio::spawn(async move {
            let p = &planned[i];
            if let Some(j) = p.after {
                // A replay is only a replay once the original was answered.
                while !flags[j].load(Ordering::Acquire) {
                    let notified = answered[j].notified();
                    if flags[j].load(Ordering::Acquire) {
                        break;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
                }
            }
            let intended = start + p.at;
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                transport.verify(p.scanner, p.token.clone()),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            let latency = intended.elapsed();
            flags[i].store(true, Ordering::Release);
            answered[i].notify_waiters();
            progress.inc(1);
            let _ = tx.send((i, r, latency));
        });
    }
    drop(tx);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    let mut verdicts: BTreeMap<String, u64> = BTreeMap::new();
    let (mut requests, mut mismatches, mut errors) = (0u64, 0u64, 0u64);
    let mut examples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds + 30.0);
    while let Ok(Some((i, r, latency))) = tokio::time::timeout_at(deadline.into(), rx.recv()).await
    {
        match r {
            Ok(reason) => {
                requests += 1;
                let _ = hist.record((latency.as_micros() as u64).max(1));
                *verdicts.entry(reason.label().to_string()).or_default() += 1;
                if reason != planned[i].expect {
                    mismatches += 1;
                    if examples.len() < 10 {
                        examples.push(format!(
                            "request {i}: expected {}, got {}",
                            planned[i].expect, reason
                        ));
                    }
                }
            }
            Err(e) => {
                errors += 1;
                if examples.len() < 10 {
                    examples.push(format!("request {i}: {e:#}"));
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(opts.seconds);
    progress.finish();
    Ok(DemoReport {
        requests,
        throughput_rps: requests as f64 / elapsed,
        latency_us: Latency {
            p50: hist.value_at_quantile(0.5),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        },
        verdicts,
        mismatches: mismatches + errors,
        errors,
        mismatch_examples: examples,
        holders: 0,
        setup_secs: 0.0,
        nodes: 1,
        store: "memory".into(),
    })
}

/// Generates the demo's population.
pub fn population(opts: &DemoOptions, now: u64) -> Result<Population> {
    let progress = Progress::new(
        ProgressMode::enabled(opts.progress),
        "issuing credentials",
        opts.holders as u64,
        "holders",
    );
    let pop = Population::generate(
        &PopulationSpec {
            holders: opts.holders,
            seed: 1,
            now,
            revoked_per_mille: 30,
            expired_per_mille: 20,
        },
        &|n| progress.inc(n as u64),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    progress.finish();
    Ok(pop)
}

impl DemoReport {
    /// The human summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "gatehouse demo: {} holders (issued in {:.1} s)\n",
            self.holders, self.setup_secs
        ));
        if self.nodes > 1 {
            s.push_str(&format!(
                "  nodes           {} (one-time use shared on {}; each scanner's connections spread over the nodes)\n",
                self.nodes, self.store
            ));
        }
        s.push_str(&format!(
            "  requests        {}\n  throughput      {:.0} req/s\n",
            self.requests, self.throughput_rps
        ));
        s.push_str(&format!(
            "  latency (open-loop, from intended send time)\n    p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms\n",
            self.latency_us.p50 as f64 / 1e3,
            self.latency_us.p99 as f64 / 1e3,
            self.latency_us.p999 as f64 / 1e3,
            self.latency_us.max as f64 / 1e3
        ));
        s.push_str("  verdicts\n");
        for (k, v) in &self.verdicts {
            s.push_str(&format!("    {k:<22} {v}\n"));
        }
        s.push_str(&format!("  mismatches      {}\n", self.mismatches));
        for e in &self.mismatch_examples {
            s.push_str(&format!("    {e}\n"));
        }
        s
    }
}

/// The demo's transport: one QUIC connection per scanner certificate, round-robin when several
/// connections share a scanner.
struct Quic {
    clients: Vec<Vec<gatehouse_engine::client::ScannerClient>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Transport for Quic {
    fn verify(
        &self,
        scanner: usize,
        token: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reason>> + Send + '_>> {
        Box::pin(async move {
            let conns = self
                .clients
                .get(scanner)
                .context("no connection for this scanner")?;
            let c = &conns[self.next.fetch_add(1, Ordering::Relaxed) % conns.len().max(1)];
            Ok(c.verify(&token, None).await?.reason)
        })
    }
}

/// Longest rush: tokens are signed before the clock starts and must stay inside the 30 s
/// acceptance window until the last one is sent.
pub const MAX_SECONDS: f64 = 20.0;

/// Runs the whole demo: population, PKI, engine on loopback, rush, drain.
pub async fn run(opts: DemoOptions) -> Result<DemoReport> {
    anyhow::ensure!(opts.seconds > 0.0 && opts.seconds <= MAX_SECONDS, "--seconds must be in (0, {MAX_SECONDS}]: the demo signs its tokens ahead (use the load harness for long runs)");
    anyhow::ensure!(
        opts.rate > 0.0 && opts.rate <= 100_000.0,
        "--rate must be in (0, 100000]"
    );
    anyhow::ensure!(
        opts.holders >= 10 && opts.holders <= 2_000_000,
        "--holders must be in [10, 2000000]"
    );
    anyhow::ensure!(
        opts.scanners >= 1 && opts.scanners <= 1024,
        "--scanners must be in [1, 1024]"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t0 = Instant::now();
    if opts.progress {
        eprintln!("gatehouse demo: issuing {} credentials …", opts.holders);
    }
    let o = opts.clone();
    let pop = tokio::task::spawn_blocking(move || population(&o, now))
        .await
        .context("population task")??;
    let setup_secs = t0.elapsed().as_secs_f64();

    let ids: Vec<String> = pop.scanners.iter().map(|s| s.id.clone()).collect();
    let pki = gatehouse_engine::dev::pki::DevPki::generate(&ids).context("development PKI")?;
    // More than one node: one-time use on a loopback Redis the demo starts (and stops).
    let redis = if opts.nodes > 1 {
        let r = gatehouse_engine::dev::redis::RedisServer::start()
            .context("starting a loopback Redis for the nodes (scripts/redis-install)")?;
        // A server the demo just started holds no marks: its life starts without a fence.
        r.seed_life("gatehouse-demo:")
            .context("starting the demo store's life")?;
        Some(r)
    } else {
        None
    };
    let mut engine = None;
    let mut nodes = Vec::new();
    for _ in 0..opts.nodes {
        let node_engine = Arc::new(gatehouse_engine::Engine::new(
            gatehouse_engine::EngineConfig::default(),
            pop.trust_list(),
            pop.scanners.clone(),
        )?);
        node_engine.apply_revocations(&pop.revocations)?;
        let mut server_config = gatehouse_engine::server::ServerConfig::new(
            pki.server.chain(),
            pki.server.key(),
            pki.ca.chain(),
        );
        if let Some(r) = &redis {
            let config = gatehouse_engine::server::RedisConfig {
                urls: vec![r.url()],
                prefix: "gatehouse-demo:".into(),
                ..gatehouse_engine::server::RedisConfig::default()
            };
            let store = gatehouse_engine::server::SharedStore::connect(&config).await?;
            anyhow::ensure!(store.health().is_up(), "the demo's Redis does not answer");
            server_config.store = gatehouse_engine::server::Store::Shared(store);
        }
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(gatehouse_engine::server::run(
            node_engine.clone(),
            server_config,
            socket,
            None,
            async move {
                let _ = stop_rx.await;
            },
        ));
        engine.get_or_insert_with(|| node_engine.clone());
        nodes.push((addr, stop_tx, server));
    }
    let engine = engine.context("at least one node")?;
    let addrs: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.0).collect();

    let mut clients: Vec<Vec<gatehouse_engine::client::ScannerClient>> =
        vec![Vec::new(); ids.len()];
    for i in 0..opts.scanners.max(ids.len()) {
        let s = i % ids.len();
        let (_, issued) = &pki.scanners[s];
        let identity = gatehouse_engine::client::ClientIdentity {
            roots: pki.ca.chain(),
            chain: issued.chain(),
            key: issued.key(),
        };
        // Connection i of the fleet goes to node i: a scanner's connections (and so the
        // replays it sends) spread over every node.
        let addr = addrs[i % addrs.len()];
        clients[s].push(
            gatehouse_engine::client::ScannerClient::connect(addr, "localhost", identity)
                .await
                .context("scanner connection")?,
        );
    }
    let addr = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if opts.progress {
        eprintln!(
            "  engine on {addr}, {} scanner connections; signing the rush's tokens …",
            clients.iter().map(Vec::len).sum::<usize>()
        );
    }
    let o = opts.clone();
    let offset = engine.config().utc_offset_secs;
    let ids2 = ids.clone();
    let pop = Arc::new(pop);
    let p2 = pop.clone();
    let planned = tokio::task::spawn_blocking(move || plan(&p2, &ids2, &o, now, offset))
        .await
        .context("plan task")?;
    if opts.progress {
        eprintln!(
            "  morning rush: {} requests over {} s at {:.0}/s (open loop)",
            planned.len(),
            opts.seconds,
            opts.rate
        );
    }
    let transport = Arc::new(Quic {
        clients: clients.clone(),
        next: std::sync::atomic::AtomicUsize::new(0),
    });
    let mut report = rush(transport, planned, &opts).await?;
    report.holders = opts.holders;
    report.setup_secs = setup_secs;
    report.nodes = opts.nodes;
    report.store = match &redis {
        Some(r) => format!("redis {}", r.url()),
        None => "memory".into(),
    };
    for c in clients.iter().flatten() {
        c.close().await;
    }
    for (_, stop_tx, server) in nodes {
        let _ = stop_tx.send(());
        match tokio::time::timeout(Duration::from_secs(15), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e).context("server"),
            Ok(Err(e)) => return Err(anyhow::anyhow!("server task: {e}")),
            Err(_) => anyhow::bail!("server did not drain within 15 s"),
        }
    }
    drop(redis);
    Ok(report)
}
