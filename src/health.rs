//! Whether the running appliance can do its job: what feeds systemd's watchdog (src/systemd.rs), and
//! what `/healthz` is meant to report.
//!
//! A stub for now: it always answers healthy. The lead fills in the real check (the index is writable,
//! the store usable, …); its callers already treat an Err as "stop feeding the watchdog".

use crate::app::App;

/// Ok while the appliance can serve; Err with a short reason (shown by `systemctl status`) otherwise.
/// It may touch the disk, so call it from a blocking thread (`spawn_blocking`).
pub fn check(app: &App) -> Result<(), String> {
    let _ = app;
    Ok(())
}
