//! Stage 1 of the flow: the table, its indexes and triggers; `db init`, `db recreate`,
//! `db status` and the daemon's start-up check.
//!
//! The table is the queue. A row needs an embedding while `needs_embedding` is true; the
//! AFTER trigger sends `pg_notify('embedding_needed', id)` as a wake-up hint only. A BEFORE
//! UPDATE trigger bumps `content_version` whenever `content` changes and re-queues the row, so a
//! write-back carrying an older version matches nothing (no stale vectors); so does an explicit
//! `SET needs_embedding = true`, even on a row that still needs one (a failed row).
//!
//! `db init` also adopts a table made with the original design's DDL: an index counts by its
//! definition, whatever its name (the original's HNSW index is kept, not doubled), and a name
//! already taken by an index of another definition does not stop ours being created.
//!
//! `db init` also installs the vectorizer catalog (schema `pgai`, see `vectorizer::catalog`) in
//! the same transaction and registers the table there as the `in_place` vectorizer of its name.

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::queue::{
    NotifyMode, QueueCounts, RowState, Table, CHANNEL_NEEDED, MAX_PAYLOAD_ID_BYTES,
};
use crate::vectorizer::catalog;

/// The idempotent DDL for `table` with vectors of `dim` dimensions, row-level notifications.
pub fn ddl(table: &Table, dim: usize) -> String {
    ddl_with(table, dim, NotifyMode::PerRow)
}

/// The idempotent DDL for `table` with vectors of `dim` dimensions.
pub fn ddl_with(table: &Table, dim: usize, notify: NotifyMode) -> String {
    let t = table.sql();
    let requeue = table.derived("requeue");
    let requeue_trigger = table.derived("requeue_trigger");
    let requeue_set_trigger = table.derived("requeue_set_trigger");
    let notify_trigger = table.derived("embedding_trigger");
    let notify_update_trigger = table.derived("embedding_update_trigger");
    let indexes = [
        // The queue's index: pending rows in arrival order.
        ensure_index(
            table,
            "needs_embedding_idx",
            "btree",
            "queued_at",
            "",
            Some(QUEUE_INDEX_PREDICATE),
        ),
        ensure_index(table, "retry_status_idx", "btree", "retry_status", "", None),
        ensure_index(table, "retry_count_idx", "btree", "retry_count", "", None),
        // Any HNSW index on the column serves searches; a second would double the cost of
        // every vector write.
        ensure_index(
            table,
            "embedding_hnsw_idx",
            "hnsw",
            "embedding",
            "vector_cosine_ops",
            None,
        ),
    ]
    .join("\n");
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

-- Each index is created unless one of the same definition exists, under any name.
{indexes}

-- A new content (or an explicit needs_embedding = true) gets a new version and a fresh queue
-- entry; any claim on the old version is void, so its vector can never be written. Called with
-- an argument by the trigger on `SET needs_embedding`, whose WHEN clause already decided.
CREATE OR REPLACE FUNCTION {requeue}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_NARGS > 0
       OR NEW.content IS DISTINCT FROM OLD.content
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
-- `UPDATE … SET needs_embedding = true` on a row that already needs one (a failed row keeps
-- needs_embedding = TRUE) asks again: UPDATE OF fires whenever the column is in the SET list,
-- changed or not. The WHEN leaves content changes and false → true to the trigger above (no
-- double bump), and the daemon's write-back (needs_embedding = FALSE) alone.
CREATE OR REPLACE TRIGGER {requeue_set_trigger}
    BEFORE UPDATE OF needs_embedding ON {t} FOR EACH ROW
    WHEN (NEW.needs_embedding IS TRUE AND OLD.needs_embedding IS TRUE
          AND NEW.content IS NOT DISTINCT FROM OLD.content)
    EXECUTE FUNCTION {requeue}('set');

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

-- Rows queued before the table had a queue position (a column added by hand, rows copied in
-- with NULL) would sort last forever: they get one now. Neither requeue trigger fires
-- (needs_embedding is not in the SET list) and a second run finds nothing to do.
UPDATE {t} SET queued_at = clock_timestamp() WHERE needs_embedding = TRUE AND queued_at IS NULL;
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

/// The queue index's predicate, as written in the DDL and as `pg_get_expr` prints it back.
const QUEUE_INDEX_PREDICATE: (&str, &str) = ("needs_embedding = TRUE", "(needs_embedding = true)");

/// A DO block that creates an index on one column of `table` unless the table already has a
/// valid one with the same access method, that single key column, no expression and the same
/// predicate (or none), whatever its name and operator class. It is named `<table>_<suffix>`
/// unless that name is taken (say by an index of another definition); then PostgreSQL picks one.
fn ensure_index(
    table: &Table,
    suffix: &str,
    method: &str,
    column: &str,
    opclass: &str,
    predicate: Option<(&str, &str)>,
) -> String {
    let t = table.sql();
    let name = table.derived(suffix);
    let (where_clause, printed) = match predicate {
        Some((written, printed)) => (format!(" WHERE {written}"), format!("'{printed}'")),
        None => (String::new(), "NULL".to_owned()),
    };
    let definition = format!("ON {t} USING {method} ({column} {opclass}){where_clause}");
    format!(
        r#"DO $ensure$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i
          JOIN pg_class c ON c.oid = i.indexrelid
          JOIN pg_am am ON am.oid = c.relam
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = '{t}'::regclass AND am.amname = '{method}' AND i.indnkeyatts = 1
           AND a.attname = '{column}' AND i.indexprs IS NULL AND i.indisvalid
           AND pg_get_expr(i.indpred, i.indrelid) IS NOT DISTINCT FROM {printed}) THEN
        IF to_regclass('{name}') IS NULL THEN
            CREATE INDEX {name} {definition};
        ELSE
            CREATE INDEX {definition};
        END IF;
    END IF;
END
$ensure$;"#
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
    let result = quiet_transaction(
        client,
        &format!(
            "SELECT pg_advisory_xact_lock(hashtext('pgai-trigger schema'));\n{}\n{}\n{}",
            ddl_with(table, dim, notify),
            // The vectorizer catalog, with the table as its `in_place` row.
            catalog::ddl(),
            catalog::register_unless_present(table, pgai_embed::MODEL_NAME, dim),
        ),
    )
    .await;
    result.map_err(|e| match e.as_db_error().map(|d| d.code().code()) {
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
    quiet_transaction(
        client,
        &format!(
            "DROP TABLE IF EXISTS {} CASCADE; DROP FUNCTION IF EXISTS {}() CASCADE;\n{}",
            table.sql(),
            table.derived("requeue"),
            catalog::unregister(table),
        ),
    )
    .await?;
    init_with(client, table, dim, notify).await
}

/// Runs `sql` in one transaction without the server's notices about our own DDL ("… already
/// exists, skipping": noise in the log of every start; warnings and errors still come through).
/// On failure the aborted transaction is rolled back, so the caller's connection stays usable.
async fn quiet_transaction(
    client: &Client,
    sql: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    let result = client
        .batch_execute(&format!(
            "BEGIN;\nSET LOCAL client_min_messages = warning;\n{sql}\nCOMMIT;"
        ))
        .await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
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
pub(crate) async fn embedding_dim(client: &Client, table: &Table) -> Result<Option<i32>> {
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
