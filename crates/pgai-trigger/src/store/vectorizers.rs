//! Vectorizers through the store's pool and model: their status, and search by vectorizer
//! (the HTTP API's `/v1/vectorizers` and `POST /v1/search` with `"vectorizer"`).

use serde_json::Value;

use super::{Store, StoreError, StoreResult};
use crate::error::Error;
use crate::vectorizer::{admin, VectorSearch, VectorizerInfo};

/// The caller's mistakes (unknown filter column, bad k) are [`StoreError::Invalid`]; the rest
/// stays the library's error.
fn invalid(e: Error) -> StoreError {
    match e {
        Error::Config(m) => StoreError::Invalid(m),
        e => StoreError::Core(e),
    }
}

impl Store {
    /// Every vectorizer of the catalog with its status.
    pub async fn vectorizers(&self) -> StoreResult<Vec<VectorizerInfo>> {
        let db = self.pool.get().await?;
        Ok(admin::list_info(&db).await?)
    }

    /// The vectorizer `name` with its status, if there is one.
    pub async fn vectorizer(&self, name: &str) -> StoreResult<Option<VectorizerInfo>> {
        let db = self.pool.get().await?;
        Ok(admin::info(&db, name).await?)
    }

    /// Embeds `query` with the store's model and searches the vectorizer `name` (see
    /// [`admin::search`]); `None` when there is no vectorizer of that name. A vectorizer of
    /// another model than the store's is refused: its vectors are not comparable.
    pub async fn search_vectorizer(
        &self,
        name: &str,
        query: &str,
        k: usize,
        filters: &[(String, Value)],
    ) -> StoreResult<Option<VectorSearch>> {
        let Some(v) = ({
            let db = self.pool.get().await?;
            admin::get(&db, name).await?
        }) else {
            return Ok(None);
        };
        let model = self.embedder().await?.model_name().to_string();
        if v.model != model {
            return Err(StoreError::Invalid(format!(
                "vectorizer {name} embeds with {}; this process embeds queries with {model}",
                v.model
            )));
        }
        if !(1..=1000).contains(&k) {
            return Err(StoreError::Invalid(format!(
                "k must be between 1 and 1000, got {k}"
            )));
        }
        super::check_text("query", query)?;
        let vector = self.embed(vec![query.to_string()]).await?.remove(0);
        let db = self.pool.get().await?;
        admin::search(&db, &v, &vector, k, filters)
            .await
            .map(Some)
            .map_err(invalid)
    }
}
