//! HTTP routes: the WebSocket upgrade, the dashboard, health, metrics and admin endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum::extract::rejection::QueryRejection;
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::fsm::StateName;

use super::client::{self, CLOSE_TRY_AGAIN_LATER, CLOSE_UNAUTHORIZED};
use super::hub::{HubHealth, HubRequest};
use super::protocol::TransitionView;
use super::GatewayState;

/// Time `GET /health` waits for the fan-out hub before reporting it unresponsive.
const HUB_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

type QueryParams = Result<Query<HashMap<String, String>>, QueryRejection>;

/// Builds the router. Handlers need `ConnectInfo<SocketAddr>`, so serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub(crate) fn router(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/ws", get(websocket_only))
        .route("/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS) }))
        .route("/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE_CSS) }))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/reconnect", post(admin_reconnect))
        .route("/api/transitions", get(transitions))
        .route("/api/diagram", get(diagram))
        .with_state(state)
}

/// Serves the WebSocket at `/` for upgrade requests and the dashboard page for plain GETs.
async fn root(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    State(state): State<Arc<GatewayState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryParams,
) -> Response {
    match upgrade {
        Ok(upgrade) => accept_websocket(upgrade, state, peer, &headers, &query),
        Err(_) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML).into_response(),
    }
}

async fn websocket_only(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    State(state): State<Arc<GatewayState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryParams,
) -> Response {
    match upgrade {
        Ok(upgrade) => accept_websocket(upgrade, state, peer, &headers, &query),
        Err(rejection) => (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            format!("{rejection}; /ws takes WebSocket connections only, open / in a browser for the dashboard\n"),
        )
            .into_response(),
    }
}

/// Upgrades the connection. Clients without the token and clients over the limit are upgraded
/// too, then closed with a code and reason, because a browser cannot read a refused handshake.
fn accept_websocket(
    upgrade: WebSocketUpgrade,
    state: Arc<GatewayState>,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: &QueryParams,
) -> Response {
    let config = &state.config;
    let upgrade = upgrade
        .read_buffer_size(4096)
        .max_message_size(config.max_transport_message_bytes)
        .max_frame_size(config.max_transport_message_bytes);
    let close_timeout = config.close_timeout;

    if !token_accepted(&state, headers, query) {
        state.metrics.clients_rejected_token.fetch_add(1, Ordering::Relaxed);
        info!(%peer, "websocket client rejected: missing or wrong client token");
        let reason = "missing or wrong client token; pass ?token=... or an Authorization: Bearer header".to_string();
        return upgrade.on_upgrade(move |socket| client::reject(socket, CLOSE_UNAUTHORIZED, reason, close_timeout));
    }

    let Ok(permit) = state.client_slots.clone().try_acquire_owned() else {
        state.metrics.clients_rejected_capacity.fetch_add(1, Ordering::Relaxed);
        info!(%peer, max_clients = config.max_clients, "websocket client rejected: client limit reached");
        let reason = format!("server is at its limit of {} clients; retry later", config.max_clients);
        return upgrade.on_upgrade(move |socket| client::reject(socket, CLOSE_TRY_AGAIN_LATER, reason, close_timeout));
    };

    upgrade
        .on_failed_upgrade(move |error| debug!(%peer, %error, "websocket upgrade failed"))
        .on_upgrade(move |socket| client::run(socket, state, peer, permit))
}

/// Returns true when no token is configured or the request carries the right one.
fn token_accepted(state: &GatewayState, headers: &HeaderMap, query: &QueryParams) -> bool {
    let Some(expected) = state.config.client_token.as_deref() else { return true };
    presented_token(headers, query).is_some_and(|presented| constant_time_eq(presented.as_bytes(), expected.as_bytes()))
}

/// Reads the token from `Authorization: Bearer`, else from `?token=`.
fn presented_token<'a>(headers: &'a HeaderMap, query: &'a QueryParams) -> Option<&'a str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    bearer.or_else(|| query.as_ref().ok().and_then(|Query(params)| params.get("token")).map(String::as_str))
}

/// Compares without an early exit, so the time taken does not tell how much of a guess matched.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter().zip(right).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthBody {
    status: &'static str,
    state: StateName,
    since: i64,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_in_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Age of the last tick in milliseconds per subscribed symbol; null before the first tick.
    last_tick_age_ms: serde_json::Map<String, serde_json::Value>,
    upstream_subscriptions: usize,
    desired_subscriptions: usize,
    clients: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

/// Reports the feed's health: 200 while streaming, 503 in every other state.
async fn health(State(state): State<Arc<GatewayState>>) -> Response {
    let status = state.session.status().borrow().clone();

    let (reply_tx, reply_rx) = oneshot::channel();
    let hub_health: Option<HubHealth> = match state.hub.send(HubRequest::Health { reply: reply_tx }).await {
        Ok(()) => tokio::time::timeout(HUB_HEALTH_TIMEOUT, reply_rx).await.ok().and_then(Result::ok),
        Err(_) => None,
    };
    let error = hub_health.is_none().then_some("fan-out hub did not answer; clients may not be receiving frames");

    let mut last_tick_age_ms = serde_json::Map::new();
    for (symbol, age) in hub_health.unwrap_or_default().last_tick_age_ms {
        last_tick_age_ms.insert(symbol, age.map_or(serde_json::Value::Null, serde_json::Value::from));
    }

    let healthy = status.state == StateName::Streaming && error.is_none();
    let body = HealthBody {
        status: status.state.client_status(),
        state: status.state,
        since: status.since_ms,
        attempt: status.attempt,
        retry_in_ms: status.retry_in_ms,
        reason: status.reason.clone(),
        last_tick_age_ms,
        upstream_subscriptions: status.upstream_subscriptions,
        desired_subscriptions: status.desired_subscriptions,
        clients: state.metrics.clients.load(Ordering::Relaxed),
        error,
    };
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<GatewayState>>) -> Response {
    let status = state.session.status().borrow().clone();
    let text = state.metrics.render(&status);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Forces a reconnect. Allowed from loopback (unless `trust_loopback_admin` is off) or with the
/// client token.
async fn admin_reconnect(
    State(state): State<Arc<GatewayState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryParams,
) -> Response {
    let from_loopback = state.config.trust_loopback_admin && peer.ip().is_loopback();
    let with_token = state.config.client_token.is_some() && token_accepted(&state, &headers, &query);
    if !(from_loopback || with_token) {
        info!(%peer, "admin reconnect rejected");
        let message = "POST /admin/reconnect is allowed only from a loopback address or with the client token (Authorization: Bearer or ?token=)";
        return (StatusCode::FORBIDDEN, Json(json!({ "error": message }))).into_response();
    }

    let reason = format!("admin request from {peer}");
    info!(%peer, "admin reconnect requested");
    match state.session.reconnect(reason).await {
        Ok(()) => {
            state.metrics.admin_reconnects.fetch_add(1, Ordering::Relaxed);
            (StatusCode::ACCEPTED, Json(json!({ "result": "reconnect requested" }))).into_response()
        }
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": format!("{err}; restart the server") }))).into_response(),
    }
}

/// Returns the most recent transitions, oldest first.
async fn transitions(State(state): State<Arc<GatewayState>>) -> Json<Vec<TransitionView>> {
    let history = state.transitions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Json(history.iter().cloned().collect())
}

/// Serves the state diagram derived from the machine, for the dashboard to draw. It is explored
/// once per process because the machine's shape cannot change while it runs.
async fn diagram() -> Response {
    static DIAGRAM_JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DIAGRAM_JSON.get_or_init(|| crate::fsm::diagram::explore().to_json());
    ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison_matches_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
