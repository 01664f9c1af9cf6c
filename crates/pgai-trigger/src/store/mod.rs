//! The library API: a table of texts whose embeddings the daemon keeps current, with add /
//! get / search / delete, health and processing stats (the original design's store).
//!
//! Connections come from a small pool of their own (never the daemon's); queries are embedded by
//! the same model thread as the daemon's batches, loaded on first use.
//!
//! - items — add, get, delete, wait for a row's vector;
//! - wait — the one LISTEN connection every wait of the store shares;
//! - search — nearest rows, and embeddings of any text (on the model's query lane, behind the
//!   daemon's batches);
//! - stats — counts by [`RowState`], latency, throughput, health, `retry-failed`.

mod items;
mod search;
mod stats;
mod vectorizers;
mod wait;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell};

use crate::config::settings::Settings;
use crate::config::Config;
use crate::daemon::model::EmbedService;
use crate::daemon::Daemon;
use crate::error::Error;
use crate::monitor::Monitor;
use crate::pg::Pool;
use crate::queue::{schema, RowState};

/// What the store's calls can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(transparent)]
    Core(#[from] Error),
    /// The caller's input is unusable (the message says why).
    #[error("{0}")]
    Invalid(String),
    #[error("no item with id {0:?}")]
    NotFound(String),
    /// `add_and_wait`: the row was not embedded before the deadline (it stays queued).
    #[error(
        "item {id:?} was not embedded within {after:?} (it stays queued; is a daemon running?)"
    )]
    Timeout { id: String, after: Duration },
    /// The row ran out of attempts; `error` is the last one, as kept on the row.
    #[error("item {id:?} failed to embed: {error}")]
    Failed { id: String, error: String },
    /// Too many waits at once (the message says which limit); retry later.
    #[error("{0}")]
    Busy(String),
    /// The store is closing: waits end, new ones are refused.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Core(Error::Db(e))
    }
}

impl From<pgai_embed::EmbedError> for StoreError {
    fn from(e: pgai_embed::EmbedError) -> Self {
        StoreError::Core(Error::Embed(e))
    }
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// How the daemon learns about new rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// LISTEN/NOTIFY wake-ups backed by a fallback poll.
    Immediate,
    /// Polling only (PgBouncer in transaction mode).
    Polling,
}

/// A row to add. Without `id` one is generated; an existing id is updated (a new content is
/// re-embedded, the same content is not).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    pub id: Option<String>,
    pub content: String,
    pub metadata: Option<Value>,
}

impl NewItem {
    pub fn new(content: impl Into<String>) -> NewItem {
        NewItem {
            id: None,
            content: content.into(),
            metadata: None,
        }
    }
    pub fn id(mut self, id: impl Into<String>) -> NewItem {
        self.id = Some(id.into());
        self
    }
    pub fn metadata(mut self, metadata: Value) -> NewItem {
        self.metadata = Some(metadata);
        self
    }
}

/// A stored row and where it is in the queue.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub id: String,
    pub content: String,
    pub metadata: Value,
    /// Where the row is in the queue.
    pub status: RowState,
    pub has_embedding: bool,
    pub retry_count: i32,
    pub last_error: Option<String>,
    pub embedding_model: Option<String>,
    pub created_at: Option<String>,
    pub embedded_at: Option<String>,
    /// Milliseconds from queueing to the vector's write.
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

/// A row marked failed (see [`Store::failed`]).
#[derive(Debug, Clone, Serialize)]
pub struct FailedRow {
    pub id: String,
    pub last_error: Option<String>,
    pub retry_count: i32,
}

/// See [`Store::queue`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Queue {
    pub depth: i64,
    pub waiting_retry: i64,
}

/// One search result; `score` is cosine similarity (1 = same direction).
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub id: String,
    pub content: String,
    pub metadata: Value,
    pub score: f64,
}

/// The original `get_processing_stats`, computed from the table (so it covers every daemon on
/// the database), plus this process's daemon counters when it runs one.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessingStats {
    pub mode: Mode,
    pub table: String,
    pub total_rows: i64,
    pub pending: i64,
    pub processing: i64,
    pub completed: i64,
    pub failed: i64,
    /// Rows needing an embedding and not failed (pending + processing).
    pub queue_depth: i64,
    pub oldest_pending_secs: Option<f64>,
    /// Commit → vector written, over the rows embedded in the last hour (at most the last 10,000).
    pub latency_ms: Latency,
    /// Rows embedded in the last 60 seconds.
    pub throughput_per_minute: i64,
    pub embedded_last_hour: i64,
    /// completed / (completed + failed); null while both are 0.
    pub success_rate: Option<f64>,
    /// Failed attempts still recorded on rows (sum of `retry_count`), and rows with any.
    pub retries: i64,
    pub rows_retried: i64,
    /// This process's daemon, when the store runs one (`/v1/stats` of `serve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<crate::monitor::Stats>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub samples: i64,
    pub avg: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// One check of [`Health`].
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

