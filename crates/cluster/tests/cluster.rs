//! The embedded cluster manager against real PostgreSQL: each test has its own data directory
//! (they run in parallel), except the pgvector test, which uses the shared test cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgai_cluster::{Cluster, ClusterConfig, ClusterError, Started};
use pgai_testkit::{free_port, fresh_database, wait_for, TestDir};

fn config(dir: &TestDir) -> ClusterConfig {
    let mut cfg = ClusterConfig::new(dir.path().join("data"), free_port());
    cfg.extra_settings = pgai_testkit::test_settings();
    cfg
}

fn started(cfg: ClusterConfig) -> Cluster {
    let cluster = Cluster::new(cfg).expect("cluster");
    assert!(cluster.init().expect("init"));
    assert_eq!(cluster.start().expect("start"), Started::Fresh);
    cluster
}

/// Runs SQL on a fresh connection and returns the first column of each row as text.
fn query(url: &str, sql: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        tokio::spawn(connection);
        let rows = client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).unwrap_or("").to_owned())
                }
                _ => None,
            })
            .collect()
    })
}

#[test]
fn init_twice_is_harmless() {
    let dir = TestDir::new("init-twice");
    let cluster = Cluster::new(config(&dir)).expect("cluster");
    assert!(cluster.init().expect("first init"));
    assert!(cluster.data_dir().join("PG_VERSION").is_file());
    assert!(
        !cluster.init().expect("second init"),
        "a second init must not run initdb"
    );
    assert!(!cluster.is_running());
}

#[test]
fn start_stop_start() {
    let dir = TestDir::new("start-stop");
    let cluster = started(config(&dir));
    assert!(cluster.is_running());
    assert_eq!(query(&cluster.url("postgres"), "SELECT 1"), ["1"]);
    query(
        &cluster.url("postgres"),
        "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)",
    );

    cluster.stop().expect("stop");
    assert!(!cluster.is_running());
    cluster.stop().expect("stopping a stopped cluster is fine");

    assert_eq!(cluster.start().expect("second start"), Started::Fresh);
    assert_eq!(query(&cluster.url("postgres"), "SELECT x FROM kept"), ["7"]);

    let before = cluster.pid().expect("pid");
    cluster.restart().expect("restart");
    assert_ne!(cluster.pid().expect("pid after restart"), before);
    assert_eq!(query(&cluster.url("postgres"), "SELECT x FROM kept"), ["7"]);
    cluster.stop().expect("stop");
}

#[test]
fn server_listens_on_loopback_only_with_our_settings() {
    let dir = TestDir::new("settings");
    let cluster = started(config(&dir));
    let url = cluster.url("postgres");
    assert_eq!(query(&url, "SHOW listen_addresses"), ["127.0.0.1"]);
    assert_eq!(query(&url, "SHOW unix_socket_directories"), [""]);
    assert_eq!(query(&url, "SHOW max_connections"), ["200"]);
    assert_eq!(query(&url, "SHOW fsync"), ["off"]);
    assert_eq!(query(&url, "SHOW server_encoding"), ["UTF8"]);
    assert!(cluster.log_file().is_file());
    cluster.stop().expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgvector_and_hnsw_work_on_the_shared_cluster() {
    let url = fresh_database("cluster-vector").await;
    let other = fresh_database("cluster-vector").await;
    assert_ne!(url, other, "each call makes a new database");

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE EXTENSION vector;
             CREATE TABLE items (id int PRIMARY KEY, embedding vector(3));
             INSERT INTO items VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0.9,0.1,0]');
             CREATE INDEX ON items USING hnsw (embedding vector_cosine_ops);",
        )
        .await
        .expect("pgvector set-up");
    let nearest: Vec<i32> = client
        .query(
            "SELECT id FROM items ORDER BY embedding <=> '[1,0.05,0]' LIMIT 2",
            &[],
        )
        .await
        .expect("nearest neighbours")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(nearest, [1, 3]);

    // wait_for returns the first Some.
    let mut polls = 0;
    let got = wait_for("the third poll", Duration::from_secs(5), || {
        polls += 1;
        let ready = polls >= 3;
        async move { ready.then_some("done") }
    })
    .await;
    assert_eq!(got, "done");
}

#[test]
fn a_cluster_left_running_is_reused() {
    let dir = TestDir::new("reuse");
    let cfg = config(&dir);
    let first = started(cfg.clone());
    query(
        &first.url("postgres"),
        "CREATE TABLE survivor (x int); INSERT INTO survivor VALUES (1)",
    );
    let pid = first.pid().expect("pid");
    // A killed `up` never stops its cluster: forget the value.
    drop(first);

    let second = Cluster::new(cfg.clone()).expect("cluster");
    assert!(
        !second.init().expect("init"),
        "an initialised data dir is left alone"
    );
    assert!(second.is_running());
    assert_eq!(second.start().expect("start"), Started::Reused);
    assert_eq!(
        second.pid(),
        Some(pid),
        "the running server was adopted, not restarted"
    );
    assert_eq!(
        query(&second.url("postgres"), "SELECT x FROM survivor"),
        ["1"]
    );

    // The same data dir wanted on another port: restarted there.
    let mut moved = cfg.clone();
    moved.port = free_port();
    let third = Cluster::new(moved).expect("cluster");
    assert_eq!(third.start().expect("start on a new port"), Started::Reused);
    assert_ne!(third.pid(), Some(pid));
    assert_eq!(
        query(&third.url("postgres"), "SELECT x FROM survivor"),
        ["1"]
    );
    third.stop().expect("stop");
    assert!(!second.is_running());
}

