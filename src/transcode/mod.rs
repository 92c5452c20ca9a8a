//! Transcoding stored xz and bzip2 NARs to zstd (issue 16): the LAN's clients decompress zstd many
//! times faster than xz, so the appliance pays the decompression once and hands every client zstd.
//!
//! After a fill commits an xz or bzip2 NAR it is queued ([`Transcoder::enqueue`]); `transcode_workers`
//! threads at the lowest CPU and I/O priority decode the stored file, encode zstd at `transcode_level`,
//! check the NAR inside against NarHash/NarSize while encoding and the new file once more through
//! [`NarVerifier`], write it through the store's temp → fsync → rename protocol, and switch every
//! narinfo row of the original to the new file in one index transaction. Signatures stay valid: the
//! fingerprint does not cover URL, Compression, FileHash or FileSize.
//!
//! No client breaks: until the switch the original is served; after it, the original stays on disk for
//! `transcode_keep_original` (clients holding the old narinfo), and its record stays after that, so it
//! is fetched again from its source if someone still asks. A twin whose file went (evicted, damaged) is
//! made again from its original, at the level recorded for it, when it is asked for ([`regenerate`]).

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::app::App;
use crate::clock::unix_now;
use crate::index::{IndexError, NarRecord, Transcoded, Twin};
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::Compression;
use crate::store::StoreError;
use crate::verify::VerifyError;

/// Bytes decoded per step (and between two checks for shutdown).
pub(super) const CHUNK: usize = 1 << 20;
/// NARs waiting at most; more are dropped (the walk after the next start finds them again).
const MAX_QUEUE: usize = 100_000;
/// How often the originals whose grace ended are dropped.
const DROP_EVERY: Duration = Duration::from_secs(60);
/// Wait after start before walking the store for NARs stored before transcoding was on.
const CATCH_UP_AFTER: Duration = Duration::from_secs(5);

pub mod alongside;
mod encode;
mod regenerate;

pub use regenerate::{RegenerateError, regenerate, wait_stored};

use encode::{encode, thread_cpu};

/// Why a transcode failed. Logged; the original keeps being served.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// The budget has no room for the zstd file.
    #[error("no room: {0}")]
    NoRoom(String),
    /// Reading, decoding or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The original's NAR is not what its record says (a damaged file: the scrub will drop it).
    #[error("the original's NAR does not match its NarHash/NarSize")]
    Original,
    /// The zstd file failed its own verification.
    #[error("the zstd file failed verification: {0}")]
    Verify(#[from] VerifyError),
    /// A twin made again is not the file its narinfos name (another zstd library or level).
    #[error("the zstd file made again differs from the recorded one")]
    Differs,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The original's record changed meanwhile; nothing was switched.
    #[error("the original's record changed meanwhile")]
    Changed,
    /// The appliance is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// The queue of stored NARs to transcode, shared by the workers.
#[derive(Default)]
pub struct Transcoder {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// One regeneration per twin at a time.
    regenerating: crate::turns::Turns<Sha256Hash>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Sha256Hash>,
    known: HashSet<Sha256Hash>,
}

/// Whether NARs of this compression are worth transcoding (slow to decompress).
pub fn transcodable(compression: Compression) -> bool {
    matches!(compression, Compression::Xz | Compression::Bzip2)
}

impl Transcoder {
    /// Queues a stored NAR (called when a fill committed it). Cheap: never blocks a fill.
    pub fn enqueue(&self, app: &App, name: &NarName) {
        if app.config.transcode_level.is_none() || !transcodable(name.compression) {
            return;
        }
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        if q.waiting.len() >= MAX_QUEUE || !q.known.insert(name.file_hash) {
            return;
        }
        q.waiting.push_back(name.file_hash);
        app.metrics.transcode_queue(q.waiting.len());
        drop(q);
        self.wake.notify_one();
    }

    /// NARs waiting.
    pub fn waiting(&self) -> usize {
        self.queue.lock().map(|q| q.waiting.len()).unwrap_or(0)
    }

    /// The next NAR to transcode; `None` once `stopped` is cancelled.
    fn next(&self, app: &App) -> Option<Sha256Hash> {
        let mut q = self.queue.lock().ok()?;
        loop {
            if app.stopped.is_cancelled() {
                return None;
            }
            if let Some(h) = q.waiting.pop_front() {
                app.metrics.transcode_queue(q.waiting.len());
                return Some(h);
            }
            q = self
                .wake
                .wait_timeout(q, Duration::from_millis(250))
                .ok()?
                .0;
        }
    }

    fn done(&self, file_hash: &Sha256Hash) {
        if let Ok(mut q) = self.queue.lock() {
            q.known.remove(file_hash);
        }
    }
}

/// Starts the transcoding threads (none when transcoding is off), the walk over NARs stored before,
/// and the dropping of originals whose grace ended. The handle ends after the threads did, at shutdown.
pub fn start(app: &Arc<App>) -> JoinHandle<()> {
    let (level, workers) = match app.config.transcode_level {
        Some(level) => (level, app.config.transcode_workers),
        None => (0, 0),
    };
    let threads: Vec<std::thread::JoinHandle<()>> = (0..workers)
        .filter_map(|i| {
            let app = app.clone();
            std::thread::Builder::new()
                .name(format!("transcode-{i}"))
                .spawn(move || worker(app, level))
                .map_err(|e| tracing::error!(error = %e, "cannot start a transcoding thread"))
                .ok()
        })
        .collect();
    let app = app.clone();
    tokio::spawn(async move {
        if workers > 0 {
            tokio::select! {
                () = tokio::time::sleep(CATCH_UP_AFTER) => catch_up(&app).await,
                () = app.stopped.cancelled() => {}
            }
        }
        let mut tick = tokio::time::interval(DROP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = app.stopped.cancelled() => break,
            }
            let a = app.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || drop_due_originals(&a)).await {
                tracing::error!(error = %e, "dropping transcoded originals failed");
            }
        }
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = joined.await;
    })
}

