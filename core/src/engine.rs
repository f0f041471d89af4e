//! The verification pipeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use gatehouse_protocol::{
    verify, verify_strict, Backend, Credential, DecodeError, Reason, RevocationList, Token,
    TokenParams, Verdict,
};
use rayon::prelude::*;

mod batched;
mod mdoc;

use batched::Proven;
pub use batched::{BatchMode, BatchStats, Batching, MB_FROM, SUSPECT_SECS};

use super::cache::{CachedCredential, IssuerCache};
use super::mdoc::{Disclosed, MdocCache, MdocItem, MdocRevocations};
use super::registry::{Role, Scanner, ScannerRegistry, TrustList};
use super::replay::{Entry, MarkOutcome, MarkRequest, ReplayGuard};
use super::revocation::{RevocationError, RevocationState, Revocations};

/// Tunables of the engine core.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Token rotation and acceptance window.
    pub params: TokenParams,
    /// How far a token's timestamp may be ahead of the engine's clock (seconds).
    pub clock_skew_secs: u64,
    /// Which implementation verifies signatures.
    pub backend: Backend,
    /// Also check the R y-parity of every signature (costs one p256 verification each).
    pub strict_signatures: bool,
    /// Credentials whose issuer signature is remembered (about 89 bytes each, allocated at
    /// start). The default holds a 1,000,000-holder population with a quarter of headroom.
    pub issuer_cache_capacity: usize,
    /// Live one-time-use entries (size for peak rate × window, with headroom).
    pub replay_capacity: usize,
    /// mdoc documents whose issuer signature and certificate chain are remembered (SPEC §12).
    pub mdoc_cache_capacity: usize,
    /// Offset of the local civil date from UTC, for age checks (Korea: +9 h).
    pub utc_offset_secs: i32,
    /// Signature-verification threads of the engine's own pool (`verify_batch`), and in the
    /// server the most verification turns at once (0: one per core).
    pub threads: usize,
    /// How the signatures of a batch checked on one thread are verified: multi-buffer
    /// (`gatehouse-mb`, AVX-512 IFMA), one multi-scalar equation (`gatehouse-batch`), or one
    /// by one ([`BatchMode`]; `Auto` picks multi-buffer where it runs).
    pub batch: BatchMode,
    /// The equation's crossover: a batch that needs at least this many signatures is checked
    /// with one equation, fewer go one by one. 0: never (with [`BatchMode::Auto`]). An
    /// equation that fails sends every member to the single verifier.
    pub batch_from: usize,
    /// The fence at start: tokens signed before this time (Unix seconds) are denied
    /// `node_restarted`. A node whose one-time-use table lives in memory sets it to
    /// [`restart_fence`](super::restart_fence)`(start, skew)`: it cannot know what it accepted
    /// before it restarted. 0: no fence at start. The fence only moves forward
    /// ([`Engine::raise_fence`]): a shared store that may have forgotten moves it.
    pub accept_from: u64,
}

/// The equation's measured crossover (README, "Batch verification"): from 32 signatures (16
/// tokens of uncached holders) one equation costs less than the single checks.
pub const DEFAULT_BATCH_FROM: usize = 32;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            params: TokenParams::default(),
            clock_skew_secs: 5,
            backend: Backend::Ring,
            strict_signatures: false,
            issuer_cache_capacity: 1_310_720,
            // 20,000 tokens/s over a 30 s window, with a quarter of headroom.
            replay_capacity: 750_000,
            mdoc_cache_capacity: 65_536,
            utc_offset_secs: 9 * 3600,
            threads: 0,
            batch: BatchMode::Auto,
            batch_from: DEFAULT_BATCH_FROM,
            accept_from: 0,
        }
    }
}

/// Why the engine could not start.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The verification thread pool could not start.
    #[error("cannot start the verification pool: {0}")]
    Pool(String),
    /// The revocation state could not be built.
    #[error(transparent)]
    Revocation(#[from] RevocationError),
    /// The batch path configured cannot run here.
    #[error("engine.batch: {0}")]
    Batch(String),
}

