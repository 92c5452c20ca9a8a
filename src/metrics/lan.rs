//! Metrics of issue 16: transcoding to zstd, warm jobs and pins. Registered in the appliance's one
//! registry by `handles::Inner::new`; every label set is created at zero.

use super::handles::register;
use prometheus::{Counter, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;

use super::Metrics;
use crate::activity::EventKind;

/// Outcomes of a transcode.
pub const TRANSCODE_RESULTS: [&str; 4] = ["transcoded", "beside_fill", "failed", "no_room"];
/// Outcomes of a warm job.
pub const WARM_OUTCOMES: [&str; 2] = ["done", "failed"];
/// What a warm job did with one NAR.
pub const WARM_NAR_RESULTS: [&str; 3] = ["already_stored", "fetched", "failed"];
/// What fetching ahead (issue 14) did with one narinfo or NAR.
pub const PREFETCH_RESULTS: [&str; 6] =
    ["fetched", "known", "absent", "skipped", "failed", "dropped"];

/// The handles.
pub(super) struct LanHandles {
    transcodes: IntCounterVec,
    transcode_in: IntCounter,
    transcode_out: IntCounter,
    transcode_cpu: Counter,
    transcode_queue: IntGauge,
    warm_jobs: IntCounterVec,
    warm_running: IntGauge,
    warm_nars: IntCounterVec,
    pins: IntGauge,
    pinned_bytes: IntGauge,
    prefetch: IntCounterVec,
}

impl LanHandles {
    pub(super) fn new(r: &Registry) -> LanHandles {
        let counter_vec = |name: &str, help: &str, label: &str, values: &[&str]| {
            let v = register(
                r,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter"),
            );
            for value in values {
                v.with_label_values(&[value]);
            }
            v
        };
        let counter =
            |name: &str, help: &str| register(r, IntCounter::new(name, help).expect("valid"));
        let gauge = |name: &str, help: &str| register(r, IntGauge::new(name, help).expect("valid"));
        LanHandles {
            transcodes: counter_vec(
                "nixcache_transcodes_total",
                "xz/bzip2 NARs re-encoded to zstd, by result (transcoded, beside_fill, failed, no_room).",
                "result",
                &TRANSCODE_RESULTS,
            ),
            transcode_in: counter(
                "nixcache_transcode_input_bytes_total",
                "Bytes of the original (xz/bzip2) files of transcoded NARs.",
            ),
            transcode_out: counter(
                "nixcache_transcode_output_bytes_total",
                "Bytes of the zstd files transcoding made.",
            ),
            transcode_cpu: register(
                r,
                Counter::new(
                    "nixcache_transcode_cpu_seconds_total",
                    "CPU time the transcoding threads spent (decode, encode, verify).",
                )
                .expect("valid"),
            ),
            transcode_queue: gauge(
                "nixcache_transcode_queue",
                "Stored NARs waiting to be transcoded.",
            ),
            warm_jobs: counter_vec(
                "nixcache_warm_jobs_total",
                "Warm jobs finished, by outcome (done, failed).",
                "outcome",
                &WARM_OUTCOMES,
            ),
            warm_running: gauge("nixcache_warm_jobs_running", "Warm jobs running now."),
            warm_nars: counter_vec(
                "nixcache_warm_nars_total",
                "NARs of warmed closures, by result (already_stored, fetched, failed).",
                "result",
                &WARM_NAR_RESULTS,
            ),
            pins: gauge("nixcache_pins", "Named pins."),
            pinned_bytes: gauge(
                "nixcache_pinned_bytes",
                "Bytes of stored NARs held by pins (never evicted).",
            ),
            prefetch: {
                let v = register(
                    r,
                    IntCounterVec::new(
                        Opts::new(
                            "nixcache_prefetch_total",
                            "Narinfos and NARs fetched ahead of a client's ask, by kind (narinfo, nar) and result (fetched, known, absent, skipped, failed, dropped).",
                        ),
                        &["kind", "result"],
                    )
                    .expect("valid counter"),
                );
                for kind in ["narinfo", "nar"] {
                    for result in PREFETCH_RESULTS {
                        v.with_label_values(&[kind, result]);
                    }
                }
                v
            },
        }
    }
}

/// The transcoding totals `/_status` shows.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TranscodeTotals {
    /// NARs transcoded since start (in the background or beside their fill).
    pub transcoded: u64,
    /// Of which made beside their fill, from its check's decompressed bytes (issue 14).
    pub beside_fill: u64,
    /// Transcodes that failed.
    pub failed: u64,
    /// Transcodes skipped for lack of room.
    pub no_room: u64,
    /// Bytes of the originals.
    pub input_bytes: u64,
    /// Bytes of the zstd files.
    pub output_bytes: u64,
    /// CPU seconds spent.
    pub cpu_seconds: f64,
}

