//! A JSON Lines journal of the machine: a header line, then one entry per input.
//!
//! Line 1 is a [`Header`] (format name, format version and the [`Config`], which includes the
//! jitter seed). Every further line is an [`Entry`]: sequence number, time, input, state before
//! and after, and the actions the machine appended. That is all [`replay`](super::replay)
//! needs to re-run the machine and check that it still behaves the same.
//!
//! The journal contains no secrets, because the machine never receives any: tokens stay in the
//! driver, and the machine only names requests such as `AccountAuth`.

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

use super::{Action, Config, Input, Machine, Millis, StateName};

/// The `format` value of a journal header.
pub const FORMAT: &str = "tickgate-fsm-journal";

/// The journal format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Line 1 of a journal.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub config: Config,
}

/// One input and its result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// 0 for the first input, then counting up by one.
    pub seq: u64,
    /// The `now` the input was handled at.
    pub time: Millis,
    pub input: Input,
    pub from: StateName,
    pub to: StateName,
    pub actions: Vec<Action>,
}

/// [`Entry`] with borrowed fields, so that recording does not clone the input or actions.
#[derive(Serialize)]
struct EntryRef<'a> {
    seq: u64,
    time: Millis,
    input: &'a Input,
    from: StateName,
    to: StateName,
    actions: &'a [Action],
}

/// Writes a journal to any [`Write`]. Wrap files in a `BufWriter`, and call
/// [`JournalWriter::flush`] at shutdown.
#[derive(Debug)]
pub struct JournalWriter<W: Write> {
    out: W,
    next_seq: u64,
}

impl<W: Write> JournalWriter<W> {
    /// Writes the header line and returns a writer for the entries.
    pub fn new(mut out: W, config: &Config) -> io::Result<Self> {
        let header = Header { format: FORMAT.to_string(), version: VERSION, config: config.clone() };
        write_line(&mut out, &header)?;
        Ok(Self { out, next_seq: 0 })
    }

    /// Appends one entry: `input` was handled at `time`, moved the machine from `from` to `to`
    /// and produced `actions`.
    pub fn record(&mut self, time: Millis, input: &Input, from: StateName, to: StateName, actions: &[Action]) -> io::Result<()> {
        let entry = EntryRef { seq: self.next_seq, time, input, from, to, actions };
        write_line(&mut self.out, &entry)?;
        self.next_seq += 1;
        Ok(())
    }

