//! Historical ticks from `ProtoOAGetTickDataRes`.
//!
//! The list is newest first. The first element contains an absolute Unix-ms timestamp and an
//! absolute price; each later element contains the difference from the element before it, for
//! both fields. Spotware documents the timestamp deltas; the price deltas are what independent
//! clients decode, so decoding checks every running price for sign and overflow.

use super::pb;
use super::price::Price;

/// A tick list that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TickDataError {
    #[error("tick {index}: running {field} overflows a 64-bit integer")]
    Overflow { index: usize, field: &'static str },
    #[error("tick {index}: running price {price} is not positive, so the deltas do not fit this list")]
    NonPositivePrice { index: usize, price: i64 },
}

/// Decodes delta-encoded ticks into `(time_ms, price)` pairs, newest first as sent.
pub fn decode(ticks: &[pb::ProtoOaTickData], digits: u8) -> Result<Vec<(i64, Price)>, TickDataError> {
    let mut out = Vec::with_capacity(ticks.len());
    let mut time_ms = 0i64;
    let mut price = 0i64;

    for (index, tick) in ticks.iter().enumerate() {
        time_ms = time_ms.checked_add(tick.timestamp).ok_or(TickDataError::Overflow { index, field: "timestamp" })?;
        price = price.checked_add(tick.tick).ok_or(TickDataError::Overflow { index, field: "price" })?;
        if price <= 0 {
            return Err(TickDataError::NonPositivePrice { index, price });
        }
        out.push((time_ms, Price::new(price as u64, digits)));
    }
    Ok(out)
}

/// Delta-encodes `(time_ms, raw price)` pairs in the order given, which should be newest first.
pub fn encode(ticks: &[(i64, u64)]) -> Vec<pb::ProtoOaTickData> {
    let mut previous = (0i64, 0i64);
    ticks
        .iter()
        .map(|&(time_ms, raw)| {
            let raw = i64::try_from(raw).unwrap_or(i64::MAX);
            let data = pb::ProtoOaTickData {
                timestamp: time_ms.wrapping_sub(previous.0),
                tick: raw.wrapping_sub(previous.1),
            };
            previous = (time_ms, raw);
            data
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(timestamp: i64, tick: i64) -> pb::ProtoOaTickData {
        pb::ProtoOaTickData { timestamp, tick }
    }

    #[test]
    fn tickdata_decodes_running_sums() {
        let wire = [tick(1_700_000_003_000, 108_512), tick(-1_000, -3), tick(-2_000, 5)];
        let decoded = decode(&wire, 5).unwrap();
        let shown: Vec<(i64, String)> = decoded.iter().map(|(t, p)| (*t, p.to_string())).collect();
        assert_eq!(
            shown,
            vec![
                (1_700_000_003_000, "1.08512".to_string()),
                (1_700_000_002_000, "1.08509".to_string()),
                (1_700_000_000_000, "1.08514".to_string()),
            ]
        );
    }

    #[test]
    fn tickdata_empty_list_is_empty() {
        assert_eq!(decode(&[], 5).unwrap(), vec![]);
    }

    #[test]
    fn tickdata_rejects_negative_running_price() {
        let wire = [tick(10, 5), tick(-1, -6)];
        assert_eq!(decode(&wire, 5), Err(TickDataError::NonPositivePrice { index: 1, price: -1 }));
    }

    #[test]
    fn tickdata_rejects_overflow() {
        let wire = [tick(i64::MAX, 1), tick(1, 1)];
        assert_eq!(decode(&wire, 5), Err(TickDataError::Overflow { index: 1, field: "timestamp" }));
    }

    #[quickcheck_macros::quickcheck]
    fn tickdata_encode_decode_round_trips(points: Vec<(u32, u32)>) -> bool {
        let ticks: Vec<(i64, u64)> =
            points.iter().map(|&(t, p)| (1_600_000_000_000 - i64::from(t), u64::from(p) + 1)).collect();
        let decoded = decode(&encode(&ticks), 5).unwrap();
        decoded.iter().map(|(t, p)| (*t, p.raw)).eq(ticks.iter().copied())
    }
}
