//! Everything the session driver needs to connect, authenticate and pace its requests.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::fsm;
use crate::protocol::codec::DEFAULT_MAX_FRAME_LEN;

use super::tokens::TokenFile;
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
    /// An extra trusted CA in PEM, added to the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Where the tokens came from; refreshed tokens are written back there.
    pub token_file: Option<TokenFile>,
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
    fn validate_names_missing_value() {
        let mut missing_secret = config();
        missing_secret.client_secret.clear();
        let mut bad_account = config();
        bad_account.account_id = 0;

        assert!(missing_secret.validate().unwrap_err().to_string().contains("CTRADER_CLIENT_SECRET"));
        assert!(bad_account.validate().unwrap_err().to_string().contains("CTRADER_ACCOUNT_ID"));
    }
}
