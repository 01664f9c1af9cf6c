//! What the queue looks like: counts by state, latency, throughput, health; and `retry-failed`.

use std::time::Duration;

use super::{
    Check, FailedRow, Health, HealthStatus, Latency, ProcessingStats, Queue, Store, StoreResult,
};
use crate::config::settings::ProviderKind;
use crate::queue::{schema, QueueCounts, RowState, CHANNEL_NEEDED};

impl Store {
    /// Moves `failed` rows back to pending with a fresh attempt count, then wakes the daemons.
    /// Returns how many rows moved.
    pub async fn retry_failed(&self) -> StoreResult<u64> {
        let db = self.pool.get().await?;
        let n = db
            .execute(
                &format!(
                    "UPDATE {} SET retry_status = 'pending', retry_count = 0, next_attempt_at = NULL,
                            claimed_by = NULL, claim_expires_at = NULL, needs_embedding = TRUE,
                            queued_at = clock_timestamp()
                      WHERE {}",
                    self.config.table.sql(),
                    RowState::Failed.predicate()
                ),
                &[],
            )
            .await?;
        if n > 0 {
            db.execute("SELECT pg_notify($1, '')", &[&CHANNEL_NEEDED])
                .await?;
        }
        Ok(n)
    }

    /// Up to `limit` failed rows, most recently queued first: id, last error, attempts.
    pub async fn failed(&self, limit: i64) -> StoreResult<Vec<FailedRow>> {
        let db = self.pool.get().await?;
        let rows = db
            .query(
                &format!(
                    "SELECT id, last_error, coalesce(retry_count, 0) FROM {} WHERE {}
                      ORDER BY queued_at DESC NULLS LAST, id LIMIT $1",
                    self.config.table.sql(),
                    RowState::Failed.predicate()
                ),
                &[&limit.max(0)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| FailedRow {
                id: r.get(0),
                last_error: r.get(1),
                retry_count: r.get(2),
            })
            .collect())
    }

