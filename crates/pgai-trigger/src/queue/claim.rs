//! Stage 3 of the flow: take pending rows with a lease.
//!
//! `FOR UPDATE SKIP LOCKED` sits in a CTE so the LIMIT bounds the rows locked; rows claimed by a
//! live holder are skipped by the predicate, rows whose lease expired are taken over. Each claim
//! gets a token of its own (`claimed_by`), which the write-back must present: a holder whose lease
//! expired and was re-claimed can no longer complete the row.
//!
//! Taking over an expired claim counts an attempt on the row: its holder crashed or hung while
//! embedding it, and a row that crashes every worker must end `failed`, not loop forever.
//!
//! Two ways to pick: the ids the notifications named (newest first, so a fresh insert is not
//! stuck behind a backlog of thousands), then the oldest due rows.

use tokio_postgres::{Client, Statement};

use crate::error::Result;
use crate::queue::{RowState, Table};

/// One claimed row.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub id: String,
    pub content: String,
    /// The content version at claim time; the write-back is void if the row has moved on.
    pub version: i64,
}

/// A batch of rows claimed together under one token.
#[derive(Debug, Clone)]
pub struct Claim {
    pub token: String,
    pub rows: Vec<ClaimedRow>,
}

/// The prepared claim statements of one connection.
pub struct Claimer {
    by_id: Statement,
    oldest: Statement,
    owner: String,
    seq: u64,
}

/// Error kept on a row whose claim expired before its holder finished.
pub const LEASE_EXPIRED_ERROR: &str =
    "the worker holding this row stopped or hung before finishing (claim lease expired)";

/// The claim statement; `pick` selects candidate ids (`$1` limit, `$5` hinted ids).
fn claim_sql(t: &str, pick: &str) -> String {
    // In SET and WHERE, r.* are the row's values before this UPDATE.
    let expired = "r.claimed_by IS NOT NULL";
    let exhausted = format!("({expired} AND r.retry_count + 1 >= $4::int4)");
    let due = RowState::due_predicate();
    format!(
        "WITH picked AS (
            SELECT id FROM {t}
             WHERE {due}
               {pick}
             FOR UPDATE SKIP LOCKED
         ), taken AS (
            UPDATE {t} AS r
               SET claimed_by       = CASE WHEN {exhausted} THEN NULL ELSE $2 END,
                   claim_expires_at = CASE WHEN {exhausted} THEN NULL
                                           ELSE clock_timestamp() + make_interval(secs => $3) END,
                   retry_status     = CASE WHEN {exhausted} THEN 'failed' ELSE 'processing' END,
                   retry_count      = r.retry_count + CASE WHEN {expired} THEN 1 ELSE 0 END,
                   last_retry_at    = CASE WHEN {expired} THEN now() ELSE r.last_retry_at END,
                   last_error       = CASE WHEN {expired} THEN '{LEASE_EXPIRED_ERROR}' ELSE r.last_error END
              FROM picked
             WHERE r.id = picked.id
         RETURNING r.id, r.content, r.content_version, r.claimed_by
         )
         SELECT id, content, content_version FROM taken WHERE claimed_by = $2"
    )
}

impl Claimer {
    pub async fn prepare(client: &Client, table: &Table, owner: &str) -> Result<Claimer> {
        let t = table.sql();
        let by_id = claim_sql(&t, "AND id = ANY($5::text[]) LIMIT $1");
        // Binds $5 too, so both statements take the same parameters.
        let oldest = claim_sql(&t, "AND $5::text[] IS NOT NULL ORDER BY queued_at LIMIT $1");
        Ok(Claimer {
            by_id: client.prepare(&by_id).await?,
            oldest: client.prepare(&oldest).await?,
            owner: owner.to_string(),
            seq: 0,
        })
    }

    /// Claims up to `limit` rows for `lease_secs`: first among `hinted` ids, then the oldest due
    /// rows. Rows whose expired claim used their last attempt become `failed` instead. An
    /// empty claim means nothing is due.
    pub async fn claim(
        &mut self,
        client: &Client,
        hinted: &[String],
        limit: usize,
        lease_secs: f64,
        max_retries: i32,
    ) -> Result<Claim> {
        self.seq += 1;
        let token = format!("{}:{}", self.owner, self.seq);
        let mut rows = Vec::new();
        if !hinted.is_empty() {
            rows = self
                .run(
                    client,
                    &self.by_id,
                    limit,
                    &token,
                    lease_secs,
                    max_retries,
                    hinted,
                )
                .await?;
        }
        if rows.len() < limit {
            let more = self
                .run(
                    client,
                    &self.oldest,
                    limit - rows.len(),
                    &token,
                    lease_secs,
                    max_retries,
                    &[],
                )
                .await?;
            rows.extend(more);
        }
        Ok(Claim { token, rows })
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        client: &Client,
        stmt: &Statement,
        limit: usize,
        token: &str,
        lease_secs: f64,
        max_retries: i32,
        ids: &[String],
    ) -> Result<Vec<ClaimedRow>> {
        Ok(client
            .query(
                stmt,
                &[&(limit as i64), &token, &lease_secs, &max_retries, &ids],
            )
            .await?
            .into_iter()
            .map(|r| ClaimedRow {
                id: r.get(0),
                content: r.get(1),
                version: r.get(2),
            })
            .collect())
    }
}
