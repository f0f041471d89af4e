//! Fleet mode for real, on loopback: several `gatehouse serve` processes sharing one Redis (a
//! server, or a 3-master Redis Cluster), scanners failing over between them, a node killed in
//! a rush, Redis stopped and started, a memory node restarted. Every process a test starts is
//! stopped when the test ends (the node guards kill on drop; Redis runs under a watchdog).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_engine::client::{ClientIdentity, FleetClient, FleetOptions, ScannerClient};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population::{
    credential, derive_id, derive_key, issuer_key, trust_list, Holder,
};
use gatehouse_engine::dev::redis::{free_port, RedisCluster, RedisServer};
use gatehouse_engine::{Role, Scanner, ScannerRegistry, DEFAULT_GATE_ADMITS};
use gatehouse_protocol::{Reason, Verdict};

const SCANNERS: &[&str] = &["gate-a", "gate-b", "gate-c", "gate-d"];

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The nodes' allowed clock skew (the sample config's).
const SKEW: u64 = 5;

/// Waits until the second after this one. A node on the memory store, and a new life of a
/// shared store, deny tokens signed up to the moment they started plus the skew
/// (`node_restarted`); the phones of these tests run their clocks at the edge of the skew
/// ([`Site::token`]), so their tokens pass those fences from the next second on.
fn past_fences() {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    std::thread::sleep(Duration::from_millis(u64::from(1000 - into) + 50));
}

/// A directory with a dev PKI, trust list, scanner registry and an issuer key, shared by the
/// nodes of one test.
struct Site {
    dir: PathBuf,
    pki: DevPki,
    issuer: gatehouse_protocol::PrivateKey,
    next: AtomicUsize,
}

impl Site {
    fn new(name: &str) -> Site {
        let dir =
            std::env::temp_dir().join(format!("gatehouse-fleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ids: Vec<String> = SCANNERS.iter().map(|s| s.to_string()).collect();
        let pki = DevPki::generate(&ids).unwrap();
        pki.write_to(&dir.join("pki")).unwrap();
        let issuer = issuer_key(11);
        std::fs::write(dir.join("trust.toml"), trust_list(&issuer).to_toml()).unwrap();
        let mut reg = ScannerRegistry::new();
        for id in SCANNERS {
            reg.insert(Scanner {
                id: id.to_string(),
                role: Role::Gate {
                    unit: "1".parse().unwrap(),
                    admits: DEFAULT_GATE_ADMITS.to_vec(),
                },
                mdoc: Default::default(),
            });
        }
        std::fs::write(dir.join("scanners.toml"), reg.to_toml()).unwrap();
        Site {
            dir,
            pki,
            issuer,
            next: AtomicUsize::new(0),
        }
    }

    fn holder(&self) -> Holder {
        let n = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        Holder::issue(
            &self.issuer,
            derive_key("fleet device", n),
            credential(now(), n),
        )
        .unwrap()
    }

    /// A fresh token of `h` (a new nonce each time), from a phone whose clock runs the whole
    /// allowed skew ahead.
    fn token(&self, h: &Holder) -> Vec<u8> {
        self.token_at(h, now() + SKEW)
    }

    /// A fresh token of `h` signed at `ts`.
    fn token_at(&self, h: &Holder, ts: u64) -> Vec<u8> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        h.present(ts, derive_id("fleet nonce", n), None).unwrap()
    }

    fn identity(&self, scanner: &str) -> ClientIdentity {
        let s = self.pki.scanner(scanner).unwrap();
        ClientIdentity {
            roots: self.pki.ca.chain(),
            chain: s.chain(),
            key: s.key(),
        }
    }

    /// Starts a node (`store`: the `[replay]` section's body). Ports are picked free and may be
    /// taken by another test before the node binds them: a node that cannot bind is started
    /// again on new ports (at most three tries).
    fn node(&self, name: &str, store: &str) -> Node {
        for _ in 0..2 {
            let mut node = self.configure(name, store);
            if node.try_start() {
                return node;
            }
        }
        let mut node = self.configure(name, store);
        node.start();
        node
    }

    /// A node's configuration file on fresh ports; not started.
    fn configure(&self, name: &str, store: &str) -> Node {
        let port = gatehouse_testkit::free_udp_port();
        let ops = free_port().unwrap();
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
            .replace("store = \"memory\"\n", &format!("{store}\n"));
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        Node {
            config: path,
            port,
            ops,
            child: None,
        }
    }
}

/// A `gatehouse serve` process, killed when dropped.
struct Node {
    config: PathBuf,
    port: u16,
    ops: u16,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        assert!(
            self.try_start(),
            "node {} could not bind its ports",
            self.addr()
        );
    }

