//! Everything the session driver needs to connect, authenticate and pace its requests.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::commands::connection::Credentials;
use crate::fsm;
use crate::protocol::codec::DEFAULT_MAX_FRAME_LEN;
use crate::simulator::SimulatorHandle;

use super::tokens::ACCESS_TOKEN_VAR;
use super::transport::OPEN_API_PORT;

/// Default time a request may wait for its response before it counts as failed.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Default number of subscription requests in flight at once.
pub const DEFAULT_SUBSCRIBE_CONCURRENCY: usize = 4;

/// Default minimum gap between subscription requests: 25 ms is at most 40 requests per second,
/// under cTrader's 50 per second per connection with room for heartbeats and auth.
pub const DEFAULT_SUBSCRIBE_SPACING: Duration = Duration::from_millis(25);

/// Default pause after `REQUEST_FREQUENCY_EXCEEDED` when the server gives no retry time.
pub const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);

/// Default capacity of the session event broadcast.
pub const DEFAULT_EVENT_CAPACITY: usize = 4096;

/// Symbol ids per `ProtoOASymbolByIdReq`.
pub const DEFAULT_DETAILS_BATCH: usize = 50;

/// Connection, credentials and pacing for one session. `Debug` redacts the secrets.
#[derive(Clone)]
pub struct SessionConfig {
    /// Host to connect to, such as `demo.ctraderapi.com` or `127.0.0.1`.
    pub host: String,
    pub port: u16,
    /// Name sent for SNI and checked against the certificate; usually the same as `host`.
    pub server_name: String,
    pub client_id: String,
    pub client_secret: String,
    pub access_token: String,
    /// Enables the in-band token refresh when the access token expires.
    pub refresh_token: Option<String>,
    /// The `ctidTraderAccountId` to authorise.
    pub account_id: i64,
    /// A file with an extra trusted CA in PEM, added to the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// An extra trusted CA in PEM held in memory, such as an embedded simulator's.
    pub ca_pem: Option<String>,
    /// The file the tokens came from: a `.env`-style file (only the token lines are rewritten) or a
    /// `.json` file. Refreshed tokens are written back there, and at start its tokens, when it
    /// has both, replace the configured ones because a refresh spends the old refresh token.
    pub token_file: Option<PathBuf>,
    /// Thresholds of the connection state machine.
    pub fsm: fsm::Config,
    pub request_timeout: Duration,
    /// Subscription requests in flight at once while restoring.
    pub subscribe_concurrency: usize,
    /// Minimum gap between subscription requests.
    pub subscribe_spacing: Duration,
    /// Pause after a rate-limit error without a server-given retry time.
    pub rate_limit_pause: Duration,
    /// Symbol ids per details request.
    pub details_batch: usize,
    /// Largest inbound frame accepted, in bytes; a longer length prefix closes the connection.
    pub max_frame_len: usize,
    /// JSON Lines file recording every state machine input and its actions.
    pub journal: Option<PathBuf>,
    /// Capacity of the session event broadcast.
    pub event_capacity: usize,
}

