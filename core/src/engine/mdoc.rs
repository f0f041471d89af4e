//! The engine's checks of an mdoc presentation (SPEC §12.2), before one-time use and policy.

use std::sync::Arc;

use gatehouse_mdoc::{
    check_document, decode_device_response, session_transcript_bytes, verify_device, verify_issuer,
    MdocError, TrustAnchors,
};
use gatehouse_protocol::Reason;
use sha2::{Digest, Sha256};

use super::{Checked, Engine, Subject};
use crate::mdoc::{mdoc_document_id, mdoc_replay_id, Disclosed, MdocItem, MdocRevocations};
use crate::registry::Scanner;

impl Engine {
    /// Replaces the IACA trust list for mdoc presentations; what the old list proved is
    /// forgotten.
    pub fn set_mdoc_trust(&self, anchors: TrustAnchors) {
        self.mdoc_trust.store(Arc::new(anchors));
        self.mdoc_cache.clear();
    }

    /// The IACA trust list in force.
    pub fn mdoc_trust(&self) -> Arc<TrustAnchors> {
        self.mdoc_trust.load_full()
    }

    /// Replaces the mdoc revocations (SPEC §12.5).
    pub fn set_mdoc_revocations(&self, revocations: MdocRevocations) {
        self.mdoc_revocations.store(Arc::new(revocations));
    }

    /// The mdoc revocations in force.
    pub fn mdoc_revocations(&self) -> Arc<MdocRevocations> {
        self.mdoc_revocations.load_full()
    }

    /// (hits, misses) of the mdoc issuer cache, and documents remembered.
    pub fn mdoc_cache_stats(&self) -> ((u64, u64), usize) {
        (self.mdoc_cache.stats(), self.mdoc_cache.len())
    }

    /// Checks 1–6 of SPEC §12.2 for one presentation.
    pub(super) fn check_mdoc(
        &self,
        m: &MdocItem,
        scanner: &Scanner,
        now: u64,
    ) -> Result<Checked, Reason> {
        let reason = |e: MdocError| e.reason();
        let response = decode_device_response(&m.device_response).map_err(|_| Reason::Malformed)?;
        session_transcript_bytes(&m.transcript).map_err(|_| Reason::Malformed)?;
        let doc = &response.document;

        let start = m.session_start;
        if start > now.saturating_add(self.config.clock_skew_secs) {
            return Err(Reason::FromFuture);
        }
        let window = self.config.params.window_secs;
        if now.saturating_sub(start) >= window {
            return Err(Reason::Stale);
        }
        if start < self.accept_from() {
            return Err(Reason::NodeRestarted);
        }

        let when = i64::try_from(now).unwrap_or(i64::MAX);
        let key: [u8; 32] = Sha256::digest(doc.issuer_auth_raw).into();
        let facts = match self.mdoc_cache.get(&key) {
            Some(facts) => facts,
            None => {
                let facts =
                    Arc::new(verify_issuer(doc, &self.mdoc_trust.load(), when).map_err(reason)?);
                self.mdoc_cache.insert(key, Arc::clone(&facts));
                facts
            }
        };
        check_document(doc, &facts, when).map_err(reason)?;

        let document = mdoc_document_id(doc.issuer_auth.payload.unwrap_or_default());
        if self
            .mdoc_revocations
            .load()
            .revokes(&facts.signer.fingerprint, &document)
        {
            return Err(Reason::Revoked);
        }

        verify_device(
            doc,
            &facts,
            &m.transcript,
            m.reader_key.as_ref(),
            scanner.mdoc.device_mac,
        )
        .map_err(reason)?;

        Ok(Checked {
            replay_id: mdoc_replay_id(&m.transcript),
            timestamp: start,
            expiry: start.saturating_add(window),
            subject: Subject::Mdoc(Box::new(Disclosed::of(doc, &facts))),
            challenge: None,
        })
    }
}
