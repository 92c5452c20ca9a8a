//! NAR rows: records, which files are stored, batched access times, protection and eviction.

use std::collections::HashMap;
use std::sync::Mutex;

use redb::{ReadableTable, WriteTransaction};

use super::records::{Evicted, NarRecord, StoredNar};
use super::tables::*;
use super::{Index, IndexError, add_counter, counter};
use crate::nix::hash::Sha256Hash;
use crate::nix::store_path::StoreHash;
use crate::sharded::Sharded;

/// Access times noted by hits, written in batches (never one write per hit), one map per thread
/// (`sharded.rs`): hits on two threads do not take the same lock.
#[derive(Default)]
pub(super) struct PendingAccess {
    nars: Sharded<Mutex<HashMap<Sha256Hash, u64>>>,
    narinfos: Sharded<Mutex<HashMap<StoreHash, u64>>>,
}

impl PendingAccess {
    pub(super) fn asked(&self, hash: &StoreHash, now: u64) {
        note(&self.narinfos, *hash, now);
    }
}

fn note<K: std::hash::Hash + Eq>(pending: &Sharded<Mutex<HashMap<K, u64>>>, key: K, now: u64) {
    if let Ok(mut p) = pending.local().lock() {
        p.insert(key, now);
    }
}

/// Every thread's pending times, the latest of each key.
fn take_all<K: std::hash::Hash + Eq>(pending: &Sharded<Mutex<HashMap<K, u64>>>) -> HashMap<K, u64> {
    let mut all = HashMap::new();
    for slot in pending.all() {
        let Ok(mut p) = slot.lock() else { continue };
        for (key, at) in p.drain() {
            let latest = all.entry(key).or_insert(at);
            *latest = (*latest).max(at);
        }
    }
    all
}

impl Index {
    /// The NAR record for `file_hash` and whether the file is on disk.
    pub fn nar(&self, file_hash: &Sha256Hash) -> Result<Option<(NarRecord, bool)>, IndexError> {
        Ok(self
            .nar_with_file(file_hash)?
            .map(|(record, stored, _)| (record, stored)))
    }

    /// As [`Index::nar`], with the bytes of the stored file when this thread remembers them
    /// ([`Index::remember_file`]) as of the current snapshot: then neither table is read.
    pub fn nar_with_file(
        &self,
        file_hash: &Sha256Hash,
    ) -> Result<Option<(NarRecord, bool, Option<bytes::Bytes>)>, IndexError> {
        self.hit(|s| {
            if let Some((record, bytes)) = s.file(&file_hash.0) {
                return Ok(Some((record, true, Some(bytes))));
            }
            let Some(raw) = s.nar.get(file_hash.0)? else {
                return Ok(None);
            };
            let record = NarRecord::decode(raw.value())?;
            let stored = s.stored.get(file_hash.0)?.is_some();
            Ok(Some((record, stored, None)))
        })
    }

    /// Remembers, for this thread until the next commit, the bytes of the file `file_hash` just read
    /// from the store — only while the current snapshot says it is stored (small files only; see
    /// `snapshot.rs`), so nothing the index no longer lists is ever answered from memory.
    /// A failed read only means the file is not remembered (the index notes the failure itself).
    pub fn remember_file(&self, file_hash: &Sha256Hash, record: &NarRecord, bytes: bytes::Bytes) {
        let _ = self.hit(|s| s.remember_file(&file_hash.0, record, bytes));
    }

    /// Marks a NAR as stored (its file was just fsynced and renamed into place) with its exact size,
    /// provided its record is still `expected` — the record the fill verified against. Returns the
    /// new total of stored bytes, or `None` when the record changed or went meanwhile (the caller then
    /// removes the file again).
    pub fn commit_nar(
        &self,
        file_hash: &Sha256Hash,
        expected: &NarRecord,
        size: u64,
        now: u64,
    ) -> Result<Option<u64>, IndexError> {
        self.write_keeping(
            false,
            |tx| commit_nar_in(tx, file_hash, expected, size, now),
            |total| {
                total.is_some().then(|| super::Unsynced::Stored {
                    file_hash: *file_hash,
                    record: expected.clone(),
                    size,
                    now,
                })
            },
        )
    }

