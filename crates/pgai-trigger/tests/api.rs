//! The HTTP API and the library API, on the real embedded PostgreSQL and the real model: every
//! endpoint, malformed and incomplete bodies, the bearer token, unknown ids, search order, the
//! OpenAI-compatible endpoint and the remote provider pointed at it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pgai_embed::Embedder;
use pgai_testkit::{cosine, fresh_database, wait_for};
use pgai_trigger::http::{self, Api};
use pgai_trigger::{
    schema, Config, EmbedService, Mode, NewItem, Settings, Store, StoreError, StoreFactory, Table,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

/// A database with the schema, a store running its daemon, and the API on a free port.
struct Server {
    base: String,
    addr: SocketAddr,
    url: String,
    store: Arc<Store>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(prefix: &str, token: Option<&str>, enable_metrics: bool) -> Server {
        let token = token.map(String::from);
        Server::launch(
            prefix,
            true,
            |s| s,
            move |api| {
                api.token = token;
                api.enable_metrics = enable_metrics;
            },
        )
        .await
    }

    /// `daemon: false`: rows stay pending (waits wait).
    async fn launch(
        prefix: &str,
        daemon: bool,
        store: impl FnOnce(Store) -> Store,
        api: impl FnOnce(&mut Api),
    ) -> Server {
        let url = fresh_database(prefix).await;
        let (client, _t) = pgai_trigger::connect(&url, "api test").await.unwrap();
        schema::init(&client, &Table::default(), pgai_embed::DIM)
            .await
            .unwrap();
        let s = store(Store::new(Config::new(&url)).with_embedder(pgai_testkit::model().await));
        if daemon {
            s.start_daemon().await.expect("daemon");
        }
        let s = Arc::new(s);
        let stop = CancellationToken::new();
        let mut a = Api::new(s.clone());
        api(&mut a);
        let header_timeout = a.limits.header_read_timeout;
        let router = http::router(a);
        let (addr, task) = http::serve_with(
            "127.0.0.1:0".parse().unwrap(),
            router,
            stop.clone(),
            header_timeout,
        )
        .await
        .unwrap();
        Server {
            base: format!("http://{addr}"),
            addr,
            url,
            store: s,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.store.close().await;
    }
}

/// (status, body) of one request; the body parsed as JSON when it is JSON.
async fn call(
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    call_with(method, url, &headers, body).await
}

/// [`call`] with any headers.
fn call_with(
    method: &str,
    url: String,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> impl std::future::Future<Output = (u16, Value, String)> + 'static {
    let method = method.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let answer = tokio::task::spawn_blocking(move || {
        let mut req = ureq::request(&method, &url).timeout(Duration::from_secs(60));
        for (k, v) in &headers {
            req = req.set(k, v);
        }
        let r = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(&b),
            None => req.call(),
        };
        let resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    });
    async move { answer.await.unwrap() }
}

async fn get(url: String) -> (u16, Value, String) {
    call("GET", url, None, None).await
}

async fn post(url: String, body: Value) -> (u16, Value, String) {
    call("POST", url, None, Some(body.to_string())).await
}

fn assert_error(body: &Value, status: u16) {
    assert_eq!(body["error"]["code"], status, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_search_stats_probes_and_metrics() {
    let s = Server::start("api_items", None, true).await;
    let b = &s.base;

    assert_eq!(get(format!("{b}/healthz")).await.0, 200);
    let ready = wait_for("readyz 200", DEADLINE, || async {
        let (st, body, _) = get(format!("{b}/readyz")).await;
        (st == 200).then_some(body)
    })
    .await;
    assert_eq!(ready["status"], "ready");

    let (st, item, _) = post(
        format!("{b}/v1/items?wait=true"),
        json!({"id": "coffee", "content": "I had coffee with Maria", "metadata": {"user": "maria"}}),
    )
    .await;
    assert_eq!(st, 201, "{item}");
    assert_eq!(item["status"], "completed");
    assert_eq!(item["has_embedding"], true);
    assert!(item["latency_ms"].as_f64().is_some());

    let (st, accepted, _) = post(
        format!("{b}/v1/items"),
        json!({"content": "The quarterly revenue grew by ten percent"}),
    )
    .await;
    assert_eq!(st, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "generated id");
    wait_for("generated item embedded", DEADLINE, || async {
        let (_, body, _) = get(format!("{b}/v1/items/{id}")).await;
        (body["status"] == "completed").then_some(())
    })
    .await;
    post(
        format!("{b}/v1/items?wait=true"),
        json!({"id": "espresso", "content": "Maria likes espresso", "metadata": {"user": "maria"}}),
    )
    .await;

    let (st, item, _) = get(format!("{b}/v1/items/coffee?include_embedding=true")).await;
    assert_eq!(st, 200);
    assert_eq!(item["embedding"].as_array().unwrap().len(), pgai_embed::DIM);
    assert_eq!(item["metadata"]["user"], "maria");

    // Search order: the exact text first, then the related one, the unrelated last.
    let (st, found, _) = post(
        format!("{b}/v1/search"),
        json!({"query": "I had coffee with Maria", "k": 3}),
    )
    .await;
    assert_eq!(st, 200, "{found}");
    let ids: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["coffee", "espresso", id.as_str()]);
    let scores: Vec<f64> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores[0] > 0.999 && scores[0] >= scores[1] && scores[1] >= scores[2],
        "{scores:?}"
    );
    assert_eq!(found["results"][0]["content"], "I had coffee with Maria");
    // Filter: JSONB containment on metadata.
    let (_, found, _) = post(
        format!("{b}/v1/search"),
        json!({"query": "quarterly revenue", "k": 5, "filter": {"user": "maria"}}),
    )
    .await;
    let hits = found["results"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert!(
        hits.iter().all(|h| h["metadata"]["user"] == "maria"),
        "{found}"
    );

    let (st, stats, _) = get(format!("{b}/v1/stats")).await;
    assert_eq!(st, 200);
    assert_eq!(stats["mode"], "immediate");
    assert_eq!(stats["completed"], 3);
    assert_eq!(stats["queue_depth"], 0);
    assert_eq!(stats["success_rate"], 1.0);
    assert_eq!(stats["latency_ms"]["samples"], 3);
    assert!(
        stats["latency_ms"]["p50"].as_f64().is_some()
            && stats["latency_ms"]["p99"].as_f64().is_some()
    );
    assert!(stats["throughput_per_minute"].as_i64().unwrap() >= 3);
    assert!(stats["daemon"]["processed"].as_u64().unwrap() >= 3);

    let (st, _, text) = get(format!("{b}/metrics")).await;
    assert_eq!(st, 200);
    for name in [
        "pgai_rows_embedded_total",
        "pgai_attempts_failed_total",
        "pgai_embedding_latency_seconds_bucket",
        "pgai_queue_depth",
        "pgai_oldest_pending_age_seconds",
        "pgai_listener_connected",
        "pgai_reconnects_total",
        "pgai_notification_queue_usage",
        "pgai_batch_size_rows",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }

    let (st, body, _) = call("DELETE", format!("{b}/v1/items/coffee"), None, None).await;
    assert_eq!((st, body["deleted"].as_str()), (200, Some("coffee")));
    let (st, body, _) = get(format!("{b}/v1/items/coffee")).await;
    assert_eq!(st, 404);
    assert_error(&body, 404);
    let (st, body, _) = call("DELETE", format!("{b}/v1/items/coffee"), None, None).await;
    assert_eq!(st, 404);
    assert_error(&body, 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let s = Server::start("api_bad", None, false).await;
    let b = &s.base;
    let raw =
        |path: &str, body: &str| call("POST", format!("{b}{path}"), None, Some(body.to_string()));
    let (st, body, _) = raw("/v1/items", "{\"content\": ").await;
    assert_eq!(st, 400);
    assert_error(&body, 400);
    let (st, body, _) = raw("/v1/items", "{\"id\": \"x\"}").await;
    assert_eq!(st, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("content"),
        "{body}"
    );
    let (st, body, _) = raw("/v1/items", "{\"content\": \"a\", \"metadata\": [1]}").await;
    assert_eq!(st, 400, "{body}");
    let (st, body, _) = raw("/v1/items", "{\"content\": \"a\", \"colour\": 1}").await;
    assert_eq!(st, 422, "{body}");
    let (st, body, _) = raw("/v1/search", "not json").await;
    assert_eq!(st, 400);
    assert_error(&body, 400);
    let (st, body, _) = raw("/v1/search", "{\"k\": 3}").await;
    assert_eq!(st, 422);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("query"),
        "{body}"
    );
    let (st, _, _) = raw("/v1/search", "{\"query\": \"x\", \"k\": 0}").await;
    assert_eq!(st, 400);
    let (st, _, _) = raw("/v1/search", "{\"query\": \"x\", \"filter\": \"user\"}").await;
    assert_eq!(st, 400);
    let (st, _, _) = raw("/v1/embeddings", "{\"input\": []}").await;
    assert_eq!(st, 400);
    let (st, _, _) = raw("/v1/embeddings", "{\"model\": \"m\"}").await;
    assert_eq!(st, 422);
    let (st, _, _) = raw(
        "/v1/embeddings",
        "{\"input\": \"x\", \"encoding_format\": \"hex\"}",
    )
    .await;
    assert_eq!(st, 400);
    let (st, _, _) = raw("/v1/embeddings", "{\"input\": \"x\", \"dimensions\": 1536}").await;
    assert_eq!(st, 400);
    let (st, body, _) = call(
        "POST",
        format!("{b}/v1/items?wait=maybe"),
        None,
        Some("{\"content\":\"a\"}".into()),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    let (st, body, _) = get(format!("{b}/v1/nothing")).await;
    assert_eq!(st, 404);
    assert_error(&body, 404);
    // enable_metrics: false
    let (st, body, _) = get(format!("{b}/metrics")).await;
    assert_eq!(st, 404, "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_except_for_probes() {
    let s = Server::start("api_token", Some("s3cret-token"), true).await;
    let b = &s.base;
    assert_eq!(get(format!("{b}/healthz")).await.0, 200);
    assert_ne!(get(format!("{b}/readyz")).await.0, 401);
    for path in ["/v1/stats", "/metrics", "/v1/items/x"] {
        let (st, body, _) = get(format!("{b}{path}")).await;
        assert_eq!(st, 401, "{path} without a token");
        assert_error(&body, 401);
        let (st, _, _) = call("GET", format!("{b}{path}"), Some("wrong"), None).await;
        assert_eq!(st, 401, "{path} with a wrong token");
    }
    let (st, _, _) = call(
        "POST",
        format!("{b}/v1/search"),
        None,
        Some("{\"query\":\"x\"}".into()),
    )
    .await;
    assert_eq!(st, 401);
    assert_eq!(
        call("GET", format!("{b}/v1/stats"), Some("s3cret-token"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        call("GET", format!("{b}/v1/items/x"), Some("s3cret-token"), None)
            .await
            .0,
        404
    );
    let (_, _, stats) = call("GET", format!("{b}/v1/stats"), Some("s3cret-token"), None).await;
    assert!(!stats.contains("s3cret"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_endpoint_and_the_remote_provider() {
    let s = Server::start("api_openai", Some("k3y"), true).await;
    let local = pgai_testkit::model()
        .await
        .embed(vec!["hello there".into(), "general kenobi".into()])
        .await
        .unwrap();

    // OpenAI's request and answer shapes, float and base64.
    let (st, body, _) = call(
        "POST",
        format!("{}/v1/embeddings", s.base),
        Some("k3y"),
        Some(
            json!({"input": ["hello there", "general kenobi"], "model": "text-embedding-3-small"})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], pgai_embed::MODEL_NAME);
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][1]["object"], "embedding");
    let v: Vec<f32> = serde_json::from_value(body["data"][1]["embedding"].clone()).unwrap();
    assert!(cosine(&v, &local[1]) >= 0.9999);
    let (_, body, _) = call(
        "POST",
        format!("{}/v1/embeddings", s.base),
        Some("k3y"),
        Some(json!({"input": "hello there", "encoding_format": "base64"}).to_string()),
    )
    .await;
    assert_eq!(
        body["data"][0]["embedding"].as_str().unwrap().len(),
        (pgai_embed::DIM * 4).div_ceil(3) * 4
    );

    // The remote provider against that endpoint: same vectors; a wrong key is permanent.
    let config = |key: &str| pgai_embed::OpenAiConfig {
        url: format!("http://{}/v1", s.addr),
        model: "all-minilm".into(),
        api_key: Some(key.into()),
        timeout: Duration::from_secs(30),
        dimensions: Some(pgai_embed::DIM),
    };
    let (good, bad) = (config("k3y"), config("nope"));
    let (vectors, refused) = tokio::task::spawn_blocking(move || {
        let mut e = pgai_embed::OpenAiEmbedder::new(good).unwrap();
        assert_eq!(e.dim(), pgai_embed::DIM);
        (
            e.embed(&["hello there", "general kenobi"]).unwrap(),
            pgai_embed::OpenAiEmbedder::new(bad).err().unwrap(),
        )
    })
    .await
    .unwrap();
    assert!(cosine(&vectors[0], &local[0]) >= 0.9999 && cosine(&vectors[1], &local[1]) >= 0.9999);
    assert!(
        refused.is_permanent() && refused.to_string().contains("401"),
        "{refused}"
    );

    // A daemon whose provider is the remote endpoint embeds a row (dimension checked at start).
    let url = fresh_database("api_remote_daemon").await;
    let (db, _t) = pgai_trigger::connect(&url, "api test").await.unwrap();
    schema::init(&db, &Table::default(), pgai_embed::DIM)
        .await
        .unwrap();
    let remote = config("k3y");
    let embed = EmbedService::start(
        move || Ok(Box::new(pgai_embed::OpenAiEmbedder::new(remote)?) as Box<dyn Embedder>),
        2,
    )
    .await
    .unwrap();
    let store = Store::new(Config::new(&url)).with_embedder(embed);
    store.start_daemon().await.unwrap();
    let item = store
        .add_and_wait(NewItem::new("hello there").id("r1"), DEADLINE)
        .await
        .unwrap();
    assert_eq!(item.embedding_model.as_deref(), Some("all-minilm"));
    let stored = store
        .get_with_embedding("r1")
        .await
        .unwrap()
        .unwrap()
        .embedding
        .unwrap();
    assert!(cosine(&stored, &local[0]) >= 0.9999);
    store.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_factory_polling_mode_library_api() {
    let url = fresh_database("api_store").await;
    let mut settings = Settings::from_yaml(
        "database:\n  pgai:\n    immediate_trigger: false\n    poll_interval_ms: 100\n    max_retries: 3\n",
    )
    .unwrap();
    settings.database.url = Some(url.clone());
    let store = StoreFactory::create(&settings)
        .await
        .unwrap()
        .with_embedder(pgai_testkit::model().await);
    assert_eq!(store.mode(), Mode::Polling);
    store.initialize().await.unwrap();

    let item = store
        .add_and_wait(
            NewItem::new("the cat sat on the mat")
                .id("c1")
                .metadata(json!({"k": "v"})),
            DEADLINE,
        )
        .await
        .unwrap();
    assert_eq!(
        (item.status.as_str(), item.has_embedding),
        ("completed", true)
    );
    store
        .add(NewItem::new("dogs bark at night").id("c2"))
        .await
        .unwrap();
    store.wait_embedded("c2", DEADLINE).await.unwrap();
    let hits = store
        .search("the cat sat on the mat", 2, None)
        .await
        .unwrap();
    assert_eq!(hits[0].id, "c1");
    let hits = store
        .search("dogs", 5, Some(&json!({"k": "v"})))
        .await
        .unwrap();
    assert_eq!(
        hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        vec!["c1"]
    );

    let stats = store.processing_stats().await.unwrap();
    assert_eq!(
        (stats.mode, stats.completed, stats.queue_depth),
        (Mode::Polling, 2, 0)
    );
    let health = store.health_status().await;
    assert!(health.is_healthy(), "{health:?}");
    assert!(health.checks["worker"].ok && !health.checks.contains_key("listener"));

    // A failed row goes back to pending and is embedded again.
    let (db, _t) = pgai_trigger::connect(&url, "api test").await.unwrap();
    mark_failed(&db, "c2").await;
    assert_eq!(
        store.get("c2").await.unwrap().unwrap().status,
        pgai_trigger::RowState::Failed
    );
    assert_eq!(store.retry_failed().await.unwrap(), 1);
    let again = store.wait_embedded("c2", DEADLINE).await.unwrap();
    assert_eq!(again.retry_count, 0);

    assert!(store.delete("c1").await.unwrap());
    assert!(!store.delete("c1").await.unwrap());
    assert!(store.get("c1").await.unwrap().is_none());
    store.close().await;
}

/// Leaves row `id` as the pipeline leaves a row out of attempts: still needing an embedding,
/// `failed`, with an error (one transaction, so no daemon claims it in between).
async fn mark_failed(db: &tokio_postgres::Client, id: &str) {
    db.batch_execute(&format!(
        "BEGIN;
         UPDATE m0_episodic SET needs_embedding = TRUE WHERE id = '{id}';
         UPDATE m0_episodic SET retry_status = 'failed', retry_count = 3, last_error = 'boom' WHERE id = '{id}';
         COMMIT;"
    ))
    .await
    .unwrap();
}

/// Backends of the stores' wait connections on the database of `url`.
async fn wait_backends(db: &tokio_postgres::Client) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity
          WHERE application_name = 'pgai-trigger-client wait' AND datname = current_database()",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_any_case_and_an_empty_token_denies_everything() {
    let s = Server::start("api_token_strict", Some("s3cret-token"), true).await;
    let b = &s.base;
    let stats = |auth: &'static str| {
        call_with(
            "GET",
            format!("{b}/v1/stats"),
            &[("Authorization", auth)],
            None,
        )
    };
    for ok in [
        "bearer s3cret-token",
        "BEARER s3cret-token",
        "Bearer   s3cret-token ",
    ] {
        assert_eq!(stats(ok).await.0, 200, "{ok:?}");
    }
    for wrong in [
        "Bearer s3cret-toke",
        "Bearer s3cret-token2",
        "Bearer ",
        "Basic s3cret-token",
        "s3cret-token",
        "Bearers3cret-token",
    ] {
        let (st, body, _) = stats(wrong).await;
        assert_eq!(st, 401, "{wrong:?}");
        assert_error(&body, 401);
    }
    s.stop().await;

    // An empty token set programmatically matches nothing, not even an empty bearer.
    let s = Server::launch(
        "api_token_empty",
        true,
        |s| s,
        |api| api.token = Some(String::new()),
    )
    .await;
    for auth in [None, Some("")] {
        let (st, _, _) = call("GET", format!("{}/v1/stats", s.base), auth, None).await;
        assert_eq!(st, 401, "{auth:?}");
    }
    assert_eq!(get(format!("{}/healthz", s.base)).await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_local_hosts_are_served() {
    let s = Server::launch(
        "api_hosts",
        true,
        |s| s,
        |api| api.allowed_hosts = vec!["Embed.Internal".into()],
    )
    .await;
    let b = &s.base;
    let port = s.addr.port();
    let with_host = |host: String| {
        call_with(
            "GET",
            format!("{b}/v1/stats"),
            &[("Host", host.as_str())],
            None,
        )
    };
    for ok in [
        "localhost".to_string(),
        format!("localhost:{port}"),
        "LOCALHOST:1".into(),
        format!("127.0.0.1:{port}"),
        "127.0.0.1".into(),
        "[::1]:8080".into(),
        "[::1]".into(),
        "embed.internal:9999".into(),
    ] {
        let (st, body, _) = with_host(ok.clone()).await;
        assert_eq!(st, 200, "Host {ok}: {body}");
    }
    for bad in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        "localhost.evil.example".into(),
        "10.1.2.3".into(),
        "[::2]:80".into(),
        "localhost:80@evil".into(),
    ] {
        let (st, body, _) = with_host(bad.clone()).await;
        assert_eq!(st, 421, "Host {bad}: {body}");
        assert_error(&body, 421);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("allowed_hosts"),
            "{body}"
        );
    }
    // Probes stay open.
    let (st, _, _) = call_with(
        "GET",
        format!("{b}/healthz"),
        &[("Host", "evil.example")],
        None,
    )
    .await;
    assert_eq!(st, 200);
    s.stop().await;

    // With a token the Host is not checked (the token is the protection).
    let s = Server::start("api_hosts_token", Some("t"), true).await;
    let (st, _, _) = call_with(
        "GET",
        format!("{}/v1/stats", s.base),
        &[("Host", "evil.example"), ("Authorization", "Bearer t")],
        None,
    )
    .await;
    assert_eq!(st, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::launch(
        "api_slowloris",
        false,
        |s| s,
        |api| api.limits.header_read_timeout = Duration::from_secs(1),
    )
    .await;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    // Ends (EOF or reset) once the server closes the connection.
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
        .await
        .expect("the server kept a connection whose headers never came");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_share_one_listen_connection_are_bounded_and_survive_a_reconnect() {
    // No daemon at first: rows stay pending and every wait waits.
    let s = Server::launch("api_waits", false, |s| s.with_max_waiting(3), |_| {}).await;
    let (db, _t) = pgai_trigger::connect(&s.url, "api test").await.unwrap();
    let mut waits = Vec::new();
    for i in 0..2 {
        let store = s.store.clone();
        waits.push(tokio::spawn(async move {
            store
                .add_and_wait(
                    NewItem::new(format!("waiting row {i}")).id(format!("w{i}")),
                    DEADLINE,
                )
                .await
        }));
    }
    let b = s.base.clone();
    let http_wait = tokio::spawn(async move {
        post(
            format!("{b}/v1/items?wait=true&timeout_ms=30000"),
            json!({"id": "w2", "content": "waiting over HTTP"}),
        )
        .await
    });
    wait_for("3 waits registered", DEADLINE, || async {
        (s.store.waiting() == 3).then_some(())
    })
    .await;
    // One LISTEN connection for all of them.
    let first = wait_for("the wait connection", DEADLINE, || async {
        let pids = wait_backends(&db).await;
        (!pids.is_empty()).then_some(pids)
    })
    .await;
    assert_eq!(first.len(), 1, "{first:?}");

    // Past the bound: 503 over HTTP, Busy from the library; nothing is inserted.
    let (st, body, _) = post(
        format!("{}/v1/items?wait=true", s.base),
        json!({"id": "w3", "content": "one too many"}),
    )
    .await;
    assert_eq!(st, 503, "{body}");
    assert_error(&body, 503);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_waiting"),
        "{body}"
    );
    assert!(matches!(
        s.store.wait_embedded("w0", DEADLINE).await,
        Err(StoreError::Busy(_))
    ));

    // The connection drops: the hub opens a new one.
    db.execute("SELECT pg_terminate_backend($1)", &[&first[0]])
        .await
        .unwrap();
    wait_for("the wait connection reopened", DEADLINE, || async {
        let pids = wait_backends(&db).await;
        (pids.len() == 1 && pids[0] != first[0]).then_some(())
    })
    .await;

    // A daemon starts: every wait completes.
    s.store.start_daemon().await.unwrap();
    for w in waits {
        let item = w.await.unwrap().unwrap();
        assert_eq!(item.status, pgai_trigger::RowState::Completed);
    }
    let (st, item, _) = http_wait.await.unwrap();
    assert_eq!(
        (st, item["status"].as_str()),
        (201, Some("completed")),
        "{item}"
    );
    assert_eq!(s.store.waiting(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_ends_waiting_requests_at_once() {
    let s = Server::launch("api_stop", false, |s| s, |_| {}).await;
    let b = s.base.clone();
    let waiting = tokio::spawn(async move {
        post(
            format!("{b}/v1/items?wait=true&timeout_ms=60000"),
            json!({"id": "slow", "content": "never embedded"}),
        )
        .await
    });
    // The library's wait needs the row (an unknown id is NotFound at once): only once the HTTP
    // request has inserted it.
    wait_for("the HTTP request's row", DEADLINE, || async {
        s.store.get("slow").await.unwrap().map(|_| ())
    })
    .await;
    let lib_store = s.store.clone();
    let lib_wait = tokio::spawn(async move {
        lib_store
            .wait_embedded("slow", Duration::from_secs(60))
            .await
    });
    wait_for("2 waits registered", DEADLINE, || async {
        (s.store.waiting() == 2).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    // What `serve` does on SIGTERM.
    s.store.cancel_waits();
    s.stop.cancel();
    let (st, body, _) = waiting.await.unwrap();
    assert_eq!(st, 503, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("shutting down"));
    assert!(matches!(
        lib_wait.await.unwrap(),
        Err(StoreError::ShuttingDown)
    ));
    // Far below the waits' 60 s; generous for a loaded machine.
    tokio::time::timeout(Duration::from_secs(15), s.task)
        .await
        .expect("the server stopped")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // New waits are refused once closing.
    assert!(matches!(
        s.store.add_and_wait(NewItem::new("late"), DEADLINE).await,
        Err(StoreError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_does_not_wait_out_long_requests() {
    // Nobody cancels the waits: the server still stops within its grace period.
    let s = Server::launch("api_grace", false, |s| s, |_| {}).await;
    let b = s.base.clone();
    let waiting = tokio::task::spawn_blocking(move || {
        ureq::post(&format!("{b}/v1/items?wait=true&timeout_ms=60000"))
            .set("Content-Type", "application/json")
            .send_string(r#"{"content": "never embedded"}"#)
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    });
    wait_for("1 wait registered", DEADLINE, || async {
        (s.store.waiting() == 1).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    s.stop.cancel();
    tokio::time::timeout(http::SHUTDOWN_GRACE + Duration::from_secs(10), s.task)
        .await
        .expect("the server stopped within its grace period")
        .unwrap();
    assert!(started.elapsed() < http::SHUTDOWN_GRACE + Duration::from_secs(10));
    // The request's connection was closed under it.
    assert!(waiting.await.unwrap().is_err());
    s.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_413_naming_the_limit() {
    let s = Server::launch(
        "api_limits",
        false,
        |s| s,
        |api| {
            api.limits.max_inputs = 3;
            api.limits.max_input_bytes = 100;
            api.limits.max_body_bytes = 1000;
        },
    )
    .await;
    let b = &s.base;
    let embed = |body: Value| post(format!("{b}/v1/embeddings"), body);
    let (st, body, _) = embed(json!({"input": ["a", "b", "c"]})).await;
    assert_eq!(st, 200, "{body}");
    let (st, body, _) = embed(json!({"input": ["a", "b", "c", "d"]})).await;
    assert_eq!(st, 413, "{body}");
    assert_error(&body, 413);
    let m = body["error"]["message"].as_str().unwrap();
    assert!(m.contains("at most 3") && m.contains("max_inputs"), "{m}");
    let (st, body, _) = embed(json!({"input": ["x".repeat(60), "y".repeat(60)]})).await;
    assert_eq!(st, 413, "{body}");
    let m = body["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("at most 100") && m.contains("max_input_bytes"),
        "{m}"
    );
    for path in ["/v1/embeddings", "/v1/items", "/v1/search"] {
        let (st, body, _) = post(
            format!("{b}{path}"),
            json!({"input": "z".repeat(2000), "content": "z", "query": "z"}),
        )
        .await;
        assert_eq!(st, 413, "{path}: {body}");
        let m = body["error"]["message"].as_str().unwrap();
        assert!(
            m.contains("1000 bytes") && m.contains("max_body_bytes"),
            "{m}"
        );
    }
    // Unknown fields are refused as on the other endpoints.
    let (st, body, _) = embed(json!({"input": "x", "colour": "red"})).await;
    assert_eq!(st, 422, "{body}");
    assert_error(&body, 422);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_are_4xx_never_database_errors() {
    let s = Server::launch("api_mistakes", false, |s| s, |_| {}).await;
    let b = &s.base;
    let bad_items = [
        json!({"id": "nul", "content": "a\u{0}b"}),
        json!({"id": "a\u{0}b", "content": "x"}),
        json!({"id": "meta", "content": "x", "metadata": {"k": "v\u{0}"}}),
        json!({"id": "meta", "content": "x", "metadata": {"k\u{0}": 1}}),
        // Past the btree's limit (about 2,700 bytes) PostgreSQL itself fails.
        json!({"id": "i".repeat(3000), "content": "x"}),
        json!({"id": "i".repeat(1025), "content": "x"}),
        json!({"id": "", "content": "x"}),
    ];
    for item in bad_items {
        for path in ["/v1/items", "/v1/items?wait=true"] {
            let (st, body, _) = post(format!("{b}{path}"), item.clone()).await;
            assert_eq!(st, 400, "{path} {item}: {body}");
            assert_error(&body, 400);
            let m = body["error"]["message"].as_str().unwrap();
            assert!(!m.contains("database"), "{m}");
        }
    }
    let (st, _, _) = post(
        format!("{b}/v1/items"),
        json!({"id": "i".repeat(1024), "content": "x"}),
    )
    .await;
    assert_eq!(st, 202, "1024 bytes is allowed");
    for method in ["GET", "DELETE"] {
        let (st, body, _) = call(method, format!("{b}/v1/items/a%00b"), None, None).await;
        assert_eq!(st, 400, "{method}: {body}");
    }
    let (st, body, _) = post(
        format!("{b}/v1/search"),
        json!({"query": "x", "filter": {"k": "\u{0}"}}),
    )
    .await;
    assert_eq!(st, 400, "{body}");

    // A failed row under ?wait=true: 422 embedding_failed with the row's last error.
    let (st, _, _) = post(
        format!("{b}/v1/items"),
        json!({"id": "f", "content": "fails"}),
    )
    .await;
    assert_eq!(st, 202);
    let (db, _t) = pgai_trigger::connect(&s.url, "api test").await.unwrap();
    db.batch_execute(
        "UPDATE m0_episodic SET retry_status = 'failed', retry_count = 3, last_error = 'boom' WHERE id = 'f'",
    )
    .await
    .unwrap();
    let (st, body, _) = post(
        format!("{b}/v1/items?wait=true"),
        json!({"id": "f", "content": "fails"}),
    )
    .await;
    assert_eq!(st, 422, "{body}");
    assert_eq!(body["error"]["type"], "embedding_failed");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("boom"),
        "{body}"
    );
    s.stop().await;
}

/// `GET /v1/failed` lists failed rows (id, last error, attempts), `POST /v1/failed/retry`
/// re-queues them; both need the token, the status page's files do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rows_listed_and_requeued() {
    let s = Server::start("api_failed", Some("tok"), true).await;
    let b = &s.base;
    let tok = Some("tok");
    let (st, _, _) = call(
        "POST",
        format!("{b}/v1/items?wait=true"),
        tok,
        Some(json!({"id": "f", "content": "fails"}).to_string()),
    )
    .await;
    assert_eq!(st, 201);
    let (st, body, _) = call("GET", format!("{b}/v1/failed"), tok, None).await;
    assert_eq!((st, &body), (200, &json!({"failed": []})));

    let (db, _t) = pgai_trigger::connect(&s.url, "api test").await.unwrap();
    mark_failed(&db, "f").await;
    let (st, body, _) = call("GET", format!("{b}/v1/failed?limit=10"), tok, None).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body,
        json!({"failed": [{"id": "f", "last_error": "boom", "retry_count": 3}]})
    );
    for bad in ["limit=0", "limit=1001", "limit=x", "other=1"] {
        let (st, body, _) = call("GET", format!("{b}/v1/failed?{bad}"), tok, None).await;
        assert_eq!(st, 400, "{bad}: {body}");
        assert_error(&body, 400);
    }
    assert_eq!(
        call("GET", format!("{b}/v1/failed"), None, None).await.0,
        401
    );
    assert_eq!(
        call("POST", format!("{b}/v1/failed/retry"), None, None)
            .await
            .0,
        401
    );
    let (st, _, page) = call("GET", format!("{b}/"), None, None).await;
    assert_eq!(st, 200);
    assert!(page.contains("/assets/app.js"), "{page}");

    let (st, body, _) = call("POST", format!("{b}/v1/failed/retry"), tok, None).await;
    assert_eq!((st, &body), (200, &json!({"requeued": 1})));
    wait_for("the re-queued row embedded", DEADLINE, || async {
        let (_, body, _) = call("GET", format!("{b}/v1/items/f"), tok, None).await;
        (body["status"] == "completed").then_some(())
    })
    .await;
    let (_, body, _) = call("GET", format!("{b}/v1/failed"), tok, None).await;
    assert_eq!(body, json!({"failed": []}));
    s.stop().await;
}
