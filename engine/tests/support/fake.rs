//! A shared one-time-use store in memory that behaves as the mark script on Redis does, and can
//! be made to forget, change identity or answer late: the fence's tests run over it, with the
//! suites' fake clock and no network.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use gatehouse_engine::server::{Answer, Backend, Fault, NewLife, Settings};
use gatehouse_engine::{Entry, Life, MarkRequest};
use parking_lot::Mutex;

use super::Faults;

#[derive(Default)]
struct State {
    /// Replay id → (expiry in ms of the suite's clock, entry).
    marks: HashMap<[u8; 16], (u64, Entry)>,
    /// The life key's value, as the script keeps it: "<run id> <nonce> <fence>".
    life: Option<String>,
}

/// The fake store.
pub struct FakeBackend {
    state: Mutex<State>,
    run: AtomicU64,
    slow: AtomicBool,
}

impl FakeBackend {
    /// An empty store, process 1.
    pub fn new() -> Self {
        FakeBackend {
            state: Mutex::new(State::default()),
            run: AtomicU64::new(1),
            slow: AtomicBool::new(false),
        }
    }

    /// The script's life step: the value of the life key after it.
    fn life(&self, state: &mut State, new_life: &NewLife) -> Life {
        let run = format!("run{}", self.run.load(Ordering::Relaxed));
        let keep = state
            .life
            .as_deref()
            .is_some_and(|l| l.starts_with(&format!("{run} ")));
        if !keep {
            state.life = Some(format!("{run} {} {}", new_life.nonce, new_life.fence));
        }
        let value = state.life.clone().unwrap_or_default();
        let (id, fence) = value.rsplit_once(' ').unwrap_or((&value, "0"));
        Life {
            shard: 0,
            id: id.to_string(),
            fence: fence.parse().unwrap_or(0),
        }
    }

    async fn maybe_late(&self) {
        if self.slow.load(Ordering::Relaxed) {
            // Far past any test store's timeout; the store's own timeout cuts it.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
}

impl Backend for FakeBackend {
    fn label(&self) -> &'static str {
        "fake"
    }

    fn mark<'a>(
        &'a self,
        marks: &'a [MarkRequest],
        now: u64,
        new_life: &'a NewLife,
    ) -> BoxFuture<'a, Result<Answer, Fault>> {
        Box::pin(async move {
            self.maybe_late().await;
            let mut state = self.state.lock();
            let life = self.life(&mut state, new_life);
            let now_ms = now * 1000;
            let taken = marks
                .iter()
                .map(|m| {
                    // SET NX PX GET: the live entry if there is one, else store this one.
                    if let Some(&(expiry, first)) = state.marks.get(&m.replay_id) {
                        if expiry > now_ms {
                            return Some(first);
                        }
                    }
                    // The TTL the Redis backend gives: to the token's expiry plus the skew.
                    let ttl_ms = (m.expiry.saturating_sub(now) + 5).max(1) * 1000;
                    state.marks.insert(m.replay_id, (now_ms + ttl_ms, m.entry));
                    None
                })
                .collect();
            Ok(Answer {
                taken,
                lives: vec![life],
            })
        })
    }

    fn reconnect<'a>(&'a self, new_life: &'a NewLife) -> BoxFuture<'a, Result<Vec<Life>, Fault>> {
        Box::pin(async move {
            self.maybe_late().await;
            let mut state = self.state.lock();
            Ok(vec![self.life(&mut state, new_life)])
        })
    }

    fn settings(&self) -> BoxFuture<'_, Settings> {
        Box::pin(async { Settings::default() })
    }
}

impl Faults for FakeBackend {
    fn forget(&self) {
        *self.state.lock() = State::default();
    }

    fn change_identity(&self) {
        // Another process that kept every mark (a restart with persistence): only the run id
        // tells.
        self.run.fetch_add(1, Ordering::Relaxed);
    }

    fn slow(&self, slow: bool) {
        self.slow.store(slow, Ordering::Relaxed);
    }
}
