//! The metric handles: every metric's name, help, labels and buckets, registered in one registry, with
//! the label sets dashboards sum over created at zero.

use prometheus::core::Collector;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::labels::{
    CHECKS, FILL_FAILURE_REASONS, FILL_RESULTS, FROM_DISK, NO_SOURCE, NarResult, NarinfoResult,
    REFRESH_OUTCOMES, RequestKind, SOURCE_ERRORS, SourceName,
};
use crate::activity::Activity;
use crate::sources::Rejection;

/// Every metric handle, the registry they are in, and the sources the labels may name.
pub(super) struct Inner {
    pub(super) registry: Registry,
    pub(super) sources: Vec<SourceName>,
    pub(super) activity: Activity,
    pub(super) http_requests: IntCounterVec,
    pub(super) http_duration: HistogramVec,
    pub(super) narinfo_requests: IntCounterVec,
    pub(super) narinfo_rejected: IntCounterVec,
    pub(super) nar_requests: IntCounterVec,
    pub(super) served_bytes: IntCounterVec,
    pub(super) fetched_bytes: IntCounterVec,
    pub(super) fills: IntCounterVec,
    pub(super) fills_in_flight: IntGauge,
    pub(super) verification_failures: IntCounterVec,
    pub(super) source_requests: IntCounterVec,
    pub(super) source_errors: IntCounterVec,
    pub(super) source_duration: HistogramVec,
    pub(super) source_up: IntGaugeVec,
    pub(super) store_bytes: IntGauge,
    pub(super) store_max_bytes: IntGauge,
    pub(super) store_nars: IntGauge,
    pub(super) evictions: IntCounter,
    pub(super) evicted_bytes: IntCounter,
    pub(super) index_narinfos: IntGauge,
    pub(super) index_nars: IntGauge,
    pub(super) index_negative: IntGauge,
    pub(super) index_entries: IntGaugeVec,
    pub(super) index_refreshes: IntCounterVec,
    pub(super) index_refresh_duration: HistogramVec,
    pub(super) index_last_success: IntGaugeVec,
    pub(super) index_rejected: IntCounterVec,
    pub(super) fill_failures: IntCounterVec,
    pub(super) trust_dropped: IntCounterVec,
    pub(super) index_collected: IntCounterVec,
    pub(super) store_damaged: IntCounter,
    pub(super) scrubbed_bytes: IntCounter,
    pub(super) index_bytes: IntGauge,
    pub(super) index_writable: IntGauge,
    pub(super) reserved_bytes: IntGauge,
    pub(super) fs_free_bytes: IntGauge,
    pub(super) task_restarts: IntCounter,
    pub(super) push: super::push::PushHandles,
    pub(super) limits: super::limits::LimitMetrics,
    /// Issue 16: transcoding, warm jobs, pins.
    pub(super) lan: super::lan::LanHandles,
    /// The handles the serving path counts with, resolved once.
    pub(super) resolved: Resolved,
}

/// Handles of the label sets every hit counts into, resolved at start so that a hit does not hash
/// labels and take the vector's lock (what `with_label_values` does).
pub(super) struct Resolved {
    /// Per configured source (same order as `Inner::sources`): narinfo results with a source, by
    /// [`NarinfoResult::index`].
    pub(super) narinfo: Vec<[IntCounter; NarinfoResult::ALL.len()]>,
    /// Narinfo results without a source, by [`NarinfoResult::index`].
    pub(super) narinfo_no_source: [IntCounter; NarinfoResult::ALL.len()],
    /// Per configured source: NAR results, by [`NarResult::index`].
    pub(super) nar: Vec<[IntCounter; NarResult::ALL.len()]>,
    /// Bytes served from disk.
    pub(super) served_from_disk: IntCounter,
}

impl Resolved {
    fn new(
        sources: &[SourceName],
        narinfo: &IntCounterVec,
        nar: &IntCounterVec,
        served: &IntCounterVec,
    ) -> Resolved {
        // Only the label sets `create_label_sets` creates anyway: /metrics shows the same series.
        let with = |vec: &IntCounterVec, a: &str, b: &str| vec.with_label_values(&[a, b]);
        Resolved {
            narinfo: sources
                .iter()
                .map(|s| {
                    NarinfoResult::ALL.map(|r| {
                        let source = if r.has_source() { &s.name } else { NO_SOURCE };
                        with(narinfo, r.as_str(), source)
                    })
                })
                .collect(),
            narinfo_no_source: NarinfoResult::ALL.map(|r| with(narinfo, r.as_str(), NO_SOURCE)),
            nar: sources
                .iter()
                .map(|s| NarResult::ALL.map(|r| with(nar, r.as_str(), &s.name)))
                .collect(),
            served_from_disk: served.with_label_values(&[FROM_DISK]),
        }
    }
}

/// Registers `metric` in `registry` and returns it (names are fixed in code: a clash is a bug).
pub(super) fn register<T: Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

pub(super) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    register(registry, metric)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    register(registry, metric)
}

