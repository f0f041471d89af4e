//! Hostile traffic, the quick attacks: a real server (`server::run`) on 127.0.0.1, attackers
//! from other loopback addresses (127.0.0.2 and up) or other scanner certificates, and a
//! well-behaved gate scanner that measures while the attack runs.
//!
//! - a half-open handshake flood (client Initials, never finished) does not lock scanners out,
//!   and strangers get QUIC Retry once handshakes pile up;
//! - one scanner flooding the queue gets `busy`; the gate keeps its latency;
//! - under a deep flood of full batches another scanner's token waits for one small batch
//!   (counted under a clock that lets the server verify one batch per step);
//! - one scanner cannot open more than its connections;
//! - slow request bodies cannot make a connection hold more than its buffer;
//! - idle connections to the operations port do not starve `/healthz`;
//! - one oversized token in a batch gets `malformed` and the others are judged;
//! - wrong-ALPN handshakes are counted.
//!
//! The default suite asserts what the server does (verdicts, `busy`, refusals, bounded memory);
//! the wall-clock bounds (a connect within 1 s, the gate's p99 within a few flood batches,
//! `/healthz` within 1 s) are the `#[ignore]`d measurement variants of the same tests, run with
//! `--ignored` on a quiet machine; the harness (`gatehouse-loadtest abuse`) judges the same rows.
//! Every loop is bounded in count and time; traffic goes to loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/tokens.rs"]
mod tokens;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_engine::client::{ClientIdentity, ScannerClient};
use gatehouse_engine::core::{BatchMode, Batching, Clock, SystemClock};
use gatehouse_engine::dev::attack::{silent_after_retry, stranger_config};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population::{self, derive_key, Holder};
use gatehouse_engine::server::{self, ServerConfig, ServerError};
use gatehouse_engine::{Engine, EngineConfig, Role, Scanner, ScannerRegistry, DEFAULT_GATE_ADMITS};
use gatehouse_protocol::{Reason, Request, Response, UnitPath, FRAME_HEADER_LEN, MAX_TOKEN_LEN};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use tokens::{nonce, now};

const IDS: &[&str] = &["gate-a", "flood-1", "partner-flood"];
const LONG: Duration = Duration::from_secs(20);

struct World {
    pki: DevPki,
    issuer: gatehouse_protocol::PrivateKey,
}

impl World {
    fn new() -> World {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let ids: Vec<String> = IDS.iter().map(|s| s.to_string()).collect();
        World {
            pki: DevPki::generate(&ids).unwrap(),
            issuer: population::issuer_key(11),
        }
    }

    fn engine(&self) -> Arc<Engine> {
        self.engine_on(EngineConfig::default().batch)
    }

    /// An engine on one verification thread whose batch path is `batch`.
    fn engine_on(&self, batch: BatchMode) -> Arc<Engine> {
        let config = EngineConfig {
            threads: 1,
            replay_capacity: 200_000,
            issuer_cache_capacity: 10_000,
            batch,
            ..EngineConfig::default()
        };
        let mut r = ScannerRegistry::new();
        for id in IDS {
            let role = if id.starts_with("partner-") {
                Role::Partner
            } else {
                Role::Gate {
                    unit: UnitPath::new(&[1, 12]).unwrap(),
                    admits: DEFAULT_GATE_ADMITS.to_vec(),
                }
            };
            r.insert(Scanner {
                id: (*id).into(),
                role,
                mdoc: Default::default(),
            });
        }
        let trust = population::trust_list(&self.issuer);
        Arc::new(Engine::new(config, trust, r).unwrap())
    }

    fn identity(&self, id: &str) -> ClientIdentity {
        let s = self.pki.scanner(id).unwrap();
        ClientIdentity {
            roots: vec![self.pki.ca.cert_der.clone()],
            chain: s.chain(),
            key: s.key(),
        }
    }

    fn server_config(&self) -> ServerConfig {
        ServerConfig::new(
            self.pki.server.chain(),
            self.pki.server.key(),
            vec![self.pki.ca.cert_der.clone()],
        )
    }

    fn holder(&self, index: u64) -> Holder {
        let c = population::credential(now(), index);
        Holder::issue(&self.issuer, derive_key("hostile test device", index), c).unwrap()
    }
}

fn token(h: &Holder) -> Vec<u8> {
    h.present(now() - 2, nonce(), None).unwrap()
}

