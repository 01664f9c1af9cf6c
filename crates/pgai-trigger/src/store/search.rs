//! Nearest rows by cosine distance, and embeddings of any text with the store's model.

use pgvector::Vector;
use serde_json::Value;

use super::{check_json, SearchHit, Store, StoreError, StoreResult};

/// Texts per model job of [`Store::embed`]: between two jobs the model takes the daemon's
/// waiting batches, so a large request delays the pipeline by one job at most.
const QUERY_CHUNK: usize = 32;

impl Store {
    /// Embeds texts with the store's model, on its query lane (behind the daemon's batches),
    /// in jobs of 32.
    pub async fn embed(&self, texts: Vec<String>) -> StoreResult<Vec<Vec<f32>>> {
        let embed = self.embedder().await?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(QUERY_CHUNK) {
            out.extend(embed.embed_query(chunk.to_vec()).await?);
        }
        Ok(out)
    }

    /// The `k` rows nearest to `query` by cosine distance, best first. `filter` (a JSON object)
    /// keeps rows whose metadata contains it (`metadata @> filter`).
    pub async fn search(
        &self,
        query: &str,
        k: usize,
        filter: Option<&Value>,
    ) -> StoreResult<Vec<SearchHit>> {
        if !(1..=1000).contains(&k) {
            return Err(StoreError::Invalid(format!(
                "k must be between 1 and 1000, got {k}"
            )));
        }
        if let Some(f) = filter {
            if !f.is_object() {
                return Err(StoreError::Invalid("filter must be a JSON object".into()));
            }
            check_json("filter", f)?;
        }
        let v = self.embed(vec![query.to_string()]).await?.remove(0);
        let db = self.pool.get().await?;
        // HNSW returns at most ef_search candidates, and filters apply after: widen it, and let
        // pgvector ≥ 0.8 scan on until k rows pass the filter.
        db.batch_execute(&format!("SET hnsw.ef_search = {}", (k * 2).clamp(40, 1000)))
            .await?;
        if let Err(e) = db
            .batch_execute("SET hnsw.iterative_scan = strict_order")
            .await
        {
            // pgvector before 0.8 has no iterative scans: a filtered search may then return
            // fewer than k rows, which is all that version can do.
            tracing::debug!(error = %crate::error::db_message(&e), "hnsw.iterative_scan unavailable");
        }
        let rows = db
            .query(
                &format!(
                    "SELECT id, coalesce(content, ''), coalesce(metadata, '{{}}'::jsonb), (1 - (embedding <=> $1))::float8
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
            .map(|r| SearchHit {
                id: r.get(0),
                content: r.get(1),
                metadata: r.get(2),
                score: r.get(3),
            })
            .collect())
    }
}
