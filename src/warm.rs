//! Warm jobs (issue 16): fetch whole closures before the LAN asks (overnight, after a flake update),
//! optionally as a named pin.
//!
//! A job takes store paths, follows their References on the appliance side (narinfos through the
//! normal lookup path, so they are validated, signed and recorded like any), then fetches every NAR not
//! on disk with a fill that is never abandoned (`Want::Keep`), `warm_concurrency` at a time, verified
//! like any fill. Re-running a job is cheap: recorded narinfos are index hits and stored NARs are
//! skipped. A pinned job checks that the pin fits and sets it before fetching, so nothing it fetched
//! is evicted while the rest arrives.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::clock::unix_now;
use crate::fill::{FillError, Fills, Joined, Want};
use crate::index::PinRecord;
use crate::lookup::Asker;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::{StoreHash, StorePath};

/// Finished jobs kept for `GET /_warm/<id>`.
const KEEP_JOBS: usize = 32;
/// Failures listed in a job's progress (the rest are counted).
const KEEP_FAILURES: usize = 10;
/// How long a job waits for a fill slot when the fill queue is full, in one-second steps.
const BUSY_RETRIES: usize = 120;

/// The warm jobs of this process.
#[derive(Default)]
pub struct WarmJobs {
    next_id: AtomicU64,
    jobs: Mutex<VecDeque<Arc<Job>>>,
}

/// One warm job.
pub struct Job {
    progress: Mutex<Progress>,
}

/// A job's state, as `GET /_warm/<id>` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Its id.
    pub id: u64,
    /// `resolving` (following References), `fetching`, `done` or `failed`.
    pub state: &'static str,
    /// The pin it sets, if any.
    pub pin: Option<String>,
    /// Store paths asked for.
    pub roots: usize,
    /// Store paths of the closure found so far.
    pub paths: u64,
    /// NARs of the closure.
    pub nars: u64,
    /// NARs on disk by now (already there, or fetched).
    pub nars_done: u64,
    /// NARs that were on disk already.
    pub nars_already: u64,
    /// NARs fetched by this job.
    pub nars_fetched: u64,
    /// NARs that could not be fetched.
    pub nars_failed: u64,
    /// Bytes of the closure's NAR files (FileSize).
    pub bytes: u64,
    /// Of which on disk by now.
    pub bytes_done: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// The first failures, for people.
    pub failures: Vec<String>,
    /// Unix time it started.
    pub started_at: u64,
    /// Unix time it ended.
    pub finished_at: Option<u64>,
}

impl Job {
    /// Its progress now.
    pub fn progress(&self) -> Progress {
        match self.progress.lock() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(&mut p);
        }
    }

    fn failed_nar(&self, why: String) {
        self.update(|p| {
            p.nars_failed += 1;
            if p.failures.len() < KEEP_FAILURES {
                p.failures.push(why);
            }
        });
    }
}

/// A request the appliance refuses before starting a job (400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Parses the paths of a warm request: full store paths, blank lines and `#` comments skipped.
pub fn parse_paths(paths: &[String]) -> Result<Vec<StorePath>, BadRequest> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for p in paths {
        let p = p.trim();
        if p.is_empty() || p.starts_with('#') {
            continue;
        }
        let path = StorePath::parse(p)
            .map_err(|e| BadRequest(format!("not a store path: {p:?} ({e})")))?;
        if seen.insert(path.hash) {
            out.push(path);
        }
    }
    if out.is_empty() {
        return Err(BadRequest("no store paths given".into()));
    }
    Ok(out)
}

impl WarmJobs {
    /// Starts a job for `paths` (checked), pinned as `pin` if given. `origin` is recorded with the pin.
    pub fn submit(
        &self,
        app: &Arc<App>,
        paths: &[String],
        pin: Option<String>,
        origin: &'static str,
    ) -> Result<Arc<Job>, BadRequest> {
        let roots = parse_paths(paths)?;
        if let Some(name) = &pin {
            crate::pins::check_name(name).map_err(BadRequest)?;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Arc::new(Job {
            progress: Mutex::new(Progress {
                id,
                state: "resolving",
                pin: pin.clone(),
                roots: roots.len(),
                paths: 0,
                nars: 0,
                nars_done: 0,
                nars_already: 0,
                nars_fetched: 0,
                nars_failed: 0,
                bytes: 0,
                bytes_done: 0,
                error: None,
                failures: Vec::new(),
                started_at: unix_now(),
                finished_at: None,
            }),
        });
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.push_back(job.clone());
            while jobs.len() > KEEP_JOBS {
                jobs.pop_front();
            }
        }
        let (a, j) = (app.clone(), job.clone());
        tokio::spawn(async move { run(a, j, roots, pin, origin).await });
        Ok(job)
    }

