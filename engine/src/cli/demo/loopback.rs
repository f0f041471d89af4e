//! The demo's deployment on loopback: engine nodes (sharing one-time use on a Redis the demo
//! starts when there are several), and the scanners' QUIC connections spread over them.

use super::report::SignaturePaths;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gatehouse_engine::client::{ClientIdentity, ScannerClient};
use gatehouse_engine::dev::mdoc_population::MdocPopulation;
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population::Population;
use gatehouse_engine::dev::redis::RedisServer;
use gatehouse_engine::server::{self, RedisConfig, ServerConfig, ServerError, SharedStore, Store};
use gatehouse_engine::{Engine, EngineConfig};
use gatehouse_protocol::Verdict;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::plan::Payload;
use super::rush::Transport;

/// The Redis key prefix of the demo's one-time use.
const PREFIX: &str = "gatehouse-demo:";

/// The demo's nodes, serving on loopback until stopped.
pub struct Loopback {
    /// The nodes, in the order they started.
    nodes: Vec<Node>,
    /// The store the nodes share when there are several (dropped after them).
    redis: Option<RedisServer>,
    /// The engines' UTC offset (every node has the default configuration).
    utc_offset: i32,
    /// The nodes' engines, for their signature counters.
    engines: Vec<Arc<Engine>>,
}

/// A running node.
struct Node {
    /// Where it listens.
    addr: SocketAddr,
    /// Tells it to drain and stop.
    stop: oneshot::Sender<()>,
    /// Its task.
    task: JoinHandle<Result<(), ServerError>>,
}

impl Loopback {
    /// Starts `nodes` nodes that trust the population's issuer and scanners (and the mDL
    /// pool's IACA, when given), know its revocations, and serve the PKI's server certificate.
    pub async fn start(
        pop: &Population,
        mdocs: Option<&MdocPopulation>,
        pki: &DevPki,
        nodes: usize,
    ) -> Result<Loopback> {
        // More than one node: one-time use on a loopback Redis the demo starts (and stops).
        let redis = if nodes > 1 {
            Some(start_redis()?)
        } else {
            None
        };
        let mut started = Vec::new();
        let mut utc_offset = None;
        let mut engines = Vec::new();
        for _ in 0..nodes {
            let engine = Arc::new(Engine::new(
                EngineConfig::default(),
                pop.trust_list(),
                pop.scanners.clone(),
            )?);
            engine.apply_revocations(&pop.revocations)?;
            if let Some(m) = mdocs {
                engine.set_mdoc_trust(m.anchors().context("the mDL pool's IACA")?);
            }
            utc_offset.get_or_insert(engine.config().utc_offset_secs);
            engines.push(Arc::clone(&engine));
            started.push(start_node(engine, pki, redis.as_ref()).await?);
        }
        let utc_offset = utc_offset.context("at least one node")?;
        Ok(Loopback {
            nodes: started,
            redis,
            utc_offset,
            engines,
        })
    }

    /// How the nodes checked signatures, summed over them.
    pub fn signatures(&self) -> SignaturePaths {
        let mut s = SignaturePaths {
            path: self
                .engines
                .first()
                .map_or("off", |e| e.batching().label())
                .to_string(),
            ..SignaturePaths::default()
        };
        for e in &self.engines {
            let b = e.batch_stats();
            s.equations += b.batches();
            s.equations_failed += b.failed();
            s.equation_signatures += b.signatures();
            s.multibuffer_calls += b.mb_calls();
            s.multibuffer_signatures += b.mb_signatures();
            s.multibuffer_unproven += b.mb_unproven();
        }
        s
    }

    /// The engines' UTC offset, which the expected verdicts depend on.
    pub fn utc_offset(&self) -> i32 {
        self.utc_offset
    }

    /// The nodes' addresses, for the progress line.
    pub fn addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where one-time use is recorded, for the report.
    pub fn store(&self) -> String {
        match &self.redis {
            Some(r) => format!("redis {}", r.url()),
            None => "memory".into(),
        }
    }

