//! Simulated prices: one order book per symbol, moved by a random walk or by a replayed tick
//! file, with a bounded history from which trendbar and tick-data requests are served.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use tokio::sync::{broadcast, watch};

use super::symbols::{SymbolSpec, SYMBOLS};
use crate::protocol::pb::ProtoOaTrendbarPeriod as Period;
use crate::protocol::{Bar, Price};

/// Ticks kept per symbol. At 30 s spacing the backfill alone is 10 080 ticks (3.5 days).
const HISTORY_CAP: usize = 200_000;

/// Spacing of the synthetic history generated at start.
const BACKFILL_STEP_MS: i64 = 30_000;

/// Span of the synthetic history: the largest M1 request cTrader allows (3.5 days).
const BACKFILL_SPAN_MS: i64 = 302_400_000;

/// A book after a change, prices in 1/100000 units. Connections work out which side moved by
/// comparing with what they last sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quote {
    pub symbol_id: i64,
    pub bid: u64,
    pub ask: u64,
    pub time_ms: i64,
    /// Change counter of this symbol's book, so a receiver can skip quotes older than a snapshot.
    pub sequence: u64,
}

#[derive(Clone, Copy, Debug)]
struct Point {
    time_ms: i64,
    bid: u64,
    ask: u64,
}

struct Book {
    spec: &'static SymbolSpec,
    bid: u64,
    ask: u64,
    sequence: u64,
    history: VecDeque<Point>,
}

/// All books, their histories, and the broadcast of every change.
pub(crate) struct Market {
    books: Mutex<HashMap<i64, Book>>,
    /// Live subscriptions per symbol across all connections; the walk moves only these.
    subscribers: Mutex<HashMap<i64, usize>>,
    /// Symbols driven by a replay file, which the random walk leaves alone.
    replayed: Mutex<HashSet<i64>>,
    quotes: broadcast::Sender<Quote>,
}

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Market {
    /// Creates books at each symbol's start price with 3.5 days of synthetic history before now.
    pub fn new(start_overrides: &HashMap<i64, (u64, u64)>) -> Self {
        let now = now_ms();
        let mut rng = rand::thread_rng();
        let mut books = HashMap::new();
        for spec in SYMBOLS {
            let (bid, ask) = start_overrides.get(&spec.id).copied().unwrap_or((spec.start_bid, spec.start_bid + spec.spread()));
            let history = backfill(spec, bid, ask, now, &mut rng);
            books.insert(spec.id, Book { spec, bid, ask, sequence: 0, history });
        }
        let (quotes, _) = broadcast::channel(16_384);
        Self {
            books: Mutex::new(books),
            subscribers: Mutex::new(HashMap::new()),
            replayed: Mutex::new(HashSet::new()),
            quotes,
        }
    }

    pub fn subscribe_quotes(&self) -> broadcast::Receiver<Quote> {
        self.quotes.subscribe()
    }

    /// Returns the current book of a symbol.
    pub fn current(&self, symbol_id: i64) -> Option<Quote> {
        let books = self.books.lock().expect("market lock");
        books.get(&symbol_id).map(|b| Quote { symbol_id, bid: b.bid, ask: b.ask, time_ms: now_ms(), sequence: b.sequence })
    }

    pub fn add_subscriber(&self, symbol_id: i64) {
        *self.subscribers.lock().expect("market lock").entry(symbol_id).or_default() += 1;
    }

    pub fn remove_subscriber(&self, symbol_id: i64) {
        let mut subscribers = self.subscribers.lock().expect("market lock");
        if let Some(count) = subscribers.get_mut(&symbol_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                subscribers.remove(&symbol_id);
            }
        }
    }

    /// Returns live subscriptions per symbol id.
    pub fn subscriber_counts(&self) -> HashMap<i64, usize> {
        self.subscribers.lock().expect("market lock").clone()
    }

    pub fn mark_replayed(&self, symbol_id: i64) {
        self.replayed.lock().expect("market lock").insert(symbol_id);
    }

    /// Sets a book to `bid`/`ask`, records the change and broadcasts it. Returns false when
    /// neither side moved, in which case nothing is sent.
    pub fn apply(&self, symbol_id: i64, bid: u64, ask: u64) -> bool {
        let time_ms = now_ms();
        let sequence = {
            let mut books = self.books.lock().expect("market lock");
            let Some(book) = books.get_mut(&symbol_id) else { return false };
            if book.bid == bid && book.ask == ask {
                return false;
            }
            book.bid = bid;
            book.ask = ask;
            if book.history.len() >= HISTORY_CAP {
                book.history.pop_front();
            }
            book.history.push_back(Point { time_ms, bid, ask });
            book.sequence += 1;

            // Sending under the lock keeps quotes of one symbol in sequence order. It fails
            // only when no connection is open, which is normal.
            let _ = self.quotes.send(Quote { symbol_id, bid, ask, time_ms, sequence: book.sequence });
            book.sequence
        };
        tracing::trace!(symbol_id, bid, ask, sequence, "book changed");
        true
    }

    /// Moves every subscribed, non-replayed symbol one random step.
    pub fn step_random_walk(&self, rng: &mut impl Rng) {
        let active: Vec<i64> = {
            let subscribers = self.subscribers.lock().expect("market lock");
            let replayed = self.replayed.lock().expect("market lock");
            subscribers.keys().filter(|id| !replayed.contains(id)).copied().collect()
        };
        for symbol_id in active {
            let next = {
                let books = self.books.lock().expect("market lock");
                let Some(book) = books.get(&symbol_id) else { continue };
                walk_step(book.spec, book.bid, book.ask, rng)
            };
            self.apply(symbol_id, next.0, next.1);
        }
    }

    /// Aggregates bid bars of `period` from the ticks in `[from_ms, to_ms)`, oldest first.
    pub fn bars(&self, symbol_id: i64, period: Period, from_ms: i64, to_ms: i64) -> Vec<Bar> {
        let books = self.books.lock().expect("market lock");
        let Some(book) = books.get(&symbol_id) else { return Vec::new() };
        let digits = book.spec.digits as u8;

        let mut bars: Vec<Bar> = Vec::new();
        for point in book.history.iter().filter(|p| p.time_ms >= from_ms && p.time_ms < to_ms) {
            let start = period_start(period, point.time_ms);
            let price = Price::new(point.bid, digits);
            match bars.last_mut() {
                Some(bar) if bar.time_ms == start => {
                    bar.high = bar.high.max(price);
                    bar.low = bar.low.min(price);
                    bar.close = price;
                    bar.volume += 1;
                }
                _ => bars.push(Bar { time_ms: start, open: price, high: price, low: price, close: price, volume: 1 }),
            }
        }
        bars
    }

    /// Returns the bar of `period` that is forming now, if the symbol had ticks in it.
    pub fn forming_bar(&self, symbol_id: i64, period: Period) -> Option<Bar> {
        let start = period_start(period, now_ms());
        let books = self.books.lock().expect("market lock");
        let book = books.get(&symbol_id)?;
        let digits = book.spec.digits as u8;

        // Walk back from the newest tick, so the cost is the number of ticks in this bar.
        let mut bar: Option<Bar> = None;
        for point in book.history.iter().rev().take_while(|p| p.time_ms >= start) {
            let price = Price::new(point.bid, digits);
            let bar = bar.get_or_insert(Bar { time_ms: start, open: price, high: price, low: price, close: price, volume: 0 });
            bar.open = price;
            bar.high = bar.high.max(price);
            bar.low = bar.low.min(price);
            bar.volume += 1;
        }
        bar
    }

    /// Returns one side's ticks in `[from_ms, to_ms]`, newest first, skipping entries where
    /// that side did not move.
    pub fn ticks(&self, symbol_id: i64, ask_side: bool, from_ms: i64, to_ms: i64) -> Vec<(i64, u64)> {
        let books = self.books.lock().expect("market lock");
        let Some(book) = books.get(&symbol_id) else { return Vec::new() };

        let mut out = Vec::new();
        let mut previous: Option<u64> = None;
        for point in book.history.iter() {
            let price = if ask_side { point.ask } else { point.bid };
            let moved = previous != Some(price);
            previous = Some(price);
            if moved && point.time_ms >= from_ms && point.time_ms <= to_ms {
                out.push((point.time_ms, price));
            }
        }
        out.reverse();
        out
    }
}

