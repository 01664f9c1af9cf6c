//! A TLS front for the shared test cluster: PgBouncer terminating TLS in front of
//! [`shared_cluster`](crate::shared_cluster) (the embedded PostgreSQL has no TLS of its own),
//! with certificates made here by the `openssl` CLI.
//!
//! One front per test process, started on first use, stopped and deleted at process exit like
//! the shared cluster (its `atexit` hook runs before the cluster's, which was registered
//! first). PgBouncer runs in session mode (LISTEN works) as the `postgres` user (`nobody`
//! when there is none) when we are root, and takes TLS clients only
//! (`client_tls_sslmode = require`): a connection that works went through TLS. A test process
//! that was killed leaves its directory with a `pgbouncer.pid`; the next one stops that
//! PgBouncer when it sweeps the leftovers.
//!
//! Needs `openssl`, and `pgbouncer`, installed with apt-get when it is missing and we are root.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The file in the front's directory that names PgBouncer's pid, for the sweep of leftovers.
pub(crate) const PID_FILE: &str = "pgbouncer.pid";

/// What the tests connect to.
#[derive(Debug)]
pub struct TlsFront {
    /// PgBouncer's port on 127.0.0.1.
    pub port: u16,
    /// The CA that signed PgBouncer's certificate (subjectAltName DNS:localhost,
    /// IP:127.0.0.1).
    pub ca: PathBuf,
    /// A CA that signed nothing PgBouncer shows.
    pub other_ca: PathBuf,
}

impl TlsFront {
    /// The URL of `database` through the front, by the name in the certificate:
    /// `postgresql://postgres@localhost:PORT/DATABASE?PARAMS` (no `?` when `params` is empty).
    pub fn url(&self, database: &str, params: &str) -> String {
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{params}")
        };
        format!(
            "postgresql://postgres@localhost:{}/{database}{query}",
            self.port
        )
    }

    /// [`TlsFront::url`] of the database of a shared-cluster URL (as
    /// [`fresh_database`](crate::fresh_database) returns).
    pub fn url_of(&self, cluster_url: &str, params: &str) -> String {
        let database = cluster_url
            .rsplit_once('/')
            .map(|(_, db)| db)
            .unwrap_or_else(|| panic!("no database in {cluster_url}"));
        self.url(database, params)
    }
}

static FRONT: OnceLock<TlsFront> = OnceLock::new();
static PGBOUNCER: Mutex<Option<(Child, PathBuf)>> = Mutex::new(None);

/// The test process's TLS front, started on first use (blocking: call it through
/// `spawn_blocking` from async code, or use [`tls_front_async`]).
pub fn tls_front() -> &'static TlsFront {
    FRONT.get_or_init(start)
}

/// [`tls_front`] from async code.
pub async fn tls_front_async() -> &'static TlsFront {
    tokio::task::spawn_blocking(tls_front)
        .await
        .expect("starting the TLS front")
}

