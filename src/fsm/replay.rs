//! Re-runs a recorded journal through the machine and checks that it behaves the same.
//!
//! The machine has no clock and no randomness of its own, so the recorded inputs, times and
//! configuration (with its jitter seed) fully determine its behaviour. [`replay`] stops at the
//! first entry whose transition or actions differ from the record, or at the first malformed
//! line, and names that line.

use std::fmt::Write as _;
use std::io::BufRead;

use super::journal::{Header, JournalError, JournalReader};
use super::{Action, Machine, Millis, StateName};

/// One replayed entry, ready to print.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineEntry {
    /// 1-based line in the journal.
    pub line: usize,
    pub time: Millis,
    pub from: StateName,
    pub to: StateName,
    /// The input, in words.
    pub cause: String,
    pub actions: Vec<Action>,
}

/// A journal that replayed identically.
#[derive(Clone, Debug)]
pub struct Replay {
    pub header: Header,
    pub timeline: Vec<TimelineEntry>,
}

/// The reason a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("line {line}: replay differs from the record in {field}: recorded {recorded}, replayed {replayed}")]
    Mismatch { line: usize, field: &'static str, recorded: String, replayed: String },
}

impl ReplayError {
    /// Returns the 1-based journal line where the replay stopped.
    pub fn line(&self) -> usize {
        match self {
            ReplayError::Journal(error) => error.line(),
            ReplayError::Mismatch { line, .. } => *line,
        }
    }
}

/// Replays every entry of the journal read from `reader`.
pub fn replay<R: BufRead>(reader: R) -> Result<Replay, ReplayError> {
    let reader = JournalReader::new(reader)?;
    let header = reader.header().clone();
    let mut machine = Machine::new(header.config.clone());
    let mut timeline = Vec::new();
    let mut out = Vec::new();
    for (expected_seq, item) in (0u64..).zip(reader) {
        let (line, entry) = item?;
        let mismatch = |field, recorded: String, replayed: String| ReplayError::Mismatch { line, field, recorded, replayed };

        if entry.seq != expected_seq {
            return Err(mismatch("seq", entry.seq.to_string(), expected_seq.to_string()));
        }

        let from = machine.state();
        if entry.from != from {
            return Err(mismatch("from", entry.from.to_string(), from.to_string()));
        }

        let cause = entry.input.to_string();
        out.clear();
        machine.handle(entry.time, entry.input, &mut out);

        let to = machine.state();
        if entry.to != to {
            return Err(mismatch("to", entry.to.to_string(), to.to_string()));
        }
        if entry.actions != out {
            let index = entry.actions.iter().zip(&out).take_while(|(recorded, replayed)| recorded == replayed).count();
            let field = "actions";
            let show = |actions: &[Action]| match actions.get(index) {
                Some(action) => format!("action {} = {action:?}", index + 1),
                None => format!("{} actions", actions.len()),
            };
            return Err(mismatch(field, show(&entry.actions), show(&out)));
        }

        timeline.push(TimelineEntry { line, time: entry.time, from, to, cause, actions: out.clone() });
    }

    Ok(Replay { header, timeline })
}

impl Replay {
    /// Renders the timeline, one line per entry (or per transition when `transitions_only`):
    /// time, `from → to`, cause, then the actions.
    pub fn render(&self, transitions_only: bool) -> String {
        let mut text = String::new();
        for entry in &self.timeline {
            if transitions_only && entry.from == entry.to && !has_broadcast(&entry.actions) {
                continue;
            }
            let states = if entry.from == entry.to && !has_broadcast(&entry.actions) {
                entry.from.to_string()
            } else {
                format!("{} → {}", entry.from, entry.to)
            };
            let actions: Vec<String> = entry.actions.iter().map(|action| describe(action, entry.time)).collect();
            let _ = write!(text, "{}  {states}  {}", format_time(entry.time), entry.cause);
            if !actions.is_empty() {
                let _ = write!(text, "  [{}]", actions.join("; "));
            }
            text.push('\n');
        }
        text
    }
}

fn has_broadcast(actions: &[Action]) -> bool {
    actions.iter().any(|action| matches!(action, Action::Broadcast(_)))
}

/// Formats Unix milliseconds as UTC, or the raw number if out of chrono's range.
fn format_time(time: Millis) -> String {
    i64::try_from(time)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|instant| instant.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| format!("{time} ms"))
}

