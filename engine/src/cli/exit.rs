//! The exit codes the commands use besides 0 (success) and 1 (failure), and `scan --help`'s
//! table of them.

/// Exit code for a configuration error (EX_CONFIG would be 78; sysexits' EX_USAGE is 64).
pub const EXIT_CONFIG: u8 = 64;
/// `scan`: the token was denied (a judgement of the token: revoked, replayed, expired, …).
pub const EXIT_DENIED: u8 = 1;
/// `scan`: usage error (clap's own code for a bad command line; also a token that is
/// neither QR text nor hex).
pub const EXIT_USAGE: u8 = 2;
/// `scan`, `reload`: the server could not be reached, or did not answer in time.
pub const EXIT_UNREACHABLE: u8 = 3;
/// `scan`: no node could judge the token (a retryable reason, SPEC §9: busy,
/// replay_capacity, unavailable, revocations_stale); send it again with the same retry key.
pub const EXIT_RETRY: u8 = 4;
/// `scan`: node_restarted: the token is from before the node's start (or its store's loss);
/// the holder presents a fresh one.
pub const EXIT_FRESH_TOKEN: u8 = 5;
/// `scan`: this scanner's own setup is at fault: its CA, certificate or key file unreadable,
/// a key that does not match the certificate, or a server certificate that the CA does not
/// vouch for (or not for the server name).
pub const EXIT_LOCAL_SETUP: u8 = 6;
/// `scan`: the server refused this scanner: not registered (or removed), or its certificate
/// not accepted in the handshake.
pub const EXIT_SCANNER_REFUSED: u8 = 7;
/// `scan --help`: the exit codes.
pub const SCAN_EXIT_CODES: &str = "\
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
