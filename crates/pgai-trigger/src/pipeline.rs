//! The worker: claim (stage 3) → embed (stage 4) → write back (stage 5), pipelined.
//!
//! The claim loop takes a batch, hands its texts to the model thread and goes on to claim the
//! next one while the model works; the write loop waits for each batch's vectors and writes
//! them. A bounded channel between the two holds at most one batch, so at most three batches
//! are claimed at once (writing, embedding, queued) and a slow database slows the claims.
//! Claim and write use separate connections so a write never waits behind a claim.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::claim::{Claim, Claimer};
use crate::config::Config;
use crate::embedder::{EmbedResult, EmbedService};
use crate::error::Result;
use crate::monitor::{LogLimiter, Monitor};
use crate::writeback::Writer;

/// A claimed batch whose vectors are being computed.
struct InFlight {
    claim: Claim,
    vectors: oneshot::Receiver<EmbedResult>,
}

/// Everything the worker shares with the rest of the daemon.
#[derive(Clone)]
pub struct Worker {
    pub config: Arc<Config>,
    pub embed: EmbedService,
    /// Signalled by the listener on each notification (and once after each LISTEN).
    pub wake: Arc<Notify>,
    pub monitor: Arc<Monitor>,
}

impl Worker {
    /// Runs until `shutdown`, reconnecting with backoff. On shutdown, batches already claimed
    /// are finished (written or released) before this returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        let mut errors = LogLimiter::new(Duration::from_secs(10));
        loop {
            match self.run_connected(&shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    self.monitor.worker_connected.store(false, Relaxed);
                    self.monitor.reconnects.fetch_add(1, Relaxed);
                    self.monitor.record_error(format!("worker: {e}"));
                    if let Some(held) = errors.allow() {
                        tracing::warn!(error = %e, suppressed = held, "worker connection lost; reconnecting");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn run_connected(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> Result<()> {
        let cfg = &self.config;
        let app = format!("pgai-trigger {}", cfg.worker_id);
        let (claim_db, _claim_task) = crate::db::connect(&cfg.database_url, &app).await?;
        let (write_db, _write_task) = crate::db::connect(&cfg.database_url, &app).await?;
        let mut claimer = Claimer::prepare(&claim_db, &cfg.table, &cfg.worker_id).await?;
        let writer = Writer::prepare(&write_db, &cfg.table, self.embed.model_name()).await?;
        // Batches this daemon claimed on a connection it has since lost are abandoned: give them
        // back now rather than after their lease.
        let released = claimer.release_own(&claim_db).await?;
        if released > 0 {
            tracing::info!(rows = released, "released claims abandoned by a lost connection");
        }
        self.monitor.worker_connected.store(true, Relaxed);
        backoff.reset();

        let (tx, rx) = mpsc::channel::<InFlight>(1);
        let claims = self.claim_loop(&claim_db, &mut claimer, tx, shutdown);
        let writes = self.write_loop(&write_db, &writer, rx);
        let (c, w) = tokio::join!(claims, writes);
        c.and(w)
    }

    async fn claim_loop(
        &self,
        db: &Client,
        claimer: &mut Claimer,
        tx: mpsc::Sender<InFlight>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let cfg = &self.config;
        let lease = cfg.lease.as_secs_f64();
        while !shutdown.is_cancelled() {
            let claim = claimer.claim(db, cfg.batch_size, lease).await?;
            if claim.rows.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(cfg.poll_interval) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            let texts = claim.rows.iter().map(|r| r.content.clone()).collect();
            let vectors = self.embed.submit(texts).await;
            if tx.send(InFlight { claim, vectors }).await.is_err() {
                // The write loop failed; its error is the one to report.
                return Ok(());
            }
        }
        Ok(())
    }

    async fn write_loop(&self, db: &Client, writer: &Writer, mut rx: mpsc::Receiver<InFlight>) -> Result<()> {
        while let Some(batch) = rx.recv().await {
            let result = batch
                .vectors
                .await
                .unwrap_or_else(|_| Err(pgai_embed::EmbedError::Inference("the model thread dropped the batch".into())));
            match result {
                Ok((vectors, _took)) => self.write(db, writer, &batch.claim, vectors).await?,
                Err(e) if batch.claim.rows.len() > 1 => {
                    // One bad row must not cost the others an attempt: embed them one by one.
                    tracing::debug!(error = %e, "batch failed; retrying its rows one by one");
                    self.write_one_by_one(db, writer, &batch.claim).await?;
                }
                Err(e) => self.fail(db, writer, &batch.claim, &[&batch.claim.rows[0].id], &e.to_string()).await?,
            }
        }
        Ok(())
    }

    async fn write(&self, db: &Client, writer: &Writer, claim: &Claim, vectors: Vec<Vec<f32>>) -> Result<()> {
        let written = writer.complete(db, claim, vectors).await?;
        let m = &self.monitor;
        m.batches.fetch_add(1, Relaxed);
        m.processed.fetch_add(written.len() as u64, Relaxed);
        m.superseded.fetch_add((claim.rows.len() - written.len()) as u64, Relaxed);
        for w in &written {
            m.record_latency(w.latency_secs);
        }
        Ok(())
    }

    async fn write_one_by_one(&self, db: &Client, writer: &Writer, claim: &Claim) -> Result<()> {
        let mut ok = Vec::new();
        let mut vectors = Vec::new();
        for row in &claim.rows {
            match self.embed.embed(vec![row.content.clone()]).await {
                Ok(mut v) => {
                    ok.push(row.clone());
                    vectors.push(v.remove(0));
                }
                Err(e) => self.fail(db, writer, claim, &[&row.id], &e.to_string()).await?,
            }
        }
        if !ok.is_empty() {
            let part = Claim { token: claim.token.clone(), rows: ok };
            self.write(db, writer, &part, vectors).await?;
        }
        Ok(())
    }

    async fn fail(&self, db: &Client, writer: &Writer, claim: &Claim, ids: &[&str], error: &str) -> Result<()> {
        let cfg = &self.config;
        let error: String = error.replace('\n', " ").chars().take(1000).collect();
        tracing::warn!(rows = ids.len(), error = %error, "embedding failed; will retry with backoff");
        let n = writer
            .fail(
                db,
                claim,
                ids,
                &error,
                cfg.max_retries,
                cfg.retry_interval.as_secs_f64(),
                cfg.retry_cap.as_secs_f64(),
            )
            .await?;
        self.monitor.failed_attempts.fetch_add(n, Relaxed);
        self.monitor.record_error(error);
        Ok(())
    }
}
