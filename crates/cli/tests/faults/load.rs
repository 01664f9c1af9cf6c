//! Load (scenario 10): a burst of 20,000 rows in one statement while single
//! inserts keep arriving. Reports the single inserts' pickup latency and the drain rate; no
//! timing assertion (shared machines are noisy), only the common end state.

use std::time::{Duration, Instant};

use pgai_trigger::percentiles;
use pgai_trigger::{Config, Daemon, EmbedService};

use crate::support::*;

const BURST: i64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_burst_of_20000_rows_with_single_inserts_arriving() {
    let (url, db) = scenario_db("burst").await;
    // A model thread of its own, so the other scenarios' daemons do not share it.
    let service = EmbedService::start_default(2).await.expect("model");
    let daemon = Daemon::start(Config::new(&url), service)
        .await
        .expect("daemon start");
    let singles = Stream::start(&url, "s", Duration::from_millis(100), 0);
    // Warm up with singles alone, then the burst: 300 distinct texts of everyday length (the
    // daemon embeds every row; the end check embeds each distinct text once).
    wait_drained(&db, DEADLINE).await;
    let started = Instant::now();
    let burst_at: f64 = db
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await
        .unwrap()
        .get(0);
    db.execute(
        "INSERT INTO m0_episodic (id, content)
         SELECT 'b' || g, 'burst memory ' || (g % 300) || ': notes from a meeting about the quarterly plan and its risks'
           FROM generate_series(1, $1::int8) g",
        &[&BURST],
    )
    .await
    .expect("burst insert");
    let inserted = started.elapsed();
    let drained = wait_drained(&db, Duration::from_secs(240)).await + inserted;
    let drain_end: f64 = db
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await
        .unwrap()
        .get(0);
    let stats = singles.finish().await;
    wait_drained(&db, DEADLINE).await;
    let during: Vec<f64> = db
        .query(
            "SELECT extract(epoch FROM embedded_at - queued_at)::float8 * 1000 FROM m0_episodic
              WHERE id LIKE 's%' AND extract(epoch FROM queued_at)::float8 BETWEEN $1 AND $2",
            &[&burst_at, &drain_end],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let burst_ms: Vec<f64> = db
        .query("SELECT extract(epoch FROM embedded_at - queued_at)::float8 * 1000 FROM m0_episodic WHERE id LIKE 'b%'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let snap = daemon.monitor().snapshot();
    daemon.stop().await;
    let single = percentiles(during);
    let burst = percentiles(burst_ms);
    let st = end_state(&db).await;
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
    report(
        "10 burst 20,000 rows + singles every 100 ms",
        &st,
        Some(drained),
        &format!(
            "drain {:.0} rows/s (insert took {:.2} s); singles during drain: n={} P50 {} ms P99 {} ms max {} ms; burst rows P50 {} ms; {} singles total; {} batches",
            BURST as f64 / drained.as_secs_f64(),
            inserted.as_secs_f64(),
            single.samples,
            fmt(single.p50),
            fmt(single.p99),
            fmt(single.max),
            fmt(burst.p50),
            stats.inserts,
            snap.batches
        ),
    );
    st.assert_clean(&[]);
    assert!(
        single.samples > 0,
        "single inserts arrived during the drain"
    );
}
