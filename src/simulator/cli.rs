//! `tickgate simulate`: command-line flags and the foreground runner.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::{SimulatorConfig, SimulatorHandle};

/// Flags of `tickgate simulate`. Every flag can also be set through the environment variable
/// named in its help.
#[derive(Clone, Debug, clap::Args)]
pub struct SimulateArgs {
    /// Address of the protobuf/TLS listener.
    #[arg(long, env = "TICKGATE_SIM_LISTEN", default_value = "127.0.0.1:5035")]
    pub listen: SocketAddr,

    /// Application client id that the simulator accepts.
    #[arg(long, env = "TICKGATE_SIM_CLIENT_ID", default_value = super::DEMO_CLIENT_ID)]
    pub client_id: String,

    /// Application client secret that the simulator accepts.
    #[arg(long, env = "TICKGATE_SIM_CLIENT_SECRET", default_value = super::DEMO_CLIENT_SECRET, hide_default_value = true)]
    pub client_secret: String,

    /// Initial access token.
    #[arg(long, env = "TICKGATE_SIM_ACCESS_TOKEN", default_value = super::DEMO_ACCESS_TOKEN, hide_default_value = true)]
    pub access_token: String,

    /// Initial refresh token.
    #[arg(long, env = "TICKGATE_SIM_REFRESH_TOKEN", default_value = super::DEMO_REFRESH_TOKEN, hide_default_value = true)]
    pub refresh_token: String,

    /// The ctidTraderAccountId granted by the access token.
    #[arg(long, env = "TICKGATE_SIM_ACCOUNT_ID", default_value_t = super::DEMO_ACCOUNT_ID)]
    pub account_id: i64,

    /// Random-walk spot events per second per subscribed symbol.
    #[arg(long, env = "TICKGATE_SIM_TICK_RATE", default_value_t = 4.0)]
    pub tick_rate: f64,

    /// Tick file to replay (TrueFX, HistData ASCII or QuantConnect LEAN format).
    #[arg(long, env = "TICKGATE_SIM_REPLAY")]
    pub replay: Option<PathBuf>,

    /// Replay speed factor: 2 plays the recorded gaps twice as fast.
    #[arg(long, env = "TICKGATE_SIM_SPEED", default_value_t = 1.0)]
    pub speed: f64,

    /// Seconds between server heartbeats.
    #[arg(long, env = "TICKGATE_SIM_HEARTBEAT_SECS", default_value_t = 10.0)]
    pub heartbeat_secs: f64,

    /// Seconds without any message from a client before it is disconnected.
    #[arg(long, env = "TICKGATE_SIM_IDLE_TIMEOUT_SECS", default_value_t = 30.0)]
    pub idle_timeout_secs: f64,

    /// Access token lifetime in seconds; unset means tokens expire only through the expire_token fault.
    #[arg(long, env = "TICKGATE_SIM_TOKEN_TTL_SECS")]
    pub token_ttl_secs: Option<f64>,

    /// Seconds after which a second connection with a session for the same account is closed.
    #[arg(long, env = "TICKGATE_SIM_DUPLICATE_CLOSE_SECS", default_value_t = 28.0)]
    pub duplicate_close_secs: f64,

    /// Ordinary requests per second per connection.
    #[arg(long, env = "TICKGATE_SIM_RATE_LIMIT", default_value_t = 50)]
    pub rate_limit: u32,

    /// History requests per second per connection.
    #[arg(long, env = "TICKGATE_SIM_HISTORICAL_RATE_LIMIT", default_value_t = 5)]
    pub historical_rate_limit: u32,

    /// Address of the HTTP control endpoint (POST /fault, GET /stats, GET /symbols).
    #[arg(long, env = "TICKGATE_SIM_CONTROL")]
    pub control: Option<SocketAddr>,

    /// Writes the generated CA certificate (PEM) to this path, for clients to trust.
    #[arg(long, env = "TICKGATE_SIM_CA_OUT")]
    pub ca_out: Option<PathBuf>,
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| anyhow::anyhow!("invalid --{flag} {value}: use a number of seconds, 0 or more"))
}

