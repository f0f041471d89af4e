//! The engine core's suite (`suite/core.rs`) over the shared one-time-use store: Redis, started
//! on loopback for this test binary (and stopped with it); and the fence's suite
//! (`suite/fence.rs`) over Redis servers of each test's own, flushed, restarted and paused.

// Fixture helpers unwrap: a fixture that cannot be built is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "suite/fence.rs"]
mod fence;
#[path = "suite/core.rs"]
mod suite;
mod support;

use gatehouse_engine::BatchMode;

/// The batch path of the suite's worlds: the engine's own choice (`Auto`).
fn batch_path() -> Option<(BatchMode, usize)> {
    None
}

fn store() -> support::TestStore {
    support::TestStore::redis()
}

#[test]
fn flushall_reopens_no_used_token() {
    fence::a_store_that_forgets_reopens_no_used_token(support::TestStore::redis_own());
}

#[test]
fn a_retry_after_flushall_gets_the_fence_denial() {
    fence::a_retry_after_a_loss_gets_the_fence_denial(support::TestStore::redis_own());
}

#[test]
fn a_restarted_redis_moves_the_fence() {
    fence::a_store_with_a_new_identity_moves_the_fence(support::TestStore::redis_own());
}

#[test]
fn a_paused_redis_fails_closed_and_recovers() {
    fence::a_late_store_fails_closed_and_recovers(support::TestStore::redis_own());
}

/// What `replica_acks = 1` costs a batch's round trip: the same marks on a primary with one
/// replica, without and with `WAIT 1`, alternating. Prints the figures (README, fleet mode).
/// `cargo test --release -p gatehouse-engine --test core_redis -- --ignored --nocapture
/// replica_acks_cost`
#[test]
#[ignore = "a measurement, not a check: run it by name"]
fn replica_acks_cost() {
    use gatehouse_engine::dev::redis::RedisServer;
    use gatehouse_engine::server::{RedisConfig, SharedStore};
    use gatehouse_engine::{Entry, MarkRequest};
    use std::time::{Duration, Instant};

    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    // No 5 s wait before the replica's first sync.
    let primary =
        RedisServer::start_with_args(vec!["--repl-diskless-sync-delay".into(), "0".into()])
            .unwrap();
    let replica = RedisServer::start_with_args(vec![
        "--replicaof".into(),
        "127.0.0.1".into(),
        primary.port().to_string(),
    ])
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica
        .command("INFO replication")
        .unwrap()
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A replica just synced may take a moment before it acknowledges writes.
    while !(primary
        .command("SET gatehouse-probe 1")
        .unwrap()
        .starts_with("+OK")
        && primary.command("WAIT 1 100").unwrap().trim() == ":1")
    {
        assert!(
            Instant::now() < deadline,
            "the replica does not acknowledge"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stores: Vec<SharedStore> = [0u32, 1]
        .iter()
        .map(|&acks| {
            let config = RedisConfig {
                replica_acks: acks,
                accept_risk: vec![gatehouse_engine::server::Risk::SplitBrain],
                timeout: Duration::from_secs(1),
                ..support::redis_config(vec![primary.url()], false)
            };
            let s = rt.block_on(SharedStore::connect(&config)).unwrap();
            let up = rt.block_on(s.check(support::FIRST_CONTACT));
            assert!(up, "acks {acks}: {:?}", s.health().settings());
            s
        })
        .collect();
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut n = 0u64;
    for round in 0..4000 {
        let which = round % 2;
        let marks: Vec<MarkRequest> = (0..8)
            .map(|_| {
                n += 1;
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&n.to_le_bytes());
                MarkRequest {
                    replay_id: id,
                    expiry: support::NOW + 30,
                    entry: Entry {
                        reason: gatehouse_protocol::Reason::Accepted,
                        retry: None,
                    },
                }
            })
            .collect();
        let t = Instant::now();
        let marked = rt.block_on(stores[which].mark(&marks, support::NOW));
        times[which].push(t.elapsed());
        assert!(
            marked
                .outcomes
                .iter()
                .all(|o| *o == gatehouse_engine::MarkOutcome::Fresh),
            "acks {which}, round {round}: {:?}",
            marked.outcomes
        );
    }
    for (acks, t) in times.iter_mut().enumerate() {
        t.sort();
        let mean = t.iter().sum::<Duration>() / t.len() as u32;
        println!(
            "replica_acks = {acks}: {} batches of 8 marks, mean {:?}, p50 {:?}, p99 {:?}",
            t.len(),
            mean,
            t[t.len() / 2],
            t[t.len() * 99 / 100]
        );
    }
}
