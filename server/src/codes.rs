//! The application error codes on the QUIC connection and its streams (SPEC §8.1,
//! `gatehouse_protocol::codes`), as QUIC varints.
use gatehouse_protocol::codes as wire;
use quinn::VarInt;

/// Connection closed on purpose: the server is shutting down (or the client said goodbye).
pub const SHUTDOWN: VarInt = VarInt::from_u32(wire::SHUTDOWN);
/// Connection closed: the client certificate's scanner is not (or no longer) registered.
pub const UNKNOWN_SCANNER: VarInt = VarInt::from_u32(wire::UNKNOWN_SCANNER);
/// Stream stopped: an unreadable or oversized frame (its error response was sent first).
pub const BAD_FRAME: VarInt = VarInt::from_u32(wire::BAD_FRAME);
/// Stream stopped: a frame body did not arrive in time, or the stream stayed idle.
pub const STREAM_TIMEOUT: VarInt = VarInt::from_u32(wire::STREAM_TIMEOUT);
/// Connection closed: this scanner already has its most connections open.
pub const TOO_MANY_CONNECTIONS: VarInt = VarInt::from_u32(wire::TOO_MANY_CONNECTIONS);
/// Stream stopped, or connection closed: the server's memory budget is spent.
pub const OVER_BUDGET: VarInt = VarInt::from_u32(wire::OVER_BUDGET);
/// The TLS alert an unregistered scanner gets at the handshake (`access_denied`).
pub const TLS_ACCESS_DENIED: u8 = wire::TLS_ACCESS_DENIED;
