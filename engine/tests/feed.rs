//! The revocation feed over real QUIC: a fleet of nodes (`server::run` on 127.0.0.1:0), each
//! following an HTTP feed that this test serves itself on loopback, with lists signed by a
//! revocation key the trust list names.
//!
//! - a revocation published once is enforced by every node within the feed interval (the
//!   measured delay is printed), and reinstating the sponsor restores the family everywhere;
//! - a node that was down catches up from a snapshot;
//! - unsigned, forged and foreign-key lists are refused, counted by why, and the state kept;
//! - a gap in the deltas makes the node fetch the snapshot;
//! - a node started with only a delta on disk fetches what it needs;
//! - a node whose feed goes away fails closed past its maximum age, and says so on `/readyz`;
//! - nodes follow a feed kept in Redis (a `redis-server` on a loopback port, when installed).
//!
//! Every wait is bounded by a deadline, every loop by a count; every server is stopped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/tokens.rs"]
mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_engine::client::{ClientIdentity, ScannerClient};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population::{self, derive_key, Holder};
use gatehouse_engine::server::feed::FeedHead;
use gatehouse_engine::server::{
    self, FeedConfig, FeedSource, OfflinePolicy, ServeConfig, ServerConfig, ServerError,
};
use gatehouse_engine::{
    compact, Engine, EngineConfig, RevocationKey, Role, Scanner, ScannerRegistry, TrustList,
    DEFAULT_GATE_ADMITS,
};
use gatehouse_protocol::{
    CredentialType, HolderCategory, PrivateKey, Reason, RevocationEntry, RevocationKind,
    RevocationList, UnitPath,
};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use tokens::{nonce, now};

const LONG: Duration = Duration::from_secs(20);
/// The feed interval of these tests' nodes.
const INTERVAL: Duration = Duration::from_millis(500);

/// The feed as a publisher keeps it, served over HTTP on loopback by the test itself. The
/// publisher is another machine in a fleet: it serves from a thread and runtime of its own,
/// and hands out shared bytes (no copy of a snapshot per request), so that serving an 18 MB
/// snapshot does not run on the node's runtime threads.
#[derive(Clone)]
struct Feed {
    objects: Arc<Mutex<HashMap<String, Arc<Vec<u8>>>>>,
    /// While set, every request gets a 503 (the link to the feed is down).
    down: Arc<AtomicBool>,
    /// GET requests per object name.
    hits: Arc<Mutex<HashMap<String, u64>>>,
    key: Arc<PrivateKey>,
    base: String,
}

impl Feed {
    /// Starts serving; the server's thread stops when the returned task is aborted or
    /// dropped.
    async fn start(key: PrivateKey) -> (Feed, JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let feed = Feed {
            objects: Arc::default(),
            down: Arc::default(),
            hits: Arc::default(),
            key: Arc::new(key),
            base: format!("http://{addr}/feed"),
        };
        let served = feed.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("test-feed".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    let serve = async {
                        loop {
                            let Ok((socket, _)) = listener.accept().await else {
                                continue;
                            };
                            let f = served.clone();
                            tokio::spawn(async move {
                                let _ = timeout(Duration::from_secs(5), f.answer(socket)).await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = serve => {}
                    }
                });
                runtime.shutdown_background();
            })
            .unwrap();
        // Holds the server's thread until the test aborts (or drops) this task.
        let task = tokio::spawn(async move {
            let _stop = stop;
            std::future::pending::<()>().await
        });
        (feed, task)
    }

