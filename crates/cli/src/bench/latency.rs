//! Commit-to-vector latency: single-row inserts at a steady rate, and a burst of rows committed
//! in one statement with single inserts arriving while it drains.
//!
//! Latency is timed by the client: from the moment its INSERT returns (the row is committed)
//! to the moment the `embedding_ready` notification for that id reaches it (sent by the daemon
//! after its write committed). The database's own figure, `embedded_at - queued_at`, is read back
//! as well; it starts before the insert's commit and ends before the write's commit.

use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::ProgressBar;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::listen::ReadyListener;
use super::probe::{Probe, Usage, Watched};
use pgai_trigger::Table;
use pgai_trigger::{percentiles, Percentiles};

/// Latencies of a set of single inserts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latencies {
    /// Rows measured (after the warm-up).
    pub rows: usize,
    /// Measured rows whose notification never came within the deadline.
    pub missing: usize,
    /// Insert commit → `embedding_ready` received, client clock, ms.
    pub client_ms: Percentiles,
    /// `embedded_at - queued_at`, database clock, ms.
    pub db_ms: Percentiles,
    pub mean_client_ms: Option<f64>,
    /// The client figures, sorted, to the microsecond (for the plot and any other analysis).
    pub samples_ms: Vec<f64>,
}

/// One single-row insert, committed at `committed`.
struct Sent {
    id: String,
    committed: Instant,
}

/// Inserts `texts` one per statement at `rate` per second (on a schedule, not "sleep after"),
/// ids `prefix-N`; the first `warmup` are not measured. Waits for every notification.
#[allow(clippy::too_many_arguments)]
pub async fn steady(
    db: &Client,
    ready: &ReadyListener,
    table: &Table,
    prefix: &str,
    texts: &[String],
    rate: f64,
    warmup: usize,
    pb: &ProgressBar,
) -> Result<Latencies> {
    let insert = db
        .prepare(&format!(
            "INSERT INTO {} (id, content) VALUES ($1, $2)",
            table.sql()
        ))
        .await?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut sent = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let id = format!("{prefix}-{i}");
        db.execute(&insert, &[&id, text]).await?;
        sent.push(Sent {
            id,
            committed: Instant::now(),
        });
        pb.set_position(i as u64 + 1);
    }
    let measured = &sent[warmup.min(sent.len())..];
    // Generous: an overloaded pipeline still finishes (its latencies are the finding).
    let within = Duration::from_secs(60) + Duration::from_secs_f64(0.5 * texts.len() as f64);
    collect(db, ready, table, measured, within).await
}

/// Waits for the notifications of `sent` and reads their database-clock latencies.
async fn collect(
    db: &Client,
    ready: &ReadyListener,
    table: &Table,
    sent: &[Sent],
    within: Duration,
) -> Result<Latencies> {
    let ids: Vec<String> = sent.iter().map(|s| s.id.clone()).collect();
    let arrived = ready.wait_all(&ids, within, |_| {}).await;
    let mut samples: Vec<f64> = sent
        .iter()
        .filter_map(|s| {
            arrived
                .get(&s.id)
                .map(|at| at.saturating_duration_since(s.committed).as_secs_f64() * 1e3)
        })
        .map(|ms| (ms * 1e3).round() / 1e3)
        .collect();
    samples.sort_by(f64::total_cmp);
    let db_ms: Vec<f64> = db
        .query(
            &format!(
                "SELECT extract(epoch FROM embedded_at - queued_at)::float8 * 1000 FROM {}
                  WHERE id = ANY($1) AND embedded_at IS NOT NULL",
                table.sql()
            ),
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mean = (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64);
    Ok(Latencies {
        rows: sent.len(),
        missing: sent.len() - samples.len(),
        client_ms: percentiles(samples.clone()),
        db_ms: percentiles(db_ms),
        mean_client_ms: mean,
        samples_ms: samples,
    })
}

/// What a burst measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Burst {
    pub rows: usize,
    /// Rows whose vector was announced before the deadline.
    pub embedded: usize,
    /// The one INSERT statement of all rows (trigger included), until it returned.
    pub insert_s: f64,
    /// Insert commit → first vector announced.
    pub first_vector_s: Option<f64>,
    /// Insert commit → last vector announced.
    pub drain_s: f64,
    pub rows_per_s: f64,
    /// Cores used during the drain, by whom.
    pub usage: Usage,
    /// CPU per row during the drain: the daemon's process, and the PostgreSQL cluster's.
    pub daemon_cpu_ms_per_row: Option<f64>,
    pub postgres_cpu_ms_per_row: Option<f64>,
    /// Single inserts made while the burst drained, and their latencies.
    pub trickle_rate_per_s: f64,
    pub trickle: Latencies,
}

