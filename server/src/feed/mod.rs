//! Following a revocation feed (SPEC §11.3): every node pulls the feed's head every few
//! seconds, applies the signed deltas after its epoch in order, and fetches the latest snapshot
//! when it is behind by more than a few deltas or finds a gap. An update is built aside and
//! swapped in, so verification goes on with the old epoch meanwhile.
//!
//! The follower runs on a thread of its own ([`FEED_THREAD`]) with a small runtime of its own,
//! so fetches never run on the server's runtime threads. A snapshot is verified and built, and
//! the state it replaces freed, on a further thread ([`SNAPSHOT_THREAD`]) at the lowest CPU
//! priority (SCHED_IDLE on Linux): that second of CPU is only taken when no verification
//! wants it. Deltas, the path by which a new revocation is enforced, stay at normal priority,
//! so a node whose cores are busy still enforces them within the interval.
//!
//! A feed is a directory, an HTTP(S) base URL or a Redis key prefix, holding `head.json`,
//! `snapshot-S.cose` and `delta-N.cose` (Redis: `PREFIX:head`, `PREFIX:snapshot:S`,
//! `PREFIX:delta:N`). Every list must be signed by a revocation key the trust list names; a
//! refused list is counted by why, logged, and changes nothing.
//!
//! The node's revocation **age** is the time since it last found itself current. Past
//! [`FeedConfig::max_age`], `/readyz` fails (unless [`FeedConfig::readiness`] is off) and, by
//! default ([`OfflinePolicy::FailClosed`]), the engine denies every token with
//! `revocations_stale` until the feed is back. An edge gate whose link is down is this same
//! code: it keeps verifying on its last signed epoch until the maximum age.
//!
//! The parts, by job:
//!
//! - `source`: what a feed is ([`FeedSource`], [`FeedConfig`], [`Object`], [`FeedHead`]) and
//!   why reading it fails ([`FeedError`]);
//! - `transport`: moving its objects ([`Transport`]: [`Directory`], [`Http`], [`Redis`]),
//!   shared with the publisher (`gatehouse issuer revoke --feed`, `issuer compact`);
//! - `follower`: what to fetch and what to do with it ([`Follower`]), a state machine with no
//!   IO and no clock;
//! - `apply`: opening lists and swapping them into the engine;
//! - `priority`: the lowest-priority snapshot thread and freeing replaced states;
//! - `status`: what `/metrics` and `/readyz` say of the feed ([`FeedStatus`]);
//! - here, the driver: it asks the follower, calls the transport, applies to the engine, and
//!   sleeps until the follower's deadline.

mod apply;
mod follower;
mod priority;
mod source;
mod status;
mod transport;

use std::sync::Arc;
use std::time::Instant;

use gatehouse_core::{Clock, Engine};
use tracing::{debug, info, warn};

pub use apply::{open_list, open_object};
pub use follower::{Action, Counts, Follower, InForce, Note, Pulled, Request, MAX_DELTAS_PER_SYNC};
pub use priority::{
    at_lowest_priority, lower_this_thread_priority, retire, PriorityError, LAUNCH_THREAD,
    SNAPSHOT_THREAD,
};
pub use source::{
    file_confirmed_at, parse_head, FeedConfig, FeedError, FeedHead, FeedSource, Object,
    OfflinePolicy,
};
pub use status::FeedStatus;
pub use transport::{AnyTransport, Directory, Http, Redis, Transport};

/// The name of the feed follower's thread (and of its runtime's blocking threads).
pub const FEED_THREAD: &str = "gatehouse-feed";

/// Follows the feed until the task is dropped: pulls every `config.interval`, and after each
/// pull moves the engine's revocation deadline. A node whose engine holds no epoch yet (epoch
/// 0, nothing revoked) starts unestablished: it fails closed until the first snapshot.
///
/// The pulls run on the [`FEED_THREAD`], with a single-threaded runtime of their own
/// (snapshots are built at the lowest priority, see [`Action::ApplySnapshot`]); this task only
/// holds that thread's lifetime, and dropping (aborting) it stops the thread at its next
/// await. Should the thread not start, nothing is fetched: the age grows and the offline
/// policy takes over (fail closed by default), as when the feed cannot be set up at all.
pub(crate) async fn follow(engine: Arc<Engine>, config: FeedConfig, status: Arc<FeedStatus>) {
    let (epoch, entries) = engine.revocation_epoch();
    let established = epoch > 0 || entries > 0;
    status.configure(&config, established, config.confirmed_at);
    let follower = Follower::new(&config, established, Instant::now());
    engine.revocations().set_fresh_until(follower.fresh_until());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(FEED_THREAD.into())
        .spawn(move || follow_on_this_thread(engine, config, follower, status, stopped));
    match spawned {
        Ok(_detached) => {
            // Held until this task is dropped: then `stopped` fires on the feed's thread.
            let _stop = stop;
            std::future::pending::<()>().await;
        }
        Err(err) => warn!("revocation feed cannot start its thread: {err}"),
    }
}

