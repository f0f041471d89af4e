//! The `gatehouse` command: parse, build, run. Everything it does lives in the library; the
//! commands are in [`cli`], one module per command family.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use gatehouse_engine::server::LogFormat;

mod cli;
use cli::args::{Cli, Command};
use cli::output::{init_logging, out, out_raw, say};
use cli::runtime::runtime;
use cli::{demo, dev_pki, issuer, reference, scan, serve, wallet};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up logging from its configuration file, once it is read.
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(LogFormat::Text, "warn");
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            say!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; an error it returns is printed and exits 1.
fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Demo(args) => {
            let opts = demo::DemoOptions {
                holders: args.holders,
                scanners: args.scanners,
                seconds: args.seconds,
                rate: args.rate,
                progress: !args.json,
                nodes: usize::from(args.nodes),
            };
            let report = runtime()?.block_on(demo::run(opts))?;
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
        Command::Serve(args) => serve::serve(args),
        Command::Reload(args) => serve::reload(args),
        Command::DevPki(args) => dev_pki::run(args),
        Command::Issuer { command } => issuer::run(command),
        Command::Wallet { command } => wallet::run(command),
        Command::Scan(args) => Ok(scan::run(args)),
        Command::Vectors => reference::vectors(),
        Command::Completions { shell } => reference::completions(shell),
    }
}
