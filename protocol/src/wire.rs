//! The scanner ↔ engine protocol over QUIC.
//!
//! ALPN `gatehouse/1`. A scanner opens a bidirectional stream per request (or pipelines several
//! requests on one stream: responses come back in order). Each message is a frame:
//!
//! ```text
//! version (1 byte, = 1) | kind (1 byte) | body length (4 bytes, big-endian, ≤ MAX_FRAME_BODY) | body (CBOR)
//! ```

use crate::cbor::{MapKeys, Reader, Writer};
use crate::reason::Reason;
use crate::token::MAX_TOKEN_LEN;
use crate::types::{CredentialType, HolderCategory, UnitPath, MAX_UNIT_DEPTH};
use crate::DecodeError;

/// ALPN protocol id.
pub const ALPN: &[u8] = b"gatehouse/1";
/// Wire protocol version in every frame header.
pub const WIRE_VERSION: u8 = 1;
/// Frame header length.
pub const FRAME_HEADER_LEN: usize = 6;
/// Largest frame body.
pub const MAX_FRAME_BODY: usize = 128 * 1024;
/// Most tokens in one batch request.
pub const MAX_BATCH: usize = 128;
/// Longest error message in an error response.
pub const MAX_ERROR_TEXT: usize = 200;
/// Length of a retry key (SPEC §8.6).
pub const RETRY_KEY_LEN: usize = 16;
/// Longest DeviceResponse in a VerifyMdoc request (SPEC §12.1).
pub const MAX_MDOC_RESPONSE: usize = 96 * 1024;
/// Longest SessionTranscript in a VerifyMdoc request (SPEC §12.1).
pub const MAX_SESSION_TRANSCRIPT: usize = 4096;
/// Length of the reader's ephemeral private key a deviceMac needs (SPEC §12.1).
pub const READER_KEY_LEN: usize = 32;

/// Frame kinds.
pub mod kind {
    /// Request: verify one token.
    pub const VERIFY: u8 = 0x01;
    /// Request: verify a batch of tokens.
    pub const VERIFY_BATCH: u8 = 0x02;
    /// Request: liveness ping.
    pub const PING: u8 = 0x03;
    /// Request: verify one ISO/IEC 18013-5 presentation (SPEC §12).
    pub const VERIFY_MDOC: u8 = 0x04;
    /// Response: verdicts, one per token, in request order.
    pub const VERDICTS: u8 = 0x81;
    /// Response: answer to a ping.
    pub const PONG: u8 = 0x82;
    /// Response: the request could not be read.
    pub const ERROR: u8 = 0x83;
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame kind (see [`kind`]).
    pub kind: u8,
    /// Body length in bytes, already checked against [`MAX_FRAME_BODY`].
    pub len: usize,
}

impl FrameHeader {
    /// Reads and bounds a header, before any body is read or allocated.
    pub fn decode(b: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, DecodeError> {
        if b[0] != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion(u64::from(b[0])));
        }
        let len = u32::from_be_bytes([b[2], b[3], b[4], b[5]]) as usize;
        if len > MAX_FRAME_BODY {
            return Err(DecodeError::TooLong("frame"));
        }
        Ok(FrameHeader { kind: b[1], len })
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.push(WIRE_VERSION);
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The retry tag a one-time-use entry keeps for a scan (SPEC §8.6): the first 16 bytes of
/// SHA-256 over `"gatehouse/retry/1"`, the scanner id's length (one byte) and bytes, and the
/// retry key. Only the same scanner with the same key produces the same tag; the store sees
/// neither the scanner id nor the key.
pub fn retry_tag(scanner_id: &str, key: &[u8; RETRY_KEY_LEN]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let id = scanner_id.as_bytes();
    let id = &id[..id.len().min(255)];
    let mut h = Sha256::new();
    h.update(b"gatehouse/retry/1");
    h.update([id.len() as u8]);
    h.update(id);
    h.update(key);
    let d = h.finalize();
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&d[..16]);
    tag
}

