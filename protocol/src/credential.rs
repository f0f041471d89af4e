//! The credential: what an issuer signs once for a holder.

use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::cbor::{MapKeys, Reader, Writer};
use crate::cose::{self, Kid, Sign1};
use crate::crypto::{PrivateKey, Signature};
use crate::types::{CredentialType, Date, Entitlements, HolderCategory, UnitPath, MAX_UNIT_DEPTH};
use crate::{DecodeError, SignError};

/// The version of the credential payload this library writes and reads.
pub const CREDENTIAL_VERSION: u64 = 1;
/// Largest credential (the whole COSE_Sign1) a decoder accepts.
pub const MAX_CREDENTIAL_LEN: usize = 512;
/// `external_aad` of credential signatures: separates them from token signatures.
pub const CREDENTIAL_AAD: &[u8] = b"gatehouse/credential/1";

/// Payload map keys.
mod key {
    pub const VERSION: i64 = 1;
    pub const ID: i64 = 2;
    pub const TYPE: i64 = 3;
    pub const CATEGORY: i64 = 4;
    pub const SUBJECT: i64 = 5;
    pub const SPONSOR: i64 = 6;
    pub const NOT_BEFORE: i64 = 7;
    pub const NOT_AFTER: i64 = 8;
    pub const LEAVE: i64 = 9;
    pub const UNIT: i64 = 10;
    pub const ENTITLEMENTS: i64 = 11;
    pub const BIRTH_DATE: i64 = 12;
    pub const AGE_OVER_19: i64 = 13;
    pub const DEVICE_KEY: i64 = 14;
}

/// A 16-byte identifier (credential id, pseudonymous subject id, sponsor id).
pub type Id = [u8; 16];

/// What an issuer attests about a holder. Names and photos are never in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    /// Unique id of this credential (revocable on its own).
    pub id: Id,
    /// What the credential is.
    pub credential_type: CredentialType,
    /// Who the holder is.
    pub category: HolderCategory,
    /// Pseudonymous id of the holder (revoking it revokes all their credentials).
    pub subject: Id,
    /// For family members: the subject id of the service member they depend on. Revoking the
    /// sponsor (on discharge) denies every family credential that names them.
    pub sponsor: Option<Id>,
    /// Valid from (Unix seconds, inclusive).
    pub not_before: u64,
    /// Valid until (Unix seconds, exclusive).
    pub not_after: u64,
    /// For a leave pass: the leave, as (start inclusive, end exclusive) Unix seconds.
    pub leave: Option<(u64, u64)>,
    /// Affiliation, for gate policy.
    pub unit: UnitPath,
    /// Entitlements.
    pub entitlements: Entitlements,
    /// Birth date, for age checks (the engine discloses only "19 or older").
    pub birth_date: Option<Date>,
    /// An issuer's assertion that the holder is 19 or older, for credentials without a birth
    /// date.
    pub age_over_19: Option<bool>,
    /// The holder's device public key (SEC1 compressed P-256): signs every presentation.
    pub device_key: [u8; 33],
}

