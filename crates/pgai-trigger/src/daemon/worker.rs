//! The worker: claim (stage 3) → embed (stage 4) → write back (stage 5), pipelined.
//!
//! The claim loop takes a batch, hands its texts to the model thread and goes on to claim the
//! next one while the model works; a write loop writes each batch when its vectors come back.
//! Claims only take free capacity: a semaphore allows [`BATCHES_IN_FLIGHT`] batches between
//! claim and write, so a slow model or database slows the claims instead of piling up leased
//! rows. Claim and write use separate connections so a write never waits behind a claim.
//!
//! Fresh rows do not queue behind a backlog. Rows that notifications just named (at most
//! [`FRESH_CLAIM`], the newest, named within [`FRESH_FOR`]) are claimed by id apart from the
//! backlog, with a slot of their own ([`FRESH_IN_FLIGHT`]), and go to the model's fresh lane,
//! which the model thread serves between the backlog's calls. The backlog (a burst, a
//! backfill, rows whose notification was missed) is claimed oldest first.
//!
//! The daemon's own sessions run with `synchronous_commit = off`: losing a claim or a vector
//! write in a server crash only leaves the row pending, and it is embedded again.
//!
//! One row never stops the pipeline. An error PostgreSQL raises because of a row (a user's
//! trigger or constraint refuses the write, a value it will not store) costs only that row an
//! attempt: the batch is written again row by row, the refused row gets a failed attempt with
//! the reason in `last_error`, the others their vectors. A row no UPDATE can touch at all (so
//! not even its failure can be recorded) is left out of this daemon's claims for
//! [`QUARANTINE`] and reported (`pgai_rows_unwritable`, the log). Only a real connection
//! failure reconnects.

use std::collections::{HashMap, HashSet};
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
use crate::queue::{
    Claim, ClaimedRow, Claimer, Embedded, Leases, QueueCounts, RetryPolicy, Table, Writer,
};

/// Backlog batches claimed but not yet written: one being embedded, one being written.
pub const BATCHES_IN_FLIGHT: usize = 2;
/// Fresh batches (rows notifications just named) claimed but not yet written, besides the
/// backlog's: a fresh claim never waits for a backlog batch to finish.
pub const FRESH_IN_FLIGHT: usize = 1;
/// Rows a fresh claim takes at most: the newest named. A single insert arriving during a burst
/// waits for the model call in progress (and at a burst's very start, one of its rows), not for
/// a batch of the burst.
pub const FRESH_CLAIM: usize = 1;
/// A notification older than this when a fresh claim could take it is no longer fresh: its
/// row goes with the backlog (claimed by age). Past the first moments of a burst its own
/// notifications are that old, so fresh claims carry only what arrived since.
pub const FRESH_FOR: Duration = Duration::from_millis(250);
/// How often the queue gauges are sampled from the database.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// A text any working provider embeds: when rows fail across the board, it tells a provider
/// outage (the canary fails too) from rows the provider rejects (the canary passes).
const CANARY: &str = "pgai-trigger provider check";
/// Poll interval while the listener is down or degraded (the fallback must then carry pickup).
const DEGRADED_POLL: Duration = Duration::from_millis(250);
/// How long a row that cannot be updated at all is left out of this daemon's claims.
pub const QUARANTINE: Duration = Duration::from_secs(600);
/// Longest error text kept on a row.
const MAX_ERROR_CHARS: usize = 1000;

/// A claimed batch whose vectors are being computed.
struct InFlight {
    /// The rows with a text, in the order of `texts`.
    claim: Claim,
    /// What is embedded for each row: its text, or its chunks.
    texts: Vec<Vec<String>>,
    /// Rows of the same claim that cannot be embedded (a NULL content, a text the chunker
    /// refused), each with its reason: they fail at once.
    unusable: Vec<(ClaimedRow, String)>,
    /// The vectors of `texts`, flattened in order.
    vectors: oneshot::Receiver<EmbedResult>,
    _permit: OwnedSemaphorePermit,
}

