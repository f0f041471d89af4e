//! The rush's schedule: Poisson arrivals, each a holder at a scanner its kind would visit,
//! with a token signed ahead and the verdict the population implies.
//!
//! Two passes: the drafts (arrival times, holders, scanners, kinds) are drawn sequentially
//! from one seeded generator, so the schedule is the same on every run; the tokens are then
//! signed in parallel. With `--mdoc-share`, a share of the genuine presentations are ISO/IEC
//! 18013-5 presentations of the pool's mDLs instead (chosen per request, [`super::mdoc`]),
//! made in the same parallel pass.

use std::collections::BTreeMap;
use std::time::Duration;

use gatehouse_engine::dev::mdoc_population::MdocPopulation;
use gatehouse_engine::dev::population::{
    derive_id, derive_key, effective_revoked, expected, repeated, Population, Presented,
};
use gatehouse_engine::dev::rng::SplitMix64;
use gatehouse_engine::Role;
use gatehouse_protocol::{Attributes, Credential, MdocRequest, Presentation, Reason};
use rayon::prelude::*;

use super::mdoc::{self, MdocMix};
use super::options::DemoOptions;

/// What a request sends.
#[derive(Clone)]
pub enum Payload {
    /// A rotating token (Verify).
    Token(Vec<u8>),
    /// An ISO/IEC 18013-5 presentation (VerifyMdoc).
    Mdoc(Box<MdocRequest>),
}

/// One planned request.
#[derive(Clone)]
pub struct Planned {
    /// Offset of the intended send time from the start.
    pub at: Duration,
    /// Index of the scanner connection to send it on.
    pub scanner: usize,
    /// What is sent: token bytes, or an mdoc presentation.
    pub payload: Payload,
    /// The verdict's reason the population implies.
    pub expect: Reason,
    /// For a fresh mdoc presentation, the attributes its verdict must carry too (the pool
    /// says the whole verdict); `None` where only the reason is known.
    pub attributes: Option<Attributes>,
    /// For replays: index of the request whose token this repeats (sent first).
    pub after: Option<usize>,
}

/// The request mix (per mille): the rest are valid presentations.
const MIX_REPLAY: u64 = 30;
/// Forged presentations, per mille.
const MIX_FORGED: u64 = 20;
/// Garbage bytes, per mille.
const MIX_GARBAGE: u64 = 20;

/// Plans the rush: Poisson arrivals at `rate`, each a holder at a scanner its kind would
/// visit, with the verdict the population implies. Tokens are signed (and mdoc presentations
/// made, from `mdocs` when given) here, before the clock starts, with timestamp `now` (the
/// rush is shorter than the acceptance window).
pub fn plan(
    pop: &Population,
    mdocs: Option<&MdocPopulation>,
    scanner_ids: &[String],
    opts: &DemoOptions,
    now: u64,
    utc_offset: i32,
) -> Vec<Planned> {
    let mix = MdocMix::new(
        scanner_ids,
        opts.mdoc_share,
        mdocs.map_or(0, |m| m.holders.len()),
    );
    let drafts = draft(pop, &Venues::new(scanner_ids), &mix, opts);
    let signer = Signer {
        pop,
        mdocs,
        revoked: effective_revoked(&pop.holders, &pop.revocations),
        scanner_ids,
        now,
        utc_offset,
    };
    let signed: Vec<Signed> = drafts
        .par_iter()
        .enumerate()
        .map(|(i, d)| signer.request(i, d))
        .collect();
    let mut out: Vec<Planned> = drafts
        .iter()
        .zip(signed)
        .map(|(d, s)| Planned {
            at: Duration::from_secs_f64(d.at),
            scanner: d.scanner,
            payload: s.payload,
            expect: s.expect,
            attributes: s.attributes,
            after: d.replay_of,
        })
        .collect();
    link_replays(&mut out);
    out
}

/// One request of the schedule before its token is signed.
struct Draft {
    /// Intended send time, seconds from the start.
    at: f64,
    /// Index of the holder presenting.
    holder: usize,
    /// Index of the scanner connection.
    scanner: usize,
    /// Per mille draw of the mix: replay, forged, garbage, or (the rest) valid.
    kind: u64,
    /// For a replay: the request it repeats.
    replay_of: Option<usize>,
    /// For an mdoc presentation: its holder in the pool (its scanner is `scanner`).
    mdoc: Option<usize>,
}

impl Draft {
    /// A valid presentation that is not itself a replay: what a replay may repeat.
    fn is_original(&self) -> bool {
        self.kind >= MIX_REPLAY + MIX_FORGED + MIX_GARBAGE && self.replay_of.is_none()
    }
}

