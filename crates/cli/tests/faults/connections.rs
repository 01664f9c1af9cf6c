//! Faults of the connections: `pg_terminate_backend` of the listener and of the working
//! connections (scenario 2), PostgreSQL restarts while rows stream in (3), and a listener whose
//! server process freezes (no error, no notifications: only the self-probe and the poll notice).

use std::time::{Duration, Instant};

use pgai_cluster::{Cluster, ClusterConfig};
use pgai_testkit::{free_port, wait_for, TestDir};
use pgai_trigger::{Config, Daemon};
use tokio_postgres::Client;

use crate::support::*;

static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn worker_id(label: &str) -> String {
    format!(
        "faults-{label}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// Waits until a write commits after `since`; returns how long after `since` it did.
async fn next_write_after(db: &Client, since: Instant, since_db: f64) -> Duration {
    wait_for("a write after the fault", DEADLINE, || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM fault_writes WHERE extract(epoch FROM at)::float8 > $1",
                &[&since_db],
            )
            .await
            .expect("fault_writes")
            .get(0);
        (n > 0).then(|| since.elapsed())
    })
    .await
}

async fn db_now(db: &Client) -> f64 {
    db.query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await
        .unwrap()
        .get(0)
}

/// Scenario 2: the listener's and the worker's sessions are terminated, several times, while
/// rows stream in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_terminate_listener_and_working_connections() {
    let (url, db) = scenario_db("terminate").await;
    let mut cfg = Config::new(&url);
    cfg.worker_id = worker_id("term");
    let listener = format!("pgai-trigger {} listener", cfg.worker_id);
    let working = format!("pgai-trigger {}", cfg.worker_id);
    let daemon = Daemon::start(cfg, model().await)
        .await
        .expect("daemon start");
    let stream = Stream::start(&url, "x", Duration::from_millis(10), 8);
    let mut worst = Duration::ZERO;
    let mut killed = 0;
    for round in 0..3 {
        for (what, like) in [
            ("listener", &listener),
            ("working", &working),
            ("all", &format!("{working}%")),
        ] {
            // Kill only while the daemon is connected and busy.
            let before = count(&db, "SELECT count(*) FROM fault_writes").await;
            wait_for(
                &format!("round {round}: progress before killing the {what} sessions"),
                DEADLINE,
                || async {
                    (count(&db, "SELECT count(*) FROM fault_writes").await >= before + 10
                        && !backends(&db, like).await.is_empty())
                    .then_some(())
                },
            )
            .await;
            let since_db = db_now(&db).await;
            let since = Instant::now();
            killed += terminate(&db, like).await;
            worst = worst.max(next_write_after(&db, since, since_db).await);
            wait_for(
                &format!("the {what} sessions to come back"),
                DEADLINE,
                || async { (!backends(&db, like).await.is_empty()).then_some(()) },
            )
            .await;
        }
    }
    let stats = stream.finish().await;
    let t = Instant::now();
    wait_drained(&db, DEADLINE).await;
    let snap = daemon.monitor().snapshot();
    daemon.stop().await;
    let st = end_state(&db).await;
    report(
        "2 pg_terminate_backend listener/working x3",
        &st,
        Some(worst),
        &format!(
            "{killed} sessions terminated; {} inserts, {} updates; {} reconnects; drain after stream {:.2} s",
            stats.inserts,
            stats.updates,
            snap.reconnects,
            t.elapsed().as_secs_f64()
        ),
    );
    st.assert_clean(&[]);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM m0_episodic WHERE claimed_by IS NOT NULL"
        )
        .await,
        0
    );
}

/// Scenario 3: PostgreSQL restarts (fast, then immediate = crash recovery) on a private
/// cluster while rows stream in; the daemon reconnects, catches up, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_postgres_restart_while_rows_stream_in() {
    let dir = TestDir::new("restart");
    let mut cc = ClusterConfig::new(dir.path().join("data"), free_port());
    cc.extra_settings = pgai_testkit::test_settings();
    let cluster = std::sync::Arc::new(Cluster::new(cc).expect("cluster"));
    {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || {
            c.init().expect("init");
            c.start().expect("start");
        })
        .await
        .unwrap();
    }
    let url = cluster.url("postgres");
    prepare(&url).await;
    let mut cfg = Config::new(&url);
    cfg.worker_id = worker_id("restart");
    let daemon = Daemon::start(cfg, model().await)
        .await
        .expect("daemon start");
    let stream = Stream::start(&url, "r", Duration::from_millis(10), 6);
    let mut recover = Vec::new();
    for mode in ["fast", "immediate"] {
        {
            let db = connect(&url).await;
            let before = count(&db, "SELECT count(*) FROM fault_writes").await;
            wait_for("progress before the restart", DEADLINE, || async {
                (count(&db, "SELECT count(*) FROM fault_writes").await >= before + 30).then_some(())
            })
            .await;
        }
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || {
            if mode == "fast" {
                c.restart().expect("pg_ctl restart -m fast");
            } else {
                c.stop_immediate().expect("pg_ctl stop -m immediate");
                c.start().expect("start after crash");
            }
        })
        .await
        .unwrap();
        let up = Instant::now();
        let db = connect(&url).await;
        let since_db = db_now(&db).await;
        recover.push((mode, next_write_after(&db, up, since_db).await));
    }
    let stats = stream.finish().await;
    let db = connect(&url).await;
    wait_drained(&db, DEADLINE).await;
    let snap = daemon.monitor().snapshot();
    daemon.stop().await;
    let st = end_state(&db).await;
    let worst = recover.iter().map(|r| r.1).max();
    report(
        "3 PostgreSQL restart fast + immediate",
        &st,
        worst,
        &format!(
            "{} inserts ({} client retries), {} updates; first write after server up: {:?}; {} reconnects",
            stats.inserts,
            stats.retried,
            stats.updates,
            recover.iter().map(|(m, d)| format!("{m} {:.2} s", d.as_secs_f64())).collect::<Vec<_>>(),
            snap.reconnects
        ),
    );
    st.assert_clean(&[]);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_immediate())
        .await
        .unwrap()
        .expect("stop");
}

