//! The admin surface of vectorizers on the real PostgreSQL: create / list / status, `apply`
//! (idempotent; a changed model alters, another change recreates in one transaction; a bad
//! declaration changes nothing), unknown YAML keys, and search by vectorizer with the real
//! model, where a filter's value full of SQL meta-characters is only ever data.

use pgai_testkit::fresh_database;
use pgai_trigger::vectorizer::admin::{self, Action};
use pgai_trigger::vectorizer::{Destination, Vectorizer, VectorizerSpec};
use pgai_trigger::{schema, Settings, Table};
use serde_json::{json, Value};
use tokio_postgres::Client;

async fn setup(prefix: &str) -> Client {
    setup_url(prefix).await.1
}

async fn setup_url(prefix: &str) -> (String, Client) {
    let url = fresh_database(prefix).await;
    let (db, _task) = pgai_trigger::connect(&url, "vectorizer admin test")
        .await
        .unwrap();
    schema::init(&db, &Table::default(), pgai_embed::DIM)
        .await
        .unwrap();
    db.batch_execute(
        "CREATE TABLE notes (id bigint PRIMARY KEY, author text, title text, body text);
         INSERT INTO notes VALUES
           (1, 'maria', 'coffee', 'I had coffee with Maria at the station'),
           (2, 'maria', 'revenue', 'The quarterly revenue grew by ten percent'),
           (3, 'o''brien''; DROP TABLE notes; --', 'coffee', 'Espresso and coffee beans from Brazil'),
           (4, 'sam', 'garden', 'Tomatoes need sun and water');",
    )
    .await
    .unwrap();
    (url, db)
}

fn spec(name: &str) -> VectorizerSpec {
    VectorizerSpec {
        name: name.into(),
        table: "notes".into(),
        template: Some("{title}: {body}".into()),
        ..Default::default()
    }
}