impl Metrics {
    /// Counts one narinfo or NAR fetched ahead (`prefetch.rs`): `kind` is `narinfo` or `nar`, `result`
    /// one of [`PREFETCH_RESULTS`].
    pub fn prefetch(&self, kind: &str, result: &str) {
        self.inner
            .lan
            .prefetch
            .with_label_values(&[kind, result])
            .inc();
    }

    /// Tests: how many [`Metrics::prefetch`] counted under `kind` and `result`.
    #[cfg(test)]
    pub(crate) fn prefetch_count(&self, kind: &str, result: &str) -> u64 {
        self.inner
            .lan
            .prefetch
            .with_label_values(&[kind, result])
            .get()
    }

    /// Counts a NAR transcoded (in the background, or `beside_fill`): file sizes before and after.
    pub fn transcoded(&self, nar: &str, before: u64, after: u64, beside_fill: bool) {
        let l = &self.inner.lan;
        let result = if beside_fill {
            "beside_fill"
        } else {
            "transcoded"
        };
        l.transcodes.with_label_values(&[result]).inc();
        l.transcode_in.inc_by(before);
        l.transcode_out.inc_by(after);
        self.inner.activity.record(
            EventKind::Stored,
            format!(
                "transcoded NAR {nar} to zstd ({} → {})",
                super::human_bytes(before),
                super::human_bytes(after)
            ),
        );
    }

    /// Counts a transcode that did not happen: `no_room`, or `failed` (noted in the activity).
    pub fn transcode_failed(&self, nar: &str, no_room: bool) {
        let result = if no_room { "no_room" } else { "failed" };
        self.inner.lan.transcodes.with_label_values(&[result]).inc();
        if !no_room {
            self.inner.activity.record(
                EventKind::Failed,
                format!("transcoding NAR {nar} to zstd failed; the original is served"),
            );
        }
    }

    /// Adds CPU time spent transcoding.
    pub fn transcode_cpu(&self, seconds: f64) {
        if seconds > 0.0 {
            self.inner.lan.transcode_cpu.inc_by(seconds);
        }
    }

    /// Sets the number of NARs waiting to be transcoded.
    pub fn transcode_queue(&self, waiting: usize) {
        self.inner.lan.transcode_queue.set(waiting as i64);
    }

    /// Totals since start.
    pub fn transcode_totals(&self) -> TranscodeTotals {
        let l = &self.inner.lan;
        let n = |r: &str| l.transcodes.with_label_values(&[r]).get();
        TranscodeTotals {
            transcoded: n("transcoded") + n("beside_fill"),
            beside_fill: n("beside_fill"),
            failed: n("failed"),
            no_room: n("no_room"),
            input_bytes: l.transcode_in.get(),
            output_bytes: l.transcode_out.get(),
            cpu_seconds: l.transcode_cpu.get(),
        }
    }

    /// A warm job started (`true`) or finished (`false`, with its outcome).
    pub fn warm_job(&self, started: bool, failed: bool) {
        let l = &self.inner.lan;
        if started {
            l.warm_running.inc();
            return;
        }
        l.warm_running.dec();
        let outcome = if failed { "failed" } else { "done" };
        l.warm_jobs.with_label_values(&[outcome]).inc();
    }

    /// Counts what a warm job did with one NAR (one of [`WARM_NAR_RESULTS`]).
    pub fn warm_nar(&self, result: &'static str) {
        self.inner.lan.warm_nars.with_label_values(&[result]).inc();
    }

    /// Sets the pin gauges.
    pub fn pins(&self, pins: usize, bytes: u64) {
        let l = &self.inner.lan;
        l.pins.set(pins as i64);
        l.pinned_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}
