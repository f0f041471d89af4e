//! Criterion benches of gatehouse's hot paths. Group and bench names are stable: they are
//! tracked over time. Run: `cargo bench -p gatehouse-benches --bench core`.

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gatehouse_benches::{engine, holders, tokens, NOW};
use gatehouse_engine::dev::population::derive_id;
use gatehouse_engine::{
    BatchMode, Batching, Engine, EngineConfig, Item, Mark, ReplayGuard, RevocationState,
};
use gatehouse_protocol::{
    verify, verify_strict, Backend, RevocationEntry, RevocationKind, RevocationList, Token,
};
use rayon::prelude::*;

/// Times `iters` verifications of first-use tokens from a pool of `pool_len`: each round
/// runs `timed(n)` over the first `n` tokens, then `between()` outside the timing (it clears
/// the one-time-use table, so the pool's tokens are fresh again).
fn in_rounds(
    iters: u64,
    pool_len: usize,
    mut timed: impl FnMut(usize),
    mut between: impl FnMut(),
) -> Duration {
    let mut spent = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(pool_len);
        let start = Instant::now();
        timed(n);
        spent += start.elapsed();
        between();
        left -= n;
    }
    spent
}

/// Times `iters` batches of `n` items taken in turn from `items`, each through `verify` (every
/// verdict must accept); the one-time-use table is cleared between passes over `items`,
/// outside the timing.
fn batches_in_rounds(
    iters: u64,
    items: &[Item],
    n: usize,
    engine: &Engine,
    verify: impl Fn(&[Item]) -> Vec<gatehouse_protocol::Verdict>,
) -> Duration {
    let mut spent = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        for chunk in items.chunks(n) {
            if done == iters {
                break;
            }
            let start = Instant::now();
            let v = verify(black_box(chunk));
            spent += start.elapsed();
            assert!(v.iter().all(|v| v.reason.is_accept()));
            done += 1;
        }
        engine.purge(NOW + 3600);
    }
    spent
}

/// `decode/token`: decoding one presentation token (COSE + CBOR, no signature check).
fn decode(c: &mut Criterion) {
    let h = holders(1);
    let t = tokens(&h, 1).pop().unwrap();
    let mut g = c.benchmark_group("decode");
    g.bench_function("token", |b| {
        b.iter(|| Token::decode(black_box(&t)).unwrap())
    });
    g.finish();
}

/// `sign/fixed-base`: one token-sized ES256 signature as gatehouse signs (RFC 6979 nonce, the
/// fixed-base table for R = k·G, low s, R y-parity); `sign/p256`: the same signature with the
/// `p256` crate's generic signer (what gatehouse used before the table);
/// `sign/public-key`: deriving a public key from a private scalar (d·G, the table again).
fn sign_bench(c: &mut Criterion) {
    use p256::ecdsa::SigningKey;
    use sha2::{Digest, Sha256};
    let key = gatehouse_engine::dev::population::derive_key("bench signer", 1);
    let msg = [0x5au8; 300];
    let mut g = c.benchmark_group("sign");
    g.bench_function("fixed-base", |b| {
        b.iter(|| key.sign(black_box(&msg)).unwrap())
    });
    let reference = SigningKey::from_slice(&key.to_bytes()).unwrap();
    g.bench_function("p256", |b| {
        b.iter(|| {
            reference
                .sign_prehash_recoverable(&Sha256::digest(black_box(&msg)))
                .unwrap()
        })
    });
    let secret = key.to_bytes();
    g.bench_function("public-key", |b| {
        b.iter(|| {
            let k = gatehouse_protocol::PrivateKey::from_bytes(black_box(&secret)).unwrap();
            *k.public().compressed()
        })
    });
    g.finish();
}