impl SessionConfig {
    /// Creates a configuration with default thresholds and pacing; `server_name` is `host`.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        access_token: impl Into<String>,
        account_id: i64,
    ) -> Self {
        let host = host.into();
        Self {
            server_name: host.clone(),
            host,
            port,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            access_token: access_token.into(),
            refresh_token: None,
            account_id,
            ca_file: None,
            ca_pem: None,
            token_file: None,
            fsm: fsm::Config::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            subscribe_concurrency: DEFAULT_SUBSCRIBE_CONCURRENCY,
            subscribe_spacing: DEFAULT_SUBSCRIBE_SPACING,
            rate_limit_pause: DEFAULT_RATE_LIMIT_PAUSE,
            details_batch: DEFAULT_DETAILS_BATCH,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            journal: None,
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// Creates a configuration for real cTrader credentials. Refreshed tokens go back to `.env` in
    /// the working directory when that is where the access token came from.
    pub fn from_credentials(host: impl Into<String>, port: u16, credentials: &Credentials) -> Self {
        let mut config = Self::new(
            host,
            port,
            credentials.client_id.clone(),
            credentials.client_secret.clone(),
            credentials.access_token.clone(),
            credentials.account_id,
        );
        config.refresh_token = credentials.refresh_token.clone().filter(|token| !token.is_empty());
        config.fsm.has_refresh_token = config.refresh_token.is_some();
        config.token_file = dotenv_holding(Path::new(".env"), &credentials.access_token);
        config
    }

    /// Creates a configuration for a running simulator, trusting its CA and using its demo
    /// credentials.
    pub fn for_simulator(simulator: &SimulatorHandle) -> Self {
        let sim = simulator.config();
        let mut config = Self::new(
            simulator.addr().ip().to_string(),
            simulator.addr().port(),
            sim.client_id.clone(),
            sim.client_secret.clone(),
            sim.access_token.clone(),
            sim.account_id,
        );
        config.server_name = simulator.server_name().to_string();
        config.ca_pem = Some(simulator.ca_pem().to_string());
        config.refresh_token = Some(sim.refresh_token.clone());
        config.fsm.has_refresh_token = true;
        config
    }

    /// Checks the values a connection cannot work without, naming the one that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        let missing = |what: &str, var: &str| anyhow::anyhow!("{what} is empty; set {var} or pass it as a flag");
        if self.host.trim().is_empty() {
            return Err(missing("host", "CTRADER_HOST"));
        }
        if self.port == 0 {
            anyhow::bail!("port 0 is not valid; the Open API protobuf port is {OPEN_API_PORT}");
        }
        if self.client_id.is_empty() {
            return Err(missing("client id", "CTRADER_CLIENT_ID"));
        }
        if self.client_secret.is_empty() {
            return Err(missing("client secret", "CTRADER_CLIENT_SECRET"));
        }
        if self.access_token.is_empty() {
            return Err(missing("access token", "CTRADER_ACCESS_TOKEN"));
        }
        if self.account_id <= 0 {
            anyhow::bail!(
                "account id {} is not valid; set CTRADER_ACCOUNT_ID to the ctidTraderAccountId (a positive number)",
                self.account_id
            );
        }
        if self.subscribe_concurrency == 0 {
            anyhow::bail!("subscribe concurrency is 0; it must be at least 1");
        }
        if self.details_batch == 0 {
            anyhow::bail!("details batch size is 0; it must be at least 1");
        }
        if self.request_timeout.is_zero() {
            anyhow::bail!("request timeout is 0; it must be positive");
        }
        self.fsm.validate()?;
        Ok(())
    }
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const REDACTED: &str = "<redacted>";
        f.debug_struct("SessionConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("server_name", &self.server_name)
            .field("client_id", &self.client_id)
            .field("client_secret", &REDACTED)
            .field("access_token", &REDACTED)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| REDACTED))
            .field("account_id", &self.account_id)
            .field("ca_file", &self.ca_file)
            .field("ca_pem", &self.ca_pem.as_ref().map(|pem| format!("{} bytes", pem.len())))
            .field("token_file", &self.token_file)
            .field("fsm", &self.fsm)
            .field("request_timeout", &self.request_timeout)
            .field("subscribe_concurrency", &self.subscribe_concurrency)
            .field("subscribe_spacing", &self.subscribe_spacing)
            .field("rate_limit_pause", &self.rate_limit_pause)
            .field("details_batch", &self.details_batch)
            .field("max_frame_len", &self.max_frame_len)
            .field("journal", &self.journal)
            .field("event_capacity", &self.event_capacity)
            .finish()
    }
}

/// Returns `path` when it is a `.env` file whose access token is `access_token`.
fn dotenv_holding(path: &Path, access_token: &str) -> Option<PathBuf> {
    let entries = dotenvy::from_path_iter(path).ok()?;
    let holds = entries.flatten().any(|(key, value)| key == ACCESS_TOKEN_VAR && value == access_token);
    holds.then(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SessionConfig {
        let mut config = SessionConfig::new("127.0.0.1", 5035, "client-id", "client-secret-value", "access-value", 42);
        config.refresh_token = Some("refresh-value".into());
        config
    }

    #[test]
    fn debug_redacts_secrets() {
        let shown = format!("{:?}", config());

        assert!(!shown.contains("client-secret-value"), "{shown}");
        assert!(!shown.contains("access-value"), "{shown}");
        assert!(!shown.contains("refresh-value"), "{shown}");
        assert!(shown.contains("client-id"), "{shown}");
    }

    #[test]
    fn new_uses_host_as_server_name() {
        assert_eq!(config().server_name, "127.0.0.1");
        assert!(config().validate().is_ok());
    }

    #[test]
    fn dotenv_holding_matches_access_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "CTRADER_ACCESS_TOKEN=abc\n").unwrap();

        assert_eq!(dotenv_holding(&path, "abc"), Some(path.clone()));
        assert_eq!(dotenv_holding(&path, "other"), None);
        assert_eq!(dotenv_holding(&dir.path().join("missing"), "abc"), None);
    }

    #[test]
    fn validate_names_missing_value() {
        let mut missing_secret = config();
        missing_secret.client_secret.clear();
        let mut bad_account = config();
        bad_account.account_id = 0;

        assert!(missing_secret.validate().unwrap_err().to_string().contains("CTRADER_CLIENT_SECRET"));
        assert!(bad_account.validate().unwrap_err().to_string().contains("CTRADER_ACCOUNT_ID"));
    }
}
