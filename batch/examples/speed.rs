//! Per-signature cost of the batch equation beside ring's single verification, best of 5, for
//! batches of 8 to 128 signatures under distinct keys and under one key:
//! `cargo run --release -p gatehouse-batch --example speed` (pin it: `taskset -c 0`).
#![allow(clippy::unwrap_used, missing_docs)]
use gatehouse_batch::{verify_batch, Entry};
use gatehouse_protocol::{verify, Backend, PrivateKey, PublicKey, Signature};
use std::time::Instant;

fn main() {
    let n_max = 128;
    let mk = |seed: usize, i: usize| {
        let mut k = [0u8; 32];
        k[0] = 1;
        k[1..9].copy_from_slice(&(seed as u64).to_le_bytes());
        let p = PrivateKey::from_bytes(&k).unwrap();
        let msg = format!("m{i}").into_bytes();
        let sig = p.sign(&msg).unwrap();
        (p.public().clone(), msg, sig)
    };
    let distinct: Vec<(PublicKey, Vec<u8>, Signature)> = (0..n_max).map(|i| mk(i + 1, i)).collect();
    let one: Vec<(PublicKey, Vec<u8>, Signature)> = (0..n_max).map(|i| mk(1, i)).collect();
    let rounds = 5;
    let single = {
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..4 {
                for (k, m, s) in &distinct {
                    verify(Backend::Ring, k, m, s).unwrap();
                }
            }
            best = best.min(t.elapsed().as_secs_f64() / (4 * n_max) as f64);
        }
        best
    };
    println!("ring single: {:.1} us per signature", single * 1e6);
    for n in [8usize, 16, 32, 64, 128] {
        for (label, set) in [("distinct", &distinct), ("one key", &one)] {
            let e: Vec<Entry> = set[..n]
                .iter()
                .map(|(k, m, s)| Entry {
                    key: k,
                    msg: m,
                    sig: s,
                })
                .collect();
            let mut best = f64::MAX;
            for _ in 0..rounds {
                let reps = (512 / n).max(2);
                let t = Instant::now();
                for _ in 0..reps {
                    verify_batch(&e).unwrap();
                }
                best = best.min(t.elapsed().as_secs_f64() / (reps * n) as f64);
            }
            println!(
                "batch {n:>3} {label:>8}: {:.1} us per signature = {:.2}x ring",
                best * 1e6,
                single / best
            );
        }
    }
}