/// Why a row failed, as recorded on it.
struct RowFailure {
    message: String,
    /// Retrying cannot help (the provider refused the text for good): the row fails now.
    permanent: bool,
}

impl RowFailure {
    fn new(message: impl std::fmt::Display, permanent: bool) -> RowFailure {
        // One line, bounded, and storable: PostgreSQL text cannot hold a NUL byte.
        let message: String = crate::error::one_line(&message.to_string())
            .replace('\0', "\\0")
            .chars()
            .take(MAX_ERROR_CHARS)
            .collect();
        RowFailure { message, permanent }
    }

    fn embedding(e: &pgai_embed::EmbedError) -> RowFailure {
        RowFailure::new(e, e.is_permanent())
    }
}

/// Everything the worker shares with the rest of the daemon.
#[derive(Clone)]
pub struct Worker {
    pub config: Arc<Config>,
    /// The queue this worker serves (the original table, or a vectorizer's).
    pub queue: Arc<Table>,
    /// The tokenizer that cuts chunked texts, loaded on first use.
    pub chunker: Arc<ChunkerSlot>,
    pub embed: EmbedService,
    /// Signalled by the listener on each notification (and once after each LISTEN); carries
    /// the listener's health.
    pub wake: Arc<Wake>,
    pub monitor: Arc<Monitor>,
    /// The worker of the configured table: its connection state is the daemon's readiness.
    /// (A vectorizer's worker reports its troubles in the log and the vectorizer's status.)
    pub primary: bool,
}

/// State shared by the claim and write loops, kept across reconnects.
struct Shared {
    breaker: Mutex<Breaker>,
    /// Tokens of batches claimed and not yet written or given back: their leases are renewed.
    active: Mutex<HashSet<String>>,
    /// Rows no UPDATE can touch, and until when they are left out of claims.
    quarantine: Mutex<HashMap<String, Instant>>,
}

impl Shared {
    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ids still quarantined at `now` (expired entries are dropped).
    fn quarantined(&self, now: Instant) -> Vec<String> {
        let mut q = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
        q.retain(|_, until| *until > now);
        q.keys().cloned().collect()
    }
}

impl Worker {
    /// A write-back of `claimed` rows wrote these.
    fn written(&self, claimed: usize, written: &[crate::queue::Written]) {
        let latencies: Vec<Option<f64>> = written.iter().map(|w| w.latency_secs).collect();
        self.monitor
            .batch_written(claimed, latencies.iter().copied());
        self.monitor
            .vectorizer_written(self.queue.name(), &latencies);
    }

    fn connected(&self, up: bool) {
        if self.primary {
            self.monitor.worker_connected(up);
        }
    }

    /// The provider embedded something: close the breaker and clear the paused gauge.
    fn provider_ok(&self, shared: &Shared) {
        shared.breaker().on_success();
        self.monitor.provider_paused(false);
    }

