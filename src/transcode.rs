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

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::budget::{NoSpace, compressed_bound};
use crate::clock::unix_now;
use crate::fill::{Failure, Fills, Joined, Want};
use crate::index::{IndexError, NarRecord, Transcoded};
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::Compression;
use crate::server::error::ApiError;
use crate::store::{StoreError, TempGuard};
use crate::verify::{Expected, NarVerifier, VerifyError};

/// Bytes decoded per step (and between two checks for shutdown).
const CHUNK: usize = 1 << 20;
/// NARs waiting at most; more are dropped (the walk after the next start finds them again).
const MAX_QUEUE: usize = 100_000;
/// How often the originals whose grace ended are dropped.
const DROP_EVERY: Duration = Duration::from_secs(60);
/// Wait after start before walking the store for NARs stored before transcoding was on.
const CATCH_UP_AFTER: Duration = Duration::from_secs(5);

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
    regenerating: Mutex<HashMap<Sha256Hash, Arc<tokio::sync::Mutex<()>>>>,
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
    let workers = if app.config.transcode_level.is_some() {
        app.config.transcode_workers
    } else {
        0
    };
    let threads: Vec<std::thread::JoinHandle<()>> = (0..workers)
        .filter_map(|i| {
            let app = app.clone();
            std::thread::Builder::new()
                .name(format!("transcode-{i}"))
                .spawn(move || worker(app))
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

/// One transcoding thread: lowest priority, one NAR at a time, until shutdown.
fn worker(app: Arc<App>) {
    lower_priority();
    while let Some(file_hash) = app.transcoder.next(&app) {
        let started = thread_cpu();
        let result = transcode_stored(&app, &file_hash);
        app.metrics.transcode_cpu(thread_cpu() - started);
        app.transcoder.done(&file_hash);
        let nar = file_hash.to_nix32();
        match result {
            Ok(Some((before, after, rows))) => {
                tracing::info!(nar = %nar, before, after, rows, "NAR transcoded to zstd");
                app.metrics.transcoded(&nar, before, after);
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

/// Nice 19 and the idle I/O class for the calling thread only: transcoding never competes with fills
/// and hits for the CPU or the disk.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread's id; failures only leave the priority as it was.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) != 0 {
            tracing::warn!("cannot lower the transcoding thread's CPU priority");
        }
        // IOPRIO_WHO_PROCESS (1) of this thread (0), class IDLE (3) in the top bits.
        libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13);
    }
}

/// CPU seconds the calling thread has used.
fn thread_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_THREAD, &mut usage) != 0 {
            return 0.0;
        }
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(usage.ru_utime) + t(usage.ru_stime)
    }
}

/// Transcodes the stored original `file_hash` (or makes its missing twin again). Returns (bytes before,
/// bytes after, rows switched), or `None` when there was nothing to do.
fn transcode_stored(
    app: &App,
    file_hash: &Sha256Hash,
) -> Result<Option<(u64, u64, usize)>, TranscodeError> {
    let Some(level) = app.config.transcode_level else {
        return Ok(None);
    };
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
    let twin = NarName {
        file_hash: encoded.file_hash,
        compression: Compression::Zstd,
    };
    // The twin is fetched from nowhere: its record keeps the original's source (for metrics) and URL,
    // which a plain fill would refuse (xz bytes never pass zstd verification); it is made again instead.
    let twin_record = NarRecord {
        compression: Compression::Zstd,
        file_size: Some(encoded.size),
        ..record.clone()
    };
    app.store.commit(encoded.guard, &encoded.file, &twin)?;
    let now = unix_now();
    let committed = app.index.commit_transcoded(&Transcoded {
        original: *file_hash,
        original_record: &record,
        twin: twin.file_hash,
        twin_record: &twin_record,
        level: level as u8,
        size: encoded.size,
        now,
        keep_original_until: now + app.config.transcode_keep_original.as_secs(),
    });
    match committed {
        Ok(Some(rows)) => Ok(Some((record.file_size.unwrap_or(0), encoded.size, rows))),
        Ok(None) => {
            app.store.remove(&twin)?;
            Err(TranscodeError::Changed)
        }
        Err(e) => {
            let _ = app.store.remove(&twin);
            Err(e.into())
        }
    }
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
    match app.index.restore_twin(&expected, encoded.size, unix_now()) {
        Ok(Some(_)) => Ok(encoded.size),
        Ok(None) => {
            app.store.remove(&twin)?;
            Err(TranscodeError::Changed)
        }
        Err(e) => {
            let _ = app.store.remove(&twin);
            Err(e.into())
        }
    }
}

