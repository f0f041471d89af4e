//! `gatehouse demo`: a morning rush over real QUIC, on embedded defaults.
//!
//! Generates a development PKI, an issuer and a synthetic population, starts the engine on
//! loopback, and sends an open-loop mix of valid, revoked, expired, replayed, forged and garbage
//! tokens from many scanner connections. Latency is measured from each request's *intended*
//! send time, so a slow server cannot hide its queueing (no coordinated omission). Every
//! verdict is compared with the one the population implies; a mismatch fails the run. With
//! `--mdoc-share`, a share of the genuine presentations are ISO/IEC 18013-5 mDL presentations
//! (VerifyMdoc) from a pool of test mDLs, checked the same way and counted on their own too.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population::{Population, PopulationSpec};
use gatehouse_engine::dev::progress::{Progress, ProgressMode};

use crate::cli::args::DemoArgs;
use crate::cli::output::{out, out_raw};
use crate::cli::runtime::{now, runtime};

mod loopback;
mod mdoc;
mod options;
mod plan;
mod report;
mod rush;

use options::DemoOptions;
use plan::plan;
use report::DemoReport;
use rush::rush;

/// `gatehouse demo`: runs the demo and prints its report; fails when a verdict was not the
/// expected one.
pub fn command(args: DemoArgs) -> Result<ExitCode> {
    let opts = DemoOptions {
        holders: args.holders,
        scanners: args.scanners,
        seconds: args.seconds,
        rate: args.rate,
        progress: !args.json,
        nodes: usize::from(args.nodes),
        mdoc_share: args.mdoc_share,
    };
    let report = runtime()?.block_on(run(opts))?;
    if args.json {
        out!("{}", serde_json::to_string(&report)?);
    } else {
        out_raw!("{}", report.render());
    }
    Ok(if report.mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the whole demo: population, PKI, engine on loopback, rush, drain.
pub async fn run(opts: DemoOptions) -> Result<DemoReport> {
    opts.check()?;
    let now = now();
    let t0 = Instant::now();
    if opts.progress {
        eprintln!("gatehouse demo: issuing {} credentials …", opts.holders);
    }
    let o = opts.clone();
    let pop = tokio::task::spawn_blocking(move || population(&o, now))
        .await
        .context("population task")??;
    let setup_secs = t0.elapsed().as_secs_f64();
    let o = opts.clone();
    let mdocs = tokio::task::spawn_blocking(move || mdoc::pool(&o, now))
        .await
        .context("mDL pool task")??
        .map(Arc::new);

    let ids: Vec<String> = pop.scanners.iter().map(|s| s.id.clone()).collect();
    let pki = DevPki::generate(&ids).context("development PKI")?;
    let deployment = loopback::Loopback::start(
        &pop,
        mdocs.as_deref().map(|m| &m.population),
        &pki,
        opts.nodes,
    )
    .await?;
    let quic = Arc::new(deployment.connect(&pki, opts.scanners).await?);
    if opts.progress {
        eprintln!(
            "  engine on {}, {} scanner connections; signing the rush's tokens …",
            deployment.addrs(),
            quic.connections()
        );
    }
    let (o, offset) = (opts.clone(), deployment.utc_offset());
    let pop = Arc::new(pop);
    let (p2, m2) = (pop.clone(), mdocs.clone());
    // The tokens and sessions are stamped now, after the setup, so that they stay inside the
    // acceptance window until the end of the rush however long issuing took.
    let stamp = crate::cli::runtime::now();
    let planned = tokio::task::spawn_blocking(move || {
        let m = m2.as_deref().map(|m| &m.population);
        plan(&p2, m, &ids, &o, stamp, offset)
    })
    .await
    .context("plan task")?;
    if opts.progress {
        eprintln!(
            "  morning rush: {} requests over {} s at {:.0}/s (open loop)",
            planned.len(),
            opts.seconds,
            opts.rate
        );
    }
    let mut report = rush(quic.clone(), planned, &opts).await?;
    report.holders = opts.holders;
    report.setup_secs = setup_secs;
    report.nodes = opts.nodes;
    report.store = deployment.store();
    report.signatures = deployment.signatures();
    if let Some(m) = &mdocs {
        report.mdoc.documents = m.population.holders.len();
        report.mdoc.issue_secs = m.secs;
    }
    quic.close().await;
    deployment.stop().await?;
    Ok(report)
}

/// Generates the demo's population.
pub fn population(opts: &DemoOptions, now: u64) -> Result<Population> {
    let progress = Progress::new(
        ProgressMode::enabled(opts.progress),
        "issuing credentials",
        opts.holders as u64,
        "holders",
    );
    let pop = Population::generate(
        &PopulationSpec {
            holders: opts.holders,
            seed: 1,
            now,
            revoked_per_mille: 30,
            expired_per_mille: 20,
        },
        &|n| progress.inc(n as u64),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    progress.finish();
    Ok(pop)
}
