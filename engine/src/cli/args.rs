//! The command line: every command's arguments, their help text and their value parsers.

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};
use gatehouse_engine::dev::pki;
use gatehouse_protocol::{CredentialType, Date, HolderCategory, UnitPath, RETRY_KEY_LEN};

use crate::cli::exit::SCAN_EXIT_CODES;
use crate::cli::tools;

/// The `gatehouse` command line.
#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Verification engine for mobile identity credentials"
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The `gatehouse` commands.
#[derive(Subcommand)]
pub enum Command {
    /// A morning rush over real QUIC on loopback, on embedded defaults.
    Demo(DemoArgs),
    /// Run the QUIC service.
    Serve(ServeArgs),
    /// Reload a running server's files and TLS certificates (systemd `ExecReload`): sends it
    /// SIGHUP and waits for the result. Exits 0 when every file reloaded, 1 when one was
    /// refused (the previous state stays in force), 3 when the server cannot be reached.
    Reload(ReloadArgs),
    /// Write a development CA (its key kept, TEST ONLY), a server certificate and scanner
    /// certificates, and register the scanners; run again to add scanners or server names.
    DevPki(DevPkiArgs),
    /// Issuer tools: keys, credentials, revocations.
    Issuer {
        /// The issuer command.
        #[command(subcommand)]
        command: IssuerCommand,
    },
    /// Wallet tools: rotating tokens.
    Wallet {
        /// The wallet command.
        #[command(subcommand)]
        command: WalletCommand,
    },
    /// Test ISO/IEC 18013-5 mDL documents (TEST KEYS ONLY): an IACA, document signers,
    /// mDLs, and device responses to them.
    Mdoc {
        /// The mdoc command.
        #[command(subcommand)]
        command: MdocCommand,
    },
    /// Send one token to a server and print the verdict (the reference scanner). Exits 0
    /// accepted, 1 denied, 2 usage error, 3 unreachable, 4 retry, 5 present a fresh token,
    /// 6 local setup error, 7 scanner refused (see below).
    #[command(after_help = SCAN_EXIT_CODES)]
    Scan(ScanArgs),
    /// Print the SPEC's test vectors.
    Vectors,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `gatehouse demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Holders in the synthetic population.
    #[arg(long, default_value_t = 100_000)]
    pub holders: usize,
    /// Scanner connections.
    #[arg(long, default_value_t = 36)]
    pub scanners: usize,
    /// Length of the rush in seconds (at most 20).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Mean arrival rate, requests per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Engine nodes (1 to 4). With more than one, they share one-time use on a Redis the
    /// demo starts on loopback, and every scanner's connections spread over the nodes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub nodes: u8,
    /// Share of the genuine presentations (0 to 1) that are ISO/IEC 18013-5 mDL presentations
    /// (VerifyMdoc), from a pool of test mDLs (at most 2000) issued at start; 0: tokens only.
    #[arg(long, default_value_t = 0.2)]
    pub mdoc_share: f64,
}

/// `gatehouse serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The configuration file (see deploy/gatehouse.toml).
    #[arg(long)]
    pub config: PathBuf,
}

