//! `gatehouse-loadtest`: parse, build, run, judge. Exit 0 when every budget check held, 1 when
//! one missed (each is named), 2 when the run could not be made, 130 when interrupted.

mod abuse;
mod faults;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use gatehouse_engine::client::{ClientIdentity, ClientOptions};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::progress::ProgressMode;
use gatehouse_loadtest::budget::BudgetResult;
use gatehouse_loadtest::closed::{self, ClosedOptions};
use gatehouse_loadtest::fleet::default_cache_dir;
use gatehouse_loadtest::mdoc::{self, MdocPool};
use gatehouse_loadtest::model::Shard;
use gatehouse_loadtest::openloop::{OpenLoopOptions, MAX_SIGN_LEAD};
use gatehouse_loadtest::report::{ModelInfo, PopulationInfo, TargetInfo};
use gatehouse_loadtest::summary::GooseSummary;
use gatehouse_loadtest::target::{identities_from_dir, identities_from_pki};
use gatehouse_loadtest::{
    compare, find_gatehouse, plan_differences, sweep, Budget, Check, Connections, Fleet, FleetSpec,
    Harness, Mix, Plan, Report, RushModel, ScannerSet, SpawnOptions, SpawnedSite, StoreKind,
    SweepOptions,
};

const EXIT_MISSED: u8 = 1;
const EXIT_ERROR: u8 = 2;
/// 128 + SIGINT, as a shell reports an interrupted command.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "gatehouse-loadtest",
    version,
    about = "Morning-rush load harness for gatehouse: open-loop latency, capacity knee, budgets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate (or load) the cached population and print its census; optionally export the
    /// files a staging engine needs.
    Population(PopulationArgs),
    /// An open-loop morning rush: ramp up, peak, ramp down.
    Rush(RushArgs),
    /// Capacity sweep: step the open-loop rate up until the budget breaks.
    Sweep(SweepArgs),
    /// Closed-loop scenarios (gate, partner, age, adversarial) on goose, with goose's
    /// HTML/JSON/Markdown reports. Arguments after `--` go to goose as they are.
    Goose(GooseArgs),
    /// Hostile traffic: floods against an engine started on loopback while a gate scanner
    /// measures; prints the table and fails when a target is missed.
    Abuse {
        /// The `gatehouse` binary (default: as for the other commands).
        #[arg(long)]
        bin: Option<PathBuf>,
        /// The engine's `[engine] batch` path (auto, multibuffer, equation, off); with
        /// `equation`, `batch_from = 16`, so every batch of 8 tokens is one equation.
        #[arg(long, default_value = "auto")]
        engine_batch: String,
        /// Only these attack rows, comma-separated, in this order (a row named twice runs
        /// twice): handshake, same-address, same-address-retry, queue, over-limit, oversized,
        /// forged, slow, ops (the baseline and the row after always run).
        #[arg(long, value_delimiter = ',')]
        rows: Option<Vec<String>>,
    },
    /// The measuring gate of `abuse`, in a process of its own (started by `abuse`).
    #[command(hide = true)]
    AbuseGate {
        /// The engine's address.
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// The development PKI `abuse` wrote.
        #[arg(long)]
        pki: PathBuf,
        /// The gate's tokens (each a 4-byte big-endian length and the bytes).
        #[arg(long)]
        tokens: PathBuf,
    },
    /// One-time use under real faults: three nodes on a Redis deployment started on loopback
    /// (or one node on the memory store), faults injected on a schedule, every accepted token
    /// shown again at another node; fails when any token is accepted twice (with
    /// --accept-risk: when the checker finds none).
    Faults(FaultsArgs),
    /// Render a JSON report (from `--report`) as the offline HTML report.
    Html {
        /// The JSON report.
        report: PathBuf,
        /// Where to write the HTML page.
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare two JSON reports (the second against the first). Refused when their plans
    /// differ (mode, population, plan shape or rate, sweep step), since the figures then
    /// describe the plans rather than the engine.
    Compare(CompareArgs),
    /// Add up the JSON reports of the shards of one run (`rush --shard I/N --report FILE`, or
    /// `sweep --rates R1,R2,… --shard I/N`, from one machine or several) into the report one
    /// process running the whole plan would have written: counts added, percentiles read from
    /// the merged histograms, a sweep's knee found from its merged steps, judged by the
    /// budget with the same exit codes. Refuses shards of different plans or salts, a shard
    /// given twice, a missing shard (unless --allow-missing) and files that are not shard
    /// reports.
    Merge(MergeArgs),
    /// Start engine nodes on loopback (`stage --spawn`, with the node options of --spawn)
    /// with the population's files and a development PKI (TEST ONLY), write the scanners'
    /// certificates to --out, print `target ADDR[,ADDR…]`, `metrics OPS[,OPS…]` and
    /// `cert-dir DIR` on stdout, and keep the nodes running until stdin closes or Ctrl-C: a
    /// fleet to try `rush --shard I/N --target …` against on one machine.
    Stage(StageArgs),
}

// The arguments of each command; its help text is the doc comment of its `Command` variant.

/// The arguments of `population`.
#[derive(Args)]
struct PopulationArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Write trust.toml, scanners.toml and revocations.cbor here (for a staging engine).
    #[arg(long)]
    export: Option<PathBuf>,
    /// With --export: also a development PKI (pki/) for the standard scanners. TEST ONLY.
    #[arg(long, requires = "export")]
    dev_pki: bool,
}

/// The arguments of `rush`.
#[derive(Args)]
struct RushArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    mdoc: MdocArgs,
    /// Seconds of ramp up.
    #[arg(long, default_value_t = 10.0)]
    ramp_up_secs: f64,
    /// Seconds at the peak rate.
    #[arg(long, default_value_t = 30.0)]
    peak_secs: f64,
    /// Seconds of ramp down.
    #[arg(long, default_value_t = 10.0)]
    ramp_down_secs: f64,
    /// How far ahead of its send time a token may be signed (at most 10).
    #[arg(long, default_value_t = 3.0)]
    sign_lead_secs: f64,
}

/// The arguments of `sweep`.
#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    mdoc: MdocArgs,
    /// First rate (default: the modelled peak).
    #[arg(long)]
    from: Option<f64>,
    /// Each step's rate is this many times the last.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// Seconds per step (at most 10: each step is signed before its clock starts).
    #[arg(long, default_value_t = 8.0)]
    step_secs: f64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 100_000.0)]
    max_rps: f64,
    /// Most steps (refinement included).
    #[arg(long, default_value_t = 20)]
    max_steps: usize,
    /// Bisection steps between the last rate that held and the first that broke.
    #[arg(long, default_value_t = 2)]
    refine: usize,
    /// Run exactly these rates (comma-separated, req/s), each step to the end, instead of
    /// climbing until the budget breaks: the sweep to split over machines (--shard, with
    /// --start-at so every shard runs step k at start + k × (step + gap)); `merge` finds the
    /// knee from the merged steps.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// With --rates: seconds between steps. It must cover the next step's signing (up to
    /// --step-secs of tokens) and the last answers of the step before; a shard whose step
    /// starts late says so and that step fails.
    #[arg(long, default_value_t = 2.0)]
    step_gap_secs: f64,
}