/// `verify/single/<backend>`: one device-signature check (ES256 + low-s) per backend;
/// `verify/strict`: the check that also verifies the R y-parity (p256 arithmetic);
/// `verify/batch/<n>`: n signature checks spread over the verification pool (2 threads).
fn verify_bench(c: &mut Criterion) {
    let h = holders(16);
    let ts: Vec<Token> = tokens(&h, 256)
        .iter()
        .map(|t| Token::decode(t).unwrap())
        .collect();
    let prepared: Vec<_> = ts
        .iter()
        .map(|t| (t.device_key().unwrap(), t.to_be_signed(), t.signature))
        .collect();
    let mut g = c.benchmark_group("verify");
    for backend in Backend::ALL {
        let (k, m, s) = &prepared[0];
        g.bench_function(BenchmarkId::new("single", backend.label()), |b| {
            b.iter(|| verify(backend, black_box(k), black_box(m), black_box(s)).unwrap())
        });
    }
    let (k, m, s) = &prepared[0];
    g.bench_function("strict", |b| {
        b.iter(|| verify_strict(black_box(k), black_box(m), black_box(s)).unwrap())
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for n in [1usize, 16, 64, 256] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("batch", n), |b| {
            b.iter(|| {
                pool.install(|| {
                    prepared[..n]
                        .par_iter()
                        .for_each(|(k, m, s)| verify(Backend::Ring, k, m, s).unwrap())
                })
            })
        });
    }
    g.finish();
}

/// `revocation/lookup/{hit,miss}`: one identifier against 1,000,000 revoked entries
/// (bloom filter, then exact confirmation of positives).
fn revocation(c: &mut Criterion) {
    let revoke: Vec<RevocationEntry> = (0..1_000_000u64)
        .map(|i| RevocationEntry {
            kind: RevocationKind::Credential,
            id: derive_id("revoked", i),
        })
        .collect();
    let state = RevocationState::empty()
        .unwrap()
        .apply(&RevocationList {
            epoch: 1,
            base: None,
            revoke,
            reinstate: vec![],
            digest: None,
        })
        .unwrap();
    let hits: Vec<[u8; 16]> = (0..1024u64)
        .map(|i| derive_id("revoked", i * 977))
        .collect();
    let misses: Vec<[u8; 16]> = (0..1024u64).map(|i| derive_id("valid", i)).collect();
    let mut g = c.benchmark_group("revocation");
    let mut i = 0;
    g.bench_function("lookup/hit", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            assert!(state.is_revoked(RevocationKind::Credential, black_box(&hits[i])))
        })
    });
    g.bench_function("lookup/miss", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            state.is_revoked(RevocationKind::Credential, black_box(&misses[i]))
        })
    });
    g.finish();
}

/// `replay/insert`: marking a fresh token used in a table already holding 600,000 live
/// entries (20,000 tokens/s × 30 s). Each round inserts at most 100,000 new ids into a table
/// prefilled afresh (outside the timing), so the table stays at the size being measured.
fn replay(c: &mut Criterion) {
    let prefilled = || {
        let guard = ReplayGuard::new(EngineConfig::default().replay_capacity);
        for i in 0..600_000u64 {
            guard.mark(&derive_id("live", i), NOW + 30, NOW);
        }
        guard
    };
    let ids: Vec<[u8; 16]> = (0..100_000u64).map(|i| derive_id("fresh", i)).collect();
    let mut g = c.benchmark_group("replay");
    g.bench_function("insert", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(ids.len());
                let guard = prefilled();
                let start = Instant::now();
                for id in &ids[..n] {
                    assert_eq!(guard.mark(black_box(id), NOW + 30, NOW), Mark::Fresh);
                }
                spent += start.elapsed();
                left -= n;
            }
            spent
        })
    });
    g.finish();
}

/// `cache/issuer-hit`: looking up a verified credential in the issuer-signature cache.
fn cache(c: &mut Criterion) {
    let e = engine(EngineConfig::default());
    let h = holders(1);
    let t = tokens(&h, 1).pop().unwrap();
    let gate = e.scanner("gate-1-1").unwrap();
    e.verify(&gate, &t, None, NOW);
    let digest = Token::decode(&t).unwrap().credential.digest();
    let (cache, _) = e.tables();
    let mut g = c.benchmark_group("cache");
    g.bench_function("issuer-hit", |b| {
        b.iter(|| cache.get(black_box(&digest)).unwrap())
    });
    g.finish();
}

