//! Pushed paths (issue 12): recording a verified upload in one transaction — its NAR stored, its
//! narinfo, its protection from eviction, and who pushed it — and keeping the [`PUSHED`] rows in step
//! with what the rest of the index did meanwhile (trust sweeps, eviction, scrubs).

use redb::{ReadableTable, WriteTransaction};

use super::narinfos::{add_ref, put_narinfo, remove_narinfo};
use super::records::{NarRecord, NarinfoRow, NewNarinfo, Recorded};
use super::tables::*;
use super::{Index, IndexError, add_counter};
use crate::nix::hash::Sha256Hash;
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::StoreHash;

/// A verified upload to record. Its file is already in the store under its final name (or was stored
/// before, with the same content).
#[derive(Debug, Clone)]
pub struct PushCommit<'a> {
    /// Store hash.
    pub hash: StoreHash,
    /// The narinfo row as it will be served (source `push:<token>`).
    pub row: &'a NarinfoRow,
    /// The NAR record (verified against the uploaded file).
    pub nar: &'a NarRecord,
    /// The token's name.
    pub token: &'a str,
    /// Size of the NAR file.
    pub file_size: u64,
    /// Whether the NAR is kept from eviction (the default) rather than subject to LRU.
    pub protect: bool,
    /// Unix time.
    pub now: u64,
}

/// What recording a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRecorded {
    /// Recorded: the path is served from now on.
    Stored,
    /// The same path was pushed before with the same content (by this token or another): unchanged.
    AlreadyPushed {
        /// The token that pushed it first (and keeps it).
        token: String,
    },
    /// Refused; nothing changed.
    Conflict(PushConflict),
}

/// Why a push contradicts what the index knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushConflict {
    /// The store path is known (from a source or another push) with another NarHash.
    StorePath,
    /// The FileHash is known with other content (another NarHash, NarSize or compression).
    FileHash,
}

/// One pushed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedRow {
    /// Store hash.
    pub hash: String,
    /// The token that pushed it.
    pub token: String,
    /// Its NAR.
    pub file_hash: Sha256Hash,
    /// The NAR file's size.
    pub file_size: u64,
    /// Unix time it was pushed.
    pub at: u64,
}

impl Index {
    /// Whether recording `nar` for `hash` would contradict the index (a read, to refuse early).
    pub fn push_conflict(
        &self,
        hash: &StoreHash,
        file_hash: &Sha256Hash,
        nar: &NarRecord,
    ) -> Result<Option<PushConflict>, IndexError> {
        self.read(|tx| {
            let narinfos = tx.open_table(NARINFO)?;
            let nars = tx.open_table(NAR)?;
            let known_nar = |fh: [u8; 32]| -> Result<Option<NarRecord>, IndexError> {
                match nars.get(fh)? {
                    Some(raw) => NarRecord::decode(raw.value()).map(Some),
                    None => Ok(None),
                }
            };
            if let Some(v) = narinfos.get(hash.as_str())? {
                let (_, _, _, _, fh, text) = v.value();
                if recorded_nar_hash(known_nar(fh)?, text) != Some(nar.nar_hash) {
                    return Ok(Some(PushConflict::StorePath));
                }
            }
            match known_nar(file_hash.0)? {
                Some(known) if !known.same_content(nar) => Ok(Some(PushConflict::FileHash)),
                _ => Ok(None),
            }
        })
    }