    /// The job with this id, if it is still kept.
    pub fn get(&self, id: u64) -> Option<Progress> {
        let jobs = self.jobs.lock().ok()?;
        jobs.iter().map(|j| j.progress()).find(|p| p.id == id)
    }

    /// Every kept job, newest first.
    pub fn recent(&self) -> Vec<Progress> {
        match self.jobs.lock() {
            Ok(jobs) => jobs.iter().rev().map(|j| j.progress()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

async fn run(
    app: Arc<App>,
    job: Arc<Job>,
    roots: Vec<StorePath>,
    pin: Option<String>,
    origin: &'static str,
) {
    app.metrics.warm_job(true, false);
    let result = tokio::select! {
        r = warm(&app, &job, &roots, pin.as_deref(), origin) => r,
        () = app.stopped.cancelled() => Err("the appliance is shutting down".into()),
    };
    let failed = result.is_err();
    job.update(|p| {
        p.finished_at = Some(unix_now());
        match result {
            Ok(()) => p.state = "done",
            Err(e) => {
                p.state = "failed";
                p.error = Some(e);
            }
        }
    });
    let p = job.progress();
    match &p.error {
        None => tracing::info!(
            job = p.id,
            pin = ?p.pin,
            paths = p.paths,
            fetched = p.nars_fetched,
            already = p.nars_already,
            "warm job done"
        ),
        Some(e) => tracing::warn!(job = p.id, pin = ?p.pin, error = %e, "warm job failed"),
    }
    app.metrics.warm_job(false, failed);
    if pin.is_some() {
        let a = app.clone();
        let _ = tokio::task::spawn_blocking(move || crate::pins::refresh_gauges(&a)).await;
    }
}

/// One NAR of the closure.
struct Member {
    name: NarName,
    size: u64,
}

async fn warm(
    app: &Arc<App>,
    job: &Arc<Job>,
    roots: &[StorePath],
    pin: Option<&str>,
    origin: &'static str,
) -> Result<(), String> {
    let members = resolve(app, job, roots).await?;
    if let Some(name) = pin {
        set_pin(app, name, roots, &members, origin).await?;
    }
    job.update(|p| {
        p.state = "fetching";
        p.nars = members.len() as u64;
        p.bytes = members.iter().map(|m| m.size).sum();
    });
    let concurrency = app.config.warm_concurrency;
    futures_util::stream::iter(members)
        .map(|m| async move {
            match ensure_stored(app, m.name).await {
                Ok(already) => {
                    app.metrics
                        .warm_nar(if already { "already_stored" } else { "fetched" });
                    job.update(|p| {
                        p.nars_done += 1;
                        p.bytes_done += m.size;
                        if already {
                            p.nars_already += 1;
                        } else {
                            p.nars_fetched += 1;
                        }
                    });
                }
                Err(why) => {
                    app.metrics.warm_nar("failed");
                    job.failed_nar(format!("{}: {why}", m.name));
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    let failed = job.progress().nars_failed;
    if failed > 0 {
        return Err(format!("{failed} NAR(s) could not be fetched"));
    }
    Ok(())
}

/// Follows References from `roots` through the lookup path. Fails when a root is in no cache, or when
/// a narinfo of the closure cannot be had (the closure would be incomplete).
async fn resolve(
    app: &Arc<App>,
    job: &Arc<Job>,
    roots: &[StorePath],
) -> Result<Vec<Member>, String> {
    let mut seen: HashSet<StoreHash> = roots.iter().map(|r| r.hash).collect();
    let mut frontier: Vec<StorePath> = roots.to_vec();
    let mut members = Vec::new();
    let mut members_seen = HashSet::new();
    let mut first = true;
    // Narinfo lookups are small: more at once than NAR fetches.
    let concurrency = app.config.warm_concurrency * 4;
    while !frontier.is_empty() {
        let found: Vec<(StorePath, Result<Option<String>, String>)> =
            futures_util::stream::iter(std::mem::take(&mut frontier))
                .map(|path| async move {
                    let text = crate::lookup::narinfo_as(app, path.hash, Asker::Warm)
                        .await
                        .map(|(_, text)| text)
                        .map_err(|e| e.to_string());
                    (path, text)
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
        let mut missing = Vec::new();
        for (path, text) in found {
            let text = match text {
                Ok(Some(t)) => t,
                Ok(None) => {
                    missing.push(path.to_string());
                    continue;
                }
                Err(e) => return Err(format!("looking up {path} failed: {e}")),
            };
            let info = NarInfo::parse(&text).map_err(|e| format!("narinfo of {path}: {e}"))?;
            // A narinfo naming a zstd twin by its original's name has no FileHash (issue 14): its URL
            // names the original.
            let name = NarName::for_narinfo(&info)
                .or_else(|| info.url.strip_prefix("nar/")?.parse().ok())
                .ok_or_else(|| format!("narinfo of {path} names no NAR file"))?;
            if members_seen.insert(name.file_hash) {
                members.push(Member {
                    name,
                    size: info.file_size.unwrap_or(info.nar_size),
                });
            }
            for r in info.references {
                if seen.insert(r.hash) {
                    frontier.push(r);
                }
            }
            job.update(|p| p.paths += 1);
        }
        if !missing.is_empty() {
            missing.sort();
            let what = if first {
                "not in any cache"
            } else {
                "closure incomplete, not in any cache"
            };
            return Err(format!("{what}: {}", missing.join(", ")));
        }
        first = false;
    }
    Ok(members)
}

/// Checks that the pin fits and sets it (its NARs protected before they are fetched).
async fn set_pin(
    app: &Arc<App>,
    name: &str,
    roots: &[StorePath],
    members: &[Member],
    origin: &'static str,
) -> Result<(), String> {
    let nars: Vec<_> = members.iter().map(|m| (m.name.file_hash, m.size)).collect();
    let record = PinRecord {
        roots: roots.iter().map(ToString::to_string).collect(),
        paths: 0,
        file_hashes: nars.iter().map(|(h, _)| h.to_nix32()).collect(),
        set_at: unix_now(),
        origin: origin.to_string(),
    };
    let (a, name) = (app.clone(), name.to_string());
    tokio::task::spawn_blocking(move || {
        crate::pins::check_fit(&a, &name, &nars)?;
        let record = PinRecord {
            paths: nars.len() as u64,
            ..record
        };
        a.index
            .set_pin(&name, &record)
            .map_err(|e| format!("recording pin {name}: {e}"))?;
        crate::pins::refresh_gauges(&a);
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Makes sure the NAR `name` is on disk: `Ok(true)` when it was already. A transcoded NAR whose file
/// went is made again from its original; any other is fetched by a fill that is never abandoned.
pub async fn ensure_stored(app: &Arc<App>, name: NarName) -> Result<bool, String> {
    for _ in 0..BUSY_RETRIES {
        let Some((record, stored)) = app.index.nar(&name.file_hash).map_err(|e| e.to_string())?
        else {
            return Err("its NAR record is gone".into());
        };
        if stored {
            return Ok(true);
        }
        // A zstd twin named by its original (issue 14): the original is fetched, the twin made beside.
        let name = NarName {
            compression: record.compression,
            ..name
        };
        if crate::transcode::regenerate(app, &name)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        match Fills::join_or_start(app, name, record, Want::Keep) {
            Ok(Joined::Fill(sub)) => {
                return match sub.fill().finished().await {
                    // Verified; its file is made durable right after: wait for that.
                    Ok(_) => crate::transcode::wait_stored(app, &name.file_hash)
                        .await
                        .map(|()| false)
                        .map_err(|e| e.to_string()),
                    Err(f) => Err(format!("download failed ({f:?})")),
                };
            }
            Ok(Joined::Stored) => return Ok(true),
            Ok(Joined::PassThrough) => return Err("larger than the store's cap".into()),
            // The fill queue is full: wait for room rather than fail.
            Err(FillError::Busy) => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the fill queue stayed full".into())
}

/// Warms and pins the config file's `pins` once after start, one after the other, and releases the
/// pins an earlier config file set that this one no longer has.
pub fn start_config_pins(app: &Arc<App>) -> JoinHandle<()> {
    let app = app.clone();
    tokio::spawn(async move {
        let a = app.clone();
        let released = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
            let mut released = Vec::new();
            for pin in a.index.pins().map_err(|e| e.to_string())? {
                if pin.record.origin == "config" && !a.config.pins.contains_key(&pin.name) {
                    a.index.remove_pin(&pin.name).map_err(|e| e.to_string())?;
                    released.push(pin.name);
                }
            }
            crate::pins::refresh_gauges(&a);
            Ok(released)
        })
        .await;
        match released {
            Ok(Ok(names)) if !names.is_empty() => {
                tracing::info!(pins = ?names, "released pins no longer in the config file")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "checking configured pins failed"),
            _ => {}
        }
        for (name, paths) in app.config.pins.clone() {
            let job = match app.warm.submit(&app, &paths, Some(name.clone()), "config") {
                Ok(job) => job,
                Err(e) => {
                    tracing::error!(pin = %name, error = %e, "configured pin refused");
                    continue;
                }
            };
            // One configured pin at a time.
            loop {
                if job.progress().finished_at.is_some() {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = app.stopped.cancelled() => return,
                }
            }
        }
    })
}