struct Server {
    addr: SocketAddr,
    ops: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

async fn start(engine: Arc<Engine>, config: ServerConfig) -> Server {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = ops.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(engine, config, socket, Some(ops), async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        ops: ops_addr,
        stop: Some(stop),
        task,
    }
}

impl Server {
    async fn client(&self, world: &World, id: &str) -> ScannerClient {
        timeout(
            LONG,
            ScannerClient::connect(self.addr, "localhost", world.identity(id)),
        )
        .await
        .expect("connects in time")
        .expect("connects")
    }

    async fn metric(&self, series: &str) -> f64 {
        let (status, body) = get(self.ops, "/metrics").await.expect("metrics answer");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        timeout(LONG, self.task)
            .await
            .expect("the drain ends in time")
            .unwrap()
            .unwrap();
    }
}

/// One HTTP/1.1 GET: (status, body), within 5 s.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    gatehouse_testkit::get(addr, path)
        .await
        .map(|r| (r.status, r.body))
}

/// This process's resident set, bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// `count` distinct client Initial datagrams, as a QUIC client sends them to open a connection
/// (no client certificate): captured on a socket of ours, never sent to the server by quinn.
async fn capture_initials(count: usize) -> Vec<Vec<u8>> {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let target = sink.local_addr().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let world_ca = DevPki::generate(&[]).unwrap();
    roots.add(world_ca.ca.cert_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![gatehouse_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let mut pending = Vec::with_capacity(count);
    for _ in 0..count {
        pending.push(endpoint.connect(target, "localhost").unwrap());
    }
    let initials = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(count);
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < count && Instant::now() < deadline {
            if let Ok(n) = sink.recv(&mut buf) {
                out.push(buf[..n].to_vec());
            }
        }
        out
    })
    .await
    .unwrap();
    drop(pending);
    endpoint.close(0u32.into(), b"");
    initials
}

/// The gate connects afresh `times` times (each within 5 s, never refused) and has a token
/// accepted each time.
async fn gate_connects_and_verifies(server: &Server, world: &World, h: &Holder, times: usize) {
    for attempt in 0..times {
        let gate = timeout(
            Duration::from_secs(5),
            ScannerClient::connect(server.addr, "localhost", world.identity("gate-a")),
        )
        .await
        .unwrap_or_else(|_| panic!("attempt {attempt}: no answer"))
        .unwrap_or_else(|e| panic!("attempt {attempt}: the gate was refused: {e}"));
        let v = gate.verify(&token(h), None).await.unwrap();
        assert_eq!(v.reason, Reason::Accepted);
        gate.close().await;
    }
}

