//! mdoc presentations against gatehouse tokens, in the same run (SPEC §12; README "mdoc").
//! Both with their issuer signature cached (the morning case: every holder seen before), one
//! item per call on one thread, everything a node does per item except the network: decoding,
//! the checks, the device signature, one-time use and policy.
//!
//! - `mdoc_vs_token/token`: a gate token, every signature checked one by one (`batch = "off"`).
//! - `mdoc_vs_token/token_batched`: the same tokens in batches of 16 on the engine's own
//!   batch path (per token).
//! - `mdoc_vs_token/mdoc`: an mDL presentation (deviceSignature, two disclosed elements) at an
//!   age counter; the MSO's issuer signature and certificate chain cached.
//! - `mdoc_vs_token/mdoc_batched`: the same presentations in batches of 16 on the engine's own
//!   batch path (multi-buffer device signatures where the CPU has AVX-512 IFMA; per
//!   presentation).
//!
//! Run: `cargo bench -p gatehouse-benches --bench mdoc`.

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gatehouse_benches::{engine, holders, tokens, NOW};
use gatehouse_engine::dev::mdoc_population::MdocPopulation;
use gatehouse_engine::{BatchMode, Engine, EngineConfig, Item};

const POOL: usize = 2048;

/// Times `iters` items, `per_call` at a time, from `items`; every verdict must be `ok`. The
/// one-time-use table is cleared between passes, outside the timing.
fn timed(iters: u64, items: &[Item], per_call: usize, engine: &Engine) -> Duration {
    let mut spent = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        for chunk in items.chunks(per_call) {
            if done >= iters {
                break;
            }
            let start = Instant::now();
            let v = engine.verify_batch_serial(black_box(chunk), NOW);
            spent += start.elapsed();
            assert!(v.iter().all(|v| v.reason.is_accept()), "{v:?}");
            done += chunk.len() as u64;
        }
        engine.purge(NOW + 3600);
    }
    spent
}

fn mdoc_vs_token(c: &mut Criterion) {
    let single = engine(EngineConfig {
        batch: BatchMode::Off,
        ..EngineConfig::default()
    });
    let batched = engine(EngineConfig::default());
    let pop = MdocPopulation::generate(1, 64, NOW as i64).unwrap();
    single.set_mdoc_trust(pop.anchors().unwrap());
    batched.set_mdoc_trust(pop.anchors().unwrap());
    let h = holders(64);
    let gate = single.scanner("gate-1-1").unwrap();
    let token_items: Vec<Item> = tokens(&h, POOL)
        .into_iter()
        .map(|t| Item::new(Arc::clone(&gate), t))
        .collect();
    let age = single.scanner("age-1").unwrap();
    // Holders 1..=4 of every five are over 19: every presentation is accepted.
    let mdoc_items: Vec<Item> = (0..POOL)
        .map(|i| {
            let holder = 1 + (i % 4) + 5 * (i / 4 % 12);
            let request = pop.present(holder, &(i as u64).to_be_bytes(), NOW - 1);
            Item::mdoc(Arc::clone(&age), request.into())
        })
        .collect();
    // Warm both issuer caches.
    timed(POOL as u64, &token_items, 1, &single);
    timed(POOL as u64, &token_items, 16, &batched);
    timed(POOL as u64, &mdoc_items, 1, &single);
    timed(POOL as u64, &mdoc_items, 16, &batched);

    let mut g = c.benchmark_group("mdoc_vs_token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("token", |b| {
        b.iter_custom(|iters| timed(iters, &token_items, 1, &single))
    });
    g.bench_function("token_batched", |b| {
        b.iter_custom(|iters| timed(iters, &token_items, 16, &batched))
    });
    g.bench_function("mdoc", |b| {
        b.iter_custom(|iters| timed(iters, &mdoc_items, 1, &single))
    });
    g.bench_function("mdoc_batched", |b| {
        b.iter_custom(|iters| timed(iters, &mdoc_items, 16, &batched))
    });
    g.finish();
}

criterion_group!(benches, mdoc_vs_token);
criterion_main!(benches);
