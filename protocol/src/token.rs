//! The rotating presentation token: a credential, a timestamp, a nonce and an optional
//! scanner challenge, signed by the holder's device key.

use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::cbor::{MapKeys, Reader, Writer, MAJOR_BYTES};
use crate::cose::{self, Kid, Sign1};
use crate::credential::{SignedCredential, MAX_CREDENTIAL_LEN};
use crate::crypto::{PrivateKey, PublicKey, Signature};
use crate::{DecodeError, SignError, SignatureError};

/// The version of the token payload this library writes and reads.
pub const TOKEN_VERSION: u64 = 1;
/// Largest token a decoder accepts (the size budget for a real token is 400 bytes).
pub const MAX_TOKEN_LEN: usize = 768;
/// Largest scanner challenge.
pub const MAX_CHALLENGE_LEN: usize = 32;
/// Nonce length.
pub const NONCE_LEN: usize = 16;
/// `external_aad` of token signatures.
pub const TOKEN_AAD: &[u8] = b"gatehouse/token/1";

mod key {
    pub const VERSION: i64 = 1;
    pub const CREDENTIAL: i64 = 2;
    pub const TIMESTAMP: i64 = 3;
    pub const NONCE: i64 = 4;
    pub const CHALLENGE: i64 = 5;
}

/// How tokens rotate and how long one is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenParams {
    /// A wallet shows a new token this often (seconds).
    pub rotation_secs: u64,
    /// A token is accepted this long after its timestamp (seconds), and only once.
    pub window_secs: u64,
}

impl Default for TokenParams {
    fn default() -> Self {
        TokenParams {
            rotation_secs: 15,
            window_secs: 30,
        }
    }
}

/// What a wallet signs for one presentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presentation<'a> {
    /// The credential's COSE_Sign1 bytes, as issued.
    pub credential: &'a [u8],
    /// When the token was made (Unix seconds).
    pub timestamp: u64,
    /// Fresh random bytes from the wallet.
    pub nonce: [u8; NONCE_LEN],
    /// The scanner's challenge, on NFC.
    pub challenge: Option<&'a [u8]>,
}

impl Presentation<'_> {
    /// The token payload (deterministic CBOR).
    pub fn encode_payload(&self) -> Result<Vec<u8>, DecodeError> {
        if self.credential.len() > MAX_CREDENTIAL_LEN {
            return Err(DecodeError::TooLong("credential"));
        }
        if self
            .challenge
            .is_some_and(|c| c.is_empty() || c.len() > MAX_CHALLENGE_LEN)
        {
            return Err(DecodeError::BadLength("challenge"));
        }
        let mut out = Vec::with_capacity(self.credential.len() + 64);
        let mut w = Writer::new(&mut out);
        w.map(4 + usize::from(self.challenge.is_some()));
        w.int(key::VERSION).uint(TOKEN_VERSION);
        w.int(key::CREDENTIAL).bytes(self.credential);
        w.int(key::TIMESTAMP).uint(self.timestamp);
        w.int(key::NONCE).bytes(&self.nonce);
        if let Some(c) = self.challenge {
            w.int(key::CHALLENGE).bytes(c);
        }
        Ok(out)
    }

    /// Signs the presentation with the device key: the token bytes.
    pub fn sign(&self, device: &PrivateKey) -> Result<Vec<u8>, SignError> {
        let payload = self.encode_payload().map_err(SignError::Invalid)?;
        cose::sign(device, None, TOKEN_AAD, &payload)
    }
}

/// A decoded presentation token. Decoding checks form only; signatures, dates and revocation
/// are the verifier's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The embedded credential.
    pub credential: SignedCredential,
    /// When the wallet made the token (Unix seconds).
    pub timestamp: u64,
    /// The wallet's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The scanner challenge the token answers, if any.
    pub challenge: Option<Vec<u8>>,
    /// The device signature.
    pub signature: Signature,
    bytes: Vec<u8>,
    protected: Range<usize>,
    payload: Range<usize>,
}

impl Token {
    /// Reads token bytes (NFC form, or the QR text form after [`crate::from_qr_text`]).
    pub fn decode(bytes: &[u8]) -> Result<Token, DecodeError> {
        if bytes.len() > MAX_TOKEN_LEN {
            return Err(DecodeError::TooLong("token"));
        }
        let m = Sign1::decode(bytes, Kid::Absent, MAX_TOKEN_LEN)?;
        let payload = &bytes[m.payload.clone()];
        let mut r = Reader::new(payload);
        let n = r.map("token", 5)?;
        let mut keys = MapKeys::new("token");
        let (mut version, mut credential, mut timestamp, mut nonce, mut challenge) =
            (None, None, None, None, None);
        for _ in 0..n {
            let k = keys.next(&mut r)?;
            if version.is_none() && k != key::VERSION {
                return Err(DecodeError::Missing("version"));
            }
            match k {
                key::VERSION => {
                    let v = r.uint("version")?;
                    if v != TOKEN_VERSION {
                        return Err(DecodeError::UnsupportedVersion(v));
                    }
                    version = Some(v);
                }
                key::CREDENTIAL => {
                    if r.peek_major()? != MAJOR_BYTES {
                        return Err(DecodeError::WrongType("credential"));
                    }
                    credential = Some(SignedCredential::decode(
                        r.bytes("credential", MAX_CREDENTIAL_LEN)?,
                    )?);
                }
                key::TIMESTAMP => timestamp = Some(r.uint("timestamp")?),
                key::NONCE => nonce = Some(r.bytes_exact::<NONCE_LEN>("nonce")?),
                key::CHALLENGE => {
                    let c = r.bytes("challenge", MAX_CHALLENGE_LEN)?;
                    if c.is_empty() {
                        return Err(DecodeError::BadLength("challenge"));
                    }
                    challenge = Some(c.to_vec());
                }
                _ => return Err(DecodeError::UnknownKey("token")),
            }
        }
        r.finish("token")?;
        if version.is_none() {
            return Err(DecodeError::Missing("version"));
        }
        Ok(Token {
            credential: credential.ok_or(DecodeError::Missing("credential"))?,
            timestamp: timestamp.ok_or(DecodeError::Missing("timestamp"))?,
            nonce: nonce.ok_or(DecodeError::Missing("nonce"))?,
            challenge,
            signature: m.signature,
            bytes: bytes.to_vec(),
            protected: m.protected,
            payload: m.payload,
        })
    }

    /// The exact bytes received.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes the device signed (the COSE `Sig_structure`).
    pub fn to_be_signed(&self) -> Vec<u8> {
        cose::sig_structure(
            &self.bytes[self.protected.clone()],
            TOKEN_AAD,
            &self.bytes[self.payload.clone()],
        )
    }

    /// The one-time-use key: SHA-256 over the signed payload, first 16 bytes. Signature bytes
    /// are left out, so no re-signing or re-encoding of a used token makes it new again.
    pub fn replay_id(&self) -> [u8; 16] {
        let d = Sha256::digest(&self.bytes[self.payload.clone()]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        id
    }

    /// The device key the credential binds, validated as a P-256 point.
    pub fn device_key(&self) -> Result<PublicKey, SignatureError> {
        PublicKey::from_sec1(&self.credential.credential.device_key)
    }
}
