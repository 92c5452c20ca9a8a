//! One download per NAR, however many clients ask: streamed to each of them as bytes arrive, verified
//! before it is kept, and bounded in every way a client or a source could abuse.
//!
//! A fill writes into a temp file and publishes how far it got on a `watch` channel; each client reads
//! the temp file at its own pace through its own offset, so a slow or vanished client never holds up
//! the download or the others. Clients are never given the last byte before the hash decided: a failed
//! fill ends their streams with an error, which aborts their connections, so a short or corrupt body
//! never looks complete. Once verified, the last byte goes out at once; making the file durable (fsync,
//! rename, folder fsync, index row) follows off the clients' path.
//!
//! Bounds: at most `max_fills` downloads run and at most `fill_queue` wait (more get 503); a fill
//! reserves its room in the disk budget before the download starts and opens its temp file only then;
//! a fill no client waits for any more stops after `fill_abandon_grace` (unless a warm or pin asked for
//! it); a source slower than `fill_min_rate` over `fill_rate_window`, or silent for `stall_timeout`,
//! is dropped. A NAR larger than the store's cap is passed through without being stored
//! ([`pass_through`]).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{Semaphore, watch};

use crate::app::App;
use crate::budget::{NoSpace, Reservation};
use crate::clock::unix_now;
use crate::index::{IndexError, NarRecord};
use crate::metrics::{FillOutcome, NarResult};
use crate::nix::nar_name::NarName;
use crate::sources::SourceError;
use crate::store::{StoreError, TempGuard};
use crate::transcode::alongside::{Alongside, TwinCheck, TwinProgress};
use crate::verify::{Expected, NarVerifier, VerifyError};

/// Bytes gathered from the network before one write (and one hand-off to the blocking pool).
const WRITE_BATCH: usize = 1 << 20;
/// Batches written but not yet verified, at most (so at most this many MiB in memory per fill).
const VERIFY_QUEUE: usize = 4;
/// Bytes read from the temp file per chunk sent to a client: small, so thousands of slow readers
/// hold little memory.
const READ_CHUNK: u64 = 256 * 1024;
/// Pieces of a fill's temp file up to this size are read on the async worker (see [`reader`]).
const INLINE_READ: usize = 64 * 1024;
/// How often a running fill checks its clients, its rate and its stall timer.
const TICK: Duration = Duration::from_millis(250);

