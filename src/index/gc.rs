//! Keeping the index bounded: rows that no longer serve anyone are removed, a page at a time, so the
//! GC never holds the writer for long.
//!
//! A narinfo row goes when its NAR is not on disk (never fetched, or evicted), nothing protects it, it
//! is not part of the OCI mirror (the mirror follows the published index), and nobody asked for it since
//! the cut-off. A NAR record goes with the last narinfo pointing at it (see `narinfos::add_ref`); a stored
//! NAR that no narinfo points at any more is evicted once it has not been read since the cut-off.

use std::ops::Bound;

use redb::ReadableTable;
use serde::Serialize;

use super::narinfos::remove_narinfo;
use super::nars::unstore;
use super::records::Evicted;
use super::tables::*;
use super::{Index, IndexError};
use crate::nix::hash::Sha256Hash;

/// What one GC pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Narinfo rows removed.
    pub narinfos: usize,
    /// Stored NARs no narinfo pointed at, evicted.
    pub nars: usize,
}

impl Index {
    /// Collects up to `limit` narinfo rows after `after` that nobody asked for since `cutoff` and whose
    /// NAR is not stored. Returns how many went and where the next page starts (`None` at the end).
    pub fn collect_narinfos(
        &self,
        after: Option<&str>,
        limit: usize,
        cutoff: u64,
    ) -> Result<(usize, Option<String>), IndexError> {
        self.write(false, |tx| {
            let mut doomed = Vec::new();
            let mut last = None;
            let mut seen_rows = 0;
            {
                let narinfos = tx.open_table(NARINFO)?;
                let asked = tx.open_table(NARINFO_ASKED)?;
                let mirror = tx.open_table(MIRROR)?;
                let stored = tx.open_table(STORED)?;
                let protected = tx.open_table(PROTECTED)?;
                let range = match after {
                    Some(a) => narinfos.range::<&str>((Bound::Excluded(a), Bound::Unbounded))?,
                    None => narinfos.range::<&str>(..)?,
                };
                for row in range.take(limit) {
                    let (k, v) = row?;
                    let key = k.value();
                    seen_rows += 1;
                    last = Some(key.to_string());
                    let (recorded, _, _, _, file_hash, _) = v.value();
                    let seen = asked
                        .get(key)?
                        .map_or(recorded, |a| a.value().max(recorded));
                    if seen >= cutoff
                        || mirror.get(key)?.is_some()
                        || stored.get(file_hash)?.is_some()
                        || protected.get(file_hash)?.is_some()
                    {
                        continue;
                    }
                    doomed.push(key.to_string());
                }
            }
            for key in &doomed {
                remove_narinfo(tx, key)?;
            }
            // A short page was the last one.
            let next = if seen_rows == limit { last } else { None };
            Ok((doomed.len(), next))
        })
    }

    /// Takes stored NARs out of the index that no narinfo points at, nothing protects, and nobody read
    /// since `cutoff` (the caller removes the files).
    pub fn collect_unreferenced_nars(&self, cutoff: u64) -> Result<Vec<Evicted>, IndexError> {
        self.write(true, |tx| {
            let mut doomed = Vec::new();
            {
                let refs = tx.open_table(NAR_REFS)?;
                let protected = tx.open_table(PROTECTED)?;
                for row in tx.open_table(STORED)?.iter()? {
                    let (k, v) = row?;
                    let (last_access, _) = v.value();
                    if last_access < cutoff
                        && refs.get(k.value())?.is_none()
                        && protected.get(k.value())?.is_none()
                    {
                        doomed.push(Sha256Hash(k.value()));
                    }
                }
            }
            let mut evicted = Vec::new();
            for file_hash in doomed {
                if let Some((record, size)) = unstore(tx, &file_hash)? {
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
}
