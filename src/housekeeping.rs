//! The running appliance's background work, started once by [`start`] (whatever front end runs: `serve`
//! or a test) and each task supervised: a task that panics is logged, counted and started again.
//!
//! | task | when | what |
//! |---|---|---|
//! | durability | four times a second | makes the index's commits durable (group commit) |
//! | upkeep | every 30 s | writes batched access times, purges expired negative entries |
//! | budget | at start, then every 30 s | evicts to keep the cap (it may have been lowered) and `min_free` (others may fill the disk) |
//! | heal | every 2 s | reopens the index after a disk error, once there is room |
//! | index GC | an hour after start, then hourly | removes rows that no longer serve anyone |
//! | sweeps | once, after start | orphan NAR files; recorded narinfos against today's trust |
//! | scrub | every `scrub_interval` | re-hashes stored NARs, drops damaged ones |
//! | OCI refresh | every `index_ttl`, or when asked | mirrors the published index |
//! | push upkeep | at start, then every 30 s | drops NAR uploads whose narinfo never came; reconciles pushed paths with the index |
//! | bucket publisher | when woken, every 10 min | `nix-cache-info`, narinfos whose NAR reached the shared bucket, retried uploads |
//! | bucket GC | every 10 min / hourly | this appliance's liveness manifest; pruning, on the one with `gc_max_size` |
//! | transcode | as fills commit; originals every minute | xz/bzip2 → zstd (`transcode/`), drops originals after their grace |
//! | config pins | once, after start | warms and pins the config file's `pins` (`warm.rs`) |
//! | prefetch | as clients ask | fetches ahead the narinfos and NARs a client is about to ask for (`prefetch.rs`) |

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::app::App;
use crate::clock::unix_now;

/// How often non-durable index commits are made durable (what a crash can lose at most).
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often access times are written, negatives purged and the budget enforced.
const UPKEEP_EVERY: Duration = Duration::from_secs(30);
/// How often a broken index is reopened.
const HEAL_EVERY: Duration = Duration::from_secs(2);
/// How often the index GC runs.
const GC_EVERY: Duration = Duration::from_secs(3600);
/// Narinfo rows looked at per GC transaction.
const GC_PAGE: usize = 4096;

/// The background tasks; awaited at shutdown.
pub struct Background {
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// Waits for every task to end (they end when `app.stopped` is cancelled), then makes the
    /// index durable one last time.
    pub async fn join(self, app: &Arc<App>) {
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "background task failed");
            }
        }
        let a = app.clone();
        let flushed = tokio::task::spawn_blocking(move || a.index.flush()).await;
        if let Ok(Err(e)) = flushed {
            tracing::error!(error = %e, "writing the index at shutdown failed");
        }
    }
}

/// Starts every background task of `app`.
pub fn start(app: &Arc<App>) -> Background {
    let mut tasks = vec![
        every(app, "durability", FLUSH_EVERY, |a| {
            blocking(a, |a| a.index.make_durable().map_err(|e| e.to_string()))
        }),
        every(app, "upkeep", UPKEEP_EVERY, |a| {
            blocking(a, |a| {
                a.index.flush_access().map_err(|e| e.to_string())?;
                a.index
                    .purge_negative(unix_now())
                    .map_err(|e| e.to_string())
            })
        }),
        supervise(app, "budget", |a| async move {
            let enforce = |a| blocking(a, |a| a.budget.enforce(&a).map_err(|e| e.to_string()));
            enforce(a.clone()).await;
            every_tick(&a, UPKEEP_EVERY, enforce).await
        }),
        every(app, "heal", HEAL_EVERY, |a| {
            blocking(a, |a| {
                heal(&a);
                Ok(())
            })
        }),
        every(app, "index-gc", GC_EVERY, |a| blocking(a, collect)),
        supervise(app, "orphan-sweep", sweep_orphans),
        supervise(app, "trust-sweep", crate::trust::sweep),
        supervise(app, "oci-refresh", crate::mirror::run_refresh),
        supervise(app, "push-upkeep", crate::push::run_upkeep),
        supervise(
            app,
            "bucket-publisher",
            crate::bucket::publish::run_publisher,
        ),
        supervise(app, "bucket-gc", crate::bucket::gc::run),
        supervise(app, "prefetch", crate::prefetch::run),
    ];
    // Issue 16: transcoding threads, originals' grace, configured pins.
    tasks.push(crate::transcode::start(app));
    tasks.push(crate::warm::start_config_pins(app));
    if let Some(interval) = app.config.scrub_interval {
        tasks.push(every(app, "scrub", interval, crate::integrity::scrub));
    }
    Background { tasks }
}