/// Why a fill failed. Logged; clients see a 502/503/504, or an aborted transfer once bytes went out.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// The source failed.
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// No byte arrived for the stall time-out.
    #[error("download stalled")]
    Stalled,
    /// The source sent less than the minimum rate over the rate window.
    #[error("download slower than the minimum rate")]
    TooSlow,
    /// Every client left, and nothing asked to keep it.
    #[error("abandoned: no client waits for it")]
    Abandoned,
    /// The source announced another size than FileSize (or more than the file may have).
    #[error("size mismatch: expected at most {expected} bytes, source announced {got}")]
    Size {
        /// FileSize, or the bound.
        expected: u64,
        /// What the source announced.
        got: u64,
    },
    /// The file or the NAR inside does not match the narinfo.
    #[error("verification failed: {0}")]
    Verify(#[from] VerifyError),
    /// Writing or committing the file failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Recording it failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Local I/O on the temp file failed (a full disk, among others).
    #[error("temp file: {0}")]
    Io(#[from] io::Error),
    /// The disk budget has no room for it.
    #[error("no room in the store: {0}")]
    NoSpace(String),
    /// Too many fills are running or waiting.
    #[error("too many downloads waiting")]
    Busy,
    /// The NAR record changed or went while the fill ran; the file was not kept.
    #[error("the NAR record changed during the download")]
    RecordChanged,
    /// The appliance is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl FillError {
    /// What a client waiting for the first byte is told.
    pub fn failure(&self) -> Failure {
        match self {
            FillError::Source(e) if e.is_timeout() => Failure::Timeout,
            FillError::Source(_) | FillError::Stalled | FillError::TooSlow => Failure::Upstream,
            FillError::Size { .. } | FillError::Verify(_) => Failure::Upstream,
            FillError::NoSpace(_) => Failure::NoSpace,
            FillError::Busy | FillError::ShuttingDown | FillError::Abandoned => Failure::Busy,
            FillError::Store(_) | FillError::Io(_) => Failure::NoSpace,
            FillError::Index(_) | FillError::RecordChanged => Failure::Internal,
        }
    }

    /// The outcome metrics and activity record.
    pub fn outcome(&self) -> FillOutcome {
        match self {
            FillError::Verify(VerifyError::FileHash { .. }) => FillOutcome::Rejected("file_hash"),
            FillError::Verify(VerifyError::FileSize { .. } | VerifyError::FileTooLarge { .. })
            | FillError::Size { .. } => FillOutcome::Rejected("file_size"),
            FillError::Verify(VerifyError::NarHash { .. }) => FillOutcome::Rejected("nar_hash"),
            FillError::Verify(VerifyError::NarSize { .. } | VerifyError::TooLarge { .. }) => {
                FillOutcome::Rejected("nar_size")
            }
            FillError::Verify(
                VerifyError::Decode(_) | VerifyError::Trailing | VerifyError::Unsupported(_),
            ) => FillOutcome::Rejected("decode"),
            FillError::Source(_) | FillError::Stalled => FillOutcome::Failed("source"),
            FillError::TooSlow => FillOutcome::Failed("too_slow"),
            FillError::Abandoned => FillOutcome::Failed("abandoned"),
            FillError::NoSpace(_) | FillError::Busy => FillOutcome::Failed("no_room"),
            FillError::ShuttingDown => FillOutcome::Failed("shutdown"),
            FillError::Store(_)
            | FillError::Index(_)
            | FillError::Io(_)
            | FillError::RecordChanged => FillOutcome::Failed("local"),
        }
    }
}

/// What a client that got no byte yet is answered when the fill failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The source failed or sent a bad file: 502.
    Upstream,
    /// The source timed out: 504.
    Timeout,
    /// No room on the disk (budget or a full filesystem): 503.
    NoSpace,
    /// Too busy, or shutting down: 503.
    Busy,
    /// The index failed: 500.
    Internal,
}

/// How far a fill got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for a download slot and room in the budget.
    Queued,
    /// Waiting for the source's response headers.
    Connecting,
    /// Downloading; this many bytes are in the temp file.
    Running {
        /// Bytes written so far.
        written: u64,
    },
    /// Verified: the whole file may be sent (it is being made durable).
    Verified {
        /// Final size.
        size: u64,
    },
    /// Failed; nothing was stored.
    Failed(Failure),
}

/// The limits fills run under (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct FillLimits {
    /// Downloads at once.
    pub max_running: usize,
    /// Fills waiting for a slot, beyond the running ones.
    pub max_queued: usize,
    /// How long a fill goes on with no client.
    pub abandon_grace: Duration,
    /// Bytes per second a source must at least deliver, over `rate_window`.
    pub min_rate: u64,
    /// The window the rate is measured over.
    pub rate_window: Duration,
    /// How long a download may go without a byte.
    pub stall_timeout: Duration,
}

/// A download in progress, joined by every client that wants the NAR meanwhile.
pub struct Fill {
    file: OnceLock<Arc<File>>,
    progress: watch::Receiver<Progress>,
    /// The zstd twin made beside an xz or bzip2 NAR (`transcode/alongside.rs`), when there is one.
    twin: Option<TwinOutput>,
    /// FileSize, when the narinfo gave it.
    pub size: Option<u64>,
    /// Subscriptions of any kind (clients reading it, warm jobs, fetching ahead).
    clients: AtomicUsize,
    /// Of which clients reading it now (`Want::Client`): the check runs at normal priority for them.
    readers: AtomicUsize,
    /// A warm or pin wants it stored: never abandoned.
    keep: AtomicBool,
    created: Instant,
    /// Milliseconds after `created` when the last client left (`u64::MAX`: never, or clients again).
    idle_since: AtomicU64,
}

/// The twin's temp file and how far it got, read like the NAR's.
struct TwinOutput {
    file: OnceLock<Arc<File>>,
    progress: watch::Receiver<Progress>,
}

/// Which of a fill's files a client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The NAR file as the source has it.
    Nar,
    /// The zstd twin made beside it.
    Twin,
}