/// The scanners by where a holder may go: its unit's gate (or welfare counter), a partner, an
/// age check.
struct Venues<'a> {
    /// Scanner index by id.
    index: BTreeMap<&'a str, usize>,
    /// The partners' scanners.
    partners: Vec<usize>,
    /// The age checks' scanners.
    ages: Vec<usize>,
    /// All scanners.
    count: usize,
}

/// The indices of the scanners whose ids start with `prefix`.
pub(super) fn starting_with(scanner_ids: &[String], prefix: &str) -> Vec<usize> {
    scanner_ids
        .iter()
        .enumerate()
        .filter(|(_, s)| s.starts_with(prefix))
        .map(|(i, _)| i)
        .collect()
}

impl<'a> Venues<'a> {
    /// Sorts the scanners by what their ids say they are.
    fn new(scanner_ids: &'a [String]) -> Venues<'a> {
        let starting = |prefix: &str| starting_with(scanner_ids, prefix);
        Venues {
            index: scanner_ids
                .iter()
                .enumerate()
                .map(|(i, s)| (s.as_str(), i))
                .collect(),
            partners: starting("partner"),
            ages: starting("age"),
            count: scanner_ids.len(),
        }
    }

    /// The scanner a holder of `c` shows the token to: six times in ten its unit's gate (the
    /// welfare counter for family), three a partner, one an age check; any scanner where
    /// there is none of the kind.
    fn pick(&self, c: &Credential, rng: &mut SplitMix64) -> usize {
        let gate = if c.category.is_family() {
            "welfare"
        } else {
            "gate"
        };
        let gate_id = format!("{gate}-{}-{}", c.unit.levels()[0], c.unit.levels()[1]);
        let scanner = match rng.below(10) {
            0..=5 => self.index.get(gate_id.as_str()).copied(),
            6..=8 => self
                .partners
                .get(rng.below(self.partners.len() as u64) as usize)
                .copied(),
            _ => self
                .ages
                .get(rng.below(self.ages.len() as u64) as usize)
                .copied(),
        };
        // Drawn whether it is needed or not: the schedule stays the same.
        let any = rng.below(self.count as u64) as usize;
        scanner.unwrap_or(any)
    }
}

/// Pass 1: arrival times, holders, scanners and kinds (cheap, sequential, from one seed), and
/// which genuine presentations are mdoc ones (from a generator of their own per request, so
/// the tokens' schedule does not depend on the share).
fn draft(pop: &Population, venues: &Venues<'_>, mix: &MdocMix, opts: &DemoOptions) -> Vec<Draft> {
    let mut rng = SplitMix64(0x6a7e_4008);
    let mut t = 0.0f64;
    let n = (opts.rate * opts.seconds).ceil() as usize;
    let mut drafts: Vec<Draft> = Vec::with_capacity(n);
    for _ in 0..n {
        t += -(1.0 - rng.unit()).ln() / opts.rate;
        if t >= opts.seconds {
            break;
        }
        let holder = rng.below(pop.holders.len() as u64) as usize;
        let scanner = venues.pick(&pop.holders[holder].credential, &mut rng);
        let kind = rng.below(1000);
        let replay_of = if kind < MIX_REPLAY {
            replay_target(&drafts, t, &mut rng)
        } else {
            None
        };
        // A replay with nothing to repeat is a valid presentation instead.
        let kind = if kind < MIX_REPLAY && replay_of.is_none() {
            999
        } else {
            kind
        };
        let genuine = kind >= MIX_REPLAY + MIX_FORGED + MIX_GARBAGE && replay_of.is_none();
        let mdoc = genuine.then(|| mix.pick(drafts.len())).flatten();
        drafts.push(Draft {
            at: t,
            holder,
            scanner: mdoc.map_or(scanner, |(_, s)| s),
            kind,
            replay_of,
            mdoc: mdoc.map(|(h, _)| h),
        });
    }
    drafts
}

/// The request a replay at `t` repeats: a valid original sent at least 0.5 s earlier (one of
/// the 50 before the latest such), if any.
fn replay_target(drafts: &[Draft], t: f64, rng: &mut SplitMix64) -> Option<usize> {
    let cutoff = t - 0.5;
    drafts
        .iter()
        .rposition(|d| d.at <= cutoff && d.is_original())
        .map(|j| j.saturating_sub(rng.below(50) as usize))
        .filter(|&j| drafts[j].is_original())
}

/// A draft's request, made: what is sent and what its verdict must be.
struct Signed {
    /// The token or presentation.
    payload: Payload,
    /// The verdict's reason.
    expect: Reason,
    /// The verdict's attributes, where known (fresh mdoc presentations).
    attributes: Option<Attributes>,
}

impl Signed {
    /// A token and the reason its verdict must give.
    fn token(token: Vec<u8>, expect: Reason) -> Signed {
        Signed {
            payload: Payload::Token(token),
            expect,
            attributes: None,
        }
    }
}

/// Pass 2: signs each draft's token and says the verdict the population implies.
struct Signer<'a> {
    /// The holders and their scanners.
    pop: &'a Population,
    /// The mDL pool, when the rush has an mdoc share.
    mdocs: Option<&'a MdocPopulation>,
    /// Per holder: revoked, directly or through its sponsor.
    revoked: Vec<bool>,
    /// Scanner ids by index.
    scanner_ids: &'a [String],
    /// The tokens' timestamp.
    now: u64,
    /// The engine's UTC offset (for birthdays).
    utc_offset: i32,
}