/// `gatehouse reload`.
#[derive(Args)]
pub struct ReloadArgs {
    /// The server's configuration file (its `metrics_listen` is where the result is read).
    #[arg(long)]
    pub config: PathBuf,
    /// The server's process id (default: the one the server reports; systemd: $MAINPID).
    #[arg(long)]
    pub pid: Option<u32>,
    /// How long to wait for the reload to complete, seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

/// `gatehouse dev-pki`.
#[derive(Args)]
pub struct DevPkiArgs {
    /// Output directory. If it holds a CA (ca.pem and ca.key), that CA signs what is added.
    #[arg(long, default_value = "dev-pki")]
    pub out: PathBuf,
    /// A scanner: ID, or ID=ROLE to register it too (ROLE: gate, partner, age_check); a
    /// gate also needs its unit: ID=gate:UNIT, e.g. gate-1-1=gate:1/1. A new PKI without
    /// --scanner gets gate-1-1=gate:1/1, partner-1=partner and age-1=age_check; on an
    /// existing PKI only the scanners named are added. A scanner already issued is kept
    /// (--force issues it a new key and certificate).
    #[arg(long = "scanner", value_parser = parse_scanner)]
    pub scanners: Vec<String>,
    /// Another name (DNS name or IP address) for the server certificate, besides
    /// localhost, 127.0.0.1 and ::1. On an existing PKI this reissues server.pem (--force).
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// The scanner registry to add scanners with a role to (default: scanners.toml beside
    /// the output directory, where the sample configuration looks for it).
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// Replace what is asked for (the scanners named, the server certificate for
    /// --server-name) where files exist; nothing else is replaced.
    #[arg(long)]
    pub force: bool,
}

/// `gatehouse scan`.
#[derive(Args)]
pub struct ScanArgs {
    /// Server address, HOST:PORT; HOST is an IP address or a DNS name. Repeat it for a
    /// fleet: the scan starts at a random server and fails over to the others, with one
    /// retry key for all attempts (SPEC §8.6).
    #[arg(long = "server", default_values_t = ["127.0.0.1:4433".to_string()])]
    pub servers: Vec<String>,
    /// Name on the server certificate (default: HOST of --server).
    #[arg(long)]
    pub server_name: Option<String>,
    /// The whole scan's budget in seconds: connecting, the request and the retries across
    /// servers together (at least 1).
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// The scan's retry key (SPEC §8.6), 16 bytes as 32 hex digits. To retry a scan whose
    /// answer was lost, give the same token with the same key: the first verdict comes
    /// back, marked as a repeat, not `replayed`. Default: a fresh random key, printed when
    /// the scan ends without a verdict or with a retryable one (exit 3 or 4).
    #[arg(long, value_parser = parse_retry_key)]
    pub retry_key: Option<[u8; RETRY_KEY_LEN]>,
    /// CA certificate (PEM).
    #[arg(long)]
    pub ca: PathBuf,
    /// This scanner's certificate (PEM).
    #[arg(long)]
    pub scanner_cert: PathBuf,
    /// This scanner's key (PEM).
    #[arg(long)]
    pub scanner_key: PathBuf,
    /// The token: QR text (`GH1:…`) or hex bytes.
    #[arg(required_unless_present = "mdoc", conflicts_with = "mdoc")]
    pub token: Option<String>,
    /// Instead of a token, an ISO/IEC 18013-5 presentation this reader received (SPEC §12):
    /// a directory holding `device_response.cbor`, `transcript.cbor` (the SessionTranscript
    /// array) and `session_start` (when the session began, Unix seconds), and
    /// `reader_key.hex` when the response is authenticated by a device MAC (sent only then),
    /// as `gatehouse mdoc present` writes them.
    #[arg(long, value_name = "DIR")]
    pub mdoc: Option<PathBuf>,
}

/// `gatehouse issuer …`.
#[derive(Subcommand)]
pub enum IssuerCommand {
    /// A new issuer key (`issuer.key`) and a trust list naming it (`trust.toml`).
    Keygen(KeygenArgs),
    /// Issue a credential to a new holder: writes `credential.cose` and `device.key`.
    Issue(IssueArgs),
    /// Revoke or reinstate: with --feed, publish the next epoch to a feed (signed with --key);
    /// without, write one list to --out (a snapshot, or with --base a delta).
    Revoke(RevokeArgs),
    /// Fold a feed's snapshot and the deltas after it into a new signed snapshot.
    Compact(CompactArgs),
    /// A new revocation key (`revocation.key`), optionally added to a trust list.
    RevocationKeygen(RevocationKeygenArgs),
}

/// `gatehouse issuer keygen`.
#[derive(Args)]
pub struct KeygenArgs {
    /// Output directory.
    #[arg(long, default_value = "issuer")]
    pub out: PathBuf,
    /// The key's name in the trust list.
    #[arg(long, default_value = "dev-issuer")]
    pub name: String,
    /// Replace an existing issuer.key and trust.toml.
    #[arg(long)]
    pub force: bool,
}

/// `gatehouse issuer issue`.
#[derive(Args)]
pub struct IssueArgs {
    /// The issuer key file.
    #[arg(long, default_value = "issuer/issuer.key")]
    pub key: PathBuf,
    /// Output directory (the holder's wallet).
    #[arg(long, default_value = "wallet")]
    pub out: PathBuf,
    /// Credential type (military_id, leave_pass, family_member, …).
    #[arg(long = "type", default_value = "military_id", value_parser = PossibleValuesParser::new(CredentialType::ALL.iter().map(|t| t.label())))]
    pub credential_type: String,
    /// Holder category (enlisted, officer, parent, reservist, …).
    #[arg(long, default_value = "enlisted", value_parser = PossibleValuesParser::new(HolderCategory::ALL.iter().map(|c| c.label())))]
    pub category: String,
    /// Unit path.
    #[arg(long, default_value = "1/1/1/1", value_parser = parse_unit)]
    pub unit: String,
    /// Days of validity.
    #[arg(long, default_value_t = 365)]
    pub days: u64,
    /// Birth date, YYYYMMDD.
    #[arg(long, value_parser = parse_birth)]
    pub birth: Option<u32>,
    /// Sponsor subject id (hex), for family members.
    #[arg(long, value_parser = parse_id)]
    pub sponsor: Option<String>,
    /// Entitlements.
    #[arg(long = "entitlement", default_values_t = ["base_entry".to_string(), "military_discount".to_string()], value_parser = PossibleValuesParser::new(ENTITLEMENTS))]
    pub entitlements: Vec<String>,
    /// Replace an existing wallet.
    #[arg(long)]
    pub force: bool,
}

/// `gatehouse issuer revoke`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("delta").args(["base", "feed"]).multiple(true)))]
pub struct RevokeArgs {
    /// The feed to publish to: a directory (served over HTTP(S) as is) or a redis:// URL.
    #[arg(long, requires = "key")]
    pub feed: Option<String>,
    /// Redis key prefix of the feed.
    #[arg(long = "feed-key", requires = "feed")]
    pub feed_key: Option<String>,
    /// The revocation key (`issuer revocation-keygen`): required with --feed, and signs
    /// an --out list when given.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Output file (without --feed).
    #[arg(long, default_value = "revocations.cbor", conflicts_with = "feed")]
    pub out: PathBuf,
    /// The epoch this list brings the state to (without --feed).
    #[arg(long, required_unless_present = "feed", conflicts_with = "feed")]
    pub epoch: Option<u64>,
    /// For a delta: the epoch it applies to (without --feed).
    #[arg(long, conflicts_with = "feed")]
    pub base: Option<u64>,
    /// Credential ids (hex).
    #[arg(long = "credential", value_parser = parse_id)]
    pub credentials: Vec<String>,
    /// Subject ids (hex).
    #[arg(long = "subject", value_parser = parse_id)]
    pub subjects: Vec<String>,
    /// Sponsor ids (hex): denies every family credential naming them.
    #[arg(long = "sponsor", value_parser = parse_id)]
    pub sponsors: Vec<String>,
    /// Replace an existing file (the usual case when a new epoch replaces the last).
    #[arg(long)]
    pub force: bool,
    /// Credential ids (hex) to reinstate (in a delta: with --base or --feed).
    #[arg(long = "reinstate-credential", value_parser = parse_id, requires = "delta")]
    pub reinstate_credentials: Vec<String>,
    /// Subject ids (hex) to reinstate (in a delta: with --base or --feed).
    #[arg(long = "reinstate-subject", value_parser = parse_id, requires = "delta")]
    pub reinstate_subjects: Vec<String>,
    /// Sponsor ids (hex) to reinstate: restores the family credentials naming them (in a
    /// delta: with --base or --feed).
    #[arg(long = "reinstate-sponsor", value_parser = parse_id, requires = "delta")]
    pub reinstate_sponsors: Vec<String>,
}

/// `gatehouse issuer compact`.
#[derive(Args)]
pub struct CompactArgs {
    /// The feed: a directory or a redis:// URL.
    #[arg(long)]
    pub feed: String,
    /// Redis key prefix of the feed.
    #[arg(long = "feed-key")]
    pub feed_key: Option<String>,
    /// The revocation key.
    #[arg(long)]
    pub key: PathBuf,
}

/// `gatehouse issuer revocation-keygen`.
#[derive(Args)]
pub struct RevocationKeygenArgs {
    /// Output directory.
    #[arg(long, default_value = "issuer")]
    pub out: PathBuf,
    /// The key's name in the trust list.
    #[arg(long, default_value = "revocations")]
    pub name: String,
    /// A trust list to add the key to as a [[revocation_key]].
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// Replace an existing revocation.key, and the trust list's key of that name.
    #[arg(long)]
    pub force: bool,
}

/// `gatehouse wallet …`.
#[derive(Subcommand)]
pub enum WalletCommand {
    /// A fresh token as QR text, a QR code in the terminal, and optionally an SVG.
    Present(PresentArgs),
}

/// `gatehouse wallet present`.
#[derive(Args)]
pub struct PresentArgs {
    /// The wallet directory (credential.cose, device.key).
    #[arg(long, default_value = "wallet")]
    pub wallet: PathBuf,
    /// Scanner challenge (hex), for NFC.
    #[arg(long)]
    pub challenge: Option<String>,
    /// Also write the QR code as SVG here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Print only the QR text.
    #[arg(long)]
    pub text_only: bool,
    /// Sign as a phone whose clock runs this many seconds ahead (negative: behind). A
    /// phone within the engine's skew (5 s) is still accepted; useful to show the restart
    /// and store fences (`node_restarted`) without waiting.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub clock_offset_secs: i64,
}

/// `gatehouse mdoc …`: test mDL documents. Every key these commands make is a TEST KEY,
/// written in clear; every certificate says TEST ONLY in its name.
#[derive(Subcommand)]
pub enum MdocCommand {
    /// A test IACA (the issuing authority's root, TEST ONLY): writes `iaca.pem` (for the
    /// verifier's trust list) and `iaca.key`.
    Iaca(MdocIacaArgs),
    /// A test document signer issued by a test IACA: writes `ds.pem` and `ds.key`.
    Signer(MdocSignerArgs),
    /// A test mDL signed by a test document signer: writes the document to --out and its
    /// device key (hex, TEST ONLY) to the same name with `.device-key` appended.
    Issue(MdocIssueArgs),
    /// A device response to a fresh reader session (as QR engagement makes one): writes
    /// `device_response.cbor`, `transcript.cbor`, `reader_key.hex` and `session_start` (the
    /// session's Unix time) to --out.
    Present(MdocPresentArgs),
}

/// `gatehouse mdoc iaca`.
#[derive(Args)]
pub struct MdocIacaArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// The subject's country, ISO 3166-1 alpha-2.
    #[arg(long, default_value = "KR")]
    pub country: String,
    /// The subject's state or province (the issuing authority is then COUNTRY-STATE).
    #[arg(long)]
    pub state: Option<String>,
    /// The subject's common name (" (TEST ONLY)" is appended unless it says so).
    #[arg(long, default_value = "gatehouse test IACA")]
    pub name: String,
    /// Days of validity (from an hour ago).
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
    /// Replace existing iaca.pem and iaca.key.
    #[arg(long)]
    pub force: bool,
}