    /// Starts the process and waits until it answers `/healthz`; `false` when it exited
    /// because one of its ports was taken (its log says it could not listen).
    fn try_start(&mut self) -> bool {
        let child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.config.with_extension("log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Bounded wait until the operations port answers /healthz.
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(self.ops, "/healthz").is_none_or(|(code, _)| code != 200) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log =
                    std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default();
                self.child = None;
                assert!(
                    log.contains("cannot listen on") || log.contains("in use"),
                    "node {} exited ({status}) before it started:\n{log}",
                    self.addr()
                );
                return false;
            }
            if Instant::now() >= deadline {
                let log =
                    std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default();
                panic!("node {} did not start in 20 s:\n{log}", self.addr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// kill -9.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn ready(&self) -> Option<u16> {
        http_get(self.ops, "/readyz").map(|(code, _)| code)
    }

    fn metrics(&self) -> String {
        http_get(self.ops, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = gatehouse_testkit::get_blocking(([127, 0, 0, 1], port).into(), path).ok()?;
    (r.status != 0).then_some((r.status, r.body))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn redis_store(url: &str) -> String {
    format!("store = \"redis\"\nurls = [\"{url}\"]\ntimeout_ms = 1000\nprobe_interval_ms = 100")
}

async fn connect(site: &Site, scanner: &str, node: &Node) -> ScannerClient {
    ScannerClient::connect(
        node.addr().parse().unwrap(),
        "localhost",
        site.identity(scanner),
    )
    .await
    .unwrap()
}

#[test]
fn a_token_used_on_one_node_is_replayed_on_another_and_a_retry_gets_its_first_verdict() {
    let redis = RedisServer::start().unwrap();
    let site = Site::new("two");
    let a = site.node("a", &redis_store(&redis.url()));
    let b = site.node("b", &redis_store(&redis.url()));
    past_fences();
    let rt = runtime();
    rt.block_on(async {
        let on_a = connect(&site, "gate-a", &a).await;
        let on_b = connect(&site, "gate-a", &b).await;
        let other_on_b = connect(&site, "gate-b", &b).await;
        let h = site.holder();
        let t = site.token(&h);
        let key = [42u8; 16];
        let first = on_a.verify_scan(&t, None, Some(key)).await.unwrap();
        assert_eq!(first.reason, Reason::Accepted);
        assert!(!first.repeat);
        // The same scanner's retry, failed over to B: the first verdict, marked as a repeat.
        let retry = on_b.verify_scan(&t, None, Some(key)).await.unwrap();
        assert_eq!(retry, first.repeated());
        // A new scan of the token on B: replayed (a screenshot gains nothing).
        let again = on_b.verify_scan(&t, None, Some([43; 16])).await.unwrap();
        assert_eq!(again.reason, Reason::Replayed);
        assert_eq!(
            on_b.verify(&t, None).await.unwrap().reason,
            Reason::Replayed
        );
        let other = other_on_b.verify_scan(&t, None, Some(key)).await.unwrap();
        assert_eq!(other.reason, Reason::Replayed);
        // And the other way round, B first.
        let t2 = site.token(&h);
        assert_eq!(
            on_b.verify(&t2, None).await.unwrap().reason,
            Reason::Accepted
        );
        assert_eq!(
            on_a.verify(&t2, None).await.unwrap().reason,
            Reason::Replayed
        );
    });
    assert!(a
        .metrics()
        .contains("gatehouse_replay_store_up{store=\"redis\"} 1"));
}

#[test]
fn a_redis_cluster_is_one_truth_too() {
    let cluster = RedisCluster::start(3).unwrap();
    let site = Site::new("cluster");
    let urls = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let store = format!("store = \"redis\"\ncluster = true\nurls = [{urls}]\ntimeout_ms = 1000\nprobe_interval_ms = 100");
    let a = site.node("a", &store);
    let b = site.node("b", &store);
    past_fences();
    let rt = runtime();
    rt.block_on(async {
        let on_a = connect(&site, "gate-a", &a).await;
        let on_b = connect(&site, "gate-b", &b).await;
        // Enough tokens that their keys land on every master.
        let holders: Vec<Holder> = (0..8).map(|_| site.holder()).collect();
        let tokens: Vec<Vec<u8>> = (0..60).map(|i| site.token(&holders[i % 8])).collect();
        let first = on_a.verify_batch(&tokens).await.unwrap();
        assert!(
            first.iter().all(|v| v.reason == Reason::Accepted),
            "{first:?}"
        );
        let second = on_b.verify_batch(&tokens).await.unwrap();
        assert!(
            second.iter().all(|v| v.reason == Reason::Replayed),
            "{second:?}"
        );
    });
    let keys: Vec<u64> = cluster
        .nodes()
        .iter()
        .map(|n| {
            // The marks, not the slots' life keys.
            let r = n.command("EVAL \"return #redis.call('KEYS', 'gatehouse:used:????????????????????????????????')\" 0").unwrap();
            r.trim().trim_start_matches(':').parse().unwrap()
        })
        .collect();
    assert_eq!(keys.iter().sum::<u64>(), 60);
    assert!(
        keys.iter().all(|k| *k > 0),
        "every master holds marks: {keys:?}"
    );
}

#[test]
fn with_redis_down_tokens_are_unavailable_never_accepted_and_the_node_recovers() {
    let mut redis = RedisServer::start().unwrap();
    let site = Site::new("outage");
    let a = site.node("a", &redis_store(&redis.url()));
    past_fences();
    let rt = runtime();
    let h = site.holder();
    rt.block_on(async {
        let c = connect(&site, "gate-a", &a).await;
        let used = site.token(&h);
        assert_eq!(
            c.verify(&used, None).await.unwrap().reason,
            Reason::Accepted
        );
        assert_eq!(a.ready(), Some(200));
        redis.stop();
        // Every token needing the store is `unavailable` while it is down: never accepted.
        let mut reasons = Vec::new();
        for _ in 0..5 {
            reasons.push(c.verify(&site.token(&h), None).await.unwrap().reason);
        }
        assert!(
            reasons.iter().all(|r| *r == Reason::Unavailable),
            "{reasons:?}"
        );
        assert_eq!(a.ready(), Some(503));
        // Tokens denied before one-time use are still judged.
        assert_eq!(
            c.verify(b"junk", None).await.unwrap().reason,
            Reason::Malformed
        );
        // Back, empty (no persistence): it forgot the used token.
        redis.restart().unwrap();
        let back = Instant::now();
        // Recovers by itself (the probe runs every 100 ms here), within a bounded time; once
        // /readyz says 200 the verdicts agree (the store's life was checked first).
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.ready() != Some(200) {
            assert!(Instant::now() < deadline, "not ready again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The used token is not reopened: the store's new life moved the fence past it.
        assert_eq!(
            c.verify(&used, None).await.unwrap().reason,
            Reason::NodeRestarted
        );
        // A token signed after the fence is accepted within 2 s of the store answering.
        let recovered = loop {
            let r = c.verify(&site.token(&h), None).await.unwrap().reason;
            if r == Reason::Accepted || Instant::now() > deadline {
                break r;
            }
            assert_eq!(r, Reason::NodeRestarted, "ready, so never unavailable");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(recovered, Reason::Accepted);
        let took = back.elapsed();
        println!("accepted again {took:?} after Redis answered");
        assert!(took < Duration::from_secs(2), "recovery took {took:?}");
        assert_eq!(a.ready(), Some(200));
        assert_ne!(
            c.verify(&used, None).await.unwrap().reason,
            Reason::Accepted
        );
    });
    let m = a.metrics();
    assert!(m.contains("gatehouse_replay_store_outages_total 1"), "{m}");
    let unavailable: u64 = m
        .lines()
        .find(|l| l.starts_with("gatehouse_verdicts_total{role=\"gate\",reason=\"unavailable\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // The five above, and those answered while the probe had not yet seen Redis back.
    assert!(
        unavailable >= 5,
        "unavailable verdicts counted: {unavailable}"
    );
    assert!(m.contains("gatehouse_replay_store_failures_total"), "{m}");
}

/// A phone whose clock runs 4 s ahead (inside the skew) shows a token; the node on the memory
/// store accepts it and is restarted at once. The restarted node denies the same token
/// (`node_restarted`): its fence is its start plus the skew, not the second after it.
#[test]
fn a_memory_node_restarted_accepts_no_token_from_before_the_restart() {
    let site = Site::new("restart");
    let mut a = site.node("a", "store = \"memory\"");
    let rt = runtime();
    let h = site.holder();
    // Two seconds past the start: a token 4 s ahead passes the first process's fence.
    past_fences();
    past_fences();
    let used = site.token_at(&h, now() + 4);
    rt.block_on(async {
        let c = connect(&site, "gate-a", &a).await;
        assert_eq!(
            c.verify(&used, None).await.unwrap().reason,
            Reason::Accepted
        );
        c.close().await;
    });
    a.kill();
    a.start();
    rt.block_on(async {
        let c = connect(&site, "gate-a", &a).await;
        let v = c.verify(&used, None).await.unwrap();
        assert_eq!(
            v.reason,
            Reason::NodeRestarted,
            "a used token is not reopened"
        );
        past_fences();
        assert_eq!(
            c.verify(&site.token(&h), None).await.unwrap().reason,
            Reason::Accepted
        );
    });
}

/// Three nodes on one Redis; scanners with all three addresses; node 0 killed (-9) a third of
/// the way into a bounded rush. Every valid token is accepted exactly once (its retries are
/// repeats), every replay is `replayed`, no scan errs, and the scanners that were on the killed
/// node get their first acceptance from another node within a second.
#[test]
fn killing_a_node_during_a_rush_loses_no_verdict_and_accepts_no_replay() {
    let redis = RedisServer::start().unwrap();
    let site = Arc::new(Site::new("kill"));
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| site.node(&format!("n{i}"), &redis_store(&redis.url())))
        .collect();
    past_fences();
    let servers: Vec<String> = nodes.iter().map(Node::addr).collect();
    let rt = runtime();
    let per_scanner = 60;
    let holders: Vec<Holder> = (0..SCANNERS.len() * per_scanner)
        .map(|_| site.holder())
        .collect();
    let holders = Arc::new(holders);
    let killed_at = Arc::new(parking_lot::Mutex::new(None::<Instant>));
    let report = rt.block_on(async {
        let mut tasks = Vec::new();
        for (si, scanner) in SCANNERS.iter().enumerate() {
            let client = FleetClient::new(
                &servers,
                "localhost",
                site.identity(scanner),
                FleetOptions::default(),
            )
            .unwrap();
            // Scanners 0 and 3 start on the node that will be killed.
            client.set_current(si % servers.len());
            let site = Arc::clone(&site);
            let holders = Arc::clone(&holders);
            let killed_at = Arc::clone(&killed_at);
            tasks.push(tokio::spawn(async move {
                let mut out: Vec<(Reason, bool, Reason)> = Vec::new();
                let mut failover: Option<Duration> = None;
                let started_on = client.current();
                for i in 0..per_scanner {
                    let h = &holders[si * per_scanner + i];
                    let t = site.token(h);
                    let v: Verdict = match client.verify(&t, None).await {
                        Ok(v) => v,
                        Err(e) => panic!("scan failed on every node: {e}"),
                    };
                    out.push((v.reason, v.repeat, Reason::Accepted));
                    let killed = *killed_at.lock();
                    if let (Some(k), None) = (killed, failover) {
                        if v.reason == Reason::Accepted && client.current() != started_on {
                            failover = Some(k.elapsed());
                        }
                    }
                    // Every fifth token is shown again (a screenshot): a new scan.
                    if i % 5 == 0 {
                        let r = client.verify(&t, None).await.unwrap();
                        out.push((r.reason, r.repeat, Reason::Replayed));
                    }
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                (out, started_on, failover)
            }));
        }
        // kill -9 node 0 a third of the way in.
        tokio::time::sleep(Duration::from_millis(per_scanner as u64 * 40 / 3)).await;
        nodes[0].kill();
        *killed_at.lock() = Some(Instant::now());
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results
    });
    let mut wrong = 0;
    let mut judged = 0;
    for (out, started_on, failover) in &report {
        for (got, _repeat, want) in out {
            judged += 1;
            if got != want {
                wrong += 1;
            }
        }
        if *started_on == servers[0] {
            let f = failover.expect("a scanner of the killed node failed over");
            println!("failover: first acceptance from another node {f:?} after the kill");
            assert!(f < Duration::from_secs(1), "failover took {f:?}");
        }
    }
    assert!(judged >= SCANNERS.len() * per_scanner);
    assert_eq!(wrong, 0, "{report:?}");
}

/// The settings check. A store that can evict marks silently (`maxmemory` with
/// `volatile-lru`: our marks have a TTL, so it evicts exactly them) leaves the node not ready
/// and its tokens `unavailable`, unless the operator accepted that risk by name; the node reads
/// the settings again while up (here every second), so a change is caught too.
#[test]
fn a_store_that_can_evict_marks_is_refused_unless_the_risk_is_accepted() {
    let redis = RedisServer::start().unwrap();
    let site = Site::new("settings");
    let store = format!("{}\nsettings_interval_secs = 1", redis_store(&redis.url()));
    let a = site.node("a", &store);
    let b = site.node("b", &format!("{store}\naccept_risk = [\"eviction\"]"));
    past_fences();
    assert_eq!(a.ready(), Some(200));
    for line in [
        "CONFIG SET maxmemory 64mb",
        "CONFIG SET maxmemory-policy volatile-lru",
    ] {
        assert!(redis.command(line).unwrap().starts_with("+OK"));
    }
    // Read again within the interval: A refuses, B runs and says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.ready() != Some(503) {
        assert!(
            Instant::now() < deadline,
            "the eviction risk was not caught"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, body) = http_get(a.ops, "/readyz").unwrap();
    assert!(body.contains("settings can lose marks"), "{body}");
    assert_eq!(b.ready(), Some(200));
    let rt = runtime();
    let h = site.holder();
    rt.block_on(async {
        let on_a = connect(&site, "gate-a", &a).await;
        let on_b = connect(&site, "gate-b", &b).await;
        assert_eq!(
            on_a.verify(&site.token(&h), None).await.unwrap().reason,
            Reason::Unavailable
        );
        assert_eq!(
            on_b.verify(&site.token(&h), None).await.unwrap().reason,
            Reason::Accepted
        );
    });
    let m = a.metrics();
    assert!(
        m.contains("gatehouse_replay_store_risk{risk=\"eviction\",accepted=\"false\"} 1"),
        "{m}"
    );
    // B read the same settings on its own schedule (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b
        .metrics()
        .contains("gatehouse_replay_store_risk{risk=\"eviction\",accepted=\"true\"} 1")
    {
        assert!(
            Instant::now() < deadline,
            "B does not show the accepted risk"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Set right again: A is ready by itself.
    assert!(redis
        .command("CONFIG SET maxmemory-policy noeviction")
        .unwrap()
        .starts_with("+OK"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.ready() != Some(200) {
        assert!(Instant::now() < deadline, "not ready again after the fix");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A managed Redis that disables `CONFIG` still works: the node cannot read `maxmemory-policy`,
/// says so in its log, and runs (the replicas it reads from `INFO`).
#[test]
fn a_store_without_config_still_works_and_says_what_it_could_not_check() {
    let redis = RedisServer::start_with_args(vec![
        "--rename-command".into(),
        "CONFIG".into(),
        String::new(),
    ])
    .unwrap();
    assert!(redis
        .command("CONFIG GET maxmemory-policy")
        .unwrap()
        .starts_with("-ERR"));
    let site = Site::new("noconfig");
    let a = site.node("a", &redis_store(&redis.url()));
    past_fences();
    assert_eq!(a.ready(), Some(200));
    let rt = runtime();
    let h = site.holder();
    rt.block_on(async {
        let c = connect(&site, "gate-a", &a).await;
        assert_eq!(
            c.verify(&site.token(&h), None).await.unwrap().reason,
            Reason::Accepted
        );
    });
    let log = std::fs::read_to_string(a.config.with_extension("log")).unwrap();
    assert!(log.contains("could not check maxmemory-policy"), "{log}");
}
