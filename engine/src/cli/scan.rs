//! `gatehouse scan`, the reference scanner: one token to a server (or a fleet), its verdict
//! printed, and an exit code that says what to do next ([`SCAN_EXIT_CODES`]).
//!
//! The steps: check the command line and this scanner's own files before any network, send
//! the token within the budget, judge what came back, print the verdict.
//!
//! [`SCAN_EXIT_CODES`]: crate::cli::exit::SCAN_EXIT_CODES

use std::process::ExitCode;
use std::time::Duration;

use gatehouse_engine::{client, server};
use gatehouse_protocol::{from_qr_text, Reason, Verdict, RETRY_KEY_LEN};

use crate::cli::args::ScanArgs;
use crate::cli::exit::{
    EXIT_DENIED, EXIT_FRESH_TOKEN, EXIT_LOCAL_SETUP, EXIT_RETRY, EXIT_SCANNER_REFUSED,
    EXIT_UNREACHABLE, EXIT_USAGE,
};
use crate::cli::output::{out, say};
use crate::cli::runtime::runtime;

/// A retry key (SPEC §8.6).
type RetryKey = [u8; RETRY_KEY_LEN];

/// `gatehouse scan`. The whole scan (connecting, the request, the retries across servers) is
/// bounded by `--timeout-secs`.
pub fn run(args: ScanArgs) -> ExitCode {
    match scan(args) {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

/// A scan that ended without a verdict to print: its exit code and message, and the retry key
/// to give again when a retry could still get one.
struct Failure {
    /// The exit code.
    code: u8,
    /// What went wrong, after `gatehouse scan: `.
    message: String,
    /// Printed as a hint when the same token may be sent again with it.
    retry_key: Option<RetryKey>,
}

impl Failure {
    /// A scan that failed with `code` and `message`.
    fn new(code: u8, message: String) -> Failure {
        Failure {
            code,
            message,
            retry_key: None,
        }
    }

    /// A usage error: the command line, or the token.
    fn usage(message: String) -> Failure {
        Failure::new(EXIT_USAGE, message)
    }

    /// This scanner's own setup is at fault.
    fn local(message: String) -> Failure {
        Failure::new(EXIT_LOCAL_SETUP, message)
    }

    /// No answer: the scan can be retried with the same retry key.
    fn unreachable(message: String, key: RetryKey) -> Failure {
        Failure {
            retry_key: Some(key),
            ..Failure::new(EXIT_UNREACHABLE, message)
        }
    }

    /// Prints the failure (and the retry hint) to stderr and returns its exit code.
    fn report(self) -> ExitCode {
        say!("gatehouse scan: {}", self.message);
        if let Some(key) = self.retry_key {
            retry_hint(key);
        }
        ExitCode::from(self.code)
    }
}

/// Tells the operator how to retry this scan without it counting as a replay.
fn retry_hint(key: RetryKey) {
    say!(
        "gatehouse scan: to retry this scan, give the same token with --retry-key {}",
        hex::encode(key)
    );
}

/// The scan, step by step: check, connect, send, judge, print.
fn scan(a: ScanArgs) -> Result<ExitCode, Failure> {
    let timeout = Duration::from_secs(a.timeout_secs.max(1));
    let shown = match (&a.mdoc, &a.token) {
        (Some(dir), _) => Shown::Mdoc(Box::new(read_mdoc(dir)?)),
        (None, Some(token)) => Shown::Token(decode_token(token)?),
        (None, None) => return Err(Failure::usage("give a token or --mdoc DIR".into())),
    };
    let server_name = server_name(&a.servers, a.server_name)?;
    // This scanner's own files, checked before any network: unreadable, or a key that does
    // not match the certificate.
    let identity = client::ClientIdentity::from_files(&a.ca, &a.scanner_cert, &a.scanner_key)
        .and_then(|i| i.check().map(|()| i))
        .map_err(|e| Failure::local(format!("--ca/--scanner-cert/--scanner-key: {e}")))?;
    let key = a
        .retry_key
        .map_or_else(new_retry_key, Ok)
        .map_err(Failure::local)?;
    let options = fleet_options(timeout, a.servers.len());
    let fleet = client::FleetClient::new(&a.servers, &server_name, identity, options)
        .map_err(|e| Failure::local(format!("{e}")))?;
    let servers = a.servers.join(", ");
    let verdict = send(fleet, &shown, key, timeout)
        .map_err(|e| e.judged(&servers, timeout.as_secs(), key))?;
    print_verdict(&verdict);
    Ok(verdict_exit(verdict.reason, key))
}

/// The token's bytes, from QR text (`GH1:…`) or hex; a usage error when it is neither or too
/// long.
fn decode_token(text: &str) -> Result<Vec<u8>, Failure> {
    let token = text.trim();
    let bytes = if token.starts_with(gatehouse_protocol::QR_PREFIX) {
        from_qr_text(token).map_err(|e| Failure::usage(format!("token: {e}")))?
    } else {
        hex::decode(token)
            .map_err(|_| Failure::usage("token: neither QR text (GH1:…) nor hex".into()))?
    };
    if bytes.len() > gatehouse_protocol::MAX_TOKEN_LEN {
        return Err(Failure::usage(format!(
            "token: {} bytes, a token has at most {}",
            bytes.len(),
            gatehouse_protocol::MAX_TOKEN_LEN
        )));
    }
    Ok(bytes)
}

/// The name to expect on the server certificate: `--server-name`, or the host of the first
/// `--server`, once every `--server` is checked to be HOST:PORT.
fn server_name(servers: &[String], server_name: Option<String>) -> Result<String, Failure> {
    // HOST:PORT each, HOST an IP address ([v6] in brackets) or a DNS name (resolved at
    // connect time by the fleet client).
    let mut first_host = None;
    for server in servers {
        let expected = || Failure::usage(format!("--server {server:?}: expected HOST:PORT"));
        let (host, port) = server.rsplit_once(':').ok_or_else(expected)?;
        if port.parse::<u16>().is_err() || host.is_empty() {
            return Err(expected());
        }
        first_host.get_or_insert_with(|| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        });
    }
    let host =
        first_host.ok_or_else(|| Failure::usage("--server: at least one HOST:PORT".into()))?;
    let server_name = server_name.unwrap_or(host);
    if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
        return Err(Failure::usage(format!(
            "--server-name {server_name:?}: not a DNS name or an IP address"
        )));
    }
    Ok(server_name)
}

