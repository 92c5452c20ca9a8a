//! A cache published to an OCI registry in the nixcache-oci format, mirrored into the index.
//!
//! Every `index_ttl` (and on `POST /_refresh`) the manifest digest is checked with a HEAD; only when it
//! changed are the manifest and the index blob fetched, checked, and applied to redb in one transaction.
//! A refresh runs beside the requests and never holds them up; a failed one keeps the last good index,
//! which also survives restarts, so indexed paths are answered with the registry unreachable.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Health, HealthSnapshot, Rejection, SourceError, Trust};
use crate::app::{App, unix_now};
use crate::config::OciConfig;
use crate::index::{Applied, IndexError, MirroredEntry, NarRecord};
use crate::metrics::{RequestKind, SourceMetrics};
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::NarInfo;
use crate::nix::signing::PublicKey;
use crate::nix::store_path::StoreHash;
use crate::oci::client::{Registry, RegistryError};
use crate::oci::format::{CacheIndex, IndexEntry, image_name};

/// The largest index blob accepted (about 700,000 entries). Its manifest must announce its size, and
/// the download stops as soon as the body passes that.
const MAX_INDEX_BYTES: u64 = 1 << 30;
/// Time allowed to download the index blob (it can be tens of MB).
const INDEX_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a refresh failed (the last good index stays).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The index is not in the nixcache-oci format.
    #[error("index: {0}")]
    Format(String),
    /// Applying it failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A blocking task failed.
    #[error("task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The registry did not answer in time.
    #[error("registry timed out")]
    Timeout,
}

impl RefreshError {
    /// Whether it says the registry is unwell (counts towards the source's back-off), rather than that
    /// what it published is unusable or that something failed here.
    pub fn is_outage(&self) -> bool {
        match self {
            RefreshError::Registry(e) => e.is_outage(),
            RefreshError::Timeout => true,
            RefreshError::Format(_) | RefreshError::Index(_) | RefreshError::Task(_) => false,
        }
    }
}

/// What a refresh did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Refreshed {
    /// The manifest digest had not changed: nothing was downloaded.
    Unchanged {
        /// The digest.
        manifest_digest: String,
    },
    /// No `cache-index` manifest exists (nothing published yet): the last index stays.
    NotPublished,
    /// A new index was applied.
    Applied {
        /// The new manifest digest.
        manifest_digest: String,
        /// Entries written and removed.
        #[serde(flatten)]
        applied: Applied,
        /// Entries refused (invalid, unsigned, wrongly signed, unverifiable compression).
        rejected: usize,
    },
}

/// What `/_status` shows of the OCI source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexState {
    /// Narinfos mirrored from it.
    pub entries: u64,
    /// The index's `generated` time.
    pub generated: Option<String>,
    /// The manifest digest last applied.
    pub manifest_digest: Option<String>,
    /// Unix time of the last refresh attempt.
    pub last_refresh: Option<u64>,
    /// Unix time of the last successful refresh.
    pub last_success: Option<u64>,
    /// How the last refresh ended.
    pub last_outcome: Option<String>,
    /// Seconds the last refresh took.
    pub last_duration_secs: Option<f64>,
}

/// The OCI source.
pub struct OciSource {
    /// Its name, credentials in the registry URL hidden.
    id: String,
    /// Its name as indexes written before credentials were hidden recorded it.
    full_id: String,
    registry: Registry,
    repo: String,
    ttl: Duration,
    /// Time limit of one registry answer (manifest, blob headers).
    timeout: Duration,
    trust: Trust,
    health: Health,
    refreshing: tokio::sync::Mutex<()>,
    /// Held by the one forced refresh (`POST /_refresh`) running or waiting.
    forced: tokio::sync::Mutex<()>,
    state: Mutex<IndexState>,
    rejected: AtomicU64,
    metrics: SourceMetrics,
    /// Wakes the refresh loop early (`POST /_refresh`).
    pub wake: tokio::sync::Notify,
}