fn kill9(pid: u32) {
    // SAFETY: sends SIGKILL to the postmaster this test started.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
}

#[tokio::test]
async fn a_stale_postmaster_pid_does_not_block_start() {
    let dir = TestDir::new("stale-pid");
    let cluster = tokio::task::spawn_blocking({
        let cfg = config(&dir);
        move || started(cfg)
    })
    .await
    .expect("start");
    let url = cluster.url("postgres");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let connection = tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE crash (x int); INSERT INTO crash VALUES (1), (2)")
        .await
        .expect("write");

    // Crash 1: the postmaster is killed while a client is connected.
    let pid = cluster.pid().expect("pid");
    kill9(pid);
    wait_for("the postmaster to die", Duration::from_secs(10), || async {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
    assert!(!cluster.is_running());
    assert!(
        cluster.data_dir().join("postmaster.pid").exists(),
        "kill -9 leaves postmaster.pid behind"
    );
    drop(client);
    let _ = connection.await;

    let cluster = tokio::task::spawn_blocking(move || {
        assert_eq!(
            cluster.start().expect("start after kill -9"),
            Started::Fresh
        );
        assert_eq!(
            query(&cluster.url("postgres"), "SELECT count(*) FROM crash"),
            ["2"]
        );

        // Crash 2: immediate shutdown (no checkpoint).
        query(&cluster.url("postgres"), "INSERT INTO crash VALUES (3)");
        cluster.stop_immediate().expect("stop -m immediate");
        assert!(!cluster.is_running());
        assert_eq!(
            cluster.start().expect("start after immediate stop"),
            Started::Fresh
        );
        assert_eq!(
            query(&cluster.url("postgres"), "SELECT count(*) FROM crash"),
            ["3"]
        );
        cluster.stop().expect("stop");
        cluster
    })
    .await
    .expect("restarts");
    assert!(!cluster.is_running());
}

#[test]
fn a_postmaster_pid_naming_an_unrelated_process_does_not_block_start() {
    let dir = TestDir::new("pid-reuse");
    let cluster = started(config(&dir));
    let pid_file = cluster.data_dir().join("postmaster.pid");
    let pid = cluster.pid().expect("pid");
    let contents = std::fs::read_to_string(&pid_file).expect("postmaster.pid");
    cluster.stop().expect("stop");

    // As after a reboot: the old pid now belongs to some other live process (ours).
    let mut lines: Vec<String> = contents.lines().map(str::to_owned).collect();
    assert_eq!(lines[0], pid.to_string());
    lines[0] = std::process::id().to_string();
    std::fs::write(&pid_file, lines.join("\n") + "\n").expect("forge postmaster.pid");
    assert!(
        !cluster.is_running(),
        "our test process is not a postmaster"
    );

    assert_eq!(cluster.start().expect("start"), Started::Fresh);
    assert_eq!(query(&cluster.url("postgres"), "SELECT 1"), ["1"]);
    cluster.stop().expect("stop");
}

#[test]
fn missing_binaries_name_make_setup() {
    let dir = TestDir::new("no-binaries");
    let mut cfg = config(&dir);
    cfg.pg_dir = PathBuf::from("/nonexistent/pgai/postgres");
    let err = Cluster::new(cfg).expect_err("no binaries there");
    assert!(err.is_setup_missing());
    let message = err.to_string();
    assert!(message.contains("make setup"), "{message}");
    assert!(message.contains("/nonexistent/pgai/postgres"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
}

#[test]
fn a_port_taken_by_another_program_is_reported() {
    let dir = TestDir::new("port-taken");
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut cfg = config(&dir);
    cfg.port = squatter.local_addr().expect("addr").port();
    let cluster = Cluster::new(cfg).expect("cluster");
    cluster.init().expect("init");
    let err = cluster.start().expect_err("port is taken");
    assert!(err.is_port_in_use(), "{err}");
    assert!(!cluster.is_running());
}

#[test]
fn a_data_dir_out_of_reach_of_the_postgres_user_is_reported() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root hands PostgreSQL to another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("unreachable");
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).expect("mkdir");
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let mut cfg = config(&dir);
    cfg.data_dir = closed.join("data");
    let cluster = Cluster::new(cfg).expect("cluster");
    let err = cluster.init().expect_err("unreachable");
    assert!(matches!(err, ClusterError::NotReachable { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(&closed.display().to_string()), "{message}");
    assert!(message.contains("PGAI_HOME"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(
        !closed.join("data").exists(),
        "nothing is created where the server could not go"
    );
}
