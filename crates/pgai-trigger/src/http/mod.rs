//! The HTTP API: probes, Prometheus metrics, stats, items, search (of the table or of a
//! vectorizer), vectorizers with their status, failed rows and their retry, an
//! OpenAI-compatible embeddings endpoint, and the status page (`GET /`, see `page`).
//!
//! `/healthz`, `/readyz` and the status page's files are always open (the page holds no
//! data); every other route requires `Authorization: Bearer <token>` (scheme in any case) when
//! a token is configured. Without a
//! token, those routes check `Host` against DNS rebinding: `localhost`, a loopback IP, the IP
//! the connection reached, or a name of [`Api::allowed_hosts`]; any other answers 421. Every
//! error is a JSON body `{"error": {"message", "type", "code"}}` (OpenAI's shape, so its
//! clients show the message).
//!
//! Requests are bounded ([`Limits`]): body size, inputs and text bytes of one `/v1/embeddings`
//! request (413 past them), time to send the headers (the connection is closed). The number of
//! `?wait=true` requests waiting at once is the store's (`Store::with_max_waiting`; 503 past
//! it).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::defaults;
use crate::error::one_line;
use crate::queue::RowState;
use crate::store::{NewItem, Store, StoreError};

mod page;
mod types;
use types::*;

pub use page::CSP;

/// Request limits; see the module documentation.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body; 413 past it.
    pub max_body_bytes: usize,
    /// Most inputs of one `/v1/embeddings` request; 413 past it.
    pub max_inputs: usize,
    /// Most bytes of text of one `/v1/embeddings` request, all inputs together; 413 past it.
    pub max_input_bytes: usize,
    /// A client must send a request's headers within this time (connections idle between
    /// requests too); the connection is closed otherwise. Used by [`serve_with`].
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: defaults::HTTP_MAX_BODY_BYTES,
            max_inputs: defaults::HTTP_MAX_INPUTS,
            max_input_bytes: defaults::HTTP_MAX_INPUT_BYTES,
            header_read_timeout: Duration::from_secs_f64(defaults::HTTP_HEADER_TIMEOUT_SECS),
        }
    }
}

/// What the router serves. [`Api::new`] gives the defaults; `HttpSettings::api` builds one from
/// the settings and refuses unsafe ones (empty token, a non-loopback address without one).
pub struct Api {
    pub store: Arc<Store>,
    /// Bearer token for every route but the probes; `None`: no authentication (and the `Host`
    /// check). An empty token matches nothing.
    pub token: Option<String>,
    /// false: `/metrics` answers 404 (the original design's `enable_metrics`).
    pub enable_metrics: bool,
    /// Without a token, `Host` names accepted besides `localhost` and IP literals of loopback
    /// or of the address the connection reached (case-insensitive, without port).
    pub allowed_hosts: Vec<String>,
    pub limits: Limits,
}

impl Api {
    /// No token, metrics on, default limits.
    pub fn new(store: Arc<Store>) -> Api {
        Api {
            store,
            token: None,
            enable_metrics: true,
            allowed_hosts: Vec::new(),
            limits: Limits::default(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    store: Arc<Store>,
    auth: Auth,
    enable_metrics: bool,
    limits: Arc<Limits>,
}

#[derive(Clone)]
enum Auth {
    /// SHA-256 of the token: comparing digests takes the same time whatever the presented
    /// token's length and content.
    Token(Arc<[u8; 32]>),
    /// An empty configured token: nothing matches (never "no authentication").
    DenyAll,
    /// No token: the `Host` check instead.
    Hosts(Arc<Vec<String>>),
}

pub fn router(api: Api) -> Router {
    let auth = match api.token {
        Some(t) if t.is_empty() => Auth::DenyAll,
        Some(t) => Auth::Token(Arc::new(digest(t.as_bytes()))),
        None => Auth::Hosts(Arc::new(
            api.allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        )),
    };
    let body_limit = api.limits.max_body_bytes;
    let state = AppState {
        store: api.store,
        auth,
        enable_metrics: api.enable_metrics,
        limits: Arc::new(api.limits),
    };
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/stats", get(stats))
        .route("/v1/items", post(add_item))
        .route("/v1/items/{id}", get(get_item).delete(delete_item))
        .route("/v1/search", post(search))
        .route("/v1/vectorizers", get(vectorizers))
        .route("/v1/vectorizers/{name}", get(vectorizer))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/failed", get(failed))
        .route("/v1/failed/retry", post(retry_failed))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), guard));
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
        .merge(page::routes())
        .merge(protected)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Binds `addr` (port 0 picks one) and serves until `shutdown`, with the default header-read
/// timeout. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(
        addr,
        router,
        shutdown,
        Limits::default().header_read_timeout,
    )
    .await
}

