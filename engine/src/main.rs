//! The `gatehouse` command: parse, build, run. Everything it does lives in the library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::builder::PossibleValuesParser;
use clap::{CommandFactory, Parser, Subcommand};
use gatehouse_engine::dev::pki;
use gatehouse_engine::server::LogFormat;
use gatehouse_engine::{client, server};
use gatehouse_protocol::{
    from_qr_text, CredentialType, Date, HolderCategory, Reason, RevocationKind, UnitPath,
    RETRY_KEY_LEN,
};

mod cli;
use cli::{demo, tools};

/// Exit code for a configuration error (EX_CONFIG would be 78; sysexits' EX_USAGE is 64).
const EXIT_CONFIG: u8 = 64;
/// `scan`: the token was denied (a judgement of the token: revoked, replayed, expired, …).
const EXIT_DENIED: u8 = 1;
/// `scan`: usage error (clap's own code for a bad command line; also a token that is
/// neither QR text nor hex).
const EXIT_USAGE: u8 = 2;
/// `scan`, `reload`: the server could not be reached, or did not answer in time.
const EXIT_UNREACHABLE: u8 = 3;
/// `scan`: no node could judge the token (a retryable reason, SPEC §9: busy,
/// replay_capacity, unavailable, revocations_stale); send it again with the same retry key.
const EXIT_RETRY: u8 = 4;
/// `scan`: node_restarted: the token is from before the node's start (or its store's loss);
/// the holder presents a fresh one.
const EXIT_FRESH_TOKEN: u8 = 5;
/// `scan`: this scanner's own setup is at fault: its CA, certificate or key file unreadable,
/// a key that does not match the certificate, or a server certificate that the CA does not
/// vouch for (or not for the server name).
const EXIT_LOCAL_SETUP: u8 = 6;
/// `scan`: the server refused this scanner: not registered (or removed), or its certificate
/// not accepted in the handshake.
const EXIT_SCANNER_REFUSED: u8 = 7;
/// `scan --help`: the exit codes.
const SCAN_EXIT_CODES: &str = "\
Exit codes:
  0  accepted
  1  denied: the token was judged and refused (revoked, replayed, expired, …)
  2  usage error: the command line, or a token that is neither QR text nor hex
  3  unreachable: no server answered within --timeout-secs
  4  retry: no node could judge the token (busy, replay_capacity, unavailable,
     revocations_stale); send the same token again with the same --retry-key
  5  present a fresh token: node_restarted (the token is from before the node's start)
  6  local setup: --ca, --scanner-cert or --scanner-key unreadable, a key that does not
     match its certificate, or a server certificate that --ca does not vouch for (or not
     for --server-name)
  7  the server refused this scanner: not registered (or removed), or its certificate
     not accepted";

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Verification engine for mobile identity credentials"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A morning rush over real QUIC on loopback, on embedded defaults.
    Demo {
        /// Holders in the synthetic population.
        #[arg(long, default_value_t = 100_000)]
        holders: usize,
        /// Scanner connections.
        #[arg(long, default_value_t = 36)]
        scanners: usize,
        /// Length of the rush in seconds (at most 20).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Mean arrival rate, requests per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Engine nodes (1 to 4). With more than one, they share one-time use on a Redis the
        /// demo starts on loopback, and every scanner's connections spread over the nodes.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
        nodes: u8,
    },
    /// Run the QUIC service.
    Serve {
        /// The configuration file (see deploy/gatehouse.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Reload a running server's files and TLS certificates (systemd `ExecReload`): sends it
    /// SIGHUP and waits for the result. Exits 0 when every file reloaded, 1 when one was
    /// refused (the previous state stays in force), 3 when the server cannot be reached.
    Reload {
        /// The server's configuration file (its `metrics_listen` is where the result is read).
        #[arg(long)]
        config: PathBuf,
        /// The server's process id (default: the one the server reports; systemd: $MAINPID).
        #[arg(long)]
        pid: Option<u32>,
        /// How long to wait for the reload to complete, seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Write a development CA (its key kept, TEST ONLY), a server certificate and scanner
    /// certificates, and register the scanners; run again to add scanners or server names.
    DevPki {
        /// Output directory. If it holds a CA (ca.pem and ca.key), that CA signs what is added.
        #[arg(long, default_value = "dev-pki")]
        out: PathBuf,
        /// A scanner: ID, or ID=ROLE to register it too (ROLE: gate, partner, age_check); a
        /// gate also needs its unit: ID=gate:UNIT, e.g. gate-1-1=gate:1/1. A new PKI without
        /// --scanner gets gate-1-1=gate:1/1, partner-1=partner and age-1=age_check; on an
        /// existing PKI only the scanners named are added. A scanner already issued is kept
        /// (--force issues it a new key and certificate).
        #[arg(long = "scanner", value_parser = parse_scanner)]
        scanners: Vec<String>,
        /// Another name (DNS name or IP address) for the server certificate, besides
        /// localhost, 127.0.0.1 and ::1. On an existing PKI this reissues server.pem (--force).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// The scanner registry to add scanners with a role to (default: scanners.toml beside
        /// the output directory, where the sample configuration looks for it).
        #[arg(long)]
        registry: Option<PathBuf>,
        /// Replace what is asked for (the scanners named, the server certificate for
        /// --server-name) where files exist; nothing else is replaced.
        #[arg(long)]
        force: bool,
    },
    /// Issuer tools: keys, credentials, revocations.
    Issuer {
        #[command(subcommand)]
        command: IssuerCommand,
    },
    /// Wallet tools: rotating tokens.
    Wallet {
        #[command(subcommand)]
        command: WalletCommand,
    },
    /// Send one token to a server and print the verdict (the reference scanner). Exits 0
    /// accepted, 1 denied, 2 usage error, 3 unreachable, 4 retry, 5 present a fresh token,
    /// 6 local setup error, 7 scanner refused (see below).
    #[command(after_help = SCAN_EXIT_CODES)]
    Scan {
        /// Server address, HOST:PORT; HOST is an IP address or a DNS name. Repeat it for a
        /// fleet: the scan starts at a random server and fails over to the others, with one
        /// retry key for all attempts (SPEC §8.6).
        #[arg(long = "server", default_values_t = ["127.0.0.1:4433".to_string()])]
        servers: Vec<String>,
        /// Name on the server certificate (default: HOST of --server).
        #[arg(long)]
        server_name: Option<String>,
        /// The whole scan's budget in seconds: connecting, the request and the retries across
        /// servers together (at least 1).
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
        /// The scan's retry key (SPEC §8.6), 16 bytes as 32 hex digits. To retry a scan whose
        /// answer was lost, give the same token with the same key: the first verdict comes
        /// back, marked as a repeat, not `replayed`. Default: a fresh random key, printed when
        /// the scan ends without a verdict or with a retryable one (exit 3 or 4).
        #[arg(long, value_parser = parse_retry_key)]
        retry_key: Option<[u8; RETRY_KEY_LEN]>,
        /// CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// This scanner's certificate (PEM).
        #[arg(long)]
        scanner_cert: PathBuf,
        /// This scanner's key (PEM).
        #[arg(long)]
        scanner_key: PathBuf,
        /// The token: QR text (`GH1:…`) or hex bytes.
        token: String,
    },
    /// Print the SPEC's test vectors.
    Vectors,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum IssuerCommand {
    /// A new issuer key (`issuer.key`) and a trust list naming it (`trust.toml`).
    Keygen {
        /// Output directory.
        #[arg(long, default_value = "issuer")]
        out: PathBuf,
        /// The key's name in the trust list.
        #[arg(long, default_value = "dev-issuer")]
        name: String,
        /// Replace an existing issuer.key and trust.toml.
        #[arg(long)]
        force: bool,
    },
    /// Issue a credential to a new holder: writes `credential.cose` and `device.key`.
    Issue {
        /// The issuer key file.
        #[arg(long, default_value = "issuer/issuer.key")]
        key: PathBuf,
        /// Output directory (the holder's wallet).
        #[arg(long, default_value = "wallet")]
        out: PathBuf,
        /// Credential type (military_id, leave_pass, family_member, …).
        #[arg(long = "type", default_value = "military_id", value_parser = PossibleValuesParser::new(CredentialType::ALL.iter().map(|t| t.label())))]
        credential_type: String,
        /// Holder category (enlisted, officer, parent, reservist, …).
        #[arg(long, default_value = "enlisted", value_parser = PossibleValuesParser::new(HolderCategory::ALL.iter().map(|c| c.label())))]
        category: String,
        /// Unit path.
        #[arg(long, default_value = "1/1/1/1", value_parser = parse_unit)]
        unit: String,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Birth date, YYYYMMDD.
        #[arg(long, value_parser = parse_birth)]
        birth: Option<u32>,
        /// Sponsor subject id (hex), for family members.
        #[arg(long, value_parser = parse_id)]
        sponsor: Option<String>,
        /// Entitlements.
        #[arg(long = "entitlement", default_values_t = ["base_entry".to_string(), "military_discount".to_string()], value_parser = PossibleValuesParser::new(ENTITLEMENTS))]
        entitlements: Vec<String>,
        /// Replace an existing wallet.
        #[arg(long)]
        force: bool,
    },
    /// Revoke or reinstate: with --feed, publish the next epoch to a feed (signed with --key);
    /// without, write one list to --out (a snapshot, or with --base a delta).
    #[command(group(clap::ArgGroup::new("delta").args(["base", "feed"]).multiple(true)))]
    Revoke {
        /// The feed to publish to: a directory (served over HTTP(S) as is) or a redis:// URL.
        #[arg(long, requires = "key")]
        feed: Option<String>,
        /// Redis key prefix of the feed.
        #[arg(long = "feed-key", requires = "feed")]
        feed_key: Option<String>,
        /// The revocation key (`issuer revocation-keygen`): required with --feed, and signs
        /// an --out list when given.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Output file (without --feed).
        #[arg(long, default_value = "revocations.cbor", conflicts_with = "feed")]
        out: PathBuf,
        /// The epoch this list brings the state to (without --feed).
        #[arg(long, required_unless_present = "feed", conflicts_with = "feed")]
        epoch: Option<u64>,
        /// For a delta: the epoch it applies to (without --feed).
        #[arg(long, conflicts_with = "feed")]
        base: Option<u64>,
        /// Credential ids (hex).
        #[arg(long = "credential", value_parser = parse_id)]
        credentials: Vec<String>,
        /// Subject ids (hex).
        #[arg(long = "subject", value_parser = parse_id)]
        subjects: Vec<String>,
        /// Sponsor ids (hex): denies every family credential naming them.
        #[arg(long = "sponsor", value_parser = parse_id)]
        sponsors: Vec<String>,
        /// Replace an existing file (the usual case when a new epoch replaces the last).
        #[arg(long)]
        force: bool,
        /// Credential ids (hex) to reinstate (in a delta: with --base or --feed).
        #[arg(long = "reinstate-credential", value_parser = parse_id, requires = "delta")]
        reinstate_credentials: Vec<String>,
        /// Subject ids (hex) to reinstate (in a delta: with --base or --feed).
        #[arg(long = "reinstate-subject", value_parser = parse_id, requires = "delta")]
        reinstate_subjects: Vec<String>,
        /// Sponsor ids (hex) to reinstate: restores the family credentials naming them (in a
        /// delta: with --base or --feed).
        #[arg(long = "reinstate-sponsor", value_parser = parse_id, requires = "delta")]
        reinstate_sponsors: Vec<String>,
    },
    /// Fold a feed's snapshot and the deltas after it into a new signed snapshot.
    Compact {
        /// The feed: a directory or a redis:// URL.
        #[arg(long)]
        feed: String,
        /// Redis key prefix of the feed.
        #[arg(long = "feed-key")]
        feed_key: Option<String>,
        /// The revocation key.
        #[arg(long)]
        key: PathBuf,
    },
    /// A new revocation key (`revocation.key`), optionally added to a trust list.
    RevocationKeygen {
        /// Output directory.
        #[arg(long, default_value = "issuer")]
        out: PathBuf,
        /// The key's name in the trust list.
        #[arg(long, default_value = "revocations")]
        name: String,
        /// A trust list to add the key to as a [[revocation_key]].
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Replace an existing revocation.key, and the trust list's key of that name.
        #[arg(long)]
        force: bool,
    },
}

/// The scanners `dev-pki` issues and registers on a new PKI when none is named.
const DEV_PKI_DEFAULT_SCANNERS: [&str; 3] =
    ["gate-1-1=gate:1/1", "partner-1=partner", "age-1=age_check"];

/// `dev-pki --scanner`: ID[=ROLE[:UNIT]], the id usable as a certificate name and a file name.
fn parse_scanner(text: &str) -> Result<String, String> {
    let spec = text.parse::<tools::ScannerSpec>()?;
    if !pki::valid_scanner_id(&spec.id) {
        return Err(pki::PkiError::BadScannerId(spec.id).to_string());
    }
    Ok(text.to_string())
}

/// The entitlements `issuer issue --entitlement` takes.
const ENTITLEMENTS: [&str; 3] = ["base_entry", "military_discount", "welfare_facilities"];

/// `issuer issue --unit`: a unit path such as 1/12/103/2.
fn parse_unit(text: &str) -> Result<String, String> {
    text.parse::<UnitPath>()
        .map(|_| text.to_string())
        .map_err(|e| format!("{e} (a unit path is like 1/12/103/2)"))
}

/// `issuer issue --birth`: a date as YYYYMMDD.
fn parse_birth(text: &str) -> Result<u32, String> {
    let bad = |e: String| format!("{e} (a date as YYYYMMDD)");
    let v: u32 = text.parse().map_err(|e| bad(format!("{e}")))?;
    Date::from_yyyymmdd(u64::from(v)).map_err(|e| bad(e.to_string()))?;
    Ok(v)
}

/// A credential, subject or sponsor id: 16 bytes as 32 hex digits (kept as the text).
fn parse_id(text: &str) -> Result<String, String> {
    match hex::decode(text) {
        Ok(b) if b.len() == 16 => Ok(text.to_string()),
        _ => Err("an id is 16 bytes as 32 hex digits".into()),
    }
}

#[derive(Subcommand)]
enum WalletCommand {
    /// A fresh token as QR text, a QR code in the terminal, and optionally an SVG.
    Present {
        /// The wallet directory (credential.cose, device.key).
        #[arg(long, default_value = "wallet")]
        wallet: PathBuf,
        /// Scanner challenge (hex), for NFC.
        #[arg(long)]
        challenge: Option<String>,
        /// Also write the QR code as SVG here.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Print only the QR text.
        #[arg(long)]
        text_only: bool,
        /// Sign as a phone whose clock runs this many seconds ahead (negative: behind). A
        /// phone within the engine's skew (5 s) is still accepted; useful to show the restart
        /// and store fences (`node_restarted`) without waiting.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        clock_offset_secs: i64,
    },
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Logs go to stderr: text (colour only when stderr is a terminal, so files and the journal
/// get plain lines) or JSON. `RUST_LOG` overrides `level`.
fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Standard error that never fails. A closed stderr (`gatehouse serve … 2>&1 | head -1`, a log
/// pipe that died) must not stop the server: a failed write is dropped, where the log
/// subscriber would otherwise report it with `eprintln!`, which panics on a closed pipe.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// `eprintln!` that does not panic when stderr is closed.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(Stderr, $($arg)*);
    }};
}

/// `println!` that never panics: a closed stdout (`gatehouse scan … | head -1`) must not turn
/// a verdict's exit code into a panic's 101. What cannot be written is dropped.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that never panics (see [`out!`]).
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up logging from its configuration file, once it is read.
    if !matches!(cli.command, Command::Serve { .. }) {
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

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo {
            holders,
            scanners,
            seconds,
            rate,
            json,
            nodes,
        } => {
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
        Command::Serve { config } => {
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
        Command::Reload {
            config,
            pid,
            timeout_secs,
        } => match tools::reload_server(&config, pid, Duration::from_secs(timeout_secs)) {
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
        Command::DevPki {
            out,
            scanners,
            server_names,
            registry,
            force,
        } => {
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
            IssuerCommand::Keygen { out, name, force } => {
                let key = tools::issuer_keygen(&out, &name, now(), force)?;
                out!(
                    "issuer key: {}\ntrust list: {}",
                    key.display(),
                    out.join("trust.toml").display()
                );
                Ok(ExitCode::SUCCESS)
            }
            IssuerCommand::Issue {
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
            } => {
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
            IssuerCommand::Revoke {
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
            } => {
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
            IssuerCommand::Compact {
                feed,
                feed_key,
                key,
            } => {
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
            IssuerCommand::RevocationKeygen {
                out,
                name,
                trust,
                force,
            } => {
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
                WalletCommand::Present {
                    wallet,
                    challenge,
                    svg,
                    text_only,
                    clock_offset_secs,
                },
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
        Command::Scan {
            servers,
            server_name,
            timeout_secs,
            retry_key,
            ca,
            scanner_cert,
            scanner_key,
            token,
        } => Ok(scan(ScanArgs {
            servers,
            server_name,
            timeout: Duration::from_secs(timeout_secs.max(1)),
            retry_key,
            ca,
            scanner_cert,
            scanner_key,
            token,
        })),
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

struct ScanArgs {
    servers: Vec<String>,
    server_name: Option<String>,
    /// The whole scan: connect, request and retries.
    timeout: Duration,
    retry_key: Option<[u8; RETRY_KEY_LEN]>,
    ca: PathBuf,
    scanner_cert: PathBuf,
    scanner_key: PathBuf,
    token: String,
}

/// `--retry-key`: 16 bytes as 32 hex digits.
fn parse_retry_key(text: &str) -> Result<[u8; RETRY_KEY_LEN], String> {
    hex::decode(text)
        .ok()
        .and_then(|b| <[u8; RETRY_KEY_LEN]>::try_from(b).ok())
        .ok_or_else(|| {
            format!(
                "a retry key is {RETRY_KEY_LEN} bytes as {} hex digits",
                2 * RETRY_KEY_LEN
            )
        })
}

/// `gatehouse scan`: the exit codes are [`SCAN_EXIT_CODES`]. The whole scan (connecting, the
/// request, the retries across servers) is bounded by `--timeout-secs`.
fn scan(a: ScanArgs) -> ExitCode {
    let fail = |code: u8, e: String| {
        say!("gatehouse scan: {e}");
        ExitCode::from(code)
    };
    let usage = |e: String| fail(EXIT_USAGE, e);
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
    let secs = a.timeout.as_secs().max(1);
    let attempts = (a.servers.len().max(4) as u64).clamp(1, secs);
    let per_attempt = a.timeout / u32::try_from(attempts).unwrap_or(u32::MAX);
    let defaults = client::FleetOptions::default();
    let options = client::FleetOptions {
        client: client::ClientOptions {
            connect_timeout: per_attempt,
            request_timeout: per_attempt,
            ..defaults.client
        },
        attempts: usize::try_from(attempts).unwrap_or(usize::MAX),
        deadline: a.timeout,
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
        tokio::time::timeout(a.timeout, fleet.verify_scan(&bytes, None, key)).await
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
