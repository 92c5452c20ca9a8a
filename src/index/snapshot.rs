//! Read tables kept open between lookups, so that a hit is a B-tree walk and not a new read transaction.
//!
//! Opening a read transaction and its tables costs several times the look-up itself (redb checks each
//! table's stored key and value type names, which it builds as strings). The hit path instead reads from
//! the last snapshot, which stays valid until the next commit: every commit bumps the generation (after
//! it returns) and drops the snapshot, and a reader only reuses a snapshot of the current generation.
//! So a request that starts after a commit returned always sees it.
//!
//! A snapshot is a redb read transaction: while it lives, pages freed by later commits cannot be reused.
//! Dropping it at every commit keeps that to the time until the next read.
//!
//! Each thread also remembers the narinfo rows it read through the current snapshot (at most
//! [`MEMO_MAX`]): a hot narinfo (a closure many machines fetch) is then a hash-map look-up, however
//! large the index, with no B-tree walk and no decoding. The memo is exactly as fresh as the snapshot
//! it was read through: a thread forgets it when it first reads through a newer one.
//!
//! The same way, each thread remembers the bytes of small stored files it served, checked against its
//! snapshot's list of stored files when remembered (at most [`FILE_MEMO_MAX`] bytes in all, files up to
//! [`FILE_MEMO_MAX_FILE`]): a hot small NAR is then answered without opening, reading and closing its
//! file. A file's bytes are those of its FileHash (content-addressed, verified when stored); eviction,
//! healing and scrubbing all commit, so a thread forgets them as soon as the index says anything new.
//!
//! Nothing on the hit path is written by two threads, but the snapshot's reference count: each thread
//! finds the current snapshot through its own weak reference (no lock) and keeps its own memo (no lock,
//! and rows no other thread counts references to). Shared, those locks and counts moved their cache
//! lines between cores on every hit (see `sharded.rs`). The weak reference does not keep a snapshot
//! alive: an idle thread holds no read transaction open.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use redb::{Database, ReadOnlyTable, ReadableDatabase};

use super::IndexError;
use super::tables::{COUNTERS, NAR, NARINFO, NEGATIVE, NarinfoValue, STORED, TRANSCODED};
use super::{NarRecord, NarinfoRow};
use crate::nix::store_path::StoreHash;

/// Most narinfo rows one thread remembers (~1 KiB each): the narinfos of a whole NixOS system's closure;
/// with one memo per worker thread (one per core), 4 MiB per core at most.
pub(super) const MEMO_MAX: usize = 4_096;
/// Bytes of small stored files one thread remembers at most (4 MiB per core).
pub(super) const FILE_MEMO_MAX: usize = 4 << 20;
/// The largest stored file a thread remembers.
pub(super) const FILE_MEMO_MAX_FILE: usize = 64 << 10;

/// Tells apart the snapshots of every index of the process, for the threads' caches (0: none).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What one thread remembers of one index's current snapshot.
#[derive(Default)]
struct Local {
    /// The [`Snapshots`] it belongs to and the generation it saw.
    owner: u64,
    generation: u64,
    snapshot: Weak<Snapshot>,
    /// Rows read through that snapshot (or another of the same generation: the same data).
    memo: HashMap<StoreHash, Arc<NarinfoRow>>,
    /// Small stored files (their rows and bytes) served while that snapshot said they were stored, by
    /// FileHash.
    files: HashMap<[u8; 32], (NarRecord, Bytes)>,
    /// Their bytes in all.
    file_bytes: usize,
}

