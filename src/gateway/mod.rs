//! The WebSocket gateway and HTTP endpoints, on one port.
//!
//! - `/` and `/ws`: WebSocket clients ([`protocol`] describes the frames). A plain GET on `/`
//!   serves the dashboard, with `/app.js` and `/style.css`.
//! - `GET /health`, `GET /metrics`, `POST /admin/reconnect`, `GET /api/transitions`.
//!
//! Inside, one hub task (`hub.rs`) reads session events and fans frames out to one task per
//! client (`client.rs`) through bounded queues.

pub mod config;
pub mod protocol;

mod client;
mod http;
mod hub;
mod metrics;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::serve::ListenerExt;
use tokio::sync::{broadcast, mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::session::{SessionEvent, SessionHandle};

pub use client::{CLOSE_GOING_AWAY, CLOSE_MESSAGE_TOO_BIG, CLOSE_TRY_AGAIN_LATER, CLOSE_UNAUTHORIZED};
pub use config::{resolve_listen, ConfigError, GatewayConfig, ListenError, DEFAULT_LISTEN};
pub use hub::CLOSE_SLOW_CLIENT;

use hub::{Hub, HubLimits, HubRequest};
use metrics::Metrics;
use protocol::TransitionView;

/// State shared by the HTTP handlers and the client tasks.
pub(crate) struct GatewayState {
    config: GatewayConfig,
    session: SessionHandle,
    metrics: Arc<Metrics>,
    hub: mpsc::Sender<HubRequest>,
    transitions: Arc<Mutex<VecDeque<TransitionView>>>,
    /// One permit per connected WebSocket client.
    client_slots: Arc<Semaphore>,
    /// Turns true when the gateway shuts down.
    shutdown: watch::Receiver<bool>,
    next_client_id: AtomicU64,
}

/// Serves WebSocket clients and the HTTP endpoints on `listener` until `shutdown` completes.
///
/// Returns an error at once when `config` fails [`GatewayConfig::validate`].
///
/// On shutdown it stops accepting, sends close 1001 to every client, waits up to
/// `config.shutdown_timeout` for them to finish, and returns. It does not stop the session.
///
/// The gateway subscribes to session events when `serve` is called, not when the returned
/// future is first polled, so a session started right after the call publishes no transition
/// that the gateway misses.
pub fn serve(
    listener: tokio::net::TcpListener,
    session: SessionHandle,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
    let events = session.events();
    serve_subscribed(listener, session, events, config, shutdown)
}

async fn serve_subscribed(
    listener: tokio::net::TcpListener,
    session: SessionHandle,
    events: broadcast::Receiver<SessionEvent>,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().context("invalid gateway configuration")?;
    let local_addr = listener.local_addr().context("failed to read the gateway's listen address")?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Step 1: the hub takes the event subscription made in `serve`, before anything can connect.
    let (hub_tx, hub_rx) = mpsc::channel(hub::REQUEST_CAPACITY);
    let metrics = Arc::new(Metrics::default());
    let transitions = Arc::new(Mutex::new(VecDeque::with_capacity(config.transition_history)));
    let limits = HubLimits {
        max_subscriptions_per_client: config.max_subscriptions_per_client,
        heartbeat_interval: config.heartbeat_interval,
        transition_history: config.transition_history,
    };
    let hub = Hub::new(session.clone(), events, hub_rx, metrics.clone(), transitions.clone(), limits);
    let hub_task = tokio::spawn(hub.run(shutdown_rx.clone()));

    // Step 2: the HTTP server, with per-socket options applied on accept.
    let max_clients = config.max_clients.min(Semaphore::MAX_PERMITS);
    let send_buffer = config.socket_send_buffer_bytes;
    let shutdown_timeout = config.shutdown_timeout;
    let state = Arc::new(GatewayState {
        config,
        session,
        metrics,
        hub: hub_tx,
        transitions,
        client_slots: Arc::new(Semaphore::new(max_clients)),
        shutdown: shutdown_rx.clone(),
        next_client_id: AtomicU64::new(1),
    });
    let listener = listener.tap_io(move |stream| configure_socket(stream, send_buffer));
    let app = http::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let mut server_stop = shutdown_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move { hub::stopped(&mut server_stop).await });
    let mut server_task = tokio::spawn(async move { server.await });
    info!(%local_addr, max_clients, "gateway listening");

    // Step 3: run until the caller's shutdown future completes.
    tokio::select! {
        result = &mut server_task => {
            let _ = shutdown_tx.send(true);
            result.context("gateway server task failed")?.context("gateway server failed")?;
            anyhow::bail!("gateway server stopped before shutdown was requested");
        }
        () = shutdown => {}
    }

    // Step 4: tell the server, the clients and the hub; wait for them within the timeout.
    info!(clients = state.client_slots.available_permits().abs_diff(max_clients), "gateway shutting down");
    let _ = shutdown_tx.send(true);
    let deadline = tokio::time::Instant::now() + shutdown_timeout;

    match tokio::time::timeout_at(deadline, &mut server_task).await {
        Ok(result) => result.context("gateway server task failed")?.context("gateway server failed")?,
        Err(_) => {
            warn!("http connections still open at the shutdown deadline; dropping them");
            server_task.abort();
        }
    }

    let all_slots = u32::try_from(max_clients).unwrap_or(u32::MAX);
    match tokio::time::timeout_at(deadline, state.client_slots.acquire_many(all_slots)).await {
        Ok(_) => debug!("all websocket clients closed"),
        Err(_) => warn!(
            open = max_clients - state.client_slots.available_permits(),
            "websocket clients still open at the shutdown deadline"
        ),
    }

    let _ = hub_task.await;
    info!("gateway stopped");
    Ok(())
}

/// Applies per-connection socket options. Failures only cost latency or memory, so they are
/// logged and the connection is kept.
fn configure_socket(stream: &mut tokio::net::TcpStream, send_buffer: Option<usize>) {
    // Ticks are small and latency-sensitive; Nagle's algorithm would hold them back.
    if let Err(err) = stream.set_nodelay(true) {
        debug!(error = %err, "failed to set TCP_NODELAY");
    }
    if let Some(bytes) = send_buffer {
        if let Err(err) = socket2::SockRef::from(&*stream).set_send_buffer_size(bytes) {
            debug!(error = %err, bytes, "failed to set SO_SNDBUF");
        }
    }
}
