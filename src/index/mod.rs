//! The index: everything the appliance knows, in one redb file. Opening it is the whole cold start.
//!
//! redb is synchronous and has one writer at a time: callers on the async side run the writing methods
//! in `spawn_blocking`; small reads are done inline.
//!
//! **Durability (group commit).** Every routine write is committed with `Durability::None` (visible at
//! once, no fsync) and made durable by [`Index::make_durable`], one fsync for everything committed since the
//! last one, which the appliance runs four times a second. Nobody waits for it: narinfo rows (cheap to
//! fetch again), negative entries, access times (written every 30 s), and stored-NAR rows (whose file is fsynced and renamed
//! into place before its row is written). A crash loses at most the last quarter second of them, which
//! costs a refetch, and a durable row never points at a file that is not durable. Evictions, mirror
//! updates and pushes commit durably at once. Durable commits use quick repair, so reopening after
//! `kill -9` stays instant.
//!
//! **Healing.** After one failed write, sync or file growth (a full or failing disk), redb answers
//! `PreviousIo` to every later write and to reads its cache cannot serve. The index remembers why it
//! is broken (shown by `/healthz`), and [`Index::heal`] closes and reopens the database once there is
//! room again, without a restart, and records again the rows the reopen lost (committed, not yet
//! durable; kept in memory until a durable commit covers them).

mod bucket;
mod gc;
mod migrate;
mod narinfos;
mod nars;
mod pins;
mod pushes;
mod records;
mod snapshot;
mod tables;
mod transcoded;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction,
};
use serde::Serialize;

use crate::nix::store_path::StoreHash;
pub use gc::GcReport;
use narinfos::put_narinfo;
pub use narinfos::{Applied, MirroredEntry};
pub use pins::{PinRecord, PinUsage};
pub use pushes::{PushCommit, PushConflict, PushRecorded, PushedRow};
pub use records::{Evicted, NarRecord, NarinfoRow, NewNarinfo, Recorded, StoredNar};
use tables::*;
pub use transcoded::{Transcoded, Twin};

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
    /// The file was written by a newer, unknown version.
    #[error("index schema {found} is not supported by this version (expects {SCHEMA})")]
    Schema {
        /// What the file says.
        found: String,
    },
    /// The database is being reopened after an I/O error (or could not be reopened yet).
    #[error("index unavailable while it recovers from an I/O error")]
    Unavailable,
}

impl IndexError {
    /// Whether this is an I/O failure of the disk (full, failing), after which redb must be reopened.
    pub fn is_io(&self) -> bool {
        use redb::StorageError as S;
        let storage = match self {
            IndexError::Storage(s) => Some(s),
            IndexError::Commit(redb::CommitError::Storage(s)) => Some(s),
            IndexError::Transaction(redb::TransactionError::Storage(s)) => Some(s),
            IndexError::Table(redb::TableError::Storage(s)) => Some(s),
            IndexError::Open(redb::DatabaseError::Storage(s)) => Some(s),
            _ => None,
        };
        matches!(storage, Some(S::Io(_) | S::PreviousIo))
    }
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
    /// NAR files kept from eviction by pins or pushes.
    pub nars_protected: u64,
    /// Size of the index file in bytes.
    pub file_bytes: u64,
}

