//! The index: everything the appliance knows, in one redb file. Opening it is the whole cold start.
//!
//! redb is synchronous and has one writer at a time: callers on the async side run these methods in
//! `spawn_blocking`. Durable commits use quick repair so that a reopen after `kill -9` stays instant.

mod snapshot;
mod tables;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use crate::nix::hash::Sha256Hash;
use crate::nix::store_path::StoreHash;
use tables::*;

/// Failures of the index. All of them are internal errors to a client.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The database file could not be opened or created.
    #[error("cannot open the index: {0}")]
    Open(#[from] redb::DatabaseError),
    /// A transaction could not start.
    #[error("index transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    /// A table could not be opened.
    #[error("index table: {0}")]
    Table(#[from] redb::TableError),
    /// Reading or writing failed.
    #[error("index storage: {0}")]
    Storage(#[from] redb::StorageError),
    /// A commit failed.
    #[error("index commit: {0}")]
    Commit(#[from] redb::CommitError),
    /// Setting durability failed.
    #[error("index durability: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    /// A stored record does not decode.
    #[error("corrupt index record: {0}")]
    Corrupt(String),
    /// The file was written by an incompatible version.
    #[error("index schema {found} is not supported by this version (expects {SCHEMA})")]
    Schema {
        /// What the file says.
        found: String,
    },
}

/// What the index knows about one NAR file (keyed by its FileHash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarRecord {
    /// Compression as written in narinfos (`xz`, `none`, ...).
    pub compression: String,
    /// Size of the file, when known (always known once stored).
    pub file_size: Option<u64>,
    /// NarHash of the uncompressed NAR, `sha256:<nix32>`.
    pub nar_hash: String,
    /// NarSize.
    pub nar_size: u64,
    /// The source it comes from (its base URL).
    pub source: String,
    /// Absolute URL of the file at that source.
    pub url: String,
}

/// Counts shown by `/_status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IndexStats {
    /// narinfo records.
    pub narinfos: u64,
    /// NAR records (stored or not).
    pub nars_known: u64,
    /// NAR files on disk.
    pub nars_stored: u64,
    /// Bytes of NAR files on disk.
    pub store_bytes: u64,
    /// Negative entries (expired ones included until purged).
    pub negative: u64,
}

/// One narinfo of a mirrored OCI index, ready to record.
#[derive(Debug, Clone)]
pub struct MirroredEntry {
    /// Its store hash.
    pub hash: StoreHash,
    /// The narinfo text as served (canonical URL, signed).
    pub text: String,
    /// sha256 of the raw index entry, to recognise it unchanged next time.
    pub entry_digest: [u8; 32],
    /// Its FileHash (the blob digest).
    pub file_hash: Sha256Hash,
    /// The NAR record.
    pub nar: NarRecord,
}

/// What applying a mirrored index changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Entries written (new or updated).
    pub written: usize,
    /// Entries unchanged since the last refresh (neither checked again nor rewritten).
    pub unchanged: usize,
    /// Entries of this source that are no longer in its index, removed.
    pub removed: usize,
}

/// A NAR chosen for eviction: its FileHash and record (the caller removes the file).
pub type Evicted = (Sha256Hash, NarRecord);

/// The redb index.
pub struct Index {
    db: Database,
    /// The tables the hit path reads, kept open until the next commit.
    snapshots: snapshot::Snapshots,
    /// Access times not yet written: hits are counted here and flushed in batches.
    pending_access: Mutex<HashMap<Sha256Hash, u64>>,
}

