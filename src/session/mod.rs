//! The async driver that runs the connection machine against a real TLS socket and real timers.
//!
//! [`driver::prepare`] checks a configuration and [`spawn`] starts a driver that returns a
//! [`SessionHandle`]. Everything else here is a piece the driver uses: [`transport`] (TCP and TLS), [`symbols`] (names and details), [`spot`]
//! (merging one-sided spot events), [`subscriptions`] (desired and upstream sets, paced restore),
//! [`tokens`] (persisting refreshed tokens) and [`journal`].

pub mod config;
mod connection;
pub mod driver;
pub mod handle;
pub mod journal;
pub mod spot;
pub mod subscriptions;
pub mod symbols;
pub mod timers;
pub mod tokens;
pub mod transport;

pub use config::SessionConfig;
pub use driver::spawn;
pub use handle::{Command, DriverEnds, SessionEvent, SessionHandle, SessionStatus, SessionStopped, TransitionRecord};
