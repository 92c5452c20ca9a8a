//! One download per NAR, however many clients ask: streamed to each of them as bytes arrive, verified
//! before it is kept.
//!
//! A fill writes into a temp file and publishes how far it got on a `watch` channel; each client reads
//! the temp file at its own pace through its own offset, so a slow or vanished client never holds up
//! the download or the others. Clients are never given the last byte before the hash decided: a failed
//! fill ends their streams with an error, which aborts their connections, so a short or corrupt body
//! never looks complete.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{Semaphore, watch};

use crate::app::{App, unix_now};
use crate::index::{IndexError, NarRecord};
use crate::metrics::NarResult;
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::sources::SourceError;
use crate::store::StoreError;
use crate::verify::{Expected, NarVerifier, VerifyError};

/// Bytes gathered from the network before one write (and one hand-off to the blocking pool).
const WRITE_BATCH: usize = 1 << 20;
/// Bytes read from the temp file per chunk sent to a client.
const READ_CHUNK: u64 = 1 << 20;

/// Why a fill failed. Logged; clients see an aborted transfer.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// The source failed.
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// No byte arrived for the stall time-out.
    #[error("download stalled")]
    Stalled,
    /// The body was longer or shorter than FileSize.
    #[error("size mismatch: expected {expected} bytes, got {got}")]
    Size {
        /// FileSize.
        expected: u64,
        /// What the source announced.
        got: u64,
    },
    /// The file or the NAR inside does not match the narinfo.
    #[error("verification failed: {0}")]
    Verify(#[from] VerifyError),
    /// The NAR record is not usable (an index written by a broken version).
    #[error("bad NAR record: {0}")]
    Record(String),
    /// Writing or committing the file failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Recording it failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Local I/O on the temp file failed.
    #[error("temp file: {0}")]
    Io(#[from] io::Error),
    /// The appliance is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// How far a fill got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for a download slot or for the source's response headers.
    Connecting,
    /// Downloading; this many bytes are in the temp file.
    Running {
        /// Bytes written so far.
        written: u64,
    },
    /// Verified and stored; the file has this size.
    Done {
        /// Final size.
        size: u64,
    },
    /// Failed; nothing was stored.
    Failed,
}

/// A download in progress, joined by every client that wants the NAR meanwhile.
pub struct Fill {
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
    /// FileSize, when the narinfo gave it.
    pub size: Option<u64>,
}

/// What a client gets when it asks for a NAR that is not on disk.
pub enum Joined {
    /// A fill (new or already running) to stream from.
    Fill(Arc<Fill>),
    /// It was stored meanwhile: serve the file.
    Stored,
}

/// The fills in progress, by FileHash.
pub struct Fills {
    running: Mutex<HashMap<Sha256Hash, Arc<Fill>>>,
    permits: Arc<Semaphore>,
}

impl Fills {
    /// No fill running; at most `max_concurrent` downloads at once.
    pub fn new(max_concurrent: usize) -> Fills {
        Fills {
            running: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max_concurrent)),
        }
    }

    /// Number of fills running.
    pub fn in_flight(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Joins the fill of `name`, or starts it from `record`'s source.
    pub fn join_or_start(
        app: &Arc<App>,
        name: NarName,
        record: NarRecord,
    ) -> Result<Joined, FillError> {
        let mut running = app
            .fills
            .running
            .lock()
            .map_err(|_| io::Error::other("fill table poisoned"))?;
        if let Some(fill) = running.get(&name.file_hash) {
            app.metrics.nar(NarResult::Coalesced, &record.source);
            return Ok(Joined::Fill(fill.clone()));
        }
        // A fill that just finished has left the table after committing: check before starting another.
        if let Some((_, true)) = app.index.nar(&name.file_hash)? {
            return Ok(Joined::Stored);
        }
        let (guard, file) = app.store.temp_file(&name)?;
        let file = Arc::new(file);
        let (tx, rx) = watch::channel(Progress::Connecting);
        let fill = Arc::new(Fill {
            file: file.clone(),
            progress: rx,
            size: record.file_size,
        });
        running.insert(name.file_hash, fill.clone());
        drop(running);
        app.metrics.nar(NarResult::Miss, &record.source);
        let app = app.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                r = run_fill(&app, &name, &record, guard, file, &tx) => r,
                () = app.stopped.cancelled() => Err(FillError::ShuttingDown),
            };
            app.metrics
                .fill_finished(&record.source, &name.to_string(), &outcome);
            let progress = match outcome {
                Ok(size) => {
                    tracing::info!(nar = %name, source = %record.source, size, "NAR stored");
                    Progress::Done { size }
                }
                Err(e) => {
                    tracing::warn!(nar = %name, source = %record.source, error = %e, "NAR fill failed, nothing stored");
                    Progress::Failed
                }
            };
            tx.send_replace(progress);
            if let Ok(mut running) = app.fills.running.lock() {
                running.remove(&name.file_hash);
            }
            if matches!(progress, Progress::Done { .. }) {
                crate::housekeeping::evict_if_needed(&app).await;
            }
        });
        Ok(Joined::Fill(fill))
    }
}

