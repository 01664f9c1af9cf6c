//! End to end, on the real embedded PostgreSQL with pgvector and the real model: a row goes in,
//! its vector comes out. One cluster per test process, one database per test.

use std::time::{Duration, Instant};

use pgai_testkit::{cosine, fresh_database, wait_for};
use pgai_trigger::{schema, Claimer, Config, Daemon, Embedded, Table, Writer};
use pgvector::Vector;
use tokio_postgres::Client;

const DEADLINE: Duration = Duration::from_secs(30);

async fn connect(url: &str) -> Client {
    pgai_trigger::connect(url, "e2e test")
        .await
        .expect("connect")
        .0
}

/// A fresh database with the schema applied.
async fn schema_db(prefix: &str) -> (String, Client) {
    let url = fresh_database(prefix).await;
    let client = connect(&url).await;
    schema::init(&client, &Table::default(), pgai_embed::DIM)
        .await
        .expect("db init");
    (url, client)
}

async fn start_daemon(url: &str) -> Daemon {
    Daemon::start(Config::new(url), pgai_testkit::model().await)
        .await
        .expect("daemon start")
}

/// Waits until row `id` is embedded and returns (content, vector, retry_status).
async fn wait_embedded(db: &Client, id: &str) -> (String, Vec<f32>, String) {
    wait_for(&format!("row {id} to be embedded"), DEADLINE, || async {
        let row = db
            .query_opt(
                "SELECT content, embedding, retry_status FROM m0_episodic
                  WHERE id = $1 AND needs_embedding = FALSE AND embedding IS NOT NULL",
                &[&id],
            )
            .await
            .expect("select");
        row.map(|r| (r.get(0), r.get::<_, Vector>(1).to_vec(), r.get(2)))
    })
    .await
}

