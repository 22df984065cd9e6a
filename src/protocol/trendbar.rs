//! Bars (trendbars) as cTrader sends them: `low` absolute, the other prices as unsigned offsets
//! above `low`, and the open time in minutes since the Unix epoch.

use super::pb;
use super::price::Price;

/// One decoded bar. Prices are bid prices in 1/100000 units at the symbol's digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Bar open time in Unix milliseconds.
    pub time_ms: i64,
    pub open: Price,
    pub high: Price,
    pub low: Price,
    pub close: Price,
    /// Number of ticks in the bar.
    pub volume: i64,
}

/// A trendbar that cannot be turned into a [`Bar`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrendbarError {
    #[error("trendbar has no low price; the server must send low for every bar")]
    MissingLow,
    #[error("trendbar has no open time (utcTimestampInMinutes)")]
    MissingTime,
    #[error("trendbar low {0} is negative; prices are positive in 1/100000 units")]
    NegativeLow(i64),
    #[error("trendbar {field} offset {delta} above low {low} overflows a 64-bit price")]
    Overflow { field: &'static str, low: u64, delta: u64 },
    #[error("bar {field} {value} is below its low {low}, so it has no unsigned offset")]
    BelowLow { field: &'static str, value: u64, low: u64 },
}

/// Decodes a trendbar for a symbol with `digits` display digits.
pub fn decode(bar: &pb::ProtoOaTrendbar, digits: u8) -> Result<Bar, TrendbarError> {
    let low = bar.low.ok_or(TrendbarError::MissingLow)?;
    let low = u64::try_from(low).map_err(|_| TrendbarError::NegativeLow(low))?;
    let minutes = bar.utc_timestamp_in_minutes.ok_or(TrendbarError::MissingTime)?;

    // Absent offsets are zero: proto2 leaves an unset optional off the wire, and a bar whose
    // open equals its low has nothing to send.
    let above = |field: &'static str, delta: Option<u64>| {
        let delta = delta.unwrap_or(0);
        low.checked_add(delta).map(|raw| Price::new(raw, digits)).ok_or(TrendbarError::Overflow { field, low, delta })
    };

    Ok(Bar {
        time_ms: i64::from(minutes) * 60_000,
        open: above("open", bar.delta_open)?,
        high: above("high", bar.delta_high)?,
        low: Price::new(low, digits),
        close: above("close", bar.delta_close)?,
        volume: bar.volume,
    })
}

/// Encodes a bar for the wire with the given period. The time is truncated to whole minutes.
pub fn encode(bar: &Bar, period: pb::ProtoOaTrendbarPeriod) -> Result<pb::ProtoOaTrendbar, TrendbarError> {
    let low = bar.low.raw;
    let offset = |field: &'static str, price: Price| {
        price.raw.checked_sub(low).ok_or(TrendbarError::BelowLow { field, value: price.raw, low })
    };
    let low_signed = i64::try_from(low).map_err(|_| TrendbarError::Overflow { field: "low", low, delta: 0 })?;

    Ok(pb::ProtoOaTrendbar {
        volume: bar.volume,
        period: Some(period as i32),
        low: Some(low_signed),
        delta_open: Some(offset("open", bar.open)?),
        delta_close: Some(offset("close", bar.close)?),
        delta_high: Some(offset("high", bar.high)?),
        utc_timestamp_in_minutes: u32::try_from(bar.time_ms.div_euclid(60_000)).ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_bar(low: i64, open: u64, high: u64, close: u64) -> pb::ProtoOaTrendbar {
        pb::ProtoOaTrendbar {
            volume: 42,
            period: None,
            low: Some(low),
            delta_open: Some(open),
            delta_close: Some(close),
            delta_high: Some(high),
            utc_timestamp_in_minutes: Some(28_400_000),
        }
    }

    #[test]
    fn trendbar_decodes_offsets_above_low() {
        let bar = decode(&wire_bar(108_500, 12, 40, 7), 5).unwrap();
        assert_eq!(bar.time_ms, 28_400_000 * 60_000);
        assert_eq!(bar.low.to_string(), "1.08500");
        assert_eq!(bar.open.to_string(), "1.08512");
        assert_eq!(bar.high.to_string(), "1.08540");
        assert_eq!(bar.close.to_string(), "1.08507");
        assert_eq!(bar.volume, 42);
    }

    #[test]
    fn trendbar_jpy_keeps_wire_scale() {
        // USDJPY at 150.123 is raw 15012300 even though the symbol shows 3 digits.
        let bar = decode(&wire_bar(15_012_300, 0, 500, 200), 3).unwrap();
        assert_eq!(bar.low.to_string(), "150.123");
        assert_eq!(bar.high.to_string(), "150.128");
        assert_eq!(bar.close.to_string(), "150.125");
    }

    #[test]
    fn trendbar_missing_offsets_mean_zero() {
        let mut wire = wire_bar(100_000, 0, 0, 0);
        wire.delta_open = None;
        wire.delta_close = None;
        wire.delta_high = None;
        let bar = decode(&wire, 5).unwrap();
        assert_eq!(bar.open, bar.low);
        assert_eq!(bar.high, bar.low);
    }

    #[test]
    fn trendbar_rejects_bad_input() {
        let mut missing_low = wire_bar(1, 0, 0, 0);
        missing_low.low = None;
        assert_eq!(decode(&missing_low, 5), Err(TrendbarError::MissingLow));

        assert_eq!(decode(&wire_bar(-5, 0, 0, 0), 5), Err(TrendbarError::NegativeLow(-5)));

        let overflow = decode(&wire_bar(i64::MAX, 0, u64::MAX, 0), 5);
        assert!(matches!(overflow, Err(TrendbarError::Overflow { field: "high", .. })));

        let mut missing_time = wire_bar(1, 0, 0, 0);
        missing_time.utc_timestamp_in_minutes = None;
        assert_eq!(decode(&missing_time, 5), Err(TrendbarError::MissingTime));
    }

    #[test]
    fn trendbar_encode_round_trips() {
        let wire = wire_bar(108_500, 12, 40, 7);
        let bar = decode(&wire, 5).unwrap();
        let encoded = encode(&bar, pb::ProtoOaTrendbarPeriod::M1).unwrap();
        assert_eq!(decode(&encoded, 5).unwrap(), bar);
        assert_eq!(encoded.delta_high, Some(40));
    }
}
