//! The database side of vectorizers, with SQL only (no daemon, no model): `db init` installs the
//! catalog and its functions, `pgai.create_vectorizer` builds the queue, chunk table, view and
//! capture triggers, the triggers queue exactly the rows whose text changed, bad input is one
//! line that leaves nothing behind, and `pgai.vectorizer_status` counts exactly.

use std::time::Duration;

use pgai_testkit::fresh_database;
use pgai_trigger::vectorizer::{catalog, Destination, Vectorizer};
use pgai_trigger::{schema, Notification, Notifications, Table};
use tokio_postgres::Client;

const DIM: usize = 384;

/// A fresh database after `db init`, and a client on it.
async fn setup(prefix: &str) -> (String, Client) {
    let url = fresh_database(prefix).await;
    let (db, _task) = pgai_trigger::connect(&url, "vectorizer test")
        .await
        .unwrap();
    schema::init(&db, &Table::default(), DIM).await.unwrap();
    (url, db)
}

/// `documents` with three rows, and the vectorizer `docs` on it (template, 128-token chunks).
async fn documents(db: &Client) {
    db.batch_execute(
        "CREATE TABLE documents (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text, body text, views int DEFAULT 0);
         INSERT INTO documents (title, body) VALUES ('a', 'alpha'), ('b', 'beta'), ('c', NULL);",
    )
    .await
    .unwrap();
}

async fn create_docs(db: &Client) -> Vectorizer {
    let row = db
        .query_one(
            &format!(
                "SELECT {} FROM pgai.create_vectorizer('docs', 'documents', template => $1, chunk_tokens => 128)",
                pgai_trigger::vectorizer::CATALOG_COLUMNS
            ),
            &[&"{title}\n\n{body}"],
        )
        .await
        .unwrap();
    Vectorizer::from_row(&row).unwrap()
}