/// Opens (or creates) the database file: the plain file, or — in tests — a backend that injects faults.
pub type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;
/// Checks that the disk under the index takes a small durable write again (before a reopen).
pub type Probe = Box<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// The redb index.
pub struct Index {
    path: PathBuf,
    opener: Opener,
    probe: Probe,
    /// `None` only for the moment of a reopen (or while a reopen keeps failing).
    db: RwLock<Option<Arc<Database>>>,
    /// Why (and since when) the index cannot be written, until a heal succeeds.
    broken: Mutex<Option<(String, Instant)>>,
    /// The tables the hit path reads, kept open until the next commit.
    snapshots: snapshot::Snapshots,
    /// Sequence number of the last commit.
    committed: AtomicU64,
    /// The sequence number up to which commits are durable.
    durable: AtomicU64,
    access: nars::PendingAccess,
    /// Narinfos recorded and NARs marked stored since the last durable commit, each with its own
    /// commit's sequence number. A reopen after a disk error loses what was not durable, while a
    /// client may already hold such a narinfo and ask for its NAR: [`Index::heal`] records them again.
    unsynced: Mutex<Vec<(u64, Unsynced)>>,
    /// Tests: runs once between the next commit and its bookkeeping (another thread's commit landing
    /// in that gap).
    #[cfg(test)]
    between_commit_and_bookkeeping: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// What a reopen would lose: a narinfo recorded, or a NAR marked stored, non-durably.
enum Unsynced {
    Narinfo {
        hash: StoreHash,
        row: NarinfoRow,
        nar: NarRecord,
    },
    Stored {
        file_hash: crate::nix::hash::Sha256Hash,
        record: NarRecord,
        size: u64,
        now: u64,
    },
}

impl Unsynced {
    fn narinfo(new: &NewNarinfo<'_>) -> Unsynced {
        Unsynced::Narinfo {
            hash: new.hash,
            row: new.row.clone(),
            nar: new.nar.clone(),
        }
    }
}

/// At most this many rows wait for a durable commit in `unsynced` (the group commit runs four
/// times a second; past this the oldest are forgotten, and only a refetch brings them back).
const MAX_UNSYNCED: usize = 100_000;

impl Index {
    /// Opens (or creates, or migrates) the index file. Fails if another process holds it.
    /// `cache_size` bounds redb's page cache (its default otherwise).
    pub fn open(path: &Path, cache_size: Option<usize>) -> Result<Index, IndexError> {
        let file = path.to_path_buf();
        let opener = move || {
            let mut builder = Database::builder();
            if let Some(bytes) = cache_size {
                builder.set_cache_size(bytes);
            }
            builder.create(&file)
        };
        let probe_file = path.with_extension("probe");
        let probe = move || {
            use std::io::Write;
            let result = std::fs::File::create(&probe_file).and_then(|mut f| {
                f.write_all(&[0x5a; 64 << 10])?;
                f.sync_all()
            });
            let _ = std::fs::remove_file(&probe_file);
            result
        };
        Index::open_with(path, Box::new(opener), Box::new(probe))
    }

    /// Opens the index through `opener` (called again to reopen after an I/O error, once `probe`
    /// says the disk takes writes again); `path` is the file whose size counts in the disk budget.
    pub fn open_with(path: &Path, opener: Opener, probe: Probe) -> Result<Index, IndexError> {
        let db = prepare(opener()?)?;
        Ok(Index {
            path: path.to_path_buf(),
            opener,
            probe,
            db: RwLock::new(Some(Arc::new(db))),
            broken: Mutex::new(None),
            snapshots: snapshot::Snapshots::default(),
            committed: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            access: nars::PendingAccess::default(),
            unsynced: Mutex::default(),
            #[cfg(test)]
            between_commit_and_bookkeeping: Mutex::default(),
        })
    }

    /// `Err(reason)` while writes fail (a full or failing disk), until [`Index::heal`] succeeds.
    pub fn writable(&self) -> Result<(), String> {
        match self.broken.lock().map(|b| b.clone()) {
            Ok(None) => Ok(()),
            Ok(Some((reason, _))) => Err(reason),
            Err(_) => Err("index state lock poisoned".into()),
        }
    }

    /// How long the index has been unwritable, if it is.
    pub fn broken_for(&self) -> Option<Duration> {
        self.broken
            .lock()
            .ok()?
            .as_ref()
            .map(|(_, since)| since.elapsed())
    }