/// How long a stopping server waits for requests in progress before it closes their
/// connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The address a connection reached, for the `Host` check.
#[derive(Clone, Copy)]
struct LocalAddr(SocketAddr);

/// [`serve`] with a header-read timeout: a client that opens a connection and sends its headers
/// slowly (or not at all) is cut off after `header_read_timeout`. On `shutdown` it stops
/// accepting, lets requests in progress finish for up to [`SHUTDOWN_GRACE`], then closes what
/// is left; the task ends then.
pub async fn serve_with(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    header_read_timeout: Duration,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, router, shutdown, header_read_timeout));
    Ok((bound, task))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
    header_read_timeout: Duration,
) {
    let mut connections = tokio::task::JoinSet::new();
    let closing = CancellationToken::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(connection(
                        stream,
                        router.clone(),
                        closing.clone(),
                        header_read_timeout,
                    ));
                }
                Err(e) => {
                    // Out of file descriptors, mostly: let some connections end first.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    closing.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "closing HTTP connections still busy after the shutdown grace period"
        );
        connections.abort_all();
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    router: Router,
    closing: CancellationToken,
    header_read_timeout: Duration,
) {
    use tower_service::Service;
    let local = stream.local_addr().ok();
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        if let Some(local) = local {
            req.extensions_mut().insert(LocalAddr(local));
        }
        // A Router is always ready.
        router.clone().call(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
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
    /// 415 without `Content-Type: application/json`, 413 for a body over the limit.
    fn from(r: JsonRejection) -> ApiError {
        ApiError::new(
            r.status(),
            "invalid_request_error",
            one_line(&r.body_text()),
        )
    }
}

/// The body, or the rejection as an error that names the body limit when it is the cause.
fn body<T>(s: &AppState, r: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match r {
        Ok(Json(v)) => Ok(v),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large(format!(
            "request body larger than {} bytes (http.max_body_bytes)",
            s.limits.max_body_bytes
        ))),
        Err(r) => Err(r.into()),
    }
}

fn too_large(message: String) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        message,
    )
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
            StoreError::Busy(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", msg)
            }
            StoreError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", msg)
            }
            StoreError::Core(e) => e.into(),
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> ApiError {
        // Data exceptions (bad encoding, value out of range…): the request's data, not the
        // server. The store refuses what it knows of first; this is the net behind it.
        if let crate::Error::Db(db) = &e {
            if db.code().is_some_and(|c| c.code().starts_with("22")) {
                return ApiError::bad_request(e.to_string());
            }
        }
        let status = if e.is_transient() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, "server_error", e.to_string())
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(bytes));
    out
}

/// Equal digests, in time independent of where they differ.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header; the scheme in any case (RFC 9110).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether a request without a token may be served, from its `Host`: a browser led to us by DNS
/// rebinding names the attacker's host there. A request without `Host` is no browser's.
fn host_allowed(host: &str, local: Option<IpAddr>, allowed: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip.to_string(),
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name.to_string()
            }
            _ => host.clone(),
        }
    };
    if name == "localhost" || allowed.contains(&name) {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => {
            let ip = ip.to_canonical();
            ip.is_loopback() || local.is_some_and(|l| l.to_canonical() == ip)
        }
        Err(_) => false,
    }
}

