//! Stage 1 of the flow: the table, its indexes and triggers; `db init`, `db recreate`,
//! `db status` and the daemon's start-up check.
//!
//! The table is the queue. A row needs an embedding while `needs_embedding` is true; the
//! AFTER trigger sends `pg_notify('embedding_needed', id)` as a wake-up hint only. A BEFORE
//! UPDATE trigger bumps `content_version` whenever `content` changes and re-queues the row, so a
//! write-back carrying an older version matches nothing (no stale vectors).

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::queue::{
    NotifyMode, QueueCounts, RowState, Table, CHANNEL_NEEDED, MAX_PAYLOAD_ID_BYTES,
};

/// The idempotent DDL for `table` with vectors of `dim` dimensions, row-level notifications.
pub fn ddl(table: &Table, dim: usize) -> String {
    ddl_with(table, dim, NotifyMode::PerRow)
}

/// The idempotent DDL for `table` with vectors of `dim` dimensions.
pub fn ddl_with(table: &Table, dim: usize, notify: NotifyMode) -> String {
    let t = table.sql();
    let requeue = table.derived("requeue");
    let requeue_trigger = table.derived("requeue_trigger");
    let notify_trigger = table.derived("embedding_trigger");
    let notify_update_trigger = table.derived("embedding_update_trigger");
    let idx_pending = table.derived("needs_embedding_idx");
    let idx_status = table.derived("retry_status_idx");
    let idx_count = table.derived("retry_count_idx");
    let idx_hnsw = table.derived("embedding_hnsw_idx");
    format!(
        r#"
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS {t} (
    id              TEXT PRIMARY KEY,
    content         TEXT NOT NULL,
    metadata        JSONB DEFAULT '{{}}'::jsonb,
    embedding       VECTOR({dim}),
    needs_embedding BOOLEAN DEFAULT TRUE,
    retry_count     INTEGER DEFAULT 0,
    last_retry_at   TIMESTAMPTZ,
    retry_status    TEXT DEFAULT 'pending',
    created_at      TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    updated_at      TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP
);

-- Queue columns beyond the original design; added to an existing table too.
ALTER TABLE {t}
    ADD COLUMN IF NOT EXISTS content_version  BIGINT NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS queued_at        TIMESTAMPTZ DEFAULT clock_timestamp(),
    ADD COLUMN IF NOT EXISTS next_attempt_at  TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS claimed_by       TEXT,
    ADD COLUMN IF NOT EXISTS claim_expires_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS last_error       TEXT,
    ADD COLUMN IF NOT EXISTS embedded_at      TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS embedding_model  TEXT;

-- The queue's index: pending rows in arrival order.
CREATE INDEX IF NOT EXISTS {idx_pending} ON {t} (queued_at) WHERE needs_embedding = TRUE;
CREATE INDEX IF NOT EXISTS {idx_status} ON {t} (retry_status);
CREATE INDEX IF NOT EXISTS {idx_count} ON {t} (retry_count);
CREATE INDEX IF NOT EXISTS {idx_hnsw} ON {t} USING hnsw (embedding vector_cosine_ops);

-- A new content (or an explicit needs_embedding = true) gets a new version and a fresh queue
-- entry; any claim on the old version is void, so its vector can never be written.
CREATE OR REPLACE FUNCTION {requeue}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.content IS DISTINCT FROM OLD.content
       OR (NEW.needs_embedding IS TRUE AND OLD.needs_embedding IS NOT TRUE) THEN
        NEW.content_version  := OLD.content_version + 1;
        NEW.needs_embedding  := TRUE;
        NEW.retry_status     := 'pending';
        NEW.retry_count      := 0;
        NEW.next_attempt_at  := NULL;
        NEW.last_error       := NULL;
        NEW.claimed_by       := NULL;
        NEW.claim_expires_at := NULL;
        NEW.queued_at        := clock_timestamp();
        IF NEW.content IS DISTINCT FROM OLD.content THEN
            NEW.embedding  := NULL;
            NEW.updated_at := CURRENT_TIMESTAMP;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER {requeue_trigger}
    BEFORE UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {requeue}();

-- The wake-up hint. Payload: the id, or '' when the id is too long for a NOTIFY payload.
CREATE OR REPLACE FUNCTION notify_embedding_needed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL_NEEDED}',
        CASE WHEN octet_length(NEW.id::text) <= {MAX_PAYLOAD_ID_BYTES} THEN NEW.id::text ELSE '' END);
    RETURN NEW;
