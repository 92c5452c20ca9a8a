//! The OCI source's published index, mirrored into the local index: what the source answers is checked
//! entry by entry against the source's trust policy, signed by the appliance, and applied in one
//! transaction.
//!
//! Every `index_ttl` (and on `POST /_refresh`) the source is polled; only when the manifest digest
//! changed are the manifest and the index blob fetched. Only entries that differ from what was mirrored
//! last time — or were checked under another trust policy — are checked, signed and written: a refresh
//! costs what changed, not the size of the index. A refresh runs beside the requests and never holds
//! them up; a failed one keeps the last good index, which also survives restarts, so indexed paths are
//! answered with the registry unreachable.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crate::app::App;
use crate::clock::unix_now;
use crate::index::{MirroredEntry, NarRecord, NarinfoRow};
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::StoreHash;
use crate::oci::format::{CacheIndex, IndexEntry};
use crate::sources::Rejection;
use crate::sources::oci::{OciSource, Poll, RefreshError, Refreshed};

/// What `POST /_refresh` does: a refresh that starts after the call (waiting for a periodic one to end
/// first), unless another forced refresh is running or waiting (`None`, answered 429).
pub async fn try_refresh_now(app: &Arc<App>) -> Option<Result<Refreshed, RefreshError>> {
    let oci = app.sources.oci()?;
    let _forced = oci.forced_turn()?;
    Some(refresh_once(app).await)
}

/// Refreshes the mirror once. One refresh runs at a time; a second caller waits for its turn.
pub async fn refresh_once(app: &Arc<App>) -> Result<Refreshed, RefreshError> {
    let Some(oci) = app.sources.oci() else {
        return Ok(Refreshed::NotPublished);
    };
    let _turn = oci.refresh_turn().await;
    let started = Instant::now();
    let result = refresh(app, oci).await;
    let (entries, generated) = match &result {
        Ok((_, entries, generated)) => (Some(*entries), generated.clone()),
        Err(_) => (None, None),
    };
    let result = result.map(|(r, _, _)| r);
    oci.record_refresh(&result, started.elapsed(), entries, generated);
    result
}

/// Polls and applies; returns the outcome, the number of mirrored entries, and the index's time.
async fn refresh(
    app: &Arc<App>,
    oci: &OciSource,
) -> Result<(Refreshed, u64, Option<String>), RefreshError> {
    let a = app.clone();
    let id = oci.id().to_string();
    let known = tokio::task::spawn_blocking(move || a.index.mirrored_digest(&id)).await??;
    let (digest, blob) = match oci.poll(known.as_deref()).await? {
        Poll::NotPublished => return Ok((Refreshed::NotPublished, mirrored(app).await?, None)),
        Poll::Unchanged { digest } => {
            let outcome = Refreshed::Unchanged {
                manifest_digest: digest,
            };
            return Ok((outcome, mirrored(app).await?, None));
        }
        Poll::Changed { digest, blob } => (digest, blob),
    };
    let a = app.clone();
    let manifest_digest = digest.clone();
    let (applied, rejected, generated) =
        tokio::task::spawn_blocking(move || -> Result<_, RefreshError> {
            let oci = a.sources.oci().ok_or(RefreshError::Format("no OCI source".into()))?;
            let index = CacheIndex::parse(&blob).map_err(RefreshError::Format)?;
            let policy = a.policies.tag(oci.id()).unwrap_or(0);
            let previous = a.index.mirror_digests()?;
            let mut changed = Vec::new();
            let mut keep = HashSet::with_capacity(index.entries.len());
            let mut rejected = 0;
            for (key, entry) in &index.entries {
                let digest = entry_digest(entry, policy);
                if previous.get(key) == Some(&digest) {
                    keep.insert(key.clone());
                    continue;
                }
                match mirror_entry(&a, oci, policy, key, entry, digest) {
                    Ok(e) => {
                        keep.insert(key.clone());
                        changed.push(e);
                    }
                    Err((why, reason)) => {
                        rejected += 1;
                        oci.count_rejected(why, &reason);
                        // Keys and reasons come from the publisher: Debug-formatted, so they cannot forge log lines.
                        tracing::warn!(source = %oci.id(), hash = ?key, reason = ?reason, "index entry rejected");
                    }
                }
            }
            let applied = a
                .index
                .apply_mirror(oci.id(), &changed, &keep, &manifest_digest)?;
            Ok((applied, rejected + applied.conflicts, index.generated))
        })
        .await??;
    tracing::info!(
        source = %oci.id(), repo = %oci.repo(), written = applied.written,
        unchanged = applied.unchanged, removed = applied.removed, rejected, "OCI index applied"
    );
    let entries = (applied.written + applied.unchanged) as u64;
    let outcome = Refreshed::Applied {
        manifest_digest: digest,
        applied,
        rejected,
    };
    Ok((outcome, entries, Some(generated)))
}

