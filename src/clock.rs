//! Wall-clock time as the index and the status page record it: whole seconds since the Unix epoch.
//! A leaf, so that metrics and activity need nothing from the rest of the appliance.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
