//! The demo's knobs and their bounds.

use anyhow::Result;

/// Longest rush: tokens are signed before the clock starts and must stay inside the 30 s
/// acceptance window until the last one is sent.
pub const MAX_SECONDS: f64 = 20.0;

/// Knobs of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Holders in the synthetic population.
    pub holders: usize,
    /// Scanner connections (spread over the standard gates, partners and counters).
    pub scanners: usize,
    /// Length of the rush.
    pub seconds: f64,
    /// Mean arrival rate (requests per second, Poisson).
    pub rate: f64,
    /// Print progress to stderr.
    pub progress: bool,
    /// Engine nodes; more than one share their one-time use on a loopback Redis.
    pub nodes: usize,
    /// Share of the genuine presentations that are ISO/IEC 18013-5 mdoc presentations
    /// (VerifyMdoc), in [0, 1].
    pub mdoc_share: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            holders: 100_000,
            scanners: 36,
            seconds: 10.0,
            rate: 1000.0,
            progress: true,
            nodes: 1,
            mdoc_share: 0.0,
        }
    }
}

impl DemoOptions {
    /// Refuses knobs outside the bounds the demo can keep (a rush of at most
    /// [`MAX_SECONDS`], a population and a fleet of a size one machine holds).
    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(self.seconds > 0.0 && self.seconds <= MAX_SECONDS, "--seconds must be in (0, {MAX_SECONDS}]: the demo signs its tokens ahead (use the load harness for long runs)");
        anyhow::ensure!(
            self.rate > 0.0 && self.rate <= 100_000.0,
            "--rate must be in (0, 100000]"
        );
        anyhow::ensure!(
            self.holders >= 10 && self.holders <= 2_000_000,
            "--holders must be in [10, 2000000]"
        );
        anyhow::ensure!(
            self.scanners >= 1 && self.scanners <= 1024,
            "--scanners must be in [1, 1024]"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.mdoc_share),
            "--mdoc-share must be in [0, 1]"
        );
        Ok(())
    }
}