impl Credential {
    /// Checks the rules that tie fields together.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.not_before >= self.not_after {
            return Err(DecodeError::Inconsistent(
                "not_before must precede not_after",
            ));
        }
        if self.category.is_family() != self.sponsor.is_some() {
            return Err(DecodeError::Inconsistent(
                "a sponsor is named exactly for family members",
            ));
        }
        if (self.credential_type == CredentialType::FamilyMember) != self.category.is_family() {
            return Err(DecodeError::Inconsistent(
                "family_member credentials are for family categories",
            ));
        }
        if (self.credential_type == CredentialType::LeavePass) != self.leave.is_some() {
            return Err(DecodeError::Inconsistent(
                "leave dates are carried exactly by leave passes",
            ));
        }
        if let Some((start, end)) = self.leave {
            if start >= end {
                return Err(DecodeError::Inconsistent(
                    "leave start must precede leave end",
                ));
            }
        }
        if !matches!(self.device_key[0], 2 | 3) {
            return Err(DecodeError::UnknownValue("device key"));
        }
        Ok(())
    }

    /// Whether the credential is in force at `now` (SPEC §6 step 3): `NotYetValid` before
    /// `not_before`, `Expired` from `not_after`, and for a leave pass `OutsideLeave` outside
    /// its leave dates (start inclusive, end exclusive).
    pub fn validity_at(&self, now: u64) -> Result<(), crate::Reason> {
        use crate::Reason;
        if now < self.not_before {
            return Err(Reason::NotYetValid);
        }
        if now >= self.not_after {
            return Err(Reason::Expired);
        }
        match self.leave {
            Some((start, end)) if now < start || now >= end => Err(Reason::OutsideLeave),
            _ => Ok(()),
        }
    }

    /// The payload bytes (deterministic CBOR).
    pub fn encode_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        let mut w = Writer::new(&mut out);
        let pairs = 10
            + usize::from(self.sponsor.is_some())
            + usize::from(self.leave.is_some())
            + usize::from(self.birth_date.is_some())
            + usize::from(self.age_over_19.is_some());
        w.map(pairs);
        w.int(key::VERSION).uint(CREDENTIAL_VERSION);
        w.int(key::ID).bytes(&self.id);
        w.int(key::TYPE)
            .uint(u64::from(self.credential_type.code()));
        w.int(key::CATEGORY).uint(u64::from(self.category.code()));
        w.int(key::SUBJECT).bytes(&self.subject);
        if let Some(s) = &self.sponsor {
            w.int(key::SPONSOR).bytes(s);
        }
        w.int(key::NOT_BEFORE).uint(self.not_before);
        w.int(key::NOT_AFTER).uint(self.not_after);
        if let Some((a, b)) = self.leave {
            w.int(key::LEAVE).array(2).uint(a).uint(b);
        }
        w.int(key::UNIT).array(self.unit.levels().len());
        for l in self.unit.levels() {
            w.uint(u64::from(*l));
        }
        w.int(key::ENTITLEMENTS)
            .uint(u64::from(self.entitlements.bits()));
        if let Some(d) = self.birth_date {
            w.int(key::BIRTH_DATE).uint(u64::from(d.yyyymmdd()));
        }
        if let Some(a) = self.age_over_19 {
            w.int(key::AGE_OVER_19).bool(a);
        }
        w.int(key::DEVICE_KEY).bytes(&self.device_key);
        out
    }

    /// Reads a payload; the whole input must be one payload.
    pub fn decode_payload(bytes: &[u8]) -> Result<Credential, DecodeError> {
        let mut r = Reader::new(bytes);
        let n = r.map("credential", 14)?;
        let mut keys = MapKeys::new("credential");
        let mut version = None;
        let mut id = None;
        let mut credential_type = None;
        let mut category = None;
        let mut subject = None;
        let mut sponsor = None;
        let mut not_before = None;
        let mut not_after = None;
        let mut leave = None;
        let mut unit = None;
        let mut entitlements = None;
        let mut birth_date = None;
        let mut age_over_19 = None;
        let mut device_key = None;
        for _ in 0..n {
            let k = keys.next(&mut r)?;
            // The first key must be the version, so a future version is named as such rather
            // than failing on an unknown field.
            if version.is_none() && k != key::VERSION {
                return Err(DecodeError::Missing("version"));
            }
            match k {
                key::VERSION => {
                    let v = r.uint("version")?;
                    if v != CREDENTIAL_VERSION {
                        return Err(DecodeError::UnsupportedVersion(v));
                    }
                    version = Some(v);
                }
                key::ID => id = Some(r.bytes_exact::<16>("credential id")?),
                key::TYPE => {
                    credential_type = Some(CredentialType::from_code(r.uint("credential type")?)?)
                }
                key::CATEGORY => {
                    category = Some(HolderCategory::from_code(r.uint("holder category")?)?)
                }
                key::SUBJECT => subject = Some(r.bytes_exact::<16>("subject id")?),
                key::SPONSOR => sponsor = Some(r.bytes_exact::<16>("sponsor id")?),
                key::NOT_BEFORE => not_before = Some(r.uint("not_before")?),
                key::NOT_AFTER => not_after = Some(r.uint("not_after")?),
                key::LEAVE => {
                    r.array_exact("leave", 2)?;
                    leave = Some((r.uint("leave start")?, r.uint("leave end")?));
                }
                key::UNIT => {
                    let len = r.array("unit path", MAX_UNIT_DEPTH)?;
                    let mut levels = [0u16; MAX_UNIT_DEPTH];
                    for l in levels.iter_mut().take(len) {
                        *l = r.uint_max("unit path", u64::from(u16::MAX))? as u16;
                    }
                    unit = Some(UnitPath::new(&levels[..len])?);
                }
                key::ENTITLEMENTS => {
                    entitlements = Some(Entitlements::from_bits(r.uint("entitlements")?)?)
                }
                key::BIRTH_DATE => birth_date = Some(Date::from_yyyymmdd(r.uint("birth date")?)?),
                key::AGE_OVER_19 => age_over_19 = Some(r.bool("age over 19")?),
                key::DEVICE_KEY => device_key = Some(r.bytes_exact::<33>("device key")?),
                _ => return Err(DecodeError::UnknownKey("credential")),
            }
        }
        r.finish("credential")?;
        if version.is_none() {
            return Err(DecodeError::Missing("version"));
        }
        let c = Credential {
            id: id.ok_or(DecodeError::Missing("credential id"))?,
            credential_type: credential_type.ok_or(DecodeError::Missing("credential type"))?,
            category: category.ok_or(DecodeError::Missing("holder category"))?,
            subject: subject.ok_or(DecodeError::Missing("subject id"))?,
            sponsor,
            not_before: not_before.ok_or(DecodeError::Missing("not_before"))?,
            not_after: not_after.ok_or(DecodeError::Missing("not_after"))?,
            leave,
            unit: unit.ok_or(DecodeError::Missing("unit path"))?,
            entitlements: entitlements.ok_or(DecodeError::Missing("entitlements"))?,
            birth_date,
            age_over_19,
            device_key: device_key.ok_or(DecodeError::Missing("device key"))?,
        };
        c.validate()?;
        Ok(c)
    }

    /// Signs the credential with an issuer key: the COSE_Sign1 bytes a wallet stores.
    pub fn issue(&self, issuer: &PrivateKey) -> Result<Vec<u8>, SignError> {
        self.validate().map_err(SignError::Invalid)?;
        let kid = issuer.public().key_id();
        cose::sign(issuer, Some(&kid), CREDENTIAL_AAD, &self.encode_payload())
    }
}

