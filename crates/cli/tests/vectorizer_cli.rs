//! `pgai-trigger vectorizer …` as an operator runs it, on the real embedded PostgreSQL:
//! create → list → show → alter → drop, `search --vectorizer`, and bad input (one line on
//! stderr, a non-zero exit, nothing created).

use std::process::Command;

use pgai_testkit::fresh_database;
use pgai_trigger::{schema, Table};
use serde_json::Value;
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_pgai-trigger");

async fn setup(prefix: &str) -> (String, Client) {
    let url = fresh_database(prefix).await;
    let (db, _t) = pgai_trigger::connect(&url, "vectorizer cli test")
        .await
        .unwrap();
    schema::init(&db, &Table::default(), pgai_embed::DIM)
        .await
        .unwrap();
    db.batch_execute(
        "CREATE TABLE articles (id bigint PRIMARY KEY, author text, title text, body text);
         INSERT INTO articles VALUES (1, 'maria', 'Coffee', 'Espresso at the station'),
                                     (2, 'sam', 'Garden', 'Tomatoes need sun');",
    )
    .await
    .unwrap();
    (url, db)
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
    /// A refusal: non-zero, exactly one line on stderr, containing `needle`.
    fn refused(self, needle: &str) {
        assert_ne!(self.code, 0, "{needle}: {}", self.stdout);
        let lines: Vec<&str> = self.stderr.trim().lines().collect();
        assert_eq!(lines.len(), 1, "one line for {needle:?}: {}", self.stderr);
        assert!(lines[0].contains(needle), "{needle:?}: {}", lines[0]);
    }
}