/// One token to verify, as a scanner sent it.
#[derive(Debug, Clone)]
pub struct Item {
    /// The scanner that sent it (its role decides the policy).
    pub scanner: Arc<Scanner>,
    /// Token bytes.
    pub token: Vec<u8>,
    /// The challenge the scanner issued, on NFC.
    pub challenge: Option<Vec<u8>>,
    /// The scan's retry key (SPEC §8.6), if the scanner gave one.
    pub retry: Option<[u8; gatehouse_protocol::RETRY_KEY_LEN]>,
    /// An ISO/IEC 18013-5 presentation instead of a token (SPEC §12); `token` is then empty.
    pub mdoc: Option<Arc<MdocItem>>,
}

impl Item {
    /// A token as a scanner sent it, without challenge or retry key.
    pub fn new(scanner: Arc<Scanner>, token: Vec<u8>) -> Item {
        Item {
            scanner,
            token,
            challenge: None,
            retry: None,
            mdoc: None,
        }
    }

    /// An mdoc presentation as a scanner sent it.
    pub fn mdoc(scanner: Arc<Scanner>, mdoc: MdocItem) -> Item {
        Item {
            scanner,
            token: Vec::new(),
            challenge: None,
            retry: None,
            mdoc: Some(Arc::new(mdoc)),
        }
    }
}

/// A batch after the checks that need no store: the verdicts already known, and the marks the
/// one-time-use store must perform before the rest are known. Made by [`Engine::prepare`],
/// finished by [`Engine::complete`] with the store's answers, one per mark, in order.
#[derive(Debug)]
pub struct Prepared {
    slots: Vec<Slot>,
    marks: Vec<MarkRequest>,
}

#[derive(Debug)]
enum Slot {
    /// Denied before one-time use.
    Done(Verdict),
    /// The verdict if the mark is fresh, the retry tag of this scan, and the token's
    /// timestamp (the fence may move while the mark is made).
    Mark(Verdict, Option<[u8; 16]>, u64),
}

impl Prepared {
    /// The marks to perform, in order (a token twice in one batch is marked twice: the second
    /// sees the first).
    pub fn marks(&self) -> &[MarkRequest] {
        &self.marks
    }

