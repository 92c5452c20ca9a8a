//! The disk budget: everything the appliance writes counts against `max_size` — stored NARs, the temp
//! files of running fills (reserved before their download starts), and the index file — and the
//! filesystem keeps at least `min_free` bytes free, whoever else fills it. Room is made by evicting
//! least-recently-used NARs that nothing protects; a fill that still cannot fit is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::app::App;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::Compression;

/// Why a reservation was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoSpace {
    /// Larger than `max_size` itself: such a NAR is passed through, never stored.
    #[error("larger than the store's cap")]
    LargerThanCap,
    /// Not enough room even after evicting everything evictable.
    #[error("no room: {0}")]
    Full(String),
}

/// What counts against the budget now, for `/_status`, the status page and `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Bytes of stored NAR files.
    pub stored: u64,
    /// Bytes reserved by running fills.
    pub reserved: u64,
    /// Bytes of the index file.
    pub index: u64,
    /// The cap.
    pub max_size: u64,
    /// Bytes free on the data folder's filesystem (for unprivileged users).
    pub fs_free: u64,
    /// The free space kept.
    pub min_free: u64,
}

/// The budget's state: what running fills reserved, and how much of that they have not written yet.
pub struct Budget {
    max_size: u64,
    min_free: u64,
    reserved: AtomicU64,
    unwritten: AtomicU64,
    /// One reservation or enforcement at a time, so two fills never count the same free bytes.
    deciding: Mutex<()>,
}

/// Bytes held for one fill; given back when dropped (the stored file is counted from then on).
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
    written: AtomicU64,
}

