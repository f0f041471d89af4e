//! The `gatehouse` command: parse, build, run. Everything it does lives in the library; the
//! commands are in [`cli`], one module per command family.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use gatehouse_engine::server::LogFormat;

mod cli;
use cli::args::{Cli, Command};
use cli::output::{init_logging, say};
use cli::{demo, dev_pki, issuer, mdoc, reference, scan, serve, wallet};

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
        Command::Demo(args) => demo::command(args),
        Command::Serve(args) => serve::serve(args),
        Command::Reload(args) => serve::reload(args),
        Command::DevPki(args) => dev_pki::run(args),
        Command::Issuer { command } => issuer::run(command),
        Command::Wallet { command } => wallet::run(command),
        Command::Mdoc { command } => mdoc::run(command),
        Command::Scan(args) => Ok(scan::run(args)),
        Command::Vectors => reference::vectors(),
        Command::Completions { shell } => reference::completions(shell),
    }
}
