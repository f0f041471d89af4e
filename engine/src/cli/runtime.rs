//! What the commands share besides their output: the async runtime and the wall clock.

use anyhow::{Context, Result};

/// A multi-threaded tokio runtime with IO and timers, for a command that talks to the network.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The wall clock in Unix seconds (0 before the epoch).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