/// One transcoding thread at zstd `level`: lowest priority, one NAR at a time, until shutdown.
fn worker(app: Arc<App>, level: i32) {
    // Transcoding never competes with fills and hits for the CPU or the disk.
    crate::priority::lower();
    while let Some(file_hash) = app.transcoder.next(&app) {
        let started = thread_cpu();
        let result = transcode_stored(&app, &file_hash, level);
        app.metrics.transcode_cpu(thread_cpu() - started);
        app.transcoder.done(&file_hash);
        let nar = file_hash.to_nix32();
        match result {
            Ok(Some((before, after, rows))) => {
                tracing::info!(nar = %nar, before, after, rows, "NAR transcoded to zstd");
                app.metrics.transcoded(&nar, before, after, false);
            }
            Ok(None) | Err(TranscodeError::ShuttingDown) => {}
            Err(TranscodeError::NoRoom(why)) => {
                tracing::info!(nar = %nar, why = %why, "no room to transcode NAR; serving the original");
                app.metrics.transcode_failed(&nar, true);
            }
            Err(e) => {
                tracing::warn!(nar = %nar, error = %e, "transcoding NAR failed; serving the original");
                app.metrics.transcode_failed(&nar, false);
            }
        }
    }
}

/// Transcodes the stored original `file_hash` (or makes its missing twin again). Returns (bytes before,
/// bytes after, rows switched), or `None` when there was nothing to do.
fn transcode_stored(
    app: &App,
    file_hash: &Sha256Hash,
    level: i32,
) -> Result<Option<(u64, u64, usize)>, TranscodeError> {
    let Some((record, true)) = app.index.nar(file_hash)? else {
        return Ok(None);
    };
    if !transcodable(record.compression) {
        return Ok(None);
    }
    let original = NarName {
        file_hash: *file_hash,
        compression: record.compression,
    };
    if let Some(twin) = app.index.twin_of(file_hash)? {
        // Transcoded before: only a twin whose file went is made again.
        if app
            .index
            .nar(&twin.file_hash)?
            .is_some_and(|(_, stored)| stored)
        {
            return Ok(None);
        }
        let size = make_again(app, &original, &record, twin.file_hash, twin.level)?;
        return Ok(Some((record.file_size.unwrap_or(0), size, 0)));
    }
    let encoded = encode(app, &original, &record, level)?;
    let rows = record_twin(
        app,
        &original,
        &record,
        NewTwin {
            guard: encoded.guard,
            file: &encoded.file,
            file_hash: encoded.file_hash,
            size: encoded.size,
            level,
        },
    )?;
    // Recorded as stored: the index counts the twin from now on.
    drop(encoded.reservation);
    Ok(Some((record.file_size.unwrap_or(0), encoded.size, rows)))
}

/// A verified zstd file in the temp folder, made from an original.
struct NewTwin<'a> {
    guard: crate::store::TempGuard,
    file: &'a std::fs::File,
    file_hash: Sha256Hash,
    size: u64,
    level: i32,
}