/// Missed notifications and listener health: the listener's server process freezes (SIGSTOP): no
/// error, no notifications. Rows are still picked up within about one poll interval, and the
/// listener notices (its probe or ping goes unanswered) and reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_listener_backend_costs_at_most_a_poll_interval() {
    let (url, db) = scenario_db("frozen_listener").await;
    let mut cfg = Config::new(&url);
    cfg.worker_id = worker_id("frozen");
    cfg.poll_interval = Duration::from_millis(500);
    let listener = format!("pgai-trigger {} listener", cfg.worker_id);
    let daemon = Daemon::start(cfg, model().await)
        .await
        .expect("daemon start");
    // Frozen once it listens (a freeze during LISTEN itself is `proxy::listener_hung_at_listen`).
    let old = wait_for("the listener to listen", DEADLINE, || async {
        if !daemon.monitor().snapshot().listener_connected {
            return None;
        }
        backends(&db, &listener).await.first().copied()
    })
    .await;
    // SAFETY: signals a PostgreSQL backend process of our own test cluster.
    assert_eq!(unsafe { libc::kill(old, libc::SIGSTOP) }, 0);
    let _thaw = Thaw(old);
    let frozen = Instant::now();
    let mut pickups = Vec::new();
    for i in 0..5 {
        let id = format!("z{i}");
        let t = Instant::now();
        insert(
            &db,
            &id,
            &format!("inserted while the listener is frozen, {i}"),
        )
        .await;
        wait_for(&format!("row {id}"), DEADLINE, || async {
            (count(
                &db,
                &format!(
                    "SELECT count(*) FROM m0_episodic WHERE id = '{id}' AND NOT needs_embedding"
                ),
            )
            .await
                == 1)
                .then_some(())
        })
        .await;
        pickups.push(t.elapsed());
    }
    // The probe goes unanswered: degraded first, then a new connection.
    let degraded = std::sync::Mutex::new(None);
    let reconnected = loop {
        let d = daemon.monitor().snapshot();
        if degraded.lock().unwrap().is_none() && d.listener_degraded {
            *degraded.lock().unwrap() = Some(frozen.elapsed());
        }
        if backends(&db, &listener).await.into_iter().any(|p| p != old) {
            break frozen.elapsed();
        }
        if frozen.elapsed() > Duration::from_secs(45) {
            let sessions: Vec<String> = db
                .query(
                    "SELECT pid || ' ' || application_name || ' ' || state || ' ' || coalesce(wait_event, '-') || ' ' || left(query, 60)
                       FROM pg_stat_activity WHERE application_name LIKE 'pgai-trigger%' AND datname = current_database()",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            panic!("the listener never reconnected in 45 s (frozen backend {old}); sessions {sessions:?}; daemon {d:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let degraded_at = degraded.into_inner().unwrap();
    drop(_thaw);
    let t = Instant::now();
    insert(&db, "after", "inserted once the listener is back").await;
    wait_drained(&db, DEADLINE).await;
    let after = t.elapsed();
    daemon.stop().await;
    let st = end_state(&db).await;
    let slowest = pickups.iter().max().copied().unwrap_or_default();
    report(
        "2b listener backend frozen (SIGSTOP)",
        &st,
        Some(reconnected),
        &format!(
            "pickup while frozen: {:?} ms (poll 500 ms); degraded after {:?}; listener replaced after {:.1} s; pickup after: {} ms",
            pickups.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
            degraded_at,
            reconnected.as_secs_f64(),
            after.as_millis()
        ),
    );
    st.assert_clean(&[]);
    assert!(
        slowest < Duration::from_millis(2500),
        "a lost notification cost {slowest:?}, more than a poll interval (+2 s slack)"
    );
}

/// Continues a stopped backend when dropped (also when the test fails), so the cluster can
/// shut down; the thawed backend finds its client gone and exits.
struct Thaw(i32);

impl Drop for Thaw {
    fn drop(&mut self) {
        // SAFETY: SIGCONT to a backend of our own test cluster; harmless if it is gone.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}
