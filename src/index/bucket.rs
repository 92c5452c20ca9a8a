//! What the index keeps for the shared bucket (issue 13): narinfos recorded from an upstream that wait
//! for their NAR to reach the bucket before they are published there, and NAR records moved to the
//! bucket once their file is in it.

use redb::ReadableTable;

use super::narinfos::put_narinfo;
use super::records::{NarRecord, NewNarinfo, Recorded};
use super::tables::*;
use super::{Index, IndexError};
use crate::nix::hash::Sha256Hash;

impl Index {
    /// Records a narinfo (as [`Index::record_narinfo`]) and notes, in the same transaction, that it
    /// is to be published in the bucket once its NAR is there. A NAR record that already points at the
    /// bucket (`bucket`) keeps pointing there; the answer says so (then the narinfo can go at once).
    pub fn record_narinfo_unpublished(
        &self,
        new: &NewNarinfo<'_>,
        bucket: &str,
    ) -> Result<(Recorded, bool), IndexError> {
        self.write_keeping(
            false,
            |tx| {
                let in_bucket = match tx.open_table(NAR)?.get(new.row.file_hash.0)? {
                    Some(raw) => {
                        let known = NarRecord::decode(raw.value())?;
                        (known.source == bucket && known.same_content(new.nar)).then_some(known)
                    }
                    None => None,
                };
                let recorded = put_narinfo(tx, new)?;
                if recorded == Recorded::Yes {
                    if let Some(known) = &in_bucket {
                        // put_narinfo points an unstored NAR at the newest narinfo's source; this one
                        // is in the bucket already.
                        tx.open_table(NAR)?
                            .insert(new.row.file_hash.0, known.encode()?.as_slice())?;
                    }
                    tx.open_table(NEGATIVE)?.remove(new.hash.as_str())?;
                    tx.open_multimap_table(BUCKET_PENDING)?
                        .insert(new.row.file_hash.0, new.hash.as_str())?;
                }
                Ok((recorded, in_bucket.is_some()))
            },
            |(recorded, _)| (*recorded == Recorded::Yes).then(|| super::Unsynced::narinfo(new)),
        )
    }

    /// The store hashes whose narinfo waits for the NAR `file_hash`.
    pub fn bucket_pending(&self, file_hash: &Sha256Hash) -> Result<Vec<String>, IndexError> {
        self.read(|tx| {
            let table = tx.open_multimap_table(BUCKET_PENDING)?;
            let mut out = Vec::new();
            for v in table.get(file_hash.0)? {
                out.push(v?.value().to_string());
            }
            Ok(out)
        })
    }

    /// Up to `limit` NARs after `after` that narinfos wait for (for the publisher's passes).
    pub fn bucket_pending_page(
        &self,
        after: Option<&Sha256Hash>,
        limit: usize,
    ) -> Result<Vec<Sha256Hash>, IndexError> {
        self.read(|tx| {
            let table = tx.open_multimap_table(BUCKET_PENDING)?;
            let range = match after {
                Some(a) => table.range::<[u8; 32]>((
                    std::ops::Bound::Excluded(a.0),
                    std::ops::Bound::Unbounded,
                ))?,
                None => table.range::<[u8; 32]>(..)?,
            };
            let mut out = Vec::with_capacity(limit);
            for row in range.take(limit) {
                let (k, _) = row?;
                out.push(Sha256Hash(k.value()));
            }
            Ok(out)
        })
    }

    /// Forgets that `hashes` wait for `file_hash` (published, or their row is gone).
    pub fn bucket_published(
        &self,
        file_hash: &Sha256Hash,
        hashes: &[String],
    ) -> Result<(), IndexError> {
        self.write(false, |tx| {
            let mut table = tx.open_multimap_table(BUCKET_PENDING)?;
            for h in hashes {
                table.remove(file_hash.0, h.as_str())?;
            }
            Ok(())
        })
    }

    /// Notes that the NAR `file_hash` is in the bucket: its record now points there (`source`, `url`),
    /// so a fill after its local copy was evicted reads the bucket, not the upstream. False when the
    /// record went or changed content meanwhile.
    pub fn nar_in_bucket(
        &self,
        file_hash: &Sha256Hash,
        expected: &NarRecord,
        size: u64,
        source: &str,
        url: &str,
    ) -> Result<bool, IndexError> {
        self.write(false, |tx| {
            let mut nars = tx.open_table(NAR)?;
            let current = match nars.get(file_hash.0)? {
                Some(raw) => NarRecord::decode(raw.value())?,
                None => return Ok(false),
            };
            if !current.same_content(expected) {
                return Ok(false);
            }
            let moved = NarRecord {
                source: source.to_string(),
                url: url.to_string(),
                file_size: Some(size),
                ..current
            };
            nars.insert(file_hash.0, moved.encode()?.as_slice())?;
            Ok(true)
        })
    }

    /// This appliance's name in the bucket's liveness manifests (`nixcache/live/<id>`): random, made
    /// once and kept in the index, so a lost data folder is a new appliance.
    pub fn bucket_appliance_id(&self) -> Result<String, IndexError> {
        const KEY: &str = "bucket appliance id";
        if let Some(id) = self.read(|tx| {
            Ok(tx
                .open_table(META)?
                .get(KEY)?
                .map(|v| v.value().to_string()))
        })? {
            return Ok(id);
        }
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw)
            .map_err(|e| IndexError::Corrupt(format!("no randomness: {e}")))?;
        let fresh = hex::encode(raw);
        self.write(true, |tx| {
            let mut meta = tx.open_table(META)?;
            let existing = meta.get(KEY)?.map(|v| v.value().to_string());
            let id = match existing {
                Some(id) => id,
                None => {
                    meta.insert(KEY, fresh.as_str())?;
                    fresh.clone()
                }
            };
            Ok(id)
        })
    }
}