/// The arguments of `goose`.
#[derive(Args)]
struct GooseArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    model: ModelArgs,
    /// Terminals (goose users) at the peak (default: peak rate × mean think time).
    #[arg(long)]
    users: Option<usize>,
    /// Most users when derived from the model.
    #[arg(long, default_value_t = 1000)]
    max_users: usize,
    /// Seconds to start every user.
    #[arg(long, default_value_t = 10)]
    ramp_up_secs: u64,
    /// Seconds to hold them.
    #[arg(long, default_value_t = 30)]
    peak_secs: u64,
    /// Seconds to stop them.
    #[arg(long, default_value_t = 5)]
    ramp_down_secs: u64,
    /// Shortest think time between two people at a terminal, ms.
    #[arg(long, default_value_t = 500)]
    think_min_ms: u64,
    /// Longest think time, ms.
    #[arg(long, default_value_t = 2500)]
    think_max_ms: u64,
    /// Where goose writes goose.html, goose.json and goose.md [default: goose/ in the
    /// cache directory].
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// Arguments for goose (after `--`).
    #[arg(last = true)]
    goose_args: Vec<String>,
}

/// The arguments of `faults`.
#[derive(Args)]
struct FaultsArgs {
    /// The `gatehouse` binary (default: as for the other commands).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Topologies, comma-separated: single, partition, sentinel, cluster, memory (or all).
    #[arg(long, default_value = "all")]
    topology: String,
    /// Faults per topology.
    #[arg(long, default_value_t = 10)]
    faults: usize,
    /// Fresh tokens per second over all nodes.
    #[arg(long, default_value_t = 60.0)]
    rate: f64,
    /// Seconds of steady traffic after each fault's recovery.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    /// The nodes accept this risk (eviction, split-brain) and the store is set up to allow
    /// it: the run passes only if the checker finds the double accepts it allows.
    #[arg(long)]
    accept_risk: Option<String>,
}

/// The arguments of `merge`.
#[derive(Args)]
struct MergeArgs {
    /// The shards' JSON reports.
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// The budget file (default: budgets/default.toml, budgets/sweep.toml for sweeps).
    #[arg(long)]
    budget: Option<PathBuf>,
    /// Merge even when shards are missing; the result is marked partial.
    #[arg(long)]
    allow_missing: bool,
    /// Write the merged JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the merged HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Print the merged JSON report on stdout instead of the text.
    #[arg(long)]
    json: bool,
}

/// The arguments of `stage`.
#[derive(Args)]
struct StageArgs {
    #[command(flatten)]
    common: Common,
    /// Where the scanners' certificates and keys go (ca.pem, scanners/<id>.pem|key): give it
    /// to the shards as --cert-dir.
    #[arg(long = "out", value_name = "DIR")]
    out: PathBuf,
    /// The highest rate the nodes will be loaded at (sizes their one-time-use tables).
    #[arg(long, default_value_t = 20_000.0)]
    max_rps: f64,
}

/// The arguments of `compare`.
#[derive(Args)]
struct CompareArgs {
    /// The earlier report.
    baseline: PathBuf,
    /// The later report.
    report: PathBuf,
    /// Compare even when the plans differ (each difference is printed as a warning).
    #[arg(long)]
    allow_different_plans: bool,
}

#[derive(Args, Clone)]
struct FleetArgs {
    /// Holders in the synthetic population.
    #[arg(long, default_value_t = 1_000_000)]
    holders: usize,
    /// Seed of every key and id.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of holders revoked, per mille.
    #[arg(long, default_value_t = 30)]
    revoked_per_mille: u32,
    /// Share of holders expired, per mille.
    #[arg(long, default_value_t = 20)]
    expired_per_mille: u32,
    /// Where populations are cached [default: $XDG_CACHE_HOME/gatehouse-loadtest, else
    /// ~/.cache/gatehouse-loadtest, else target/gatehouse-loadtest].
    #[arg(long, env = "GATEHOUSE_LOADTEST_CACHE", default_value_os_t = default_cache_dir())]
    cache_dir: PathBuf,
    /// Regenerate a cached population older than this (its validity dates drift).
    #[arg(long, default_value_t = 72)]
    max_cache_age_hours: u64,
    /// Print nothing but the result.
    #[arg(long)]
    quiet: bool,
}

fn default_budget(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("budgets")
        .join(name)
}

