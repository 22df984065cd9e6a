//! `tickgate replay`: re-runs a state machine journal and prints its timeline.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::fsm::replay;

#[derive(Clone, Debug, clap::Args)]
pub struct ReplayArgs {
    /// Journal to replay (JSON Lines, as written by the session); `-` reads standard input.
    pub journal: PathBuf,

    /// Print only the entries that changed the state, not every tick and frame.
    #[arg(long)]
    pub transitions_only: bool,
}

/// Replays the journal and prints the timeline. Exits with 1, naming the line, when the
/// machine no longer behaves as recorded or a line is malformed.
pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let result = if args.journal.as_os_str() == "-" {
        replay::replay(std::io::stdin().lock())
    } else {
        let file = File::open(&args.journal)
            .with_context(|| format!("cannot open journal {}; check the path", args.journal.display()))?;
        replay::replay(BufReader::new(file))
    };

    match result {
        Ok(replay) => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(replay.render(args.transitions_only).as_bytes())?;
            stdout.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("replay of {} failed: {error}", args.journal.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::journal::JournalWriter;
    use crate::fsm::{Config, Input, Machine};

    fn write_journal(corrupt: bool) -> tempfile::NamedTempFile {
        let config = Config::default();
        let mut machine = Machine::new(config.clone());
        let file = tempfile::NamedTempFile::new().expect("temporary file");
        let mut writer = JournalWriter::new(file.reopen().expect("reopen"), &config).expect("write header");
        let mut out = Vec::new();
        writer.handle(&mut machine, 5, Input::Start, &mut out).expect("write entry");
        writer.handle(&mut machine, 9, Input::TransportUp, &mut out).expect("write entry");
        writer.flush().expect("flush");

        if corrupt {
            let text = std::fs::read_to_string(file.path()).expect("read back");
            std::fs::write(file.path(), text.replace("\"to\":\"Authenticating\"", "\"to\":\"Streaming\"")).expect("rewrite");
        }
        file
    }

    #[test]
    fn replay_command_succeeds_on_intact_journal() {
        let file = write_journal(false);
        let code = run(ReplayArgs { journal: file.path().to_path_buf(), transitions_only: true }).expect("runs");
        assert_eq!(code, ExitCode::SUCCESS);
    }

    #[test]
    fn replay_command_fails_on_changed_journal() {
        let file = write_journal(true);
        let code = run(ReplayArgs { journal: file.path().to_path_buf(), transitions_only: false }).expect("runs");
        assert_eq!(code, ExitCode::FAILURE);
    }

    #[test]
    fn replay_command_reports_missing_file() {
        let error = run(ReplayArgs { journal: PathBuf::from("/nonexistent/journal.jsonl"), transitions_only: false })
            .expect_err("missing file");
        assert!(error.to_string().contains("/nonexistent/journal.jsonl"), "{error}");
    }
}
