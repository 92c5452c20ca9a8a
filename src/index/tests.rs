use super::*;
use crate::nix::hash::Sha256Hash;
use crate::nix::narinfo::Compression;
use crate::nix::store_path::StoreHash;

fn temp_index() -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index.redb"), None).unwrap();
    (dir, index)
}

fn hash(c: char) -> StoreHash {
    std::iter::repeat_n(c, 32)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn nar(nar_hash: u8) -> NarRecord {
    NarRecord {
        compression: Compression::Xz,
        file_size: Some(100),
        nar_hash: Sha256Hash([nar_hash; 32]),
        nar_size: 1000,
        source: "http://up/".into(),
        url: "http://up/nar/x.nar.xz".into(),
    }
}

fn row(file: u8, text: &str) -> NarinfoRow {
    NarinfoRow {
        recorded: 100,
        policy: 7,
        source: "http://up/".into(),
        signer: String::new(),
        file_hash: Sha256Hash([file; 32]),
        text: text.into(),
    }
}

fn record(index: &Index, h: StoreHash, row: &NarinfoRow, nar: &NarRecord) -> Recorded {
    index
        .record_narinfo(&NewNarinfo { hash: h, row, nar })
        .unwrap()
}

#[test]
fn a_narinfo_and_its_nar_are_recorded_and_read_back() {
    let (_d, index) = temp_index();
    let r = row(1, "text\n");
    assert_eq!(record(&index, hash('a'), &r, &nar(9)), Recorded::Yes);
    assert_eq!(index.narinfo(&hash('a')).unwrap(), Some(r));
    let (got, stored) = index.nar(&Sha256Hash([1; 32])).unwrap().unwrap();
    assert_eq!((got, stored), (nar(9), false));
}

#[test]
fn a_known_file_hash_with_other_content_is_refused_and_the_first_record_stays() {
    let (_d, index) = temp_index();
    assert_eq!(
        record(&index, hash('a'), &row(1, "a\n"), &nar(9)),
        Recorded::Yes
    );
    // Another path claims the same file with another NarHash: refused.
    assert_eq!(
        record(&index, hash('b'), &row(1, "b\n"), &nar(8)),
        Recorded::Conflict
    );
    assert_eq!(index.narinfo(&hash('b')).unwrap(), None);
    assert_eq!(index.nar(&Sha256Hash([1; 32])).unwrap().unwrap().0, nar(9));
    // The same content under another path (a fixed-output twin) is fine.
    assert_eq!(
        record(&index, hash('c'), &row(1, "c\n"), &nar(9)),
        Recorded::Yes
    );
}

#[test]
fn commit_checks_the_record_the_fill_verified_against() {
    let (_d, index) = temp_index();
    record(&index, hash('a'), &row(1, "a\n"), &nar(9));
    let fh = Sha256Hash([1; 32]);
    assert_eq!(index.commit_nar(&fh, &nar(8), 100, 5).unwrap(), None);
    assert_eq!(index.commit_nar(&fh, &nar(9), 100, 5).unwrap(), Some(100));
    assert!(index.nar(&fh).unwrap().unwrap().1);
    assert_eq!(index.store_bytes().unwrap(), 100);
    // Gone meanwhile (collected): nothing to commit against.
    assert_eq!(
        index
            .commit_nar(&Sha256Hash([2; 32]), &nar(9), 1, 5)
            .unwrap(),
        None
    );
}

/// Three narinfos (a, b, c) and their NARs 1, 2 and 3, 100 bytes each, stored at times 10, 11 and 12.
fn store_three_nars(index: &Index) {
    for (i, c) in ['a', 'b', 'c'].into_iter().enumerate() {
        let fh = i as u8 + 1;
        record(index, hash(c), &row(fh, "x\n"), &nar(fh));
        index
            .commit_nar(&Sha256Hash([fh; 32]), &nar(fh), 100, 10 + i as u64)
            .unwrap();
    }
}

/// The NARs (by the first byte of their file hash) that evicting `bytes` takes, in order.
fn evicted(index: &Index, bytes: u64) -> Vec<u8> {
    let evicted = index.evict(bytes).unwrap();
    evicted.iter().map(|e| e.file_hash.0[0]).collect()
}

#[test]
fn eviction_takes_the_least_recently_used_and_skips_protected_nars() {
    let (_d, index) = temp_index();
    store_three_nars(&index);
    index.protect(&[Sha256Hash([1; 32])], 1).unwrap();
    index.touch(&Sha256Hash([2; 32]), 50);
    assert_eq!(
        evicted(&index, 150),
        vec![3, 2],
        "oldest unprotected first, the protected one stays"
    );
    assert_eq!(index.store_bytes().unwrap(), 100);
    assert!(index.nar(&Sha256Hash([1; 32])).unwrap().unwrap().1);
}

/// Accesses are noted in one map per thread (`sharded.rs`): the flush takes every thread's, and the
/// latest time of a NAR noted on two threads counts.
#[test]
fn accesses_noted_on_other_threads_are_flushed_latest_first() {
    let (_d, index) = temp_index();
    store_three_nars(&index);
    // NAR 1 (stored at 10) read at 60 on another thread, and at 40 here; NAR 2 (stored at 11) read at
    // 50 on a third thread. Least recently used now: 3 (12), then 2 (50), then 1 (60).
    std::thread::scope(|s| {
        s.spawn(|| index.touch(&Sha256Hash([1; 32]), 60));
        s.spawn(|| index.touch(&Sha256Hash([2; 32]), 50));
    });
    index.touch(&Sha256Hash([1; 32]), 40);
    assert_eq!(evicted(&index, 200), vec![3, 2]);
}

#[test]
fn gc_removes_unasked_narinfos_of_unstored_nars_and_their_records() {
    let (_d, index) = temp_index();
    record(&index, hash('a'), &row(1, "a\n"), &nar(1)); // recorded at 100, never asked
    record(&index, hash('b'), &row(2, "b\n"), &nar(2));
    index.asked(&hash('b'), 500); // asked recently
    record(&index, hash('c'), &row(3, "c\n"), &nar(3));
    index
        .commit_nar(&Sha256Hash([3; 32]), &nar(3), 10, 100)
        .unwrap(); // its NAR is on disk
    index.flush().unwrap();
    let (removed, next) = index.collect_narinfos(None, 100, 400).unwrap();
    assert_eq!((removed, next), (1, None));
    assert_eq!(index.narinfo(&hash('a')).unwrap(), None);
    assert!(
        index.nar(&Sha256Hash([1; 32])).unwrap().is_none(),
        "its NAR record went with it"
    );
    assert!(index.narinfo(&hash('b')).unwrap().is_some());
    assert!(index.narinfo(&hash('c')).unwrap().is_some());
    // Paging: a full page says where to go on.
    let (_, next) = index.collect_narinfos(None, 1, 400).unwrap();
    assert!(next.is_some());
    // A stored NAR nobody points at any more, unread since the cut-off, is collected too.
    index
        .remove_narinfos(&[hash('c').as_str().to_string()])
        .unwrap();
    let evicted = index.collect_unreferenced_nars(400).unwrap();
    assert_eq!(evicted.len(), 1);
    assert_eq!(index.store_bytes().unwrap(), 0);
}

#[test]
fn an_index_written_by_schema_1_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let text = crate::nix::test_vectors::TOP_XZ;
    let narinfo = crate::nix::narinfo::NarInfo::parse(text).unwrap();
    let (file_hash, _) = narinfo.file_hash_or_nar().unwrap();
    {
        // Exactly the tables and values nixcache 0.1 wrote.
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert("schema", "1").unwrap();
        tx.open_table(v1::NARINFO)
            .unwrap()
            .insert(
                narinfo.store_path.hash.as_str(),
                (1000u64, "http://up/", "", text),
            )
            .unwrap();
        let v1_record = format!(
            r#"{{"compression":"xz","file_size":{},"nar_hash":"{}","nar_size":{},"source":"http://up/","url":"http://up/x"}}"#,
            narinfo.file_size.unwrap(),
            narinfo.nar_hash,
            narinfo.nar_size
        );
        let mut nars = tx.open_table(NAR).unwrap();
        nars.insert(file_hash.0, v1_record.as_bytes()).unwrap();
        nars.insert([7; 32], v1_record.as_bytes()).unwrap(); // an unused record
        drop(nars);
        tx.open_table(v1::NAR_STORED)
            .unwrap()
            .insert(file_hash.0, 2000u64)
            .unwrap();
        let mut counters = tx.open_table(COUNTERS).unwrap();
        counters
            .insert(STORE_BYTES, narinfo.file_size.unwrap())
            .unwrap();
        counters.insert(STORE_NARS, 1).unwrap();
        drop(counters);
        tx.commit().unwrap();
    }
    let index = Index::open(&path, None).unwrap();
    let row = index.narinfo(&narinfo.store_path.hash).unwrap().unwrap();
    assert_eq!(
        (row.text.as_str(), row.policy, row.file_hash),
        (text, 0, file_hash)
    );
    let (record, stored) = index.nar(&file_hash).unwrap().unwrap();
    assert!(stored);
    assert_eq!(record.compression, Compression::Xz);
    assert!(index.nar(&Sha256Hash([7; 32])).unwrap().is_none());
    let page = index.stored_page(None, 10).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].size, narinfo.file_size.unwrap());
    drop(index);
    // Opening again is a plain open of schema 2.
    Index::open(&path, None).unwrap();
}