/// A verified zstd file in the temp folder.
struct Encoded {
    guard: TempGuard,
    file: File,
    file_hash: Sha256Hash,
    size: u64,
}

/// Counts and hashes what is written through it.
struct HashingWriter {
    file: File,
    sha: Sha256,
    size: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Decodes the stored original, checks the NAR inside against the record, encodes zstd at `level`
/// into a temp file, and verifies that file as a fill would. Blocking; stops at shutdown.
fn encode(
    app: &App,
    original: &NarName,
    record: &NarRecord,
    level: i32,
) -> Result<Encoded, TranscodeError> {
    let stopped = &app.stopped;
    let _reservation = app
        .budget
        .reserve(app, compressed_bound(Compression::Zstd, record.nar_size))
        .map_err(|e| match e {
            NoSpace::LargerThanCap => TranscodeError::NoRoom("larger than the store's cap".into()),
            NoSpace::Full(why) => TranscodeError::NoRoom(why),
        })?;
    let source = BufReader::with_capacity(CHUNK, File::open(app.store.path(original))?);
    let mut decoder: Box<dyn Read> = match original.compression {
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(source)),
        Compression::Bzip2 => Box::new(bzip2::read::BzDecoder::new(source)),
        _ => return Err(TranscodeError::Original),
    };
    let temp_name = NarName {
        file_hash: original.file_hash,
        compression: Compression::Zstd,
    };
    let (guard, file) = app.store.temp_file(&temp_name)?;
    let sink = HashingWriter {
        file: file.try_clone()?,
        sha: Sha256::new(),
        size: 0,
    };
    let mut encoder = zstd::stream::write::Encoder::new(sink, level)?;
    encoder.include_checksum(true)?;
    encoder.set_pledged_src_size(Some(record.nar_size))?;
    let mut nar_sha = Sha256::new();
    let mut nar_size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        if stopped.is_cancelled() {
            return Err(TranscodeError::ShuttingDown);
        }
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(TranscodeError::Original),
        };
        nar_size += n as u64;
        if nar_size > record.nar_size {
            return Err(TranscodeError::Original);
        }
        nar_sha.update(&buf[..n]);
        encoder.write_all(&buf[..n])?;
    }
    if nar_size != record.nar_size || Sha256Hash(nar_sha.finalize().into()) != record.nar_hash {
        return Err(TranscodeError::Original);
    }
    let sink = encoder.finish()?;
    let file_hash = Sha256Hash(sink.sha.finalize().into());
    let size = sink.size;
    verify_written(
        &file,
        Expected {
            compression: Compression::Zstd,
            file_hash,
            file_size: Some(size),
            nar_hash: record.nar_hash,
            nar_size: record.nar_size,
        },
        stopped,
    )?;
    Ok(Encoded {
        guard,
        file,
        file_hash,
        size,
    })
}

/// Reads the written file back through the verifier every fill uses.
fn verify_written(
    file: &File,
    expected: Expected,
    stopped: &CancellationToken,
) -> Result<(), TranscodeError> {
    use std::os::unix::fs::FileExt;
    let mut verifier = NarVerifier::new(expected)?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    loop {
        if stopped.is_cancelled() {
            return Err(TranscodeError::ShuttingDown);
        }
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n])?;
        at += n as u64;
    }
    verifier.finish()?;
    Ok(())
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