fn start() -> TlsFront {
    let cluster = crate::shared_cluster();
    let pgbouncer = ensure_pgbouncer();
    let who = run_as();
    let dir = crate::TestDir::new("tls").into_path();
    let certs = dir.join("certs");
    std::fs::create_dir(&certs).unwrap_or_else(|e| panic!("creating {}: {e}", certs.display()));
    make_ca(&certs, "ca");
    make_ca(&certs, "other-ca");
    make_server_cert(&certs, "server", "ca");

    let port = crate::free_port();
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
    std::fs::write(
        &ini,
        format!(
            "[databases]\n\
             * = host=127.0.0.1 port={pg_port} user=postgres password={pg_password}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = session\n\
             client_tls_sslmode = require\n\
             client_tls_cert_file = {certs}/server.pem\n\
             client_tls_key_file = {certs}/server.key\n\
             client_tls_ca_file = {certs}/ca.pem\n",
            pg_port = cluster.port(),
            // The cluster requires its password; PgBouncer's clients need none (trust), it logs
            // in to the server with this one.
            pg_password = std::fs::read_to_string(cluster.password_file())
                .unwrap_or_else(|e| panic!("reading the cluster's password file: {e}"))
                .trim(),
            dir = dir.display(),
            certs = certs.display(),
        ),
    )
    .unwrap();
    if let Some((uid, gid)) = who {
        chown_tree(&dir, uid, gid);
    }

    let log = dir.join("pgbouncer.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(&pgbouncer);
    cmd.arg(&ini)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    if let Some((uid, gid)) = who {
        cmd.uid(uid).gid(gid).env("HOME", "/");
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", pgbouncer.display()));
    std::fs::write(dir.join(PID_FILE), child.id().to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "PgBouncer ({}) does not listen on {port}: {}",
                exited.map_or("still running after 30 s".to_string(), |s| s.to_string()),
                tail(&std::fs::read_to_string(&log).unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    *PGBOUNCER.lock().unwrap_or_else(|p| p.into_inner()) = Some((child, dir));
    // SAFETY: registers a plain extern "C" fn; atexit has no other preconditions.
    unsafe { libc::atexit(stop_front) };
    TlsFront {
        port,
        ca: certs.join("ca.pem"),
        other_ca: certs.join("other-ca.pem"),
    }
}

/// Runs at process exit: PgBouncer's immediate shutdown, then the directory goes.
extern "C" fn stop_front() {
    let taken = PGBOUNCER.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((mut child, dir)) = taken {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Stops the PgBouncer a killed test process left in `dir` (if its pid is still PgBouncer).
pub(crate) fn stop_leftover(dir: &Path) {
    let Some(pid) = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("pgbouncer") {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// (uid, gid) PgBouncer runs as when we are root (it refuses root): `postgres`, else `nobody`.
fn run_as() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let id = |flag: &str, user: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    for user in ["postgres", "nobody"] {
        if let (Some(uid), Some(gid)) = (id("-u", user), id("-g", user)) {
            return Some((uid, gid));
        }
    }
    panic!("running as root, but there is neither a `postgres` nor a `nobody` user to run PgBouncer as");
}

/// The pgbouncer binary; installs Debian's package when it is missing and we are root.
fn ensure_pgbouncer() -> PathBuf {
    let find = || -> Option<PathBuf> {
        let out = Command::new("which").arg("pgbouncer").output().ok()?;
        if out.status.success() {
            return Some(String::from_utf8(out.stdout).ok()?.trim().into());
        }
        // /usr/sbin is not in every PATH.
        Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file())
    };
    if let Some(path) = find() {
        return path;
    }
    assert!(
        is_root(),
        "pgbouncer is not installed and we are not root to install it: run \
         `apt-get install -y pgbouncer` (Debian) first"
    );
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("pgbouncer is missing and apt-get cannot run: {e}"))
    };
    eprintln!("pgbouncer is missing: apt-get install -y pgbouncer");
    let mut out = apt(&["install", "-y", "pgbouncer"]);
    if !out.status.success() {
        // Perhaps stale package lists.
        apt(&["update"]);
        out = apt(&["install", "-y", "pgbouncer"]);
    }
    assert!(
        out.status.success(),
        "apt-get install -y pgbouncer failed: {}",
        tail(&String::from_utf8_lossy(&out.stderr))
    );
    find().expect("apt-get installed pgbouncer, but it is not on PATH nor in /usr/sbin")
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        tail(&String::from_utf8_lossy(&out.stderr))
    );
}

/// `<name>.pem` / `<name>.key`: a self-signed CA with a P-256 key.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "3",
            "-subj",
            &format!("/CN=pgai-trigger test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `<name>.pem` / `<name>.key`: a server certificate for localhost and 127.0.0.1, signed by
/// the CA `ca`.
fn make_server_cert(dir: &Path, name: &str, ca: &str) {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "3",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
    // A private key, as a server expects it.
    std::fs::set_permissions(
        dir.join(format!("{name}.key")),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
