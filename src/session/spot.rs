//! Merges cTrader spot events into complete quotes, one symbol at a time.
//!
//! A spot event may carry only the side that changed, so the last known bid and ask are kept per
//! symbol and an event overlays whichever sides it has. A tick is produced only once both sides
//! are known. Zero prices and crossed quotes (bid above ask, seen around rollover) are dropped and
//! counted instead of reaching clients.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::{Price, Tick};

/// The reason a spot event produced no tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoTick {
    /// The event carried no price (for example only live trendbars).
    NoPrice,
    /// One side is still unknown on this connection.
    Incomplete,
    /// A side was zero; the event was ignored.
    ZeroPrice,
    /// Bid above ask after merging; no tick until the quote is uncrossed.
    Crossed,
}

/// Counts of dropped spot events, for logs and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub zero_price: u64,
    pub crossed: u64,
}

/// One spot event's prices, already taken out of the protobuf message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpotUpdate {
    pub symbol_id: i64,
    pub bid: Option<u64>,
    pub ask: Option<u64>,
    /// Server time in Unix milliseconds, when the subscription asked for it.
    pub timestamp_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Quote {
    bid: Option<u64>,
    ask: Option<u64>,
}

/// The last known bid and ask of every symbol on the current connection.
#[derive(Debug, Default)]
pub struct SpotBook {
    quotes: HashMap<i64, Quote>,
    drops: DropCounts,
}

impl SpotBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one update for `symbol` shown at `digits`, returning a tick when both sides are
    /// known and sane.
    pub fn apply(&mut self, update: SpotUpdate, symbol: &Arc<str>, digits: u8, received_at_ms: i64) -> Result<Tick, NoTick> {
        if update.bid.is_none() && update.ask.is_none() {
            return Err(NoTick::NoPrice);
        }
        if update.bid == Some(0) || update.ask == Some(0) {
            self.drops.zero_price += 1;
            warn_counted("zero price in spot event", symbol, self.drops.zero_price);
            return Err(NoTick::ZeroPrice);
        }

        // The server's newest values are kept even when they cross, so the next one-sided update
        // merges with the latest other side rather than a stale one.
        let quote = self.quotes.entry(update.symbol_id).or_default();
        if update.bid.is_some() {
            quote.bid = update.bid;
        }
        if update.ask.is_some() {
            quote.ask = update.ask;
        }
        let (Some(bid), Some(ask)) = (quote.bid, quote.ask) else {
            return Err(NoTick::Incomplete);
        };
        if bid > ask {
            self.drops.crossed += 1;
            warn_counted("crossed quote in spot event", symbol, self.drops.crossed);
            return Err(NoTick::Crossed);
        }

        Ok(Tick {
            symbol: symbol.clone(),
            bid: Price::new(bid, digits),
            ask: Price::new(ask, digits),
            server_time_ms: update.timestamp_ms.filter(|ms| *ms > 0),
            received_at_ms,
        })
    }

    /// Forgets one symbol's quote, for example after it was unsubscribed.
    pub fn forget(&mut self, symbol_id: i64) {
        self.quotes.remove(&symbol_id);
    }

    /// Forgets every quote; a new connection starts from the server's first spot event again.
    pub fn clear(&mut self) {
        self.quotes.clear();
    }

    pub fn drops(&self) -> DropCounts {
        self.drops
    }
}

