//! Keeping the feed's heavy work out of verification's way: a snapshot is verified and built
//! on a thread at the lowest CPU priority (SCHED_IDLE on Linux), and a replaced revocation
//! state is freed by the thread that replaced it, never by a verification thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_core::RevocationState;
use tracing::warn;

/// The name of the thread that verifies and builds a snapshot at the lowest priority.
pub const SNAPSHOT_THREAD: &str = "gatehouse-snap";
/// The short-lived thread that lowers its priority and starts a [`SNAPSHOT_THREAD`] from it.
pub const LAUNCH_THREAD: &str = "gatehouse-idle";
/// How long a replaced revocation state waits for the verifications that still hold it before
/// the feed lets it go all the same. A verification holds a state for one batch (well under
/// a millisecond), so this is only reached by a reader stuck for some other reason.
pub(super) const RETIRE_WAIT: Duration = Duration::from_secs(2);

/// Why the calling thread could not be given the lowest CPU priority.
#[derive(Debug, thiserror::Error)]
#[error("cannot lower the thread's CPU priority: {0}")]
pub struct PriorityError(#[from] thread_priority::Error);

/// Puts the calling thread, and only it, at the lowest CPU priority: SCHED_IDLE on Linux, the
/// lowest nice value elsewhere. A SCHED_IDLE thread runs only on a core that nothing else
/// wants, and a waking verification thread preempts it at once; verification threads keep
/// their normal priority (lowering theirs made the tail worse).
pub fn lower_this_thread_priority() -> Result<(), PriorityError> {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
        thread_priority::set_thread_priority_and_policy(
            thread_priority::thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        )?;
    }
    #[cfg(not(target_os = "linux"))]
    thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)?;
    Ok(())
}

/// Runs `job` on a new [`SNAPSHOT_THREAD`] at the lowest CPU priority and waits for its answer
/// without holding the caller's runtime.
pub async fn at_lowest_priority<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    // A thread is created with its creator's policy, so a launcher lowers itself first and the
    // snapshot thread starts at the lowest priority: no instant of it runs at normal priority.
    std::thread::Builder::new()
        .name(LAUNCH_THREAD.into())
        .spawn(move || {
            if let Err(e) = lower_this_thread_priority() {
                warn!("revocation feed: {e}; the snapshot is built at normal priority");
            }
            let spawned = std::thread::Builder::new()
                .name(SNAPSHOT_THREAD.into())
                .spawn(move || {
                    let _ = answer.send(job());
                });
            if let Err(e) = spawned {
                warn!("revocation feed: cannot start the snapshot thread: {e}");
            }
        })?;
    answered
        .await
        .map_err(|_| std::io::Error::other("the snapshot thread ended without an answer"))
}

/// Frees a replaced revocation state on the calling thread once no verification holds it:
/// the last reference to a million-entry state frees tens of MB, which must not fall to a
/// verification thread that loaded it just before the swap. Returns whether it was freed
/// here; after `wait` the reference is let go and the last reader frees it.
pub fn retire(state: Arc<RevocationState>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut state = state;
    loop {
        match Arc::try_unwrap(state) {
            Ok(unshared) => {
                drop(unshared);
                return true;
            }
            Err(shared) if Instant::now() < deadline => {
                state = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy of the calling thread, read back from the kernel (field 41 of
    /// `/proc/thread-self/stat`; SCHED_OTHER is 0, SCHED_IDLE 5).
    #[cfg(target_os = "linux")]
    fn policy_of_this_thread() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name may hold spaces: fields are counted after its closing parenthesis.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_lowered_thread_runs_sched_idle_and_no_other_thread_does() {
        let caller = policy_of_this_thread();
        let lowered = std::thread::spawn(|| {
            let before = policy_of_this_thread();
            lower_this_thread_priority().unwrap();
            (before, policy_of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (0, 5), "SCHED_OTHER before, SCHED_IDLE after");
        assert_eq!(
            policy_of_this_thread(),
            caller,
            "the caller's thread is unchanged"
        );
        assert_eq!(caller, 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn snapshot_jobs_run_at_sched_idle_and_answer_the_caller() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (policy, name) = runtime
            .block_on(at_lowest_priority(|| {
                let name = std::thread::current().name().map(str::to_string);
                (policy_of_this_thread(), name)
            }))
            .unwrap();
        assert_eq!(policy, 5, "SCHED_IDLE");
        assert_eq!(name.as_deref(), Some(SNAPSHOT_THREAD));
        assert_eq!(policy_of_this_thread(), 0, "the caller keeps SCHED_OTHER");
    }

    #[test]
    fn a_state_held_past_the_wait_is_let_go_to_its_last_reader() {
        let wait = Duration::from_millis(50);
        let freed = RevocationState::freed_on_this_thread();
        assert!(retire(Arc::new(RevocationState::empty().unwrap()), wait));
        assert_eq!(RevocationState::freed_on_this_thread(), freed + 1);
        let state = Arc::new(RevocationState::empty().unwrap());
        let reader = Arc::clone(&state);
        let started = Instant::now();
        assert!(!retire(state, wait), "a reader still holds it");
        assert!(started.elapsed() >= wait);
        assert_eq!(Arc::strong_count(&reader), 1, "the reader frees it");
    }
}
