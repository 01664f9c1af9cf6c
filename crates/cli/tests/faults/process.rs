//! Faults of the daemon process itself: SIGKILL mid-batch (scenario 1), three daemons with one
//! killed (7), SIGSTOP while clients write (9), and crashes counted as attempts.

use std::time::{Duration, Instant};

use pgai_testkit::{wait_for, TestDir};
use tokio_postgres::Client;

use crate::support::*;

/// Waits until every row of `ids` has a committed write; returns when.
async fn wait_written(db: &Client, ids: &[String], deadline: Duration) -> Instant {
    wait_for("the orphaned rows to be written", deadline, || async {
        let n: i64 = db
            .query_one(
                "SELECT count(DISTINCT id) FROM fault_writes WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .expect("fault_writes")
            .get(0);
        (n == ids.len() as i64).then(Instant::now)
    })
    .await
}

/// Scenario 1: SIGKILL of a real daemon mid-batch while rows and updates stream in; a second
/// daemon takes over the orphaned claims once their lease (3 s) expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_sigkill_mid_batch_then_restart() {
    let (url, db) = scenario_db("sigkill").await;
    let dir = TestDir::new("sigkill");
    let args = ["--lease-secs", "3", "--batch-size", "16"];
    let mut first = Child::spawn(&url, &args, dir.path(), "first");
    first.wait_connected(&db).await;
    let stream = Stream::start(&url, "k", Duration::from_millis(8), 7);
    wait_for("40 rows written", DEADLINE, || async {
        (count(&db, "SELECT count(*) FROM fault_writes").await >= 40).then_some(())
    })
    .await;
    let killed = Instant::now();
    let orphaned = kill_mid_batch(&db, "m0_episodic", &mut first).await;
    let mut second = Child::spawn(&url, &args, dir.path(), "second");
    second.wait_connected(&db).await;
    let recovered = if orphaned.is_empty() {
        killed
    } else {
        wait_written(&db, &orphaned, DEADLINE).await
    };
    let stats = stream.finish().await;
    wait_drained(&db, DEADLINE).await;
    let st = end_state(&db).await;
    report(
        "1 SIGKILL mid-batch, restart (lease 3 s)",
        &st,
        Some(recovered - killed),
        &format!(
            "{} inserts, {} updates; {} rows orphaned by the kill",
            stats.inserts,
            stats.updates,
            orphaned.len()
        ),
    );
    st.assert_clean(&[]);
    assert!(
        !orphaned.is_empty(),
        "the kill should have caught claimed rows"
    );
}

/// Leases and retries: a claim taken over after its holder died counts an attempt on the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_claims_count_an_attempt_on_take_over() {
    let (url, db) = scenario_db("crash_attempt").await;
    let dir = TestDir::new("crash-attempt");
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content)
         SELECT 'c' || g, 'a long afternoon of notes, number ' || g FROM generate_series(1, 300) g",
    )
    .await
    .unwrap();
    let args = ["--lease-secs", "2", "--batch-size", "8"];
    let mut first = Child::spawn(&url, &args, dir.path(), "first");
    let orphaned = kill_mid_batch(&db, "m0_episodic", &mut first).await;
    assert!(!orphaned.is_empty());
    let second = Child::spawn(&url, &args, dir.path(), "second");
    wait_drained(&db, DEADLINE).await;
    let counted: Vec<(String, i32, Option<String>)> = db
        .query(
            "SELECT id, retry_count, last_error FROM m0_episodic WHERE id = ANY($1) ORDER BY id",
            &[&orphaned],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let others: i64 = db
        .query_one(
            "SELECT count(*) FROM m0_episodic WHERE retry_count > 0 AND NOT id = ANY($1)",
            &[&orphaned],
        )
        .await
        .unwrap()
        .get(0);
    let st = end_state(&db).await;
    report(
        "5 crashed claim counted as an attempt",
        &st,
        None,
        &format!(
            "{} orphaned; retry_count after take-over: {:?}",
            orphaned.len(),
            counted.iter().map(|c| c.1).collect::<Vec<_>>()
        ),
    );
    st.assert_clean(&[]);
    assert!(
        counted.iter().all(|c| c.1 == 1),
        "each taken-over row pays exactly one attempt: {counted:?}"
    );
    assert_eq!(others, 0, "rows never orphaned pay nothing");
    drop(second);
}

