//! The instruction-count gate: gatehouse's hot paths run once each under callgrind (gungraun),
//! and `scripts/bench-gate` compares each bench's total instruction count (`Ir`) against the
//! committed baseline in `benches/gate/baseline.toml`. Instruction counts do not move with the
//! load on a noisy CI machine, so a regression of a few percent is visible; wall-clock figures
//! are `core.rs`'s (criterion).
//!
//! Stable names (`<group>/<function>`, `_` in the function's name read as `/`): `decode/token`,
//! `verify/single/ring`, `pipeline/accept`, `pipeline/batch/64`, `revocation/lookup`,
//! `replay/insert`. Every fixture is built in a setup function, which callgrind does not count,
//! and every bench returns its fixture so that dropping it is not counted either.
//!
//! Run: `scripts/bench-gate` (needs valgrind and the `gungraun-runner` pinned in
//! `benches/gate/baseline.toml`); by hand: `cargo bench -p gatehouse-benches --bench gate`.
//!
//! With the `gate-slowdown` feature, `verify/single/ring` verifies twice: the deliberate
//! regression that `scripts/bench-gate --self-test` shows the gate catching.

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use gatehouse_benches::{engine, holders, NOW};
use gatehouse_engine::dev::population::{derive_id, Holder};
use gatehouse_engine::{
    BatchMode, CachedCredential, Engine, EngineConfig, Item, Mark, ReplayGuard, RevocationState,
    Scanner,
};
use gatehouse_protocol::{
    verify, Backend, PublicKey, RevocationEntry, RevocationKind, RevocationList, Signature, Token,
};
use gungraun::{
    library_benchmark, library_benchmark_group, main, Callgrind, LibraryBenchmarkConfig,
};

/// Revoked identifiers in the `revocation/lookup` fixture.
const REVOKED: u64 = 1_000_000;
/// Identifiers looked up per `revocation/lookup` run, half revoked, half not: enough that the
/// per-process random seeds of the bloom filter and the hash set move the total by well under
/// 1 %.
const LOOKUPS: u64 = 16_384;
/// Live one-time-use entries in the `replay/insert` fixture (20,000 tokens/s × 30 s).
const LIVE: u64 = 600_000;
/// Fresh tokens marked per `replay/insert` run.
const INSERTS: u64 = 1024;
/// Tokens per `pipeline/batch/64` run.
const BATCH: usize = 64;

/// An engine whose verification pool has one thread, so the work (and the count) does not
/// depend on the number of cores of the machine running the gate, and whose signatures are
/// checked one by one: the batch path `auto` picks depends on the CPU (valgrind shows none
/// with AVX-512), and the count must not.
fn gate_engine() -> Engine {
    engine(EngineConfig {
        threads: 1,
        batch: BatchMode::Off,
        ..EngineConfig::default()
    })
}

/// `n` tokens of `holders`, made one after the other (no thread pool in the fixtures).
fn tokens_from(holders: &[Holder], first_nonce: u64, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            holders[i % holders.len()]
                .present(
                    NOW - 1,
                    derive_id("gate nonce", first_nonce + i as u64),
                    None,
                )
                .expect("present")
        })
        .collect()
}

fn one_token() -> Vec<u8> {
    tokens_from(&holders(1), 0, 1).pop().expect("token")
}

// `decode/token`: decoding one presentation token (COSE + CBOR), no signature check.
#[library_benchmark(setup = one_token)]
fn token(bytes: Vec<u8>) -> (Vec<u8>, Token) {
    let t = Token::decode(black_box(&bytes)).unwrap();
    (bytes, t)
}

library_benchmark_group!(name = decode, benchmarks = token);

/// What one device-signature check needs: the key, the signed bytes and the signature.
struct Signed {
    key: PublicKey,
    msg: Vec<u8>,
    sig: Signature,
}

fn signed() -> Signed {
    let t = Token::decode(&one_token()).expect("decode");
    let s = Signed {
        key: t.device_key().expect("device key"),
        msg: t.to_be_signed(),
        sig: t.signature,
    };
    // ring detects the CPU's features on first use: do that here, outside the count.
    verify(Backend::Ring, &s.key, &s.msg, &s.sig).expect("verify");
    s
}

// `verify/single/ring`: one device-signature check with ring (form rules, low s, ES256).
#[library_benchmark(setup = signed)]
fn single_ring(s: Signed) -> Signed {
    verify(
        Backend::Ring,
        black_box(&s.key),
        black_box(&s.msg),
        black_box(&s.sig),
    )
    .unwrap();
    #[cfg(feature = "gate-slowdown")]
    verify(
        Backend::Ring,
        black_box(&s.key),
        black_box(&s.msg),
        black_box(&s.sig),
    )
    .unwrap();
    s
}

library_benchmark_group!(name = verify, benchmarks = single_ring);

/// A warm engine and tokens it has not seen.
struct Pipeline {
    engine: Engine,
    gate: Arc<Scanner>,
    items: Vec<Item>,
}

/// A warm engine and `fresh` new tokens of `holders_n` holders, whose credentials are in the
/// issuer cache already.
///
/// The cache is filled directly, as `Engine::check` fills it after verifying an issuer
/// signature, rather than by verifying tokens: `pipeline/batch/64` counts every call of
/// `Engine::check`, including calls made in setup.
fn pipeline_fixture(holders_n: u64, fresh: usize) -> Pipeline {
    let engine = gate_engine();
    let gate = engine.scanner("gate-1-1").expect("scanner gate-1-1");
    let h = holders(holders_n);
    let (cache, _) = engine.tables();
    for t in tokens_from(&h, 0, h.len()) {
        let t = Token::decode(&t).expect("decode");
        let entry = CachedCredential {
            device_key: t.device_key().expect("device key"),
            issuer_kid: t.credential.issuer_kid,
        };
        cache.insert(t.credential.digest(), entry);
    }
    // The calling thread's first look at the engine's swappable state registers it with
    // arc-swap, once per thread: do that here, outside the count.
    let _ = engine.revocation_epoch();
    let items = tokens_from(&h, 1_000_000, fresh)
        .into_iter()
        .map(|token| Item {
            scanner: Arc::clone(&gate),
            token,
            challenge: None,
            retry: None,
            mdoc: None,
        })
        .collect();
    Pipeline {
        engine,
        gate,
        items,
    }
}

