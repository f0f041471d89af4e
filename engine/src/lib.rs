//! # gatehouse-engine
//!
//! The verification core of gatehouse: given a presentation token, the scanner that sent it
//! and `now`, decide accept or deny — for many tokens at once.
//!
//! The core ([`Engine`]) does no IO and reads no clock: `now` is an argument, so tests drive it
//! with a fake clock and no network. It checks, cheapest first (SPEC §6): decode, trusted issuer
//! key, credential dates, freshness, revocation ([`Revocations`]: bloom filter plus exact
//! confirmation), issuer signature (once per credential, remembered in a sharded
//! [`IssuerCache`]), device signature, one-time use ([`ReplayGuard`]), the scanner's challenge
//! and its role's policy. Batches run their signature checks in parallel on a rayon pool,
//! never on an async runtime thread.
//!
//! Nothing about a holder outlives the replay window: the engine keeps no per-holder history,
//! and its counters ([`Stats`]) are by scanner role and reason only.
//!
//! ```
//! use std::sync::Arc;
//! use gatehouse_engine::*;
//! use gatehouse_protocol::{vectors, Reason};
//!
//! let mut trust = TrustList::new();
//! trust.insert(IssuerKey {
//!     name: "test".into(),
//!     public: vectors::issuer_key().public().clone(),
//!     not_before: 0,
//!     not_after: u64::MAX,
//!     retired: false,
//! });
//! let mut scanners = ScannerRegistry::new();
//! scanners.insert(Scanner { id: "gate".into(), role: Role::Gate { unit: "1/12".parse()?, admits: DEFAULT_GATE_ADMITS.to_vec() }, mdoc: Default::default() });
//! let engine = Engine::new(EngineConfig::default(), trust, scanners)?;
//! let token = vectors::all()?.into_iter().find(|v| v.name == "token").unwrap().bytes;
//! let gate = engine.scanner("gate").unwrap();
//! assert_eq!(engine.verify(&gate, &token, None, vectors::NOW).reason, Reason::Accepted);
//! assert_eq!(engine.verify(&gate, &token, None, vectors::NOW).reason, Reason::Replayed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//! # Layout
//!
//! This crate is the `gatehouse` binary and a facade over the layer crates, re-exported under
//! the names the tests and the load harness use:
//!
//! - [`core`]: the sans-IO verification core, `gatehouse-core`. No sockets, files or clock.
//! - [`server`]: the shell, `gatehouse-server`: QUIC service, admission and micro-batching,
//!   one-time-use stores, revocation feed, file loading, operations endpoint, reload.
//! - [`client`]: the reference scanner client, `gatehouse-client`.
//! - [`dev`]: development tooling, `gatehouse-dev` (a development PKI, a synthetic population,
//!   loopback Redis servers). Not the product's API; TEST KEYS ONLY.
//!
//! The binary's commands and the demo live beside `main.rs` in `src/cli/`.

pub use gatehouse_client as client;
pub use gatehouse_core as core;
pub use gatehouse_dev as dev;
pub use gatehouse_mdoc as mdoc;
pub use gatehouse_server as server;

pub use crate::core::{
    compact, decide, military_discount_eligible, restart_fence, BatchMode, BatchStats, Batching,
    CachedCredential, Clock, ConfigError, Engine, EngineConfig, EngineError, Entry, IssuerCache,
    IssuerKey, Item, Life, LifeBook, ManualClock, Mark, MarkOutcome, MarkRequest, Observed,
    Prepared, ReplayGuard, RevocationError, RevocationKey, RevocationState, Revocations, Role,
    Scanner, ScannerRegistry, Stats, SystemClock, TrustList, DEFAULT_BATCH_FROM,
    DEFAULT_GATE_ADMITS, MB_FROM, SUSPECT_SECS,
};
pub use crate::core::{decide_mdoc, Disclosed, MdocItem, MdocPolicy, MdocRevocations};
