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
//!
//! One row must not stop the claims of all: when PostgreSQL refuses a claim because of a row
//! (a user's trigger or constraint rejects the UPDATE), the rows are claimed one by one and the
//! rows refused are handed back to the caller, which leaves them out of its next claims.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::{Client, Statement};

use crate::error::Result;
use crate::queue::{RowState, Table};

/// One claimed row.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub id: String,
    /// `None` when the row's content is NULL (it cannot be embedded; the worker fails it).
    pub content: Option<String>,
    /// The content version at claim time; the write-back is void if the row has moved on.
    pub version: i64,
    /// md5 of the text, for a vectorizer's queue (kept at write-back: an update that leaves
    /// the rendered text equal is not queued again); `None` on the original table.
    pub hash: Option<String>,
}

/// A batch of rows claimed together under one token.
#[derive(Debug, Clone)]
pub struct Claim {
    pub token: String,
    pub rows: Vec<ClaimedRow>,
    /// Rows PostgreSQL refused to claim (id, its error on one line): a trigger or constraint of
    /// the table rejects any update of them, so nothing can be recorded on them either.
    pub refused: Vec<(String, String)>,
}

/// The prepared claim statements of one connection.
pub struct Claimer {
    by_id: Statement,
    oldest: Statement,
    hinted_candidates: Statement,
    oldest_candidates: Statement,
    owner: String,
    /// Ids left out of every claim (rows that cannot be claimed; see [`Claim::refused`]).
    excluded: Vec<String>,
    /// A vectorizer queue's second read of the claimed rows (text and version from one
    /// snapshot); none for the original table, whose text is on the locked row itself.
    reread: Option<Statement>,
}

/// Claim tokens are `owner:N` with N unique in the process, so a token is never reused across
/// reconnects (a stale holder's write-back can never match a newer claim).
static CLAIM_SEQ: AtomicU64 = AtomicU64::new(0);

/// Error kept on a row whose claim expired before its holder finished.
pub const LEASE_EXPIRED_ERROR: &str =
    "the worker holding this row stopped or hung before finishing (claim lease expired)";

/// The claim statement; `pick` selects candidate ids (`$1` limit, `$5` hinted ids, `$6` ids to
/// leave out).
fn claim_sql(table: &Table, pick: &str) -> String {
    let t = table.sql();
    let content = table.content_sql();
    let hash = if table.in_place() {
        "NULL::text"
    } else {
        "md5(content)"
    };
    // In SET and WHERE, r.* are the row's values before this UPDATE. A NULL retry_count counts
    // as 0 (rows inserted with explicit NULLs, or from an older schema).
    let expired = "r.claimed_by IS NOT NULL";
    let attempts = "coalesce(r.retry_count, 0)";
    let exhausted = format!("({expired} AND {attempts} + 1 >= $4::int4)");
    let due = RowState::due_predicate();
    let served = table.served_sql();
    format!(
        "WITH picked AS (
            SELECT id FROM {t}
             WHERE {due}
               AND NOT (id = ANY($6::text[]))
               AND {served}
               {pick}
             FOR UPDATE SKIP LOCKED
         ), taken AS (
            UPDATE {t} AS r
               SET claimed_by       = CASE WHEN {exhausted} THEN NULL ELSE $2 END,
                   claim_expires_at = CASE WHEN {exhausted} THEN NULL
                                           ELSE clock_timestamp() + make_interval(secs => $3) END,
                   retry_status     = CASE WHEN {exhausted} THEN 'failed' ELSE 'processing' END,
                   retry_count      = {attempts} + CASE WHEN {expired} THEN 1 ELSE 0 END,
                   last_retry_at    = CASE WHEN {expired} THEN now() ELSE r.last_retry_at END,
                   last_error       = CASE WHEN {expired} THEN '{LEASE_EXPIRED_ERROR}' ELSE r.last_error END,
                   queued_at        = coalesce(r.queued_at, clock_timestamp())
              FROM picked
             WHERE r.id = picked.id
         RETURNING r.id, {content} AS content, r.content_version, r.claimed_by
         )
         SELECT id, content, content_version, {hash} FROM taken WHERE claimed_by = $2"
    )
}