    /// Leaves a row that PostgreSQL will not let us update out of our claims for a while.
    fn quarantine(&self, shared: &Shared, id: &str, error: &str) {
        let mut q = shared.quarantine.lock().unwrap_or_else(|e| e.into_inner());
        q.insert(id.to_string(), Instant::now() + QUARANTINE);
        self.monitor.rows_unwritable(q.len());
        drop(q);
        self.monitor
            .record_error(format!("row {id:?} cannot be updated: {error}"));
        tracing::error!(
            row = id,
            error = %error,
            skip_secs = QUARANTINE.as_secs(),
            "PostgreSQL refuses every update of this row (a trigger or constraint of the table?); \
             it stays pending and is skipped meanwhile"
        );
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
            quarantine: Mutex::new(HashMap::new()),
        };
        let mut connected_before = false;
        loop {
            match self
                .run_connected(&shutdown, &mut backoff, &shared, &mut connected_before)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    self.connected(false);
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
        self.connected(false);
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
        let (mut claimer, db, fresh_db) = within("prepare", async {
            for db in [&claim_db, &write_db] {
                db.batch_execute("SET synchronous_commit = off").await?;
            }
            let claimer = Claimer::prepare(&claim_db, &self.queue, &cfg.worker_id).await?;
            let side = |client| async move {
                Ok::<_, crate::error::Error>(WriteSide {
                    client,
                    writer: Writer::prepare(client, &self.queue, self.embed.model_name()).await?,
                    leases: Leases::prepare(client, &self.queue).await?,
                })
            };
            // Fresh batches are written on the claim connection: a fresh write never waits
            // behind a backlog batch's write (a few ms of HNSW inserts per row).
            Ok((claimer, side(&write_db).await?, side(&claim_db).await?))
        })
        .await?;
        // Batches this daemon claimed on a connection it has since lost are abandoned: give them
        // back now rather than after their lease.
        match within(
            "release",
            db.leases.release_owner(db.client, &cfg.worker_id),
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "released claims abandoned by a lost connection"),
            // A row of ours refuses the update: its lease expires instead.
            Err(e) if e.is_row_level() => {
                tracing::warn!(error = %e, "could not release abandoned claims; their leases will expire")
            }
            Err(e) => return Err(e),
        }
        shared.active().clear();
        self.connected(true);
        if *connected_before {
            self.monitor.reconnected();
            tracing::info!("worker reconnected");
        }
        *connected_before = true;
        backoff.reset();