async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// The daemon's write-back for a table destination, by hand: each row's rendered text as its
/// one chunk, embedded by the real model.
async fn embed_by_hand(db: &Client, v: &Vectorizer, model: &pgai_trigger::EmbedService) {
    let rows = db
        .query(
            &format!(
                "SELECT s.id, {} FROM public.notes s ORDER BY s.id",
                v.text_sql
            ),
            &[],
        )
        .await
        .unwrap();
    let texts: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    let vectors = model.embed_query(texts.clone()).await.unwrap();
    for (r, (t, vec)) in rows.iter().zip(texts.iter().zip(vectors)) {
        let id: i64 = r.get(0);
        db.execute(
            "INSERT INTO public.notes_text_chunks (id, chunk_seq, chunk, embedding, embedding_model)
             VALUES ($1, 0, $2, $3, $4)",
            &[&id, t, &pgvector::Vector::from(vec), &v.model],
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_status_drop() {
    let db = setup("vz_admin_create").await;
    let v = admin::create(&db, &spec("notes_text")).await.unwrap();
    assert_eq!(v.destination, Destination::Table);
    assert_eq!(
        (v.dest_schema.as_str(), v.dest_name.as_str()),
        ("public", "notes_text_chunks")
    );
    assert_eq!(v.key_columns, ["id"]);

    let all = admin::list_status(&db).await.unwrap();
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    // The daemon's own table is a vectorizer too (in place).
    assert!(
        names.contains(&"notes_text") && names.contains(&"m0_episodic"),
        "{names:?}"
    );
    let st = admin::status(&db, "notes_text").await.unwrap().unwrap();
    assert_eq!((st.rows, st.pending, st.embedded), (4, 4, 0), "{st:?}");
    assert_eq!(st.source, "public.notes");
    assert!(admin::status(&db, "nope").await.unwrap().is_none());

    let info = admin::info(&db, "notes_text").await.unwrap().unwrap();
    let j = serde_json::to_value(&info).unwrap();
    assert_eq!(j["template"], "{title}: {body}");
    assert_eq!(j["status"]["rows"], 4);

    // Refusals: one line, the server's words.
    let e = admin::create(&db, &spec("notes_text"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists") && !e.contains('\n'), "{e}");
    let e = admin::create(
        &db,
        &VectorizerSpec {
            table: "missing_table".into(),
            ..spec("other")
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing_table") && !e.contains('\n'), "{e}");
    let e = admin::drop(&db, "nope", false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    let e = admin::drop(&db, "m0_episodic", false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be dropped"), "{e}");

    admin::drop(&db, "notes_text", false).await.unwrap();
    assert!(admin::get(&db, "notes_text").await.unwrap().is_none());
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_class WHERE relname = 'notes_text_chunks'"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_idempotent_and_changes_what_changed() {
    let db = setup("vz_admin_apply").await;
    let specs = vec![
        spec("notes_text"),
        VectorizerSpec {
            name: "notes_body".into(),
            table: "public.notes".into(),
            column: Some("body".into()),
            destination: Some("column:body_embedding".into()),
            ..Default::default()
        },
    ];
    let first = admin::apply(&db, &specs).await.unwrap();
    assert!(
        first.iter().all(|a| a.action == Action::Created),
        "{first:?}"
    );
    let again = admin::apply(&db, &specs).await.unwrap();
    assert!(
        again.iter().all(|a| a.action == Action::Unchanged),
        "{again:?}"
    );

    // Only the model: altered (rows re-queued, the vectorizer kept).
    let mut changed = specs.clone();
    changed[0].model = Some("example/other-model".into());
    let created_at: String = db
        .query_one(
            "SELECT created_at::text FROM pgai.vectorizers WHERE name = 'notes_text'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let r = admin::apply(&db, &changed).await.unwrap();
    assert_eq!(r[0].action, Action::Altered, "{r:?}");
    assert_eq!(r[0].changed, ["model"]);
    assert_eq!(r[1].action, Action::Unchanged);
    let v = admin::get(&db, "notes_text").await.unwrap().unwrap();
    assert_eq!(v.model, "example/other-model");
    let still: String = db
        .query_one(
            "SELECT created_at::text FROM pgai.vectorizers WHERE name = 'notes_text'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(still, created_at, "altered, not recreated");

    // The template and chunking: dropped and created again.
    changed[0].template = Some("{body}".into());
    changed[0].chunk_tokens = Some(64);
    let r = admin::apply(&db, &changed).await.unwrap();
    assert_eq!(r[0].action, Action::Recreated, "{r:?}");
    assert!(r[0].changed.contains(&"template") && r[0].changed.contains(&"chunk_tokens"));
    let v = admin::get(&db, "notes_text").await.unwrap().unwrap();
    assert_eq!(
        (v.template.as_str(), v.chunk_tokens, v.chunk_overlap),
        ("{body}", Some(64), Some(30))
    );
    assert_eq!(
        admin::apply(&db, &changed).await.unwrap()[0].action,
        Action::Unchanged
    );

    // A change the database refuses leaves the old vectorizer as it was (one transaction).
    let mut bad = changed.clone();
    bad[0].chunk_tokens = Some(1000);
    let e = admin::apply(&db, &bad).await.unwrap_err().to_string();
    assert!(e.contains("chunk_tokens") && !e.contains('\n'), "{e}");
    let v = admin::get(&db, "notes_text").await.unwrap().unwrap();
    assert_eq!(v.chunk_tokens, Some(64));
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgai.notes_text_queue").await,
        4,
        "the queue survived the refused recreate"
    );

    // A bad declaration anywhere in the list: nothing is applied.
    let mut twice = changed.clone();
    twice.push(VectorizerSpec {
        name: "fresh_one".into(),
        ..spec("x")
    });
    twice.push(spec("notes_text"));
    let e = admin::apply(&db, &twice).await.unwrap_err().to_string();
    assert!(e.contains("declared twice"), "{e}");
    assert!(admin::get(&db, "fresh_one").await.unwrap().is_none());
}

#[test]
fn unknown_yaml_keys_name_the_key() {
    let e = Settings::from_yaml(
        "vectorizers:\n  - name: notes_text\n    table: notes\n    column: body\n    chunk_size: 10\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("vectorizers") && e.contains("chunk_size") && !e.contains('\n'),
        "{e}"
    );
    let s = Settings::from_yaml(
        "vectorizers:\n  - name: notes_text\n    table: notes\n    template: \"{title}\\n{body}\"\n    destination: table:notes_chunks\n    index: none\n",
    )
    .unwrap();
    assert_eq!(
        s.vectorizers[0].template.as_deref(),
        Some("{title}\n{body}")
    );
    assert_eq!(s.vectorizers[0].index.as_deref(), Some("none"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_by_vectorizer_with_filters_as_data() {
    let db = setup("vz_admin_search").await;
    let v = admin::create(&db, &spec("notes_text")).await.unwrap();
    let model = pgai_testkit::model().await;
    embed_by_hand(&db, &v, &model).await;
    let q = model
        .embed_query(vec!["coffee".to_string()])
        .await
        .unwrap()
        .remove(0);

    let found = admin::search(&db, &v, &q, 3, &[]).await.unwrap();
    assert_eq!(found.results.len(), 3);
    assert!(found.results[0].chunk.contains("coffee"), "{found:?}");
    assert!(found.results[0].score >= found.results[1].score);
    assert_eq!(found.not_migrated, 0);

    // Equality on a source column.
    let maria = admin::search(&db, &v, &q, 10, &[("author".into(), json!("maria"))])
        .await
        .unwrap();
    let keys: Vec<&Value> = maria.results.iter().map(|h| &h.key).collect();
    assert_eq!(keys.len(), 2, "{maria:?}");
    assert_eq!(maria.results[0].key, json!({"id": 1}));

    // SQL meta-characters in a value are data: they match the row that holds them, nothing
    // more, and the table is still there.
    let evil = "o'brien'; DROP TABLE notes; --";
    let hit = admin::search(&db, &v, &q, 10, &[("author".into(), json!(evil))])
        .await
        .unwrap();
    assert_eq!(hit.results.len(), 1, "{hit:?}");
    assert_eq!(hit.results[0].key, json!({"id": 3}));
    let none = admin::search(&db, &v, &q, 10, &[("author".into(), json!("x' OR '1'='1"))])
        .await
        .unwrap();
    assert!(none.results.is_empty(), "{none:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM notes").await, 4);
    // A number compares as text; a column name is checked against the source's columns.
    let by_id = admin::search(&db, &v, &q, 10, &[("id".into(), json!(4))])
        .await
        .unwrap();
    assert_eq!(by_id.results.len(), 1);
    let e = admin::search(
        &db,
        &v,
        &q,
        10,
        &[("author\" OR 1=1 --".into(), json!("x"))],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("no column") && !e.contains('\n'), "{e}");

    // Another model's vectors are not compared, and are counted.
    db.execute(
        "UPDATE public.notes_text_chunks SET embedding_model = 'example/old' WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    let found = admin::search(&db, &v, &q, 10, &[]).await.unwrap();
    assert_eq!(found.results.len(), 3);
    assert!(found.results.iter().all(|h| h.key != json!({"id": 1})));
    assert_eq!(found.not_migrated, 1);
}

/// (status, JSON body) of one request with the bearer token `t0ken` when `auth`.
async fn call(method: &str, url: String, auth: bool, body: Option<Value>) -> (u16, Value) {
    let method = method.to_string();
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::request(&method, &url).timeout(std::time::Duration::from_secs(60));
        if auth {
            req = req.set("Authorization", "Bearer t0ken");
        }
        let r = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_lists_vectorizers_and_searches_one() {
    let (url, db) = setup_url("vz_admin_http").await;
    let v = admin::create(&db, &spec("notes_text")).await.unwrap();
    let model = pgai_testkit::model().await;
    embed_by_hand(&db, &v, &model).await;
    let store = std::sync::Arc::new(
        pgai_trigger::Store::new(pgai_trigger::Config::new(&url)).with_embedder(model),
    );
    let mut api = pgai_trigger::http::Api::new(store.clone());
    api.token = Some("t0ken".into());
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, _task) = pgai_trigger::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        pgai_trigger::http::router(api),
        stop.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{addr}");

    let (code, _) = call("GET", format!("{base}/v1/vectorizers"), false, None).await;
    assert_eq!(code, 401, "same auth as the other /v1 routes");
    let (code, list) = call("GET", format!("{base}/v1/vectorizers"), true, None).await;
    assert_eq!(code, 200, "{list}");
    let names: Vec<&str> = list["vectorizers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"notes_text") && names.contains(&"m0_episodic"),
        "{names:?}"
    );
    let (code, one) = call(
        "GET",
        format!("{base}/v1/vectorizers/notes_text"),
        true,
        None,
    )
    .await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["status"]["rows"], 4);
    assert_eq!(one["template"], "{title}: {body}");
    let (code, err) = call("GET", format!("{base}/v1/vectorizers/nope"), true, None).await;
    assert_eq!(code, 404);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("nope"),
        "{err}"
    );

    let search = |body: Value| call("POST", format!("{base}/v1/search"), true, Some(body));
    let (code, found) =
        search(json!({"query": "coffee", "vectorizer": "notes_text", "k": 2})).await;
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["results"].as_array().unwrap().len(), 2);
    assert!(found["results"][0]["chunk"]
        .as_str()
        .unwrap()
        .contains("coffee"));
    let (code, found) = search(json!({
        "query": "coffee",
        "vectorizer": "notes_text",
        "filters": {"author": "o'brien'; DROP TABLE notes; --"}
    }))
    .await;
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["results"].as_array().unwrap().len(), 1);
    assert_eq!(found["results"][0]["key"], json!({"id": 3}));
    let (code, err) =
        search(json!({"query": "coffee", "vectorizer": "notes_text", "filters": {"nope": 1}}))
            .await;
    assert_eq!(code, 400, "{err}");
    let (code, _) = search(json!({"query": "coffee", "vectorizer": "nope"})).await;
    assert_eq!(code, 404);
    let (code, _) = search(json!({"query": "coffee", "filters": {"author": "sam"}})).await;
    assert_eq!(code, 400, "filters need a vectorizer");
    // The table's search is unchanged.
    let (code, r) = search(json!({"query": "coffee"})).await;
    assert_eq!(code, 200, "{r}");
    stop.cancel();
    store.close().await;
}
