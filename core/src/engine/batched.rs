//! Checks 5–6 for a whole batch at once, by one of two paths ([`Batching`]):
//!
//! - **the equation** ([`gatehouse_batch`]): one multi-scalar equation over every signature the
//!   batch needs, and the engine's single verifier for every member when the equation fails.
//!   An equation that holds proves every signature valid, parity included (what the strict
//!   check proves, so also what the default check accepts); one that fails proves nothing about
//!   any member, and the single verifier, with the engine's strictness, decides them all.
//! - **multi-buffer** ([`gatehouse_mb`], AVX-512 IFMA): eight signatures per call, each with its
//!   own answer ([`gatehouse_mb::prove8`]). A signature it proves valid (never a false accept,
//!   and what the default check accepts) needs no other check; one it does not prove goes to
//!   the single verifier, with the engine's backend, which decides it.
//!
//! Either way each token gets the verdict the single path would give it.
//!
//! A scanner whose tokens make an equation fail (a bad signature found by the singles after
//! it) is kept out of equations for [`SUSPECT_SECS`]: its signatures are checked singly, and
//! the equations of everyone else's tokens keep holding. Without that, one forged token in
//! every batch would make every batch pay the equation and then all its singles.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse_batch::{verify_batch, Entry};
use gatehouse_mb::Lane;
use gatehouse_protocol::{PublicKey, Reason, Signature};

use super::{Checked, Engine, Item, Unsigned};

/// How the signatures of a verification turn's batch are checked (`[engine] batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchMode {
    /// Multi-buffer where this CPU and build can run it and signatures are not strict, else
    /// the equation from [`EngineConfig::batch_from`](super::EngineConfig::batch_from)
    /// signatures (0: one by one).
    Auto,
    /// Multi-buffer (AVX-512 IFMA) from [`MB_FROM`] signatures; the engine does not start
    /// where it cannot run, or with strict signatures (it does not check the R parity).
    Multibuffer,
    /// The equation from `batch_from` signatures.
    Equation,
    /// One by one, always.
    Off,
}

impl BatchMode {
    /// The configuration name.
    pub fn label(self) -> &'static str {
        match self {
            BatchMode::Auto => "auto",
            BatchMode::Multibuffer => "multibuffer",
            BatchMode::Equation => "equation",
            BatchMode::Off => "off",
        }
    }

    /// From its configuration name.
    pub fn from_label(name: &str) -> Option<BatchMode> {
        [
            BatchMode::Auto,
            BatchMode::Multibuffer,
            BatchMode::Equation,
            BatchMode::Off,
        ]
        .into_iter()
        .find(|m| m.label() == name)
    }
}

/// The batch path an engine runs, resolved from [`BatchMode`] at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Every signature through the single verifier.
    Off,
    /// One equation per batch of at least this many signatures.
    Equation(usize),
    /// Multi-buffer calls of up to eight signatures, from [`MB_FROM`] in a batch.
    Multibuffer,
}

impl Batching {
    /// Its name in the log and in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Batching::Off => "off",
            Batching::Equation(_) => "equation",
            Batching::Multibuffer => "multibuffer",
        }
    }

    /// Resolves a mode: `Err` says why a forced multi-buffer path cannot run.
    pub fn resolve(mode: BatchMode, strict: bool, batch_from: usize) -> Result<Batching, String> {
        let mb = gatehouse_mb::status();
        let equation = if batch_from > 0 {
            Batching::Equation(batch_from)
        } else {
            Batching::Off
        };
        match mode {
            BatchMode::Off => Ok(Batching::Off),
            BatchMode::Equation => Ok(Batching::Equation(batch_from.max(1))),
            BatchMode::Multibuffer if strict => Err(
                "multibuffer checks signatures without their R parity: strict_signatures needs \
                 the equation or off"
                    .into(),
            ),
            BatchMode::Multibuffer if mb != gatehouse_mb::Status::Ready => {
                Err(format!("multibuffer cannot run here: {}", mb.label()))
            }
            BatchMode::Multibuffer => Ok(Batching::Multibuffer),
            BatchMode::Auto if !strict && mb == gatehouse_mb::Status::Ready => {
                Ok(Batching::Multibuffer)
            }
            BatchMode::Auto => Ok(equation),
        }
    }
}

/// Fewest signatures a multi-buffer call takes: one call costs about three single checks
/// whatever its live lanes (`cargo run --release -p gatehouse-mb --example speed`: 3 lanes
/// 1.01 x ring, 4 lanes 1.34 x, 8 lanes 2.70 x), so a call pays from four.
pub const MB_FROM: usize = 4;