/// One fresh token; the engine has also verified a token of the same holder on this thread,
/// so every lazily initialised piece (ring's CPU detection, the replay shard) is ready.
fn one_fresh_token() -> Pipeline {
    let p = pipeline_fixture(1, 2);
    let v = p.engine.verify(&p.gate, &p.items[1].token, None, NOW);
    assert!(v.reason.is_accept(), "warm-up denied: {:?}", v.reason);
    p
}

fn batch_of_fresh_tokens() -> Pipeline {
    pipeline_fixture(BATCH as u64, BATCH)
}

// `pipeline/accept`: one valid token through every check on the calling thread, warm issuer
// cache: decode, issuer key, dates, freshness, revocation, cache hit, device signature,
// one-time use, gate policy.
#[library_benchmark(setup = one_fresh_token)]
fn accept(p: Pipeline) -> Pipeline {
    let v = p
        .engine
        .verify(&p.gate, black_box(&p.items[0].token), None, NOW);
    assert!(v.reason.is_accept());
    p
}

// `pipeline/batch/64`: 64 valid tokens of 64 holders (warm cache) through `verify_batch`.
//
// The signature checks run on the engine's pool (one thread here). Callgrind counts the
// calling thread from the bench function (dispatch, waiting, one-time use and policy in item
// order) and, on the pool thread, every call of `Engine::precheck` and `Engine::signatures`
// (together the stateless checks, `Engine::check`: decode to device signature; `check` itself
// is inlined). Not counted: rayon's scheduling and idle loop on the pool thread,
// whose spinning depends on timing, not on our code.
#[library_benchmark(
    setup = batch_of_fresh_tokens,
    config = LibraryBenchmarkConfig::default()
        .tool(Callgrind::with_args([
            "--toggle-collect=gatehouse_core::engine::Engine::precheck",
            "--toggle-collect=gatehouse_core::engine::Engine::signatures",
        ]))
)]
fn batch_64(p: Pipeline) -> (Pipeline, Vec<gatehouse_protocol::Verdict>) {
    let v = p.engine.verify_batch(black_box(&p.items), NOW);
    assert!(v.iter().all(|v| v.reason.is_accept()));
    (p, v)
}

library_benchmark_group!(name = pipeline, benchmarks = [accept, batch_64]);

/// Revocation state with `REVOKED` credentials, and the identifiers to look up.
fn revoked_million() -> (RevocationState, Vec<[u8; 16]>) {
    let revoke = (0..REVOKED)
        .map(|i| RevocationEntry {
            kind: RevocationKind::Credential,
            id: derive_id("revoked", i),
        })
        .collect();
    let state = RevocationState::empty()
        .expect("empty state")
        .apply(&RevocationList {
            epoch: 1,
            base: None,
            revoke,
            reinstate: vec![],
            digest: None,
        })
        .expect("apply");
    let ids = (0..LOOKUPS)
        .map(|i| {
            if i % 2 == 0 {
                derive_id("revoked", i * 977 % REVOKED)
            } else {
                derive_id("valid", i)
            }
        })
        .collect();
    (state, ids)
}

// `revocation/lookup`: 16,384 identifiers (8,192 revoked, 8,192 not) against 1,000,000 revoked
// credentials: bloom filter, then exact confirmation of every positive.
#[library_benchmark(setup = revoked_million)]
fn lookup(f: (RevocationState, Vec<[u8; 16]>)) -> (RevocationState, Vec<[u8; 16]>) {
    let (state, ids) = &f;
    let revoked = ids
        .iter()
        .filter(|id| state.is_revoked(RevocationKind::Credential, black_box(id)))
        .count();
    assert_eq!(revoked as u64, LOOKUPS / 2);
    f
}

library_benchmark_group!(name = revocation, benchmarks = lookup);

/// A one-time-use table sized as the engine's default, holding `LIVE` live entries, and the
/// fresh identifiers to mark.
fn live_window() -> (ReplayGuard, Vec<[u8; 16]>) {
    let config = EngineConfig::default();
    let guard = ReplayGuard::new(config.replay_capacity);
    for i in 0..LIVE {
        guard.mark(&derive_id("live", i), NOW + 30, NOW);
    }
    let fresh = (0..INSERTS).map(|i| derive_id("fresh", i)).collect();
    (guard, fresh)
}

// `replay/insert`: marking 1,024 fresh tokens used in a table already holding 600,000 live
// entries (20,000 tokens/s × 30 s).
#[library_benchmark(setup = live_window)]
fn insert(f: (ReplayGuard, Vec<[u8; 16]>)) -> (ReplayGuard, Vec<[u8; 16]>) {
    let (guard, ids) = &f;
    for id in ids {
        assert_eq!(guard.mark(black_box(id), NOW + 1, NOW), Mark::Fresh);
    }
    f
}

library_benchmark_group!(name = replay, benchmarks = insert);

main!(
    config = LibraryBenchmarkConfig::default()
        // Only instruction counts are gated: the cache simulation would double the run time.
        .tool(Callgrind::with_args(["--cache-sim=no"])),
    library_benchmark_groups = [decode, verify, pipeline, revocation, replay]
);
