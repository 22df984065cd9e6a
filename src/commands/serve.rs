//! `tickgate serve`: the main job. Runs the session and the gateway, and the embedded simulator
//! when no cTrader credentials are configured.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::connection::{at_least_one, listen_addr, upstream, ConnectionArgs, TimingArgs, Upstream};
use super::UsageError;
use crate::gateway::{self, GatewayConfig};
use crate::session::{self, SessionHandle};
use crate::simulator::{SimulatorConfig, SimulatorHandle};

/// How long shutdown may take before the process gives up waiting for the session.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address of the WebSocket and HTTP listener, such as 127.0.0.1:8080 (the default).
    #[arg(long, env = "TICKGATE_LISTEN")]
    pub listen: Option<String>,

    /// Port of the listener on 127.0.0.1, for compatibility with the Node backend's variable;
    /// `--listen` takes precedence.
    #[arg(long = "ws-port", env = "WS_PORT")]
    pub ws_port: Option<String>,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(flatten)]
    pub timing: TimingArgs,

    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// Record every state machine input and transition to this JSON Lines file.
    #[arg(long, env = "TICKGATE_JOURNAL")]
    pub journal: Option<PathBuf>,

    /// Spot events per second per symbol from the embedded simulator.
    #[arg(long, env = "TICKGATE_SIM_TICK_RATE", default_value_t = 4.0)]
    pub sim_tick_rate: f64,

    /// Control endpoint of the embedded simulator (fault injection, stats); port 0 picks one.
    #[arg(long, env = "TICKGATE_SIM_CONTROL", default_value = "127.0.0.1:0", value_parser = listen_addr)]
    pub sim_control: SocketAddr,
}

/// Limits and options of the WebSocket gateway. `Debug` redacts the client token.
#[derive(Args, Clone)]
pub struct GatewayArgs {
    /// Shared secret that WebSocket clients must present (`?token=` or a Bearer header).
    #[arg(long, env = "TICKGATE_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,

    /// Largest client message accepted, in bytes.
    #[arg(long, env = "TICKGATE_MAX_MESSAGE_BYTES", default_value_t = GatewayConfig::default().max_message_bytes, value_parser = at_least_one)]
    pub max_message_bytes: usize,

    /// Maximum number of symbols one client may subscribe to.
    #[arg(long, env = "TICKGATE_MAX_SUBSCRIPTIONS", default_value_t = GatewayConfig::default().max_subscriptions_per_client, value_parser = at_least_one)]
    pub max_subscriptions: usize,

    /// Frames queued for one client before it counts as slow and is closed with 4002.
    #[arg(long, env = "TICKGATE_CLIENT_QUEUE", default_value_t = GatewayConfig::default().client_queue_capacity, value_parser = at_least_one)]
    pub client_queue: usize,

    /// Maximum number of WebSocket clients at once.
    #[arg(long, env = "TICKGATE_MAX_CLIENTS", default_value_t = GatewayConfig::default().max_clients, value_parser = at_least_one)]
    pub max_clients: usize,
}

impl std::fmt::Debug for GatewayArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayArgs")
            .field("client_token", &self.client_token.as_ref().map(|_| "<redacted>"))
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("client_queue", &self.client_queue)
            .field("max_clients", &self.max_clients)
            .finish()
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let listen = gateway::resolve_listen(args.listen.as_deref(), args.ws_port.as_deref())
        .map_err(|error| UsageError(error.to_string()))?;

    // 1. Bind first, so a taken port fails before anything connects upstream.
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}: choose another address with --listen or WS_PORT"))?;
    let local = listener.local_addr()?;

    // 2. Pick the upstream: real cTrader with credentials, else the embedded simulator.
    let simulator = SimulatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tick_rate: args.sim_tick_rate,
        control: Some(args.sim_control),
        ..SimulatorConfig::default()
    };
    let Upstream { config: mut session_config, simulator } = upstream(&args.connection, simulator).await?;
    session_config.fsm = args.timing.fsm_config(session_config.refresh_token.is_some());
    session_config.journal = args.journal.clone();

    // 3. Start the gateway, then the session behind it. `gateway::serve` subscribes to session
    //    events when called, so the first transitions (Disconnected to Connecting and on) reach
    //    /metrics and the dashboard's history.
    let (session, ends) = SessionHandle::channel(session_config.event_capacity.max(1));
    let prepared = session::driver::prepare(session_config, ends).map_err(|error| UsageError(format!("{error:#}")))?;
    let gateway_config = GatewayConfig {
        client_token: args.gateway.client_token.clone(),
        max_message_bytes: args.gateway.max_message_bytes,
        max_subscriptions_per_client: args.gateway.max_subscriptions,
        client_queue_capacity: args.gateway.client_queue,
        max_clients: args.gateway.max_clients,
        ..GatewayConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway_task = tokio::spawn(gateway::serve(listener, session.clone(), gateway_config, async move {
        let _ = stop_rx.await;
    }));
    let session_task = tokio::spawn(prepared.run());
    print_urls(local, simulator.as_ref());

    // 4. Run until SIGINT or SIGTERM, then stop in order: clients, upstream, simulator.
    shutdown_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(());
    match gateway_task.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(error = %error, "gateway stopped with an error"),
        Err(error) => warn!(error = %error, "gateway task failed"),
    }
    if session.shutdown().await.is_ok() {
        match tokio::time::timeout(SHUTDOWN_GRACE, session_task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(error = %error, "session task failed"),
            Err(_) => warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "session did not stop in time"),
        }
    }
    if let Some(simulator) = simulator {
        simulator.shutdown().await;
    }
    info!("stopped");
    Ok(())
}

/// Prints the URLs on stdout, one per line, in a fixed form that scripts and tests read.
fn print_urls(local: SocketAddr, simulator: Option<&SimulatorHandle>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "tickgate dashboard: http://{local}/");
    let _ = writeln!(out, "tickgate websocket: ws://{local}/ws");
    if let Some(control) = simulator.and_then(SimulatorHandle::control_addr) {
        let _ = writeln!(out, "tickgate simulator control: http://{control}");
    }
    let _ = out.flush();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                warn!(error = %error, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
