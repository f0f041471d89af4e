//! Test support shared by the engine's integration tests: the one-time-use store a suite runs
//! over.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gatehouse_engine::dev::redis::RedisServer;
use gatehouse_engine::server::{RedisConfig, RedisStore};
use gatehouse_engine::{Engine, Item};
use gatehouse_protocol::Verdict;

/// Where a test world records one-time use.
pub enum TestStore {
    /// The engine's own table.
    Memory,
    /// A Redis store on a loopback server shared by this test binary, under a key prefix of
    /// this world's own.
    Redis {
        store: RedisStore,
        runtime: tokio::runtime::Runtime,
        _server: Arc<RedisServer>,
    },
}

/// The loopback Redis of this test binary (its watchdog stops it when the binary exits).
pub fn shared_redis() -> Arc<RedisServer> {
    static SERVER: OnceLock<Arc<RedisServer>> = OnceLock::new();
    Arc::clone(SERVER.get_or_init(|| Arc::new(RedisServer::start().expect("start redis-server"))))
}

/// A Redis store configuration for tests: generous timeout (the machine is shared), a prefix of
/// its own.
pub fn redis_config(urls: Vec<String>, cluster: bool) -> RedisConfig {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    RedisConfig {
        urls,
        cluster,
        prefix: format!(
            "test:{}:{}:",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
        timeout: Duration::from_secs(2),
        probe_interval: Duration::from_millis(100),
        ..RedisConfig::default()
    }
}

impl TestStore {
    /// A Redis store on the shared loopback server, connected and up.
    pub fn redis() -> TestStore {
        let server = shared_redis();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = runtime
            .block_on(RedisStore::connect(&redis_config(
                vec![server.url()],
                false,
            )))
            .unwrap();
        // Connected stores start down until the probe sees them answer.
        runtime.block_on(async {
            let probe = tokio::spawn(store.probe().run());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !store.health().is_up() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            probe.abort();
        });
        assert!(store.health().is_up(), "redis store did not come up");
        TestStore::Redis {
            store,
            runtime,
            _server: server,
        }
    }

    /// The core's prepare, this store's marks, the core's complete.
    pub fn verify_batch(&self, engine: &Engine, items: &[Item], now: u64) -> Vec<Verdict> {
        match self {
            TestStore::Memory => engine.verify_batch(items, now),
            TestStore::Redis { store, runtime, .. } => {
                let prepared = engine.prepare(items, now);
                let outcomes = runtime.block_on(store.mark(prepared.marks(), now));
                engine.complete(prepared, &outcomes, items)
            }
        }
    }
}