    /// Connects `connections` scanner connections (at least one per scanner of the PKI),
    /// connection i to node i: a scanner's connections (and so the replays it sends) spread
    /// over every node.
    pub async fn connect(&self, pki: &DevPki, connections: usize) -> Result<Quic> {
        let scanners = pki.scanners.len();
        let mut clients: Vec<Vec<ScannerClient>> = vec![Vec::new(); scanners];
        for i in 0..connections.max(scanners) {
            let s = i % scanners;
            let (_, issued) = &pki.scanners[s];
            let identity = ClientIdentity {
                roots: pki.ca.chain(),
                chain: issued.chain(),
                key: issued.key(),
            };
            let addr = self.nodes[i % self.nodes.len()].addr;
            clients[s].push(
                ScannerClient::connect(addr, "localhost", identity)
                    .await
                    .context("scanner connection")?,
            );
        }
        Ok(Quic {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// Stops every node and waits (15 s each) for it to drain; then stops the Redis.
    pub async fn stop(self) -> Result<()> {
        for node in self.nodes {
            let _ = node.stop.send(());
            match tokio::time::timeout(Duration::from_secs(15), node.task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e).context("server"),
                Ok(Err(e)) => return Err(anyhow::anyhow!("server task: {e}")),
                Err(_) => anyhow::bail!("server did not drain within 15 s"),
            }
        }
        drop(self.redis);
        Ok(())
    }
}

/// Starts a Redis on loopback for the nodes' one-time use.
fn start_redis() -> Result<RedisServer> {
    let r = RedisServer::start()
        .context("starting a loopback Redis for the nodes (scripts/redis-install)")?;
    // A server the demo just started holds no marks: its life starts without a fence.
    r.seed_life(PREFIX)
        .context("starting the demo store's life")?;
    Ok(r)
}

/// Starts one node serving `engine` on a free loopback port, its one-time use in `redis`
/// when given (in memory otherwise).
async fn start_node(
    engine: Arc<Engine>,
    pki: &DevPki,
    redis: Option<&RedisServer>,
) -> Result<Node> {
    let mut config = ServerConfig::new(pki.server.chain(), pki.server.key(), pki.ca.chain());
    if let Some(r) = redis {
        let redis_config = RedisConfig {
            urls: vec![r.url()],
            prefix: PREFIX.into(),
            ..RedisConfig::default()
        };
        let store = SharedStore::connect(&redis_config).await?;
        anyhow::ensure!(store.health().is_up(), "the demo's Redis does not answer");
        config.store = Store::Shared(store);
    }
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(engine, config, socket, None, async move {
        let _ = stopped.await;
    }));
    Ok(Node { addr, stop, task })
}

/// The demo's transport: one QUIC connection per scanner certificate, round-robin when several
/// connections share a scanner.
pub struct Quic {
    /// Connections by scanner.
    clients: Vec<Vec<ScannerClient>>,
    /// The next connection to use, round-robin.
    next: AtomicUsize,
}

impl Quic {
    /// How many connections are open.
    pub fn connections(&self) -> usize {
        self.clients.iter().map(Vec::len).sum()
    }

    /// Closes every connection.
    pub async fn close(&self) {
        for c in self.clients.iter().flatten() {
            c.close().await;
        }
    }
}

impl Transport for Quic {
    fn verify(
        &self,
        scanner: usize,
        payload: Payload,
    ) -> Pin<Box<dyn Future<Output = Result<Verdict>> + Send + '_>> {
        Box::pin(async move {
            let conns = self
                .clients
                .get(scanner)
                .context("no connection for this scanner")?;
            let c = &conns[self.next.fetch_add(1, Ordering::Relaxed) % conns.len().max(1)];
            Ok(match payload {
                Payload::Token(token) => c.verify(&token, None).await?,
                Payload::Mdoc(request) => c.verify_mdoc(*request).await?,
            })
        })
    }
}
