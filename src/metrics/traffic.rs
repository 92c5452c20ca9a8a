//! The totals since start that `/_status` and the status page show, read back from the counters.

use prometheus::IntCounterVec;
use prometheus::core::Collector;
use serde::Serialize;

use super::Metrics;
use super::labels::{FROM_DISK, NarResult, NarinfoResult};

impl Metrics {
    /// Totals since start, for `/_status` and the status page.
    pub fn traffic(&self) -> Traffic {
        let i = &self.inner;
        let narinfo = |r: NarinfoResult| sum(&i.narinfo_requests, &[("result", r.as_str())]);
        let nar = |r: NarResult| sum(&i.nar_requests, &[("result", r.as_str())]);
        let fills = |r: &str| sum(&i.fills, &[("result", r)]);
        let disk = sum(&i.served_bytes, &[("from", FROM_DISK)]);
        let served = sum(&i.served_bytes, &[]);
        let (hits, fetched) = (narinfo(NarinfoResult::Hit), narinfo(NarinfoResult::Fetched));
        Traffic {
            narinfo_hits: hits,
            narinfo_fetched: fetched,
            narinfo_misses: narinfo(NarinfoResult::Miss),
            narinfo_negative: narinfo(NarinfoResult::Negative),
            narinfo_errors: narinfo(NarinfoResult::Error),
            narinfo_rejected: sum(&i.narinfo_rejected, &[]),
            narinfo_hit_ratio: ratio(hits, hits + fetched),
            nar_hits: nar(NarResult::Hit),
            nar_misses: nar(NarResult::Miss),
            nar_coalesced: nar(NarResult::Coalesced),
            nar_errors: nar(NarResult::Error),
            fills_stored: fills("stored"),
            fills_failed: fills("failed"),
            fills_rejected: fills("rejected"),
            served_bytes: served,
            served_from_disk_bytes: disk,
            fetched_bytes: sum(&i.fetched_bytes, &[]),
            disk_byte_ratio: ratio(disk, served),
            evicted_nars: i.evictions.get(),
            evicted_bytes: i.evicted_bytes.get(),
        }
    }
}

/// Totals since start (counters of this process, not of the index).
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    /// Narinfos answered from the index.
    pub narinfo_hits: u64,
    /// Narinfos not in the index that a source had.
    pub narinfo_fetched: u64,
    /// Narinfos no source has (404).
    pub narinfo_misses: u64,
    /// 404s from remembered misses.
    pub narinfo_negative: u64,
    /// Narinfo requests that failed because sources did (502/504).
    pub narinfo_errors: u64,
    /// Narinfos sources answered that were refused.
    pub narinfo_rejected: u64,
    /// hits / (hits + fetched): the share of existing narinfos answered without asking a source.
    pub narinfo_hit_ratio: Option<f64>,
    /// NAR requests served from disk.
    pub nar_hits: u64,
    /// NAR requests that started a download.
    pub nar_misses: u64,
    /// NAR requests that joined a running download.
    pub nar_coalesced: u64,
    /// NAR requests whose download failed before its first byte.
    pub nar_errors: u64,
    /// Downloads verified and stored.
    pub fills_stored: u64,
    /// Downloads that failed (source, stall, local error).
    pub fills_failed: u64,
    /// Downloads refused by a size or hash check.
    pub fills_rejected: u64,
    /// NAR bytes sent to clients.
    pub served_bytes: u64,
    /// Of which from the disk.
    pub served_from_disk_bytes: u64,
    /// NAR bytes downloaded from sources.
    pub fetched_bytes: u64,
    /// served_from_disk_bytes / served_bytes.
    pub disk_byte_ratio: Option<f64>,
    /// NAR files evicted.
    pub evicted_nars: u64,
    /// Bytes evicted.
    pub evicted_bytes: u64,
}

/// Sum of a counter family's series whose labels include all of `filter`.
pub(super) fn sum(vec: &IntCounterVec, filter: &[(&str, &str)]) -> u64 {
    let mut total = 0.0;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels = metric.get_label();
            let wanted = filter.iter().all(|(name, value)| {
                labels
                    .iter()
                    .any(|l| l.name() == *name && l.value() == *value)
            });
            if wanted {
                total += metric.get_counter().get_value();
            }
        }
    }
    total as u64
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ratio_of_nothing_is_none() {
        assert_eq!(super::ratio(1, 0), None);
        assert_eq!(super::ratio(1, 4), Some(0.25));
    }
}
