//! Per-signature cost of `verify8` against the single ring verification, on one thread.
//!
//! `taskset -c 0 cargo run --release -p gatehouse-mb --example speed`
//!
//! Every signature has its own key (64 keys, 200-byte messages, about a token's size). Lines:
//! ring single verify; verify8 with 8 live lanes, then 1..7; and verify8 on 8 invalid
//! signatures (crypto_mb refuses them, then each gets verify8's second look with ring).

use std::hint::black_box;
use std::time::{Duration, Instant};

use gatehouse_mb::{status, verify8, Lane, Status, LANES};
use gatehouse_protocol::{verify, Backend, PrivateKey, PublicKey, Signature};

const KEYS: usize = 64;
const MIN_TIME: Duration = Duration::from_millis(1500);

/// Runs `f` (which verifies `per_call` signatures) until MIN_TIME has passed; µs per signature.
fn time(per_call: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..200 {
        f(i);
    }
    let start = Instant::now();
    let mut calls = 0usize;
    while start.elapsed() < MIN_TIME {
        for _ in 0..100 {
            f(calls);
            calls += 1;
        }
    }
    start.elapsed().as_secs_f64() * 1e6 / (calls * per_call) as f64
}

fn main() {
    let st = status();
    println!("gatehouse-mb status: {}", st.label());
    let keys: Vec<PrivateKey> = (0..KEYS)
        .map(|i| {
            let mut b = [0x5a; 32];
            b[0] = 1 + i as u8;
            PrivateKey::from_bytes(&b).unwrap_or_else(|e| unreachable(&format!("key {i}: {e}")))
        })
        .collect();
    let publics: Vec<&PublicKey> = keys.iter().map(|k| k.public()).collect();
    let msgs: Vec<Vec<u8>> = (0..KEYS).map(|i| vec![i as u8; 200]).collect();
    let sigs: Vec<Signature> = keys
        .iter()
        .zip(&msgs)
        .map(|(k, m)| {
            k.sign(m)
                .unwrap_or_else(|e| unreachable(&format!("sign: {e}")))
        })
        .collect();

    let ring = time(1, |i| {
        let j = i % KEYS;
        black_box(verify(Backend::Ring, publics[j], &msgs[j], &sigs[j]).is_ok());
    });
    println!("ring verify (single)        {ring:7.2} µs/signature");

    if st != Status::Ready {
        println!("verify8 unavailable: {}", st.label());
        return;
    }

    let lanes: Vec<Lane<'_>> = (0..KEYS)
        .map(|j| Lane {
            key: publics[j],
            msg: &msgs[j],
            sig: &sigs[j],
        })
        .collect();
    // Check once that every group verifies, so the timings are of the accepting path.
    for group in lanes.chunks(LANES) {
        if verify8(group) != Ok(0xff) {
            unreachable("a group of valid signatures did not verify");
        }
    }
    for live in (1..=LANES).rev() {
        let per = time(live, |i| {
            let start = (i * LANES) % KEYS;
            black_box(verify8(&lanes[start..start + live]).ok());
        });
        println!(
            "verify8, {live} live lane{}       {per:7.2} µs/signature  ({:.2}x ring)",
            if live == 1 { " " } else { "s" },
            ring / per
        );
    }

    // Invalid signatures: each message's last byte flipped.
    let bad_msgs: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Some(b) = m.last_mut() {
                *b ^= 1;
            }
            m
        })
        .collect();
    let bad: Vec<Lane<'_>> = (0..KEYS)
        .map(|j| Lane {
            key: publics[j],
            msg: &bad_msgs[j],
            sig: &sigs[j],
        })
        .collect();
    let per = time(LANES, |i| {
        let start = (i * LANES) % KEYS;
        black_box(verify8(&bad[start..start + LANES]).ok());
    });
    println!(
        "verify8, 8 invalid lanes    {per:7.2} µs/signature  ({:.2}x ring)",
        ring / per
    );
}

fn unreachable(what: &str) -> ! {
    eprintln!("speed: {what}");
    std::process::exit(1)
}
