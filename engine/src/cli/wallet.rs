//! `gatehouse wallet …`: a holder's rotating tokens, as QR text, a terminal QR code and SVG.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::args::{PresentArgs, WalletCommand};
use crate::cli::output::out;
use crate::cli::runtime::now;
use crate::cli::tools;

/// Runs one `gatehouse wallet` command.
pub fn run(command: WalletCommand) -> Result<ExitCode> {
    match command {
        WalletCommand::Present(a) => present(a),
    }
}

/// `wallet present`: a fresh token, signed at now plus `--clock-offset-secs`.
fn present(a: PresentArgs) -> Result<ExitCode> {
    let challenge = a
        .challenge
        .map(hex::decode)
        .transpose()
        .context("challenge: not hex")?;
    let at = now().saturating_add_signed(a.clock_offset_secs);
    let token = tools::wallet_present(&a.wallet, at, challenge.as_deref())?;
    let (text, term, svg_text) = tools::qr_renderings(&token)?;
    if !a.text_only {
        out!("{term}");
    }
    out!("{text}");
    if let Some(path) = a.svg {
        std::fs::write(&path, svg_text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
