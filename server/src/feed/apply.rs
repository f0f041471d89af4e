//! Opening fetched lists and swapping them into the engine. Opening (decode and signature
//! check) is pure; the swap builds the new state aside, swaps it in, and frees the state it
//! replaces on the applying thread ([`retire`]).

use std::sync::Arc;

use gatehouse_core::{Engine, TrustList};
use gatehouse_protocol::{RevocationList, RevocationListError, SignedRevocationList};
use tracing::debug;

use super::priority::{at_lowest_priority, retire, RETIRE_WAIT};
use super::source::{FeedError, Object};

/// Decodes and authenticates a fetched list with the trust list's revocation keys.
pub fn open_list(bytes: &[u8], trust: &TrustList) -> Result<RevocationList, RevocationListError> {
    SignedRevocationList::open(bytes, |kid| trust.revocation_key(kid).map(|k| &k.public))
}

/// Opens a fetched list as the object it was fetched as: authentic, and the kind (snapshot or
/// delta) and epoch its name says. Anything else is [`FeedError::Refused`].
pub fn open_object(
    object: Object,
    bytes: &[u8],
    trust: &TrustList,
) -> Result<RevocationList, FeedError> {
    let refused = |source: RevocationListError| FeedError::Refused {
        object: object.file_name(),
        source,
    };
    let list = open_list(bytes, trust).map_err(refused)?;
    let wrong_kind = match object {
        Object::Snapshot(n) => list.base.is_some() || list.epoch != n,
        Object::Delta(n) => list.base.is_none() || list.epoch != n,
        Object::Head => true,
    };
    if wrong_kind {
        return Err(refused(RevocationListError::Malformed(
            gatehouse_protocol::DecodeError::Inconsistent("list is not the object it is named as"),
        )));
    }
    Ok(list)
}

/// Swaps an opened list into the engine and frees the state it replaces, on the calling
/// thread. With `replace`, a snapshot replaces the state whatever its epoch (the state in
/// force is not the feed's). Returns the epoch now in force.
pub(super) fn swap(
    engine: &Engine,
    object: Object,
    list: RevocationList,
    replace: bool,
) -> Result<u64, FeedError> {
    let revocations = engine.revocations();
    let swapped = if replace {
        revocations.replace_returning_previous(&list)
    } else {
        revocations.apply_returning_previous(&list)
    };
    let (epoch, previous) = swapped.map_err(|source| FeedError::Apply {
        object: object.file_name(),
        source,
    })?;
    drop(list);
    if !retire(previous, RETIRE_WAIT) {
        debug!("a verification held the replaced revocation state: it frees it");
    }
    Ok(epoch)
}

/// Opens and swaps one fetched list, all on the calling thread. Verification keeps the old
/// epoch until the swap.
pub(super) fn verify_and_swap(
    engine: &Engine,
    object: Object,
    bytes: Vec<u8>,
    replace: bool,
) -> Result<u64, FeedError> {
    let list = open_object(object, &bytes, &engine.trust())?;
    drop(bytes);
    swap(engine, object, list, replace)
}

/// Verifies and builds snapshot `n` on a [`super::SNAPSHOT_THREAD`] at the lowest priority (a
/// million entries take about a second of CPU).
pub(super) async fn apply_snapshot(
    engine: &Arc<Engine>,
    n: u64,
    bytes: Vec<u8>,
    replace: bool,
) -> Result<u64, FeedError> {
    let e = Arc::clone(engine);
    at_lowest_priority(move || verify_and_swap(&e, Object::Snapshot(n), bytes, replace))
        .await
        .map_err(|e| FeedError::Fetch {
            object: Object::Snapshot(n).file_name(),
            problem: format!("snapshot thread: {e}"),
        })?
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use gatehouse_core::{EngineConfig, RevocationKey, RevocationState, ScannerRegistry};
    use gatehouse_dev::population;
    use gatehouse_protocol::{RevocationEntry, RevocationKind};

    use super::*;

    fn test_engine(key: &gatehouse_protocol::PrivateKey) -> Arc<Engine> {
        let mut trust = population::trust_list(&population::issuer_key(3));
        trust.insert_revocation_key(RevocationKey {
            name: "feed unit test revocations (TEST ONLY)".into(),
            public: key.public().clone(),
        });
        let config = EngineConfig {
            threads: 1,
            replay_capacity: 1024,
            issuer_cache_capacity: 1024,
            ..EngineConfig::default()
        };
        Arc::new(Engine::new(config, trust, ScannerRegistry::new()).unwrap())
    }

    fn snapshot(key: &gatehouse_protocol::PrivateKey, epoch: u64, n: u64) -> Vec<u8> {
        RevocationList {
            epoch,
            base: None,
            revoke: (0..n)
                .map(|i| {
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&i.to_le_bytes());
                    id[8..].copy_from_slice(&epoch.to_le_bytes());
                    RevocationEntry {
                        kind: RevocationKind::Credential,
                        id,
                    }
                })
                .collect(),
            reinstate: vec![],
            digest: None,
        }
        .sign(key)
        .unwrap()
    }

    /// A verification that loaded the old epoch just before the swap lets go of it after the
    /// swap: it must not be the one that frees it. The thread that applied the list frees it
    /// (`Revocations::apply`, which simply drops it, fails this test).
    #[test]
    fn the_replaced_state_is_freed_by_the_applying_thread_not_by_the_last_verification() {
        let key = population::derive_key("feed unit test revocation key (TEST ONLY)", 0);
        let engine = test_engine(&key);
        verify_and_swap(&engine, Object::Snapshot(1), snapshot(&key, 1, 5000), false).unwrap();
        // A verification on this thread holds epoch 1.
        let held = engine.revocations().load();
        assert_eq!(held.epoch(), 1);
        let second = snapshot(&key, 2, 5000);
        let applier = std::thread::spawn({
            let engine = Arc::clone(&engine);
            move || {
                let freed = RevocationState::freed_on_this_thread();
                let epoch = verify_and_swap(&engine, Object::Snapshot(2), second, false);
                (
                    epoch.unwrap(),
                    RevocationState::freed_on_this_thread() - freed,
                )
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while engine.revocation_epoch().0 != 2 {
            assert!(Instant::now() < deadline, "epoch 2 was never swapped in");
            std::thread::sleep(Duration::from_millis(1));
        }
        let freed_here = RevocationState::freed_on_this_thread();
        drop(held);
        assert_eq!(
            RevocationState::freed_on_this_thread(),
            freed_here,
            "the verification's thread freed the replaced state"
        );
        let (epoch, freed_there) = applier.join().unwrap();
        assert_eq!(epoch, 2);
        assert_eq!(
            freed_there, 1,
            "the applying thread freed the replaced state"
        );
        assert_eq!(engine.revocation_epoch(), (2, 5000));
    }

    #[test]
    fn a_list_is_opened_only_as_the_object_it_is_named_as() {
        let key = population::derive_key("feed unit test revocation key (TEST ONLY)", 0);
        let engine = test_engine(&key);
        let bytes = snapshot(&key, 3, 2);
        assert_eq!(
            open_object(Object::Snapshot(3), &bytes, &engine.trust())
                .unwrap()
                .epoch,
            3
        );
        for wrong in [Object::Snapshot(4), Object::Delta(3), Object::Head] {
            let e = open_object(wrong, &bytes, &engine.trust()).unwrap_err();
            assert!(
                matches!(e, FeedError::Refused { source, .. } if source.label() == "malformed"),
                "{wrong:?}"
            );
        }
    }
}