/// The overall verdict of [`Health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    /// Works, but embeddings may lag: no daemon seen, old pending rows, listener down.
    Degraded,
    /// Database unreachable, schema unusable, this process's daemon disconnected.
    Unhealthy,
}

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub status: HealthStatus,
    pub checks: std::collections::BTreeMap<&'static str, Check>,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.status != HealthStatus::Unhealthy
    }
    /// Names of the failing checks.
    pub fn failing(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|(_, c)| !c.ok)
            .map(|(k, _)| *k)
            .collect()
    }
}

/// Builds a [`Store`] from [`Settings`], in the mode the settings choose (the original
/// `PgaiStoreFactory`).
pub struct StoreFactory;

impl StoreFactory {
    /// A store for `settings`: immediate mode when `database.pgai.immediate_trigger` is true,
    /// polling otherwise. Connects nothing yet; the embedding provider starts on first use.
    pub async fn create(settings: &Settings) -> crate::Result<Store> {
        let config = settings.daemon_config()?;
        let mut store = Store::new(config);
        store.auto_embedding = settings.database.pgai.auto_embedding;
        store.loader = Some(settings.clone());
        Ok(store.with_max_waiting(settings.http.max_waiting))
    }
}

/// A table of texts kept embedded. Share it behind an `Arc`.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use pgai_trigger::{NewItem, RowState, Settings, StoreFactory};
///
/// let mut settings = Settings::default();
/// // The URL `up` prints (the embedded cluster needs its generated password).
/// settings.database.url = Some("postgresql://postgres:PASSWORD@127.0.0.1:54329/pgai".into());
/// // Immediate (LISTEN) or polling mode, from `database.pgai.immediate_trigger`.
/// let store = StoreFactory::create(&settings).await?;
/// store.initialize().await?; // schema (idempotent), then the daemon in the configured mode
///
/// let item = store.add_and_wait(NewItem::new("I had coffee with Maria"), std::time::Duration::from_secs(10)).await?;
/// assert_eq!(item.status, RowState::Completed);
/// for hit in store.search("coffee", 5, None).await? {
///     println!("{:.3} {} {}", hit.score, hit.id, hit.content);
/// }
/// println!("{}", serde_json::to_string_pretty(&store.processing_stats().await?)?);
/// store.close().await;
/// # Ok(()) }
/// ```
pub struct Store {
    config: Arc<Config>,
    pool: Pool,
    /// false: added rows are stored with `needs_embedding = false` (not queued).
    auto_embedding: bool,
    embed: OnceCell<EmbedService>,
    /// Starts the embedder on first use when none was given.
    loader: Option<Settings>,
    daemon: Mutex<Option<Daemon>>,
    monitor: OnceLock<Arc<Monitor>>,
    /// Every wait's LISTEN connection (one per store).
    ready: wait::ReadyHub,
}

impl Store {
    /// A store on `config`'s database and table, with the local model (all cores) loaded on
    /// first use; see [`Store::with_embedder`].
    pub fn new(config: Config) -> Store {
        let pool = Pool::new(&config.database_url, "pgai-trigger-client", POOL_SIZE);
        let ready = wait::ReadyHub::new(
            &config.database_url,
            crate::config::defaults::HTTP_MAX_WAITING,
        );
        Store {
            ready,
            config: Arc::new(config),
            pool,
            auto_embedding: true,
            embed: OnceCell::new(),
            loader: None,
            daemon: Mutex::new(None),
            monitor: OnceLock::new(),
        }
    }

    /// Uses `embed` (e.g. a clone shared with a daemon) for queries and the store's daemon.
    pub fn with_embedder(self, embed: EmbedService) -> Store {
        let _ = self.embed.set(embed);
        self
    }

    /// Reports this monitor's daemon in stats and health (when the daemon was started
    /// elsewhere).
    pub fn with_monitor(self, monitor: Arc<Monitor>) -> Store {
        let _ = self.monitor.set(monitor);
        self
    }

    pub fn with_auto_embedding(mut self, on: bool) -> Store {
        self.auto_embedding = on;
        self
    }

    /// Most waits ([`Store::add_and_wait`], [`Store::wait_embedded`], `?wait=true`) at once;
    /// more fail with [`StoreError::Busy`]. Default [`defaults::HTTP_MAX_WAITING`](crate::defaults).
    pub fn with_max_waiting(mut self, n: usize) -> Store {
        self.ready = wait::ReadyHub::new(&self.config.database_url, n);
        self
    }