fn describe(action: &Action, now: Millis) -> String {
    match action {
        Action::OpenTransport => "open transport".to_string(),
        Action::CloseTransport { reason } => format!("close transport ({reason})"),
        Action::Send(request) => format!("send {request:?}"),
        Action::RestoreSubscriptions => "restore subscriptions".to_string(),
        Action::ScheduleTimer { timer, at } => format!("schedule {timer} in {} ms", at.saturating_sub(now)),
        Action::CancelTimer(timer) => format!("cancel {timer}"),
        Action::Broadcast(change) => match &change.reason {
            Some(reason) => format!("broadcast {} ({reason})", change.to),
            None => format!("broadcast {}", change.to),
        },
        Action::Log { level, message } => format!("log {level:?}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::journal::JournalWriter;
    use crate::fsm::{Config, Input, Timer};

    const T0: Millis = 1_700_000_000_000;

    /// Records a scripted run with failures, backoff, streaming and staleness.
    fn scripted_journal() -> Vec<u8> {
        let config = Config { jitter_seed: 77, has_refresh_token: true, ..Config::default() };
        let mut machine = Machine::new(config.clone());
        let mut writer = JournalWriter::new(Vec::new(), &config).expect("write to memory");
        let mut out = Vec::new();
        let mut now = T0;

        let mut feed = |machine: &mut Machine, now: Millis, input: Input| {
            writer.handle(machine, now, input, &mut out).expect("write to memory");
        };
        feed(&mut machine, now, Input::SubscriptionsChanged { count: 2 });
        feed(&mut machine, now, Input::Start);
        feed(&mut machine, now + 50, Input::TransportFailed { error: "connection refused".to_string() });
        now = machine.timer_deadline(Timer::Backoff).expect("armed");
        feed(&mut machine, now, Input::TimerFired(Timer::Backoff));
        for input in [Input::TransportUp, Input::AppAuthOk, Input::AccountAuthOk, Input::SymbolsLoaded { count: 5 }] {
            now += 20;
            feed(&mut machine, now, input);
        }
        for _ in 0..3 {
            now += 500;
            feed(&mut machine, now, Input::Tick);
        }
        now = machine.timer_deadline(Timer::Stale).expect("armed");
        feed(&mut machine, now, Input::TimerFired(Timer::Stale));
        now = machine.timer_deadline(Timer::Stale).expect("armed");
        feed(&mut machine, now, Input::TimerFired(Timer::Stale));
        feed(&mut machine, now + 5, Input::Tick);
        feed(&mut machine, now + 10, Input::Stop { reason: "shutdown".to_string() });
        writer.into_inner()
    }

    fn lines(bytes: &[u8]) -> Vec<String> {
        String::from_utf8(bytes.to_vec()).expect("UTF-8").lines().map(str::to_string).collect()
    }

    #[test]
    fn replay_matches_recording() {
        let bytes = scripted_journal();
        let replay = replay(bytes.as_slice()).expect("identical replay");

        assert_eq!(replay.timeline.len(), lines(&bytes).len() - 1);
        let states: Vec<StateName> = replay.timeline.iter().filter(|entry| entry.from != entry.to).map(|entry| entry.to).collect();
        assert_eq!(
            states,
            [
                StateName::Connecting,
                StateName::Backoff,
                StateName::Connecting,
                StateName::Authenticating,
                StateName::Streaming,
                StateName::Stale,
                StateName::Streaming,
                StateName::Disconnected,
            ]
        );

        let text = replay.render(true);
        assert!(text.contains("Connecting → Backoff  transport failed: connection refused"), "{text}");
        assert!(text.lines().all(|line| line.starts_with("2023-11-14T")), "{text}");
        assert_eq!(text.lines().count(), states.len());
    }

    #[test]
    fn replay_names_line_of_changed_transition() {
        let mut journal = lines(&scripted_journal());
        // Line 4 records Connecting → Backoff; claim it stayed in Connecting.
        assert!(journal[3].contains("\"to\":\"Backoff\""), "{}", journal[3]);
        journal[3] = journal[3].replace("\"to\":\"Backoff\"", "\"to\":\"Connecting\"");

        let error = replay(journal.join("\n").as_bytes()).expect_err("the record was changed");
        assert_eq!(error.line(), 4);
        assert!(error.to_string().starts_with("line 4: replay differs from the record in to"), "{error}");
    }

    #[test]
    fn replay_names_line_of_changed_action() {
        let mut journal = lines(&scripted_journal());
        let index = journal.iter().position(|line| line.contains("\"RestoreSubscriptions\"")).expect("restore recorded");
        journal[index] = journal[index].replace("\"RestoreSubscriptions\",", "");

        let error = replay(journal.join("\n").as_bytes()).expect_err("the record was changed");
        assert_eq!(error.line(), index + 1);
        assert!(error.to_string().contains("in actions"), "{error}");
    }

    #[test]
    fn replay_names_malformed_line() {
        let mut journal = lines(&scripted_journal());
        journal[6] = "{\"seq\": 5, not json".to_string();

        let error = replay(journal.join("\n").as_bytes()).expect_err("malformed line");
        assert_eq!(error.line(), 7);
        assert!(error.to_string().starts_with("line 7: invalid journal line"), "{error}");
    }

    #[test]
    fn replay_detects_missing_entry() {
        let mut journal = lines(&scripted_journal());
        journal.remove(5);

        let error = replay(journal.join("\n").as_bytes()).expect_err("an entry is missing");
        assert_eq!(error.line(), 6);
        assert!(error.to_string().contains("in seq"), "{error}");
    }
}
