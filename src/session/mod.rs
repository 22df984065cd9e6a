//! The async driver that runs the connection machine against a real TLS socket and real timers.

pub mod handle;
pub mod spot;
pub mod subscriptions;
pub mod symbols;
pub mod tokens;
pub mod transport;

pub use handle::{Command, DriverEnds, SessionEvent, SessionHandle, SessionStatus, SessionStopped, TransitionRecord};