/// The token when one is configured, the `Host` check otherwise.
async fn guard(
    State(s): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let hosts = match &s.auth {
        Auth::Token(want) => {
            let presented = bearer(&headers).unwrap_or("");
            if digests_equal(&digest(presented.as_bytes()), want) {
                return next.run(req).await;
            }
            return unauthorized();
        }
        Auth::DenyAll => return unauthorized(),
        Auth::Hosts(hosts) => hosts,
    };
    let host = headers
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string())
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let local = req.extensions().get::<LocalAddr>().map(|l| l.0.ip());
    match host {
        Some(h) if !host_allowed(&h, local, hosts) => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "invalid_request_error",
            format!(
                "Host {:?} is not served without a token: use localhost or an IP address, list the name in http.allowed_hosts (PGAI_HTTP_ALLOWED_HOSTS), or set http.token",
                one_line(&h)
            ),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

fn unauthorized() -> Response {
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
    r
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
    item: Result<Json<NewItem>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let item = body(&s, item)?;
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

/// Failed rows of the daemon's table: `?limit=N` (default 100, at most 1000).
async fn failed(
    State(s): State<AppState>,
    q: Result<Query<FailedQuery>, QueryRejection>,
) -> Result<Json<FailedList>, ApiError> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 1000, got {limit}"
        )));
    }
    Ok(Json(FailedList {
        failed: s.store.failed(limit).await?,
    }))
}

/// `retry-failed`: every failed row of the daemon's table back to pending.
async fn retry_failed(State(s): State<AppState>) -> Result<Json<Requeued>, ApiError> {
    Ok(Json(Requeued {
        requeued: s.store.retry_failed().await?,
    }))
}

/// The daemon's table, or with `"vectorizer"` that vectorizer's chunks (`"filters"`: equality
/// on source columns); an unknown vectorizer is 404.
async fn search(
    State(s): State<AppState>,
    request: Result<Json<SearchRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let r = body(&s, request)?;
    let Some(name) = r.vectorizer else {
        if r.filters.is_some() {
            return Err(ApiError::bad_request(
                "filters need a vectorizer; for the table's metadata use filter",
            ));
        }
        let results = s.store.search(&r.query, r.k, r.filter.as_ref()).await?;
        return Ok(Json(SearchResponse { results }).into_response());
    };
    if r.filter.is_some() {
        return Err(ApiError::bad_request(
            "filter (metadata) applies to the table's search; with a vectorizer use filters",
        ));
    }
    let filters: Vec<(String, serde_json::Value)> =
        r.filters.unwrap_or_default().into_iter().collect();
    match s
        .store
        .search_vectorizer(&name, &r.query, r.k, &filters)
        .await?
    {
        Some(found) => Ok(Json(found).into_response()),
        None => Err(no_vectorizer(&name)),
    }
}

fn no_vectorizer(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no vectorizer named {:?}", one_line(name)),
    )
}

/// Every vectorizer with its status.
async fn vectorizers(State(s): State<AppState>) -> Result<Json<VectorizerList>, ApiError> {
    Ok(Json(VectorizerList {
        vectorizers: s.store.vectorizers().await?,
    }))
}

/// One vectorizer with its status; 404 when unknown.
async fn vectorizer(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<crate::vectorizer::VectorizerInfo>, ApiError> {
    s.store
        .vectorizer(&name)
        .await?
        .map(Json)
        .ok_or_else(|| no_vectorizer(&name))
}

/// OpenAI's `POST /v1/embeddings`: `input` a string or a list of strings, `encoding_format`
/// `float` (default) or `base64`. Token-id inputs and unknown fields are refused. `usage`
/// counts are not computed (reported as 0). `model` may name anything: the answer says which
/// model served it. At most `max_inputs` inputs and `max_input_bytes` bytes of text (413).
async fn embeddings(
    State(s): State<AppState>,
    request: Result<Json<EmbeddingsRequest>, JsonRejection>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let r = body(&s, request)?;
    let texts = match r.input {
        EmbeddingsInput::One(t) => vec![t],
        EmbeddingsInput::Many(v) => v,
    };
    let limits = &s.limits;
    if texts.is_empty() {
        return Err(ApiError::bad_request("input must hold at least one string"));
    }
    if texts.len() > limits.max_inputs {
        return Err(too_large(format!(
            "input holds {} strings; at most {} per request (http.max_inputs)",
            texts.len(),
            limits.max_inputs
        )));
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    if bytes > limits.max_input_bytes {
        return Err(too_large(format!(
            "input holds {bytes} bytes of text; at most {} per request (http.max_input_bytes)",
            limits.max_input_bytes
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
