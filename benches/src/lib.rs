//! Shared fixtures for gatehouse's benches: a warm engine and pools of fresh tokens.

// A bench whose fixture cannot be built has nothing to measure: it stops with the reason.
#![allow(clippy::expect_used)]

use gatehouse_engine::dev::population::{
    credential, derive_id, derive_key, issuer_key, standard_scanners, trust_list, Holder,
};
use gatehouse_engine::{Engine, EngineConfig};

/// The benches' fixed clock (Unix seconds).
pub const NOW: u64 = 1_800_000_000;

/// An engine trusting the synthetic issuer, with the standard scanners.
pub fn engine(config: EngineConfig) -> Engine {
    let issuer = issuer_key(1);
    Engine::new(config, trust_list(&issuer), standard_scanners()).expect("engine")
}

/// `n` holders of unit 1/1/1/1 (admitted by gate-1-1), valid around [`NOW`].
pub fn holders(n: u64) -> Vec<Holder> {
    holders_at(n, NOW)
}

/// `n` holders of unit 1/1/1/1, valid around `now`.
pub fn holders_at(n: u64, now: u64) -> Vec<Holder> {
    let issuer = issuer_key(1);
    (0..n)
        .map(|i| {
            let mut c = credential(now, i);
            c.unit = gatehouse_protocol::UnitPath::new(&[1, 1, 1, 1]).unwrap_or_default();
            Holder::issue(&issuer, derive_key("bench device", i), c).expect("issue")
        })
        .collect()
}

/// `n` fresh tokens made at `NOW - 1`, cycling over `holders`, distinct nonces.
pub fn tokens(holders: &[Holder], n: usize) -> Vec<Vec<u8>> {
    tokens_at(holders, n, NOW)
}

/// `n` fresh tokens made at `now - 1`.
pub fn tokens_at(holders: &[Holder], n: usize, now: u64) -> Vec<Vec<u8>> {
    use rayon::prelude::*;
    (0..n)
        .into_par_iter()
        .map(|i| {
            holders[i % holders.len()]
                .present(now - 1, derive_id("bench nonce", i as u64), None)
                .expect("present")
        })
        .collect()
}
