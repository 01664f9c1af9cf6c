//! Test support shared by every integration test of the workspace (a dev-dependency only): one embedded cluster per test
//! process, one fresh database per test, so tests run in parallel without seeing each other's
//! rows, and waits with deadlines instead of sleeps.
//!
//! Everything lives in `/tmp/pgai-trigger-test-<pid>-…` directories (outside `/root`, so the
//! unprivileged PostgreSQL user reaches them when tests run as root). Each holds an `owner.pid`
//! marker; a later test process stops the clusters of, and deletes, those whose owner died
//! without cleaning up (a killed `cargo test`).
//!
//! Panics instead of returning errors: this is test code, and a panic names the problem.

use std::collections::HashSet;
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgai_cluster::{Cluster, ClusterConfig, ClusterError};
use tokio_postgres::Client;

pub mod tls;

const DIR_PREFIX: &str = "pgai-trigger-test-";
const OWNER_MARKER: &str = "owner.pid";

static SHARED: OnceLock<(Cluster, PathBuf)> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Settings for throwaway test clusters: durability buys nothing here and costs time.
pub fn test_settings() -> Vec<(String, String)> {
    vec![("fsync".into(), "off".into())]
}

/// The test process's cluster, started on first use and stopped (immediately, then deleted) when
/// the process exits.
pub fn shared_cluster() -> &'static Cluster {
    &SHARED
        .get_or_init(|| {
            sweep_leftovers();
            let dir = TestDir::new("shared").into_path();
            let mut last_error = None;
            // free_port() can race with other programs for the port: try a few.
            for _ in 0..5 {
                let mut cfg = ClusterConfig::new(dir.join("data"), free_port());
                cfg.extra_settings = test_settings();
                let cluster =
                    Cluster::new(cfg).unwrap_or_else(|e| panic!("shared test cluster: {e}"));
                cluster
                    .init()
                    .unwrap_or_else(|e| panic!("shared test cluster: {e}"));
                match cluster.start() {
                    Ok(_) => {
                        // SAFETY: registers a plain extern "C" fn; atexit has no other preconditions.
                        unsafe { libc::atexit(stop_shared_cluster) };
                        return (cluster, dir);
                    }
                    Err(e @ ClusterError::PortInUse { .. }) => last_error = Some(e),
                    Err(e) => panic!("shared test cluster: {e}"),
                }
            }
            panic!(
                "shared test cluster: {}",
                last_error.map(|e| e.to_string()).unwrap_or_default()
            )
        })
        .0
}

