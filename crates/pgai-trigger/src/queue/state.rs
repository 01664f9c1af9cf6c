//! Where a row is in the queue: the one definition of each state.
//!
//! Every count, status, metric and API answer (`db status`, `stats`, `/v1/stats`,
//! `/v1/items/{id}`, the `pgai_queue_depth` gauge, the claim itself) is built from the
//! predicates below, so they cannot disagree. The states partition the table: each row is in
//! exactly one (a test on the real cluster checks it, NULLs included).
//!
//! | state        | the row                                                              |
//! |--------------|----------------------------------------------------------------------|
//! | `pending`    | needs an embedding, is not failed, and no unexpired lease holds it   |
//! | `processing` | needs an embedding, is not failed, and a daemon's lease holds it     |
//! | `completed`  | needs no embedding and has one                                       |
//! | `failed`     | needs an embedding and ran out of attempts (`retry-failed` re-queues) |
//! | `not_queued` | needs no embedding and has none (stored with `needs_embedding = false`) |
//!
//! A pending row is *due* when its retry backoff (`next_attempt_at`) has passed: only due rows
//! are claimed. A lease that expired counts as pending: its holder is gone and the row is
//! claimable again.

use std::fmt;

use tokio_postgres::Client;

use crate::error::Result;
use crate::queue::Table;

/// The state of one row; see the module documentation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RowState {
    Pending,
    Processing,
    Completed,
    Failed,
    NotQueued,
}

/// Rows that need an embedding. `= TRUE` rather than `IS TRUE`: the same in a filter, and the
/// form the partial queue index is declared with, so the planner uses it.
const NEEDS: &str = "needs_embedding = TRUE";
const NOT_FAILED: &str = "retry_status IS DISTINCT FROM 'failed'";
const LEASED: &str = "claim_expires_at >= clock_timestamp()";
/// "Has its vector" on the original table: the vector is in the row.
pub const HAS_VECTOR_IN_PLACE: &str = "embedding IS NOT NULL";
/// "Has its vector" on a vectorizer's queue table: the write-back stamped it.
pub const HAS_VECTOR_QUEUED: &str = "embedded_at IS NOT NULL";
const UNLEASED: &str = "(claim_expires_at IS NULL OR claim_expires_at < clock_timestamp())";

impl RowState {
    pub const ALL: [RowState; 5] = [
        RowState::Pending,
        RowState::Processing,
        RowState::Completed,
        RowState::Failed,
        RowState::NotQueued,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pending => "pending",
            RowState::Processing => "processing",
            RowState::Completed => "completed",
            RowState::Failed => "failed",
            RowState::NotQueued => "not_queued",
        }
    }

    pub fn parse(s: &str) -> Option<RowState> {
        RowState::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// A boolean SQL expression over the original table's columns (unqualified), true for rows
    /// in this state.
    pub fn predicate(self) -> String {
        self.predicate_with(HAS_VECTOR_IN_PLACE)
    }

    /// The same over any queue: `has_vector` is the queue's test for "this row has its vector"
    /// ([`HAS_VECTOR_IN_PLACE`] on the original table, [`HAS_VECTOR_QUEUED`] on a vectorizer's
    /// queue table, whose vectors live elsewhere).
    pub fn predicate_with(self, has_vector: &str) -> String {
        match self {
            RowState::Pending => format!("({NEEDS} AND {NOT_FAILED} AND {UNLEASED})"),
            RowState::Processing => format!("({NEEDS} AND {NOT_FAILED} AND {LEASED})"),
            RowState::Failed => format!("({NEEDS} AND retry_status = 'failed')"),
            RowState::Completed => format!("(needs_embedding IS NOT TRUE AND ({has_vector}))"),
            RowState::NotQueued => {
                format!("(needs_embedding IS NOT TRUE AND NOT coalesce(({has_vector}), FALSE))")
            }
        }
    }

    /// The queue: rows that still need an embedding and will get one (pending or processing).
    pub fn queued_predicate() -> String {
        format!("({NEEDS} AND {NOT_FAILED})")
    }

    /// Pending rows whose retry backoff has passed: what a claim may take.
    pub fn due_predicate() -> String {
        format!(
            "({} AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp()))",
            RowState::Pending.predicate()
        )
    }

    /// A SQL expression giving each row's state as text (`pending`, …, `not_queued`).
    pub fn case_sql() -> String {
        let mut s = String::from("CASE");
        for r in RowState::ALL {
            s.push_str(&format!(" WHEN {} THEN '{}'", r.predicate(), r.as_str()));
        }
        // Unreachable while the predicates partition the rows; kept visible if they ever don't.
        s.push_str(" ELSE 'unknown' END");
        s
    }
}

impl fmt::Display for RowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rows by state, and the age of the oldest queued row. One statement, one snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct QueueCounts {
    pub rows: i64,
    pub pending: i64,
    pub processing: i64,
    pub completed: i64,
    pub failed: i64,
    pub not_queued: i64,
    /// Seconds since the oldest pending or processing row was queued; `None` when none is.
    pub oldest_pending_secs: Option<f64>,
}

impl QueueCounts {
    /// Rows that still need an embedding and will get one (pending + processing).
    pub fn depth(&self) -> i64 {
        self.pending + self.processing
    }

    /// The counting statement for `table`; `queued_only` restricts it to rows that need an
    /// embedding (the partial queue index: cheap on a large table), leaving `rows`,
    /// `completed` and `not_queued` at 0.
    pub fn sql(table: &Table, queued_only: bool) -> String {
        let f = |r: RowState| {
            format!(
                "count(*) FILTER (WHERE {})",
                r.predicate_with(table.has_vector())
            )
        };
        format!(
            "SELECT count(*), {}, {}, {}, {}, {},
                    (extract(epoch FROM clock_timestamp() - min(queued_at) FILTER (WHERE {})))::float8
               FROM {} {}",
            f(RowState::Pending),
            f(RowState::Processing),
            f(RowState::Completed),
            f(RowState::Failed),
            f(RowState::NotQueued),
            RowState::queued_predicate(),
            table.sql(),
            if queued_only { format!("WHERE {NEEDS}") } else { String::new() },
        )
    }

    /// Every state, over the whole table.
    pub async fn read(client: &Client, table: &Table) -> Result<QueueCounts> {
        QueueCounts::query(client, table, false).await
    }

    /// Pending, processing and failed only (what the daemon samples every few seconds).
    pub async fn read_queued(client: &Client, table: &Table) -> Result<QueueCounts> {
        let mut c = QueueCounts::query(client, table, true).await?;
        c.rows = 0;
        Ok(c)
    }

    async fn query(client: &Client, table: &Table, queued_only: bool) -> Result<QueueCounts> {
        let r = client
            .query_one(&QueueCounts::sql(table, queued_only), &[])
            .await?;
        Ok(QueueCounts {
            rows: r.get(0),
            pending: r.get(1),
            processing: r.get(2),
            completed: r.get(3),
            failed: r.get(4),
            not_queued: r.get(5),
            oldest_pending_secs: r.get(6),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in RowState::ALL {
            assert_eq!(RowState::parse(r.as_str()), Some(r));
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(r.as_str())
            );
        }
        assert_eq!(RowState::parse("done"), None);
    }

    #[test]
    fn due_rows_are_pending_rows() {
        assert!(RowState::due_predicate().contains(&RowState::Pending.predicate()));
        assert!(RowState::case_sql().contains(&RowState::Failed.predicate()));
    }
}
