//! The library API: a table of texts whose embeddings the daemon keeps current, with add /
//! get / search / delete, health and processing stats (the original design's store).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use pgai_trigger::store::{NewItem, StoreFactory};
//! use pgai_trigger::settings::Settings;
//!
//! let mut settings = Settings::default();
//! settings.database.url = Some("postgresql://postgres@127.0.0.1:54329/pgai".into());
//! // Immediate (LISTEN) or polling mode, from `database.pgai.immediate_trigger`.
//! let store = StoreFactory::create(&settings).await?;
//! store.initialize().await?; // schema (idempotent), then the daemon in the configured mode
//!
//! let item = store.add_and_wait(NewItem::new("I had coffee with Maria"), std::time::Duration::from_secs(10)).await?;
//! assert_eq!(item.status, "completed");
//! for hit in store.search("coffee", 5, None).await? {
//!     println!("{:.3} {} {}", hit.score, hit.id, hit.content);
//! }
//! println!("{}", serde_json::to_string_pretty(&store.processing_stats().await?)?);
//! store.close().await;
//! # Ok(()) }
//! ```
//!
//! Connections come from a small pool of their own (never the daemon's); queries are embedded by
//! the same model thread as the daemon's batches, loaded on first use.

use std::ops::Deref;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use pgvector::Vector;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, Mutex, OnceCell, Semaphore, SemaphorePermit};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::config::Config;
use crate::daemon::Daemon;
use crate::embedder::EmbedService;
use crate::error::Error;
use crate::monitor::Monitor;
use crate::schema::{self, CHANNEL_NEEDED, CHANNEL_READY};
use crate::settings::Settings;

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
    #[error("item {id:?} was not embedded within {after:?} (it stays queued; is a daemon running?)")]
    Timeout { id: String, after: Duration },
    /// The row ran out of attempts; `error` is the last one, as kept on the row.
    #[error("item {id:?} failed to embed: {error}")]
    Failed { id: String, error: String },
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
        NewItem { id: None, content: content.into(), metadata: None }
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
    /// `pending`, `processing`, `completed`, `failed`, or `not_queued` (stored without
    /// `needs_embedding`).
    pub status: String,
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

/// `healthy`, `degraded` (works, but embeddings may lag: no daemon seen, old pending rows) or
/// `unhealthy` (database unreachable, schema unusable, this process's daemon disconnected).
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub checks: std::collections::BTreeMap<&'static str, Check>,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.status != "unhealthy"
    }
    /// Names of the failing checks.
    pub fn failing(&self) -> Vec<&'static str> {
        self.checks.iter().filter(|(_, c)| !c.ok).map(|(k, _)| *k).collect()
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
        Ok(store)
    }
}

/// A table of texts kept embedded. Share it behind an `Arc`.
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
}

impl Store {
    /// A store on `config`'s database and table, with the local model (all cores) loaded on
    /// first use; see [`Store::with_embedder`].
    pub fn new(config: Config) -> Store {
        let pool = Pool::new(&config.database_url, "pgai-trigger-client", 8);
        Store {
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
                        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
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
            let _ = self.monitor.set(daemon.monitor.clone());
            *slot = Some(daemon);
        }
        Ok(())
    }

    /// Stops the store's daemon, finishing its batches in flight.
    pub async fn close(&self) {
        if let Some(d) = self.daemon.lock().await.take() {
            d.stop().await;
        }
    }

    /// Inserts (or updates) a row; returns its id. The daemon embeds it.
    pub async fn add(&self, item: NewItem) -> StoreResult<String> {
        let db = self.pool.get().await?;
        self.insert(&db, item).await
    }