/// A request from a scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Verify one token.
    Verify {
        /// Echoed in the response.
        id: u64,
        /// Token bytes.
        token: Vec<u8>,
        /// The challenge this scanner issued (NFC); the token must answer it.
        challenge: Option<Vec<u8>>,
        /// The scan's retry key (SPEC §8.6): the same scanner sending the same token with the
        /// same key again gets the first verdict, marked as a repeat.
        retry: Option<[u8; RETRY_KEY_LEN]>,
    },
    /// Verify many tokens; verdicts come back in the same order.
    VerifyBatch {
        /// Echoed in the response.
        id: u64,
        /// Token bytes, at most [`MAX_BATCH`].
        tokens: Vec<Vec<u8>>,
        /// The scan's retry key, for every token of the batch (SPEC §8.6).
        retry: Option<[u8; RETRY_KEY_LEN]>,
    },
    /// Liveness check.
    Ping {
        /// Echoed in the response.
        id: u64,
    },
    /// Verify one ISO/IEC 18013-5 presentation a reader received (SPEC §12).
    VerifyMdoc(MdocRequest),
}

/// A VerifyMdoc request's fields (SPEC §12.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdocRequest {
    /// Echoed in the response.
    pub id: u64,
    /// The `DeviceResponse` the reader received, as received (1 to [`MAX_MDOC_RESPONSE`]
    /// bytes).
    pub device_response: Vec<u8>,
    /// The session's `SessionTranscript`: the CBOR array itself, not tag-24 wrapped (1 to
    /// [`MAX_SESSION_TRANSCRIPT`] bytes).
    pub transcript: Vec<u8>,
    /// The scan's retry key (SPEC §8.6).
    pub retry: Option<[u8; RETRY_KEY_LEN]>,
    /// When the reader's session with the phone began, Unix seconds, as the reader states it:
    /// the presentation's time for freshness, the fence and one-time use.
    pub session_start: u64,
    /// The reader's ephemeral private key (EReaderKey.Priv) of this session, which a deviceMac
    /// needs; absent for a deviceSignature.
    pub reader_key: Option<[u8; READER_KEY_LEN]>,
}

impl Request {
    /// The request id.
    pub fn id(&self) -> u64 {
        match self {
            Request::Verify { id, .. } | Request::VerifyBatch { id, .. } | Request::Ping { id } => {
                *id
            }
            Request::VerifyMdoc(m) => m.id,
        }
    }

