//! The appliance's Prometheus metrics: one registry per [`crate::app::App`] (never a global), the handles
//! the serving path records into, and the totals that `/_status` and the status page show.
//!
//! Labels come only from small fixed sets: route templates, methods, statuses, results, and the names of
//! the configured sources. A source recorded in the index that is no longer configured is [`OTHER_SOURCE`].
//! Every label combination a dashboard sums over is created at start, so panels show 0 instead of nothing.

mod handles;
mod http;
mod labels;
mod lan;
mod limits;
mod push;
mod source;
mod traffic;

use std::sync::Arc;

use prometheus::{IntCounter, TextEncoder};

use crate::activity::{Activity, EventKind};
use crate::index::IndexStats;
use crate::sources::HealthSnapshot;
use handles::Inner;
pub use http::{HttpMetrics, METHODS, method_index};
pub use labels::{
    CHECKS, FILL_FAILURE_REASONS, FROM_DISK, FillOutcome, NO_SOURCE, NarResult, NarinfoResult,
    OTHER_SOURCE, PUSH_SOURCE_PREFIX, RequestKind, SourceName,
};
pub use lan::{TranscodeTotals, WARM_NAR_RESULTS};
pub use limits::{DropReason, LimitMetrics};
pub use push::{NO_TOKEN, PUSH_KINDS, PUSH_REASONS, PushTotals};
pub use source::SourceMetrics;
pub use traffic::Traffic;

