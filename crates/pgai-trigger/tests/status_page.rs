//! The status page (`GET /`) in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, installed with apt when missing), against the daemon and the HTTP server on
//! the real cluster and model. The page must load without script errors, follow inserts
//! without a reload (counts and chart), list a failed row with its reason and re-queue it,
//! search, and with a token show only the login prompt until the token is given.
//! `PGAI_UPDATE_SCREENSHOT=1` refreshes docs/status-page.png.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use pgai_testkit::{free_port, fresh_database, wait_for};
use pgai_trigger::http::{self, Api};
use pgai_trigger::{schema, Config, Store, Table};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);

struct Server {
    base: String,
    url: String,
    store: Arc<Store>,
    stop: CancellationToken,
}

impl Server {
    async fn start(prefix: &str, token: Option<&str>) -> Server {
        let url = fresh_database(prefix).await;
        let (client, _t) = pgai_trigger::connect(&url, "status page test")
            .await
            .unwrap();
        schema::init(&client, &Table::default(), pgai_embed::DIM)
            .await
            .unwrap();
        let store = Store::new(Config::new(&url)).with_embedder(pgai_testkit::model().await);
        store.start_daemon().await.expect("daemon");
        let store = Arc::new(store);
        let stop = CancellationToken::new();
        let mut api = Api::new(store.clone());
        api.token = token.map(String::from);
        let (addr, _task) = http::serve(
            "127.0.0.1:0".parse().unwrap(),
            http::router(api),
            stop.clone(),
        )
        .await
        .unwrap();
        Server {
            base: format!("http://{addr}"),
            url,
            store,
            stop,
        }
    }

    async fn sql(&self, statements: &str) {
        let (db, _t) = pgai_trigger::connect(&self.url, "status page test")
            .await
            .unwrap();
        db.batch_execute(statements).await.unwrap();
    }