    /// The whole frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let mut w = Writer::new(&mut body);
        match self {
            Request::Verify {
                id,
                token,
                challenge,
                retry,
            } => {
                w.map(2 + usize::from(challenge.is_some()) + usize::from(retry.is_some()))
                    .uint(1)
                    .uint(*id)
                    .uint(2)
                    .bytes(token);
                if let Some(c) = challenge {
                    w.uint(3).bytes(c);
                }
                if let Some(k) = retry {
                    w.uint(4).bytes(k);
                }
                frame(kind::VERIFY, &body)
            }
            Request::VerifyBatch { id, tokens, retry } => {
                w.map(2 + usize::from(retry.is_some()))
                    .uint(1)
                    .uint(*id)
                    .uint(2)
                    .array(tokens.len());
                for t in tokens {
                    w.bytes(t);
                }
                if let Some(k) = retry {
                    w.uint(3).bytes(k);
                }
                frame(kind::VERIFY_BATCH, &body)
            }
            Request::Ping { id } => {
                w.map(1).uint(1).uint(*id);
                frame(kind::PING, &body)
            }
            Request::VerifyMdoc(m) => {
                w.map(4 + usize::from(m.retry.is_some()) + usize::from(m.reader_key.is_some()))
                    .uint(1)
                    .uint(m.id)
                    .uint(2)
                    .bytes(&m.device_response)
                    .uint(3)
                    .bytes(&m.transcript);
                if let Some(k) = &m.retry {
                    w.uint(4).bytes(k);
                }
                w.uint(5).uint(m.session_start);
                if let Some(k) = &m.reader_key {
                    w.uint(6).bytes(k);
                }
                frame(kind::VERIFY_MDOC, &body)
            }
        }
    }

    /// Reads a request body of the given kind.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Request, DecodeError> {
        if kind == kind::VERIFY_MDOC {
            return decode_mdoc(body).map(Request::VerifyMdoc);
        }
        let mut r = Reader::new(body);
        let n = r.map("request", 4)?;
        let mut keys = MapKeys::new("request");
        let (mut id, mut token, mut challenge, mut tokens) = (None, None, None, None);
        let mut retry = None;
        for _ in 0..n {
            match (kind, keys.next(&mut r)?) {
                (_, 1) => id = Some(r.uint("request id")?),
                (kind::VERIFY, 2) => token = Some(r.bytes("token", MAX_TOKEN_LEN)?.to_vec()),
                (kind::VERIFY, 3) => {
                    let c = r.bytes("challenge", crate::token::MAX_CHALLENGE_LEN)?;
                    if c.is_empty() {
                        return Err(DecodeError::BadLength("challenge"));
                    }
                    challenge = Some(c.to_vec())
                }
                (kind::VERIFY_BATCH, 2) => {
                    let len = r.array("batch", MAX_BATCH)?;
                    let mut v = Vec::with_capacity(len);
                    for _ in 0..len {
                        // A token over the limit is that token's problem, not the batch's: it
                        // becomes an empty token, which the engine judges `malformed` (SPEC
                        // §8.3). Its bytes are skipped, never copied.
                        let token = r.bytes("token", usize::MAX)?;
                        v.push(if token.len() > MAX_TOKEN_LEN {
                            Vec::new()
                        } else {
                            token.to_vec()
                        });
                    }
                    tokens = Some(v);
                }
                (kind::VERIFY, 4) | (kind::VERIFY_BATCH, 3) => {
                    retry = Some(r.bytes_exact::<RETRY_KEY_LEN>("retry key")?)
                }
                (kind::VERIFY | kind::VERIFY_BATCH | kind::PING, _) => {
                    return Err(DecodeError::UnknownKey("request"))
                }
                _ => return Err(DecodeError::UnknownValue("frame kind")),
            }
        }
        r.finish("request")?;
        let id = id.ok_or(DecodeError::Missing("request id"))?;
        match kind {
            kind::VERIFY => Ok(Request::Verify {
                id,
                token: token.ok_or(DecodeError::Missing("token"))?,
                challenge,
                retry,
            }),
            kind::VERIFY_BATCH => Ok(Request::VerifyBatch {
                id,
                tokens: tokens.ok_or(DecodeError::Missing("batch"))?,
                retry,
            }),
            kind::PING => Ok(Request::Ping { id }),
            _ => Err(DecodeError::UnknownValue("frame kind")),
        }
    }
}

