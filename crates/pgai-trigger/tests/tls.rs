//! TLS to the database, on the real embedded PostgreSQL behind PgBouncer terminating TLS
//! (`pgai_testkit::tls`, which takes TLS clients only) and the real model: libpq's `sslmode`
//! through `connect`, the daemon (its check, listener and worker connections) and the store's
//! pool; certificate problems and bad settings are one-line errors.

use std::time::Duration;

use pgai_testkit::tls::{tls_front_async, TlsFront};
use pgai_testkit::{fresh_database, wait_for};
use pgai_trigger::{schema, Config, Daemon, Error, NewItem, Store, Table};
use pgvector::Vector;
use tokio_postgres::Client;

const DEADLINE: Duration = Duration::from_secs(30);

/// A fresh database with the schema (made over the cluster's plain port) and the TLS front.
async fn schema_db(prefix: &str) -> (String, &'static TlsFront) {
    let url = fresh_database(prefix).await;
    let (db, _task) = pgai_trigger::connect(&url, "tls test")
        .await
        .expect("connect");
    schema::init(&db, &Table::default(), pgai_embed::DIM)
        .await
        .expect("db init");
    (url, tls_front_async().await)
}

async fn connect(url: &str) -> Client {
    pgai_trigger::connect(url, "tls test")
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
        .0
}

fn verify_full(ca: &std::path::Path) -> String {
    format!("sslmode=verify-full&sslrootcert={}", ca.display())
}

/// The one-line refusal of a certificate signed by another CA.
fn not_signed_by(ca: &std::path::Path) -> String {
    format!(
        "TLS: the server's certificate is not signed by the CA in {} (sslmode=verify-full)",
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_connects_and_the_daemon_embeds_over_it() {
    let (url, front) = schema_db("tls_verify_full").await;
    let tls_url = front.url_of(&url, &verify_full(&front.ca));
    let db = connect(&tls_url).await;
    let one: i32 = db.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // The front takes TLS clients only: the same URL without TLS is refused.
    let e = pgai_trigger::connect(&front.url_of(&url, "sslmode=disable"), "tls test")
        .await
        .map(|_| ())
        .expect_err("a plain connection to the TLS-only front")
        .to_string();
    assert!(e.contains("SSL required"), "{e}");

    // Every connection of the daemon (check, listener, worker) goes through TLS.
    let daemon = Daemon::start(Config::new(&tls_url), pgai_testkit::model().await)
        .await
        .expect("daemon start over verify-full");
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('t1', 'I had coffee with Maria')",
        &[],
    )
    .await
    .unwrap();
    let vector = wait_for("row t1 to be embedded over TLS", DEADLINE, || async {
        db.query_opt(
            "SELECT embedding FROM m0_episodic WHERE id = 't1' AND embedding IS NOT NULL",
            &[],
        )
        .await
        .expect("select")
        .map(|r| r.get::<_, Vector>(0).to_vec())
    })
    .await;
    assert_eq!(vector.len(), pgai_embed::DIM);
    wait_for("the listener to connect over TLS", DEADLINE, || async {
        daemon.monitor().snapshot().listener_connected.then_some(())
    })
    .await;

    // The store's pool and its wait for the vector (a LISTEN connection) over TLS too.
    let store = Store::new(Config::new(&tls_url)).with_embedder(pgai_testkit::model().await);
    let item = store
        .add_and_wait(NewItem::new("a walk in the park").id("t2"), DEADLINE)
        .await
        .expect("add_and_wait over TLS");
    assert!(item.has_embedding);
    store.close().await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_ca_is_refused_in_one_line() {
    let (url, front) = schema_db("tls_other_ca").await;
    let bad_url = front.url_of(&url, &verify_full(&front.other_ca));
    let expected = not_signed_by(&front.other_ca);

    let e = pgai_trigger::connect(&bad_url, "tls test")
        .await
        .map(|_| ())
        .expect_err("another CA");
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    assert_eq!(e.to_string(), expected);
    assert!(!e.is_transient());

    let e = Daemon::start(Config::new(&bad_url), pgai_testkit::model().await)
        .await
        .map(|_| ())
        .expect_err("a daemon on another CA");
    assert_eq!(e.to_string(), expected);

    let store = Store::new(Config::new(&bad_url));
    let e = store
        .get("nope")
        .await
        .map(|_| ())
        .expect_err("a store on another CA");
    assert_eq!(e.to_string(), expected);
    // prefer tries TLS, then plain, which the front refuses: both reasons, on one line, through
    // the pool too.
    let store = Store::new(Config::new(front.url_of(
        &url,
        &format!("sslmode=prefer&sslrootcert={}", front.other_ca.display()),
    )));
    let e = store
        .get("nope")
        .await
        .map(|_| ())
        .expect_err("prefer on another CA")
        .to_string();
    assert!(
        e.starts_with("TLS: the server's certificate is not signed by the CA in")
            && e.contains("; then without TLS: ")
            && e.contains("SSL required")
            && !e.contains('\n'),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_allow_connect_without_a_root_certificate() {
    let (url, front) = schema_db("tls_require").await;
    // require encrypts without checking the certificate: no CA needed, any host name.
    let require = front
        .url_of(&url, "sslmode=require")
        .replace("@localhost:", "@127.0.0.1:");
    let db = connect(&require).await;
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('r1', 'over require')",
        &[],
    )
    .await
    .unwrap();
    let store = Store::new(Config::new(&require));
    let item = store.get("r1").await.expect("store over require");
    assert_eq!(item.expect("row r1").content, "over require");
    store.close().await;

    // allow: plain first, refused by the front, then TLS, as libpq does; the pool too.
    let allow = front.url_of(&url, "sslmode=allow");
    connect(&allow).await;
    let store = Store::new(Config::new(&allow));
    assert!(store.get("r1").await.expect("store over allow").is_some());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_sslmode_is_a_one_line_configuration_error() {
    let url = "postgresql://app:s3cret@localhost:5432/x?sslmode=verify-everything";
    let expected = "invalid configuration: database URL \
                    postgresql://app:***@localhost:5432/x?sslmode=verify-everything: invalid \
                    sslmode 'verify-everything' (expected disable, allow, prefer, require, \
                    verify-ca or verify-full)";
    let e = Config::new(url).validate().unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    assert_eq!(e.to_string(), expected);
    let e = pgai_trigger::connect(url, "tls test").await.err().unwrap();
    assert_eq!(e.to_string(), expected);
    let e = Daemon::start(Config::new(url), pgai_testkit::model().await)
        .await
        .err()
        .unwrap();
    assert_eq!(e.to_string(), expected);
    let e = Store::new(Config::new(url)).get("x").await.err().unwrap();
    assert_eq!(e.to_string(), expected);

    // verify-full without a CA, and a CA file that is not there: named before connecting.
    let e = Config::new("postgresql://localhost/x?sslmode=verify-full")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("sslmode=verify-full needs the CA"), "{e}");
    let e = pgai_trigger::connect(
        "postgresql://localhost/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        "tls test",
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert_eq!(
        e,
        "invalid configuration: TLS: cannot read sslrootcert /nonexistent/ca.pem: no such file"
    );
}
