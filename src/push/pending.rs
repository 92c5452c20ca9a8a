//! What pushes hold between two requests: NAR files uploaded and waiting for their narinfo (bounded in
//! count, bytes and age), the bytes each token holds against its quota and `push_max_size`, and one
//! turn per NAR so that two builders pushing the same path at once end with one copy.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::PushError;
use crate::budget::Reservation;
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::store::TempGuard;

/// Bytes per token: stored (recorded pushes) and held (uploads running or waiting for their narinfo).
#[derive(Default)]
pub struct Ledger {
    state: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    /// Token → (bytes of pushed NAR files stored, pushed paths).
    stored: HashMap<String, (u64, u64)>,
    /// Token → bytes of uploads running or pending.
    held: HashMap<String, u64>,
}

/// Bytes held for one upload; given back when dropped.
pub struct Hold {
    ledger: Arc<Ledger>,
    token: String,
    bytes: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Ok(mut s) = self.ledger.state.lock()
            && let Some(h) = s.held.get_mut(&self.token)
        {
            *h = h.saturating_sub(self.bytes);
        }
    }
}

impl Ledger {
    /// Holds `bytes` for an upload by `token`, within its `quota` and within `push_max` for all.
    pub fn hold(
        self: &Arc<Self>,
        token: &str,
        quota: Option<u64>,
        bytes: u64,
        push_max: u64,
    ) -> Result<Hold, PushError> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| PushError::Internal("push ledger poisoned".into()))?;
        let total: u64 = s.stored.values().map(|v| v.0).sum::<u64>() + s.held.values().sum::<u64>();
        if total.saturating_add(bytes) > push_max {
            return Err(PushError::PushFull);
        }
        let mine = s.stored.get(token).map_or(0, |v| v.0) + s.held.get(token).copied().unwrap_or(0);
        if quota.is_some_and(|q| mine.saturating_add(bytes) > q) {
            return Err(PushError::Quota(token.to_string()));
        }
        *s.held.entry(token.to_string()).or_default() += bytes;
        Ok(Hold {
            ledger: self.clone(),
            token: token.to_string(),
            bytes,
        })
    }

    /// Whether `token` may record a path of `bytes` more (its NAR may have been uploaded by another).
    pub fn check_quota(
        &self,
        token: &str,
        quota: Option<u64>,
        bytes: u64,
    ) -> Result<(), PushError> {
        let Some(q) = quota else { return Ok(()) };
        let s = self
            .state
            .lock()
            .map_err(|_| PushError::Internal("push ledger poisoned".into()))?;
        match s.stored.get(token) {
            Some((b, _)) if b.saturating_add(bytes) > q => Err(PushError::Quota(token.to_string())),
            None if bytes > q => Err(PushError::Quota(token.to_string())),
            _ => Ok(()),
        }
    }

    /// Counts a recorded push.
    pub fn stored(&self, token: &str, bytes: u64) {
        if let Ok(mut s) = self.state.lock() {
            let e = s.stored.entry(token.to_string()).or_default();
            e.0 += bytes;
            e.1 += 1;
        }
    }

    /// Replaces the stored figures with what the index says (at start, after a reconcile).
    pub fn set_stored(&self, stored: HashMap<String, (u64, u64)>) {
        if let Ok(mut s) = self.state.lock() {
            s.stored = stored;
        }
    }

    /// `token`'s (stored bytes, stored paths, held bytes).
    pub fn usage(&self, token: &str) -> (u64, u64, u64) {
        let Ok(s) = self.state.lock() else {
            return (0, 0, 0);
        };
        let (bytes, paths) = s.stored.get(token).copied().unwrap_or((0, 0));
        (bytes, paths, s.held.get(token).copied().unwrap_or(0))
    }
}

/// A NAR file uploaded and checked against its name, waiting for its narinfo.
pub struct PendingNar {
    /// Its name (FileHash and compression).
    pub name: NarName,
    /// The temp file.
    pub file: File,
    /// Removes the temp file unless it is committed.
    pub guard: TempGuard,
    /// Its size.
    pub size: u64,
    /// The token that uploaded it.
    pub token: String,
    since: Instant,
    /// Its bytes in the ledger and in the disk budget, until it is committed or dropped.
    _hold: Hold,
    _reservation: Reservation,
}

impl PendingNar {
    /// A file that was just received and checked.
    pub fn new(
        name: NarName,
        (guard, file): (TempGuard, File),
        size: u64,
        token: &str,
        hold: Hold,
        reservation: Reservation,
    ) -> PendingNar {
        PendingNar {
            name,
            file,
            guard,
            size,
            token: token.to_string(),
            since: Instant::now(),
            _hold: hold,
            _reservation: reservation,
        }
    }
}

/// The uploads waiting for their narinfo, by FileHash.
#[derive(Default)]
pub struct PendingNars {
    nars: Mutex<HashMap<Sha256Hash, PendingNar>>,
}

impl PendingNars {
    /// Adds an upload; false (and the file dropped) when the same NAR is already waiting.
    pub fn insert(&self, nar: PendingNar) -> bool {
        let Ok(mut nars) = self.nars.lock() else {
            return false;
        };
        if nars.contains_key(&nar.name.file_hash) {
            return false;
        }
        nars.insert(nar.name.file_hash, nar);
        true
    }

    /// Takes the upload of this NAR, if it waits.
    pub fn take(&self, file_hash: &Sha256Hash) -> Option<PendingNar> {
        self.nars.lock().ok()?.remove(file_hash)
    }

    /// Whether this NAR waits.
    pub fn contains(&self, file_hash: &Sha256Hash) -> bool {
        self.nars
            .lock()
            .map(|n| n.contains_key(file_hash))
            .unwrap_or(false)
    }

    /// (uploads waiting, their bytes).
    pub fn counts(&self) -> (usize, u64) {
        self.nars
            .lock()
            .map(|n| (n.len(), n.values().map(|p| p.size).sum()))
            .unwrap_or((0, 0))
    }

    /// Drops the uploads that waited longer than `timeout` (their files are removed). Returns them
    /// as (NAR name, token).
    pub fn expire(&self, timeout: Duration) -> Vec<(NarName, String)> {
        let Ok(mut nars) = self.nars.lock() else {
            return Vec::new();
        };
        let old: Vec<Sha256Hash> = nars
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= timeout)
            .map(|(h, _)| *h)
            .collect();
        old.iter()
            .filter_map(|h| nars.remove(h))
            .map(|p| (p.name, p.token.clone()))
            .collect()
    }
}

/// NAR files being moved into the store by a push: the orphan sweep leaves them alone.
#[derive(Default)]
pub struct Committing {
    set: Mutex<HashSet<Sha256Hash>>,
}

/// Marks a NAR as being committed until dropped.
pub struct CommittingGuard<'a> {
    committing: &'a Committing,
    file_hash: Sha256Hash,
}

impl Committing {
    /// Marks `file_hash` (waits while the sweep checks it).
    pub fn start(&self, file_hash: Sha256Hash) -> CommittingGuard<'_> {
        if let Ok(mut set) = self.set.lock() {
            set.insert(file_hash);
        }
        CommittingGuard {
            committing: self,
            file_hash,
        }
    }

    /// Runs `f` unless `file_hash` is being committed, under the lock a commit takes to start.
    pub fn unless_committing<T>(&self, file_hash: &Sha256Hash, f: impl FnOnce() -> T) -> Option<T> {
        let set = self.set.lock().ok()?;
        if set.contains(file_hash) {
            return None;
        }
        Some(f())
    }
}

impl Drop for CommittingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.committing.set.lock() {
            set.remove(&self.file_hash);
        }
    }
}
