//! Whether the appliance can do its job: what `/healthz` answers and what feeds the systemd watchdog.
//!
//! Unhealthy means "a restart or an operator may be needed": the index cannot be written (a full or
//! failing disk; hits from disk keep being served meanwhile, and the index heals by itself once there
//! is room). A source being down is not unhealthy: the appliance serves what it has, and `/_status`
//! says which source is down.

use crate::app::App;

/// `Ok` while healthy, else a short reason fit for `/healthz` (no paths, no secrets).
pub fn check(app: &App) -> Result<(), String> {
    app.index
        .writable()
        .map_err(|why| format!("index cannot be written ({why})"))
}
