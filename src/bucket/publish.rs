//! Writing to the shared bucket, in the one order that keeps it a valid binary cache at every moment:
//! a NAR goes up only after its fill verified it (into the local temp file, as without a bucket), and
//! a narinfo only after its NAR is in the bucket.
//!
//! A narinfo recorded from an upstream is noted as waiting for its NAR (`bucket-pending-v1`, in the
//! same index transaction). When a fill from an upstream verified the NAR, [`after_fill`] uploads it,
//! points the NAR record at the bucket and writes the narinfos waiting for it. The publisher task
//! writes `nix-cache-info` once, publishes narinfos whose NAR turned out to be in the bucket already,
//! and every few minutes walks what still waits: uploads NARs an earlier upload failed for (from the
//! local copy), and forgets entries whose narinfo row went.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use super::{Bucket, BucketError, CACHE_INFO, Written};
use crate::app::App;
use crate::index::{IndexError, NarRecord, NewNarinfo, Recorded};
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::nix::store_path::StoreHash;

/// How often the publisher walks every waiting entry.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How often it tries again to write `nix-cache-info` while the bucket is unreachable.
const RETRY_EVERY: Duration = Duration::from_secs(30);
/// Waiting NARs looked at per index read.
const PAGE: usize = 256;

/// Why publishing failed (logged; retried by the publisher).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The bucket failed.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A blocking task failed.
    #[error("task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Records a narinfo that `source` answered. With a bucket and any other source than the bucket, it
/// is also noted as waiting for its NAR; when that NAR is in the bucket already, the publisher is
/// woken to write it now. Blocking.
pub fn record(app: &App, new: &NewNarinfo<'_>, source: &str) -> Result<Recorded, IndexError> {
    let Some(bucket) = app.bucket.as_ref().filter(|b| b.id() != source) else {
        return app.index.record_narinfo(new);
    };
    let (recorded, in_bucket) = app.index.record_narinfo_unpublished(new, bucket.id())?;
    if in_bucket {
        bucket.publish_soon(new.row.file_hash);
    }
    Ok(recorded)
}

impl Bucket {
    /// Asks the publisher to write the narinfos waiting for `file_hash`, which is in the bucket.
    pub fn publish_soon(&self, file_hash: Sha256Hash) {
        if let Ok(mut queue) = self.to_publish.lock() {
            queue.insert(file_hash);
        }
        self.wake.notify_one();
    }
}

/// After a fill verified a NAR into `file`: a NAR that came from elsewhere than the bucket goes up,
/// then the narinfos waiting for it. Returns whether the local copy is kept (the local disk cache is
/// on, or there is no bucket). A failed upload is logged; with a local copy the publisher tries again.
pub async fn after_fill(
    app: &Arc<App>,
    name: &NarName,
    record: &NarRecord,
    file: &Arc<File>,
    size: u64,
) -> bool {
    let Some(bucket) = &app.bucket else {
        return true;
    };
    if record.source != bucket.id()
        && let Err(e) = upload(app, bucket, name, record, file.clone(), size).await
    {
        tracing::warn!(nar = %name, error = %e, "uploading a NAR to the bucket failed; its narinfos wait");
    }
    bucket.local_cache()
}

/// Uploads a verified NAR, points its record at the bucket and publishes what waited for it.
async fn upload(
    app: &Arc<App>,
    bucket: &Bucket,
    name: &NarName,
    record: &NarRecord,
    file: Arc<File>,
    size: u64,
) -> Result<(), PublishError> {
    let key = name.url_path();
    let written = bucket.put_file(&key, file, size).await?;
    tracing::info!(nar = %name, size, already_there = (written == Written::AlreadyThere), "NAR in the bucket");
    let (a, fh, record, id) = (
        app.clone(),
        name.file_hash,
        record.clone(),
        bucket.id().to_string(),
    );
    tokio::task::spawn_blocking(move || a.index.nar_in_bucket(&fh, &record, size, &id, &key))
        .await??;
    publish_waiting(app, bucket, &name.file_hash).await
}