    /// Forgets that a NAR is stored (its file vanished or failed a check). Returns its record.
    pub fn unstore_nar(&self, file_hash: &Sha256Hash) -> Result<Option<NarRecord>, IndexError> {
        self.write(true, |tx| unstore(tx, file_hash).map(|o| o.map(|(r, _)| r)))
    }

    /// Notes an access to a stored NAR; written by the next flush.
    pub fn touch(&self, file_hash: &Sha256Hash, now: u64) {
        note(&self.access.nars, *file_hash, now);
    }

    /// Writes the batched access times (NARs and narinfos) in one non-durable transaction.
    pub fn flush_access(&self) -> Result<(), IndexError> {
        let nars = take_all(&self.access.nars);
        let narinfos = take_all(&self.access.narinfos);
        if nars.is_empty() && narinfos.is_empty() {
            return Ok(());
        }
        self.write(false, |tx| {
            let mut stored = tx.open_table(STORED)?;
            for (hash, at) in nars {
                let current = stored.get(hash.0)?.map(|v| v.value());
                if let Some((old, size)) = current
                    && at > old
                {
                    stored.insert(hash.0, (at, size))?;
                }
            }
            let known = tx.open_table(NARINFO)?;
            let mut asked = tx.open_table(NARINFO_ASKED)?;
            for (hash, at) in narinfos {
                if known.get(hash.as_str())?.is_some() {
                    asked.insert(hash.as_str(), at)?;
                }
            }
            Ok(())
        })
    }

    /// Takes least-recently-used, unprotected NARs out of the index until `bytes` are freed (or nothing
    /// evictable is left). Durable, because the caller deletes the files right after: a crash in
    /// between leaves only orphan files, which the sweep removes.
    pub fn evict(&self, bytes: u64) -> Result<Vec<Evicted>, IndexError> {
        self.flush_access()?;
        self.write(true, |tx| {
            let mut by_age: Vec<(u64, [u8; 32])> = Vec::new();
            {
                let protected = tx.open_table(PROTECTED)?;
                for row in tx.open_table(STORED)?.iter()? {
                    let (k, v) = row?;
                    if protected.get(k.value())?.is_none() {
                        by_age.push((v.value().0, k.value()));
                    }
                }
            }
            by_age.sort_unstable();
            let mut freed = 0;
            let mut evicted = Vec::new();
            for (_, key) in by_age {
                if freed >= bytes {
                    break;
                }
                let file_hash = Sha256Hash(key);
                if let Some((record, size)) = unstore(tx, &file_hash)? {
                    freed += size;
                    evicted.push(Evicted {
                        file_hash,
                        record,
                        size,
                    });
                }
            }
            Ok(evicted)
        })
    }

    /// Adds `delta` holders (pins, pushes) to each NAR of `file_hashes`: a NAR with holders is never
    /// evicted.
    pub fn protect(&self, file_hashes: &[Sha256Hash], delta: i64) -> Result<(), IndexError> {
        self.write(true, |tx| protect_in(tx, file_hashes, delta))
    }

    /// Bytes of NAR files on disk (one counter read).
    pub fn store_bytes(&self) -> Result<u64, IndexError> {
        self.hit(|s| counter(&s.counters, STORE_BYTES))
    }

    /// Bytes of stored NARs that eviction may not take (pinned or pushed).
    pub fn protected_bytes(&self) -> Result<u64, IndexError> {
        self.read(|tx| {
            let stored = tx.open_table(STORED)?;
            let mut total = 0;
            for row in tx.open_table(PROTECTED)?.iter()? {
                let (k, _) = row?;
                total += stored.get(k.value())?.map(|v| v.value().1).unwrap_or(0);
            }
            Ok(total)
        })
    }

    /// Up to `limit` stored NARs after `after` (in FileHash order), for the scrub and `nixcache verify`.
    pub fn stored_page(
        &self,
        after: Option<&Sha256Hash>,
        limit: usize,
    ) -> Result<Vec<StoredNar>, IndexError> {
        self.read(|tx| {
            let stored = tx.open_table(STORED)?;
            let nars = tx.open_table(NAR)?;
            let range = match after {
                Some(a) => stored.range::<[u8; 32]>((
                    std::ops::Bound::Excluded(a.0),
                    std::ops::Bound::Unbounded,
                ))?,
                None => stored.range::<[u8; 32]>(..)?,
            };
            let mut out = Vec::with_capacity(limit);
            for row in range.take(limit) {
                let (k, v) = row?;
                let file_hash = Sha256Hash(k.value());
                let record = match nars.get(k.value())? {
                    Some(raw) => NarRecord::decode(raw.value())?,
                    None => return Err(IndexError::Corrupt("stored NAR has no record".into())),
                };
                out.push(StoredNar {
                    file_hash,
                    record,
                    size: v.value().1,
                });
            }
            Ok(out)
        })
    }
}

