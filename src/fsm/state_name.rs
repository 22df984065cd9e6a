//! The names of the connection machine's states, shared with the driver, gateway and journal.

use serde::{Deserialize, Serialize};

/// One of the six states of the connection machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StateName {
    /// Not connected and not trying: the initial state, and the state after an explicit stop.
    Disconnected,
    /// TCP connect and TLS handshake in progress.
    Connecting,
    /// Application auth, account auth, token refresh if needed, symbol list.
    Authenticating,
    /// Ready: ticks flowing, or no subscriptions.
    Streaming,
    /// Connected and subscribed, but no tick for the staleness threshold.
    Stale,
    /// Waiting before the next connect attempt.
    Backoff,
}

impl StateName {
    pub const ALL: [StateName; 6] = [
        StateName::Disconnected,
        StateName::Connecting,
        StateName::Authenticating,
        StateName::Streaming,
        StateName::Stale,
        StateName::Backoff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Disconnected => "Disconnected",
            StateName::Connecting => "Connecting",
            StateName::Authenticating => "Authenticating",
            StateName::Streaming => "Streaming",
            StateName::Stale => "Stale",
            StateName::Backoff => "Backoff",
        }
    }

    /// Returns the `status` value that WebSocket clients see for this state.
    pub fn client_status(self) -> &'static str {
        match self {
            StateName::Disconnected => "disconnected",
            StateName::Connecting => "connecting",
            StateName::Authenticating => "authenticating",
            StateName::Streaming => "connected",
            StateName::Stale => "stale",
            StateName::Backoff => "reconnecting",
        }
    }
}

impl std::fmt::Display for StateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
