//! Test support shared by every integration test of this crate: one embedded cluster per test
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

use crate::cluster::{Cluster, ClusterConfig, ClusterError};

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
                let cluster = Cluster::new(cfg).unwrap_or_else(|e| panic!("shared test cluster: {e}"));
                cluster.init().unwrap_or_else(|e| panic!("shared test cluster: {e}"));
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
            panic!("shared test cluster: {}", last_error.map(|e| e.to_string()).unwrap_or_default())
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
    let cluster = tokio::task::spawn_blocking(shared_cluster).await.expect("starting the shared cluster");
    let clean: String = prefix
        .chars()
        .take(40)
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    let name = format!("{clean}_{}_{}", COUNTER.fetch_add(1, Ordering::Relaxed), std::process::id());
    let (client, connection) = tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the shared cluster: {e}"));
    let connection = tokio::spawn(connection);
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
pub async fn shared_model(threads: usize) -> crate::EmbedService {
    static MODEL: tokio::sync::OnceCell<crate::EmbedService> = tokio::sync::OnceCell::const_new();
    MODEL
        .get_or_init(|| async move {
            crate::EmbedService::start_default(threads)
                .await
                .unwrap_or_else(|e| panic!("loading the model: {e}"))
        })
        .await
        .clone()
}

/// Cosine similarity, in f64 (the parity bar is 0.9999, so f32 sums would eat the margin).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
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
        let path = PathBuf::from("/tmp").join(format!("{DIR_PREFIX}{}-{n}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
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

/// Stops any cluster running in a data directory directly inside `dir`, then deletes `dir`.
fn remove_test_dir(dir: &Path) {
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
    let Ok(entries) = std::fs::read_dir("/tmp") else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let owner = std::fs::read_to_string(dir.join(OWNER_MARKER)).ok().and_then(|s| s.trim().parse::<i32>().ok());
        let Some(owner) = owner else { continue };
        // SAFETY: signal 0 only checks whether the process exists.
        let dead = unsafe { libc::kill(owner, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if dead {
            remove_test_dir(&dir);
        }
    }
}