/// Runs `task` until it returns; restarts it (after a second) when it panics.
fn supervise<F, Fut>(app: &Arc<App>, name: &'static str, task: F) -> JoinHandle<()>
where
    F: Fn(Arc<App>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            match tokio::spawn(task(app.clone())).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    tracing::error!(task = name, "background task panicked; restarting it");
                    app.metrics.task_restarted(name);
                }
                Err(_) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = app.stopped.cancelled() => return,
            }
        }
    })
}

/// Runs `tick` every `period` (the first time one period after start) until shutdown, supervised.
fn every<F, Fut>(app: &Arc<App>, name: &'static str, period: Duration, tick: F) -> JoinHandle<()>
where
    F: Fn(Arc<App>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tick = Arc::new(tick);
    supervise(app, name, move |app| {
        let tick = tick.clone();
        async move { every_tick(&app, period, |a| tick(a)).await }
    })
}

/// Calls `tick` every `period`, the first time one period from now, until shutdown.
async fn every_tick<F, Fut>(app: &Arc<App>, period: Duration, tick: F)
where
    F: Fn(Arc<App>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = app.stopped.cancelled() => return,
        }
        tick(app.clone()).await;
    }
}

/// Runs blocking work off the async threads, logging its failure.
async fn blocking(
    app: Arc<App>,
    work: impl FnOnce(Arc<App>) -> Result<(), String> + Send + 'static,
) {
    match tokio::task::spawn_blocking(move || work(app)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "background upkeep failed"),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => tracing::error!(error = %e, "background upkeep task failed"),
    }
}

/// Reopens a broken index once the disk has room again (after making room if it can).
fn heal(app: &App) {
    if app.index.writable().is_ok() {
        return;
    }
    // Evicting writes to the index too; it may fail until the reopen, and that is fine.
    let _ = app.budget.enforce(app);
    app.index.heal();
}

/// One pass of the index GC: narinfo rows nobody asked for within the retention, then stored NARs
/// no narinfo points at any more.
fn collect(app: Arc<App>) -> Result<(), String> {
    let cutoff = unix_now().saturating_sub(app.config.index_retention.as_secs());
    let mut narinfos = 0;
    let mut after: Option<String> = None;
    loop {
        let (removed, next) = app
            .index
            .collect_narinfos(after.as_deref(), GC_PAGE, cutoff)
            .map_err(|e| e.to_string())?;
        narinfos += removed;
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
        if app.stopped.is_cancelled() {
            return Ok(());
        }
    }
    let evicted = app
        .index
        .collect_unreferenced_nars(cutoff)
        .map_err(|e| e.to_string())?;
    crate::budget::remove_files(&app, &evicted);
    app.metrics.index_collected(narinfos, evicted.len());
    if narinfos > 0 || !evicted.is_empty() {
        tracing::info!(
            narinfos,
            nars = evicted.len(),
            "index GC removed rows nobody needs"
        );
    }
    Ok(())
}

/// Removes NAR files the index does not know as stored: what a crash left between a file's rename and
/// its index row becoming durable, or between an eviction's commit and the file's removal. They are
/// never served (the index decides), only wasted space. Runs once, in the background, after start.
/// Each file is checked and removed under the fills' lock, and a fill keeps its NAR in that table
/// until its index row is committed, so a file being committed is never taken.
pub async fn sweep_orphans(app: Arc<App>) {
    let a = app.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(usize, u64), String> {
        let mut removed = (0, 0);
        for (name, _) in a.store.files().map_err(|e| e.to_string())? {
            // A push moving its file into place is left alone like a fill (issue 12).
            let orphan = a.pushes.unless_committing(&name.file_hash, || {
                a.fills
                    .unless_running(&name.file_hash, || -> Result<Option<u64>, String> {
                        let stored = a.index.nar(&name.file_hash).map_err(|e| e.to_string())?;
                        if stored.is_some_and(|(record, stored)| {
                            stored && record.compression == name.compression
                        }) {
                            return Ok(None);
                        }
                        let size = std::fs::metadata(a.store.path(&name))
                            .map(|m| m.len())
                            .unwrap_or(0);
                        a.store.remove(&name).map_err(|e| e.to_string())?;
                        Ok(Some(size))
                    })
            });
            if let Some(Some(size)) = orphan.flatten().transpose()? {
                removed = (removed.0 + 1, removed.1 + size);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_task_that_panics_is_counted_and_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let app = App::for_tests(dir.path());
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let task = supervise(&app, "flaky", move |_| {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first run fails");
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the supervisor ends once the task ends")
            .unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "started again after the panic"
        );
        let text = app.metrics.render(&crate::metrics::Snapshot {
            index: Default::default(),
            max_bytes: 0,
            fills_in_flight: 0,
            health: Vec::new(),
            oci_index: None,
            index_writable: true,
            reserved_bytes: 0,
            fs_free_bytes: 0,
        });
        assert!(text.unwrap().contains("nixcache_task_restarts_total 1"));
    }
}
