//! The shared bucket as a source (issue 13): asked before the upstreams for a narinfo the index does
//! not have, so an appliance serves what another one fetched without going upstream again, and the
//! source NARs of such narinfos are read from.
//!
//! A narinfo found in the bucket is checked like an upstream's (strict parse, StorePath, a signature
//! by a key trusted for the bucket — the appliances' own, plus the upstream keys whose signatures the
//! narinfos keep — verifiable compression) and must point at the canonical `nar/<FileHash>.nar<ext>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::{Health, Lookup, NarinfoAnswer, Rejection, SourceError, Sources};
use crate::bucket::Bucket;
use crate::metrics::{RequestKind, SourceMetrics};
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::{MAX_NARINFO_BYTES, NarInfo};
use crate::nix::store_path::StoreHash;
use crate::trust::Trust;

/// The bucket, as the best-priority source.
pub struct BucketSource {
    bucket: Arc<Bucket>,
    trust: Trust,
    health: Health,
    rejected: AtomicU64,
    metrics: SourceMetrics,
}

impl BucketSource {
    /// The source reading `bucket`, accepting narinfos under `trust`.
    pub fn new(bucket: Arc<Bucket>, trust: Trust) -> BucketSource {
        BucketSource {
            bucket,
            trust,
            health: Health::default(),
            rejected: AtomicU64::new(0),
            metrics: SourceMetrics::default(),
        }
    }

    /// Records its requests in `metrics`.
    pub fn with_metrics(mut self, metrics: SourceMetrics) -> BucketSource {
        self.metrics = metrics;
        self
    }

    /// Its name in the index (`bucket:<endpoint>/<bucket>[/<prefix>]`).
    pub fn id(&self) -> &str {
        self.bucket.id()
    }

    /// Its trust policy.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Its health.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Narinfos of the bucket that were refused.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Asks the bucket for the narinfo of `hash`.
    pub async fn narinfo(&self, hash: &StoreHash) -> Result<NarinfoAnswer, SourceError> {
        if let Err(e) = self.health.check() {
            self.metrics.backed_off(RequestKind::Narinfo);
            return Err(e);
        }
        let started = Instant::now();
        let result = self.fetch_narinfo(hash).await;
        self.metrics.observe(RequestKind::Narinfo, started, &result);
        // Only outages move the back-off.
        self.health.observe(&result);
        match &result {
            Ok(NarinfoAnswer::Rejected(why, reason)) => {
                tracing::warn!(source = %self.id(), hash = %hash, reason = ?reason, "bucket narinfo rejected");
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.metrics.rejected(*why, reason);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(source = %self.id(), hash = %hash, error = %e, "bucket narinfo request failed");
            }
        }
        result
    }

    async fn fetch_narinfo(&self, hash: &StoreHash) -> Result<NarinfoAnswer, SourceError> {
        let Some(body) = self
            .bucket
            .get_small(&Bucket::narinfo_name(hash), MAX_NARINFO_BYTES as u64)
            .await?
        else {
            return Ok(NarinfoAnswer::Absent);
        };
        let rejected = |why, reason: String| Ok(NarinfoAnswer::Rejected(why, reason));
        let Ok(text) = String::from_utf8(body.to_vec()) else {
            return rejected(Rejection::Invalid, "narinfo is not UTF-8".into());
        };
        let narinfo = match NarInfo::parse(&text) {
            Ok(n) => n,
            Err(e) => return rejected(Rejection::Invalid, format!("invalid narinfo: {e}")),
        };
        if narinfo.store_path.hash != *hash {
            return rejected(
                Rejection::StorePath,
                "StorePath does not match its key".into(),
            );
        }
        if !self.trust.accepts(&narinfo) {
            return rejected(
                Rejection::Signature,
                "no valid signature by a key trusted for the bucket".into(),
            );
        }
        if !crate::verify::supported(narinfo.compression) {
            return rejected(
                Rejection::Compression,
                "compression cannot be verified".into(),
            );
        }
        // Appliances write only canonical narinfos: anything else was not written by one.
        let name = NarName::for_narinfo(&narinfo);
        let Some(name) = name.filter(|n| n.url_path() == narinfo.url) else {
            return rejected(
                Rejection::NarUrl,
                "URL is not the canonical nar/<FileHash>.nar<ext>".into(),
            );
        };
        Ok(NarinfoAnswer::Found {
            nar_url: name.url_path(),
            narinfo: Box::new(narinfo),
        })
    }

    /// Starts the download of a NAR in the bucket (`url` as recorded: `nar/<name>`), whole.
    pub async fn get_nar(&self, url: &str) -> Result<reqwest::Response, SourceError> {
        self.get_range(url, None).await
    }

    /// Starts the download of a NAR in the bucket, whole or from `range` (first, optional last).
    pub async fn get_range(
        &self,
        url: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<reqwest::Response, SourceError> {
        let started = Instant::now();
        let result = self.bucket.get(url, range).await.map_err(SourceError::from);
        self.metrics.observe(RequestKind::Nar, started, &result);
        // A missing object is not a bucket that is down: only outages move the back-off.
        self.health.observe(&result);
        result
    }
}

impl Sources {
    /// Adds the shared bucket, asked before every upstream.
    pub fn with_bucket(mut self, bucket: BucketSource) -> Sources {
        self.bucket = Some(bucket);
        self
    }

    /// The shared bucket, if configured.
    pub fn bucket(&self) -> Option<&BucketSource> {
        self.bucket.as_ref()
    }

    /// The bucket first, then every upstream: the bucket is on the LAN and holds what every appliance
    /// fetched, so a path found there costs no upstream request. A bucket that cannot answer makes an
    /// "absent everywhere" a failure (502/504), never a 404.
    pub async fn lookup_all(&self, hash: &StoreHash) -> Lookup {
        let Some(bucket) = &self.bucket else {
            return self.lookup(hash).await;
        };
        let failed = match bucket.narinfo(hash).await {
            Ok(NarinfoAnswer::Found { narinfo, nar_url }) => {
                return Lookup::Found {
                    source: bucket.id().to_string(),
                    narinfo,
                    nar_url,
                };
            }
            Ok(NarinfoAnswer::Absent | NarinfoAnswer::Rejected(..)) => None,
            Err(e) => Some(e),
        };
        match (self.lookup(hash).await, failed) {
            (Lookup::Absent, Some(e)) => Lookup::Failed(e),
            (other, _) => other,
        }
    }
}
