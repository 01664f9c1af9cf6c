//! The HTTP API: probes, Prometheus metrics, stats, items, search and an OpenAI-compatible
//! embeddings endpoint.
//!
//! `/healthz` and `/readyz` are always open (for probes); every other route requires
//! `Authorization: Bearer <token>` when a token is configured. Every error is a JSON body
//! `{"error": {"message", "type", "code"}}` (OpenAI's shape, so its clients show the message).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::error::one_line;
use crate::queue::RowState;
use crate::store::{NewItem, Store, StoreError};

mod types;
use types::*;

/// What the router serves.
pub struct Api {
    pub store: Arc<Store>,
    /// Bearer token for every route but the probes; `None`: no authentication.
    pub token: Option<String>,
    /// false: `/metrics` answers 404 (the original design's `enable_metrics`).
    pub enable_metrics: bool,
}

#[derive(Clone)]
struct AppState {
    store: Arc<Store>,
    token: Option<Arc<str>>,
    enable_metrics: bool,
}

pub fn router(api: Api) -> Router {
    let state = AppState {
        store: api.store,
        token: api.token.map(Arc::from),
        enable_metrics: api.enable_metrics,
    };
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/stats", get(stats))
        .route("/v1/items", post(add_item))
        .route("/v1/items/{id}", get(get_item).delete(delete_item))
        .route("/v1/search", post(search))
        .route("/v1/embeddings", post(embeddings))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route(
            "/healthz",
            get(|| async {
                Json(StatusBody {
                    status: "ok",
                    failing: vec![],
                })
            }),
        )
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
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
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    Ok((bound, task))
}

/// An error answer: status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                kind: self.kind,
                code: self.status.as_u16(),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    /// 400 for malformed JSON, 422 for a body of the wrong shape (missing or unknown field),
    /// 415 without `Content-Type: application/json`.
    fn from(r: JsonRejection) -> ApiError {
        ApiError::new(
            r.status(),
            "invalid_request_error",
            one_line(&r.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(one_line(&r.body_text()))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let msg = e.to_string();
        match e {
            StoreError::Invalid(_) => ApiError::bad_request(msg),
            StoreError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", msg),
            StoreError::Timeout { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", msg)
            }
            StoreError::Failed { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "embedding_failed", msg)
            }
            StoreError::Core(e) => e.into(),
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> ApiError {
        let status = if e.is_transient() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, "server_error", e.to_string())
    }
}

/// Constant-time comparison of the presented token with ours.
async fn require_token(
    State(s): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &s.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        let ok = presented.len() == token.len()
            && presented
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !ok {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or wrong bearer token",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

/// 200 when the database answers and this process's worker (and listener, unless polling) are
/// connected; 503 naming the failing components otherwise.
async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<StatusBody>) {
    let mut failing = Vec::new();
    match tokio::time::timeout(Duration::from_secs(3), s.store.ping()).await {
        Ok(Ok(())) => {}
        _ => failing.push("database"),
    }
    if let Some(m) = s.store.monitor() {
        let st = m.snapshot();
        if !st.worker_connected {
            failing.push("worker");
        }
        if s.store.config().immediate_trigger && !st.listener_connected {
            failing.push("listener");
        }
    }
    if failing.is_empty() {
        (
            StatusCode::OK,
            Json(StatusBody {
                status: "ready",
                failing,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(StatusBody {
                status: "not ready",
                failing,
            }),
        )
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    if !s.enable_metrics {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are disabled (database.pgai.enable_metrics: false)",
        )
        .into_response();
    }
    let text = match s.store.monitor() {
        Some(m) => m.render_prometheus(),
        None => crate::monitor::Monitor::default().render_prometheus(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn stats(State(s): State<AppState>) -> Result<Json<crate::store::ProcessingStats>, ApiError> {
    Ok(Json(s.store.processing_stats().await?))
}

async fn add_item(
    State(s): State<AppState>,
    q: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Json<NewItem>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let Json(item) = body?;
    if q.wait {
        let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(600_000));
        let item = s.store.add_and_wait(item, timeout).await?;
        Ok((StatusCode::CREATED, Json(item)).into_response())
    } else {
        let id = s.store.add(item).await?;
        Ok((
            StatusCode::ACCEPTED,
            Json(Accepted {
                id,
                status: RowState::Pending,
            }),
        )
            .into_response())
    }
}

async fn get_item(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Json<crate::store::Item>, ApiError> {
    let Query(q) = q?;
    let item = if q.include_embedding {
        s.store.get_with_embedding(&id).await?
    } else {
        s.store.get(&id).await?
    };
    item.map(Json)
        .ok_or_else(|| StoreError::NotFound(id).into())
}

async fn delete_item(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    if s.store.delete(&id).await? {
        Ok(Json(Deleted { deleted: id }))
    } else {
        Err(StoreError::NotFound(id).into())
    }
}

async fn search(
    State(s): State<AppState>,
    body: Result<Json<SearchRequest>, JsonRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let Json(r) = body?;
    let results = s.store.search(&r.query, r.k, r.filter.as_ref()).await?;
    Ok(Json(SearchResponse { results }))
}

/// Most inputs in one request (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

/// OpenAI's `POST /v1/embeddings`: `input` a string or a list of strings, `encoding_format`
/// `float` (default) or `base64`. Token-id inputs are refused. `usage` counts are not computed
/// (reported as 0). `model` may name anything: the answer says which model served it.
async fn embeddings(
    State(s): State<AppState>,
    body: Result<Json<EmbeddingsRequest>, JsonRejection>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let Json(r) = body?;
    let texts = match r.input {
        EmbeddingsInput::One(t) => vec![t],
        EmbeddingsInput::Many(v) => v,
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(ApiError::bad_request(format!(
            "input must hold 1 to {MAX_INPUTS} strings, got {}",
            texts.len()
        )));
    }
    let base64 = match r.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding_format must be float or base64, got {other:?}"
            )))
        }
    };
    let embed = s.store.embedder().await?;
    if let Some(d) = r.dimensions {
        if d != embed.dim() {
            return Err(ApiError::bad_request(format!(
                "this model gives {} dimensions, not {d}",
                embed.dim()
            )));
        }
    }
    let model = embed.model_name().to_string();
    let _ = r.model;
    let vectors = s.store.embed(texts).await?;
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding",
            index,
            embedding: if base64 {
                EmbeddingValue::Base64(base64_f32(&v))
            } else {
                EmbeddingValue::Float(v)
            },
        })
        .collect();
    Ok(Json(EmbeddingsResponse {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens: 0,
            total_tokens: 0,
        },
    }))
}

/// Little-endian f32s in standard base64, as OpenAI's `encoding_format: base64`.
fn base64_f32(v: &[f32]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        // 1.0f32 = 00 00 80 3f
        assert_eq!(super::base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(super::base64_f32(&[1.0, 1.0, 1.0]), "AACAPwAAgD8AAIA/");
    }
}