/// Runs `per_round` verifications of fresh tokens per round, clearing the one-time-use table
/// between rounds (outside the timing), so every timed verification is a first use.
fn pipeline(c: &mut Criterion) {
    let e = engine(EngineConfig::default());
    let h = holders(64);
    let pool = tokens(&h, 8192);
    let gate = e.scanner("gate-1-1").unwrap();
    // Warm the issuer cache for the 64 credentials.
    for t in &pool[..64] {
        assert!(e.verify(&gate, t, None, NOW).reason.is_accept());
    }
    e.purge(NOW + 3600);
    let mut g = c.benchmark_group("pipeline");
    g.measurement_time(Duration::from_secs(8));
    // `pipeline/accept`: one valid token through every check, warm issuer cache.
    g.bench_function("accept", |b| {
        b.iter_custom(|iters| {
            in_rounds(
                iters,
                pool.len(),
                |n| {
                    for t in &pool[..n] {
                        assert!(e.verify(&gate, black_box(t), None, NOW).reason.is_accept());
                    }
                },
                || e.purge(NOW + 3600),
            )
        })
    });
    // `pipeline/batch/64`: 64 valid tokens as one batch on the verification pool.
    let items: Vec<Item> = pool
        .iter()
        .map(|t| Item {
            scanner: gate.clone(),
            token: t.clone(),
            challenge: None,
            retry: None,
            mdoc: None,
        })
        .collect();
    g.throughput(Throughput::Elements(64));
    g.bench_function("batch/64", |b| {
        b.iter_custom(|iters| {
            batches_in_rounds(iters, &items, 64, &e, |chunk| e.verify_batch(chunk, NOW))
        })
    });
    g.finish();
}

/// `per-signature/<path>/<n>`: the batch paths alone, per signature (throughput in
/// signatures), beside `verify/single/ring` and `openssl speed` (`benches/openssl_compare.sh`):
/// the equation over 64 device signatures of distinct holders (`equation-distinct/64`) and of
/// one holder (`equation-one-key/64`), and, where the CPU has AVX-512 IFMA, a multi-buffer call
/// of 8 distinct keys (`multibuffer/8`). Everything from the key, the signed bytes and the
/// signature: hashing, range checks, R rebuilt from its parity, coefficients, the equation.
fn per_signature(c: &mut Criterion) {
    let prepared = |h: &[gatehouse_engine::dev::population::Holder]| -> Vec<_> {
        tokens(h, 64)
            .iter()
            .map(|t| {
                let t = Token::decode(t).unwrap();
                (t.device_key().unwrap(), t.to_be_signed(), t.signature)
            })
            .collect()
    };
    let distinct = prepared(&holders(64));
    let one_key = prepared(&holders(1));
    let mut g = c.benchmark_group("per-signature");
    for (label, set) in [
        ("equation-distinct", &distinct),
        ("equation-one-key", &one_key),
    ] {
        let entries: Vec<gatehouse_batch::Entry<'_>> = set
            .iter()
            .map(|(key, msg, sig)| gatehouse_batch::Entry { key, msg, sig })
            .collect();
        g.throughput(Throughput::Elements(64));
        g.bench_function(BenchmarkId::new(label, 64), |b| {
            b.iter(|| gatehouse_batch::verify_batch(black_box(&entries)).unwrap())
        });
    }
    if gatehouse_mb::status() == gatehouse_mb::Status::Ready {
        let lanes: Vec<gatehouse_mb::Lane<'_>> = distinct[..8]
            .iter()
            .map(|(key, msg, sig)| gatehouse_mb::Lane { key, msg, sig })
            .collect();
        g.throughput(Throughput::Elements(8));
        g.bench_function(BenchmarkId::new("multibuffer", 8), |b| {
            b.iter(|| assert_eq!(gatehouse_mb::prove8(black_box(&lanes)), Ok(0xff)))
        });
    }
    g.finish();
}

