//! Stage 5 of the flow: write vectors back, guarded.
//!
//! A vector is written only where id, claim token and content version all still match: a row
//! whose content changed during embedding (new version, claim voided by the requeue trigger),
//! a row deleted meanwhile, and a row whose lease expired and was re-claimed are all left alone.
//! One statement per batch; vectors travel in pgvector's binary format.

use pgvector::Vector;
use tokio_postgres::{Client, Statement};

use crate::error::Result;
use crate::queue::Claim;
use crate::queue::{Table, CHANNEL_READY, MAX_PAYLOAD_ID_BYTES};

/// How failed attempts back off: `base × 2^attempts`, capped, ±25 % jitter; `failed` after
/// `max_retries` attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: i32,
    pub base: std::time::Duration,
    pub cap: std::time::Duration,
}

/// A row whose vector was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub id: String,
    /// Seconds from the row's queueing (insert or content change) to its vector's write;
    /// `None` when the row has no `queued_at`.
    pub latency_secs: Option<f64>,
}

/// The prepared statements of one connection.
pub struct Writer {
    complete: Statement,
    fail: Statement,
    model: String,
}

impl Writer {
    pub async fn prepare(client: &Client, table: &Table, model: &str) -> Result<Writer> {
        let t = table.sql();
        let complete = format!(
            "WITH v AS (
                SELECT * FROM unnest($1::text[], $2::int8[], $3::vector[]) AS v(id, version, embedding)
             ), done AS (
                UPDATE {t} AS r
                   SET embedding = v.embedding,
                       needs_embedding = FALSE,
                       retry_status = 'completed',
                       claimed_by = NULL,
                       claim_expires_at = NULL,
                       next_attempt_at = NULL,
                       last_error = NULL,
                       embedded_at = clock_timestamp(),
                       embedding_model = $5
                  FROM v
                 WHERE r.id = v.id AND r.content_version = v.version AND r.claimed_by = $4
             RETURNING r.id, extract(epoch FROM clock_timestamp() - r.queued_at)::float8
             )
             SELECT id, latency,
                    pg_notify('{CHANNEL_READY}', CASE WHEN octet_length(id) <= {MAX_PAYLOAD_ID_BYTES} THEN id ELSE '' END)
               FROM done AS d(id, latency)"
        );
        // Backoff per row: retry_interval * 2^retry_count, capped, with ±25 % jitter so rows
        // that failed together do not come back together. The exponent is bounded (2^30 s is
        // past any cap) so a huge retry_count cannot overflow; a NULL one counts as 0. A
        // permanent failure ($7) ends the row at once.
        let fail = format!(
            "UPDATE {t} AS r
                SET retry_count = coalesce(r.retry_count, 0) + 1,
                    last_retry_at = now(),
                    last_error = $3::text,
                    claimed_by = NULL,
                    claim_expires_at = NULL,
                    retry_status = CASE WHEN $7::bool OR coalesce(r.retry_count, 0) + 1 >= $4::int4
                                        THEN 'failed' ELSE 'pending' END,
                    next_attempt_at = clock_timestamp() + make_interval(secs =>
                        least($6::float8, $5::float8 * power(2::float8, least(greatest(coalesce(r.retry_count, 0), 0), 30)))
                        * (0.75 + random() * 0.5))
              WHERE r.id = ANY($1) AND r.claimed_by = $2"
        );
        Ok(Writer {
            complete: client.prepare(&complete).await?,
            fail: client.prepare(&fail).await?,
            model: model.to_string(),
        })
    }

    /// Writes `vectors[i]` to `claim.rows[i]`; returns the rows actually written.
    pub async fn complete(
        &self,
        client: &Client,
        claim: &Claim,
        vectors: Vec<Vec<f32>>,
    ) -> Result<Vec<Written>> {
        debug_assert_eq!(claim.rows.len(), vectors.len());
        let ids: Vec<&str> = claim.rows.iter().map(|r| r.id.as_str()).collect();
        let versions: Vec<i64> = claim.rows.iter().map(|r| r.version).collect();
        let vectors: Vec<Vector> = vectors.into_iter().map(Vector::from).collect();
        let rows = client
            .query(
                &self.complete,
                &[&ids, &versions, &vectors, &claim.token, &self.model],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Written {
                id: r.get(0),
                latency_secs: r.get(1),
            })
            .collect())
    }

    /// Records a failed attempt for the given rows of `claim`; rows reaching
    /// `retry.max_retries`, or any row when `permanent`, become `failed` with the error kept in
    /// `last_error`. Returns how many rows were updated.
    pub async fn fail(
        &self,
        client: &Client,
        claim: &Claim,
        ids: &[&str],
        error: &str,
        retry: &RetryPolicy,
        permanent: bool,
    ) -> Result<u64> {
        Ok(client
            .execute(
                &self.fail,
                &[
                    &ids,
                    &claim.token,
                    &error,
                    &retry.max_retries,
                    &retry.base.as_secs_f64(),
                    &retry.cap.as_secs_f64(),
                    &permanent,
                ],
            )
            .await?)
    }
}
