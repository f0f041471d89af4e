//! # gatehouse-dev
//!
//! Development tooling, not the product's API: a development PKI and a synthetic population,
//! test ISO/IEC 18013-5 mDL documents and presentations ([`mdoc`]), for the demo, the tests,
//! the benches and the load harness. **TEST KEYS ONLY.**

pub mod attack;
pub mod mdoc;
pub mod mdoc_population;
pub mod pki;
pub mod population;
pub mod progress;
pub mod redis;
pub mod rng;
