//! Stage 5 of the flow: write vectors back, guarded.
//!
//! A vector is written only where id, claim token and content version all still match: a row
//! whose content changed during embedding (new version, claim voided by the requeue trigger),
//! a row deleted meanwhile, and a row whose lease expired and was re-claimed are all left alone.
//! One statement per batch, whatever the destination (the row itself, a column of the
//! source row, or a chunk table whose rows of a text are replaced together); vectors travel in
//! pgvector's binary format.

use pgvector::Vector;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use crate::error::Result;
use crate::queue::Claim;
use crate::queue::{Table, Target, CHANNEL_READY, MAX_PAYLOAD_ID_BYTES};

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

/// What the model made of one claimed row: one vector, or (for a chunk table) its chunks'
/// texts and their vectors, in order.
#[derive(Debug, Clone, Default)]
pub struct Embedded {
    /// The texts embedded, one per vector: written to a chunk table; empty for a destination
    /// that takes one vector per row.
    pub chunks: Vec<String>,
    pub vectors: Vec<Vec<f32>>,
}

impl Embedded {
    /// One vector for the whole row.
    pub fn single(vector: Vec<f32>) -> Embedded {
        Embedded {
            chunks: Vec::new(),
            vectors: vec![vector],
        }
    }

    /// Whether every value of every vector is finite (PostgreSQL refuses NaN and infinities).
    pub fn is_finite(&self) -> bool {
        self.vectors.iter().all(|v| v.iter().all(|x| x.is_finite()))
    }
}

/// The types of the write-back's parameters $1–$8 ($9, `vector[]`, is inferred): given, because a
/// destination may leave some unused and the server cannot infer those.
const COMPLETE_TYPES: [Type; 8] = [
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT_ARRAY,
    Type::INT4_ARRAY,
    Type::TEXT_ARRAY,
];

/// The prepared statements of one connection.
pub struct Writer {
    complete: Statement,
    fail: Statement,
    model: String,
}

/// The write-back of `table`'s destination: one statement, so a row's queue state and its
/// vector (or all its chunks) change together or not at all, and only where id, claim token
/// and content version all still match.
///
/// Every destination binds the same parameters (some leave a few unused): rows ($1 ids,
/// $2 versions, $3 text hashes), $4 the claim token, $5 the model, then one entry per vector
/// ($6 row id, $7 chunk number, $8 chunk text, $9 vector).
fn complete_sql(table: &Table) -> String {
    let t = table.sql();
    let done = "needs_embedding = FALSE,
                       retry_status = 'completed',
                       claimed_by = NULL,
                       claim_expires_at = NULL,
                       next_attempt_at = NULL,
                       last_error = NULL,
                       embedded_at = clock_timestamp(),
                       embedding_model = $5";
    // A vectorizer moved to another model meanwhile takes no vector of this one.
    let guard = format!(
        "r.id = v.id AND r.content_version = v.version AND r.claimed_by = $4 AND {}",
        table.served_sql()
    );
    let latency = "extract(epoch FROM clock_timestamp() - r.queued_at)::float8 AS latency";
    match table.target() {
        Target::InPlace => format!(
            "WITH v AS (
                SELECT * FROM unnest($1::text[], $2::int8[], $9::vector[]) AS v(id, version, embedding)
             ), done AS (
                UPDATE {t} AS r
                   SET embedding = v.embedding, {done}
                  FROM v
                 WHERE {guard}
             RETURNING r.id, {latency}
             )
             SELECT id, latency,
                    pg_notify('{CHANNEL_READY}', CASE WHEN octet_length(id) <= {MAX_PAYLOAD_ID_BYTES} THEN id ELSE '' END)
               FROM done"
        ),
        Target::Column {
            source,
            column,
            join,
        } => format!(
            "WITH v AS (
                SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $9::vector[])
                    AS v(id, version, hash, embedding)
             ), done AS (
                UPDATE {t} AS r
                   SET text_hash = v.hash, {done}
                  FROM v
                 WHERE {guard}
             RETURNING r.*, v.embedding AS pgai_vector, {latency}
             ), written AS (
                UPDATE {source} AS s SET {column} = done.pgai_vector FROM done WHERE {join}
             )
             SELECT id, latency FROM done"
        ),
        Target::Chunks {
            table: chunks,
            keys,
            queue_keys,
        } => {
            // The chunks of a row take its queue row's `embedded_at`: one write, one time (a
            // per-chunk clock_timestamp() would differ by microseconds between chunks).
            let keys = keys.join(", ");
            let queue_keys = queue_keys.join(", ");
            format!(
                "WITH v AS (
                    SELECT * FROM unnest($1::text[], $2::int8[], $3::text[]) AS v(id, version, hash)
                 ), done AS (
                    UPDATE {t} AS r
                       SET text_hash = v.hash, {done}
                      FROM v
                     WHERE {guard}
                 RETURNING r.*, {latency}
                 ), old AS (
                    DELETE FROM {chunks} AS c USING done WHERE ({keys_c}) = ({queue_keys})
                 ), new AS (
                    INSERT INTO {chunks} ({keys}, chunk_seq, chunk, embedding, embedding_model, embedded_at)
                    SELECT {queue_keys}, x.seq, x.chunk, x.embedding, $5, done.embedded_at
                      FROM done
                      JOIN unnest($6::text[], $7::int4[], $8::text[], $9::vector[]) AS x(id, seq, chunk, embedding)
                        ON x.id = done.id
                 )
                 SELECT id, latency FROM done",
                keys_c = keys
                    .split(", ")
                    .map(|k| format!("c.{k}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        }
    }
}

impl Writer {
    pub async fn prepare(client: &Client, table: &Table, model: &str) -> Result<Writer> {
        let t = table.sql();
        let complete = complete_sql(table);
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
            complete: client.prepare_typed(&complete, &COMPLETE_TYPES).await?,
            fail: client.prepare(&fail).await?,
            model: model.to_string(),
        })
    }

    /// Writes `rows[i]` (its vector, or its chunks) for `claim.rows[i]`; returns the rows
    /// actually written.
    pub async fn complete(
        &self,
        client: &Client,
        claim: &Claim,
        rows: Vec<Embedded>,
    ) -> Result<Vec<Written>> {
        debug_assert_eq!(claim.rows.len(), rows.len());
        let ids: Vec<&str> = claim.rows.iter().map(|r| r.id.as_str()).collect();
        let versions: Vec<i64> = claim.rows.iter().map(|r| r.version).collect();
        let hashes: Vec<Option<&str>> = claim.rows.iter().map(|r| r.hash.as_deref()).collect();
        let (mut vec_ids, mut seqs, mut chunks, mut vectors) = (vec![], vec![], vec![], vec![]);
        for (row, e) in claim.rows.iter().zip(rows) {
            let mut texts = e.chunks.into_iter();
            for (seq, v) in e.vectors.into_iter().enumerate() {
                vec_ids.push(row.id.as_str());
                seqs.push(seq as i32);
                chunks.push(texts.next().unwrap_or_default());
                vectors.push(Vector::from(v));
            }
        }
        let rows = client
            .query(
                &self.complete,
                &[
                    &ids,
                    &versions,
                    &hashes,
                    &claim.token,
                    &self.model,
                    &vec_ids,
                    &seqs,
                    &chunks,
                    &vectors,
                ],
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
