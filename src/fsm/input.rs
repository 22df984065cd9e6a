//! The inputs the driver feeds the machine: commands, transport and protocol events, and
//! timer expiries.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One event fed to [`Machine::handle`](super::Machine::handle).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Input {
    /// Start connecting; only acts in Disconnected.
    Start,
    /// Close everything and stay in Disconnected until the next `Start`.
    Stop { reason: String },
    /// Drop the current connection (or the wait in Backoff) and connect again now.
    ForceReconnect { reason: String },
    /// TCP connect and TLS handshake succeeded.
    TransportUp,
    /// TCP connect or TLS handshake failed.
    TransportFailed { error: String },
    /// The peer closed the socket.
    SocketClosed { reason: String },
    /// Reading from or writing to the socket failed.
    SocketError { error: String },
    /// The application auth request was accepted.
    AppAuthOk,
    /// The account auth request was accepted.
    AccountAuthOk,
    /// A request of the auth sequence was rejected, with the cTrader error code.
    AuthRejected { step: AuthStep, code: String, description: String },
    /// The access token was refreshed, and the driver now has the new token.
    TokenRefreshed,
    /// The symbol list arrived.
    SymbolsLoaded { count: usize },
    /// A spot price arrived. It also counts as an inbound frame.
    Tick,
    /// Any other inbound frame, heartbeats included.
    Frame,
    /// The desired subscription set now contains `count` symbols.
    SubscriptionsChanged { count: usize },
    /// The server announced that it is closing the connection (`ProtoOAClientDisconnectEvent`).
    ServerDisconnect { reason: String },
    /// The server invalidated the access token (`ProtoOAAccountsTokenInvalidatedEvent`).
    TokenInvalidated { reason: String },
    /// A timer the machine scheduled has expired.
    TimerFired(Timer),
}

/// The request of the auth sequence that an [`Input::AuthRejected`] refers to.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum AuthStep {
    Application,
    Account,
    TokenRefresh,
    SymbolsList,
}

/// A deadline the driver keeps for the machine. Each timer has at most one schedule.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Connecting and Authenticating took longer than `connect_timeout_ms`.
    ConnectDeadline,
    /// The wait in Backoff is over: connect again.
    Backoff,
    /// Time to send the next heartbeat.
    Heartbeat,
    /// Possibly no inbound frame for `liveness_timeout_ms`; the machine checks its last frame.
    Liveness,
    /// In Streaming: possibly no tick for `stale_after_ms`. In Stale: time for the one
    /// stale-caused reconnect.
    Stale,
}

impl Timer {
    pub const ALL: [Timer; 5] = [Timer::ConnectDeadline, Timer::Backoff, Timer::Heartbeat, Timer::Liveness, Timer::Stale];

    pub fn as_str(self) -> &'static str {
        match self {
            Timer::ConnectDeadline => "ConnectDeadline",
            Timer::Backoff => "Backoff",
            Timer::Heartbeat => "Heartbeat",
            Timer::Liveness => "Liveness",
            Timer::Stale => "Stale",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for AuthStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthStep::Application => "application auth",
            AuthStep::Account => "account auth",
            AuthStep::TokenRefresh => "token refresh",
            AuthStep::SymbolsList => "symbols list",
        })
    }
}

impl Input {
    /// Returns the variant name, with the timer for [`Input::TimerFired`]: the label of a
    /// diagram edge.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Start => "Start",
            Input::Stop { .. } => "Stop",
            Input::ForceReconnect { .. } => "ForceReconnect",
            Input::TransportUp => "TransportUp",
            Input::TransportFailed { .. } => "TransportFailed",
            Input::SocketClosed { .. } => "SocketClosed",
            Input::SocketError { .. } => "SocketError",
            Input::AppAuthOk => "AppAuthOk",
            Input::AccountAuthOk => "AccountAuthOk",
            Input::AuthRejected { .. } => "AuthRejected",
            Input::TokenRefreshed => "TokenRefreshed",
            Input::SymbolsLoaded { .. } => "SymbolsLoaded",
            Input::Tick => "Tick",
            Input::Frame => "Frame",
            Input::SubscriptionsChanged { .. } => "SubscriptionsChanged",
            Input::ServerDisconnect { .. } => "ServerDisconnect",
            Input::TokenInvalidated { .. } => "TokenInvalidated",
            Input::TimerFired(Timer::ConnectDeadline) => "TimerFired(ConnectDeadline)",
            Input::TimerFired(Timer::Backoff) => "TimerFired(Backoff)",
            Input::TimerFired(Timer::Heartbeat) => "TimerFired(Heartbeat)",
            Input::TimerFired(Timer::Liveness) => "TimerFired(Liveness)",
            Input::TimerFired(Timer::Stale) => "TimerFired(Stale)",
        }
    }

    /// Returns whether the input reports a message received from the server, which proves the
    /// socket is alive.
    pub fn is_inbound_frame(&self) -> bool {
        matches!(
            self,
            Input::AppAuthOk
                | Input::AccountAuthOk
                | Input::AuthRejected { .. }
                | Input::TokenRefreshed
                | Input::SymbolsLoaded { .. }
                | Input::Tick
                | Input::Frame
                | Input::ServerDisconnect { .. }
                | Input::TokenInvalidated { .. }
        )
    }
}

/// The input in words, used as the cause of a transition (for example `socket closed: reset`).
impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Start => f.write_str("start"),
            Input::Stop { reason } => write!(f, "stop: {reason}"),
            Input::ForceReconnect { reason } => write!(f, "forced reconnect: {reason}"),
            Input::TransportUp => f.write_str("transport up"),
            Input::TransportFailed { error } => write!(f, "transport failed: {error}"),
            Input::SocketClosed { reason } => write!(f, "socket closed: {reason}"),
            Input::SocketError { error } => write!(f, "socket error: {error}"),
            Input::AppAuthOk => f.write_str("application auth accepted"),
            Input::AccountAuthOk => f.write_str("account auth accepted"),
            Input::AuthRejected { step, code, description } => write!(f, "{step} rejected: {code}: {description}"),
            Input::TokenRefreshed => f.write_str("token refreshed"),
            Input::SymbolsLoaded { count } => write!(f, "symbols loaded: {count}"),
            Input::Tick => f.write_str("tick"),
            Input::Frame => f.write_str("frame"),
            Input::SubscriptionsChanged { count } => write!(f, "subscriptions changed: {count}"),
            Input::ServerDisconnect { reason } => write!(f, "server disconnect: {reason}"),
            Input::TokenInvalidated { reason } => write!(f, "token invalidated: {reason}"),
            Input::TimerFired(timer) => write!(f, "{timer} timer fired"),
        }
    }
}
