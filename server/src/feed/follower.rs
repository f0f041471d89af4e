//! The feed follower (SPEC §11.3, §11.4) as a state machine with no IO and no clock of its
//! own. It holds what the node knows of its feed: whether it holds an epoch at all, whether
//! that state is known to be the feed's, when the feed last confirmed it, and whether the
//! feed has been failing. The driver ([`super::follow`]) asks it what to do:
//!
//! 1. [`Follower::start`] begins a pull from the state in force and asks for the head;
//! 2. [`Follower::on_fetched`] takes what a fetch brought (and the time) and says what comes
//!    next: fetch another object, apply a delta (already opened and verified here), build a
//!    snapshot, or [`Action::Done`]: current, nothing new, or refused with the reason;
//! 3. [`Follower::on_applied`] takes the result of an apply and says what comes next;
//! 4. [`Follower::deadline`] says when to pull again, [`Follower::fresh_until`] until when the
//!    engine may judge tokens on the state in force.
//!
//! What it counts ([`Counts`]) and what it has to say ([`Note`]) it hands to the driver, which
//! publishes them as metrics and log lines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_core::{short_hex, TrustList};
use gatehouse_protocol::RevocationList;

use super::apply::{open_list, open_object};
use super::source::{
    parse_head, FeedConfig, FeedError, FeedHead, Object, OfflinePolicy, MAX_HEAD_BYTES,
};

/// Most deltas a node applies in one sync before it prefers the snapshot.
pub const MAX_DELTAS_PER_SYNC: u64 = 64;

/// Why lists are refused, in the order [`Counts::refused`] keeps them.
pub(crate) const REFUSALS: [&str; 4] = ["unsigned", "malformed", "unknown_key", "bad_signature"];

/// A pull that starts later than this after its time moves the schedule on from when it
/// started; an earlier one keeps the schedule (a tokio interval's `MissedTickBehavior::Delay`).
const LATE: Duration = Duration::from_millis(5);

/// One fetch the follower asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The object.
    pub object: Object,
    /// The most bytes to read.
    pub limit: usize,
}

/// The revocation state in force when a pull starts, as the driver reads it from the engine.
#[derive(Debug, Clone, Default)]
pub struct InForce {
    /// Its epoch.
    pub epoch: u64,
    /// Its number of entries.
    pub entries: usize,
    /// Its state digest (SPEC §11.5).
    pub digest: [u8; 32],
    /// The trust list whose revocation keys sign the feed's lists.
    pub trust: Arc<TrustList>,
}

/// What the driver does next.
#[derive(Debug)]
pub enum Action {
    /// Fetch this, and hand the answer to [`Follower::on_fetched`].
    Fetch(Request),
    /// Apply this delta, opened and verified, on the calling thread (it is how a new
    /// revocation reaches the node, and it is small), and hand the result to
    /// [`Follower::on_applied`].
    ApplyDelta {
        /// Its epoch.
        epoch: u64,
        /// The list.
        list: RevocationList,
    },
    /// Verify and build this snapshot at the lowest CPU priority, and hand the result to
    /// [`Follower::on_applied`].
    ApplySnapshot {
        /// Its epoch.
        epoch: u64,
        /// The bytes fetched.
        bytes: Vec<u8>,
        /// Whether it replaces the state whatever its epoch (the state in force, read from
        /// disk, is not the feed's).
        replace: bool,
    },
    /// The pull is over.
    Done(Pulled),
}

/// How a pull ended.
#[derive(Debug)]
pub struct Pulled {
    /// The epoch the node is current at, or why it is not.
    pub result: Result<u64, FeedError>,
    /// The epoch in force.
    pub epoch: u64,
    /// This success ends a run of failures.
    pub recovered: bool,
    /// This failure starts a run of failures (later ones are said more quietly).
    pub first_failure: bool,
    /// The log line for a change of staleness (refusing every token, or judging again), if
    /// it changed with this pull.
    pub staleness: Option<Note>,
}

/// A line the follower has to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A warning.
    Warn(String),
    /// Information.
    Info(String),
}

/// What the follower counted since the driver last took the counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Pulls that left the node current.
    pub syncs: u64,
    /// Pulls that did not.
    pub errors: u64,
    /// Snapshots applied.
    pub snapshots: u64,
    /// Deltas applied.
    pub deltas: u64,
    /// States read from disk that the feed's snapshot replaced.
    pub replaced: u64,
    /// Lists refused, by why (in the order of `REFUSALS`).
    pub refused: [u64; 4],
}

impl Counts {
    /// Lists refused for this reason (`unsigned`, `malformed`, `unknown_key`,
    /// `bad_signature`).
    pub fn refused(&self, why: &str) -> u64 {
        REFUSALS
            .iter()
            .position(|r| *r == why)
            .map_or(0, |i| self.refused[i])
    }
}

/// Where a pull is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pull {
    /// Between pulls.
    Idle,
    /// Fetching the head.
    Head,
    /// First contact with a state from disk: fetching the feed's list at its epoch.
    Seed { head: FeedHead, object: Object },
    /// Fetching the head's snapshot (`replace`: the state in force is not the feed's).
    FetchSnapshot { head: FeedHead, replace: bool },
    /// Building it.
    BuildSnapshot { head: FeedHead, replace: bool },
    /// Fetching delta `next` (`fallback`: a gap sends the node to the snapshot).
    FetchDelta {
        head: FeedHead,
        next: u64,
        fallback: bool,
    },
    /// Applying it.
    ApplyDelta {
        head: FeedHead,
        next: u64,
        fallback: bool,
    },
}

/// The feed follower: see the module's documentation.
#[derive(Debug)]
pub struct Follower {
    interval: Duration,
    max_age: Duration,
    policy: OfflinePolicy,
    max_list_bytes: usize,
    /// Whether the node holds an epoch at all (a node started with only a delta does not).
    established: bool,
    /// Whether the state in force is known to be the feed's: it came from the feed, or the
    /// state read from disk had the digest of the feed's list at its epoch.
    matched: bool,
    /// Unix seconds of the last time the node found itself current (0: never).
    confirmed: u64,
    /// The latest epoch the feed's head announced.
    head_epoch: u64,
    /// Whether the last pull failed.
    failing: bool,
    /// Whether the state was stale after the last pull.
    was_stale: bool,
    /// When the next pull is due.
    due: Instant,
    /// The epoch in force, as the last apply left it.
    epoch: u64,
    in_force: InForce,
    pull: Pull,
    counts: Counts,
    notes: Vec<Note>,
}