/// A VerifyMdoc body: `{1: id, 2: DeviceResponse, 3: SessionTranscript, ? 4: retry key,
/// 5: session start, ? 6: reader key}`, deterministic like every gatehouse frame (the mdoc
/// structures inside the byte strings are not read here).
fn decode_mdoc(body: &[u8]) -> Result<MdocRequest, DecodeError> {
    let mut r = Reader::new(body);
    let n = r.map("request", 6)?;
    let mut keys = MapKeys::new("request");
    let mut m = MdocRequest {
        id: 0,
        device_response: Vec::new(),
        transcript: Vec::new(),
        retry: None,
        session_start: 0,
        reader_key: None,
    };
    let (mut id, mut response, mut transcript, mut start) = (false, false, false, false);
    for _ in 0..n {
        match keys.next(&mut r)? {
            1 => {
                m.id = r.uint("request id")?;
                id = true;
            }
            2 => {
                let b = r.bytes("DeviceResponse", MAX_MDOC_RESPONSE)?;
                if b.is_empty() {
                    return Err(DecodeError::BadLength("DeviceResponse"));
                }
                m.device_response = b.to_vec();
                response = true;
            }
            3 => {
                let b = r.bytes("SessionTranscript", MAX_SESSION_TRANSCRIPT)?;
                if b.is_empty() {
                    return Err(DecodeError::BadLength("SessionTranscript"));
                }
                m.transcript = b.to_vec();
                transcript = true;
            }
            4 => m.retry = Some(r.bytes_exact::<RETRY_KEY_LEN>("retry key")?),
            5 => {
                m.session_start = r.uint("session start")?;
                start = true;
            }
            6 => m.reader_key = Some(r.bytes_exact::<READER_KEY_LEN>("reader key")?),
            _ => return Err(DecodeError::UnknownKey("request")),
        }
    }
    r.finish("request")?;
    for (present, what) in [
        (id, "request id"),
        (response, "DeviceResponse"),
        (transcript, "SessionTranscript"),
        (start, "session start"),
    ] {
        if !present {
            return Err(DecodeError::Missing(what));
        }
    }
    Ok(m)
}

/// The request id of a request body that may not decode as a whole (SPEC §8.4): the id is key
/// 1, the first key of every request map, so it can be read before whatever made the body
/// unreadable (a token over 768 bytes, a batch over 128 tokens, an empty challenge, a bad key
/// after the id). `None` when the body does not start with a map whose first entry is `1: uint`
/// in deterministic encoding; an error response then carries id 0.
pub fn request_id(body: &[u8]) -> Option<u64> {
    let mut r = Reader::new(body);
    if r.map("request", 6).ok()? == 0 {
        return None;
    }
    let mut keys = MapKeys::new("request");
    if keys.next(&mut r).ok()? != 1 {
        return None;
    }
    r.uint("request id").ok()
}

/// The predicate a partner or counter learns, instead of any attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Predicate {
    /// Eligible for the military discount.
    MilitaryDiscount = 1,
    /// 19 or older (Korea's Youth Protection Act: by year of birth, SPEC §7).
    AgeOver19 = 2,
    /// 19 or older in full years, as ISO/IEC 18013-5 `age_over_19` (mdoc, SPEC §12.4).
    IsoAgeOver19 = 3,
}

impl Predicate {
    fn from_code(c: u64) -> Result<Predicate, DecodeError> {
        match c {
            1 => Ok(Predicate::MilitaryDiscount),
            2 => Ok(Predicate::AgeOver19),
            3 => Ok(Predicate::IsoAgeOver19),
            _ => Err(DecodeError::UnknownValue("predicate")),
        }
    }

    /// Stable name.
    pub fn label(self) -> &'static str {
        match self {
            Predicate::MilitaryDiscount => "military_discount",
            Predicate::AgeOver19 => "age_over_19",
            Predicate::IsoAgeOver19 => "iso_age_over_19",
        }
    }
}

/// What an accepted verdict discloses; the scanner's role decides which fields are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes {
    /// Credential type (gates).
    pub credential_type: Option<CredentialType>,
    /// Holder category (gates).
    pub category: Option<HolderCategory>,
    /// Unit path (gates).
    pub unit: Option<UnitPath>,
    /// Credential valid until, Unix seconds (gates).
    pub valid_until: Option<u64>,
    /// The predicate that held (partners, counters).
    pub predicate: Option<Predicate>,
}

impl Attributes {
    fn count(&self) -> usize {
        usize::from(self.credential_type.is_some())
            + usize::from(self.category.is_some())
            + usize::from(self.unit.is_some())
            + usize::from(self.valid_until.is_some())
            + usize::from(self.predicate.is_some())
    }

