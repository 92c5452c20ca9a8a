//! One at a time per key: the turns of upstream lookups (per store hash), of pushed narinfos and of
//! remade transcoded NARs (per FileHash). Whoever waits for a key's turn runs after the one holding it,
//! and usually finds its work done.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// Each key's entry counts the requests registered for it (holding or waiting for its turn) and is
/// removed when the last one leaves. The count is explicit, kept under the table's lock: counting the
/// `Arc`s of the turn's mutex instead (as an earlier version did) left entries behind, because a guard
/// releases the mutex before it drops its `Arc`, so the next holder could leave while the count still
/// included the previous one; and a request cancelled while it waited never came back to clean up.
pub struct Turns<K> {
    turns: std::sync::Mutex<HashMap<K, Turn>>,
}

struct Turn {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Requests holding or waiting for this turn.
    registered: usize,
}

/// Holds a key's turn; gives it up (and forgets the key when nobody else waits) when dropped.
pub struct TurnGuard<'a, K: Hash + Eq + Copy> {
    // Field order matters: the turn is released before the registration is counted out.
    _held: tokio::sync::OwnedMutexGuard<()>,
    _registration: Registration<'a, K>,
}

/// One request's place in a key's entry, counted out when dropped: also when the request is cancelled
/// while it waits.
struct Registration<'a, K: Hash + Eq + Copy> {
    turns: &'a Turns<K>,
    key: K,
}

impl<K> Default for Turns<K> {
    fn default() -> Turns<K> {
        Turns {
            turns: std::sync::Mutex::default(),
        }
    }
}

impl<K: Hash + Eq + Copy> Turns<K> {
    /// The table; a panic elsewhere while it was held cannot leave it unusable (the counts stay right:
    /// nothing between taking and releasing the lock can panic).
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<K, Turn>> {
        self.turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keys with a turn held or waited for.
    pub fn in_flight(&self) -> usize {
        self.table().len()
    }

    /// Waits for `key`'s turn.
    pub async fn turn(&self, key: K) -> TurnGuard<'_, K> {
        let lock = {
            let mut turns = self.table();
            let turn = turns.entry(key).or_insert_with(|| Turn {
                lock: Arc::default(),
                registered: 0,
            });
            turn.registered += 1;
            turn.lock.clone()
        };
        let registration = Registration { turns: self, key };
        let held = lock.lock_owned().await;
        TurnGuard {
            _held: held,
            _registration: registration,
        }
    }
}

impl<K: Hash + Eq + Copy> Drop for Registration<'_, K> {
    fn drop(&mut self) {
        let mut turns = self.turns.table();
        if let Some(turn) = turns.get_mut(&self.key) {
            turn.registered = turn.registered.saturating_sub(1);
            if turn.registered == 0 {
                turns.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::store_path::StoreHash;

    fn hash(c: char) -> StoreHash {
        c.to_string().repeat(32).parse().expect("a store hash")
    }

    /// The first flake of `concurrent_requests_for_one_missing_narinfo_ask_upstream_once`: a request
    /// cancelled after its turn came but before it ran (its client went away) left the entry behind.
    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_cancelled_after_its_turn_came_leaves_nothing_behind() {
        let lookups = Arc::new(Turns::<StoreHash>::default());
        let holder = lookups.turn(hash('a')).await;
        let l = lookups.clone();
        let waiter = tokio::spawn(async move {
            let _turn = l.turn(hash('a')).await;
        });
        tokio::task::yield_now().await;
        drop(holder);
        waiter.abort();
        assert!(waiter.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(lookups.in_flight(), 0);
    }

    /// The second cause: the next holder finishing between the previous one's release of the turn and
    /// the drop of its `Arc` (a window of a few instructions, seen as an off-by-one count in the serving
    /// test but too narrow to hit on purpose). With explicit counts every round must end empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn turns_taken_and_left_on_many_threads_leave_nothing_behind() {
        let lookups = Arc::new(Turns::<StoreHash>::default());
        for round in 0..300 {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let l = lookups.clone();
                    tokio::spawn(async move {
                        let _turn = l.turn(hash('b')).await;
                        tokio::task::yield_now().await;
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
            assert_eq!(lookups.in_flight(), 0, "round {round}");
        }
    }
}