#[test]
fn non_durable_commits_are_kept_by_a_flush() {
    let (dir, index) = temp_index();
    record(&index, hash('a'), &row(1, "a\n"), &nar(1));
    index.flush().unwrap();
    drop(index);
    let index = Index::open(&dir.path().join("index.redb"), None).unwrap();
    assert!(index.narinfo(&hash('a')).unwrap().is_some());
}

/// The index file, through a backend that answers EIO to writes, growth and syncs while `failing` is
/// set: a failing disk no real peer produces on demand (this machine has no device-mapper).
#[derive(Debug)]
struct FailingDisk {
    inner: redb::backends::FileBackend,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FailingDisk {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
}

impl redb::StorageBackend for FailingDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
}

/// An index in a new folder on a [`FailingDisk`] (reopened on it by the heal too), and the switch that
/// makes the disk fail; the probe next to the index fails while it does. The index file is the folder's
/// `index.redb`.
fn failing_index() -> (
    tempfile::TempDir,
    Index,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let failing = std::sync::Arc::new(AtomicBool::new(false));
    let (file, flag) = (path.clone(), failing.clone());
    let opener: Opener = Box::new(move || {
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&file)
            .map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
        let inner = redb::backends::FileBackend::new(handle)?;
        redb::Database::builder().create_with_backend(FailingDisk {
            inner,
            failing: flag.clone(),
        })
    });
    let still_failing = failing.clone();
    let probe: Probe = Box::new(move || match still_failing.load(Ordering::SeqCst) {
        true => Err(std::io::Error::from_raw_os_error(5)),
        false => Ok(()),
    });
    let index = Index::open_with(&path, opener, probe).unwrap();
    (dir, index, failing)
}

