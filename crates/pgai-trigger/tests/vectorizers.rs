//! Vectorizers served by a running daemon, on the real cluster with the real model: users' own
//! tables with every key shape, templates over several columns, chunks, column destinations;
//! deletes, truncates, no-op updates, concurrent updates, backfills, drops, model changes and a
//! row the destination refuses. Every stored vector is checked against the model, and every
//! row's chunks against the chunker cutting the row's current text.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgai_testkit::{cosine, fresh_database, wait_for};
use pgai_trigger::vectorizer::{admin, Vectorizer};
use pgai_trigger::{quote_ident, schema, Config, Daemon, Table};
use pgvector::Vector;
use tokio_postgres::Client;

const DEADLINE: Duration = Duration::from_secs(90);

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
    start_daemon_with(Config::new(url)).await
}

async fn start_daemon_with(config: Config) -> Daemon {
    Daemon::start(config, pgai_testkit::model().await)
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

/// Checks each (text, stored vector) pair against the model's vector of the text.
async fn assert_vectors_match_model(pairs: Vec<(String, Vector)>) -> usize {
    let model = pgai_testkit::model().await;
    for group in pairs.chunks(32) {
        let texts: Vec<String> = group.iter().map(|(t, _)| t.clone()).collect();
        let expected = model.embed(texts).await.expect("embed");
        for ((text, stored), e) in group.iter().zip(expected) {
            let c = cosine(&stored.to_vec(), &e);
            assert!(c >= 0.9999, "cosine {c} for text {text:?}");
        }
    }
    pairs.len()
}

/// Every stored chunk's vector is the model's vector of the stored chunk text.
async fn assert_chunks_match_model(db: &Client, table: &str) -> usize {
    let rows = db
        .query(&format!("SELECT chunk, embedding FROM {table}"), &[])
        .await
        .expect("chunks");
    assert_vectors_match_model(rows.iter().map(|r| (r.get(0), r.get(1))).collect()).await
}

fn q(name: &str) -> String {
    quote_ident(name)
}

/// The tokenizer the daemon chunks with, loaded once per test process.
fn chunker() -> &'static pgai_embed::Chunker {
    static CHUNKER: OnceLock<pgai_embed::Chunker> = OnceLock::new();
    CHUNKER.get_or_init(|| {
        pgai_embed::Chunker::from_files(&pgai_embed::ModelFiles::locate().expect("model files"))
            .expect("chunker")
    })
}

/// The chunk texts `v` must store for a row whose rendered text is `text`.
fn expected_chunks(v: &Vectorizer, text: &str) -> Vec<String> {
    match v.chunk_tokens {
        None => vec![text.to_string()],
        Some(tokens) => {
            let opts = pgai_embed::ChunkOptions::new(
                tokens as usize,
                v.chunk_overlap.unwrap_or(0) as usize,
            )
            .expect("chunk options");
            chunker()
                .split(text, &opts)
                .expect("split")
                .into_iter()
                .map(|c| c.text)
                .collect()
        }
    }
}

async fn vectorizer(db: &Client, name: &str) -> Vectorizer {
    admin::get(db, name)
        .await
        .expect("catalog")
        .unwrap_or_else(|| panic!("no vectorizer {name}"))
}

/// A canonical key (JSON array text) over `alias`'s columns `cols`.
fn key_sql(alias: &str, cols: &[String]) -> String {
    let cols: Vec<String> = cols.iter().map(|c| format!("{alias}.{}", q(c))).collect();
    format!("jsonb_build_array({})::text", cols.join(", "))
}

