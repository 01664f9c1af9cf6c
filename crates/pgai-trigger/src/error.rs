//! One error type for the library, with predicates instead of string matching.

use pgai_embed::EmbedError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database call failed; the message is PostgreSQL's own, on one line.
    #[error("database: {}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The database is reachable but not set up as the daemon needs (missing pgvector, table,
    /// column, or a vector dimension that differs from the model's).
    #[error("{0}")]
    Schema(String),
    /// A connection ended or stopped answering.
    #[error("connection: {0}")]
    Connection(String),
    #[error("embedder: {0}")]
    Embed(#[from] EmbedError),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// TLS to the database failed: the server's certificate (its CA, its host name, its
    /// dates), the handshake, or a server without TLS where the sslmode requires it. One line
    /// that starts with "TLS: " and says which; fixing it takes a change of settings, so it is
    /// not transient.
    #[error("{0}")]
    Tls(String),
}

impl Error {
    /// True when retrying the same call later can succeed (connection lost, server restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(e) => e.is_closed() || e.as_db_error().is_none(),
            Error::Connection(_) => true,
            Error::Embed(e) => !e.is_permanent(),
            _ => false,
        }
    }

    /// True when PostgreSQL refused a statement because of the rows it touched — a user's
    /// trigger raised, a constraint failed, a value was refused (NaN in a vector, a NUL byte in
    /// text) — rather than because the connection or the server failed. Such an error costs the
    /// rows concerned an attempt; it is never handled as a lost connection.
    pub fn is_row_level(&self) -> bool {
        let Error::Db(e) = self else { return false };
        let Some(db) = e.as_db_error() else {
            return false;
        };
        // SQLSTATE classes: 09 triggered action, 22 data exception, 23 integrity constraint,
        // 27 triggered data change, 2F/38/39 routine exceptions, 44 check option, P0 PL/pgSQL
        // (RAISE). Connection (08), resources (53), operator intervention (57), rollback (40),
        // privileges and schema (42) concern every row and stay connection-level.
        matches!(
            &db.code().code()[..2],
            "09" | "22" | "23" | "27" | "2F" | "38" | "39" | "44" | "P0"
        )
    }
}

/// PostgreSQL's message (with detail and hint where given) on one line; never the connection
/// string, which may carry a password.
pub fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(": ");
                s.push_str(d);
            }
            if let Some(h) = db.hint() {
                s.push_str("; hint: ");
                s.push_str(h);
            }
            s.replace('\n', " ")
        }
        None => {
            // A TLS failure (e.g. the server's alert that it rejects the client certificate,
            // which TLS 1.3 delivers after the handshake) reads as the TLS problem.
            if let Some(line) = crate::pg::describe_tls(e) {
                return line;
            }
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                let t = inner.to_string();
                if !s.contains(&t) {
                    s.push_str(": ");
                    s.push_str(&t);
                }
                src = inner.source();
            }
            s.replace('\n', " ")
        }
    }
}

/// `s` on one line: runs of whitespace (newlines included) become one space.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
