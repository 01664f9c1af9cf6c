//! PostgreSQL plumbing: connecting, deadlines on statements, the store's pool and the one
//! notification stream.
//!
//! Every connection names itself (`application_name`) so an operator sees the
//! daemon's sessions in `pg_stat_activity`, and uses TCP keepalives so a dead peer is noticed.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};

mod notify;
mod pool;

pub use notify::{Notification, Notifications};
pub(crate) use pool::Pool;

/// Parses the URL and applies our connection settings.
pub fn pg_config(url: &str, application_name: &str) -> Result<tokio_postgres::Config> {
    let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| {
        Error::Config(format!(
            "database URL {}: {e}",
            crate::config::redact_url(url)
        ))
    })?;
    cfg.application_name(application_name)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10));
    Ok(cfg)
}

/// A client whose connection is driven by a task of its own; the task ends when the connection
/// does, which the caller can await to notice a lost connection.
pub async fn connect(url: &str, application_name: &str) -> Result<(Client, JoinHandle<()>)> {
    let (client, conn) = pg_config(url, application_name)?.connect(NoTls).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %crate::error::db_message(&e), "connection closed");
        }
    });
    Ok((client, task))
}

/// Longest the daemon waits for one statement of its own (a claim, a batch write, a lease
/// renewal). A connection that stops answering without an error (a black-holed network path)
/// would otherwise stall the worker until TCP keepalive gives up, minutes later.
pub const STATEMENT_DEADLINE: Duration = Duration::from_secs(10);

/// Runs a database call under [`STATEMENT_DEADLINE`]; a call past it fails as a lost
/// connection, so the caller reconnects.
pub async fn within<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(STATEMENT_DEADLINE, call).await {
        Ok(r) => r,
        Err(_) => Err(Error::Connection(format!(
            "{what} got no answer within {} s",
            STATEMENT_DEADLINE.as_secs()
        ))),
    }
}