impl Local {
    /// Whether this is the snapshot of `owner` at `generation`, and the memo its rows.
    fn holds(&self, owner: u64, generation: u64) -> bool {
        self.owner == owner && self.generation == generation
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::default();
}

/// `f` on this thread's [`Local`]; `None` while the thread is ending (its locals already dropped), when
/// reads go the shared way.
fn with_local<T>(f: impl FnOnce(&mut Local) -> T) -> Option<T> {
    LOCAL.try_with(|local| f(&mut local.borrow_mut())).ok()
}

/// The tables the hit path reads, as of one commit.
pub(super) struct Snapshot {
    owner: u64,
    generation: u64,
    pub(super) narinfo: ReadOnlyTable<&'static str, NarinfoValue<'static>>,
    pub(super) negative: ReadOnlyTable<&'static str, u64>,
    pub(super) nar: ReadOnlyTable<[u8; 32], &'static [u8]>,
    pub(super) stored: ReadOnlyTable<[u8; 32], (u64, u64)>,
    pub(super) counters: ReadOnlyTable<&'static str, u64>,
    /// Originals → zstd twins: read with the NAR records, so a twin found here has its record here too.
    pub(super) transcoded: ReadOnlyTable<[u8; 32], ([u8; 32], u8)>,
}

impl Snapshot {
    /// The narinfo row of `hash` as of this snapshot, remembered by this thread after the first read.
    pub(super) fn narinfo(&self, hash: &StoreHash) -> Result<Option<Arc<NarinfoRow>>, IndexError> {
        let remembered = with_local(|local| {
            local
                .holds(self.owner, self.generation)
                .then(|| local.memo.get(hash).cloned())
                .flatten()
        })
        .flatten();
        if let Some(row) = remembered {
            return Ok(Some(row));
        }
        let Some(value) = self.narinfo.get(hash.as_str())? else {
            return Ok(None);
        };
        let row = Arc::new(super::narinfos::to_row(value.value()));
        with_local(|local| {
            if local.holds(self.owner, self.generation) && local.memo.len() < MEMO_MAX {
                local.memo.insert(*hash, row.clone());
            }
        });
        Ok(Some(row))
    }

    /// The row and bytes of the stored file `file_hash` this thread remembers as of this snapshot.
    pub(super) fn file(&self, file_hash: &[u8; 32]) -> Option<(NarRecord, Bytes)> {
        with_local(|local| {
            local
                .holds(self.owner, self.generation)
                .then(|| local.files.get(file_hash).cloned())
                .flatten()
        })
        .flatten()
    }

    /// Remembers, for this thread while it reads through this snapshot, the row and bytes of the file
    /// `file_hash` — if this snapshot says it is stored, it is small, and the thread has room.
    pub(super) fn remember_file(
        &self,
        file_hash: &[u8; 32],
        record: &NarRecord,
        bytes: Bytes,
    ) -> Result<(), IndexError> {
        if bytes.len() > FILE_MEMO_MAX_FILE || self.stored.get(*file_hash)?.is_none() {
            return Ok(());
        }
        with_local(|local| {
            if local.holds(self.owner, self.generation)
                && local.file_bytes + bytes.len() <= FILE_MEMO_MAX
                && !local.files.contains_key(file_hash)
            {
                local.file_bytes += bytes.len();
                local.files.insert(*file_hash, (record.clone(), bytes));
            }
        });
        Ok(())
    }
}

/// The current snapshot, if one was taken since the last commit.
pub(super) struct Snapshots {
    id: u64,
    generation: AtomicU64,
    current: Mutex<Option<Arc<Snapshot>>>,
}

impl Default for Snapshots {
    fn default() -> Snapshots {
        Snapshots {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            current: Mutex::default(),
        }
    }
}

impl Snapshots {
    /// A snapshot at least as new as the last commit that returned; `db` is opened only to take a
    /// new one.
    pub(super) fn get(
        &self,
        db: impl FnOnce() -> Result<Arc<Database>, IndexError>,
    ) -> Result<Arc<Snapshot>, IndexError> {
        let generation = self.generation.load(Ordering::Acquire);
        let mine = with_local(|local| {
            local
                .holds(self.id, generation)
                .then(|| local.snapshot.upgrade())
                .flatten()
        })
        .flatten();
        if let Some(snapshot) = mine {
            return Ok(snapshot);
        }
        let snapshot = self.shared(generation, db)?;
        with_local(|local| {
            if !local.holds(self.id, snapshot.generation) {
                // Another index or a newer commit: the rows remembered are of the old snapshot.
                local.memo.clear();
                local.files.clear();
                local.file_bytes = 0;
                local.owner = self.id;
                local.generation = snapshot.generation;
            }
            local.snapshot = Arc::downgrade(&snapshot);
        });
        Ok(snapshot)
    }

    /// The snapshot of `generation` all threads share, taken now if there is none.
    fn shared(
        &self,
        generation: u64,
        db: impl FnOnce() -> Result<Arc<Database>, IndexError>,
    ) -> Result<Arc<Snapshot>, IndexError> {
        if let Ok(current) = self.current.lock()
            && let Some(snapshot) = current.as_ref()
            && snapshot.generation == generation
        {
            return Ok(snapshot.clone());
        }
        let tx = db()?.begin_read()?;
        let snapshot = Arc::new(Snapshot {
            owner: self.id,
            generation,
            narinfo: tx.open_table(NARINFO)?,
            negative: tx.open_table(NEGATIVE)?,
            nar: tx.open_table(NAR)?,
            stored: tx.open_table(STORED)?,
            counters: tx.open_table(COUNTERS)?,
            transcoded: tx.open_table(TRANSCODED)?,
        });
        // Kept only if no commit finished meanwhile: one that did bumped the generation first, so a
        // snapshot that may predate it is never kept under the new generation.
        if let Ok(mut current) = self.current.lock()
            && self.generation.load(Ordering::Acquire) == generation
        {
            *current = Some(snapshot.clone());
        }
        Ok(snapshot)
    }

