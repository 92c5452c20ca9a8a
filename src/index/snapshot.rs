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
//! A snapshot also remembers the narinfo rows read through it (at most [`MEMO_MAX`]): a hot narinfo
//! (a closure many machines fetch) is then a hash-map look-up, however large the index, with no
//! B-tree walk and no decoding. The memo is exactly as fresh as the snapshot it belongs to: it goes
//! with it at the next commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadOnlyTable, ReadableDatabase};

use super::IndexError;
use super::NarinfoRow;
use super::tables::{COUNTERS, NAR, NARINFO, NEGATIVE, NarinfoValue, STORED};
use crate::nix::store_path::StoreHash;

/// Most narinfo rows one snapshot remembers (~1 KiB each).
pub(super) const MEMO_MAX: usize = 16_384;

/// The tables the hit path reads, as of one commit.
pub(super) struct Snapshot {
    generation: u64,
    pub(super) narinfo: ReadOnlyTable<&'static str, NarinfoValue<'static>>,
    pub(super) negative: ReadOnlyTable<&'static str, u64>,
    pub(super) nar: ReadOnlyTable<[u8; 32], &'static [u8]>,
    pub(super) stored: ReadOnlyTable<[u8; 32], (u64, u64)>,
    pub(super) counters: ReadOnlyTable<&'static str, u64>,
    memo: Mutex<HashMap<StoreHash, Arc<NarinfoRow>>>,
}

impl Snapshot {
    /// The narinfo row of `hash` as of this snapshot, remembered after the first read.
    pub(super) fn narinfo(&self, hash: &StoreHash) -> Result<Option<Arc<NarinfoRow>>, IndexError> {
        if let Some(row) = self.memo.lock().ok().and_then(|m| m.get(hash).cloned()) {
            return Ok(Some(row));
        }
        let Some(value) = self.narinfo.get(hash.as_str())? else {
            return Ok(None);
        };
        let row = Arc::new(super::narinfos::to_row(value.value()));
        if let Ok(mut memo) = self.memo.lock()
            && memo.len() < MEMO_MAX
        {
            memo.insert(*hash, row.clone());
        }
        Ok(Some(row))
    }
}

/// The current snapshot, if one was taken since the last commit.
#[derive(Default)]
pub(super) struct Snapshots {
    generation: AtomicU64,
    current: Mutex<Option<Arc<Snapshot>>>,
}

impl Snapshots {
    /// A snapshot at least as new as the last commit that returned.
    pub(super) fn get(&self, db: &Database) -> Result<Arc<Snapshot>, IndexError> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Ok(current) = self.current.lock()
            && let Some(snapshot) = current.as_ref()
            && snapshot.generation == generation
        {
            return Ok(snapshot.clone());
        }
        let tx = db.begin_read()?;
        let snapshot = Arc::new(Snapshot {
            generation,
            narinfo: tx.open_table(NARINFO)?,
            negative: tx.open_table(NEGATIVE)?,
            nar: tx.open_table(NAR)?,
            stored: tx.open_table(STORED)?,
            counters: tx.open_table(COUNTERS)?,
            memo: Mutex::default(),
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

    /// A read after a commit returned sees it, though the read before kept a snapshot open.
    #[test]
    fn reads_see_every_commit_that_returned() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.redb"), None).unwrap();
        let hash: StoreHash = "iwjz551fyw0cxcjgf4l6c879zabd6wpm".parse().unwrap();
        let file = Sha256Hash([7; 32]);
        assert!(index.narinfo(&hash).unwrap().is_none());
        assert!(index.nar(&file).unwrap().is_none());
        let row = NarinfoRow {
            recorded: 1,
            policy: 1,
            source: "http://up/".into(),
            signer: String::new(),
            file_hash: file,
            text: "text 1".into(),
        };
        index
            .record_narinfo(&NewNarinfo {
                hash,
                row: &row,
                nar: &record(),
            })
            .unwrap();
        assert_eq!(index.narinfo(&hash).unwrap().unwrap().text, "text 1");
        assert_eq!(index.nar(&file).unwrap().unwrap(), (record(), false));
        index.commit_nar(&file, &record(), 3, 2).unwrap();
        assert!(
            index.nar(&file).unwrap().unwrap().1,
            "stored after commit_nar"
        );
        index.record_negative(&hash, u64::MAX).unwrap();
        assert!(index.is_negative(&hash, 0).unwrap());
        index.unstore_nar(&file).unwrap();
        assert!(!index.nar(&file).unwrap().unwrap().1, "unstored");
    }

    /// A narinfo remembered by a snapshot is read again after any commit: a changed row is seen at
    /// once, and a removed one is gone.
    #[test]
    fn a_remembered_narinfo_goes_with_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.redb"), None).unwrap();
        let hash: StoreHash = "iwjz551fyw0cxcjgf4l6c879zabd6wpm".parse().unwrap();
        let mut row = NarinfoRow {
            recorded: 1,
            policy: 1,
            source: "http://up/".into(),
            signer: String::new(),
            file_hash: Sha256Hash([7; 32]),
            text: "text 1".into(),
        };
        let new = |row: &NarinfoRow| {
            index
                .record_narinfo(&NewNarinfo {
                    hash,
                    row,
                    nar: &record(),
                })
                .unwrap();
        };
        new(&row);
        let first = index.narinfo_shared(&hash).unwrap().unwrap();
        let again = index.narinfo_shared(&hash).unwrap().unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&first, &again),
            "the second read is the remembered row"
        );
        row.text = "text 2".into();
        new(&row);
        assert_eq!(index.narinfo_shared(&hash).unwrap().unwrap().text, "text 2");
        index.remove_narinfos(&[hash.to_string()]).unwrap();
        assert!(index.narinfo_shared(&hash).unwrap().is_none());
    }
}
