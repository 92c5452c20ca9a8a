//! Background upkeep: batched access times, expired negative entries, eviction under the size cap, and
//! a sweep of orphan NAR files after start.

use std::sync::Arc;
use std::time::Duration;

use crate::app::{App, unix_now};
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::Compression;

/// How often access times are written and negative entries purged.
const FLUSH_EVERY: Duration = Duration::from_secs(30);
/// Eviction frees down to this fraction of the cap, so it does not run after every fill.
const EVICT_TO_PERCENT: u64 = 90;

/// Runs until shutdown, then writes the last access times.
pub async fn run(app: Arc<App>) {
    let sweep = tokio::spawn(sweep_orphans(app.clone()));
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = app.stopped.cancelled() => break,
        }
        let a = app.clone();
        let result = tokio::task::spawn_blocking(move || {
            a.index.flush_access()?;
            a.index.purge_negative(unix_now())
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::error!(error = %e, "index upkeep failed");
        }
    }
    let a = app.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || a.index.flush_access()).await {
        tracing::error!(error = %e, "writing access times at shutdown failed");
    }
    sweep.abort();
}

/// Removes NAR files the index does not know as stored: what a crash left between a file's rename and
/// its index row, or between an eviction's commit and the file's removal. They are never served (the
/// index decides), only wasted space. Runs once, in the background, after start; only files older than
/// this process are touched, so a fill committing meanwhile is never raced.
pub async fn sweep_orphans(app: Arc<App>) {
    let started = std::time::SystemTime::now();
    let a = app.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(usize, u64), String> {
        let mut removed = (0, 0);
        for (name, modified) in a.store.files().map_err(|e| e.to_string())? {
            if modified >= started {
                continue;
            }
            let stored = a.index.nar(&name.file_hash).map_err(|e| e.to_string())?;
            if stored.is_some_and(|(_, stored)| stored) {
                continue;
            }
            let size = std::fs::metadata(a.store.path(&name))
                .map(|m| m.len())
                .unwrap_or(0);
            a.store.remove(&name).map_err(|e| e.to_string())?;
            removed = (removed.0 + 1, removed.1 + size);
        }
        Ok(removed)
    })
    .await;
    match result {
        Ok(Ok((0, _))) => {}
        Ok(Ok((files, bytes))) => tracing::info!(files, bytes, "removed orphan NAR files"),
        Ok(Err(e)) => tracing::error!(error = %e, "orphan sweep failed"),
        Err(e) => tracing::error!(error = %e, "orphan sweep task failed"),
    }
}

/// Evicts least-recently-used NARs when the store is over its cap.
pub async fn evict_if_needed(app: &Arc<App>) {
    let a = app.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        if a.index.store_bytes().map_err(|e| e.to_string())? <= a.config.max_size {
            return Ok(());
        }
        let target = a.config.max_size / 100 * EVICT_TO_PERCENT;
        let evicted = a.index.evict_to(target).map_err(|e| e.to_string())?;
        let mut bytes = 0;
        for (file_hash, record) in &evicted {
            bytes += record.file_size.unwrap_or(0);
            let Ok(compression) = Compression::parse(&record.compression) else {
                continue;
            };
            let name = NarName {
                file_hash: *file_hash,
                compression,
            };
            if let Err(e) = a.store.remove(&name) {
                tracing::error!(error = %e, "removing an evicted NAR failed");
            }
        }
        tracing::info!(
            nars = evicted.len(),
            bytes,
            "evicted least recently used NARs"
        );
        a.metrics.evicted(evicted.len(), bytes);
        Ok(())
    })
    .await;
    match result {
        Ok(Err(e)) => tracing::error!(error = %e, "eviction failed"),
        Err(e) => tracing::error!(error = %e, "eviction task failed"),
        Ok(Ok(())) => {}
    }
}