    /// Called after every commit returned (and before the database is closed for a reopen): later
    /// reads take a new snapshot.
    pub(super) fn committed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut current) = self.current.lock() {
            *current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::index::{Index, NarRecord, NarinfoRow, NewNarinfo};
    use crate::nix::hash::Sha256Hash;
    use crate::nix::narinfo::Compression;
    use crate::nix::store_path::StoreHash;

    const HASH: &str = "iwjz551fyw0cxcjgf4l6c879zabd6wpm";
    const FILE: Sha256Hash = Sha256Hash([7; 32]);

    fn open() -> (tempfile::TempDir, Index, StoreHash) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.redb"), None).unwrap();
        (dir, index, HASH.parse().unwrap())
    }

    fn record() -> NarRecord {
        NarRecord {
            compression: Compression::None,
            file_size: Some(3),
            nar_hash: Sha256Hash([0; 32]),
            nar_size: 3,
            source: "http://up/".into(),
            url: "http://up/nar/x.nar".into(),
        }
    }

    /// Records the narinfo of `hash` with `text` (pointing at `FILE`).
    fn put(index: &Index, hash: StoreHash, text: &str) {
        put_file(index, hash, text, FILE);
    }

    /// Records the narinfo of `hash` with `text`, pointing at `file`.
    fn put_file(index: &Index, hash: StoreHash, text: &str, file: Sha256Hash) {
        let row = NarinfoRow {
            recorded: 1,
            policy: 1,
            source: "http://up/".into(),
            signer: String::new(),
            file_hash: file,
            text: text.into(),
        };
        index
            .record_narinfo(&NewNarinfo {
                hash,
                row: &row,
                nar: &record(),
            })
            .unwrap();
    }

    /// A read after a commit returned sees it, though the read before kept a snapshot open.
    #[test]
    fn reads_see_every_commit_that_returned() {
        let (_dir, index, hash) = open();
        assert!(index.narinfo(&hash).unwrap().is_none());
        assert!(index.nar(&FILE).unwrap().is_none());
        put(&index, hash, "text 1");
        assert_eq!(index.narinfo(&hash).unwrap().unwrap().text, "text 1");
        assert_eq!(index.nar(&FILE).unwrap().unwrap(), (record(), false));
        index.commit_nar(&FILE, &record(), 3, 2).unwrap();
        assert!(
            index.nar(&FILE).unwrap().unwrap().1,
            "stored after commit_nar"
        );
        index.record_negative(&hash, u64::MAX).unwrap();
        assert!(index.is_negative(&hash, 0).unwrap());
        index.unstore_nar(&FILE).unwrap();
        assert!(!index.nar(&FILE).unwrap().unwrap().1, "unstored");
    }

    /// A stored small file's bytes are remembered by the thread that served them, with their row, and
    /// forgotten at the next commit (here: the NAR evicted), on that thread and never seen by another.
    #[test]
    fn a_remembered_file_goes_with_its_snapshot() {
        let (_dir, index, hash) = open();
        put(&index, hash, "text 1");
        index.remember_file(&FILE, &record(), bytes::Bytes::from_static(b"abc"));
        assert!(
            index.nar_with_file(&FILE).unwrap().unwrap().2.is_none(),
            "not stored: not remembered"
        );
        index.commit_nar(&FILE, &record(), 3, 2).unwrap();
        let (_, stored, none) = index.nar_with_file(&FILE).unwrap().unwrap();
        assert!(stored && none.is_none(), "nothing remembered yet");
        index.remember_file(&FILE, &record(), bytes::Bytes::from_static(b"abc"));
        let (row, stored, bytes) = index.nar_with_file(&FILE).unwrap().unwrap();
        assert_eq!((row, stored), (record(), true));
        assert_eq!(bytes.as_deref(), Some(&b"abc"[..]));
        let elsewhere = std::thread::scope(|s| {
            s.spawn(|| index.nar_with_file(&FILE).unwrap().unwrap().2)
                .join()
                .unwrap()
        });
        assert!(elsewhere.is_none(), "another thread's memo");
        index.unstore_nar(&FILE).unwrap();
        let (_, stored, bytes) = index.nar_with_file(&FILE).unwrap().unwrap();
        assert!(
            !stored && bytes.is_none(),
            "forgotten with the eviction's commit"
        );
    }