#[test]
fn an_eio_breaks_writes_keeps_reads_and_heals_by_reopening() {
    use std::sync::atomic::Ordering;
    let (_dir, index, failing) = failing_index();
    record(&index, hash('a'), &row(1, "a\n"), &nar(1));
    index.flush().unwrap();

    failing.store(true, Ordering::SeqCst);
    // Non-durable commits may still land in memory; the durable flush meets the EIO.
    let _ = index.record_narinfo(&NewNarinfo {
        hash: hash('b'),
        row: &row(2, "b\n"),
        nar: &nar(2),
    });
    assert!(index.flush().unwrap_err().is_io());
    assert!(index.writable().is_err(), "the index says it is broken");
    assert!(!index.heal(), "no heal while the disk still fails");
    // What it has is still read.
    assert!(index.narinfo(&hash('a')).unwrap().is_some());

    failing.store(false, Ordering::SeqCst);
    assert!(index.heal(), "reopened once the disk works");
    assert!(index.writable().is_ok());
    record(&index, hash('c'), &row(3, "c\n"), &nar(3));
    index.flush().unwrap();
    assert!(index.narinfo(&hash('a')).unwrap().is_some());
    assert!(index.narinfo(&hash('c')).unwrap().is_some());
}

/// Rows committed non-durably while the disk was fine, then a commit that fails: the reopen that heals
/// the index loses what was not durable, so the heal records those rows again (`Index::unsynced`); the
/// row made durable before stays. (The full-disk test in `tests/disk.rs` still loses such rows about one
/// run in twenty, with a real ENOSPC; this backend fails before writing anything.)
#[test]
fn rows_committed_before_a_failed_commit_are_recorded_again_by_the_heal() {
    use std::sync::atomic::Ordering;
    let (dir, index, failing) = failing_index();
    record(&index, hash('a'), &row(1, "a\n"), &nar(1));
    index.flush().unwrap();
    let later = ['b', 'd', 'f', 'g', 'h', 'i'];
    for (i, c) in later.iter().enumerate() {
        record(
            &index,
            hash(*c),
            &row(10 + i as u8, "x\n"),
            &nar(10 + i as u8),
        );
    }
    failing.store(true, Ordering::SeqCst);
    assert!(index.flush().unwrap_err().is_io());
    failing.store(false, Ordering::SeqCst);
    assert!(index.heal());
    for c in std::iter::once('a').chain(later) {
        assert!(index.narinfo(&hash(c)).unwrap().is_some(), "{c} lost");
    }
    // And durable now: a plain reopen still has them.
    drop(index);
    let index = Index::open(&dir.path().join("index.redb"), None).unwrap();
    for c in std::iter::once('a').chain(later) {
        assert!(
            index.narinfo(&hash(c)).unwrap().is_some(),
            "{c} lost on reopen"
        );
    }
}

