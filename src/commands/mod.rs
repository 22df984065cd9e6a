//! Subcommands of the `tickgate` binary, each with its clap arguments and a `run` function.

pub mod diagram;
pub mod replay;
