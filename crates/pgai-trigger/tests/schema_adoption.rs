//! `db init` on tables it did not make, and what its triggers do with explicit requests: a table
//! made with the original design's DDL verbatim keeps one HNSW index and gets the queue index
//! and a queue position for its rows; `SET needs_embedding = true` re-queues a failed row; the
//! server's notices about our DDL stay out of the log; health takes the table's dimension when
//! the provider's is unknown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use pgai_testkit::{fresh_database, wait_drained};
use pgai_trigger::{schema, Config, Daemon, ProviderKind, RowState, Settings, StoreFactory, Table};
use tokio_postgres::{AsyncMessage, Client};

const DEADLINE: Duration = Duration::from_secs(60);

/// The original design's DDL, verbatim.
const ORIGINAL_DDL: &str = r#"
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE m0_episodic (
    id              TEXT PRIMARY KEY,
    content         TEXT NOT NULL,
    metadata        JSONB DEFAULT '{}'::jsonb,
    embedding       VECTOR(384),
    needs_embedding BOOLEAN DEFAULT TRUE,
    retry_count     INTEGER DEFAULT 0,
    last_retry_at   TIMESTAMP,
    retry_status    TEXT DEFAULT 'pending',
    created_at      TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at      TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX m0_episodic_needs_embedding_idx ON m0_episodic (needs_embedding) WHERE needs_embedding = TRUE;
CREATE INDEX m0_episodic_retry_status_idx ON m0_episodic (retry_status);
CREATE INDEX m0_episodic_retry_count_idx ON m0_episodic (retry_count);
CREATE INDEX m0_episodic_embedding_idx ON m0_episodic USING hnsw (embedding vector_cosine_ops);
CREATE OR REPLACE FUNCTION notify_embedding_needed() RETURNS trigger AS $$
BEGIN PERFORM pg_notify('embedding_needed', NEW.id::text); RETURN NEW; END; $$ LANGUAGE plpgsql;
CREATE TRIGGER m0_episodic_embedding_trigger AFTER INSERT OR UPDATE OF needs_embedding ON m0_episodic
    FOR EACH ROW EXECUTE FUNCTION notify_embedding_needed();
"#;

async fn connect(url: &str) -> Client {
    pgai_trigger::connect(url, "schema adoption test")
        .await
        .expect("connect")
        .0
}

/// A connection whose server notices are collected (pgai_trigger::connect logs them instead).
async fn connect_collecting_notices(url: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let notices = Arc::new(Mutex::new(Vec::new()));
    let seen = notices.clone();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notice(n) = message {
                seen.lock()
                    .unwrap()
                    .push(format!("{}: {}", n.severity(), n.message()));
            }
        }
    });
    (client, notices)
}