/// The row's vector is the model's vector of the row's current content.
async fn assert_vector_matches_content(db: &Client, id: &str) {
    let (content, vector, status) = wait_embedded(db, id).await;
    assert_eq!(status, "completed");
    let expected = pgai_testkit::model()
        .await
        .embed(vec![content.clone()])
        .await
        .expect("embed");
    let c = cosine(&vector, &expected[0]);
    assert!(
        c >= 0.9999,
        "row {id}: cosine {c} between stored vector and model({content:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_is_embedded_with_the_models_vector() {
    let (url, db) = schema_db("insert").await;
    let daemon = start_daemon(&url).await;
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('m1', 'I had coffee with Maria')",
        &[],
    )
    .await
    .unwrap();
    assert_vector_matches_content(&db, "m1").await;
    let r = db
        .query_one(
            "SELECT embedded_at IS NOT NULL, claimed_by IS NULL, embedding_model, retry_count FROM m0_episodic WHERE id = 'm1'",
            &[],
        )
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert!(r.get::<_, bool>(1), "claim cleared after write-back");
    assert_eq!(r.get::<_, String>(2), pgai_embed::MODEL_NAME);
    assert_eq!(r.get::<_, i32>(3), 0);
    assert!(daemon.monitor().snapshot().processed >= 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_update_gets_the_new_contents_vector() {
    let (url, db) = schema_db("update").await;
    let daemon = start_daemon(&url).await;
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('u1', 'the cat sat on the mat')",
        &[],
    )
    .await
    .unwrap();
    let (_, old_vec, _) = wait_embedded(&db, "u1").await;
    db.execute(
        "UPDATE m0_episodic SET content = 'quarterly revenue grew by ten percent' WHERE id = 'u1'",
        &[],
    )
    .await
    .unwrap();
    let (content, new_vec, _) = wait_embedded(&db, "u1").await;
    assert_eq!(content, "quarterly revenue grew by ten percent");
    assert!(
        cosine(&old_vec, &new_vec) < 0.9,
        "vector changed with the content"
    );
    assert_vector_matches_content(&db, "u1").await;
    let version: i64 = db
        .query_one(
            "SELECT content_version FROM m0_episodic WHERE id = 'u1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_while_no_daemon_runs_are_embedded_at_start() {
    let (url, db) = schema_db("backlog").await;
    let texts: Vec<String> = (0..50)
        .map(|i| format!("note number {i} about the garden"))
        .collect();
    for (i, t) in texts.iter().enumerate() {
        db.execute(
            "INSERT INTO m0_episodic (id, content) VALUES ($1, $2)",
            &[&format!("b{i}"), t],
        )
        .await
        .unwrap();
    }
    // Nobody listened to those notifications: the daemon must find the rows in the table.
    let daemon = start_daemon(&url).await;
    pgai_testkit::wait_drained(&db, DEADLINE).await;
    for i in [0, 17, 49] {
        assert_vector_matches_content(&db, &format!("b{i}")).await;
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_reaches_the_same_end_state() {
    let (url, db) = schema_db("polling").await;
    let mut cfg = Config::new(&url);
    cfg.immediate_trigger = false;
    cfg.poll_interval = Duration::from_millis(200);
    let daemon = Daemon::start(cfg, pgai_testkit::model().await)
        .await
        .unwrap();
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('p1', 'polling works too')",
        &[],
    )
    .await
    .unwrap();
    assert_vector_matches_content(&db, "p1").await;
    assert_eq!(
        daemon.monitor().snapshot().notifications,
        0,
        "no LISTEN in polling mode"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_init_twice_is_harmless_and_keeps_rows() {
    let (_url, db) = schema_db("init_twice").await;
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('k', 'keep me')",
        &[],
    )
    .await
    .unwrap();
    schema::init(&db, &Table::default(), pgai_embed::DIM)
        .await
        .expect("second init");
    let st = schema::status(&db, &Table::default()).await.unwrap();
    assert!(st.table_exists);
    assert_eq!(st.counts.rows, 1);
    assert_eq!(st.embedding_dim, Some(384));
    assert!(
        st.triggers
            .contains(&"m0_episodic_embedding_trigger".to_string()),
        "{:?}",
        st.triggers
    );
    schema::recreate(&db, &Table::default(), pgai_embed::DIM)
        .await
        .unwrap();
    assert_eq!(
        schema::status(&db, &Table::default())
            .await
            .unwrap()
            .counts
            .rows,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_refuses_a_database_without_schema_or_pgvector_in_one_line() {
    // No pgvector extension created.
    let url = fresh_database("no_vector").await;
    let err = Daemon::start(Config::new(&url), pgai_testkit::model().await)
        .await
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("pgvector") && !err.contains('\n'), "{err}");

    // pgvector, but no table.
    let db = connect(&url).await;
    db.batch_execute("CREATE EXTENSION vector").await.unwrap();
    let err = Daemon::start(Config::new(&url), pgai_testkit::model().await)
        .await
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("table m0_episodic does not exist") && err.contains("db init"),
        "{err}"
    );

    // A table whose vector column has another dimension.
    db.batch_execute(&schema::ddl(&Table::default(), 768))
        .await
        .unwrap();
    let err = Daemon::start(Config::new(&url), pgai_testkit::model().await)
        .await
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("vector(768)") && err.contains("384"), "{err}");
}

/// The write-back guard, driven step by step (no daemon): a claim whose row changed, or whose
/// lease expired and was re-claimed, writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_claims_never_write() {
    let (_url, db) = schema_db("guard").await;
    let table = Table::default();
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('g1', 'old content')",
        &[],
    )
    .await
    .unwrap();
    let mut claimer = Claimer::prepare(&db, &table, "test-a").await.unwrap();
    let writer = Writer::prepare(&db, &table, "model").await.unwrap();

    // Content changes between claim and write-back.
    let claim = claimer.claim(&db, &[], 10, 30.0, 3).await.unwrap();
    assert_eq!(claim.rows.len(), 1);
    db.execute(
        "UPDATE m0_episodic SET content = 'new content' WHERE id = 'g1'",
        &[],
    )
    .await
    .unwrap();
    let written = writer
        .complete(&db, &claim, vec![Embedded::single(vec![0.5; 384])])
        .await
        .unwrap();
    assert!(
        written.is_empty(),
        "old content's vector must not be written"
    );
    let r = db
        .query_one("SELECT needs_embedding, embedding IS NULL, claimed_by IS NULL FROM m0_episodic WHERE id = 'g1'", &[])
        .await
        .unwrap();
    assert_eq!(
        (
            r.get::<_, bool>(0),
            r.get::<_, bool>(1),
            r.get::<_, bool>(2)
        ),
        (true, true, true)
    );

    // Lease expires and another worker re-claims: the first holder cannot complete.
    let first = claimer.claim(&db, &[], 10, 0.001, 3).await.unwrap();
    assert_eq!(first.rows[0].content.as_deref(), Some("new content"));
    tokio::time::sleep(Duration::from_millis(5)).await; // let the 1 ms lease lapse
    let mut other = Claimer::prepare(&db, &table, "test-b").await.unwrap();
    let second = other.claim(&db, &[], 10, 30.0, 3).await.unwrap();
    assert_eq!(second.rows.len(), 1, "expired claim taken over");
    assert!(writer
        .complete(&db, &first, vec![Embedded::single(vec![0.5; 384])])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        writer
            .complete(&db, &second, vec![Embedded::single(vec![0.5; 384])])
            .await
            .unwrap()
            .len(),
        1
    );

    // A row deleted while claimed: write-back matches nothing, no error.
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('g2', 'short lived')",
        &[],
    )
    .await
    .unwrap();
    let claim = claimer.claim(&db, &[], 10, 30.0, 3).await.unwrap();
    db.execute("DELETE FROM m0_episodic WHERE id = 'g2'", &[])
        .await
        .unwrap();
    assert!(writer
        .complete(&db, &claim, vec![Embedded::single(vec![0.5; 384])])
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_content_is_embedded_and_bad_payloads_are_ignored() {
    let (url, db) = schema_db("odd").await;
    let daemon = start_daemon(&url).await;
    let long = "word ".repeat(2000);
    let cases = [
        ("empty", ""),
        ("blank", "   \n\t "),
        ("emoji", "🚀🔥 naïve café 日本語"),
        ("long", long.as_str()),
    ];
    for (id, content) in cases {
        db.execute(
            "INSERT INTO m0_episodic (id, content) VALUES ($1, $2)",
            &[&id, &content],
        )
        .await
        .unwrap();
    }
    // Garbage on the channel is only a wake-up; it must not disturb anything.
    db.batch_execute(&format!(
        "NOTIFY embedding_needed, 'no-such-id'; NOTIFY embedding_needed, ''; NOTIFY embedding_needed, '{}'",
        "x".repeat(7990)
    ))
    .await
    .unwrap();
    // An id too long for a NOTIFY payload still inserts (the trigger sends an empty hint).
    let long_id = "i".repeat(9000);
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ($1, 'long id')",
        &[&long_id],
    )
    .await
    .unwrap();
    for (id, _) in cases {
        assert_vector_matches_content(&db, id).await;
    }
    assert_vector_matches_content(&db, &long_id).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_leaves_no_claims_behind() {
    let (url, db) = schema_db("stop").await;
    let daemon = start_daemon(&url).await;
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content) SELECT 's' || g, 'sentence ' || g FROM generate_series(1, 200) g",
    )
    .await
    .unwrap();
    wait_for("some rows embedded", DEADLINE, || async {
        (daemon.monitor().snapshot().processed > 0).then_some(())
    })
    .await;
    daemon.stop().await;
    let held: i64 = db
        .query_one(
            "SELECT count(*) FROM m0_episodic WHERE claimed_by IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "a stopped daemon finishes its claims");
    // A new daemon finishes the rest.
    let daemon = start_daemon(&url).await;
    pgai_testkit::wait_drained(&db, DEADLINE * 2).await;
    daemon.stop().await;
}

/// Not a check (timings here are noisy): measures commit → vector for single inserts and prints
/// the distribution. `cargo test --release -p pgai-trigger --test e2e latency_report -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn latency_report() {
    let (url, db) = schema_db("latency").await;
    let daemon = start_daemon(&url).await;
    let mut ready = pgai_trigger::Notifications::listen(
        &url,
        "latency listener",
        &[pgai_trigger::CHANNEL_READY],
        DEADLINE,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(n) = ready.recv().await {
            let _ = tx.send((n.payload, Instant::now()));
        }
    });
    let insert = db
        .prepare("INSERT INTO m0_episodic (id, content) VALUES ($1, $2)")
        .await
        .unwrap();
    let n = 200;
    let mut client_ms = Vec::new();
    for i in 0..n {
        let id = format!("l{i}");
        let text = format!("short memory number {i}: met a friend for lunch");
        db.execute(&insert, &[&id, &text]).await.unwrap();
        let committed = Instant::now();
        loop {
            let (payload, at) = rx.recv().await.unwrap();
            if payload == id {
                if i >= 10 {
                    client_ms.push(at.duration_since(committed).as_secs_f64() * 1000.0);
                }
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db_ms: Vec<f64> = db
        .query("SELECT extract(epoch FROM embedded_at - queued_at)::float8 * 1000 FROM m0_episodic WHERE id <> 'l0'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let c = pgai_trigger::percentiles(client_ms);
    let d = pgai_trigger::percentiles(db_ms);
    println!("single inserts, 20/s, short texts, after 10 warm-up rows");
    println!("insert-commit -> embedding_ready received (client clock): {c:?}");
    println!("queued_at -> embedded_at (database clock):               {d:?}");
    daemon.stop().await;
}

/// A claim that expires in its holder's hands counts an attempt when taken over (the holder
/// crashed or hung on it); the last allowed attempt turns the row `failed` instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_over_an_expired_claim_counts_an_attempt_and_ends_failed() {
    let (_url, db) = schema_db("takeover").await;
    let table = Table::default();
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('poison', 'crashes every worker')",
        &[],
    )
    .await
    .unwrap();
    let mut claimer = Claimer::prepare(&db, &table, "crashy").await.unwrap();
    let max_retries = 3;
    for expected_count in 0..max_retries {
        let c = claimer
            .claim(&db, &[], 10, 0.001, max_retries)
            .await
            .unwrap();
        assert_eq!(c.rows.len(), 1, "claimed again after its lease expired");
        let r = db
            .query_one("SELECT retry_count, retry_status FROM m0_episodic", &[])
            .await
            .unwrap();
        assert_eq!(
            (r.get::<_, i32>(0), r.get::<_, String>(1)),
            (expected_count, "processing".into())
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // the 1 ms lease lapses: a "crash"
    }
    let c = claimer
        .claim(&db, &[], 10, 0.001, max_retries)
        .await
        .unwrap();
    assert!(
        c.rows.is_empty(),
        "the last attempt is used up: not claimed again"
    );
    let r = db
        .query_one(
            "SELECT retry_count, retry_status, last_error, claimed_by IS NULL FROM m0_episodic",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 3);
    assert_eq!(r.get::<_, String>(1), "failed");
    assert!(r.get::<_, String>(2).contains("lease expired"));
    assert!(r.get::<_, bool>(3));
}

/// Hinted ids are claimed first: a fresh insert does not wait behind a backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hinted_rows_jump_the_backlog() {
    let (_url, db) = schema_db("hints").await;
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content) SELECT 'old' || g, 'backlog ' || g FROM generate_series(1, 500) g;
         INSERT INTO m0_episodic (id, content) VALUES ('fresh', 'just arrived');",
    )
    .await
    .unwrap();
    let mut claimer = Claimer::prepare(&db, &Table::default(), "hints")
        .await
        .unwrap();
    let c = claimer
        .claim(
            &db,
            &["fresh".to_string(), "no-such-id".to_string()],
            4,
            30.0,
            3,
        )
        .await
        .unwrap();
    let ids: Vec<&str> = c.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[0], "fresh", "{ids:?}");
    assert!(
        ids[1..].iter().all(|id| id.starts_with("old")),
        "then the oldest: {ids:?}"
    );

    // A fresh claim takes the named rows and nothing of the backlog: a fresh batch stays as
    // small as what the notifications named.
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('fresh2', 'also just arrived')",
        &[],
    )
    .await
    .unwrap();
    let named = [
        "fresh2".to_string(),
        "fresh".to_string(), // claimed above: not due
        "no-such-id".to_string(),
    ];
    let c = claimer.claim_hinted(&db, &named, 30.0, 3).await.unwrap();
    let ids: Vec<&str> = c.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["fresh2"]);
    let c = claimer.claim_hinted(&db, &named, 30.0, 3).await.unwrap();
    assert!(c.rows.is_empty(), "nothing named is due any more");
}