    /// Records a verified push durably (the uploader is told it is there): the NAR as stored, the
    /// narinfo (replacing one from a source with the same NarHash), its protection, and the push.
    pub fn commit_push(&self, c: &PushCommit<'_>) -> Result<PushRecorded, IndexError> {
        self.write(true, |tx| {
            if let Some(owner) = pushed_by(tx, c.hash.as_str())? {
                // The same store path, pushed before: its content must agree, and the first push stays.
                let same = narinfo_nar_hash(tx, c.hash.as_str())? == Some(c.nar.nar_hash);
                return Ok(if same {
                    PushRecorded::AlreadyPushed { token: owner }
                } else {
                    PushRecorded::Conflict(PushConflict::StorePath)
                });
            }
            if let Some(known) = narinfo_nar_hash(tx, c.hash.as_str())?
                && known != c.nar.nar_hash
            {
                return Ok(PushRecorded::Conflict(PushConflict::StorePath));
            }
            let file_hash = c.row.file_hash;
            if !store_file(tx, &file_hash, c.nar, c.file_size, c.now)? {
                return Ok(PushRecorded::Conflict(PushConflict::FileHash));
            }
            let new = NewNarinfo {
                hash: c.hash,
                row: c.row,
                nar: c.nar,
            };
            if put_narinfo(tx, &new)? == Recorded::Conflict {
                return Ok(PushRecorded::Conflict(PushConflict::FileHash));
            }
            tx.open_table(NEGATIVE)?.remove(c.hash.as_str())?;
            if c.protect {
                add_protection(tx, &file_hash, 1)?;
            }
            let value = (c.token, file_hash.0, c.file_size, c.now, c.protect);
            tx.open_table(PUSHED)?.insert(c.hash.as_str(), value)?;
            Ok(PushRecorded::Stored)
        })
    }

    /// Every pushed path (a small table: what LAN builders published).
    pub fn pushed(&self) -> Result<Vec<PushedRow>, IndexError> {
        self.read(|tx| {
            let mut out = Vec::new();
            for row in tx.open_table(PUSHED)?.iter()? {
                let (k, v) = row?;
                let (token, fh, size, at, _) = v.value();
                out.push(PushedRow {
                    hash: k.value().to_string(),
                    token: token.to_string(),
                    file_hash: Sha256Hash(fh),
                    file_size: size,
                    at,
                });
            }
            Ok(out)
        })
    }

    /// Brings the pushed rows in step with the index and with today's eviction mode (`protect`):
    /// a push whose narinfo was replaced or removed (trust sweep, index GC), or whose NAR is no longer
    /// stored (evicted, damaged), is forgotten — with its narinfo when that is still the push's, since
    /// its NAR cannot be fetched anywhere — and protection follows `protect`. Returns the pushes
    /// forgotten.
    pub fn reconcile_pushes(&self, protect: bool) -> Result<Vec<PushedRow>, IndexError> {
        let rows = self.pushed()?;
        if rows.is_empty() {
            // Nothing pushed (most appliances): no commit, no fsync every upkeep.
            return Ok(Vec::new());
        }
        self.write(true, |tx| {
            let mut forgotten = Vec::new();
            for row in rows {
                let held = match tx.open_table(PUSHED)?.get(row.hash.as_str())? {
                    Some(v) => v.value().4,
                    None => continue,
                };
                let source = format!("push:{}", row.token);
                let narinfo = tx
                    .open_table(NARINFO)?
                    .get(row.hash.as_str())?
                    .map(|v| (v.value().2.to_string(), Sha256Hash(v.value().4)));
                let ours = narinfo == Some((source, row.file_hash));
                let stored = tx.open_table(STORED)?.get(row.file_hash.0)?.is_some();
                if ours && stored {
                    if held != protect {
                        add_protection(tx, &row.file_hash, if protect { 1 } else { -1 })?;
                        let value = (
                            row.token.as_str(),
                            row.file_hash.0,
                            row.file_size,
                            row.at,
                            protect,
                        );
                        tx.open_table(PUSHED)?.insert(row.hash.as_str(), value)?;
                    }
                    continue;
                }
                tx.open_table(PUSHED)?.remove(row.hash.as_str())?;
                if ours {
                    remove_narinfo(tx, &row.hash)?;
                }
                if held {
                    add_protection(tx, &row.file_hash, -1)?;
                }
                forgotten.push(row);
            }
            Ok(forgotten)
        })
    }
}

