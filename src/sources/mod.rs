//! Where NARs and narinfos come from when the index does not have them: upstream HTTP caches.
//!
//! Each source can be down without slowing the others: every request has a time limit, and a source that
//! keeps failing is backed off (answered as "unavailable" at once) until its back-off expires.

pub mod bucket;
pub mod oci;
pub mod upstream;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;

use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::StoreHash;
pub use crate::trust::Trust;
pub use bucket::BucketSource;
pub use oci::OciSource;
pub use upstream::Upstream;

/// Why a source could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// It did not answer in time.
    #[error("timed out")]
    Timeout,
    /// It failed recently and is being left alone for a while.
    #[error("backed off after repeated failures")]
    BackedOff,
    /// It answered with an unexpected status.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The connection or transfer failed (shown without the URL, which may carry credentials).
    #[error("request failed: {}", crate::redact::reqwest_error(.0))]
    Http(#[source] reqwest::Error),
    /// The body was larger than allowed.
    #[error("answer too large")]
    TooLarge,
    /// The source a NAR was recorded from is not configured any more.
    #[error("source {0} is not configured any more")]
    Unconfigured(String),
    /// A NAR download failed before its first byte (the fill logged why).
    #[error("NAR download failed")]
    NarDownload,
    /// A forced index refresh failed (the reason is logged and shown in `/_status`).
    #[error("index refresh failed")]
    RefreshFailed,
    /// The OCI registry failed.
    #[error("registry: {0}")]
    Registry(#[from] crate::oci::client::RegistryError),
    /// The shared bucket failed (issue 13).
    #[error(transparent)]
    Bucket(#[from] crate::bucket::BucketError),
    /// Every upstream lookup slot stayed taken for the whole time limit (`max_upstream_lookups`): the
    /// appliance is busy, the source was not asked.
    #[error("too many upstream lookups at once")]
    Saturated,
}

impl SourceError {
    /// Whether this is a time-out (504) rather than another failure (502).
    pub fn is_timeout(&self) -> bool {
        match self {
            SourceError::Timeout => true,
            SourceError::Registry(e) => e.is_timeout(),
            SourceError::Bucket(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// Whether this failure says the source is unwell, and so counts towards its back-off: no answer in
    /// time, a failed connection or transfer, a 5xx, or a 429 (it asks to be left alone). A 404 on a NAR
    /// or blob means "this file is missing", not "this source is down"; other answers say nothing about
    /// its health either.
    pub fn is_outage(&self) -> bool {
        match self {
            SourceError::Timeout | SourceError::Http(_) => true,
            SourceError::Status(status) => status_is_outage(*status),
            SourceError::Registry(e) => e.is_outage(),
            SourceError::Bucket(e) => e.is_outage(),
            SourceError::BackedOff
            | SourceError::TooLarge
            | SourceError::Unconfigured(_)
            | SourceError::NarDownload
            | SourceError::RefreshFailed
            | SourceError::Saturated => false,
        }
    }
}

/// Statuses that mean the source (not the file asked for) is in trouble.
pub fn status_is_outage(status: u16) -> bool {
    status >= 500 || status == 429
}

/// A source's answer to "do you have this narinfo".
#[derive(Debug)]
pub enum NarinfoAnswer {
    /// It has it, valid; `nar_url` is the absolute URL of its file.
    Found {
        /// The parsed, validated narinfo.
        narinfo: Box<NarInfo>,
        /// Absolute URL of the NAR file at the source.
        nar_url: String,
    },
    /// It says it does not have it.
    Absent,
    /// It answered something unusable (logged with the reason); treated as absent from this source.
    Rejected(Rejection, String),
}

/// Why a source's narinfo (or an OCI index entry) was refused: a small fixed set, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a narinfo this appliance accepts (parse error, not UTF-8, too large).
    Invalid,
    /// Its StorePath is not the one asked for.
    StorePath,
    /// No valid signature by a key trusted for the source.
    Signature,
    /// A compression the appliance cannot verify.
    Compression,
    /// No usable FileHash (a compressed NAR without one, or one that contradicts the blob digest).
    FileHash,
    /// Its NAR URL is not an http(s) URL.
    NarUrl,
}

impl Rejection {
    /// Every reason, for metrics that list them all from the start.
    pub const ALL: [Rejection; 6] = [
        Rejection::Invalid,
        Rejection::StorePath,
        Rejection::Signature,
        Rejection::Compression,
        Rejection::FileHash,
        Rejection::NarUrl,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Invalid => "invalid",
            Rejection::StorePath => "store_path",
            Rejection::Signature => "signature",
            Rejection::Compression => "compression",
            Rejection::FileHash => "file_hash",
            Rejection::NarUrl => "nar_url",
        }
    }
}

/// The outcome of asking every source.
#[derive(Debug)]
pub enum Lookup {
    /// The best-priority source that has it.
    Found {
        /// The source's name, as recorded in the index.
        source: String,
        /// The narinfo.
        narinfo: Box<NarInfo>,
        /// Absolute URL of its NAR file.
        nar_url: String,
    },
    /// Every source answered and none has it: safe to answer 404.
    Absent,
    /// No source has it, and at least one could not answer: not safe to say 404.
    Failed(SourceError),
}

/// Health bookkeeping of one source: consecutive failures and the back-off they earned.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    consecutive_failures: u32,
    backed_off_until: Option<Instant>,
    last_error: Option<String>,
}

/// What `/_status` shows of a source's health.
#[derive(Debug, Clone, Serialize)]
pub struct HealthSnapshot {
    /// No failure since the last success.
    pub healthy: bool,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Seconds until the source is asked again, when backed off.
    pub backed_off_secs: Option<u64>,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// Failures in a row before a source is backed off.
const FAILURES_BEFORE_BACKOFF: u32 = 3;
/// The longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Health {
    /// The state. A panic elsewhere while it was held must not disable the source for good (a poisoned
    /// lock used to read as "backed off" until restart): every update leaves it consistent.
    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(BackedOff)` while the source is backed off.
    pub fn check(&self) -> Result<(), SourceError> {
        let state = self.state();
        match state.backed_off_until {
            Some(until) if Instant::now() < until => Err(SourceError::BackedOff),
            _ => Ok(()),
        }
    }

    /// Records a success: the source is healthy again.
    pub fn success(&self) {
        let mut state = self.state();
        state.consecutive_failures = 0;
        state.backed_off_until = None;
    }

    /// Records a failure; from the third in a row the source is backed off 1 s, 2 s, 4 s ... up to 60 s.
    pub fn failure(&self, error: &dyn std::fmt::Display) {
        let mut state = self.state();
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        state.last_error = Some(crate::redact::untrusted(&error.to_string(), 300));
        if state.consecutive_failures >= FAILURES_BEFORE_BACKOFF {
            let exp = (state.consecutive_failures - FAILURES_BEFORE_BACKOFF).min(6);
            let backoff = Duration::from_secs(1 << exp).min(MAX_BACKOFF);
            state.backed_off_until = Instant::now().checked_add(backoff);
        }
    }

    /// Records what a request to the source came to: an answer (even "missing") is a sign of health,
    /// an outage ([`SourceError::is_outage`]) a failure; a request never sent counts neither way.
    pub fn observe<T>(&self, result: &Result<T, SourceError>) {
        match result {
            Ok(_) => self.success(),
            Err(SourceError::BackedOff | SourceError::Saturated) => {}
            Err(e) if e.is_outage() => self.failure(e),
            Err(_) => self.success(),
        }
    }

    /// A snapshot for `/_status`.
    pub fn snapshot(&self) -> HealthSnapshot {
        let state = self.state();
        let now = Instant::now();
        HealthSnapshot {
            healthy: state.consecutive_failures == 0,
            consecutive_failures: state.consecutive_failures,
            backed_off_secs: state
                .backed_off_until
                .filter(|u| *u > now)
                .map(|u| (u - now).as_secs() + 1),
            last_error: state.last_error.clone(),
        }
    }
}

/// The slots upstream narinfo requests share (`max_upstream_lookups`).
pub struct LookupSlots {
    /// One permit per request in flight.
    pub slots: tokio::sync::Semaphore,
    /// Requests that found none free in time.
    pub refused: prometheus::IntCounter,
}

/// The configured sources: the OCI source (mirrored into the index, so it answers first), then the
/// upstreams, most preferred first.
pub struct Sources {
    oci: Option<OciSource>,
    upstreams: Vec<Upstream>,
    /// The shared bucket (issue 13), asked first; see `bucket.rs`.
    bucket: Option<BucketSource>,
}

impl Sources {
    /// Wraps the sources; the upstreams' order is their priority.
    pub fn new(oci: Option<OciSource>, upstreams: Vec<Upstream>) -> Sources {
        Sources {
            oci,
            upstreams,
            bucket: None,
        }
    }

    /// The OCI source, if configured.
    pub fn oci(&self) -> Option<&OciSource> {
        self.oci.as_ref()
    }

    /// Starts the download of a NAR file recorded from `source` at `url` (a URL, or a blob digest for
    /// the OCI source).
    pub async fn get_nar(&self, source: &str, url: &str) -> Result<reqwest::Response, SourceError> {
        if let Some(bucket) = &self.bucket
            && bucket.id() == source
        {
            return bucket.get_nar(url).await;
        }
        if let Some(oci) = &self.oci
            && oci.is_recorded_as(source)
        {
            return oci.get_nar(url).await;
        }
        match self.by_url(source) {
            Some(upstream) => upstream.get_nar(url).await,
            None => Err(SourceError::Unconfigured(source.to_string())),
        }
    }

    /// All sources in priority order.
    pub fn all(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// The source with this base URL (as recorded in the index: its shown URL, or, in indexes written
    /// before credentials were hidden, its full URL).
    pub fn by_url(&self, url: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.is_recorded_as(url))
    }

    /// Lets at most `max` upstream narinfo requests run at once, over all upstreams; `refused` counts
    /// those that found no slot within their time limit.
    pub fn with_lookup_cap(mut self, max: usize, refused: prometheus::IntCounter) -> Sources {
        let slots = std::sync::Arc::new(LookupSlots {
            slots: tokio::sync::Semaphore::new(max),
            refused,
        });
        for u in &mut self.upstreams {
            u.set_lookup_slots(slots.clone());
        }
        self
    }

    /// Asks every source at once; returns as soon as the best-priority hit is certain.
    pub async fn lookup(&self, hash: &StoreHash) -> Lookup {
        let mut pending: FuturesUnordered<_> = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| async move { (i, u.narinfo(hash).await) })
            .collect();
        let mut answers: Vec<Option<Result<NarinfoAnswer, SourceError>>> =
            (0..self.upstreams.len()).map(|_| None).collect();
        while let Some((i, answer)) = pending.next().await {
            answers[i] = Some(answer);
            // The first source, in priority order, that is not a known miss decides, once it has answered.
            for (j, slot) in answers.iter_mut().enumerate() {
                match slot {
                    None => break,
                    Some(Ok(NarinfoAnswer::Found { .. })) => {
                        if let Some(Ok(NarinfoAnswer::Found { narinfo, nar_url })) = slot.take() {
                            return Lookup::Found {
                                source: self.upstreams[j].url().to_string(),
                                narinfo,
                                nar_url,
                            };
                        }
                    }
                    Some(_) => continue,
                }
            }
        }
        let mut failure = None;
        for answer in answers.into_iter().flatten() {
            if let Err(e) = answer {
                // A time-out anywhere makes the whole answer a 504 only if nothing else failed harder.
                if failure
                    .as_ref()
                    .is_none_or(|f: &SourceError| f.is_timeout())
                {
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) => Lookup::Failed(e),
            None => Lookup::Absent,
        }
    }
}
