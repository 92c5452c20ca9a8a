//! Background upkeep: batched access times, expired negative entries, and eviction under the size cap.

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
}

/// Evicts least-recently-used NARs when the store is over its cap.
pub async fn evict_if_needed(app: &Arc<App>) {
    let a = app.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let stats = a.index.stats().map_err(|e| e.to_string())?;
        if stats.store_bytes <= a.config.max_size {
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
