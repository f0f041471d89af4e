//! Checks 5–6 for a whole batch at once: one multi-scalar equation ([`gatehouse_batch`]) over
//! every signature the batch needs, and the engine's single verifier for every member when the
//! equation fails. Either way each token gets the verdict the single path would give it: an
//! equation that holds proves every signature valid, parity included (what the strict check
//! proves, so also what the default check accepts); one that fails proves nothing about any
//! member, and the single verifier, with the engine's strictness, decides them all.

use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse_batch::{verify_batch, Entry};
use gatehouse_protocol::Reason;

use super::{Checked, Engine, Unsigned};

/// How the batch equation has fared: read by `/metrics`.
#[derive(Debug, Default)]
pub struct BatchStats {
    batches: AtomicU64,
    failed: AtomicU64,
    signatures: AtomicU64,
}

impl BatchStats {
    fn record(&self, signatures: usize, verified: bool) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.signatures
            .fetch_add(signatures as u64, Ordering::Relaxed);
        if !verified {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Batch equations checked.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Of those, equations that failed (every member then verified singly).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Signatures that went into batch equations.
    pub fn signatures(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }
}

/// Signatures these tokens still need: the issuer's where the cache does not vouch for the
/// credential, and the device's.
pub(super) fn needed(unsigned: &[Result<Unsigned, Reason>]) -> usize {
    unsigned
        .iter()
        .flatten()
        .map(|u| if u.cached.is_some() { 1 } else { 2 })
        .sum()
}

impl Engine {
    /// Checks 5–6 of every token of a batch with one equation (see the module docs).
    pub(super) fn signatures_batched(
        &self,
        mut unsigned: Vec<Result<Unsigned, Reason>>,
    ) -> Vec<Result<Checked, Reason>> {
        // A device key not in the cache is parsed (decompressed) once, here; the single path
        // takes it from `parsed`. One that does not parse is denied by the single path's own
        // steps.
        for u in unsigned.iter_mut().flatten() {
            if u.cached.is_none() {
                u.parsed = u.token.device_key().ok();
            }
        }
        // The signed bytes of every signature, in the order the entries take them.
        let mut messages: Vec<Vec<u8>> = Vec::with_capacity(2 * unsigned.len());
        for u in unsigned.iter().flatten() {
            if u.cached.is_none() {
                messages.push(u.token.credential.to_be_signed());
            }
            if u.cached.is_some() || u.parsed.is_some() {
                messages.push(u.token.to_be_signed());
            }
        }
        let mut messages_in_order = messages.iter();
        let mut entries: Vec<Entry<'_>> = Vec::with_capacity(messages.len());
        for u in unsigned.iter().flatten() {
            if u.cached.is_none() {
                let Some(msg) = messages_in_order.next() else {
                    break;
                };
                let signed = &u.token.credential;
                entries.push(Entry {
                    key: &u.issuer,
                    msg,
                    sig: &signed.signature,
                });
            }
            if let Some(key) = u.cached.as_ref().or(u.parsed.as_ref()) {
                let Some(msg) = messages_in_order.next() else {
                    break;
                };
                entries.push(Entry {
                    key,
                    msg,
                    sig: &u.token.signature,
                });
            }
        }
        let verified = verify_batch(&entries).is_ok();
        self.batch_stats.record(entries.len(), verified);
        unsigned
            .into_iter()
            .map(|u| u.and_then(|u| self.signatures(u, verified)))
            .collect()
    }
}