/// Writes the narinfos waiting for `file_hash` (whose NAR is in the bucket) and forgets them.
async fn publish_waiting(
    app: &Arc<App>,
    bucket: &Bucket,
    file_hash: &Sha256Hash,
) -> Result<(), PublishError> {
    let mut done = Vec::new();
    for hash in app.index.bucket_pending(file_hash)? {
        let Ok(store_hash) = hash.parse::<StoreHash>() else {
            done.push(hash);
            continue;
        };
        // Only a row that still points at this NAR is published (it may have changed or gone).
        if let Some(row) = app.index.narinfo(&store_hash)?
            && row.file_hash == *file_hash
        {
            let name = Bucket::narinfo_name(&store_hash);
            bucket.put_small(&name, row.text.into()).await?;
            tracing::debug!(hash = %store_hash, "narinfo published in the bucket");
        }
        done.push(hash);
    }
    if !done.is_empty() {
        let (a, fh) = (app.clone(), *file_hash);
        tokio::task::spawn_blocking(move || a.index.bucket_published(&fh, &done)).await??;
    }
    Ok(())
}

/// The publisher: `nix-cache-info` once, narinfos whose NAR reached the bucket, and a periodic walk
/// over everything that waits. Runs until shutdown.
pub async fn run_publisher(app: Arc<App>) {
    let Some(bucket) = app.bucket.clone() else {
        return;
    };
    let mut described = false;
    let mut next_sweep = tokio::time::Instant::now() + RETRY_EVERY;
    loop {
        if !described {
            described = describe(&app, &bucket).await;
        }
        let queued: Vec<Sha256Hash> = match bucket.to_publish.lock() {
            Ok(mut q) => q.drain().collect(),
            Err(_) => Vec::new(),
        };
        for fh in queued {
            if let Err(e) = publish_waiting(&app, &bucket, &fh).await {
                tracing::warn!(error = %e, "publishing narinfos in the bucket failed; retried later");
            }
        }
        if tokio::time::Instant::now() >= next_sweep {
            if let Err(e) = sweep(&app, &bucket).await {
                tracing::warn!(error = %e, "walking the narinfos waiting for the bucket failed");
            }
            next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
        }
        let wait = if described { SWEEP_EVERY } else { RETRY_EVERY };
        tokio::select! {
            () = bucket.wake.notified() => {}
            () = tokio::time::sleep_until(next_sweep.min(tokio::time::Instant::now() + wait)) => {}
            () = app.stopped.cancelled() => return,
        }
    }
}

/// Writes `nix-cache-info` unless it exists, so the bucket is a binary cache Nix can read directly.
async fn describe(app: &App, bucket: &Bucket) -> bool {
    let text = format!(
        "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
        crate::nix::STORE_DIR,
        app.config.priority
    );
    match bucket.put_small(CACHE_INFO, text.into()).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot write nix-cache-info to the bucket; retrying");
            false
        }
    }
}

/// One walk over the waiting entries: publish what is in the bucket, upload what only the local disk
/// has, forget entries whose narinfo row went.
async fn sweep(app: &Arc<App>, bucket: &Bucket) -> Result<(), PublishError> {
    let mut after = None;
    loop {
        let page = app.index.bucket_pending_page(after.as_ref(), PAGE)?;
        let Some(last) = page.last().copied() else {
            return Ok(());
        };
        for fh in &page {
            match app.index.nar(fh)? {
                Some((record, _)) if record.source == bucket.id() => {
                    publish_waiting(app, bucket, fh).await?;
                }
                Some((record, true)) => {
                    let name = NarName {
                        file_hash: *fh,
                        compression: record.compression,
                    };
                    let path = app.store.path(&name);
                    let Ok(file) = File::open(&path) else {
                        continue;
                    };
                    // Never an upload of a size guessed as 0: the key is content-addressed and
                    // first-writer-wins, so an empty object could never be replaced.
                    let Ok(size) = file.metadata().map(|m| m.len()) else {
                        continue;
                    };
                    upload(app, bucket, &name, &record, Arc::new(file), size).await?;
                }
                // Not fetched yet: the narinfos wait, unless their rows went.
                _ => forget_gone(app, fh).await?,
            }
        }
        if page.len() < PAGE || app.stopped.is_cancelled() {
            return Ok(());
        }
        after = Some(last);
    }
}

/// Forgets the waiting entries of `file_hash` whose narinfo row went or points elsewhere.
async fn forget_gone(app: &Arc<App>, file_hash: &Sha256Hash) -> Result<(), PublishError> {
    let mut gone = Vec::new();
    for hash in app.index.bucket_pending(file_hash)? {
        let still = match hash.parse::<StoreHash>() {
            Ok(h) => app
                .index
                .narinfo(&h)?
                .is_some_and(|row| row.file_hash == *file_hash),
            Err(_) => false,
        };
        if !still {
            gone.push(hash);
        }
    }
    if !gone.is_empty() {
        let (a, fh) = (app.clone(), *file_hash);
        tokio::task::spawn_blocking(move || a.index.bucket_published(&fh, &gone)).await??;
    }
    Ok(())
}
