//! Fairness between vectorizers: one daemon serves two vectorizers (a worker each, one model
//! thread between them). How much later does a lone insert into vectorizer B get its vector while
//! vectorizer A backfills a large table?
//!
//! 1. A's table is filled first (no vectorizer yet: no load), B gets its vectorizer, the daemon
//!    starts, and single inserts into B are timed with nothing else to do (idle).
//! 2. A's vectorizer is created on the full table, which queues every row (the backfill). Once
//!    A's first vectors are written, the same single inserts into B are timed again (loaded).
//!    The loaded window ends when B's last vector is written; A must still have a backlog then,
//!    or the window was not all under load (reported, never hidden).
//!
//! Latency is the database's own figure for each B row, `embedded_at - queued_at` in B's queue:
//! `queued_at` is set by the capture trigger inside the insert (clock_timestamp()), `embedded_at`
//! by the daemon's write-back. One clock, no client polling in the measurement. A's throughput
//! in the window counts A's queue rows whose `embedded_at` falls inside it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use tokio_postgres::Client;

use super::child::{Launcher, Stopped};
use super::probe::{Probe, Usage, Watched};
use super::texts::Profile;
use pgai_trigger::vectorizer::{admin, VectorizerSpec};
use pgai_trigger::{percentiles, quote_ident, schema, Percentiles, Table};

/// The backfilling vectorizer's table (and the vectorizer's name).
pub const TABLE_A: &str = "pgai_bench_fair_a";
/// The vectorizer whose single inserts are timed.
pub const TABLE_B: &str = "pgai_bench_fair_b";
/// The daemon's own (in-place) table, idle throughout: `serve` needs one.
pub const TABLE_HOME: &str = "pgai_bench_fair";
/// The goal: B's latency under A's backfill within this many ms of B's idle latency.
pub const TARGET_MS: f64 = 100.0;
/// Inserts into B before the idle run, not measured (connections, statements, first claim).
const WARMUP: usize = 3;
/// Rows per INSERT statement when filling A's table.
const FILL_CHUNK: usize = 10_000;

/// What the fairness phase found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fairness {
    /// Rows of A's table, all queued by its vectorizer's backfill.
    pub backfill_rows: usize,
    /// Single inserts into B per run, and their schedule.
    pub singles: usize,
    pub rate_per_s: f64,
    /// B alone.
    pub idle: FairLatencies,
    /// B while A backfills.
    pub loaded: FairLatencies,
    /// Loaded − idle, ms.
    pub p50_diff_ms: Option<f64>,
    pub p99_diff_ms: Option<f64>,
    pub target_ms: f64,
    /// Whether loaded P99 stayed within `target_ms` of idle P99.
    pub met: Option<bool>,
    pub backfill: Backfill,
    /// Cores used during the loaded window, by whom.
    pub usage: Usage,
}

/// B's latencies in one run (database clock: `embedded_at - queued_at`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FairLatencies {
    pub rows: usize,
    /// Rows with no vector by the deadline.
    pub missing: usize,
    pub db_ms: Percentiles,
    /// Sorted, ms (for the plot).
    pub samples_ms: Vec<f64>,
}

/// A's backfill around the loaded window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Backfill {
    /// Filling A's table (before its vectorizer existed).
    pub fill_s: f64,
    /// `create_vectorizer` on the full table: triggers, queue, every row queued.
    pub create_s: f64,
    /// Vectorizer created → A's first vector written.
    pub first_vector_s: Option<f64>,
    /// The loaded window: B's first loaded insert → B's last vector, database clock.
    pub window_s: f64,
    /// A's rows whose vector was written inside the window, and the rate.
    pub rows_in_window: i64,
    pub rows_per_s: f64,
    pub pending_at_start: i64,
    /// A's rows still without a vector when the window ended (> 0: the whole window was loaded).
    pub pending_at_end: i64,
    pub drained_during_window: bool,
}

/// How the phase runs.
pub struct Setup<'a> {
    pub launcher: &'a Launcher,
    /// The PostgreSQL cluster to watch (the daemon is this phase's own).
    pub watched: Watched,
    pub backfill_rows: usize,
    pub singles: usize,
    pub rate: f64,
}

fn queue_sql(name: &str) -> String {
    format!("pgai.{}", quote_ident(&format!("{name}_queue")))
}

/// Removes what a run (this one, or an interrupted earlier one) left: both vectorizers, the
/// three tables and the daemon's catalog row.
pub async fn clean(db: &Client) -> Result<()> {
    for name in [TABLE_A, TABLE_B] {
        if admin::get(db, name).await?.is_some() {
            admin::drop(db, name, false)
                .await
                .with_context(|| format!("dropping vectorizer {name}"))?;
        }
    }
    for t in [TABLE_A, TABLE_B] {
        db.batch_execute(&format!("DROP TABLE IF EXISTS {} CASCADE", quote_ident(t)))
            .await?;
    }
    super::drop_table(db, &Table::new(TABLE_HOME)?).await
}