    /// Whether nothing is disclosed.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    fn encode(&self, w: &mut Writer<'_>) {
        w.map(self.count());
        if let Some(t) = self.credential_type {
            w.uint(1).uint(u64::from(t.code()));
        }
        if let Some(c) = self.category {
            w.uint(2).uint(u64::from(c.code()));
        }
        if let Some(u) = self.unit {
            w.uint(3).array(u.levels().len());
            for l in u.levels() {
                w.uint(u64::from(*l));
            }
        }
        if let Some(v) = self.valid_until {
            w.uint(4).uint(v);
        }
        if let Some(p) = self.predicate {
            w.uint(5).uint(p as u64);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Attributes, DecodeError> {
        let n = r.map("attributes", 5)?;
        let mut keys = MapKeys::new("attributes");
        let mut a = Attributes::default();
        for _ in 0..n {
            match keys.next(r)? {
                1 => {
                    a.credential_type = Some(CredentialType::from_code(r.uint("credential type")?)?)
                }
                2 => a.category = Some(HolderCategory::from_code(r.uint("holder category")?)?),
                3 => {
                    let len = r.array("unit path", MAX_UNIT_DEPTH)?;
                    let mut levels = [0u16; MAX_UNIT_DEPTH];
                    for l in levels.iter_mut().take(len) {
                        *l = r.uint_max("unit path", u64::from(u16::MAX))? as u16;
                    }
                    a.unit = Some(UnitPath::new(&levels[..len])?);
                }
                4 => a.valid_until = Some(r.uint("valid until")?),
                5 => a.predicate = Some(Predicate::from_code(r.uint("predicate")?)?),
                _ => return Err(DecodeError::UnknownKey("attributes")),
            }
        }
        Ok(a)
    }
}

/// The engine's answer for one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Accepted, or why not.
    pub reason: Reason,
    /// What the scanner's role may see (empty unless accepted).
    pub attributes: Attributes,
    /// This is the first verdict for this scan, given again to the same scanner's retry
    /// (SPEC §8.6), not a new decision.
    pub repeat: bool,
}

impl Verdict {
    /// A denial (or an acceptance that discloses nothing).
    pub fn deny(reason: Reason) -> Verdict {
        Verdict {
            reason,
            attributes: Attributes::default(),
            repeat: false,
        }
    }

    /// A verdict with these attributes, not a repeat.
    pub fn new(reason: Reason, attributes: Attributes) -> Verdict {
        Verdict {
            reason,
            attributes,
            repeat: false,
        }
    }

    /// The same verdict, marked as a repeat of the first.
    pub fn repeated(self) -> Verdict {
        Verdict {
            repeat: true,
            ..self
        }
    }
}

/// Error codes of an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireErrorCode {
    /// The frame could not be decoded.
    MalformedFrame = 1,
    /// The frame is larger than [`MAX_FRAME_BODY`].
    FrameTooLarge = 2,
    /// The frame's version is not supported.
    UnsupportedVersion = 3,
    /// The frame kind is not a request kind.
    UnknownKind = 4,
}

impl WireErrorCode {
    fn from_code(c: u64) -> Result<Self, DecodeError> {
        Ok(match c {
            1 => WireErrorCode::MalformedFrame,
            2 => WireErrorCode::FrameTooLarge,
            3 => WireErrorCode::UnsupportedVersion,
            4 => WireErrorCode::UnknownKind,
            _ => return Err(DecodeError::UnknownValue("error code")),
        })
    }
}

/// A response from the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// One verdict per token, in request order.
    Verdicts {
        /// The request's id.
        id: u64,
        /// The verdicts.
        verdicts: Vec<Verdict>,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's id.
        id: u64,
    },
    /// The request could not be read; the connection stays usable.
    Error {
        /// The request's id, or 0 when it could not be read.
        id: u64,
        /// What went wrong.
        code: WireErrorCode,
        /// A short explanation for people.
        message: String,
    },
}

