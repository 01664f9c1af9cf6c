//! `pgai-trigger up` — what `make run` runs — as a user meets it: it prints DATABASE_URL= and
//! HTTP= lines, a row inserted with any client gets its vector, SIGTERM stops daemon and
//! cluster, and a cluster left running by a killed run is reused, not corrupted. The cluster
//! wants the password the URL carries, and the logs never show it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgai_testkit::{free_port, wait_for, TestDir};
use pgvector::Vector;

const BIN: &str = env!("CARGO_BIN_EXE_pgai-trigger");

struct Up {
    child: Child,
    database_url: String,
    http: String,
    /// Everything `up` wrote on stderr so far (its log, at info level).
    stderr: Arc<Mutex<String>>,
    /// Says when stderr reached its end.
    stderr_done: std::sync::mpsc::Receiver<()>,
}

impl Up {
    /// Waits for `up` to exit and returns its status; panics if its log showed `secret`.
    fn wait_checking_log(&mut self, secret: &str) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        // The cluster's server does not inherit the pipe: it ends with `up`.
        self.stderr_done
            .recv_timeout(Duration::from_secs(10))
            .expect("up's stderr to end");
        let log = self.stderr.lock().unwrap().clone();
        assert!(!log.is_empty(), "up logged nothing");
        assert!(!log.contains(secret), "up's log shows the password:\n{log}");
        status
    }
}

/// Starts `up` and reads its DATABASE_URL= and HTTP= lines.
fn start_up(data_dir: &Path, pg_port: u16) -> Up {
    let mut child = Command::new(BIN)
        .args(["up", "--data-dir"])
        .arg(data_dir)
        .args(["--pg-port", &pg_port.to_string(), "--http", "127.0.0.1:0"])
        .env_remove("PGAI_CONFIG")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info,ort=warn")
        .current_dir("/tmp")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning pgai-trigger up");
    // Echoed for the test's output, and kept to check what the log shows.
    let stderr = Arc::new(Mutex::new(String::new()));
    let err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let kept = stderr.clone();
    let (done, stderr_done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in err_lines.map_while(Result::ok) {
            eprintln!("up: {line}");
            let mut kept = kept.lock().unwrap();
            kept.push_str(&line);
            kept.push('\n');
        }
        let _ = done.send(());
    });
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
        stderr,
        stderr_done,
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
    // The URL carries the generated password, kept next to the data directory for its owner.
    let password_file = dir.path().join("data.password");
    let password = std::fs::read_to_string(&password_file).expect("data.password");
    let password = password.trim_end();
    assert!(password.len() >= 32, "{password:?}");
    {
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(&password_file).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        up.database_url.starts_with(&format!(
            "postgresql://postgres:{password}@127.0.0.1:{port}/"
        )),
        "{}",
        up.database_url
    );
    let no_password = up.database_url.replacen(&format!(":{password}@"), "@", 1);
    let Err(refused) = pgai_trigger::connect(&no_password, "up test").await else {
        panic!("a connection without the password must be refused");
    };
    assert!(format!("{refused:?}").contains("password"), "{refused:?}");
    let v = insert_and_wait(&up.database_url, "m1", "I had coffee with Maria").await;
    assert_eq!(v.len(), 384);
    let health = http_get(&format!("{}/healthz", up.http));
    assert!(health.contains("ok"), "{health}");
    signal(&up.child, libc::SIGTERM);
    let status = up.wait_checking_log(password);
    assert!(status.success(), "up exits 0 on SIGTERM: {status:?}");
    assert!(
        !data.join("postmaster.pid").exists(),
        "the cluster was stopped"
    );

    // Second run reuses the data (and the password); then it is killed: the cluster stays
    // up, orphaned.
    let mut up = start_up(&data, port);
    assert!(up.database_url.contains(password), "{}", up.database_url);
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
    assert!(up.wait_checking_log(password).success());
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
