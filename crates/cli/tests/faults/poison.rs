//! One bad row never stops the pipeline: rows of every hostile kind among normal rows. Each
//! costs only itself (an attempt, then `failed` with the reason; or, for a row no UPDATE can
//! touch, a quarantine); the normal rows are embedded, the daemon stays ready without a
//! reconnect, and a fresh row afterwards is embedded at once.

use std::time::{Duration, Instant};

use pgai_trigger::{Config, Daemon};

use crate::support::*;

/// The table as users and older schemas leave it: explicit NULLs, a nullable content, user
/// triggers and a constraint that refuse some writes.
const HOSTILE_SQL: &str = r#"
ALTER TABLE m0_episodic ALTER COLUMN content DROP NOT NULL;
-- Refuses the vector of one row (BEFORE) and of another (AFTER), and every update of a third.
CREATE FUNCTION user_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 'p-trigger-before' AND NEW.embedding IS NOT NULL THEN
        RAISE EXCEPTION 'user trigger: no vector for %', NEW.id;
    END IF;
    IF NEW.id = 'p-frozen' THEN
        RAISE EXCEPTION 'user trigger: % is frozen', NEW.id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER user_guard BEFORE UPDATE ON m0_episodic FOR EACH ROW EXECUTE FUNCTION user_guard();
CREATE FUNCTION user_after() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 'p-trigger-after' AND NEW.embedding IS NOT NULL THEN
        RAISE EXCEPTION 'user after-trigger: refused %', NEW.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER user_after AFTER UPDATE ON m0_episodic FOR EACH ROW EXECUTE FUNCTION user_after();
ALTER TABLE m0_episodic ADD CONSTRAINT user_check CHECK (id <> 'p-check' OR embedding IS NULL);
"#;