    async fn answer(&self, mut socket: TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = socket.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let name = path.strip_prefix("/feed/").unwrap_or("").to_string();
        *self.hits.lock().entry(name.clone()).or_default() += 1;
        let body = self.objects.lock().get(&name).cloned();
        let (status, body) = match body {
            _ if self.down.load(Ordering::Relaxed) => ("503 Service Unavailable", Arc::default()),
            Some(b) => ("200 OK", b),
            None => ("404 Not Found", Arc::default()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).await?;
        socket.write_all(&body).await?;
        socket.shutdown().await
    }

    fn put(&self, name: &str, bytes: Vec<u8>) {
        self.objects
            .lock()
            .insert(name.to_string(), Arc::new(bytes));
    }

    fn head(&self) -> Option<FeedHead> {
        let b = self.objects.lock().get("head.json").cloned()?;
        Some(serde_json::from_slice(&b).unwrap())
    }

    fn set_head(&self, epoch: u64, snapshot: u64) {
        let head = FeedHead { epoch, snapshot };
        self.put("head.json", serde_json::to_vec(&head).unwrap());
    }

    /// Publishes the next epoch (snapshot 1 first, deltas after), list before head, each with
    /// the digest of the state it brings a node to (as `issuer revoke --feed` does).
    fn publish(&self, revoke: Vec<RevocationEntry>, reinstate: Vec<RevocationEntry>) -> u64 {
        match self.head() {
            None => {
                let mut list = RevocationList {
                    epoch: 1,
                    base: None,
                    revoke,
                    reinstate,
                    digest: None,
                };
                list.digest = compact(&list, &[]).unwrap().digest;
                self.put("snapshot-1.cose", list.sign(&self.key).unwrap());
                self.set_head(1, 1);
                1
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
                let mut chain: Vec<RevocationList> = (h.snapshot + 1..=h.epoch)
                    .map(|n| self.list(&format!("delta-{n}.cose")))
                    .collect();
                chain.push(list.clone());
                let snapshot = self.list(&format!("snapshot-{}.cose", h.snapshot));
                list.digest = compact(&snapshot, &chain).unwrap().digest;
                self.put(
                    &format!("delta-{epoch}.cose"),
                    list.sign(&self.key).unwrap(),
                );
                self.set_head(epoch, h.snapshot);
                epoch
            }
        }
    }

    fn list(&self, name: &str) -> RevocationList {
        let bytes = self.objects.lock().get(name).cloned().unwrap();
        gatehouse_protocol::SignedRevocationList::open(&bytes, |_| Some(self.key.public())).unwrap()
    }

    /// Folds the deltas into a snapshot at the head's epoch.
    fn compact(&self) -> u64 {
        let h = self.head().unwrap();
        let snap = self.list(&format!("snapshot-{}.cose", h.snapshot));
        let deltas: Vec<RevocationList> = (h.snapshot + 1..=h.epoch)
            .map(|n| self.list(&format!("delta-{n}.cose")))
            .collect();
        let folded = compact(&snap, &deltas).unwrap();
        self.put(
            &format!("snapshot-{}.cose", folded.epoch),
            folded.sign(&self.key).unwrap(),
        );
        self.set_head(h.epoch, folded.epoch);
        folded.epoch
    }

    fn hits(&self, name: &str) -> u64 {
        self.hits.lock().get(name).copied().unwrap_or(0)
    }

    fn config(&self) -> FeedConfig {
        let mut c = FeedConfig::new(FeedSource::Http(self.base.clone()));
        c.interval = INTERVAL;
        c.max_age = Duration::from_secs(30);
        c.timeout = Duration::from_secs(5);
        c
    }
}

struct World {
    pki: DevPki,
    issuer: PrivateKey,
    revocation: PrivateKey,
}

impl World {
    fn new() -> World {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        World {
            pki: DevPki::generate(&["gate-a".to_string()]).unwrap(),
            issuer: population::issuer_key(11),
            revocation: derive_key("feed test revocation key (TEST ONLY)", 0),
        }
    }

    fn trust(&self) -> TrustList {
        let mut t = population::trust_list(&self.issuer);
        t.insert_revocation_key(RevocationKey {
            name: "test revocations".into(),
            public: self.revocation.public().clone(),
        });
        t
    }

    fn engine(&self) -> Arc<Engine> {
        let config = EngineConfig {
            threads: 1,
            replay_capacity: 100_000,
            issuer_cache_capacity: 10_000,
            ..EngineConfig::default()
        };
        let mut r = ScannerRegistry::new();
        r.insert(Scanner {
            id: "gate-a".into(),
            role: Role::Gate {
                unit: UnitPath::new(&[1]).unwrap(),
                admits: {
                    let mut a = DEFAULT_GATE_ADMITS.to_vec();
                    a.push(CredentialType::FamilyMember);
                    a
                },
            },
            mdoc: Default::default(),
        });
        Arc::new(Engine::new(config, self.trust(), r).unwrap())
    }

    fn server_config(&self, feed: Option<FeedConfig>) -> ServerConfig {
        let mut c = ServerConfig::new(
            self.pki.server.chain(),
            self.pki.server.key(),
            vec![self.pki.ca.cert_der.clone()],
        );
        c.revocation_feed = feed;
        c
    }

    fn identity(&self) -> ClientIdentity {
        let s = self.pki.scanner("gate-a").unwrap();
        ClientIdentity {
            roots: vec![self.pki.ca.cert_der.clone()],
            chain: s.chain(),
            key: s.key(),
        }
    }