/// Scanners behind one NAT address with a flood from inside it: 300 Initials from 127.0.0.1,
/// the gate's own address, never answered. The source's share of unvalidated handshakes fills
/// (8), and every Initial after it gets a stateless Retry, which the flood never answers; the
/// gate answers it and connects, every time. Before, the flood filled the source's 32 slots
/// and the gate was refused until the half-open handshakes timed out (10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_the_gates_own_address_gets_retry_and_the_gate_connects() {
    let world = World::new();
    let server = start(world.engine(), world.server_config()).await;
    let h = world.holder(2);
    let initials = capture_initials(300).await;
    assert!(initials.len() >= 250, "captured {}", initials.len());
    let target = server.addr;
    tokio::task::spawn_blocking(move || {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        for d in &initials {
            let _ = socket.send_to(d, target);
            // 2,000 a second: paced, so the host's receive buffer does not drop them.
            std::thread::sleep(Duration::from_micros(500));
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate_connects_and_verifies(&server, &world, &h, 3).await;
    let retries = server.metric("gatehouse_quic_retries_total").await;
    eprintln!("{retries} Retry answers");
    assert!(
        retries >= 150.0,
        "the flood past the source's share was answered with Retry ({retries})"
    );
    assert!(server.metric("gatehouse_handshakes").await <= 9.0);
    server.shutdown().await;
}

/// The same address, and an attacker inside it that answers Retry and then goes silent: 48
/// unfinished handshakes from 127.0.0.1, 40 of them validated. The source's validated
/// handshakes are capped (32), and the gate's, validated after its own Retry, evicts the
/// oldest unfinished one (older than 250 ms): the gate connects every time. Before, the attackers held the
/// source's 32 slots and the gate was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_answering_retry_at_the_gates_address_cannot_lock_the_gate_out() {
    let world = World::new();
    let server = start(world.engine(), world.server_config()).await;
    let h = world.holder(3);
    let client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let config = stranger_config().unwrap();
    let mut relays = Vec::new();
    for _ in 0..48 {
        relays.push(
            silent_after_retry(server.addr, &client, &config, LONG)
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = server.metric("gatehouse_handshakes").await;
    assert!(held >= 32.0, "the attackers hold {held} handshakes");
    gate_connects_and_verifies(&server, &world, &h, 3).await;
    // The gate's first handshake evicted the oldest attacker (older than 250 ms); its own
    // finished and freed its place, so the next ones found room.
    assert!(server.metric("gatehouse_handshakes_evicted_total").await >= 1.0);
    for r in relays {
        r.abort();
    }
    client.close(0u32.into(), b"");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_handshake_flood_does_not_lock_scanners_out() {
    handshake_flood(false).await;
}

/// The same flood, and every scanner connection during it within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: a wall-clock bound; run with --ignored on a quiet machine (the harness, gatehouse-loadtest abuse, judges the same rows)"]
async fn a_half_open_handshake_flood_leaves_scanners_connecting_within_a_second() {
    handshake_flood(true).await;
}

async fn handshake_flood(bound_latency: bool) {
    let world = World::new();
    let server = start(world.engine(), world.server_config()).await;
    let h = world.holder(1);
    let initials = capture_initials(3000).await;
    assert!(initials.len() >= 2000, "captured {}", initials.len());
    // After the capture, whose client-side state is this process's too.
    let before = rss();
    // The flood: 2,000 Initials a second for 1.5 s, from eight addresses, never answered.
    let target = server.addr;
    let flood = tokio::task::spawn_blocking(move || {
        let sockets: Vec<UdpSocket> = (2..10)
            .map(|i| UdpSocket::bind((Ipv4Addr::new(127, 0, 0, i), 0)).unwrap())
            .collect();
        let start = Instant::now();
        for (i, d) in initials.iter().enumerate() {
            let due = start + Duration::from_micros(500 * i as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let _ = sockets[i % sockets.len()].send_to(d, target);
            if start.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
    });

    // Meanwhile a gate scanner connects afresh, again and again, and verifies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..8 {
        let t = Instant::now();
        let gate = timeout(
            Duration::from_secs(5),
            ScannerClient::connect(server.addr, "localhost", world.identity("gate-a")),
        )
        .await
        .expect("connects during the flood")
        .expect("connects during the flood");
        worst = worst.max(t.elapsed());
        eprintln!("connected during the flood in {:?}", t.elapsed());
        let v = gate.verify(&token(&h), None).await.unwrap();
        assert_eq!(v.reason, Reason::Accepted);
        gate.close().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timeout(LONG, flood).await.unwrap().unwrap();
    eprintln!("slowest connect during the flood: {worst:?}");
    if bound_latency {
        assert!(
            worst < Duration::from_secs(1),
            "a scanner took {worst:?} to connect during the flood"
        );
    }
    assert!(
        server.metric("gatehouse_quic_retries_total").await > 0.0,
        "strangers were not asked to validate their address"
    );
    assert!(server.metric("gatehouse_handshakes").await <= 1024.0);
    let grown = rss().saturating_sub(before);
    // Unbounded, the flood held ~85 KiB per half-open connection: 3,000 of them are ~250 MiB.
    assert!(grown < 96 * 1024 * 1024, "RSS grew by {} MiB", grown >> 20);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scanner_flooding_the_queue_gets_busy_and_the_gate_keeps_right_verdicts() {
    queue_flood(false).await;
}

/// The same flood, and the gate's p99 within a few flood batches (fairness, timed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: a wall-clock bound; run with --ignored on a quiet machine (the harness, gatehouse-loadtest abuse, judges the same rows)"]
async fn one_scanner_flooding_the_queue_leaves_the_gate_its_latency() {
    queue_flood(true).await;
}

async fn queue_flood(bound_latency: bool) {
    let world = World::new();
    let server = start(world.engine(), world.server_config()).await;
    let gate = server.client(&world, "gate-a").await;
    // The flood: the same 128 valid tokens (replays cost a full signature check), 3
    // connections x 16 batches in flight, for at most 4 s.
    let batch: Arc<Vec<Vec<u8>>> =
        Arc::new((0..128).map(|i| token(&world.holder(1000 + i))).collect());
    // One flood batch alone: the unit the fairness bound is counted in (a test build verifies
    // far slower than a release one).
    let lone = server.client(&world, "flood-1").await;
    let mut batch_time = Duration::ZERO;
    for _ in 0..3 {
        let t = Instant::now();
        lone.verify_batch(&batch).await.unwrap();
        batch_time = batch_time.max(t.elapsed());
    }
    lone.close().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    for _ in 0..3 {
        let c = server.client(&world, "flood-1").await;
        for _ in 0..16 {
            let (c, batch, stop, busy) = (
                c.clone(),
                Arc::clone(&batch),
                Arc::clone(&stop),
                Arc::clone(&busy),
            );
            flooders.push(tokio::spawn(async move {
                let end = Instant::now() + Duration::from_secs(4);
                for _ in 0..1000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > end {
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The gate: 100 verifies, one every 10 ms.
    let holders: Vec<Holder> = (0..100).map(|i| world.holder(i)).collect();
    let mut latencies = Vec::new();
    let mut wrong = 0;
    for h in &holders {
        let t = token(h);
        let started = Instant::now();
        let v = gate.verify(&t, None).await.expect("no errors for the gate");
        latencies.push(started.elapsed());
        if v.reason != Reason::Accepted {
            wrong += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        timeout(LONG, f).await.unwrap().unwrap();
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    assert_eq!(wrong, 0, "the gate got wrong verdicts");
    assert!(
        busy.load(Ordering::Relaxed) > 0,
        "the flooder was never told busy"
    );
    // At its share, the flooder's requests were held unread before being refused.
    assert!(
        server.metric("gatehouse_busy_holds_total").await > 0.0,
        "the flooder's requests were never held"
    );
    // Fair, the gate waits for the batches already verifying (at most one per thread, each of
    // small pieces) and one turn of the flooder: well under 3 flood-batch times. Without fairness it waited behind the whole
    // queue, 4,096 tokens: 32 batch times.
    eprintln!("flood batch alone {batch_time:?}, gate p99 {p99:?}");
    if bound_latency {
        assert!(
            p99 < batch_time * 8 + Duration::from_millis(20),
            "gate p99 {p99:?}, one flood batch alone {batch_time:?}"
        );
    }
    server.shutdown().await;
}

/// A clock the test can hold. While it is held, the first thread that reads it stands still
/// until the test lets one read through ([`Stepper::step`]); while one thread stands, the
/// others read freely (the metrics scrape, the replay purge). A verification turn reads the
/// clock once per batch, after taking the batch and before verifying it: held, the server's
/// turn verifies one batch per step, and between steps the queue stands still at a known point
/// while the other runtime thread goes on reading requests. Every wait is bounded.
#[derive(Debug, Default)]
struct Stepper {
    state: std::sync::Mutex<Steps>,
    moved: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct Steps {
    held: bool,
    standing: bool,
    /// Reads that stood so far.
    stops: u64,
    /// Reads let through and not yet taken.
    permits: u64,
}

impl Clock for Stepper {
    fn now_ms(&self) -> u64 {
        let mut s = self.state.lock().unwrap();
        if s.held && !s.standing {
            s.standing = true;
            s.stops += 1;
            let end = Instant::now() + LONG;
            while s.held && s.permits == 0 && Instant::now() < end {
                s = self
                    .moved
                    .wait_timeout(s, Duration::from_millis(20))
                    .unwrap()
                    .0;
            }
            s.permits = s.permits.saturating_sub(1);
            s.standing = false;
        }
        drop(s);
        SystemClock.now_ms()
    }
}

impl Stepper {
    fn set(&self, f: impl FnOnce(&mut Steps)) {
        f(&mut self.state.lock().unwrap());
        self.moved.notify_all();
    }

    fn hold(&self) {
        self.set(|s| s.held = true);
    }

    fn release(&self) {
        self.set(|s| s.held = false);
    }

    /// Lets the standing read through.
    fn step(&self) {
        self.set(|s| s.permits += 1);
    }

    /// Waits (at most [`LONG`]) until a read stands as the `stop`-th.
    async fn standing(&self, stop: u64) {
        let end = Instant::now() + LONG;
        loop {
            {
                let s = self.state.lock().unwrap();
                if s.standing && s.stops == stop {
                    return;
                }
                assert!(
                    s.stops <= stop,
                    "read {} stood, waiting for {stop}",
                    s.stops
                );
            }
            assert!(Instant::now() < end, "no read stood as the {stop}th");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Verdicts the engine gave scanners of this role index (gate 0, partner 1), any reason.
fn verdicts_of(engine: &Engine, role: usize) -> u64 {
    Reason::ALL
        .iter()
        .map(|r| engine.stats().verdicts(role, *r))
        .sum()
}

/// A deep flood of full batches, and another scanner's token, under a controlled scheduler:
/// one partner scanner has 6 requests of 128 tokens in flight on one connection (768 tokens,
/// within its share), and the server's one verification turn stands at its first batch (the
/// [`Stepper`] clock) until all of them and one gate token are admitted; then the test lets it
/// verify one batch per step, and counts, from the engine's own verdict counters, how many
/// flood tokens were judged by the time the gate's token was. Fair, that is the batch ahead of
/// it and the flood's slice of its own (8 + 8). On multi-buffer calls; the equation takes up to
/// 32 a turn under a backlog by design, so the test runs where multi-buffer runs (everywhere
/// with `GATEHOUSE_REQUIRE_MB=1`). It failed twice before: with the fair queue crediting a
/// scanner that arrives mid-flood one pass late (24: two flood batches ahead of the gate's),
/// and with turns on any batch path taking 32 under a backlog (64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_deep_full_batch_flood_the_gate_waits_for_one_small_batch() {
    if Batching::resolve(BatchMode::Multibuffer, false, 0).is_err() {
        assert!(
            std::env::var_os("GATEHOUSE_REQUIRE_MB").is_none_or(|v| v != "1"),
            "GATEHOUSE_REQUIRE_MB=1 but multi-buffer cannot run here"
        );
        eprintln!("multi-buffer cannot run here: skipped");
        return;
    }
    let world = World::new();
    let engine = world.engine_on(BatchMode::Multibuffer);
    let clock = Arc::new(Stepper::default());
    let mut config = world.server_config();
    config.clock = Arc::clone(&clock) as Arc<dyn Clock>;
    let server = start(Arc::clone(&engine), config).await;
    let gate = server.client(&world, "gate-a").await;
    let flood = server.client(&world, "partner-flood").await;
    let batch: Arc<Vec<Vec<u8>>> =
        Arc::new((0..128).map(|i| token(&world.holder(3000 + i))).collect());
    // Both connections made and warm.
    let v = gate
        .verify(&token(&world.holder(2999)), None)
        .await
        .unwrap();
    assert_eq!(v.reason, Reason::Accepted);
    flood.verify_batch(&batch).await.unwrap();
    // A read of the clock by the replay purge (once a second) could stand instead of the
    // turn; the batches counted at each stop show which read stood, and an attempt where
    // it was not the turn is made again.
    let mut judged = None;
    for attempt in 0..3 {
        let before = (verdicts_of(&engine, 0), verdicts_of(&engine, 1));
        let batches = server.metric("gatehouse_batch_size_count").await;
        let stops = clock.state.lock().unwrap().stops;
        clock.hold();
        let requests: Vec<_> = (0..6)
            .map(|_| {
                let (flood, batch) = (flood.clone(), Arc::clone(&batch));
                tokio::spawn(async move { flood.verify_batch(&batch).await })
            })
            .collect();
        clock.standing(stops + 1).await;
        let gate_token = token(&world.holder(4000 + attempt));
        let gate_verdict = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.verify(&gate_token, None).await })
        };
        // Every flood token and the gate's admitted while the turn stands at its first batch.
        let end = Instant::now() + LONG;
        while server.metric("gatehouse_queue_depth").await < (6 * 128 + 1) as f64 {
            assert!(Instant::now() < end, "the requests were not admitted");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut the_turn = true;
        let mut stop = stops + 1;
        while verdicts_of(&engine, 0) == before.0 && stop < stops + 200 {
            let taken = server.metric("gatehouse_batch_size_count").await - batches;
            the_turn &= taken == (stop - stops) as f64;
            clock.step();
            stop += 1;
            clock.standing(stop).await;
        }
        let flood_first = verdicts_of(&engine, 1) - before.1;
        clock.release();
        let v = gate_verdict.await.unwrap().unwrap();
        assert_eq!(v.reason, Reason::Accepted);
        for r in requests {
            let verdicts = timeout(LONG, r).await.unwrap().unwrap().unwrap();
            assert_eq!(verdicts.len(), 128);
        }
        eprintln!(
            "attempt {attempt}: {flood_first} flood tokens judged by the time the gate's was, \
             {} steps (the turn stood at each: {the_turn})",
            stop - stops - 1
        );
        if the_turn {
            judged = Some(flood_first);
            break;
        }
    }
    let judged = judged.expect("the turn stood in one of 3 attempts");
    assert!(
        judged <= 16,
        "the gate's token was judged after {judged} flood tokens; its fair share is one small \
         batch ahead and the flood's slice of its own (16)"
    );
    server.shutdown().await;
}

/// A connection may open 16 request streams until its scanner is admitted (the QUIC stack
/// sets up state for every stream a connection may open, so a half-open handshake costs 16
/// streams' worth, not 256), and an admitted scanner gets its `max_streams_per_connection`
/// (256 by default) at once: it opens 240 without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_scanner_gets_its_full_request_streams() {
    let world = World::new();
    let server = start(world.engine(), world.server_config()).await;
    let gate = server.client(&world, "gate-a").await;
    // The first request's answer comes after the server raised the limit.
    let v = gate.verify(&token(&world.holder(5)), None).await.unwrap();
    assert_eq!(v.reason, Reason::Accepted);
    let mut open = Vec::new();
    for i in 0..240 {
        let stream = timeout(Duration::from_secs(5), gate.connection().open_bi())
            .await
            .unwrap_or_else(|_| panic!("stream {i}: no stream credit"))
            .unwrap();
        open.push(stream);
    }
    assert_eq!(open.len(), 240);
    drop(open);
    gate.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scanner_cannot_open_more_than_its_connections() {
    let world = World::new();
    let mut config = world.server_config();
    config.limits.max_connections_per_scanner = 2;
    let server = start(world.engine(), config).await;
    let h = world.holder(7);
    let a = server.client(&world, "flood-1").await;
    let b = server.client(&world, "flood-1").await;
    // A client's handshake can finish before the server's: an answered ping shows the server
    // holds the connection's slot, so the third connection is the one over the limit.
    assert!(a.ping().await.is_ok());
    assert!(b.ping().await.is_ok());
    let c = server.client(&world, "flood-1").await;
    let closed = timeout(Duration::from_secs(5), c.connection().closed())
        .await
        .expect("the third connection is closed");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, server::codes::TOO_MANY_CONNECTIONS)
        }
        other => panic!("closed with {other}"),
    }
    assert!(a.verify(&token(&h), None).await.is_ok());
    assert!(b.ping().await.is_ok());
    // Another scanner is not affected.
    let gate = server.client(&world, "gate-a").await;
    assert!(gate.ping().await.is_ok());
    assert_eq!(
        server
            .metric("gatehouse_connections_refused_total{cause=\"scanner_limit\"}")
            .await,
        1.0
    );
    // A slot is given back when a connection ends.
    a.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = server.client(&world, "flood-1").await;
    assert!(d.ping().await.is_ok());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_cannot_make_a_connection_hold_more_than_its_buffer() {
    let world = World::new();
    let mut config = world.server_config();
    config.limits.max_buffered_per_connection = 256 * 1024;
    let server = start(world.engine(), config).await;
    let slow = server.client(&world, "flood-1").await;
    // 16 streams, each announcing a 128 KiB batch and sending 100 KiB of it, then stalling.
    let mut streams = Vec::new();
    for _ in 0..16 {
        let (mut send, recv) = slow.connection().open_bi().await.unwrap();
        let mut head = [0u8; FRAME_HEADER_LEN];
        head[0] = gatehouse_protocol::WIRE_VERSION;
        head[1] = gatehouse_protocol::kind::VERIFY_BATCH;
        head[2..].copy_from_slice(&(128u32 * 1024).to_be_bytes());
        let _ = timeout(Duration::from_secs(2), async {
            send.write_all(&head).await?;
            send.write_all(&vec![0u8; 100 * 1024]).await
        })
        .await;
        streams.push((send, recv));
    }
    // The server reads the bodies up to the connection's buffer (waited for, not slept on: a
    // server that read nothing would pass an upper bound alone) ...
    let mut used = 0.0;
    for _ in 0..500 {
        used = server.metric("gatehouse_memory_budget_used_bytes").await;
        if used >= 200.0 * 1024.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        used >= 200.0 * 1024.0,
        "the bodies were not read: {used} bytes held"
    );
    // ... and no further: two connections' fixed costs plus at most 256 KiB of bodies, however
    // long the streams stall (unbounded it was 16 x 128 KiB).
    for _ in 0..10 {
        let used = server.metric("gatehouse_memory_budget_used_bytes").await;
        assert!(
            used <= (256.0 + 64.0) * 1024.0,
            "the budget holds {used} bytes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gate = server.client(&world, "gate-a").await;
    let v = gate.verify(&token(&world.holder(3)), None).await.unwrap();
    assert_eq!(v.reason, Reason::Accepted);
    drop(streams);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_the_operations_port_do_not_starve_healthz() {
    idle_ops_connections(false).await;
}

/// The same, and every `/healthz` within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: a wall-clock bound; run with --ignored on a quiet machine (the harness, gatehouse-loadtest abuse, judges the same rows)"]
async fn idle_connections_to_the_operations_port_leave_healthz_within_a_second() {
    idle_ops_connections(true).await;
}

async fn idle_ops_connections(bound_latency: bool) {
    let world = World::new();
    let server = start(world.engine(), world.server_config()).await;
    // 400 connections that never send a byte: more than the port holds at once.
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(Ok(s)) = timeout(Duration::from_secs(1), TcpStream::connect(server.ops)).await {
            idle.push(s);
        }
    }
    assert!(idle.len() >= 300, "opened {}", idle.len());
    for _ in 0..10 {
        let t = Instant::now();
        let (status, body) = get(server.ops, "/healthz").await.expect("healthz answers");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        if bound_latency {
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "healthz took {:?}",
                t.elapsed()
            );
        }
        let (status, _) = get(server.ops, "/readyz").await.expect("readyz answers");
        assert_eq!(status, 200);
    }
    drop(idle);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_oversized_token_in_a_batch_is_malformed_and_the_others_are_judged() {
    let world = World::new();
    let server = start(world.engine(), world.server_config()).await;
    let gate = server.client(&world, "gate-a").await;
    // 40 tokens: the server verifies a large request in pieces of 16, and the verdicts must
    // come back in request order across them. Oversized at 1 and 33; 20 is garbage.
    let mut tokens: Vec<Vec<u8>> = (0..40).map(|i| token(&world.holder(1 + i))).collect();
    tokens[1] = vec![0xa5; MAX_TOKEN_LEN + 1];
    tokens[33] = vec![0xa5; MAX_TOKEN_LEN + 1];
    tokens[20] = vec![0x00; 8];
    let frame = Request::VerifyBatch {
        id: 9,
        tokens,
        retry: None,
    }
    .encode();
    let responses = gate.send_raw(&frame).await.unwrap();
    let [Response::Verdicts { id, verdicts }] = responses.as_slice() else {
        panic!("{responses:?}");
    };
    assert_eq!(*id, 9);
    let reasons: Vec<Reason> = verdicts.iter().map(|v| v.reason).collect();
    let expected: Vec<Reason> = (0..40)
        .map(|i| match i {
            1 | 20 | 33 => Reason::Malformed,
            _ => Reason::Accepted,
        })
        .collect();
    assert_eq!(reasons, expected);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_alpn_handshakes_are_counted() {
    let world = World::new();
    let server = start(world.engine(), world.server_config()).await;
    let id = world.identity("gate-a");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.roots[0].clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(id.chain, id.key)
        .unwrap();
    tls.alpn_protocols = vec![b"not-gatehouse".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    for _ in 0..3 {
        let r = timeout(
            Duration::from_secs(5),
            endpoint.connect(server.addr, "localhost").unwrap(),
        )
        .await
        .expect("the handshake ends in time");
        assert!(r.is_err(), "a wrong ALPN was accepted");
    }
    // The server counts a failure when its connection task sees it, which may be just after
    // the client has: bounded polling, not a sleep.
    let mut failures = 0.0;
    for _ in 0..100 {
        failures = server.metric("gatehouse_handshake_failures_total").await;
        if failures >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failures >= 3.0, "{failures} handshake failures counted");
    endpoint.close(0u32.into(), b"");
    server.shutdown().await;
}
