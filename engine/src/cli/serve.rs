//! `gatehouse serve` and `gatehouse reload`: run the QUIC service, and reload a running one.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use gatehouse_engine::server;

use crate::cli::args::{ReloadArgs, ServeArgs};
use crate::cli::exit::{EXIT_CONFIG, EXIT_UNREACHABLE};
use crate::cli::output::{init_logging, out, say};
use crate::cli::runtime::runtime;
use crate::cli::tools;

/// `gatehouse serve`: reads the configuration, sets up logging from it, and serves until
/// stopped. Every error that keeps the node from starting exits [`EXIT_CONFIG`].
pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let parsed = match server::ServeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => return Ok(config_error(e)),
    };
    init_logging(parsed.log.format, &parsed.log.level);
    for warning in parsed.warnings() {
        tracing::warn!("{warning}");
    }
    let parts = match parsed.into_parts() {
        Ok(p) => p,
        Err(e) => return Ok(config_error(e)),
    };
    // Every error `serve` returns keeps the node from starting (configuration, files,
    // certificates, addresses; a store that is down is not one): one exit code, 64, on
    // which the systemd unit does not restart.
    if let Err(e) = runtime()?.block_on(server::serve(parts)) {
        return Ok(config_error(e));
    }
    Ok(ExitCode::SUCCESS)
}

/// Reports an error that keeps the node from starting, and its exit code.
fn config_error(e: impl std::fmt::Display) -> ExitCode {
    say!("gatehouse: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// `gatehouse reload`: signals the server and prints each file's result; exits 0 when every
/// file reloaded, 1 when one was refused, [`EXIT_UNREACHABLE`] when the server cannot be
/// reached.
pub fn reload(args: ReloadArgs) -> Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout_secs);
    match tools::reload_server(&args.config, args.pid, timeout) {
        Ok(status) => {
            for (file, ok, detail) in &status.files {
                out!(
                    "{file:<12} {:<7} {detail}",
                    if *ok { "ok" } else { "FAILED" }
                );
            }
            if status.files.iter().all(|(_, ok, _)| *ok) {
                Ok(ExitCode::SUCCESS)
            } else {
                say!(
                    "gatehouse: reload refused for some files; their previous state stays in force"
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Err(e @ tools::ReloadCommandError::Config(_)) => Ok(config_error(e)),
        Err(e) => {
            say!("gatehouse: {e}");
            Ok(ExitCode::from(EXIT_UNREACHABLE))
        }
    }
}
