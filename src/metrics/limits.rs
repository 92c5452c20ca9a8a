//! What the limits did: connections held and dropped, lookups and refreshes turned away. Kept apart from
//! the serving metrics: these only move when a client or a peer asks for more than its share.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use super::handles::{counter, counter_vec, gauge};

/// Why the appliance closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The request's headers did not arrive within `header_timeout`.
    HeaderTimeout,
    /// A kept-alive connection stayed idle for `keepalive_timeout`.
    IdleTimeout,
    /// The client accepted no byte of a response for `send_timeout`.
    SendTimeout,
}

impl DropReason {
    /// Every reason, created at zero.
    pub const ALL: [DropReason; 3] = [
        DropReason::HeaderTimeout,
        DropReason::IdleTimeout,
        DropReason::SendTimeout,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::HeaderTimeout => "header_timeout",
            DropReason::IdleTimeout => "idle_timeout",
            DropReason::SendTimeout => "send_timeout",
        }
    }
}

/// The handles; cloning shares them.
#[derive(Clone)]
pub struct LimitMetrics {
    /// Connections being served now.
    pub connections_open: IntGauge,
    /// The connection cap in force (after the descriptor limit was taken into account).
    pub connections_limit: IntGauge,
    /// Connections accepted since start.
    pub connections_accepted: IntCounter,
    /// `accept()` failures (out of descriptors or memory, or a client that gave up first).
    pub accept_errors: IntCounter,
    /// Connections closed at once because their client address had `max_connections_per_client`.
    pub connections_refused: IntCounter,
    dropped: IntCounterVec,
    /// Upstream narinfo requests that found every lookup slot taken for the whole time-out.
    pub lookups_refused: IntCounter,
    /// `POST /_refresh` calls answered 429 because a refresh was running.
    pub refreshes_refused: IntCounter,
}

impl LimitMetrics {
    pub(super) fn new(r: &Registry) -> LimitMetrics {
        let dropped = counter_vec(
            r,
            "nixcache_connections_dropped_total",
            "Connections the appliance closed because a client was too slow, by reason.",
            &["reason"],
        );
        for reason in DropReason::ALL {
            dropped.with_label_values(&[reason.as_str()]);
        }
        LimitMetrics {
            connections_open: gauge(
                r,
                "nixcache_connections_open",
                "Client connections being served.",
            ),
            connections_limit: gauge(
                r,
                "nixcache_connections_limit",
                "The most client connections served at once; more wait in the listen backlog.",
            ),
            connections_accepted: counter(
                r,
                "nixcache_connections_accepted_total",
                "Client connections accepted.",
            ),
            accept_errors: counter(
                r,
                "nixcache_accept_errors_total",
                "Failures to accept a connection (descriptors or memory exhausted, client gone).",
            ),
            connections_refused: counter(
                r,
                "nixcache_connections_refused_total",
                "Connections closed at once: their client address already had max_connections_per_client.",
            ),
            dropped,
            lookups_refused: counter(
                r,
                "nixcache_upstream_lookups_refused_total",
                "Narinfo requests answered 503 because every upstream lookup slot stayed taken.",
            ),
            refreshes_refused: counter(
                r,
                "nixcache_refreshes_refused_total",
                "POST /_refresh calls answered 429 because a refresh was already running.",
            ),
        }
    }

    /// Counts a connection the appliance closed.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped.with_label_values(&[reason.as_str()]).inc();
    }
}
