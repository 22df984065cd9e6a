//! The machine's tuning: timeouts, thresholds and the backoff schedule.

use serde::{Deserialize, Serialize};

use super::Millis;

/// Timeouts, thresholds and backoff settings of the connection machine, all in milliseconds.
///
/// The machine uses the values as given and does not reject any of them, so the driver should
/// call [`Config::validate`] once at startup to turn a bad value into a clear error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Config {
    /// Budget for Connecting and Authenticating together, from the connect attempt to ready.
    pub connect_timeout_ms: Millis,
    /// With at least one subscription, no tick for this long moves Streaming to Stale.
    pub stale_after_ms: Millis,
    /// No inbound frame at all for this long means the socket is dead.
    pub liveness_timeout_ms: Millis,
    /// Interval between the heartbeats sent while the transport is up.
    pub heartbeat_interval_ms: Millis,
    /// Time in Stale, with frames still arriving, before the one stale-caused reconnect.
    pub stale_reconnect_after_ms: Millis,
    /// First backoff delay; each further consecutive failure doubles it.
    pub backoff_base_ms: Millis,
    /// Largest backoff delay before jitter.
    pub backoff_cap_ms: Millis,
    /// Fraction of a backoff delay that jitter may add (0.10 adds up to 10 %). Jitter never
    /// subtracts. Values outside 0..=1 are clamped.
    pub jitter: f64,
    /// Seed of the deterministic jitter generator, so that a journal replays identically.
    pub jitter_seed: u64,
    /// Whether the driver has a refresh token, so an expired access token can be refreshed.
    pub has_refresh_token: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 15_000,
            stale_after_ms: 30_000,
            liveness_timeout_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            stale_reconnect_after_ms: 60_000,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 60_000,
            jitter: 0.10,
            jitter_seed: 0,
            has_refresh_token: false,
        }
    }
}

/// A configuration value the machine cannot work with.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} is 0 ms; set it to a positive number of milliseconds")]
    ZeroDuration { field: &'static str },
    #[error("backoff_cap_ms ({cap}) is below backoff_base_ms ({base}); set the cap to at least the base")]
    CapBelowBase { base: Millis, cap: Millis },
    #[error("jitter is {value}; set it to a fraction between 0 and 1, for example 0.1")]
    InvalidJitter { value: f64 },
}

impl Config {
    /// Checks that every duration is positive, the backoff cap is at least the base and the
    /// jitter fraction lies in 0..=1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let durations = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("stale_after_ms", self.stale_after_ms),
            ("liveness_timeout_ms", self.liveness_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("stale_reconnect_after_ms", self.stale_reconnect_after_ms),
            ("backoff_base_ms", self.backoff_base_ms),
        ];
        if let Some((field, _)) = durations.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::ZeroDuration { field });
        }

        if self.backoff_cap_ms < self.backoff_base_ms {
            return Err(ConfigError::CapBelowBase { base: self.backoff_base_ms, cap: self.backoff_cap_ms });
        }

        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::InvalidJitter { value: self.jitter });
        }

        Ok(())
    }
}
