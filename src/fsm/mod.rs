//! The pure connection state machine. No tokio, no sockets, no system clock: it takes an input
//! and the current time and returns the actions to perform.
//!
//! - [`Machine`]: the machine itself; the `machine` module documents each state's inputs and
//!   timers.
//! - [`journal`]: JSON Lines record of every input and its result; [`replay`] re-runs one.
//! - [`diagram`]: the state diagram, derived by exploring the machine.

mod action;
pub mod backoff;
mod config;
pub mod diagram;
mod input;
pub mod journal;
mod machine;
pub mod replay;
mod state_name;
mod timers;

#[cfg(test)]
mod tests;

pub use action::{Action, LogLevel, Request, StatusChange};
pub use config::{Config, ConfigError};
pub use input::{AuthStep, Input, Timer};
pub use machine::Machine;
pub use state_name::StateName;

/// Milliseconds on the driver's clock (Unix milliseconds in production).
pub type Millis = u64;
