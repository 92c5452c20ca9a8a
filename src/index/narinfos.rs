//! Narinfo rows: recording what a source answered, negative entries, the OCI mirror, and the pages the
//! trust sweep and the GC walk.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use redb::{ReadableTable, WriteTransaction};
use serde::Serialize;

use super::records::{NarRecord, NarinfoRow, NewNarinfo, Recorded};
use super::tables::*;
use super::{Index, IndexError};
use crate::nix::hash::Sha256Hash;
use crate::nix::store_path::StoreHash;

/// One narinfo of a mirrored OCI index, ready to record.
#[derive(Debug, Clone)]
pub struct MirroredEntry {
    /// Its store hash.
    pub hash: StoreHash,
    /// sha256 of the raw index entry and the policy it was checked under, to recognise it next time.
    pub entry_digest: [u8; 32],
    /// The row (canonical URL, signed).
    pub row: NarinfoRow,
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
    /// Entries refused because their FileHash is known with other content.
    pub conflicts: usize,
}

pub(super) fn to_row(v: NarinfoValue<'_>) -> NarinfoRow {
    let (recorded, policy, source, signer, file_hash, text) = v;
    NarinfoRow {
        recorded,
        policy,
        source: source.to_string(),
        signer: signer.to_string(),
        file_hash: Sha256Hash(file_hash),
        text: text.to_string(),
    }
}

pub(super) fn as_value(row: &NarinfoRow) -> NarinfoValue<'_> {
    (
        row.recorded,
        row.policy,
        &row.source,
        &row.signer,
        row.file_hash.0,
        &row.text,
    )
}

impl Index {
    /// The narinfo recorded for `hash`.
    pub fn narinfo(&self, hash: &StoreHash) -> Result<Option<NarinfoRow>, IndexError> {
        Ok(self.narinfo_shared(hash)?.map(Arc::unwrap_or_clone))
    }

    /// The narinfo recorded for `hash`, shared with other readers of the same snapshot (the hit path:
    /// a hot narinfo is not read from redb or decoded again until the next commit).
    pub fn narinfo_shared(&self, hash: &StoreHash) -> Result<Option<Arc<NarinfoRow>>, IndexError> {
        self.hit(|s| s.narinfo(hash))
    }

    /// Whether `hash` is known to be absent everywhere at `now` (unix seconds).
    pub fn is_negative(&self, hash: &StoreHash, now: u64) -> Result<bool, IndexError> {
        self.hit(|s| {
            Ok(s.negative
                .get(hash.as_str())?
                .is_some_and(|v| v.value() > now))
        })
    }

    /// Records a narinfo as served and the NAR it points to (non-durably: see the module notes).
    pub fn record_narinfo(&self, new: &NewNarinfo<'_>) -> Result<Recorded, IndexError> {
        self.write_keeping(
            false,
            |tx| {
                let recorded = put_narinfo(tx, new)?;
                if recorded == Recorded::Yes {
                    tx.open_table(NEGATIVE)?.remove(new.hash.as_str())?;
                }
                Ok(recorded)
            },
            |recorded| (*recorded == Recorded::Yes).then(|| super::Unsynced::narinfo(new)),
        )
    }

    /// Remembers that `hash` is absent everywhere until `until`.
    pub fn record_negative(&self, hash: &StoreHash, until: u64) -> Result<(), IndexError> {
        self.write(false, |tx| {
            tx.open_table(NEGATIVE)?.insert(hash.as_str(), until)?;
            Ok(())
        })
    }

    /// Drops negative entries that expired before `now`.
    pub fn purge_negative(&self, now: u64) -> Result<(), IndexError> {
        self.write(false, |tx| {
            tx.open_table(NEGATIVE)?.retain(|_, until| until > now)?;
            Ok(())
        })
    }

    /// Forgets every negative entry when the sources' trust policies are not the ones `policies`
    /// names (a digest of all of them): a miss decided under other keys or sources proves nothing now.
    /// Returns whether they were forgotten.
    pub fn forget_negative_unless(&self, policies: &str) -> Result<bool, IndexError> {
        let same = self.read(|tx| {
            Ok(tx
                .open_table(META)?
                .get("policies")?
                .map(|v| v.value() == policies))
        })?;
        if same == Some(true) {
            return Ok(false);
        }
        self.write(true, |tx| {
            tx.open_table(NEGATIVE)?.retain(|_, _| false)?;
            tx.open_table(META)?.insert("policies", policies)?;
            Ok(())
        })?;
        Ok(true)
    }