async fn pgai(url: &str, args: &[&str]) -> Out {
    let url = url.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let o = Command::new(BIN)
            .args(&args)
            .env_remove("PGAI_CONFIG")
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "warn")
            .current_dir("/tmp")
            .output()
            .expect("running pgai-trigger");
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
async fn create_list_show_alter_drop() {
    let (url, db) = setup("vz_cli").await;
    let u = url.as_str();
    let created = pgai(
        u,
        &[
            "vectorizer",
            "create",
            "articles_text",
            "--table",
            "articles",
            // Kept as given: a shell's $'…' is how a newline gets in.
            "--template",
            "{title}\n{body}",
            "--chunk-tokens",
            "64",
            "--destination",
            "table:article_chunks",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(created["name"], "articles_text");
    assert_eq!(created["template"], "{title}\n{body}");
    assert_eq!(created["dest_name"], "article_chunks");
    assert_eq!(created["chunk_overlap"], 30);
    pgai(
        u,
        &[
            "vectorizer",
            "create",
            "articles_body",
            "--table",
            "public.articles",
            "--column",
            "body",
            "--destination",
            "column:body_vec",
            "--index",
            "none",
        ],
    )
    .await
    .ok();

    let table = pgai(u, &["vectorizer", "list"]).await.ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("COVERAGE"),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("articles_text ") && l.contains("table:public.article_chunks")),
        "{table}"
    );
    let list = pgai(u, &["vectorizer", "list", "--json"]).await.ok().json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"articles_body") && names.contains(&"articles_text"),
        "{names:?}"
    );
    let item = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "articles_text")
        .unwrap();
    assert_eq!(
        (item["rows"].as_i64(), item["pending"].as_i64()),
        (Some(2), Some(2))
    );

    let show = pgai(u, &["vectorizer", "show", "articles_body"])
        .await
        .ok()
        .json();
    assert_eq!(show["destination"], "column");
    assert_eq!(show["dest_name"], "body_vec");
    assert_eq!(show["index_kind"], "none");
    assert_eq!(show["status"]["rows"], 2);

    let altered = pgai(
        u,
        &[
            "vectorizer",
            "alter",
            "articles_body",
            "--model",
            "example/other",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(altered["model"], "example/other");

    // Search by vectorizer: no vector yet, so no hits, but the query ran (and the model the
    // vectorizer names must be the process's).
    let found = pgai(
        u,
        &[
            "search",
            "coffee",
            "--vectorizer",
            "articles_text",
            "--filter",
            r#"{"author": "maria' OR '1'='1"}"#,
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(found["vectorizer"], "articles_text");
    assert_eq!(found["results"].as_array().map(Vec::len), Some(0));
    pgai(u, &["search", "coffee", "--vectorizer", "articles_body"])
        .await
        .refused("example/other");
    pgai(u, &["search", "coffee", "--vectorizer", "nope"])
        .await
        .refused("no vectorizer named");

    let dropped = pgai(u, &["vectorizer", "drop", "articles_text"])
        .await
        .ok()
        .json();
    assert_eq!(dropped["dropped"], "articles_text");
    pgai(
        u,
        &["vectorizer", "drop", "articles_body", "--keep-embeddings"],
    )
    .await
    .ok();
    let kept: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'articles'::regclass AND attname = 'body_vec'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "--keep-embeddings keeps the vector column");
    let gone: i64 = db
        .query_one(
            "SELECT count(*) FROM pgai.vectorizers WHERE name LIKE 'articles%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_line_and_creates_nothing() {
    let (url, db) = setup("vz_cli_bad").await;
    let u = url.as_str();
    let create = ["vectorizer", "create"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["Bad-Name", "--table", "articles", "--column", "body"],
            "name",
        ),
        (vec!["v", "--table", "articles"], "column or a template"),
        (
            vec![
                "v",
                "--table",
                "articles",
                "--column",
                "body",
                "--template",
                "{body}",
            ],
            "not both",
        ),
        (vec!["v", "--column", "body"], "--table"),
        (
            vec!["v", "--table", "nowhere", "--column", "body"],
            "nowhere",
        ),
        (vec!["v", "--table", "articles", "--column", "nope"], "nope"),
        (
            vec!["v", "--table", "articles", "--template", "{title"],
            "unbalanced",
        ),
        (
            vec![
                "v",
                "--table",
                "articles",
                "--column",
                "body",
                "--chunk-tokens",
                "abc",
            ],
            "--chunk-tokens",
        ),
        (
            vec![
                "v",
                "--table",
                "articles",
                "--column",
                "body",
                "--chunk-tokens",
                "1000",
            ],
            "chunk_tokens",
        ),
        (
            vec![
                "v",
                "--table",
                "articles",
                "--column",
                "body",
                "--destination",
                "elsewhere",
            ],
            "destination",
        ),
        (
            vec![
                "v", "--table", "articles", "--column", "body", "--index", "btree",
            ],
            "index",
        ),
        (
            vec![
                "v",
                "--table",
                "articles",
                "--column",
                "body",
                "--dimensions",
                "512",
            ],
            "512",
        ),
    ];
    for (args, needle) in cases {
        let all: Vec<&str> = create.iter().chain(args.iter()).copied().collect();
        pgai(u, &all).await.refused(needle);
    }
    pgai(u, &["vectorizer", "show", "nope"])
        .await
        .refused("no vectorizer named");
    pgai(u, &["vectorizer", "drop", "nope"])
        .await
        .refused("nope");
    pgai(u, &["vectorizer", "drop", "m0_episodic"])
        .await
        .refused("cannot be dropped");
    pgai(u, &["vectorizer", "alter", "nope", "--model", "m"])
        .await
        .refused("nope");
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM pgai.vectorizers WHERE destination <> 'in_place'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing was created");
}

/// `serve` applies the config file's `vectorizers:` before the daemon starts; a declaration the
/// database refuses stops the start with one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_applies_the_config_files_vectorizers() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let (url, db) = setup("vz_cli_serve").await;
    let dir = pgai_testkit::TestDir::new("vz-cli-serve");
    let config = dir.path().join("pgai-trigger.yaml");
    let yaml = |table: &str| {
        format!(
            "database:\n  url: {url}\n  pgai:\n    worker_count: 1\nhttp:\n  address: 127.0.0.1:0\nvectorizers:\n  - name: articles_text\n    table: {table}\n    template: \"{{title}}\\n{{body}}\"\n    chunk_tokens: 64\n"
        )
    };

    std::fs::write(&config, yaml("nowhere")).unwrap();
    let cfg = config.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env_remove("DATABASE_URL")
            .env_remove("PGAI_CONFIG")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
    .refused("nowhere");

    std::fs::write(&config, yaml("articles")).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("DATABASE_URL")
        .env_remove("PGAI_CONFIG")
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
    assert!(first.starts_with("HTTP="), "{first}");
    // Applied before the daemon (and its HTTP line) started.
    let row = db
        .query_one(
            "SELECT template, chunk_tokens FROM pgai.vectorizers WHERE name = 'articles_text'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "{title}\n{body}");
    assert_eq!(row.get::<_, Option<i32>>(1), Some(64));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}