#[derive(Args, Clone)]
struct Common {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Start `gatehouse serve` on loopback with a development PKI and the population's files.
    #[arg(long)]
    spawn: bool,
    /// With --spawn: start the engine WITHOUT the revocation list (to prove wrong verdicts
    /// fail the run).
    #[arg(long, requires = "spawn")]
    no_revocations: bool,
    /// With --spawn: the gatehouse binary (else $GATEHOUSE_BIN, beside this binary, or
    /// target/{release,debug}/gatehouse).
    #[arg(long, requires = "spawn")]
    gatehouse_bin: Option<PathBuf>,
    /// With --spawn: keep the engine's working directory (config, PKI, log).
    #[arg(long, requires = "spawn")]
    keep_engine_dir: bool,
    /// With --spawn: engine nodes to start on loopback (more than one need --store redis).
    /// Scanner i sends to node (i / shards) % N; every replay goes to another node than its original.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// With --spawn: where the nodes record one-time use: `memory` (each node its own table:
    /// one node only) or `redis` (a loopback Redis the harness starts and stops, shared by
    /// every node) [default: memory].
    #[arg(long, value_enum, requires = "spawn")]
    store: Option<StoreArg>,
    /// With --spawn: pin each node to cores with `taskset -c`, one entry per node, separated
    /// by commas: `--pin 0,1` puts node 0 on core 0 and node 1 on core 1 (`--pin 0-1`: one
    /// node on both).
    #[arg(long, requires = "spawn", value_delimiter = ',')]
    pin: Vec<String>,
    /// With --store redis: move the Redis server to these cores (`taskset -p -c`); by default
    /// it runs wherever the harness may.
    #[arg(long, requires = "store")]
    redis_pin: Option<String>,
    /// With --store redis: the nodes' `[replay] timeout_ms`; slower marks are answered
    /// `unavailable` (an error here).
    #[arg(long, default_value_t = 50)]
    redis_timeout_ms: u64,
    /// With --store redis and several nodes: give each node its OWN Redis, a fleet that does
    /// not agree (to prove cross-node replays then fail the run).
    #[arg(long, requires = "store")]
    split_store: bool,
    /// A running engine's QUIC address, or a fleet's, comma-separated (loaded with the
    /// population's trust list, scanners and revocations: see `population --export` and
    /// `stage`). With several, scanner s sends to node (s / shards) mod nodes (s mod nodes
    /// unsharded), so every shard reaches every node, and every replay goes to another node
    /// than its original's.
    #[arg(long, value_delimiter = ',')]
    target: Vec<SocketAddr>,
    /// With --target: each node's operations port (host:port, comma-separated, in --target
    /// order), whose /metrics gives its CPU (process_cpu_seconds_total) before and after the
    /// run; without it a --target engine's CPU is reported as unknown.
    #[arg(long, requires = "target", value_delimiter = ',')]
    metrics: Vec<SocketAddr>,
    /// With --target: the CA certificate of the server (default: <cert-dir>/ca.pem).
    #[arg(long, requires = "target")]
    ca: Option<PathBuf>,
    /// With --target: scanner certificates, <id>.pem and <id>.key (or scanners/<id>.*).
    #[arg(long, requires = "target")]
    cert_dir: Option<PathBuf>,
    /// With --target: the name on the server certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// QUIC connections per scanner.
    #[arg(long, default_value_t = 1)]
    connections_per_scanner: usize,
    /// Signing threads (default: one per core).
    #[arg(long)]
    signers: Option<usize>,
    /// A request without an answer after this long is an error.
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// The engine's local offset from UTC (age checks; Korea +9 h).
    #[arg(long, default_value_t = 32_400)]
    utc_offset_secs: i32,
    /// The budget file (default: budgets/default.toml, budgets/sweep.toml for sweeps).
    #[arg(long)]
    budget: Option<PathBuf>,
    /// Write the JSON summary here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the offline HTML report here: one self-contained page with inline SVG charts
    /// (latency over time, per phase, per sweep step with the knee; verdicts; the budget).
    #[arg(long)]
    html: Option<PathBuf>,
    /// Compare with this earlier JSON summary.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Print the JSON summary on stdout instead of the text.
    #[arg(long)]
    json: bool,
    /// Most requests one run may schedule.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: usize,
    /// rush and sweep: run shard I of N (1-based) of the plan, as one of N harness processes
    /// (machines) loading one engine or fleet: scanner s (0-based) belongs to shard
    /// (s mod N) + 1, and this process connects, signs, sends and checks only its scanners'
    /// requests. Every shard needs the same arguments and --run-salt; `merge` adds their
    /// JSON reports up into one.
    #[arg(long)]
    shard: Option<Shard>,
    /// The salt (16 hex digits) that, with --seed, draws the schedule and its nonces; the
    /// same for every shard of a run. Without it a run draws a fresh one and prints it. Give
    /// an engine a salt again only after its token window (30 s) has passed, or the repeated
    /// nonces are answered `replayed`.
    #[arg(long, value_parser = parse_salt)]
    run_salt: Option<u64>,
    /// rush: start the clock at this instant (Unix seconds, or RFC 3339 such as
    /// 2026-12-05T07:00:00+09:00), after signing the first seconds: every shard of a run at
    /// once. The machines' clocks must agree (chrony or NTP): a shard that starts late fails
    /// its report, and genuine tokens answered `stale` or `from_future` point at its clock.
    #[arg(long, value_parser = parse_start_at)]
    start_at: Option<std::time::SystemTime>,
}

/// `--start-at`: Unix seconds or RFC 3339.
fn parse_start_at(s: &str) -> Result<std::time::SystemTime, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && secs > 0.0 {
            return Ok(std::time::UNIX_EPOCH + Duration::from_secs_f64(secs));
        }
    }
    let ts: jiff::Timestamp = t.parse().map_err(|e| {
        format!("--start-at {s:?}: Unix seconds or RFC 3339 (2026-12-05T07:00:00+09:00): {e}")
    })?;
    std::time::SystemTime::try_from(ts).map_err(|e| format!("--start-at {s:?}: {e}"))
}

/// `--run-salt`: up to 16 hex digits.
fn parse_salt(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_start_matches("0x");
    if t.is_empty() || t.len() > 16 {
        return Err(format!("--run-salt {s:?}: 1 to 16 hex digits"));
    }
    u64::from_str_radix(t, 16).map_err(|_| format!("--run-salt {s:?}: 1 to 16 hex digits"))
}

impl Common {
    /// Progress on stderr for these options (see [`progress_mode`]).
    fn progress(&self) -> ProgressMode {
        progress_mode(self.fleet.quiet, self.json)
    }
}

/// `--store`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum StoreArg {
    /// Each node's own table.
    Memory,
    /// A loopback Redis shared by the nodes.
    Redis,
}

/// `--mdoc-share` (rush and sweep).
#[derive(Args, Clone)]
struct MdocArgs {
    /// The share (0 to 1) of genuine arrivals sent as ISO/IEC 18013-5 mdoc presentations
    /// (VerifyMdoc) instead of tokens, drawn from the seed and salt with the rest of the
    /// schedule: holder i shows mDL document i mod pool (pool: min(--holders, 2000), a test
    /// IACA and document signer generated at start, TEST ONLY) in a reader session of its own
    /// begun at its send time. Needs --spawn (the nodes it starts trust that IACA); refused
    /// with --target and --shard.
    #[arg(long, default_value_t = 0.0)]
    mdoc_share: f64,
}

impl MdocArgs {
    /// Refuses a share out of [0, 1], or one that nodes not started here would have to judge.
    fn check(&self, common: &Common) -> Result<()> {
        mdoc::check_share(
            self.mdoc_share,
            !common.target.is_empty(),
            common.shard.is_some(),
        )
    }

