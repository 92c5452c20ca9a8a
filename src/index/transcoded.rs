//! Transcoded NARs (issue 16): which stored original (xz, bzip2) was re-encoded into which zstd twin,
//! the FileHash → narinfo rows map that lets every row follow its NAR to the twin, and the originals
//! kept on disk for a grace after the switch.
//!
//! What must stay true:
//! - A twin's record exists exactly while its link to the original does ([`nar_forgotten`]), and the
//!   link holds one reference on the original's record, so the original stays fetchable from its
//!   source for clients that hold a narinfo from before the switch (its file may be evicted like any).
//! - Rows are rewritten only in URL, Compression, FileHash and FileSize, which no signature covers.
//! - A row recorded later for an original that has a twin points at the twin ([`follow_twin`]).

use std::borrow::Cow;

use redb::{ReadableMultimapTable, ReadableTable, WriteTransaction};

use super::narinfos::{add_ref, as_value, to_row};
use super::nars::{mark_stored, unstore};
use super::records::{NarRecord, NarinfoRow};
use super::tables::*;
use super::{Index, IndexError};
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::{Compression, NarInfo};

/// A transcoded original's twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Twin {
    /// The twin's FileHash.
    pub file_hash: Sha256Hash,
    /// The zstd level it was made with (it is made again with the same one).
    pub level: u8,
}

/// A finished transcode, ready to be recorded.
#[derive(Debug, Clone)]
pub struct Transcoded<'a> {
    /// The original's FileHash.
    pub original: Sha256Hash,
    /// The original's record as the transcoder read it (the switch is refused if it changed).
    pub original_record: &'a NarRecord,
    /// The twin's FileHash.
    pub twin: Sha256Hash,
    /// The twin's record.
    pub twin_record: &'a NarRecord,
    /// Its zstd level.
    pub level: u8,
    /// The twin file's size.
    pub size: u64,
    /// Now (unix seconds).
    pub now: u64,
    /// Unix time after which the original's file is dropped.
    pub keep_original_until: u64,
}

impl Index {
    /// The twin `original` was transcoded into, if any. Read through the hit path's snapshot, as the
    /// NAR records are ([`Index::nar`]): a twin found here has its record there. A fresh read
    /// transaction could see a twin committed a moment ago while the snapshot, until the commit's
    /// bookkeeping ends, does not yet hold its record: its first-ask URL answered 404 (seen once in
    /// `tests/discovery.rs`).
    pub fn twin_of(&self, original: &Sha256Hash) -> Result<Option<Twin>, IndexError> {
        self.hit(|s| {
            Ok(s.transcoded.get(original.0)?.map(|v| {
                let (h, level) = v.value();
                Twin {
                    file_hash: Sha256Hash(h),
                    level,
                }
            }))
        })
    }

    /// The original a twin was made from, if `twin` is one.
    pub fn original_of(&self, twin: &Sha256Hash) -> Result<Option<Sha256Hash>, IndexError> {
        self.read(|tx| {
            Ok(tx
                .open_table(TRANSCODED_FROM)?
                .get(twin.0)?
                .map(|v| Sha256Hash(v.value())))
        })
    }

    /// Records a finished transcode in one transaction: the twin's record, stored; the link; every row
    /// pointing at the original rewritten to the twin; the pins holding the original now holding the
    /// twin; the original's file due to go after the grace. Returns how many rows were switched, or
    /// `None` when the original's record changed or the twin's FileHash is known with other content
    /// (the caller removes the twin's file).
    pub fn commit_transcoded(&self, t: &Transcoded<'_>) -> Result<Option<usize>, IndexError> {
        self.write(false, |tx| {
            {
                let nars = tx.open_table(NAR)?;
                match nars.get(t.original.0)? {
                    Some(raw)
                        if NarRecord::decode(raw.value())?.same_content(t.original_record) => {}
                    _ => return Ok(None),
                }
                if let Some(raw) = nars.get(t.twin.0)?
                    && !NarRecord::decode(raw.value())?.same_content(t.twin_record)
                {
                    return Ok(None);
                }
            }
            // One original per twin, one twin per original.
            if let Some(v) = tx.open_table(TRANSCODED_FROM)?.get(t.twin.0)?
                && v.value() != t.original.0
            {
                return Ok(None);
            }
            if let Some(v) = tx.open_table(TRANSCODED)?.get(t.original.0)?
                && v.value().0 != t.twin.0
            {
                return Ok(None);
            }
            mark_stored(tx, &t.twin, t.twin_record.clone(), t.size, t.now)?;
            let new_link = tx
                .open_table(TRANSCODED)?
                .insert(t.original.0, (t.twin.0, t.level))?
                .is_none();
            tx.open_table(TRANSCODED_FROM)?
                .insert(t.twin.0, t.original.0)?;
            if new_link {
                add_ref(tx, &t.original, 1)?;
            }
            let switched = switch_rows(tx, &t.original, &t.twin, t.size)?;
            super::pins::transfer(tx, &t.original, &t.twin)?;
            if tx.open_table(STORED)?.get(t.original.0)?.is_some() {
                tx.open_table(ORIGINALS)?
                    .insert(t.original.0, t.keep_original_until)?;
            }
            Ok(Some(switched))
        })
    }

