//! Checking what is on disk against what the index says, both ways: the background scrub (slow, one
//! stored NAR at a time) and `nixcache verify` (an fsck of a stopped appliance's data folder).
//!
//! A stored NAR is damaged when its file is missing, has another size than recorded, or its sha256 is
//! not its FileHash (with `--nar-hash`, also when the NAR inside does not match NarHash/NarSize). A
//! damaged NAR is taken out of the index and its file removed: the next request fetches it again
//! rather than serving bytes a client would reject.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::index::{Index, StoredNar};
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::store::NarStore;
use crate::verify::{Expected, NarVerifier};

/// Bytes per second the background scrub reads at most, so it never competes with clients.
const SCRUB_BYTES_PER_SEC: u64 = 32 << 20;
/// Stored rows read per index transaction.
const PAGE: usize = 256;

/// What a check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Stored NARs checked.
    pub checked: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Stored NARs whose file is damaged or missing: (NAR name, why).
    pub damaged: Vec<(String, String)>,
    /// Files in `nar/` the index does not list as stored.
    pub orphans: Vec<String>,
    /// Leftover temp files in `tmp/`.
    pub temp_files: usize,
}

impl Report {
    /// Whether anything was wrong.
    pub fn found_damage(&self) -> bool {
        !self.damaged.is_empty() || !self.orphans.is_empty() || self.temp_files > 0
    }
}

/// Checks one stored NAR's file; `Err(why)` when it is damaged.
pub fn check_file(store: &NarStore, nar: &StoredNar, nar_hash: bool) -> Result<u64, String> {
    let name = NarName {
        file_hash: nar.file_hash,
        compression: nar.record.compression,
    };
    let mut file =
        std::fs::File::open(store.path(&name)).map_err(|e| format!("cannot open: {e}"))?;
    let mut verifier = if nar_hash {
        Some(
            NarVerifier::new(Expected::from_record(&name, &nar.record))
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let mut sha = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        size += n as u64;
        if let Some(v) = verifier.as_mut() {
            v.update(&buf[..n]).map_err(|e| e.to_string())?;
        }
    }
    if size != nar.size {
        return Err(format!("size {size} is not the recorded {}", nar.size));
    }
    if Sha256Hash(sha.finalize().into()) != nar.file_hash {
        return Err("sha256 is not its FileHash".into());
    }
    if let Some(v) = verifier {
        v.finish().map_err(|e| e.to_string())?;
    }
    Ok(size)
}

/// Walks every stored NAR, calling `visit` with each (and what checking it found). Pages through the
/// index so no transaction stays open for long.
fn walk(
    index: &Index,
    store: &NarStore,
    nar_hash: bool,
    mut visit: impl FnMut(&StoredNar, Result<u64, String>) -> bool,
) -> Result<(), String> {
    let mut after: Option<Sha256Hash> = None;
    loop {
        let page = index
            .stored_page(after.as_ref(), PAGE)
            .map_err(|e| e.to_string())?;
        for nar in &page {
            if !visit(nar, check_file(store, nar, nar_hash)) {
                return Ok(());
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.file_hash),
            _ => return Ok(()),
        }
    }
}

/// `nixcache verify`: checks every stored NAR and every file, and (unless `dry_run`) repairs: damaged
/// NARs and orphan files are removed, leftover temp files too.
pub fn verify_all(
    index: &Index,
    store: &NarStore,
    nar_hash: bool,
    dry_run: bool,
) -> Result<Report, String> {
    let mut report = Report::default();
    walk(index, store, nar_hash, |nar, result| {
        report.checked += 1;
        match result {
            Ok(size) => report.bytes += size,
            Err(why) => {
                let name = NarName {
                    file_hash: nar.file_hash,
                    compression: nar.record.compression,
                };
                report.damaged.push((name.to_string(), why));
            }
        }
        true
    })?;
    if !dry_run {
        for (name, _) in &report.damaged {
            let name: NarName = name
                .parse()
                .map_err(|e: crate::nix::nar_name::NarNameError| e.to_string())?;
            index
                .unstore_nar(&name.file_hash)
                .map_err(|e| e.to_string())?;
            store.remove(&name).map_err(|e| e.to_string())?;
        }
    }
    for (name, _) in store.files().map_err(|e| e.to_string())? {
        let stored = index.nar(&name.file_hash).map_err(|e| e.to_string())?;
        if stored.is_some_and(|(r, s)| s && r.compression == name.compression) {
            continue;
        }
        report.orphans.push(name.to_string());
        if !dry_run {
            store.remove(&name).map_err(|e| e.to_string())?;
        }
    }
    let temp = store.temp_files().map_err(|e| e.to_string())?;
    report.temp_files = temp.len();
    if !dry_run {
        for path in temp {
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    if !dry_run {
        index.flush().map_err(|e| e.to_string())?;
    }
    Ok(report)
}

/// One pass of the background scrub: re-hashes every stored NAR against its FileHash at a bounded
/// rate; a damaged one is taken out of the index and its file removed (it is fetched again when asked).
pub async fn scrub(app: Arc<App>) {
    let a = app.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(u64, usize), String> {
        let started = Instant::now();
        let mut read = 0u64;
        let mut damaged = 0;
        walk(&a.index, &a.store, false, |nar, result| {
            match result {
                Ok(size) => read += size,
                Err(why) => {
                    let name = NarName {
                        file_hash: nar.file_hash,
                        compression: nar.record.compression,
                    };
                    // Under the fills' lock: a fill cannot be committing this NAR meanwhile.
                    let dropped = a.fills.unless_running(&nar.file_hash, || {
                        // Evicted while it was read: nothing to repair.
                        match a.index.nar(&nar.file_hash) {
                            Ok(Some((_, true))) => {}
                            _ => return false,
                        }
                        tracing::error!(nar = %name, why = %why, "stored NAR is damaged; dropping it, it will be fetched again");
                        let _ = a.index.unstore_nar(&nar.file_hash);
                        let _ = a.store.remove(&name);
                        true
                    });
                    if dropped == Some(true) {
                        damaged += 1;
                    }
                }
            }
            // Keep to the rate: sleep until the bytes read so far fit in the time spent.
            let due = Duration::from_secs_f64(read as f64 / SCRUB_BYTES_PER_SEC as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            !a.stopped.is_cancelled()
        })?;
        Ok((read, damaged))
    })
    .await;
    match result {
        Ok(Ok((bytes, damaged))) => {
            app.metrics.scrubbed(bytes);
            app.metrics.damaged(damaged);
            tracing::debug!(bytes, damaged, "scrub pass done");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "scrub pass failed"),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => tracing::error!(error = %e, "scrub task failed"),
    }
}