/// Removes the stored row of `file_hash` and subtracts its size, inside `tx`. Returns the record and
/// the size; a NAR record nobody points at any more goes too.
pub(super) fn unstore(
    tx: &WriteTransaction,
    file_hash: &Sha256Hash,
) -> Result<Option<(NarRecord, u64)>, IndexError> {
    let Some(size) = tx
        .open_table(STORED)?
        .remove(file_hash.0)?
        .map(|v| v.value().1)
    else {
        return Ok(None);
    };
    let record = {
        let nars = tx.open_table(NAR)?;
        match nars.get(file_hash.0)? {
            Some(raw) => NarRecord::decode(raw.value())?,
            None => return Err(IndexError::Corrupt("stored NAR has no record".into())),
        }
    };
    let mut counters = tx.open_table(COUNTERS)?;
    add_counter(&mut counters, STORE_BYTES, -(size as i64))?;
    add_counter(&mut counters, STORE_NARS, -1)?;
    let referenced = tx.open_table(NAR_REFS)?.get(file_hash.0)?.is_some();
    let protected = tx.open_table(PROTECTED)?.get(file_hash.0)?.is_some();
    if !referenced && !protected {
        forget_nar(tx, file_hash)?;
    }
    Ok(Some((record, size)))
}

/// Removes a NAR record nothing needs any more, inside `tx`, with what hangs on it (issue 16: the
/// link of a transcoded twin to its original).
pub(super) fn forget_nar(tx: &WriteTransaction, file_hash: &Sha256Hash) -> Result<(), IndexError> {
    tx.open_table(NAR)?.remove(file_hash.0)?;
    super::transcoded::nar_forgotten(tx, file_hash)
}

/// Records that the file of `file_hash` (whose record is `record`) is on disk with `size` bytes, inside
/// `tx`. Returns the new total of stored bytes.
pub(super) fn mark_stored(
    tx: &WriteTransaction,
    file_hash: &Sha256Hash,
    record: NarRecord,
    size: u64,
    now: u64,
) -> Result<u64, IndexError> {
    let record = NarRecord {
        file_size: Some(size),
        ..record
    };
    tx.open_table(NAR)?
        .insert(file_hash.0, record.encode()?.as_slice())?;
    let replaced = tx
        .open_table(STORED)?
        .insert(file_hash.0, (now, size))?
        .map(|v| v.value().1);
    let mut counters = tx.open_table(COUNTERS)?;
    match replaced {
        Some(old) => add_counter(&mut counters, STORE_BYTES, size as i64 - old as i64),
        None => {
            add_counter(&mut counters, STORE_NARS, 1)?;
            add_counter(&mut counters, STORE_BYTES, size as i64)
        }
    }
}

/// Adds `delta` holders to each NAR of `file_hashes`, inside `tx`.
pub(super) fn protect_in(
    tx: &WriteTransaction,
    file_hashes: &[Sha256Hash],
    delta: i64,
) -> Result<(), IndexError> {
    let mut table = tx.open_table(PROTECTED)?;
    for h in file_hashes {
        let now = table.get(h.0)?.map(|v| v.value()).unwrap_or(0);
        match now.saturating_add_signed(delta) {
            0 => table.remove(h.0)?,
            n => table.insert(h.0, n)?,
        };
    }
    Ok(())
}

/// [`Index::commit_nar`] in `tx` (also used to record again what a reopen lost).
pub(super) fn commit_nar_in(
    tx: &WriteTransaction,
    file_hash: &Sha256Hash,
    expected: &NarRecord,
    size: u64,
    now: u64,
) -> Result<Option<u64>, IndexError> {
    let nars = tx.open_table(NAR)?;
    let current = match nars.get(file_hash.0)? {
        Some(raw) => NarRecord::decode(raw.value())?,
        None => return Ok(None),
    };
    if !current.same_content(expected) {
        return Ok(None);
    }
    drop(nars);
    mark_stored(tx, file_hash, current, size, now).map(Some)
}
