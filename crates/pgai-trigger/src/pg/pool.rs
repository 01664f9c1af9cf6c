//! The store's connection pool (deadpool-postgres): a few connections opened on demand,
//! checked before reuse, never shared with the daemon's own connections.

use deadpool_postgres::{Manager, ManagerConfig, Object, RecyclingMethod};

use crate::error::{Error, Result};

pub struct Pool {
    /// A URL that does not parse is reported by every `get`, not at construction: building a
    /// store never fails.
    inner: std::result::Result<deadpool_postgres::Pool, String>,
}

impl Pool {
    pub fn new(url: &str, application_name: &str, size: usize) -> Pool {
        let inner = super::pg_config(url, application_name)
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                let manager = Manager::from_config(
                    cfg,
                    tokio_postgres::NoTls,
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Fast,
                    },
                );
                deadpool_postgres::Pool::builder(manager)
                    .max_size(size)
                    .build()
                    .map_err(|e| e.to_string())
            });
        Pool { inner }
    }

    /// A connection; dereferences to a [`tokio_postgres::Client`].
    pub async fn get(&self) -> Result<Object> {
        let pool = self.inner.as_ref().map_err(|e| Error::Config(e.clone()))?;
        pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => Error::Db(e),
            other => Error::Connection(format!("connection pool: {other}")),
        })
    }
}
