//! A cTrader Open API server for tests and demos: TLS with a generated CA, the protobuf
//! protocol with the real error codes, random-walk or replayed prices, history requests, rate
//! limits, and fault injection through [`SimulatorHandle::inject`] or an HTTP endpoint.

mod certs;
mod cli;
mod connection;
mod control;
mod faults;
mod market;
mod replay;
mod server;
mod state;
mod symbols;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use certs::{client_config, SERVER_NAME};
pub use cli::{run, SimulateArgs};
pub use faults::Fault;
pub use state::Stats;
pub use symbols::{normalise, SymbolInfo};

use market::Market;
use state::Shared;

/// Everything the simulator can be configured with. [`Default`] gives the demo values.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// Address of the protobuf/TLS listener; tests pass 127.0.0.1:0.
    pub listen: SocketAddr,
    pub client_id: String,
    pub client_secret: String,
    pub access_token: String,
    pub refresh_token: String,
    /// The one ctidTraderAccountId that the access token grants.
    pub account_id: i64,
    /// Spot events per second per subscribed symbol from the random walk.
    pub tick_rate: f64,
    /// A tick file to replay instead of the random walk for its symbol.
    pub replay: Option<PathBuf>,
    /// Replay speed: the recorded gaps are divided by this factor.
    pub speed: f64,
    /// Interval of server heartbeats.
    pub heartbeat_interval: Duration,
    /// A client that sends nothing for this long is disconnected.
    pub idle_timeout: Duration,
    /// Lifetime of an access token; `None` means it only expires through the `expire_token` fault.
    pub access_token_ttl: Option<Duration>,
    /// A second connection with a session for the same account is closed after this long.
    pub duplicate_close_after: Duration,
    /// Ordinary requests per second per connection.
    pub rate_limit_per_s: u32,
    /// History requests (trendbars, tick data) per second per connection.
    pub historical_rate_limit_per_s: u32,
    /// Address of the HTTP control endpoint, if any.
    pub control: Option<SocketAddr>,
}

/// Demo credentials printed by `tickgate simulate`; they protect nothing.
pub const DEMO_CLIENT_ID: &str = "tickgate-demo-client";
pub const DEMO_CLIENT_SECRET: &str = "tickgate-demo-secret";
pub const DEMO_ACCESS_TOKEN: &str = "tickgate-demo-access-token";
pub const DEMO_REFRESH_TOKEN: &str = "tickgate-demo-refresh-token";
pub const DEMO_ACCOUNT_ID: i64 = 44_322_853;

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5035)),
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: DEMO_CLIENT_SECRET.into(),
            access_token: DEMO_ACCESS_TOKEN.into(),
            refresh_token: DEMO_REFRESH_TOKEN.into(),
            account_id: DEMO_ACCOUNT_ID,
            tick_rate: 4.0,
            replay: None,
            speed: 1.0,
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            access_token_ttl: None,
            // A duplicate was seen closed about 28 s after opening on the real demo server.
            duplicate_close_after: Duration::from_secs(28),
            rate_limit_per_s: 50,
            historical_rate_limit_per_s: 5,
            control: None,
        }
    }
}

/// A running simulator. Dropping it also stops every task, but without waiting for them;
/// [`SimulatorHandle::shutdown`] waits.
pub struct SimulatorHandle {
    addr: SocketAddr,
    control_addr: Option<SocketAddr>,
    ca_pem: String,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimulatorHandle {
    /// Generates certificates, binds the listeners and starts the price feed.
    pub async fn start(config: SimulatorConfig) -> anyhow::Result<SimulatorHandle> {
        if !(config.tick_rate >= 0.0 && config.tick_rate.is_finite()) {
            anyhow::bail!("invalid tick rate {}: use a finite number of events per second, 0 or more", config.tick_rate);
        }
        if !(config.speed > 0.0 && config.speed.is_finite()) {
            anyhow::bail!("invalid replay speed {}: use a finite factor above 0", config.speed);
        }
        if config.heartbeat_interval.is_zero() || config.idle_timeout.is_zero() {
            anyhow::bail!("heartbeat interval and idle timeout must be above zero");
        }
        if config.rate_limit_per_s == 0 || config.historical_rate_limit_per_s == 0 {
            anyhow::bail!("rate limits must be at least 1 request per second");
        }

        // The replay file is parsed first, so its first quote seeds the synthetic history.
        let replay = match &config.replay {
            Some(path) => Some(replay::load(path)?),
            None => None,
        };
        let mut start_books = HashMap::new();
        if let Some(first) = replay.as_ref().and_then(|f| f.ticks.first().map(|t| (f.symbol.id, t))) {
            start_books.insert(first.0, (first.1.bid, first.1.ask));
        }
        let market = Arc::new(Market::new(&start_books));

        let tls = certs::generate()?;
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("failed to bind the simulator to {}", config.listen))?;
        let addr = listener.local_addr()?;
        let control_listener = match config.control {
            Some(control) => Some(TcpListener::bind(control).await.with_context(|| format!("failed to bind the control endpoint to {control}"))?),
            None => None,
        };
        let control_addr = control_listener.as_ref().map(|l| l.local_addr()).transpose()?;

        let (shutdown, _) = watch::channel(false);
        let tick_rate = config.tick_rate;
        let speed = config.speed;
        let shared = Arc::new(Shared::new(config, market.clone()));
        let mut tasks = Vec::new();

        tasks.push(tokio::spawn(server::accept_loop(shared.clone(), listener, TlsAcceptor::from(tls.config), shutdown.subscribe())));
        tasks.push(tokio::spawn(market::run_random_walk(market.clone(), tick_rate, shutdown.subscribe())));
        if let Some(file) = replay {
            market.mark_replayed(file.symbol.id);
            tasks.push(tokio::spawn(replay::run(market.clone(), file, speed, shutdown.subscribe())));
        }
        if let Some(listener) = control_listener {
            tasks.push(tokio::spawn(control::serve(shared.clone(), listener, shutdown.subscribe())));
        }

        tracing::info!(%addr, control = ?control_addr, "simulator listening");
        Ok(SimulatorHandle { addr, control_addr, ca_pem: tls.ca_pem, shared, shutdown, tasks })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Returns the name to verify the certificate against; it also covers 127.0.0.1.
    pub fn server_name(&self) -> &str {
        SERVER_NAME
    }

    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    pub fn config(&self) -> &SimulatorConfig {
        &self.shared.config
    }

    /// Injects a fault; see [`Fault`] for which act on open connections and which on later events.
    pub fn inject(&self, fault: Fault) {
        inject(&self.shared, fault);
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    pub fn symbols(&self) -> Vec<SymbolInfo> {
        symbols::SYMBOLS.iter().map(|s| s.info()).collect()
    }

    /// Returns the current access and refresh tokens, which change on every refresh.
    pub fn current_tokens(&self) -> (String, String) {
        let tokens = self.shared.tokens.lock().expect("token lock");
        (tokens.access.clone(), tokens.refresh.clone())
    }

    /// Closes every connection cleanly and waits for all tasks to end.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for task in self.tasks {
            let _ = task.await;
        }
        tracing::info!(addr = %self.addr, "simulator stopped");
    }
}

fn inject(shared: &Shared, fault: Fault) {
    tracing::info!(kind = fault.kind(), "fault injected");
    shared.count_fault();
    if fault == Fault::ExpireToken {
        shared.expire_token();
    }
    shared.faults.apply(&fault);
}
