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

/// Connects and disconnects; the error if the server refuses.
fn try_connect(url: &str) -> Result<(), tokio_postgres::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await.map(drop)
    })
}

/// The URL without its password, and with a wrong one.
fn without_password(cluster: &Cluster, db: &str) -> (String, String) {
    let port = cluster.port();
    (
        format!("postgresql://postgres@127.0.0.1:{port}/{db}"),
        format!("postgresql://postgres:wrong@127.0.0.1:{port}/{db}"),
    )
}

/// Password-less and wrong-password connections are refused, the second by the server's
/// password check (SQLSTATE 28P01).
fn assert_refused_without_password(cluster: &Cluster) {
    let (none, wrong) = without_password(cluster, "postgres");
    let err = try_connect(&none).expect_err("a connection without a password must be refused");
    // The server asked for a password (SCRAM) and the client had none to give.
    assert!(format!("{err:?}").contains("password missing"), "{err:?}");
    let err = try_connect(&wrong).expect_err("a wrong password must be refused");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "28P01", "{db:?}");
    assert!(
        db.message().contains("password authentication failed"),
        "{db:?}"
    );
}

fn assert_private_password_file(cluster: &Cluster) -> String {
    use std::os::unix::fs::MetadataExt;
    let file = cluster.password_file();
    assert!(
        !file.starts_with(cluster.data_dir()),
        "{} is outside the data dir",
        file.display()
    );
    let meta = std::fs::metadata(&file).expect("password file");
    assert_eq!(meta.mode() & 0o777, 0o600, "{}", file.display());
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        meta.uid(),
        unsafe { libc::geteuid() },
        "owned by the invoker"
    );
    let password = std::fs::read_to_string(&file).expect("read");
    let password = password.trim_end().to_owned();
    assert!(password.len() >= 32, "a long password: {password:?}");
    password
}

fn hba_methods(cluster: &Cluster) -> Vec<String> {
    std::fs::read_to_string(cluster.data_dir().join("pg_hba.conf"))
        .expect("pg_hba.conf")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().last().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn connections_need_the_generated_password() {
    let dir = TestDir::new("password");
    let cluster = started(config(&dir));
    let password = assert_private_password_file(&cluster);
    let url = cluster.url("postgres");
    assert!(
        url.starts_with(&format!("postgresql://postgres:{password}@127.0.0.1:")),
        "{url}"
    );
    assert_eq!(query(&url, "SELECT current_user"), ["postgres"]);
    assert_refused_without_password(&cluster);
    let methods = hba_methods(&cluster);
    assert!(!methods.is_empty());
    assert!(methods.iter().all(|m| m == "scram-sha-256"), "{methods:?}");
    assert_eq!(query(&url, "SHOW password_encryption"), ["scram-sha-256"]);
    assert!(query(
        &url,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'"
    )[0]
    .starts_with("SCRAM-SHA-256$"));
    cluster.stop().expect("stop");
    let log = std::fs::read_to_string(cluster.log_file()).expect("log");
    assert!(
        !log.contains(&password),
        "the server log shows the password"
    );
    // A restart keeps the password.
    let again = Cluster::new(config_at(&dir, cluster.port())).expect("cluster");
    assert_eq!(again.start().expect("start"), Started::Fresh);
    assert_eq!(again.url("postgres"), url);
    assert_eq!(query(&url, "SELECT 1"), ["1"]);
    again.stop().expect("stop");
}

fn config_at(dir: &TestDir, port: u16) -> ClusterConfig {
    let mut cfg = ClusterConfig::new(dir.path().join("data"), port);
    cfg.extra_settings = pgai_testkit::test_settings();
    cfg
}

#[test]
fn a_password_file_written_beforehand_is_used_and_percent_encoded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("own-password");
    let cfg = config(&dir);
    let password = "p@ss w:rd/%?#'é";
    let file = dir.path().join("data.password");
    std::fs::write(&file, format!("{password}\n")).expect("write");
    // Readable by others: made private by init.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cluster = started(cfg);
    assert_eq!(cluster.password_file(), file);
    assert_eq!(assert_private_password_file_any_length(&cluster), password);
    let url = cluster.url("postgres");
    assert!(
        url.contains("postgres:p%40ss%20w%3Ard%2F%25%3F%23%27%C3%A9@127.0.0.1"),
        "{url}"
    );
    assert_eq!(query(&url, "SELECT 1"), ["1"]);
    assert_refused_without_password(&cluster);
    cluster.stop().expect("stop");
}

fn assert_private_password_file_any_length(cluster: &Cluster) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(cluster.password_file()).expect("password file");
    assert_eq!(meta.mode() & 0o777, 0o600);
    std::fs::read_to_string(cluster.password_file())
        .expect("read")
        .trim_end()
        .to_owned()
}

/// Makes a running cluster look like one made by an older version: `trust` in pg_hba.conf,
/// no password on the superuser, no password file.
fn make_it_trust(cluster: &Cluster) {
    let hba = cluster.data_dir().join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(&hba, text.replace("scram-sha-256", "trust")).expect("write pg_hba.conf");
    query(&cluster.url("postgres"), "SELECT pg_reload_conf()");
    let (none, _) = without_password(cluster, "postgres");
    wait_for_sync("trust to apply", || try_connect(&none).is_ok());
    query(&none, "ALTER ROLE postgres PASSWORD NULL");
    std::fs::remove_file(cluster.password_file()).expect("remove the password file");
}

fn wait_for_sync(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_trust_cluster_of_an_older_version_gets_a_password_on_start() {
    let dir = TestDir::new("trust-upgrade");
    let cfg = config(&dir);
    let cluster = started(cfg.clone());
    query(
        &cluster.url("postgres"),
        "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)",
    );

    // Stopped when the new version starts it.
    make_it_trust(&cluster);
    cluster.stop().expect("stop");
    drop(cluster);
    let cluster = Cluster::new(cfg.clone()).expect("cluster");
    assert!(!cluster.init().expect("init"), "no new initdb");
    assert_eq!(cluster.start().expect("start"), Started::Fresh);
    let password = assert_private_password_file(&cluster);
    assert!(hba_methods(&cluster).iter().all(|m| m == "scram-sha-256"));
    assert_refused_without_password(&cluster);
    assert_eq!(
        query(&cluster.url("postgres"), "SELECT x FROM kept"),
        ["42"]
    );

    // Left running by an older version's `up` when the new version starts: stopped, converted,
    // started again.
    make_it_trust(&cluster);
    drop(cluster);
    let cluster = Cluster::new(cfg.clone()).expect("cluster");
    assert!(cluster.is_running());
    assert_eq!(cluster.start().expect("start"), Started::Reused);
    let second = assert_private_password_file(&cluster);
    assert_ne!(second, password, "a new password each time one is missing");
    assert_refused_without_password(&cluster);
    assert_eq!(
        query(&cluster.url("postgres"), "SELECT x FROM kept"),
        ["42"]
    );

    // Converted once: the next start changes nothing.
    cluster.stop().expect("stop");
    assert_eq!(cluster.start().expect("start"), Started::Fresh);
    assert_eq!(assert_private_password_file(&cluster), second);
    assert_eq!(query(&cluster.url("postgres"), "SELECT 1"), ["1"]);
    let log = std::fs::read_to_string(cluster.log_file()).expect("log");
    assert!(!log.contains(&password) && !log.contains(&second));
    cluster.stop().expect("stop");
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