pub(super) fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid gauge"))
}

pub(super) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid counter"),
    )
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        registry,
        HistogramVec::new(opts, labels).expect("valid histogram"),
    )
}

/// Buckets of request latencies, from a narinfo hit (~0.1 ms) to a NAR streamed for a minute.
const HTTP_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets of requests to sources over the internet.
const SOURCE_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of index refreshes (a HEAD when unchanged; a large blob and a transaction otherwise).
const REFRESH_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

impl Inner {
    /// A registry with every metric, and the label sets of `sources` created at zero.
    pub(super) fn new(sources: Vec<SourceName>) -> Inner {
        let r = Registry::new();
        let narinfo_requests = counter_vec(
            &r,
            "nixcache_narinfo_requests_total",
            "Narinfo requests by result (hit, fetched, miss, negative, error) and source.",
            &["result", "source"],
        );
        let nar_requests = counter_vec(
            &r,
            "nixcache_nar_requests_total",
            "NAR requests by result (hit, miss, coalesced, error) and the source of the NAR.",
            &["result", "source"],
        );
        let served_bytes = counter_vec(
            &r,
            "nixcache_served_bytes_total",
            "NAR bytes sent to clients, by where they came from: disk, or the source being downloaded from.",
            &["from"],
        );
        let resolved = Resolved::new(&sources, &narinfo_requests, &nar_requests, &served_bytes);
        let inner = Inner {
            http_requests: counter_vec(
                &r,
                "nixcache_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: histogram_vec(
                &r,
                "nixcache_http_request_duration_seconds",
                "Time to the response headers, by route template and method.",
                &["route", "method"],
                &HTTP_BUCKETS,
            ),
            narinfo_requests,
            narinfo_rejected: counter_vec(
                &r,
                "nixcache_narinfo_rejected_total",
                "Narinfos a source answered that were refused, by reason.",
                &["source", "reason"],
            ),
            nar_requests,
            served_bytes,
            fetched_bytes: counter_vec(
                &r,
                "nixcache_fetched_bytes_total",
                "NAR bytes downloaded from each source.",
                &["source"],
            ),
            fills: counter_vec(
                &r,
                "nixcache_fills_total",
                "NAR downloads finished, by source and result (stored, failed, rejected).",
                &["source", "result"],
            ),
            fills_in_flight: gauge(&r, "nixcache_fills_in_flight", "NAR downloads running now."),
            verification_failures: counter_vec(
                &r,
                "nixcache_verification_failures_total",
                "Signature and hash checks that failed, by source and check.",
                &["source", "check"],
            ),
            source_requests: counter_vec(
                &r,
                "nixcache_source_requests_total",
                "Requests sent to sources, by source and kind (narinfo, nar, index).",
                &["source", "kind"],
            ),
            source_errors: counter_vec(
                &r,
                "nixcache_source_errors_total",
                "Failed requests to sources, by source, kind and error.",
                &["source", "kind", "error"],
            ),
            source_duration: histogram_vec(
                &r,
                "nixcache_source_request_duration_seconds",
                "Time until a source answered (headers, or the whole narinfo), by source and kind.",
                &["source", "kind"],
                &SOURCE_BUCKETS,
            ),
            source_up: gauge_vec(
                &r,
                "nixcache_source_up",
                "1 when the source's last request succeeded, 0 after a failure.",
                &["source"],
            ),
            store_bytes: gauge(&r, "nixcache_store_bytes", "Bytes of NAR files on disk."),
            store_max_bytes: gauge(
                &r,
                "nixcache_store_max_bytes",
                "The store's size cap (max_size).",
            ),
            store_nars: gauge(&r, "nixcache_store_nars", "NAR files on disk."),
            fill_failures: counter_vec(
                &r,
                "nixcache_fill_failures_total",
                "NAR downloads that stopped without a bad file, by source and reason (source, too_slow, abandoned, no_room, busy, shutdown, local, internal).",
                &["source", "reason"],
            ),
            trust_dropped: counter_vec(
                &r,
                "nixcache_trust_dropped_total",
                "Recorded narinfos no longer served because today's trust policy refuses them or their source is gone.",
                &["reason"],
            ),
            index_collected: counter_vec(
                &r,
                "nixcache_index_collected_total",
                "Index rows removed by the index GC (narinfo rows, unreferenced stored NARs).",
                &["what"],
            ),
            store_damaged: counter(
                &r,
                "nixcache_store_damaged_total",
                "Stored NAR files found damaged (hash mismatch, missing, wrong size) and dropped.",
            ),
            scrubbed_bytes: counter(
                &r,
                "nixcache_scrubbed_bytes_total",
                "Bytes of stored NAR files re-hashed by the background scrub.",
            ),
            index_bytes: gauge(&r, "nixcache_index_bytes", "Size of the index file."),
            task_restarts: counter(
                &r,
                "nixcache_task_restarts_total",
                "Background tasks restarted after they panicked (the log and the status page name the task).",
            ),
            index_writable: gauge(
                &r,
                "nixcache_index_writable",
                "1 while the index takes writes, 0 while it is broken by a disk error (see /healthz).",
            ),
            reserved_bytes: gauge(
                &r,
                "nixcache_reserved_bytes",
                "Bytes reserved in the disk budget by running downloads.",
            ),
            fs_free_bytes: gauge(
                &r,
                "nixcache_fs_free_bytes",
                "Bytes free on the data folder's filesystem.",
            ),
            evictions: counter(
                &r,
                "nixcache_evictions_total",
                "NAR files evicted to stay under the cap.",
            ),
            evicted_bytes: counter(
                &r,
                "nixcache_evicted_bytes_total",
                "Bytes of NAR files evicted.",
            ),
            index_narinfos: gauge(
                &r,
                "nixcache_index_narinfos",
                "Narinfos recorded in the index.",
            ),
            index_nars: gauge(
                &r,
                "nixcache_index_nars",
                "NAR records in the index (stored or not).",
            ),
            index_negative: gauge(
                &r,
                "nixcache_index_negative_entries",
                "Remembered misses in the index (expired ones until purged).",
            ),
            index_entries: gauge_vec(
                &r,
                "nixcache_index_entries",
                "Narinfos mirrored from the OCI source's index.",
                &["source"],
            ),
            index_refreshes: counter_vec(
                &r,
                "nixcache_index_refreshes_total",
                "OCI index refreshes by outcome (unchanged, applied, not_published, failed).",
                &["source", "outcome"],
            ),
            index_refresh_duration: histogram_vec(
                &r,
                "nixcache_index_refresh_duration_seconds",
                "Time an OCI index refresh took.",
                &["source"],
                &REFRESH_BUCKETS,
            ),
            index_last_success: gauge_vec(
                &r,
                "nixcache_index_last_success_timestamp_seconds",
                "Unix time of the last successful OCI index refresh (absent until one succeeded).",
                &["source"],
            ),
            index_rejected: counter_vec(
                &r,
                "nixcache_index_rejected_entries_total",
                "OCI index entries refused, by reason.",
                &["source", "reason"],
            ),
            push: super::push::PushHandles::new(&r, &sources),
            limits: super::limits::LimitMetrics::new(&r),
            lan: super::lan::LanHandles::new(&r),
            registry: r,
            sources,
            resolved,
            activity: Activity::default(),
        };
        let build = gauge_vec(
            &inner.registry,
            "nixcache_build_info",
            "Always 1; the version in a label.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        gauge(
            &inner.registry,
            "nixcache_start_time_seconds",
            "Unix time the appliance started.",
        )
        .set(crate::clock::unix_now() as i64);
        inner.create_label_sets();
        inner
    }