    /// The mDL pool of a share above 0 (none at 0), generated on every core before the run.
    async fn pool(&self, common: &Common, fleet: &Fleet) -> Result<Option<Arc<MdocPool>>> {
        let share = self.mdoc_share;
        if share == 0.0 {
            return Ok(None);
        }
        let registry = fleet.scanners();
        let (documents, seed) = (mdoc::documents_for(fleet.len()), common.fleet.seed);
        let t0 = Instant::now();
        let pool = tokio::task::spawn_blocking(move || {
            let set = ScannerSet::new(&registry);
            MdocPool::generate(seed, documents, now_unix(), &registry, &set, share)
        })
        .await??;
        if !common.fleet.quiet {
            eprintln!(
                "mdoc: {:.0} % of genuine arrivals; {documents} mDL documents (a test IACA and document signer, TEST ONLY) in {:.1} s",
                share * 100.0,
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(Some(Arc::new(pool)))
    }
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Holders the rush models (default: --holders).
    #[arg(long)]
    model_holders: Option<u64>,
    /// Share of holders presenting a token during the rush.
    #[arg(long, default_value_t = 0.6)]
    share: f64,
    /// Length of the rush, minutes.
    #[arg(long, default_value_t = 60.0)]
    rush_minutes: f64,
    /// Peak rate over the rush's mean rate.
    #[arg(long, default_value_t = 3.0)]
    peak_factor: f64,
    /// Multiply the modelled rates by this.
    #[arg(long, default_value_t = 1.0)]
    rate_scale: f64,
    /// Run at this peak rate instead of the model's.
    #[arg(long)]
    peak_rps: Option<f64>,
}

impl ModelArgs {
    fn model(&self, holders: usize) -> Result<RushModel> {
        let m = RushModel {
            holders: self.model_holders.unwrap_or(holders as u64),
            share: self.share,
            rush_minutes: self.rush_minutes,
            peak_factor: self.peak_factor,
        };
        ensure!(m.share > 0.0 && m.share <= 1.0, "--share must be in (0, 1]");
        ensure!(m.rush_minutes > 0.0, "--rush-minutes must be positive");
        ensure!(m.peak_factor >= 1.0, "--peak-factor must be at least 1");
        ensure!(self.rate_scale > 0.0, "--rate-scale must be positive");
        Ok(m)
    }

    fn run_peak(&self, m: &RushModel) -> f64 {
        self.peak_rps.unwrap_or(m.peak_rps() * self.rate_scale)
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fleet_spec(f: &FleetArgs) -> FleetSpec {
    FleetSpec {
        holders: f.holders,
        seed: f.seed,
        revoked_per_mille: f.revoked_per_mille,
        expired_per_mille: f.expired_per_mille,
    }
}

/// Progress on stderr: none with --quiet; plain lines beside --json (whose reader is a
/// program); otherwise a bar on a terminal and plain lines elsewhere.
fn progress_mode(quiet: bool, json: bool) -> ProgressMode {
    if quiet {
        ProgressMode::Off
    } else if json {
        ProgressMode::Lines
    } else {
        ProgressMode::Auto
    }
}

async fn load_fleet(f: &FleetArgs, progress: ProgressMode) -> Result<(Fleet, PopulationInfo)> {
    let spec = fleet_spec(f);
    let (dir, age, quiet) = (
        f.cache_dir.clone(),
        Duration::from_secs(f.max_cache_age_hours * 3600),
        f.quiet,
    );
    if !quiet {
        eprintln!("population: {} holders, seed {}", spec.holders, spec.seed);
    }
    let (fleet, origin, secs) = tokio::task::spawn_blocking(move || {
        Fleet::load_or_generate(&dir, spec, now_unix(), age, progress)
    })
    .await??;
    let info = PopulationInfo::new(&fleet, origin, secs);
    if !quiet {
        eprintln!(
            "  {} holders ({}) in {:.1} s",
            info.holders, info.origin, info.secs
        );
    }
    Ok((fleet, info))
}

/// How `--spawn` starts the nodes.
fn spawn_options(common: &Common, bin: PathBuf, replay_capacity: usize) -> SpawnOptions {
    SpawnOptions {
        bin,
        revocations: !common.no_revocations,
        replay_capacity,
        utc_offset_secs: common.utc_offset_secs,
        keep: common.keep_engine_dir,
        nodes: common.nodes,
        store: match common.store {
            Some(StoreArg::Redis) => StoreKind::Redis,
            Some(StoreArg::Memory) | None => StoreKind::Memory,
        },
        pins: common.pin.clone(),
        redis_pin: common.redis_pin.clone(),
        redis_timeout_ms: common.redis_timeout_ms,
        split_store: common.split_store,
        mdoc_iaca: None,
    }
}

/// Refuses node options that cannot work, before the population is loaded.
fn check_spawn(common: &Common) -> Result<()> {
    ensure!(
        common.metrics.is_empty() || common.metrics.len() == common.target.len(),
        "--metrics names {} operations ports for {} --target nodes: one per node, in order",
        common.metrics.len(),
        common.target.len()
    );
    ensure!(
        !common.spawn || common.target.is_empty(),
        "--spawn starts engines here; --target names running ones: give one of them"
    );
    ensure!(
        common.spawn || (common.nodes == 1 && common.pin.is_empty()),
        "--nodes and --pin start engines: they need --spawn"
    );
    if common.spawn {
        spawn_options(common, PathBuf::new(), 0).validate()?;
    }
    Ok(())
}

/// Where the scanners connect, as whom, and what the harness knows of the engine there.
struct Endpoint {
    /// The nodes (and their Redis), when the harness started them.
    site: Option<SpawnedSite>,
    /// Every node's address, in index order.
    addrs: Vec<SocketAddr>,
    /// Per scanner, its certificate and key.
    identities: Vec<ClientIdentity>,
    /// The name on the server certificate.
    server_name: String,
    /// Whether the fleet's revocations were loaded (spawned engines only).
    revocations_loaded: Option<bool>,
}

/// Starts the nodes `--spawn` asks for on loopback, with a development PKI (and trusting the
/// mdoc pool's IACA, when there is one).
async fn spawn_endpoint(
    common: &Common,
    fleet: &Fleet,
    scanners: &ScannerSet,
    replay_capacity: usize,
    mdoc: Option<&MdocPool>,
) -> Result<Endpoint> {
    let bin = match &common.gatehouse_bin {
        Some(b) => b.clone(),
        None => find_gatehouse()?,
    };
    let opts = SpawnOptions {
        mdoc_iaca: mdoc.map(MdocPool::iaca_pem),
        ..spawn_options(common, bin, replay_capacity)
    };
    if !common.fleet.quiet {
        eprintln!(
            "engine: starting {} × {} serve on loopback (one-time use: {}) …",
            opts.nodes,
            opts.bin.display(),
            opts.store.label()
        );
    }
    let (site, pki): (SpawnedSite, DevPki) = SpawnedSite::start(fleet, scanners, &opts).await?;
    if !common.fleet.quiet {
        eprintln!("  one-time use: {}", site.store);
    }
    Ok(Endpoint {
        identities: identities_from_pki(&pki, scanners)?,
        addrs: site.addrs(),
        site: Some(site),
        server_name: "localhost".to_string(),
        revocations_loaded: Some(!common.no_revocations),
    })
}

/// The running engine or fleet `--target` names, with the scanner identities in `--cert-dir`.
fn named_endpoint(common: &Common, scanners: &ScannerSet) -> Result<Endpoint> {
    for addr in &common.target {
        gatehouse_loadtest::target::check_target(*addr)?;
    }
    let cert_dir = common
        .cert_dir
        .clone()
        .context("--target needs --cert-dir (scanner certificates and keys)")?;
    let ca = common.ca.clone().unwrap_or_else(|| cert_dir.join("ca.pem"));
    Ok(Endpoint {
        site: None,
        addrs: common.target.clone(),
        identities: identities_from_dir(&ca, &cert_dir, scanners)?,
        server_name: common.server_name.clone(),
        revocations_loaded: None,
    })
}

/// Connects to the named engine or starts one; returns the harness, whose genuine arrivals
/// include mdoc presentations from `mdoc` when there is a pool.
async fn connect(
    common: &Common,
    fleet: Fleet,
    replay_capacity: usize,
    mdoc: Option<Arc<MdocPool>>,
) -> Result<Harness> {
    let fleet = Arc::new(fleet);
    let scanners = Arc::new(ScannerSet::new(&fleet.scanners()));
    let options = ClientOptions {
        request_timeout: Duration::from_millis(common.request_timeout_ms),
        ..ClientOptions::default()
    };
    check_spawn(common)?;
    let Endpoint {
        site,
        addrs,
        identities,
        server_name,
        revocations_loaded,
    } = if common.spawn {
        spawn_endpoint(common, &fleet, &scanners, replay_capacity, mdoc.as_deref()).await?
    } else if !common.target.is_empty() {
        named_endpoint(common, &scanners)?
    } else {
        bail!("say where the engine is: --spawn (start one on loopback) or --target ADDR");
    };
    let shard = common.shard.unwrap_or(Shard::WHOLE);
    let conns = Connections::connect(
        &addrs,
        &server_name,
        identities,
        common.connections_per_scanner,
        options,
        shard,
    )
    .await?;
    let shown: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    if !common.fleet.quiet {
        eprintln!(
            "  {} scanner connections to {}",
            conns.count(),
            shown.join(", ")
        );
    }
    let target = TargetInfo {
        address: shown.join(","),
        spawned: site.is_some(),
        revocations_loaded,
        connections: conns.count(),
        nodes: shown,
        store: site.as_ref().map(|s| s.store.clone()),
        pins: site.as_ref().map(SpawnedSite::pins).unwrap_or_default(),
    };
    let signers = common.signers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    Ok(Harness {
        fleet,
        scanners,
        conns: Arc::new(conns),
        site,
        target,
        opts: OpenLoopOptions {
            sign_lead: Duration::from_secs(3),
            signers,
            request_timeout: options.request_timeout,
            utc_offset_secs: common.utc_offset_secs,
            salt: 0,
            progress: common.progress(),
            shard,
            start_at: common.start_at,
            mdoc: mdoc.clone(),
        },
        mix: Mix {
            mdoc_share: mdoc.as_ref().map_or(0.0, |p| p.share),
            ..Mix::default()
        },
        max_requests: common.max_requests,
        seed: common.fleet.seed,
        run_salt: common.run_salt,
        runs: Default::default(),
        metrics: common.metrics.clone(),
    })
}

fn replay_capacity_for(max_rps: f64) -> usize {
    // Every token stays in the one-time-use table for the 30 s window (+5 s skew); a sweep
    // has up to three steps in that time.
    ((max_rps * 45.0) as usize).clamp(750_000, 10_000_000)
}

/// This machine's host name (Linux), for the report: shards of one run name their machines.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Budget, baseline, output; the exit code.
fn finish(
    mut report: Report,
    common: &Common,
    budget: &Budget,
    budget_file: &Path,
    mut checks: Vec<Check>,
) -> Result<ExitCode> {
    if let Some(b) = &common.baseline {
        let before: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(b).with_context(|| format!("reading {}", b.display()))?,
        )
        .with_context(|| format!("baseline {}", b.display()))?;
        let now = serde_json::to_value(&report)?;
        report.baseline = compare(&before, &now);
        checks.extend(budget.check_baseline(&report.baseline));
        let differ = plan_differences(&before, &now);
        if !report.baseline.is_empty() {
            // A regression gate across different plans would judge the plans, not the engine.
            checks.push(Check {
                name: "baseline has the same plan".into(),
                limit: "same mode, population and plan".into(),
                observed: if differ.is_empty() {
                    "same".into()
                } else {
                    differ.join("; ")
                },
                passed: differ.is_empty(),
            });
        }
    }
    publish(
        report,
        budget_file,
        checks,
        &Outputs {
            report: common.report.clone(),
            html: common.html.clone(),
            json: common.json,
            quiet: common.fleet.quiet,
        },
    )
}

/// Where a finished report goes.
struct Outputs {
    /// The JSON report file.
    report: Option<PathBuf>,
    /// The HTML page.
    html: Option<PathBuf>,
    /// The JSON on stdout instead of the text.
    json: bool,
    /// No notes on stderr but the misses.
    quiet: bool,
}

/// Judges `report` by `checks` (of the budget in `budget_file`), writes and prints it; the
/// exit code: 0 when every check held, 1 when one missed (each named on stderr).
fn publish(
    mut report: Report,
    budget_file: &Path,
    checks: Vec<Check>,
    out: &Outputs,
) -> Result<ExitCode> {
    let result = BudgetResult::new(&budget_file.display().to_string(), checks);
    report.passed = result.passed;
    let missed = result.missed();
    report.budget = Some(result);
    if let Some(path) = &out.report {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &out.html {
        write_html(&report, path)?;
        if !out.quiet {
            eprintln!(
                "gatehouse-loadtest: HTML report written to {}",
                path.display()
            );
        }
    }
    if out.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if report.merged.as_ref().is_some_and(|m| m.partial) {
        eprintln!(
            "gatehouse-loadtest: partial: shards are missing, the figures cover part of the plan"
        );
    }
    if missed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for m in &missed {
            eprintln!("gatehouse-loadtest: budget missed: {m}");
        }
        Ok(ExitCode::from(EXIT_MISSED))
    }
}

fn write_html(report: &Report, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let page = gatehouse_loadtest::html::render(report)?;
    std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))
}

/// The largest JSON report `html` reads: a report is kilobytes (a long rush's timeline a few
/// megabytes), so anything larger is not one.
const MAX_REPORT_BYTES: u64 = 64 << 20;

fn base_report(mode: &str, h: &Harness, population: PopulationInfo, model: ModelInfo) -> Report {
    Report {
        tool: "gatehouse-loadtest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        mode: mode.into(),
        started_unix: now_unix(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        command: command_line(),
        host: host_name(),
        target: h.target.clone(),
        population,
        model,
        run: None,
        sweep: None,
        goose: None,
        budget: None,
        baseline: Vec::new(),
        passed: false,
        merged: None,
    }
}

async fn shutdown(mut h: Harness) {
    h.conns.close().await;
    if let Some(mut site) = h.site.take() {
        let _ = tokio::task::spawn_blocking(move || site.stop()).await;
    }
}

/// Runs the command named on the command line; the exit code says how it went.
async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Population(args) => population(args).await,
        Command::Rush(args) => rush(args).await,
        Command::Sweep(args) => capacity_sweep(args).await,
        Command::Goose(args) => goose(args).await,
        Command::Abuse {
            bin,
            engine_batch,
            rows,
        } => abuse(bin, engine_batch, rows).await,
        Command::AbuseGate { addr, pki, tokens } => {
            abuse::gate_process(addr, &pki, &tokens).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Faults(args) => fault_injection(args).await,
        Command::Html { report, out } => html(&report, &out),
        Command::Compare(args) => compare_reports(&args),
        Command::Merge(args) => merge_shards(&args),
        Command::Stage(args) => stage(args).await,
    }
}

/// `population`: loads or generates the fleet, prints its census, exports its files.
async fn population(args: PopulationArgs) -> Result<ExitCode> {
    let fleet = &args.fleet;
    let (f, info) = load_fleet(fleet, progress_mode(fleet.quiet, false)).await?;
    println!(
        "{} holders ({} valid, {} revoked, {} expired; {} revocation entries), {} in {:.1} s, cached under {}",
        info.holders,
        info.valid,
        info.revoked,
        info.expired,
        f.revocations.revoke.len(),
        info.origin,
        info.secs,
        fleet.cache_dir.display()
    );
    if let Some(dir) = &args.export {
        export_population(&f, dir, args.dev_pki)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the files a staging engine needs for `f` (and, with `dev_pki`, a development PKI)
/// to `dir`.
fn export_population(f: &Fleet, dir: &Path, dev_pki: bool) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("trust.toml"), f.trust_list().to_toml())?;
    std::fs::write(dir.join("scanners.toml"), f.scanners().to_toml())?;
    std::fs::write(dir.join("revocations.cbor"), f.revocations.encode())?;
    if dev_pki {
        let ids = ScannerSet::new(&f.scanners()).ids;
        DevPki::generate(&ids)?.write_to(&dir.join("pki"))?;
    }
    println!(
        "wrote trust.toml, scanners.toml, revocations.cbor{} to {}",
        if dev_pki { " and pki/ (TEST ONLY)" } else { "" },
        dir.display()
    );
    Ok(())
}

/// The budget file `--budget` names, else `default` among the shipped budgets, and the budget
/// in it.
fn load_budget(common: &Common, default: &str) -> Result<(Budget, PathBuf)> {
    let file = common
        .budget
        .clone()
        .unwrap_or_else(|| default_budget(default));
    Ok((Budget::load(&file)?, file))
}

impl RushArgs {
    /// The plan these arguments describe, its peak from `m`; refuses a plan that cannot run.
    fn plan(&self, m: &RushModel) -> Result<Plan> {
        let plan = Plan {
            ramp_up_secs: self.ramp_up_secs,
            peak_secs: self.peak_secs,
            ramp_down_secs: self.ramp_down_secs,
            peak_rps: self.model.run_peak(m),
        };
        ensure!(
            self.ramp_up_secs >= 0.0 && self.peak_secs >= 0.0 && self.ramp_down_secs >= 0.0,
            "phase lengths must not be negative"
        );
        ensure!(
            plan.duration() > 0.0 && plan.duration() <= 3600.0,
            "a rush lasts more than 0 and at most 3600 s"
        );
        ensure!(
            self.sign_lead_secs > 0.0 && self.sign_lead_secs <= MAX_SIGN_LEAD.as_secs_f64(),
            "--sign-lead-secs must be in (0, {}]",
            MAX_SIGN_LEAD.as_secs()
        );
        Ok(plan)
    }
}

/// `stage`: nodes on loopback for `--target` runs, until stdin closes.
async fn stage(args: StageArgs) -> Result<ExitCode> {
    let common = &args.common;
    ensure!(
        common.target.is_empty(),
        "stage starts the nodes; --target is for the shards that load them"
    );
    ensure!(
        common.spawn,
        "stage starts the nodes on loopback: give --spawn (with --nodes, --store as for rush)"
    );
    check_spawn(common)?;
    let (fleet, _) = load_fleet(&common.fleet, common.progress()).await?;
    let scanners = ScannerSet::new(&fleet.scanners());
    let bin = match &common.gatehouse_bin {
        Some(b) => b.clone(),
        None => find_gatehouse()?,
    };
    let opts = spawn_options(common, bin, replay_capacity_for(args.max_rps));
    let (site, pki): (SpawnedSite, DevPki) = SpawnedSite::start(&fleet, &scanners, &opts).await?;
    pki.write_to(&args.out)?;
    let addrs: Vec<String> = site.addrs().iter().map(SocketAddr::to_string).collect();
    let ops: Vec<String> = site.engines.iter().map(|e| e.ops.to_string()).collect();
    println!("target {}", addrs.join(","));
    println!("metrics {}", ops.join(","));
    println!("cert-dir {}", args.out.display());
    println!("store {}", site.store);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    // Until stdin closes (the test or script that started it is done) or Ctrl-C (main).
    let _ = tokio::task::spawn_blocking(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    })
    .await;
    let _ = tokio::task::spawn_blocking(move || drop(site)).await;
    Ok(ExitCode::SUCCESS)
}

