//! Time to generate a synthetic population (device keys and issuer-signed credentials) on
//! every core: the cost the load harness pays before its first run with a new population.
//! Run: `cargo bench -p gatehouse-benches --bench population [-- HOLDERS]` (default
//! 1,000,000).

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::time::Instant;

use gatehouse_engine::dev::population::{Population, PopulationSpec};
use gatehouse_protocol::verify_strict;

fn main() {
    // `cargo bench` passes --bench; a number names the population size.
    let holders = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(1_000_000);
    let spec = PopulationSpec {
        holders,
        ..PopulationSpec::default()
    };
    let start = Instant::now();
    let pop = Population::generate(&spec, &|_| {}).unwrap();
    let secs = start.elapsed().as_secs_f64();
    // Spot-check what was made: every 10,000th credential's issuer signature verifies under
    // the strict rules (R y-parity included).
    let issuer = pop.issuer.public().clone();
    for h in pop.holders.iter().step_by(10_000) {
        let signed = gatehouse_protocol::SignedCredential::decode(&h.issued).unwrap();
        verify_strict(&issuer, &signed.to_be_signed(), &signed.signature).unwrap();
    }
    println!(
        "population: {holders} holders generated in {secs:.1} s on {} threads ({:.1} µs of wall time per holder)",
        rayon::current_num_threads(),
        secs * 1e6 / holders as f64
    );
}
