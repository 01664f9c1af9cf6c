//! Rows in and out: add, get, delete, and waiting for a row's vector.

use std::time::Duration;

use pgvector::Vector;
use tokio_postgres::Client;

use super::wait::Waiter;
use super::{
    check_id, check_json, check_text, new_id, Item, NewItem, Store, StoreError, StoreResult,
};
use crate::error::Error;
use crate::queue::RowState;

impl Store {
    /// Inserts (or updates) a row; returns its id. The daemon embeds it.
    pub async fn add(&self, item: NewItem) -> StoreResult<String> {
        let db = self.pool.get().await?;
        self.insert(&db, item).await
    }

    /// Refuses what PostgreSQL would refuse (a client mistake must never be a database error).
    fn check_item(item: &NewItem) -> StoreResult<()> {
        if let Some(id) = &item.id {
            check_id(id)?;
        }
        check_text("content", &item.content)?;
        if let Some(m) = &item.metadata {
            if !m.is_object() {
                return Err(StoreError::Invalid("metadata must be a JSON object".into()));
            }
            check_json("metadata", m)?;
        }
        Ok(())
    }

    async fn insert(&self, db: &Client, item: NewItem) -> StoreResult<String> {
        Self::check_item(&item)?;
        let id = item.id.unwrap_or_else(new_id);
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
    /// The wait is registered with the store's one `embedding_ready` listener before the
    /// insert, so the notification is not missed; the row itself is checked too, every 500 ms,
    /// so a lost notification costs little. Fails with [`StoreError::Busy`] when
    /// `max_waiting` waits are already in progress, [`StoreError::ShuttingDown`] when the store
    /// closes meanwhile.
    pub async fn add_and_wait(&self, mut item: NewItem, timeout: Duration) -> StoreResult<Item> {
        Self::check_item(&item)?;
        let id = item.id.get_or_insert_with(new_id).clone();
        let waiter = self.ready.register(&id)?;
        let id = self.add(item).await?;
        self.wait_with(&id, timeout, &waiter).await
    }

    /// Waits until row `id` is embedded, as [`Store::add_and_wait`].
    pub async fn wait_embedded(&self, id: &str, timeout: Duration) -> StoreResult<Item> {
        check_text("id", id)?;
        let waiter = self.ready.register(id)?;
        self.wait_with(id, timeout, &waiter).await
    }

    async fn wait_with(&self, id: &str, timeout: Duration, waiter: &Waiter) -> StoreResult<Item> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let item = self
                .get(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            match item.status {
                RowState::Completed => return Ok(item),
                RowState::Failed => {
                    return Err(StoreError::Failed {
                        id: id.to_string(),
                        error: item.last_error.unwrap_or_else(|| "unknown error".into()),
                    })
                }
                RowState::NotQueued => {
                    return Err(StoreError::Invalid(format!(
                        "item {id:?} is not queued for embedding (auto_embedding is off)"
                    )))
                }
                RowState::Pending | RowState::Processing => {}
            }
            tokio::select! {
                _ = waiter.notified() => {}
                // Also covers a lost notification and a listener still connecting.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(StoreError::Timeout { id: id.to_string(), after: timeout });
                }
                _ = waiter.closing() => return Err(StoreError::ShuttingDown),
            }
        }
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
        // Reads take any id a row can have (rows written in SQL may have longer ones).
        check_text("id", id)?;
        let db = self.pool.get().await?;
        let t = self.config.table.sql();
        let row = db
            .query_opt(
                &format!(
                    "SELECT id, coalesce(content, ''), coalesce(metadata, '{{}}'::jsonb),
                            {state},
                            embedding IS NOT NULL, coalesce(retry_count, 0), last_error, embedding_model,
                            to_json(created_at) #>> '{{}}', to_json(embedded_at) #>> '{{}}',
                            (extract(epoch FROM embedded_at - queued_at) * 1000)::float8,
                            CASE WHEN $2 THEN embedding END
                       FROM {t} WHERE id = $1",
                    state = RowState::case_sql()
                ),
                &[&id, &with_embedding],
            )
            .await?;
        row.map(|r| {
            Ok(Item {
                id: r.get(0),
                content: r.get(1),
                metadata: r.get(2),
                status: {
                    let s: &str = r.get(3);
                    RowState::parse(s).ok_or_else(|| {
                        StoreError::Core(Error::Schema(format!(
                            "row {id:?} is in no known state ({s})"
                        )))
                    })?
                },
                has_embedding: r.get(4),
                retry_count: r.get(5),
                last_error: r.get(6),
                embedding_model: r.get(7),
                created_at: r.get(8),
                embedded_at: r.get(9),
                latency_ms: r.get(10),
                embedding: r.get::<_, Option<Vector>>(11).map(|v| v.to_vec()),
            })
        })
        .transpose()
    }

    /// Deletes row `id`; false when there was none.
    pub async fn delete(&self, id: &str) -> StoreResult<bool> {
        // Reads take any id a row can have (rows written in SQL may have longer ones).
        check_text("id", id)?;
        let db = self.pool.get().await?;
        let n = db
            .execute(
                &format!("DELETE FROM {} WHERE id = $1", self.config.table.sql()),
                &[&id],
            )
            .await?;
        Ok(n > 0)
    }
}