/// The per-statement notify option: one notification per statement, same end state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_statement_notifications_embed_bulk_loads() {
    let url = fresh_database("per_statement").await;
    let db = connect(&url).await;
    schema::init_with(
        &db,
        &Table::default(),
        pgai_embed::DIM,
        pgai_trigger::NotifyMode::PerStatement,
    )
    .await
    .unwrap();
    let daemon = start_daemon(&url).await;
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content) SELECT 'bulk' || g, 'bulk row ' || g FROM generate_series(1, 300) g",
    )
    .await
    .unwrap();
    pgai_testkit::wait_drained(&db, DEADLINE * 2).await;
    let notes = daemon.monitor().snapshot().notifications;
    assert!(notes <= 3, "one notification per statement, got {notes}");
    for id in ["bulk1", "bulk150", "bulk300"] {
        assert_vector_matches_content(&db, id).await;
    }
    daemon.stop().await;
}

/// `/metrics` material: the Prometheus text carries the daemon's live counters and the gauges
/// sampled from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reflect_the_pipeline() {
    let (url, db) = schema_db("metrics").await;
    let daemon = start_daemon(&url).await;
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('x', 'metrics please')",
        &[],
    )
    .await
    .unwrap();
    wait_embedded(&db, "x").await;
    let text = wait_for("the counter to show the row", DEADLINE, || async {
        let t = daemon.monitor().render_prometheus();
        t.contains("\npgai_rows_embedded_total 1\n").then_some(t)
    })
    .await;
    assert!(
        text.contains("pgai_embedding_latency_seconds_count 1\n"),
        "{text}"
    );
    assert!(text.contains("\npgai_listener_connected 1\n"), "{text}");
    // The same per queue served, labelled with its vectorizer name.
    assert!(
        text.contains("\npgai_vectorizer_rows_embedded_total{vectorizer=\"m0_episodic\"} 1\n"),
        "{text}"
    );
    daemon.stop().await;
}