/// How long a scanner whose token failed singly after a failed equation is kept out of
/// equations (seconds).
pub const SUSPECT_SECS: u64 = 60;

/// Slots of the suspect table (scanner ids hash into them; a collision only sends an honest
/// scanner's signatures to the single checks for a while).
const SUSPECT_SLOTS: usize = 256;

/// How the batch paths have fared: read by `/metrics`.
#[derive(Debug)]
pub struct BatchStats {
    batches: AtomicU64,
    failed: AtomicU64,
    signatures: AtomicU64,
    routed: AtomicU64,
    pub(super) mb_calls: AtomicU64,
    pub(super) mb_signatures: AtomicU64,
    pub(super) mb_unproven: AtomicU64,
    /// Until when (Unix seconds) the scanners hashing to each slot stay out of equations.
    suspects: [AtomicU64; SUSPECT_SLOTS],
}

impl Default for BatchStats {
    fn default() -> Self {
        BatchStats {
            batches: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            signatures: AtomicU64::new(0),
            routed: AtomicU64::new(0),
            mb_calls: AtomicU64::new(0),
            mb_signatures: AtomicU64::new(0),
            mb_unproven: AtomicU64::new(0),
            suspects: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn suspect_slot(scanner: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    scanner.hash(&mut h);
    (h.finish() % SUSPECT_SLOTS as u64) as usize
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

    fn suspect(&self, scanner: &str, now: u64) -> bool {
        self.suspects[suspect_slot(scanner)].load(Ordering::Relaxed) > now
    }

    fn mark_suspect(&self, scanner: &str, now: u64) {
        self.suspects[suspect_slot(scanner)]
            .fetch_max(now.saturating_add(SUSPECT_SECS), Ordering::Relaxed);
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

    /// Signatures of a batch kept out of its equation because their scanner's tokens made an
    /// equation fail recently (checked singly instead).
    pub fn routed(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }

    /// Multi-buffer calls made.
    pub fn mb_calls(&self) -> u64 {
        self.mb_calls.load(Ordering::Relaxed)
    }

    /// Signatures checked in multi-buffer calls.
    pub fn mb_signatures(&self) -> u64 {
        self.mb_signatures.load(Ordering::Relaxed)
    }

    /// Of those, signatures a call did not prove (then checked singly).
    pub fn mb_unproven(&self) -> u64 {
        self.mb_unproven.load(Ordering::Relaxed)
    }
}

/// Which of a token's signatures a batch path already proved.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Proven {
    pub(super) issuer: bool,
    pub(super) device: bool,
}

impl Proven {
    pub(super) const NONE: Proven = Proven {
        issuer: false,
        device: false,
    };

    fn set(&mut self, issuer: bool, proven: bool) {
        if issuer {
            self.issuer = proven;
        } else {
            self.device = proven;
        }
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

/// Which signature of which token a batch entry is.
#[derive(Clone, Copy)]
struct At {
    token: usize,
    issuer: bool,
}

/// The signatures the tokens at `take` need, with the signed bytes each covers: the issuer's
/// where the cache does not vouch for the credential, and the device's where its key is known.
/// A device key not in the cache is parsed (decompressed) once, here; the single path takes it
/// from `parsed`. One that does not parse is denied by the single path's own steps.
fn collect(unsigned: &mut [Result<Unsigned, Reason>], take: impl Fn(usize) -> bool) -> Signed {
    let mut signed = Signed {
        at: Vec::with_capacity(2 * unsigned.len()),
        messages: Vec::with_capacity(2 * unsigned.len()),
    };
    for (i, u) in unsigned.iter_mut().enumerate() {
        let Ok(u) = u else { continue };
        if !take(i) {
            continue;
        }
        if u.cached.is_none() {
            u.parsed = u.token.device_key().ok();
            signed.at.push(At {
                token: i,
                issuer: true,
            });
            signed.messages.push(u.token.credential.to_be_signed());
        }
        if u.cached.is_some() || u.parsed.is_some() {
            signed.at.push(At {
                token: i,
                issuer: false,
            });
            signed.messages.push(u.token.to_be_signed());
        }
    }
    signed
}

struct Signed {
    at: Vec<At>,
    messages: Vec<Vec<u8>>,
}

impl Signed {
    /// Where each entry belongs, with its key, message and signature, in order.
    fn entries<'a>(
        &'a self,
        unsigned: &'a [Result<Unsigned, Reason>],
    ) -> impl Iterator<Item = (At, &'a PublicKey, &'a [u8], &'a Signature)> + 'a {
        self.at
            .iter()
            .zip(&self.messages)
            .filter_map(move |(at, msg)| {
                let u = unsigned[at.token].as_ref().ok()?;
                if at.issuer {
                    Some((
                        *at,
                        &u.issuer,
                        msg.as_slice(),
                        &u.token.credential.signature,
                    ))
                } else {
                    let key = u.cached.as_ref().or(u.parsed.as_ref())?;
                    Some((*at, key, msg.as_slice(), &u.token.signature))
                }
            })
    }
}

impl Engine {
    /// Checks 5–6 of every token of a batch with one equation (see the module docs), leaving
    /// out the tokens of suspect scanners.
    pub(super) fn signatures_batched(
        &self,
        mut unsigned: Vec<Result<Unsigned, Reason>>,
        items: &[Item],
        now: u64,
    ) -> Vec<Result<Checked, Reason>> {
        let stats = &self.batch_stats;
        let suspect: Vec<bool> = items
            .iter()
            .map(|it| stats.suspect(&it.scanner.id, now))
            .collect();
        let signed = collect(&mut unsigned, |i| !suspect[i]);
        let routed: usize = unsigned
            .iter()
            .zip(&suspect)
            .filter(|(u, s)| **s && u.is_ok())
            .map(|(u, _)| match u {
                Ok(u) if u.cached.is_some() => 1,
                _ => 2,
            })
            .sum();
        stats.routed.fetch_add(routed as u64, Ordering::Relaxed);
        let (ats, entries): (Vec<At>, Vec<Entry<'_>>) = signed
            .entries(&unsigned)
            .map(|(at, key, msg, sig)| (at, Entry { key, msg, sig }))
            .unzip();
        let verified = entries.is_empty() || verify_batch(&entries).is_ok();
        if !entries.is_empty() {
            stats.record(entries.len(), verified);
        }
        drop(entries);
        let mut in_equation = vec![false; unsigned.len()];
        let mut proven = vec![Proven::NONE; unsigned.len()];
        for at in ats {
            in_equation[at.token] = true;
            proven[at.token].set(at.issuer, verified);
        }
        unsigned
            .into_iter()
            .zip(proven)
            .enumerate()
            .map(|(i, (u, proven))| {
                let checked = u.and_then(|u| self.signatures(u, proven));
                if !verified
                    && in_equation[i]
                    && matches!(
                        checked,
                        Err(Reason::BadIssuerSignature | Reason::BadDeviceSignature)
                    )
                {
                    stats.mark_suspect(&items[i].scanner.id, now);
                }
                checked
            })
            .collect()
    }

    /// Checks 5–6 of every token of a batch with multi-buffer calls of up to eight signatures
    /// (see the module docs); a last call of fewer than [`MB_FROM`] is left to the singles.
    pub(super) fn signatures_multibuffer(
        &self,
        mut unsigned: Vec<Result<Unsigned, Reason>>,
    ) -> Vec<Result<Checked, Reason>> {
        let stats = &self.batch_stats;
        let signed = collect(&mut unsigned, |_| true);
        let mut proven = vec![Proven::NONE; unsigned.len()];
        let lanes: Vec<(At, Lane<'_>)> = signed
            .entries(&unsigned)
            .map(|(at, key, msg, sig)| (at, Lane { key, msg, sig }))
            .collect();
        for chunk in lanes.chunks(gatehouse_mb::LANES) {
            if chunk.len() < MB_FROM {
                break;
            }
            let call: Vec<Lane<'_>> = chunk.iter().map(|(_, lane)| *lane).collect();
            // Unavailable cannot happen (the path is chosen only where it runs); if it did,
            // nothing is proven and the singles decide.
            let mask = gatehouse_mb::prove8(&call).unwrap_or(0);
            stats.mb_calls.fetch_add(1, Ordering::Relaxed);
            stats
                .mb_signatures
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            for (lane, (at, _)) in chunk.iter().enumerate() {
                if mask & (1 << lane) != 0 {
                    proven[at.token].set(at.issuer, true);
                } else {
                    stats.mb_unproven.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        drop(lanes);
        unsigned
            .into_iter()
            .zip(proven)
            .map(|(u, proven)| u.and_then(|u| self.signatures(u, proven)))
            .collect()
    }
}