    /// Tokens in the batch.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// A token that passed checks 1–4, before its signatures are verified.
struct Unsigned {
    token: Token,
    /// The issuer's key, from the trust list in force.
    issuer: gatehouse_protocol::PublicKey,
    /// The credential's digest, the issuer cache's key.
    digest: [u8; 32],
    /// The device key, when the issuer cache vouches for the credential (no issuer signature
    /// to verify).
    cached: Option<gatehouse_protocol::PublicKey>,
    /// The device key parsed from the token (when not cached), once, by a batch.
    parsed: Option<gatehouse_protocol::PublicKey>,
}

/// What survives the stateless checks: enough to mark the token used and apply policy.
struct Checked {
    replay_id: [u8; 16],
    timestamp: u64,
    expiry: u64,
    subject: Subject,
    challenge: Option<Vec<u8>>,
}

/// What the policy judges: a token's credential, or what an mdoc's issuer signed.
enum Subject {
    Credential(Box<Credential>),
    Mdoc(Box<Disclosed>),
}

const ROLES: usize = 3;
const REASONS: usize = 32;

/// Counters by scanner role and reason: no identifiers, only numbers.
pub struct Stats {
    verdicts: [[AtomicU64; REASONS]; ROLES],
}

impl Stats {
    fn new() -> Self {
        Stats {
            verdicts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    fn count(&self, role: &Role, reason: Reason) {
        self.verdicts[role.index()][usize::from(reason.code()) % REASONS]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Verdicts so far for this role index (gate 0, partner 1, age_check 2) and reason.
    pub fn verdicts(&self, role_index: usize, reason: Reason) -> u64 {
        self.verdicts[role_index % ROLES][usize::from(reason.code()) % REASONS]
            .load(Ordering::Relaxed)
    }
}

/// The gatehouse verification engine: no sockets, no clock. Give it a token, the scanner that
/// sent it and `now` (Unix seconds); it answers with a [`Verdict`].
pub struct Engine {
    config: EngineConfig,
    trust: ArcSwap<TrustList>,
    scanners: ArcSwap<ScannerRegistry>,
    revocations: Revocations,
    cache: IssuerCache,
    replay: ReplayGuard,
    pool: rayon::ThreadPool,
    stats: Stats,
    batch_stats: BatchStats,
    batching: Batching,
    fence: AtomicU64,
    mdoc_trust: ArcSwap<gatehouse_mdoc::TrustAnchors>,
    mdoc_revocations: ArcSwap<MdocRevocations>,
    mdoc_cache: MdocCache,
}

impl Engine {
    /// An engine with this trust list and scanner registry, and nothing revoked.
    pub fn new(
        config: EngineConfig,
        trust: TrustList,
        scanners: ScannerRegistry,
    ) -> Result<Engine, EngineError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name(|i| format!("gatehouse-verify-{i}"))
            .build()
            .map_err(|e| EngineError::Pool(e.to_string()))?;
        let batching = Batching::resolve(config.batch, config.strict_signatures, config.batch_from)
            .map_err(EngineError::Batch)?;
        Ok(Engine {
            batching,
            cache: IssuerCache::new(config.issuer_cache_capacity),
            replay: ReplayGuard::new(config.replay_capacity),
            trust: ArcSwap::from_pointee(trust),
            scanners: ArcSwap::from_pointee(scanners),
            revocations: Revocations::new(RevocationState::empty()?),
            pool,
            stats: Stats::new(),
            batch_stats: BatchStats::default(),
            fence: AtomicU64::new(config.accept_from),
            mdoc_trust: ArcSwap::from_pointee(gatehouse_mdoc::TrustAnchors::default()),
            mdoc_revocations: ArcSwap::from_pointee(MdocRevocations::default()),
            mdoc_cache: MdocCache::new(config.mdoc_cache_capacity),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The registered scanner with this id.
    pub fn scanner(&self, id: &str) -> Option<Arc<Scanner>> {
        self.scanners.load().get(id)
    }

    /// Replaces the trust list; verification in flight finishes with the old one.
    pub fn set_trust(&self, trust: TrustList) {
        self.trust.store(Arc::new(trust));
    }

    /// Replaces the scanner registry.
    pub fn set_scanners(&self, scanners: ScannerRegistry) {
        self.scanners.store(Arc::new(scanners));
    }

    /// Applies a revocation snapshot or delta (built aside, swapped in). Returns the epoch.
    pub fn apply_revocations(&self, list: &RevocationList) -> Result<u64, RevocationError> {
        self.revocations.apply(list)
    }

    /// The revocation state and its age limit (the feed moves the limit; see SPEC §11.4).
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The trust list in force (issuer keys and revocation keys).
    pub fn trust(&self) -> Arc<TrustList> {
        self.trust.load_full()
    }

    /// The revocation epoch in force and its size.
    pub fn revocation_epoch(&self) -> (u64, usize) {
        let r = self.revocations.load();
        (r.epoch(), r.len())
    }

    /// The first token timestamp this node may accept (Unix seconds): tokens signed before it
    /// are denied `node_restarted`.
    pub fn accept_from(&self) -> u64 {
        self.fence.load(Ordering::Acquire)
    }

    /// Moves the fence forward to `accept_from` (never back): the node learned that one-time
    /// use before that moment may have been forgotten. Returns whether it moved.
    pub fn raise_fence(&self, accept_from: u64) -> bool {
        self.fence.fetch_max(accept_from, Ordering::AcqRel) < accept_from
    }

    /// Drops one-time-use entries whose window has passed.
    pub fn purge(&self, now: u64) {
        self.replay.purge(now);
    }

    /// (issuer-cache hits, misses), live one-time-use entries, and the table's capacity.
    pub fn occupancy(&self) -> ((u64, u64), usize, usize) {
        (
            self.cache.stats(),
            self.replay.len(),
            self.replay.capacity(),
        )
    }

    /// The issuer cache and the one-time-use table, for benches and memory measurements.
    #[doc(hidden)]
    pub fn tables(&self) -> (&IssuerCache, &ReplayGuard) {
        (&self.cache, &self.replay)
    }

    /// Verdict counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// How the batch equation has fared ([`EngineConfig::batch_from`]).
    pub fn batch_stats(&self) -> &BatchStats {
        &self.batch_stats
    }

    /// The batch path this engine runs ([`EngineConfig::batch`], resolved at start).
    pub fn batching(&self) -> Batching {
        self.batching
    }

    /// Verifies one token on the calling thread, with the engine's memory one-time-use table.
    pub fn verify(
        &self,
        scanner: &Arc<Scanner>,
        token: &[u8],
        challenge: Option<&[u8]>,
        now: u64,
    ) -> Verdict {
        let item = Item {
            scanner: Arc::clone(scanner),
            token: token.to_vec(),
            challenge: challenge.map(<[u8]>::to_vec),
            retry: None,
            mdoc: None,
        };
        self.verify_batch(std::slice::from_ref(&item), now)
            .pop()
            .unwrap_or(Verdict::deny(Reason::Unavailable))
    }

    /// Verifies many tokens together, with the engine's memory one-time-use table: the
    /// expensive checks run in parallel on the verification pool, then one-time use and policy
    /// run in order, so the verdicts are exactly those of verifying the items one by one, in
    /// order. Blocks the caller: call it from a plain thread (or see [`Engine::submit`] from
    /// async code).
    pub fn verify_batch(&self, items: &[Item], now: u64) -> Vec<Verdict> {
        let prepared = self.prepare(items, now);
        let outcomes = self.replay.mark_all(prepared.marks(), now);
        self.complete(prepared, &outcomes, items)
    }

    /// [`Engine::verify_batch`] with every check on the calling thread, one after another: for
    /// a shell that runs one batch per verification thread itself (a thread waiting for its
    /// batch's parallel parts could otherwise be handed another batch meanwhile).
    pub fn verify_batch_serial(&self, items: &[Item], now: u64) -> Vec<Verdict> {
        let prepared = self.prepare_serial(items, now);
        let outcomes = self.replay.mark_all(prepared.marks(), now);
        self.complete(prepared, &outcomes, items)
    }

    /// Everything up to one-time use, for a store of the caller's ([`Prepared::marks`] says
    /// what to mark; [`Engine::complete`] takes the answers). The signature checks of a batch
    /// of more than one run in parallel on the verification pool: call it from a plain thread.
    pub fn prepare(&self, items: &[Item], now: u64) -> Prepared {
        self.prepare_with(items, now, true)
    }

    /// [`Engine::prepare`] with every check on the calling thread (see
    /// [`Engine::verify_batch_serial`]).
    pub fn prepare_serial(&self, items: &[Item], now: u64) -> Prepared {
        self.prepare_with(items, now, false)
    }

    fn prepare_with(&self, items: &[Item], now: u64, parallel: bool) -> Prepared {
        let trust = self.trust.load();
        let rev = self.revocations.load();
        let mut checked: Vec<Result<Checked, Reason>> = if parallel && items.len() > 1 {
            self.pool.install(|| {
                items
                    .par_iter()
                    .map(|it| self.check(&it.token, now, &trust, &rev))
                    .collect()
            })
        } else {
            let unsigned: Vec<Result<Unsigned, Reason>> = items
                .iter()
                .map(|it| self.precheck(&it.token, now, &trust, &rev))
                .collect();
            match self.batching {
                Batching::Equation(from) if batched::needed(&unsigned) >= from => {
                    self.signatures_batched(unsigned, items, now)
                }
                Batching::Multibuffer if batched::needed(&unsigned) >= MB_FROM => {
                    self.signatures_multibuffer(unsigned)
                }
                _ => unsigned
                    .into_iter()
                    .map(|u| u.and_then(|u| self.signatures(u, Proven::NONE)))
                    .collect(),
            }
        };
        // An mdoc item carries no token: the token checks above denied its empty token at once
        // (`malformed`, no signature counted); its own checks (SPEC §12.2) decide instead.
        self.check_mdocs(items, &mut checked, now);
        let mut marks = Vec::with_capacity(items.len());
        let slots = checked
            .into_iter()
            .zip(items)
            .map(|(c, it)| match c {
                Err(reason) => Slot::Done(Verdict::deny(reason)),
                Ok(c) => {
                    let verdict = self.decide(&c, &it.scanner, it.challenge.as_deref(), now);
                    let retry = it
                        .retry
                        .map(|key| gatehouse_protocol::retry_tag(&it.scanner.id, &key));
                    marks.push(MarkRequest {
                        replay_id: c.replay_id,
                        expiry: c.expiry.max(now + 1),
                        entry: Entry {
                            reason: verdict.reason,
                            retry,
                        },
                    });
                    Slot::Mark(verdict, retry, c.timestamp)
                }
            })
            .collect();
        Prepared { slots, marks }
    }

    /// Turns the store's answers (one per [`Prepared::marks`], in order; a missing answer is
    /// `unavailable`) into the batch's verdicts, and counts them. `items` is the batch
    /// [`Engine::prepare`] was given.
    pub fn complete(
        &self,
        prepared: Prepared,
        outcomes: &[MarkOutcome],
        items: &[Item],
    ) -> Vec<Verdict> {
        let mut outcomes = outcomes.iter();
        prepared
            .slots
            .into_iter()
            .zip(items)
            .map(|(slot, it)| {
                let verdict = match slot {
                    Slot::Done(v) => v,
                    Slot::Mark(v, retry, timestamp) => match outcomes.next() {
                        // The store's answer moved the fence past this token (it may have
                        // forgotten a first use): the fence's denial, for a retry too.
                        Some(MarkOutcome::Fresh | MarkOutcome::Taken(_))
                            if timestamp < self.accept_from() =>
                        {
                            Verdict::deny(Reason::NodeRestarted)
                        }
                        Some(MarkOutcome::Fresh) => v,
                        Some(MarkOutcome::Taken(first)) => match (retry, first.retry) {
                            // The same scanner's retry of the same scan: its first answer.
                            (Some(mine), Some(theirs)) if mine == theirs => {
                                if v.reason == first.reason {
                                    v.repeated()
                                } else {
                                    Verdict::deny(first.reason).repeated()
                                }
                            }
                            _ => Verdict::deny(Reason::Replayed),
                        },
                        Some(MarkOutcome::Full) => Verdict::deny(Reason::ReplayCapacity),
                        Some(MarkOutcome::Unavailable) | None => Verdict::deny(Reason::Unavailable),
                    },
                };
                self.stats.count(&it.scanner.role, verdict.reason);
                verdict
            })
            .collect()
    }

    /// Queues a batch on the verification pool and returns at once; `done` receives the
    /// verdicts (in item order) on a pool thread. This is how async code hands work over
    /// without blocking a runtime worker.
    pub fn submit(
        self: &Arc<Self>,
        items: Vec<Item>,
        now: u64,
        done: impl FnOnce(Vec<Verdict>) + Send + 'static,
    ) {
        let engine = Arc::clone(self);
        self.pool
            .spawn(move || done(engine.verify_batch(&items, now)));
    }

    /// Checks 1–6 of the SPEC: everything that needs no mutable state, cheapest first.
    fn check(
        &self,
        bytes: &[u8],
        now: u64,
        trust: &TrustList,
        rev: &RevocationState,
    ) -> Result<Checked, Reason> {
        let unsigned = self.precheck(bytes, now, trust, rev)?;
        self.signatures(unsigned, Proven::NONE)
    }

    /// Checks 1–4 and the issuer cache: everything before a signature is verified.
    fn precheck(
        &self,
        bytes: &[u8],
        now: u64,
        trust: &TrustList,
        rev: &RevocationState,
    ) -> Result<Unsigned, Reason> {
        let token = Token::decode(bytes).map_err(|e| match e {
            DecodeError::UnsupportedVersion(_) => Reason::UnsupportedVersion,
            _ => Reason::Malformed,
        })?;
        let signed = &token.credential;
        let c = &signed.credential;

        let issuer = trust.get(&signed.issuer_kid).ok_or(Reason::UnknownIssuer)?;
        if issuer.retired || now >= issuer.not_after || c.not_before < issuer.not_before {
            return Err(Reason::IssuerKeyNotValid);
        }

        c.validity_at(now)?;

        if token.timestamp > now.saturating_add(self.config.clock_skew_secs) {
            return Err(Reason::FromFuture);
        }
        if now.saturating_sub(token.timestamp) >= self.config.params.window_secs {
            return Err(Reason::Stale);
        }
        if token.timestamp < self.accept_from() {
            return Err(Reason::NodeRestarted);
        }

        // Fail closed on a revocation state too old to vouch for (SPEC §11.4).
        if !self.revocations.in_force_at(now) {
            return Err(Reason::RevocationsStale);
        }
        if rev.revokes(c) {
            return Err(Reason::Revoked);
        }

        let digest = signed.digest();
        let cached = match self.cache.get(&digest) {
            Some(hit) if hit.issuer_kid == signed.issuer_kid => Some(hit.device_key),
            _ => None,
        };
        Ok(Unsigned {
            token,
            issuer: issuer.public.clone(),
            digest,
            cached,
            parsed: None,
        })
    }

    /// Checks 5–6, the signatures, of a token that passed the others: the issuer's (unless
    /// the cache vouches for the credential) and the device's. `proven`: which of them a batch
    /// path already proved; for those only what the single path would also do (parse the
    /// device key, remember the credential) is left.
    fn signatures(&self, u: Unsigned, proven: Proven) -> Result<Checked, Reason> {
        let Unsigned {
            token,
            issuer,
            digest,
            cached,
            parsed,
        } = u;
        let signed = &token.credential;
        let device_key = match cached {
            Some(key) => key,
            None => {
                if !proven.issuer {
                    self.check_signature(&issuer, &signed.to_be_signed(), &signed.signature)
                        .map_err(|_| Reason::BadIssuerSignature)?;
                }
                let device_key = match parsed {
                    Some(key) => key,
                    None => token.device_key().map_err(|_| Reason::BadDeviceSignature)?,
                };
                self.cache.insert(
                    digest,
                    CachedCredential {
                        device_key: device_key.clone(),
                        issuer_kid: signed.issuer_kid,
                    },
                );
                device_key
            }
        };
        if !proven.device {
            self.check_signature(&device_key, &token.to_be_signed(), &token.signature)
                .map_err(|_| Reason::BadDeviceSignature)?;
        }

        let replay_id = token.replay_id();
        let expiry = token
            .timestamp
            .saturating_add(self.config.params.window_secs);
        let Token {
            credential,
            challenge,
            ..
        } = token;
        Ok(Checked {
            replay_id,
            timestamp: token.timestamp,
            expiry,
            subject: Subject::Credential(Box::new(credential.credential)),
            challenge,
        })
    }

    fn check_signature(
        &self,
        key: &gatehouse_protocol::PublicKey,
        msg: &[u8],
        sig: &gatehouse_protocol::Signature,
    ) -> Result<(), gatehouse_protocol::SignatureError> {
        if self.config.strict_signatures {
            verify_strict(key, msg, sig)
        } else {
            verify(self.config.backend, key, msg, sig)
        }
    }

    /// Checks 8–9: the scanner's challenge and its role's policy. One-time use (check 7) is
    /// the store's; this is the verdict should the token prove fresh.
    fn decide(
        &self,
        c: &Checked,
        scanner: &Scanner,
        challenge: Option<&[u8]>,
        now: u64,
    ) -> Verdict {
        // Both absent (QR), or equal (NFC): a token made for one scanner's challenge, or one
        // carrying a challenge shown where none was asked, is not accepted.
        if challenge != c.challenge.as_deref() {
            return Verdict::deny(Reason::ChallengeMismatch);
        }
        match &c.subject {
            Subject::Credential(credential) => {
                super::policy::decide(&scanner.role, credential, now, self.config.utc_offset_secs)
            }
            Subject::Mdoc(disclosed) => {
                super::policy::decide_mdoc(scanner, disclosed, now, self.config.utc_offset_secs)
            }
        }
    }
}
