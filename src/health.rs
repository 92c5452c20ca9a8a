//! Whether the appliance can do its job: what `/healthz` answers, and what feeds the systemd watchdog.
//!
//! Two questions, answered differently on purpose:
//! - [`check`] (`/healthz`, monitoring): is everything working? Not when the index cannot be written (a
//!   full or failing disk). Hits from disk are still served meanwhile, and the index heals by itself
//!   once there is room. A source being down is not unhealthy: the appliance serves what it has, and
//!   `/_status` says which source is down.
//! - [`alive`] (the watchdog): would a restart help? A full disk does not get better by restarting —
//!   a restart would only stop the hits that are still served — so a broken index counts as stuck only
//!   once it stayed broken for [`STUCK_AFTER`] although the filesystem has room. A process that hangs
//!   does not answer at all, and its watchdog starves.

use std::time::Duration;

use crate::app::App;

/// How long the index may stay unwritable, with room on the disk, before a restart is the cure.
pub const STUCK_AFTER: Duration = Duration::from_secs(600);

/// `Ok` while healthy, else a short reason fit for `/healthz` (no paths, no secrets).
pub fn check(app: &App) -> Result<(), String> {
    app.index
        .writable()
        .map_err(|why| format!("index cannot be written ({why})"))
}

/// `Ok` unless a restart is what the appliance needs (see the module's notes).
pub fn alive(app: &App) -> Result<(), String> {
    let Err(why) = check(app) else {
        return Ok(());
    };
    let broken_for = app.index.broken_for().unwrap_or_default();
    let room = app
        .store
        .free_bytes()
        .is_ok_and(|free| free >= app.config.min_free.max(1 << 20));
    stuck(&why, broken_for, room)
}

/// The rule of [`alive`] for an index that cannot be written (`why`) since `broken_for`: a restart is
/// the cure only once it stayed so for [`STUCK_AFTER`] while the disk has `room`.
fn stuck(why: &str, broken_for: Duration, room: bool) -> Result<(), String> {
    if broken_for >= STUCK_AFTER && room {
        return Err(format!(
            "{why} for {} s although the disk has room",
            broken_for.as_secs()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk never starves the watchdog (a restart would only stop the hits still served); an
    /// index that stays unwritable with room on the disk does, after `STUCK_AFTER` and not before.
    #[test]
    fn only_an_index_stuck_with_room_on_the_disk_asks_for_a_restart() {
        let why = "index cannot be written (disk full)";
        let long = STUCK_AFTER + Duration::from_secs(3600);
        assert!(stuck(why, long, false).is_ok(), "a full disk, however long");
        assert!(stuck(why, Duration::ZERO, true).is_ok());
        assert!(stuck(why, STUCK_AFTER - Duration::from_secs(1), true).is_ok());
        let err = stuck(why, STUCK_AFTER, true).unwrap_err();
        assert!(err.starts_with(why) && err.contains("600 s"), "{err}");
        assert!(stuck(why, long, true).is_err());
    }
}