/// A fresh random retry key (SPEC §8.6): one per scan.
fn new_retry_key() -> Result<RetryKey, String> {
    use rand_core::{OsRng, RngCore};
    let mut key = [0u8; RETRY_KEY_LEN];
    OsRng
        .try_fill_bytes(&mut key)
        .map_err(|e| format!("no randomness for a retry key: {e}"))?;
    Ok(key)
}

/// The fleet client's options for a scan of `timeout` over `servers` servers: the budget is
/// shared by the attempts (at least one second each), one per server of a fleet and at least
/// four, since a lost answer is retried with the same retry key.
fn fleet_options(timeout: Duration, servers: usize) -> client::FleetOptions {
    let secs = timeout.as_secs().max(1);
    let attempts = (servers.max(4) as u64).clamp(1, secs);
    let per_attempt = timeout / u32::try_from(attempts).unwrap_or(u32::MAX);
    let defaults = client::FleetOptions::default();
    client::FleetOptions {
        client: client::ClientOptions {
            connect_timeout: per_attempt,
            request_timeout: per_attempt,
            ..defaults.client
        },
        attempts: usize::try_from(attempts).unwrap_or(usize::MAX),
        deadline: timeout,
        ..defaults
    }
}

/// Why a scan got no verdict.
enum NoVerdict {
    /// The async runtime did not start.
    Runtime(anyhow::Error),
    /// No answer within the budget.
    Timeout,
    /// The fleet client gave up.
    Client(client::ClientError),
}

/// What the scan shows: a token's bytes, or an mdoc presentation.
enum Shown {
    Token(Vec<u8>),
    Mdoc(Box<gatehouse_protocol::MdocRequest>),
}

/// The presentation `gatehouse mdoc present` wrote to `dir` (SPEC §12.1).
fn read_mdoc(dir: &std::path::Path) -> Result<gatehouse_protocol::MdocRequest, Failure> {
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map_err(|e| Failure::usage(format!("--mdoc: {}: {e}", dir.join(name).display())))
    };
    let device_response = read("device_response.cbor")?;
    let transcript = read("transcript.cbor")?;
    // When the session began is the reader's statement (SPEC §12.1): never made up here.
    let session_start = String::from_utf8(read("session_start")?)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| Failure::usage("--mdoc: session_start is not Unix seconds".into()))?;
    // The reader's key goes only with a MAC: it is what would let anyone make one.
    let mac = gatehouse_engine::mdoc::decode_device_response(&device_response).is_ok_and(|r| {
        matches!(
            r.document.device_auth,
            gatehouse_engine::mdoc::DeviceAuth::Mac(_)
        )
    });
    let reader_key = match mac {
        false => None,
        true => {
            let text = String::from_utf8(read("reader_key.hex")?).unwrap_or_default();
            let key = hex::decode(text.trim())
                .ok()
                .and_then(|k| k.try_into().ok());
            Some(key.ok_or_else(|| {
                Failure::usage("--mdoc: reader_key.hex is not 32 bytes of hex".into())
            })?)
        }
    };
    Ok(gatehouse_protocol::MdocRequest {
        id: 0,
        device_response,
        transcript,
        retry: None,
        session_start,
        reader_key,
    })
}

