//! The database's share of a row, without the model: precomputed vectors written through the
//! daemon's own claim and write-back statements ([`Claimer`], [`Writer`]) into a table with the
//! HNSW index, in a session set up as the daemon's are (`synchronous_commit = off`, see
//! `pipeline`); lone rows are also timed with `synchronous_commit = on`, to show what waiting
//! for the WAL flush would cost. And what the notify trigger costs a bulk insert.

use std::time::Instant;

use anyhow::Result;
use indicatif::ProgressBar;
use tokio_postgres::Client;

use super::probe;
use pgai_trigger::Writer;
use pgai_trigger::{percentiles, Percentiles};
use pgai_trigger::{quote_ident, schema, NotifyMode, Table};
use pgai_trigger::{Claimer, Embedded};

/// Full batches, as in a burst.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteBatches {
    pub rows: usize,
    pub batch_size: usize,
    /// Wall time of the claim statement (and its commit), per row.
    pub claim_ms_per_row: f64,
    /// Wall time of the write-back (UPDATE of the vector + HNSW insert + NOTIFY, commit), per row.
    pub write_ms_per_row: f64,
    /// CPU of the whole PostgreSQL cluster per row (backend, WAL writer…); embedded cluster only.
    pub postgres_cpu_ms_per_row: Option<f64>,
}

/// One row per claim and write, as a lone insert is handled.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteSingles {
    pub rows: usize,
    /// With `synchronous_commit = off`, as the daemon runs.
    pub claim_ms: Percentiles,
    pub write_ms: Percentiles,
    pub postgres_cpu_ms_per_row: Option<f64>,
    /// The same with `synchronous_commit = on`: each commit waits for its WAL flush.
    pub claim_ms_sync_commit: Percentiles,
    pub write_ms_sync_commit: Percentiles,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DbWrite {
    pub batches: WriteBatches,
    pub singles: WriteSingles,
}

/// Inserts `texts`, then claims and writes them with `vectors`: all but the last
/// 2 × `single_rows` in batches of `batch_size`, those one by one (half with
/// `synchronous_commit = on`).
#[allow(clippy::too_many_arguments)]
pub async fn write_cost(
    db: &Client,
    table: &Table,
    texts: &[String],
    vectors: &[Vec<f32>],
    batch_size: usize,
    single_rows: usize,
    postmaster: Option<u32>,
    pb: &ProgressBar,
) -> Result<DbWrite> {
    schema::init(db, table, pgai_embed::DIM).await?;
    let ids: Vec<String> = (0..texts.len()).map(|i| format!("w-{i}")).collect();
    db.execute(
        &format!(
            "INSERT INTO {} (id, content) SELECT * FROM unnest($1::text[], $2::text[])",
            table.sql()
        ),
        &[&ids, &texts],
    )
    .await?;
    db.batch_execute(&format!(
        "ANALYZE {}; SET synchronous_commit = off",
        table.sql()
    ))
    .await?;
    let mut claimer = Claimer::prepare(db, table, "pgai-bench-writer").await?;
    let writer = Writer::prepare(db, table, pgai_embed::MODEL_NAME).await?;
    let vector_of = |id: &str| -> Vec<f32> {
        let i: usize = id.trim_start_matches("w-").parse().unwrap_or(0);
        vectors[i].clone()
    };
    let pg_cpu = || postmaster.and_then(probe::cluster_cpu);

    let in_batches = texts.len().saturating_sub(2 * single_rows);
    let (mut claim_s, mut write_s, mut done) = (0.0, 0.0, 0);
    let cpu0 = pg_cpu();
    while done < in_batches {
        let s = Instant::now();
        let claim = claimer
            .claim(db, &[], batch_size.min(in_batches - done), 30.0, 3)
            .await?;
        claim_s += s.elapsed().as_secs_f64();
        if claim.rows.is_empty() {
            anyhow::bail!("the write-cost table ran out of pending rows after {done}");
        }
        let v = claim
            .rows
            .iter()
            .map(|r| Embedded::single(vector_of(&r.id)))
            .collect();
        let s = Instant::now();
        writer.complete(db, &claim, v).await?;
        write_s += s.elapsed().as_secs_f64();
        done += claim.rows.len();
        pb.inc(claim.rows.len() as u64);
    }
    let cpu1 = pg_cpu();
    let n = in_batches.max(1) as f64;
    let batches = WriteBatches {
        rows: in_batches,
        batch_size,
        claim_ms_per_row: claim_s * 1e3 / n,
        write_ms_per_row: write_s * 1e3 / n,
        postgres_cpu_ms_per_row: cpu1.zip(cpu0).map(|(b, a)| (b - a) * 1e3 / n),
    };

    let (claim_ms, write_ms) = lone_rows(
        db,
        &mut claimer,
        &writer,
        in_batches,
        single_rows,
        vectors,
        pb,
    )
    .await?;
    let cpu2 = pg_cpu();
    db.batch_execute("SET synchronous_commit = on").await?;
    let (claim_ms_sync_commit, write_ms_sync_commit) = lone_rows(
        db,
        &mut claimer,
        &writer,
        in_batches + single_rows,
        single_rows,
        vectors,
        pb,
    )
    .await?;
    db.batch_execute("RESET synchronous_commit").await?;
    let singles = WriteSingles {
        rows: single_rows,
        claim_ms,
        write_ms,
        postgres_cpu_ms_per_row: cpu2
            .zip(cpu1)
            .map(|(b, a)| (b - a) * 1e3 / single_rows.max(1) as f64),
        claim_ms_sync_commit,
        write_ms_sync_commit,
    };
    Ok(DbWrite { batches, singles })
}

