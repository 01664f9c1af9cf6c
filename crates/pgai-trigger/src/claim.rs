//! Stage 3 of the flow: take pending rows with a lease.
//!
//! `FOR UPDATE SKIP LOCKED` sits in a CTE so the LIMIT bounds the rows locked; rows claimed by a
//! live holder are skipped by the predicate, rows whose lease expired are taken over. Each claim
//! gets a token of its own (`claimed_by`), which the write-back must present: a holder whose lease
//! expired and was re-claimed can no longer complete the row.

use tokio_postgres::{Client, Statement};

use crate::error::Result;
use crate::schema::Table;

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

/// The prepared claim statement of one connection.
pub struct Claimer {
    stmt: Statement,
    release: Statement,
    owner: String,
    seq: u64,
}

impl Claimer {
    pub async fn prepare(client: &Client, table: &Table, owner: &str) -> Result<Claimer> {
        let t = table.sql();
        let sql = format!(
            "WITH picked AS (
                SELECT id FROM {t}
                 WHERE needs_embedding = TRUE
                   AND retry_status IS DISTINCT FROM 'failed'
                   AND (claim_expires_at IS NULL OR claim_expires_at < clock_timestamp())
                   AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())
                 ORDER BY queued_at
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE {t} AS r
                SET claimed_by = $2,
                    claim_expires_at = clock_timestamp() + make_interval(secs => $3),
                    retry_status = 'processing'
               FROM picked
              WHERE r.id = picked.id
          RETURNING r.id, r.content, r.content_version"
        );
        let release = format!(
            "UPDATE {t} SET claimed_by = NULL, claim_expires_at = NULL, retry_status = 'pending'
              WHERE starts_with(claimed_by, $1 || ':') AND needs_embedding = TRUE"
        );
        Ok(Claimer {
            stmt: client.prepare(&sql).await?,
            release: client.prepare(&release).await?,
            owner: owner.to_string(),
            seq: 0,
        })
    }

    /// Claims up to `limit` rows for `lease_secs`. An empty claim means nothing is due.
    pub async fn claim(&mut self, client: &Client, limit: usize, lease_secs: f64) -> Result<Claim> {
        self.seq += 1;
        let token = format!("{}:{}", self.owner, self.seq);
        let rows = client
            .query(&self.stmt, &[&(limit as i64), &token, &lease_secs])
            .await?
            .into_iter()
            .map(|r| ClaimedRow { id: r.get(0), content: r.get(1), version: r.get(2) })
            .collect();
        Ok(Claim { token, rows })
    }
}

impl Claimer {
    /// Gives back every claim this owner holds. Only for claims the owner has abandoned (their
    /// batches are no longer being processed), e.g. after losing a connection.
    pub async fn release_own(&self, client: &Client) -> Result<u64> {
        Ok(client.execute(&self.release, &[&self.owner]).await?)
    }
}
