//! An upstream HTTP binary cache (cache.nixos.org, another nixcache, a `nix copy --to file://` folder
//! behind any web server), asked per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};

use super::{Health, LookupSlots, NarinfoAnswer, Rejection, SourceError};
use crate::metrics::{RequestKind, SourceMetrics};
use crate::nix::narinfo::{MAX_NARINFO_BYTES, NarInfo};
use crate::nix::store_path::StoreHash;
use crate::trust::Trust;

/// One upstream cache.
pub struct Upstream {
    /// The base URL as shown and recorded: credentials hidden ([`crate::redact::url`]).
    url: String,
    /// The base URL requests go to, credentials included.
    base: Url,
    client: reqwest::Client,
    timeout: Duration,
    trust: Trust,
    health: Health,
    rejected: AtomicU64,
    metrics: SourceMetrics,
    slots: Option<Arc<LookupSlots>>,
}

fn http_error(e: reqwest::Error) -> SourceError {
    if e.is_timeout() {
        SourceError::Timeout
    } else {
        SourceError::Http(e)
    }
}

impl Upstream {
    /// An upstream at `url` (a base URL ending in `/`, as [`crate::config::Config`] makes them).
    pub fn new(
        url: &str,
        client: reqwest::Client,
        timeout: Duration,
        trust: Trust,
    ) -> Result<Upstream, String> {
        let base = Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        Ok(Upstream {
            url: crate::redact::url(url),
            base,
            client,
            timeout,
            trust,
            health: Health::default(),
            rejected: AtomicU64::new(0),
            metrics: SourceMetrics::default(),
            slots: None,
        })
    }

    /// Makes its narinfo requests take one of `slots` (shared by all upstreams).
    pub fn set_lookup_slots(&mut self, slots: Arc<LookupSlots>) {
        self.slots = Some(slots);
    }

    /// Whether `recorded` (a source name from the index) names this upstream.
    pub fn is_recorded_as(&self, recorded: &str) -> bool {
        recorded == self.url || recorded == self.base.as_str()
    }

    /// Records its requests, errors and refusals in `metrics` (the appliance's; others record nothing).
    pub fn with_metrics(mut self, metrics: SourceMetrics) -> Upstream {
        self.metrics = metrics;
        self
    }

    /// How many of its narinfos were refused (invalid, unsigned, badly signed, unverifiable).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Counts a narinfo of this source that was refused after it was fetched.
    pub fn count_rejected(&self, why: Rejection, reason: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.rejected(why, reason);
    }

    /// Its trust policy.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Whether it is trusted without signatures.
    pub fn accepts_unsigned(&self) -> bool {
        matches!(self.trust, Trust::AcceptUnsigned)
    }

    /// The base URL without credentials, which names the source in the index, `/_status` and metrics.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its health.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Asks for the narinfo of `hash`, validated strictly, within the time limit.
    pub async fn narinfo(&self, hash: &StoreHash) -> Result<NarinfoAnswer, SourceError> {
        if let Err(e) = self.health.check() {
            self.metrics.backed_off(RequestKind::Narinfo);
            return Err(e);
        }
        // A slot first (waiting for one does not count against the source), then the request's own time.
        let _slot = match &self.slots {
            Some(slots) => match tokio::time::timeout(self.timeout, slots.slots.acquire()).await {
                Ok(Ok(permit)) => Some(permit),
                Ok(Err(_)) | Err(_) => {
                    slots.refused.inc();
                    return Err(SourceError::Saturated);
                }
            },
            None => None,
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.fetch_narinfo(hash))
            .await
            .unwrap_or(Err(SourceError::Timeout));
        self.metrics.observe(RequestKind::Narinfo, started, &result);
        self.health.observe(&result);
        match &result {
            Ok(NarinfoAnswer::Rejected(why, reason)) => {
                // The reason may quote the source's text: Debug-formatted, so it cannot forge log lines.
                tracing::warn!(source = %self.url, hash = %hash, reason = ?reason, "upstream narinfo rejected");
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.metrics.rejected(*why, reason);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(source = %self.url, hash = %hash, error = %e, "upstream narinfo request failed");
            }
        }
        result
    }