        let (tx, rx) = mpsc::channel::<InFlight>(BATCHES_IN_FLIGHT);
        let (fresh_tx, fresh_rx) = mpsc::channel::<InFlight>(FRESH_IN_FLIGHT);
        let writes_done = CancellationToken::new();
        let claims = self.claim_loop(&claim_db, &mut claimer, [tx, fresh_tx], shutdown, shared);
        let writes = async {
            let r = tokio::try_join!(
                self.write_loop(&db, rx, shared),
                self.write_loop(&fresh_db, fresh_rx, shared)
            );
            writes_done.cancel();
            r.map(|_| ())
        };
        let work = async {
            let (c, w) = tokio::join!(claims, writes);
            c.and(w)
        };
        let upkeep = self.upkeep(&db, shared, &writes_done);
        tokio::pin!(work, upkeep);
        // Lease renewal must never stop quietly while claims go on: an upkeep failure ends the
        // connection's work at once (abandoned claims are released on reconnect).
        tokio::select! {
            r = &mut work => r.and(upkeep.await),
            r = &mut upkeep => match r {
                Ok(()) => work.await,
                Err(e) => Err(e),
            },
        }
    }

    async fn claim_loop(
        &self,
        db: &Client,
        claimer: &mut Claimer,
        [backlog_tx, fresh_tx]: [mpsc::Sender<InFlight>; 2],
        shutdown: &CancellationToken,
        shared: &Shared,
    ) -> Result<()> {
        let cfg = &self.config;
        let lease = cfg.lease.as_secs_f64();
        let backlog = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        let fresh_slots = Arc::new(Semaphore::new(FRESH_IN_FLIGHT));
        // Since when a backlog claim found nothing due: none until a wake-up without hints, or
        // the poll interval after it (a deadline, so a steady stream of fresh rows cannot
        // postpone forever the rows no notification names, such as retries whose backoff ends).
        let mut idle_since: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            let pause = shared.breaker().pause_left(Instant::now());
            if let Some(pause) = pause {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            // Hints that waited too long are no longer fresh: their rows go with the backlog.
            if self.wake.hints.prune(FRESH_FOR, Instant::now()) > 0 {
                idle_since = None;
            }
            let fresh_waiting = !self.wake.hints.is_empty();
            let poll = if cfg.immediate_trigger && self.wake.health() != ListenerHealth::Listening {
                cfg.poll_interval.min(DEGRADED_POLL)
            } else {
                cfg.poll_interval
            };
            let (permit, fresh) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                p = fresh_slots.clone().acquire_owned(), if fresh_waiting => {
                    (p.expect("semaphore never closed"), true)
                }
                p = backlog.clone().acquire_owned(), if idle_since.is_none() => {
                    (p.expect("semaphore never closed"), false)
                }
                _ = self.wake.notify.notified() => {
                    // A wake-up without hints (a reconnect, a new queue) is for the backlog;
                    // hinted rows are the fresh claims' work.
                    if self.wake.hints.is_empty() {
                        idle_since = None;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(
                    idle_since.unwrap_or_else(Instant::now) + poll,
                )), if idle_since.is_some() => {
                    idle_since = None;
                    continue;
                }
            };
            let limit = shared.breaker().claim_limit(cfg.batch_size);
            claimer.set_excluded(shared.quarantined(Instant::now()));
            let mut claim = if fresh {
                let hinted = self.wake.hints.take_newest(limit.min(FRESH_CLAIM));
                // More named than one fresh claim takes: a burst, which the backlog's claims
                // carry (by age) while fresh claims keep taking the newest.
                if !self.wake.hints.is_empty() {
                    idle_since = None;
                }
                within(
                    "claim",
                    claimer.claim_hinted(db, &hinted, lease, cfg.max_retries),
                )
                .await?
            } else {
                within(
                    "claim",
                    claimer.claim(db, &[], limit, lease, cfg.max_retries),
                )
                .await?
            };
            for (id, error) in std::mem::take(&mut claim.refused) {
                self.quarantine(shared, &id, &error);
            }
            if claim.rows.is_empty() {
                if !fresh {
                    idle_since = Some(Instant::now());
                }
                continue;
            }
            shared.active().insert(claim.token.clone());
            let (rows, texts, unusable) = self.texts_of(std::mem::take(&mut claim.rows)).await;
            claim.rows = rows;
            let flat: Vec<String> = texts.concat();
            let vectors = if flat.is_empty() {
                let (reply, rx) = oneshot::channel();
                let _ = reply.send(Ok((Vec::new(), Duration::ZERO)));
                rx
            } else if fresh {
                // Rows a notification just named go before any backlog's batch.
                self.embed.submit_fresh(flat).await
            } else {
                self.embed.submit(flat).await
            };
            let tx = if fresh { &fresh_tx } else { &backlog_tx };
            if tx
                .send(InFlight {
                    claim,
                    texts,
                    unusable,
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
            let claim = &batch.claim;
            for (row, reason) in &batch.unusable {
                let failure = RowFailure::new(reason, true);
                self.record_failure(db, claim, &row.id, &failure, shared)
                    .await?;
            }
            let result = batch.vectors.await.unwrap_or_else(|_| {
                Err(pgai_embed::EmbedError::Inference(
                    "the model thread dropped the batch".into(),
                ))
            });
            match result {
                _ if claim.rows.is_empty() => {}
                Ok((vectors, _took)) => {
                    let rows = self.regroup(&batch.texts, vectors);
                    self.write_checked(db, claim, rows, shared).await?;
                    self.provider_ok(shared);
                }
                Err(e) if claim.rows.len() > 1 => {
                    // One bad row must not cost the others an attempt: embed them one by one.
                    tracing::debug!(error = %e, "batch failed; retrying its rows one by one");
                    self.embed_one_by_one(db, claim, &batch.texts, shared)
                        .await?;
                }
                Err(e) => {
                    self.failed(
                        db,
                        claim,
                        &claim.rows[0].id,
                        RowFailure::embedding(&e),
                        shared,
                    )
                    .await?;
                }
            }
            shared.active().remove(&claim.token);
        }
        Ok(())
    }

    /// Writes the vectors of `claim`'s rows, after failing the rows whose vector has NaN or
    /// infinite values (PostgreSQL would refuse them; the provider is at fault, for that row).
    async fn write_checked(
        &self,
        db: &WriteSide<'_>,
        claim: &Claim,
        rows: Vec<Embedded>,
        shared: &Shared,
    ) -> Result<()> {
        if rows.iter().all(Embedded::is_finite) {
            return self.write(db, claim, rows, shared).await;
        }
        let mut good = claim.with_rows(Vec::new());
        let mut good_vectors = Vec::new();
        for (row, v) in claim.rows.iter().zip(rows) {
            if v.is_finite() {
                good.rows.push(row.clone());
                good_vectors.push(v);
            } else {
                let failure = RowFailure::new(
                    "the embedding provider returned a vector with NaN or infinite values",
                    false,
                );
                self.record_failure(db, claim, &row.id, &failure, shared)
                    .await?;
            }
        }
        if good.rows.is_empty() {
            return Ok(());
        }
        self.write(db, &good, good_vectors, shared).await
    }

    /// The guarded write of a batch. When PostgreSQL refuses it because of a row, each row is
    /// written alone and the refused ones get a failed attempt.
    async fn write(
        &self,
        db: &WriteSide<'_>,
        claim: &Claim,
        vectors: Vec<Embedded>,
        shared: &Shared,
    ) -> Result<()> {
        let alone = claim.rows.len() == 1;
        let retry = if alone { Vec::new() } else { vectors.clone() };
        let e = match within(
            "vector write",
            db.writer.complete(db.client, claim, vectors),
        )
        .await
        {
            Ok(written) => {
                self.written(claim.rows.len(), &written);
                return Ok(());
            }
            Err(e) if e.is_row_level() => e,
            Err(e) => return Err(e),
        };
        if alone {
            let failure = RowFailure::new(format!("writing the vector was refused: {e}"), false);
            return self
                .record_failure(db, claim, &claim.rows[0].id, &failure, shared)
                .await;
        }
        tracing::debug!(error = %e, "a batch write was refused; writing its rows one by one");
        for (row, v) in claim.rows.iter().zip(retry) {
            let part = claim.with_rows(vec![row.clone()]);
            match within(
                "vector write",
                db.writer.complete(db.client, &part, vec![v]),
            )
            .await
            {
                Ok(written) => self.written(1, &written),
                Err(e) if e.is_row_level() => {
                    let failure =
                        RowFailure::new(format!("writing the vector was refused: {e}"), false);
                    self.record_failure(db, claim, &row.id, &failure, shared)
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn embed_one_by_one(
        &self,
        db: &WriteSide<'_>,
        claim: &Claim,
        texts: &[Vec<String>],
        shared: &Shared,
    ) -> Result<()> {
        for (i, (row, texts)) in claim.rows.iter().zip(texts).enumerate() {
            let part = claim.with_rows(vec![row.clone()]);
            match self.embed.embed(texts.clone()).await {
                Ok(v) => {
                    let rows = self.regroup(std::slice::from_ref(texts), v);
                    self.write_checked(db, &part, rows, shared).await?;
                    self.provider_ok(shared);
                }
                Err(e) => {
                    if self
                        .failed(db, &part, &row.id, RowFailure::embedding(&e), shared)
                        .await?
                    {
                        // The provider is down: give the rest back untouched.
                        let rest: Vec<&str> =
                            claim.rows[i + 1..].iter().map(|r| r.id.as_str()).collect();
                        if !rest.is_empty() {
                            self.release(db, claim, &rest).await?;
                        }
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// What to embed for each claimed row: its text, or its chunks. Rows without a text (a NULL
    /// content) or whose text the chunker refuses come back apart, with the reason.
    async fn texts_of(
        &self,
        rows: Vec<ClaimedRow>,
    ) -> (Vec<ClaimedRow>, Vec<Vec<String>>, Vec<(ClaimedRow, String)>) {
        const NO_TEXT: &str = "the row's content is NULL: there is no text to embed";
        let (with_text, mut unusable): (Vec<ClaimedRow>, Vec<ClaimedRow>) =
            rows.into_iter().partition(|r| r.content.is_some());
        let mut unusable: Vec<(ClaimedRow, String)> = unusable
            .drain(..)
            .map(|r| (r, NO_TEXT.to_string()))
            .collect();
        let Some((tokens, overlap)) = self.queue.chunking() else {
            let texts = with_text
                .iter()
                .map(|r| vec![r.content.clone().unwrap_or_default()])
                .collect();
            return (with_text, texts, unusable);
        };
        // Tokenizing is CPU work: off the async threads.
        let slot = self.chunker.clone();
        let split = tokio::task::spawn_blocking(move || {
            let chunked = slot.get().map(|chunker| {
                let opts =
                    pgai_embed::ChunkOptions::new(tokens, overlap).map_err(|e| e.to_string())?;
                Ok::<_, String>(
                    with_text
                        .iter()
                        .map(|r| {
                            chunker
                                .split(r.content.as_deref().unwrap_or_default(), &opts)
                                .map(|cs| cs.into_iter().map(|c| c.text).collect::<Vec<_>>())
                                .map_err(|e| format!("the text could not be cut into chunks: {e}"))
                        })
                        .collect::<Vec<_>>(),
                )
            });
            (with_text, chunked)
        })
        .await;
        let (with_text, chunked) = match split {
            Ok(v) => v,
            Err(e) => {
                // The rows stay claimed by nobody's batch: their lease expires and they are
                // taken again; the panic is reported.
                self.monitor.record_error(format!("chunking panicked: {e}"));
                return (Vec::new(), Vec::new(), unusable);
            }
        };
        let mut rows = Vec::new();
        let mut texts = Vec::new();
        match chunked {
            Ok(Ok(per_row)) => {
                for (row, r) in with_text.into_iter().zip(per_row) {
                    match r {
                        Ok(chunks) => {
                            rows.push(row);
                            texts.push(chunks);
                        }
                        Err(e) => unusable.push((row, e)),
                    }
                }
            }
            Ok(Err(e)) | Err(e) => {
                let reason = format!("chunking is not possible: {e}");
                unusable.extend(with_text.into_iter().map(|r| (r, reason.clone())));
            }
        }
        (rows, texts, unusable)
    }

    /// Cuts the flat vectors of a batch back into one [`Embedded`] per row.
    fn regroup(&self, texts: &[Vec<String>], vectors: Vec<Vec<f32>>) -> Vec<Embedded> {
        let keep_texts = self.queue.writes_chunks();
        let mut vectors = vectors.into_iter();
        texts
            .iter()
            .map(|t| Embedded {
                chunks: if keep_texts { t.clone() } else { Vec::new() },
                vectors: vectors.by_ref().take(t.len()).collect(),
            })
            .collect()
    }

    /// An embedding failed for a row: an attempt on the row, or, when the provider looks down,
    /// the row given back and the pipeline paused. Returns true in the second case.
    async fn failed(
        &self,
        db: &WriteSide<'_>,
        claim: &Claim,
        id: &str,
        failure: RowFailure,
        shared: &Shared,
    ) -> Result<bool> {
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
                self.record_failure(db, claim, id, &failure, shared).await?;
                Ok(false)
            }
            Verdict::ProviderDown(pause) => {
                self.monitor.record_error(failure.message.clone());
                tracing::warn!(
                    error = %failure.message,
                    pause_ms = pause.as_millis() as u64,
                    "embedding fails across rows: pausing the pipeline, rows keep their attempts"
                );
                self.monitor.provider_paused(true);
                self.release(db, claim, &[id]).await?;
                Ok(true)
            }
        }
    }

    /// Records a failed attempt on row `id` (or its final failure). When PostgreSQL refuses
    /// even that update, the row is quarantined instead.
    async fn record_failure(
        &self,
        db: &WriteSide<'_>,
        claim: &Claim,
        id: &str,
        failure: &RowFailure,
        shared: &Shared,
    ) -> Result<()> {
        let cfg = &self.config;
        self.monitor.record_error(failure.message.clone());
        tracing::warn!(
            row = id,
            error = %failure.message,
            permanent = failure.permanent,
            "embedding failed; the row will be retried with backoff unless out of attempts"
        );
        let retry = RetryPolicy {
            max_retries: cfg.max_retries,
            base: cfg.retry_interval,
            cap: cfg.retry_cap,
        };
        let recorded = within(
            "failure record",
            db.writer.fail(
                db.client,
                claim,
                &[id],
                &failure.message,
                &retry,
                failure.permanent,
            ),
        )
        .await;
        match recorded {
            Ok(n) => {
                self.monitor.attempts_failed(n);
                self.monitor
                    .vectorizer_attempts_failed(self.queue.name(), n);
            }
            Err(e) if e.is_row_level() => self.quarantine(shared, id, &e.to_string()),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Gives rows of a claim back without an attempt.
    async fn release(&self, db: &WriteSide<'_>, claim: &Claim, ids: &[&str]) -> Result<()> {
        match within("release", db.leases.release(db.client, claim, ids)).await {
            Ok(n) => self.monitor.rows_released(n),
            // A row refuses the update: its lease expires instead.
            Err(e) if e.is_row_level() => {
                tracing::warn!(error = %e, "could not give rows back; their leases will expire")
            }
            Err(e) => return Err(e),
        }
        Ok(())
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
                    let tokens: Vec<String> = shared.active().iter().cloned().collect();
                    if !tokens.is_empty() {
                        match within("lease renewal", db.leases.renew(db.client, &tokens, cfg.lease.as_secs_f64())).await {
                            Ok(n) => self.monitor.leases_renewed(n),
                            // A row refuses the update (a trigger of the user's): the others'
                            // leases must still be renewed, so renew them one claim at a time.
                            Err(e) if e.is_row_level() => self.renew_each(db, &tokens).await?,
                            Err(e) => return Err(e),
                        }
                    }
                }
                _ = sample_tick.tick() => {
                    let (counts, usage) = within("queue sample", async {
                        let counts = QueueCounts::read_queued(db.client, &self.queue).await?;
                        let usage: f64 = db.client
                            .query_one("SELECT pg_notification_queue_usage()", &[])
                            .await?
                            .get(0);
                        Ok((counts, usage))
                    })
                    .await?;
                    if self.primary {
                        self.monitor.queue_sampled(&counts, usage);
                    }
                    self.monitor.vectorizer_sampled(self.queue.name(), &counts);
                }
            }
        }
    }

    async fn renew_each(&self, db: &WriteSide<'_>, tokens: &[String]) -> Result<()> {
        for token in tokens {
            let one = std::slice::from_ref(token);
            match within(
                "lease renewal",
                db.leases
                    .renew(db.client, one, self.config.lease.as_secs_f64()),
            )
            .await
            {
                Ok(n) => self.monitor.leases_renewed(n),
                Err(e) if e.is_row_level() => {
                    tracing::warn!(error = %e, "a lease could not be renewed; it will expire")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Claim {
    /// The same claim (token) over other rows.
    fn with_rows(&self, rows: Vec<ClaimedRow>) -> Claim {
        Claim {
            token: self.token.clone(),
            rows,
            refused: Vec::new(),
        }
    }
}

/// The write connection and its prepared statements.
struct WriteSide<'a> {
    client: &'a Client,
    writer: Writer,
    leases: Leases,
}

/// The chunker, loaded once per daemon on first use: the tokenizer of the local model (whose
/// window the chunk sizes are counted in), or why it could not be loaded.
pub struct ChunkerSlot {
    cell: std::sync::OnceLock<std::result::Result<pgai_embed::Chunker, String>>,
}

impl ChunkerSlot {
    pub fn new() -> ChunkerSlot {
        ChunkerSlot {
            cell: std::sync::OnceLock::new(),
        }
    }

    /// The chunker (loading it; blocking: call off the async threads).
    fn get(&self) -> std::result::Result<&pgai_embed::Chunker, String> {
        self.cell
            .get_or_init(|| {
                pgai_embed::ModelFiles::locate()
                    .and_then(|files| pgai_embed::Chunker::from_files(&files))
                    .map_err(|e| format!("the tokenizer for chunking could not be loaded: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl Default for ChunkerSlot {
    fn default() -> Self {
        ChunkerSlot::new()
    }
}
