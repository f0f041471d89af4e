//! The `gatehouse` command: parse, build, run. Everything it does lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gatehouse_engine::dev::pki;
use gatehouse_engine::{client, server};

mod cli;
use cli::{demo, tools};
use gatehouse_protocol::{from_qr_text, RevocationKind};

/// Exit code for a configuration error (EX_CONFIG would be 78; sysexits' EX_USAGE is 64).
const EXIT_CONFIG: u8 = 64;

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
    /// Write a development CA, a server certificate and scanner certificates (TEST ONLY).
    DevPki {
        /// Output directory.
        #[arg(long, default_value = "dev-pki")]
        out: PathBuf,
        /// Scanner ids (the certificates' common names).
        #[arg(long = "scanner", default_values_t = ["gate-1-1".to_string(), "partner-1".to_string(), "age-1".to_string()])]
        scanners: Vec<String>,
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
    /// Send one token to a server and print the verdict (the reference scanner).
    Scan {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:4433")]
        server: std::net::SocketAddr,
        /// Name on the server certificate.
        #[arg(long, default_value = "localhost")]
        server_name: String,
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
        #[arg(long = "type", default_value = "military_id")]
        credential_type: String,
        /// Holder category (enlisted, officer, parent, reservist, …).
        #[arg(long, default_value = "enlisted")]
        category: String,
        /// Unit path.
        #[arg(long, default_value = "1/1/1/1")]
        unit: String,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Birth date, YYYYMMDD.
        #[arg(long)]
        birth: Option<u32>,
        /// Sponsor subject id (hex), for family members.
        #[arg(long)]
        sponsor: Option<String>,
        /// Entitlements.
        #[arg(long = "entitlement", default_values_t = ["base_entry".to_string(), "military_discount".to_string()])]
        entitlements: Vec<String>,
    },
    /// Write a revocation list (a snapshot, or with --base a delta).
    Revoke {
        /// Output file.
        #[arg(long, default_value = "revocations.cbor")]
        out: PathBuf,
        /// The epoch this list brings the state to.
        #[arg(long)]
        epoch: u64,
        /// For a delta: the epoch it applies to.
        #[arg(long)]
        base: Option<u64>,
        /// Credential ids (hex).
        #[arg(long = "credential")]
        credentials: Vec<String>,
        /// Subject ids (hex).
        #[arg(long = "subject")]
        subjects: Vec<String>,
        /// Sponsor ids (hex): denies every family credential naming them.
        #[arg(long = "sponsor")]
        sponsors: Vec<String>,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(match cli.command {
                    Command::Serve { .. } => "info",
                    _ => "warn",
                })
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
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
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.mismatches == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Serve { config } => {
            let parts = match server::ServeConfig::load(&config)
                .map_err(anyhow::Error::from)
                .and_then(|c| c.into_parts().map_err(anyhow::Error::from))
            {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("gatehouse: {e:#}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            runtime()?.block_on(server::serve(parts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DevPki { out, scanners } => {
            let p = pki::DevPki::generate(&scanners)?;
            p.write_to(&out)?;
            println!("development PKI (TEST ONLY) written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Issuer { command } => match command {
            IssuerCommand::Keygen { out, name } => {
                let key = tools::issuer_keygen(&out, &name, now())?;
                println!(
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
                let c = tools::issuer_issue(&key, &out, &req, now())?;
                println!(
                    "credential {} for subject {} written to {}",
                    hex::encode(c.id),
                    hex::encode(c.subject),
                    out.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            IssuerCommand::Revoke {
                out,
                epoch,
                base,
                credentials,
                subjects,
                sponsors,
            } => {
                let ids: Vec<(RevocationKind, String)> = credentials
                    .into_iter()
                    .map(|h| (RevocationKind::Credential, h))
                    .chain(subjects.into_iter().map(|h| (RevocationKind::Subject, h)))
                    .chain(sponsors.into_iter().map(|h| (RevocationKind::Sponsor, h)))
                    .collect();
                let list = tools::issuer_revoke(&out, epoch, base, &ids)?;
                println!(
                    "revocation epoch {} ({} entries) written to {}",
                    list.epoch,
                    list.revoke.len(),
                    out.display()
                );
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
                },
        } => {
            let challenge = challenge
                .map(hex::decode)
                .transpose()
                .context("challenge: not hex")?;
            let token = tools::wallet_present(&wallet, now(), challenge.as_deref())?;
            let (text, term, svg_text) = tools::qr_renderings(&token)?;
            if !text_only {
                println!("{term}");
            }
            println!("{text}");
            if let Some(path) = svg {
                std::fs::write(&path, svg_text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan {
            server,
            server_name,
            ca,
            scanner_cert,
            scanner_key,
            token,
        } => {
            let bytes = if token.starts_with(gatehouse_protocol::QR_PREFIX) {
                from_qr_text(token.trim())?
            } else {
                hex::decode(token.trim()).context("token: neither QR text (GH1:…) nor hex")?
            };
            let identity = client::ClientIdentity::from_files(&ca, &scanner_cert, &scanner_key)?;
            let verdict = runtime()?.block_on(async move {
                let c = client::ScannerClient::connect(server, &server_name, identity).await?;
                let v = c.verify(&bytes, None).await;
                c.close().await;
                v
            })?;
            println!(
                "{} ({}): {}",
                verdict.reason.label(),
                verdict.reason.code(),
                verdict.reason.describe()
            );
            let a = verdict.attributes;
            if let Some(t) = a.credential_type {
                println!("  credential type: {t}");
            }
            if let Some(c) = a.category {
                println!("  holder category: {c}");
            }
            if let Some(u) = a.unit {
                println!("  unit: {u}");
            }
            if let Some(v) = a.valid_until {
                println!("  valid until: {v}");
            }
            if let Some(p) = a.predicate {
                println!("  predicate: {}", p.label());
            }
            Ok(if verdict.reason.is_accept() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Vectors => {
            print!("{}", gatehouse_protocol::vectors::render_markdown()?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
