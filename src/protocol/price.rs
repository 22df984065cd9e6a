//! Prices as cTrader sends them: integers in units of 1/100000, shown at the symbol's digits.
//!
//! Keeping the raw integer and formatting it with integer arithmetic means a price such as
//! 1.08567 reaches clients as exactly `1.08567`, with no float drift on the way.

use std::fmt;

/// The fixed scale of every price on the wire: raw 123000 is 1.23, whatever the symbol's digits.
pub const PRICE_SCALE: u64 = 100_000;

/// Number of decimal places in [`PRICE_SCALE`].
pub const SCALE_DIGITS: u8 = 5;

/// A price in 1/100000 units, displayed at a symbol's `digits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price {
    /// The wire value in units of 1/100000.
    pub raw: u64,
    /// Decimal places to show; values above 5 are shown as 5 because the wire has no finer unit.
    pub digits: u8,
}

impl Price {
    pub fn new(raw: u64, digits: u8) -> Self {
        Self { raw, digits }
    }

    /// Converts to `f64` for arithmetic that tolerates rounding, such as spreads in pips.
    pub fn to_f64(self) -> f64 {
        self.raw as f64 / PRICE_SCALE as f64
    }
}

impl fmt::Display for Price {
    /// Writes the price at its digits, rounding half up when digits is below 5.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.digits.min(SCALE_DIGITS);
        let drop = 10u64.pow(u32::from(SCALE_DIGITS - digits));

        // Round half up at the display precision before splitting into whole and fraction.
        let scaled = (self.raw + drop / 2) / drop;
        let unit = 10u64.pow(u32::from(digits));
        let whole = scaled / unit;
        if digits == 0 {
            return write!(f, "{whole}");
        }
        let fraction = scaled % unit;
        write!(f, "{whole}.{fraction:0width$}", width = usize::from(digits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_keeps_exact_digits() {
        assert_eq!(Price::new(108_567, 5).to_string(), "1.08567");
        assert_eq!(Price::new(15_012_300, 3).to_string(), "150.123");
        assert_eq!(Price::new(100_000, 5).to_string(), "1.00000");
    }

    #[test]
    fn price_rounds_half_up_below_wire_precision() {
        assert_eq!(Price::new(15_012_350, 3).to_string(), "150.124");
        assert_eq!(Price::new(15_012_349, 3).to_string(), "150.123");
        assert_eq!(Price::new(123_456, 0).to_string(), "1");
    }

    #[test]
    fn price_caps_digits_at_wire_precision() {
        assert_eq!(Price::new(108_567, 7).to_string(), "1.08567");
    }
}