    async fn insert(&self, db: &Client, item: NewItem) -> StoreResult<String> {
        let id = match item.id {
            Some(id) if id.is_empty() => return Err(StoreError::Invalid("id must not be empty".into())),
            Some(id) => id,
            None => new_id(),
        };
        if let Some(m) = &item.metadata {
            if !m.is_object() {
                return Err(StoreError::Invalid("metadata must be a JSON object".into()));
            }
        }
        let t = self.config.table.sql();
        let row = db
            .query_one(
                &format!(
                    "INSERT INTO {t} AS r (id, content, metadata, needs_embedding)
                     VALUES ($1, $2, coalesce($3::jsonb, '{{}}'::jsonb), $4)
                     ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content,
                                                    metadata = coalesce($3::jsonb, r.metadata)
                     RETURNING r.id"
                ),
                &[&id, &item.content, &item.metadata, &self.auto_embedding],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Adds a row and returns once its vector is written (or it failed, or `timeout` passed).
    /// Listens on `embedding_ready` before inserting, so the notification cannot be missed;
    /// the row itself is checked too, every 500 ms, so a lost notification costs little.
    pub async fn add_and_wait(&self, item: NewItem, timeout: Duration) -> StoreResult<Item> {
        let mut ready = self.listen_ready().await?;
        let id = self.add(item).await?;
        self.wait_with(&id, timeout, &mut ready).await
    }

    /// Waits until row `id` is embedded, as [`Store::add_and_wait`].
    pub async fn wait_embedded(&self, id: &str, timeout: Duration) -> StoreResult<Item> {
        let mut ready = self.listen_ready().await?;
        self.wait_with(id, timeout, &mut ready).await
    }

    async fn wait_with(&self, id: &str, timeout: Duration, ready: &mut ReadyListener) -> StoreResult<Item> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let item = self.get(id).await?.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            match item.status.as_str() {
                "completed" => return Ok(item),
                "failed" => {
                    return Err(StoreError::Failed {
                        id: id.to_string(),
                        error: item.last_error.unwrap_or_else(|| "unknown error".into()),
                    })
                }
                "not_queued" => {
                    return Err(StoreError::Invalid(format!(
                        "item {id:?} is not queued for embedding (auto_embedding is off)"
                    )))
                }
                _ => {}
            }
            let tick = tokio::time::sleep(Duration::from_millis(500));
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    n = ready.rx.recv() => match n {
                        Some(payload) if payload == id || payload.is_empty() => break,
                        Some(_) => continue,
                        // Listener connection gone: fall back to the tick.
                        None => { (&mut tick).await; break }
                    },
                    _ = &mut tick => break,
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(StoreError::Timeout { id: id.to_string(), after: timeout });
                    }
                }
            }
        }
    }

    /// A dedicated connection LISTENing on `embedding_ready`; notifications arrive on a bounded
    /// channel (a full channel drops them: they are hints, the row is checked anyway).
    async fn listen_ready(&self) -> crate::Result<ReadyListener> {
        let cfg = crate::db::pg_config(&self.config.database_url, "pgai-trigger-client wait")?;
        let (client, mut conn) = cfg.connect(NoTls).await?;
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let AsyncMessage::Notification(n) = m {
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(n.payload().to_string()) {
                        break;
                    }
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL_READY}")).await?;
        Ok(ReadyListener { _client: client, rx, task })
    }

    /// The row `id`, or `None`.
    pub async fn get(&self, id: &str) -> StoreResult<Option<Item>> {
        self.get_with(id, false).await
    }

    /// The row `id` with its vector (when it has one).
    pub async fn get_with_embedding(&self, id: &str) -> StoreResult<Option<Item>> {
        self.get_with(id, true).await
    }

    async fn get_with(&self, id: &str, with_embedding: bool) -> StoreResult<Option<Item>> {
        let db = self.pool.get().await?;
        let t = self.config.table.sql();
        let row = db
            .query_opt(
                &format!(
                    "SELECT id, content, coalesce(metadata, '{{}}'::jsonb),
                            CASE WHEN needs_embedding IS NOT TRUE AND embedding IS NOT NULL THEN 'completed'
                                 WHEN needs_embedding IS NOT TRUE THEN 'not_queued'
                                 ELSE coalesce(retry_status, 'pending') END,
                            embedding IS NOT NULL, coalesce(retry_count, 0), last_error, embedding_model,
                            to_json(created_at) #>> '{{}}', to_json(embedded_at) #>> '{{}}',
                            (extract(epoch FROM embedded_at - queued_at) * 1000)::float8,
                            CASE WHEN $2 THEN embedding END
                       FROM {t} WHERE id = $1"
                ),
                &[&id, &with_embedding],
            )
            .await?;
        Ok(row.map(|r| Item {
            id: r.get(0),
            content: r.get(1),
            metadata: r.get(2),
            status: r.get(3),
            has_embedding: r.get(4),
            retry_count: r.get(5),
            last_error: r.get(6),
            embedding_model: r.get(7),
            created_at: r.get(8),
            embedded_at: r.get(9),
            latency_ms: r.get(10),
            embedding: r.get::<_, Option<Vector>>(11).map(|v| v.to_vec()),
        }))
    }

    /// Deletes row `id`; false when there was none.
    pub async fn delete(&self, id: &str) -> StoreResult<bool> {
        let db = self.pool.get().await?;
        let n = db
            .execute(&format!("DELETE FROM {} WHERE id = $1", self.config.table.sql()), &[&id])
            .await?;
        Ok(n > 0)
    }

    /// Embeds texts with the store's model (batches of 32).
    pub async fn embed(&self, texts: Vec<String>) -> StoreResult<Vec<Vec<f32>>> {
        let embed = self.embedder().await?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(32) {
            out.extend(embed.embed(chunk.to_vec()).await?);
        }
        Ok(out)
    }

    /// The `k` rows nearest to `query` by cosine distance, best first. `filter` (a JSON object)
    /// keeps rows whose metadata contains it (`metadata @> filter`).
    pub async fn search(&self, query: &str, k: usize, filter: Option<&Value>) -> StoreResult<Vec<SearchHit>> {
        if !(1..=1000).contains(&k) {
            return Err(StoreError::Invalid(format!("k must be between 1 and 1000, got {k}")));
        }
        if let Some(f) = filter {
            if !f.is_object() {
                return Err(StoreError::Invalid("filter must be a JSON object".into()));
            }
        }
        let v = self.embed(vec![query.to_string()]).await?.remove(0);
        let db = self.pool.get().await?;
        // HNSW returns at most ef_search candidates, and filters apply after: widen it, and let
        // pgvector ≥ 0.8 scan on until k rows pass the filter.
        db.batch_execute(&format!(
            "SET hnsw.ef_search = {}; SET hnsw.iterative_scan = strict_order",
            (k * 2).clamp(40, 1000)
        ))
        .await
        .or_else(|_| Ok::<_, tokio_postgres::Error>(()))?;
        let rows = db
            .query(
                &format!(
                    "SELECT id, content, coalesce(metadata, '{{}}'::jsonb), (1 - (embedding <=> $1))::float8
                       FROM {}
                      WHERE embedding IS NOT NULL AND ($3::jsonb IS NULL OR metadata @> $3::jsonb)
                      ORDER BY embedding <=> $1
                      LIMIT $2",
                    self.config.table.sql()
                ),
                &[&Vector::from(v), &(k as i64), &filter],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| SearchHit { id: r.get(0), content: r.get(1), metadata: r.get(2), score: r.get(3) })
            .collect())
    }

    /// Moves `failed` rows back to pending with a fresh attempt count, then wakes the daemons.
    /// Returns how many rows moved.
    pub async fn retry_failed(&self) -> StoreResult<u64> {
        let db = self.pool.get().await?;
        let n = db
            .execute(
                &format!(
                    "UPDATE {} SET retry_status = 'pending', retry_count = 0, next_attempt_at = NULL,
                            claimed_by = NULL, claim_expires_at = NULL, needs_embedding = TRUE,
                            queued_at = clock_timestamp()
                      WHERE retry_status = 'failed'",
                    self.config.table.sql()
                ),
                &[],
            )
            .await?;
        if n > 0 {
            db.execute(&format!("SELECT pg_notify('{CHANNEL_NEEDED}', '')"), &[]).await?;
        }
        Ok(n)
    }

    /// Rows needing an embedding and not failed, and how many of them wait for a retry's
    /// backoff (not due yet, not claimed).
    pub async fn queue(&self) -> StoreResult<Queue> {
        let db = self.pool.get().await?;
        let r = db
            .query_one(
                &format!(
                    "SELECT count(*),
                            count(*) FILTER (WHERE next_attempt_at > clock_timestamp()
                                             AND (claim_expires_at IS NULL OR claim_expires_at < clock_timestamp()))
                       FROM {} WHERE needs_embedding = TRUE AND retry_status IS DISTINCT FROM 'failed'",
                    self.config.table.sql()
                ),
                &[],
            )
            .await?;
        Ok(Queue { depth: r.get(0), waiting_retry: r.get(1) })
    }

    /// Counts by status, queue depth and age, latency percentiles, throughput, retries.
    pub async fn processing_stats(&self) -> StoreResult<ProcessingStats> {
        let db = self.pool.get().await?;
        let t = self.config.table.sql();
        let r = db
            .query_one(
                &format!(
                    "SELECT count(*),
                        count(*) FILTER (WHERE needs_embedding AND retry_status IS DISTINCT FROM 'failed'
                                         AND (claim_expires_at IS NULL OR claim_expires_at < clock_timestamp())),
                        count(*) FILTER (WHERE needs_embedding AND claim_expires_at >= clock_timestamp()
                                         AND retry_status IS DISTINCT FROM 'failed'),
                        count(*) FILTER (WHERE needs_embedding IS NOT TRUE AND embedding IS NOT NULL),
                        count(*) FILTER (WHERE retry_status = 'failed'),
                        (extract(epoch FROM clock_timestamp() - min(queued_at)
                            FILTER (WHERE needs_embedding AND retry_status IS DISTINCT FROM 'failed')))::float8,
                        coalesce(sum(retry_count), 0)::int8,
                        count(*) FILTER (WHERE retry_count > 0),
                        count(*) FILTER (WHERE embedded_at > clock_timestamp() - interval '1 minute'),
                        count(*) FILTER (WHERE embedded_at > clock_timestamp() - interval '1 hour')
                     FROM {t}"
                ),
                &[],
            )
            .await?;
        let l = db
            .query_one(
                &format!(
                    "SELECT count(*), avg(ms), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                            percentile_cont(0.95) WITHIN GROUP (ORDER BY ms),
                            percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
                       FROM (SELECT (extract(epoch FROM embedded_at - queued_at) * 1000)::float8 AS ms
                               FROM {t}
                              WHERE embedded_at > clock_timestamp() - interval '1 hour'
                                AND needs_embedding IS NOT TRUE AND queued_at IS NOT NULL
                              ORDER BY embedded_at DESC LIMIT 10000) recent"
                ),
                &[],
            )
            .await?;
        let (pending, processing, completed, failed): (i64, i64, i64, i64) = (r.get(1), r.get(2), r.get(3), r.get(4));
        Ok(ProcessingStats {
            mode: self.mode(),
            table: self.config.table.name().to_string(),
            total_rows: r.get(0),
            pending,
            processing,
            completed,
            failed,
            queue_depth: pending + processing,
            oldest_pending_secs: r.get(5),
            latency_ms: Latency {
                samples: l.get(0),
                avg: l.get(1),
                p50: l.get(2),
                p95: l.get(3),
                p99: l.get(4),
                max: l.get(5),
            },
            throughput_per_minute: r.get(8),
            embedded_last_hour: r.get(9),
            success_rate: (completed + failed > 0).then(|| completed as f64 / (completed + failed) as f64),
            retries: r.get(6),
            rows_retried: r.get(7),
            daemon: self.monitor().map(|m| m.snapshot()),
        })
    }

    /// Database reachable, schema usable, daemons present, queue moving; and this process's
    /// daemon connected, when it runs one.
    pub async fn health_status(&self) -> Health {
        let mut checks = std::collections::BTreeMap::new();
        let mut unhealthy = false;
        let mut degraded = false;
        match tokio::time::timeout(Duration::from_secs(5), self.pool.get()).await {
            Ok(Ok(db)) => {
                checks.insert("database", Check { ok: true, detail: "reachable".into() });
                let dim = self.embed.get().map(|e| e.dim()).unwrap_or(pgai_embed::DIM);
                match schema::verify(&db, &self.config.table, dim).await {
                    Ok(()) => checks.insert("schema", Check { ok: true, detail: format!("table {} ready", self.config.table.name()) }),
                    Err(e) => {
                        unhealthy = true;
                        checks.insert("schema", Check { ok: false, detail: e.to_string() })
                    }
                };
                let t = self.config.table.sql();
                let q = db
                    .query_one(
                        &format!(
                            "SELECT (SELECT count(DISTINCT split_part(application_name, ' ', 2))
                                       FROM pg_stat_activity
                                      WHERE datname = current_database() AND application_name LIKE 'pgai-trigger %'
                                        AND application_name NOT LIKE '% check'),
                                    (SELECT (extract(epoch FROM clock_timestamp() - min(queued_at)))::float8
                                       FROM {t} WHERE needs_embedding AND retry_status IS DISTINCT FROM 'failed')"
                        ),
                        &[],
                    )
                    .await;
                if let Ok(q) = q {
                    let daemons: i64 = q.get(0);
                    let oldest: Option<f64> = q.get(1);
                    checks.insert(
                        "daemons",
                        Check { ok: daemons > 0, detail: format!("{daemons} daemon(s) connected to this database") },
                    );
                    let stale = oldest.is_some_and(|s| s > 60.0);
                    checks.insert(
                        "queue",
                        Check {
                            ok: !stale,
                            detail: match oldest {
                                Some(s) => format!("oldest pending row is {s:.1} s old"),
                                None => "no pending rows".into(),
                            },
                        },
                    );
                    degraded |= daemons == 0 || stale;
                }
            }
            Ok(Err(e)) => {
                unhealthy = true;
                checks.insert("database", Check { ok: false, detail: e.to_string() });
            }
            Err(_) => {
                unhealthy = true;
                checks.insert("database", Check { ok: false, detail: "no answer within 5 s".into() });
            }
        }
        if let Some(m) = self.monitor() {
            let s = m.snapshot();
            checks.insert(
                "worker",
                Check { ok: s.worker_connected, detail: if s.worker_connected { "connected" } else { "disconnected" }.into() },
            );
            unhealthy |= !s.worker_connected;
            if self.config.immediate_trigger {
                checks.insert(
                    "listener",
                    Check {
                        ok: s.listener_connected,
                        detail: if s.listener_connected { "listening" } else { "not listening (polling meanwhile)" }.into(),
                    },
                );
                degraded |= !s.listener_connected;
            }
        }
        if let Some(e) = self.embed.get() {
            checks.insert("embedder", Check { ok: true, detail: format!("{} ({} dimensions)", e.model_name(), e.dim()) });
        }
        Health {
            status: if unhealthy {
                "unhealthy"
            } else if degraded {
                "degraded"
            } else {
                "healthy"
            },
            checks,
        }
    }

    /// Runs `SELECT 1` on a pooled connection.
    pub async fn ping(&self) -> crate::Result<()> {
        self.pool.get().await?.batch_execute("SELECT 1").await?;
        Ok(())
    }
}

struct ReadyListener {
    _client: Client,
    rx: mpsc::Receiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// 32 hex digits.
fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A few connections, opened on demand, reused while alive. The permits bound how many are
/// open at once; a closed connection is dropped instead of returned.
struct Pool {
    url: String,
    app: String,
    idle: StdMutex<Vec<Client>>,
    permits: Semaphore,
}

struct Pooled<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl Pool {
    fn new(url: &str, app: &str, size: usize) -> Pool {
        Pool { url: url.into(), app: app.into(), idle: StdMutex::new(Vec::new()), permits: Semaphore::new(size) }
    }

    async fn get(&self) -> crate::Result<Pooled<'_>> {
        let permit = self.permits.acquire().await.map_err(|_| Error::Connection("pool closed".into()))?;
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match reused {
            Some(c) => c,
            None => crate::db::connect(&self.url, &self.app).await?.0,
        };
        Ok(Pooled { client: Some(client), pool: self, _permit: permit })
    }
}

impl Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                self.pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_32_hex_digits() {
        let a = super::new_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, super::new_id());
    }
}