/// Logs the 1st, 10th, 100th, ... occurrence so a bad feed cannot flood the log.
fn warn_counted(message: &'static str, symbol: &str, count: u64) {
    let mut threshold = 1;
    while threshold < count {
        threshold *= 10;
    }
    if threshold == count {
        tracing::warn!(symbol, count, "{message}, dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck_macros::quickcheck;

    fn update(bid: Option<u64>, ask: Option<u64>) -> SpotUpdate {
        SpotUpdate { symbol_id: 1, bid, ask, timestamp_ms: Some(1_700_000_000_000) }
    }

    fn eurusd() -> Arc<str> {
        Arc::from("EURUSD")
    }

    #[test]
    fn tick_waits_for_both_sides() {
        let mut book = SpotBook::new();

        assert_eq!(book.apply(update(Some(108_560), None), &eurusd(), 5, 10), Err(NoTick::Incomplete));
        let tick = book.apply(update(None, Some(108_570)), &eurusd(), 5, 11).unwrap();

        assert_eq!(tick.bid.to_string(), "1.08560");
        assert_eq!(tick.ask.to_string(), "1.08570");
        assert_eq!(tick.server_time_ms, Some(1_700_000_000_000));
        assert_eq!(tick.received_at_ms, 11);
        assert_eq!(&*tick.symbol, "EURUSD");
    }

    #[test]
    fn missing_side_means_unchanged() {
        let mut book = SpotBook::new();
        book.apply(update(Some(108_560), Some(108_570)), &eurusd(), 5, 1).unwrap();

        let tick = book.apply(update(None, Some(108_590)), &eurusd(), 5, 2).unwrap();

        assert_eq!(tick.bid.raw, 108_560);
        assert_eq!(tick.ask.raw, 108_590);
    }

    #[test]
    fn prices_use_symbol_digits() {
        let mut book = SpotBook::new();
        let usdjpy: Arc<str> = Arc::from("USDJPY");

        let tick = book.apply(update(Some(15_012_300), Some(15_012_500)), &usdjpy, 3, 1).unwrap();

        assert_eq!(tick.bid.to_string(), "150.123");
        assert_eq!(tick.ask.to_string(), "150.125");
    }

    #[test]
    fn zero_price_is_dropped_and_counted() {
        let mut book = SpotBook::new();
        book.apply(update(Some(108_560), Some(108_570)), &eurusd(), 5, 1).unwrap();

        assert_eq!(book.apply(update(Some(0), None), &eurusd(), 5, 2), Err(NoTick::ZeroPrice));
        let tick = book.apply(update(None, Some(108_580)), &eurusd(), 5, 3).unwrap();

        assert_eq!(tick.bid.raw, 108_560);
        assert_eq!(book.drops().zero_price, 1);
    }

    #[test]
    fn crossed_quote_is_dropped_until_uncrossed() {
        let mut book = SpotBook::new();
        book.apply(update(Some(108_560), Some(108_570)), &eurusd(), 5, 1).unwrap();

        assert_eq!(book.apply(update(Some(108_600), None), &eurusd(), 5, 2), Err(NoTick::Crossed));
        let tick = book.apply(update(None, Some(108_610)), &eurusd(), 5, 3).unwrap();

        assert_eq!((tick.bid.raw, tick.ask.raw), (108_600, 108_610));
        assert_eq!(book.drops().crossed, 1);
    }

    #[test]
    fn event_without_prices_is_no_tick() {
        let mut book = SpotBook::new();

        assert_eq!(book.apply(update(None, None), &eurusd(), 5, 1), Err(NoTick::NoPrice));
    }

    #[test]
    fn clear_forgets_known_sides() {
        let mut book = SpotBook::new();
        book.apply(update(Some(108_560), Some(108_570)), &eurusd(), 5, 1).unwrap();

        book.clear();

        assert_eq!(book.apply(update(Some(108_560), None), &eurusd(), 5, 2), Err(NoTick::Incomplete));
    }

    #[test]
    fn missing_server_time_is_none() {
        let mut book = SpotBook::new();
        let mut first = update(Some(1), Some(2));
        first.timestamp_ms = None;

        assert_eq!(book.apply(first, &eurusd(), 5, 1).unwrap().server_time_ms, None);
    }

    /// Every emitted tick equals the latest non-zero value seen for each side, and is uncrossed.
    #[quickcheck]
    fn ticks_reflect_latest_sides(events: Vec<(Option<u32>, Option<u32>)>) -> bool {
        let mut book = SpotBook::new();
        let (mut bid, mut ask) = (None, None);
        for (raw_bid, raw_ask) in events {
            let (b, a) = (raw_bid.map(u64::from), raw_ask.map(u64::from));
            let result = book.apply(update(b, a), &eurusd(), 5, 0);
            if b != Some(0) && a != Some(0) {
                bid = b.or(bid);
                ask = a.or(ask);
            }
            match result {
                Ok(tick) => {
                    if Some(tick.bid.raw) != bid || Some(tick.ask.raw) != ask || tick.bid.raw > tick.ask.raw {
                        return false;
                    }
                }
                Err(NoTick::Incomplete) if bid.is_some() && ask.is_some() => return false,
                Err(_) => {}
            }
        }
        true
    }
}
