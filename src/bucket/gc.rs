//! Keeping the shared bucket within a size without deleting what any appliance serves: pruning is left
//! to one elected appliance (the one configured with `gc_max_size`), and every appliance tells it
//! what it uses.
//!
//! **Liveness manifests.** Every appliance writes `nixcache/live/<its id>` every 10 minutes: one line
//! `<store hash> <FileHash>` per narinfo row of its index. Those rows are what it may serve (its index
//! GC drops rows nobody asked for within `index_retention`, so they follow real use).
//!
//! **A pass** (hourly, on the elected appliance, only while the bucket is larger than `gc_max_size`):
//! a narinfo or NAR is *live* when a fresh manifest (written within a week) names it. Narinfos that no
//! manifest names and that are older than a day are deleted; NARs that no manifest names and older than
//! a day become *doomed*, and are deleted oldest first, down to 90 % of the cap, only at a later pass
//! (at least 30 minutes on, so every appliance wrote its manifest since) and only if still not live.
//! So an appliance that starts serving a path meanwhile — it found the narinfo in the bucket just
//! before it was deleted — keeps its NAR; only narinfos are deleted at once, and an appliance that has
//! one in its index serves it anyway. A young narinfo no manifest names yet protects its NAR.
//! What is live is never deleted: a bucket whose every object is in use stays over its cap (logged).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::Bucket;
use super::publish::PublishError;
use crate::app::App;
use crate::clock::unix_now;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::NarInfo;

/// Where the manifests live.
pub const LIVE_DIR: &str = "nixcache/live";
/// How often every appliance writes its manifest.
const MANIFEST_EVERY: Duration = Duration::from_secs(600);
/// How often the elected appliance prunes.
const PASS_EVERY: Duration = Duration::from_secs(3600);
/// Index rows read per transaction while writing a manifest.
const PAGE: usize = 4096;

/// The ages a pass works with (seconds); tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Prune while the bucket holds more bytes than this.
    pub max_size: u64,
    /// Objects written more recently are never deleted.
    pub min_age: u64,
    /// Manifests older than this are ignored (their appliance is gone).
    pub stale_after: u64,
    /// A doomed NAR is deleted only at a pass at least this long after it was doomed.
    pub confirm_after: u64,
}

impl Rules {
    /// The rules for a cap of `max_size` bytes.
    pub fn new(max_size: u64) -> Rules {
        Rules {
            max_size,
            min_age: 24 * 3600,
            stale_after: 7 * 24 * 3600,
            confirm_after: 3 * MANIFEST_EVERY.as_secs(),
        }
    }
}

/// NARs doomed at an earlier pass: key → unix time doomed.
pub type Doomed = HashMap<String, u64>;

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Bytes in the bucket before.
    pub bytes_before: u64,
    /// Narinfos deleted.
    pub narinfos: usize,
    /// NARs deleted.
    pub nars: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// Writes this appliance's manifest: every narinfo row of its index, with its FileHash.
pub async fn write_manifest(app: &Arc<App>, bucket: &Bucket) -> Result<usize, PublishError> {
    let a = app.clone();
    let (id, text, rows) = tokio::task::spawn_blocking(move || {
        let id = a.index.bucket_appliance_id()?;
        let mut text = String::new();
        let mut rows = 0;
        let mut after: Option<String> = None;
        loop {
            let page = a.index.narinfo_page(after.as_deref(), PAGE)?;
            for (hash, row) in &page {
                text.push_str(&format!("{hash} {}\n", row.file_hash.to_nix32()));
            }
            rows += page.len();
            match page.last() {
                Some((last, _)) if page.len() == PAGE => after = Some(last.clone()),
                _ => break,
            }
        }
        Ok::<_, PublishError>((id, text, rows))
    })
    .await??;
    bucket
        .put_replacing(&format!("{LIVE_DIR}/{id}"), text.into())
        .await?;
    Ok(rows)
}

/// What the fresh manifests name: store hashes and FileHashes (nix32).
async fn live_set(
    bucket: &Bucket,
    manifests: &[String],
) -> Result<(HashSet<String>, HashSet<String>), PublishError> {
    let (mut hashes, mut files) = (HashSet::new(), HashSet::new());
    for key in manifests {
        let Some(body) = bucket.get_small(key, 1 << 30).await? else {
            continue;
        };
        for line in String::from_utf8_lossy(&body).lines() {
            if let Some((hash, file)) = line.split_once(' ') {
                hashes.insert(hash.to_string());
                files.insert(file.to_string());
            }
        }
    }
    Ok((hashes, files))
}

