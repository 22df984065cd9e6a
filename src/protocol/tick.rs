//! A merged top-of-book quote, the unit that flows from the session to the gateway.

use std::sync::Arc;

use super::price::Price;

/// One quote for one symbol, with both sides known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tick {
    /// Normalised symbol name, such as `EURUSD`.
    pub symbol: Arc<str>,
    pub bid: Price,
    pub ask: Price,
    /// Server timestamp in Unix milliseconds, when the server sent one.
    pub server_time_ms: Option<i64>,
    /// Local receive time in Unix milliseconds.
    pub received_at_ms: i64,
}

impl Tick {
    /// Returns the time clients see: the server's timestamp, else the local receive time.
    pub fn timestamp_ms(&self) -> i64 {
        self.server_time_ms.unwrap_or(self.received_at_ms)
    }
}
