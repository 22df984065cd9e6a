//! The driver's clock and its table of armed state machine timers.
//!
//! The state machine works in Unix milliseconds and never reads a clock. The driver derives
//! those milliseconds from a monotonic [`Instant`] anchored once to the wall clock, so a wall
//! clock step cannot fire or postpone a timer. Any deadline converts back to an [`Instant`] for
//! the one sleep the driver keeps.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::fsm::{Millis, Timer};

/// Monotonic milliseconds anchored to the Unix epoch at creation.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    origin_ms: Millis,
}

impl Clock {
    pub fn new() -> Self {
        Self { origin: Instant::now(), origin_ms: unix_ms() as Millis }
    }

    /// The current time in the state machine's unit.
    pub fn now(&self) -> Millis {
        self.origin_ms + self.origin.elapsed().as_millis() as Millis
    }

    /// The instant at which the clock reads `at`; times before the origin map to the origin.
    pub fn instant_at(&self, at: Millis) -> Instant {
        self.origin + Duration::from_millis(at.saturating_sub(self.origin_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The wall clock in Unix milliseconds, for timestamps users see.
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Armed timers: each timer has at most one deadline, and scheduling it again replaces it.
#[derive(Debug, Default)]
pub struct TimerTable {
    armed: HashMap<Timer, Millis>,
}

impl TimerTable {
    pub fn schedule(&mut self, timer: Timer, at: Millis) {
        self.armed.insert(timer, at);
    }

    pub fn cancel(&mut self, timer: Timer) {
        self.armed.remove(&timer);
    }

    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.armed.values().copied().min()
    }

    /// Disarms and returns the earliest timer due at `now`, so each fires once and in order.
    pub fn pop_due(&mut self, now: Millis) -> Option<Timer> {
        let (timer, _) = self.armed.iter().filter(|(_, at)| **at <= now).min_by_key(|(_, at)| **at)?;
        let timer = *timer;
        self.armed.remove(&timer);
        Some(timer)
    }

    pub fn is_armed(&self, timer: Timer) -> bool {
        self.armed.contains_key(&timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reschedule_replaces_deadline() {
        let mut table = TimerTable::default();
        table.schedule(Timer::Heartbeat, 100);
        table.schedule(Timer::Heartbeat, 300);

        assert_eq!(table.next_deadline(), Some(300));
        assert_eq!(table.pop_due(200), None);
    }

    #[test]
    fn due_timers_pop_in_deadline_order() {
        let mut table = TimerTable::default();
        table.schedule(Timer::Stale, 200);
        table.schedule(Timer::Heartbeat, 100);
        table.schedule(Timer::Liveness, 900);

        assert_eq!(table.pop_due(500), Some(Timer::Heartbeat));
        assert_eq!(table.pop_due(500), Some(Timer::Stale));
        assert_eq!(table.pop_due(500), None);
        assert_eq!(table.next_deadline(), Some(900));
    }

    #[test]
    fn cancelled_timer_never_pops() {
        let mut table = TimerTable::default();
        table.schedule(Timer::Backoff, 10);
        table.cancel(Timer::Backoff);

        assert_eq!(table.pop_due(100), None);
        assert!(!table.is_armed(Timer::Backoff));
    }

    #[test]
    fn clock_maps_deadlines_to_instants() {
        let clock = Clock::new();
        let start = clock.now();

        std::thread::sleep(Duration::from_millis(20));

        assert!(clock.now() - start >= 20);
        assert!(start.abs_diff(unix_ms() as Millis) < 1_000, "anchored to the wall clock");
        assert_eq!(clock.instant_at(start + 1_000) - clock.instant_at(start), Duration::from_millis(1_000));
    }
}
