//! The clock and the nonces that tests presenting tokens to a server share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The system clock, in Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fresh nonce for every token of the process: a counter, then the process id, so that test
/// binaries running at once never make the same one.
pub fn nonce() -> [u8; 16] {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut n = [0u8; 16];
    n[..8].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    n[8..12].copy_from_slice(&std::process::id().to_be_bytes());
    n
}
