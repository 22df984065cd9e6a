//! Subcommands of the `tickgate` binary, each with its clap arguments and a `run` function.

pub mod bench;
pub mod connection;
pub mod diagram;
pub mod history;
pub mod replay;
pub mod serve;
pub mod stream;

/// A configuration error found at start: the process prints it and exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