/// (id, how it is inserted, the `last_error` it must end with; `None`: embedded normally).
const POISON: &[(&str, &str, Option<&str>)] = &[
    (
        "p-null-queued",
        "INSERT INTO m0_episodic (id, content, queued_at) VALUES ($1, 'hi', NULL)",
        None,
    ),
    (
        "p-null-counts",
        "INSERT INTO m0_episodic (id, content, retry_count, retry_status, last_retry_at)
         VALUES ($1, 'a row with null counters', NULL, NULL, NULL)",
        None,
    ),
    (
        "p-null-content",
        "INSERT INTO m0_episodic (id, content) VALUES ($1, NULL)",
        Some("content is NULL"),
    ),
    (
        "p-huge-count",
        "INSERT INTO m0_episodic (id, content, retry_count) VALUES ($1, 'REJECTED text', 2000000000)",
        Some("provider rejects this text"),
    ),
    (
        "p-rejected",
        "INSERT INTO m0_episodic (id, content) VALUES ($1, 'REJECTED again, a different row')",
        Some("provider rejects this text"),
    ),
    (
        "p-trigger-before",
        "INSERT INTO m0_episodic (id, content) VALUES ($1, 'a row whose vector a trigger refuses')",
        Some("user trigger: no vector for p-trigger-before"),
    ),
    (
        "p-trigger-after",
        "INSERT INTO m0_episodic (id, content) VALUES ($1, 'an after trigger refuses this one')",
        Some("user after-trigger: refused p-trigger-after"),
    ),
    (
        "p-check",
        "INSERT INTO m0_episodic (id, content) VALUES ($1, 'a check constraint refuses this vector')",
        Some("user_check"),
    ),
    (
        "p-nan",
        "INSERT INTO m0_episodic (id, content) VALUES ($1, 'NANTEXT from the provider')",
        Some("NaN or infinite"),
    ),
    (
        "p-nul",
        "INSERT INTO m0_episodic (id, content) VALUES ($1, 'NULERROR in the message')",
        Some("NUL \\0 byte"),
    ),
    (
        "p-permanent",
        "INSERT INTO m0_episodic (id, content) VALUES ($1, 'PERMANENT refusal')",
        Some("HTTP 422"),
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_rows_cost_only_themselves() {
    let (url, db) = scenario_db("poison").await;
    db.batch_execute(HOSTILE_SQL).await.expect("hostile schema");
    let (model, hooks) = faulty_model().await;
    hooks.set_fail_on(Some("REJECTED"));
    *hooks.nan_on.lock().unwrap() = Some("NANTEXT".into());
    *hooks.nul_error_on.lock().unwrap() = Some("NULERROR".into());
    *hooks.reject_on.lock().unwrap() = Some("PERMANENT".into());

    // Rows go in before the daemon starts and while it runs.
    let normal = |i: usize| format!("n{i}");
    for i in 0..10 {
        insert(&db, &normal(i), &format!("an ordinary note, number {i}")).await;
    }
    for (id, sql, _) in &POISON[..6] {
        db.execute(*sql, &[id])
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('p-frozen', 'no update of this row is allowed')",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO m0_episodic (id, content, needs_embedding) VALUES ('p-null-needs', 'not queued', NULL)",
        &[],
    )
    .await
    .unwrap();

    let mut cfg = Config::new(&url);
    cfg.max_retries = 3;
    cfg.retry_interval = Duration::from_millis(50);
    cfg.retry_cap = Duration::from_millis(200);
    // No row may wait for a lease to expire: a claim left behind would stall the drain past
    // the deadline.
    cfg.lease = Duration::from_secs(600);
    let daemon = Daemon::start(cfg, model).await.expect("daemon start");
    for (id, sql, _) in &POISON[6..] {
        db.execute(*sql, &[id])
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    for i in 10..20 {
        insert(&db, &normal(i), &format!("an ordinary note, number {i}")).await;
    }

    let took = wait_drained_except(&db, DEADLINE, &["p-frozen"]).await;

    // Every normal row (and the rows with NULL queue columns) has its vector.
    let embedded = count(
        &db,
        "SELECT count(*) FROM m0_episodic WHERE embedding IS NOT NULL AND needs_embedding IS NOT TRUE",
    )
    .await;
    assert_eq!(
        embedded,
        20 + 2,
        "normal rows and NULL-column rows embedded"
    );
    // Each poisoned row failed, with its reason.
    for (id, _, reason) in POISON {
        let r = db
            .query_one(
                "SELECT retry_status, last_error, retry_count, embedding IS NOT NULL
                   FROM m0_episodic WHERE id = $1",
                &[id],
            )
            .await
            .unwrap();
        let (status, error): (Option<String>, Option<String>) = (r.get(0), r.get(1));
        match reason {
            None => assert!(
                r.get::<_, bool>(3),
                "{id} should be embedded ({status:?} {error:?})"
            ),
            Some(reason) => {
                assert_eq!(status.as_deref(), Some("failed"), "{id}: {error:?}");
                let error = error.unwrap_or_default();
                assert!(
                    error.contains(reason),
                    "{id}: last_error {error:?} lacks {reason:?}"
                );
            }
        }
    }
    // Permanent failures spend one attempt, not max_retries.
    let permanent_attempts: i32 = db
        .query_one(
            "SELECT retry_count FROM m0_episodic WHERE id = 'p-permanent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(permanent_attempts, 1);
    // The row no update can touch stays pending, skipped; the NULL-needs row is left alone.
    let frozen: String = db
        .query_one(
            &format!(
                "SELECT {} FROM m0_episodic WHERE id = 'p-frozen'",
                pgai_trigger::RowState::case_sql()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(frozen, "pending");
    let snap = daemon.monitor().snapshot();
    assert_eq!(snap.rows_unwritable, 1, "{snap:?}");
    assert!(snap.worker_connected && snap.listener_connected, "{snap:?}");
    assert_eq!(
        snap.reconnects, 0,
        "no row may look like a lost connection: {snap:?}"
    );
    assert_eq!(snap.task_panics, 0, "{snap:?}");

    // A fresh row afterwards is embedded at once.
    let t = Instant::now();
    insert(&db, "after", "a fresh row after all the poison").await;
    pgai_testkit::wait_for("the fresh row", DEADLINE, || async {
        let n = count(
            &db,
            "SELECT count(*) FROM m0_episodic WHERE id = 'after' AND embedding IS NOT NULL",
        )
        .await;
        (n == 1).then_some(())
    })
    .await;
    let fresh = t.elapsed();
    let duplicate_writes = count(
        &db,
        "SELECT count(*) - count(DISTINCT (id, version)) FROM fault_writes",
    )
    .await;
    assert_eq!(duplicate_writes, 0);
    let st = EndState {
        rows: count(&db, "SELECT count(*) FROM m0_episodic").await,
        correct: embedded + 1,
        duplicate_writes,
        ..EndState::default()
    };
    report(
        "1' poisoned rows of 12 kinds among 20 normal",
        &st,
        Some(took),
        &format!(
            "11 failed with reasons, 1 quarantined, 1 not queued; reconnects {}; fresh row {:.0} ms",
            snap.reconnects,
            fresh.as_secs_f64() * 1000.0
        ),
    );
    daemon.stop().await;
}