/// Runs at process exit (the test harness exits through `exit`, which runs atexit handlers).
extern "C" fn stop_shared_cluster() {
    if let Some((cluster, dir)) = SHARED.get() {
        let _ = cluster.stop_immediate();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Creates a database with a unique name on the shared cluster and returns its URL. It has
/// no extensions: the code under test creates what it needs.
pub async fn fresh_database(prefix: &str) -> String {
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("starting the shared cluster");
    let clean: String = prefix
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let name = format!(
        "{clean}_{}_{}",
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    );
    let (client, connection) = pgai_trigger::connect(&cluster.url("postgres"), "pgai-testkit")
        .await
        .unwrap_or_else(|e| panic!("connecting to the shared cluster: {e}"));
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    drop(client);
    let _ = connection.await;
    cluster.url(&name)
}

/// The real model on one thread of its own, shared by every test of the process (loading it
/// per test would cost time and memory). `threads` applies to the first call only.
/// The model every test uses: one per test process, [`MODEL_THREADS`] threads.
pub async fn model() -> pgai_trigger::EmbedService {
    shared_model(MODEL_THREADS).await
}

/// Model threads in tests: one, so that the model and the cluster share the two cores.
pub const MODEL_THREADS: usize = 1;

/// Waits until no row of the default table is queued (pending or processing, as
/// [`RowState`](pgai_trigger::RowState) defines them); returns how long that took. On timeout, the panic shows the
/// pending rows' queue columns.
pub async fn wait_drained(db: &Client, deadline: Duration) -> Duration {
    wait_drained_except(db, deadline, &[]).await
}

/// As [`wait_drained`], ignoring the rows `except` (rows a scenario keeps waiting on purpose).
pub async fn wait_drained_except(db: &Client, deadline: Duration, except: &[&str]) -> Duration {
    let t = Instant::now();
    let except: Vec<String> = except.iter().map(|s| s.to_string()).collect();
    let queued = pgai_trigger::RowState::queued_predicate();
    let pending_sql =
        format!("SELECT count(*) FROM m0_episodic WHERE {queued} AND NOT id = ANY($1)");
    loop {
        let n: i64 = db
            .query_one(&pending_sql, &[&except])
            .await
            .expect("pending rows")
            .get(0);
        if n == 0 {
            return t.elapsed();
        }
        if t.elapsed() > deadline {
            let rows = db
                .query(
                    &format!("SELECT left(id, 20), retry_status, retry_count, claimed_by,
                            (claim_expires_at - clock_timestamp())::text, (next_attempt_at - clock_timestamp())::text,
                            left(last_error, 120)
                       FROM m0_episodic
                      WHERE {queued} AND NOT id = ANY($1)
                      ORDER BY queued_at LIMIT 8"),
                    &[&except],
                )
                .await
                .expect("pending rows");
            let shown: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} status={:?} retries={} claimed_by={:?} lease_left={:?} next_attempt_in={:?} error={:?}",
                        r.get::<_, String>(0),
                        r.get::<_, Option<String>>(1),
                        r.get::<_, Option<i32>>(2).unwrap_or(-1),
                        r.get::<_, Option<String>>(3),
                        r.get::<_, Option<String>>(4),
                        r.get::<_, Option<String>>(5),
                        r.get::<_, Option<String>>(6)
                    )
                })
                .collect();
            panic!(
                "timed out after {deadline:?}: {n} rows still pending, oldest:\n  {}",
                shown.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn shared_model(threads: usize) -> pgai_trigger::EmbedService {
    static MODEL: tokio::sync::OnceCell<pgai_trigger::EmbedService> =
        tokio::sync::OnceCell::const_new();
    MODEL
        .get_or_init(|| async move {
            pgai_trigger::EmbedService::start_default(threads)
                .await
                .unwrap_or_else(|e| panic!("loading the model: {e}"))
        })
        .await
        .clone()
}

/// Cosine similarity, in f64 (the parity bar is 0.9999, so f32 sums would eat the margin).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// A TCP port on 127.0.0.1 free right now, never the same twice in this process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .expect("binding 127.0.0.1:0")
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Polls `f` every ~20 ms until it returns `Some`, and returns that; panics naming `what` if
/// `deadline` passes first.
pub async fn wait_for<F, Fut, T>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if started.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A scratch directory under /tmp for one test, reachable by the PostgreSQL user. Dropping
/// it stops any cluster inside and deletes it, so a failing test cleans up too.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(label: &str) -> TestDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            PathBuf::from("/tmp").join(format!("{DIR_PREFIX}{}-{n}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        // Root's umask may be strict; the PostgreSQL user must get through.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        std::fs::write(path.join(OWNER_MARKER), std::process::id().to_string())
            .unwrap_or_else(|e| panic!("writing the marker in {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory past this value; cleaning up is then the caller's job.
    pub fn into_path(self) -> PathBuf {
        let path = self.path.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        remove_test_dir(&self.path);
    }
}

/// Stops any cluster running in a data directory directly inside `dir`, and a TLS front's
/// PgBouncer, then deletes `dir`.
fn remove_test_dir(dir: &Path) {
    tls::stop_leftover(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let data_dir = entry.path();
            if data_dir.join("postmaster.pid").exists() {
                let cfg = ClusterConfig::new(&data_dir, 0);
                if let Ok(cluster) = Cluster::new(cfg) {
                    let _ = cluster.stop_immediate();
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes the test directories of test processes that died without cleaning up.
fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let owner = std::fs::read_to_string(dir.join(OWNER_MARKER))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let Some(owner) = owner else { continue };
        if !pgai_cluster::pid_alive(owner) {
            remove_test_dir(&dir);
        }
    }
}
