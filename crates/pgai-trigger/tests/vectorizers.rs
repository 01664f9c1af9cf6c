//! Vectorizers served by a running daemon, on the real cluster with the real model: a user's
//! own table, its key, a template over several columns, chunks.

use std::time::Duration;

use pgai_testkit::{cosine, fresh_database, wait_for};
use pgai_trigger::{schema, Config, Daemon, Table};
use pgvector::Vector;
use tokio_postgres::Client;

const DEADLINE: Duration = Duration::from_secs(60);

async fn connect(url: &str) -> Client {
    pgai_trigger::connect(url, "vectorizer test")
        .await
        .expect("connect")
        .0
}

async fn setup(prefix: &str) -> (String, Client) {
    let url = fresh_database(prefix).await;
    let db = connect(&url).await;
    schema::init(&db, &Table::default(), pgai_embed::DIM)
        .await
        .expect("db init");
    (url, db)
}

async fn start_daemon(url: &str) -> Daemon {
    Daemon::start(Config::new(url), pgai_testkit::model().await)
        .await
        .expect("daemon start")
}

/// Waits until the vectorizer's queue has nothing pending or processing, and returns its
/// (embedded, failed) counts.
async fn wait_vectorizer_drained(db: &Client, name: &str) -> (i64, i64) {
    wait_for(&format!("vectorizer {name} to drain"), DEADLINE, || async {
        let r = db
            .query_one(
                "SELECT pending + processing, embedded, failed FROM pgai.vectorizer_status WHERE name = $1",
                &[&name],
            )
            .await
            .expect("status");
        (r.get::<_, i64>(0) == 0).then(|| (r.get(1), r.get(2)))
    })
    .await
}

/// Every stored chunk's vector is the model's vector of the stored chunk text.
async fn assert_chunks_match_model(db: &Client, table: &str) -> usize {
    let rows = db
        .query(&format!("SELECT chunk, embedding FROM {table}"), &[])
        .await
        .expect("chunks");
    let model = pgai_testkit::model().await;
    for r in &rows {
        let chunk: String = r.get(0);
        let v: Vector = r.get(1);
        let expected = model.embed(vec![chunk.clone()]).await.expect("embed");
        let c = cosine(&v.to_vec(), &expected[0]);
        assert!(c >= 0.9999, "cosine {c} for chunk {chunk:?}");
    }
    rows.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_vectorizer_over_a_user_table_is_kept_live() {
    let (url, db) = setup("vz_chunked").await;
    db.batch_execute(
        "CREATE TABLE documents (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text, body text, views int DEFAULT 0);
         INSERT INTO documents (title, body) VALUES ('Old', 'A document that was there before the vectorizer.');",
    )
    .await
    .unwrap();
    db.execute(
        "SELECT pgai.create_vectorizer('docs', 'documents', template => E'{title}\\n\\n{body}', chunk_tokens => 64, chunk_overlap => 8)",
        &[],
    )
    .await
    .expect("create");
    let daemon = start_daemon(&url).await;
    let gpl = std::fs::read_to_string("/usr/share/common-licenses/GPL-3")
        .unwrap_or_else(|_| "A long text. ".repeat(2000));
    db.execute(
        "INSERT INTO documents (title, body) VALUES ('GPL', $1)",
        &[&gpl],
    )
    .await
    .unwrap();
    let (embedded, failed) = wait_vectorizer_drained(&db, "docs").await;
    assert_eq!((embedded, failed), (2, 0));
    let n: i64 = db
        .query_one("SELECT count(*) FROM docs_chunks WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 50, "the licence is cut into many chunks, got {n}");
    assert_chunks_match_model(&db, "docs_chunks").await;
    daemon.stop().await;
}
