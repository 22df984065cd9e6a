//! Command-line options shared by every command that talks to cTrader: where to connect, the
//! credentials, and the connection machine's thresholds.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::UsageError;
use crate::fsm;
use crate::session::SessionConfig;
use crate::simulator::{SimulatorConfig, SimulatorHandle};
use crate::session::transport::{DEMO_HOST, LIVE_HOST, OPEN_API_PORT};

/// The cTrader endpoint and the credentials to use there. `Debug` redacts the secrets.
#[derive(Args, Clone)]
pub struct ConnectionArgs {
    /// cTrader Open API host. Defaults to the demo host when credentials are given.
    #[arg(long, env = "CTRADER_HOST", conflicts_with_all = ["demo", "live"])]
    pub host: Option<String>,

    /// cTrader Open API port (protobuf over TLS).
    #[arg(long, env = "CTRADER_PORT", default_value_t = OPEN_API_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,

    /// Connect to the official demo host.
    #[arg(long, conflicts_with = "live")]
    pub demo: bool,

    /// Connect to the official live host.
    #[arg(long)]
    pub live: bool,

    /// PEM file with an extra trusted CA, added to the standard web roots.
    #[arg(long, env = "CTRADER_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Application client id.
    #[arg(long, env = "CTRADER_CLIENT_ID")]
    pub client_id: Option<String>,

    /// Application client secret.
    #[arg(long, env = "CTRADER_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,

    /// OAuth access token of the trading account.
    #[arg(long, env = "CTRADER_ACCESS_TOKEN", hide_env_values = true)]
    pub access_token: Option<String>,

    /// OAuth refresh token, used when the access token has expired.
    #[arg(long, env = "CTRADER_REFRESH_TOKEN", hide_env_values = true)]
    pub refresh_token: Option<String>,

    /// cTrader trader account id (ctidTraderAccountId).
    #[arg(long, env = "CTRADER_ACCOUNT_ID")]
    pub account_id: Option<i64>,

    /// File that contains the tokens and receives refreshed ones; defaults to `.env` when the
    /// tokens came from there.
    #[arg(long, env = "CTRADER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl std::fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConnectionArgs")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("demo", &self.demo)
            .field("live", &self.live)
            .field("ca_file", &self.ca_file)
            .field("client_id", &self.client_id)
            .field("client_secret", &redacted(&self.client_secret))
            .field("access_token", &redacted(&self.access_token))
            .field("refresh_token", &redacted(&self.refresh_token))
            .field("account_id", &self.account_id)
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// Complete credentials for a real cTrader connection.
#[derive(Clone)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub account_id: i64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("access_token", &"<redacted>")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "<redacted>"))
            .field("account_id", &self.account_id)
            .finish()
    }
}

impl ConnectionArgs {
    /// Returns the credentials, `None` when none at all are configured, or an error naming the
    /// variables that are missing when only some are.
    pub fn credentials(&self) -> Result<Option<Credentials>, String> {
        let required = [
            ("CTRADER_CLIENT_ID", self.client_id.is_some()),
            ("CTRADER_CLIENT_SECRET", self.client_secret.is_some()),
            ("CTRADER_ACCESS_TOKEN", self.access_token.is_some()),
            ("CTRADER_ACCOUNT_ID", self.account_id.is_some()),
        ];
        let missing: Vec<&str> = required.iter().filter(|(_, set)| !set).map(|(name, _)| *name).collect();
        if missing.len() == required.len() && self.refresh_token.is_none() {
            return Ok(None);
        }
        if !missing.is_empty() {
            return Err(format!(
                "incomplete cTrader credentials: {} missing; set all of CTRADER_CLIENT_ID, \
                 CTRADER_CLIENT_SECRET, CTRADER_ACCESS_TOKEN and CTRADER_ACCOUNT_ID, or none of \
                 them to use the embedded simulator",
                missing.join(", ")
            ));
        }

        Ok(Some(Credentials {
            client_id: self.client_id.clone().unwrap_or_default(),
            client_secret: self.client_secret.clone().unwrap_or_default(),
            access_token: self.access_token.clone().unwrap_or_default(),
            refresh_token: self.refresh_token.clone(),
            account_id: self.account_id.unwrap_or_default(),
        }))
    }

    /// Returns the host to connect to for real credentials.
    pub fn host(&self) -> String {
        if let Some(host) = &self.host {
            return host.clone();
        }
        if self.live {
            LIVE_HOST.to_string()
        } else {
            DEMO_HOST.to_string()
        }
    }
}

/// The upstream a command connects to. An embedded simulator, when there is one, belongs to the
/// caller, which shuts it down after the session.
pub struct Upstream {
    pub config: SessionConfig,
    pub simulator: Option<SimulatorHandle>,
}

