//! The `gatehouse` command: parse, build, run. Everything it does lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use gatehouse_engine::dev::pki;
use gatehouse_engine::server::LogFormat;
use gatehouse_engine::{client, server};
use gatehouse_protocol::{from_qr_text, Reason, RevocationKind, RETRY_KEY_LEN};

mod cli;
use cli::args::{
    Cli, Command, CompactArgs, DemoArgs, DevPkiArgs, IssueArgs, IssuerCommand, KeygenArgs,
    PresentArgs, ReloadArgs, RevocationKeygenArgs, RevokeArgs, ScanArgs, ServeArgs, WalletCommand,
};
use cli::exit::{
    EXIT_CONFIG, EXIT_DENIED, EXIT_FRESH_TOKEN, EXIT_LOCAL_SETUP, EXIT_RETRY, EXIT_SCANNER_REFUSED,
    EXIT_UNREACHABLE, EXIT_USAGE,
};
use cli::output::{init_logging, out, out_raw, say};
use cli::runtime::{now, runtime};
use cli::{demo, tools};

/// The scanners `dev-pki` issues and registers on a new PKI when none is named.
const DEV_PKI_DEFAULT_SCANNERS: [&str; 3] =
    ["gate-1-1=gate:1/1", "partner-1=partner", "age-1=age_check"];

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up logging from its configuration file, once it is read.
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(LogFormat::Text, "warn");
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            say!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; an error it returns is printed and exits 1.
fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo(DemoArgs {
            holders,
            scanners,
            seconds,
            rate,
            json,
            nodes,
        }) => {
            let opts = demo::DemoOptions {
                holders,
                scanners,
                seconds,
                rate,
                progress: !json,
                nodes: usize::from(nodes),
            };
            let report = runtime()?.block_on(demo::run(opts))?;
            if json {
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
        Command::Serve(ServeArgs { config }) => {
            let parsed = match server::ServeConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    say!("gatehouse: {e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            init_logging(parsed.log.format, &parsed.log.level);
            for warning in parsed.warnings() {
                tracing::warn!("{warning}");
            }
            let parts = match parsed.into_parts() {
                Ok(p) => p,
                Err(e) => {
                    say!("gatehouse: {e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            // Every error `serve` returns keeps the node from starting (configuration, files,
            // certificates, addresses; a store that is down is not one): one exit code, 64, on
            // which the systemd unit does not restart.
            if let Err(e) = runtime()?.block_on(server::serve(parts)) {
                say!("gatehouse: {e}");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload(ReloadArgs {
            config,
            pid,
            timeout_secs,
        }) => match tools::reload_server(&config, pid, Duration::from_secs(timeout_secs)) {
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
                    say!("gatehouse: reload refused for some files; their previous state stays in force");
                    Ok(ExitCode::FAILURE)
                }
            }
            Err(e @ tools::ReloadCommandError::Config(_)) => {
                say!("gatehouse: {e}");
                Ok(ExitCode::from(EXIT_CONFIG))
            }
            Err(e) => {
                say!("gatehouse: {e}");
                Ok(ExitCode::from(EXIT_UNREACHABLE))
            }
        },
        Command::DevPki(DevPkiArgs {
            out,
            scanners,
            server_names,
            registry,
            force,
        }) => {
            // A CA key without its certificate is an existing PKI too: opening it fails
            // rather than a new CA replacing the key.
            let existing = out.join("ca.pem").exists() || out.join("ca.key").exists();
            let scanners = if scanners.is_empty() && !existing {
                DEV_PKI_DEFAULT_SCANNERS.map(str::to_string).to_vec()
            } else {
                scanners
            };
            let specs = scanners
                .iter()
                .map(|s| s.parse::<tools::ScannerSpec>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("--scanner: {e}"))?;
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
            let registry = registry.unwrap_or_else(|| {
                out.parent()
                    .map(|d| d.join("scanners.toml"))
                    .unwrap_or_else(|| PathBuf::from("scanners.toml"))
            });
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
        Command::Issuer { command } => match command {
            IssuerCommand::Keygen(KeygenArgs { out, name, force }) => {
                let key = tools::issuer_keygen(&out, &name, now(), force)?;
                out!(
                    "issuer key: {}\ntrust list: {}",
                    key.display(),
                    out.join("trust.toml").display()
                );
                Ok(ExitCode::SUCCESS)
            }
            IssuerCommand::Issue(IssueArgs {
                key,
                out,
                credential_type,
                category,
                unit,
                days,
                birth,
                sponsor,
                entitlements,
                force,
            }) => {
                let req = tools::IssueRequest {
                    credential_type,
                    category,
                    unit,
                    days,
                    birth,
                    sponsor,
                    entitlements,
                };
                let c = tools::issuer_issue(&key, &out, &req, now(), force)?;
                out!(
                    "credential {} for subject {} written to {}",
                    hex::encode(c.id),
                    hex::encode(c.subject),
                    out.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            IssuerCommand::Revoke(RevokeArgs {
                feed,
                feed_key,
                key,
                out,
                epoch,
                base,
                credentials,
                subjects,
                sponsors,
                force,
                reinstate_credentials,
                reinstate_subjects,
                reinstate_sponsors,
            }) => {
                let tagged = |c: Vec<String>, s: Vec<String>, p: Vec<String>| {
                    c.into_iter()
                        .map(|h| (RevocationKind::Credential, h))
                        .chain(s.into_iter().map(|h| (RevocationKind::Subject, h)))
                        .chain(p.into_iter().map(|h| (RevocationKind::Sponsor, h)))
                        .collect::<Vec<(RevocationKind, String)>>()
                };
                let ids = tagged(credentials, subjects, sponsors);
                let back = tagged(
                    reinstate_credentials,
                    reinstate_subjects,
                    reinstate_sponsors,
                );
                let key = key.as_deref().map(tools::read_key).transpose()?;
                if let Some(feed) = feed {
                    let key = key.context("--feed needs --key (the revocation key)")?;
                    let target = tools::FeedTarget::parse(&feed, feed_key.as_deref())?;
                    let list = tools::feed_publish(&target, &key, &ids, &back)?;
                    out!(
                        "revocation epoch {} published to {feed} ({} revoked, {} reinstated)",
                        list.epoch,
                        list.revoke.len(),
                        list.reinstate.len()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                let epoch = epoch.context("without --feed, --epoch is required")?;
                let list =
                    tools::issuer_revoke(&out, epoch, base, &ids, &back, key.as_ref(), force)?;
                out!(
                    "revocation epoch {} ({} entries) written to {}",
                    list.epoch,
                    list.revoke.len(),
                    out.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            IssuerCommand::Compact(CompactArgs {
                feed,
                feed_key,
                key,
            }) => {
                let key = tools::read_key(&key)?;
                let target = tools::FeedTarget::parse(&feed, feed_key.as_deref())?;
                let list = tools::feed_compact(&target, &key)?;
                out!(
                    "revocation snapshot {} ({} entries) published to {feed}",
                    list.epoch,
                    list.revoke.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            IssuerCommand::RevocationKeygen(RevocationKeygenArgs {
                out,
                name,
                trust,
                force,
            }) => {
                let key = tools::revocation_keygen(&out, &name, trust.as_deref(), force)?;
                out!("revocation key: {}", key.display());
                if let Some(t) = trust {
                    out!("added to {} as [[revocation_key]] {name:?}", t.display());
                }
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Wallet {
            command:
                WalletCommand::Present(PresentArgs {
                    wallet,
                    challenge,
                    svg,
                    text_only,
                    clock_offset_secs,
                }),
        } => {
            let challenge = challenge
                .map(hex::decode)
                .transpose()
                .context("challenge: not hex")?;
            let at = now().saturating_add_signed(clock_offset_secs);
            let token = tools::wallet_present(&wallet, at, challenge.as_deref())?;
            let (text, term, svg_text) = tools::qr_renderings(&token)?;
            if !text_only {
                out!("{term}");
            }
            out!("{text}");
            if let Some(path) = svg {
                std::fs::write(&path, svg_text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan(args) => Ok(scan(args)),
        Command::Vectors => {
            out_raw!("{}", gatehouse_protocol::vectors::render_markdown()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "gatehouse",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `gatehouse scan`: the exit codes are [`cli::exit::SCAN_EXIT_CODES`]. The whole scan
/// (connecting, the request, the retries across servers) is bounded by `--timeout-secs`.
fn scan(a: ScanArgs) -> ExitCode {
    let fail = |code: u8, e: String| {
        say!("gatehouse scan: {e}");
        ExitCode::from(code)
    };
    let usage = |e: String| fail(EXIT_USAGE, e);
    let timeout = Duration::from_secs(a.timeout_secs.max(1));
    let token = a.token.trim();
    let bytes = if token.starts_with(gatehouse_protocol::QR_PREFIX) {
        match from_qr_text(token) {
            Ok(b) => b,
            Err(e) => return usage(format!("token: {e}")),
        }
    } else {
        match hex::decode(token) {
            Ok(b) => b,
            Err(_) => return usage("token: neither QR text (GH1:…) nor hex".into()),
        }
    };
    if bytes.len() > gatehouse_protocol::MAX_TOKEN_LEN {
        return usage(format!(
            "token: {} bytes, a token has at most {}",
            bytes.len(),
            gatehouse_protocol::MAX_TOKEN_LEN
        ));
    }
    // HOST:PORT each, HOST an IP address ([v6] in brackets) or a DNS name (resolved at
    // connect time by the fleet client).
    let mut first_host = None;
    for server in &a.servers {
        let Some((host, port)) = server.rsplit_once(':') else {
            return usage(format!("--server {server:?}: expected HOST:PORT"));
        };
        if port.parse::<u16>().is_err() || host.is_empty() {
            return usage(format!("--server {server:?}: expected HOST:PORT"));
        }
        first_host.get_or_insert_with(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        });
    }
    let Some(host) = first_host else {
        return usage("--server: at least one HOST:PORT".into());
    };
    let server_name = a.server_name.unwrap_or(host);
    if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
        return usage(format!(
            "--server-name {server_name:?}: not a DNS name or an IP address"
        ));
    }
    // This scanner's own files, checked before any network: unreadable, or a key that does
    // not match the certificate.
    let identity = match client::ClientIdentity::from_files(&a.ca, &a.scanner_cert, &a.scanner_key)
        .and_then(|i| i.check().map(|()| i))
    {
        Ok(i) => i,
        Err(e) => {
            return fail(
                EXIT_LOCAL_SETUP,
                format!("--ca/--scanner-cert/--scanner-key: {e}"),
            )
        }
    };
    let key = match a.retry_key.map_or_else(new_retry_key, Ok) {
        Ok(k) => k,
        Err(e) => return fail(EXIT_LOCAL_SETUP, e),
    };
    // The budget is shared by the attempts (at least one second each), one per server of a
    // fleet and at least four: a lost answer is retried with the same retry key.
    let secs = timeout.as_secs().max(1);
    let attempts = (a.servers.len().max(4) as u64).clamp(1, secs);
    let per_attempt = timeout / u32::try_from(attempts).unwrap_or(u32::MAX);
    let defaults = client::FleetOptions::default();
    let options = client::FleetOptions {
        client: client::ClientOptions {
            connect_timeout: per_attempt,
            request_timeout: per_attempt,
            ..defaults.client
        },
        attempts: usize::try_from(attempts).unwrap_or(usize::MAX),
        deadline: timeout,
        ..defaults
    };
    let fleet = match client::FleetClient::new(&a.servers, &server_name, identity, options) {
        Ok(f) => f,
        Err(e) => return fail(EXIT_LOCAL_SETUP, format!("{e}")),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_LOCAL_SETUP, format!("{e:#}")),
    };
    let servers = a.servers.join(", ");
    let retry_hint = || {
        say!(
            "gatehouse scan: to retry this scan, give the same token with --retry-key {}",
            hex::encode(key)
        );
    };
    let result = rt.block_on(async move {
        tokio::time::timeout(timeout, fleet.verify_scan(&bytes, None, key)).await
    });
    // A name lookup still running past the budget does not hold the exit up.
    rt.shutdown_timeout(Duration::from_millis(100));
    let verdict = match result {
        Err(_) => {
            let code = fail(
                EXIT_UNREACHABLE,
                format!("{servers}: no answer within {secs} s"),
            );
            retry_hint();
            return code;
        }
        Ok(Err(e)) if e.is_local() => return fail(EXIT_LOCAL_SETUP, format!("{servers}: {e}")),
        Ok(Err(e)) if e.is_scanner_refused() => {
            return fail(EXIT_SCANNER_REFUSED, format!("{servers}: {e}"))
        }
        Ok(Err(e)) => {
            let why = match e {
                client::ClientError::Timeout(_) => format!("no answer within {secs} s"),
                e => format!("no verdict within {secs} s: {e}"),
            };
            let code = fail(EXIT_UNREACHABLE, format!("{servers}: {why}"));
            retry_hint();
            return code;
        }
        Ok(Ok(v)) => v,
    };
    out!(
        "{} ({}): {}",
        verdict.reason.label(),
        verdict.reason.code(),
        verdict.reason.describe()
    );
    if verdict.repeat {
        out!("  (repeat: the first verdict of this scan, given again to its retry)");
    }
    let at = verdict.attributes;
    if let Some(t) = at.credential_type {
        out!("  credential type: {t}");
    }
    if let Some(c) = at.category {
        out!("  holder category: {c}");
    }
    if let Some(u) = at.unit {
        out!("  unit: {u}");
    }
    if let Some(v) = at.valid_until {
        out!("  valid until: {} ({v})", server::format_unix(v));
    }
    if let Some(p) = at.predicate {
        out!("  predicate: {}", p.label());
    }
    if verdict.reason.is_accept() {
        ExitCode::SUCCESS
    } else if verdict.reason.is_retryable() {
        // busy, replay_capacity, unavailable, revocations_stale on every node tried: no
        // judgement of the token was made.
        say!(
            "gatehouse scan: no node could judge the token ({}); retry",
            verdict.reason.label()
        );
        retry_hint();
        ExitCode::from(EXIT_RETRY)
    } else if verdict.reason == Reason::NodeRestarted {
        say!("gatehouse scan: the token is from before the node's start; present a fresh one");
        ExitCode::from(EXIT_FRESH_TOKEN)
    } else if verdict.reason == Reason::UnknownScanner {
        ExitCode::from(EXIT_SCANNER_REFUSED)
    } else {
        ExitCode::from(EXIT_DENIED)
    }
}

/// A fresh random retry key (SPEC §8.6): one per scan.
fn new_retry_key() -> Result<[u8; RETRY_KEY_LEN], String> {
    use rand_core::{OsRng, RngCore};
    let mut key = [0u8; RETRY_KEY_LEN];
    OsRng
        .try_fill_bytes(&mut key)
        .map_err(|e| format!("no randomness for a retry key: {e}"))?;
    Ok(key)
}
