//! `gatehouse dev-pki`: a development CA (TEST ONLY), server and scanner certificates, and the
//! scanners' registration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use gatehouse_engine::dev::pki;

use crate::cli::args::DevPkiArgs;
use crate::cli::output::out;
use crate::cli::tools;

/// The scanners `dev-pki` issues and registers on a new PKI when none is named.
const DEV_PKI_DEFAULT_SCANNERS: [&str; 3] =
    ["gate-1-1=gate:1/1", "partner-1=partner", "age-1=age_check"];

/// `gatehouse dev-pki`: opens the PKI in `--out` (or creates one), issues what is asked for,
/// writes it, and registers the scanners that have a role.
pub fn run(args: DevPkiArgs) -> Result<ExitCode> {
    let DevPkiArgs {
        out,
        scanners,
        server_names,
        registry,
        force,
    } = args;
    // A CA key without its certificate is an existing PKI too: opening it fails
    // rather than a new CA replacing the key.
    let existing = out.join("ca.pem").exists() || out.join("ca.key").exists();
    let specs = scanner_specs(scanners, existing)?;
    let mut p = if existing {
        pki::DevPki::open(&out)?
    } else {
        pki::DevPki::generate_with_names(&[], &server_names)?
    };
    if existing && !server_names.is_empty() {
        p.reissue_server(&server_names)?;
    }
    for spec in &specs {
        let cert = out.join("scanners").join(format!("{}.pem", spec.id));
        if existing && cert.exists() && !force {
            continue; // already issued: kept (use --force to issue a new one)
        }
        p.issue_scanner(&spec.id)
            .map_err(|e| anyhow::anyhow!("--scanner: {e}"))?;
    }
    let written = p.write_checked(&out, force)?;
    let registry = registry.unwrap_or_else(|| default_registry(&out));
    let registered = tools::register_scanners(&registry, &specs)?;
    out!(
        "development PKI (TEST ONLY) in {}: {} files written{}",
        out.display(),
        written.len(),
        if existing { " (existing CA kept)" } else { "" }
    );
    if !registered.is_empty() {
        out!(
            "registered in {}: {}",
            registry.display(),
            registered.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--scanner` values parsed, or on a new PKI without any, the default scanners.
fn scanner_specs(scanners: Vec<String>, existing: bool) -> Result<Vec<tools::ScannerSpec>> {
    let scanners = if scanners.is_empty() && !existing {
        DEV_PKI_DEFAULT_SCANNERS.map(str::to_string).to_vec()
    } else {
        scanners
    };
    scanners
        .iter()
        .map(|s| s.parse::<tools::ScannerSpec>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--scanner: {e}"))
}

/// The registry when `--registry` is not given: scanners.toml beside the output directory.
fn default_registry(out: &Path) -> PathBuf {
    out.parent()
        .map(|d| d.join("scanners.toml"))
        .unwrap_or_else(|| PathBuf::from("scanners.toml"))
}