impl OciSource {
    /// The source for `config`.
    pub fn new(
        config: &OciConfig,
        client: reqwest::Client,
        timeout: Duration,
    ) -> Result<OciSource, String> {
        let image = image_name(&config.repo);
        let registry = Registry::new(
            &config.registry,
            &image,
            config.token.as_ref().map(|t| t.0.clone()),
            client,
        )?;
        let trust = if config.accept_unsigned {
            Trust::AcceptUnsigned
        } else {
            Trust::Keys(
                config
                    .trusted_keys
                    .iter()
                    .map(|k| PublicKey::parse(k))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?,
            )
        };
        let full_id = format!("oci:{}/{image}", config.registry.trim_end_matches('/'));
        Ok(OciSource {
            id: crate::redact::url(&full_id),
            full_id,
            registry,
            repo: config.repo.clone(),
            ttl: config.index_ttl,
            timeout,
            trust,
            health: Health::default(),
            refreshing: tokio::sync::Mutex::new(()),
            forced: tokio::sync::Mutex::new(()),
            state: Mutex::new(IndexState::default()),
            rejected: AtomicU64::new(0),
            metrics: SourceMetrics::default(),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Records its registry requests, refreshes and refused entries in `metrics`.
    pub fn with_metrics(mut self, metrics: SourceMetrics) -> OciSource {
        self.metrics = metrics;
        self
    }

    /// The name recorded as the source of its narinfos and NARs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `recorded` (a source name from the index) names this source.
    pub fn is_recorded_as(&self, recorded: &str) -> bool {
        recorded == self.id || recorded == self.full_id
    }

    /// Lets the registry credentials go to token realms on these hosts too (`oci_token_hosts`).
    pub fn with_token_hosts(mut self, hosts: &[String]) -> OciSource {
        self.registry = self.registry.allow_token_hosts(hosts);
        self
    }

    /// Its health (registry reachability).
    pub fn health(&self) -> HealthSnapshot {
        self.health.snapshot()
    }

    /// Entries refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Whether it is trusted without signatures.
    pub fn accepts_unsigned(&self) -> bool {
        matches!(self.trust, Trust::AcceptUnsigned)
    }

    /// The registry host and image, for `/_status`.
    pub fn describe(&self) -> (String, String) {
        (self.registry.host(), self.registry.image().to_string())
    }

    /// The index state, for `/_status`.
    pub fn state(&self) -> IndexState {
        self.state_slot().clone()
    }

    fn state_slot(&self) -> std::sync::MutexGuard<'_, IndexState> {
        // Every update leaves it consistent: a panic elsewhere must not hide the source's state.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the download of a NAR blob by digest.
    pub async fn get_nar(&self, digest: &str) -> Result<reqwest::Response, SourceError> {
        if let Err(e) = self.health.check() {
            self.metrics.backed_off(RequestKind::Nar);
            return Err(e);
        }
        let started = Instant::now();
        // The time limit is for the answer's headers; the body is watched by the fill's stall time-out.
        let result =
            match tokio::time::timeout(self.timeout, self.registry.blob(digest, None)).await {
                Ok(r) => r.map_err(SourceError::from),
                Err(_) => Err(SourceError::Timeout),
            };
        self.metrics.observe(RequestKind::Nar, started, &result);
        // A missing blob (404) is not a registry that is down: only outages move the back-off.
        self.health.observe(&result);
        result
    }

    /// A registry call within `limit`: a stalled registry must not hold a refresh (or a fill) forever.
    async fn limited<T>(
        limit: Duration,
        call: impl std::future::Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RefreshError> {
        match tokio::time::timeout(limit, call).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RefreshError::Timeout),
        }
    }

    /// Refreshes once: HEAD the manifest, and fetch and apply the index only if it changed. Waits for a
    /// refresh already running to end first.
    pub async fn refresh_once(&self, app: &Arc<App>) -> Result<Refreshed, RefreshError> {
        let _one_at_a_time = self.refreshing.lock().await;
        self.refresh_inner_timed(app).await
    }

    /// What `POST /_refresh` does: a refresh that starts after the call (waiting for a periodic one to
    /// end first), unless another forced refresh is running or waiting (`None`, answered 429). So a
    /// client calling it in a loop costs at most one refresh at a time (each scans the index).
    pub async fn try_refresh_now(&self, app: &Arc<App>) -> Option<Result<Refreshed, RefreshError>> {
        let _forced = self.forced.try_lock().ok()?;
        Some(self.refresh_once(app).await)
    }

    /// One refresh, recorded in the state, metrics and health. The caller holds `refreshing`.
    async fn refresh_inner_timed(&self, app: &Arc<App>) -> Result<Refreshed, RefreshError> {
        let started = Instant::now();
        let result = self.refresh_inner(app).await;
        self.metrics.refreshed(&result, started.elapsed());
        let now = unix_now();
        {
            let mut state = self.state_slot();
            state.last_refresh = Some(now);
            state.last_duration_secs = Some(started.elapsed().as_secs_f64());
            match &result {
                Ok(r) => {
                    state.last_success = Some(now);
                    state.last_outcome = Some(match r {
                        Refreshed::Unchanged { .. } => "unchanged".into(),
                        Refreshed::NotPublished => "no cache-index published".into(),
                        Refreshed::Applied {
                            applied, rejected, ..
                        } => format!(
                            "applied: {} entries, {} removed, {rejected} rejected",
                            applied.written, applied.removed
                        ),
                    });
                }
                Err(e) => state.last_outcome = Some(format!("failed: {e}")),
            }
        }
        match &result {
            Err(e) if e.is_outage() => self.health.failure(e),
            // The registry answered (what it published may still be unusable).
            _ => self.health.success(),
        }
        result
    }

    async fn refresh_inner(&self, app: &Arc<App>) -> Result<Refreshed, RefreshError> {
        let Some(digest) = Self::limited(self.timeout, self.registry.manifest_digest()).await?
        else {
            return Ok(Refreshed::NotPublished);
        };
        let a = app.clone();
        let id = self.id.clone();
        let (known, count) = tokio::task::spawn_blocking(move || -> Result<_, IndexError> {
            Ok((a.index.mirrored_digest(&id)?, a.index.count_from(&id)?))
        })
        .await??;
        if known.as_deref() == Some(digest.as_str()) {
            {
                let mut state = self.state_slot();
                state.manifest_digest = Some(digest.clone());
                state.entries = count;
            }
            return Ok(Refreshed::Unchanged {
                manifest_digest: digest,
            });
        }
        let Some((digest, manifest)) =
            Self::limited(self.timeout, self.registry.manifest()).await?
        else {
            return Ok(Refreshed::NotPublished);
        };
        let layer = manifest.index_layer().map_err(RefreshError::Format)?;
        let blob = Self::limited(
            INDEX_DOWNLOAD_TIMEOUT,
            self.registry
                .blob_bytes(&layer.digest, Some(layer.size), MAX_INDEX_BYTES),
        )
        .await?;
        let a = app.clone();
        let id = self.id.clone();
        let trust = self.trust.clone();
        let metrics = self.metrics.clone();
        let manifest_digest = digest.clone();
        let (applied, rejected, generated) =
            tokio::task::spawn_blocking(move || -> Result<_, RefreshError> {
                let index = CacheIndex::parse(&blob).map_err(RefreshError::Format)?;
                // Only entries that differ from what was mirrored last time are checked, signed and
                // written: a refresh costs what changed, not the size of the index.
                let previous = a.index.mirror_digests()?;
                let mut changed = Vec::new();
                let mut keep = std::collections::HashSet::with_capacity(index.entries.len());
                let mut rejected = 0;
                for (key, entry) in &index.entries {
                    let digest = entry_digest(entry);
                    if previous.get(key) == Some(&digest) {
                        keep.insert(key.clone());
                        continue;
                    }
                    match mirror_entry(&a, &id, &trust, key, entry, digest) {
                        Ok(e) => {
                            keep.insert(key.clone());
                            changed.push(e);
                        }
                        Err((why, reason)) => {
                            rejected += 1;
                            metrics.entry_rejected(why, &reason);
                            // Keys and reasons come from the publisher: Debug-formatted, so they cannot forge log lines.
                            tracing::warn!(source = %id, hash = ?key, reason = ?reason, "index entry rejected");
                        }
                    }
                }
                let applied = a.index.apply_mirror(
                    &id,
                    &a.signer,
                    &changed,
                    &keep,
                    &manifest_digest,
                    unix_now(),
                )?;
                Ok((applied, rejected, index.generated))
            })
            .await??;
        self.rejected.fetch_add(rejected as u64, Ordering::Relaxed);
        {
            let mut state = self.state_slot();
            state.manifest_digest = Some(digest.clone());
            state.generated = Some(generated);
            state.entries = (applied.written + applied.unchanged) as u64;
        }
        tracing::info!(
            source = %self.id, repo = %self.repo, written = applied.written,
            unchanged = applied.unchanged, removed = applied.removed, rejected, "OCI index applied"
        );
        Ok(Refreshed::Applied {
            manifest_digest: digest,
            applied,
            rejected,
        })
    }
}

/// sha256 over what an entry says (its narinfo, blob digest and size), to recognise it next time.
fn entry_digest(entry: &IndexEntry) -> [u8; 32] {
    use sha2::Digest;
    let mut sha = sha2::Sha256::new();
    sha.update(entry.narinfo.as_bytes());
    sha.update([0]);
    sha.update(entry.nar_digest.as_bytes());
    sha.update(entry.nar_size.to_le_bytes());
    sha.finalize().into()
}

/// Checks one index entry and turns it into what the index records, signed by the appliance.
fn mirror_entry(
    app: &App,
    source: &str,
    trust: &Trust,
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
    if let Trust::Keys(keys) = trust
        && !narinfo.verify_with(keys)
    {
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
        text: narinfo.to_text(),
        entry_digest,
        file_hash,
        nar: NarRecord {
            compression: narinfo.compression.as_str().to_string(),
            file_size: Some(entry.nar_size),
            nar_hash: narinfo.nar_hash.to_string(),
            nar_size: narinfo.nar_size,
            source: source.to_string(),
            url: format!("sha256:{hex}"),
        },
    })
}

/// Refreshes at start and then every `index_ttl` (or when woken), until shutdown.
pub async fn run_refresh(app: Arc<App>) {
    let Some(oci) = app.sources.oci() else {
        return;
    };
    loop {
        match oci.refresh_once(&app).await {
            Ok(r) => tracing::debug!(outcome = ?r, "OCI refresh"),
            Err(e) => {
                tracing::warn!(source = %oci.id(), error = %e, "OCI refresh failed; keeping the last index")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(oci.ttl) => {}
            () = oci.wake.notified() => {}
            () = app.stopped.cancelled() => return,
        }
    }
}
