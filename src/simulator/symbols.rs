//! The simulator's symbol table: FX pairs and metals with the ids, digits and pip positions a
//! cTrader demo broker typically uses, some under broker-style names.

use serde::{Deserialize, Serialize};

use crate::protocol::pb;
pub use crate::protocol::symbol_name::normalise;

/// A symbol as the simulator publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolInfo {
    pub id: i64,
    /// The broker's name, exactly as `ProtoOASymbolsListRes` carries it (for example `EUR/USD`).
    pub broker_name: String,
    /// The name with separators and broker suffixes removed (for example `EURUSD`).
    pub name: String,
    /// Display precision of prices.
    pub digits: u32,
    /// A pip is 10^-pip_position.
    pub pip_position: i32,
    pub description: String,
}

/// Static data for one symbol: identity plus the random walk's starting book.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SymbolSpec {
    pub id: i64,
    pub broker_name: &'static str,
    pub description: &'static str,
    pub digits: u32,
    pub pip_position: i32,
    pub base_asset_id: i64,
    pub quote_asset_id: i64,
    /// Starting bid in 1/100000 units.
    pub start_bid: u64,
    /// Typical spread in points, where a point is 10^-digits.
    pub spread_points: u64,
    /// Forex = 1, metals = 2, as categories on a cTrader demo server.
    pub category_id: i64,
}

impl SymbolSpec {
    /// Returns the smallest price step in 1/100000 units: 1 for 5 digits, 100 for 3 digits.
    pub fn point(&self) -> u64 {
        10u64.pow(5u32.saturating_sub(self.digits))
    }

    pub fn spread(&self) -> u64 {
        self.spread_points * self.point()
    }

    pub fn info(&self) -> SymbolInfo {
        SymbolInfo {
            id: self.id,
            broker_name: self.broker_name.to_string(),
            name: normalise(self.broker_name),
            digits: self.digits,
            pip_position: self.pip_position,
            description: self.description.to_string(),
        }
    }

    pub fn light(&self) -> pb::ProtoOaLightSymbol {
        pb::ProtoOaLightSymbol {
            symbol_id: self.id,
            symbol_name: Some(self.broker_name.to_string()),
            enabled: Some(true),
            base_asset_id: Some(self.base_asset_id),
            quote_asset_id: Some(self.quote_asset_id),
            symbol_category_id: Some(self.category_id),
            description: Some(self.description.to_string()),
            sorting_number: Some(self.id as f64),
        }
    }

    pub fn full(&self) -> pb::ProtoOaSymbol {
        pb::ProtoOaSymbol {
            symbol_id: self.id,
            digits: self.digits as i32,
            pip_position: self.pip_position,
            enable_short_selling: Some(true),
            guaranteed_stop_loss: Some(false),
            swap_rollover3_days: Some(pb::ProtoOaDayOfWeek::Wednesday as i32),
            swap_long: Some(-6.5),
            swap_short: Some(1.2),
        }
    }
}

// Asset ids as on a cTrader demo server: each currency or metal has one id.
const EUR: i64 = 1;
const USD: i64 = 2;
const GBP: i64 = 3;
const JPY: i64 = 4;
const AUD: i64 = 5;
const CHF: i64 = 6;
const CAD: i64 = 7;
const NZD: i64 = 8;
const NOK: i64 = 9;
const XAU: i64 = 10;
const XAG: i64 = 11;

macro_rules! spec {
    ($id:expr, $name:expr, $desc:expr, $digits:expr, $pip:expr, $base:expr, $quote:expr, $bid:expr, $spread:expr, $cat:expr) => {
        SymbolSpec {
            id: $id,
            broker_name: $name,
            description: $desc,
            digits: $digits,
            pip_position: $pip,
            base_asset_id: $base,
            quote_asset_id: $quote,
            start_bid: $bid,
            spread_points: $spread,
            category_id: $cat,
        }
    };
}