impl Index {
    /// Opens (or creates) the index file and its tables. Fails if another process holds it.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let db = Database::create(path)?;
        let mut tx = db.begin_write()?;
        tx.set_quick_repair(true);
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema")?.map(|v| v.value().to_string());
            match found {
                Some(s) if s != SCHEMA => return Err(IndexError::Schema { found: s }),
                Some(_) => {}
                None => {
                    meta.insert("schema", SCHEMA)?;
                }
            }
            tx.open_table(NARINFO)?;
            tx.open_table(NAR)?;
            tx.open_table(NAR_STORED)?;
            tx.open_table(NEGATIVE)?;
            tx.open_table(COUNTERS)?;
            tx.open_table(MIRROR)?;
        }
        tx.commit()?;
        Ok(Index {
            db,
            snapshots: snapshot::Snapshots::default(),
            pending_access: Mutex::new(HashMap::new()),
        })
    }

    /// Commits `tx`; the hit path's next read sees it.
    fn commit(&self, tx: redb::WriteTransaction) -> Result<(), IndexError> {
        tx.commit()?;
        self.snapshots.committed();
        Ok(())
    }

    /// The narinfo recorded for `hash`: (source, signer, text), the text signed by `signer`.
    pub fn narinfo(
        &self,
        hash: &StoreHash,
    ) -> Result<Option<(String, String, String)>, IndexError> {
        let snapshot = self.snapshots.get(&self.db)?;
        Ok(snapshot.narinfo.get(hash.as_str())?.map(|v| {
            let (_, source, signer, text) = v.value();
            (source.to_string(), signer.to_string(), text.to_string())
        }))
    }

    /// Whether `hash` is known to be absent everywhere at `now` (unix seconds).
    pub fn is_negative(&self, hash: &StoreHash, now: u64) -> Result<bool, IndexError> {
        let snapshot = self.snapshots.get(&self.db)?;
        Ok(snapshot
            .negative
            .get(hash.as_str())?
            .is_some_and(|v| v.value() > now))
    }

    /// Records a narinfo as served and the NAR it points to, in one durable transaction.
    ///
    /// The NAR record is replaced unless that NAR is already stored (the stored file's record stays true).
    #[allow(clippy::too_many_arguments)]
    pub fn record_narinfo(
        &self,
        hash: &StoreHash,
        now: u64,
        signer: &str,
        text: &str,
        file_hash: &Sha256Hash,
        nar: &NarRecord,
    ) -> Result<(), IndexError> {
        let encoded = serde_json::to_vec(nar).map_err(|e| IndexError::Corrupt(e.to_string()))?;
        let mut tx = self.db.begin_write()?;
        tx.set_quick_repair(true);
        {
            let mut narinfos = tx.open_table(NARINFO)?;
            narinfos.insert(hash.as_str(), (now, nar.source.as_str(), signer, text))?;
            let stored = tx.open_table(NAR_STORED)?.get(file_hash.0)?.is_some();
            if !stored {
                tx.open_table(NAR)?
                    .insert(file_hash.0, encoded.as_slice())?;
            }
            tx.open_table(NEGATIVE)?.remove(hash.as_str())?;
        }
        self.commit(tx)?;
        Ok(())
    }

    /// The raw-entry digests of what was mirrored last time (store hash → digest).
    pub fn mirror_digests(&self) -> Result<HashMap<String, [u8; 32]>, IndexError> {
        let tx = self.db.begin_read()?;
        let mut out = HashMap::new();
        for row in tx.open_table(MIRROR)?.iter()? {
            let (k, v) = row?;
            out.insert(k.value().to_string(), v.value());
        }
        Ok(out)
    }

    /// Makes `source`'s rows the mirrored index: `changed` entries are written, rows of `keep` stay as
    /// they are, every other row of `source` goes — in one transaction, so readers see the old index or
    /// the new one, never a mix. Remembers the manifest digest it came from.
    pub fn apply_mirror(
        &self,
        source: &str,
        signer: &str,
        changed: &[MirroredEntry],
        keep: &std::collections::HashSet<String>,
        manifest_digest: &str,
        now: u64,
    ) -> Result<Applied, IndexError> {
        let mut tx = self.db.begin_write()?;
        tx.set_quick_repair(true);
        let mut applied = Applied::default();
        {
            let mut narinfos = tx.open_table(NARINFO)?;
            let mut mirror = tx.open_table(MIRROR)?;
            let mut stale = Vec::new();
            for row in narinfos.iter()? {
                let (k, v) = row?;
                if v.value().1 == source && !keep.contains(k.value()) {
                    stale.push(k.value().to_string());
                }
            }
            for key in &stale {
                narinfos.remove(key.as_str())?;
                mirror.remove(key.as_str())?;
            }
            applied.removed = stale.len();
            let mut nars = tx.open_table(NAR)?;
            let stored = tx.open_table(NAR_STORED)?;
            let mut negative = tx.open_table(NEGATIVE)?;
            for e in changed {
                narinfos.insert(e.hash.as_str(), (now, source, signer, e.text.as_str()))?;
                mirror.insert(e.hash.as_str(), e.entry_digest)?;
                if stored.get(e.file_hash.0)?.is_none() {
                    let encoded = serde_json::to_vec(&e.nar)
                        .map_err(|err| IndexError::Corrupt(err.to_string()))?;
                    nars.insert(e.file_hash.0, encoded.as_slice())?;
                }
                negative.remove(e.hash.as_str())?;
            }
            applied.written = changed.len();
            applied.unchanged = keep.len().saturating_sub(changed.len());
            tx.open_table(META)?
                .insert(format!("manifest {source}").as_str(), manifest_digest)?;
        }
        self.commit(tx)?;
        Ok(applied)
    }

    /// The manifest digest last applied for `source`.
    pub fn mirrored_digest(&self, source: &str) -> Result<Option<String>, IndexError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta
            .get(format!("manifest {source}").as_str())?
            .map(|v| v.value().to_string()))
    }

    /// How many narinfos are recorded from `source` (a scan: for status after a refresh, not per request).
    pub fn count_from(&self, source: &str) -> Result<u64, IndexError> {
        let tx = self.db.begin_read()?;
        let mut n = 0;
        for row in tx.open_table(NARINFO)?.iter()? {
            if row?.1.value().1 == source {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Remembers that `hash` is absent everywhere until `until`. Not durable: losing it costs one lookup.
    pub fn record_negative(&self, hash: &StoreHash, until: u64) -> Result<(), IndexError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        tx.open_table(NEGATIVE)?.insert(hash.as_str(), until)?;
        self.commit(tx)?;
        Ok(())
    }

    /// The NAR record for `file_hash` and whether the file is on disk.
    pub fn nar(&self, file_hash: &Sha256Hash) -> Result<Option<(NarRecord, bool)>, IndexError> {
        let snapshot = self.snapshots.get(&self.db)?;
        let Some(raw) = snapshot.nar.get(file_hash.0)? else {
            return Ok(None);
        };
        let record = decode_record(raw.value())?;
        let stored = snapshot.nar_stored.get(file_hash.0)?.is_some();
        Ok(Some((record, stored)))
    }

    /// Marks a NAR as stored (its file was just renamed into place) with its exact size.
    /// Returns the new total of stored bytes.
    pub fn commit_nar(
        &self,
        file_hash: &Sha256Hash,
        size: u64,
        now: u64,
    ) -> Result<u64, IndexError> {
        let mut tx = self.db.begin_write()?;
        tx.set_quick_repair(true);
        let total;
        {
            let mut nars = tx.open_table(NAR)?;
            let mut record = match nars.get(file_hash.0)? {
                Some(raw) => decode_record(raw.value())?,
                None => return Err(IndexError::Corrupt("stored NAR has no record".into())),
            };
            record.file_size = Some(size);
            let encoded =
                serde_json::to_vec(&record).map_err(|e| IndexError::Corrupt(e.to_string()))?;
            nars.insert(file_hash.0, encoded.as_slice())?;
            let mut stored = tx.open_table(NAR_STORED)?;
            let mut counters = tx.open_table(COUNTERS)?;
            let replaced = stored.insert(file_hash.0, now)?.is_some();
            let bytes = counter(&counters, STORE_BYTES)?;
            let count = counter(&counters, STORE_NARS)?;
            total = if replaced { bytes } else { bytes + size };
            counters.insert(STORE_BYTES, total)?;
            counters.insert(STORE_NARS, if replaced { count } else { count + 1 })?;
        }
        self.commit(tx)?;
        Ok(total)
    }

    /// Forgets that a NAR is stored (its file vanished or is being evicted). Returns its record.
    pub fn unstore_nar(&self, file_hash: &Sha256Hash) -> Result<Option<NarRecord>, IndexError> {
        let mut tx = self.db.begin_write()?;
        tx.set_quick_repair(true);
        let record = unstore(&tx, file_hash)?;
        self.commit(tx)?;
        Ok(record)
    }

    /// Notes an access to a stored NAR; written by the next [`Index::flush_access`].
    pub fn touch(&self, file_hash: &Sha256Hash, now: u64) {
        if let Ok(mut pending) = self.pending_access.lock() {
            pending.insert(*file_hash, now);
        }
    }

    /// Writes the batched access times in one transaction. Returns how many rows were updated.
    pub fn flush_access(&self) -> Result<usize, IndexError> {
        let pending = match self.pending_access.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Ok(0),
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin_write()?;
        tx.set_quick_repair(true);
        let mut updated = 0;
        {
            let mut stored = tx.open_table(NAR_STORED)?;
            for (hash, at) in pending {
                let current = stored.get(hash.0)?.map(|v| v.value());
                if let Some(old) = current
                    && at > old
                {
                    stored.insert(hash.0, at)?;
                    updated += 1;
                }
            }
        }
        self.commit(tx)?;
        Ok(updated)
    }

    /// Takes least-recently-used NARs out of the index until at most `target` bytes remain stored.
    /// The caller deletes their files after this returns (a crash in between leaves only orphan files).
    pub fn evict_to(&self, target: u64) -> Result<Vec<Evicted>, IndexError> {
        self.flush_access()?;
        let mut tx = self.db.begin_write()?;
        tx.set_quick_repair(true);
        let mut evicted = Vec::new();
        {
            let total = counter(&tx.open_table(COUNTERS)?, STORE_BYTES)?;
            if total <= target {
                return Ok(evicted);
            }
            let mut by_age: Vec<(u64, [u8; 32])> = Vec::new();
            for row in tx.open_table(NAR_STORED)?.iter()? {
                let (k, v) = row?;
                by_age.push((v.value(), k.value()));
            }
            by_age.sort_unstable();
            let mut remaining = total;
            for (_, key) in by_age {
                if remaining <= target {
                    break;
                }
                let hash = Sha256Hash(key);
                if let Some(record) = unstore(&tx, &hash)? {
                    remaining = remaining.saturating_sub(record.file_size.unwrap_or(0));
                    evicted.push((hash, record));
                }
            }
        }
        self.commit(tx)?;
        Ok(evicted)
    }

    /// Drops negative entries that expired before `now`.
    pub fn purge_negative(&self, now: u64) -> Result<(), IndexError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        tx.open_table(NEGATIVE)?.retain(|_, until| until > now)?;
        self.commit(tx)?;
        Ok(())
    }

    /// Bytes of NAR files on disk (one counter read).
    pub fn store_bytes(&self) -> Result<u64, IndexError> {
        let tx = self.db.begin_read()?;
        counter(&tx.open_table(COUNTERS)?, STORE_BYTES)
    }

    /// Counts for `/_status`.
    pub fn stats(&self) -> Result<IndexStats, IndexError> {
        let tx = self.db.begin_read()?;
        let counters = tx.open_table(COUNTERS)?;
        Ok(IndexStats {
            narinfos: tx.open_table(NARINFO)?.len()?,
            nars_known: tx.open_table(NAR)?.len()?,
            nars_stored: counter(&counters, STORE_NARS)?,
            store_bytes: counter(&counters, STORE_BYTES)?,
            negative: tx.open_table(NEGATIVE)?.len()?,
        })
    }
}