/// The state of a table-destination vectorizer once drained, checked from the outside: the
/// queue holds exactly the source's keys, each completed with the vectorizer's model and the
/// hash of the row's CURRENT text; the chunk table holds, for those keys and no others,
/// exactly the chunker's cut of the current text (chunk_seq 0, 1, …), all written at one time
/// that is the queue row's `embedded_at`. Returns the number of chunks.
async fn assert_current(db: &Client, name: &str) -> usize {
    let v = vectorizer(db, name).await;
    let src = format!("{}.{}", q(&v.source_schema), q(&v.source_table));
    let chunks = format!("{}.{}", q(&v.dest_schema), q(&v.dest_name));
    let queue = format!("{}.{}", q(&v.queue_schema), q(&v.queue_table));
    let qcols: Vec<String> = v.key_columns.iter().map(|k| format!("k_{k}")).collect();
    let texts: HashMap<String, (String, String)> = db
        .query(
            &format!(
                "SELECT {}, {t}, md5({t}) FROM {src} s",
                key_sql("s", &v.key_columns),
                t = v.text_sql
            ),
            &[],
        )
        .await
        .expect("source")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let queued: HashMap<String, QueueRow> = db
        .query(
            &format!(
                "SELECT {}, needs_embedding, retry_status, embedded_at::text, embedding_model, text_hash FROM {queue} q",
                key_sql("q", &qcols)
            ),
            &[],
        )
        .await
        .expect("queue")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))))
        .collect();
    let stored: HashMap<String, (Vec<String>, Vec<i32>, i64, String)> = db
        .query(
            &format!(
                "SELECT {k}, array_agg(chunk ORDER BY chunk_seq), array_agg(chunk_seq ORDER BY chunk_seq),
                        count(DISTINCT embedded_at), min(embedded_at)::text
                   FROM {chunks} c GROUP BY 1",
                k = key_sql("c", &v.key_columns)
            ),
            &[],
        )
        .await
        .expect("chunks")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    let source_keys: HashSet<&String> = texts.keys().collect();
    let queue_keys: HashSet<&String> = queued.keys().collect();
    assert_eq!(
        source_keys, queue_keys,
        "{name}: queue keys differ from the source's"
    );
    let orphans: Vec<&String> = stored.keys().filter(|k| !texts.contains_key(*k)).collect();
    assert!(
        orphans.is_empty(),
        "{name}: chunks of rows not in the source: {orphans:?}"
    );
    let mut n = 0;
    for (key, (text, hash)) in &texts {
        let (needs, status, embedded_at, model, text_hash) = &queued[key];
        assert!(
            !needs,
            "{name} {key}: still needs an embedding ({status:?})"
        );
        assert_eq!(status.as_deref(), Some("completed"), "{name} {key}");
        assert_eq!(
            model.as_deref(),
            Some(v.model.as_str()),
            "{name} {key}: embedding_model"
        );
        assert_eq!(
            text_hash.as_deref(),
            Some(hash.as_str()),
            "{name} {key}: the queue records the hash of another text than the current one"
        );
        let expected = expected_chunks(&v, text);
        let Some((got, seqs, times, at)) = stored.get(key) else {
            assert!(
                expected.is_empty(),
                "{name} {key}: no chunks stored for {text:?}"
            );
            continue;
        };
        assert_eq!(
            got, &expected,
            "{name} {key}: the stored chunks are not the chunking of the current text"
        );
        let want_seqs: Vec<i32> = (0..expected.len() as i32).collect();
        assert_eq!(seqs, &want_seqs, "{name} {key}: chunk_seq");
        assert_eq!(
            *times, 1,
            "{name} {key}: the chunks of one row were written at {times} different times"
        );
        assert_eq!(
            Some(at),
            embedded_at.as_ref(),
            "{name} {key}: chunk and queue embedded_at differ"
        );
        n += got.len();
    }
    n
}

