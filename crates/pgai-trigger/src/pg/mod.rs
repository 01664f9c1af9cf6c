//! PostgreSQL plumbing: connecting, TLS, deadlines on statements, the store's pool and the one
//! notification stream.
//!
//! Every connection names itself (`application_name`) so an operator sees the
//! daemon's sessions in `pg_stat_activity`, and uses TCP keepalives so a dead peer is noticed.
//!
//! Every connection goes through [`Target`]: the URL's TLS options (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`, with `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` as their
//! environment, read once per process) mean what they mean to libpq; see [`tls`].

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::error::{Error, Result};

mod notify;
mod pool;
mod tls;

pub use notify::{Notification, Notifications};
pub(crate) use pool::Pool;

/// A database URL, parsed: the tokio-postgres settings and the TLS ones.
pub(crate) struct Target {
    config: tokio_postgres::Config,
    tls: tls::TlsSettings,
}

impl Target {
    /// Parses `url` (a one-line configuration error naming the redacted URL when it is
    /// malformed or its TLS options are) and applies our connection settings.
    pub(crate) fn new(url: &str, application_name: &str) -> Result<Target> {
        let (mut config, tls) = tls::split_url(url).map_err(|e| {
            Error::Config(format!(
                "database URL {}: {e}",
                crate::config::redact_url(url)
            ))
        })?;
        config
            .application_name(application_name)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10));
        Ok(Target { config, tls })
    }

    /// One connection, with libpq's second attempt for `allow` and `prefer`; spawn the
    /// connection half (or poll it, for notifications).
    pub(crate) async fn connect(&self) -> Result<(Client, tls::PgConnection)> {
        Ok(tls::connect(&self.config, &self.tls).await?)
    }
}

impl From<tls::TlsError> for Error {
    fn from(e: tls::TlsError) -> Error {
        match e {
            tls::TlsError::Config(m) | tls::TlsError::File(m) => Error::Config(m),
            tls::TlsError::Connect(failure) if failure.tls_failed => Error::Tls(failure.message),
            // Plain connection errors stay database errors (transient, SQLSTATE kept).
            tls::TlsError::Connect(failure) => Error::Db(failure.source),
        }
    }
}

/// One line saying what is wrong when `e` is a TLS failure (see [`tls::describe`]).
pub(crate) fn describe_tls(e: &tokio_postgres::Error) -> Option<String> {
    tls::describe(e)
}

/// Parses the URL and applies our connection settings. The TLS options are taken out and
/// resolved apart, and the sslmode is set for a single attempt: [`connect`] applies them all
/// (certificate checks, libpq's second attempt of `allow` and `prefer`); connecting with this
/// `Config` and `NoTls` works only where the sslmode allows plain connections.
pub fn pg_config(url: &str, application_name: &str) -> Result<tokio_postgres::Config> {
    Ok(Target::new(url, application_name)?.config)
}

/// A client whose connection is driven by a task of its own; the task ends when the connection
/// does, which the caller can await to notice a lost connection. TLS as the URL asks (libpq's
/// `sslmode`); a TLS failure is [`Error::Tls`], one line naming the problem.
pub async fn connect(url: &str, application_name: &str) -> Result<(Client, JoinHandle<()>)> {
    let (client, conn) = Target::new(url, application_name)?.connect().await?;
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