    /// Creates, at zero, every label combination the dashboards and the status page sum over.
    fn create_label_sets(&self) {
        for r in NarinfoResult::ALL.iter().filter(|r| !r.has_source()) {
            self.narinfo_requests
                .with_label_values(&[r.as_str(), NO_SOURCE]);
        }
        self.served_bytes.with_label_values(&[FROM_DISK]);
        for reason in ["source_gone", "refused"] {
            self.trust_dropped.with_label_values(&[reason]);
        }
        for what in ["narinfo", "nar"] {
            self.index_collected.with_label_values(&[what]);
        }
        for s in &self.sources {
            let name = s.name.as_str();
            for r in NarinfoResult::ALL.iter().filter(|r| r.has_source()) {
                self.narinfo_requests.with_label_values(&[r.as_str(), name]);
            }
            for r in NarResult::ALL {
                self.nar_requests.with_label_values(&[r.as_str(), name]);
            }
            self.served_bytes.with_label_values(&[name]);
            // What a LAN builder pushed is never asked for nor downloaded (issue 12).
            if s.push_token().is_some() {
                continue;
            }
            self.fetched_bytes.with_label_values(&[name]);
            for r in FILL_RESULTS {
                self.fills.with_label_values(&[name, r]);
            }
            for reason in FILL_FAILURE_REASONS {
                self.fill_failures.with_label_values(&[name, reason]);
            }
            for c in CHECKS {
                self.verification_failures.with_label_values(&[name, c]);
            }
            for reason in Rejection::ALL {
                let rejected = if s.oci {
                    &self.index_rejected
                } else {
                    &self.narinfo_rejected
                };
                rejected.with_label_values(&[name, reason.as_str()]);
            }
            let kinds: &[RequestKind] = if s.oci {
                &[RequestKind::Nar, RequestKind::Index]
            } else {
                &[RequestKind::Narinfo, RequestKind::Nar]
            };
            for kind in kinds {
                self.source_requests
                    .with_label_values(&[name, kind.as_str()]);
                for e in SOURCE_ERRORS {
                    self.source_errors
                        .with_label_values(&[name, kind.as_str(), e]);
                }
            }
            if s.oci {
                for o in REFRESH_OUTCOMES {
                    self.index_refreshes.with_label_values(&[name, o]);
                }
            }
        }
    }
}
