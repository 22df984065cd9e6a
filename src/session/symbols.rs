//! The broker's symbol list: names normalised for clients, ids for the wire, and cached details.
//!
//! Broker names vary: the Open API's own example is `EUR/USD`, and brokers append account-type
//! suffixes such as `USD/JPY.P`. Clients ask for `EURUSD` and `USDJPY`, so names are normalised
//! by dropping the slash, dropping a trailing `.suffix` and upper-casing. When a plain and a
//! suffixed variant normalise to the same name, the plain one wins. The broker's own name is kept
//! for logs.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::pb;
use crate::protocol::symbol_name::split_suffix;
pub use crate::protocol::symbol_name::normalise;

/// Returns true when `broker_name` carries no broker suffix.
fn is_plain(broker_name: &str) -> bool {
    !split_suffix(broker_name.trim()).1
}

/// One tradable symbol from the broker's list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolEntry {
    pub id: i64,
    /// Normalised name, the one clients use.
    pub name: Arc<str>,
    /// The broker's own spelling, such as `EUR/USD.P`.
    pub broker_name: String,
}

/// Display details of a symbol, fetched once by id with `ProtoOASymbolByIdReq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymbolDetails {
    /// Decimal places prices are shown with.
    pub digits: u8,
    /// A pip is 10^-pip_position.
    pub pip_position: i32,
}

impl SymbolDetails {
    /// Reads digits and pip position from a full symbol, rejecting digits outside 0..=10.
    pub fn from_symbol(symbol: &pb::ProtoOaSymbol) -> Result<Self, String> {
        let digits = u8::try_from(symbol.digits)
            .ok()
            .filter(|digits| *digits <= 10)
            .ok_or_else(|| format!("symbol {} has invalid digits {}", symbol.symbol_id, symbol.digits))?;
        Ok(Self { digits, pip_position: symbol.pip_position })
    }
}

/// The normalised symbol list of one account.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    by_name: HashMap<Arc<str>, SymbolEntry>,
    by_id: HashMap<i64, Arc<str>>,
    names: Arc<[String]>,
}

impl SymbolTable {
    /// Builds the table from `ProtoOASymbolsListRes.symbol`, skipping disabled symbols.
    pub fn from_light_symbols(symbols: &[pb::ProtoOaLightSymbol]) -> Self {
        let mut by_name: HashMap<Arc<str>, SymbolEntry> = HashMap::new();
        for symbol in symbols {
            if symbol.enabled == Some(false) {
                continue;
            }
            let Some(broker_name) = symbol.symbol_name.as_deref().filter(|n| !n.trim().is_empty()) else {
                continue;
            };
            let name: Arc<str> = Arc::from(normalise(broker_name));
            let candidate = SymbolEntry { id: symbol.symbol_id, name: name.clone(), broker_name: broker_name.to_string() };

            match by_name.get(&name) {
                Some(existing) if !prefer(&candidate, existing) => {}
                _ => {
                    by_name.insert(name, candidate);
                }
            }
        }

        let by_id = by_name.values().map(|entry| (entry.id, entry.name.clone())).collect();
        let mut names: Vec<String> = by_name.keys().map(|name| name.to_string()).collect();
        names.sort();
        Self { by_name, by_id, names: Arc::from(names) }
    }

    /// Looks up a symbol by any spelling a user might send.
    pub fn get(&self, name: &str) -> Option<&SymbolEntry> {
        self.by_name.get(normalise(name).as_str())
    }

    /// Returns the normalised name for a symbol id.
    pub fn name_of(&self, id: i64) -> Option<&Arc<str>> {
        self.by_id.get(&id)
    }

    /// Sorted normalised names.
    pub fn names(&self) -> Arc<[String]> {
        self.names.clone()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Returns true when `candidate` should replace `existing` for the same normalised name: a plain
/// broker name beats a suffixed one, and otherwise the lower id wins so the choice is stable.
fn prefer(candidate: &SymbolEntry, existing: &SymbolEntry) -> bool {
    match (is_plain(&candidate.broker_name), is_plain(&existing.broker_name)) {
        (true, false) => true,
        (false, true) => false,
        _ => candidate.id < existing.id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn light(id: i64, name: &str, enabled: Option<bool>) -> pb::ProtoOaLightSymbol {
        pb::ProtoOaLightSymbol { symbol_id: id, symbol_name: Some(name.to_string()), enabled, ..Default::default() }
    }

    #[test]
    fn normalise_drops_slash_suffix_and_case() {
        assert_eq!(normalise("EUR/USD"), "EURUSD");
        assert_eq!(normalise("USD/JPY.P"), "USDJPY");
        assert_eq!(normalise("eurusd"), "EURUSD");
        assert_eq!(normalise(" GBPUSD.r "), "GBPUSD");
        assert_eq!(normalise("XAUUSD"), "XAUUSD");
    }

    #[test]
    fn normalise_keeps_long_or_symbolic_tails() {
        assert_eq!(normalise("US30.CASH1"), "US30.CASH1");
        assert_eq!(normalise(".P"), ".P");
    }

    #[test]
    fn table_prefers_plain_variant() {
        let table = SymbolTable::from_light_symbols(&[
            light(7, "EURUSD.P", None),
            light(9, "EURUSD", Some(true)),
            light(3, "USD/JPY.P", None),
        ]);

        let eurusd = table.get("EUR/USD").unwrap();
        assert_eq!(eurusd.id, 9);
        assert_eq!(eurusd.broker_name, "EURUSD");
        assert_eq!(table.get("usdjpy").unwrap().broker_name, "USD/JPY.P");
        assert_eq!(table.name_of(3).map(|n| n.as_ref()), Some("USDJPY"));
        assert_eq!(table.name_of(7), None);
        assert_eq!(&*table.names(), &["EURUSD".to_string(), "USDJPY".to_string()]);
    }

    #[test]
    fn table_prefers_slash_name_over_suffix() {
        let table = SymbolTable::from_light_symbols(&[light(2, "EURUSD.P", None), light(5, "EUR/USD", None)]);

        assert_eq!(table.get("EURUSD").unwrap().id, 5);
    }

    #[test]
    fn table_skips_disabled_and_unnamed() {
        let mut unnamed = light(4, "", None);
        unnamed.symbol_name = None;
        let table = SymbolTable::from_light_symbols(&[light(1, "EURUSD", Some(false)), unnamed, light(2, "  ", None)]);

        assert!(table.is_empty());
        assert!(table.get("EURUSD").is_none());
    }

    #[test]
    fn details_reject_invalid_digits() {
        let symbol = pb::ProtoOaSymbol { symbol_id: 1, digits: -1, pip_position: 4, ..Default::default() };
        assert!(SymbolDetails::from_symbol(&symbol).unwrap_err().contains("invalid digits -1"));

        let symbol = pb::ProtoOaSymbol { symbol_id: 1, digits: 5, pip_position: 4, ..Default::default() };
        assert_eq!(SymbolDetails::from_symbol(&symbol).unwrap(), SymbolDetails { digits: 5, pip_position: 4 });
    }
}
