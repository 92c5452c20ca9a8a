//! Named pins (issue 16): closures the LAN needs kept whatever LRU would say. A pin is set by a warm
//! job (`nixcache warm --pin NAME`, or the config file's `pins`), holds every NAR of its closure from
//! eviction (`Index::set_pin`), and must fit: pins together may hold at most [`PIN_SHARE_PERCENT`] of
//! `max_size` (less the index), so ordinary traffic always keeps room to be cached.

use crate::app::App;
use crate::metrics::human_bytes;
use crate::nix::hash::Sha256Hash;

/// The share of `max_size` that pins together may hold.
pub const PIN_SHARE_PERCENT: u64 = 90;

/// Checks a pin name: 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a pin name (1 to 64 letters, digits, '-', '_', '.')"
        ))
    }
}

/// The most bytes pins may hold together.
pub fn limit(app: &App) -> u64 {
    (app.budget.max_size() / 100 * PIN_SHARE_PERCENT).saturating_sub(app.index.file_bytes())
}

/// Checks that pin `name` holding `nars` (FileHash, size) fits beside the other pins. Blocking (an
/// index read). The error says how much it needs and how much pins may hold.
pub fn check_fit(app: &App, name: &str, nars: &[(Sha256Hash, u64)]) -> Result<(), String> {
    let needed = app
        .index
        .pinned_bytes_with(name, nars)
        .map_err(|e| format!("index: {e}"))?;
    let limit = limit(app);
    if needed > limit {
        return Err(format!(
            "pin {name} does not fit: pins would hold {} but may hold at most {} \
             ({PIN_SHARE_PERCENT}% of max_size {}, less the index); raise max_size or remove a pin",
            human_bytes(needed),
            human_bytes(limit),
            human_bytes(app.budget.max_size()),
        ));
    }
    Ok(())
}

/// Sets the pin gauges from the index. Blocking.
pub fn refresh_gauges(app: &App) {
    if let Ok(pins) = app.index.pins() {
        let bytes = app.index.protected_bytes().unwrap_or(0);
        app.metrics.pins(pins.len(), bytes);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pin_names() {
        for good in ["desktop", "a", "hosts.web-1_x"] {
            assert!(super::check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "<x>", &"x".repeat(65)] {
            assert!(super::check_name(bad).is_err(), "{bad}");
        }
    }
}
