//! The instructions the machine returns to the driver, in order.

use serde::{Deserialize, Serialize};

use super::{Millis, StateName, Timer};

/// One instruction to the driver. The driver performs the actions of one
/// [`Machine::handle`](super::Machine::handle) call in the order they were appended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Action {
    /// Start a TCP connect and TLS handshake; report `TransportUp` or `TransportFailed`.
    OpenTransport,
    /// Close the transport (or abort the connect in progress).
    CloseTransport { reason: String },
    /// Send a request upstream.
    Send(Request),
    /// Re-send the whole desired subscription set upstream.
    RestoreSubscriptions,
    /// Arm `timer` to fire at `at`, replacing any earlier schedule of that timer.
    ScheduleTimer { timer: Timer, at: Millis },
    /// Disarm `timer`; it must not fire.
    CancelTimer(Timer),
    /// Publish a status change; emitted on every transition.
    Broadcast(StatusChange),
    /// Write a log line.
    Log { level: LogLevel, message: String },
}

/// A request for the driver to send upstream.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum Request {
    ApplicationAuth,
    AccountAuth,
    RefreshToken,
    SymbolsList,
    Heartbeat,
}

/// Severity of an [`Action::Log`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

/// One transition of the machine, as published to users.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusChange {
    pub from: StateName,
    pub to: StateName,
    /// The input that caused the transition, in words.
    pub cause: String,
    /// Consecutive failed connect attempts; 0 once live.
    pub attempt: u32,
    /// When the next connect attempt starts, in Backoff.
    pub retry_at: Option<Millis>,
    /// The reason for entering `to`, when there is one (an error, a fault, a stop).
    pub reason: Option<String>,
}
