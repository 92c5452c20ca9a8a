//! The metrics of LAN pushes (issue 12), by token name: uploads accepted and refused (with why), NAR
//! bytes received, what each token has stored, and the uploads waiting for their narinfo.
//!
//! The token names come from the configured sources named `push:<token>`; `none` labels uploads
//! without a valid token.

use super::handles::register;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::Metrics;
use super::labels::SourceName;
use crate::activity::EventKind;

/// `token` label of uploads without a valid token.
pub const NO_TOKEN: &str = "none";
/// The `kind` of an upload: a NAR file, a narinfo, or another file Nix may send (`nix-cache-info`,
/// listings, debug info, logs).
pub const PUSH_KINDS: [&str; 3] = ["nar", "narinfo", "other"];
/// Why an upload was refused: the `reason` label (kept in step with `PushError::reason`; checked by the test in `push/error.rs`).
pub const PUSH_REASONS: [&str; 16] = [
    "unauthorized",
    "forbidden",
    "scope",
    "signature",
    "invalid",
    "compression",
    "unsupported",
    "file_hash",
    "nar_hash",
    "conflict",
    "missing_nar",
    "quota",
    "push_full",
    "no_room",
    "cut_off",
    "internal",
];

/// The push metric handles.
pub(super) struct PushHandles {
    uploads: IntCounterVec,
    refused: IntCounterVec,
    received_bytes: IntCounterVec,
    stored_bytes: IntGaugeVec,
    stored_paths: IntGaugeVec,
    pending: IntGauge,
}

impl PushHandles {
    /// Registers the push metrics and creates the label sets of the tokens among `sources` at zero.
    pub(super) fn new(r: &Registry, sources: &[SourceName]) -> PushHandles {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                r,
                IntGaugeVec::new(Opts::new(name, help), &["token"]).expect("valid gauge"),
            )
        };
        let h = PushHandles {
            uploads: counter(
                "nixcache_push_uploads_total",
                "PUT requests of LAN builders, by token, kind (nar, narinfo, other) and result (accepted, refused).",
                &["token", "kind", "result"],
            ),
            refused: counter(
                "nixcache_push_refused_total",
                "Refused uploads by token and reason.",
                &["token", "reason"],
            ),
            received_bytes: counter(
                "nixcache_push_received_bytes_total",
                "NAR bytes received from LAN builders, by token (refused uploads included).",
                &["token"],
            ),
            stored_bytes: gauge(
                "nixcache_push_stored_bytes",
                "Bytes of pushed NAR files stored, by token.",
            ),
            stored_paths: gauge(
                "nixcache_push_stored_paths",
                "Pushed paths stored, by token.",
            ),
            pending: register(
                r,
                IntGauge::new(
                    "nixcache_push_pending",
                    "NAR uploads waiting for their narinfo.",
                )
                .expect("valid gauge"),
            ),
        };
        for kind in PUSH_KINDS {
            h.uploads.with_label_values(&[NO_TOKEN, kind, "refused"]);
        }
        for reason in ["unauthorized", "forbidden"] {
            h.refused.with_label_values(&[NO_TOKEN, reason]);
        }
        for token in sources.iter().filter_map(SourceName::push_token) {
            for kind in PUSH_KINDS {
                for result in ["accepted", "refused"] {
                    h.uploads.with_label_values(&[token, kind, result]);
                }
            }
            for reason in PUSH_REASONS {
                h.refused.with_label_values(&[token, reason]);
            }
            h.received_bytes.with_label_values(&[token]);
            h.stored_bytes.with_label_values(&[token]);
            h.stored_paths.with_label_values(&[token]);
        }
        h
    }
}

/// A token's totals since start, for `/_status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushTotals {
    /// Uploads accepted.
    pub accepted: u64,
    /// Uploads refused.
    pub refused: u64,
    /// NAR bytes received.
    pub received_bytes: u64,
}

impl Metrics {
    /// Counts an accepted upload.
    pub fn push_accepted(&self, token: &str, kind: &'static str) {
        self.inner
            .push
            .uploads
            .with_label_values(&[token, kind, "accepted"])
            .inc();
    }

    /// Counts a refused upload; `token` is `None` when the request had no valid token.
    pub fn push_refused(&self, token: Option<&str>, kind: &'static str, reason: &'static str) {
        let p = &self.inner.push;
        let token = token.unwrap_or(NO_TOKEN);
        p.uploads.with_label_values(&[token, kind, "refused"]).inc();
        p.refused.with_label_values(&[token, reason]).inc();
    }

    /// Counts NAR bytes received with `token`.
    pub fn push_received(&self, token: &str, bytes: u64) {
        self.inner
            .push
            .received_bytes
            .with_label_values(&[token])
            .inc_by(bytes);
    }

    /// Sets what `token` has stored.
    pub fn push_stored(&self, token: &str, bytes: u64, paths: u64) {
        let p = &self.inner.push;
        p.stored_bytes
            .with_label_values(&[token])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        p.stored_paths
            .with_label_values(&[token])
            .set(i64::try_from(paths).unwrap_or(i64::MAX));
    }

    /// Sets the number of uploads waiting for their narinfo.
    pub fn push_pending(&self, pending: usize) {
        self.inner
            .push
            .pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// Notes a push in the recent activity (`stored`: accepted, else refused).
    pub fn push_event(&self, stored: bool, message: String) {
        let kind = if stored {
            EventKind::Stored
        } else {
            EventKind::Rejected
        };
        self.inner.activity.record(kind, message);
    }

    /// `token`'s totals since start.
    pub fn push_totals(&self, token: &str) -> PushTotals {
        let p = &self.inner.push;
        let sum = super::traffic::sum;
        PushTotals {
            accepted: sum(&p.uploads, &[("token", token), ("result", "accepted")]),
            refused: sum(&p.uploads, &[("token", token), ("result", "refused")]),
            received_bytes: sum(&p.received_bytes, &[("token", token)]),
        }
    }
}