    /// Size of the index file in bytes (counted in the disk budget).
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Closes and reopens the database after an I/O error, and checks that a durable write works.
    /// Returns whether the index is writable afterwards. Cheap when it is not broken. The database is
    /// closed only once a probe write next to it succeeded: a reopen that failed would leave nothing to
    /// read hits from.
    pub fn heal(&self) -> bool {
        if self.writable().is_ok() {
            return true;
        }
        if let Err(e) = (self.probe)() {
            tracing::debug!(error = %e, "the disk does not take writes yet; not reopening the index");
            return false;
        }
        let Ok(mut slot) = self.db.write() else {
            return false;
        };
        if let Some(current) = slot.take() {
            // Operations in progress hold their own handle for a few milliseconds; redb's file lock is
            // released only when the last one drops it.
            match wait_unique(current, Duration::from_secs(2)) {
                Ok(db) => {
                    // No reader holds the database now; its snapshot must go before it closes.
                    self.snapshots.committed();
                    drop(db)
                }
                Err(still_shared) => {
                    *slot = Some(still_shared);
                    return false;
                }
            }
        }
        match (self.opener)().map_err(IndexError::from).and_then(prepare) {
            Ok(db) => {
                *slot = Some(Arc::new(db));
                self.snapshots.committed();
            }
            Err(e) => {
                tracing::warn!(error = %e, "reopening the index failed; retrying later");
                return false;
            }
        }
        drop(slot);
        // The reopened database must take a durable write before the index counts as healed; it
        // also records again the narinfos the reopen lost (committed, but not yet durable).
        let lost = std::mem::take(&mut *self.unsynced());
        match self.write(true, |tx| {
            tx.open_table(META)?
                .insert("healed_at", crate::clock::unix_now().to_string().as_str())?;
            for (_, what) in &lost {
                match what {
                    Unsynced::Narinfo { hash, row, nar } => {
                        put_narinfo(
                            tx,
                            &NewNarinfo {
                                hash: *hash,
                                row,
                                nar,
                            },
                        )?;
                    }
                    // The file was fsynced and renamed before its row was written: it is there
                    // (and if it went meanwhile, a request finds out and fetches it again).
                    Unsynced::Stored {
                        file_hash,
                        record,
                        size,
                        now,
                    } => {
                        nars::commit_nar_in(tx, file_hash, record, *size, *now)?;
                    }
                }
            }
            Ok(())
        }) {
            Ok(()) => {
                if let Ok(mut b) = self.broken.lock() {
                    *b = None;
                }
                tracing::info!(
                    rows = lost.len(),
                    "index reopened and writable again; rows not yet durable recorded again"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "index reopened but still not writable");
                self.unsynced().extend(lost);
                false
            }
        }
    }

    /// Writes the pending access times, then makes every commit durable (at shutdown, before checks).
    pub fn flush(&self) -> Result<(), IndexError> {
        self.flush_access()?;
        self.make_durable()
    }

    /// Makes every non-durable commit since the last durable one durable (one fsync for all of them);
    /// nothing when there is none. The group commit calls it every 250 ms; access times are not
    /// written here (upkeep writes them every 30 s), or every hit would cost a commit and an fsync.
    pub fn make_durable(&self) -> Result<(), IndexError> {
        if self.committed.load(Ordering::Acquire) <= self.durable.load(Ordering::Acquire) {
            return Ok(());
        }
        // A durable commit makes every commit before it durable too (and raises `durable` past them).
        self.write(true, |tx| {
            tx.open_table(META)?
                .insert("flushed_at", crate::clock::unix_now().to_string().as_str())?;
            Ok(())
        })
    }

    fn handle(&self) -> Result<Arc<Database>, IndexError> {
        self.db
            .read()
            .ok()
            .and_then(|slot| slot.clone())
            .ok_or(IndexError::Unavailable)
    }

    /// Notes an I/O failure: the index is broken until healed.
    fn check<T>(&self, result: Result<T, IndexError>) -> Result<T, IndexError> {
        if let Err(e) = &result
            && e.is_io()
            && let Ok(mut broken) = self.broken.lock()
            && broken.is_none()
        {
            tracing::error!(error = %e, "index write failed; serving what it has until it can be reopened");
            *broken = Some((e.to_string(), Instant::now()));
        }
        result
    }

    /// Runs `f` on the hit path's snapshot (see `snapshot.rs`): no new read transaction per hit.
    fn hit<T>(
        &self,
        f: impl FnOnce(&snapshot::Snapshot) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let result = self.snapshots.get(|| self.handle()).and_then(|s| f(&s));
        self.check(result)
    }

    /// Runs `f` in a read transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let db = self.handle()?;
        let result = db
            .begin_read()
            .map_err(IndexError::from)
            .and_then(|tx| f(&tx));
        self.check(result)
    }