/// Returns the next book after one random step: usually one side moves, sometimes both.
fn walk_step(spec: &SymbolSpec, bid: u64, ask: u64, rng: &mut impl Rng) -> (u64, u64) {
    let point = spec.point() as i64;
    let spread = spec.spread() as i64;
    let (bid, ask) = (bid as i64, ask as i64);

    // Pull back towards the start price once the walk has drifted more than 2 %.
    let drift = (bid - spec.start_bid as i64) as f64 / spec.start_bid as f64;
    let bias = if drift > 0.02 { -1 } else if drift < -0.02 { 1 } else { 0 };
    let kind = rng.gen_range(0..10);
    let mut delta = || (rng.gen_range(-3..=3) + bias) * point;

    let (mut new_bid, mut new_ask) = match kind {
        0..=3 => (bid + delta(), ask),
        4..=7 => (bid, ask + delta()),
        _ => {
            let shift = delta();
            (bid + shift, ask + shift)
        }
    };

    // Keep the spread between one point and three times the typical spread.
    if new_ask - new_bid < point {
        if new_bid != bid {
            new_bid = new_ask - point;
        } else {
            new_ask = new_bid + point;
        }
    }
    if new_ask - new_bid > 3 * spread {
        if new_bid != bid {
            new_bid = new_ask - spread;
        } else {
            new_ask = new_bid + spread;
        }
    }
    (new_bid.max(point) as u64, new_ask.max(2 * point) as u64)
}

/// Generates a walk backwards from the start book, so history ends where live prices begin.
fn backfill(spec: &SymbolSpec, bid: u64, ask: u64, now: i64, rng: &mut impl Rng) -> VecDeque<Point> {
    let steps = (BACKFILL_SPAN_MS / BACKFILL_STEP_MS) as usize;
    let mut points = Vec::with_capacity(steps);
    let (mut bid, mut ask) = (bid, ask);
    for i in 0..steps {
        points.push(Point { time_ms: now - i as i64 * BACKFILL_STEP_MS, bid, ask });
        (bid, ask) = walk_step(spec, bid, ask, rng);
    }
    points.reverse();
    points.into()
}