/// `gatehouse mdoc signer`.
#[derive(Args)]
pub struct MdocSignerArgs {
    /// The IACA's directory (iaca.pem, iaca.key).
    #[arg(long)]
    pub iaca: PathBuf,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// The subject's common name (" (TEST ONLY)" is appended unless it says so).
    #[arg(long, default_value = "gatehouse test document signer")]
    pub name: String,
    /// Days of validity (from an hour ago).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
    /// Replace existing ds.pem and ds.key.
    #[arg(long)]
    pub force: bool,
}

/// `gatehouse mdoc issue`.
#[derive(Args)]
pub struct MdocIssueArgs {
    /// The document signer's directory (ds.pem, ds.key).
    #[arg(long)]
    pub signer: PathBuf,
    /// The document file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// The holder's birth date, YYYY-MM-DD; age_over_18, age_over_19 and age_over_21 follow
    /// from it, today.
    #[arg(long, default_value = "1990-05-01", value_parser = parse_full_date)]
    pub birth_date: String,
    /// A data element, NAME=VALUE, added or replacing a default one: true/false is a
    /// boolean, digits an unsigned integer (text with a leading zero), YYYY-MM-DD a
    /// full-date, anything else text.
    #[arg(long = "element", value_parser = parse_element)]
    pub elements: Vec<(String, String)>,
    /// Days the document is valid (from a minute ago).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
    /// Replace an existing document and its device key.
    #[arg(long)]
    pub force: bool,
}

/// `gatehouse mdoc present`.
#[derive(Args)]
pub struct MdocPresentArgs {
    /// The document file (`mdoc issue --out`); its device key is read from FILE.device-key.
    #[arg(long)]
    pub document: PathBuf,
    /// The elements to disclose, comma-separated (default: all of them).
    #[arg(long, value_delimiter = ',')]
    pub disclose: Option<Vec<String>>,
    /// Authenticate with a device MAC (the reader's key is then needed to verify) instead
    /// of a device signature.
    #[arg(long)]
    pub mac: bool,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// A full date, YYYY-MM-DD.
fn parse_full_date(text: &str) -> Result<String, String> {
    match gatehouse_engine::dev::mdoc::age_at(text, 0) {
        Some(_) => Ok(text.to_string()),
        None => Err("a date as YYYY-MM-DD".into()),
    }
}

/// `mdoc issue --element`: NAME=VALUE.
fn parse_element(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err("an element is NAME=VALUE".into()),
    }
}

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