    /// Marks a twin that was made again (identical bytes) as stored. `None` when its record went.
    pub fn restore_twin(
        &self,
        twin: &Sha256Hash,
        size: u64,
        now: u64,
    ) -> Result<Option<u64>, IndexError> {
        self.write(false, |tx| {
            let record = match tx.open_table(NAR)?.get(twin.0)? {
                Some(raw) => NarRecord::decode(raw.value())?,
                None => return Ok(None),
            };
            mark_stored(tx, twin, record, size, now).map(Some)
        })
    }

    /// Originals whose grace ended by `now` (at most `limit`).
    pub fn due_originals(&self, now: u64, limit: usize) -> Result<Vec<Sha256Hash>, IndexError> {
        self.read(|tx| {
            let mut out = Vec::new();
            for row in tx.open_table(ORIGINALS)?.iter()? {
                let (k, v) = row?;
                if v.value() <= now {
                    out.push(Sha256Hash(k.value()));
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    /// Takes an original out of the store once its grace ended (its record stays: it can be fetched
    /// again). A protected original (a push holds it) stays. Returns what the caller must remove.
    pub fn drop_original(
        &self,
        original: &Sha256Hash,
    ) -> Result<Option<super::Evicted>, IndexError> {
        self.write(true, |tx| {
            tx.open_table(ORIGINALS)?.remove(original.0)?;
            if tx.open_table(PROTECTED)?.get(original.0)?.is_some() {
                return Ok(None);
            }
            Ok(unstore(tx, original)?.map(|(record, size)| super::Evicted {
                file_hash: *original,
                record,
                size,
            }))
        })
    }

    /// Number of originals transcoded, and of those still on disk for their grace.
    pub fn transcode_counts(&self) -> Result<(u64, u64), IndexError> {
        use redb::ReadableTableMetadata;
        self.read(|tx| {
            Ok((
                tx.open_table(TRANSCODED)?.len()?,
                tx.open_table(ORIGINALS)?.len()?,
            ))
        })
    }
}

/// Creates the tables of issue 16, and builds [`NAR_NARINFOS`] from the rows of an index that had none.
pub(super) fn open_tables(tx: &WriteTransaction) -> Result<(), IndexError> {
    tx.open_table(TRANSCODED)?;
    tx.open_table(TRANSCODED_FROM)?;
    tx.open_table(ORIGINALS)?;
    tx.open_table(PINS)?;
    let mut map = tx.open_multimap_table(NAR_NARINFOS)?;
    if tx.open_table(META)?.get(NAR_NARINFOS_BUILT)?.is_some() {
        return Ok(());
    }
    let mut rows = 0u64;
    for row in tx.open_table(NARINFO)?.iter()? {
        let (k, v) = row?;
        map.insert(v.value().4, k.value())?;
        rows += 1;
    }
    tx.open_table(META)?.insert(NAR_NARINFOS_BUILT, "1")?;
    if rows > 0 {
        tracing::info!(rows, "index: FileHash → narinfo map built");
    }
    Ok(())
}

/// Keeps [`NAR_NARINFOS`] in step with a row written for `hash`.
pub(super) fn row_written(
    tx: &WriteTransaction,
    hash: &str,
    previous: Option<Sha256Hash>,
    now: &Sha256Hash,
) -> Result<(), IndexError> {
    let mut map = tx.open_multimap_table(NAR_NARINFOS)?;
    if let Some(old) = previous
        && old != *now
    {
        map.remove(old.0, hash)?;
    }
    map.insert(now.0, hash)?;
    Ok(())
}

/// Keeps [`NAR_NARINFOS`] in step with a removed row.
pub(super) fn row_removed(
    tx: &WriteTransaction,
    hash: &str,
    file_hash: &Sha256Hash,
) -> Result<(), IndexError> {
    tx.open_multimap_table(NAR_NARINFOS)?
        .remove(file_hash.0, hash)?;
    Ok(())
}

/// The row to record for `row`: itself, or rewritten to the twin when its NAR was transcoded.
pub(super) fn follow_twin<'r>(
    tx: &WriteTransaction,
    row: &'r NarinfoRow,
) -> Result<Cow<'r, NarinfoRow>, IndexError> {
    let Some((twin, _)) = tx
        .open_table(TRANSCODED)?
        .get(row.file_hash.0)?
        .map(|v| v.value())
    else {
        return Ok(Cow::Borrowed(row));
    };
    let twin = Sha256Hash(twin);
    let size = match tx.open_table(NAR)?.get(twin.0)? {
        Some(raw) => NarRecord::decode(raw.value())?.file_size,
        None => None,
    };
    match size.and_then(|size| rewrite(&row.text, &twin, size)) {
        Some(text) => Ok(Cow::Owned(NarinfoRow {
            file_hash: twin,
            text,
            ..row.clone()
        })),
        None => Ok(Cow::Borrowed(row)),
    }
}

/// A NAR record went: if it was a twin, its link goes too (and with it the link's reference on the
/// original, which may then go as well).
pub(super) fn nar_forgotten(
    tx: &WriteTransaction,
    file_hash: &Sha256Hash,
) -> Result<(), IndexError> {
    let Some(original) = tx
        .open_table(TRANSCODED_FROM)?
        .remove(file_hash.0)?
        .map(|v| Sha256Hash(v.value()))
    else {
        return Ok(());
    };
    tx.open_table(TRANSCODED)?.remove(original.0)?;
    tx.open_table(ORIGINALS)?.remove(original.0)?;
    add_ref(tx, &original, -1)
}

/// Points every row of `original` at `twin`. Returns how many rows moved.
fn switch_rows(
    tx: &WriteTransaction,
    original: &Sha256Hash,
    twin: &Sha256Hash,
    size: u64,
) -> Result<usize, IndexError> {
    let hashes: Vec<String> = {
        let map = tx.open_multimap_table(NAR_NARINFOS)?;
        let mut out = Vec::new();
        for v in map.get(original.0)? {
            out.push(v?.value().to_string());
        }
        out
    };
    let mut moved = 0;
    for hash in &hashes {
        let mut table = tx.open_table(NARINFO)?;
        let Some(row) = table.get(hash.as_str())?.map(|v| to_row(v.value())) else {
            continue;
        };
        if row.file_hash != *original {
            continue;
        }
        // A row that does not parse is left as it was (it is served as recorded).
        let Some(text) = rewrite(&row.text, twin, size) else {
            continue;
        };
        let row = NarinfoRow {
            file_hash: *twin,
            text,
            ..row
        };
        table.insert(hash.as_str(), as_value(&row))?;
        drop(table);
        row_written(tx, hash, Some(*original), twin)?;
        moved += 1;
    }
    if moved > 0 {
        add_ref(tx, twin, moved as i64)?;
        add_ref(tx, original, -(moved as i64))?;
    }
    Ok(moved)
}

/// A served narinfo rewritten to point at a zstd twin: URL, Compression, FileHash, FileSize. Signatures
/// stay valid (the fingerprint covers none of these fields).
pub fn rewrite(text: &str, twin: &Sha256Hash, size: u64) -> Option<String> {
    let mut info = NarInfo::parse(text).ok()?;
    let name = NarName {
        file_hash: *twin,
        compression: Compression::Zstd,
    };
    info.url = name.url_path();
    info.compression = Compression::Zstd;
    info.file_hash = Some(*twin);
    info.file_size = Some(size);
    Some(info.to_text())
}

/// Whether [`NAR_NARINFOS`] agrees with the narinfo rows (for tests).
#[cfg(test)]
pub(super) fn map_matches_rows(index: &Index) -> bool {
    use redb::ReadableDatabase;
    let db = index.handle().unwrap();
    let tx = db.begin_read().unwrap();
    let map = tx.open_multimap_table(NAR_NARINFOS).unwrap();
    let mut from_map = Vec::new();
    for row in map.iter().unwrap() {
        let (k, values) = row.unwrap();
        for v in values {
            from_map.push((k.value(), v.unwrap().value().to_string()));
        }
    }
    let mut from_rows = Vec::new();
    for row in tx.open_table(NARINFO).unwrap().iter().unwrap() {
        let (k, v) = row.unwrap();
        from_rows.push((v.value().4, k.value().to_string()));
    }
    from_map.sort();
    from_rows.sort();
    from_map == from_rows
}

#[cfg(test)]
#[path = "transcoded_tests.rs"]
mod tests;
