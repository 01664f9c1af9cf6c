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
pub use writeback::Embedded;
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

/// A queue the daemon serves, and the one place that knows its SQL shape: which relation holds
/// the queue rows, how a row's text is read, whether a row has its vector, where vectors go.
///
/// Two shapes share every claim, lease, retry and write-back statement:
/// - the original table ([`Table::new`]): the queue columns sit on the source row itself, the
///   text is its `content`, the vector its `embedding`;
/// - a vectorizer ([`Table::from_vectorizer`]): a queue table `pgai."<name>_queue"` keyed by the
///   source's key, the text rendered from the source row by the vectorizer's template, the
///   vectors written to a column of the source row or to a chunk table.
#[derive(Clone, PartialEq, Eq)]
pub struct Table {
    name: String,
    /// The queue relation, quoted (and schema-qualified for a vectorizer).
    relation: String,
    /// The text of queue row `r`, as SQL.
    content: String,
    /// "Has its vector", over the queue row's columns.
    has_vector: &'static str,
    /// The channel the source's trigger wakes the daemon on.
    channel: String,
    target: Target,
    /// Word pieces per chunk and overlap, when the text is chunked.
    chunking: Option<(usize, usize)>,
    /// SQL, true while the catalog still gives this queue the model it was built for (`TRUE`
    /// for the original table): claims and write-backs check it, so a worker that has not
    /// yet seen an `alter_vectorizer` neither takes the re-queued rows nor writes its model's
    /// vectors over them.
    served: String,
}

/// Where a queue's vectors are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The queue row's own `embedding` column (the original table).
    InPlace,
    /// A vector column of the source row: `UPDATE source SET column = … WHERE key matches`.
    Column {
        source: String,
        column: String,
        /// `s."a" = done."k_a" AND …`: the source row of a written queue row.
        join: String,
    },
    /// A chunk table: the row's chunks replaced in the write-back statement.
    Chunks {
        table: String,
        /// The key columns of the chunk table (the source's names), quoted, in key order.
        keys: Vec<String>,
        /// The same columns on the queue row: `done."k_a"`, ….
        queue_keys: Vec<String>,
    },
}

impl Table {
    /// The original table `name` (validated: a plain lower-case identifier).
    pub fn new(name: &str) -> Result<Table> {
        validate_identifier(name)?;
        Ok(Table {
            name: name.to_string(),
            relation: quote_ident(name),
            content: "r.content".into(),
            has_vector: HAS_VECTOR_IN_PLACE,
            channel: CHANNEL_NEEDED.into(),
            target: Target::InPlace,
            chunking: None,
            served: "TRUE".into(),
        })
    }

    /// The queue of a vectorizer from the catalog.
    pub fn from_vectorizer(v: &crate::vectorizer::Vectorizer) -> Result<Table> {
        use crate::vectorizer::Destination;
        if v.destination == Destination::InPlace {
            let mut t = Table::new(&v.queue_table)?;
            t.name = v.name.clone();
            return Ok(t);
        }
        let qualified =
            |schema: &str, name: &str| format!("{}.{}", quote_ident(schema), quote_ident(name));
        let source = qualified(&v.source_schema, &v.source_table);
        let queue_key = |k: &str| quote_ident(&format!("k_{k}"));
        let join_on = |left: &str, right: &str| {
            v.key_columns
                .iter()
                .map(|k| format!("{left}.{} = {right}.{}", quote_ident(k), queue_key(k)))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let target = match v.destination {
            Destination::Column => Target::Column {
                source: source.clone(),
                column: quote_ident(&v.dest_name),
                join: join_on("s", "done"),
            },
            _ => Target::Chunks {
                table: qualified(&v.dest_schema, &v.dest_name),
                keys: v.key_columns.iter().map(|k| quote_ident(k)).collect(),
                queue_keys: v
                    .key_columns
                    .iter()
                    .map(|k| format!("done.{}", queue_key(k)))
                    .collect(),
            },
        };
        let chunking = match (v.chunk_tokens, v.chunk_overlap) {
            (Some(t), o) => Some((t.max(0) as usize, o.unwrap_or(0).max(0) as usize)),
            (None, _) => None,
        };
        Ok(Table {
            name: v.name.clone(),
            relation: qualified(&v.queue_schema, &v.queue_table),
            content: format!(
                "(SELECT {} FROM {source} AS s WHERE {})",
                v.text_sql,
                join_on("s", "r")
            ),
            has_vector: HAS_VECTOR_QUEUED,
            channel: v.channel.clone(),
            target,
            chunking,
            served: format!(
                "EXISTS (SELECT 1 FROM pgai.vectorizers AS m WHERE m.name = {} AND m.model = {})",
                sql_literal(&v.name),
                sql_literal(&v.model)
            ),
        })
    }

    /// The table's name, or the vectorizer's.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The queue relation as it appears in SQL.
    pub fn sql(&self) -> String {
        self.relation.clone()
    }
    /// The channel its writes wake the daemon on.
    pub fn channel(&self) -> &str {
        &self.channel
    }
    /// Word pieces per chunk (including `[CLS]`/`[SEP]`) and overlap, when chunked.
    pub fn chunking(&self) -> Option<(usize, usize)> {
        self.chunking
    }
    /// Whether the queue is the original table (its rows hold their own text and vector).
    pub fn in_place(&self) -> bool {
        self.target == Target::InPlace
    }
    /// Whether vectors go to a chunk table (each row's texts are written with its vectors).
    pub fn writes_chunks(&self) -> bool {
        matches!(self.target, Target::Chunks { .. })
    }
    /// The text of queue row `r` as SQL.
    pub(crate) fn content_sql(&self) -> &str {
        &self.content
    }
    /// "Has its vector" over the queue row.
    pub(crate) fn has_vector(&self) -> &'static str {
        self.has_vector
    }
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }
    /// True while the catalog gives this queue its model (see the field).
    pub(crate) fn served_sql(&self) -> &str {
        &self.served
    }
    /// A derived object name (index, trigger, function) of the original table, quoted.
    pub(crate) fn derived(&self, suffix: &str) -> String {
        quote_ident(&format!("{}_{suffix}", self.name))
    }
}

impl Default for Table {
    fn default() -> Table {
        Table::new(DEFAULT_TABLE).expect("the default table name is valid")
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
/// A SQL string literal.
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

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