impl Fill {
    /// Whether this fill makes a zstd twin beside the NAR.
    pub fn makes_twin(&self) -> bool {
        self.twin.is_some()
    }

    /// The file and progress of `part` (the twin's may not exist: see [`Fill::makes_twin`]).
    fn part(&self, part: Part) -> Option<(&OnceLock<Arc<File>>, &watch::Receiver<Progress>)> {
        match part {
            Part::Nar => Some((&self.file, &self.progress)),
            Part::Twin => self.twin.as_ref().map(|t| (&t.file, &t.progress)),
        }
    }

    /// Waits until the download started: `Err` when the fill failed before sending anything, so the
    /// client can get a proper 502/503/504 instead of a 200 that breaks off.
    pub async fn started(&self) -> Result<(), Failure> {
        self.part_started(Part::Nar).await
    }

    /// As [`Fill::started`], for `part`.
    pub async fn part_started(&self, part: Part) -> Result<(), Failure> {
        let Some((_, progress)) = self.part(part) else {
            return Err(Failure::Internal);
        };
        let mut progress = progress.clone();
        let result = progress
            .wait_for(|p| !matches!(p, Progress::Queued | Progress::Connecting))
            .await
            .map(|p| *p);
        match result {
            Ok(Progress::Failed(f)) => Err(f),
            Ok(_) => Ok(()),
            Err(_) => Err(Failure::Busy),
        }
    }

    /// Waits until the fill ended: `Ok(size)` once verified.
    pub async fn finished(&self) -> Result<u64, Failure> {
        let mut progress = self.progress.clone();
        let result = progress
            .wait_for(|p| matches!(p, Progress::Verified { .. } | Progress::Failed(_)))
            .await
            .map(|p| *p);
        match result {
            Ok(Progress::Verified { size }) => Ok(size),
            Ok(Progress::Failed(f)) => Err(f),
            _ => Err(Failure::Busy),
        }
    }

    /// Whether every client left more than `grace` ago and nothing asked to keep it.
    fn abandoned(&self, grace: Duration) -> bool {
        if self.keep.load(Ordering::Relaxed) || self.clients.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let since = self.idle_since.load(Ordering::Relaxed);
        since != u64::MAX
            && self.created.elapsed().as_millis() as u64
                >= since.saturating_add(grace.as_millis() as u64)
    }
}

/// A client's hold on a fill: while any exists, the fill is wanted.
pub struct Subscription {
    fill: Arc<Fill>,
    want: Want,
}

impl Subscription {
    fn new(fill: Arc<Fill>, want: Want) -> Subscription {
        fill.clients.fetch_add(1, Ordering::Relaxed);
        if want == Want::Client {
            fill.readers.fetch_add(1, Ordering::Relaxed);
        }
        fill.idle_since.store(u64::MAX, Ordering::Relaxed);
        Subscription { fill, want }
    }

    /// The fill.
    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.want == Want::Client {
            self.fill.readers.fetch_sub(1, Ordering::Relaxed);
        }
        if self.fill.clients.fetch_sub(1, Ordering::Relaxed) == 1 {
            let now = self.fill.created.elapsed().as_millis() as u64;
            self.fill.idle_since.store(now, Ordering::Relaxed);
        }
    }
}

/// Who wants a NAR fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A client reading it now: the fill stops if every such client leaves.
    Client,
    /// A warm or pin: the fill runs to the end whoever reads it.
    Keep,
}

/// What a caller gets when it asks for a NAR that is not on disk.
pub enum Joined {
    /// A fill (new or already running) to stream from or wait for.
    Fill(Subscription),
    /// It was stored meanwhile: serve the file.
    Stored,
    /// Larger than the store's cap: stream it from the source without storing it.
    PassThrough,
}

/// The fills in progress, by FileHash.
pub struct Fills {
    running: Mutex<HashMap<crate::nix::hash::Sha256Hash, Arc<Fill>>>,
    permits: Arc<Semaphore>,
    limits: FillLimits,
}