/// The NarHash a recorded narinfo stands for: its NAR record's, or (should the record be gone) its text's.
fn recorded_nar_hash(record: Option<NarRecord>, text: &str) -> Option<Sha256Hash> {
    match record {
        Some(r) => Some(r.nar_hash),
        None => NarInfo::parse(text).ok().map(|n| n.nar_hash),
    }
}

fn narinfo_nar_hash(tx: &WriteTransaction, hash: &str) -> Result<Option<Sha256Hash>, IndexError> {
    let Some((fh, text)) = tx
        .open_table(NARINFO)?
        .get(hash)?
        .map(|v| (v.value().4, v.value().5.to_string()))
    else {
        return Ok(None);
    };
    let record = match tx.open_table(NAR)?.get(fh)? {
        Some(raw) => Some(NarRecord::decode(raw.value())?),
        None => None,
    };
    Ok(recorded_nar_hash(record, &text))
}

/// Whether a LAN push recorded the narinfo of `hash`: a pushed path takes priority over the sources
/// for its store hash, so the OCI mirror does not replace it.
pub(super) fn is_pushed(tx: &WriteTransaction, hash: &str) -> Result<bool, IndexError> {
    Ok(tx.open_table(PUSHED)?.get(hash)?.is_some())
}

fn pushed_by(tx: &WriteTransaction, hash: &str) -> Result<Option<String>, IndexError> {
    Ok(tx
        .open_table(PUSHED)?
        .get(hash)?
        .map(|v| v.value().0.to_string()))
}

/// Marks the pushed file stored under `nar` (unless it was stored before: a stored file keeps the
/// record it was verified against). False when the FileHash is known with other content.
fn store_file(
    tx: &WriteTransaction,
    file_hash: &Sha256Hash,
    nar: &NarRecord,
    size: u64,
    now: u64,
) -> Result<bool, IndexError> {
    let mut nars = tx.open_table(NAR)?;
    if let Some(raw) = nars.get(file_hash.0)? {
        let known = NarRecord::decode(raw.value())?;
        drop(raw);
        if !known.same_content(nar) {
            return Ok(false);
        }
    }
    let mut stored = tx.open_table(STORED)?;
    if stored.get(file_hash.0)?.is_some() {
        return Ok(true);
    }
    nars.insert(file_hash.0, nar.encode()?.as_slice())?;
    stored.insert(file_hash.0, (now, size))?;
    let mut counters = tx.open_table(COUNTERS)?;
    add_counter(&mut counters, STORE_NARS, 1)?;
    add_counter(&mut counters, STORE_BYTES, size as i64)?;
    Ok(true)
}