impl Reservation {
    /// Notes `n` more bytes written to the temp file (they now show in the filesystem's free space).
    pub fn wrote(&self, n: u64) {
        let before = self.written.fetch_add(n, Ordering::Relaxed);
        let counted = n.min(self.bytes.saturating_sub(before));
        self.budget.unwritten.fetch_sub(counted, Ordering::Relaxed);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let written = self.written.load(Ordering::Relaxed).min(self.bytes);
        self.budget
            .unwritten
            .fetch_sub(self.bytes - written, Ordering::Relaxed);
        self.budget
            .reserved
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The largest file a NAR of `nar_size` bytes can honestly compress to: the worst-case expansion of
/// every supported compressor (incompressible input stored in raw blocks) is far below this. Used to
/// reserve room when FileSize is absent, and to cap what a hostile source may make us write.
pub fn compressed_bound(compression: Compression, nar_size: u64) -> u64 {
    match compression {
        Compression::None => nar_size,
        _ => nar_size
            .saturating_add(nar_size / 128)
            .saturating_add(64 * 1024),
    }
}

impl Budget {
    /// A budget of `max_size` bytes that keeps `min_free` bytes free.
    pub fn new(max_size: u64, min_free: u64) -> Arc<Budget> {
        Arc::new(Budget {
            max_size,
            min_free,
            reserved: AtomicU64::new(0),
            unwritten: AtomicU64::new(0),
            deciding: Mutex::new(()),
        })
    }

    /// The cap.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Whether a file of `bytes` can never be stored beside the index, even with every other NAR
    /// evicted (it is passed through instead).
    pub fn larger_than_cap(&self, bytes: u64, index_bytes: u64) -> bool {
        bytes > self.max_size.saturating_sub(index_bytes)
    }

    /// What counts now.
    pub fn usage(&self, app: &App) -> Usage {
        Usage {
            stored: app.index.store_bytes().unwrap_or(0),
            reserved: self.reserved.load(Ordering::Relaxed),
            index: app.index.file_bytes(),
            max_size: self.max_size,
            fs_free: app.store.free_bytes().unwrap_or(0),
            min_free: self.min_free,
        }
    }

    /// Reserves `bytes` for a fill, evicting what it takes. Blocking (index writes, file removal).
    pub fn reserve(self: &Arc<Self>, app: &App, bytes: u64) -> Result<Reservation, NoSpace> {
        if self.larger_than_cap(bytes, app.index.file_bytes()) {
            return Err(NoSpace::LargerThanCap);
        }
        let _one = self
            .deciding
            .lock()
            .map_err(|_| NoSpace::Full("budget lock poisoned".into()))?;
        self.make_room(app, bytes)?;
        Ok(self.hold(bytes))
    }

    /// Reserves `bytes` when that needs no eviction and nobody else is deciding: a counter read, a stat
    /// and a statvfs, cheap enough for the async side. `None`: use [`Budget::reserve`].
    pub fn reserve_at_once(self: &Arc<Self>, app: &App, bytes: u64) -> Option<Reservation> {
        let _one = self.deciding.try_lock().ok()?;
        if self.larger_than_cap(bytes, app.index.file_bytes())
            || self.shortfall(app, bytes).ok()? > 0
        {
            return None;
        }
        Some(self.hold(bytes))
    }

    fn hold(self: &Arc<Self>, bytes: u64) -> Reservation {
        self.reserved.fetch_add(bytes, Ordering::Relaxed);
        self.unwritten.fetch_add(bytes, Ordering::Relaxed);
        Reservation {
            budget: self.clone(),
            bytes,
            written: AtomicU64::new(0),
        }
    }

    /// Evicts until the store is within its cap and the filesystem has `min_free` free (others may
    /// have filled it). Run periodically and after the index grew.
    pub fn enforce(&self, app: &App) -> Result<(), NoSpace> {
        let _one = self
            .deciding
            .lock()
            .map_err(|_| NoSpace::Full("budget lock poisoned".into()))?;
        self.make_room(app, 0)
    }

    /// How many bytes must go for `extra` more to fit: over the cap, or under the free-space floor.
    fn shortfall(&self, app: &App, extra: u64) -> Result<u64, NoSpace> {
        let stored = app
            .index
            .store_bytes()
            .map_err(|e| NoSpace::Full(format!("index: {e}")))?;
        let used = stored
            .saturating_add(self.reserved.load(Ordering::Relaxed))
            .saturating_add(app.index.file_bytes())
            .saturating_add(extra);
        let over_cap = used.saturating_sub(self.max_size);
        let free = app
            .store
            .free_bytes()
            .map_err(|e| NoSpace::Full(format!("statvfs: {e}")))?
            .saturating_sub(self.unwritten.load(Ordering::Relaxed));
        let under_floor = self.min_free.saturating_add(extra).saturating_sub(free);
        Ok(over_cap.max(under_floor))
    }

    fn make_room(&self, app: &App, extra: u64) -> Result<(), NoSpace> {
        let need = self.shortfall(app, extra)?;
        if need == 0 {
            return Ok(());
        }
        // A little more than needed, so eviction does not run again for the very next fill.
        let target = need.saturating_add(self.max_size / 50);
        evict(app, target);
        match self.shortfall(app, extra)? {
            0 => Ok(()),
            still => Err(NoSpace::Full(format!(
                "{still} bytes short after evicting everything evictable"
            ))),
        }
    }
}

/// Evicts least-recently-used NARs (unprotected) worth `bytes`, removing their files.
pub fn evict(app: &App, bytes: u64) {
    let evicted = match app.index.evict(bytes) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "eviction failed");
            return;
        }
    };
    remove_files(app, &evicted);
    // Pushed NARs (with `push_lru`) cannot be fetched again: their narinfos go too (issue 12).
    crate::push::forget_evicted(app, &evicted);
    let freed: u64 = evicted.iter().map(|e| e.size).sum();
    if !evicted.is_empty() {
        tracing::info!(
            nars = evicted.len(),
            bytes = freed,
            "evicted least recently used NARs"
        );
    }
    app.metrics.evicted(evicted.len(), freed);
}

/// Removes the files of NARs the index no longer lists as stored.
pub fn remove_files(app: &App, evicted: &[crate::index::Evicted]) {
    for e in evicted {
        let name = NarName {
            file_hash: e.file_hash,
            compression: e.record.compression,
        };
        if let Err(err) = app.store.remove(&name) {
            tracing::error!(error = %err, "removing an evicted NAR failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_covers_incompressible_input() {
        use std::io::Write;
        let noise: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 9);
            e.write_all(&noise).unwrap();
            e.finish().unwrap()
        };
        let zstd = zstd::stream::encode_all(&noise[..], 19).unwrap();
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
            e.write_all(&noise).unwrap();
            e.finish().unwrap()
        };
        for (c, file) in [
            (Compression::Xz, xz),
            (Compression::Zstd, zstd),
            (Compression::Bzip2, bz),
        ] {
            assert!(
                file.len() as u64 <= compressed_bound(c, noise.len() as u64),
                "{c}: {} > bound",
                file.len()
            );
        }
        assert_eq!(compressed_bound(Compression::None, 10), 10);
    }
}
