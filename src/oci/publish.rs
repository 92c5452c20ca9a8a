//! Publishing to a nixcache-oci cache: uploading NAR blobs and updating the index without losing what
//! another publisher pushed meanwhile.
//!
//! Registries have no conditional manifest PUT, so the update is optimistic: read the manifest, merge,
//! upload the new index blob, and re-read the manifest digest just before pushing; if it moved, merge
//! again on top of the newer index. The remaining window is the time between that last check and the
//! PUT; the GitHub workflows also share one concurrency group.

use std::time::Duration;

use super::client::{Registry, RegistryError};
use super::format::{CONFIG_BLOB, CacheIndex, Manifest, digest_of, timestamp};

/// How many times a moved manifest is merged again before giving up.
const MAX_ATTEMPTS: usize = 5;

/// Failures of a publish.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The published index is unreadable.
    #[error("published index: {0}")]
    Index(String),
    /// Other publishers kept moving the manifest.
    #[error("the index kept changing under us ({MAX_ATTEMPTS} attempts); try again")]
    Contended,
}

/// The published index and the manifest digest it was read at (`None`: nothing published yet).
pub async fn read_index(
    registry: &Registry,
    repo: &str,
) -> Result<(Option<String>, CacheIndex), PublishError> {
    match registry.manifest().await? {
        None => Ok((None, CacheIndex::new(repo, &registry.host()))),
        Some((digest, manifest)) => {
            let layer = manifest.index_layer().map_err(PublishError::Index)?;
            let blob = registry
                .blob_bytes(&layer.digest, Some(layer.size), 1 << 30)
                .await?;
            Ok((
                Some(digest),
                CacheIndex::parse(&blob).map_err(PublishError::Index)?,
            ))
        }
    }
}

/// Applies `change` to the published index and pushes it (index blob, config blob, manifest last).
/// Returns the new manifest digest and the index as pushed.
pub async fn update_index(
    registry: &Registry,
    repo: &str,
    now: u64,
    change: &(dyn Fn(&mut CacheIndex) + Sync),
) -> Result<(String, CacheIndex), PublishError> {
    for attempt in 1..=MAX_ATTEMPTS {
        let (read_at, mut index) = read_index(registry, repo).await?;
        change(&mut index);
        index.version = 1;
        index.generated = timestamp(now);
        index.repo = repo.to_string();
        index.registry = registry.host();
        index.image = registry.image().to_string();
        let blob = index.to_bytes();
        let blob_digest = digest_of(&blob);
        if !registry.blob_exists(&blob_digest).await? {
            let b = blob.clone();
            registry
                .upload_blob(&blob_digest, &move || reqwest::Body::from(b.clone()))
                .await?;
        }
        let config_digest = digest_of(CONFIG_BLOB);
        if !registry.blob_exists(&config_digest).await? {
            registry
                .upload_blob(&config_digest, &|| reqwest::Body::from(CONFIG_BLOB))
                .await?;
        }
        if registry.manifest_digest().await? != read_at {
            tracing::info!(attempt, "the index moved while we merged; merging again");
            tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            continue;
        }
        let digest = registry.put_manifest(&Manifest::for_index(&blob)).await?;
        return Ok((digest, index));
    }
    Err(PublishError::Contended)
}