/// The feed's thread: a single-threaded runtime that pulls until `stopped`.
fn follow_on_this_thread(
    engine: Arc<Engine>,
    config: FeedConfig,
    follower: Follower,
    status: Arc<FeedStatus>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(FEED_THREAD)
        .build();
    match runtime {
        Ok(runtime) => {
            runtime.block_on(async move {
                tokio::select! {
                    _ = stopped => {}
                    () = pull_forever(engine, config, follower, status) => {}
                }
            });
            // A file read still in flight must not hold the server's shutdown.
            runtime.shutdown_background();
        }
        Err(e) => warn!("revocation feed cannot start its runtime: {e}"),
    }
}

/// The pull loop (see [`follow`]): returns only when the feed cannot be set up at all.
async fn pull_forever(
    engine: Arc<Engine>,
    config: FeedConfig,
    mut follower: Follower,
    status: Arc<FeedStatus>,
) {
    let mut transport = match AnyTransport::open(&config) {
        Ok(t) => t,
        Err(e) => {
            // Nothing can be fetched: the age grows and the policy takes over.
            warn!("revocation feed cannot start: {e}");
            return;
        }
    };
    loop {
        tokio::time::sleep_until(follower.deadline().into()).await;
        pull(
            &engine,
            &mut transport,
            &mut follower,
            &status,
            config.clock.as_ref(),
        )
        .await;
    }
}

/// One pull: carries out what `follower` asks until it is done, keeps `status` up to date
/// after every step, and at the end moves the engine's revocation deadline.
///
/// Deltas are applied on the calling thread (a delta on a million-entry state copies it: tens
/// of milliseconds): call it from the feed's own thread ([`FEED_THREAD`]), not from a runtime
/// that serves scanners. Snapshots go to a [`SNAPSHOT_THREAD`].
async fn pull(
    engine: &Arc<Engine>,
    transport: &mut impl Transport,
    follower: &mut Follower,
    status: &FeedStatus,
    clock: &dyn Clock,
) {
    let mut action = follower.start(Instant::now(), in_force(engine));
    let mut snapshot_started = None;
    loop {
        status.record(follower);
        follower.take_notes().into_iter().for_each(say);
        action = match action {
            Action::Fetch(Request { object, limit }) => {
                if let Object::Snapshot(_) = object {
                    snapshot_started = Some(Instant::now());
                }
                let fetched = transport.get(object, limit).await;
                follower.on_fetched(object, fetched, clock.now())
            }
            Action::ApplyDelta { epoch, list } => {
                let applied = apply::swap(engine, Object::Delta(epoch), list, false);
                follower.on_applied(applied, clock.now())
            }
            Action::ApplySnapshot {
                epoch,
                bytes,
                replace,
            } => {
                let applied = apply::apply_snapshot(engine, epoch, bytes, replace).await;
                if let (Ok(_), Some(started)) = (&applied, snapshot_started) {
                    status.snapshot_took(started.elapsed());
                }
                follower.on_applied(applied, clock.now())
            }
            Action::Done(pulled) => {
                report(pulled);
                engine.revocations().set_fresh_until(follower.fresh_until());
                return;
            }
        };
    }
}

/// The state in force, read from the engine.
fn in_force(engine: &Engine) -> InForce {
    let state = engine.revocations().load();
    InForce {
        epoch: state.epoch(),
        entries: state.len(),
        digest: state.digest(),
        trust: engine.trust(),
    }
}

/// Logs how a pull ended, then the change of staleness it brought, if any.
fn report(pulled: Pulled) {
    match pulled.result {
        Ok(epoch) => {
            if pulled.recovered {
                info!(epoch, "revocation feed reachable again: current");
            }
            debug!(epoch, "revocation feed: current");
        }
        // Logged once per outage, then at debug: a dead link must not flood the log.
        Err(e) if pulled.first_failure => {
            warn!("revocation feed: {e}; keeping epoch {}", pulled.epoch);
        }
        Err(e) => debug!("revocation feed: {e}"),
    }
    if let Some(note) = pulled.staleness {
        say(note);
    }
}

fn say(note: Note) {
    match note {
        Note::Warn(line) => warn!("{line}"),
        Note::Info(line) => info!("{line}"),
    }
}