/// Retries: a row that kills every worker that takes it (here: its write hangs and the
/// daemon is SIGKILLed meanwhile, every time) ends `failed` after `max_retries` take-overs,
/// instead of looping forever; the daemon keeps serving the other rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_kills_every_worker_ends_failed() {
    let (url, db) = scenario_db("poison_crash").await;
    let dir = TestDir::new("poison-crash");
    // The write of row 'poison' hangs (and would fail): the holder is killed while it hangs.
    db.batch_execute(
        "CREATE FUNCTION fault_hang() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.id = 'poison' AND NEW.embedding IS NOT NULL THEN
                 PERFORM pg_sleep(1.5);
                 RAISE EXCEPTION 'test: this write never completes';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER fault_hang BEFORE UPDATE ON m0_episodic FOR EACH ROW EXECUTE FUNCTION fault_hang();",
    )
    .await
    .unwrap();
    insert(
        &db,
        "poison",
        "a row whose processing always kills the worker",
    )
    .await;
    let args = [
        "--lease-secs",
        "1",
        "--max-retries",
        "3",
        "--poll-interval-ms",
        "200",
    ];
    let started = Instant::now();
    let mut kills = 0;
    let mut last = loop {
        let mut child = Child::spawn(&url, &args, dir.path(), &format!("d{kills}"));
        let like = format!("pgai-trigger %-{}-%", child.pid);
        let outcome = wait_for("the poison row to be held or failed", DEADLINE, || async {
            let hanging = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1 AND wait_event = 'PgSleep'",
                    &[&like],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
            let failed = count(&db, "SELECT count(*) FROM m0_episodic WHERE id = 'poison' AND retry_status = 'failed'").await;
            if failed > 0 {
                Some(false)
            } else if hanging > 0 {
                Some(true)
            } else {
                None
            }
        })
        .await;
        if !outcome {
            break child;
        }
        child.kill9();
        kills += 1;
        assert!(
            kills <= 6,
            "the poison row was taken {kills} times and never marked failed"
        );
    };
    let (retries, error): (i32, Option<String>) = {
        let r = db
            .query_one(
                "SELECT retry_count, last_error FROM m0_episodic WHERE id = 'poison'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    // The surviving daemon still serves other rows.
    insert(&db, "healthy", "an ordinary row after the poison one").await;
    last.wait_connected(&db).await;
    wait_drained(&db, DEADLINE).await;
    let st = end_state(&db).await;
    report(
        "6 row that kills every worker -> failed",
        &st,
        Some(started.elapsed()),
        &format!("{kills} workers killed; retry_count {retries}; last_error {error:?}"),
    );
    st.assert_clean(&["poison"]);
    assert_eq!(
        kills, 3,
        "max_retries 3: three holders die, the fourth take-over marks it failed"
    );
    assert_eq!(retries, 3);
    assert!(
        error.is_some_and(|e| e.contains("lease")),
        "last_error names the expired lease"
    );
}

/// Scenario 7: three daemons on one database, the busiest killed mid-run: every row written
/// once, none lost, never two holders at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_three_daemons_one_killed() {
    let (url, db) = scenario_db("three").await;
    let dir = TestDir::new("three");
    let args = [
        "--lease-secs",
        "3",
        "--batch-size",
        "8",
        "--poll-interval-ms",
        "300",
    ];
    let mut daemons: Vec<Child> = (0..3)
        .map(|i| Child::spawn(&url, &args, dir.path(), &format!("d{i}")))
        .collect();
    for d in daemons.iter_mut() {
        d.wait_connected(&db).await;
    }
    let stream = Stream::start(&url, "t", Duration::from_millis(4), 9);
    let victim = wait_for(
        "a daemon holding claims after 100 writes",
        DEADLINE,
        || async {
            if count(&db, "SELECT count(*) FROM fault_writes").await < 100 {
                return None;
            }
            for (i, d) in daemons.iter().enumerate() {
                if !claimed_by(&db, "m0_episodic", d).await.is_empty() {
                    return Some(i);
                }
            }
            None
        },
    )
    .await;
    let killed = Instant::now();
    let orphaned = kill_mid_batch(&db, "m0_episodic", &mut daemons[victim]).await;
    // The survivors keep working while the clients keep writing.
    let recovered = if orphaned.is_empty() {
        killed
    } else {
        wait_written(&db, &orphaned, DEADLINE).await
    };
    let stats = stream.finish().await;
    wait_drained(&db, DEADLINE).await;
    let st = end_state(&db).await;
    let per_daemon: Vec<i64> = {
        let mut v = Vec::new();
        for d in &daemons {
            v.push(
                db.query_one(
                    "SELECT count(*) FROM fault_writes WHERE writer LIKE $1",
                    &[&d.token_like()],
                )
                .await
                .unwrap()
                .get(0),
            );
        }
        v
    };
    let unwritten = count(&db, "SELECT count(*) FROM m0_episodic m WHERE NOT EXISTS (SELECT 1 FROM fault_writes w WHERE w.id = m.id)").await;
    report(
        "7 three daemons, one SIGKILLed",
        &st,
        Some(recovered - killed),
        &format!(
            "{} inserts, {} updates; writes per daemon {per_daemon:?} (killed: #{victim}); {} orphaned",
            stats.inserts,
            stats.updates,
            orphaned.len()
        ),
    );
    st.assert_clean(&[]);
    assert_eq!(unwritten, 0, "every row has a committed write");
    assert!(
        per_daemon.iter().filter(|n| **n > 0).count() >= 2,
        "the work was shared: {per_daemon:?}"
    );
}

