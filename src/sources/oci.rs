//! A cache published to an OCI registry in the nixcache-oci format: the source side of the mirror.
//!
//! It answers "what is published now" ([`OciSource::poll`]: a HEAD of the manifest, and the manifest
//! and index blob only when the digest is not the one the caller already has), serves NAR blobs, and
//! keeps the state `/_status` shows. What gets recorded is decided by the core (`mirror.rs`), which
//! checks every entry against the source's trust policy.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Health, HealthSnapshot, Rejection, SourceError, Trust};
use crate::clock::unix_now;
use crate::config::OciConfig;
use crate::index::{Applied, IndexError};
use crate::metrics::{RequestKind, SourceMetrics};
use crate::oci::client::{Registry, RegistryError};
use crate::oci::format::image_name;

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
        let trust = Trust::configured(config.accept_unsigned, &config.trusted_keys)?;
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

    /// What is published now, unless it is `known` (the manifest digest the caller mirrored last).
    pub async fn poll(&self, known: Option<&str>) -> Result<Poll, RefreshError> {
        let Some(digest) = Self::limited(self.timeout, self.registry.manifest_digest()).await?
        else {
            return Ok(Poll::NotPublished);
        };
        if known == Some(digest.as_str()) {
            return Ok(Poll::Unchanged { digest });
        }
        let Some((digest, manifest)) =
            Self::limited(self.timeout, self.registry.manifest()).await?
        else {
            return Ok(Poll::NotPublished);
        };
        let layer = manifest.index_layer().map_err(RefreshError::Format)?;
        let blob = Self::limited(
            INDEX_DOWNLOAD_TIMEOUT,
            self.registry
                .blob_bytes(&layer.digest, Some(layer.size), MAX_INDEX_BYTES),
        )
        .await?;
        Ok(Poll::Changed { digest, blob })
    }

    /// One refresh at a time: held by the mirror while it polls and applies.
    pub async fn refresh_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.refreshing.lock().await
    }

    /// The turn of the one forced refresh (`POST /_refresh`), or `None` while another forced refresh
    /// runs or waits: a client calling it in a loop costs at most one refresh at a time.
    pub fn forced_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.forced.try_lock().ok()
    }

    /// Records how a refresh ended, for `/_status`, metrics and the back-off. `entries` and
    /// `generated` describe the mirrored index when they are known.
    pub fn record_refresh(
        &self,
        result: &Result<Refreshed, RefreshError>,
        took: Duration,
        entries: Option<u64>,
        generated: Option<String>,
    ) {
        self.metrics.refreshed(result, took);
        let now = unix_now();
        {
            let mut state = self.state_slot();
            state.last_refresh = Some(now);
            state.last_duration_secs = Some(took.as_secs_f64());
            if let Some(n) = entries {
                state.entries = n;
            }
            if generated.is_some() {
                state.generated = generated;
            }
            match result {
                Ok(r) => {
                    state.last_success = Some(now);
                    if let Refreshed::Unchanged { manifest_digest }
                    | Refreshed::Applied {
                        manifest_digest, ..
                    } = r
                    {
                        state.manifest_digest = Some(manifest_digest.clone());
                    }
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
        match result {
            Err(e) if e.is_outage() => self.health.failure(e),
            // The registry answered (what it published may still be unusable).
            _ => self.health.success(),
        }
    }

    /// Counts one refused index entry.
    pub fn count_rejected(&self, why: Rejection, reason: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.entry_rejected(why, reason);
    }

    /// Its trust policy.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Time between refreshes.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The repository, for logs.
    pub fn repo(&self) -> &str {
        &self.repo
    }
}

/// What [`OciSource::poll`] found.
pub enum Poll {
    /// No `cache-index` manifest exists (nothing published yet).
    NotPublished,
    /// The manifest digest is the one the caller already has.
    Unchanged {
        /// The digest.
        digest: String,
    },
    /// A new index: its manifest digest and the index blob (digest-checked).
    Changed {
        /// The manifest digest.
        digest: String,
        /// The index blob.
        blob: Vec<u8>,
    },
}
