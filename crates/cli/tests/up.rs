//! `pgai-trigger up` — what `make run` runs — as a user meets it: it prints DATABASE_URL= and
//! HTTP= lines, a row inserted with any client gets its vector, SIGTERM stops daemon and
//! cluster, and a cluster left running by a killed run is reused, not corrupted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgai_testkit::{free_port, wait_for, TestDir};
use pgvector::Vector;

const BIN: &str = env!("CARGO_BIN_EXE_pgai-trigger");

struct Up {
    child: Child,
    database_url: String,
    http: String,
}

/// Starts `up` and reads its DATABASE_URL= and HTTP= lines.
fn start_up(data_dir: &Path, pg_port: u16) -> Up {
    let mut child = Command::new(BIN)
        .args(["up", "--data-dir"])
        .arg(data_dir)
        .args(["--pg-port", &pg_port.to_string(), "--http", "127.0.0.1:0"])
        .env_remove("PGAI_CONFIG")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .current_dir("/tmp")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning pgai-trigger up");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut database_url, mut http) = (None, None);
    let started = Instant::now();
    while database_url.is_none() || http.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "up did not print its addresses"
        );
        let line = lines
            .next()
            .expect("up exited before printing its addresses")
            .unwrap();
        if let Some(v) = line.strip_prefix("DATABASE_URL=") {
            database_url = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("HTTP=") {
            http = Some(v.to_string());
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Up {
        child,
        database_url: database_url.unwrap(),
        http: http.unwrap(),
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

async fn insert_and_wait(url: &str, id: &str, content: &str) -> Vec<f32> {
    let (db, _t) = pgai_trigger::connect(url, "up test")
        .await
        .expect("connect to up's cluster");
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ($1, $2)",
        &[&id, &content],
    )
    .await
    .unwrap();
    wait_for(
        &format!("{id} embedded by up's daemon"),
        Duration::from_secs(30),
        || async {
            db.query_opt(
                "SELECT embedding FROM m0_episodic WHERE id = $1 AND retry_status = 'completed'",
                &[&id],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, Vector>(0).to_vec())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_stops_on_sigterm_and_reuses_a_cluster_left_running() {
    let dir = TestDir::new("up");
    let data = dir.path().join("data");
    let port = free_port();

    // First run: fresh cluster, a row gets its vector, /healthz answers, SIGTERM stops both.
    let mut up = start_up(&data, port);
    assert!(
        up.database_url.starts_with("postgresql://"),
        "{}",
        up.database_url
    );
    let v = insert_and_wait(&up.database_url, "m1", "I had coffee with Maria").await;
    assert_eq!(v.len(), 384);
    let health = http_get(&format!("{}/healthz", up.http));
    assert!(health.contains("ok"), "{health}");
    signal(&up.child, libc::SIGTERM);
    let status = up.child.wait().unwrap();
    assert!(status.success(), "up exits 0 on SIGTERM: {status:?}");
    assert!(
        !data.join("postmaster.pid").exists(),
        "the cluster was stopped"
    );

    // Second run reuses the data; then it is killed: the cluster stays up, orphaned.
    let mut up = start_up(&data, port);
    insert_and_wait(&up.database_url, "m2", "second run").await;
    signal(&up.child, libc::SIGKILL);
    up.child.wait().unwrap();
    assert!(
        data.join("postmaster.pid").exists(),
        "SIGKILL leaves the cluster running"
    );

    // Third run adopts the running cluster; every row is still there and embedded.
    let mut up = start_up(&data, port);
    insert_and_wait(&up.database_url, "m3", "third run").await;
    let (db, _t) = pgai_trigger::connect(&up.database_url, "up test")
        .await
        .unwrap();
    let done: i64 = db
        .query_one(
            "SELECT count(*) FROM m0_episodic WHERE retry_status = 'completed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(done, 3);
    drop(db);
    signal(&up.child, libc::SIGTERM);
    assert!(up.child.wait().unwrap().success());
    assert!(!data.join("postmaster.pid").exists());
}

/// A plain HTTP/1.1 GET over a TCP socket (no client library needed for one request).
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let (host, path) = addr
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((addr, "/".into()));
    let mut s = std::net::TcpStream::connect(host).expect("connect to HTTP");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
