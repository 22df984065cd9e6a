//! Symbol names as clients use them.
//!
//! Broker names vary: the Open API's own example is `EUR/USD`, and brokers append account-type
//! suffixes such as `USD/JPY.P`. Clients ask for `EURUSD` and `USDJPY`. The session, the
//! simulator and the gateway all normalise with this one function, so a name means the same
//! symbol everywhere.

/// Maximum length of a trailing `.suffix` treated as a broker suffix; a longer tail is part of
/// the name.
const MAX_SUFFIX_LEN: usize = 4;

/// Normalises a broker or user symbol name: `EUR/USD` → `EURUSD`, `usdjpy.p` → `USDJPY`.
///
/// Every trailing suffix is dropped, not only the last, so that normalising a normalised name
/// changes nothing. Inner white space is kept, so that the gateway can reject `EUR USD`.
pub fn normalise(name: &str) -> String {
    let without_slash: String = name.chars().filter(|c| *c != '/').collect();
    let mut base = without_slash.trim();
    while let (shorter, true) = split_suffix(base) {
        base = shorter.trim_end();
    }
    base.to_ascii_uppercase()
}

/// Splits a trailing broker suffix (`.P`, `.r`, `.m1`) off a name; returns the base and whether
/// there was one.
pub(crate) fn split_suffix(name: &str) -> (&str, bool) {
    match name.rsplit_once('.') {
        Some((base, suffix))
            if !base.is_empty()
                && !suffix.is_empty()
                && suffix.len() <= MAX_SUFFIX_LEN
                && suffix.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            (base, true)
        }
        _ => (name, false),
    }
}


#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn normalise_strips_slash_and_suffixes() {
        assert_eq!(normalise("EUR/USD"), "EURUSD");
        assert_eq!(normalise("usd/jpy.p"), "USDJPY");
        assert_eq!(normalise("XAUUSD.r.m1"), "XAUUSD");
        assert_eq!(normalise(" GBPUSD "), "GBPUSD");
    }

    #[quickcheck_macros::quickcheck]
    fn normalise_is_idempotent(name: String) -> bool {
        let once = normalise(&name);
        normalise(&once) == once
    }
}
