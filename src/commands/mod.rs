//! The `tickgate` subcommands. Each module has a clap `Args` struct and a `run` function.

pub mod bench;

/// A configuration error found at start: the process prints it and exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
