//! Recent activity, for people: the last things the appliance fetched, stored, refused, evicted or
//! failed at, kept in memory (a bounded ring, lost on restart) and shown by `/_status` and the status page.
//!
//! Messages may carry text that came from a source (a refused narinfo's reason quotes it): whoever shows
//! them escapes them.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use crate::clock::unix_now;

/// How many events are kept.
pub const KEEP: usize = 50;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A narinfo was recorded from a source.
    Fetched,
    /// A NAR was verified and stored.
    Stored,
    /// A narinfo or a NAR was refused (signature, hash, size, format).
    Rejected,
    /// A download or a refresh failed.
    Failed,
    /// NARs were evicted under the cap.
    Evicted,
    /// An OCI index was applied.
    Refreshed,
}

impl EventKind {
    /// A short word for people.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Fetched => "fetched",
            EventKind::Stored => "stored",
            EventKind::Rejected => "refused",
            EventKind::Failed => "failed",
            EventKind::Evicted => "evicted",
            EventKind::Refreshed => "index",
        }
    }
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix time.
    pub at: u64,
    /// What kind.
    pub kind: EventKind,
    /// What, in words (unescaped).
    pub message: String,
}

/// The last [`KEEP`] events.
#[derive(Debug, Default)]
pub struct Activity {
    events: Mutex<VecDeque<Event>>,
}

impl Activity {
    /// Notes an event now, dropping the oldest beyond [`KEEP`].
    pub fn record(&self, kind: EventKind, message: String) {
        if let Ok(mut events) = self.events.lock() {
            if events.len() == KEEP {
                events.pop_front();
            }
            events.push_back(Event {
                at: unix_now(),
                kind,
                message,
            });
        }
    }

    /// The events kept, newest first.
    pub fn recent(&self) -> Vec<Event> {
        self.events
            .lock()
            .map(|e| e.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest() {
        let a = Activity::default();
        for i in 0..KEEP + 5 {
            a.record(EventKind::Stored, i.to_string());
        }
        let recent = a.recent();
        assert_eq!(recent.len(), KEEP);
        assert_eq!(recent[0].message, (KEEP + 4).to_string());
        assert_eq!(recent[KEEP - 1].message, "5");
    }
}