/// Commits `texts` as rows `prefix-N` in one statement and times the drain (giving up after
/// `within`); meanwhile inserts single rows (`trickle_texts`, at `trickle_rate` per second) and
/// measures their latency.
#[allow(clippy::too_many_arguments)]
pub async fn burst(
    db: &Client,
    trickle_db: &Client,
    ready: &ReadyListener,
    table: &Table,
    prefix: &str,
    texts: &[String],
    trickle_texts: &[String],
    trickle_rate: f64,
    within: Duration,
    watched: Watched,
    pb: &ProgressBar,
) -> Result<Burst> {
    let ids: Vec<String> = (0..texts.len()).map(|i| format!("{prefix}-{i}")).collect();
    let t = table.sql();
    let insert_started = Instant::now();
    db.execute(
        &format!("INSERT INTO {t} (id, content) SELECT * FROM unnest($1::text[], $2::text[])"),
        &[&ids, &texts],
    )
    .await?;
    let committed = Instant::now();
    let before = Probe::now(watched);

    // Single inserts keep arriving until the burst is drained.
    let drained = CancellationToken::new();
    let trickle_prefix = format!("{prefix}-single");
    let trickle = trickle_inserts(
        trickle_db,
        table,
        &trickle_prefix,
        trickle_texts,
        trickle_rate,
        &drained,
    );
    let wait = async {
        let arrived = ready
            .wait_all(&ids, within, |n| pb.set_position(n as u64))
            .await;
        let after = Probe::now(watched);
        drained.cancel();
        (arrived, after)
    };
    let (sent, (arrived, after)) = tokio::join!(trickle, wait);
    let sent = sent?;
    let last = arrived.values().max().copied().unwrap_or(committed);
    let first = arrived
        .values()
        .min()
        .map(|f| f.duration_since(committed).as_secs_f64());
    let drain_s = last.duration_since(committed).as_secs_f64();
    let usage = before.until(&after);
    let per_row = |cpu: Option<f64>| {
        cpu.filter(|_| !arrived.is_empty())
            .map(|c| c * 1e3 / arrived.len() as f64)
    };
    let trickle = collect(trickle_db, ready, table, &sent, Duration::from_secs(120)).await?;
    Ok(Burst {
        rows: texts.len(),
        embedded: arrived.len(),
        insert_s: committed.duration_since(insert_started).as_secs_f64(),
        first_vector_s: first,
        drain_s,
        rows_per_s: if drain_s > 0.0 {
            arrived.len() as f64 / drain_s
        } else {
            0.0
        },
        daemon_cpu_ms_per_row: per_row(usage.daemon_cpu_s),
        postgres_cpu_ms_per_row: per_row(usage.postgres_cpu_s),
        usage,
        trickle_rate_per_s: trickle_rate,
        trickle,
    })
}

/// Single inserts at `rate` until `stop` (or the texts run out).
async fn trickle_inserts(
    db: &Client,
    table: &Table,
    prefix: &str,
    texts: &[String],
    rate: f64,
    stop: &CancellationToken,
) -> Result<Vec<Sent>> {
    let insert = db
        .prepare(&format!(
            "INSERT INTO {} (id, content) VALUES ($1, $2)",
            table.sql()
        ))
        .await?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut sent = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        tokio::select! {
            _ = tokio::time::sleep_until(start + interval * (i as u32 + 1)) => {}
            _ = stop.cancelled() => break,
        }
        let id = format!("{prefix}-{i}");
        db.execute(&insert, &[&id, text]).await?;
        sent.push(Sent {
            id,
            committed: Instant::now(),
        });
    }
    Ok(sent)
}
