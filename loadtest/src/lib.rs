//! # gatehouse-loadtest
//!
//! The SRE's load harness: replays a morning rush against a real `gatehouse serve` over QUIC,
//! checks every verdict, measures latency open loop, finds the capacity knee, and fails when a
//! latency budget is missed.
//!
//! - [`Fleet`]: a synthetic population (device keys, issued credentials, revocations),
//!   generated on every core and cached on disk in a compact binary file.
//! - [`RushModel`] → [`Plan`] → [`schedule`]: from holders to the peak rate, a compressed
//!   ramp-up / peak / ramp-down plan, and Poisson arrivals drawn from it, mixed with replays,
//!   forgeries, stale tokens and garbage, and (`--mdoc-share`) ISO/IEC 18013-5 mdoc
//!   presentations from an [`mdoc::MdocPool`].
//! - [`openloop::run`]: sends each arrival at its time whatever the engine does, signs tokens
//!   just ahead of their send time on a pool of threads, times each request from its intended
//!   send time into HDR histograms, and compares each verdict with [`expected`].
//! - [`Harness`] and [`sweep`]: one engine (or a fleet of nodes, [`SpawnedSite`]), many
//!   runs; the capacity sweep steps the rate up until the [`Budget`] breaks.
//! - [`closed::run`]: the same traffic as goose scenarios (closed loop), with goose's test
//!   plans, thresholds and HTML/JSON/Markdown reports.
//! - [`summary`]: what a run measured ([`RunSummary`], [`SweepSummary`] and the raw
//!   [`summary::RunStats`]), read by the budget, the report and the HTML page alike.
//! - [`merge`]: the reports of a run's shards (`--shard I/N`, one harness process per machine)
//!   added up into one, percentiles read from merged histograms.
//! - [`Report`]: the JSON summary CI reads, with a comparison against a baseline;
//!   [`html::render`] draws it as one self-contained HTML page (inline SVG charts, nothing
//!   loaded from the network).
//!
//! It does not run on a network of its choosing: requests go to an engine it started on
//! loopback, or to the address the operator names. Every run is bounded in time and in
//! requests.

// Module dependency order (a DAG: each module uses only modules listed above it):
//   cpu, expect, fleet, model: no module of this crate
//   summary  → model
//   budget   → summary
//   target   → cpu, fleet, model
//   report   → budget, fleet, model, summary
//   mdoc     → model, target
//   openloop → cpu, expect, fleet, mdoc, model, summary, target
//   harness  → budget, fleet, model, openloop, report, summary, target
//   closed   → expect, fleet, model, summary, target
//   html     → report, summary
//   merge    → budget, harness, report, summary
// The binary's own modules (`abuse`, `faults`) use only `target`.

pub mod budget;
pub mod closed;
pub mod cpu;
pub mod expect;
pub mod fleet;
mod harness;
pub mod html;
pub mod mdoc;
pub mod merge;
pub mod model;
pub mod openloop;
pub mod report;
pub mod summary;
pub mod target;

pub use budget::{Budget, BudgetResult, Check};
pub use expect::{expected, Presented};
pub use fleet::{Fleet, FleetSpec, Origin};
pub use harness::{judge_step, sweep, sweep_rates, FixedRates, Harness, SweepOptions};
pub use model::{schedule, Arrival, Mix, Phase, Plan, RushModel, ScannerSet, Scenario};
pub use report::{compare, plan_differences, Report};
pub use summary::{RunSummary, SweepSummary};
pub use target::{
    find_gatehouse, Connections, SpawnOptions, SpawnedEngine, SpawnedSite, StoreKind,
};