/// The metric handles and the registry they are in. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// What the appliance looks like at scrape time, for the gauges that are read rather than kept.
pub struct Snapshot<'a> {
    /// Index and store counts.
    pub index: IndexStats,
    /// The store cap.
    pub max_bytes: u64,
    /// Fills running.
    pub fills_in_flight: usize,
    /// Each configured source's health, by name.
    pub health: Vec<(&'a str, HealthSnapshot)>,
    /// The OCI source's (name, entries, unix time of the last successful refresh).
    pub oci_index: Option<(&'a str, u64, Option<u64>)>,
    /// Whether the index takes writes.
    pub index_writable: bool,
    /// Bytes reserved by running downloads.
    pub reserved_bytes: u64,
    /// Bytes free on the data folder's filesystem.
    pub fs_free_bytes: u64,
}

impl Metrics {
    /// A registry with every metric, and the label sets of `sources` created at zero.
    pub fn new(sources: Vec<SourceName>) -> Metrics {
        Metrics {
            inner: Arc::new(Inner::new(sources)),
        }
    }

    /// What the connection and lookup limits did.
    pub fn limits(&self) -> &LimitMetrics {
        &self.inner.limits
    }

    /// The recent activity the status page shows.
    pub fn activity(&self) -> &Activity {
        &self.inner.activity
    }

    /// The handle a source records its requests with.
    pub fn source(&self, name: &str) -> SourceMetrics {
        SourceMetrics {
            target: Some((self.clone(), self.source_label(name).into())),
        }
    }

    /// The label of a source as recorded in the index: its name when configured, [`OTHER_SOURCE`] if not.
    pub fn source_label<'a>(&'a self, recorded: &str) -> &'a str {
        self.source_index(recorded)
            .map_or(OTHER_SOURCE, |i| self.inner.sources[i].name.as_str())
    }

    /// The position of a configured source, by the name it is recorded under.
    fn source_index(&self, recorded: &str) -> Option<usize> {
        self.inner.sources.iter().position(|s| s.name == recorded)
    }

    /// The per-request HTTP counters for these route labels (the last one is where indexes past the end
    /// are counted). Every call shares the same series.
    pub fn http(&self, routes: &'static [&'static str]) -> HttpMetrics {
        assert!(!routes.is_empty(), "at least one route label");
        HttpMetrics::new(
            routes,
            self.inner.http_requests.clone(),
            self.inner.http_duration.clone(),
        )
    }

    /// Counts a narinfo answer. `source` is the recorded source name (ignored for misses and errors).
    pub fn narinfo(&self, result: NarinfoResult, source: &str) {
        let resolved = &self.inner.resolved;
        if !result.has_source() {
            resolved.narinfo_no_source[result.index()].inc();
            return;
        }
        match self.source_index(source) {
            Some(i) => resolved.narinfo[i][result.index()].inc(),
            None => self
                .inner
                .narinfo_requests
                .with_label_values(&[result.as_str(), OTHER_SOURCE])
                .inc(),
        }
    }

    /// Counts a NAR answer; `source` is the one recorded for the NAR.
    pub fn nar(&self, result: NarResult, source: &str) {
        match self.source_index(source) {
            Some(i) => self.inner.resolved.nar[i][result.index()].inc(),
            None => self
                .inner
                .nar_requests
                .with_label_values(&[result.as_str(), OTHER_SOURCE])
                .inc(),
        }
    }

    /// The counter of bytes sent to clients from disk (`source` = None) or from a download from `source`.
    pub fn served_bytes(&self, source: Option<&str>) -> IntCounter {
        match source {
            None => self.inner.resolved.served_from_disk.clone(),
            Some(s) => self
                .inner
                .served_bytes
                .with_label_values(&[self.source_label(s)]),
        }
    }

    /// The counter of bytes downloaded from `source`.
    pub fn fetched_bytes(&self, source: &str) -> IntCounter {
        self.inner
            .fetched_bytes
            .with_label_values(&[self.source_label(source)])
    }

    /// Counts a finished fill and notes it in the recent activity.
    pub fn fill_finished(&self, source: &str, nar: &str, outcome: &FillOutcome) {
        let label = self.source_label(source);
        let i = &self.inner;
        match *outcome {
            FillOutcome::Stored(size) => {
                i.fills.with_label_values(&[label, "stored"]).inc();
                i.activity.record(
                    EventKind::Stored,
                    format!("stored NAR {nar} ({}) from {label}", human_bytes(size)),
                );
            }
            FillOutcome::Rejected(check) => {
                i.fills.with_label_values(&[label, "rejected"]).inc();
                i.verification_failures
                    .with_label_values(&[label, check])
                    .inc();
                i.activity.record(
                    EventKind::Rejected,
                    format!("NAR {nar} from {label} failed its {check} check; not stored"),
                );
            }
            FillOutcome::Failed(reason) => {
                i.fills.with_label_values(&[label, "failed"]).inc();
                i.fill_failures.with_label_values(&[label, reason]).inc();
                i.activity.record(
                    EventKind::Failed,
                    format!(
                        "NAR {nar} from {label}: download {}",
                        reason.replace('_', " ")
                    ),
                );
            }
        }
    }

    /// Counts a recorded narinfo that today's trust policy no longer serves.
    pub fn trust_dropped(&self, source_gone: bool) {
        let reason = if source_gone {
            "source_gone"
        } else {
            "refused"
        };
        self.inner.trust_dropped.with_label_values(&[reason]).inc();
    }

    /// Counts what one index GC pass removed.
    pub fn index_collected(&self, narinfos: usize, nars: usize) {
        let i = &self.inner;
        i.index_collected
            .with_label_values(&["narinfo"])
            .inc_by(narinfos as u64);
        i.index_collected
            .with_label_values(&["nar"])
            .inc_by(nars as u64);
    }

    /// Counts NARs the scrub (or a read) found damaged on disk.
    pub fn damaged(&self, nars: usize) {
        self.inner.store_damaged.inc_by(nars as u64);
        if nars > 0 {
            self.inner.activity.record(
                EventKind::Rejected,
                format!(
                    "{nars} stored NAR file(s) failed their hash check and will be fetched again"
                ),
            );
        }
    }

    /// Counts a background task restarted after it panicked.
    pub fn task_restarted(&self, task: &'static str) {
        self.inner.task_restarts.inc();
        self.inner.activity.record(
            EventKind::Failed,
            format!("background task {task} failed and was restarted"),
        );
    }

    /// Counts bytes the scrub read.
    pub fn scrubbed(&self, bytes: u64) {
        self.inner.scrubbed_bytes.inc_by(bytes);
    }

    /// Counts NARs evicted under the cap and notes it in the recent activity.
    pub fn evicted(&self, nars: usize, bytes: u64) {
        if nars == 0 {
            return;
        }
        self.inner.evictions.inc_by(nars as u64);
        self.inner.evicted_bytes.inc_by(bytes);
        self.inner.activity.record(
            EventKind::Evicted,
            format!(
                "evicted {nars} least recently used NARs ({})",
                human_bytes(bytes)
            ),
        );
    }

    /// Notes a narinfo recorded from a source in the recent activity.
    pub fn fetched_narinfo(&self, store_path: &str, source: &str) {
        self.inner.activity.record(
            EventKind::Fetched,
            format!("{store_path} from {}", self.source_label(source)),
        );
    }

    /// The Prometheus text exposition, with the read-at-scrape gauges set from `snapshot` first.
    pub fn render(&self, snapshot: &Snapshot<'_>) -> Result<String, prometheus::Error> {
        let i = &self.inner;
        i.store_bytes.set(clamp(snapshot.index.store_bytes));
        i.store_nars.set(clamp(snapshot.index.nars_stored));
        i.store_max_bytes.set(clamp(snapshot.max_bytes));
        i.index_narinfos.set(clamp(snapshot.index.narinfos));
        i.index_nars.set(clamp(snapshot.index.nars_known));
        i.index_negative.set(clamp(snapshot.index.negative));
        i.index_bytes.set(clamp(snapshot.index.file_bytes));
        i.index_writable.set(i64::from(snapshot.index_writable));
        i.reserved_bytes.set(clamp(snapshot.reserved_bytes));
        i.fs_free_bytes.set(clamp(snapshot.fs_free_bytes));
        i.fills_in_flight
            .set(clamp(snapshot.fills_in_flight as u64));
        for (name, health) in &snapshot.health {
            i.source_up
                .with_label_values(&[self.source_label(name)])
                .set(i64::from(health.healthy));
        }
        if let Some((name, entries, last_success)) = snapshot.oci_index {
            let label = self.source_label(name);
            i.index_entries
                .with_label_values(&[label])
                .set(clamp(entries));
            if let Some(at) = last_success {
                i.index_last_success
                    .with_label_values(&[label])
                    .set(clamp(at));
            }
        }
        TextEncoder::new().encode_to_string(&i.registry.gather())
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `1.5 MiB`-style sizes, for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(vec![
            SourceName {
                name: "http://up/".into(),
                oci: false,
            },
            SourceName {
                name: "oci:http://reg/o/r".into(),
                oci: true,
            },
        ])
    }

    #[test]
    fn unknown_sources_share_one_label() {
        let m = metrics();
        assert_eq!(m.source_label("http://up/"), "http://up/");
        assert_eq!(m.source_label("http://gone/"), OTHER_SOURCE);
        m.narinfo(NarinfoResult::Hit, "http://gone/");
        m.narinfo(NarinfoResult::Hit, "http://up/");
        m.narinfo(NarinfoResult::Miss, "http://up/");
        let t = m.traffic();
        assert_eq!((t.narinfo_hits, t.narinfo_misses), (2, 1));
        let text = m.render(&empty_snapshot()).unwrap();
        assert!(text.contains(r#"nixcache_narinfo_requests_total{result="hit",source="other"} 1"#));
        assert!(text.contains(r#"nixcache_narinfo_requests_total{result="miss",source="none"} 1"#));
    }

    fn empty_snapshot() -> Snapshot<'static> {
        Snapshot {
            index: IndexStats::default(),
            max_bytes: 1,
            fills_in_flight: 0,
            health: Vec::new(),
            oci_index: None,
            index_writable: true,
            reserved_bytes: 0,
            fs_free_bytes: 0,
        }
    }

    #[test]
    fn label_sets_exist_from_the_start() {
        let text = metrics().render(&empty_snapshot()).unwrap();
        for line in [
            r#"nixcache_source_errors_total{error="timeout",kind="narinfo",source="http://up/"} 0"#,
            r#"nixcache_index_refreshes_total{outcome="failed",source="oci:http://reg/o/r"} 0"#,
            r#"nixcache_served_bytes_total{from="disk"} 0"#,
            r#"nixcache_build_info{version=""#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // An OCI source asks for no narinfos; an upstream has no index.
        assert!(!text.contains(r#"kind="narinfo",source="oci:"#));
        assert!(
            !text.contains(
                r#"nixcache_index_refreshes_total{outcome="failed",source="http://up/"}"#
            )
        );
    }

    /// The handles resolved at start count into the same series as a label look-up would.
    #[test]
    fn resolved_handles_are_the_labelled_series() {
        let m = metrics();
        m.nar(NarResult::Hit, "http://up/");
        m.nar(NarResult::Hit, "http://gone/");
        m.narinfo(NarinfoResult::Negative, "http://up/");
        m.served_bytes(None).inc_by(5);
        let http = m.http(&["/a", "unmatched"]);
        http.observe(0, 0, 200, Duration::from_millis(1));
        http.observe(0, 1, 200, Duration::from_millis(1));
        http.observe(9, 9, 599, Duration::from_millis(1));
        let text = m.render(&empty_snapshot()).unwrap();
        for line in [
            r#"nixcache_nar_requests_total{result="hit",source="http://up/"} 1"#,
            r#"nixcache_nar_requests_total{result="hit",source="other"} 1"#,
            r#"nixcache_narinfo_requests_total{result="negative",source="none"} 1"#,
            r#"nixcache_served_bytes_total{from="disk"} 5"#,
            r#"nixcache_http_requests_total{method="GET",route="/a",status="200"} 1"#,
            r#"nixcache_http_requests_total{method="HEAD",route="/a",status="200"} 1"#,
            r#"nixcache_http_requests_total{method="other",route="unmatched",status="599"} 1"#,
            r#"nixcache_http_request_duration_seconds_count{method="GET",route="/a"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Series appear when they occur, not before.
        assert!(!text.contains(r#"method="POST",route="/a""#));
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4 << 20), "4.0 MiB");
    }
}