/// Returns the open time of the bar of `period` that contains `time_ms`, in UTC.
pub(crate) fn period_start(period: Period, time_ms: i64) -> i64 {
    const MINUTE: i64 = 60_000;
    const DAY: i64 = 1_440 * MINUTE;
    let fixed = |length: i64| time_ms.div_euclid(length) * length;
    match period {
        Period::M1 => fixed(MINUTE),
        Period::M2 => fixed(2 * MINUTE),
        Period::M3 => fixed(3 * MINUTE),
        Period::M4 => fixed(4 * MINUTE),
        Period::M5 => fixed(5 * MINUTE),
        Period::M10 => fixed(10 * MINUTE),
        Period::M15 => fixed(15 * MINUTE),
        Period::M30 => fixed(30 * MINUTE),
        Period::H1 => fixed(60 * MINUTE),
        Period::H4 => fixed(240 * MINUTE),
        Period::H12 => fixed(720 * MINUTE),
        Period::D1 => fixed(DAY),
        // NOTE: weekly bars open on Monday 00:00 UTC here. The Unix epoch was a Thursday, so
        // Monday is 4 days later. cTrader's own weekly boundary is not documented.
        Period::W1 => (time_ms - 4 * DAY).div_euclid(7 * DAY) * 7 * DAY + 4 * DAY,
        Period::Mn1 => {
            let date = Utc.timestamp_millis_opt(time_ms).single().unwrap_or_default();
            Utc.with_ymd_and_hms(date.year(), date.month(), 1, 0, 0, 0).single().map_or(0, |d| d.timestamp_millis())
        }
    }
}

/// Largest `to - from` span cTrader accepts in one `GetTrendbarsReq`, per period, in ms.
pub(crate) fn max_trendbar_span_ms(period: Period) -> i64 {
    match period {
        Period::M1 | Period::M2 | Period::M3 | Period::M4 | Period::M5 => 302_400_000,
        Period::M10 | Period::M15 | Period::M30 | Period::H1 => 21_168_000_000,
        Period::H4 | Period::H12 | Period::D1 => 31_622_400_000,
        Period::W1 | Period::Mn1 => 158_112_000_000,
    }
}

/// Steps the random walk `tick_rate` times per second for every subscribed symbol until
/// `shutdown` turns true.
pub(crate) async fn run_random_walk(market: std::sync::Arc<Market>, tick_rate: f64, mut shutdown: watch::Receiver<bool>) {
    if tick_rate <= 0.0 {
        return;
    }

    // Timers below 1 ms are not reliable, so high rates take several steps per wake-up.
    let period = Duration::from_secs_f64((1.0 / tick_rate).max(0.001));
    let steps_per_wake = (tick_rate * period.as_secs_f64()).round().max(1.0) as usize;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = rand::rngs::StdRng::from_entropy();

    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = interval.tick() => {
                for _ in 0..steps_per_wake {
                    market.step_random_walk(&mut rng);
                }
            }
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_keeps_spread_positive() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for spec in SYMBOLS {
            let (mut bid, mut ask) = (spec.start_bid, spec.start_bid + spec.spread());
            for _ in 0..5_000 {
                (bid, ask) = walk_step(spec, bid, ask, &mut rng);
                assert!(ask > bid, "{} crossed: {bid} {ask}", spec.broker_name);
                assert_eq!(bid % spec.point(), 0, "{} bid off its digits", spec.broker_name);
            }
        }
    }

    #[test]
    fn period_start_aligns_bars() {
        // 2024-03-15 13:47:12.345 UTC, a Friday.
        let t = 1_710_510_432_345;
        assert_eq!(period_start(Period::M1, t), 1_710_510_420_000);
        assert_eq!(period_start(Period::H1, t), 1_710_507_600_000);
        assert_eq!(period_start(Period::D1, t), 1_710_460_800_000);
        assert_eq!(period_start(Period::W1, t), 1_710_115_200_000); // Monday 2024-03-11
        assert_eq!(period_start(Period::Mn1, t), 1_709_251_200_000); // 2024-03-01
    }

    #[test]
    fn bars_match_history() {
        let market = Market::new(&HashMap::new());
        let now = now_ms();
        let bars = market.bars(1, Period::H1, now - 86_400_000, now + 1);
        assert!(bars.len() >= 24, "one day of hourly bars, got {}", bars.len());
        for bar in &bars {
            assert!(bar.low <= bar.open, "{bar:?}");
            assert!(bar.open <= bar.high, "{bar:?}");
            assert!(bar.low <= bar.close, "{bar:?}");
            assert!(bar.close <= bar.high, "{bar:?}");
        }

        // The first and last hour are cut by the query range; every hour between is whole.
        for bar in &bars[1..bars.len() - 1] {
            assert_eq!(bar.volume, 120, "30 s spacing gives 120 ticks an hour");
        }
    }
}