    async fn stop(self) {
        self.stop.cancel();
        self.store.close().await;
    }
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs Debian's chromium and chromium-driver when `chromedriver` is missing (the tests run
/// as root), printing what apt does.
fn ensure_chromedriver() {
    let found = Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return;
    }
    eprintln!("chromedriver is missing: apt-get install -y chromium chromium-driver");
    let status = Command::new("apt-get")
        .args(["install", "-y", "chromium", "chromium-driver"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("running apt-get (Debian's chromium and chromium-driver are needed)");
    assert!(
        status.success(),
        "apt-get install -y chromium chromium-driver failed ({status}); run apt-get update first?"
    );
}

async fn start_driver() -> Driver {
    ensure_chromedriver();
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_for("chromedriver to listen", DEADLINE, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--window-size=1280,900", "--disable-dev-shm-usage"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with headless Chromium")
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Types `token` into the login form, submits it, and waits until `script` is truthy.
async fn log_in(c: &Client, token: &str, what: &str, script: &str) {
    let input = c.find(Locator::Id("token")).await.unwrap();
    input.send_keys(token).await.unwrap();
    c.find(Locator::Id("login-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(c, what, script).await;
}

/// Waits until `script` returns something truthy (not null/false/""/0) and returns it.
async fn until(c: &Client, what: &str, script: &str) -> Value {
    wait_for(what, DEADLINE, || async {
        let v = js(c, script).await;
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        truthy.then_some(v)
    })
    .await
}

/// No error was recorded by the page's collector (script errors, failed script loads,
/// unhandled rejections).
async fn assert_no_errors(c: &Client) {
    let v = js(
        c,
        "return [document.documentElement.getAttribute('data-errors'), document.documentElement.getAttribute('data-error-messages')]",
    )
    .await;
    assert_eq!(v[0], "0", "errors on the page: {}", v[1]);
}

const CELL: &str = "(function(name, cls){ var r = document.querySelector('#vectorizers tr[data-name=\"' + name + '\"]'); if (!r) return null; return r.querySelector('td.' + cls).textContent; })";

fn header_of(url: &str, name: &str) -> (u16, String) {
    let r = ureq::get(url).call().unwrap();
    (r.status(), r.header(name).unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium() {
    let started = Instant::now();
    let driver = start_driver().await;
    let s = Server::start("status_page", None).await;
    let b = s.base.clone();

    // The page and its files: open, with the strict policy.
    for path in [
        "/",
        "/assets/app.js",
        "/assets/app.css",
        "/assets/uplot.min.js",
        "/assets/uplot.min.css",
    ] {
        let u = format!("{b}{path}");
        let (status, csp) =
            tokio::task::spawn_blocking(move || header_of(&u, "content-security-policy"))
                .await
                .unwrap();
        assert_eq!(status, 200, "{path}");
        assert_eq!(csp, http::CSP, "{path}");
    }

    let c = browser(&driver).await;
    c.goto(&format!("{b}/")).await.unwrap();
    until(
        &c,
        "the page to poll",
        "return document.body.getAttribute('data-polls')",
    )
    .await;
    assert_eq!(
        js(&c, "return document.body.getAttribute('data-state')").await,
        "app"
    );
    assert_no_errors(&c).await;
    let name = until(
        &c,
        "the table's vectorizer in the list",
        "var r = document.querySelector('#vectorizers tr[data-name]'); return r && r.getAttribute('data-name')",
    )
    .await;
    let name = name.as_str().unwrap().to_string();
    assert!(
        js(&c, "return document.getElementById('health').textContent")
            .await
            .as_str()
            .unwrap()
            .contains("Worker")
    );

    // Inserts show up without a reload: the counts, and the chart grows.
    let samples_before: u64 = js(
        &c,
        "return document.getElementById('chart').getAttribute('data-samples')",
    )
    .await
    .as_str()
    .unwrap()
    .parse()
    .unwrap();
    s.sql(
        "INSERT INTO m0_episodic (id, content) VALUES
           ('coffee', 'I had coffee with Maria at the corner cafe'),
           ('revenue', 'The quarterly revenue grew by ten percent'),
           ('hike', 'We hiked up the mountain on Sunday'),
           ('cat', 'The cat sleeps on the sofa all afternoon'),
           ('fails', 'This row will be marked failed')",
    )
    .await;
    until(
        &c,
        "5 rows embedded on the page",
        &format!("return {CELL}({name:?}, 'embedded') === '5'"),
    )
    .await;
    assert_eq!(
        js(&c, &format!("return {CELL}({name:?}, 'rows')")).await,
        "5"
    );
    until(
        &c,
        "the chart to gain samples and draw",
        &format!("var ch = document.getElementById('chart'); return Number(ch.getAttribute('data-samples')) > {samples_before} + 1 && !!ch.querySelector('canvas')"),
    )
    .await;

    // A failed row appears with its reason, and the button re-queues it.
    s.sql(
        "BEGIN;
         UPDATE m0_episodic SET needs_embedding = TRUE WHERE id = 'fails';
         UPDATE m0_episodic SET retry_status = 'failed', retry_count = 3,
                last_error = 'provider refused the text' WHERE id = 'fails';
         COMMIT;",
    )
    .await;
    let shown = until(
        &c,
        "the failed row listed",
        "var li = document.querySelector('#failed-list li[data-id=\"fails\"]'); return li && li.textContent",
    )
    .await;
    assert!(
        shown
            .as_str()
            .unwrap()
            .contains("provider refused the text"),
        "{shown}"
    );
    assert!(shown.as_str().unwrap().contains("3 attempts"), "{shown}");
    until(
        &c,
        "the failed count in the table",
        &format!("return {CELL}({name:?}, 'failed') === '1'"),
    )
    .await;
    c.find(Locator::Id("retry"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        "the re-queue answer",
        "return document.getElementById('retry-result').getAttribute('data-requeued') === '1'",
    )
    .await;
    until(
        &c,
        "the re-queued row embedded and gone from the failed list",
        &format!("return !document.querySelector('#failed-list li[data-id=\"fails\"]') && {CELL}({name:?}, 'embedded') === '5'"),
    )
    .await;

    // Search shows the nearest rows with scores.
    let q = c.find(Locator::Id("search-q")).await.unwrap();
    q.send_keys("drinking coffee with a friend").await.unwrap();
    c.find(Locator::Css("#search-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let first = until(
        &c,
        "search results",
        "var li = document.querySelector('#search-results li'); return li && [li.getAttribute('data-id'), li.querySelector('.score').textContent]",
    )
    .await;
    assert_eq!(first[0], "coffee", "{first}");
    let score: f64 = first[1].as_str().unwrap().parse().unwrap();
    assert!(score > 0.3 && score <= 1.0, "{first}");
    assert_no_errors(&c).await;

    // The whole page in one picture (docs/status-page.png).
    c.set_window_size(1280, 1900).await.unwrap();
    js(
        &c,
        "window.scrollTo(0, 0); document.activeElement.blur(); return null",
    )
    .await;
    let png = c.screenshot().await.unwrap();
    // Always beside the build; into docs/ (committed) only when asked, so a test run leaves
    // the worktree clean.
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
    if std::env::var_os("PGAI_UPDATE_SCREENSHOT").is_some() {
        let docs =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/status-page.png");
        std::fs::write(&docs, &png).unwrap();
    }

    // Phone width: the table turns into cards.
    c.set_window_size(390, 844).await.unwrap();
    assert_eq!(
        js(
            &c,
            "return getComputedStyle(document.querySelector('#vectorizers thead')).display"
        )
        .await,
        "none"
    );
    s.stop().await;

    // With a token: nothing but the prompt until it is given.
    let t = Server::start("status_page_token", Some("s3cret-token")).await;
    c.set_window_size(1280, 900).await.unwrap();
    c.goto(&format!("{}/", t.base)).await.unwrap();
    until(
        &c,
        "the login prompt",
        "return document.body.getAttribute('data-state') === 'login'",
    )
    .await;
    let hidden = js(
        &c,
        "return [document.getElementById('app').hidden, document.getElementById('login').hidden, document.querySelectorAll('#vectorizers tr[data-name]').length, document.getElementById('app').offsetHeight]",
    )
    .await;
    assert_eq!(hidden, json!([true, false, 0, 0]));
    log_in(
        &c,
        "wrong",
        "the wrong token refused",
        "return document.getElementById('login-error').textContent.indexOf('refused') >= 0",
    )
    .await;
    assert_eq!(
        js(&c, "return document.getElementById('app').hidden").await,
        true
    );
    log_in(
        &c,
        "s3cret-token",
        "the data after login",
        "return document.body.getAttribute('data-state') === 'app' && document.body.getAttribute('data-polls') && document.querySelectorAll('#vectorizers tr[data-name]').length > 0",
    )
    .await;
    assert_no_errors(&c).await;
    c.close().await.unwrap();
    t.stop().await;
    drop(driver);
    eprintln!("status page test took {:?}", started.elapsed());
}
