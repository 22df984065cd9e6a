//! Backoff delays: doubling from a base up to a cap, plus deterministic jitter.

use serde::{Deserialize, Serialize};

use super::{Config, Millis};

/// Returns the delay before connect attempt `attempt + 1`, after `attempt` consecutive
/// failures: `backoff_base_ms * 2^(attempt - 1)`, capped at `backoff_cap_ms`, without jitter.
/// Attempt 0 has no delay.
pub fn base_delay(config: &Config, attempt: u32) -> Millis {
    if attempt == 0 {
        return 0;
    }

    // 2^63 already exceeds any cap, so larger exponents add nothing.
    let exponent = (attempt - 1).min(63);
    let factor = 1u64 << exponent;
    config.backoff_base_ms.saturating_mul(factor).min(config.backoff_cap_ms)
}

/// Returns the largest jitter that may be added to `delay`: `floor(delay * jitter)`, with the
/// jitter fraction clamped to 0..=1 (NaN counts as 0).
pub fn max_jitter(config: &Config, delay: Millis) -> Millis {
    (delay as f64 * jitter_fraction(config)).floor() as Millis
}

fn jitter_fraction(config: &Config) -> f64 {
    if config.jitter.is_nan() {
        return 0.0;
    }
    config.jitter.clamp(0.0, 1.0)
}

/// A small deterministic generator (SplitMix64) for backoff jitter. The machine has no other
/// source of randomness, so the same seed and inputs always give the same delays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a uniform fraction in [0, 1).
    fn next_fraction(&mut self) -> f64 {
        // The top 53 bits fill an f64 mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Returns the full delay after `attempt` consecutive failures: the base delay plus a
    /// jitter between 0 and [`max_jitter`], inclusive.
    pub fn delay(&mut self, config: &Config, attempt: u32) -> Millis {
        let base = base_delay(config, attempt);
        let limit = max_jitter(config, base);
        let extra = ((limit as f64 + 1.0) * self.next_fraction()).floor() as Millis;
        base.saturating_add(extra.min(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_delay_doubles_to_cap() {
        let config = Config::default();
        let delays: Vec<Millis> = (1..=9).map(|attempt| base_delay(&config, attempt)).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]);
        assert_eq!(base_delay(&config, u32::MAX), 60_000);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let config = Config { jitter: 0.10, ..Config::default() };
        let mut jitter = Jitter::new(7);
        for attempt in 1..200 {
            let base = base_delay(&config, attempt);
            let delay = jitter.delay(&config, attempt);
            assert!(delay >= base, "attempt {attempt}: delay {delay} below base {base}");
            assert!(delay <= base + base / 10, "attempt {attempt}: delay {delay} above base {base} + 10 %");
        }
    }

    #[test]
    fn jitter_is_deterministic_per_seed() {
        let config = Config::default();
        let run = |seed| {
            let mut jitter = Jitter::new(seed);
            (1..20).map(|attempt| jitter.delay(&config, attempt)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn invalid_jitter_adds_nothing() {
        for value in [f64::NAN, -0.5, 0.0] {
            let config = Config { jitter: value, ..Config::default() };
            assert_eq!(Jitter::new(1).delay(&config, 3), 4_000, "jitter {value}");
        }
    }
}