END
$$;
-- Per-statement mode: one hint per statement that left due rows behind. Transition tables
-- let the daemon's own claims and write-backs (claimed, or no longer needing a vector) stay quiet.
CREATE OR REPLACE FUNCTION notify_embedding_needed_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE {due}) THEN
        PERFORM pg_notify('{CHANNEL_NEEDED}', '');
    END IF;
    RETURN NULL;
END
$$;
-- `UPDATE OF content` too: the BEFORE trigger's change of needs_embedding does not count as a
-- column in the statement's target list.
DROP TRIGGER IF EXISTS {notify_trigger} ON {t};
DROP TRIGGER IF EXISTS {notify_update_trigger} ON {t};
{notify_trigger_sql}
"#,
        notify_trigger_sql = match notify {
            NotifyMode::PerRow => format!(
                "CREATE TRIGGER {notify_trigger} AFTER INSERT OR UPDATE OF needs_embedding, content ON {t}
    FOR EACH ROW WHEN (NEW.needs_embedding IS TRUE) EXECUTE FUNCTION notify_embedding_needed();"
            ),
            NotifyMode::PerStatement => format!(
                "CREATE TRIGGER {notify_trigger} AFTER INSERT ON {t} REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_embedding_needed_statement();
CREATE TRIGGER {notify_update_trigger} AFTER UPDATE ON {t} REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notify_embedding_needed_statement();"
            ),
        },
        due = RowState::due_predicate(),
    )
}

/// Creates whatever is missing, with row-level notifications; harmless to run again.
pub async fn init(client: &Client, table: &Table, dim: usize) -> Result<()> {
    init_with(client, table, dim, NotifyMode::PerRow).await
}

/// Creates whatever is missing; harmless to run again (the notify trigger is replaced to match
/// `notify`). One transaction, serialised with an advisory lock so two daemons or `db init`s
/// starting together do not race on CREATE.
pub async fn init_with(
    client: &Client,
    table: &Table,
    dim: usize,
    notify: NotifyMode,
) -> Result<()> {
    client
        .batch_execute(&format!(
            "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('pgai-trigger schema'));\n{}\nCOMMIT;",
            ddl_with(table, dim, notify)
        ))
        .await
        .map_err(|e| match e.as_db_error().map(|d| d.code().code()) {
            // 0A000 feature_not_supported / 58P01 undefined_file: extension not installed
            Some("0A000") | Some("58P01") => Error::Schema(
                "the pgvector extension is not installed on this PostgreSQL server (CREATE EXTENSION vector failed)".into(),
            ),
            _ => Error::Db(e),
        })
}

/// Drops the table (and its rows) and creates it again.
pub async fn recreate(client: &Client, table: &Table, dim: usize) -> Result<()> {
    recreate_with(client, table, dim, NotifyMode::PerRow).await
}

/// Drops the table (and its rows) and creates it again with the given notifications.
pub async fn recreate_with(
    client: &Client,
    table: &Table,
    dim: usize,
    notify: NotifyMode,
) -> Result<()> {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {} CASCADE; DROP FUNCTION IF EXISTS {}() CASCADE;",
            table.sql(),
            table.derived("requeue")
        ))
        .await?;
    init_with(client, table, dim, notify).await
}

/// What `db status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub pgvector_version: Option<String>,
    pub table_exists: bool,
    pub embedding_dim: Option<i32>,
    /// Rows by state (see [`RowState`](crate::queue::RowState)).
    #[serde(flatten)]
    pub counts: QueueCounts,
    pub triggers: Vec<String>,
}

