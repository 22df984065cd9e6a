//! A JSON Lines record of every state machine input, with its time, and what the machine did.
//!
//! One line per input lets a run be replayed through the pure machine, which is how a reconnect
//! storm seen in production can be reproduced in a test.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::fsm::{Action, Input, Millis, StateName};

/// One journal line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    /// Driver clock, Unix milliseconds.
    at_ms: Millis,
    input: &'a Input,
    /// State after the input.
    state: StateName,
    attempt: u32,
    actions: &'a [Action],
}

/// An append-only journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    out: BufWriter<File>,
    failed: bool,
}

impl Journal {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.to_path_buf(), out: BufWriter::new(file), failed: false })
    }

    /// Appends one input and its outcome. A write error is logged once and further writes are
    /// skipped, because a full disk must not stop the feed.
    pub fn record(&mut self, at_ms: Millis, input: &Input, state: StateName, attempt: u32, actions: &[Action]) {
        if self.failed {
            return;
        }
        let entry = Entry { at_ms, input, state, attempt, actions };
        let result = serde_json::to_writer(&mut self.out, &entry)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(error) = result {
            self.failed = true;
            tracing::error!(path = %self.path.display(), %error, "journal write failed, journal disabled");
        }
    }

    /// Writes buffered lines to the file.
    pub fn flush(&mut self) {
        if let Err(error) = self.out.flush() {
            tracing::error!(path = %self.path.display(), %error, "journal flush failed");
        }
    }
}
