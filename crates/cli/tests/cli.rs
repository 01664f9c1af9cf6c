//! The `pgai-trigger` binary as an operator runs it, on the real embedded PostgreSQL and the
//! real model: every row command, `serve` with a config file, wrong configurations (one line
//! naming the key), and `--help`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pgai_testkit::{free_port, fresh_database, wait_for, TestDir};
use pgai_trigger::{schema, Table};
use pgai_trigger::{Config, Daemon};
use serde_json::Value;
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_pgai-trigger");
const DEADLINE: Duration = Duration::from_secs(30);

async fn schema_db(prefix: &str) -> (String, Client) {
    let url = fresh_database(prefix).await;
    let (client, _t) = pgai_trigger::connect(&url, "cli test").await.unwrap();
    schema::init(&client, &Table::default(), pgai_embed::DIM)
        .await
        .unwrap();
    (url, client)
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
    fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs the binary with `DATABASE_URL=url` (when given) and no config file of the environment.
async fn pgai(url: Option<&str>, args: &[&str]) -> Out {
    let url = url.map(String::from);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .env_remove("PGAI_CONFIG")
            .env("RUST_LOG", "warn")
            .current_dir("/tmp");
        match url {
            Some(u) => cmd.env("DATABASE_URL", u),
            None => cmd.env_remove("DATABASE_URL"),
        };
        let o = cmd.output().expect("running pgai-trigger");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_wait_search_stats_health() {
    let (url, _db) = schema_db("cli_add").await;
    let daemon = Daemon::start(Config::new(&url), pgai_testkit::model().await)
        .await
        .unwrap();
    let u = Some(url.as_str());

    let row = pgai(
        u,
        &[
            "add",
            "--wait",
            "--id",
            "a",
            "--metadata",
            r#"{"user":"maria"}"#,
            "I had coffee with Maria",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["metadata"]["user"], "maria");
    let row = pgai(u, &["add", "--id", "b", "Maria likes espresso"])
        .await
        .ok()
        .json();
    assert_eq!(row["status"], "pending");
    pgai(
        u,
        &[
            "add",
            "--wait",
            "--id",
            "c",
            "The quarterly revenue grew by ten percent",
        ],
    )
    .await
    .ok();
    pgai(u, &["add", "--wait", "--id", "b", "Maria likes espresso"])
        .await
        .ok();

    let found = pgai(u, &["search", "I had coffee with Maria", "-k", "3"])
        .await
        .ok()
        .json();
    let ids: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["a", "b", "c"], "{found}");
    let found = pgai(
        u,
        &[
            "search",
            "revenue",
            "-k",
            "5",
            "--filter",
            r#"{"user":"maria"}"#,
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(found["results"].as_array().unwrap().len(), 1);

    let stats = pgai(u, &["stats"]).await.ok().json();
    assert_eq!(stats["completed"], 3, "{stats}");
    assert_eq!(stats["queue_depth"], 0);
    assert!(stats["latency_ms"]["p95"].as_f64().is_some(), "{stats}");
    assert!(stats["throughput_per_minute"].as_i64().unwrap() >= 3);

    let health = pgai(u, &["health"]).await.ok().json();
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["checks"]["daemons"]["ok"], true);

    let bad = pgai(u, &["add", "--metadata", "[1]", "x"]).await;
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("--metadata must be a JSON object"),
        "{}",
        bad.stderr
    );
    daemon.stop().await;

    // No daemon now: --wait gives up at its deadline, saying so.
    let late = pgai(u, &["add", "--wait", "--timeout", "0.5", "unembedded"]).await;
    assert_ne!(late.code, 0);
    assert!(
        late.stderr.contains("not embedded within"),
        "{}",
        late.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_then_backfill() {
    let (url, db) = schema_db("cli_backfill").await;
    let u = Some(url.as_str());
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content) SELECT 'r' || i, 'row number ' || i FROM generate_series(1, 40) i;
         UPDATE m0_episodic SET retry_status = 'failed', retry_count = 3, last_error = 'boom' WHERE id = 'r1';",
    )
    .await
    .unwrap();
    assert_eq!(pgai(u, &["retry-failed"]).await.ok().json()["retried"], 1);
    assert_eq!(pgai(u, &["retry-failed"]).await.ok().json()["retried"], 0);
    let before = pgai(u, &["stats"]).await.ok().json();
    assert_eq!(before["queue_depth"], 40, "{before}");
    assert!(before["oldest_pending_secs"].as_f64().is_some());
    let health = pgai(u, &["health"]).await.ok().json();
    assert_eq!(health["status"], "degraded", "no daemon: {health}");

    let done = pgai(u, &["backfill", "--batch-size", "16"])
        .await
        .ok()
        .json();
    assert_eq!(done["embedded"], 40, "{done}");
    assert_eq!(done["remaining"], 0);
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM m0_episodic WHERE needs_embedding OR embedding IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let again = pgai(u, &["backfill"]).await.ok().json();
    assert_eq!(again["embedded"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_and_unreachable_databases() {
    let url = fresh_database("cli_noschema").await;
    let out = pgai(Some(&url), &["health"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let h = out.json();
    assert_eq!(h["status"], "unhealthy");
    assert_eq!(h["checks"]["schema"]["ok"], false);
    assert!(out.stderr.contains("unhealthy: schema"), "{}", out.stderr);

    // The password never shows, whatever fails.
    let port = free_port();
    let secret = format!("postgresql://app:s3cret@127.0.0.1:{port}/x");
    for cmd in [
        &["stats"][..],
        &["health"],
        &["add", "x"],
        &["retry-failed"],
    ] {
        let out = pgai(Some(&secret), cmd).await;
        assert_ne!(out.code, 0, "{cmd:?}");
        assert!(
            !out.stderr.contains("s3cret") && !out.stdout.contains("s3cret"),
            "{cmd:?}: {}{}",
            out.stdout,
            out.stderr
        );
    }
    let out = pgai(None, &["stats"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("DATABASE_URL"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_configuration_is_one_line_naming_the_key() {
    let dir = TestDir::new("cli-config");
    let cases = [
        ("database:\n  pgai:\n    max_retry: 3\n", "max_retry"),
        (
            "database:\n  pgai:\n    max_retries: three\n",
            "database.pgai.max_retries",
        ),
        (
            "database:\n  pgai:\n    immediate_trigger: sometimes\n",
            "database.pgai.immediate_trigger",
        ),
        ("htttp:\n  address: 127.0.0.1:1\n", "htttp"),
        ("embedding:\n  provider: magic\n", "embedding.provider"),
    ];
    for (i, (yaml, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let out = pgai(None, &["--config", path.to_str().unwrap(), "stats"]).await;
        assert_ne!(out.code, 0, "{yaml}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {yaml:?}: {}", out.stderr);
        assert!(
            lines[0].contains(key) && lines[0].contains("bad"),
            "{key}: {}",
            lines[0]
        );
    }
    // Environment variables are checked the same way.
    let out = tokio::task::spawn_blocking(|| {
        Command::new(BIN)
            .args(["stats"])
            .env("PGAI_BATCH_SIZE", "many")
            .env("DATABASE_URL", "postgresql://a@127.0.0.1:1/x")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("many"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_config_file() {
    let (url, _db) = schema_db("cli_serve").await;
    let dir = TestDir::new("cli-serve");
    let port = free_port();
    let config = dir.path().join("pgai-trigger.yaml");
    std::fs::write(
        &config,
        format!(
            "database:\n  url: {url}\n  pgai:\n    immediate_trigger: true\n    max_retries: 3\n    retry_interval: 5.0\n    worker_count: 2\n    enable_metrics: true\nhttp:\n  address: 127.0.0.1:{port}\n  token: t0k\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    assert_eq!(first.trim(), format!("HTTP=http://127.0.0.1:{port}"));
    let base = format!("http://127.0.0.1:{port}");
    let get = |path: &str, token: Option<&str>| {
        let url = format!("{base}{path}");
        let token = token.map(String::from);
        tokio::task::spawn_blocking(move || {
            let mut r = ureq::get(&url);
            if let Some(t) = token {
                r = r.set("Authorization", &format!("Bearer {t}"));
            }
            match r.call() {
                Ok(r) => (r.status(), r.into_string().unwrap()),
                Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
                Err(e) => panic!("{url}: {e}"),
            }
        })
    };
    wait_for("serve ready", DEADLINE, || async {
        (get("/readyz", None).await.unwrap().0 == 200).then_some(())
    })
    .await;
    assert_eq!(get("/v1/stats", None).await.unwrap().0, 401);
    let (st, body) = get("/v1/stats", Some("t0k")).await.unwrap();
    assert_eq!(st, 200);
    assert!(body.contains("\"mode\":\"immediate\""), "{body}");
    // Rows added from outside are embedded by this daemon.
    pgai(Some(&url), &["add", "--wait", "--id", "s1", "served"])
        .await
        .ok();
    let (st, metrics) = get("/metrics", Some("t0k")).await.unwrap();
    assert_eq!(st, 200);
    assert!(metrics.contains("pgai_rows_embedded_total 1"), "{metrics}");
    // SIGTERM stops it cleanly.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_is_written_for_operators() {
    let top = pgai(None, &["--help"]).await.ok().stdout;
    for cmd in [
        "up",
        "serve",
        "db",
        "add",
        "search",
        "stats",
        "health",
        "retry-failed",
        "backfill",
    ] {
        assert!(
            top.contains(&format!("  {cmd} ")),
            "--help lists {cmd}:\n{top}"
        );
    }
    let serve = pgai(None, &["serve", "--help"]).await.ok().stdout;
    for s in [
        "DATABASE_URL",
        "PGAI_HTTP",
        "PGAI_POLLING",
        "PGAI_BATCH_SIZE",
        "--config",
        "poll interval",
    ] {
        assert!(serve.contains(s), "serve --help mentions {s}:\n{serve}");
    }
    let add = pgai(None, &["add", "--help"]).await.ok().stdout;
    assert!(
        add.contains("--wait") && add.contains("--metadata"),
        "{add}"
    );
}

/// `serve` with `env` set (and no token, config file or database URL of the environment).
fn serve_cmd(url: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .env_remove("PGAI_CONFIG")
        .env_remove("PGAI_HTTP_TOKEN")
        .env_remove("PGAI_HTTP_ALLOW_UNAUTHENTICATED")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .current_dir("/tmp");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_unsafe_http_settings_and_stops_promptly_with_waiting_requests() {
    let (url, db) = schema_db("cli_serve_http").await;
    // Refused before anything starts, on one line.
    for (args, env, needle) in [
        (
            vec!["--http", "0.0.0.0:0"],
            vec![],
            "PGAI_HTTP_ALLOW_UNAUTHENTICATED",
        ),
        (
            vec!["--http", "127.0.0.1:0"],
            vec![("PGAI_HTTP_TOKEN", "")],
            "empty",
        ),
    ] {
        let mut cmd = serve_cmd(&url, &args, &env);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?} {env:?}");
        assert!(
            stderr.contains(needle) && stderr.trim().lines().count() == 1,
            "{stderr}"
        );
    }

    // No daemon (database.pgai.enabled: false): a ?wait=true request waits until SIGTERM.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = serve_cmd(&url, &["--http", &addr], &[("PGAI_ENABLED", "false")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://{addr}");
    wait_for("serve listening", DEADLINE, || async {
        let url = format!("{base}/healthz");
        tokio::task::spawn_blocking(move || ureq::get(&url).call().ok().map(|_| ()))
            .await
            .unwrap()
    })
    .await;
    let post_url = format!("{base}/v1/items?wait=true&timeout_ms=60000");
    let waiting = tokio::task::spawn_blocking(move || {
        match ureq::post(&post_url)
            .set("Content-Type", "application/json")
            .send_string(r#"{"id": "held", "content": "never embedded"}"#)
        {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(s, _)) => s,
            Err(e) => panic!("{e}"),
        }
    });
    // The wait is registered before the row is inserted.
    wait_for("the waiting row", DEADLINE, || async {
        db.query_opt("SELECT 1 FROM m0_episodic WHERE id = 'held'", &[])
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
    let started = std::time::Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    // Far below the request's 60 s wait; generous for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(waiting.await.unwrap(), 503);
}