/// `equation/{one-by-one,equation}/{8,16,32}`: a verification turn's serial batch of `n`
/// first-use tokens of distinct holders, 2,048 of them, with the issuer cache at its smallest
/// setting (`issuer_cache_capacity = 1`; the cache still keeps some slots per shard, and the
/// one-by-one times, about 55-65 µs a token, show most issuer signatures are found there). The
/// signatures are checked one by one (`batch = "off"`), with one equation (`"equation"`,
/// `batch_from = 1`) or, where the CPU has AVX-512 IFMA, with multi-buffer calls
/// (`"multibuffer"`). Throughput is in tokens.
fn equation(c: &mut Criterion) {
    let h = holders(2048);
    let pool = tokens(&h, 2048);
    let mut g = c.benchmark_group("equation");
    g.measurement_time(Duration::from_secs(6));
    let mut paths = vec![
        ("one-by-one", BatchMode::Off),
        ("equation", BatchMode::Equation),
    ];
    if Batching::resolve(BatchMode::Multibuffer, false, 1).is_ok() {
        paths.push(("multibuffer", BatchMode::Multibuffer));
    }
    for (label, batch) in paths {
        let e = engine(EngineConfig {
            batch,
            batch_from: 1,
            issuer_cache_capacity: 1,
            ..EngineConfig::default()
        });
        let gate = e.scanner("gate-1-1").unwrap();
        let items: Vec<Item> = pool
            .iter()
            .map(|t| Item::new(gate.clone(), t.clone()))
            .collect();
        for n in [8usize, 16, 32] {
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(BenchmarkId::new(label, n), |b| {
                b.iter_custom(|iters| {
                    batches_in_rounds(iters, &items, n, &e, |chunk| {
                        e.verify_batch_serial(chunk, NOW)
                    })
                })
            });
        }
    }
    g.finish();
}

/// `quic/roundtrip`: one Verify request on a warm connection over loopback QUIC (mTLS), to the
/// real service with its micro-batcher; compare with `pipeline/accept` for the QUIC layer's
/// share.
fn quic(c: &mut Criterion) {
    use gatehouse_engine::{client, dev::pki, server};
    use std::sync::Arc;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The service reads the system clock: tokens are made now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let e = Arc::new(engine(EngineConfig::default()));
    let h = gatehouse_benches::holders_at(64, now);
    let pool = gatehouse_benches::tokens_at(&h, 4096, now);
    let dev = pki::DevPki::generate(&["gate-1-1".to_string()]).unwrap();
    let config = server::ServerConfig::new(dev.server.chain(), dev.server.key(), dev.ca.chain());
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let srv = rt.spawn(server::run(e.clone(), config, socket, None, async move {
        let _ = stopped.await;
    }));
    let identity = client::ClientIdentity {
        roots: dev.ca.chain(),
        chain: dev.scanners[0].1.chain(),
        key: dev.scanners[0].1.key(),
    };
    let scanner = rt
        .block_on(client::ScannerClient::connect(addr, "localhost", identity))
        .unwrap();
    // Warm the connection and the issuer cache.
    for t in &pool[..64] {
        assert!(rt
            .block_on(scanner.verify(t, None))
            .unwrap()
            .reason
            .is_accept());
    }
    e.purge(now + 3600);
    let mut g = c.benchmark_group("quic");
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("roundtrip", |b| {
        b.iter_custom(|iters| {
            in_rounds(
                iters,
                pool.len(),
                |n| {
                    rt.block_on(async {
                        for t in &pool[..n] {
                            let v = scanner.verify(black_box(t), None).await.unwrap();
                            assert!(v.reason.is_accept());
                        }
                    })
                },
                || e.purge(now + 3600),
            )
        })
    });
    g.finish();
    rt.block_on(scanner.close());
    let _ = stop.send(());
    let _ = rt.block_on(srv);
}

criterion_group!(
    benches,
    decode,
    sign_bench,
    verify_bench,
    per_signature,
    revocation,
    replay,
    cache,
    pipeline,
    equation,
    quic
);
criterion_main!(benches);