/// A credential as received: the decoded fields, the issuer's key id and signature, and the
/// exact bytes (whose digest keys the issuer-signature cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCredential {
    /// The decoded fields.
    pub credential: Credential,
    /// Key id of the issuer key that signed it.
    pub issuer_kid: [u8; 8],
    /// The issuer's signature.
    pub signature: Signature,
    bytes: Vec<u8>,
    protected: Range<usize>,
    payload: Range<usize>,
}

impl SignedCredential {
    /// Reads a credential's COSE_Sign1 bytes.
    pub fn decode(bytes: &[u8]) -> Result<SignedCredential, DecodeError> {
        if bytes.len() > MAX_CREDENTIAL_LEN {
            return Err(DecodeError::TooLong("credential"));
        }
        let m = Sign1::decode(bytes, Kid::Required, MAX_CREDENTIAL_LEN)?;
        let credential = Credential::decode_payload(&bytes[m.payload.clone()])?;
        Ok(SignedCredential {
            credential,
            issuer_kid: m.kid.ok_or(DecodeError::Missing("kid"))?,
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

    /// The bytes the issuer signed (the COSE `Sig_structure`).
    pub fn to_be_signed(&self) -> Vec<u8> {
        cose::sig_structure(
            &self.bytes[self.protected.clone()],
            CREDENTIAL_AAD,
            &self.bytes[self.payload.clone()],
        )
    }

    /// SHA-256 over the exact bytes: the key under which a verified issuer signature is
    /// remembered. Encoding is deterministic and s is low, so one credential has one digest
    /// (the parity bit is covered too: a flipped bit is a cache miss, checked afresh).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes).into()
    }
}
