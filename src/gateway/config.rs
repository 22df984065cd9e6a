//! Settings of the WebSocket gateway and its HTTP endpoints.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The address the gateway listens on when neither `--listen` nor `WS_PORT` is given.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// Settings of the gateway. `Default` gives the production values.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Address to bind. `serve` takes an already bound listener, so this is for the caller.
    pub listen: SocketAddr,
    /// Shared secret that WebSocket clients must present (`?token=` or `Authorization: Bearer`).
    /// It also lets non-loopback callers use `POST /admin/reconnect`. `None` disables the check.
    pub client_token: Option<String>,
    /// Lets loopback callers use `POST /admin/reconnect` without the token. Turn it off when a
    /// reverse proxy on the same host forwards outside requests, which then look local.
    pub trust_loopback_admin: bool,
    /// Maximum number of WebSocket clients connected at once; later ones are closed with 1013.
    pub max_clients: usize,
    /// Frames buffered per client before it counts as slow and is closed with 4002.
    pub client_queue_capacity: usize,
    /// Largest client message, in bytes, that is parsed. Larger ones get `MESSAGE_TOO_LARGE`.
    pub max_message_bytes: usize,
    /// Largest message, in bytes, that the WebSocket layer reads at all. A client that sends a
    /// bigger one is closed with 1009, because the bytes would have to be buffered first.
    pub max_transport_message_bytes: usize,
    /// Maximum number of symbols one client may be subscribed to.
    pub max_subscriptions_per_client: usize,
    /// Interval between `heartbeat` frames to every client.
    pub heartbeat_interval: Duration,
    /// Number of transitions kept for `GET /api/transitions`.
    pub transition_history: usize,
    /// Time a client gets to take its close frame before the connection is dropped.
    pub close_timeout: Duration,
    /// Time `serve` waits for clients to finish after shutdown starts.
    pub shutdown_timeout: Duration,
    /// Kernel send buffer per client socket, in bytes; `None` keeps the system default.
    /// A smaller buffer makes a stalled client fill its queue, and get closed, sooner.
    pub socket_send_buffer_bytes: Option<usize>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            client_token: None,
            trust_loopback_admin: true,
            max_clients: 10_000,
            client_queue_capacity: 1024,
            max_message_bytes: 4096,
            max_transport_message_bytes: 1 << 20,
            max_subscriptions_per_client: 256,
            heartbeat_interval: Duration::from_secs(15),
            transition_history: 100,
            close_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            socket_send_buffer_bytes: None,
        }
    }
}

impl fmt::Debug for GatewayConfig {
    // Written by hand so that the client token never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("client_token", &self.client_token.as_ref().map(|_| "<redacted>"))
            .field("trust_loopback_admin", &self.trust_loopback_admin)
            .field("max_clients", &self.max_clients)
            .field("client_queue_capacity", &self.client_queue_capacity)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_transport_message_bytes", &self.max_transport_message_bytes)
            .field("max_subscriptions_per_client", &self.max_subscriptions_per_client)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("transition_history", &self.transition_history)
            .field("close_timeout", &self.close_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("socket_send_buffer_bytes", &self.socket_send_buffer_bytes)
            .finish()
    }
}

impl GatewayConfig {
    /// Checks settings that would make the gateway misbehave rather than fail.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.client_token.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::EmptyClientToken);
        }
        if self.max_transport_message_bytes < self.max_message_bytes {
            return Err(ConfigError::TransportLimitBelowMessageLimit {
                transport: self.max_transport_message_bytes,
                message: self.max_message_bytes,
            });
        }
        Ok(())
    }
}

/// A gateway setting that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("client token is empty; set a non-empty --client-token or leave it unset to accept every client")]
    EmptyClientToken,
    #[error("max_transport_message_bytes ({transport}) is below max_message_bytes ({message}); raise it to at least {message}")]
    TransportLimitBelowMessageLimit { transport: usize, message: usize },
}

/// A listen setting that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    #[error("invalid --listen address {value:?}: expected IP:PORT, for example 127.0.0.1:8080")]
    InvalidAddress { value: String },
    #[error("invalid WS_PORT {value:?}: expected a port number from 0 to 65535")]
    InvalidPort { value: String },
}

/// Resolves the listen address: `--listen` wins, else `WS_PORT` on 127.0.0.1, else the default.
pub fn resolve_listen(listen: Option<&str>, ws_port: Option<&str>) -> Result<SocketAddr, ListenError> {
    if let Some(value) = listen {
        return value
            .trim()
            .parse()
            .map_err(|_| ListenError::InvalidAddress { value: value.to_owned() });
    }

    if let Some(value) = ws_port {
        let port: u16 = value
            .trim()
            .parse()
            .map_err(|_| ListenError::InvalidPort { value: value.to_owned() })?;
        return Ok(SocketAddr::new(DEFAULT_LISTEN.ip(), port));
    }

    Ok(DEFAULT_LISTEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_flag_wins_over_ws_port() {
        let addr = resolve_listen(Some("127.0.0.1:9001"), Some("9002")).unwrap();
        assert_eq!(addr, "127.0.0.1:9001".parse().unwrap());
    }

    #[test]
    fn ws_port_sets_port_on_loopback() {
        let addr = resolve_listen(None, Some("9002")).unwrap();
        assert_eq!(addr, "127.0.0.1:9002".parse().unwrap());
    }

    #[test]
    fn listen_defaults_to_loopback_8080() {
        assert_eq!(resolve_listen(None, None).unwrap(), DEFAULT_LISTEN);
    }

    #[test]
    fn listen_rejects_bad_values() {
        assert_eq!(
            resolve_listen(Some("localhost"), None),
            Err(ListenError::InvalidAddress { value: "localhost".into() })
        );
        assert_eq!(resolve_listen(None, Some("70000")), Err(ListenError::InvalidPort { value: "70000".into() }));
    }

    #[test]
    fn config_rejects_empty_token() {
        let config = GatewayConfig { client_token: Some(String::new()), ..GatewayConfig::default() };
        assert_eq!(config.validate(), Err(ConfigError::EmptyClientToken));
        assert_eq!(GatewayConfig::default().validate(), Ok(()));
    }

    #[test]
    fn config_rejects_transport_limit_below_message_limit() {
        let config = GatewayConfig { max_message_bytes: 2048, max_transport_message_bytes: 1024, ..GatewayConfig::default() };
        assert_eq!(
            config.validate(),
            Err(ConfigError::TransportLimitBelowMessageLimit { transport: 1024, message: 2048 })
        );
    }

    #[test]
    fn config_debug_redacts_token() {
        let config = GatewayConfig { client_token: Some("s3cret".into()), ..GatewayConfig::default() };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