/// Scenario 9: the daemon is frozen (SIGSTOP) while clients keep inserting: every client commit
/// succeeds promptly; after SIGCONT the daemon catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_sigstop_never_blocks_client_commits() {
    let (url, db) = scenario_db("sigstop").await;
    let dir = TestDir::new("sigstop");
    let mut daemon = Child::spawn(&url, &["--lease-secs", "3"], dir.path(), "daemon");
    daemon.wait_connected(&db).await;
    insert(&db, "warm", "before the freeze").await;
    wait_drained(&db, DEADLINE).await;
    daemon.stop_signal();
    // Plain client: no statement_timeout; each commit must complete on its own.
    let client = connect(&url).await;
    let stmt = client
        .prepare("INSERT INTO m0_episodic (id, content) VALUES ($1, $2)")
        .await
        .unwrap();
    let frozen = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut n = 0;
    while frozen.elapsed() < Duration::from_secs(4) {
        let id = format!("f{n}");
        let text = format!("written while the daemon is frozen, number {n}");
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), client.execute(&stmt, &[&id, &text]))
            .await
            .unwrap_or_else(|_| {
                panic!("insert {id} did not commit within 2 s while the daemon was stopped")
            })
            .unwrap_or_else(|e| panic!("insert {id} failed while the daemon was stopped: {e}"));
        slowest = slowest.max(t.elapsed());
        n += 1;
        // A client's pace (about 150 rows/s), not a synchronisation.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A bulk statement commits too.
    tokio::time::timeout(
        Duration::from_secs(5),
        client.batch_execute("INSERT INTO m0_episodic (id, content) SELECT 'fb' || g, 'bulk while frozen ' || g FROM generate_series(1, 500) g"),
    )
    .await
    .expect("bulk insert within 5 s while frozen")
    .expect("bulk insert");
    let pending_while_frozen = pending(&db).await;
    daemon.cont_signal();
    let resumed = Instant::now();
    wait_drained(&db, DEADLINE).await;
    let caught_up = resumed.elapsed();
    let st = end_state(&db).await;
    report(
        "9 SIGSTOP 4 s while clients insert, SIGCONT",
        &st,
        Some(caught_up),
        &format!("{n} single inserts + 500 bulk while frozen, slowest commit {:.1} ms; {pending_while_frozen} pending at SIGCONT", slowest.as_secs_f64() * 1e3),
    );
    st.assert_clean(&[]);
    assert_eq!(
        pending_while_frozen,
        n + 500,
        "a frozen daemon claims nothing"
    );
}

/// Leases: SIGTERM mid-batch finishes or releases the daemon's claims at once: nothing
/// is left for a successor to wait out (the lease here is the default 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_no_claims_behind() {
    let (url, db) = scenario_db("sigterm").await;
    let dir = TestDir::new("sigterm");
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content)
         SELECT 'g' || g, 'a row for a graceful stop, number ' || g FROM generate_series(1, 400) g",
    )
    .await
    .unwrap();
    let mut first = Child::spawn(&url, &[], dir.path(), "first");
    wait_for(
        "the daemon to hold claims after some writes",
        DEADLINE,
        || async {
            (count(&db, "SELECT count(*) FROM fault_writes").await >= 20
                && !claimed_by(&db, "m0_episodic", &first).await.is_empty())
            .then_some(())
        },
    )
    .await;
    let stopping = Instant::now();
    let status = first.terminate_gracefully(Duration::from_secs(15));
    let stop_took = stopping.elapsed();
    let left = claimed_by(&db, "m0_episodic", &first).await;
    let second = Child::spawn(&url, &[], dir.path(), "second");
    let t = Instant::now();
    wait_drained(&db, Duration::from_secs(25)).await;
    let st = end_state(&db).await;
    report(
        "5 SIGTERM mid-batch, successor (lease 30 s)",
        &st,
        Some(t.elapsed()),
        &format!(
            "stopped in {:.2} s ({status}); {} claims left behind",
            stop_took.as_secs_f64(),
            left.len()
        ),
    );
    st.assert_clean(&[]);
    assert!(status.success(), "{status}:\n{}", first.log_tail());
    assert!(
        left.is_empty(),
        "claims left behind by a graceful stop: {left:?}"
    );
    drop(second);
}