impl Signer<'_> {
    /// Request `i`'s token (or mdoc presentation) and expected verdict (a replay's are its
    /// original's, filled in later).
    fn request(&self, i: usize, d: &Draft) -> Signed {
        if d.replay_of.is_some() {
            return Signed::token(Vec::new(), Reason::Replayed);
        }
        if d.kind < MIX_REPLAY + MIX_FORGED {
            let (t, expect) = self.forged(i, d);
            return Signed::token(t, expect);
        }
        if d.kind < MIX_REPLAY + MIX_FORGED + MIX_GARBAGE {
            return Signed::token(garbage(i), Reason::Malformed);
        }
        if let (Some(holder), Some(pool)) = (d.mdoc, self.mdocs) {
            return self.mdoc(pool, holder, i, d);
        }
        let h = &self.pop.holders[d.holder];
        let t = h
            .present(self.now, derive_id("demo nonce", i as u64), None)
            .unwrap_or_default();
        Signed::token(t, self.expected(d, Presented::Genuine))
    }

    /// Request `i`'s mdoc presentation by pool holder `holder`, and the whole verdict the pool
    /// implies at the draft's scanner.
    fn mdoc(&self, pool: &MdocPopulation, holder: usize, i: usize, d: &Draft) -> Signed {
        let Some(scanner) = self.pop.scanners.get(&self.scanner_ids[d.scanner]) else {
            // Every scanner of the schedule is one of the population's.
            return Signed::token(Vec::new(), Reason::Malformed);
        };
        let (request, verdict) =
            mdoc::present(pool, holder, i, &scanner, self.now, self.utc_offset);
        Signed {
            payload: Payload::Mdoc(Box::new(request)),
            expect: verdict.reason,
            attributes: Some(verdict.attributes),
        }
    }

    /// A presentation of the holder's credential signed by a key that is not its device key.
    fn forged(&self, i: usize, d: &Draft) -> (Vec<u8>, Reason) {
        let h = &self.pop.holders[d.holder];
        let thief = derive_key("demo thief", i as u64 % 64);
        let t = Presentation {
            credential: &h.issued,
            timestamp: self.now,
            nonce: derive_id("demo nonce", i as u64),
            challenge: None,
        }
        .sign(&thief);
        (t.unwrap_or_default(), self.expected(d, Presented::Forged))
    }

    /// The verdict the population implies for the draft's holder at its scanner.
    fn expected(&self, d: &Draft, presented: Presented) -> Reason {
        let role = &self
            .pop
            .scanners
            .get(&self.scanner_ids[d.scanner])
            .map(|s| s.role.clone())
            .unwrap_or(Role::Partner);
        expected(
            &self.pop.holders[d.holder].credential,
            self.revoked[d.holder],
            role,
            presented,
            self.now,
            self.utc_offset,
        )
    }
}

/// Request `i`'s garbage: 1 to 400 bytes that are no token.
fn garbage(i: usize) -> Vec<u8> {
    let len = 1 + (i * 7919) % 400;
    (0..len)
        .map(|j| derive_id("garbage", (i * 1000 + j) as u64)[0])
        .collect()
}

/// A replay repeats its original's bytes (a token's, or an mdoc presentation's: the same
/// session). If the original reached one-time use, the repeat is a replay wherever it is
/// shown; if it was refused before (revoked, expired, forged), the repeat is refused for the
/// same reason.
fn link_replays(out: &mut [Planned]) {
    for i in 0..out.len() {
        if let Some(j) = out[i].after {
            let orig = out[j].expect;
            out[i].payload = out[j].payload.clone();
            out[i].expect = repeated(orig);
            out[i].attributes = None;
        }
    }
}