/// Why a twin could not be made again for a client.
#[derive(Debug, thiserror::Error)]
pub enum RegenerateError {
    /// Fetching the original failed.
    #[error("fetching the original: {0:?}")]
    Fill(Failure),
    /// Starting the original's fill failed.
    #[error("fetching the original: {0}")]
    Start(#[from] crate::fill::FillError),
    /// The original's record is gone.
    #[error("the original is unknown")]
    Gone,
    /// Transcoding failed.
    #[error(transparent)]
    Transcode(#[from] TranscodeError),
    /// The blocking task failed.
    #[error("task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<IndexError> for RegenerateError {
    fn from(e: IndexError) -> Self {
        RegenerateError::Transcode(e.into())
    }
}

impl From<RegenerateError> for ApiError {
    fn from(e: RegenerateError) -> Self {
        match e {
            RegenerateError::Fill(f) => f.into(),
            RegenerateError::Start(f) => f.into(),
            RegenerateError::Gone => ApiError::NotFound("unknown NAR"),
            RegenerateError::Transcode(TranscodeError::Index(i)) => i.into(),
            RegenerateError::Transcode(TranscodeError::NoRoom(_)) => {
                ApiError::Unavailable("no room in the cache's store; try again later")
            }
            RegenerateError::Transcode(TranscodeError::ShuttingDown) => {
                ApiError::Unavailable("shutting down")
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Makes the file of twin `name` again when it is not on disk: the original is fetched if needed (a
/// fill that is never abandoned), then transcoded at the twin's recorded level. `Ok(false)` when `name`
/// is not a twin (an ordinary NAR: fill it as usual).
pub async fn regenerate(app: &Arc<App>, name: &NarName) -> Result<bool, RegenerateError> {
    if name.compression != Compression::Zstd {
        return Ok(false);
    }
    let Some(original) = app.index.original_of(&name.file_hash)? else {
        return Ok(false);
    };
    let turn = {
        let mut turns = app
            .transcoder
            .regenerating
            .lock()
            .map_err(|_| TranscodeError::Io(io::Error::other("lock poisoned")))?;
        turns.entry(name.file_hash).or_default().clone()
    };
    let _held = turn.lock().await;
    let result = regenerate_locked(app, name, original).await;
    if let Ok(mut turns) = app.transcoder.regenerating.lock()
        && Arc::strong_count(&turn) == 2
    {
        turns.remove(&name.file_hash);
    }
    result.map(|()| true)
}

async fn regenerate_locked(
    app: &Arc<App>,
    name: &NarName,
    original: Sha256Hash,
) -> Result<(), RegenerateError> {
    if app.index.nar(&name.file_hash)?.is_some_and(|(_, s)| s) {
        return Ok(());
    }
    let Some((record, stored)) = app.index.nar(&original)? else {
        return Err(RegenerateError::Gone);
    };
    let Some(twin) = app.index.twin_of(&original)? else {
        return Err(RegenerateError::Gone);
    };
    let original_name = NarName {
        file_hash: original,
        compression: record.compression,
    };
    if !stored {
        match Fills::join_or_start(app, original_name, record.clone(), Want::Keep)? {
            Joined::Fill(sub) => {
                sub.fill().finished().await.map_err(RegenerateError::Fill)?;
            }
            Joined::Stored => {}
            Joined::PassThrough => {
                return Err(TranscodeError::NoRoom("larger than the store's cap".into()).into());
            }
        }
        wait_stored(app, &original).await?;
    }
    let a = app.clone();
    let expected = name.file_hash;
    let made = tokio::task::spawn_blocking(move || {
        let started = thread_cpu();
        let made = make_again(&a, &original_name, &record, expected, twin.level);
        a.metrics.transcode_cpu(thread_cpu() - started);
        made
    })
    .await??;
    tracing::info!(nar = %name, size = made, "transcoded NAR made again from its original");
    Ok(())
}

/// Waits until a verified fill of `file_hash` is committed (a fill releases its clients before it
/// made the file durable): at most 30 s.
pub async fn wait_stored(app: &App, file_hash: &Sha256Hash) -> Result<(), IndexError> {
    for _ in 0..1500 {
        if app.index.nar(file_hash)?.is_some_and(|(_, stored)| stored) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(IndexError::Unavailable)
}