/// Downloads, hashes and writes the NAR, then commits it. Returns its size.
async fn run_fill(
    app: &Arc<App>,
    name: &NarName,
    record: &NarRecord,
    guard: crate::store::TempGuard,
    file: Arc<File>,
    tx: &watch::Sender<Progress>,
) -> Result<u64, FillError> {
    let _permit = app
        .fills
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| FillError::ShuttingDown)?;
    let response = app.sources.get_nar(&record.source, &record.url).await?;
    if let (Some(expected), Some(got)) = (record.file_size, response.content_length())
        && expected != got
    {
        return Err(FillError::Size { expected, got });
    }
    tx.send_replace(Progress::Running { written: 0 });
    let fetched = app.metrics.fetched_bytes(&record.source);
    let mut body = response.bytes_stream();
    let stall = app.config.stall_timeout;
    let mut verifier = NarVerifier::new(expected(name, record)?)?;
    let mut written = 0u64;
    let mut ended = false;
    while !ended {
        let first = match tokio::time::timeout(stall, body.next()).await {
            Err(_) => return Err(FillError::Stalled),
            Ok(None) => break,
            Ok(Some(chunk)) => chunk.map_err(|e| FillError::Source(SourceError::Http(e)))?,
        };
        // Take whatever else is already buffered, so a fast download is written in large batches
        // while the first byte of a slow one is not held back.
        let mut batch = vec![first];
        let mut len = batch[0].len();
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
        // Verifying (hashing, decompressing) and writing happen off the async threads.
        let f = file.clone();
        let offset = written;
        verifier = tokio::task::spawn_blocking(move || -> Result<NarVerifier, FillError> {
            let mut at = offset;
            for chunk in &batch {
                verifier.update(chunk)?;
                f.write_all_at(chunk, at)?;
                at += chunk.len() as u64;
            }
            Ok(verifier)
        })
        .await
        .map_err(io::Error::other)??;
        written += len as u64;
        fetched.inc_by(len as u64);
        tx.send_replace(Progress::Running { written });
    }
    let app2 = app.clone();
    let name2 = *name;
    tokio::task::spawn_blocking(move || -> Result<(), FillError> {
        verifier.finish()?;
        app2.store.commit(guard, &file, &name2)?;
        app2.index
            .commit_nar(&name2.file_hash, written, unix_now())?;
        Ok(())
    })
    .await
    .map_err(io::Error::other)??;
    Ok(written)
}

impl Fill {
    /// Waits until the source answered: `false` when the fill failed before sending anything, so the
    /// client can get a proper 502 instead of a 200 that breaks off.
    pub async fn started(&self) -> bool {
        let mut progress = self.progress.clone();
        match progress
            .wait_for(|p| !matches!(p, Progress::Connecting))
            .await
        {
            Ok(p) => !matches!(*p, Progress::Failed),
            Err(_) => false,
        }
    }
}

/// What the file of `record` must be, from the signed narinfo fields recorded with it.
fn expected(name: &NarName, record: &NarRecord) -> Result<Expected, FillError> {
    let nar_hash = Sha256Hash::parse(&record.nar_hash)
        .map_err(|e| FillError::Record(format!("NarHash {:?}: {e}", record.nar_hash)))?;
    Ok(Expected {
        compression: name.compression,
        file_hash: name.file_hash,
        file_size: record.file_size,
        nar_hash,
        nar_size: record.nar_size,
    })
}

/// The bytes of `fill` from `start` on, as they become available and safe to send.
pub fn reader(fill: Arc<Fill>, start: u64) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let progress = fill.progress.clone();
    futures_util::stream::unfold(Some((fill, start, progress)), |state| async move {
        let (fill, pos, mut progress) = state?;
        loop {
            let (limit, done) = match *progress.borrow_and_update() {
                // The last byte waits for the verdict: a client must not hold a complete body
                // before the hash said it is the right one.
                Progress::Connecting => (0, false),
                Progress::Running { written } => (written.saturating_sub(1), false),
                Progress::Done { size } => (size, true),
                Progress::Failed => {
                    return Some((Err(io::Error::other("NAR download failed")), None));
                }
            };
            if pos < limit {
                let len = (limit - pos).min(READ_CHUNK) as usize;
                let file = fill.file.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
                })
                .await
                .map_err(io::Error::other)
                .and_then(|r| r);
                return match read {
                    Ok(bytes) => Some((Ok(bytes), Some((fill, pos + len as u64, progress)))),
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
    })
}
