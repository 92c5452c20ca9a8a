//! What a source (an upstream cache, the OCI source) records its requests, failures and refusals with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Metrics;
use super::labels::{RequestKind, error_label};
use crate::activity::EventKind;
use crate::sources::oci::{RefreshError, Refreshed};
use crate::sources::{Rejection, SourceError};

/// What a source records its requests with. The default records nothing (sources used by the
/// publishing commands, which have no appliance around them).
#[derive(Clone, Default)]
pub struct SourceMetrics {
    pub(super) target: Option<(Metrics, Arc<str>)>,
}

impl SourceMetrics {
    /// Counts a request sent at `started` and its outcome.
    pub fn observe<T>(&self, kind: RequestKind, started: Instant, result: &Result<T, SourceError>) {
        let Some((m, source)) = &self.target else {
            return;
        };
        let labels = [source.as_ref(), kind.as_str()];
        m.inner.source_requests.with_label_values(&labels).inc();
        m.inner
            .source_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            m.inner
                .source_errors
                .with_label_values(&[source.as_ref(), kind.as_str(), error_label(e)])
                .inc();
        }
    }

    /// Counts a request not sent because the source is backed off.
    pub fn backed_off(&self, kind: RequestKind) {
        if let Some((m, source)) = &self.target {
            m.inner
                .source_errors
                .with_label_values(&[source.as_ref(), kind.as_str(), "backed_off"])
                .inc();
        }
    }

    /// Counts a refused narinfo (a bad signature also as a failed verification) and notes it.
    pub fn rejected(&self, why: Rejection, reason: &str) {
        if let Some((m, source)) = &self.target {
            m.inner
                .narinfo_rejected
                .with_label_values(&[source.as_ref(), why.as_str()])
                .inc();
            self.signature_failure(why);
            m.inner.activity.record(
                EventKind::Rejected,
                format!("narinfo from {source} refused: {reason}"),
            );
        }
    }

    /// Counts a refused OCI index entry (logged, not noted: an index can hold thousands).
    pub fn entry_rejected(&self, why: Rejection, _reason: &str) {
        if let Some((m, source)) = &self.target {
            m.inner
                .index_rejected
                .with_label_values(&[source.as_ref(), why.as_str()])
                .inc();
            self.signature_failure(why);
        }
    }

    fn signature_failure(&self, why: Rejection) {
        if let (Some((m, source)), Rejection::Signature) = (&self.target, why) {
            m.inner
                .verification_failures
                .with_label_values(&[source.as_ref(), "signature"])
                .inc();
        }
    }

    /// Counts an index refresh and how it ended; notes the ones that changed something or failed.
    pub fn refreshed(&self, result: &Result<Refreshed, RefreshError>, took: Duration) {
        let Some((m, source)) = &self.target else {
            return;
        };
        let outcome = match result {
            Ok(Refreshed::Unchanged { .. }) => "unchanged",
            Ok(Refreshed::NotPublished) => "not_published",
            Ok(Refreshed::Applied { .. }) => "applied",
            Err(_) => "failed",
        };
        let i = &m.inner;
        i.index_refreshes
            .with_label_values(&[source.as_ref(), outcome])
            .inc();
        i.index_refresh_duration
            .with_label_values(&[source.as_ref()])
            .observe(took.as_secs_f64());
        i.source_requests
            .with_label_values(&[source.as_ref(), RequestKind::Index.as_str()])
            .inc();
        match result {
            Ok(Refreshed::Applied {
                applied, rejected, ..
            }) => i.activity.record(
                EventKind::Refreshed,
                format!(
                    "index of {source} applied: {} entries written, {} unchanged, {} removed, {rejected} refused",
                    applied.written, applied.unchanged, applied.removed
                ),
            ),
            Ok(_) => {}
            Err(e) => {
                let error = match e {
                    RefreshError::Timeout => "timeout",
                    RefreshError::Registry(r) if r.is_timeout() => "timeout",
                    RefreshError::Registry(_) => "registry",
                    RefreshError::Format(_) => "format",
                    RefreshError::Index(_) | RefreshError::Task(_) => "internal",
                };
                i.source_errors
                    .with_label_values(&[source.as_ref(), RequestKind::Index.as_str(), error])
                    .inc();
                let reason = match e {
                    RefreshError::Index(_) | RefreshError::Task(_) => {
                        "local index error (see the log)".to_string()
                    }
                    other => other.to_string(),
                };
                i.activity.record(
                    EventKind::Failed,
                    format!("index refresh of {source} failed: {reason}"),
                );
            }
        }
    }
}