#[test]
fn a_row_committed_while_a_durable_commit_finishes_is_still_recorded_again_by_the_heal() {
    use std::sync::atomic::Ordering;
    let (_dir, index, failing) = failing_index();
    let index = std::sync::Arc::new(index);
    record(&index, hash('a'), &row(1, "a\n"), &nar(1));
    // The group commit's durable commit returns; before it does its bookkeeping, another thread
    // records 'b' (non-durably, so after that durable commit). Numbering a commit after it returned
    // gave 'b' the lower number, and the durable commit then forgot it as covered.
    let other = index.clone();
    *index.between_commit_and_bookkeeping.lock().unwrap() = Some(Box::new(move || {
        std::thread::spawn(move || record(&other, hash('b'), &row(2, "b\n"), &nar(2)))
            .join()
            .unwrap();
    }));
    index.flush().unwrap();
    // With the old numbering the next flush also found nothing newer than the durable number; 'c'
    // gives it something, so that it runs and meets the failing disk.
    record(&index, hash('c'), &row(3, "c\n"), &nar(3));
    failing.store(true, Ordering::SeqCst);
    assert!(index.flush().unwrap_err().is_io());
    failing.store(false, Ordering::SeqCst);
    assert!(index.heal());
    for c in ['a', 'c'] {
        assert!(index.narinfo(&hash(c)).unwrap().is_some(), "{c} lost");
    }
    assert!(
        index.narinfo(&hash('b')).unwrap().is_some(),
        "b, committed after the durable commit, was not recorded again"
    );
}
