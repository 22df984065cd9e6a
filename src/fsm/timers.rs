//! The machine's record of which timers it has armed, and for when.

use super::{Action, Millis, Timer};

/// One slot per [`Timer`]: the instant it is armed for, if armed. It mirrors the driver's
/// timers, because the driver performs every `ScheduleTimer` and `CancelTimer` in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TimerTable {
    deadlines: [Option<Millis>; 5],
}

impl TimerTable {
    pub(crate) fn deadline(&self, timer: Timer) -> Option<Millis> {
        self.deadlines[timer.index()]
    }

    pub(crate) fn is_armed(&self, timer: Timer) -> bool {
        self.deadline(timer).is_some()
    }

    /// Arms `timer` for `at` and appends the matching action.
    pub(crate) fn schedule(&mut self, timer: Timer, at: Millis, out: &mut Vec<Action>) {
        self.deadlines[timer.index()] = Some(at);
        out.push(Action::ScheduleTimer { timer, at });
    }

    /// Disarms `timer` and appends a `CancelTimer`, unless it is not armed.
    pub(crate) fn cancel(&mut self, timer: Timer, out: &mut Vec<Action>) {
        if self.deadlines[timer.index()].take().is_some() {
            out.push(Action::CancelTimer(timer));
        }
    }

    /// Forgets `timer` without an action, because it has fired.
    pub(crate) fn disarm(&mut self, timer: Timer) {
        self.deadlines[timer.index()] = None;
    }
}
