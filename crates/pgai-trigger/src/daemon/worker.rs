//! The worker: claim (stage 3) → embed (stage 4) → write back (stage 5), pipelined.
//!
//! The claim loop takes a batch, hands its texts to the model thread and goes on to claim the
//! next one while the model works; the write loop waits for each batch's vectors and writes
//! them. Claims only take free capacity: a semaphore allows [`BATCHES_IN_FLIGHT`] batches
//! between claim and write, so a slow model or database slows the claims instead of piling up
//! leased rows. Claim and write use separate connections so a write never waits behind a claim.
//!
//! The daemon's own sessions run with `synchronous_commit = off`: losing a claim or a vector
//! write in a server crash only leaves the row pending, and it is embedded again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::breaker::{Breaker, Verdict};
use super::listener::Wake;
use super::model::{EmbedResult, EmbedService};
use crate::config::Config;
use crate::error::Result;
use crate::monitor::{ListenerHealth, LogLimiter, Monitor};
use crate::pg::within;
use crate::queue::{Claim, Claimer, Leases, QueueCounts, RetryPolicy, Writer};

/// Batches claimed but not yet written: one being embedded, one being written.
pub const BATCHES_IN_FLIGHT: usize = 2;
/// How often the queue gauges are sampled from the database.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// A text any working provider embeds: when rows fail across the board, it tells a provider
/// outage (the canary fails too) from rows the provider rejects (the canary passes).
const CANARY: &str = "pgai-trigger provider check";
/// Poll interval while the listener is down or degraded (the fallback must then carry pickup).
const DEGRADED_POLL: Duration = Duration::from_millis(250);

/// A claimed batch whose vectors are being computed.
struct InFlight {
    claim: Claim,
    vectors: oneshot::Receiver<EmbedResult>,
    _permit: OwnedSemaphorePermit,
}

/// Everything the worker shares with the rest of the daemon.
#[derive(Clone)]
pub struct Worker {
    pub config: Arc<Config>,
    pub embed: EmbedService,
    /// Signalled by the listener on each notification (and once after each LISTEN).
    pub wake: Arc<Wake>,
    pub monitor: Arc<Monitor>,
}

/// State shared by the claim and write loops of one connection pair.
struct Shared {
    breaker: Mutex<Breaker>,
    /// Tokens of batches claimed and not yet written or given back: their leases are renewed.
    active: Mutex<HashSet<String>>,
}

