//! Resident memory of the engine with 1,000,000 revocations, a full one-time-use window at
//! 20,000 tokens/s (600,000 live entries) and a full issuer cache (sized for 1,000,000 holders). Prints the figure the README
//! quotes. Run: `cargo bench -p gatehouse-benches --bench memory`.

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use gatehouse_benches::{engine, holders, NOW};
use gatehouse_engine::dev::population::derive_id;
use gatehouse_engine::{CachedCredential, EngineConfig, Mark};
use gatehouse_protocol::{RevocationEntry, RevocationKind, RevocationList};
use sha2::Digest;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn main() {
    // `cargo bench` passes --bench; any other argument is ignored.
    let base = rss_mib();
    let config = EngineConfig::default();
    let e = engine(config.clone());
    let revoke: Vec<RevocationEntry> = (0..1_000_000u64)
        .map(|i| RevocationEntry {
            kind: RevocationKind::Subject,
            id: derive_id("revoked", i),
        })
        .collect();
    let list = RevocationList {
        epoch: 1,
        base: None,
        revoke,
        reinstate: vec![],
        digest: None,
    };
    let start = std::time::Instant::now();
    e.apply_revocations(&list).unwrap();
    let applied = start.elapsed();
    drop(list);
    let after_rev = rss_mib();
    let (cache, replay) = e.tables();
    let live = 20_000 * config.params.window_secs;
    for i in 0..live {
        assert_eq!(
            replay.mark(&derive_id("live", i), NOW + config.params.window_secs, NOW),
            Mark::Fresh
        );
    }
    let after_replay = rss_mib();
    let h = holders(1);
    let device_key = gatehouse_protocol::PublicKey::from_sec1(&h[0].credential.device_key).unwrap();
    // Credential digests are SHA-256 outputs: spread over the sets like real ones.
    for i in 0..config.issuer_cache_capacity as u64 {
        let d: [u8; 32] = sha2::Sha256::digest(derive_id("cached", i)).into();
        cache.insert(
            d,
            CachedCredential {
                device_key: device_key.clone(),
                issuer_kid: [0; 8],
            },
        );
    }
    let total = rss_mib();
    println!("engine memory (VmRSS, MiB): process start {base:.1}");
    println!("  (the issuer cache's table is allocated with the engine: it is in the next line)");
    println!(
        "  + 1,000,000 revocations      -> {after_rev:.1}  (snapshot applied in {:.0} ms)",
        applied.as_secs_f64() * 1e3
    );
    println!("  + {live} live one-time-use entries -> {after_replay:.1}");
    println!(
        "  + {} cached credentials ({} slots)  -> {total:.1}",
        cache.len(),
        cache.capacity()
    );
    println!(
        "resident total: {total:.1} MiB = {:.1} MB (target <= 256 MB)",
        total * 1.048_576
    );
}