pub async fn status(client: &Client, table: &Table) -> Result<Status> {
    let ext = client
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
            &[],
        )
        .await?
        .map(|r| r.get::<_, String>(0));
    let dim = embedding_dim(client, table).await?;
    let table_exists = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.sql()])
        .await?
        .get::<_, bool>(0);
    let mut st = Status {
        pgvector_version: ext,
        table_exists,
        embedding_dim: dim,
        counts: QueueCounts::default(),
        triggers: vec![],
    };
    if table_exists {
        st.counts = QueueCounts::read(client, table).await?;
        st.triggers = names_of(
            client,
            "SELECT tgname::text FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal ORDER BY 1",
            table,
        )
        .await?;
    }
    Ok(st)
}

/// The names a catalog query returns for `table` (its `$1`).
async fn names_of(client: &Client, sql: &str, table: &Table) -> Result<Vec<String>> {
    Ok(client
        .query(sql, &[&table.sql()])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The declared dimension of the table's `embedding` column, if the table and column exist.
async fn embedding_dim(client: &Client, table: &Table) -> Result<Option<i32>> {
    Ok(client
        .query_opt(
            "SELECT a.atttypmod FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
              WHERE a.attrelid = to_regclass($1) AND a.attname = 'embedding' AND NOT a.attisdropped
                AND t.typname = 'vector'",
            &[&table.sql()],
        )
        .await?
        .map(|r| r.get::<_, i32>(0)))
}

/// Columns the daemon reads or writes.
const REQUIRED_COLUMNS: &[&str] = &[
    "id",
    "content",
    "embedding",
    "needs_embedding",
    "retry_count",
    "last_retry_at",
    "retry_status",
    "content_version",
    "queued_at",
    "next_attempt_at",
    "claimed_by",
    "claim_expires_at",
    "last_error",
    "embedded_at",
    "embedding_model",
];

/// Checks, before the daemon starts, that the database is ready for it; each failure is one
/// line saying what is wrong and what to run.
pub async fn verify(client: &Client, table: &Table, dim: usize) -> Result<()> {
    let has_vector = client
        .query_opt("SELECT 1 FROM pg_extension WHERE extname = 'vector'", &[])
        .await?
        .is_some();
    if !has_vector {
        let available = client
            .query_opt(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'",
                &[],
            )
            .await?
            .is_some();
        return Err(Error::Schema(if available {
            "the pgvector extension is not created in this database: run `pgai-trigger db init`"
                .into()
        } else {
            "the pgvector extension is not installed on this PostgreSQL server".into()
        }));
    }
    let present = names_of(
        client,
        "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        table,
    )
    .await?;
    if present.is_empty() {
        return Err(Error::Schema(format!(
            "table {} does not exist: run `pgai-trigger db init`",
            table.name()
        )));
    }
    let missing: Vec<&str> = REQUIRED_COLUMNS
        .iter()
        .copied()
        .filter(|c| !present.iter().any(|p| p == c))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Schema(format!(
            "table {} lacks column(s) {}: run `pgai-trigger db init`",
            table.name(),
            missing.join(", ")
        )));
    }
    match embedding_dim(client, table).await? {
        Some(d) if d == dim as i32 => Ok(()),
        Some(d) => Err(Error::Schema(format!(
            "column {}.embedding is vector({d}) but the model gives {dim} dimensions",
            table.name()
        ))),
        None => Err(Error::Schema(format!(
            "column {}.embedding is not a pgvector vector column",
            table.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_keeps_the_original_names() {
        let sql = ddl(&Table::default(), 384);
        for name in [
            "\"m0_episodic_embedding_trigger\"",
            "notify_embedding_needed()",
            "VECTOR(384)",
            "hnsw (embedding vector_cosine_ops)",
            "WHERE needs_embedding = TRUE",
        ] {
            assert!(sql.contains(name), "{name}");
        }
    }
}
