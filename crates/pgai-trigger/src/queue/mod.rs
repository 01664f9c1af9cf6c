//! The table is the queue: stages 1 (schema and triggers), 3 (claim) and 5 (write-back) of the
//! flow, and every SQL statement the daemon runs against the table.
//!
//! - [`schema`]    — DDL, `db init` / `db recreate` / `db status`, the start-up check.
//! - [`state`]     — the one definition of pending / processing / completed / failed /
//!   not queued, used by every count, status, metric and API.
//! - [`claim`]     — `FOR UPDATE SKIP LOCKED` claims with a lease and a per-claim token.
//! - [`lease`]     — renewing and giving back claims.
//! - [`writeback`] — the guarded vector write and failed attempts with backoff.
//!
//! Every statement is built from a [`Table`]: the one place that knows the table's name and
//! columns. Serving another table shape (a vectorizer's source with its own key and text) means
//! another `Table`, not another copy of the claim or write-back logic.

pub(crate) mod claim;
pub(crate) mod lease;
pub(crate) mod schema;
pub(crate) mod state;
pub(crate) mod writeback;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

pub use claim::{Claim, ClaimedRow, Claimer, LEASE_EXPIRED_ERROR};
pub use lease::Leases;
pub use state::{QueueCounts, RowState, HAS_VECTOR_IN_PLACE, HAS_VECTOR_QUEUED};
pub use writeback::{RetryPolicy, Writer, Written};

/// The default table of the original design.
pub const DEFAULT_TABLE: &str = "m0_episodic";
/// Channel of the row trigger's wake-up hints.
pub const CHANNEL_NEEDED: &str = "embedding_needed";
/// Channel on which the daemon announces each written vector (payload: the row id).
pub const CHANNEL_READY: &str = "embedding_ready";
/// Ids longer than this are not sent as payloads (NOTIFY payloads must stay under 8000 bytes);
/// an empty payload still wakes the daemon.
pub const MAX_PAYLOAD_ID_BYTES: usize = 7900;

/// A validated table name. Only plain lower-case identifiers are accepted, and they are quoted
/// anyway wherever they reach SQL.
#[derive(Clone, PartialEq, Eq)]
pub struct Table {
    name: String,
}

impl Table {
    pub fn new(name: &str) -> Result<Table> {
        validate_identifier(name)?;
        Ok(Table {
            name: name.to_string(),
        })
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The table as it appears in SQL.
    pub fn sql(&self) -> String {
        quote_ident(&self.name)
    }
    /// A derived object name (index, trigger, function), quoted.
    pub(crate) fn derived(&self, suffix: &str) -> String {
        quote_ident(&format!("{}_{suffix}", self.name))
    }
}

impl Default for Table {
    fn default() -> Table {
        Table {
            name: DEFAULT_TABLE.to_string(),
        }
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)
    }
}

/// Accepts `[a-z_][a-z0-9_]*`, at most 40 bytes (room for derived names under PostgreSQL's 63).
pub fn validate_identifier(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "table name {name:?} is not a safe identifier (use lower-case letters, digits and _, at most 40 bytes)"
        )))
    }
}

/// Double-quotes an identifier, doubling embedded quotes.
///
/// ```
/// assert_eq!(pgai_trigger::quote_ident("m0_episodic"), "\"m0_episodic\"");
/// assert_eq!(pgai_trigger::quote_ident("a\"b"), "\"a\"\"b\"");
/// ```
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How the table's writes wake the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyMode {
    /// One notification per row, carrying its id (the default; lowest latency for single writes).
    #[default]
    PerRow,
    /// One notification per statement with an empty payload: for tables loaded in large batches,
    /// where a NOTIFY per row would make every commit queue on the server's notification lock.
    PerStatement,
}

impl NotifyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyMode::PerRow => "per-row",
            NotifyMode::PerStatement => "per-statement",
        }
    }
}

impl fmt::Display for NotifyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NotifyMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<NotifyMode> {
        match s {
            "per-row" => Ok(NotifyMode::PerRow),
            "per-statement" => Ok(NotifyMode::PerStatement),
            _ => Err(Error::Config(format!(
                "notify mode must be per-row or per-statement, got {s:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_validated_and_quoted() {
        assert!(Table::new("m0_episodic").is_ok());
        for bad in [
            "",
            "Robert",
            "a;drop table x",
            "a\"b",
            "1abc",
            &"x".repeat(41),
        ] {
            let e = Table::new(bad).unwrap_err().to_string();
            assert!(e.contains("not a safe identifier"), "{bad}: {e}");
        }
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(Table::default().sql(), "\"m0_episodic\"");
    }

    #[test]
    fn notify_modes_round_trip() {
        for m in [NotifyMode::PerRow, NotifyMode::PerStatement] {
            assert_eq!(m.as_str().parse::<NotifyMode>().unwrap(), m);
        }
        assert!("sometimes".parse::<NotifyMode>().is_err());
    }
}