/// Runs the phase: returns its findings and the daemon's record. Leaves nothing behind.
pub async fn run(db: &Client, s: &Setup<'_>, pb: &ProgressBar) -> Result<(Fairness, Stopped)> {
    let home = Table::new(TABLE_HOME)?;
    clean(db).await?;
    // The daemon's table, and with it the catalog.
    schema::init(db, &home, pgai_embed::DIM).await?;
    let result = measure(db, s, &home, pb).await;
    // Clean up also after a failure, then report the first error.
    let cleaned = clean(db).await;
    let r = result?;
    cleaned?;
    Ok(r)
}

async fn measure(
    db: &Client,
    s: &Setup<'_>,
    home: &Table,
    pb: &ProgressBar,
) -> Result<(Fairness, Stopped)> {
    let (a, b) = (quote_ident(TABLE_A), quote_ident(TABLE_B));
    db.batch_execute(&format!(
        "CREATE TABLE {a} (id bigint PRIMARY KEY, body text NOT NULL);
         CREATE TABLE {b} (id bigint PRIMARY KEY, body text NOT NULL);"
    ))
    .await?;

    // A's rows, before its vectorizer: filling them is not part of any measurement.
    pb.set_message("filling A");
    let texts_a = Profile::Short.texts(51, s.backfill_rows);
    let fill_started = Instant::now();
    for (n, chunk) in texts_a.chunks(FILL_CHUNK).enumerate() {
        let first = (n * FILL_CHUNK) as i64;
        let ids: Vec<i64> = (first..first + chunk.len() as i64).collect();
        db.execute(
            &format!("INSERT INTO {a} (id, body) SELECT * FROM unnest($1::bigint[], $2::text[])"),
            &[&ids, &chunk],
        )
        .await?;
    }
    let fill_s = fill_started.elapsed().as_secs_f64();
    drop(texts_a);
    let _ = db.batch_execute(&format!("VACUUM ANALYZE {a}")).await;
    let _ = db.batch_execute("CHECKPOINT").await;

    // B: a plain vectorizer over one column; the daemon serves it (and A, once created).
    admin::create(
        db,
        &VectorizerSpec {
            name: TABLE_B.into(),
            table: TABLE_B.into(),
            column: Some("body".into()),
            ..Default::default()
        },
    )
    .await?;
    pb.set_message("starting the daemon");
    let daemon = s.launcher.start("fairness", home.name(), false).await?;
    let watched = Watched {
        daemon: Some(daemon.pid),
        ..s.watched
    };

    let texts_b = Profile::Short.texts(52, WARMUP + 2 * s.singles);
    let qb = queue_sql(TABLE_B);
    let insert = db
        .prepare(&format!("INSERT INTO {b} (id, body) VALUES ($1, $2)"))
        .await?;
    let mut next_id = 0i64;
    let mut singles = |n: usize| {
        let ids: Vec<i64> = (next_id..next_id + n as i64).collect();
        next_id += n as i64;
        ids
    };

    // Warm-up, then idle.
    pb.set_message("B alone");
    let warm = singles(WARMUP);
    paced(db, &insert, &warm, &texts_b, s.rate, pb).await?;
    wait_embedded(db, &qb, &warm, deadline(s.singles, s.rate)).await?;
    let idle_ids = singles(s.singles);
    paced(db, &insert, &idle_ids, &texts_b, s.rate, pb).await?;
    wait_embedded(db, &qb, &idle_ids, deadline(s.singles, s.rate)).await?;
    let idle = latencies(db, &qb, &idle_ids).await?;

    // A's vectorizer on the full table: the backfill starts.
    pb.set_message("creating A (backfill)");
    let created = Instant::now();
    admin::create(
        db,
        &VectorizerSpec {
            name: TABLE_A.into(),
            table: TABLE_A.into(),
            template: Some("{body}".into()),
            chunk_tokens: Some(128),
            ..Default::default()
        },
    )
    .await?;
    let create_s = created.elapsed().as_secs_f64();
    let qa = queue_sql(TABLE_A);
    // The daemon sees the catalog change within a second; wait for A's first vectors.
    let first_vector_s = {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let any: bool = db
                .query_one(
                    &format!("SELECT EXISTS (SELECT 1 FROM {qa} WHERE embedded_at IS NOT NULL)"),
                    &[],
                )
                .await?
                .get(0);
            if any {
                break Some(created.elapsed().as_secs_f64());
            }
            if Instant::now() > until {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let first_vector_s =
        first_vector_s.context("vectorizer A wrote no vector within 120 s of its creation")?;

    // Loaded: the same inserts into B, while A works through its backlog.
    pb.set_message("B while A backfills");
    let pending = |q: String| async move {
        db.query_one(
            &format!("SELECT count(*) FROM {q} WHERE embedded_at IS NULL"),
            &[],
        )
        .await
        .map(|r| r.get::<_, i64>(0))
    };
    let pending_at_start = pending(qa.clone()).await?;
    let window_start: f64 = db
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await?
        .get(0);
    let before = Probe::now(watched);
    let loaded_ids = singles(s.singles);
    paced(db, &insert, &loaded_ids, &texts_b, s.rate, pb).await?;
    wait_embedded(db, &qb, &loaded_ids, deadline(s.singles, s.rate)).await?;
    let pending_at_end = pending(qa.clone()).await?;
    let usage = before.until(&Probe::now(watched));
    let loaded = latencies(db, &qb, &loaded_ids).await?;
    let window_end: f64 = db
        .query_one(
            &format!(
                "SELECT coalesce(max(extract(epoch FROM embedded_at))::float8,
                                 extract(epoch FROM clock_timestamp())::float8)
                   FROM {qb} WHERE \"k_id\" = ANY($1)"
            ),
            &[&loaded_ids],
        )
        .await?
        .get(0);
    let rows_in_window: i64 = db
        .query_one(
            &format!(
                "SELECT count(*) FROM {qa}
                  WHERE embedded_at >= to_timestamp($1) AND embedded_at <= to_timestamp($2)"
            ),
            &[&window_start, &window_end],
        )
        .await?
        .get(0);
    let window_s = (window_end - window_start).max(0.0);

    pb.set_message("stopping the daemon");
    let stopped = daemon.stop().await?;

    let diff = |f: fn(&Percentiles) -> Option<f64>| {
        f(&loaded.db_ms).zip(f(&idle.db_ms)).map(|(l, i)| l - i)
    };
    let p99_diff_ms = diff(|p| p.p99);
    Ok((
        Fairness {
            backfill_rows: s.backfill_rows,
            singles: s.singles,
            rate_per_s: s.rate,
            p50_diff_ms: diff(|p| p.p50),
            p99_diff_ms,
            target_ms: TARGET_MS,
            // A B row that never got its vector misses the target whatever the percentiles say.
            met: if loaded.missing > 0 {
                Some(false)
            } else {
                p99_diff_ms.map(|d| d <= TARGET_MS)
            },
            idle,
            loaded,
            backfill: Backfill {
                fill_s,
                create_s,
                first_vector_s: Some(first_vector_s),
                window_s,
                rows_in_window,
                rows_per_s: if window_s > 0.0 {
                    rows_in_window as f64 / window_s
                } else {
                    0.0
                },
                pending_at_start,
                pending_at_end,
                drained_during_window: pending_at_end == 0,
            },
            usage,
        },
        stopped,
    ))
}

/// Generous: even a starved B finishes (its latency is the finding).
fn deadline(singles: usize, rate: f64) -> Duration {
    Duration::from_secs(60) + Duration::from_secs_f64(singles as f64 / rate)
}

/// One insert per id, on a schedule of `rate` per second (not "sleep after").
async fn paced(
    db: &Client,
    insert: &tokio_postgres::Statement,
    ids: &[i64],
    texts: &[String],
    rate: f64,
    pb: &ProgressBar,
) -> Result<()> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    for (i, id) in ids.iter().enumerate() {
        tokio::time::sleep_until(start + interval * i as u32).await;
        db.execute(insert, &[id, &texts[*id as usize]]).await?;
        pb.inc(1);
    }
    Ok(())
}