async fn int(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

async fn text(db: &Client, sql: &str) -> Option<String> {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

async fn exists(db: &Client, regclass: &str) -> bool {
    db.query_one("SELECT to_regclass($1) IS NOT NULL", &[&regclass])
        .await
        .unwrap()
        .get(0)
}

/// The error of `sql`: PostgreSQL's message, which must be one line.
async fn refused(db: &Client, sql: &str) -> String {
    let e = db.batch_execute(sql).await.expect_err(sql);
    let msg = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: {e}"))
        .message()
        .to_string();
    assert!(!msg.contains('\n'), "{sql}: more than one line: {msg}");
    msg
}

async fn next(notes: &mut Notifications) -> Notification {
    tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .expect("a notification within 10 s")
        .unwrap()
}

/// (content_version, needs_embedding) of the queue row of document `id`.
async fn queue_row(db: &Client, id: i64) -> Option<(i64, bool)> {
    db.query_opt(
        "SELECT content_version, needs_embedding FROM pgai.docs_queue WHERE k_id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

/// What the daemon's write-back does to a queue row (without a model): done, with the hash of the
/// rendered text.
async fn complete(db: &Client, vectorizer: &str, text_sql: &str, source: &str, key: &str) {
    db.batch_execute(&format!(
        "UPDATE pgai.{vectorizer}_queue q SET needs_embedding = false, retry_status = 'completed',
                embedded_at = now(), embedding_model = 'sentence-transformers/all-MiniLM-L6-v2',
                text_hash = (SELECT md5({text_sql}) FROM {source} s WHERE s.{key} = q.k_{key})"
    ))
    .await
    .unwrap();
}

async fn fake_chunk(db: &Client, id: i64) {
    db.execute(
        "INSERT INTO docs_chunks (id, chunk_seq, chunk, embedding, embedding_model)
         VALUES ($1, 0, 'x', array_fill(0.1, ARRAY[384])::vector, 'm')",
        &[&id],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_init_installs_the_catalog_idempotently() {
    let (_url, db) = setup("vz_init").await;
    schema::init(&db, &Table::default(), DIM).await.unwrap();
    for f in [
        "create_vectorizer",
        "drop_vectorizer",
        "alter_vectorizer",
        "register_in_place",
        "vectorizer_status",
    ] {
        let n = int(
            &db,
            &format!("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgai' AND p.proname = '{f}'"),
        )
        .await;
        assert_eq!(n, 1, "{f}");
    }
    assert!(exists(&db, "pgai.vectorizer_status").await);
    let all = Vectorizer::load_all(&db).await.unwrap();
    assert_eq!(all.len(), 1);
    let v = &all[0];
    assert_eq!(v.name, "m0_episodic");
    assert_eq!(v.destination, Destination::InPlace);
    assert_eq!(
        (v.source_schema.as_str(), v.queue_table.as_str()),
        ("public", "m0_episodic")
    );
    assert_eq!(v.channel, "embedding_needed");
    assert_eq!(v.model, pgai_embed::MODEL_NAME);
    assert_eq!(v.dimensions, 384);

    // The daemon registers its own model; a later `db init` keeps it.
    catalog::register_in_place(&db, &Table::default(), "other/model", DIM)
        .await
        .unwrap();
    schema::init(&db, &Table::default(), DIM).await.unwrap();
    assert_eq!(
        text(
            &db,
            "SELECT model FROM pgai.vectorizers WHERE name = 'm0_episodic'"
        )
        .await,
        Some("other/model".into())
    );
    // `db recreate` leaves one consistent row.
    schema::recreate(&db, &Table::default(), DIM).await.unwrap();
    assert_eq!(int(&db, "SELECT count(*) FROM pgai.vectorizers").await, 1);
    assert_eq!(
        text(
            &db,
            "SELECT model FROM pgai.vectorizers WHERE name = 'm0_episodic'"
        )
        .await,
        Some(pgai_embed::MODEL_NAME.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_before_db_init_says_what_to_run() {
    let url = fresh_database("vz_noinit").await;
    let (db, _task) = pgai_trigger::connect(&url, "vectorizer test")
        .await
        .unwrap();
    let e = catalog::register_in_place(&db, &Table::default(), pgai_embed::MODEL_NAME, DIM)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("run `pgai-trigger db init`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_backfills_and_the_triggers_queue_only_changed_text() {
    let (url, db) = setup("vz_create").await;
    documents(&db).await;
    let mut notes = Notifications::listen(
        &url,
        "vz test",
        &["pgai_docs", "pgai_vectorizers"],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let v = create_docs(&db).await;
    assert_eq!(v.key_columns, ["id"]);
    assert_eq!(v.key_types, ["bigint"]);
    assert_eq!(v.text_columns, ["title", "body"]);
    assert_eq!((v.chunk_tokens, v.chunk_overlap), (Some(128), Some(32)));
    assert_eq!(v.destination, Destination::Table);
    assert_eq!(
        (v.dest_schema.as_str(), v.dest_name.as_str()),
        ("public", "docs_chunks")
    );
    assert_eq!(v.view_name.as_deref(), Some("docs_chunks_view"));
    assert_eq!(
        (v.queue_schema.as_str(), v.queue_table.as_str()),
        ("pgai", "docs_queue")
    );
    assert_eq!(v.channel, "pgai_docs");
    // The catalog and the vectorizer announce themselves.
    let mut got = [next(&mut notes).await, next(&mut notes).await];
    got.sort_by(|a, b| a.channel.cmp(&b.channel));
    assert_eq!(
        (got[0].channel.as_str(), got[0].payload.as_str()),
        ("pgai_docs", "")
    );
    assert_eq!(
        (got[1].channel.as_str(), got[1].payload.as_str()),
        ("pgai_vectorizers", "docs")
    );

    // Backfill: every row, pending.
    assert_eq!(
        int(&db, "SELECT count(*) FROM pgai.docs_queue WHERE needs_embedding AND retry_status = 'pending'").await,
        3
    );
    assert!(
        exists(&db, "public.docs_chunks").await && exists(&db, "public.docs_chunks_view").await
    );
    assert_eq!(
        int(&db, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'documents'::regclass AND tgname IN ('pgai_docs_capture', 'pgai_docs_truncate')").await,
        2
    );
    // The compiled text: NULL renders as ''.
    let rendered = |id: i64| {
        let sql = format!("SELECT {} FROM documents s WHERE id = {id}", v.text_sql);
        let db = &db;
        async move { text(db, &sql).await }
    };
    assert_eq!(rendered(1).await.as_deref(), Some("a\n\nalpha"));
    assert_eq!(rendered(3).await.as_deref(), Some("c\n\n"));

    // INSERT queues and notifies with the key.
    db.batch_execute("INSERT INTO documents (title, body) VALUES ('d', 'delta')")
        .await
        .unwrap();
    assert_eq!(queue_row(&db, 4).await, Some((1, true)));
    let n = next(&mut notes).await;
    assert_eq!((n.channel.as_str(), n.payload.as_str()), ("pgai_docs", "4"));

    complete(&db, "docs", &v.text_sql, "documents", "id").await;
    fake_chunk(&db, 1).await;
    fake_chunk(&db, 2).await;
    // A column the template does not use: nothing.
    db.batch_execute("UPDATE documents SET views = views + 1")
        .await
        .unwrap();
    // The same text written again on a completed row: nothing (no model call).
    db.batch_execute("UPDATE documents SET title = title, body = body WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(queue_row(&db, 1).await, Some((1, false)));
    assert_eq!(
        int(&db, "SELECT count(*) FROM docs_chunks").await,
        2,
        "chunks stay"
    );
    // New text: a new version, queued, its old chunks gone (the others stay).
    db.batch_execute("UPDATE documents SET body = 'ALPHA' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(queue_row(&db, 1).await, Some((2, true)));
    assert_eq!(
        int(&db, "SELECT count(*) FROM docs_chunks WHERE id = 1").await,
        0
    );
    assert_eq!(
        int(&db, "SELECT count(*) FROM docs_chunks WHERE id = 2").await,
        1
    );
    let n = next(&mut notes).await;
    assert_eq!(n.payload, "1");
    // The view joins source and chunks.
    assert_eq!(
        text(
            &db,
            "SELECT title || ':' || chunk FROM docs_chunks_view WHERE id = 2"
        )
        .await
        .as_deref(),
        Some("b:x")
    );

    // DELETE removes the queue row and the chunks.
    db.batch_execute("DELETE FROM documents WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(queue_row(&db, 2).await, None);
    assert_eq!(int(&db, "SELECT count(*) FROM docs_chunks").await, 0);
    // TRUNCATE removes them all.
    fake_chunk(&db, 3).await;
    db.batch_execute("TRUNCATE documents").await.unwrap();
    assert_eq!(int(&db, "SELECT count(*) FROM pgai.docs_queue").await, 0);
    assert_eq!(int(&db, "SELECT count(*) FROM docs_chunks").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_every_kind() {
    let (_url, db) = setup("vz_keys").await;
    // (table, key DDL, insert values, expected canonical id, key update)
    let cases = [
        ("k_int", "id integer PRIMARY KEY", "(7, 'x')", "7", "id = 8"),
        (
            "k_uuid",
            "id uuid PRIMARY KEY",
            "('00000000-0000-0000-0000-000000000001', 'x')",
            "00000000-0000-0000-0000-000000000001",
            "id = '00000000-0000-0000-0000-000000000002'",
        ),
        (
            "k_text",
            "id text PRIMARY KEY",
            "('it''s', 'x')",
            "it's",
            "id = 'other'",
        ),
    ];
    for (t, key, values, canon, change) in cases {
        db.batch_execute(&format!(
            "CREATE TABLE {t} ({key}, body text);
             INSERT INTO {t} VALUES {values};
             SELECT pgai.create_vectorizer('{t}', '{t}', text_column => 'body');"
        ))
        .await
        .unwrap();
        let q = format!("pgai.{t}_queue");
        assert_eq!(
            text(
                &db,
                &format!("SELECT string_agg(id || '=' || k_id::text, ',') FROM {q}")
            )
            .await,
            Some(format!("{canon}={canon}")),
            "{t}"
        );
        // A new key: the old queue row goes, the new key is queued.
        db.batch_execute(&format!("UPDATE {t} SET {change}"))
            .await
            .unwrap();
        assert_eq!(
            int(&db, &format!("SELECT count(*) FROM {q}")).await,
            1,
            "{t}"
        );
        assert_eq!(
            int(
                &db,
                &format!(
                    "SELECT count(*) FROM {q} WHERE id = '{}'",
                    canon.replace('\'', "''")
                )
            )
            .await,
            0,
            "{t}"
        );
        db.batch_execute(&format!("DELETE FROM {t}")).await.unwrap();
        assert_eq!(
            int(&db, &format!("SELECT count(*) FROM {q}")).await,
            0,
            "{t}"
        );
    }

    // A composite key, in key order (not column order).
    db.batch_execute(
        "CREATE TABLE k_comp (region text, n integer, body text, PRIMARY KEY (n, region));
         INSERT INTO k_comp VALUES ('eu', 1, 'x');
         SELECT pgai.create_vectorizer('k_comp', 'k_comp', text_column => 'body');",
    )
    .await
    .unwrap();
    assert_eq!(
        text(
            &db,
            "SELECT id || '|' || k_n || '|' || k_region FROM pgai.k_comp_queue"
        )
        .await,
        Some("[1, \"eu\"]|1|eu".into())
    );
    assert_eq!(
        text(
            &db,
            "SELECT array_to_string(key_columns || key_types, ',') FROM pgai.vectorizers WHERE name = 'k_comp'"
        )
        .await,
        Some("n,region,integer,text".into())
    );
    // The chunk table has the key columns with their types.
    db.batch_execute(
        "INSERT INTO k_comp_chunks (n, region, chunk_seq, chunk, embedding, embedding_model)
         VALUES (1, 'eu', 0, 'x', array_fill(0.1, ARRAY[384])::vector, 'm');
         UPDATE k_comp SET body = 'y';",
    )
    .await
    .unwrap();
    assert_eq!(int(&db, "SELECT count(*) FROM k_comp_chunks").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_source() {
    let (_url, db) = setup("vz_part").await;
    db.batch_execute(
        "CREATE TABLE events (id integer, region text, body text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
         CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
         INSERT INTO events VALUES (1, 'eu', 'a'), (2, 'eu', 'b');
         SELECT pgai.create_vectorizer('ev', 'events', text_column => 'body');
         INSERT INTO events VALUES (3, 'us', 'c'), (4, 'us', 'd');
         INSERT INTO ev_chunks SELECT id, region, 0, body, array_fill(0.1, ARRAY[384])::vector, 'm' FROM events;",
    )
    .await
    .unwrap();
    assert_eq!(int(&db, "SELECT count(*) FROM pgai.ev_queue").await, 4);
    // A DELETE on a partition: the cloned row trigger.
    db.batch_execute("DELETE FROM events_eu WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(int(&db, "SELECT count(*) FROM pgai.ev_queue").await, 3);
    assert_eq!(int(&db, "SELECT count(*) FROM ev_chunks").await, 3);
    // TRUNCATE of one partition: its rows only.
    db.batch_execute("TRUNCATE events_us").await.unwrap();
    assert_eq!(
        text(&db, "SELECT string_agg(id, ',') FROM pgai.ev_queue").await,
        Some("[2, \"eu\"]".into())
    );
    assert_eq!(int(&db, "SELECT count(*) FROM ev_chunks").await, 1);
    // TRUNCATE of the parent: everything.
    db.batch_execute("TRUNCATE events").await.unwrap();
    assert_eq!(int(&db, "SELECT count(*) FROM pgai.ev_queue").await, 0);
    assert_eq!(int(&db, "SELECT count(*) FROM ev_chunks").await, 0);
    // Drop removes the partitions' triggers too.
    db.batch_execute("SELECT pgai.drop_vectorizer('ev')")
        .await
        .unwrap();
    assert_eq!(
        int(
            &db,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgai_ev_%'"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_destination() {
    let (_url, db) = setup("vz_column").await;
    documents(&db).await;
    let text_sql = text(
        &db,
        "SELECT (pgai.create_vectorizer('docs', 'documents', text_column => 'body', destination => 'column:embedding')).text_sql",
    )
    .await
    .unwrap();
    assert_eq!(
        text(&db, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'documents'::regclass AND attname = 'embedding'").await,
        Some("vector(384)".into())
    );
    assert_eq!(
        int(&db, "SELECT count(*) FROM pgai.vectorizers WHERE name = 'docs' AND created_column AND dest_name = 'embedding' AND chunk_tokens IS NULL").await,
        1
    );
    assert_eq!(
        int(&db, "SELECT count(*) FROM pg_indexes WHERE tablename = 'documents' AND indexdef LIKE '%hnsw%'").await,
        1
    );
    // The daemon's write-back, by hand.
    complete(&db, "docs", &text_sql, "documents", "id").await;
    db.batch_execute("UPDATE documents SET embedding = array_fill(0.1, ARRAY[384])::vector")
        .await
        .unwrap();
    db.batch_execute("UPDATE documents SET body = body, views = 3")
        .await
        .unwrap();
    assert_eq!(
        int(
            &db,
            "SELECT count(*) FROM documents WHERE embedding IS NOT NULL"
        )
        .await,
        3
    );
    db.batch_execute("UPDATE documents SET body = 'new' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        text(
            &db,
            "SELECT string_agg(id::text, ',') FROM documents WHERE embedding IS NULL"
        )
        .await,
        Some("1".into())
    );
    assert_eq!(queue_row(&db, 1).await, Some((2, true)));
    db.batch_execute("DELETE FROM documents WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(queue_row(&db, 2).await, None);
    // Chunking needs a table.
    let e = refused(
        &db,
        "SELECT pgai.create_vectorizer('c2', 'documents', text_column => 'title', destination => 'column:e2', chunk_tokens => 64)",
    )
    .await;
    assert!(e.contains("chunking needs a table destination"), "{e}");
    // Drop removes the column it created (and its index), unless asked to keep it.
    db.batch_execute("SELECT pgai.drop_vectorizer('docs')")
        .await
        .unwrap();
    assert_eq!(
        int(&db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'documents'::regclass AND attname = 'embedding' AND NOT attisdropped").await,
        0
    );
    db.batch_execute(
        "SELECT pgai.create_vectorizer('docs', 'documents', text_column => 'body', destination => 'column:embedding');
         SELECT pgai.drop_vectorizer('docs', keep_embeddings => true);",
    )
    .await
    .unwrap();
    assert_eq!(
        int(&db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'documents'::regclass AND attname = 'embedding' AND NOT attisdropped").await,
        1
    );
    assert_eq!(
        int(&db, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'documents'::regclass AND NOT tgisinternal").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vectorizers_on_one_table() {
    let (_url, db) = setup("vz_two").await;
    documents(&db).await;
    let ta = text(
        &db,
        "SELECT (pgai.create_vectorizer('va', 'documents', text_column => 'title')).text_sql",
    )
    .await
    .unwrap();
    let tb = text(
        &db,
        "SELECT (pgai.create_vectorizer('vb', 'documents', template => 'Body: {body} ({title})', destination => 'table:vb_store')).text_sql",
    )
    .await
    .unwrap();
    assert!(exists(&db, "public.vb_store").await && exists(&db, "public.vb_store_view").await);
    complete(&db, "va", &ta, "documents", "id").await;
    complete(&db, "vb", &tb, "documents", "id").await;
    // body is vb's only.
    db.batch_execute("UPDATE documents SET body = 'changed' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        int(
            &db,
            "SELECT count(*) FROM pgai.va_queue WHERE needs_embedding"
        )
        .await,
        0
    );
    assert_eq!(
        int(
            &db,
            "SELECT count(*) FROM pgai.vb_queue WHERE needs_embedding"
        )
        .await,
        1
    );
    // title is both's.
    db.batch_execute("UPDATE documents SET title = 'T' WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(
        int(
            &db,
            "SELECT count(*) FROM pgai.va_queue WHERE needs_embedding"
        )
        .await,
        1
    );
    assert_eq!(
        int(
            &db,
            "SELECT count(*) FROM pgai.vb_queue WHERE needs_embedding"
        )
        .await,
        2
    );
    db.batch_execute("INSERT INTO documents (title) VALUES ('new')")
        .await
        .unwrap();
    assert_eq!(int(&db, "SELECT count(*) FROM pgai.va_queue").await, 4);
    assert_eq!(int(&db, "SELECT count(*) FROM pgai.vb_queue").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_line_and_leaves_nothing() {
    let (_url, db) = setup("vz_bad").await;
    documents(&db).await;
    db.batch_execute(
        "CREATE TABLE nokey (body text);
         CREATE VIEW docview AS SELECT * FROM documents;
         CREATE TABLE taken_chunks (x int);
         CREATE TABLE hasemb (id int PRIMARY KEY, body text, embedding text);
         SELECT pgai.create_vectorizer('exists_already', 'documents', text_column => 'body');",
    )
    .await
    .unwrap();
    let triggers_before = int(
        &db,
        "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal",
    )
    .await;
    let columns_before = int(&db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'documents'::regclass AND attnum > 0 AND NOT attisdropped").await;
    let cv = |args: &str| format!("SELECT pgai.create_vectorizer({args})");
    let cases: Vec<(String, &str)> = vec![
        (cv("'Bad-Name', 'documents', text_column => 'body'"), "vectorizer name \"Bad-Name\" is not valid"),
        (cv(&format!("'{}', 'documents', text_column => 'body'", "x".repeat(41))), "is not valid"),
        (cv("'exists_already', 'documents', text_column => 'body'"), "vectorizer \"exists_already\" already exists"),
        (cv("'m0_episodic', 'documents', text_column => 'body'"), "vectorizer \"m0_episodic\" already exists"),
        (cv("'bad', 'nosuch', text_column => 'body'"), "source table \"nosuch\" does not exist"),
        (cv("'bad', 'a.b.c.d', text_column => 'body'"), "source table \"a.b.c.d\" does not exist"),
        (cv("'bad', 'docview', text_column => 'body'"), "source public.docview is not a table (it is a view)"),
        (cv("'bad', 'nokey', text_column => 'body'"), "source public.nokey has no primary key"),
        (cv("'bad', 'documents', template => '{title} {bodyy}'"), "template names column \"bodyy\", which public.documents does not have"),
        (cv("'bad', 'documents', text_column => 'bodyy'"), "text column \"bodyy\" is not a column of public.documents"),
        (cv("'bad', 'documents', template => 'no columns {{here}}'"), "template names no column"),
        (cv("'bad', 'documents', template => '{title'"), "unbalanced \"{\" at character 1"),
        (cv("'bad', 'documents', template => '{title} }'"), "unbalanced \"}\" at character 9"),
        (cv("'bad', 'documents', template => '{}'"), "unbalanced \"{\""),
        (cv("'bad', 'documents', text_column => 'body', template => '{body}'"), "give exactly one of text_column and template (got both)"),
        (cv("'bad', 'documents'"), "give exactly one of text_column and template (got neither)"),
        (cv("'bad', 'documents', text_column => 'body', destination => 'column:emb', chunk_tokens => 64"), "chunking needs a table destination"),
        (cv("'bad', 'documents', text_column => 'body', chunk_tokens => 2"), "chunk_tokens must be between 3 and 256"),
        (cv("'bad', 'documents', text_column => 'body', chunk_tokens => 257"), "chunk_tokens must be between 3 and 256"),
        (cv("'bad', 'documents', text_column => 'body', chunk_tokens => 10, chunk_overlap => 4"), "chunk_overlap 4 is out of range for chunk_tokens 10"),
        (cv("'bad', 'documents', text_column => 'body', chunk_tokens => 10, chunk_overlap => -1"), "chunk_overlap -1 is out of range"),
        (cv("'bad', 'documents', text_column => 'body', chunk_overlap => 4"), "chunk_overlap needs chunk_tokens"),
        (cv("'bad', 'documents', text_column => 'body', dimensions => 768"), "gives 384 dimensions, not 768"),
        (cv("'bad', 'documents', text_column => 'body', model => 'm', dimensions => 0"), "dimensions must be between 1 and 16000, got 0"),
        (cv("'bad', 'documents', text_column => 'body', model => 'm', dimensions => 16001"), "dimensions must be between 1 and 16000"),
        (cv("'bad', 'documents', text_column => 'body', index_kind => 'ivf'"), "unknown index_kind \"ivf\""),
        (cv("'bad', 'documents', text_column => 'body', destination => 'chunks'"), "unknown destination \"chunks\""),
        (cv("'bad', 'documents', text_column => 'body', destination => 'column:'"), "unknown destination \"column:\""),
        (cv("'bad', 'documents', text_column => 'body', destination => 'table:nosuchschema.x'"), "destination schema \"nosuchschema\" does not exist"),
        (cv("'bad', 'documents', text_column => 'body', destination => 'table:taken_chunks'"), "destination table public.taken_chunks already exists"),
        (cv("'taken', 'documents', text_column => 'body'"), "destination table public.taken_chunks already exists"),
        (cv("'bad', 'documents', text_column => 'body', destination => 'column:title'"), "destination column \"title\" already exists in public.documents"),
        (cv("'bad', 'hasemb', text_column => 'body'"), "source public.hasemb has column(s) \"embedding\""),
        ("SELECT pgai.drop_vectorizer('nosuch')".into(), "vectorizer \"nosuch\" does not exist"),
        ("SELECT pgai.drop_vectorizer('m0_episodic')".into(), "m0_episodic is the daemon's configured table; it cannot be dropped as a vectorizer"),
        ("SELECT pgai.alter_vectorizer('exists_already', dimensions => 768)".into(), "needs drop and create"),
        ("SELECT pgai.alter_vectorizer('nosuch', model => 'm')".into(), "vectorizer \"nosuch\" does not exist"),
    ];
    for (sql, want) in &cases {
        let e = refused(&db, sql).await;
        assert!(e.contains(want), "{sql}: {e}");
        for name in ["bad", "taken"] {
            assert_eq!(
                int(
                    &db,
                    &format!("SELECT count(*) FROM pgai.vectorizers WHERE name = '{name}'")
                )
                .await,
                0,
                "{sql}"
            );
            assert!(!exists(&db, &format!("pgai.{name}_queue")).await, "{sql}");
            assert!(
                !exists(&db, &format!("public.{name}_chunks_view")).await,
                "{sql}"
            );
            assert_eq!(
                int(
                    &db,
                    &format!("SELECT count(*) FROM pg_proc WHERE proname LIKE '{name}\\_%'")
                )
                .await,
                0,
                "{sql}"
            );
        }
        assert!(!exists(&db, "public.bad_chunks").await, "{sql}");
        assert_eq!(
            int(
                &db,
                "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"
            )
            .await,
            triggers_before,
            "{sql}"
        );
        assert_eq!(
            int(&db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'documents'::regclass AND attnum > 0 AND NOT attisdropped").await,
            columns_before,
            "{sql}"
        );
    }
    // Text that looks like SQL stays text.
    db.batch_execute(
        "SELECT pgai.create_vectorizer('quoted', 'documents', template => 'it''s {title}''); DROP TABLE documents; --', destination => 'table:\"odd name\"')",
    )
    .await
    .unwrap();
    assert!(exists(&db, "public.documents").await);
    assert!(exists(&db, "public.\"\"\"odd name\"\"\"").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_removes_everything_it_made() {
    let (_url, db) = setup("vz_drop").await;
    documents(&db).await;
    create_docs(&db).await;
    db.batch_execute("SELECT pgai.drop_vectorizer('docs')")
        .await
        .unwrap();
    assert!(!exists(&db, "pgai.docs_queue").await);
    assert!(!exists(&db, "public.docs_chunks").await);
    assert!(!exists(&db, "public.docs_chunks_view").await);
    assert_eq!(
        int(&db, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'documents'::regclass AND NOT tgisinternal").await,
        0
    );
    assert_eq!(
        int(
            &db,
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'docs\\_%'"
        )
        .await,
        0
    );
    assert_eq!(
        int(
            &db,
            "SELECT count(*) FROM pgai.vectorizers WHERE name = 'docs'"
        )
        .await,
        0
    );
    // The source keeps working.
    db.batch_execute("INSERT INTO documents (title) VALUES ('after')")
        .await
        .unwrap();

    // keep_embeddings: the chunk table and its view stay, the rest goes.
    create_docs(&db).await;
    fake_chunk(&db, 1).await;
    db.batch_execute("SELECT pgai.drop_vectorizer('docs', keep_embeddings => true)")
        .await
        .unwrap();
    assert!(!exists(&db, "pgai.docs_queue").await);
    assert_eq!(int(&db, "SELECT count(*) FROM docs_chunks_view").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_model_requeues_every_row() {
    let (url, db) = setup("vz_alter").await;
    documents(&db).await;
    let v = create_docs(&db).await;
    complete(&db, "docs", &v.text_sql, "documents", "id").await;
    let mut notes = Notifications::listen(&url, "vz test", &["pgai_docs"], Duration::from_secs(10))
        .await
        .unwrap();
    // The same model: nothing to do.
    db.batch_execute(&format!(
        "SELECT pgai.alter_vectorizer('docs', model => '{}')",
        pgai_embed::MODEL_NAME
    ))
    .await
    .unwrap();
    assert_eq!(
        int(
            &db,
            "SELECT count(*) FROM pgai.docs_queue WHERE needs_embedding"
        )
        .await,
        0
    );
    let model = text(
        &db,
        "SELECT (pgai.alter_vectorizer('docs', model => 'other/model', dimensions => 384)).model",
    )
    .await;
    assert_eq!(model.as_deref(), Some("other/model"));
    assert_eq!(
        int(&db, "SELECT count(*) FROM pgai.docs_queue WHERE needs_embedding AND text_hash IS NULL AND content_version = 2 AND retry_status = 'pending'").await,
        3
    );
    assert_eq!(next(&mut notes).await.payload, "");
    // Old vectors stay until replaced: they are "not migrated".
    assert_eq!(
        int(
            &db,
            "SELECT not_migrated FROM pgai.vectorizer_status('docs')"
        )
        .await,
        3
    );
    let e = refused(
        &db,
        "SELECT pgai.alter_vectorizer('docs', dimensions => 512)",
    )
    .await;
    assert!(e.contains("needs drop and create"), "{e}");
    let e = refused(
        &db,
        "SELECT pgai.alter_vectorizer('m0_episodic', model => 'x')",
    )
    .await;
    assert!(e.contains("daemon's configured table"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_are_exact() {
    let (_url, db) = setup("vz_status").await;
    db.batch_execute(
        "CREATE TABLE notes (id integer PRIMARY KEY, body text);
         INSERT INTO notes SELECT g, 'n' || g FROM generate_series(1, 10) g;
         SELECT pgai.create_vectorizer('notes', 'notes', text_column => 'body');
         -- 3 completed (2 within the last minute), 2 processing, 1 failed, 1 not queued, 3 pending
         UPDATE pgai.notes_queue SET needs_embedding = false, embedded_at = clock_timestamp(), embedding_model = 'sentence-transformers/all-MiniLM-L6-v2' WHERE k_id IN (1, 2);
         UPDATE pgai.notes_queue SET needs_embedding = false, embedded_at = clock_timestamp() - interval '2 minutes', embedding_model = 'old' WHERE k_id = 3;
         UPDATE pgai.notes_queue SET claimed_by = 'w:1', claim_expires_at = now() + interval '1 hour' WHERE k_id IN (4, 5);
         UPDATE pgai.notes_queue SET retry_status = 'failed', last_error = 'boom', last_retry_at = now() WHERE k_id = 6;
         UPDATE pgai.notes_queue SET needs_embedding = false WHERE k_id = 7;
         UPDATE pgai.notes_queue SET last_error = 'older', last_retry_at = now() - interval '1 hour' WHERE k_id = 8;
         INSERT INTO m0_episodic (id, content) VALUES ('a', 'x'), ('b', 'y');",
    )
    .await
    .unwrap();
    let r = db
        .query_one(
            "SELECT name, source, destination, model, rows, embedded, pending, processing, failed, not_queued,
                    coverage_pct, lag_secs, throughput_per_min, not_migrated, last_error, latency_p50_ms
               FROM pgai.vectorizer_status WHERE name = 'notes'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "notes");
    assert_eq!(r.get::<_, String>(1), "public.notes");
    assert_eq!(r.get::<_, String>(2), "table:public.notes_chunks");
    let counts: Vec<i64> = (4..10).map(|i| r.get(i)).collect();
    assert_eq!(counts, [10, 3, 3, 2, 1, 1]);
    assert_eq!(r.get::<_, f64>(10), 30.0);
    assert!(r.get::<_, f64>(11) >= 0.0);
    assert_eq!(r.get::<_, i64>(12), 2);
    assert_eq!(r.get::<_, i64>(13), 1);
    assert_eq!(r.get::<_, Option<String>>(14).as_deref(), Some("boom"));
    assert!(r.get::<_, Option<f64>>(15).is_some());
    // The daemon's table is counted by the same states.
    let r = db
        .query_one(
            "SELECT destination, rows, pending FROM pgai.vectorizer_status('m0_episodic')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "in_place");
    assert_eq!((r.get::<_, i64>(1), r.get::<_, i64>(2)), (2, 2));
    assert_eq!(
        int(&db, "SELECT count(*) FROM pgai.vectorizer_status").await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_only_insert_still_queues() {
    let (url, db) = setup("vz_role").await;
    documents(&db).await;
    create_docs(&db).await;
    let role = format!("vz_app_{}", std::process::id());
    db.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF; END $$;
         ALTER ROLE {role} PASSWORD 'app-secret';
         GRANT INSERT ON documents TO {role};"
    ))
    .await
    .unwrap();
    let (_, host_and_db) = url.split_once('@').expect("user@host in the URL");
    let app_url = format!("postgresql://{role}:app-secret@{host_and_db}");
    let (app, _task) = pgai_trigger::connect(&app_url, "vz app").await.unwrap();
    app.batch_execute("INSERT INTO documents (title, body) VALUES ('lp', 'least privilege')")
        .await
        .unwrap();
    let e = app
        .batch_execute("SELECT * FROM pgai.docs_queue")
        .await
        .unwrap_err();
    assert!(
        e.as_db_error().is_some(),
        "the app role cannot read the queue"
    );
    assert_eq!(queue_row(&db, 4).await, Some((1, true)));
    // Without SELECT on the source, no vectorizer on it.
    db.batch_execute(&format!(
        "GRANT USAGE ON SCHEMA pgai TO {role}; GRANT SELECT ON pgai.vectorizers TO {role}"
    ))
    .await
    .unwrap();
    let e = refused(
        &app,
        "SELECT pgai.create_vectorizer('lp', 'documents', text_column => 'body')",
    )
    .await;
    assert_eq!(
        e,
        format!("source public.documents is not readable by role {role} (it needs SELECT)")
    );
    assert!(!exists(&db, "pgai.lp_queue").await);
}
