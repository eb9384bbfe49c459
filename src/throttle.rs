//! Rate limits for log lines that a misbehaving peer could repeat thousands of times a second
//! (a reconnect storm against a full disk, a flood of refused connections): the first line of a
//! burst is logged, the rest are counted and reported with the next line let through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one event through per `every`, counting the ones it holds back.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// A throttle letting one event through per `every`.
    pub const fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` if this event should be logged, `n` being how many were held back since the
    /// last one that was; `None` if it should be held back.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_period_and_the_rest_counted() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.allow(), Some(2), "the held-back events are reported");
        assert_eq!(t.allow(), None);
    }
}