    async fn fetch_narinfo(&self, hash: &StoreHash) -> Result<NarinfoAnswer, SourceError> {
        let url = self
            .base
            .join(&format!("{hash}.narinfo"))
            .map_err(|_| SourceError::Status(0))?;
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(http_error)?;
        match response.status() {
            StatusCode::OK => {}
            // What Nix itself reads as "absent".
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::GONE => {
                return Ok(NarinfoAnswer::Absent);
            }
            other => return Err(SourceError::Status(other.as_u16())),
        }
        let body = read_capped(response, MAX_NARINFO_BYTES).await?;
        let Ok(text) = String::from_utf8(body) else {
            return Ok(NarinfoAnswer::Rejected(
                Rejection::Invalid,
                "narinfo is not UTF-8".into(),
            ));
        };
        let narinfo = match NarInfo::parse(&text) {
            Ok(n) => n,
            Err(e) => {
                return Ok(NarinfoAnswer::Rejected(
                    Rejection::Invalid,
                    format!("invalid narinfo: {e}"),
                ));
            }
        };
        if narinfo.store_path.hash != *hash {
            return Ok(NarinfoAnswer::Rejected(
                Rejection::StorePath,
                format!(
                    "StorePath {} does not match the requested hash",
                    narinfo.store_path
                ),
            ));
        }
        if !self.trust.accepts(&narinfo) {
            return Ok(NarinfoAnswer::Rejected(
                Rejection::Signature,
                "no valid signature by a key trusted for this source".into(),
            ));
        }
        if !crate::verify::supported(narinfo.compression) {
            return Ok(NarinfoAnswer::Rejected(
                Rejection::Compression,
                format!(
                    "compression {} cannot be verified here",
                    narinfo.compression.as_str()
                ),
            ));
        }
        if narinfo.file_hash_or_nar().is_none() {
            return Ok(NarinfoAnswer::Rejected(
                Rejection::FileHash,
                "compressed NAR without FileHash cannot be stored content-addressed".into(),
            ));
        }
        // RFC 3986 resolution against the narinfo's own URL: relative, absolute, other folder, query.
        let nar_url = match url.join(&narinfo.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => {
                return Ok(NarinfoAnswer::Rejected(
                    Rejection::NarUrl,
                    format!("NAR URL {:?} is not an http(s) URL", narinfo.url),
                ));
            }
        };
        Ok(NarinfoAnswer::Found {
            narinfo: Box::new(narinfo),
            nar_url: nar_url.to_string(),
        })
    }

    /// Starts the download of a NAR file: the response once its status is 200 (within the time limit).
    pub async fn get_nar(&self, url: &str) -> Result<reqwest::Response, SourceError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.client.get(url).send()).await {
            Err(_) => Err(SourceError::Timeout),
            Ok(Err(e)) => Err(http_error(e)),
            Ok(Ok(r)) if r.status() == StatusCode::OK => Ok(r),
            Ok(Ok(r)) => Err(SourceError::Status(r.status().as_u16())),
        };
        self.metrics.observe(RequestKind::Nar, started, &result);
        // A 404 here is a missing file, not a source that is down: only outages move the back-off.
        self.health.observe(&result);
        result
    }
}

/// Reads a whole body, failing as soon as it grows past `cap` bytes.
async fn read_capped(response: reqwest::Response, cap: usize) -> Result<Vec<u8>, SourceError> {
    crate::capped::read(response, cap as u64, |_| {})
        .await
        .map_err(|e| match e {
            crate::capped::CappedError::TooLarge => SourceError::TooLarge,
            crate::capped::CappedError::Http(e) => http_error(e),
        })
}