/// The table's indexes, as (name, definition), by name.
async fn indexes(db: &Client) -> Vec<(String, String)> {
    db.query(
        "SELECT c.relname::text, pg_get_indexdef(c.oid) FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = 'm0_episodic'::regclass ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Everything `db init` could change: indexes (with their oids: a rebuilt index is a change),
/// triggers, columns, functions, and the rows' queue columns.
async fn snapshot(db: &Client) -> Vec<String> {
    let mut all = Vec::new();
    for sql in [
        "SELECT c.oid::text || ' ' || pg_get_indexdef(c.oid) FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'm0_episodic'::regclass",
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger
          WHERE tgrelid = 'm0_episodic'::regclass AND NOT tgisinternal",
        "SELECT attname || ' ' || format_type(atttypid, atttypmod) || ' ' ||
                coalesce(pg_get_expr(d.adbin, d.adrelid), '')
           FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE a.attrelid = 'm0_episodic'::regclass AND a.attnum > 0 AND NOT a.attisdropped",
        "SELECT p.oid::text || ' ' || p.proname || ' ' || md5(p.prosrc) FROM pg_proc p
          WHERE p.pronamespace = 'public'::regnamespace",
        "SELECT concat_ws(' ', id, content_version, queued_at, needs_embedding, retry_status,
                          retry_count, embedding IS NOT NULL)
           FROM m0_episodic",
    ] {
        let mut part: Vec<String> = db
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        part.sort();
        all.extend(part);
    }
    all
}

async fn version(db: &Client, id: &str) -> i64 {
    db.query_one(
        "SELECT content_version FROM m0_episodic WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .get(0)
}

async fn state(db: &Client, id: &str) -> RowState {
    let s: String = db
        .query_one(
            &format!(
                "SELECT {} FROM m0_episodic WHERE id = $1",
                RowState::case_sql()
            ),
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    RowState::parse(&s).unwrap_or_else(|| panic!("state {s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_init_adopts_a_table_made_with_the_original_ddl() {
    let url = fresh_database("original_ddl").await;
    let db = connect(&url).await;
    db.batch_execute(ORIGINAL_DDL).await.expect("original DDL");
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content) VALUES
             ('o1', 'I had coffee with Maria'), ('o2', 'The cat sleeps on the sofa'),
             ('o3', 'Rust compiles to native code');
         INSERT INTO m0_episodic (id, content, needs_embedding) VALUES ('off', 'not wanted', FALSE);",
    )
    .await
    .unwrap();
    let table = Table::default();

    schema::init(&db, &table, pgai_embed::DIM)
        .await
        .expect("first db init");
    // A row that lost its queue position (say copied in with NULL): the next init gives it one.
    db.batch_execute("UPDATE m0_episodic SET queued_at = NULL WHERE id = 'o3'")
        .await
        .unwrap();
    schema::init(&db, &table, pgai_embed::DIM)
        .await
        .expect("second db init");

    let idx = indexes(&db).await;
    let hnsw: Vec<&(String, String)> = idx
        .iter()
        .filter(|(_, d)| d.contains("USING hnsw"))
        .collect();
    assert_eq!(hnsw.len(), 1, "exactly one HNSW index: {idx:#?}");
    assert_eq!(
        hnsw[0].0, "m0_episodic_embedding_idx",
        "the original one is kept"
    );
    let queue: Vec<&(String, String)> = idx
        .iter()
        .filter(|(_, d)| d.ends_with("USING btree (queued_at) WHERE (needs_embedding = true)"))
        .collect();
    assert_eq!(queue.len(), 1, "the queue index: {idx:#?}");
    assert_ne!(
        queue[0].0, "m0_episodic_needs_embedding_idx",
        "that name is the original's index on needs_embedding"
    );
    assert!(
        idx.iter()
            .any(|(n, d)| n == "m0_episodic_needs_embedding_idx"
                && d.contains("(needs_embedding) WHERE")),
        "the original's index is left alone: {idx:#?}"
    );
    for column in ["retry_status", "retry_count"] {
        let n = idx
            .iter()
            .filter(|(_, d)| d.ends_with(&format!("USING btree ({column})")))
            .count();
        assert_eq!(n, 1, "one index on {column}: {idx:#?}");
    }
    let unqueued: i64 = db
        .query_one(
            "SELECT count(*) FROM m0_episodic WHERE needs_embedding AND queued_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unqueued, 0, "every queued row has a queue position");
    for id in ["o1", "o2", "o3"] {
        assert_eq!(state(&db, id).await, RowState::Pending, "{id}");
    }
    assert_eq!(state(&db, "off").await, RowState::NotQueued);

    // A third run changes nothing.
    let before = snapshot(&db).await;
    schema::init(&db, &table, pgai_embed::DIM)
        .await
        .expect("third db init");
    assert_eq!(snapshot(&db).await, before);

    // The daemon embeds the old rows.
    let daemon = Daemon::start(Config::new(&url), pgai_testkit::model().await)
        .await
        .expect("daemon on the adopted table");
    wait_drained(&db, DEADLINE).await;
    for id in ["o1", "o2", "o3"] {
        assert_eq!(state(&db, id).await, RowState::Completed, "{id}");
    }
    assert_eq!(state(&db, "off").await, RowState::NotQueued);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_needs_embedding_requeues_a_failed_row() {
    let url = fresh_database("requeue_failed").await;
    let db = connect(&url).await;
    schema::init(&db, &Table::default(), pgai_embed::DIM)
        .await
        .unwrap();
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('f', 'gave up once'), ('p', 'pending');
         UPDATE m0_episodic SET retry_status = 'failed', retry_count = 3, last_error = 'rejected',
                                next_attempt_at = now() + interval '1 hour'
          WHERE id = 'f';",
    )
    .await
    .unwrap();
    assert_eq!(state(&db, "f").await, RowState::Failed);
    let v0 = version(&db, "f").await;

    // The failed row keeps needs_embedding = TRUE: setting it again re-queues it all the same.
    db.execute(
        "UPDATE m0_episodic SET needs_embedding = true WHERE id = 'f'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(state(&db, "f").await, RowState::Pending);
    let r = db
        .query_one(
            "SELECT retry_count, retry_status, last_error IS NULL, next_attempt_at IS NULL
               FROM m0_episodic WHERE id = 'f'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, bool>(2),
            r.get::<_, bool>(3)
        ),
        (0, "pending".to_string(), true, true)
    );
    assert_eq!(
        version(&db, "f").await,
        v0 + 1,
        "a claim on the old version is void"
    );

    // New content and the flag in one statement: one new version, not two.
    let p0 = version(&db, "p").await;
    db.execute(
        "UPDATE m0_episodic SET content = 'pending, edited', needs_embedding = true WHERE id = 'p'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(version(&db, "p").await, p0 + 1);

    // The daemon embeds both; its write-back (needs_embedding = FALSE) re-queues nothing.
    let daemon = Daemon::start(Config::new(&url), pgai_testkit::model().await)
        .await
        .expect("daemon");
    wait_drained(&db, DEADLINE).await;
    for id in ["f", "p"] {
        assert_eq!(state(&db, id).await, RowState::Completed, "{id}");
    }
    assert_eq!(version(&db, "f").await, v0 + 1);
    daemon.stop().await;

    // Setting it to false leaves a row alone.
    db.execute(
        "UPDATE m0_episodic SET needs_embedding = false WHERE id = 'f'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(state(&db, "f").await, RowState::Completed);
    assert_eq!(version(&db, "f").await, v0 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_init_sends_no_notices() {
    let url = fresh_database("no_notices").await;
    let (db, notices) = connect_collecting_notices(&url).await;
    let table = Table::default();
    schema::init(&db, &table, pgai_embed::DIM)
        .await
        .expect("first init");
    schema::init(&db, &table, pgai_embed::DIM)
        .await
        .expect("second init");
    schema::recreate(&db, &table, pgai_embed::DIM)
        .await
        .expect("recreate");
    // The setting was local to init's transaction: the connection still gets notices.
    db.batch_execute("DO $$ BEGIN RAISE NOTICE 'probe'; END $$")
        .await
        .unwrap();
    db.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(*notices.lock().unwrap(), ["NOTICE: probe"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_takes_the_tables_dimension_when_the_provider_is_remote() {
    let url = fresh_database("remote_dim").await;
    let db = connect(&url).await;
    schema::init(&db, &Table::default(), 8).await.unwrap();

    let settings = |provider: ProviderKind, dimensions: Option<usize>| {
        let mut s = Settings::default();
        s.database.url = Some(url.clone());
        s.embedding.provider = provider;
        // Never called: health does not embed.
        s.embedding.url = Some("http://127.0.0.1:9/v1".into());
        s.embedding.dimensions = dimensions;
        s
    };
    let schema_check = |s: Settings| async move {
        let store = StoreFactory::create(&s).await.expect("store");
        let health = store.health_status().await;
        health.checks["schema"].clone()
    };

    let remote = schema_check(settings(ProviderKind::Openai, None)).await;
    assert!(remote.ok, "{}", remote.detail);

    // A dimension that is known is still checked: the configured one, the bundled model's.
    let configured = schema_check(settings(ProviderKind::Openai, Some(16))).await;
    assert!(
        !configured.ok && configured.detail.contains("vector(8)"),
        "{}",
        configured.detail
    );
    let local = schema_check(settings(ProviderKind::Local, None)).await;
    assert!(
        !local.ok && local.detail.contains("vector(8)") && local.detail.contains("384"),
        "{}",
        local.detail
    );
}