impl Follower {
    /// A follower for `config`, whose node holds an epoch (`established`) or not, with its
    /// first pull due at `at`.
    pub fn new(config: &FeedConfig, established: bool, at: Instant) -> Follower {
        Follower {
            interval: config.interval,
            max_age: config.max_age,
            policy: config.policy,
            max_list_bytes: config.max_list_bytes,
            established,
            matched: false,
            confirmed: config.confirmed_at,
            head_epoch: 0,
            failing: false,
            was_stale: false,
            due: at,
            epoch: 0,
            in_force: InForce::default(),
            pull: Pull::Idle,
            counts: Counts::default(),
            notes: Vec::new(),
        }
    }

    /// When the next pull is due.
    pub fn deadline(&self) -> Instant {
        self.due
    }

    /// Until when (Unix seconds) the engine may judge tokens on the state in force: never
    /// (0) when the node holds no epoch or was never confirmed, always (`u64::MAX`) when its
    /// policy keeps serving, else the last confirmation plus the maximum age.
    pub fn fresh_until(&self) -> u64 {
        if !self.established {
            0
        } else if self.policy == OfflinePolicy::KeepServing {
            u64::MAX
        } else {
            match self.confirmed {
                0 => 0,
                t => t.saturating_add(self.max_age.as_secs()),
            }
        }
    }

    /// Whether the state is older than the maximum age at `now` (or was never established).
    pub fn stale(&self, now: u64) -> bool {
        !self.established
            || self.confirmed == 0
            || now.saturating_sub(self.confirmed) >= self.max_age.as_secs()
    }

    /// Whether the node holds an epoch at all.
    pub fn established(&self) -> bool {
        self.established
    }

    /// Whether the state in force is known to be the feed's (SPEC §11.3).
    pub fn matched(&self) -> bool {
        self.matched
    }

    /// Unix seconds of the last time the node found itself current (0: never).
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// The latest epoch the feed's head announced (0 before the first head).
    pub fn head_epoch(&self) -> u64 {
        self.head_epoch
    }

    /// The epoch in force, as far as the follower knows.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What it counted since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// What it has to say since the last call, in order.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// Begins a pull at `at` from the state `in_force`: the next one falls due an interval
    /// after this one was due (or after `at`, when this one started late).
    pub fn start(&mut self, at: Instant, in_force: InForce) -> Action {
        self.due = if at > self.due + LATE {
            at + self.interval
        } else {
            self.due + self.interval
        };
        self.epoch = in_force.epoch;
        self.in_force = in_force;
        self.pull = Pull::Head;
        Action::Fetch(Request {
            object: Object::Head,
            limit: MAX_HEAD_BYTES,
        })
    }

    /// What a fetch of `object` brought, at `now` (Unix seconds), and what comes next.
    pub fn on_fetched(
        &mut self,
        object: Object,
        fetched: Result<Vec<u8>, FeedError>,
        now: u64,
    ) -> Action {
        match (self.pull, fetched) {
            (Pull::Head, Ok(bytes)) if object == Object::Head => self.on_head(&bytes, now),
            (Pull::Seed { head, object: o }, fetched) if o == object => {
                let why = match fetched {
                    Ok(bytes) => seed_differs(object, &bytes, &self.in_force),
                    Err(FeedError::Missing(name)) => Some(format!(
                        "the feed has no list at epoch {} ({name})",
                        self.in_force.epoch
                    )),
                    Err(e) => return self.finish(Err(e), now),
                };
                match why {
                    None => {
                        self.matched = true;
                        self.toward_head(head, now)
                    }
                    Some(why) => self.replace(head, &why),
                }
            }
            (Pull::FetchSnapshot { head, replace }, Ok(bytes))
                if object == Object::Snapshot(head.snapshot) =>
            {
                self.pull = Pull::BuildSnapshot { head, replace };
                Action::ApplySnapshot {
                    epoch: head.snapshot,
                    bytes,
                    replace,
                }
            }
            (
                Pull::FetchDelta {
                    head,
                    next,
                    fallback,
                },
                fetched,
            ) if object == Object::Delta(next) => {
                let opened = fetched.and_then(|b| open_object(object, &b, &self.in_force.trust));
                match opened {
                    Ok(list) => {
                        self.pull = Pull::ApplyDelta {
                            head,
                            next,
                            fallback,
                        };
                        Action::ApplyDelta { epoch: next, list }
                    }
                    Err(e) => self.delta_failed(head, fallback, e, now),
                }
            }
            (_, Err(e)) => self.finish(Err(e), now),
            (_, Ok(_)) => self.finish(Err(not_asked(object.file_name())), now),
        }
    }

    /// The result of the apply last asked for, at `now` (Unix seconds), and what comes next.
    pub fn on_applied(&mut self, applied: Result<u64, FeedError>, now: u64) -> Action {
        match (self.pull, applied) {
            (
                Pull::ApplyDelta {
                    head,
                    next,
                    fallback,
                },
                Ok(epoch),
            ) => {
                self.epoch = epoch;
                self.counts.deltas += 1;
                self.next_delta(head, next + 1, fallback, now)
            }
            (Pull::ApplyDelta { head, fallback, .. }, Err(e)) => {
                self.delta_failed(head, fallback, e, now)
            }
            (Pull::BuildSnapshot { head, replace }, Ok(epoch)) => {
                self.epoch = epoch;
                self.counts.snapshots += 1;
                self.matched = true;
                if replace {
                    self.counts.replaced += 1;
                } else {
                    self.established = true;
                }
                self.next_delta(head, epoch + 1, false, now)
            }
            (Pull::BuildSnapshot { .. }, Err(e)) => {
                self.count_refusal(&e);
                self.finish(Err(e), now)
            }
            (_, Err(e)) => self.finish(Err(e), now),
            (_, Ok(_)) => self.finish(Err(not_asked("(apply)".into())), now),
        }
    }