/// Commits a verified twin of the stored `original` and switches the original's rows to it. Returns
/// how many rows were switched.
fn record_twin(
    app: &App,
    original: &NarName,
    record: &NarRecord,
    new: NewTwin<'_>,
) -> Result<usize, TranscodeError> {
    let twin = NarName {
        file_hash: new.file_hash,
        compression: Compression::Zstd,
    };
    // The twin is fetched from nowhere: its record keeps the original's source (for metrics) and URL,
    // which a plain fill would refuse (xz bytes never pass zstd verification); it is made again instead.
    let twin_record = NarRecord {
        compression: Compression::Zstd,
        file_size: Some(new.size),
        ..record.clone()
    };
    app.store.commit(new.guard, new.file, &twin)?;
    let now = unix_now();
    let committed = app.index.commit_transcoded(&Transcoded {
        original: original.file_hash,
        original_record: record,
        twin: twin.file_hash,
        twin_record: &twin_record,
        level: new.level as u8,
        size: new.size,
        now,
        keep_original_until: now + app.config.transcode_keep_original.as_secs(),
    });
    app.store
        .keep_if_recorded(&twin, committed.map_err(TranscodeError::from))?
        .ok_or(TranscodeError::Changed)
}

/// Makes the twin of the stored `original` now, for a client of its first-ask URL (`server/nar.rs`)
/// when no fill made one beside it (transcoding was off, or there was no room then): at the configured
/// level, or the default one when transcoding is off (the URL was given out while it was on). Returns
/// the twin.
pub async fn make_now(app: &Arc<App>, original: &Sha256Hash) -> Result<Twin, RegenerateError> {
    let _turn = app.transcoder.regenerating.turn(*original).await;
    if let Some(twin) = app.index.twin_of(original)? {
        return Ok(twin);
    }
    let level = app
        .config
        .transcode_level
        .unwrap_or(crate::config::DEFAULT_TRANSCODE_LEVEL);
    let (a, h) = (app.clone(), *original);
    let made = tokio::task::spawn_blocking(move || {
        let started = thread_cpu();
        let made = transcode_stored(&a, &h, level);
        a.metrics.transcode_cpu(thread_cpu() - started);
        made
    })
    .await??;
    if let Some((before, after, _)) = made {
        app.metrics
            .transcoded(&original.to_nix32(), before, after, false);
    }
    app.index.twin_of(original)?.ok_or(RegenerateError::Gone)
}

/// Makes twin `expected` again from the stored original, at `level`, and records it stored. Returns
/// its size.
fn make_again(
    app: &App,
    original: &NarName,
    record: &NarRecord,
    expected: Sha256Hash,
    level: u8,
) -> Result<u64, TranscodeError> {
    let encoded = encode(app, original, record, i32::from(level))?;
    if encoded.file_hash != expected {
        return Err(TranscodeError::Differs);
    }
    let twin = NarName {
        file_hash: expected,
        compression: Compression::Zstd,
    };
    app.store.commit(encoded.guard, &encoded.file, &twin)?;
    let restored = app
        .index
        .restore_twin(&expected, encoded.size, unix_now())
        .map_err(TranscodeError::from);
    app.store
        .keep_if_recorded(&twin, restored)?
        .ok_or(TranscodeError::Changed)?;
    drop(encoded.reservation);
    Ok(encoded.size)
}

/// Queues the stored xz/bzip2 NARs that have no twin yet (stored before transcoding was on, or queued
/// when the process stopped).
async fn catch_up(app: &Arc<App>) {
    let a = app.clone();
    let walked = tokio::task::spawn_blocking(move || -> Result<usize, IndexError> {
        let mut after = None;
        let mut queued = 0;
        loop {
            let page = a.index.stored_page(after.as_ref(), 512)?;
            let Some(last) = page.last() else {
                return Ok(queued);
            };
            after = Some(last.file_hash);
            for nar in &page {
                if transcodable(nar.record.compression)
                    && a.index.twin_of(&nar.file_hash)?.is_none()
                {
                    a.transcoder.enqueue(
                        &a,
                        &NarName {
                            file_hash: nar.file_hash,
                            compression: nar.record.compression,
                        },
                    );
                    queued += 1;
                }
            }
            if a.stopped.is_cancelled() {
                return Ok(queued);
            }
        }
    })
    .await;
    match walked {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(nars = n, "queued stored NARs for transcoding"),
        Ok(Err(e)) => tracing::warn!(error = %e, "walking the store for transcoding failed"),
        Err(e) => tracing::error!(error = %e, "walking the store for transcoding failed"),
    }
}

/// Takes out of the store the originals whose grace after the switch ended.
fn drop_due_originals(app: &App) {
    let due = match app.index.due_originals(unix_now(), 256) {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "listing transcoded originals failed");
            return;
        }
    };
    let mut dropped = Vec::new();
    for original in due {
        match app.index.drop_original(&original) {
            Ok(Some(e)) => dropped.push(e),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "dropping a transcoded original failed"),
        }
    }
    if !dropped.is_empty() {
        crate::budget::remove_files(app, &dropped);
        let bytes: u64 = dropped.iter().map(|e| e.size).sum();
        tracing::info!(
            nars = dropped.len(),
            bytes,
            "dropped originals of transcoded NARs"
        );
    }
}
