//! Per-request HTTP counting with handles resolved once, not per request.
//!
//! A `with_label_values` look-up hashes every label and takes a lock; on a narinfo hit that costs about
//! as much as the rest of the handler. Here each (route, method) pair gets its histogram and its
//! counters for the usual statuses the first time it is seen (so /metrics shows exactly the series that
//! occurred, as before) and keeps them; rarer statuses take the look-up.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

/// The `method` labels.
pub const METHODS: [&str; 5] = ["GET", "HEAD", "POST", "PUT", "other"];

/// Statuses whose counters are kept resolved; any other status is counted through a label look-up.
const STATUSES: [u16; 18] = [
    200, 206, 304, 400, 401, 403, 404, 405, 408, 409, 413, 416, 429, 500, 501, 502, 503, 504,
];

/// The index of a `method` label in [`METHODS`].
pub fn method_index(method: &axum::http::Method) -> usize {
    use axum::http::Method;
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        _ => 4,
    }
}

#[derive(Default)]
struct Cell {
    duration: OnceLock<Histogram>,
    statuses: [OnceLock<IntCounter>; STATUSES.len()],
}

/// Request counters and latency histograms for a fixed list of route labels.
pub struct HttpMetrics {
    routes: &'static [&'static str],
    cells: Box<[Cell]>,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// `routes` must not be empty.
    pub(super) fn new(
        routes: &'static [&'static str],
        requests: IntCounterVec,
        duration: HistogramVec,
    ) -> HttpMetrics {
        let cells = (0..routes.len() * METHODS.len())
            .map(|_| Cell::default())
            .collect();
        HttpMetrics {
            routes,
            cells,
            requests,
            duration,
        }
    }

    /// Counts an answered request of `routes[route]` with `METHODS[method]` (an index past the end
    /// counts under the last route or method).
    pub fn observe(&self, route: usize, method: usize, status: u16, took: Duration) {
        let route = route.min(self.routes.len() - 1);
        let method = method.min(METHODS.len() - 1);
        let cell = &self.cells[route * METHODS.len() + method];
        let labels = [self.routes[route], METHODS[method]];
        cell.duration
            .get_or_init(|| self.duration.with_label_values(&labels))
            .observe(took.as_secs_f64());
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => cell.statuses[i]
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[labels[0], labels[1], &status.to_string()])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[labels[0], labels[1], &status.to_string()])
                .inc(),
        }
    }
}