/// The symbols listed for every simulated account. JPY pairs have 3 digits and pip position 2, the
/// other FX pairs 5 and 4, gold 2 and 1, silver 3 and 2.
pub(crate) const SYMBOLS: &[SymbolSpec] = &[
    spec!(1, "EUR/USD", "Euro vs US Dollar", 5, 4, EUR, USD, 108_500, 6, 1),
    spec!(2, "GBPUSD", "British Pound vs US Dollar", 5, 4, GBP, USD, 126_800, 9, 1),
    spec!(3, "EURJPY", "Euro vs Japanese Yen", 3, 2, EUR, JPY, 16_230_000, 12, 1),
    spec!(4, "USD/JPY", "US Dollar vs Japanese Yen", 3, 2, USD, JPY, 14_950_000, 8, 1),
    spec!(5, "AUDUSD", "Australian Dollar vs US Dollar", 5, 4, AUD, USD, 65_400, 8, 1),
    spec!(6, "USDCHF", "US Dollar vs Swiss Franc", 5, 4, USD, CHF, 88_200, 10, 1),
    spec!(7, "GBPJPY", "British Pound vs Japanese Yen", 3, 2, GBP, JPY, 18_960_000, 20, 1),
    spec!(8, "USDCAD", "US Dollar vs Canadian Dollar", 5, 4, USD, CAD, 136_100, 11, 1),
    spec!(9, "EURGBP", "Euro vs British Pound", 5, 4, EUR, GBP, 85_600, 9, 1),
    spec!(10, "EURCHF", "Euro vs Swiss Franc", 5, 4, EUR, CHF, 95_700, 12, 1),
    spec!(11, "AUDJPY", "Australian Dollar vs Japanese Yen", 3, 2, AUD, JPY, 9_780_000, 14, 1),
    spec!(12, "NZDUSD", "New Zealand Dollar vs US Dollar", 5, 4, NZD, USD, 60_200, 12, 1),
    spec!(13, "CHFJPY", "Swiss Franc vs Japanese Yen", 3, 2, CHF, JPY, 16_950_000, 22, 1),
    spec!(14, "EURAUD", "Euro vs Australian Dollar", 5, 4, EUR, AUD, 165_900, 18, 1),
    spec!(15, "CADJPY", "Canadian Dollar vs Japanese Yen", 3, 2, CAD, JPY, 10_980_000, 18, 1),
    spec!(16, "GBPAUD", "British Pound vs Australian Dollar", 5, 4, GBP, AUD, 193_900, 25, 1),
    spec!(17, "EURCAD", "Euro vs Canadian Dollar", 5, 4, EUR, CAD, 147_600, 20, 1),
    spec!(18, "AUDCAD", "Australian Dollar vs Canadian Dollar", 5, 4, AUD, CAD, 89_000, 18, 1),
    spec!(19, "GBPCAD.r1", "British Pound vs Canadian Dollar", 5, 4, GBP, CAD, 172_600, 28, 1),
    spec!(20, "AUDNZD", "Australian Dollar vs New Zealand Dollar", 5, 4, AUD, NZD, 108_600, 20, 1),
    spec!(21, "NZDJPY", "New Zealand Dollar vs Japanese Yen", 3, 2, NZD, JPY, 9_000_000, 20, 1),
    spec!(22, "USDNOK", "US Dollar vs Norwegian Krone", 5, 4, USD, NOK, 1_065_000, 450, 1),
    spec!(41, "XAUUSD", "Gold vs US Dollar", 2, 1, XAU, USD, 203_145_000, 25, 2),
    spec!(42, "XAGUSD", "Silver vs US Dollar", 3, 2, XAG, USD, 2_315_000, 25, 2),
    spec!(1041, "XAUUSD.P", "Gold vs US Dollar (pro)", 2, 1, XAU, USD, 203_146_000, 15, 2),
];

pub(crate) fn spec(id: i64) -> Option<&'static SymbolSpec> {
    SYMBOLS.iter().find(|s| s.id == id)
}

/// Finds a symbol by normalised name, preferring the one without a broker suffix.
pub(crate) fn spec_by_name(name: &str) -> Option<&'static SymbolSpec> {
    let wanted = normalise(name);
    SYMBOLS
        .iter()
        .filter(|s| normalise(s.broker_name) == wanted)
        .min_by_key(|s| s.broker_name.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_strips_slash_and_suffix() {
        assert_eq!(normalise("EUR/USD"), "EURUSD");
        assert_eq!(normalise("XAUUSD.P"), "XAUUSD");
        assert_eq!(normalise("GBPCAD.r1"), "GBPCAD");
        assert_eq!(normalise("usd/jpy"), "USDJPY");
        assert_eq!(normalise("EURUSD"), "EURUSD");
    }

    #[test]
    fn symbol_table_is_consistent() {
        assert!(SYMBOLS.len() >= 20);
        for spec in SYMBOLS {
            assert!(spec.digits <= 5, "{}", spec.broker_name);
            assert!(spec.pip_position < spec.digits as i32, "{}", spec.broker_name);
            assert_eq!(SYMBOLS.iter().filter(|s| s.id == spec.id).count(), 1, "duplicate id {}", spec.id);
            assert_eq!(spec.start_bid % spec.point(), 0, "{} start price off its digits", spec.broker_name);
        }
    }

    #[test]
    fn spec_by_name_prefers_unsuffixed() {
        assert_eq!(spec_by_name("XAUUSD").map(|s| s.id), Some(41));
        assert_eq!(spec_by_name("EURUSD").map(|s| s.id), Some(1));
        assert!(spec_by_name("BTCUSD").is_none());
    }
}
