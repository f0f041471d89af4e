//! Test support shared by the engine's core suites: the one-time-use store a suite runs over,
//! and the faults a shared store can be put through.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::large_enum_variant
)]

pub mod fake;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gatehouse_engine::dev::redis::RedisServer;
use gatehouse_engine::server::{Backend, RedisConfig, SharedStore};
use gatehouse_engine::{Engine, Item};
use gatehouse_protocol::Verdict;

/// The suites' clock: a Unix time far from the real one, so nothing depends on it.
pub const NOW: u64 = 1_800_000_000;

/// When a suite's store is first checked: before any time a suite uses.
pub const FIRST_CONTACT: u64 = 1_700_000_000;

/// What a test can do to a shared store to make it forget, change or slow down.
pub trait Faults: Send + Sync {
    /// Loses every mark, as a restart without persistence or `FLUSHALL` does.
    fn forget(&self);
    /// Becomes another server that kept the data (a restart with persistence, a replica
    /// promoted with everything), or lost part of it.
    fn change_identity(&self);
    /// Answers later than the store's timeout from now on (`true`), or at once again.
    fn slow(&self, slow: bool);
}

/// Where a test world records one-time use.
pub enum TestStore {
    /// The engine's own table.
    Memory,
    /// A shared store (Redis on loopback, or a fake backend) and the faults it can be put
    /// through.
    Shared {
        store: SharedStore,
        runtime: tokio::runtime::Runtime,
        faults: Arc<dyn Faults>,
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

/// Faults on a real Redis server of the test's own.
struct RedisFaults {
    server: parking_lot::Mutex<RedisServer>,
}

impl Faults for RedisFaults {
    fn forget(&self) {
        let r = self.server.lock().command("FLUSHALL").unwrap();
        assert!(r.starts_with("+OK"), "{r}");
    }
    fn change_identity(&self) {
        // A restart: a new process (a new run id), here without persistence.
        self.server.lock().restart().unwrap();
    }
    fn slow(&self, slow: bool) {
        if slow {
            // Every client waits a second: longer than the store's timeout (300 ms).
            let r = self.server.lock().command("CLIENT PAUSE 1000 ALL").unwrap();
            assert!(r.starts_with("+OK"), "{r}");
        } else {
            // CLIENT UNPAUSE would itself wait out the pause: wait, then see it answer.
            std::thread::sleep(Duration::from_millis(1100));
            let r = self.server.lock().command("PING").unwrap();
            assert!(r.starts_with("+PONG"), "{r}");
        }
    }
}

/// Faults that cannot be made: the shared server of a suite is not to be disturbed.
struct NoFaults;

impl Faults for NoFaults {
    fn forget(&self) {
        panic!("this store is shared by the binary's tests: no faults")
    }
    fn change_identity(&self) {
        panic!("this store is shared by the binary's tests: no faults")
    }
    fn slow(&self, _: bool) {
        panic!("this store is shared by the binary's tests: no faults")
    }
}

impl TestStore {
    /// A Redis store on the shared loopback server, connected and up.
    pub fn redis() -> TestStore {
        let server = shared_redis();
        let store = Self::shared_with(
            |config| async move { SharedStore::connect(&config).await.unwrap() },
            redis_config(vec![server.url()], false),
        );
        store.with_faults(Arc::new(NoFaults))
    }

    /// A Redis store on a server of its own, which its faults restart, flush and pause.
    pub fn redis_own() -> TestStore {
        let server = RedisServer::start().unwrap();
        let config = RedisConfig {
            timeout: Duration::from_millis(300),
            ..redis_config(vec![server.url()], false)
        };
        let store = Self::shared_with(
            |config| async move { SharedStore::connect(&config).await.unwrap() },
            config,
        );
        store.with_faults(Arc::new(RedisFaults {
            server: parking_lot::Mutex::new(server),
        }))
    }

    /// A store over the fake backend ([`fake::FakeBackend`]).
    pub fn fake() -> TestStore {
        let backend = Arc::new(fake::FakeBackend::new());
        let config = RedisConfig {
            timeout: Duration::from_millis(200),
            ..RedisConfig::default()
        };
        let b: Arc<dyn Backend> = backend.clone();
        let store = Self::shared_with(|config| async move { SharedStore::new(b, &config) }, config);
        store.with_faults(backend)
    }

    fn shared_with<F, Fut>(make: F, config: RedisConfig) -> TestStore
    where
        F: FnOnce(RedisConfig) -> Fut,
        Fut: std::future::Future<Output = SharedStore>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = runtime.block_on(make(config));
        // The first contact, long before the suites' clock: a new store's life fences tokens
        // signed up to then + skew, which no suite token is.
        assert!(
            runtime.block_on(store.check(FIRST_CONTACT)),
            "the shared store did not come up"
        );
        TestStore::Shared {
            store,
            runtime,
            faults: Arc::new(NoFaults),
        }
    }

    fn with_faults(self, faults: Arc<dyn Faults>) -> TestStore {
        match self {
            TestStore::Shared { store, runtime, .. } => TestStore::Shared {
                store,
                runtime,
                faults,
            },
            m => m,
        }
    }

    /// The faults this store can be put through (a shared store of its own only).
    pub fn faults(&self) -> &dyn Faults {
        match self {
            TestStore::Memory => panic!("the memory table has no faults of a shared store"),
            TestStore::Shared { faults, .. } => faults.as_ref(),
        }
    }

    /// What a node's probe does: reconnect and check the store at `now`; whether it is up.
    pub fn probe(&self, now: u64) -> bool {
        match self {
            TestStore::Memory => true,
            TestStore::Shared { store, runtime, .. } => {
                store.health().is_up() || runtime.block_on(store.check(now))
            }
        }
    }

    /// The core's prepare, this store's marks, the fence, the core's complete: what the
    /// server's batcher does.
    pub fn verify_batch(&self, engine: &Engine, items: &[Item], now: u64) -> Vec<Verdict> {
        match self {
            TestStore::Memory => engine.verify_batch(items, now),
            TestStore::Shared { store, runtime, .. } => {
                engine.raise_fence(store.accept_from());
                let prepared = engine.prepare(items, now);
                let marked = runtime.block_on(store.mark(prepared.marks(), now));
                engine.raise_fence(marked.accept_from);
                engine.complete(prepared, &marked.outcomes, items)
            }
        }
    }
}
