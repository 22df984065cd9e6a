//! The pure connection state machine. No tokio, no sockets, no system clock: it takes an input
//! and the current time and returns the actions to perform.

mod state_name;

pub use state_name::StateName;