    /// The trust policies (their digest) every recorded narinfo was last checked against in full.
    pub fn trust_checked(&self) -> Result<Option<String>, IndexError> {
        self.read(|tx| {
            Ok(tx
                .open_table(META)?
                .get("trust_checked")?
                .map(|v| v.value().to_string()))
        })
    }

    /// Notes that every recorded narinfo was checked against the policies of `digest`.
    pub fn set_trust_checked(&self, digest: &str) -> Result<(), IndexError> {
        self.write(false, |tx| {
            tx.open_table(META)?.insert("trust_checked", digest)?;
            Ok(())
        })
    }

    /// Notes that a client asked for `hash`; written by the next flush (for the index's GC).
    pub fn asked(&self, hash: &StoreHash, now: u64) {
        self.access.asked(hash, now);
    }

    /// Up to `limit` narinfo rows after `after` (in key order), for sweeps that must not hold one long
    /// transaction.
    pub fn narinfo_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, NarinfoRow)>, IndexError> {
        self.read(|tx| {
            let table = tx.open_table(NARINFO)?;
            let range = match after {
                Some(a) => table
                    .range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
                None => table.range::<&str>(..)?,
            };
            let mut out = Vec::with_capacity(limit);
            for row in range.take(limit) {
                let (k, v) = row?;
                out.push((k.value().to_string(), to_row(v.value())));
            }
            Ok(out)
        })
    }

    /// Sets the policy tag of rows that were checked again and still pass.
    pub fn retag_narinfos(&self, rows: &[(String, u64)]) -> Result<(), IndexError> {
        self.write(false, |tx| {
            let mut table = tx.open_table(NARINFO)?;
            for (hash, policy) in rows {
                let Some(row) = table.get(hash.as_str())?.map(|v| to_row(v.value())) else {
                    continue;
                };
                let row = NarinfoRow {
                    policy: *policy,
                    ..row
                };
                table.insert(hash.as_str(), as_value(&row))?;
            }
            Ok(())
        })
    }

    /// Removes narinfo rows (refused by today's trust policy, or collected), releasing their NARs.
    pub fn remove_narinfos(&self, hashes: &[String]) -> Result<usize, IndexError> {
        self.write(false, |tx| {
            let mut removed = 0;
            for hash in hashes {
                if remove_narinfo(tx, hash)? {
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }

    /// The raw-entry digests of what was mirrored last time (store hash → digest).
    pub fn mirror_digests(&self) -> Result<HashMap<String, [u8; 32]>, IndexError> {
        self.read(|tx| {
            let mut out = HashMap::new();
            for row in tx.open_table(MIRROR)?.iter()? {
                let (k, v) = row?;
                out.insert(k.value().to_string(), v.value());
            }
            Ok(out)
        })
    }

    /// Makes `source`'s rows the mirrored index: `changed` entries are written, mirrored rows in `keep`
    /// stay as they are, every other mirrored row goes — in one durable transaction, so readers see the
    /// old index or the new one, never a mix. Remembers the manifest digest it came from.
    pub fn apply_mirror(
        &self,
        source: &str,
        changed: &[MirroredEntry],
        keep: &HashSet<String>,
        manifest_digest: &str,
    ) -> Result<Applied, IndexError> {
        self.write(true, |tx| {
            let mut applied = Applied::default();
            let stale: Vec<String> = {
                let mirror = tx.open_table(MIRROR)?;
                let mut stale = Vec::new();
                for row in mirror.iter()? {
                    let (k, _) = row?;
                    if !keep.contains(k.value()) {
                        stale.push(k.value().to_string());
                    }
                }
                stale
            };
            for key in &stale {
                tx.open_table(MIRROR)?.remove(key.as_str())?;
                if narinfo_source(tx, key)?.as_deref() == Some(source) {
                    remove_narinfo(tx, key)?;
                }
            }
            applied.removed = stale.len();
            for e in changed {
                // A path pushed by a LAN builder keeps its push (issue 12).
                if super::pushes::is_pushed(tx, e.hash.as_str())? {
                    applied.conflicts += 1;
                    continue;
                }
                let new = NewNarinfo {
                    hash: e.hash,
                    row: &e.row,
                    nar: &e.nar,
                };
                match put_narinfo(tx, &new)? {
                    Recorded::Yes => {
                        tx.open_table(MIRROR)?
                            .insert(e.hash.as_str(), e.entry_digest)?;
                        tx.open_table(NEGATIVE)?.remove(e.hash.as_str())?;
                        applied.written += 1;
                    }
                    Recorded::Conflict => applied.conflicts += 1,
                }
            }
            applied.unchanged = keep.len().saturating_sub(changed.len());
            tx.open_table(META)?
                .insert(format!("manifest {source}").as_str(), manifest_digest)?;
            Ok(applied)
        })
    }

    /// The manifest digest last applied for `source`.
    pub fn mirrored_digest(&self, source: &str) -> Result<Option<String>, IndexError> {
        self.read(|tx| {
            let meta = tx.open_table(META)?;
            Ok(meta
                .get(format!("manifest {source}").as_str())?
                .map(|v| v.value().to_string()))
        })
    }

    /// How many narinfos the OCI mirror holds (one table length: cheap).
    pub fn mirrored_count(&self) -> Result<u64, IndexError> {
        use redb::ReadableTableMetadata;
        self.read(|tx| Ok(tx.open_table(MIRROR)?.len()?))
    }
}

fn narinfo_source(tx: &WriteTransaction, hash: &str) -> Result<Option<String>, IndexError> {
    Ok(tx
        .open_table(NARINFO)?
        .get(hash)?
        .map(|v| v.value().2.to_string()))
}

/// Writes a narinfo row and its NAR record inside `tx`, keeping the NAR reference counts.
pub(super) fn put_narinfo(
    tx: &WriteTransaction,
    new: &NewNarinfo<'_>,
) -> Result<Recorded, IndexError> {
    let file_hash = new.row.file_hash.0;
    {
        let mut nars = tx.open_table(NAR)?;
        let known = match nars.get(file_hash)? {
            Some(raw) => Some(NarRecord::decode(raw.value())?),
            None => None,
        };
        match known {
            Some(known) if !known.same_content(new.nar) => return Ok(Recorded::Conflict),
            // A stored file keeps the record it was verified against.
            Some(_) if tx.open_table(STORED)?.get(file_hash)?.is_some() => {}
            // Not stored: fetch it from where this (newer) narinfo says, which is configured now.
            _ => {
                nars.insert(file_hash, new.nar.encode()?.as_slice())?;
            }
        }
    }
    // Issue 16: a row of a NAR that was transcoded points at its zstd twin.
    let row = super::transcoded::follow_twin(tx, new.row)?;
    let row = row.as_ref();
    let previous = {
        let mut table = tx.open_table(NARINFO)?;
        let previous = table
            .get(new.hash.as_str())?
            .map(|v| Sha256Hash(v.value().4));
        table.insert(new.hash.as_str(), as_value(row))?;
        previous
    };
    super::transcoded::row_written(tx, new.hash.as_str(), previous, &row.file_hash)?;
    if previous != Some(row.file_hash) {
        add_ref(tx, &row.file_hash, 1)?;
        if let Some(old) = previous {
            add_ref(tx, &old, -1)?;
        }
    }
    Ok(Recorded::Yes)
}

/// Removes one narinfo row inside `tx`; false when there was none.
pub(super) fn remove_narinfo(tx: &WriteTransaction, hash: &str) -> Result<bool, IndexError> {
    let removed = tx
        .open_table(NARINFO)?
        .remove(hash)?
        .map(|v| Sha256Hash(v.value().4));
    tx.open_table(NARINFO_ASKED)?.remove(hash)?;
    match removed {
        Some(file_hash) => {
            super::transcoded::row_removed(tx, hash, &file_hash)?;
            add_ref(tx, &file_hash, -1)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Changes the number of narinfos pointing at `file_hash`; a NAR record that nobody points at, that is
/// not stored and not protected, goes with its last reference.
pub(super) fn add_ref(
    tx: &WriteTransaction,
    file_hash: &Sha256Hash,
    delta: i64,
) -> Result<(), IndexError> {
    let mut refs = tx.open_table(NAR_REFS)?;
    let now = refs.get(file_hash.0)?.map(|v| v.value()).unwrap_or(0);
    let next = now.saturating_add_signed(delta);
    if next > 0 {
        refs.insert(file_hash.0, next)?;
        return Ok(());
    }
    refs.remove(file_hash.0)?;
    let stored = tx.open_table(STORED)?.get(file_hash.0)?.is_some();
    let protected = tx.open_table(PROTECTED)?.get(file_hash.0)?.is_some();
    if !stored && !protected {
        super::nars::forget_nar(tx, file_hash)?;
    }
    Ok(())
}
