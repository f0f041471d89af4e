//! ISO/IEC 18013-5 presentations in the engine (SPEC §12): what a reader forwards, the cache of
//! what an issuer's signature proved, the operator's mdoc revocations, and what the checks leave
//! for the scanner's policy.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gatehouse_mdoc::cbor::Value;
use gatehouse_mdoc::{Document, IssuerFacts, TrustAnchors, MDL_NAMESPACE};
use parking_lot::Mutex;

use super::registry::ConfigError;

/// One presentation as a reader forwards it (a VerifyMdoc request, SPEC §12.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdocItem {
    /// The `DeviceResponse` as the reader received it.
    pub device_response: Vec<u8>,
    /// The session's `SessionTranscript` (the CBOR array).
    pub transcript: Vec<u8>,
    /// When the reader's session began, Unix seconds, as the reader states it.
    pub session_start: u64,
    /// The reader's ephemeral private key, for a deviceMac.
    pub reader_key: Option<[u8; 32]>,
}

impl From<gatehouse_protocol::MdocRequest> for MdocItem {
    fn from(r: gatehouse_protocol::MdocRequest) -> MdocItem {
        MdocItem {
            device_response: r.device_response,
            transcript: r.transcript,
            session_start: r.session_start,
            reader_key: r.reader_key,
        }
    }
}

/// What an authentic presentation tells the scanner's policy: the issuer-signed facts only
/// (the device's own name spaces are claims of the phone, not of the issuer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disclosed {
    /// The document's docType (equal to the MSO's).
    pub doc_type: String,
    /// The issuing authority of the IACA the document signer chains to (`US`, `US-CA`).
    pub authority: String,
    /// The earlier of the MSO's validUntil and the end of the certificates' validity.
    pub valid_until: u64,
    /// `age_over_19` of namespace `org.iso.18013.5.1`, when disclosed.
    pub age_over_19: Option<bool>,
    /// `birth_date` of namespace `org.iso.18013.5.1`, when disclosed (year, month, day).
    pub birth_date: Option<(i64, u32, u32)>,
}

impl Disclosed {
    pub(crate) fn of(doc: &Document<'_>, facts: &IssuerFacts) -> Disclosed {
        let element = |id: &str| doc.element(MDL_NAMESPACE, id).map(|i| &i.value.value);
        let age_over_19 = match element("age_over_19") {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        let birth_date = match element("birth_date") {
            Some(Value::Tag(1004, inner)) => inner.text(),
            Some(Value::Text(t)) => Some(*t),
            _ => None,
        }
        .and_then(gatehouse_mdoc::time::full_date);
        let until = facts.mso.valid_until.min(facts.signer.not_after);
        Disclosed {
            doc_type: doc.doc_type.to_owned(),
            authority: facts.signer.authority.clone(),
            valid_until: u64::try_from(until).unwrap_or(0),
            age_over_19,
            birth_date,
        }
    }
}

const SHARDS: usize = 16;

/// The facts, and the trust list they were proved under.
type Entry = (Arc<TrustAnchors>, Arc<IssuerFacts>);

/// What issuers' signatures proved, by SHA-256 of the `issuerAuth` bytes: the MSO's digests,
/// device key and validity, and the document signer's chain. A presentation of a cached
/// document costs its digests and the device signature, not the issuer's signature and the
/// certificate chain. Bounded: a full shard drops an entry to take a new one. Each entry holds
/// the IACA list it was proved under and serves only that list: a check that began under an
/// old list and finishes after a reload cannot leave its facts for the new one. Cleared when the
/// list changes.
pub struct MdocCache {
    shards: Vec<Mutex<HashMap<[u8; 32], Entry>>>,
    per_shard: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl MdocCache {
    /// A cache of about `capacity` documents.
    pub fn new(capacity: usize) -> MdocCache {
        MdocCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], Entry>> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// The facts proved for this `issuerAuth` under `trust`, if remembered.
    pub fn get(&self, key: &[u8; 32], trust: &Arc<TrustAnchors>) -> Option<Arc<IssuerFacts>> {
        let hit = self
            .shard(key)
            .lock()
            .get(key)
            .filter(|(under, _)| Arc::ptr_eq(under, trust))
            .map(|(_, facts)| Arc::clone(facts));
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// Remembers facts proved for this `issuerAuth` under `trust`.
    pub fn insert(&self, key: [u8; 32], trust: &Arc<TrustAnchors>, facts: Arc<IssuerFacts>) {
        let mut shard = self.shard(&key).lock();
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            if let Some(old) = shard.keys().next().copied() {
                shard.remove(&old);
            }
        }
        shard.insert(key, (Arc::clone(trust), facts));
    }

    /// Forgets everything (the trust list changed).
    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().clear();
        }
    }

    /// Documents remembered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

/// The operator's mdoc revocations (SPEC §12.5): document signers' keys (SHA-256 of the DS
/// certificate's subjectPublicKeyInfo, `gatehouse_mdoc::signer_fingerprint`) and documents
/// (SHA-256 of the MSO as signed, the `issuerAuth` payload). Exact sets, read from a file and swapped whole on reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MdocRevocations {
    signers: HashSet<[u8; 32]>,
    documents: HashSet<[u8; 32]>,
}

impl MdocRevocations {
    /// Whether the signer or the document is revoked.
    pub fn revokes(&self, signer: &[u8; 32], document: &[u8; 32]) -> bool {
        self.signers.contains(signer) || self.documents.contains(document)
    }

    /// Revokes a document signer.
    pub fn revoke_signer(&mut self, fingerprint: [u8; 32]) {
        self.signers.insert(fingerprint);
    }

    /// Revokes a document.
    pub fn revoke_document(&mut self, id: [u8; 32]) {
        self.documents.insert(id);
    }

    /// Entries in all.
    pub fn len(&self) -> usize {
        self.signers.len() + self.documents.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses the file format: one entry a line, `signer <64 hex>` or `document <64 hex>`;
    /// blank lines and lines starting with `#` are skipped. `file` names the source in errors.
    pub fn parse(file: &Path, text: &str) -> Result<MdocRevocations, ConfigError> {
        let mut out = MdocRevocations::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("line {}", n + 1);
            let (kind, hex_id) = line.split_once(char::is_whitespace).ok_or_else(|| {
                ConfigError::new(
                    file,
                    at.clone(),
                    "expected `signer <hex>` or `document <hex>`",
                )
            })?;
            let id: [u8; 32] = hex::decode(hex_id.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    ConfigError::new(file, at.clone(), "the id is not 64 hex digits (SHA-256)")
                })?;
            match kind {
                "signer" => out.revoke_signer(id),
                "document" => out.revoke_document(id),
                other => {
                    return Err(ConfigError::new(
                        file,
                        at,
                        format!("unknown entry kind {other:?} (signer, document)"),
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// A presentation's one-time-use id (SPEC §12.3): the first 16 bytes of SHA-256 over
/// `"gatehouse/mdoc/1"` and the SessionTranscript's bytes. A session's transcript holds both
/// sides' fresh ephemeral keys, so no two sessions share it.
pub fn mdoc_replay_id(transcript: &[u8]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"gatehouse/mdoc/1");
    h.update(transcript);
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// A document's revocation id (SPEC §12.5): SHA-256 of the MSO as signed.
pub fn mdoc_document_id(mso_payload: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(mso_payload).into()
}
