//! The engine's checks of an mdoc presentation (SPEC §12.2), before one-time use and policy.

use std::sync::Arc;

use std::sync::atomic::Ordering;

use gatehouse_mdoc::{
    check_document, decode_device_response, device_check, low_s, session_transcript_bytes,
    verify_issuer, DeviceCheck, MdocError, TrustAnchors,
};
use gatehouse_protocol::{verify_es256, PublicKey, Reason, Signature};
use sha2::{Digest, Sha256};

use super::{Batching, Checked, Engine, Item, Subject, MB_FROM};
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

    /// Checks 1–8 of SPEC §12.2 for the presentations among `items` (the others are left as
    /// they are in `checked`). Their device signatures, when there are at least [`MB_FROM`]
    /// and the engine runs multi-buffer, are checked eight to a call, each with a low s (ES256
    /// accepts (r, s) exactly when it accepts (r, n − s)); what a call does not prove, and
    /// everything on other paths, is checked singly.
    pub(super) fn check_mdocs(
        &self,
        items: &[Item],
        checked: &mut [Result<Checked, Reason>],
        now: u64,
    ) {
        let mut signed = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let Some(m) = &it.mdoc else { continue };
            checked[i] = match self.check_mdoc(m, &it.scanner, now) {
                Ok((c, None)) => Ok(c),
                Ok((c, Some(device))) => {
                    signed.push((i, c, device));
                    continue;
                }
                Err(reason) => Err(reason),
            };
        }
        let mut proven = vec![false; signed.len()];
        if self.batching == Batching::Multibuffer && signed.len() >= MB_FROM {
            self.prove_multibuffer(&signed, &mut proven);
        }
        for ((i, c, device), proven) in signed.into_iter().zip(proven) {
            let ok = proven
                || verify_es256(self.config.backend, &device.key, &device.signed, &device.rs)
                    .is_ok();
            checked[i] = if ok {
                Ok(c)
            } else {
                Err(Reason::BadDeviceSignature)
            };
        }
    }

    /// Multi-buffer calls over the device signatures (with a low s); sets what each proves.
    fn prove_multibuffer(&self, signed: &[(usize, Checked, DeviceSignature)], proven: &mut [bool]) {
        let stats = &self.batch_stats;
        let low: Vec<Option<Signature>> = signed
            .iter()
            .map(|(_, _, d)| low_s(&d.rs).map(|rs| Signature { rs, y_odd: false }))
            .collect();
        let lanes: Vec<(usize, gatehouse_mb::Lane<'_>)> = signed
            .iter()
            .zip(&low)
            .enumerate()
            .filter_map(|(k, ((_, _, d), sig))| {
                let sig = sig.as_ref()?;
                Some((
                    k,
                    gatehouse_mb::Lane {
                        key: &d.key,
                        msg: &d.signed,
                        sig,
                    },
                ))
            })
            .collect();
        for chunk in lanes.chunks(gatehouse_mb::LANES) {
            if chunk.len() < MB_FROM {
                break;
            }
            let call: Vec<gatehouse_mb::Lane<'_>> = chunk.iter().map(|(_, l)| *l).collect();
            let mask = gatehouse_mb::prove8(&call).unwrap_or(0);
            stats.mb_calls.fetch_add(1, Ordering::Relaxed);
            stats
                .mb_signatures
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            for (lane, (k, _)) in chunk.iter().enumerate() {
                if mask & (1 << lane) != 0 {
                    proven[*k] = true;
                } else {
                    stats.mb_unproven.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Checks 1–8 of SPEC §12.2 for one presentation, but for a device signature's
    /// verification, which it returns (a MAC is checked here).
    fn check_mdoc(
        &self,
        m: &MdocItem,
        scanner: &Scanner,
        now: u64,
    ) -> Result<(Checked, Option<DeviceSignature>), Reason> {
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
        let trust = self.mdoc_trust.load_full();
        let facts = match self.mdoc_cache.get(&key, &trust) {
            Some(facts) => facts,
            None => {
                let facts = Arc::new(verify_issuer(doc, &trust, when).map_err(reason)?);
                self.mdoc_cache.insert(key, &trust, Arc::clone(&facts));
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

        let device = match device_check(
            doc,
            &facts,
            &m.transcript,
            m.reader_key.as_ref(),
            scanner.mdoc.device_mac,
        )
        .map_err(reason)?
        {
            DeviceCheck::Done => None,
            DeviceCheck::Signature { signed, rs } => Some(DeviceSignature {
                key: facts.device_key.clone(),
                signed,
                rs,
            }),
        };
        let checked = Checked {
            replay_id: mdoc_replay_id(&m.transcript),
            timestamp: start,
            // The later of the stated start and now: a start stated in the past must not
            // shorten the record's life (SPEC §12.3).
            expiry: start
                .max(now)
                .saturating_add(window)
                .saturating_add(self.config.clock_skew_secs),
            subject: Subject::Mdoc(Box::new(Disclosed::of(doc, &facts))),
            challenge: None,
        };
        Ok((checked, device))
    }
}

/// A device signature still to verify: plain ES256 of `rs` over `signed` with `key`.
pub(super) struct DeviceSignature {
    key: PublicKey,
    signed: Vec<u8>,
    rs: [u8; 64],
}