    /// A file larger than `FILE_MEMO_MAX_FILE` is not remembered, and a thread's files stop at
    /// `FILE_MEMO_MAX` bytes.
    #[test]
    fn remembered_files_are_small_and_bounded() {
        let (_dir, index, hash) = open();
        // Stored files: FILE, and as many more as fill a thread's budget with the largest files.
        let fill = super::FILE_MEMO_MAX / super::FILE_MEMO_MAX_FILE;
        put(&index, hash, "text 1");
        index.commit_nar(&FILE, &record(), 3, 2).unwrap();
        let others: Vec<Sha256Hash> = (0..fill)
            .map(|i| {
                let file = Sha256Hash([i as u8 + 100; 32]);
                let store_hash = format!("{i:0>32}").parse().unwrap();
                put_file(&index, store_hash, "other", file);
                index.commit_nar(&file, &record(), 3, 2).unwrap();
                file
            })
            .collect();
        let big = bytes::Bytes::from(vec![0u8; super::FILE_MEMO_MAX_FILE + 1]);
        index.remember_file(&FILE, &record(), big);
        assert!(index.nar_with_file(&FILE).unwrap().unwrap().2.is_none());
        for other in &others {
            let full = bytes::Bytes::from(vec![0u8; super::FILE_MEMO_MAX_FILE]);
            index.remember_file(other, &record(), full);
        }
        assert!(
            index
                .nar_with_file(&others[fill - 1])
                .unwrap()
                .unwrap()
                .2
                .is_some(),
            "the budget holds exactly this many"
        );
        index.remember_file(&FILE, &record(), bytes::Bytes::from_static(b"abc"));
        assert!(
            index.nar_with_file(&FILE).unwrap().unwrap().2.is_none(),
            "past the thread's budget"
        );
    }

    /// A thread that remembered a narinfo reads it again after a commit made on another thread, and
    /// every thread gets the commit's row.
    #[test]
    fn another_thread_s_commit_replaces_what_a_thread_remembered() {
        let (_dir, index, hash) = open();
        put(&index, hash, "text 1");
        let text = || index.narinfo_shared(&hash).unwrap().unwrap().text.clone();
        std::thread::scope(|s| {
            assert_eq!(s.spawn(text).join().unwrap(), "text 1");
            assert_eq!(text(), "text 1", "remembered here too");
            s.spawn(|| put(&index, hash, "text 2")).join().unwrap();
            assert_eq!(text(), "text 2", "not this thread's memo");
            assert_eq!(s.spawn(text).join().unwrap(), "text 2");
        });
    }

    /// Readers on several threads never read a row older than the last commit that returned before
    /// their read began, while commits keep coming (each thread's snapshot and memo follow them).
    #[test]
    fn concurrent_readers_never_see_a_row_older_than_a_returned_commit() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let (_dir, index, hash) = open();
        put(&index, hash, "0");
        let returned = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut reads = 0u64;
                    while !done.load(Ordering::Acquire) || reads == 0 {
                        let floor = returned.load(Ordering::Acquire);
                        let row = index.narinfo_shared(&hash).unwrap().unwrap();
                        let seen: u64 = row.text.parse().unwrap();
                        assert!(
                            seen >= floor,
                            "read version {seen} after commit {floor} returned"
                        );
                        reads += 1;
                    }
                });
            }
            for v in 1..=200u64 {
                put(&index, hash, &v.to_string());
                returned.store(v, Ordering::Release);
            }
            done.store(true, Ordering::Release);
        });
    }

    /// A narinfo remembered by a snapshot is read again after any commit: a changed row is seen at
    /// once, and a removed one is gone.
    #[test]
    fn a_remembered_narinfo_goes_with_its_snapshot() {
        let (_dir, index, hash) = open();
        put(&index, hash, "text 1");
        let first = index.narinfo_shared(&hash).unwrap().unwrap();
        let again = index.narinfo_shared(&hash).unwrap().unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&first, &again),
            "the second read is the remembered row"
        );
        put(&index, hash, "text 2");
        assert_eq!(index.narinfo_shared(&hash).unwrap().unwrap().text, "text 2");
        index.remove_narinfos(&[hash.to_string()]).unwrap();
        assert!(index.narinfo_shared(&hash).unwrap().is_none());
    }
}
