//! The morning rush: from holders to requests per second, a compressed test plan (ramp up,
//! peak, ramp down), and the open-loop schedule of arrivals (Poisson) drawn from it.
//!
//! # From holders to the peak rate
//!
//! ```text
//! peak_rps = holders × share / (rush_minutes × 60) × peak_factor
//! 1,000,000 × 0.6 / 3,600 s × 3 = 500 requests per second
//! ```
//!
//! `share` is the part of the fleet that presents a token during the rush, `rush_minutes` the
//! length of the rush, `peak_factor` how much the busiest minute exceeds the rush's average.
//! The test plan keeps the model's *rates* and compresses its *time*: the rate climbs to the
//! peak, holds it, and falls back, in seconds or minutes instead of an hour.
//!
//! Pure: no IO, no clock. A schedule is a function of the plan, the fleet and a seed.

use gatehouse_engine::Role;
use gatehouse_protocol::Credential;
use serde::Serialize;

/// The parametric morning rush.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RushModel {
    /// Holders the model describes (need not be the size of the generated fleet).
    pub holders: u64,
    /// Share of holders who present a token during the rush.
    pub share: f64,
    /// Length of the rush, minutes.
    pub rush_minutes: f64,
    /// Peak rate over the rush's average rate.
    pub peak_factor: f64,
}

impl Default for RushModel {
    fn default() -> Self {
        RushModel {
            holders: 1_000_000,
            share: 0.6,
            rush_minutes: 60.0,
            peak_factor: 3.0,
        }
    }
}

impl RushModel {
    /// Presentations during the whole rush.
    pub fn presentations(&self) -> f64 {
        self.holders as f64 * self.share
    }

    /// Average requests per second over the rush.
    pub fn mean_rps(&self) -> f64 {
        self.presentations() / (self.rush_minutes * 60.0)
    }

    /// Requests per second at the peak of the rush.
    pub fn peak_rps(&self) -> f64 {
        self.mean_rps() * self.peak_factor
    }

    /// The arithmetic, for people.
    pub fn explain(&self) -> String {
        format!(
            "{} holders × {} share / ({} min × 60 s) × peak factor {} = {:.1} req/s at the peak (mean {:.1} req/s)",
            self.holders,
            self.share,
            self.rush_minutes,
            self.peak_factor,
            self.peak_rps(),
            self.mean_rps()
        )
    }
}

/// Part of the test plan an arrival falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The rate climbs linearly from zero to the peak.
    RampUp,
    /// The rate holds at the peak.
    Peak,
    /// The rate falls linearly to zero.
    RampDown,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 3] = [Phase::RampUp, Phase::Peak, Phase::RampDown];

    /// Stable name.
    pub fn label(self) -> &'static str {
        match self {
            Phase::RampUp => "ramp_up",
            Phase::Peak => "peak",
            Phase::RampDown => "ramp_down",
        }
    }
}

/// A compressed test plan: a trapezoid of rate over time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Plan {
    /// Seconds of ramp up.
    pub ramp_up_secs: f64,
    /// Seconds at the peak rate.
    pub peak_secs: f64,
    /// Seconds of ramp down.
    pub ramp_down_secs: f64,
    /// The peak rate, requests per second.
    pub peak_rps: f64,
}

impl Plan {
    /// A constant rate for `secs` (a capacity-sweep step).
    pub fn constant(rps: f64, secs: f64) -> Plan {
        Plan {
            ramp_up_secs: 0.0,
            peak_secs: secs,
            ramp_down_secs: 0.0,
            peak_rps: rps,
        }
    }

    /// Length of the plan, seconds.
    pub fn duration(&self) -> f64 {
        self.ramp_up_secs + self.peak_secs + self.ramp_down_secs
    }

    /// The phase at `t` seconds.
    pub fn phase_at(&self, t: f64) -> Phase {
        if t < self.ramp_up_secs {
            Phase::RampUp
        } else if t < self.ramp_up_secs + self.peak_secs {
            Phase::Peak
        } else {
            Phase::RampDown
        }
    }