fn decode_record(raw: &[u8]) -> Result<NarRecord, IndexError> {
    serde_json::from_slice(raw).map_err(|e| IndexError::Corrupt(e.to_string()))
}

fn counter(table: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, IndexError> {
    Ok(table.get(key)?.map(|v| v.value()).unwrap_or(0))
}

/// Removes the stored row of `file_hash` and subtracts its size, inside `tx`.
fn unstore(
    tx: &redb::WriteTransaction,
    file_hash: &Sha256Hash,
) -> Result<Option<NarRecord>, IndexError> {
    let mut stored = tx.open_table(NAR_STORED)?;
    if stored.remove(file_hash.0)?.is_none() {
        return Ok(None);
    }
    let record = match tx.open_table(NAR)?.get(file_hash.0)? {
        Some(raw) => decode_record(raw.value())?,
        None => return Err(IndexError::Corrupt("stored NAR has no record".into())),
    };
    let mut counters = tx.open_table(COUNTERS)?;
    let bytes = counter(&counters, STORE_BYTES)?;
    let count = counter(&counters, STORE_NARS)?;
    let size = record.file_size.unwrap_or(0);
    counters.insert(STORE_BYTES, bytes.saturating_sub(size))?;
    counters.insert(STORE_NARS, count.saturating_sub(1))?;
    Ok(Some(record))
}