impl Response {
    /// The whole frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let mut w = Writer::new(&mut body);
        match self {
            Response::Verdicts { id, verdicts } => {
                w.map(2).uint(1).uint(*id).uint(2).array(verdicts.len());
                for v in verdicts {
                    w.array(2 + usize::from(v.repeat))
                        .uint(u64::from(v.reason.code()));
                    v.attributes.encode(&mut w);
                    if v.repeat {
                        w.bool(true);
                    }
                }
                frame(kind::VERDICTS, &body)
            }
            Response::Pong { id } => {
                w.map(1).uint(1).uint(*id);
                frame(kind::PONG, &body)
            }
            Response::Error { id, code, message } => {
                let mut end = message.len().min(MAX_ERROR_TEXT);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                w.map(3)
                    .uint(1)
                    .uint(*id)
                    .uint(2)
                    .uint(*code as u64)
                    .uint(3)
                    .text(&message[..end]);
                frame(kind::ERROR, &body)
            }
        }
    }

    /// Reads a response body of the given kind.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Response, DecodeError> {
        let mut r = Reader::new(body);
        let n = r.map("response", 3)?;
        let mut keys = MapKeys::new("response");
        let (mut id, mut verdicts, mut code, mut message) = (None, None, None, None);
        for _ in 0..n {
            match (kind, keys.next(&mut r)?) {
                (_, 1) => id = Some(r.uint("request id")?),
                (kind::VERDICTS, 2) => {
                    let len = r.array("verdicts", MAX_BATCH)?;
                    let mut v = Vec::with_capacity(len);
                    for _ in 0..len {
                        let fields = r.array("verdict", 3)?;
                        if fields < 2 {
                            return Err(DecodeError::BadLength("verdict"));
                        }
                        // An unknown code is a newer engine's reason: a deny (SPEC §9), not
                        // an unreadable frame.
                        let reason = Reason::from_wire(r.uint("reason")?);
                        let attributes = Attributes::decode(&mut r)?;
                        // Deterministic: the marker is present only as `true`.
                        let repeat = fields == 3;
                        if repeat && !r.bool("repeat")? {
                            return Err(DecodeError::UnknownValue("repeat"));
                        }
                        v.push(Verdict {
                            reason,
                            attributes,
                            repeat,
                        });
                    }
                    verdicts = Some(v);
                }
                (kind::ERROR, 2) => code = Some(WireErrorCode::from_code(r.uint("error code")?)?),
                (kind::ERROR, 3) => {
                    message = Some(r.text("error message", MAX_ERROR_TEXT)?.to_owned())
                }
                (kind::VERDICTS | kind::PONG | kind::ERROR, _) => {
                    return Err(DecodeError::UnknownKey("response"))
                }
                _ => return Err(DecodeError::UnknownValue("frame kind")),
            }
        }
        r.finish("response")?;
        let id = id.ok_or(DecodeError::Missing("request id"))?;
        match kind {
            kind::VERDICTS => Ok(Response::Verdicts {
                id,
                verdicts: verdicts.ok_or(DecodeError::Missing("verdicts"))?,
            }),
            kind::PONG => Ok(Response::Pong { id }),
            kind::ERROR => Ok(Response::Error {
                id,
                code: code.ok_or(DecodeError::Missing("error code"))?,
                message: message.unwrap_or_default(),
            }),
            _ => Err(DecodeError::UnknownValue("frame kind")),
        }
    }
}

/// Splits one whole frame (header and body) into kind and body, checking the length.
pub fn split_frame(bytes: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    let header: &[u8; FRAME_HEADER_LEN] = bytes
        .get(..FRAME_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(DecodeError::Truncated)?;
    let h = FrameHeader::decode(header)?;
    let body = &bytes[FRAME_HEADER_LEN..];
    if body.len() < h.len {
        return Err(DecodeError::Truncated);
    }
    if body.len() > h.len {
        return Err(DecodeError::TrailingData("frame"));
    }
    Ok((h.kind, body))
}