impl Claimer {
    pub async fn prepare(client: &Client, table: &Table, owner: &str) -> Result<Claimer> {
        let t = table.sql();
        let by_id = claim_sql(table, "AND id = ANY($5::text[]) LIMIT $1");
        // Binds $5 too, so both statements take the same parameters.
        let oldest = claim_sql(
            table,
            "AND $5::text[] IS NOT NULL ORDER BY queued_at LIMIT $1",
        );
        // The rows a claim would pick, without locking them: the one-by-one fallback's lists.
        let due = RowState::due_predicate();
        let hinted_candidates = format!(
            "SELECT id FROM {t} WHERE {due} AND NOT (id = ANY($3::text[])) AND id = ANY($2::text[]) LIMIT $1"
        );
        let reread = if table.in_place() {
            None
        } else {
            let content = table.content_sql();
            let sql = format!(
                "SELECT id, content, content_version, md5(content) FROM (
                    SELECT r.id, {content} AS content, r.content_version
                      FROM {t} AS r WHERE r.id = ANY($1::text[]) AND r.claimed_by = $2::text
                 ) x"
            );
            Some(client.prepare(&sql).await?)
        };
        let oldest_candidates = format!(
            "SELECT id FROM {t} WHERE {due} AND NOT (id = ANY($3::text[])) AND $2::text[] IS NOT NULL
              ORDER BY queued_at LIMIT $1"
        );
        Ok(Claimer {
            by_id: client.prepare(&by_id).await?,
            oldest: client.prepare(&oldest).await?,
            hinted_candidates: client.prepare(&hinted_candidates).await?,
            oldest_candidates: client.prepare(&oldest_candidates).await?,
            owner: owner.to_string(),
            excluded: Vec::new(),
            reread,
        })
    }

    /// Leaves these ids out of every later claim (until set again).
    pub fn set_excluded(&mut self, ids: Vec<String>) {
        self.excluded = ids;
    }

    /// Claims up to `limit` rows for `lease_secs`: first among `hinted` ids, then the oldest due
    /// rows, leaving out the excluded ones. Rows whose expired claim used their last attempt
    /// become `failed` instead. An empty claim means nothing is due.
    pub async fn claim(
        &mut self,
        client: &Client,
        hinted: &[String],
        limit: usize,
        lease_secs: f64,
        max_retries: i32,
    ) -> Result<Claim> {
        self.claim_from(client, hinted, limit, true, lease_secs, max_retries)
            .await
    }

    /// Claims the due rows among `hinted` and nothing else: the rows notifications just named,
    /// embedded apart from the backlog so that they do not wait behind it.
    pub async fn claim_hinted(
        &mut self,
        client: &Client,
        hinted: &[String],
        lease_secs: f64,
        max_retries: i32,
    ) -> Result<Claim> {
        self.claim_from(client, hinted, hinted.len(), false, lease_secs, max_retries)
            .await
    }

    async fn claim_from(
        &mut self,
        client: &Client,
        hinted: &[String],
        limit: usize,
        oldest: bool,
        lease_secs: f64,
        max_retries: i32,
    ) -> Result<Claim> {
        let seq = CLAIM_SEQ.fetch_add(1, Ordering::Relaxed) + 1;
        let mut claim = Claim {
            token: format!("{}:{seq}", self.owner),
            rows: Vec::new(),
            refused: Vec::new(),
        };
        let p = Params {
            token: &claim.token,
            lease_secs,
            max_retries,
            excluded: &self.excluded,
        };
        if !hinted.is_empty() {
            claim.rows = self
                .claim_with_fallback(client, Pick::Hinted(hinted), limit, &p, &mut claim.refused)
                .await?;
        }
        if oldest && claim.rows.len() < limit {
            let more = self
                .claim_with_fallback(
                    client,
                    Pick::Oldest,
                    limit - claim.rows.len(),
                    &p,
                    &mut claim.refused,
                )
                .await?;
            claim.rows.extend(more);
        }
        Ok(claim)
    }

    /// One claim statement; when PostgreSQL refuses it because of a row, the same pick one row
    /// at a time, the refused rows added to `refused`.
    async fn claim_with_fallback(
        &self,
        client: &Client,
        pick: Pick<'_>,
        limit: usize,
        p: &Params<'_>,
        refused: &mut Vec<(String, String)>,
    ) -> Result<Vec<ClaimedRow>> {
        let (stmt, hinted) = match pick {
            Pick::Hinted(ids) => (&self.by_id, ids),
            Pick::Oldest => (&self.oldest, &[][..]),
        };
        match self.run(client, stmt, limit, p, hinted).await {
            Err(e) if e.is_row_level() => {
                tracing::warn!(error = %e, "a claim was refused because of a row; claiming one by one");
                let candidates = match pick {
                    Pick::Hinted(_) => &self.hinted_candidates,
                    Pick::Oldest => &self.oldest_candidates,
                };
                let ids: Vec<String> = client
                    .query(candidates, &[&(limit as i64), &hinted, &p.excluded])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut rows = Vec::new();
                for id in ids {
                    match self
                        .run(client, &self.by_id, 1, p, std::slice::from_ref(&id))
                        .await
                    {
                        Ok(one) => rows.extend(one),
                        Err(e) if e.is_row_level() => refused.push((id, e.to_string())),
                        Err(e) => return Err(e),
                    }
                }
                Ok(rows)
            }
            other => other,
        }
    }

    async fn run(
        &self,
        client: &Client,
        stmt: &Statement,
        limit: usize,
        p: &Params<'_>,
        ids: &[String],
    ) -> Result<Vec<ClaimedRow>> {
        let rows = client
            .query(
                stmt,
                &[
                    &(limit as i64),
                    &p.token,
                    &p.lease_secs,
                    &p.max_retries,
                    &ids,
                    &p.excluded,
                ],
            )
            .await?
            .iter()
            .map(ClaimedRow::from_row)
            .collect::<Vec<_>>();
        let Some(reread) = &self.reread else {
            return Ok(rows);
        };
        if rows.is_empty() {
            return Ok(rows);
        }
        // A vectorizer's text lives in the source table. The claim statement read it with its
        // snapshot, but a row updated by a transaction that committed during the statement is
        // locked in its NEW version (newer content_version) while the source subquery still
        // sees the OLD text: that pair would be written as current. A fresh statement sees the
        // source update and the queue bump of that transaction together, or neither; a row a
        // later update has voided meanwhile (claim cleared) is simply not ours any more.
        let ids: Vec<String> = rows.into_iter().map(|r| r.id).collect();
        Ok(client
            .query(reread, &[&ids, &p.token])
            .await?
            .iter()
            .map(ClaimedRow::from_row)
            .collect())
    }
}

impl ClaimedRow {
    /// A row of a claim statement: id, content, content version, hash.
    fn from_row(r: &tokio_postgres::Row) -> ClaimedRow {
        ClaimedRow {
            id: r.get(0),
            content: r.get(1),
            version: r.get(2),
            hash: r.get(3),
        }
    }
}

/// Which rows a claim statement picks.
#[derive(Clone, Copy)]
enum Pick<'a> {
    /// Among these ids (the notifications' hints).
    Hinted(&'a [String]),
    /// The oldest due rows.
    Oldest,
}

/// What every statement of one claim binds.
struct Params<'a> {
    token: &'a str,
    lease_secs: f64,
    max_retries: i32,
    excluded: &'a [String],
}