impl Fills {
    /// No fill running yet.
    pub fn new(limits: FillLimits) -> Fills {
        Fills {
            running: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(limits.max_running)),
            limits,
        }
    }

    /// Number of fills running or waiting.
    pub fn in_flight(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Whether a download could start now without waiting for a slot.
    pub fn has_free_slot(&self) -> bool {
        self.in_flight() < self.limits.max_running
    }

    /// Whether a fill of `file_hash` is running (the orphan sweep leaves its file alone), checked
    /// under the same lock a fill holds until its file is committed; `f` runs under it.
    pub fn unless_running<T>(
        &self,
        file_hash: &crate::nix::hash::Sha256Hash,
        f: impl FnOnce() -> T,
    ) -> Option<T> {
        let running = self.running.lock().ok()?;
        if running.contains_key(file_hash) {
            return None;
        }
        Some(f())
    }

    /// Joins the fill of `name`, or starts it from `record`'s source.
    pub fn join_or_start(
        app: &Arc<App>,
        name: NarName,
        record: NarRecord,
        want: Want,
    ) -> Result<Joined, FillError> {
        let fills = &app.fills;
        let mut running = fills
            .running
            .lock()
            .map_err(|_| io::Error::other("fill table poisoned"))?;
        // Only clients' requests are counted (a warm job's or a fetch ahead's fill is not a request).
        let counted = want == Want::Client;
        if let Some(fill) = running.get(&name.file_hash) {
            if counted {
                app.metrics.nar(NarResult::Coalesced, &record.source);
            }
            return Ok(Joined::Fill(subscribe(fill.clone(), want)));
        }
        // A fill that just finished has left the table after committing: check before starting another.
        if let Some((_, true)) = app.index.nar(&name.file_hash)? {
            return Ok(Joined::Stored);
        }
        let bound = Expected::from_record(&name, &record).max_file_size();
        // Issue 13: without a local disk cache, a NAR in the bucket streams from there unstored.
        let unstored = app
            .bucket
            .as_ref()
            .is_some_and(|b| !b.local_cache() && b.id() == record.source);
        // One stat of the index file, for both cap checks (this one and the twin's below).
        let index_bytes = app.index.file_bytes();
        if unstored || app.budget.larger_than_cap(bound, index_bytes) {
            return match want {
                Want::Client => Ok(Joined::PassThrough),
                Want::Keep => Err(FillError::NoSpace("larger than the store's cap".into())),
            };
        }
        if running.len() >= fills.limits.max_running + fills.limits.max_queued {
            app.metrics.fill_finished(
                &record.source,
                &name.to_string(),
                &FillOutcome::Failed("busy"),
            );
            return Err(FillError::Busy);
        }
        let (tx, rx) = watch::channel(Progress::Queued);
        // Issue 14: an xz or bzip2 NAR's check also makes its zstd twin.
        let (twin_tx, twin) =
            if crate::transcode::alongside::wanted(app, &name, &record, index_bytes) {
                let (tx, rx) = watch::channel(Progress::Queued);
                let output = TwinOutput {
                    file: OnceLock::new(),
                    progress: rx,
                };
                (Some(Arc::new(tx)), Some(output))
            } else {
                (None, None)
            };
        let fill = Arc::new(Fill {
            file: OnceLock::new(),
            progress: rx,
            twin,
            size: record.file_size,
            clients: AtomicUsize::new(0),
            readers: AtomicUsize::new(0),
            keep: AtomicBool::new(false),
            created: Instant::now(),
            idle_since: AtomicU64::new(0),
        });
        running.insert(name.file_hash, fill.clone());
        let subscription = subscribe(fill.clone(), want);
        drop(running);
        if counted {
            app.metrics.nar(NarResult::Miss, &record.source);
        }
        let app = app.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                r = run_fill(&app, &fill, &name, &record, bound, &tx, twin_tx.clone()) => r,
                () = app.stopped.cancelled() => Err(FillError::ShuttingDown),
            };
            let nar = name.to_string();
            match &outcome {
                Ok(size) => {
                    tracing::info!(nar = %nar, source = %record.source, size, "NAR stored");
                    app.metrics
                        .fill_finished(&record.source, &nar, &FillOutcome::Stored(*size));
                }
                Err(e) => {
                    tracing::warn!(nar = %nar, source = %record.source, error = %e, "NAR fill failed, nothing stored");
                    app.metrics
                        .fill_finished(&record.source, &nar, &e.outcome());
                    // After `Verified` the clients have what they need; a later failure (committing)
                    // only means the file was not kept.
                    let failed = |p: &mut Progress| {
                        if matches!(p, Progress::Verified { .. } | Progress::Failed(_)) {
                            return false;
                        }
                        *p = Progress::Failed(e.failure());
                        true
                    };
                    tx.send_if_modified(failed);
                    if let Some(t) = &twin_tx {
                        t.send_if_modified(failed);
                    }
                }
            }
            if let Ok(mut running) = app.fills.running.lock() {
                running.remove(&name.file_hash);
            }
        });
        Ok(Joined::Fill(subscription))
    }
}