/// Waits until every id of `ids` has its vector in queue `q`, or `within` passes (the missing
/// ones are then counted by [`latencies`]).
async fn wait_embedded(db: &Client, q: &str, ids: &[i64], within: Duration) -> Result<()> {
    let sql =
        format!("SELECT count(*) FROM {q} WHERE \"k_id\" = ANY($1) AND embedded_at IS NOT NULL");
    let until = Instant::now() + within;
    loop {
        let n: i64 = db.query_one(&sql, &[&ids]).await?.get(0);
        if n as usize >= ids.len() || Instant::now() > until {
            return Ok(());
        }
        // Only tells when to read the figures, which the database clock took: no need to spin.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn latencies(db: &Client, q: &str, ids: &[i64]) -> Result<FairLatencies> {
    let mut samples: Vec<f64> = db
        .query(
            &format!(
                "SELECT extract(epoch FROM embedded_at - queued_at)::float8 * 1000 FROM {q}
                  WHERE \"k_id\" = ANY($1) AND embedded_at IS NOT NULL"
            ),
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, f64>(0) * 1e3).round() / 1e3)
        .collect();
    samples.sort_by(f64::total_cmp);
    Ok(FairLatencies {
        rows: ids.len(),
        missing: ids.len() - samples.len(),
        db_ms: percentiles(samples.clone()),
        samples_ms: samples,
    })
}