/// Sends the token or presentation to the fleet, bounded by `timeout`.
fn send(
    fleet: client::FleetClient,
    shown: &Shown,
    key: RetryKey,
    timeout: Duration,
) -> Result<Verdict, NoVerdict> {
    let rt = runtime().map_err(NoVerdict::Runtime)?;
    let result = rt.block_on(async move {
        let scan = async {
            match shown {
                Shown::Token(bytes) => fleet.verify_scan(bytes, None, key).await,
                Shown::Mdoc(m) => fleet.verify_mdoc(m, key).await,
            }
        };
        tokio::time::timeout(timeout, scan).await
    });
    // A name lookup still running past the budget does not hold the exit up.
    rt.shutdown_timeout(Duration::from_millis(100));
    match result {
        Err(_) => Err(NoVerdict::Timeout),
        Ok(r) => r.map_err(NoVerdict::Client),
    }
}

impl NoVerdict {
    /// The failure to report: this scanner's setup, this scanner refused, or unreachable (and
    /// so retryable).
    fn judged(self, servers: &str, secs: u64, key: RetryKey) -> Failure {
        match self {
            NoVerdict::Runtime(e) => Failure::local(format!("{e:#}")),
            NoVerdict::Timeout => {
                Failure::unreachable(format!("{servers}: no answer within {secs} s"), key)
            }
            NoVerdict::Client(e) if e.is_local() => Failure::local(format!("{servers}: {e}")),
            NoVerdict::Client(e) if e.is_scanner_refused() => {
                Failure::new(EXIT_SCANNER_REFUSED, format!("{servers}: {e}"))
            }
            NoVerdict::Client(e) => {
                let why = match e {
                    client::ClientError::Timeout(_) => format!("no answer within {secs} s"),
                    e => format!("no verdict within {secs} s: {e}"),
                };
                Failure::unreachable(format!("{servers}: {why}"), key)
            }
        }
    }
}

/// Prints the verdict and the attributes it discloses to stdout.
fn print_verdict(verdict: &Verdict) {
    out!(
        "{} ({}): {}",
        verdict.reason.label(),
        verdict.reason.code(),
        verdict.reason.describe()
    );
    if verdict.repeat {
        out!("  (repeat: the first verdict of this scan, given again to its retry)");
    }
    let at = &verdict.attributes;
    if let Some(t) = &at.credential_type {
        out!("  credential type: {t}");
    }
    if let Some(c) = &at.category {
        out!("  holder category: {c}");
    }
    if let Some(u) = &at.unit {
        out!("  unit: {u}");
    }
    if let Some(v) = at.valid_until {
        out!("  valid until: {} ({v})", server::format_unix(v));
    }
    if let Some(p) = &at.predicate {
        out!("  predicate: {}", p.label());
    }
}

/// The exit code for a verdict's reason; a retryable reason or `node_restarted` also says on
/// stderr what to do next.
fn verdict_exit(reason: Reason, key: RetryKey) -> ExitCode {
    if reason.is_accept() {
        ExitCode::SUCCESS
    } else if reason.is_retryable() {
        // busy, replay_capacity, unavailable, revocations_stale on every node tried: no
        // judgement of the token was made.
        say!(
            "gatehouse scan: no node could judge the token ({}); retry",
            reason.label()
        );
        retry_hint(key);
        ExitCode::from(EXIT_RETRY)
    } else if reason == Reason::NodeRestarted {
        say!("gatehouse scan: the token is from before the node's start; present a fresh one");
        ExitCode::from(EXIT_FRESH_TOKEN)
    } else if reason == Reason::UnknownScanner {
        ExitCode::from(EXIT_SCANNER_REFUSED)
    } else {
        ExitCode::from(EXIT_DENIED)
    }
}
