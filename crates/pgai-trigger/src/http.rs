//! The HTTP side: liveness, readiness and stats. (The item, search and metrics endpoints of
//! PRODUCT.md come with the operator-surface work.)

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::monitor::Monitor;

#[derive(Clone)]
struct AppState {
    monitor: Arc<Monitor>,
    listening_expected: bool,
}

pub fn router(monitor: Arc<Monitor>, listening_expected: bool) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/v1/stats", get(stats))
        .with_state(AppState { monitor, listening_expected })
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let mut failing = Vec::new();
    if !s.monitor.worker_connected.load(Relaxed) {
        failing.push("worker");
    }
    if s.listening_expected && !s.monitor.listener_connected.load(Relaxed) {
        failing.push("listener");
    }
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready", "failing": failing})))
    }
}

async fn stats(State(s): State<AppState>) -> Json<crate::monitor::Stats> {
    Json(s.monitor.snapshot())
}

/// Binds `addr` (port 0 picks one) and serves until `shutdown`. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok((bound, task))
}