impl Shared {
    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Worker {
    /// The provider embedded something: close the breaker and clear the paused gauge.
    fn provider_ok(&self, shared: &Shared) {
        shared.breaker().on_success();
        self.monitor.provider_paused(false);
    }

    /// Runs until `shutdown`, reconnecting with backoff. On shutdown, batches already claimed
    /// are finished (written, or given back) before this returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        let mut errors = LogLimiter::new(Duration::from_secs(10));
        let shared = Shared {
            breaker: Mutex::new(Breaker::new(
                Duration::from_secs(1),
                Duration::from_secs(60),
            )),
            active: Mutex::new(HashSet::new()),
        };
        let mut connected_before = false;
        loop {
            match self
                .run_connected(&shutdown, &mut backoff, &shared, &mut connected_before)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    self.monitor.worker_connected(false);
                    self.monitor.record_error(format!("worker: {e}"));
                    if let Some(held) = errors.allow() {
                        tracing::warn!(error = %e, suppressed = held, "worker connection lost; reconnecting");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.monitor.worker_connected(false);
    }

    async fn run_connected(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        shared: &Shared,
        connected_before: &mut bool,
    ) -> Result<()> {
        let cfg = &self.config;
        let app = format!("pgai-trigger {}", cfg.worker_id);
        let (claim_db, _claim_task) =
            within("connect", crate::pg::connect(&cfg.database_url, &app)).await?;
        let (write_db, _write_task) =
            within("connect", crate::pg::connect(&cfg.database_url, &app)).await?;
        let (mut claimer, db) = within("prepare", async {
            for db in [&claim_db, &write_db] {
                db.batch_execute("SET synchronous_commit = off").await?;
            }
            let claimer = Claimer::prepare(&claim_db, &cfg.table, &cfg.worker_id).await?;
            let writer = Writer::prepare(&write_db, &cfg.table, self.embed.model_name()).await?;
            let leases = Leases::prepare(&write_db, &cfg.table).await?;
            Ok((
                claimer,
                WriteSide {
                    client: &write_db,
                    writer,
                    leases,
                },
            ))
        })
        .await?;
        // Batches this daemon claimed on a connection it has since lost are abandoned: give them
        // back now rather than after their lease.
        let released = within(
            "release",
            db.leases.release_owner(db.client, &cfg.worker_id),
        )
        .await?;
        shared
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if released > 0 {
            tracing::info!(
                rows = released,
                "released claims abandoned by a lost connection"
            );
        }
        self.monitor.worker_connected(true);
        if *connected_before {
            self.monitor.reconnected();
            tracing::info!("worker reconnected");
        }
        *connected_before = true;
        backoff.reset();

        let (tx, rx) = mpsc::channel::<InFlight>(BATCHES_IN_FLIGHT);
        let writes_done = CancellationToken::new();
        let claims = self.claim_loop(&claim_db, &mut claimer, tx, shutdown, shared);
        let writes = async {
            let r = self.write_loop(&db, rx, shared).await;
            writes_done.cancel();
            r
        };
        let upkeep = self.upkeep(&db, shared, &writes_done);
        let (c, w, u) = tokio::join!(claims, writes, upkeep);
        c.and(w).and(u)
    }

    async fn claim_loop(
        &self,
        db: &Client,
        claimer: &mut Claimer,
        tx: mpsc::Sender<InFlight>,
        shutdown: &CancellationToken,
        shared: &Shared,
    ) -> Result<()> {
        let cfg = &self.config;
        let lease = cfg.lease.as_secs_f64();
        let capacity = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        while !shutdown.is_cancelled() {
            let pause = shared.breaker().pause_left(Instant::now());
            if let Some(pause) = pause {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let permit = tokio::select! {
                p = capacity.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = shutdown.cancelled() => break,
            };
            let limit = shared.breaker().claim_limit(cfg.batch_size);
            let hinted = self.wake.hints.take_newest(limit);
            let claim = within(
                "claim",
                claimer.claim(db, &hinted, limit, lease, cfg.max_retries),
            )
            .await?;
            if claim.rows.is_empty() {
                drop(permit);
                let poll =
                    if cfg.immediate_trigger && self.wake.health() != ListenerHealth::Listening {
                        cfg.poll_interval.min(DEGRADED_POLL)
                    } else {
                        cfg.poll_interval
                    };
                tokio::select! {
                    _ = self.wake.notify.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            shared
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(claim.token.clone());
            let texts = claim.rows.iter().map(|r| r.content.clone()).collect();
            let vectors = self.embed.submit(texts).await;
            if tx
                .send(InFlight {
                    claim,
                    vectors,
                    _permit: permit,
                })
                .await
                .is_err()
            {
                // The write loop failed; its error is the one to report.
                return Ok(());
            }
        }
        Ok(())
    }

    async fn write_loop(
        &self,
        db: &WriteSide<'_>,
        mut rx: mpsc::Receiver<InFlight>,
        shared: &Shared,
    ) -> Result<()> {
        while let Some(batch) = rx.recv().await {
            let result = batch.vectors.await.unwrap_or_else(|_| {
                Err(pgai_embed::EmbedError::Inference(
                    "the model thread dropped the batch".into(),
                ))
            });
            let claim = &batch.claim;
            match result {
                Ok((vectors, _took)) => {
                    self.write(db, claim, vectors).await?;
                    self.provider_ok(shared);
                }
                Err(e) if claim.rows.len() > 1 => {
                    // One bad row must not cost the others an attempt: embed them one by one.
                    tracing::debug!(error = %e, "batch failed; retrying its rows one by one");
                    self.write_one_by_one(db, claim, shared).await?;
                }
                Err(e) => {
                    self.failed(db, claim, &claim.rows[0].id, &e.to_string(), shared)
                        .await?;
                }
            }
            shared
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&claim.token);
        }
        Ok(())
    }

    async fn write(&self, db: &WriteSide<'_>, claim: &Claim, vectors: Vec<Vec<f32>>) -> Result<()> {
        let written = within(
            "vector write",
            db.writer.complete(db.client, claim, vectors),
        )
        .await?;
        self.monitor
            .batch_written(claim.rows.len(), written.iter().map(|w| w.latency_secs));
        Ok(())
    }

    async fn write_one_by_one(
        &self,
        db: &WriteSide<'_>,
        claim: &Claim,
        shared: &Shared,
    ) -> Result<()> {
        for (i, row) in claim.rows.iter().enumerate() {
            let part = Claim {
                token: claim.token.clone(),
                rows: vec![row.clone()],
            };
            match self.embed.embed(vec![row.content.clone()]).await {
                Ok(v) => {
                    self.write(db, &part, v).await?;
                    self.provider_ok(shared);
                }
                Err(e) => {
                    if self
                        .failed(db, &part, &row.id, &e.to_string(), shared)
                        .await?
                    {
                        // The provider is down: give the rest back untouched.
                        let rest: Vec<&str> =
                            claim.rows[i + 1..].iter().map(|r| r.id.as_str()).collect();
                        if !rest.is_empty() {
                            let n = within("release", db.leases.release(db.client, claim, &rest))
                                .await?;
                            self.monitor.rows_released(n);
                        }
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Records a row's failure: an attempt on the row, or, when the provider looks down, the
    /// row given back and the pipeline paused. Returns true in the second case.
    async fn failed(
        &self,
        db: &WriteSide<'_>,
        claim: &Claim,
        id: &str,
        error: &str,
        shared: &Shared,
    ) -> Result<bool> {
        let cfg = &self.config;
        let error: String = error.replace('\n', " ").chars().take(1000).collect();
        self.monitor.record_error(error.clone());
        let mut verdict = shared.breaker().on_failure(id, Instant::now());
        if matches!(verdict, Verdict::ProviderDown(_))
            && self.embed.embed(vec![CANARY.to_string()]).await.is_ok()
        {
            // The provider embeds a known-good text: it is up, and these rows are the problem.
            self.provider_ok(shared);
            verdict = Verdict::CountAttempt;
        }
        match verdict {
            Verdict::CountAttempt => {
                tracing::warn!(row = id, error = %error, "embedding failed; the row will be retried with backoff");
                let n = within(
                    "failure record",
                    db.writer.fail(
                        db.client,
                        claim,
                        &[id],
                        &error,
                        &RetryPolicy {
                            max_retries: cfg.max_retries,
                            base: cfg.retry_interval,
                            cap: cfg.retry_cap,
                        },
                    ),
                )
                .await?;
                self.monitor.attempts_failed(n);
                Ok(false)
            }
            Verdict::ProviderDown(pause) => {
                tracing::warn!(
                    error = %error,
                    pause_ms = pause.as_millis() as u64,
                    "embedding fails across rows: pausing the pipeline, rows keep their attempts"
                );
                self.monitor.provider_paused(true);
                let n = within("release", db.leases.release(db.client, claim, &[id])).await?;
                self.monitor.rows_released(n);
                Ok(true)
            }
        }
    }

    /// Renews the leases of batches in flight and samples the queue gauges, until the write
    /// loop ends.
    async fn upkeep(
        &self,
        db: &WriteSide<'_>,
        shared: &Shared,
        done: &CancellationToken,
    ) -> Result<()> {
        let cfg = &self.config;
        let renew_every = cfg.lease / 3;
        let mut renew_tick = tokio::time::interval(renew_every);
        let mut sample_tick = tokio::time::interval(SAMPLE_EVERY);
        renew_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = done.cancelled() => return Ok(()),
                _ = renew_tick.tick() => {
                    let tokens: Vec<String> =
                        shared.active.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
                    if !tokens.is_empty() {
                        let n = within("lease renewal", db.leases.renew(db.client, &tokens, cfg.lease.as_secs_f64())).await?;
                        self.monitor.leases_renewed(n);
                    }
                }
                _ = sample_tick.tick() => {
                    let (counts, usage) = within("queue sample", async {
                        let counts = QueueCounts::read_queued(db.client, &cfg.table).await?;
                        let usage: f64 = db.client
                            .query_one("SELECT pg_notification_queue_usage()", &[])
                            .await?
                            .get(0);
                        Ok((counts, usage))
                    })
                    .await?;
                    self.monitor.queue_sampled(&counts, usage);
                }
            }
        }
    }
}

/// The write connection and its prepared statements.
struct WriteSide<'a> {
    client: &'a Client,
    writer: Writer,
    leases: Leases,
}