    fn fetch(&mut self, pull: Pull, object: Object) -> Action {
        self.pull = pull;
        Action::Fetch(Request {
            object,
            limit: self.max_list_bytes,
        })
    }

    fn on_head(&mut self, bytes: &[u8], now: u64) -> Action {
        let head = match parse_head(bytes) {
            Ok(head) => head,
            Err(e) => return self.finish(Err(e), now),
        };
        self.head_epoch = head.epoch;
        // First contact with a state read from disk: it is the feed's only if the feed's list
        // at its epoch has its digest. Otherwise the feed's snapshot replaces it: the feed's
        // deltas are never stacked on a state that is not the feed's.
        if self.established && !self.matched {
            let epoch = self.in_force.epoch;
            if epoch > head.epoch {
                return self.replace(head, &format!("the feed is at epoch {}", head.epoch));
            }
            let object = if epoch == head.snapshot {
                Object::Snapshot(epoch)
            } else {
                Object::Delta(epoch)
            };
            return self.fetch(Pull::Seed { head, object }, object);
        }
        self.toward_head(head, now)
    }

    /// The state in force is the feed's: brings it to `head`.
    fn toward_head(&mut self, head: FeedHead, now: u64) -> Action {
        let current = self.epoch;
        if self.established && current == head.epoch {
            return self.finish(Ok(current), now);
        }
        if self.established && current > head.epoch {
            let behind = FeedError::Behind {
                feed: head.epoch,
                node: current,
            };
            return self.finish(Err(behind), now);
        }
        // Deltas first when there are few: a node a few epochs behind should not rebuild a
        // million-entry snapshot. The snapshot settles the rest.
        if !self.established || head.epoch - current > MAX_DELTAS_PER_SYNC {
            return self.via_snapshot(head, now);
        }
        self.next_delta(head, current + 1, true, now)
    }

    /// The state read from disk is not the feed's (`why`): the head's snapshot replaces it.
    fn replace(&mut self, head: FeedHead, why: &str) -> Action {
        let f = &self.in_force;
        self.notes.push(Note::Warn(format!(
            "revocation feed: the revocation state read from disk (epoch {}, {} entries, \
             digest {}) is not the feed's: {why}; replacing it with the feed's snapshot {}",
            f.epoch,
            f.entries,
            short_hex(&f.digest),
            head.snapshot
        )));
        let replace = Pull::FetchSnapshot {
            head,
            replace: true,
        };
        self.fetch(replace, Object::Snapshot(head.snapshot))
    }

    /// The head's snapshot when it is newer than the state in force (or there is none), then
    /// the deltas after it.
    fn via_snapshot(&mut self, head: FeedHead, now: u64) -> Action {
        if !self.established || self.epoch < head.snapshot {
            let snapshot = Pull::FetchSnapshot {
                head,
                replace: false,
            };
            return self.fetch(snapshot, Object::Snapshot(head.snapshot));
        }
        self.next_delta(head, self.epoch + 1, false, now)
    }

    /// Delta `n`, unless the node is past the head's epoch: then the pull is over.
    fn next_delta(&mut self, head: FeedHead, n: u64, fallback: bool, now: u64) -> Action {
        if n <= head.epoch {
            let delta = Pull::FetchDelta {
                head,
                next: n,
                fallback,
            };
            return self.fetch(delta, Object::Delta(n));
        }
        let result = if self.epoch == head.epoch {
            Ok(self.epoch)
        } else {
            Err(FeedError::Behind {
                feed: head.epoch,
                node: self.epoch,
            })
        };
        self.finish(result, now)
    }

    /// A delta could not be fetched, opened or applied. A gap (a delta missing, or not on
    /// the epoch in force) is settled by the snapshot when it is newer than what the node
    /// holds; anything else ends the pull.
    fn delta_failed(&mut self, head: FeedHead, fallback: bool, e: FeedError, now: u64) -> Action {
        self.count_refusal(&e);
        let gap = matches!(e, FeedError::Missing(_) | FeedError::Apply { .. });
        if fallback && gap && self.epoch < head.snapshot {
            self.notes.push(Note::Info(format!(
                "revocation feed: {e}; fetching snapshot {}",
                head.snapshot
            )));
            return self.via_snapshot(head, now);
        }
        self.finish(Err(e), now)
    }

    fn count_refusal(&mut self, e: &FeedError) {
        if let FeedError::Refused { source, .. } = e {
            if let Some(i) = REFUSALS.iter().position(|r| *r == source.label()) {
                self.counts.refused[i] += 1;
            }
        }
    }

    /// Ends the pull with `result` at `now`.
    fn finish(&mut self, result: Result<u64, FeedError>, now: u64) -> Action {
        self.pull = Pull::Idle;
        let (recovered, first_failure) = match result {
            Ok(_) => {
                self.established = true;
                self.confirmed = now;
                self.counts.syncs += 1;
                (std::mem::replace(&mut self.failing, false), false)
            }
            Err(_) => {
                self.counts.errors += 1;
                (false, !std::mem::replace(&mut self.failing, true))
            }
        };
        let stale = self.stale(now);
        let staleness = stale_change(
            self.was_stale,
            stale,
            self.policy,
            self.epoch,
            self.established,
            self.max_age,
        )
        .map(|(refusing, line)| {
            if refusing {
                Note::Warn(line)
            } else {
                Note::Info(line)
            }
        });
        self.was_stale = stale;
        Action::Done(Pulled {
            result,
            epoch: self.epoch,
            recovered,
            first_failure,
            staleness,
        })
    }
}

/// The follower was handed something it did not ask for (a driver's mistake).
fn not_asked(what: String) -> FeedError {
    FeedError::Fetch {
        object: what,
        problem: "not what the follower asked for".into(),
    }
}