    /// Runs `f` in a write transaction and commits it, durably or not (see the module's notes).
    fn write<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        self.write_keeping(durable, f, |_| None)
    }

    /// As [`Index::write`]; `lost` says what of the commit a reopen would lose while it is not yet
    /// durable, kept in `unsynced` until a durable commit covers it.
    ///
    /// Each commit takes its number inside its write transaction (redb lets one writer in at a time),
    /// so numbers follow the order of the commits: a durable commit forgets exactly the rows committed
    /// before it, never one committed after it whose thread was slower to take its number.
    fn write_keeping<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<T, IndexError>,
        lost: impl FnOnce(&T) -> Option<Unsynced>,
    ) -> Result<T, IndexError> {
        let db = self.handle()?;
        let result = (|| {
            let mut tx = db.begin_write()?;
            if durable {
                tx.set_quick_repair(true);
            } else {
                tx.set_durability(Durability::None)?;
            }
            let value = f(&tx)?;
            let seq = self.committed.fetch_add(1, Ordering::AcqRel) + 1;
            tx.commit()?;
            Ok((value, seq))
        })();
        #[cfg(test)]
        if result.is_ok() {
            let gap = self.between_commit_and_bookkeeping.lock().unwrap().take();
            if let Some(gap) = gap {
                gap();
            }
        }
        let result = result.map(|(value, seq)| {
            self.snapshots.committed();
            if durable {
                self.durable.fetch_max(seq, Ordering::AcqRel);
                self.unsynced().retain(|(at, _)| *at > seq);
            } else if let Some(what) = lost(&value) {
                // Still holding the database: a heal cannot reopen it before this is kept.
                self.keep_unsynced(seq, what);
            }
            value
        });
        drop(db);
        self.check(result)
    }

    fn unsynced(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Unsynced)>> {
        self.unsynced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `what`, committed non-durably as commit `seq`, until a durable commit covers it.
    fn keep_unsynced(&self, seq: u64, what: Unsynced) {
        let mut unsynced = self.unsynced();
        if unsynced.len() >= MAX_UNSYNCED {
            unsynced.remove(0);
        }
        unsynced.push((seq, what));
    }

    /// Counts for `/_status`.
    pub fn stats(&self) -> Result<IndexStats, IndexError> {
        let mut stats = self.read(|tx| {
            use redb::ReadableTableMetadata;
            let counters = tx.open_table(COUNTERS)?;
            Ok(IndexStats {
                narinfos: tx.open_table(NARINFO)?.len()?,
                nars_known: tx.open_table(NAR)?.len()?,
                nars_stored: counter(&counters, STORE_NARS)?,
                store_bytes: counter(&counters, STORE_BYTES)?,
                negative: tx.open_table(NEGATIVE)?.len()?,
                nars_protected: tx.open_table(PROTECTED)?.len()?,
                file_bytes: 0,
            })
        })?;
        stats.file_bytes = self.file_bytes();
        Ok(stats)
    }
}

/// Creates the tables of this schema in a freshly opened database, or migrates an older one in place.
fn prepare(db: Database) -> Result<Database, IndexError> {
    let mut tx = db.begin_write()?;
    tx.set_quick_repair(true);
    let found = tx
        .open_table(META)?
        .get("schema")?
        .map(|v| v.value().to_string());
    match found.as_deref() {
        Some(SCHEMA) => {}
        None => {
            tx.open_table(META)?.insert("schema", SCHEMA)?;
        }
        Some(v1::SCHEMA) => migrate::from_v1(&tx)?,
        Some(other) => {
            return Err(IndexError::Schema {
                found: other.to_string(),
            });
        }
    }
    tx.open_table(NARINFO)?;
    tx.open_table(NARINFO_ASKED)?;
    tx.open_table(NAR)?;
    tx.open_table(NAR_REFS)?;
    tx.open_table(STORED)?;
    tx.open_table(PROTECTED)?;
    tx.open_table(NEGATIVE)?;
    tx.open_table(COUNTERS)?;
    tx.open_table(MIRROR)?;
    tx.open_table(PUSHED)?;
    tx.open_multimap_table(BUCKET_PENDING)?;
    transcoded::open_tables(&tx)?;
    tx.commit()?;
    Ok(db)
}

/// Waits until `db` is held only by the caller, for at most `limit`.
fn wait_unique(mut db: Arc<Database>, limit: Duration) -> Result<Database, Arc<Database>> {
    let started = Instant::now();
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => return Ok(db),
            Err(shared) if started.elapsed() < limit => {
                db = shared;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(shared) => return Err(shared),
        }
    }
}

fn counter(table: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, IndexError> {
    Ok(table.get(key)?.map(|v| v.value()).unwrap_or(0))
}

/// Adds `delta` (which may be negative) to a counter, saturating at 0.
fn add_counter(
    table: &mut redb::Table<&'static str, u64>,
    key: &str,
    delta: i64,
) -> Result<u64, IndexError> {
    let now = counter(table, key)?;
    let next = now.saturating_add_signed(delta);
    table.insert(key, next)?;
    Ok(next)
}

#[cfg(test)]
mod tests;