/// Builds the session configuration from the options: cTrader when credentials are set, else
/// an embedded simulator started with `simulator`'s settings. The CA file and token file
/// options apply either way; thresholds and the journal are the caller's.
pub async fn upstream(connection: &ConnectionArgs, simulator: SimulatorConfig) -> anyhow::Result<Upstream> {
    let credentials = connection.credentials().map_err(UsageError)?;
    let (mut config, simulator) = match credentials {
        Some(credentials) => {
            let host = connection.host();
            tracing::info!(%host, port = connection.port, account_id = credentials.account_id, "connecting to cTrader");
            (SessionConfig::from_credentials(host, connection.port, &credentials), None)
        }
        None => {
            let handle = SimulatorHandle::start(simulator).await.context("failed to start the embedded simulator")?;
            tracing::info!(
                simulator = %handle.addr(),
                "no cTrader credentials configured, so tickgate uses its embedded simulator; \
                 set CTRADER_CLIENT_ID, CTRADER_CLIENT_SECRET, CTRADER_ACCESS_TOKEN and CTRADER_ACCOUNT_ID \
                 (in the environment or .env) to connect to cTrader"
            );
            (SessionConfig::for_simulator(&handle), Some(handle))
        }
    };

    config.ca_file = connection.ca_file.clone().or(config.ca_file);
    config.token_file = connection.token_file.clone().or(config.token_file);
    Ok(Upstream { config, simulator })
}

/// Thresholds of the connection machine, in milliseconds.
#[derive(Args, Clone, Debug)]
pub struct TimingArgs {
    /// Connecting and authenticating together must finish within this time (ms).
    #[arg(long, env = "TICKGATE_CONNECT_TIMEOUT_MS", default_value_t = 15_000, value_parser = positive_ms, allow_negative_numbers = true)]
    pub connect_timeout_ms: u64,

    /// With at least one subscription, no tick for this long marks the feed stale (ms).
    #[arg(long, env = "TICKGATE_STALE_AFTER_MS", default_value_t = 30_000, value_parser = positive_ms, allow_negative_numbers = true)]
    pub stale_after_ms: u64,

    /// No inbound frame at all for this long means the socket is dead (ms).
    #[arg(long, env = "TICKGATE_LIVENESS_TIMEOUT_MS", default_value_t = 30_000, value_parser = positive_ms, allow_negative_numbers = true)]
    pub liveness_timeout_ms: u64,

    /// Interval between heartbeats sent upstream (ms).
    #[arg(long, env = "TICKGATE_HEARTBEAT_INTERVAL_MS", default_value_t = 10_000, value_parser = positive_ms, allow_negative_numbers = true)]
    pub heartbeat_interval_ms: u64,

    /// Time in Stale, with heartbeats still arriving, before one reconnect is tried (ms).
    #[arg(long, env = "TICKGATE_STALE_RECONNECT_AFTER_MS", default_value_t = 60_000, value_parser = positive_ms, allow_negative_numbers = true)]
    pub stale_reconnect_after_ms: u64,

    /// First reconnect delay; it doubles on each failed attempt (ms).
    #[arg(long, env = "TICKGATE_BACKOFF_BASE_MS", default_value_t = 1_000, value_parser = positive_ms, allow_negative_numbers = true)]
    pub backoff_base_ms: u64,

    /// Largest reconnect delay (ms).
    #[arg(long, env = "TICKGATE_BACKOFF_CAP_MS", default_value_t = 60_000, value_parser = positive_ms, allow_negative_numbers = true)]
    pub backoff_cap_ms: u64,

    /// Random extra added to each reconnect delay, as a fraction of it (0 to 1).
    #[arg(long, env = "TICKGATE_BACKOFF_JITTER", default_value_t = 0.10, value_parser = jitter_fraction, allow_negative_numbers = true)]
    pub backoff_jitter: f64,
}

impl TimingArgs {
    /// Builds the machine's configuration; `has_refresh_token` enables in-band token refresh.
    pub fn fsm_config(&self, has_refresh_token: bool) -> fsm::Config {
        fsm::Config {
            connect_timeout_ms: self.connect_timeout_ms,
            stale_after_ms: self.stale_after_ms,
            liveness_timeout_ms: self.liveness_timeout_ms,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            stale_reconnect_after_ms: self.stale_reconnect_after_ms,
            backoff_base_ms: self.backoff_base_ms,
            backoff_cap_ms: self.backoff_cap_ms,
            jitter: self.backoff_jitter,
            jitter_seed: rand::random(),
            has_refresh_token,
        }
    }
}

fn positive_ms(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(0) => Err(format!("`{value}` is not allowed: use a whole number of milliseconds above 0")),
        Ok(ms) => Ok(ms),
        Err(_) => Err(format!("`{value}` is not a duration: use a whole number of milliseconds, e.g. 30000")),
    }
}

fn jitter_fraction(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("`{value}` is not a fraction between 0 and 1, e.g. 0.1 for 10 %")),
    }
}

/// Parses a listen address, accepting a bare port as 127.0.0.1:PORT.
pub fn listen_addr(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    value
        .parse()
        .map_err(|_| format!("`{value}` is not a listen address: use HOST:PORT such as 127.0.0.1:8080, or a port"))
}

/// Parses a count that must be at least 1, such as a queue length or a client limit.
pub fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err(format!("`{value}` is not allowed: use a whole number of at least 1")),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("`{value}` is not a count: use a whole number of at least 1")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ConnectionArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        connection: ConnectionArgs,
    }

    #[test]
    fn connection_debug_redacts_secrets() {
        let cli = Cli::parse_from([
            "tickgate",
            "--client-id",
            "app",
            "--client-secret",
            "very-secret",
            "--access-token",
            "access-123",
            "--refresh-token",
            "refresh-456",
        ]);
        let text = format!("{:?}", cli.connection);
        assert!(!text.contains("very-secret"), "{text}");
        assert!(!text.contains("access-123"), "{text}");
        assert!(!text.contains("refresh-456"), "{text}");
        assert!(text.contains("app"), "{text}");
    }
}
