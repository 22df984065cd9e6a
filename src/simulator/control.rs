//! The HTTP control endpoint: `POST /fault` injects a fault, `GET /stats` and `GET /symbols`
//! report the simulator's state as JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::faults::Fault;
use super::state::{Shared, Stats};
use super::symbols::{SymbolInfo, SYMBOLS};

/// Serves the control endpoint on `listener` until `shutdown` turns true.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let router = Router::new()
        .route("/fault", post(inject))
        .route("/stats", get(stats))
        .route("/symbols", get(symbols))
        .with_state(shared);

    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
        tracing::info!(%error, "control endpoint stopped with an error");
    }
}

async fn inject(State(shared): State<Arc<Shared>>, Json(fault): Json<Fault>) -> Json<serde_json::Value> {
    super::inject(&shared, fault.clone());
    Json(serde_json::json!({ "injected": fault }))
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    Json(shared.stats())
}

async fn symbols() -> Json<Vec<SymbolInfo>> {
    Json(SYMBOLS.iter().map(|s| s.info()).collect())
}