/// One pass (see the module's notes). `doomed` carries NARs from one pass to the next.
pub async fn pass(
    bucket: &Bucket,
    rules: &Rules,
    doomed: &mut Doomed,
) -> Result<Pruned, PublishError> {
    let now = unix_now();
    let objects = bucket.list().await?;
    let mut pruned = Pruned {
        bytes_before: objects.iter().map(|(_, size, _)| size).sum(),
        ..Pruned::default()
    };
    if pruned.bytes_before <= rules.max_size {
        doomed.clear();
        return Ok(pruned);
    }
    let old = |modified: i64| (modified.max(0) as u64).saturating_add(rules.min_age) <= now;
    let manifests: Vec<String> = objects
        .iter()
        .filter(|(key, _, m)| {
            key.starts_with(LIVE_DIR)
                && (m.max(&0).unsigned_abs()).saturating_add(rules.stale_after) >= now
        })
        .map(|(key, _, _)| key.clone())
        .collect();
    let (live_hashes, mut live_files) = live_set(bucket, &manifests).await?;
    let mut total = pruned.bytes_before;
    let mut nars = Vec::new();
    for (key, size, modified) in &objects {
        if let Some(hash) = key.strip_suffix(".narinfo").filter(|h| !h.contains('/')) {
            if live_hashes.contains(hash) {
                continue;
            }
            if old(*modified) {
                bucket.delete(key).await?;
                pruned.narinfos += 1;
                pruned.bytes_freed += size;
                total = total.saturating_sub(*size);
            } else if let Some(body) = bucket.get_small(key, 1 << 20).await?
                && let Ok(narinfo) = NarInfo::parse(&String::from_utf8_lossy(&body))
                && let Some(name) = NarName::for_narinfo(&narinfo)
            {
                // Written since the last manifests: its NAR stays.
                live_files.insert(name.file_hash.to_nix32());
            }
        } else if let Some(name) = key
            .strip_prefix("nar/")
            .and_then(|n| n.parse::<NarName>().ok())
        {
            if !live_files.contains(&name.file_hash.to_nix32()) && old(*modified) {
                nars.push((*modified, key.clone(), *size));
            }
        }
    }
    // Oldest first; deleted only when doomed at an earlier pass, long enough ago.
    nars.sort();
    let target = rules.max_size / 10 * 9;
    let mut still = Doomed::new();
    for (_, key, size) in nars {
        let doomed_at = doomed.get(&key).copied().unwrap_or(now);
        if total > target && doomed_at.saturating_add(rules.confirm_after) <= now {
            bucket.delete(&key).await?;
            pruned.nars += 1;
            pruned.bytes_freed += size;
            total = total.saturating_sub(size);
        } else {
            still.insert(key, doomed_at);
        }
    }
    *doomed = still;
    if total > rules.max_size && doomed.is_empty() {
        tracing::warn!(
            bytes = total,
            cap = rules.max_size,
            "the bucket is over its cap and everything in it is in use"
        );
    }
    Ok(pruned)
}

/// Every appliance's manifest writer, and the elected one's pruning. Runs until shutdown.
pub async fn run(app: Arc<App>) {
    let Some(bucket) = app.bucket.clone() else {
        return;
    };
    let rules = bucket.gc_max_size.map(Rules::new);
    let mut doomed = Doomed::new();
    let mut next_pass = tokio::time::Instant::now() + PASS_EVERY;
    loop {
        if let Err(e) = write_manifest(&app, &bucket).await {
            tracing::warn!(error = %e, "writing this appliance's manifest to the bucket failed");
        }
        if let Some(rules) = &rules
            && tokio::time::Instant::now() >= next_pass
        {
            next_pass = tokio::time::Instant::now() + PASS_EVERY;
            match pass(&bucket, rules, &mut doomed).await {
                Ok(p) if p.narinfos + p.nars > 0 => {
                    tracing::info!(
                        narinfos = p.narinfos,
                        nars = p.nars,
                        bytes = p.bytes_freed,
                        "pruned the bucket"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning the bucket failed"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(MANIFEST_EVERY) => {}
            () = app.stopped.cancelled() => return,
        }
    }
}