/// Whether the state in force (read from disk) is the feed's state at its epoch, given the
/// feed's list at that epoch: `None` when the list is authentic and carries the state's
/// digest; otherwise why not.
fn seed_differs(object: Object, bytes: &[u8], in_force: &InForce) -> Option<String> {
    let epoch = in_force.epoch;
    let list = match open_list(bytes, &in_force.trust) {
        Ok(l) => l,
        Err(e) => return Some(format!("the feed's {} is refused: {e}", object.file_name())),
    };
    match list.digest {
        None => Some(format!(
            "the feed's {} carries no state digest to compare (version 1)",
            object.file_name()
        )),
        Some(d) if list.epoch == epoch && d == in_force.digest => None,
        Some(d) => Some(format!(
            "the feed's state at epoch {epoch} has digest {}",
            short_hex(&d)
        )),
    }
}

/// The log line for a change of the revocation state's staleness, once per change: the moment
/// a node starts refusing every token (or answering on a state it no longer vouches for), and
/// the moment it stops. `(true, …)` is a warning.
pub(super) fn stale_change(
    was: bool,
    now: bool,
    policy: OfflinePolicy,
    epoch: u64,
    established: bool,
    max_age: Duration,
) -> Option<(bool, String)> {
    match (was, now) {
        (false, true) if !established => Some((
            true,
            "revocation feed: no revocation state yet: every token is denied \
             `revocations_stale` until the feed's snapshot is applied"
                .to_string(),
        )),
        (false, true) if policy == OfflinePolicy::FailClosed => Some((
            true,
            format!(
                "revocation feed: epoch {epoch} is older than max_age_secs ({} s): every token \
                 is denied `revocations_stale` until the feed confirms a state (offline = \
                 \"fail_closed\")",
                max_age.as_secs()
            ),
        )),
        (false, true) => Some((
            true,
            format!(
                "revocation feed: epoch {epoch} is older than max_age_secs ({} s): tokens are \
                 still judged on it (offline = \"keep_serving\"), and the node reports itself \
                 not ready",
                max_age.as_secs()
            ),
        )),
        (true, false) => Some((
            false,
            format!("revocation feed: epoch {epoch} confirmed: tokens are judged again"),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_core::{RevocationError, RevocationKey};
    use gatehouse_dev::population;
    use gatehouse_protocol::{PrivateKey, RevocationEntry, RevocationKind, RevocationListError};

    use super::super::source::FeedSource;
    use super::*;

    /// Unix seconds the tests start at.
    const NOW: u64 = 1_800_000_000;
    const LIST_LIMIT: usize = 1 << 20;

    fn key(index: u64) -> PrivateKey {
        population::derive_key("feed follower unit test revocations (TEST ONLY)", index)
    }

    /// A trust list naming `key(0)` as the revocation key.
    fn trust() -> Arc<TrustList> {
        let mut trust = TrustList::new();
        trust.insert_revocation_key(RevocationKey {
            name: "feed follower unit test revocations (TEST ONLY)".into(),
            public: key(0).public().clone(),
        });
        Arc::new(trust)
    }

    fn config(max_age: u64, policy: OfflinePolicy, confirmed_at: u64) -> FeedConfig {
        let mut c = FeedConfig::new(FeedSource::Dir("unused".into()));
        c.interval = Duration::from_secs(2);
        c.max_age = Duration::from_secs(max_age);
        c.policy = policy;
        c.max_list_bytes = LIST_LIMIT;
        c.confirmed_at = confirmed_at;
        c
    }

    fn list(epoch: u64, base: Option<u64>, digest: Option<[u8; 32]>) -> RevocationList {
        RevocationList {
            epoch,
            base,
            revoke: vec![RevocationEntry {
                kind: RevocationKind::Credential,
                id: [epoch as u8; 16],
            }],
            reinstate: vec![],
            digest,
        }
    }

    /// Signed by the trusted key.
    fn snapshot(epoch: u64, digest: Option<[u8; 32]>) -> Vec<u8> {
        list(epoch, None, digest).sign(&key(0)).unwrap()
    }

    /// Signed by the trusted key.
    fn delta(epoch: u64, digest: Option<[u8; 32]>) -> Vec<u8> {
        list(epoch, Some(epoch - 1), digest).sign(&key(0)).unwrap()
    }

    fn head(epoch: u64, snapshot: u64) -> Vec<u8> {
        format!(r#"{{"epoch": {epoch}, "snapshot": {snapshot}}}"#).into_bytes()
    }

    fn in_force(epoch: u64, digest: [u8; 32]) -> InForce {
        InForce {
            epoch,
            entries: epoch as usize,
            digest,
            trust: trust(),
        }
    }

    /// The object a fetch asks for, checking its limit.
    #[track_caller]
    fn fetch(action: Action) -> Object {
        match action {
            Action::Fetch(Request { object, limit }) => {
                let want = if object == Object::Head {
                    MAX_HEAD_BYTES
                } else {
                    LIST_LIMIT
                };
                assert_eq!(limit, want, "{object:?}");
                object
            }
            other => panic!("expected a fetch, got {other:?}"),
        }
    }

    #[track_caller]
    fn done(action: Action) -> Pulled {
        match action {
            Action::Done(pulled) => pulled,
            other => panic!("expected the end of the pull, got {other:?}"),
        }
    }

    /// Starts a pull from `epoch` at `at`, and hands it the head `(e, s)`.
    fn pull_head(f: &mut Follower, at: Instant, epoch: u64, e: u64, s: u64, now: u64) -> Action {
        assert_eq!(fetch(f.start(at, in_force(epoch, [0; 32]))), Object::Head);
        f.on_fetched(Object::Head, Ok(head(e, s)), now)
    }

    /// A node that started with nothing and is now current at `epoch` from the feed's
    /// snapshot, counts taken.
    fn current_at(epoch: u64, max_age: u64, policy: OfflinePolicy) -> Follower {
        let t0 = Instant::now();
        let mut f = Follower::new(&config(max_age, policy, 0), false, t0);
        let action = pull_head(&mut f, t0, 0, epoch, epoch, NOW);
        assert_eq!(fetch(action), Object::Snapshot(epoch));
        let action = f.on_fetched(Object::Snapshot(epoch), Ok(snapshot(epoch, None)), NOW);
        assert!(matches!(
            action,
            Action::ApplySnapshot { epoch: e, replace: false, .. } if e == epoch
        ));
        assert_eq!(done(f.on_applied(Ok(epoch), NOW)).result.unwrap(), epoch);
        f.take_counts();
        f.take_notes();
        f
    }

    #[test]
    fn a_node_with_nothing_takes_the_snapshot_then_follows_deltas_then_finds_nothing_new() {
        let t0 = Instant::now();
        let mut f = Follower::new(&config(300, OfflinePolicy::FailClosed, 0), false, t0);
        assert_eq!(f.fresh_until(), 0, "no epoch: nothing is judged");
        assert!(f.stale(NOW));
        // First pull: no epoch, so the snapshot whatever the distance.
        let action = pull_head(&mut f, t0, 0, 1, 1, NOW);
        assert_eq!(f.head_epoch(), 1);
        assert_eq!(fetch(action), Object::Snapshot(1));
        let bytes = snapshot(1, None);
        let action = f.on_fetched(Object::Snapshot(1), Ok(bytes.clone()), NOW);
        match action {
            Action::ApplySnapshot {
                epoch,
                bytes: b,
                replace,
            } => assert_eq!((epoch, b, replace), (1, bytes, false)),
            other => panic!("{other:?}"),
        }
        let pulled = done(f.on_applied(Ok(1), NOW));
        assert_eq!(pulled.result.unwrap(), 1);
        assert!(f.established() && f.matched());
        assert_eq!(f.confirmed(), NOW);
        assert_eq!(f.fresh_until(), NOW + 300);
        let counts = f.take_counts();
        assert_eq!((counts.snapshots, counts.syncs, counts.deltas), (1, 1, 0));
        assert_eq!(f.take_counts(), Counts::default(), "taken once");

        // Second pull: two deltas, each opened here and applied by the driver.
        let action = pull_head(&mut f, t0 + Duration::from_secs(2), 1, 3, 1, NOW + 2);
        assert_eq!(fetch(action), Object::Delta(2));
        for n in 2..=3 {
            let action = f.on_fetched(Object::Delta(n), Ok(delta(n, None)), NOW + 2);
            match action {
                Action::ApplyDelta { epoch, list: l } => {
                    assert_eq!((epoch, l), (n, list(n, Some(n - 1), None)));
                }
                other => panic!("{other:?}"),
            }
            let action = f.on_applied(Ok(n), NOW + 2);
            if n == 2 {
                assert_eq!(fetch(action), Object::Delta(3));
            } else {
                assert_eq!(done(action).result.unwrap(), 3);
            }
        }
        let counts = f.take_counts();
        assert_eq!((counts.snapshots, counts.syncs, counts.deltas), (0, 1, 2));
        assert_eq!(f.fresh_until(), NOW + 2 + 300);

        // Third pull: the head is where the node is: nothing is fetched but the head.
        let pulled = done(pull_head(
            &mut f,
            t0 + Duration::from_secs(4),
            3,
            3,
            1,
            NOW + 4,
        ));
        assert_eq!(pulled.result.unwrap(), 3);
        assert_eq!(f.confirmed(), NOW + 4);
        assert_eq!(f.take_counts().syncs, 1);
        assert!(f.take_notes().is_empty());
    }

    #[test]
    fn far_behind_the_node_takes_the_snapshot_rather_than_every_delta() {
        let mut f = current_at(1, 300, OfflinePolicy::FailClosed);
        let e = 2 + MAX_DELTAS_PER_SYNC;
        let action = pull_head(&mut f, Instant::now(), 1, e, e - 1, NOW);
        assert_eq!(fetch(action), Object::Snapshot(e - 1));
        let action = f.on_fetched(Object::Snapshot(e - 1), Ok(snapshot(e - 1, None)), NOW);
        assert!(matches!(
            action,
            Action::ApplySnapshot { replace: false, .. }
        ));
        assert_eq!(fetch(f.on_applied(Ok(e - 1), NOW)), Object::Delta(e));
        // One delta fewer: deltas.
        let mut f = current_at(1, 300, OfflinePolicy::FailClosed);
        let e = 1 + MAX_DELTAS_PER_SYNC;
        let action = pull_head(&mut f, Instant::now(), 1, e, e, NOW);
        assert_eq!(fetch(action), Object::Delta(2));
        // Far behind, but the feed's snapshot is no newer than the node: every delta, and a
        // gap among them is not settled by a snapshot that would not apply.
        let mut f = current_at(5, 300, OfflinePolicy::FailClosed);
        let e = 6 + MAX_DELTAS_PER_SYNC;
        let action = pull_head(&mut f, Instant::now(), 5, e, 3, NOW);
        assert_eq!(fetch(action), Object::Delta(6));
        let missing = FeedError::Missing("delta-6.cose".into());
        let pulled = done(f.on_fetched(Object::Delta(6), Err(missing), NOW));
        assert!(matches!(pulled.result, Err(FeedError::Missing(_))));
        assert!(f.take_notes().is_empty());
    }

    #[test]
    fn a_seed_that_is_the_feeds_is_kept_and_the_deltas_go_on_from_it() {
        let digest = [7; 32];
        // Epoch 1 is the feed's snapshot: the seed is checked against it.
        let t0 = Instant::now();
        let mut f = Follower::new(&config(300, OfflinePolicy::FailClosed, NOW - 10), true, t0);
        assert_eq!(f.fresh_until(), NOW - 10 + 300, "the seed is in force");
        assert!(!f.matched());
        assert_eq!(fetch(f.start(t0, in_force(1, digest))), Object::Head);
        let action = f.on_fetched(Object::Head, Ok(head(2, 1)), NOW);
        assert_eq!(fetch(action), Object::Snapshot(1));
        let action = f.on_fetched(Object::Snapshot(1), Ok(snapshot(1, Some(digest))), NOW);
        assert!(f.matched(), "the digests agree");
        assert_eq!(fetch(action), Object::Delta(2), "no snapshot rebuilt");
        let action = f.on_fetched(Object::Delta(2), Ok(delta(2, None)), NOW);
        assert!(matches!(action, Action::ApplyDelta { epoch: 2, .. }));
        assert_eq!(done(f.on_applied(Ok(2), NOW)).result.unwrap(), 2);
        let counts = f.take_counts();
        assert_eq!(
            (counts.replaced, counts.snapshots, counts.deltas),
            (0, 0, 1)
        );
        assert!(f.take_notes().is_empty());

        // Epoch 2 between snapshots: the seed is checked against the delta to it.
        let mut f = Follower::new(&config(300, OfflinePolicy::FailClosed, NOW - 10), true, t0);
        assert_eq!(fetch(f.start(t0, in_force(2, digest))), Object::Head);
        let action = f.on_fetched(Object::Head, Ok(head(2, 1)), NOW);
        assert_eq!(fetch(action), Object::Delta(2));
        let pulled = done(f.on_fetched(Object::Delta(2), Ok(delta(2, Some(digest))), NOW));
        assert_eq!(pulled.result.unwrap(), 2, "current: nothing to apply");
        assert!(f.matched());

        // Once matched, a later pull does not ask again.
        let action = pull_head(&mut f, t0 + Duration::from_secs(2), 2, 3, 1, NOW);
        assert_eq!(fetch(action), Object::Delta(3));
    }

    #[test]
    fn a_seed_that_is_not_the_feeds_is_replaced_by_its_snapshot_never_stacked_on() {
        let ours = [7; 32];
        let theirs = [9; 32];
        let unknown = list(1, Some(0), Some(ours)).sign(&key(1)).unwrap();
        // (the seed's epoch, the head, what the feed answers for the list at that epoch, why)
        let cases = vec![
            (
                1,
                (3, 2),
                Ok(delta(1, Some(theirs))),
                "the feed's state at epoch 1 has digest 0909090909090909",
            ),
            (
                1,
                (3, 2),
                Err(FeedError::Missing("delta-1.cose".into())),
                "the feed has no list at epoch 1 (delta-1.cose)",
            ),
            (
                1,
                (3, 2),
                Ok(delta(1, None)),
                "the feed's delta-1.cose carries no state digest to compare (version 1)",
            ),
            (
                1,
                (3, 2),
                Ok(unknown),
                "the feed's delta-1.cose is refused: ",
            ),
            (4, (3, 2), Ok(vec![]), "the feed is at epoch 3"),
        ];
        for (seed, (e, s), answer, why) in cases {
            let t0 = Instant::now();
            let mut f = Follower::new(&config(300, OfflinePolicy::FailClosed, NOW), true, t0);
            assert_eq!(fetch(f.start(t0, in_force(seed, ours))), Object::Head);
            let mut action = f.on_fetched(Object::Head, Ok(head(e, s)), NOW);
            if seed <= e {
                assert_eq!(fetch(action), Object::Delta(seed), "{why}");
                action = f.on_fetched(Object::Delta(seed), answer, NOW);
            }
            let notes = f.take_notes();
            let [Note::Warn(line)] = notes.as_slice() else {
                panic!("{why}: {notes:?}");
            };
            assert!(
                line.contains(&format!(
                    "(epoch {seed}, {seed} entries, digest 0707070707070707)"
                )) && line.contains(why)
                    && line.ends_with("replacing it with the feed's snapshot 2"),
                "{line}"
            );
            assert!(!f.matched(), "{why}");
            assert_eq!(fetch(action), Object::Snapshot(2), "{why}");
            let action = f.on_fetched(Object::Snapshot(2), Ok(snapshot(2, Some(theirs))), NOW);
            assert!(
                matches!(
                    action,
                    Action::ApplySnapshot {
                        epoch: 2,
                        replace: true,
                        ..
                    }
                ),
                "{why}: whatever the epoch in force"
            );
            assert_eq!(fetch(f.on_applied(Ok(2), NOW)), Object::Delta(3), "{why}");
            let action = f.on_fetched(Object::Delta(3), Ok(delta(3, None)), NOW);
            assert!(matches!(action, Action::ApplyDelta { epoch: 3, .. }));
            assert_eq!(done(f.on_applied(Ok(3), NOW)).result.unwrap(), 3);
            assert!(f.matched());
            let counts = f.take_counts();
            assert_eq!(
                (
                    counts.replaced,
                    counts.snapshots,
                    counts.deltas,
                    counts.syncs
                ),
                (1, 1, 1, 1),
                "{why}"
            );
            assert_eq!(counts.refused, [0; 4], "a seed check refuses nothing");
        }
    }

    #[test]
    fn a_seed_check_the_feed_cannot_answer_is_asked_again_next_pull() {
        let t0 = Instant::now();
        let mut f = Follower::new(&config(300, OfflinePolicy::FailClosed, NOW), true, t0);
        let action = pull_head(&mut f, t0, 1, 2, 1, NOW);
        assert_eq!(fetch(action), Object::Snapshot(1));
        let down = FeedError::Fetch {
            object: "snapshot-1.cose".into(),
            problem: "timed out".into(),
        };
        let pulled = done(f.on_fetched(Object::Snapshot(1), Err(down), NOW));
        assert!(pulled.first_failure && pulled.result.is_err());
        assert_eq!(f.confirmed(), NOW, "unchanged");
        let action = pull_head(&mut f, t0 + Duration::from_secs(2), 1, 2, 1, NOW + 2);
        assert_eq!(fetch(action), Object::Snapshot(1));
    }

    #[test]
    fn a_gap_is_settled_by_a_newer_snapshot_and_otherwise_ends_the_pull() {
        // Delta 4 is missing; snapshot 5 is newer than epoch 3.
        let mut f = current_at(3, 300, OfflinePolicy::FailClosed);
        assert_eq!(
            fetch(pull_head(&mut f, Instant::now(), 3, 6, 5, NOW)),
            Object::Delta(4)
        );
        let missing = FeedError::Missing("delta-4.cose".into());
        let action = f.on_fetched(Object::Delta(4), Err(missing), NOW);
        assert_eq!(
            f.take_notes(),
            [Note::Info(
                "revocation feed: delta-4.cose: not found; fetching snapshot 5".into()
            )]
        );
        assert_eq!(fetch(action), Object::Snapshot(5));
        let action = f.on_fetched(Object::Snapshot(5), Ok(snapshot(5, None)), NOW);
        assert!(matches!(
            action,
            Action::ApplySnapshot {
                epoch: 5,
                replace: false,
                ..
            }
        ));
        assert_eq!(fetch(f.on_applied(Ok(5), NOW)), Object::Delta(6));
        let action = f.on_fetched(Object::Delta(6), Ok(delta(6, None)), NOW);
        assert!(matches!(action, Action::ApplyDelta { epoch: 6, .. }));
        assert_eq!(done(f.on_applied(Ok(6), NOW)).result.unwrap(), 6);
        let counts = f.take_counts();
        assert_eq!((counts.snapshots, counts.deltas, counts.errors), (1, 1, 0));

        // A delta that does not apply (its digest says the state is not the publisher's) is a
        // gap too; after some deltas applied, from where they left the node.
        let mut f = current_at(3, 300, OfflinePolicy::FailClosed);
        assert_eq!(
            fetch(pull_head(&mut f, Instant::now(), 3, 6, 5, NOW)),
            Object::Delta(4)
        );
        let action = f.on_fetched(Object::Delta(4), Ok(delta(4, None)), NOW);
        assert!(matches!(action, Action::ApplyDelta { epoch: 4, .. }));
        assert_eq!(fetch(f.on_applied(Ok(4), NOW)), Object::Delta(5));
        let action = f.on_fetched(Object::Delta(5), Ok(delta(5, Some([1; 32]))), NOW);
        assert!(matches!(action, Action::ApplyDelta { epoch: 5, .. }));
        let mismatch = FeedError::Apply {
            object: "delta-5.cose".into(),
            source: RevocationError::DigestMismatch {
                epoch: 5,
                expected: [1; 32],
                found: [2; 32],
            },
        };
        assert_eq!(fetch(f.on_applied(Err(mismatch), NOW)), Object::Snapshot(5));
        assert_eq!(f.epoch(), 4);

        // No newer snapshot: the gap ends the pull, the node keeps its epoch.
        let mut f = current_at(3, 300, OfflinePolicy::FailClosed);
        assert_eq!(
            fetch(pull_head(&mut f, Instant::now(), 3, 6, 3, NOW)),
            Object::Delta(4)
        );
        let missing = FeedError::Missing("delta-4.cose".into());
        let pulled = done(f.on_fetched(Object::Delta(4), Err(missing), NOW));
        assert!(matches!(pulled.result, Err(FeedError::Missing(_))));
        assert!(pulled.first_failure);
        assert_eq!((pulled.epoch, f.confirmed()), (3, NOW));
        assert!(f.take_notes().is_empty());
        let counts = f.take_counts();
        assert_eq!((counts.errors, counts.syncs), (1, 0));

        // A gap after the snapshot is not settled by it again.
        let mut f = current_at(3, 300, OfflinePolicy::FailClosed);
        assert_eq!(
            fetch(pull_head(&mut f, Instant::now(), 3, 6, 5, NOW)),
            Object::Delta(4)
        );
        let missing = FeedError::Missing("delta-4.cose".into());
        assert_eq!(
            fetch(f.on_fetched(Object::Delta(4), Err(missing), NOW)),
            Object::Snapshot(5)
        );
        let action = f.on_fetched(Object::Snapshot(5), Ok(snapshot(5, None)), NOW);
        assert!(matches!(action, Action::ApplySnapshot { .. }));
        assert_eq!(fetch(f.on_applied(Ok(5), NOW)), Object::Delta(6));
        let missing = FeedError::Missing("delta-6.cose".into());
        let pulled = done(f.on_fetched(Object::Delta(6), Err(missing), NOW));
        assert!(matches!(pulled.result, Err(FeedError::Missing(_))));
        assert_eq!(pulled.epoch, 5);
    }

    #[test]
    fn refused_lists_are_counted_by_why_and_never_skipped_over() {
        let mut forged = delta(2, None);
        *forged.last_mut().unwrap() ^= 1;
        let cases = [
            (forged, "bad_signature"),
            (list(2, Some(1), None).sign(&key(1)).unwrap(), "unknown_key"),
            (list(2, Some(1), None).encode(), "unsigned"),
            (snapshot(2, None), "malformed"),
            (b"not a list".to_vec(), "malformed"),
        ];
        let mut f = current_at(1, 300, OfflinePolicy::FailClosed);
        for (i, (bytes, why)) in cases.into_iter().enumerate() {
            let at = Instant::now();
            let later = NOW + 10 * (i as u64 + 1);
            assert_eq!(
                fetch(pull_head(&mut f, at, 1, 2, 1, later)),
                Object::Delta(2),
                "{why}"
            );
            let pulled = done(f.on_fetched(Object::Delta(2), Ok(bytes), later));
            match &pulled.result {
                Err(FeedError::Refused { object, source }) => {
                    assert_eq!((object.as_str(), source.label()), ("delta-2.cose", why));
                }
                other => panic!("{why}: {other:?}"),
            }
            assert_eq!(pulled.first_failure, i == 0, "said once per outage");
            assert_eq!(
                (pulled.epoch, f.epoch()),
                (1, 1),
                "{why}: the state is kept"
            );
            assert_eq!(f.confirmed(), NOW, "{why}: not confirmed");
            let counts = f.take_counts();
            assert_eq!((counts.refused(why), counts.errors), (1, 1), "{why}");
            assert_eq!(counts.refused.iter().sum::<u64>(), 1, "{why}");
        }
        // A refused snapshot is counted too (it is opened where it is built).
        let mut f = current_at(1, 300, OfflinePolicy::FailClosed);
        let e = 2 + MAX_DELTAS_PER_SYNC;
        assert_eq!(
            fetch(pull_head(&mut f, Instant::now(), 1, e, e, NOW)),
            Object::Snapshot(e)
        );
        let action = f.on_fetched(Object::Snapshot(e), Ok(vec![0xa0]), NOW);
        assert!(matches!(action, Action::ApplySnapshot { .. }));
        let refused = FeedError::Refused {
            object: Object::Snapshot(e).file_name(),
            source: RevocationListError::Unsigned,
        };
        let pulled = done(f.on_applied(Err(refused), NOW));
        assert!(pulled.result.is_err());
        assert_eq!(f.take_counts().refused("unsigned"), 1);
        assert_eq!(f.epoch(), 1);
    }

    #[test]
    fn a_feed_behind_the_node_is_not_followed_back() {
        let mut f = current_at(5, 300, OfflinePolicy::FailClosed);
        let pulled = done(pull_head(&mut f, Instant::now(), 5, 3, 3, NOW + 1));
        assert!(matches!(
            pulled.result,
            Err(FeedError::Behind { feed: 3, node: 5 })
        ));
        assert_eq!(f.confirmed(), NOW);
    }

    #[test]
    fn the_engine_deadline_follows_confirmations_and_the_policy() {
        // Fail closed: confirmed plus the maximum age, unmoved by failures.
        let mut f = current_at(1, 60, OfflinePolicy::FailClosed);
        assert_eq!(f.fresh_until(), NOW + 60);
        assert!(!f.stale(NOW + 59) && f.stale(NOW + 60));
        let down = || {
            Err(FeedError::Fetch {
                object: "head.json".into(),
                problem: "connection refused".into(),
            })
        };
        // A failure within the maximum age: said once, the state still fresh.
        f.start(Instant::now(), in_force(1, [0; 32]));
        let pulled = done(f.on_fetched(Object::Head, down(), NOW + 30));
        assert!(pulled.first_failure && pulled.staleness.is_none());
        assert_eq!(f.fresh_until(), NOW + 60);
        // Past it: the node starts refusing every token, and says so once.
        f.start(Instant::now(), in_force(1, [0; 32]));
        let pulled = done(f.on_fetched(Object::Head, down(), NOW + 61));
        assert!(!pulled.first_failure);
        match pulled.staleness {
            Some(Note::Warn(line)) => assert!(
                line.contains("epoch 1 is older than max_age_secs (60 s)")
                    && line.contains("every token is denied"),
                "{line}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.fresh_until(), NOW + 60);
        f.start(Instant::now(), in_force(1, [0; 32]));
        let pulled = done(f.on_fetched(Object::Head, down(), NOW + 62));
        assert!(pulled.staleness.is_none(), "said once");
        // The feed is back: confirmed now, judged again, said once.
        let pulled = done(pull_head(&mut f, Instant::now(), 1, 1, 1, NOW + 70));
        assert!(pulled.recovered);
        assert_eq!(
            pulled.staleness,
            Some(Note::Info(
                "revocation feed: epoch 1 confirmed: tokens are judged again".into()
            ))
        );
        assert_eq!(f.fresh_until(), NOW + 70 + 60);
        assert_eq!(f.take_counts().errors, 3);

        // Keep serving: never refused, but stale (and said so) all the same.
        let mut f = current_at(1, 60, OfflinePolicy::KeepServing);
        assert_eq!(f.fresh_until(), u64::MAX);
        f.start(Instant::now(), in_force(1, [0; 32]));
        let pulled = done(f.on_fetched(Object::Head, down(), NOW + 61));
        match pulled.staleness {
            Some(Note::Warn(line)) => assert!(line.contains("still judged on it"), "{line}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.fresh_until(), u64::MAX);

        // No epoch at all: nothing is judged until the snapshot, and that is said at once.
        let t0 = Instant::now();
        let mut f = Follower::new(&config(60, OfflinePolicy::KeepServing, 0), false, t0);
        assert_eq!(f.fresh_until(), 0, "whatever the policy");
        f.start(t0, in_force(0, [0; 32]));
        let pulled = done(f.on_fetched(Object::Head, down(), NOW));
        match pulled.staleness {
            Some(Note::Warn(line)) => assert!(line.contains("no revocation state yet"), "{line}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.fresh_until(), 0);
    }

    #[test]
    fn pulls_fall_due_an_interval_apart_and_a_late_one_moves_the_schedule() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = Follower::new(&config(300, OfflinePolicy::FailClosed, NOW), true, t0);
        assert_eq!(f.deadline(), t0, "the first pull at once");
        f.start(t0, in_force(1, [0; 32]));
        assert_eq!(f.deadline(), t0 + s(2));
        // A pull woken a little late keeps the schedule.
        f.start(t0 + s(2) + Duration::from_millis(3), in_force(1, [0; 32]));
        assert_eq!(f.deadline(), t0 + s(4));
        // One that started long after its time (a slow pull before it) counts from its start.
        f.start(t0 + s(7), in_force(1, [0; 32]));
        assert_eq!(f.deadline(), t0 + s(9));
    }

    #[test]
    fn what_was_not_asked_for_ends_the_pull() {
        let mut f = current_at(1, 300, OfflinePolicy::FailClosed);
        let pulled = done(f.on_applied(Ok(2), NOW + 1));
        assert!(pulled.result.is_err());
        assert_eq!((f.epoch(), f.confirmed()), (1, NOW));
        f.start(Instant::now(), in_force(1, [0; 32]));
        let pulled = done(f.on_fetched(Object::Delta(2), Ok(delta(2, None)), NOW + 1));
        assert!(pulled.result.is_err());
        assert_eq!(f.epoch(), 1);
    }

    #[test]
    fn refusing_every_token_is_logged_once_when_it_starts_and_once_when_it_ends() {
        let age = Duration::from_secs(6);
        let fail = OfflinePolicy::FailClosed;
        // No change, nothing said.
        assert_eq!(stale_change(false, false, fail, 3, true, age), None);
        assert_eq!(stale_change(true, true, fail, 3, true, age), None);
        let (warn, line) = stale_change(false, true, fail, 3, true, age).unwrap();
        assert!(warn);
        assert!(
            line.contains("epoch 3") && line.contains("6 s") && line.contains("every token"),
            "{line}"
        );
        let (warn, line) =
            stale_change(false, true, OfflinePolicy::KeepServing, 3, true, age).unwrap();
        assert!(warn && line.contains("still judged"), "{line}");
        let (warn, line) = stale_change(false, true, fail, 0, false, age).unwrap();
        assert!(warn && line.contains("no revocation state yet"), "{line}");
        let (warn, line) = stale_change(true, false, fail, 4, true, age).unwrap();
        assert!(!warn && line.contains("judged again"), "{line}");
    }
}