/// Claims and writes rows `w-from` … one at a time; P50s of claim and write.
async fn lone_rows(
    db: &Client,
    claimer: &mut Claimer,
    writer: &Writer,
    from: usize,
    n: usize,
    vectors: &[Vec<f32>],
    pb: &ProgressBar,
) -> Result<(Percentiles, Percentiles)> {
    let (mut claim_ms, mut write_ms) = (Vec::new(), Vec::new());
    for (i, vector) in vectors.iter().enumerate().skip(from).take(n) {
        // A lone row is claimed by the id its notification named, as the daemon does.
        let s = Instant::now();
        let claim = claimer.claim(db, &[format!("w-{i}")], 1, 30.0, 3).await?;
        claim_ms.push(s.elapsed().as_secs_f64() * 1e3);
        let v = claim
            .rows
            .iter()
            .map(|_| Embedded::single(vector.clone()))
            .collect();
        let s = Instant::now();
        writer.complete(db, &claim, v).await?;
        write_ms.push(s.elapsed().as_secs_f64() * 1e3);
        pb.inc(1);
    }
    Ok((percentiles(claim_ms), percentiles(write_ms)))
}

/// A bulk insert with the per-row notify trigger, without any notify trigger, and with the
/// per-statement trigger.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TriggerOverhead {
    pub rows: usize,
    pub repeats: usize,
    /// Medians of the repeats, seconds per bulk insert.
    pub row_trigger_s: f64,
    pub no_trigger_s: f64,
    pub statement_trigger_s: f64,
    /// (with − without) / rows, microseconds.
    pub row_trigger_us_per_row: f64,
    pub statement_trigger_us_per_row: f64,
    /// with / without.
    pub row_trigger_ratio: f64,
    pub statement_trigger_ratio: f64,
}

/// Bulk-inserts `rows` rows (one `INSERT … SELECT generate_series` each) `repeats` times into
/// three tables that differ only in their notify trigger, rotating the order; no daemon runs.
pub async fn trigger_overhead(
    db: &Client,
    prefix: &str,
    rows: usize,
    repeats: usize,
    pb: &ProgressBar,
) -> Result<TriggerOverhead> {
    let variants = [
        ("row", NotifyMode::PerRow, true),
        ("none", NotifyMode::PerRow, false),
        ("stmt", NotifyMode::PerStatement, true),
    ];
    let mut tables = Vec::new();
    for (name, mode, keep_trigger) in variants {
        let table = Table::new(&format!("{prefix}_ovh_{name}"))?;
        schema::init_with(db, &table, pgai_embed::DIM, mode).await?;
        if !keep_trigger {
            let trigger = quote_ident(&format!("{}_embedding_trigger", table.name()));
            db.batch_execute(&format!("DROP TRIGGER {trigger} ON {}", table.sql()))
                .await?;
        }
        tables.push(table);
    }
    let mut secs: [Vec<f64>; 3] = Default::default();
    for r in 0..repeats {
        for k in 0..3 {
            let v = (k + r) % 3;
            let t = tables[v].sql();
            db.batch_execute(&format!("TRUNCATE {t}")).await?;
            // Start each from a clean slate: no checkpoint of the previous one's WAL midway.
            let _ = db.batch_execute("CHECKPOINT").await;
            let s = Instant::now();
            db.execute(
                &format!(
                    "INSERT INTO {t} (id, content)
                     SELECT 'o' || i, 'note ' || i || ' about a long walk along the river with an old friend'
                       FROM generate_series(1, $1::int4) AS i"
                ),
                &[&(rows as i32)],
            )
            .await?;
            secs[v].push(s.elapsed().as_secs_f64());
            pb.inc(1);
        }
    }
    for t in &tables {
        super::drop_table(db, t).await?;
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [mut a, mut b, mut c] = secs;
    let (row_s, none_s, stmt_s) = (med(&mut a), med(&mut b), med(&mut c));
    let us = |with: f64| (with - none_s) * 1e6 / rows as f64;
    Ok(TriggerOverhead {
        rows,
        repeats,
        row_trigger_s: row_s,
        no_trigger_s: none_s,
        statement_trigger_s: stmt_s,
        row_trigger_us_per_row: us(row_s),
        statement_trigger_us_per_row: us(stmt_s),
        row_trigger_ratio: row_s / none_s,
        statement_trigger_ratio: stmt_s / none_s,
    })
}
