//! Commands that print reference material: the SPEC's test vectors and shell completions.

use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::args::Cli;
use crate::cli::output::out_raw;

/// `gatehouse vectors`: the SPEC's test vectors as Markdown.
pub fn vectors() -> Result<ExitCode> {
    out_raw!("{}", gatehouse_protocol::vectors::render_markdown()?);
    Ok(ExitCode::SUCCESS)
}

/// `gatehouse completions`: the completion script for `shell`, from the clap definition.
pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "gatehouse",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}