    /// Feeds `input` to `machine` like [`Machine::handle`] and records the entry. Only the
    /// actions this call appends to `out` are recorded.
    pub fn handle(&mut self, machine: &mut Machine, now: Millis, input: Input, out: &mut Vec<Action>) -> io::Result<()> {
        let from = machine.state();
        let start = out.len();
        let recorded = input.clone();
        machine.handle(now, input, out);
        self.record(now, &recorded, from, machine.state(), &out[start..])
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

fn write_line<W: Write, T: Serialize>(out: &mut W, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

/// A failure to read a journal. Every variant names the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("line {line}: reading the journal failed: {source}")]
    Io { line: usize, source: io::Error },
    #[error("the journal is empty; line 1 must be a header with format \"{FORMAT}\"")]
    Empty,
    #[error("line 1: not a tickgate journal header (format {found:?}, expected \"{FORMAT}\")")]
    WrongFormat { found: String },
    #[error("line 1: journal format version {found} is not supported; this build reads version {VERSION}")]
    UnsupportedVersion { found: u32 },
    #[error("line {line}: invalid journal line: {message}")]
    Malformed { line: usize, message: String },
}

impl JournalError {
    /// Returns the 1-based line the error refers to, which is 1 for an empty journal.
    pub fn line(&self) -> usize {
        match self {
            JournalError::Io { line, .. } | JournalError::Malformed { line, .. } => *line,
            JournalError::Empty | JournalError::WrongFormat { .. } | JournalError::UnsupportedVersion { .. } => 1,
        }
    }
}

/// Reads a journal: the header on creation, then entries as an iterator of
/// `(line number, entry)`. Blank lines are skipped.
#[derive(Debug)]
pub struct JournalReader<R: BufRead> {
    lines: io::Lines<R>,
    line: usize,
    header: Header,
}

impl<R: BufRead> JournalReader<R> {
    /// Reads and checks the header line.
    pub fn new(reader: R) -> Result<Self, JournalError> {
        let mut lines = reader.lines();
        let text = match lines.next() {
            None => return Err(JournalError::Empty),
            Some(Err(source)) => return Err(JournalError::Io { line: 1, source }),
            Some(Ok(text)) => text,
        };

        let header: Header =
            serde_json::from_str(&text).map_err(|error| JournalError::Malformed { line: 1, message: error.to_string() })?;
        if header.format != FORMAT {
            return Err(JournalError::WrongFormat { found: header.format });
        }
        if header.version != VERSION {
            return Err(JournalError::UnsupportedVersion { found: header.version });
        }

        Ok(Self { lines, line: 1, header })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
}

impl<R: BufRead> Iterator for JournalReader<R> {
    type Item = Result<(usize, Entry), JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line += 1;
            let line = self.line;
            let text = match self.lines.next()? {
                Ok(text) => text,
                Err(source) => return Some(Err(JournalError::Io { line, source })),
            };
            if text.trim().is_empty() {
                continue;
            }
            let entry = serde_json::from_str(&text).map_err(|error| JournalError::Malformed { line, message: error.to_string() });
            return Some(entry.map(|entry| (line, entry)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_round_trip() {
        let config = Config { jitter_seed: 9, ..Config::default() };
        let mut machine = Machine::new(config.clone());
        let mut writer = JournalWriter::new(Vec::new(), &config).expect("write to memory");
        let mut out = Vec::new();
        writer.handle(&mut machine, 10, Input::Start, &mut out).expect("write to memory");
        writer.handle(&mut machine, 20, Input::TransportUp, &mut out).expect("write to memory");
        let bytes = writer.into_inner();

        let reader = JournalReader::new(bytes.as_slice()).expect("valid header");
        assert_eq!(reader.header().config, config);
        let entries: Vec<(usize, Entry)> = reader.collect::<Result<_, _>>().expect("valid entries");

        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0, 3, "line numbers count the header");
        let (_, second) = &entries[1];
        assert_eq!((second.seq, second.time, &second.input), (1, 20, &Input::TransportUp));
        assert_eq!((second.from, second.to), (StateName::Connecting, StateName::Authenticating));
        assert!(second.actions.contains(&Action::Send(super::super::Request::ApplicationAuth)));
        assert!(!entries[0].1.actions.is_empty());
    }

    #[test]
    fn reader_rejects_bad_header() {
        assert!(matches!(JournalReader::new(&b""[..]), Err(JournalError::Empty)));
        assert!(matches!(JournalReader::new(&b"{}\n"[..]), Err(JournalError::Malformed { line: 1, .. })));

        let header = Header { format: FORMAT.to_string(), version: 99, config: Config::default() };
        let text = serde_json::to_string(&header).expect("serialisable");
        let error = JournalReader::new(text.as_bytes()).expect_err("version 99");
        assert!(error.to_string().contains("version 99"), "{error}");
    }

    #[test]
    fn reader_names_malformed_line() {
        let mut bytes = JournalWriter::new(Vec::new(), &Config::default()).expect("write to memory").into_inner();
        bytes.extend_from_slice(b"\n{\"seq\": 0, \"time\": \n");

        let results: Vec<_> = JournalReader::new(bytes.as_slice()).expect("valid header").collect();
        assert_eq!(results.len(), 1);
        let error = results.into_iter().next().and_then(Result::err).expect("malformed entry");
        assert_eq!(error.line(), 3);
        assert!(error.to_string().starts_with("line 3: invalid journal line"), "{error}");
    }
}