/// `merge`: the shards' reports added up and judged by the budget.
fn merge_shards(args: &MergeArgs) -> Result<ExitCode> {
    let files = args
        .shards
        .iter()
        .map(|p| Ok((p.clone(), gatehouse_loadtest::merge::read(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut report = gatehouse_loadtest::merge::merge(&files, args.allow_missing)?;
    let budget_file = args.budget.clone().unwrap_or_else(|| {
        default_budget(if report.sweep.is_some() {
            "sweep.toml"
        } else {
            "default.toml"
        })
    });
    let budget = Budget::load(&budget_file)?;
    let mut checks = report
        .run
        .as_ref()
        .map(|r| budget.check_run(r))
        .unwrap_or_default();
    if let Some(s) = report.sweep.as_mut() {
        gatehouse_loadtest::merge::judge_sweep(s, &budget);
        checks.extend(budget.check_sweep(s));
    }
    publish(
        report,
        &budget_file,
        checks,
        &Outputs {
            report: args.report.clone(),
            html: args.html.clone(),
            json: args.json,
            quiet: false,
        },
    )
}

/// `rush`: one open-loop morning rush, judged by the budget.
async fn rush(args: RushArgs) -> Result<ExitCode> {
    let common = &args.common;
    let m = args.model.model(common.fleet.holders)?;
    check_spawn(common)?;
    args.mdoc.check(common)?;
    let plan = args.plan(&m)?;
    let (budget, budget_file) = load_budget(common, "default.toml")?;
    let (fleet, info) = load_fleet(&common.fleet, common.progress()).await?;
    let pool = args.mdoc.pool(common, &fleet).await?;
    let h = connect(common, fleet, replay_capacity_for(plan.peak_rps), pool).await?;
    if !common.fleet.quiet {
        eprintln!(
            "rush: {}\n  plan: ramp up {} s, peak {} s at {:.0} req/s, ramp down {} s (~{:.0} requests)",
            m.explain(),
            args.ramp_up_secs,
            args.peak_secs,
            plan.peak_rps,
            args.ramp_down_secs,
            plan.expected_requests()
        );
    }
    let result = h
        .run_plan(&plan, Duration::from_secs_f64(args.sign_lead_secs))
        .await;
    let mut report = base_report("rush", &h, info, ModelInfo::new(&m, Some(&plan)));
    report.model.mdoc_share = h.mix.mdoc_share;
    shutdown(h).await;
    let run = result?;
    let checks = budget.check_run(&run);
    report.run = Some(run);
    finish(report, common, &budget, &budget_file, checks)
}

impl SweepArgs {
    /// How the sweep steps, its first rate from `m` unless `--from` names one; refuses steps
    /// that cannot run.
    fn options(&self, m: &RushModel) -> Result<SweepOptions> {
        ensure!(
            self.step_secs > 0.0 && self.step_secs <= MAX_SIGN_LEAD.as_secs_f64(),
            "--step-secs must be in (0, {}]",
            MAX_SIGN_LEAD.as_secs()
        );
        ensure!(self.max_steps <= 60, "--max-steps is at most 60");
        Ok(SweepOptions {
            from_rps: self.from.unwrap_or_else(|| self.model.run_peak(m)),
            factor: self.factor,
            step_secs: self.step_secs,
            max_rps: self.max_rps,
            max_steps: self.max_steps,
            refine: self.refine,
            pause: Duration::from_secs(2),
        })
    }
}

/// `sweep`: steps the open-loop rate up to the knee, judged by the sweep budget.
async fn capacity_sweep(args: SweepArgs) -> Result<ExitCode> {
    let common = &args.common;
    let m = args.model.model(common.fleet.holders)?;
    check_spawn(common)?;
    args.mdoc.check(common)?;
    let opts = args.options(&m)?;
    // An adaptive sweep stops at its own break: shards on several machines would step apart.
    ensure!(
        !args.rates.is_empty() || (common.shard.is_none() && common.start_at.is_none()),
        "sweep --shard and --start-at need --rates: shards on several machines must run the \
         same steps, and a sweep that climbs until its own budget breaks would step apart"
    );
    ensure!(
        args.step_gap_secs >= 0.0 && args.step_gap_secs <= 600.0,
        "--step-gap-secs must be in [0, 600]"
    );
    let (budget, budget_file) = load_budget(common, "sweep.toml")?;
    let top = args.rates.iter().copied().fold(opts.max_rps, f64::max);
    ensure!(
        top * opts.step_secs <= common.max_requests as f64,
        "the highest rate × --step-secs exceeds --max-requests"
    );
    let (fleet, info) = load_fleet(&common.fleet, common.progress()).await?;
    let pool = args.mdoc.pool(common, &fleet).await?;
    let h = connect(common, fleet, replay_capacity_for(top), pool).await?;
    if !common.fleet.quiet {
        eprintln!("sweep: {}", m.explain());
    }
    let t0 = Instant::now();
    let result = if args.rates.is_empty() {
        sweep(&h, &budget, &opts, m.peak_rps(), !common.fleet.quiet).await
    } else {
        let fixed = gatehouse_loadtest::FixedRates {
            rates: args.rates.clone(),
            step_secs: opts.step_secs,
            gap: Duration::from_secs_f64(args.step_gap_secs),
            start_at: common.start_at,
        };
        gatehouse_loadtest::sweep_rates(&h, &budget, &fixed, m.peak_rps(), !common.fleet.quiet)
            .await
    };
    let mut report = base_report("sweep", &h, info, ModelInfo::new(&m, None));
    report.model.mdoc_share = h.mix.mdoc_share;
    shutdown(h).await;
    let s = result?;
    if !common.fleet.quiet {
        eprintln!("  sweep took {:.0} s", t0.elapsed().as_secs_f64());
    }
    let checks = budget.check_sweep(&s);
    report.sweep = Some(s);
    finish(report, common, &budget, &budget_file, checks)
}

impl GooseArgs {
    /// Refuses think times and test plans that cannot run.
    fn check(&self) -> Result<()> {
        ensure!(
            self.think_min_ms <= self.think_max_ms && self.think_max_ms > 0,
            "--think-min-ms must not exceed --think-max-ms"
        );
        ensure!(
            self.ramp_up_secs + self.peak_secs + self.ramp_down_secs <= 3600,
            "a goose run lasts at most 3600 s"
        );
        Ok(())
    }

    /// The mean think time, seconds.
    fn mean_think(&self) -> f64 {
        (self.think_min_ms + self.think_max_ms) as f64 / 2000.0
    }

    /// Terminals at the peak: `--users`, else the model's peak rate times the mean think time
    /// (at most `--max-users`).
    fn users(&self, m: &RushModel) -> usize {
        self.users
            .unwrap_or_else(|| (self.model.run_peak(m) * self.mean_think()).ceil() as usize)
            .clamp(1, self.max_users.max(1))
    }

    /// The closed-loop run's knobs, with `users` terminals and the budget's thresholds.
    fn options(&self, users: usize, budget: &Budget) -> ClosedOptions {
        let common = &self.common;
        ClosedOptions {
            users,
            ramp_up_secs: self.ramp_up_secs,
            peak_secs: self.peak_secs,
            ramp_down_secs: self.ramp_down_secs,
            think: (
                Duration::from_millis(self.think_min_ms),
                Duration::from_millis(self.think_max_ms),
            ),
            report_dir: self
                .report_dir
                .clone()
                .unwrap_or_else(|| common.fleet.cache_dir.join("goose")),
            thresholds: budget.goose_thresholds(),
            goose_args: self.goose_args.clone(),
            utc_offset_secs: common.utc_offset_secs,
            request_timeout: Duration::from_millis(common.request_timeout_ms),
        }
    }
}

/// `goose`: the closed-loop scenarios under goose, judged by the budget and goose's
/// thresholds.
async fn goose(args: GooseArgs) -> Result<ExitCode> {
    let common = &args.common;
    let m = args.model.model(common.fleet.holders)?;
    check_spawn(common)?;
    args.check()?;
    let mean_think = args.mean_think();
    ensure!(
        common.shard.is_none() && common.run_salt.is_none() && common.start_at.is_none(),
        "--shard, --run-salt and --start-at are for the open loop (goose runs closed loop in \
         one process)"
    );
    let users = args.users(&m);
    let (budget, budget_file) = load_budget(common, "default.toml")?;
    let (fleet, info) = load_fleet(&common.fleet, common.progress()).await?;
    let peak = args
        .model
        .run_peak(&m)
        .max(users as f64 / mean_think.max(0.001));
    let h = connect(common, fleet, replay_capacity_for(peak * 2.0), None).await?;
    let addr: SocketAddr = h.conns.addr(0).context("no engine address")?;
    if !common.fleet.quiet {
        eprintln!(
            "goose: {users} terminals (≈ {:.0} req/s at {mean_think:.1} s mean think time), test plan ramp {} s / hold {} s / down {} s",
            users as f64 / mean_think,
            args.ramp_up_secs,
            args.peak_secs,
            args.ramp_down_secs
        );
    }
    let opts = args.options(users, &budget);
    let result = closed::run(
        h.fleet.clone(),
        h.scanners.clone(),
        h.conns.clone(),
        addr,
        &opts,
    )
    .await;
    let mut report = base_report("goose", &h, info, ModelInfo::new(&m, None));
    shutdown(h).await;
    let (g, held) = result?;
    let checks = goose_checks(&g, held, &budget);
    report.goose = Some(g);
    finish(report, common, &budget, &budget_file, checks)
}

/// The budget's checks of a closed-loop run: mismatches, goose's thresholds (`held`), some
/// requests made, and the error rate.
fn goose_checks(g: &GooseSummary, held: bool, budget: &Budget) -> Vec<Check> {
    let mut checks = vec![
        Check {
            name: "mismatches".into(),
            limit: format!("≤ {}", budget.max_mismatches),
            observed: g.mismatches.to_string(),
            passed: g.mismatches <= budget.max_mismatches,
        },
        Check {
            name: "goose thresholds".into(),
            limit: budget.goose_thresholds().join(", "),
            observed: if held { "held" } else { "failed" }.into(),
            passed: held,
        },
        Check {
            name: "requests".into(),
            limit: "≥ 1".into(),
            observed: g.requests.to_string(),
            passed: g.requests >= 1,
        },
    ];
    if g.requests > 0 {
        let rate = g.errors as f64 / g.requests as f64;
        checks.push(Check {
            name: "error rate".into(),
            limit: format!("≤ {}", budget.max_error_rate),
            observed: format!("{rate:.6}"),
            passed: rate <= budget.max_error_rate,
        });
    }
    checks
}

/// The exit code of a suite that passed (`true`) or missed a target.
fn suite_exit(passed: bool) -> ExitCode {
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_MISSED)
    }
}

/// `abuse`: the hostile-traffic suite against the `gatehouse` binary `bin` (or the one found).
async fn abuse(
    bin: Option<PathBuf>,
    engine_batch: String,
    rows: Option<Vec<String>>,
) -> Result<ExitCode> {
    let bin = match bin {
        Some(b) => b,
        None => find_gatehouse()?,
    };
    Ok(suite_exit(abuse::run(bin, &engine_batch, rows).await?))
}

/// `faults`: one-time use under injected faults, on each topology named.
async fn fault_injection(args: FaultsArgs) -> Result<ExitCode> {
    let bin = match args.bin {
        Some(b) => b,
        None => find_gatehouse()?,
    };
    let topologies = if args.topology == "all" {
        faults::Topology::ALL.to_vec()
    } else {
        args.topology
            .split(',')
            .map(|t| faults::Topology::parse(t.trim()))
            .collect::<Result<Vec<_>>>()?
    };
    let opts = faults::FaultOptions {
        bin,
        topologies,
        faults: args.faults,
        rate: args.rate,
        settle_secs: args.settle_secs,
        accept_risk: args.accept_risk,
    };
    Ok(suite_exit(faults::run(opts).await?))
}

/// `html`: renders the JSON report at `report` as the HTML page `out`.
fn html(report: &Path, out: &Path) -> Result<ExitCode> {
    let len = std::fs::metadata(report)
        .with_context(|| format!("reading {}", report.display()))?
        .len();
    ensure!(
        len <= MAX_REPORT_BYTES,
        "{} is {len} bytes: larger than any report ({MAX_REPORT_BYTES} bytes at most)",
        report.display()
    );
    let parsed: Report = serde_json::from_str(
        &std::fs::read_to_string(report)
            .with_context(|| format!("reading {}", report.display()))?,
    )
    .with_context(|| {
        format!(
            "{} is not a gatehouse-loadtest JSON report",
            report.display()
        )
    })?;
    write_html(&parsed, out)?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `compare`: prints how the second report's metrics moved against the first's; refuses
/// reports of different plans unless told otherwise.
fn compare_reports(args: &CompareArgs) -> Result<ExitCode> {
    let read = |p: &Path| -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?)
    };
    let (before, now) = (read(&args.baseline)?, read(&args.report)?);
    let differ = plan_differences(&before, &now);
    if !differ.is_empty() {
        for d in &differ {
            eprintln!("gatehouse-loadtest: the plans differ: {d}");
        }
        ensure!(
            args.allow_different_plans,
            "the two runs had different plans, so their figures are not comparable \
             (--allow-different-plans compares them anyway)"
        );
        eprintln!(
            "gatehouse-loadtest: warning: comparing runs of different plans; differences below are not the engine's alone"
        );
    }
    let diffs = compare(&before, &now);
    ensure!(!diffs.is_empty(), "the two reports share no metric");
    for d in diffs {
        println!("{d}");
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatehouse-loadtest: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    // Ctrl-C (or SIGINT from a supervisor) drops the run: the engines and Redis it started
    // are stopped by their guards before the process exits.
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(cli) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // A stop in progress (SIGTERM, drain, kill) finishes; nothing waits longer than that.
    runtime.shutdown_timeout(Duration::from_secs(20));
    match outcome {
        Some(Ok(code)) => code,
        Some(Err(e)) => {
            eprintln!("gatehouse-loadtest: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
        None => {
            eprintln!("gatehouse-loadtest: interrupted; the processes it started were stopped");
            ExitCode::from(EXIT_INTERRUPTED)
        }
    }
}