    /// The arrival rate at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        match self.phase_at(t) {
            Phase::RampUp => self.peak_rps * t / self.ramp_up_secs,
            Phase::Peak => self.peak_rps,
            Phase::RampDown => {
                let into = t - self.ramp_up_secs - self.peak_secs;
                (self.peak_rps * (1.0 - into / self.ramp_down_secs)).max(0.0)
            }
        }
    }

    /// Expected number of arrivals.
    pub fn expected_requests(&self) -> f64 {
        self.peak_rps * (self.ramp_up_secs / 2.0 + self.peak_secs + self.ramp_down_secs / 2.0)
    }
}

/// The share (per mille) of each adversarial kind of request; the rest are genuine. Of the
/// genuine ones, `mdoc_share` are ISO/IEC 18013-5 mdoc presentations instead of tokens.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Mix {
    /// A token already used, shown again (a screenshot).
    pub replay: u32,
    /// A token signed by a key that is not the credential's device key.
    pub forged: u32,
    /// Bytes that are not a token.
    pub garbage: u32,
    /// A token an hour old.
    pub stale: u32,
    /// The share (0 to 1) of genuine arrivals that are mdoc presentations (`--mdoc-share`).
    pub mdoc_share: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            replay: 30,
            forged: 20,
            garbage: 10,
            stale: 10,
            mdoc_share: 0.0,
        }
    }
}

/// What kind of request an arrival is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A fresh token, signed by the holder's device.
    Genuine,
    /// A fresh ISO/IEC 18013-5 presentation (VerifyMdoc) of the mDL pool's holder
    /// `holder mod pool`, in a reader session of its own.
    Mdoc,
    /// Signed by the wrong key.
    Forged,
    /// Not a token.
    Garbage,
    /// Timestamp an hour old.
    Stale,
    /// The same bytes as arrival `of` (sent earlier), shown again.
    Replay {
        /// Index of the original arrival.
        of: u32,
    },
}

/// Which traffic a request belongs to, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// A genuine token at a base gate (or a welfare-facility gate).
    Gate,
    /// A genuine token at a partner's point of sale (military discount).
    Partner,
    /// A genuine token at an age-check counter.
    Age,
    /// A fresh mdoc presentation, at a gate, a partner or an age-check counter (as tokens).
    Mdoc,
    /// Replays, forgeries, garbage and stale tokens, wherever shown.
    Adversarial,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 5] = [
        Scenario::Gate,
        Scenario::Partner,
        Scenario::Age,
        Scenario::Mdoc,
        Scenario::Adversarial,
    ];

    /// Stable name.
    pub fn label(self) -> &'static str {
        match self {
            Scenario::Gate => "gate",
            Scenario::Partner => "partner",
            Scenario::Age => "age",
            Scenario::Mdoc => "mdoc",
            Scenario::Adversarial => "adversarial",
        }
    }
}

/// One planned request.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Intended send time, seconds from the start.
    pub at: f64,
    /// Holder index in the fleet.
    pub holder: u32,
    /// Scanner index (in [`ScannerSet`] order).
    pub scanner: u16,
    /// What is sent.
    pub kind: Kind,
    /// Where in the plan it falls.
    pub phase: Phase,
    /// Which traffic it is.
    pub scenario: Scenario,
}

/// The scanners requests are sent from, with what the schedule needs to pick one.
#[derive(Debug, Clone)]
pub struct ScannerSet {
    /// Scanner ids, in index order.
    pub ids: Vec<String>,
    /// Their roles.
    pub roles: Vec<Role>,
}

impl ScannerSet {
    /// From a registry, in its iteration order.
    pub fn new(registry: &gatehouse_engine::ScannerRegistry) -> ScannerSet {
        let mut pairs: Vec<(String, Role)> = registry
            .iter()
            .map(|s| (s.id.clone(), s.role.clone()))
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        ScannerSet {
            ids: pairs.iter().map(|p| p.0.clone()).collect(),
            roles: pairs.into_iter().map(|p| p.1).collect(),
        }
    }