fn subscribe(fill: Arc<Fill>, want: Want) -> Subscription {
    if want == Want::Keep {
        fill.keep.store(true, Ordering::Relaxed);
    }
    Subscription::new(fill, want)
}

impl Expected {
    /// What the file of `record` must be, from the signed narinfo fields recorded with it.
    pub fn from_record(name: &NarName, record: &NarRecord) -> Expected {
        Expected {
            compression: name.compression,
            file_hash: name.file_hash,
            file_size: record.file_size,
            nar_hash: record.nar_hash,
            nar_size: record.nar_size,
        }
    }
}

/// Waits for a slot, reserves room, downloads, verifies, then commits. Returns the file's size.
async fn run_fill(
    app: &Arc<App>,
    fill: &Arc<Fill>,
    name: &NarName,
    record: &NarRecord,
    bound: u64,
    tx: &watch::Sender<Progress>,
    twin_tx: Option<TwinProgress>,
) -> Result<u64, FillError> {
    let limits = app.fills.limits;
    let started = Instant::now();
    let _permit = loop {
        tokio::select! {
            permit = app.fills.permits.clone().acquire_owned() => {
                break permit.map_err(|_| FillError::ShuttingDown)?;
            }
            () = tokio::time::sleep(TICK) => {}
        }
        if fill.abandoned(limits.abandon_grace) {
            return Err(FillError::Abandoned);
        }
    };
    // Checked again with the slot in hand: a fill whose clients left while it waited starts nothing.
    if fill.abandoned(limits.abandon_grace) {
        return Err(FillError::Abandoned);
    }
    let reservation = match app.budget.reserve_at_once(app, bound) {
        Some(r) => r,
        // Room must be made (eviction writes the index and removes files): off the async threads.
        None => {
            let a = app.clone();
            tokio::task::spawn_blocking(move || a.budget.reserve(&a, bound))
                .await
                .map_err(io::Error::other)?
                .map_err(|e| match e {
                    NoSpace::LargerThanCap => {
                        FillError::NoSpace("larger than the store's cap".into())
                    }
                    NoSpace::Full(why) => FillError::NoSpace(why),
                })?
        }
    };
    let reserved = started.elapsed();
    tx.send_replace(Progress::Connecting);
    // The temp file is made on the blocking pool while the source is asked: creating a file took a
    // few hundred microseconds here while other fills were being made durable (more than asking a LAN
    // upstream), and on an async worker it would hold up every other request meanwhile. So are the
    // twin's room (making room may evict) and temp file.
    let create = {
        let (a, name, record) = (app.clone(), *name, record.clone());
        tokio::task::spawn_blocking(move || {
            let created = a.store.temp_file(&name)?;
            let twin = twin_tx.and_then(|t| Alongside::start(&a, &name, &record, t));
            Ok::<_, StoreError>((created, twin))
        })
    };
    let (created, response) =
        tokio::join!(create, app.sources.get_nar(&record.source, &record.url));
    let ((guard, file), twin) = created.map_err(io::Error::other)??;
    let response = response?;
    let file = Arc::new(file);
    let _ = fill.file.set(file.clone());
    let (alongside, twin_check) = twin.unzip();
    if let (Some(a), Some(output)) = (&alongside, &fill.twin) {
        let _ = output.file.set(a.file().clone());
    }
    let answered = started.elapsed();
    if let Some(got) = response.content_length()
        && (record.file_size.is_some_and(|want| want != got) || got > bound)
    {
        return Err(FillError::Size {
            expected: record.file_size.unwrap_or(bound),
            got,
        });
    }
    tx.send_replace(Progress::Running { written: 0 });
    let written = download(
        app,
        fill,
        name,
        record,
        response,
        &file,
        twin_check,
        &reservation,
        tx,
    )
    .await?;
    // The last byte goes out now; durability follows.
    tx.send_replace(Progress::Verified { size: written });
    tracing::debug!(
        nar = %name,
        reserved_us = reserved.as_micros() as u64,
        answered_us = answered.as_micros() as u64,
        verified_us = started.elapsed().as_micros() as u64,
        size = written,
        "NAR verified"
    );
    // Issue 13: with a shared bucket the verified file goes there first (NAR, then its narinfos);
    // without a local disk cache that is all that is kept.
    if !crate::bucket::publish::after_fill(app, name, record, &file, written).await {
        return Ok(written);
    }
    let a = app.clone();
    let (n, r, queue) = (*name, record.clone(), alongside.is_none());
    tokio::task::spawn_blocking(move || commit(&a, guard, &file, &n, &r, written, queue))
        .await
        .map_err(io::Error::other)??;
    drop(reservation);
    if let Some(alongside) = alongside {
        let nar = name.file_hash.to_nix32();
        match alongside.commit(app, name, record).await {
            Ok((size, rows)) => {
                tracing::debug!(nar = %nar, size, rows, "zstd twin made beside the fill");
                app.metrics.transcoded(&nar, written, size, true);
            }
            Err(e) => {
                // The transcoder tries again from the stored original.
                tracing::info!(nar = %nar, error = %e, "no zstd twin beside the fill; queued for transcoding");
                app.transcoder.enqueue(app, name);
            }
        }
    }
    Ok(written)
}

