//! The ingest tier: listeners that stamp each input line with a ULID and topic and append it to
//! the connection's active segment, the segment files and their states, and the HTTP API
//! through which store nodes consume flushed segments, and the agents' protocols (Loki, OTLP,
//! Elasticsearch bulk, JSON lines, syslog), which write through the same segments.
//!
//! Ingest owns only `-ingest.path`; it never reads or writes store files.

pub mod api;
pub mod bulk;
pub mod conn;
pub mod ingester;
pub mod log;
pub mod protocols;
pub mod sync;
pub mod wire;
pub mod writer;

pub use api::IngestApi;
pub use ingester::{Ingester, Modality};
pub use log::IngestLog;
pub use writer::Rotation;

use std::time::Duration;

/// How far from now a record's time may be (`-ingest.max-event-age`, 168h;
/// `-ingest.max-event-future`, 10m): a record outside is refused, never stored under another
/// time. A store retains and expires every record inside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventBounds {
    /// How long before now.
    pub max_age: Duration,
    /// How long after now.
    pub max_future: Duration,
}

/// The longest `-ingest.max-event-future` allowed, and how far ahead a store accepts a
/// replicated record (30 days): a time further ahead would be kept past any retention.
pub const MAX_FUTURE: Duration = Duration::from_secs(30 * 86_400);

impl Default for EventBounds {
    fn default() -> Self {
        EventBounds {
            max_age: Duration::from_secs(168 * 3600),
            max_future: Duration::from_secs(600),
        }
    }
}

/// A record's time outside the [`EventBounds`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutOfBounds {
    /// Older than `max_age`.
    #[error("its time {at} is more than {age} before now (-ingest.max-event-age)")]
    TooOld {
        /// The record's time.
        at: String,
        /// The bound.
        age: String,
    },
    /// Further ahead than `max_future`.
    #[error("its time {at} is more than {ahead} after now (-ingest.max-event-future)")]
    TooNew {
        /// The record's time.
        at: String,
        /// The bound.
        ahead: String,
    },
}

impl EventBounds {
    /// Whether a time of `ms` (Unix milliseconds) is within the bounds at `now_ms`.
    pub fn check(&self, ms: u64, now_ms: u64) -> Result<(), OutOfBounds> {
        let at = || {
            let max = crate::gotime::MAX_RFC3339_MS as u64;
            if ms > max {
                format!("past {}", crate::gotime::rfc3339_utc_millis(max as i64))
            } else {
                crate::gotime::rfc3339_utc_millis(ms as i64)
            }
        };
        if ms.saturating_add(self.max_age.as_millis() as u64) < now_ms {
            return Err(OutOfBounds::TooOld {
                at: at(),
                age: crate::gotime::format_duration(self.max_age),
            });
        }
        if ms > now_ms.saturating_add(self.max_future.as_millis() as u64) {
            return Err(OutOfBounds::TooNew {
                at: at(),
                ahead: crate::gotime::format_duration(self.max_future),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bounds() {
        let b = EventBounds::default();
        let now = 1_800_000_000_000;
        assert!(b.check(now, now).is_ok());
        assert!(b.check(now - 168 * 3_600_000, now).is_ok());
        assert!(b.check(now + 600_000, now).is_ok());
        let old = b.check(0, now).unwrap_err();
        assert_eq!(
            old.to_string(),
            "its time 1970-01-01T00:00:00.000Z is more than 168h0m0s before now (-ingest.max-event-age)"
        );
        let new = b.check(now + 600_001, now).unwrap_err();
        assert!(
            new.to_string().contains("more than 10m0s after now"),
            "{new}"
        );
        let far = b.check(u64::MAX >> 16, now).unwrap_err();
        assert!(
            far.to_string()
                .starts_with("its time past 9999-12-31T23:59:59.999Z is more than 10m0s after now"),
            "{far}"
        );
    }
}
