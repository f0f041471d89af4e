//! The QUIC application error codes of SPEC §8.1: what a scanner sees in a CONNECTION_CLOSE,
//! STOP_SENDING or RESET_STREAM from the engine. Plain numbers, so this crate stays free of any
//! QUIC library; the server and the client wrap them (`quinn::VarInt::from_u32`).

/// Connection closed on purpose: the server is shutting down (or the client said goodbye).
pub const SHUTDOWN: u32 = 0;
/// Connection closed: the client certificate's scanner is not (or no longer) registered.
pub const UNKNOWN_SCANNER: u32 = 1;
/// Stream stopped: the server read an unreadable or oversized frame on it (an error response
/// was sent first).
pub const BAD_FRAME: u32 = 2;
/// Stream stopped: a frame body did not arrive in time, or the stream stayed idle.
pub const STREAM_TIMEOUT: u32 = 3;
/// Connection closed: this scanner already has its most connections open
/// (`max_connections_per_scanner`).
pub const TOO_MANY_CONNECTIONS: u32 = 4;
/// Stream stopped, or connection closed: the server's memory budget is spent; retry shortly.
/// The request on the stream was not read.
pub const OVER_BUDGET: u32 = 5;
/// The TLS alert a scanner gets at the handshake when it is not registered (`access_denied`;
/// the QUIC transport error is `0x100 + 49`).
pub const TLS_ACCESS_DENIED: u8 = 49;