    fn index(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|s| s == id)
    }

    fn with_prefix(&self, prefix: &str) -> Vec<u16> {
        self.ids
            .iter()
            .enumerate()
            .filter(|(_, s)| s.starts_with(prefix))
            .map(|(i, _)| i as u16)
            .collect()
    }

    /// The gate a holder's unit passes (its division's gate; the welfare gate for family).
    pub fn home_gate(&self, c: &Credential) -> Option<u16> {
        let l = c.unit.levels();
        let kind = if c.category.is_family() {
            "welfare"
        } else {
            "gate"
        };
        self.index(&format!(
            "{kind}-{}-{}",
            l.first().copied().unwrap_or(0),
            l.get(1).copied().unwrap_or(0)
        ))
        .map(|i| i as u16)
    }
}

/// One part of a run split over several harness processes (machines): `--shard I/N`, 1-based,
/// as `cargo nextest --partition count:I/N`. Scanner `s` (0-based, in [`ScannerSet`] order)
/// belongs to shard `(s mod N) + 1`; a shard sends, signs, checks and times only its scanners'
/// requests. A replay is shown where its original was (the same scanner), so it is always in
/// its original's shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Shard {
    /// This shard, 1..=count.
    pub index: usize,
    /// Shards in the run.
    pub count: usize,
}

impl Shard {
    /// The whole run in one process.
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// Whether scanner `scanner` (0-based) belongs to this shard.
    pub fn owns(&self, scanner: usize) -> bool {
        scanner % self.count.max(1) + 1 == self.index
    }