async fn mirrored(app: &Arc<App>) -> Result<u64, RefreshError> {
    let a = app.clone();
    Ok(tokio::task::spawn_blocking(move || a.index.mirrored_count()).await??)
}

/// Refreshes at start and then every `index_ttl` (or when woken), until shutdown.
pub async fn run_refresh(app: Arc<App>) {
    let Some(oci) = app.sources.oci() else {
        return;
    };
    loop {
        match refresh_once(&app).await {
            Ok(r) => tracing::debug!(outcome = ?r, "OCI refresh"),
            Err(e) => {
                tracing::warn!(source = %oci.id(), error = %e, "OCI refresh failed; keeping the last index")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(oci.ttl()) => {}
            () = oci.wake.notified() => {}
            () = app.stopped.cancelled() => return,
        }
    }
}

/// sha256 over what an entry says (its narinfo, blob digest and size) and the trust policy it was
/// checked under, to recognise it next time.
fn entry_digest(entry: &IndexEntry, policy: u64) -> [u8; 32] {
    use sha2::Digest;
    let mut sha = sha2::Sha256::new();
    sha.update(entry.narinfo.as_bytes());
    sha.update([0]);
    sha.update(entry.nar_digest.as_bytes());
    sha.update(entry.nar_size.to_le_bytes());
    sha.update(policy.to_le_bytes());
    sha.finalize().into()
}

/// Checks one index entry and turns it into what the index records, signed by the appliance.
fn mirror_entry(
    app: &App,
    oci: &OciSource,
    policy: u64,
    key: &str,
    entry: &IndexEntry,
    entry_digest: [u8; 32],
) -> Result<MirroredEntry, (Rejection, String)> {
    let invalid = |reason: String| (Rejection::Invalid, reason);
    let hash: StoreHash = key
        .parse()
        .map_err(|_| invalid("key is not a store hash".into()))?;
    let mut narinfo =
        NarInfo::parse(&entry.narinfo).map_err(|e| invalid(format!("invalid narinfo: {e}")))?;
    if narinfo.store_path.hash != hash {
        return Err((
            Rejection::StorePath,
            "StorePath does not match its key".into(),
        ));
    }
    if !oci.trust().accepts(&narinfo) {
        return Err((
            Rejection::Signature,
            "no valid signature by a key trusted for this source".into(),
        ));
    }
    if !crate::verify::supported(narinfo.compression) {
        return Err((
            Rejection::Compression,
            format!("compression {} cannot be verified", narinfo.compression),
        ));
    }
    let file_hash_error = |reason: String| (Rejection::FileHash, reason);
    let hex = entry
        .nar_digest
        .strip_prefix("sha256:")
        .ok_or_else(|| file_hash_error("nar_digest is not sha256".into()))?;
    let file_hash =
        Sha256Hash::from_hex(hex).map_err(|e| file_hash_error(format!("nar_digest: {e}")))?;
    if narinfo.file_hash.is_some_and(|h| h != file_hash) {
        return Err(file_hash_error("FileHash differs from nar_digest".into()));
    }
    let name = NarName {
        file_hash,
        compression: narinfo.compression,
    };
    narinfo.url = name.url_path();
    narinfo.file_hash = Some(file_hash);
    narinfo.file_size = Some(entry.nar_size);
    if let Some(k) = &app.signing_key {
        narinfo.sign_with(k);
    }
    Ok(MirroredEntry {
        hash,
        entry_digest,
        row: NarinfoRow {
            recorded: unix_now(),
            policy,
            source: oci.id().to_string(),
            signer: app.signer.clone(),
            file_hash,
            text: narinfo.to_text(),
        },
        nar: NarRecord {
            compression: narinfo.compression,
            file_size: Some(entry.nar_size),
            nar_hash: narinfo.nar_hash,
            nar_size: narinfo.nar_size,
            source: oci.id().to_string(),
            url: format!("sha256:{hex}"),
        },
    })
}