/// needs_embedding, retry_status, embedded_at, embedding_model, text_hash of a queue row.
type QueueRow = (
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Deterministic prose: `words` words picked from a small vocabulary by `seed`.
fn prose(seed: u64, words: usize) -> String {
    const VOCABULARY: [&str; 48] = [
        "river", "mountain", "quiet", "database", "index", "vector", "garden", "engine", "paper",
        "window", "storm", "harbour", "query", "trigger", "lantern", "compiler", "orchard",
        "signal", "winter", "market", "bridge", "kernel", "violin", "meadow", "planet", "ticket",
        "copper", "shadow", "library", "theory", "canyon", "rocket", "pencil", "forest", "market",
        "tensor", "island", "battery", "poem", "glacier", "tunnel", "circuit", "harvest", "falcon",
        "journal", "desert", "anchor", "velvet",
    ];
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(words);
    for _ in 0..words {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push(VOCABULARY[(x >> 33) as usize % VOCABULARY.len()]);
    }
    out.join(" ")
}

/// Row count of a query's single bigint.
async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

/// (content_version, needs_embedding) of every queue row, by id.
async fn queue_state(db: &Client, queue: &str) -> Vec<(String, i64, bool)> {
    db.query(
        &format!("SELECT id, content_version, needs_embedding FROM {queue} ORDER BY id"),
        &[],
    )
    .await
    .expect("queue state")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// (key, chunk_seq, embedded_at) of every chunk.
async fn chunk_times(db: &Client, table: &str) -> Vec<(String, i32, String)> {
    db.query(
        &format!("SELECT id::text, chunk_seq, embedded_at::text FROM {table} ORDER BY 1, 2"),
        &[],
    )
    .await
    .expect("chunk times")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Waits until the daemon's monitor has counted `n` rows written.
async fn wait_processed(daemon: &Daemon, n: u64) {
    wait_for(
        &format!("{n} rows counted as written"),
        DEADLINE,
        || async { (daemon.monitor().snapshot().processed >= n).then_some(()) },
    )
    .await;
    assert_eq!(daemon.monitor().snapshot().processed, n, "rows written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_vectorizer_over_a_user_table_is_kept_live() {
    let t = Instant::now();
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
    assert_current(&db, "docs").await;
    assert_chunks_match_model(&db, "docs_chunks").await;
    daemon.stop().await;
    eprintln!("chunked licence: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_uuid_composite_and_partitioned_sources_are_embedded() {
    let t = Instant::now();
    let (url, db) = setup("vz_keys").await;
    db.batch_execute(
        "CREATE TABLE t_int (id integer PRIMARY KEY, body text);
         CREATE TABLE t_uuid (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), body text);
         CREATE TABLE t_comp (tenant text, n bigint, body text, PRIMARY KEY (tenant, n));
         CREATE TABLE t_part (region text, id bigint, body text, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
         CREATE TABLE t_part_eu PARTITION OF t_part FOR VALUES IN ('eu');
         CREATE TABLE t_part_us PARTITION OF t_part FOR VALUES IN ('us');",
    )
    .await
    .unwrap();
    // Rows from before the vectorizers (the backfill) and after (the triggers).
    async fn rows(db: &Client, from: u64, to: u64) {
        for i in from..to {
            let body = prose(i, 10 + (i as usize * 13) % 90);
            db.execute("INSERT INTO t_int VALUES ($1, $2)", &[&(i as i32), &body])
                .await
                .unwrap();
            db.execute("INSERT INTO t_uuid (body) VALUES ($1)", &[&body])
                .await
                .unwrap();
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            db.execute(
                "INSERT INTO t_comp VALUES ($1, $2, $3)",
                &[&tenant, &(i as i64), &body],
            )
            .await
            .unwrap();
            let region = if i % 2 == 0 { "eu" } else { "us" };
            db.execute(
                "INSERT INTO t_part VALUES ($1, $2, $3)",
                &[&region, &(i as i64), &body],
            )
            .await
            .unwrap();
        }
    }
    rows(&db, 1, 5).await;
    db.batch_execute(
        "SELECT pgai.create_vectorizer('v_int', 't_int', text_column => 'body');
         SELECT pgai.create_vectorizer('v_uuid', 't_uuid', template => 'Note: {body}', chunk_tokens => 32, chunk_overlap => 4);
         SELECT pgai.create_vectorizer('v_comp', 't_comp', template => '{tenant} / {body}', chunk_tokens => 48);
         SELECT pgai.create_vectorizer('v_part', 't_part', text_column => 'body', chunk_tokens => 40, chunk_overlap => 8);",
    )
    .await
    .expect("create");
    for (name, types) in [
        ("v_int", vec!["integer"]),
        ("v_uuid", vec!["uuid"]),
        ("v_comp", vec!["text", "bigint"]),
        ("v_part", vec!["text", "bigint"]),
    ] {
        assert_eq!(vectorizer(&db, name).await.key_types, types, "{name}");
    }
    let daemon = start_daemon(&url).await;
    rows(&db, 5, 12).await;
    // A NULL text renders as ''; a composite key changes; a row moves to another partition;
    // a uuid-keyed row's text changes.
    db.batch_execute(
        "INSERT INTO t_int VALUES (100, NULL);
         UPDATE t_comp SET n = n + 1000 WHERE tenant = 'acme' AND n = 2;
         UPDATE t_part SET region = 'us' WHERE region = 'eu' AND id = 2;
         UPDATE t_uuid SET body = 'rewritten: ' || body WHERE body = (SELECT min(body) FROM t_uuid);",
    )
    .await
    .unwrap();
    for (name, rows) in [
        ("v_int", 12),
        ("v_uuid", 11),
        ("v_comp", 11),
        ("v_part", 11),
    ] {
        assert_eq!(
            wait_vectorizer_drained(&db, name).await,
            (rows, 0),
            "{name}"
        );
        let chunks = assert_current(&db, name).await;
        let v = vectorizer(&db, name).await;
        let checked =
            assert_chunks_match_model(&db, &format!("{}.{}", q(&v.dest_schema), q(&v.dest_name)))
                .await;
        assert_eq!(checked, chunks, "{name}");
        if name != "v_int" {
            assert!(
                chunks as i64 > rows,
                "{name}: long texts make several chunks, got {chunks}"
            );
        }
    }
    // The composite key's canonical id, and the moved row under its new key only.
    assert_eq!(
        count(
            &db,
            r#"SELECT count(*) FROM pgai.v_comp_queue WHERE id = '["acme", 1002]'"#
        )
        .await,
        1
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM v_comp_chunks WHERE n = 2").await,
        0
    );
    assert!(
        count(
            &db,
            "SELECT count(*) FROM v_part_chunks WHERE region = 'us' AND id = 2"
        )
        .await
            > 0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM v_part_chunks WHERE region = 'eu' AND id = 2"
        )
        .await,
        0
    );
    daemon.stop().await;
    eprintln!("key shapes: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_destination_holds_the_vector_of_the_rendered_text() {
    let t = Instant::now();
    let (url, db) = setup("vz_column").await;
    db.batch_execute(
        "CREATE TABLE notes (id bigint PRIMARY KEY, title text, body text);
         INSERT INTO notes VALUES (1, 'Groceries', 'milk, eggs and bread'), (2, 'Trip', NULL);
         SELECT pgai.create_vectorizer('notes_vec', 'notes', template => '{title}: {body}', destination => 'column:embedding');",
    )
    .await
    .expect("create");
    let daemon = start_daemon(&url).await;
    for i in 3..10i64 {
        db.execute(
            "INSERT INTO notes VALUES ($1, $2, $3)",
            &[&i, &format!("Note {i}"), &prose(i as u64, 20)],
        )
        .await
        .unwrap();
    }
    let check = || async {
        assert_eq!(
            count(&db, "SELECT count(*) FROM notes WHERE embedding IS NULL").await,
            0
        );
        let v = vectorizer(&db, "notes_vec").await;
        let rows = db
            .query(
                &format!("SELECT {}, embedding FROM notes s", v.text_sql),
                &[],
            )
            .await
            .unwrap();
        assert_vectors_match_model(rows.iter().map(|r| (r.get(0), r.get(1))).collect()).await
    };
    assert_eq!(wait_vectorizer_drained(&db, "notes_vec").await, (9, 0));
    assert_eq!(check().await, 9);
    let rendered: String = db
        .query_one(
            "SELECT concat(title, ': ', body) FROM notes WHERE id = 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rendered, "Trip: ");
    // An update's vector replaces the old one.
    db.execute(
        "UPDATE notes SET body = 'a visit to the glacier' WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(wait_vectorizer_drained(&db, "notes_vec").await, (9, 0));
    assert_eq!(check().await, 9);
    // Deleting a row removes its queue row.
    db.execute("DELETE FROM notes WHERE id IN (3, 4)", &[])
        .await
        .unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pgai.notes_vec_queue WHERE id IN ('3', '4')"
        )
        .await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgai.notes_vec_queue").await,
        7
    );
    daemon.stop().await;
    eprintln!("column destination: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_truncates_leave_no_orphan_chunks_or_queue_rows() {
    let t = Instant::now();
    let (url, db) = setup("vz_delete").await;
    db.batch_execute(
        "CREATE TABLE events (region text, id bigint, body text, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
         CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
         SELECT pgai.create_vectorizer('ev', 'events', text_column => 'body', chunk_tokens => 24, chunk_overlap => 4);",
    )
    .await
    .expect("create");
    let daemon = start_daemon(&url).await;
    let insert = |from: i64, to: i64| {
        let db = &db;
        async move {
            for i in from..to {
                let region = if i % 2 == 0 { "eu" } else { "us" };
                db.execute(
                    "INSERT INTO events VALUES ($1, $2, $3)",
                    &[&region, &i, &prose(i as u64, 30 + i as usize % 40)],
                )
                .await
                .unwrap();
            }
        }
    };
    insert(0, 20).await;
    assert_eq!(wait_vectorizer_drained(&db, "ev").await, (20, 0));
    assert!(assert_current(&db, "ev").await > 20);
    // Deleting embedded rows removes their queue rows and chunks in the same transaction.
    db.execute("DELETE FROM events WHERE id IN (1, 2, 3)", &[])
        .await
        .unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM ev_chunks WHERE id IN (1, 2, 3)").await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pgai.ev_queue WHERE k_id IN (1, 2, 3)"
        )
        .await,
        0
    );
    // Rows deleted while queued or being embedded: their write-back must not resurrect chunks.
    insert(20, 40).await;
    db.execute("DELETE FROM events WHERE id >= 20 AND id % 3 = 0", &[])
        .await
        .unwrap();
    assert_eq!(wait_vectorizer_drained(&db, "ev").await, (30, 0));
    assert_current(&db, "ev").await;
    // TRUNCATE of one partition: that partition's rows go, the other's stay untouched.
    let us_before = chunk_times(&db, "ev_chunks WHERE region = 'us'").await;
    db.batch_execute("TRUNCATE events_eu").await.unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM ev_chunks WHERE region = 'eu'").await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pgai.ev_queue WHERE k_region = 'eu'"
        )
        .await,
        0
    );
    assert_eq!(
        chunk_times(&db, "ev_chunks WHERE region = 'us'").await,
        us_before
    );
    assert_current(&db, "ev").await;
    // TRUNCATE of the whole table: nothing left.
    db.batch_execute("TRUNCATE events").await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM ev_chunks").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM pgai.ev_queue").await, 0);
    // And the vectorizer goes on.
    insert(100, 104).await;
    assert_eq!(wait_vectorizer_drained(&db, "ev").await, (4, 0));
    assert_current(&db, "ev").await;
    daemon.stop().await;
    eprintln!("deletes and truncates: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_that_leave_the_rendered_text_equal_embed_nothing() {
    let t = Instant::now();
    let (url, db) = setup("vz_noop").await;
    db.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, views int NOT NULL DEFAULT 0);
         SELECT pgai.create_vectorizer('d', 'docs', template => '{title} {body}', chunk_tokens => 16, chunk_overlap => 2);",
    )
    .await
    .expect("create");
    let daemon = start_daemon(&url).await;
    for (id, title, body) in [
        (1, "a", format!("b c {}", prose(1, 30))),
        (2, "two", prose(2, 40)),
        (3, "three", prose(3, 40)),
    ] {
        db.execute(
            "INSERT INTO docs (id, title, body) VALUES ($1, $2, $3)",
            &[&id, &title, &body],
        )
        .await
        .unwrap();
    }
    assert_eq!(wait_vectorizer_drained(&db, "d").await, (3, 0));
    wait_processed(&daemon, 3).await;
    let before = daemon.monitor().snapshot();
    let queue_before = queue_state(&db, "pgai.d_queue").await;
    let chunks_before = chunk_times(&db, "d_chunks").await;
    assert!(chunks_before.len() > 3, "several chunks per row");
    // A column no template uses; the same value again; two columns changed so that the
    // rendered text stays equal ("a" + " " + "b c …" = "a b" + " " + "c …").
    db.batch_execute(
        "UPDATE docs SET views = views + 1;
         UPDATE docs SET body = body WHERE id = 2;
         UPDATE docs SET title = 'a b', body = substr(body, 3) WHERE id = 1;",
    )
    .await
    .unwrap();
    let title: String = db
        .query_one("SELECT title FROM docs WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(title, "a b", "the update did happen");
    // Nothing was queued: no model call can follow.
    assert_eq!(queue_state(&db, "pgai.d_queue").await, queue_before);
    // A real change of row 3, as a marker: once it is written, the daemon has seen everything
    // committed before it.
    db.execute("UPDATE docs SET body = 'a new body' WHERE id = 3", &[])
        .await
        .unwrap();
    assert_eq!(wait_vectorizer_drained(&db, "d").await, (3, 0));
    wait_processed(&daemon, before.processed + 1).await;
    let after = daemon.monitor().snapshot();
    assert_eq!(after.batches, before.batches + 1, "one batch: the marker's");
    let chunks_after = chunk_times(&db, "d_chunks").await;
    let untouched = |c: &Vec<(String, i32, String)>| -> Vec<(String, i32, String)> {
        c.iter().filter(|(id, _, _)| id != "3").cloned().collect()
    };
    assert_eq!(
        untouched(&chunks_after),
        untouched(&chunks_before),
        "rows 1 and 2 not rewritten"
    );
    assert_ne!(chunks_after, chunks_before, "row 3 rewritten");
    assert_current(&db, "d").await;
    daemon.stop().await;
    eprintln!("no-op updates: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_never_leave_mixed_or_stale_chunks() {
    let t = Instant::now();
    let (url, db) = setup("vz_race").await;
    db.batch_execute(
        "CREATE TABLE hot (id int PRIMARY KEY, body text);
         INSERT INTO hot SELECT g, 'first text of row ' || g FROM generate_series(1, 4) g;
         SELECT pgai.create_vectorizer('hot', 'hot', text_column => 'body', chunk_tokens => 20, chunk_overlap => 3);",
    )
    .await
    .expect("create");
    let daemon = start_daemon(&url).await;
    const WRITERS: u64 = 3;
    // The writers go on until the daemon has written (or seen superseded) many batches, so
    // updates land between claims and write-backs again and again.
    const BATCHES: u64 = 40;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (url, stop) = (url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let db = connect(&url).await;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let seed = w * 1_000_000 + i;
                // Texts of 1 to ~8 chunks, so a mix of two versions shows.
                let body = prose(seed, 3 + (seed as usize * 7) % 90);
                let id = ((i + w) % 4 + 1) as i32;
                db.execute("UPDATE hot SET body = $1 WHERE id = $2", &[&body, &id])
                    .await
                    .unwrap();
                i += 1;
            }
            i
        }));
    }
    wait_for(&format!("{BATCHES} batches"), DEADLINE, || async {
        (daemon.monitor().snapshot().batches >= BATCHES).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut updates = 0;
    for task in tasks {
        updates += task.await.unwrap();
    }
    assert_eq!(wait_vectorizer_drained(&db, "hot").await, (4, 0));
    let chunks = assert_current(&db, "hot").await;
    assert_eq!(assert_chunks_match_model(&db, "hot_chunks").await, chunks);
    let s = daemon.monitor().snapshot();
    eprintln!(
        "concurrent updates: {:?}, {updates} updates, {} rows written, {} superseded, {} batches",
        t.elapsed(),
        s.processed,
        s.superseded,
        s.batches
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vectorizers_on_one_table_embed_only_what_their_template_uses() {
    let t = Instant::now();
    let (url, db) = setup("vz_two").await;
    db.batch_execute(
        "CREATE TABLE articles (id bigint PRIMARY KEY, title text, summary text, body text);
         SELECT pgai.create_vectorizer('art_head', 'articles', template => '{title}: {summary}');
         SELECT pgai.create_vectorizer('art_body', 'articles', text_column => 'body', chunk_tokens => 32);",
    )
    .await
    .expect("create");
    let daemon = start_daemon(&url).await;
    for i in 1..=3i64 {
        db.execute(
            "INSERT INTO articles VALUES ($1, $2, $3, $4)",
            &[
                &i,
                &format!("Title {i}"),
                &prose(i as u64, 12),
                &prose(100 + i as u64, 80),
            ],
        )
        .await
        .unwrap();
    }
    assert_eq!(wait_vectorizer_drained(&db, "art_head").await, (3, 0));
    assert_eq!(wait_vectorizer_drained(&db, "art_body").await, (3, 0));
    assert_eq!(
        assert_current(&db, "art_head").await,
        3,
        "one chunk per row: no chunking"
    );
    assert!(assert_current(&db, "art_body").await > 3);
    wait_processed(&daemon, 6).await;
    let head_chunks: Vec<String> = db
        .query("SELECT chunk FROM art_head_chunks ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(head_chunks[0].starts_with("Title 1: "), "{head_chunks:?}");

    // The body: only art_body.
    let head_q = queue_state(&db, "pgai.art_head_queue").await;
    let head_c = chunk_times(&db, "art_head_chunks").await;
    let body_c = chunk_times(&db, "art_body_chunks").await;
    db.execute(
        "UPDATE articles SET body = 'a short new body' WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(queue_state(&db, "pgai.art_head_queue").await, head_q);
    assert_eq!(wait_vectorizer_drained(&db, "art_body").await, (3, 0));
    wait_processed(&daemon, 7).await;
    assert_eq!(chunk_times(&db, "art_head_chunks").await, head_c);
    assert_ne!(chunk_times(&db, "art_body_chunks").await, body_c);

    // The summary: only art_head.
    let body_q = queue_state(&db, "pgai.art_body_queue").await;
    let body_c = chunk_times(&db, "art_body_chunks").await;
    db.execute("UPDATE articles SET summary = 'changed' WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(queue_state(&db, "pgai.art_body_queue").await, body_q);
    assert_eq!(wait_vectorizer_drained(&db, "art_head").await, (3, 0));
    wait_processed(&daemon, 8).await;
    assert_eq!(chunk_times(&db, "art_body_chunks").await, body_c);
    assert_current(&db, "art_head").await;
    assert_current(&db, "art_body").await;
    assert_chunks_match_model(&db, "art_head_chunks").await;
    assert_chunks_match_model(&db, "art_body_chunks").await;
    daemon.stop().await;
    eprintln!("two vectorizers: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vectorizer_created_on_a_populated_table_is_backfilled_live() {
    let t = Instant::now();
    let (url, db) = setup("vz_backfill").await;
    const ROWS: usize = 600;
    let bodies: Vec<String> = (0..ROWS as u64).map(|i| prose(i, 60)).collect();
    db.batch_execute(
        "CREATE TABLE library (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text)",
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO library (body) SELECT unnest($1::text[])",
        &[&bodies],
    )
    .await
    .unwrap();
    let daemon = start_daemon(&url).await;
    wait_for("the daemon's worker", DEADLINE, || async {
        daemon.monitor().snapshot().worker_connected.then_some(())
    })
    .await;
    // Created while the daemon runs: no restart.
    let created = Instant::now();
    db.execute(
        "SELECT pgai.create_vectorizer('lib', 'library', text_column => 'body')",
        &[],
    )
    .await
    .expect("create");
    wait_for("the backfill to start", DEADLINE, || async {
        (count(&db, "SELECT count(*) FROM pgai.lib_queue WHERE claimed_by IS NOT NULL OR embedded_at IS NOT NULL").await > 0)
            .then_some(())
    })
    .await;
    let pickup = created.elapsed();
    assert!(
        pickup < Duration::from_secs(3),
        "picked up after {pickup:?}"
    );
    // A fresh row during the backfill jumps the queue (its notification names it).
    let pending = count(
        &db,
        "SELECT count(*) FROM pgai.lib_queue WHERE embedded_at IS NULL",
    )
    .await;
    let fresh: i64 = db
        .query_one(
            "INSERT INTO library (body) VALUES ('a fresh row about lighthouses') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        pending > 100,
        "the backfill was nearly over before the fresh insert ({pending} left)"
    );
    let (embedded, failed) = wait_vectorizer_drained(&db, "lib").await;
    let took = created.elapsed();
    assert_eq!((embedded, failed), (ROWS as i64 + 1, 0));
    let after_fresh = count(
        &db,
        &format!(
            "SELECT count(*) FROM pgai.lib_queue WHERE embedded_at > (SELECT embedded_at FROM pgai.lib_queue WHERE k_id = {fresh})"
        ),
    )
    .await;
    assert!(
        after_fresh > 0,
        "the fresh row was embedded after the whole backfill"
    );
    assert_eq!(assert_current(&db, "lib").await, ROWS + 1);
    assert_chunks_match_model(&db, "lib_chunks").await;
    daemon.stop().await;
    eprintln!(
        "backfill of {ROWS} rows: picked up after {pickup:?}, drained after {took:?}; {after_fresh} backfill rows embedded after the fresh one; test {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_vectorizer_stops_its_worker_and_leaves_the_source_writable() {
    let t = Instant::now();
    let (url, db) = setup("vz_drop").await;
    db.batch_execute(
        "CREATE TABLE posts (id bigint PRIMARY KEY, body text);
         INSERT INTO posts SELECT g, 'post number ' || g FROM generate_series(1, 10) g;",
    )
    .await
    .unwrap();
    let daemon = start_daemon(&url).await;
    let app = format!("pgai-trigger {}", daemon.config().worker_id);
    // The workers' connections (claim + write each), the original table's included.
    let workers_sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = '{}'",
        app.replace('\'', "''")
    );
    let workers = |n: i64| {
        let (db, sql) = (&db, &workers_sql);
        async move {
            wait_for(&format!("{n} worker connections"), DEADLINE, || async {
                (count(db, sql).await == n).then_some(())
            })
            .await
        }
    };
    workers(2).await;
    db.batch_execute(
        "SELECT pgai.create_vectorizer('keep', 'posts', text_column => 'body');
         SELECT pgai.create_vectorizer('gone', 'posts', template => 'Post: {body}');",
    )
    .await
    .expect("create");
    workers(6).await;
    assert_eq!(wait_vectorizer_drained(&db, "keep").await, (10, 0));
    assert_eq!(wait_vectorizer_drained(&db, "gone").await, (10, 0));

    // Dropped while it has work: its worker stops, its objects go, its chunks stay.
    db.execute(
        "INSERT INTO posts SELECT g, 'late post ' || g FROM generate_series(11, 60) g",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "SELECT pgai.drop_vectorizer('keep', keep_embeddings => true)",
        &[],
    )
    .await
    .expect("drop");
    workers(4).await;
    let kept = count(&db, "SELECT count(*) FROM keep_chunks").await;
    assert!(kept >= 10, "the embeddings are kept");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pgai.vectorizers WHERE name = 'keep'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgai_keep_%'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'keep_%'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_class WHERE oid = to_regclass('pgai.keep_queue')"
        )
        .await,
        0
    );
    // The other vectorizer of the table goes on.
    assert_eq!(wait_vectorizer_drained(&db, "gone").await, (60, 0));
    assert_current(&db, "gone").await;
    // Writes to the source still work, and the dropped vectorizer no longer follows them.
    db.batch_execute(
        "INSERT INTO posts VALUES (1000, 'after the drop');
         UPDATE posts SET body = 'changed after the drop' WHERE id = 1;
         DELETE FROM posts WHERE id = 2;",
    )
    .await
    .expect("writes after the drop");
    assert_eq!(wait_vectorizer_drained(&db, "gone").await, (60, 0));
    assert_eq!(count(&db, "SELECT count(*) FROM keep_chunks").await, kept);
    assert_eq!(
        count(&db, "SELECT count(*) FROM keep_chunks WHERE id = 1000").await,
        0
    );

    // Dropped without keep_embeddings: the chunk table and its view go too.
    db.execute("SELECT pgai.drop_vectorizer('gone')", &[])
        .await
        .expect("drop");
    workers(2).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_class WHERE relname IN ('gone_chunks', 'gone_chunks_view', 'gone_queue')").await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgai_%'"
        )
        .await,
        0
    );
    db.batch_execute("INSERT INTO posts VALUES (1001, 'x'); TRUNCATE posts;")
        .await
        .expect("writes after both drops");
    assert!(daemon.monitor().snapshot().worker_connected);
    daemon.stop().await;
    eprintln!("drop: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_change_re_embeds_every_row_and_search_follows_it() {
    let t = Instant::now();
    let (url, db) = setup("vz_model").await;
    db.batch_execute(
        "CREATE TABLE faq (id int PRIMARY KEY, question text, answer text);
         INSERT INTO faq VALUES
            (1, 'How do I reset my password?', 'Use the forgotten password link on the sign-in page.'),
            (2, 'Where is my invoice?', 'Invoices are in the billing section of your account.'),
            (3, 'Can I change my shipping address?', 'Yes, until the parcel has left the warehouse.'),
            (4, 'Do you ship abroad?', 'We deliver to most countries in Europe.'),
            (5, 'How do I cancel my subscription?', 'Open settings, then plans, then cancel.'),
            (6, 'Is there a student discount?', 'Students get twenty percent off with a valid card.');
         SELECT pgai.create_vectorizer('faq_v', 'faq', template => 'Q: {question} A: {answer}',
                chunk_tokens => 24, model => 'other/model', dimensions => 384);
         SELECT pgai.create_vectorizer('probe', 'faq', text_column => 'question');",
    )
    .await
    .expect("create");
    let daemon = start_daemon(&url).await;
    // The probe (this daemon's model) is served: the catalog was read, and faq_v left alone.
    assert_eq!(wait_vectorizer_drained(&db, "probe").await, (6, 0));
    async fn untouched(db: &Client) {
        let s = admin::status(db, "faq_v").await.unwrap().unwrap();
        assert_eq!((s.embedded, s.processing, s.pending), (0, 0, 6), "{s:?}");
        assert_eq!(count(db, "SELECT count(*) FROM faq_v_chunks").await, 0);
    }
    untouched(&db).await;
    db.execute(
        "UPDATE faq SET question = question || ' ' WHERE id = 6",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(wait_vectorizer_drained(&db, "probe").await, (6, 0));
    untouched(&db).await;

    // To this daemon's model: every row is embedded, each chunk records the model.
    let model = pgai_embed::MODEL_NAME;
    db.execute(
        "SELECT pgai.alter_vectorizer('faq_v', model => $1)",
        &[&model],
    )
    .await
    .expect("alter");
    assert_eq!(wait_vectorizer_drained(&db, "faq_v").await, (6, 0));
    let chunks = assert_current(&db, "faq_v").await;
    assert_eq!(assert_chunks_match_model(&db, "faq_v_chunks").await, chunks);
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM faq_v_chunks WHERE embedding_model <> '{model}'")
        )
        .await,
        0
    );
    let v = vectorizer(&db, "faq_v").await;
    let query = pgai_testkit::model()
        .await
        .embed(vec!["I forgot my password and cannot log in".into()])
        .await
        .expect("embed")
        .remove(0);
    let found = admin::search(&db, &v, &query, 3, &[])
        .await
        .expect("search");
    assert_eq!(found.model, model);
    assert_eq!(found.not_migrated, 0);
    assert_eq!(found.results.len(), 3);
    assert_eq!(
        found.results[0].key,
        serde_json::json!({"id": 1}),
        "{found:?}"
    );
    assert!(
        found.results[0].chunk.contains("reset my password"),
        "{found:?}"
    );
    assert!(
        found.results.windows(2).all(|w| w[0].score >= w[1].score),
        "best first: {found:?}"
    );
    assert!(found.results[0].score > 0.5, "{found:?}");
    let status = admin::status(&db, "faq_v").await.unwrap().unwrap();
    assert_eq!((status.embedded, status.not_migrated), (6, 0));

    // Away to a model this daemon does not run: the old vectors stay, counted as not
    // migrated, and are not searched; the daemon leaves the rows pending.
    db.execute(
        "SELECT pgai.alter_vectorizer('faq_v', model => 'other/model')",
        &[],
    )
    .await
    .expect("alter");
    let status = admin::status(&db, "faq_v").await.unwrap().unwrap();
    assert_eq!((status.pending, status.not_migrated), (6, 6), "{status:?}");
    let v = vectorizer(&db, "faq_v").await;
    let found = admin::search(&db, &v, &query, 3, &[])
        .await
        .expect("search");
    assert_eq!(
        (found.results.len(), found.not_migrated),
        (0, 6),
        "{found:?}"
    );
    db.execute(
        "UPDATE faq SET question = question || ' ' WHERE id = 5",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(wait_vectorizer_drained(&db, "probe").await, (6, 0));
    let status = admin::status(&db, "faq_v").await.unwrap().unwrap();
    assert_eq!((status.pending, status.processing), (6, 0), "{status:?}");
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM faq_v_chunks WHERE embedding_model <> '{model}'")
        )
        .await,
        0
    );
    daemon.stop().await;
    eprintln!("model change: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_the_destination_refuses_fails_only_its_own_row() {
    let t = Instant::now();
    let (url, db) = setup("vz_poison").await;
    db.batch_execute(
        "CREATE TABLE shelf (id int PRIMARY KEY, body text);
         SELECT pgai.create_vectorizer('shelf', 'shelf', text_column => 'body');
         CREATE FUNCTION reject_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.chunk LIKE '%poison%' THEN
                 RAISE EXCEPTION 'chunk refused by the shelf policy: %', NEW.chunk;
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER reject_poison BEFORE INSERT ON shelf_chunks FOR EACH ROW EXECUTE FUNCTION reject_poison();",
    )
    .await
    .expect("create");
    let mut config = Config::new(&url);
    config.max_retries = 2;
    config.retry_interval = Duration::from_millis(50);
    let daemon = start_daemon_with(config).await;
    // One statement: the bad row is claimed in the same batch as the good ones.
    db.execute(
        "INSERT INTO shelf SELECT g, CASE WHEN g = 7 THEN 'a poison apple' ELSE 'a good book ' || g END
           FROM generate_series(1, 20) g",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(wait_vectorizer_drained(&db, "shelf").await, (19, 1));
    let r = db
        .query_one(
            "SELECT retry_status, retry_count, last_error FROM pgai.shelf_queue WHERE k_id = 7",
            &[],
        )
        .await
        .unwrap();
    let (status, retries, error): (String, i32, Option<String>) = (r.get(0), r.get(1), r.get(2));
    assert_eq!((status.as_str(), retries), ("failed", 2));
    let error = error.expect("a reason");
    assert!(
        error.contains("chunk refused by the shelf policy"),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM shelf_chunks WHERE id = 7").await,
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM shelf_chunks").await, 19);
    let s = admin::status(&db, "shelf").await.unwrap().unwrap();
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("shelf policy")),
        "{s:?}"
    );
    assert_eq!(daemon.monitor().snapshot().failed_attempts, 2);
    assert_chunks_match_model(&db, "shelf_chunks").await;
    // Its text fixed, the row is embedded.
    db.execute("UPDATE shelf SET body = 'an apple' WHERE id = 7", &[])
        .await
        .unwrap();
    assert_eq!(wait_vectorizer_drained(&db, "shelf").await, (20, 0));
    assert_current(&db, "shelf").await;
    daemon.stop().await;
    eprintln!("failing row: {:?}", t.elapsed());
}