    /// Rows needing an embedding and not failed, and how many of them wait for a retry's
    /// backoff (pending, not due yet).
    pub async fn queue(&self) -> StoreResult<Queue> {
        let db = self.pool.get().await?;
        let r = db
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE {queued}),
                            count(*) FILTER (WHERE {pending} AND NOT {due})
                       FROM {t} WHERE {queued}",
                    queued = RowState::queued_predicate(),
                    pending = RowState::Pending.predicate(),
                    due = RowState::due_predicate(),
                    t = self.config.table.sql(),
                ),
                &[],
            )
            .await?;
        Ok(Queue {
            depth: r.get(0),
            waiting_retry: r.get(1),
        })
    }

    /// Counts by status, queue depth and age, latency percentiles, throughput, retries.
    pub async fn processing_stats(&self) -> StoreResult<ProcessingStats> {
        let db = self.pool.get().await?;
        let t = self.config.table.sql();
        let counts = QueueCounts::read(&db, &self.config.table).await?;
        let r = db
            .query_one(
                &format!(
                    "SELECT coalesce(sum(retry_count), 0)::int8,
                        count(*) FILTER (WHERE retry_count > 0),
                        count(*) FILTER (WHERE embedded_at > clock_timestamp() - interval '1 minute'),
                        count(*) FILTER (WHERE embedded_at > clock_timestamp() - interval '1 hour')
                     FROM {t}"
                ),
                &[],
            )
            .await?;
        let l = db
            .query_one(
                &format!(
                    "SELECT count(*), avg(ms), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                            percentile_cont(0.95) WITHIN GROUP (ORDER BY ms),
                            percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
                       FROM (SELECT (extract(epoch FROM embedded_at - queued_at) * 1000)::float8 AS ms
                               FROM {t}
                              WHERE embedded_at > clock_timestamp() - interval '1 hour'
                                AND {completed} AND queued_at IS NOT NULL
                              ORDER BY embedded_at DESC LIMIT 10000) recent",
                    completed = RowState::Completed.predicate()
                ),
                &[],
            )
            .await?;
        let QueueCounts {
            rows,
            pending,
            processing,
            completed,
            failed,
            ..
        } = counts;
        Ok(ProcessingStats {
            mode: self.mode(),
            table: self.config.table.name().to_string(),
            total_rows: rows,
            pending,
            processing,
            completed,
            failed,
            queue_depth: counts.depth(),
            oldest_pending_secs: counts.oldest_pending_secs,
            latency_ms: Latency {
                samples: l.get(0),
                avg: l.get(1),
                p50: l.get(2),
                p95: l.get(3),
                p99: l.get(4),
                max: l.get(5),
            },
            throughput_per_minute: r.get(2),
            embedded_last_hour: r.get(3),
            success_rate: (completed + failed > 0)
                .then(|| completed as f64 / (completed + failed) as f64),
            retries: r.get(0),
            rows_retried: r.get(1),
            daemon: self.monitor().map(|m| m.snapshot()),
        })
    }

    /// Database reachable, schema usable, daemons present, queue moving; and this process's
    /// daemon connected, when it runs one.
    pub async fn health_status(&self) -> Health {
        let mut checks = std::collections::BTreeMap::new();
        let mut unhealthy = false;
        let mut degraded = false;
        match tokio::time::timeout(Duration::from_secs(5), self.pool.get()).await {
            Ok(Ok(db)) => {
                checks.insert(
                    "database",
                    Check {
                        ok: true,
                        detail: "reachable".into(),
                    },
                );
                let dim = match self.known_dim() {
                    Some(d) => d,
                    None => schema::embedding_dim(&db, &self.config.table)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|d| usize::try_from(d).ok())
                        .unwrap_or(pgai_embed::DIM),
                };
                match schema::verify(&db, &self.config.table, dim).await {
                    Ok(()) => checks.insert(
                        "schema",
                        Check {
                            ok: true,
                            detail: format!("table {} ready", self.config.table.name()),
                        },
                    ),
                    Err(e) => {
                        unhealthy = true;
                        checks.insert(
                            "schema",
                            Check {
                                ok: false,
                                detail: e.to_string(),
                            },
                        )
                    }
                };
                let t = self.config.table.sql();
                let q = db
                    .query_one(
                        &format!(
                            "SELECT (SELECT count(DISTINCT split_part(application_name, ' ', 2))
                                       FROM pg_stat_activity
                                      WHERE datname = current_database() AND application_name LIKE 'pgai-trigger %'
                                        AND application_name NOT LIKE '% check'),
                                    (SELECT (extract(epoch FROM clock_timestamp() - min(queued_at)))::float8
                                       FROM {t} WHERE {queued})",
                            queued = RowState::queued_predicate()
                        ),
                        &[],
                    )
                    .await;
                if let Ok(q) = q {
                    let daemons: i64 = q.get(0);
                    let oldest: Option<f64> = q.get(1);
                    checks.insert(
                        "daemons",
                        Check {
                            ok: daemons > 0,
                            detail: format!("{daemons} daemon(s) connected to this database"),
                        },
                    );
                    let stale = oldest.is_some_and(|s| s > 60.0);
                    checks.insert(
                        "queue",
                        Check {
                            ok: !stale,
                            detail: match oldest {
                                Some(s) => format!("oldest pending row is {s:.1} s old"),
                                None => "no pending rows".into(),
                            },
                        },
                    );
                    degraded |= daemons == 0 || stale;
                }
            }
            Ok(Err(e)) => {
                unhealthy = true;
                checks.insert(
                    "database",
                    Check {
                        ok: false,
                        detail: e.to_string(),
                    },
                );
            }
            Err(_) => {
                unhealthy = true;
                checks.insert(
                    "database",
                    Check {
                        ok: false,
                        detail: "no answer within 5 s".into(),
                    },
                );
            }
        }
        if let Some(m) = self.monitor() {
            let s = m.snapshot();
            checks.insert(
                "worker",
                Check {
                    ok: s.worker_connected,
                    detail: if s.worker_connected {
                        "connected"
                    } else {
                        "disconnected"
                    }
                    .into(),
                },
            );
            unhealthy |= !s.worker_connected;
            if self.config.immediate_trigger {
                checks.insert(
                    "listener",
                    Check {
                        ok: s.listener_connected,
                        detail: if s.listener_connected {
                            "listening"
                        } else {
                            "not listening (polling meanwhile)"
                        }
                        .into(),
                    },
                );
                degraded |= !s.listener_connected;
            }
        }
        if let Some(e) = self.embed.get() {
            checks.insert(
                "embedder",
                Check {
                    ok: true,
                    detail: format!("{} ({} dimensions)", e.model_name(), e.dim()),
                },
            );
        }
        Health {
            status: if unhealthy {
                HealthStatus::Unhealthy
            } else if degraded {
                HealthStatus::Degraded
            } else {
                HealthStatus::Healthy
            },
            checks,
        }
    }

    /// The dimension the provider gives, when known without starting it: the started one's;
    /// the bundled model's (the local provider without a model directory of its own); the
    /// configured one. None for a remote provider or another model not started yet: health
    /// then takes the table's own dimension rather than the bundled model's.
    fn known_dim(&self) -> Option<usize> {
        if let Some(e) = self.embed.get() {
            return Some(e.dim());
        }
        let Some(settings) = &self.loader else {
            // Store::new: the bundled model, started on first use.
            return Some(pgai_embed::DIM);
        };
        let e = &settings.embedding;
        match e.provider {
            ProviderKind::Local if e.model_dir.is_none() => Some(pgai_embed::DIM),
            _ => e.dimensions,
        }
    }

    /// Runs `SELECT 1` on a pooled connection.
    pub async fn ping(&self) -> crate::Result<()> {
        self.pool.get().await?.batch_execute("SELECT 1").await?;
        Ok(())
    }
}
