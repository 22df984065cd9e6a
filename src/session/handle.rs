//! The boundary between the session driver and its users (the gateway, `tickgate stream`).
//!
//! Users send [`Command`]s and read two things back: a [`SessionEvent`] broadcast (ticks, status
//! changes, transitions, subscription failures) and a [`SessionStatus`] watch that always contains
//! the latest snapshot. The driver owns the other ends, bundled in [`DriverEnds`].

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};

use crate::fsm::StateName;
use crate::protocol::Tick;

/// Capacity of the command queue from users to the driver.
pub const COMMAND_CAPACITY: usize = 1024;

/// A request from a user of the session to the driver.
#[derive(Debug)]
pub enum Command {
    /// Adds symbols to the desired set. Kept while disconnected and applied on connect, in order.
    Subscribe(Vec<String>),
    /// Removes symbols from the desired set.
    Unsubscribe(Vec<String>),
    /// Forces a reconnect through the state machine, with the reason recorded.
    Reconnect { reason: String },
    /// Unsubscribes upstream, closes TLS, flushes the journal and stops the driver.
    Shutdown,
}

/// Something that happened in the session, in the order it happened.
#[derive(Clone, Debug)]
pub enum SessionEvent {
    /// A merged quote for a symbol in the desired set.
    Tick(Tick),
    /// The connection state changed. Sent on every transition.
    Status(SessionStatus),
    /// The feed became ready (auth done, symbols loaded); carries the symbols clients may use.
    Ready { symbols: Arc<[String]> },
    /// One state machine transition, for metrics and the dashboard's history.
    Transition(TransitionRecord),
    /// Upstream rejected a subscription for one symbol; it is not retried.
    SubscriptionFailed { symbol: String, code: String, message: String },
}

/// A snapshot of the session's health.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    pub state: StateName,
    /// Unix milliseconds when the current state was entered.
    pub since_ms: i64,
    /// Connect attempt number; 0 while streaming or before the first failure.
    pub attempt: u32,
    /// Milliseconds until the next connect attempt, in Backoff.
    pub retry_in_ms: Option<u64>,
    /// The reason the machine entered this state, when there is one (an error, a fault, a stop).
    pub reason: Option<String>,
    /// Normalised symbol names from the last symbol list; empty before the first one.
    pub available_symbols: Arc<[String]>,
    /// Symbols cTrader confirmed on the current connection.
    pub upstream_subscriptions: usize,
    /// Symbols users want, whether or not upstream has confirmed them yet.
    pub desired_subscriptions: usize,
}

impl SessionStatus {
    pub fn initial() -> Self {
        Self {
            state: StateName::Disconnected,
            since_ms: 0,
            attempt: 0,
            retry_in_ms: None,
            reason: None,
            available_symbols: Arc::from(Vec::new()),
            upstream_subscriptions: 0,
            desired_subscriptions: 0,
        }
    }
}

/// One transition of the connection machine.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransitionRecord {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub from: StateName,
    pub to: StateName,
    /// The input that caused it, in words (for example `socket closed: connection reset`).
    pub cause: String,
}

/// The user's side of a running session. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<SessionEvent>,
    status: watch::Receiver<SessionStatus>,
}

/// The driver's side of the channels created by [`SessionHandle::channel`].
#[derive(Debug)]
pub struct DriverEnds {
    pub commands: mpsc::Receiver<Command>,
    pub events: broadcast::Sender<SessionEvent>,
    pub status: watch::Sender<SessionStatus>,
}

/// The driver has stopped, so the command could not be delivered.
#[derive(Debug, thiserror::Error)]
#[error("the session has stopped")]
pub struct SessionStopped;

impl SessionHandle {
    /// Creates a connected handle and driver ends. `event_capacity` bounds the event broadcast:
    /// a receiver that falls further behind loses the oldest events and receives the number it missed.
    pub fn channel(event_capacity: usize) -> (SessionHandle, DriverEnds) {
        let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (event_tx, _) = broadcast::channel(event_capacity);
        let (status_tx, status_rx) = watch::channel(SessionStatus::initial());
        let handle = SessionHandle { commands: command_tx, events: event_tx.clone(), status: status_rx };
        let ends = DriverEnds { commands: command_rx, events: event_tx, status: status_tx };
        (handle, ends)
    }

    pub async fn subscribe(&self, symbols: Vec<String>) -> Result<(), SessionStopped> {
        self.send(Command::Subscribe(symbols)).await
    }

    pub async fn unsubscribe(&self, symbols: Vec<String>) -> Result<(), SessionStopped> {
        self.send(Command::Unsubscribe(symbols)).await
    }

    pub async fn reconnect(&self, reason: impl Into<String>) -> Result<(), SessionStopped> {
        self.send(Command::Reconnect { reason: reason.into() }).await
    }

    pub async fn shutdown(&self) -> Result<(), SessionStopped> {
        self.send(Command::Shutdown).await
    }

    /// Subscribes to events from now on.
    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    /// Returns a receiver of status snapshots; it starts at the latest one.
    pub fn status(&self) -> watch::Receiver<SessionStatus> {
        self.status.clone()
    }

    async fn send(&self, command: Command) -> Result<(), SessionStopped> {
        self.commands.send(command).await.map_err(|_| SessionStopped)
    }
}