/// The daemon needs no more than SELECT and UPDATE on the table: schema changes are `db init`'s,
/// done by the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_with_only_select_and_update_is_enough() {
    let (url, db) = schema_db("least_privilege").await;
    let role = format!("app_{}", std::process::id());
    db.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF; END $$;
         ALTER ROLE {role} PASSWORD 'app-secret';
         GRANT SELECT, UPDATE ON m0_episodic TO {role};"
    ))
    .await
    .unwrap();
    // The cluster wants a password from every role: the superuser's in `url` becomes the app's.
    let (_, host_and_db) = url.split_once('@').expect("user@host in the URL");
    let app_url = format!("postgresql://{role}:app-secret@{host_and_db}");
    let daemon = Daemon::start(Config::new(&app_url), pgai_testkit::model().await)
        .await
        .expect("daemon as the app role");
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('lp', 'least privilege')",
        &[],
    )
    .await
    .unwrap();
    assert_vector_matches_content(&db, "lp").await;
    daemon.stop().await;
}

/// A row no notification names (a retry whose backoff ends) is claimed within the poll
/// interval even while notified inserts keep arriving faster than that interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_retries_are_claimed_while_inserts_keep_coming() {
    let (url, db) = schema_db("retrydue").await;
    let mut cfg = Config::new(&url);
    cfg.poll_interval = Duration::from_millis(300);
    let _daemon = Daemon::start(cfg, pgai_testkit::model().await)
        .await
        .expect("daemon start");
    // Its notification comes before it is due: the fresh claim finds nothing to take.
    db.execute(
        "INSERT INTO m0_episodic (id, content, retry_count, next_attempt_at)
         VALUES ('retry', 'a row waiting for its backoff', 1, clock_timestamp() + interval '1 s')",
        &[],
    )
    .await
    .unwrap();
    let stream = connect(&url).await;
    let started = Instant::now();
    let mut n = 0;
    let embedded = loop {
        // One notified insert every 30 ms: a wake-up ten times per poll interval.
        stream
            .execute(
                "INSERT INTO m0_episodic (id, content) VALUES ($1, 'a steady stream')",
                &[&format!("stream-{n}")],
            )
            .await
            .unwrap();
        n += 1;
        let done = db
            .query_opt(
                "SELECT 1 FROM m0_episodic WHERE id = 'retry' AND embedding IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .is_some();
        if done || started.elapsed() > DEADLINE {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    assert!(
        embedded,
        "the due retry was not claimed in {DEADLINE:?} of steady inserts ({n} rows)"
    );
    assert_vector_matches_content(&db, "retry").await;
}