/// Streams the source's body into the temp file through the verifier, within the rate limits.
#[allow(clippy::too_many_arguments)]
async fn download(
    app: &Arc<App>,
    fill: &Arc<Fill>,
    name: &NarName,
    record: &NarRecord,
    response: reqwest::Response,
    file: &Arc<File>,
    twin: Option<TwinCheck>,
    reservation: &Reservation,
    tx: &watch::Sender<Progress>,
) -> Result<u64, FillError> {
    let limits = app.fills.limits;
    let fetched = app.metrics.fetched_bytes(&record.source);
    let mut body = response.bytes_stream();
    // Verification (decompressing, hashing) runs on its own thread beside the download: a batch is
    // written and offered to the clients at once, and checked meanwhile, so the appliance decompresses
    // while its clients do instead of before them. Only the last byte waits for the verdict. At most
    // VERIFY_QUEUE batches wait for the verifier, so a slow verifier holds up the download, never memory.
    let mut verifier = NarVerifier::new(Expected::from_record(name, record))?;
    if let Some(twin) = &twin {
        verifier = verifier.copying_to(twin.copy());
    }
    let (to_verify, batches) = tokio::sync::mpsc::channel::<Vec<Bytes>>(VERIFY_QUEUE);
    let (verdict_tx, verdict) = tokio::sync::oneshot::channel();
    let check = Check {
        verifier,
        twin,
        batches,
        verdict: verdict_tx,
        fill: fill.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    // A fill no client reads (fetched ahead, warmed) is checked on a thread of its own at the lowest
    // priority, so it never takes the CPU from clients or from the appliance serving them; when a
    // client joins it, the check moves to a pooled thread at normal priority.
    if fill.readers.load(Ordering::Relaxed) == 0 {
        std::thread::Builder::new()
            .name("nixcache-verify".into())
            .spawn(move || {
                crate::priority::lower();
                check.run(true);
            })?;
    } else {
        tokio::task::spawn_blocking(move || check.run(false));
    }
    let mut written = 0u64;
    let mut last_byte = Instant::now();
    let mut window = (Instant::now(), 0u64);
    let mut ticker = tokio::time::interval(TICK);
    loop {
        let first = tokio::select! {
            chunk = body.next() => match chunk {
                None => break,
                Some(chunk) => chunk.map_err(|e| FillError::Source(SourceError::Http(e)))?,
            },
            _ = ticker.tick() => {
                if fill.abandoned(limits.abandon_grace) {
                    return Err(FillError::Abandoned);
                }
                if last_byte.elapsed() >= limits.stall_timeout {
                    return Err(FillError::Stalled);
                }
                if window.0.elapsed() >= limits.rate_window {
                    let need = limits.min_rate.saturating_mul(limits.rate_window.as_secs().max(1));
                    if written - window.1 < need {
                        return Err(FillError::TooSlow);
                    }
                    window = (Instant::now(), written);
                }
                continue;
            }
        };
        last_byte = Instant::now();
        // Take whatever else is already buffered, so a fast download is written in large batches
        // while the first byte of a slow one is not held back.
        let mut len = first.len();
        let mut batch = vec![first];
        let mut ended = false;
        while len < WRITE_BATCH {
            match body.next().now_or_never() {
                Some(Some(chunk)) => {
                    let chunk = chunk.map_err(|e| FillError::Source(SourceError::Http(e)))?;
                    len += chunk.len();
                    batch.push(chunk);
                }
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        // Writing happens off the async threads.
        let (f, offset, chunks) = (file.clone(), written, batch.clone());
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut at = offset;
            for chunk in &chunks {
                f.write_all_at(chunk, at)?;
                at += chunk.len() as u64;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)??;
        written += len as u64;
        reservation.wrote(len as u64);
        fetched.inc_by(len as u64);
        tx.send_replace(Progress::Running { written });
        if to_verify.send(batch).await.is_err() {
            // The verifier stopped: it found the file bad; its verdict says why.
            break;
        }
        if ended {
            break;
        }
    }
    drop(to_verify);
    let size = verdict
        .await
        .map_err(|_| io::Error::other("the verifier ended without a verdict"))??;
    Ok(size)
}

/// A fill's verification, fed batch by batch, on a thread of its own.
struct Check {
    verifier: NarVerifier,
    /// The zstd twin, finished once the verdict passed.
    twin: Option<TwinCheck>,
    batches: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
    verdict: tokio::sync::oneshot::Sender<Result<u64, VerifyError>>,
    fill: Arc<Fill>,
    runtime: tokio::runtime::Handle,
}

impl Check {
    /// Checks every batch, then sends the verdict. `background`: the calling thread runs at the lowest
    /// priority; once a client waits for the fill, the rest moves to a normal-priority pooled thread.
    fn run(mut self, background: bool) {
        while let Some(batch) = self.batches.blocking_recv() {
            for chunk in &batch {
                if let Err(e) = self.verifier.update(chunk) {
                    let _ = self.verdict.send(Err(e));
                    return;
                }
            }
            if background && self.fill.readers.load(Ordering::Relaxed) > 0 {
                let runtime = self.runtime.clone();
                runtime.spawn_blocking(move || self.run(false));
                return;
            }
        }
        let verdict = self.verifier.finish();
        let passed = verdict.is_ok();
        let _ = self.verdict.send(verdict);
        // The NAR's last byte is out; the twin's follows once it is finished and checked.
        if let Some(twin) = self.twin.take().filter(|_| passed) {
            twin.finish();
        }
    }
}

/// Makes the verified file durable and records it. Blocking.
fn commit(
    app: &App,
    guard: TempGuard,
    file: &File,
    name: &NarName,
    record: &NarRecord,
    size: u64,
    queue_transcode: bool,
) -> Result<(), FillError> {
    app.store.commit(guard, file, name)?;
    let recorded = app
        .index
        .commit_nar(&name.file_hash, record, size, unix_now())
        .map_err(FillError::from);
    app.store
        .keep_if_recorded(name, recorded)?
        .ok_or(FillError::RecordChanged)?;
    // Issue 16: queued for transcoding to zstd (cheap; the work happens on its own threads), unless
    // its twin was made beside the fill.
    if queue_transcode {
        app.transcoder.enqueue(app, name);
    }
    Ok(())
}

/// The bytes of `fill` from `start` on, as they become available and safe to send. The subscription
/// keeps the fill wanted until the stream is dropped.
pub fn reader(
    subscription: Subscription,
    part: Part,
    start: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let progress = match subscription.fill.part(part) {
        Some((_, p)) => p.clone(),
        // No twin: a channel whose sender is gone ends the stream with an error at once.
        None => watch::channel(Progress::Failed(Failure::Internal)).1,
    };
    futures_util::stream::unfold(
        Some((subscription, start, progress)),
        move |state| async move {
            let (sub, pos, mut progress) = state?;
            loop {
                let (limit, done) = match *progress.borrow_and_update() {
                    Progress::Queued | Progress::Connecting => (0, false),
                    // The last byte waits for the verdict: a client must not hold a complete body
                    // before the hash said it is the right one.
                    Progress::Running { written } => (written.saturating_sub(1), false),
                    Progress::Verified { size } => (size, true),
                    Progress::Failed(_) => {
                        return Some((Err(io::Error::other("NAR download failed")), None));
                    }
                };
                if pos < limit {
                    let Some(file) = sub.fill.part(part).and_then(|(f, _)| f.get().cloned()) else {
                        return Some((Err(io::Error::other("NAR temp file missing")), None));
                    };
                    let len = (limit - pos).min(READ_CHUNK) as usize;
                    let read_at = move || {
                        let mut buf = vec![0u8; len];
                        file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
                    };
                    // What was just written is in the page cache: a small piece is copied here, faster
                    // than a hop to the blocking pool; a large one there.
                    let read = if len <= INLINE_READ {
                        read_at()
                    } else {
                        tokio::task::spawn_blocking(read_at)
                            .await
                            .map_err(io::Error::other)
                            .and_then(|r| r)
                    };
                    return match read {
                        Ok(bytes) => Some((Ok(bytes), Some((sub, pos + len as u64, progress)))),
                        Err(e) => Some((Err(e), None)),
                    };
                }
                if done {
                    return None;
                }
                if progress.changed().await.is_err() {
                    return Some((Err(io::Error::other("NAR download ended")), None));
                }
            }
        },
    )
}

/// Streams a NAR that is never stored (larger than the cap) straight from its source to one client,
/// verified on the way: the last chunk is held back until the whole file checked out, so a bad file
/// ends in an aborted transfer, never a complete one.
pub async fn pass_through(
    app: &Arc<App>,
    name: &NarName,
    record: &NarRecord,
) -> Result<impl Stream<Item = io::Result<Bytes>> + Send + use<>, FillError> {
    let response = app.sources.get_nar(&record.source, &record.url).await?;
    app.metrics.nar(NarResult::PassThrough, &record.source);
    let verifier = NarVerifier::new(Expected::from_record(name, record))?;
    let fetched = app.metrics.fetched_bytes(&record.source);
    let stall = app.fills.limits.stall_timeout;
    let body = response.bytes_stream().boxed();
    struct State<B> {
        body: B,
        verifier: Option<NarVerifier>,
        held: Option<Bytes>,
    }
    let state = State {
        body,
        verifier: Some(verifier),
        held: None,
    };
    Ok(futures_util::stream::unfold(Some(state), move |state| {
        let fetched = fetched.clone();
        async move {
            let mut s = state?;
            let next = match tokio::time::timeout(stall, s.body.next()).await {
                Err(_) => return Some((Err(io::Error::other("NAR download stalled")), None)),
                Ok(next) => next,
            };
            let mut v = s.verifier.take()?;
            match next {
                Some(Ok(chunk)) => {
                    fetched.inc_by(chunk.len() as u64);
                    let c = chunk.clone();
                    let checked =
                        tokio::task::spawn_blocking(move || v.update(&c).map(|()| v)).await;
                    match checked {
                        Ok(Ok(v)) => s.verifier = Some(v),
                        _ => return Some((Err(io::Error::other("NAR failed verification")), None)),
                    }
                    let out = s.held.replace(chunk).unwrap_or_default();
                    Some((Ok(out), Some(s)))
                }
                Some(Err(e)) => Some((Err(io::Error::other(e)), None)),
                None => {
                    let verdict = tokio::task::spawn_blocking(move || v.finish()).await;
                    match verdict {
                        Ok(Ok(_)) => s.held.take().map(|last| (Ok(last), None)),
                        _ => Some((Err(io::Error::other("NAR failed verification")), None)),
                    }
                }
            }
        }
    }))
}