    /// Waits in progress.
    pub fn waiting(&self) -> usize {
        self.ready.waiting()
    }

    /// Ends every wait in progress with [`StoreError::ShuttingDown`] and refuses new ones (a
    /// server stopping calls it first, so no request holds the shutdown up).
    pub fn cancel_waits(&self) {
        self.ready.close();
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn mode(&self) -> Mode {
        if self.config.immediate_trigger {
            Mode::Immediate
        } else {
            Mode::Polling
        }
    }

    /// The embedding service, started on first call.
    pub async fn embedder(&self) -> crate::Result<&EmbedService> {
        self.embed
            .get_or_try_init(|| async {
                match &self.loader {
                    Some(s) => s.start_embedder().await,
                    None => Ok(EmbedService::start_default(
                        std::thread::available_parallelism()
                            .map(|n| n.get())
                            .unwrap_or(2),
                    )
                    .await?),
                }
            })
            .await
    }

    /// The daemon's monitor, when this store runs one or was given one.
    pub fn monitor(&self) -> Option<Arc<Monitor>> {
        self.monitor.get().cloned()
    }

    /// Creates what is missing of the schema (as `db init`), then starts the daemon in the
    /// store's mode. Call once; needs the table owner's rights for the schema part.
    pub async fn initialize(&self) -> crate::Result<()> {
        let dim = self.embedder().await?.dim();
        {
            let db = self.pool.get().await?;
            schema::init(&db, &self.config.table, dim).await?;
        }
        self.start_daemon().await
    }

    /// Starts the daemon (listener unless polling, worker) against an existing schema.
    pub async fn start_daemon(&self) -> crate::Result<()> {
        let mut slot = self.daemon.lock().await;
        if slot.is_none() {
            let embed = self.embedder().await?.clone();
            let daemon = Daemon::start((*self.config).clone(), embed).await?;
            let _ = self.monitor.set(daemon.monitor().clone());
            *slot = Some(daemon);
        }
        Ok(())
    }

    /// Ends the waits in progress ([`Store::cancel_waits`]) and stops the store's daemon,
    /// finishing its batches in flight.
    pub async fn close(&self) {
        self.cancel_waits();
        if let Some(d) = self.daemon.lock().await.take() {
            d.stop().await;
        }
    }
}

/// Connections the store opens at most.
const POOL_SIZE: usize = 8;

/// Longest id, in bytes: a btree entry must fit in a third of a page (about 2,700 bytes), and
/// ids travel in `embedding_ready` payloads.
pub(crate) const MAX_ID_BYTES: usize = 1024;

/// `id` as the table accepts it, or why not (empty, too long, NUL).
fn check_id(id: &str) -> StoreResult<()> {
    if id.is_empty() {
        return Err(StoreError::Invalid("id must not be empty".into()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(StoreError::Invalid(format!(
            "id is {} bytes long; at most {MAX_ID_BYTES}",
            id.len()
        )));
    }
    check_text("id", id)
}

/// PostgreSQL's text cannot hold NUL: refuse it here rather than fail in the database.
fn check_text(what: &str, s: &str) -> StoreResult<()> {
    if s.contains('\0') {
        return Err(StoreError::Invalid(format!(
            "{what} must not contain NUL characters (\\u0000)"
        )));
    }
    Ok(())
}

/// jsonb cannot hold `\u0000` either, in keys or in strings.
fn check_json(what: &str, v: &Value) -> StoreResult<()> {
    match v {
        Value::String(s) => check_text(what, s),
        Value::Array(a) => a.iter().try_for_each(|v| check_json(what, v)),
        Value::Object(o) => o.iter().try_for_each(|(k, v)| {
            check_text(what, k)?;
            check_json(what, v)
        }),
        _ => Ok(()),
    }
}

/// 32 hex digits.
fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::{check_id, check_json, StoreError, MAX_ID_BYTES};
    use serde_json::json;

    #[test]
    fn ids_and_texts_postgresql_would_refuse_are_invalid() {
        assert!(check_id("ok").is_ok());
        assert!(check_id(&"x".repeat(MAX_ID_BYTES)).is_ok());
        for bad in [String::new(), "x".repeat(MAX_ID_BYTES + 1), "a\0b".into()] {
            assert!(
                matches!(check_id(&bad), Err(StoreError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(check_json("metadata", &json!({"a": ["b", {"c": 1}]})).is_ok());
        assert!(check_json("metadata", &json!({"a": ["b", {"c": "\u{0}"}]})).is_err());
        assert!(check_json("metadata", &json!({"a\u{0}": 1})).is_err());
    }

    #[test]
    fn ids_are_32_hex_digits() {
        let a = super::new_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, super::new_id());
    }
}
