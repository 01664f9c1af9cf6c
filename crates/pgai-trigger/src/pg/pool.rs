//! The store's connection pool (deadpool-postgres): a few connections opened on demand,
//! checked before reuse, never shared with the daemon's own connections.
//!
//! Pooled connections are opened by [`tls::connect_with`] like every other one, so `sslmode`
//! means the same here: `prefer` falls back to a plain connection when the TLS attempt fails,
//! `allow` retries with TLS when the server refuses the plain one (deadpool's own connector
//! makes one attempt only). The certificate files are read once, when the pool is made.

use std::sync::{Arc, Mutex};

use deadpool_postgres::{Connect, Manager, ManagerConfig, Object, RecyclingMethod};
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::{tls, Target};
use crate::error::{Error, Result};

pub struct Pool {
    /// A URL that does not parse, or certificate files that cannot be read, are reported by
    /// every `get`, not at construction: building a store never fails.
    inner: std::result::Result<deadpool_postgres::Pool, String>,
    /// The last failed connection attempt's TLS story (deadpool hands `get` only the last
    /// tokio-postgres error, without the first attempt of prefer/allow).
    last_tls_failure: LastFailure,
}

type LastFailure = Arc<Mutex<Option<String>>>;

impl Pool {
    pub fn new(url: &str, application_name: &str, size: usize) -> Pool {
        let last_tls_failure = LastFailure::default();
        let inner = Target::new(url, application_name)
            .and_then(|target| {
                let connector = tls::make_tls_connect(&target.tls)?;
                Ok((target, connector))
            })
            // `get` makes it an `Error::Config` again: keep the message without the prefix.
            .map_err(|e| match e {
                Error::Config(m) => m,
                other => other.to_string(),
            })
            .and_then(|(target, connector)| {
                let manager = Manager::from_connect(
                    target.config.clone(),
                    TlsConnect {
                        tls: target.tls,
                        connector,
                        last_tls_failure: last_tls_failure.clone(),
                    },
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Fast,
                    },
                );
                deadpool_postgres::Pool::builder(manager)
                    .max_size(size)
                    .build()
                    .map_err(|e| e.to_string())
            });
        Pool {
            inner,
            last_tls_failure,
        }
    }

    /// A connection; dereferences to a [`tokio_postgres::Client`].
    pub async fn get(&self) -> Result<Object> {
        let pool = self.inner.as_ref().map_err(|e| Error::Config(e.clone()))?;
        pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => {
                let story = self.last_tls_failure.lock().ok().and_then(|mut s| s.take());
                match story.or_else(|| tls::describe(&e)) {
                    Some(line) => Error::Tls(line),
                    None => Error::Db(e),
                }
            }
            other => Error::Connection(format!("connection pool: {other}")),
        })
    }
}

/// Opens pooled connections the way [`super::connect`] does.
struct TlsConnect {
    tls: tls::TlsSettings,
    connector: tls::MakeRustlsConnect,
    last_tls_failure: LastFailure,
}

impl Connect for TlsConnect {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, std::result::Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let (client, conn) = tls::connect_with(&pg_config, &self.tls, self.connector.clone())
                .await
                .map_err(|failure| {
                    // deadpool passes on only tokio-postgres's error: the whole story (both
                    // attempts of prefer/allow) goes to `Pool::get` on the side.
                    if failure.tls_failed {
                        if let Ok(mut last) = self.last_tls_failure.lock() {
                            *last = Some(failure.message);
                        }
                    }
                    failure.source
                })?;
            let task = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %crate::error::db_message(&e), "connection closed");
                }
            });
            Ok((client, task))
        })
    }
}