    /// Whether the run is split at all.
    pub fn is_split(&self) -> bool {
        self.count > 1
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N`, 1 ≤ I ≤ N ≤ 1024.
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("--shard {s:?}: give I/N, 1 ≤ I ≤ N (as 2/3)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count || count > 1024 {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// The fingerprint of a drawn plan: everything that decides the schedule (the plan's shape
/// and rate, the mix and its mdoc share, the seed and the run's salt, the fleet, the
/// scanners, the request limit). Shards of one run carry the same one; `merge` refuses shards
/// whose fingerprints differ. A plan without mdoc has the fingerprint it had before the share
/// existed.
pub fn fingerprint(
    plan: &Plan,
    mix: &Mix,
    seed: u64,
    salt: u64,
    fleet_len: usize,
    scanners: &ScannerSet,
) -> String {
    use sha2::{Digest, Sha256};
    let mdoc = if mix.mdoc_share > 0.0 {
        format!("; mdoc {:?}", mix.mdoc_share)
    } else {
        String::new()
    };
    let text = format!(
        "plan {:?} {:?} {:?} {:?}; mix {} {} {} {}{mdoc}; seed {seed}; salt {salt:016x}; holders {fleet_len}; scanners {}",
        plan.ramp_up_secs,
        plan.peak_secs,
        plan.ramp_down_secs,
        plan.peak_rps,
        mix.replay,
        mix.forged,
        mix.garbage,
        mix.stale,
        scanners.ids.join(",")
    );
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The schedule's deterministic generator (SplitMix64, shared with the demo).
pub use gatehouse_engine::dev::rng::SplitMix64 as Rng;

/// A replay repeats a genuine request sent at least this long before it …
const REPLAY_MIN_GAP: f64 = 0.5;
/// … and at most this long before (so the repeated token is still inside its window).
const REPLAY_MAX_GAP: f64 = 5.0;

/// Draws the arrivals of `plan` (a non-homogeneous Poisson process, by thinning), each a
/// holder of a fleet of `holders` at a scanner its kind would visit: 60 % the holder's own
/// gate, 30 % a partner, 10 % an age-check counter; `mix` decides the adversarial share, and
/// which genuine arrivals are mdoc presentations (drawn from a stream of their own, one draw
/// per arrival, so the rest of the schedule is the same whatever the mdoc share).
/// Fails when the plan would exceed `max_requests`.
pub fn schedule<'a>(
    plan: &Plan,
    holders: &dyn Fn(usize) -> &'a Credential,
    fleet_len: usize,
    scanners: &ScannerSet,
    mix: &Mix,
    seed: u64,
    max_requests: usize,
) -> anyhow::Result<Vec<Arrival>> {
    anyhow::ensure!(plan.peak_rps > 0.0, "the peak rate must be positive");
    anyhow::ensure!(plan.duration() > 0.0, "the plan must last some time");
    anyhow::ensure!(fleet_len > 0, "no holders");
    let expected = plan.expected_requests();
    anyhow::ensure!(
        expected <= max_requests as f64,
        "the plan asks for about {expected:.0} requests, over the limit of {max_requests} (--max-requests)"
    );
    let partners = scanners.with_prefix("partner");
    let ages = scanners.with_prefix("age");
    anyhow::ensure!(!scanners.ids.is_empty(), "no scanners");
    let mut s = Scheduler {
        scanners,
        partners,
        ages,
        mix,
        rng: Rng(seed ^ 0x6a7e_4008_0000_0001),
        mdoc_rng: Rng(seed ^ 0x6d64_6f63_0000_0002),
        out: Vec::with_capacity(expected.ceil() as usize + 16),
        recent_genuine: Default::default(),
    };
    let mut t = 0.0f64;
    let lambda = plan.peak_rps;
    let end = plan.duration();
    loop {
        t += -(1.0 - s.rng.unit()).ln() / lambda;
        if t >= end {
            break;
        }
        if s.rng.unit() * lambda >= plan.rate_at(t) {
            continue;
        }
        anyhow::ensure!(
            s.out.len() < max_requests,
            "the plan exceeded {max_requests} requests (--max-requests)"
        );
        let holder = s.rng.below(fleet_len as u64) as usize;
        let (scanner, scenario) = s.place(holders(holder));
        let kind = s.kind();
        s.forget_older_than(t - REPLAY_MAX_GAP);
        let arrival = Arrival {
            at: t,
            holder: holder as u32,
            scanner,
            kind,
            phase: plan.phase_at(t),
            scenario,
        };
        s.push(arrival);
    }
    Ok(s.out)
}

/// What [`schedule`] carries from one arrival to the next.
struct Scheduler<'s> {
    scanners: &'s ScannerSet,
    /// The partners' scanners.
    partners: Vec<u16>,
    /// The age-check counters' scanners.
    ages: Vec<u16>,
    mix: &'s Mix,
    rng: Rng,
    /// Which genuine arrivals are mdoc presentations: one draw per arrival.
    mdoc_rng: Rng,
    /// The arrivals so far.
    out: Vec<Arrival>,
    /// Genuine arrivals (tokens and mdoc presentations) of the last REPLAY_MAX_GAP seconds
    /// (indices into `out`), oldest first: what a replay may repeat.
    recent_genuine: std::collections::VecDeque<u32>,
}

impl Scheduler<'_> {
    /// Where the holder of `c` shows a token: 60 % its own gate, 30 % a partner, 10 % an
    /// age-check counter (any scanner when there is no such one).
    fn place(&mut self, c: &Credential) -> (u16, Scenario) {
        let rng = &mut self.rng;
        let (scanner, scenario) = match rng.below(10) {
            0..=5 => (self.scanners.home_gate(c), Scenario::Gate),
            6..=8 => (
                self.partners
                    .get(rng.below(self.partners.len() as u64) as usize)
                    .copied(),
                Scenario::Partner,
            ),
            _ => (
                self.ages
                    .get(rng.below(self.ages.len() as u64) as usize)
                    .copied(),
                Scenario::Age,
            ),
        };
        let scanner = scanner.unwrap_or(rng.below(self.scanners.ids.len() as u64) as u16);
        (scanner, scenario)
    }

    /// What an arrival shows, drawn from the mix (per mille): a replay (of an arrival still to
    /// pick), a forgery, garbage, a stale token, else a genuine token.
    fn kind(&mut self) -> Kind {
        let mix = self.mix;
        let roll = self.rng.below(1000) as u32;
        if roll < mix.replay {
            Kind::Replay { of: 0 }
        } else if roll < mix.replay + mix.forged {
            Kind::Forged
        } else if roll < mix.replay + mix.forged + mix.garbage {
            Kind::Garbage
        } else if roll < mix.replay + mix.forged + mix.garbage + mix.stale {
            Kind::Stale
        } else {
            Kind::Genuine
        }
    }

    /// Drops the genuine arrivals sent before `t` from the replay candidates.
    fn forget_older_than(&mut self, t: f64) {
        while self
            .recent_genuine
            .front()
            .is_some_and(|&j| self.out[j as usize].at < t)
        {
            self.recent_genuine.pop_front();
        }
    }

    /// Adds `arrival`. A replay repeats the newest genuine arrival at least REPLAY_MIN_GAP
    /// old, shown again where it was first shown; when there is none yet, it is genuine
    /// instead. A genuine arrival is an mdoc presentation with the mix's mdoc share. Anything
    /// but a genuine arrival is of the adversarial scenario.
    fn push(&mut self, mut arrival: Arrival) {
        if let Kind::Replay { .. } = arrival.kind {
            let candidates: Vec<u32> = self
                .recent_genuine
                .iter()
                .copied()
                .filter(|&j| self.out[j as usize].at <= arrival.at - REPLAY_MIN_GAP)
                .collect();
            arrival.kind = match candidates.len() {
                0 => Kind::Genuine,
                n => {
                    let of = candidates[n - 1 - (self.rng.below(n.min(50) as u64) as usize)];
                    let orig = self.out[of as usize];
                    arrival.holder = orig.holder;
                    arrival.scanner = orig.scanner;
                    Kind::Replay { of }
                }
            };
        }
        let mdoc = self.mdoc_rng.unit() < self.mix.mdoc_share;
        match arrival.kind {
            Kind::Genuine if mdoc => {
                arrival.kind = Kind::Mdoc;
                arrival.scenario = Scenario::Mdoc;
                self.recent_genuine.push_back(self.out.len() as u32);
            }
            Kind::Genuine => self.recent_genuine.push_back(self.out.len() as u32),
            _ => arrival.scenario = Scenario::Adversarial,
        }
        self.out.push(arrival);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_million_holder_arithmetic() {
        let m = RushModel::default();
        assert!((m.peak_rps() - 500.0).abs() < 1e-9);
        assert!((m.mean_rps() - 166.666).abs() < 0.01);
    }

    #[test]
    fn trapezoid_rates_and_phases() {
        let p = Plan {
            ramp_up_secs: 10.0,
            peak_secs: 20.0,
            ramp_down_secs: 10.0,
            peak_rps: 100.0,
        };
        assert_eq!(p.rate_at(5.0), 50.0);
        assert_eq!(p.rate_at(15.0), 100.0);
        assert_eq!(p.rate_at(35.0), 50.0);
        assert_eq!(p.phase_at(9.9), Phase::RampUp);
        assert_eq!(p.phase_at(30.0), Phase::RampDown);
        assert_eq!(p.expected_requests(), 3000.0);
    }

    fn small_world() -> (gatehouse_engine::dev::population::Population, ScannerSet) {
        let pop = gatehouse_engine::dev::population::Population::generate(
            &gatehouse_engine::dev::population::PopulationSpec {
                holders: 60,
                ..Default::default()
            },
            &|_| {},
        )
        .unwrap();
        let set = ScannerSet::new(&pop.scanners);
        (pop, set)
    }

    /// The shards of one run partition its schedule: for several seeds and salts and N in
    /// {1, 2, 3, 7}, their request sets (global indices) are disjoint and their union is the
    /// schedule one process draws with that salt; every replay is in its original's shard;
    /// another salt draws another schedule.
    #[test]
    fn shards_partition_the_schedule_and_keep_replays_with_their_originals() {
        let (pop, set) = small_world();
        let creds = |i: usize| &pop.holders[i].credential;
        let plan = Plan::constant(400.0, 4.0);
        let mix = Mix {
            replay: 100,
            ..Mix::default()
        };
        for (seed, salt) in [(1u64, 7u64), (2, 0xdead_beef), (99, u64::MAX)] {
            let whole = schedule(&plan, &creds, 60, &set, &mix, seed ^ salt, 1_000_000).unwrap();
            let other =
                schedule(&plan, &creds, 60, &set, &mix, seed ^ salt ^ 1, 1_000_000).unwrap();
            assert!(
                whole.len() != other.len()
                    || whole
                        .iter()
                        .zip(&other)
                        .any(|(a, b)| a.holder != b.holder || a.at != b.at),
                "another salt drew the same schedule"
            );
            let replays = whole
                .iter()
                .filter(|a| matches!(a.kind, Kind::Replay { .. }))
                .count();
            assert!(replays > 10, "{replays} replays");
            for n in [1usize, 2, 3, 7] {
                let shards: Vec<Shard> = (1..=n).map(|index| Shard { index, count: n }).collect();
                // Each shard draws the whole schedule (the same seed and salt) and keeps its own.
                let mut owner = vec![0usize; whole.len()];
                for shard in &shards {
                    let drawn =
                        schedule(&plan, &creds, 60, &set, &mix, seed ^ salt, 1_000_000).unwrap();
                    assert_eq!(drawn.len(), whole.len());
                    for (i, a) in drawn.iter().enumerate() {
                        assert_eq!(
                            (a.at, a.holder, a.scanner),
                            (whole[i].at, whole[i].holder, whole[i].scanner)
                        );
                        if shard.owns(a.scanner as usize) {
                            assert_eq!(
                                owner[i], 0,
                                "request {i} in shards {} and {}",
                                owner[i], shard.index
                            );
                            owner[i] = shard.index;
                        }
                    }
                }
                assert!(
                    owner.iter().all(|&o| o > 0),
                    "a request in no shard (N = {n})"
                );
                for (i, a) in whole.iter().enumerate() {
                    if let Kind::Replay { of } = a.kind {
                        assert_eq!(
                            owner[i], owner[of as usize],
                            "replay {i} and its original {of}"
                        );
                    }
                }
                if n > 1 {
                    // Every shard has work: the partition is by scanner, and there are more
                    // scanners than shards.
                    for shard in &shards {
                        assert!(owner.contains(&shard.index), "shard {shard} is empty");
                    }
                }
            }
        }
    }

    /// `--mdoc-share 0.2`: about a fifth of the genuine arrivals are mdoc presentations (and
    /// nothing else is), drawn the same for the same seed and salt and otherwise for another
    /// salt; the arrivals' times, holders and scanners are those of the plan without mdoc;
    /// replays may repeat an mdoc presentation; the fingerprint names the share.
    #[test]
    fn an_mdoc_share_turns_that_share_of_genuine_arrivals_into_mdoc_deterministically() {
        let (pop, set) = small_world();
        let creds = |i: usize| &pop.holders[i].credential;
        let plan = Plan::constant(1000.0, 10.0);
        let mix = Mix {
            mdoc_share: 0.2,
            ..Mix::default()
        };
        let draw =
            |mix: &Mix, seed: u64| schedule(&plan, &creds, 60, &set, mix, seed, 1_000_000).unwrap();
        let (seed, salt) = (5u64, 0x5a17_ed00_00c1_c1c1u64);
        let s = draw(&mix, seed ^ salt);
        let mdoc = s.iter().filter(|a| a.kind == Kind::Mdoc).count() as f64;
        let genuine = s.iter().filter(|a| a.kind == Kind::Genuine).count() as f64 + mdoc;
        let share = mdoc / genuine;
        assert!(
            (share - 0.2).abs() < 0.015,
            "{mdoc} mdoc of {genuine} genuine: {share}"
        );
        assert!(s
            .iter()
            .all(|a| (a.kind == Kind::Mdoc) == (a.scenario == Scenario::Mdoc)));
        // The same seed and salt: the same schedule, mdoc for mdoc.
        let again = draw(&mix, seed ^ salt);
        assert_eq!(again.len(), s.len());
        assert!(s.iter().zip(&again).all(|(a, b)| a.at == b.at
            && a.holder == b.holder
            && a.scanner == b.scanner
            && a.kind == b.kind));
        // Another salt: other mdoc arrivals.
        let other = draw(&mix, seed ^ salt ^ 1);
        let picks = |s: &[Arrival]| -> Vec<usize> {
            s.iter()
                .enumerate()
                .filter(|(_, a)| a.kind == Kind::Mdoc)
                .map(|(i, _)| i)
                .collect()
        };
        assert_ne!(picks(&s), picks(&other));
        // Without mdoc: the same arrivals, the mdoc ones genuine tokens.
        let plain = draw(&Mix::default(), seed ^ salt);
        assert_eq!(plain.len(), s.len());
        for (a, b) in s.iter().zip(&plain) {
            assert_eq!((a.at, a.holder, a.scanner), (b.at, b.holder, b.scanner));
            match a.kind {
                Kind::Mdoc => assert_eq!(b.kind, Kind::Genuine),
                k => assert_eq!(b.kind, k),
            }
        }
        // Replays of mdoc presentations come out of the same mix.
        let replayed_mdoc = s
            .iter()
            .filter(|a| matches!(a.kind, Kind::Replay { of } if s[of as usize].kind == Kind::Mdoc))
            .count();
        assert!(replayed_mdoc > 0, "no replay of an mdoc presentation");
        // Every arrival is mdoc with a share of 1, none with 0.
        let all = draw(
            &Mix {
                mdoc_share: 1.0,
                ..Mix::default()
            },
            seed ^ salt,
        );
        assert!(all.iter().all(|a| a.kind != Kind::Genuine));
        assert!(plain.iter().all(|a| a.kind != Kind::Mdoc));
        // The fingerprint says the share; without mdoc it is as before.
        let fp = |mix: &Mix| fingerprint(&plan, mix, seed, salt, 60, &set);
        assert_ne!(fp(&mix), fp(&Mix::default()));
        assert_ne!(
            fp(&mix),
            fp(&Mix {
                mdoc_share: 0.3,
                ..Mix::default()
            })
        );
        assert_eq!(fp(&mix), fp(&mix));
    }

    #[test]
    fn a_shard_is_i_of_n() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", "1/2000"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert!(Shard { index: 3, count: 7 }.owns(9));
        assert!(!Shard { index: 3, count: 7 }.owns(10));
    }

    #[test]
    fn poisson_schedule_follows_the_plan() {
        let pop = gatehouse_engine::dev::population::Population::generate(
            &gatehouse_engine::dev::population::PopulationSpec {
                holders: 50,
                ..Default::default()
            },
            &|_| {},
        )
        .unwrap();
        let set = ScannerSet::new(&pop.scanners);
        let plan = Plan {
            ramp_up_secs: 10.0,
            peak_secs: 20.0,
            ramp_down_secs: 10.0,
            peak_rps: 500.0,
        };
        let creds = |i: usize| &pop.holders[i].credential;
        let s = schedule(&plan, &creds, 50, &set, &Mix::default(), 3, 1_000_000).unwrap();
        let n = s.len() as f64;
        assert!((n - 15_000.0).abs() < 600.0, "{n}");
        let peak = s.iter().filter(|a| a.phase == Phase::Peak).count() as f64;
        assert!((peak / n - 2.0 / 3.0).abs() < 0.02);
        assert!(s.windows(2).all(|w| w[0].at <= w[1].at));
        for (i, a) in s.iter().enumerate() {
            if let Kind::Replay { of } = a.kind {
                let o = &s[of as usize];
                assert!((of as usize) < i && o.kind == Kind::Genuine);
                assert!(a.at - o.at >= REPLAY_MIN_GAP && a.at - o.at <= REPLAY_MAX_GAP);
            }
        }
        let replays = s
            .iter()
            .filter(|a| matches!(a.kind, Kind::Replay { .. }))
            .count() as f64;
        assert!((replays / n - 0.03).abs() < 0.01, "{replays}");
        assert!(schedule(&plan, &creds, 50, &set, &Mix::default(), 3, 1000).is_err());
    }
}