/// Adds `delta` holders to a NAR; a record that loses its last holder and is neither stored nor
/// referenced goes (as [`add_ref`] does for references).
fn add_protection(
    tx: &WriteTransaction,
    file_hash: &Sha256Hash,
    delta: i64,
) -> Result<(), IndexError> {
    super::nars::protect_in(tx, &[*file_hash], delta)?;
    // Re-evaluates whether the record is still needed, without changing the reference count.
    add_ref(tx, file_hash, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::narinfo::Compression;

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

    fn nar(nar_hash: u8, source: &str) -> NarRecord {
        NarRecord {
            compression: Compression::Xz,
            file_size: Some(100),
            nar_hash: Sha256Hash([nar_hash; 32]),
            nar_size: 1000,
            source: source.into(),
            url: "nar/x.nar.xz".into(),
        }
    }

    fn row(file: u8, source: &str) -> NarinfoRow {
        NarinfoRow {
            recorded: 1,
            policy: 1,
            source: source.into(),
            signer: String::new(),
            file_hash: Sha256Hash([file; 32]),
            text: "text\n".into(),
        }
    }

    fn push(index: &Index, h: char, file: u8, nar_hash: u8, protect: bool) -> PushRecorded {
        let (row, nar) = (row(file, "push:ci"), nar(nar_hash, "push:ci"));
        index
            .commit_push(&PushCommit {
                hash: hash(h),
                row: &row,
                nar: &nar,
                token: "ci",
                file_size: 100,
                protect,
                now: 5,
            })
            .unwrap()
    }

    #[test]
    fn a_push_is_stored_protected_and_idempotent_and_a_contradiction_is_refused() {
        let (_d, index) = temp_index();
        assert_eq!(push(&index, 'a', 1, 9, true), PushRecorded::Stored);
        let stats = index.stats().unwrap();
        assert_eq!(
            (stats.narinfos, stats.nars_stored, stats.nars_protected),
            (1, 1, 1)
        );
        assert_eq!(
            push(&index, 'a', 1, 9, true),
            PushRecorded::AlreadyPushed { token: "ci".into() }
        );
        assert_eq!(
            push(&index, 'a', 2, 8, true),
            PushRecorded::Conflict(PushConflict::StorePath)
        );
        assert_eq!(
            push(&index, 'b', 1, 8, true),
            PushRecorded::Conflict(PushConflict::FileHash)
        );
        assert!(
            index.evict(u64::MAX).unwrap().is_empty(),
            "pushed NARs are kept"
        );
        assert_eq!(index.pushed().unwrap().len(), 1);
    }

    #[test]
    fn a_push_takes_over_a_source_row_only_with_the_same_nar_hash() {
        let (_d, index) = temp_index();
        let (up_row, up_nar) = (row(3, "http://up/"), nar(9, "http://up/"));
        let new = NewNarinfo {
            hash: hash('a'),
            row: &up_row,
            nar: &up_nar,
        };
        index.record_narinfo(&new).unwrap();
        let conflict = index.push_conflict(&hash('a'), &Sha256Hash([1; 32]), &nar(8, "push:ci"));
        assert_eq!(conflict.unwrap(), Some(PushConflict::StorePath));
        assert_eq!(
            push(&index, 'a', 1, 8, true),
            PushRecorded::Conflict(PushConflict::StorePath)
        );
        assert_eq!(push(&index, 'a', 1, 9, true), PushRecorded::Stored);
        assert_eq!(
            index.narinfo(&hash('a')).unwrap().unwrap().source,
            "push:ci"
        );
    }

    #[test]
    fn with_lru_a_pushed_nar_is_evicted_and_its_narinfo_forgotten() {
        let (_d, index) = temp_index();
        assert_eq!(push(&index, 'a', 1, 9, true), PushRecorded::Stored);
        // Switching to LRU releases the protection; eviction may then take it.
        assert!(index.reconcile_pushes(false).unwrap().is_empty());
        assert_eq!(index.stats().unwrap().nars_protected, 0);
        assert_eq!(index.evict(u64::MAX).unwrap().len(), 1);
        let forgotten = index.reconcile_pushes(false).unwrap();
        assert_eq!(forgotten.len(), 1);
        assert_eq!(
            index.narinfo(&hash('a')).unwrap(),
            None,
            "nothing can fetch it again"
        );
        assert!(index.nar(&Sha256Hash([1; 32])).unwrap().is_none());
        assert!(index.pushed().unwrap().is_empty());
    }

    #[test]
    fn a_push_whose_row_was_removed_releases_its_protection() {
        let (_d, index) = temp_index();
        assert_eq!(push(&index, 'a', 1, 9, true), PushRecorded::Stored);
        index
            .remove_narinfos(&[hash('a').as_str().to_string()])
            .unwrap();
        assert_eq!(index.reconcile_pushes(true).unwrap().len(), 1);
        assert_eq!(index.stats().unwrap().nars_protected, 0);
        // The file is stored and unreferenced now: the index GC's business, no longer the push's.
        assert_eq!(index.stats().unwrap().nars_stored, 1);
    }
}