    /// A soldier of unit 1/12, and a parent whose family credential names the soldier as
    /// sponsor.
    fn family(&self, index: u64) -> (Holder, Holder) {
        let soldier = population::credential(now(), index);
        let mut parent = population::credential(now(), index + 1_000_000);
        parent.credential_type = CredentialType::FamilyMember;
        parent.category = HolderCategory::Parent;
        parent.sponsor = Some(soldier.subject);
        // Family members enter the base's welfare facilities.
        parent.entitlements = gatehouse_protocol::Entitlements::WELFARE_FACILITIES;
        let s = Holder::issue(&self.issuer, derive_key("feed test device", index), soldier);
        let p = Holder::issue(
            &self.issuer,
            derive_key("feed test device", index + 1_000_000),
            parent,
        );
        (s.unwrap(), p.unwrap())
    }
}

struct Node {
    engine: Arc<Engine>,
    ops: SocketAddr,
    client: ScannerClient,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

async fn start(world: &World, engine: Arc<Engine>, feed: Option<FeedConfig>) -> Node {
    start_with_clock(world, engine, feed, Arc::new(gatehouse_engine::SystemClock)).await
}

/// [`start`], the server reading `clock`.
async fn start_with_clock(
    world: &World,
    engine: Arc<Engine>,
    feed: Option<FeedConfig>,
    clock: Arc<dyn gatehouse_engine::Clock>,
) -> Node {
    let mut config = world.server_config(feed);
    config.clock = clock;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = ops.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(
        Arc::clone(&engine),
        config,
        socket,
        Some(ops),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = ScannerClient::connect(addr, "localhost", world.identity())
        .await
        .unwrap();
    Node {
        engine,
        ops: ops_addr,
        client,
        stop: Some(stop),
        task,
    }
}

impl Node {
    async fn reason(&self, h: &Holder) -> Reason {
        let token = h.present(now() - 1, nonce(), None).unwrap();
        self.client.verify(&token, None).await.unwrap().reason
    }

    fn epoch(&self) -> u64 {
        self.engine.revocation_epoch().0
    }

    /// Waits (bounded) until the node is at `epoch` and the pull that brought it is over (the
    /// engine's revocation deadline moved past now): the node judges tokens on it.
    async fn serving(&self, epoch: u64) {
        self.reach(epoch).await;
        for _ in 0..2000 {
            if self.engine.revocations().fresh_until()
                > gatehouse_engine::Clock::now(&gatehouse_engine::SystemClock)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("node at epoch {epoch} never became fresh");
    }

    /// Waits (bounded) until the node is at `epoch`; returns how long it took.
    async fn reach(&self, epoch: u64) -> Duration {
        let started = Instant::now();
        for _ in 0..2000 {
            if self.epoch() == epoch {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("node stayed at epoch {} (wanted {epoch})", self.epoch());
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = gatehouse_testkit::get(self.ops, path).await.unwrap();
        (r.status, r.body)
    }

    async fn metric(&self, line_start: &str) -> String {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no metric {line_start} in\n{body}"))
            .to_string()
    }

    async fn stop(mut self) -> Arc<Engine> {
        self.client.close().await;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        timeout(LONG, self.task)
            .await
            .expect("the node stops in time")
            .unwrap()
            .unwrap();
        self.engine
    }
}

fn sponsor(h: &Holder) -> RevocationEntry {
    RevocationEntry {
        kind: RevocationKind::Sponsor,
        id: h.credential.subject,
    }
}

fn credential(h: &Holder) -> RevocationEntry {
    RevocationEntry {
        kind: RevocationKind::Credential,
        id: h.credential.id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_published_once_reaches_every_node_and_reinstating_restores_the_family() {
    let world = World::new();
    let (feed, feed_task) = Feed::start(world.revocation.clone()).await;
    let (soldier, parent) = world.family(1);
    let (other, _) = world.family(2);
    feed.publish(vec![credential(&other)], vec![]);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start(&world, world.engine(), Some(feed.config())).await);
    }
    for n in &nodes {
        n.reach(1).await;
        assert_eq!(n.reason(&parent).await, Reason::Accepted);
        assert_eq!(n.reason(&other).await, Reason::Revoked);
    }

    // The soldier is discharged: revoking the sponsor cuts off the parent on every node.
    let published = Instant::now();
    let epoch = feed.publish(vec![sponsor(&soldier)], vec![]);
    let mut slowest = Duration::ZERO;
    for n in &nodes {
        n.reach(epoch).await;
        slowest = slowest.max(published.elapsed());
        assert_eq!(n.reason(&parent).await, Reason::Revoked);
        // The sponsor entry names family credentials, not the soldier's own.
        assert_eq!(n.reason(&soldier).await, Reason::Accepted);
    }
    eprintln!(
        "publication to enforcement on 3 nodes: {} ms (interval {} ms)",
        slowest.as_millis(),
        INTERVAL.as_millis()
    );
    assert!(
        slowest <= 2 * INTERVAL,
        "enforcement took {slowest:?}, more than twice the interval"
    );

    // Reinstated (the discharge was a mistake): the family is admitted again everywhere.
    let epoch = feed.publish(vec![], vec![sponsor(&soldier)]);
    for n in &nodes {
        n.reach(epoch).await;
        assert_eq!(n.reason(&parent).await, Reason::Accepted);
        assert_eq!(n.reason(&other).await, Reason::Revoked);
    }
    let line = nodes[0].metric("gatehouse_revocation_epoch ").await;
    assert_eq!(line, format!("gatehouse_revocation_epoch {epoch}"));
    assert!(nodes[0]
        .metric("gatehouse_revocation_stale ")
        .await
        .ends_with(" 0"));
    assert_eq!(nodes[0].get("/readyz").await.0, 200);
    for n in nodes {
        n.stop().await;
    }
    feed_task.abort();
}

/// The threads of this process by name, with their scheduling policy read back from the
/// kernel (field 41 of `/proc/self/task/TID/stat`: SCHED_OTHER 0, SCHED_IDLE 5).
#[cfg(target_os = "linux")]
fn threads_and_policies() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        // A thread may end between the listing and the read.
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue;
        };
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let policy = after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap();
        out.push((name.trim().to_string(), policy));
    }
    out
}

/// A node follows its feed on a thread of its own, and a snapshot is verified and built on a
/// thread at SCHED_IDLE while the node verifies; the feed, verification, batcher and runtime
/// threads keep the normal policy (deltas, which enforce new revocations, are not starved).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_built_at_the_lowest_priority_and_nothing_else_is() {
    let world = World::new();
    let (feed, feed_task) = Feed::start(world.revocation.clone()).await;
    feed.publish(vec![], vec![]);
    let node = start(&world, world.engine(), Some(feed.config())).await;
    node.reach(1).await;
    // A snapshot big enough to be caught while it is built (several hundred ms in a test build).
    let big = RevocationList {
        epoch: 2,
        base: None,
        revoke: (0..300_000u64)
            .map(|n| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&n.to_le_bytes());
                RevocationEntry {
                    kind: RevocationKind::Credential,
                    id,
                }
            })
            .collect(),
        reinstate: vec![],
        digest: None,
    };
    feed.put("snapshot-2.cose", big.sign(&world.revocation).unwrap());
    feed.set_head(2, 2);
    let mut seen = Vec::new();
    let mut snapshot_threads = Vec::new();
    for _ in 0..4000 {
        seen = threads_and_policies();
        snapshot_threads.extend(
            seen.iter()
                .filter(|(name, _)| name == server::feed::SNAPSHOT_THREAD)
                .map(|(_, policy)| *policy),
        );
        if node.epoch() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    node.reach(2).await;
    assert!(
        !snapshot_threads.is_empty(),
        "no snapshot thread seen while the snapshot was built"
    );
    assert!(
        snapshot_threads.iter().all(|policy| *policy == 5),
        "snapshot threads not SCHED_IDLE: {snapshot_threads:?}"
    );
    let serving: Vec<_> = seen
        .iter()
        .filter(|(name, _)| {
            name == server::feed::FEED_THREAD
                || name.starts_with("gatehouse-verif")
                || name == "gatehouse-batch"
                || name == "tokio-rt-worker"
        })
        .collect();
    assert!(
        serving
            .iter()
            .any(|(name, _)| name == server::feed::FEED_THREAD),
        "no feed thread in {seen:?}"
    );
    assert!(serving.len() >= 4, "serving threads: {seen:?}");
    assert!(
        serving.iter().all(|(_, policy)| *policy == 0),
        "a thread other than the snapshot's lost its normal priority: {serving:?}"
    );
    node.stop().await;
    feed_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_down_catches_up_from_a_snapshot_and_a_gap_fetches_it_too() {
    let world = World::new();
    let (feed, feed_task) = Feed::start(world.revocation.clone()).await;
    let (a, pa) = world.family(10);
    let (b, _) = world.family(11);
    feed.publish(vec![credential(&b)], vec![]);
    let up = start(&world, world.engine(), Some(feed.config())).await;
    let down = start(&world, world.engine(), Some(feed.config())).await;
    up.reach(1).await;
    down.reach(1).await;
    let down_engine = down.stop().await;

    // While it is down: 70 epochs (more than a node replays as deltas), then a compaction.
    for i in 0..70u64 {
        let (x, _) = world.family(100 + i);
        let epoch = feed.publish(vec![credential(&x)], vec![]);
        // The live node keeps up as it would in service (publishing 70 epochs faster than
        // its interval would leave it more than 64 behind, and it would rightly take the
        // snapshot instead).
        if i % 10 == 9 {
            up.reach(epoch).await;
        }
    }
    let last = feed.publish(vec![sponsor(&a)], vec![credential(&b)]);
    assert_eq!(feed.compact(), last);
    up.reach(last).await;
    assert_eq!(
        feed.hits(&format!("snapshot-{last}.cose")),
        0,
        "the live node followed deltas"
    );

    let back = start(&world, down_engine, Some(feed.config())).await;
    back.reach(last).await;
    assert_eq!(feed.hits(&format!("snapshot-{last}.cose")), 1);
    assert_eq!(
        back.engine.revocations().load().entries(),
        up.engine.revocations().load().entries()
    );
    assert_eq!(back.reason(&pa).await, Reason::Revoked);
    assert!(back
        .metric("gatehouse_revocation_snapshots_total ")
        .await
        .ends_with(" 1"));

    // A gap: the next delta never reaches the feed (lost), the one after and a snapshot do.
    // The node tries the delta, then fetches the snapshot instead of stalling or guessing.
    let (c, _) = world.family(12);
    let (d, _) = world.family(13);
    let (lost, after) = (last + 1, last + 2);
    let lost_list = RevocationList {
        epoch: lost,
        base: Some(last),
        revoke: vec![credential(&c)],
        reinstate: vec![],
        digest: None,
    };
    let after_list = RevocationList {
        epoch: after,
        base: Some(lost),
        revoke: vec![credential(&d)],
        reinstate: vec![],
        digest: None,
    };
    let folded = compact(
        &feed.list(&format!("snapshot-{last}.cose")),
        &[lost_list, after_list.clone()],
    )
    .unwrap();
    feed.put(
        &format!("delta-{after}.cose"),
        after_list.sign(&world.revocation).unwrap(),
    );
    feed.put(
        &format!("snapshot-{after}.cose"),
        folded.sign(&world.revocation).unwrap(),
    );
    feed.set_head(after, after);
    back.reach(after).await;
    up.reach(after).await;
    assert!(
        feed.hits(&format!("delta-{lost}.cose")) >= 2,
        "each node tried the delta first"
    );
    assert_eq!(feed.hits(&format!("snapshot-{after}.cose")), 2);
    assert!(back
        .metric("gatehouse_revocation_snapshots_total ")
        .await
        .ends_with(" 2"));
    assert_eq!(back.reason(&c).await, Reason::Revoked);
    assert_eq!(
        back.engine.revocations().load().entries(),
        up.engine.revocations().load().entries()
    );
    back.stop().await;
    up.stop().await;
    feed_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_forged_and_foreign_lists_are_refused_counted_and_the_state_kept() {
    let world = World::new();
    let (feed, feed_task) = Feed::start(world.revocation.clone()).await;
    let (x, _) = world.family(20);
    let (y, _) = world.family(21);
    feed.publish(vec![credential(&x)], vec![]);
    let node = start(&world, world.engine(), Some(feed.config())).await;
    node.reach(1).await;

    // Each bad delta-2 reinstates x and revokes y; none may take effect.
    let delta = RevocationList {
        epoch: 2,
        base: Some(1),
        revoke: vec![credential(&y)],
        reinstate: vec![credential(&x)],
        digest: None,
    };
    let foreign = derive_key("feed test foreign key (TEST ONLY)", 1);
    let mut forged = delta.sign(&world.revocation).unwrap();
    let at = forged.len() - 10;
    forged[at] ^= 0x40; // a byte of s
    let cases = [
        ("unsigned", delta.encode()),
        ("unknown_key", delta.sign(&foreign).unwrap()),
        ("bad_signature", forged),
    ];
    feed.set_head(2, 1);
    for (why, bytes) in cases {
        feed.put("delta-2.cose", bytes);
        let metric = format!("gatehouse_revocation_lists_refused_total{{why=\"{why}\"}}");
        let mut counted = false;
        for _ in 0..200 {
            if !node.metric(&metric).await.ends_with(" 0") {
                counted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(counted, "{why} list not counted");
        assert_eq!(node.epoch(), 1, "{why} list changed the epoch");
        assert_eq!(node.reason(&x).await, Reason::Revoked, "{why}");
        assert_eq!(node.reason(&y).await, Reason::Accepted, "{why}");
    }
    // The genuine list then applies.
    feed.put("delta-2.cose", delta.sign(&world.revocation).unwrap());
    node.reach(2).await;
    assert_eq!(node.reason(&x).await, Reason::Accepted);
    assert_eq!(node.reason(&y).await, Reason::Revoked);
    node.stop().await;
    feed_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_feed_fails_closed_past_the_maximum_age_and_recovers() {
    let world = World::new();
    let (feed, feed_task) = Feed::start(world.revocation.clone()).await;
    let (h, _) = world.family(30);
    feed.publish(vec![], vec![]);
    let mut closed = feed.config();
    closed.max_age = Duration::from_secs(3);
    let mut open = closed.clone();
    open.policy = OfflinePolicy::KeepServing;
    // The nodes read a clock the test moves: the maximum age passes without waiting for it.
    let clock = Arc::new(gatehouse_engine::ManualClock::now_from_system());
    let gate = start_with_clock(&world, world.engine(), Some(closed), clock.clone()).await;
    let lenient = start_with_clock(&world, world.engine(), Some(open), clock.clone()).await;
    gate.reach(1).await;
    lenient.reach(1).await;
    assert_eq!(gate.reason(&h).await, Reason::Accepted);
    assert_eq!(gate.get("/readyz").await.0, 200);

    // The link goes down: within the maximum age the gate keeps verifying on its last epoch.
    feed.down.store(true, Ordering::Relaxed);
    // A pull in flight when the link went down may still confirm: let it end.
    tokio::time::sleep(INTERVAL * 2).await;
    clock.advance(Duration::from_secs(2));
    assert_eq!(gate.reason(&h).await, Reason::Accepted);
    // Past it: fail closed by default, keep serving when configured; neither is ready.
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        gate.reason(&h).await,
        Reason::RevocationsStale,
        "the gate did not fail closed"
    );
    let (status, body) = gate.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(gate
        .metric("gatehouse_revocation_stale ")
        .await
        .ends_with(" 1"));
    assert_eq!(lenient.reason(&h).await, Reason::Accepted);
    assert_eq!(lenient.get("/readyz").await.0, 503);

    // The link is back: the next pull confirms the epoch and the gate admits again.
    feed.down.store(false, Ordering::Relaxed);
    let mut back = false;
    for _ in 0..100 {
        if gate.reason(&h).await == Reason::Accepted {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the gate did not recover");
    assert_eq!(gate.get("/readyz").await.0, 200);
    gate.stop().await;
    lenient.stop().await;
    feed_task.abort();
}

/// `gatehouse serve`'s own loading path: a node whose disk holds only a delta starts (it used
/// to exit), fails closed until the feed gives it a snapshot, then serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_with_only_a_delta_on_disk_fetches_what_it_needs() {
    let world = World::new();
    let (feed, feed_task) = Feed::start(world.revocation.clone()).await;
    let (x, _) = world.family(40);
    let (y, _) = world.family(41);
    feed.publish(vec![credential(&x)], vec![]);
    feed.publish(vec![credential(&y)], vec![]);
    feed.compact();
    let delta3 = feed.publish(vec![], vec![credential(&x)]);

    let dir = std::env::temp_dir().join(format!("gatehouse-feed-{}", std::process::id()));
    let pki = dir.join("pki");
    world.pki.write_to(&pki).unwrap();
    std::fs::write(dir.join("trust.toml"), world.trust().to_toml()).unwrap();
    std::fs::write(
        dir.join("scanners.toml"),
        "[[scanner]]\nid = \"gate-a\"\nrole = \"gate\"\nunit = \"1\"\n",
    )
    .unwrap();
    let delta_bytes = feed.objects.lock().get("delta-3.cose").cloned().unwrap();
    std::fs::write(dir.join("revocations.cose"), &*delta_bytes).unwrap();
    let base = "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\nclient_ca = \"pki/ca.pem\"\n[files]\ntrust = \"trust.toml\"\nscanners = \"scanners.toml\"\nrevocations = \"revocations.cose\"\n";
    // Without a feed a lone delta is still refused, with a clear error.
    let path = dir.join("gatehouse.toml");
    let alone = ServeConfig::parse(&path, base)
        .unwrap()
        .into_parts()
        .unwrap();
    let Err(e) = alone.build_engine() else {
        panic!("a lone delta without a feed must be refused");
    };
    assert!(e.to_string().contains("delta applies to epoch 2"), "{e}");
    // With one, the node starts at no epoch, failing closed, then catches up.
    let with_feed = format!(
        "{base}[revocations]\nfeed = \"{}\"\ninterval_secs = 0.5\n",
        feed.base
    );
    let parts = ServeConfig::parse(&path, &with_feed)
        .unwrap()
        .into_parts()
        .unwrap();
    assert!(
        parts.files.revocations.is_none(),
        "SIGHUP leaves revocations to the feed"
    );
    // Built as by a node that started a minute ago: the memory store's restart fence
    // (node_restarted, start + skew) lies behind the tokens below, with no wait on the clock.
    let engine = parts.build_engine_at(now() - 60).unwrap();
    assert_eq!(engine.revocation_epoch().0, 0);
    let node = start(&world, engine, parts.server.revocation_feed.clone()).await;
    node.reach(delta3).await;
    assert_eq!(node.reason(&x).await, Reason::Accepted);
    assert_eq!(node.reason(&y).await, Reason::Revoked);
    node.stop().await;
    feed_task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `redis-server` on a loopback port for one test, stopped (killed and reaped) on drop.
struct RedisServer {
    child: std::process::Child,
    url: String,
}

impl RedisServer {
    /// `None` when no `redis-server` is installed (the test then says so and passes).
    fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        // Bounded wait for it to answer PING.
        for _ in 0..100 {
            let ping = redis::Client::open(server.url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn set(&self, key: &str, value: &[u8]) {
        let mut c = redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let () = redis::cmd("SET").arg(key).arg(value).query(&mut c).unwrap();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_feed_kept_in_redis() {
    let Some(redis) = RedisServer::start() else {
        eprintln!("redis-server not available: the Redis feed test is skipped");
        return;
    };
    let world = World::new();
    let (soldier, parent) = world.family(60);
    let prefix = "test:revocations";
    let put_list = |name: &str, list: &RevocationList| {
        redis.set(
            &format!("{prefix}:{name}"),
            &list.sign(&world.revocation).unwrap(),
        );
    };
    let put_head = |epoch: u64, snapshot: u64| {
        let head = serde_json::to_vec(&FeedHead { epoch, snapshot }).unwrap();
        redis.set(&format!("{prefix}:head"), &head);
    };
    put_list(
        "snapshot:1",
        &RevocationList {
            epoch: 1,
            ..Default::default()
        },
    );
    put_head(1, 1);
    let mut config = FeedConfig::new(FeedSource::parse(&redis.url, Some(prefix)));
    config.interval = INTERVAL;
    let nodes = [
        start(&world, world.engine(), Some(config.clone())).await,
        start(&world, world.engine(), Some(config)).await,
    ];
    for n in &nodes {
        // The snapshot is in force before its pull ends; the node serves once it has.
        n.serving(1).await;
        assert_eq!(n.reason(&parent).await, Reason::Accepted);
    }
    let published = Instant::now();
    put_list(
        "delta:2",
        &RevocationList {
            epoch: 2,
            base: Some(1),
            revoke: vec![sponsor(&soldier)],
            reinstate: vec![],
            digest: None,
        },
    );
    put_head(2, 1);
    for n in &nodes {
        n.reach(2).await;
        assert_eq!(n.reason(&parent).await, Reason::Revoked);
    }
    assert!(
        published.elapsed() <= 2 * INTERVAL,
        "{:?}",
        published.elapsed()
    );
    // An unsigned list in Redis is refused like any other.
    redis.set(
        &format!("{prefix}:delta:3"),
        &RevocationList {
            epoch: 3,
            base: Some(2),
            revoke: vec![],
            reinstate: vec![sponsor(&soldier)],
            digest: None,
        }
        .encode(),
    );
    put_head(3, 1);
    let metric = "gatehouse_revocation_lists_refused_total{why=\"unsigned\"}";
    let mut counted = false;
    for _ in 0..200 {
        if !nodes[0].metric(metric).await.ends_with(" 0") {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(counted);
    assert_eq!(nodes[0].epoch(), 2);
    for n in nodes {
        n.stop().await;
    }
}

/// Measurement, not a gate (run it in release: `cargo test --release -p gatehouse-engine
/// --test feed -- --ignored --nocapture a_million_entry_snapshot`): an open-loop stream of
/// verifications over QUIC while the node fetches, verifies and applies a 1,000,000-entry
/// snapshot. Prints the latency percentiles before, during and after the apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run in release with --ignored"]
async fn a_million_entry_snapshot_under_open_loop_traffic() {
    const RATE: u64 = 400;
    const SECONDS: u64 = 12;
    let world = World::new();
    let (feed, feed_task) = Feed::start(world.revocation.clone()).await;
    feed.publish(vec![], vec![]);
    let mut config = feed.config();
    config.interval = Duration::from_secs(1);
    let node = Arc::new(start(&world, world.engine(), Some(config)).await);
    node.reach(1).await;
    let holders: Vec<Holder> = (0..64).map(|i| world.family(500 + i).0).collect();
    let big = RevocationList {
        epoch: 2,
        base: None,
        revoke: (0..1_000_000u64)
            .map(|n| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&n.to_le_bytes());
                id[8..].copy_from_slice(b"big-snap");
                RevocationEntry {
                    kind: RevocationKind::Credential,
                    id,
                }
            })
            .collect(),
        reinstate: vec![],
        digest: None,
    };
    let big = big.sign(&world.revocation).unwrap();
    eprintln!("snapshot: {} bytes", big.len());
    // Published by a move, not a copy: the load loop must not stall on 18 MB of memcpy.
    let mut big = Some(big);

    let start_at = Instant::now();
    let total = RATE * SECONDS;
    let mut tasks = Vec::with_capacity(total as usize);
    let mut published = None;
    for i in 0..total {
        let due = start_at + Duration::from_micros(i * 1_000_000 / RATE);
        tokio::time::sleep_until(due.into()).await;
        if published.is_none() && due >= start_at + Duration::from_secs(4) {
            if let Some(big) = big.take() {
                feed.put("snapshot-2.cose", big);
            }
            feed.set_head(2, 2);
            published = Some(start_at.elapsed());
        }
        let token = holders[(i % 64) as usize]
            .present(now() - 1, nonce(), None)
            .unwrap();
        let n = Arc::clone(&node);
        tasks.push(tokio::spawn(async move {
            let v = n.client.verify(&token, None).await.unwrap();
            assert_eq!(v.reason, Reason::Accepted);
            (due - start_at, due.elapsed())
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.push(timeout(LONG, t).await.unwrap().unwrap());
    }
    let applied_by = {
        node.reach(2).await;
        start_at.elapsed()
    };
    let published = published.unwrap();
    let pct = |xs: &mut Vec<Duration>, p: f64| -> f64 {
        xs.sort();
        xs[((xs.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0
    };
    let mut before: Vec<Duration> = samples
        .iter()
        .filter(|(at, _)| *at < published)
        .map(|(_, l)| *l)
        .collect();
    let window_end = published + Duration::from_secs(3);
    let mut during: Vec<Duration> = samples
        .iter()
        .filter(|(at, _)| *at >= published && *at < window_end)
        .map(|(_, l)| *l)
        .collect();
    let mut after: Vec<Duration> = samples
        .iter()
        .filter(|(at, _)| *at >= window_end)
        .map(|(_, l)| *l)
        .collect();
    let snap_line = node
        .metric("gatehouse_revocation_snapshot_apply_seconds ")
        .await;
    eprintln!(
        "{RATE} req/s open loop; snapshot published at {:.2} s, in force by {:.2} s ({snap_line})",
        published.as_secs_f64(),
        applied_by.as_secs_f64()
    );
    for (name, xs) in [
        ("before", &mut before),
        ("during (3 s from publication)", &mut during),
        ("after", &mut after),
    ] {
        let n = xs.len();
        eprintln!(
            "  {name:<32} n={n:<5} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            pct(xs, 0.50),
            pct(xs, 0.99),
            pct(xs, 1.0)
        );
    }
    // Where the tail is: the slowest requests, by send time from publication.
    let mut worst = samples.clone();
    worst.sort_by_key(|(_, l)| std::cmp::Reverse(*l));
    let worst: Vec<String> = worst
        .iter()
        .take(8)
        .map(|(at, l)| {
            format!(
                "{:+.3} s: {:.1} ms",
                at.as_secs_f64() - published.as_secs_f64(),
                l.as_secs_f64() * 1000.0
            )
        })
        .collect();
    eprintln!(
        "  slowest (send time from publication): {}",
        worst.join(", ")
    );
    assert_eq!(node.engine.revocation_epoch(), (2, 1_000_000));
    if let Ok(n) = Arc::try_unwrap(node) {
        n.stop().await;
    }
    feed_task.abort();
}

/// A node started from `seed` on disk (the sample config's `[files] revocations`) that follows
/// `feed`; the directory it was configured in is removed by the caller.
async fn seeded_node(world: &World, feed: &Feed, seed: &[u8], name: &str) -> (Node, PathBuf) {
    let dir = std::env::temp_dir().join(format!("gatehouse-seed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    world.pki.write_to(&dir.join("pki")).unwrap();
    std::fs::write(dir.join("trust.toml"), world.trust().to_toml()).unwrap();
    std::fs::write(
        dir.join("scanners.toml"),
        "[[scanner]]\nid = \"gate-a\"\nrole = \"gate\"\nunit = \"1\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("revocations.cbor"), seed).unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\n\
         client_ca = \"pki/ca.pem\"\n[files]\ntrust = \"trust.toml\"\nscanners = \"scanners.toml\"\n\
         revocations = \"revocations.cbor\"\n[revocations]\nfeed = \"{}\"\ninterval_secs = 0.5\n",
        feed.base
    );
    let parts = ServeConfig::parse(&dir.join("gatehouse.toml"), &config)
        .unwrap()
        .into_parts()
        .unwrap();
    let engine = parts.build_engine_at(now() - 60).unwrap();
    let node = start(world, engine, parts.server.revocation_feed.clone()).await;
    (node, dir)
}

/// Item 1 of the operations issue: a local epoch 1 that is not the feed's epoch 1 is replaced
/// by the feed's snapshot on first contact (and said so), never taken as the feed's with the
/// feed's deltas stacked on it; a seed that is the feed's is kept (no snapshot rebuilt). Every
/// node ends on the same state digest, shown in `/metrics` and `/readyz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_from_disk_that_is_not_the_feeds_is_replaced_not_stacked_on() {
    let world = World::new();
    let (feed, feed_task) = Feed::start(world.revocation.clone()).await;
    let (a, _) = world.family(50);
    let (b, _) = world.family(51);
    let (c, _) = world.family(52);
    feed.publish(vec![credential(&a)], vec![]);
    let feed_snapshot_1 = feed.objects.lock().get("snapshot-1.cose").cloned().unwrap();
    let head = feed.publish(vec![credential(&b)], vec![]);

    // From the feed alone: the reference state.
    let reference = start(&world, world.engine(), Some(feed.config())).await;
    reference.reach(head).await;
    let want = reference.metric("gatehouse_revocation_state_info").await;

    // A local epoch 1 of its own (what `issuer revoke --out revocations.cbor --epoch 1
    // --credential …` writes): revokes c, not a.
    let local = RevocationList {
        epoch: 1,
        base: None,
        revoke: vec![credential(&c)],
        reinstate: vec![],
        digest: None,
    };
    let (foreign, foreign_dir) = seeded_node(&world, &feed, &local.encode(), "foreign").await;
    foreign.reach(head).await;
    for _ in 0..200 {
        if foreign.metric("gatehouse_revocation_state_info").await == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        foreign.reason(&a).await,
        Reason::Revoked,
        "the feed's epoch 1"
    );
    assert_eq!(
        foreign.reason(&b).await,
        Reason::Revoked,
        "the feed's epoch 2"
    );
    assert_eq!(
        foreign.reason(&c).await,
        Reason::Accepted,
        "the local list is not the feed's: nothing of it stays"
    );
    assert_eq!(
        foreign.metric("gatehouse_revocation_state_info").await,
        want,
        "the same state as a node fed by the feed alone"
    );
    assert_eq!(
        foreign
            .metric("gatehouse_revocation_disk_state_replaced_total")
            .await,
        "gatehouse_revocation_disk_state_replaced_total 1"
    );
    let (_, ready) = foreign.get("/readyz").await;
    assert!(ready.contains(" feed matched"), "{ready}");

    // A seed that is the feed's own snapshot 1: confirmed by digest, kept, deltas applied.
    let (own, own_dir) = seeded_node(&world, &feed, &feed_snapshot_1, "own").await;
    own.reach(head).await;
    assert_eq!(own.metric("gatehouse_revocation_state_info").await, want);
    assert_eq!(
        own.metric("gatehouse_revocation_disk_state_replaced_total")
            .await,
        "gatehouse_revocation_disk_state_replaced_total 0"
    );
    assert_eq!(own.reason(&a).await, Reason::Revoked);
    assert_eq!(own.reason(&b).await, Reason::Revoked);
    for node in [reference, foreign, own] {
        node.stop().await;
    }
    feed_task.abort();
    let _ = std::fs::remove_dir_all(foreign_dir);
    let _ = std::fs::remove_dir_all(own_dir);
}
