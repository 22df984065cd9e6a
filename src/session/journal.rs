//! The driver's journal file: every state machine input, with its time, and what the machine did,
//! in the FSM's JSON Lines journal format, so `tickgate replay` can re-run a recorded session.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use crate::fsm::journal::JournalWriter;
use crate::fsm::{Action, Config, Input, Millis, StateName};

/// A journal file being written.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    writer: JournalWriter<BufWriter<File>>,
    failed: bool,
}

impl Journal {
    /// Creates (or truncates) `path` and writes the header with the machine's `config`. Each run
    /// gets its own file because a journal replays from one header and one initial state.
    pub fn create(path: &Path, config: &Config) -> io::Result<Self> {
        let file = File::create(path)?;
        let writer = JournalWriter::new(BufWriter::new(file), config)?;
        Ok(Self { path: path.to_path_buf(), writer, failed: false })
    }

    /// Appends one input and its outcome. A write error is logged once and later writes are
    /// skipped, because a full disk must not stop the feed.
    pub fn record(&mut self, time: Millis, input: &Input, from: StateName, to: StateName, actions: &[Action]) {
        if self.failed {
            return;
        }
        if let Err(error) = self.writer.record(time, input, from, to, actions) {
            self.failed = true;
            tracing::error!(path = %self.path.display(), %error, "journal write failed, journal disabled");
        }
    }

    /// Writes buffered lines to the file.
    pub fn flush(&mut self) {
        if let Err(error) = self.writer.flush() {
            tracing::error!(path = %self.path.display(), %error, "journal flush failed");
        }
    }
}