impl SimulateArgs {
    pub fn to_config(&self) -> anyhow::Result<SimulatorConfig> {
        Ok(SimulatorConfig {
            listen: self.listen,
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            access_token: self.access_token.clone(),
            refresh_token: self.refresh_token.clone(),
            account_id: self.account_id,
            tick_rate: self.tick_rate,
            replay: self.replay.clone(),
            speed: self.speed,
            heartbeat_interval: seconds("heartbeat-secs", self.heartbeat_secs)?,
            idle_timeout: seconds("idle-timeout-secs", self.idle_timeout_secs)?,
            access_token_ttl: self.token_ttl_secs.map(|s| seconds("token-ttl-secs", s)).transpose()?,
            duplicate_close_after: seconds("duplicate-close-secs", self.duplicate_close_secs)?,
            rate_limit_per_s: self.rate_limit,
            historical_rate_limit_per_s: self.historical_rate_limit,
            control: self.control,
        })
    }
}

/// Runs the simulator in the foreground, prints how to connect, and stops on Ctrl-C.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let handle = SimulatorHandle::start(config.clone()).await?;

    if let Some(path) = &args.ca_out {
        std::fs::write(path, handle.ca_pem()).with_context(|| format!("failed to write the CA certificate to {}", path.display()))?;
    }

    // These are the simulator's own demo values, printed so a client can be pointed at it.
    println!("cTrader simulator listening on {} (TLS, server name {})", handle.addr(), handle.server_name());
    println!("  client id:      {}", config.client_id);
    println!("  client secret:  {}", config.client_secret);
    println!("  access token:   {}", config.access_token);
    println!("  refresh token:  {}", config.refresh_token);
    println!("  account id:     {}", config.account_id);
    match &args.ca_out {
        Some(path) => println!("  CA certificate: {} (trust it, and connect to {} as {})", path.display(), handle.addr(), handle.server_name()),
        None => println!("  CA certificate: pass --ca-out PATH to write it; it changes on every start"),
    }
    if let Some(control) = handle.control_addr() {
        println!("  control:        http://{control}/stats, POST http://{control}/fault with {{\"kind\": \"drop\"}}");
    }
    if let Some(path) = &args.ca_out {
        println!("Connect tickgate to it with:");
        println!(
            "  CTRADER_HOST={} CTRADER_PORT={} CTRADER_CA_FILE={} CTRADER_CLIENT_ID={} CTRADER_CLIENT_SECRET={} \\",
            handle.server_name(),
            handle.addr().port(),
            path.display(),
            config.client_id,
            config.client_secret
        );
        println!(
            "  CTRADER_ACCESS_TOKEN={} CTRADER_REFRESH_TOKEN={} CTRADER_ACCOUNT_ID={} tickgate serve",
            config.access_token, config.refresh_token, config.account_id
        );
    }
    println!("Press Ctrl-C to stop.");

    tokio::signal::ctrl_c().await.context("failed to listen for Ctrl-C")?;
    handle.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    #[test]
    fn simulate_args_defaults_match_config() {
        let args = Cli::parse_from(["simulate"]).args;
        let config = args.to_config().unwrap();
        let default = SimulatorConfig::default();
        assert_eq!(config.listen, default.listen);
        assert_eq!(config.heartbeat_interval, default.heartbeat_interval);
        assert_eq!(config.idle_timeout, default.idle_timeout);
        assert_eq!(config.duplicate_close_after, default.duplicate_close_after);
        assert_eq!(config.rate_limit_per_s, 50);
        assert_eq!(config.historical_rate_limit_per_s, 5);
        assert_eq!(config.account_id, default.account_id);
        assert_eq!(config.access_token_ttl, None);
        assert_eq!(config.control, None);
    }

    #[test]
    fn simulate_args_flags_override() {
        let args = Cli::parse_from([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-secs",
            "0.5",
            "--token-ttl-secs",
            "60",
            "--control",
            "127.0.0.1:9000",
            "--replay",
            "ticks.csv",
            "--speed",
            "10",
        ])
        .args;
        let config = args.to_config().unwrap();
        assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(config.access_token_ttl, Some(Duration::from_secs(60)));
        assert_eq!(config.control, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(config.replay, Some(PathBuf::from("ticks.csv")));
        assert_eq!(config.speed, 10.0);
    }

    #[test]
    fn simulate_args_reject_negative_seconds() {
        let args = Cli::parse_from(["simulate", "--idle-timeout-secs=-1"]).args;
        let error = args.to_config().unwrap_err().to_string();
        assert!(error.contains("--idle-timeout-secs -1"), "{error}");
    }
}
