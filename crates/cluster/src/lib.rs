//! Embedded PostgreSQL cluster manager: `initdb`, start, stop, restart and status of a private
//! cluster run from the binaries `make setup` unpacks (PostgreSQL 18 + pgvector).
//!
//! The calls are synchronous (they run `initdb` / `pg_ctl` and wait for them); async callers
//! use `spawn_blocking`. A [`Cluster`] value does not stop its server when dropped: `up` decides
//! when the server stops, and a server left running by a killed run is adopted by the next
//! [`Cluster::start`] ([`Started::Reused`]).
//!
//! PostgreSQL refuses to run as root. When this process is root, every PostgreSQL program runs
//! as an unprivileged user instead (`postgres` if it exists, else `nobody`), the data directory
//! is owned by that user, and every directory on the way to the data directory and to the
//! binaries must let that user through (`/root` is mode 0700 on many machines). Such problems are
//! reported up front as one-line errors with the fix, not as a PostgreSQL error deep in a log.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long `pg_ctl` may wait for a start or stop, in seconds. Generous: CI machines run many
/// clusters at once on two cores.
const PG_CTL_TIMEOUT_S: &str = "120";

/// How long we wait for the processes of a crashed server to go away before starting anew.
const ORPHAN_WAIT: Duration = Duration::from_secs(15);

/// Where a cluster lives and how it listens.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The PostgreSQL installation: holds `bin/`, `lib/` and `share/`.
    pub pg_dir: PathBuf,
    /// The cluster's data directory (created by [`Cluster::init`] if missing).
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1; the server listens nowhere else.
    pub port: u16,
    /// Extra server settings (`-c name=value`), applied after ours so they win; tests pass
    /// `fsync=off`, which also makes `initdb` skip its final sync.
    pub extra_settings: Vec<(String, String)>,
}

impl ClusterConfig {
    /// A configuration using the installation `make setup` made ([`Self::default_pg_dir`]).
    pub fn new(data_dir: impl Into<PathBuf>, port: u16) -> Self {
        ClusterConfig {
            pg_dir: Self::default_pg_dir(),
            data_dir: data_dir.into(),
            port,
            extra_settings: Vec::new(),
        }
    }

    /// `$PGAI_HOME/postgres` ([`pgai_embed::dist::home`]), where `make setup` unpacks
    /// PostgreSQL.
    pub fn default_pg_dir() -> PathBuf {
        pgai_embed::dist::home().join("postgres")
    }
}

/// Everything that can go wrong with the embedded cluster. Each message is one line that names
/// the path involved and the fix, except the failures of PostgreSQL's own programs, which end
/// with the last lines of their output or log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("PostgreSQL binaries not found in {}: run `make setup` first", .pg_dir.display())]
    SetupMissing { pg_dir: PathBuf },

    #[error("PostgreSQL binaries in {} do not run ({detail}): run `make setup` again", .pg_dir.display())]
    SetupBroken { pg_dir: PathBuf, detail: String },

    #[error(
        "running as root, but there is neither a `postgres` nor a `nobody` user for PostgreSQL \
         to run as (PostgreSQL refuses root): create one, e.g. `useradd --system postgres`"
    )]
    NoUnprivilegedUser,

    #[error(
        "{} is out of reach of user `{user}`, whom PostgreSQL runs as because this process is \
         root: {} does not let `{user}` through; put it elsewhere (set PGAI_HOME, or --data-dir, \
         to a directory outside {})",
        .path.display(), .blocker.display(), .blocker.display()
    )]
    NotReachable {
        path: PathBuf,
        blocker: PathBuf,
        user: String,
    },

    #[error(
        "data directory {} belongs to uid {owner}, but PostgreSQL runs as `{user}` (uid {uid}): \
         `chown -R {user} {}` or choose another --data-dir",
        .data_dir.display(), .data_dir.display()
    )]
    DataDirOwner {
        data_dir: PathBuf,
        owner: u32,
        user: String,
        uid: u32,
    },

    #[error("{} is not a PostgreSQL data directory (no PG_VERSION): initialise it first", .data_dir.display())]
    NotInitialized { data_dir: PathBuf },

    #[error("port {port} on 127.0.0.1 is in use by another program: choose another port")]
    PortInUse { port: u16 },

    #[error("{what} failed for {}:\n{}", .data_dir.display(), .tail)]
    Failed {
        what: String,
        data_dir: PathBuf,
        tail: String,
    },

    #[error("timed out after {}s waiting for {what} in {}", .waited.as_secs(), .data_dir.display())]
    Timeout {
        what: String,
        data_dir: PathBuf,
        waited: Duration,
    },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl ClusterError {
    /// True when the PostgreSQL installation is missing or broken: `make setup` fixes it.
    pub fn is_setup_missing(&self) -> bool {
        matches!(
            self,
            ClusterError::SetupMissing { .. } | ClusterError::SetupBroken { .. }
        )
    }

    /// True when the port is taken by something other than this data directory's server.
    pub fn is_port_in_use(&self) -> bool {
        matches!(self, ClusterError::PortInUse { .. })
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// How [`Cluster::start`] found the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// No server was running on the data directory; one was started.
    Fresh,
    /// A server left running on this data directory (say by a killed `up`) was found and adopted;
    /// if it listened on another port it was restarted on ours.
    Reused,
}

/// The unprivileged user PostgreSQL runs as when this process is root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// The `postgres` user if there is one, else `nobody`.
    fn pick() -> Result<RunAs, ClusterError> {
        lookup_user("postgres")
            .or_else(|| lookup_user("nobody"))
            .ok_or(ClusterError::NoUnprivilegedUser)
    }

    /// Whether this user may pass through (search) the directory. Supplementary groups do not
    /// count: `Command::uid` drops them when root switches users.
    fn can_search(&self, meta: &fs::Metadata) -> bool {
        self.can_search_mode(meta.mode(), meta.uid(), meta.gid())
    }

    fn can_search_mode(&self, mode: u32, owner: u32, group: u32) -> bool {
        if owner == self.uid {
            mode & 0o100 != 0
        } else if group == self.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    }

    /// Fails if a directory on the way to `path` (itself included) stops this user.
    fn check_reachable(&self, path: &Path) -> Result<(), ClusterError> {
        // Symlinks are followed the way the kernel will: check the resolved path.
        let resolved = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut dirs: Vec<&Path> = resolved.ancestors().collect();
        dirs.reverse();
        for dir in dirs {
            let Ok(meta) = fs::metadata(dir) else {
                continue;
            };
            if meta.is_dir() && !self.can_search(&meta) {
                return Err(ClusterError::NotReachable {
                    path: path.to_path_buf(),
                    blocker: dir.to_path_buf(),
                    user: self.name.clone(),
                });
            }
        }
        Ok(())
    }
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: passwd is plain data; getpwnam_r fills it, pointing into `buf`, which outlives
    // every read below, and sets `result` to null when there is no such user.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return None;
        }
        Some(RunAs {
            name: name.to_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// What `postmaster.pid` says about a server.
#[derive(Debug, Clone)]
struct PidFile {
    pid: i32,
    port: Option<u16>,
    /// "ready", "starting", "stopping" or "standby" (empty on old servers).
    status: String,
}

/// An embedded PostgreSQL cluster: one data directory, one port.
#[derive(Debug)]
pub struct Cluster {
    cfg: ClusterConfig,
    /// Set when this process is root: the user the PostgreSQL programs run as.
    run_as: Option<RunAs>,
}

impl Cluster {
    /// Checks that the PostgreSQL binaries are there and run, and, as root, that the
    /// unprivileged user can reach them. Touches no data directory.
    pub fn new(mut cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        cfg.pg_dir = std::path::absolute(&cfg.pg_dir).map_err(io_error("resolving pg_dir"))?;
        cfg.data_dir =
            std::path::absolute(&cfg.data_dir).map_err(io_error("resolving data_dir"))?;
        let bin = cfg.pg_dir.join("bin");
        if ["initdb", "pg_ctl", "postgres"]
            .iter()
            .any(|p| !bin.join(p).is_file())
        {
            return Err(ClusterError::SetupMissing { pg_dir: cfg.pg_dir });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(RunAs::pick()?)
        } else {
            None
        };
        if let Some(who) = &run_as {
            for dir in ["bin", "lib", "share"] {
                who.check_reachable(&cfg.pg_dir.join(dir))?;
            }
        }
        let cluster = Cluster { cfg, run_as };
        // Catches a half-unpacked installation or a missing shared library up front.
        let mut version = cluster.command("initdb");
        version.arg("--version");
        let out = cluster.output("initdb --version", version)?;
        if !out.status.success() {
            let detail = tail(&combined(&out), 1);
            return Err(ClusterError::SetupBroken {
                pg_dir: cluster.cfg.pg_dir.clone(),
                detail,
            });
        }
        Ok(cluster)
    }

    /// Runs `initdb` if the data directory holds no cluster yet; true if it ran. Superuser
    /// `postgres`, trust authentication (the server listens on 127.0.0.1 only), UTF-8.
    pub fn init(&self) -> Result<bool, ClusterError> {
        if self.is_initialized() {
            return Ok(false);
        }
        self.prepare_data_dir()?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.cfg.data_dir);
        cmd.args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        ]);
        // The builtin provider's C.UTF-8: Unicode-aware, independent of the OS's locales.
        cmd.args([
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--locale=C",
        ]);
        if self.setting("fsync").is_some_and(|v| v == "off") {
            cmd.arg("--no-sync");
        }
        let out = self.output("initdb", cmd)?;
        if !out.status.success() {
            return Err(self.failed("initdb", tail(&combined(&out), 12)));
        }
        tracing::info!(data_dir = %self.cfg.data_dir.display(), "initialised PostgreSQL cluster");
        Ok(true)
    }

    /// Starts the server on 127.0.0.1:port, or adopts one already running on this data
    /// directory. A `postmaster.pid` left by a crash does not block the start: PostgreSQL
    /// discards it itself once the old processes are gone, which we wait for.
    pub fn start(&self) -> Result<Started, ClusterError> {
        if let Some(who) = &self.run_as {
            who.check_reachable(&self.cfg.data_dir)?;
        }
        if !self.is_initialized() {
            return Err(ClusterError::NotInitialized {
                data_dir: self.cfg.data_dir.clone(),
            });
        }
        let Some(found) = self.live_postmaster() else {
            self.start_server()?;
            return Ok(Started::Fresh);
        };
        match self.wait_ready(found)? {
            Some(pm) if pm.port == Some(self.cfg.port) => {
                tracing::info!(
                    pid = pm.pid,
                    port = self.cfg.port,
                    "adopted running PostgreSQL server"
                );
            }
            Some(pm) => {
                tracing::warn!(pid = pm.pid, old_port = ?pm.port, port = self.cfg.port,
                    "running PostgreSQL server listens on another port; restarting it");
                self.pg_ctl_stop("fast")?;
                self.start_server()?;
            }
            // It was shutting down and is gone now.
            None => {
                self.start_server()?;
                return Ok(Started::Fresh);
            }
        }
        Ok(Started::Reused)
    }

    /// Stops the server (fast shutdown: running transactions are rolled back); Ok if none runs.
    pub fn stop(&self) -> Result<(), ClusterError> {
        if self.live_postmaster().is_none() {
            return Ok(());
        }
        self.pg_ctl_stop("fast")
    }

    /// Stops the server without a shutdown checkpoint, as a crash would (the next start runs
    /// crash recovery); Ok if none runs. For tests and fault injection.
    pub fn stop_immediate(&self) -> Result<(), ClusterError> {
        if self.live_postmaster().is_none() {
            return Ok(());
        }
        self.pg_ctl_stop("immediate")
    }

    /// Fast stop, then start on our port: every connection is cut. Starts the server if none
    /// ran.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.stop()?;
        self.start().map(|_| ())
    }

    /// Whether a server runs on this data directory (on whatever port).
    pub fn is_running(&self) -> bool {
        self.live_postmaster().is_some()
    }

    /// The postmaster's process id, if a server runs on this data directory.
    pub fn pid(&self) -> Option<u32> {
        self.live_postmaster()
            .and_then(|pm| u32::try_from(pm.pid).ok())
    }

    pub fn port(&self) -> u16 {
        self.cfg.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    /// The server's log (start-up failures end up here).
    pub fn log_file(&self) -> PathBuf {
        self.cfg.data_dir.join("log").join("postgres.log")
    }

    /// `postgresql://postgres@127.0.0.1:PORT/DATABASE`
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{}",
            self.cfg.port, database
        )
    }

    fn is_initialized(&self) -> bool {
        self.cfg.data_dir.join("PG_VERSION").is_file()
    }

    /// The last value given for a setting in `extra_settings`.
    fn setting(&self, name: &str) -> Option<&str> {
        self.cfg
            .extra_settings
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A PostgreSQL program, with the environment it needs and, as root, as the unprivileged
    /// user.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.cfg.pg_dir.join("bin").join(program));
        // The caller's PGDATA, PGPORT, PGHOST… would redirect initdb and pg_ctl.
        for (name, _) in std::env::vars_os() {
            let name_str = name.to_string_lossy();
            if name_str.starts_with("PG") && !name_str.starts_with("PGAI") {
                cmd.env_remove(&name);
            }
        }
        // The wheel's programs need its renamed libpq (libpq-<hash>.so), which setup puts in lib/.
        let lib = self.cfg.pg_dir.join("lib");
        let ld_path = match std::env::var_os("LD_LIBRARY_PATH").filter(|v| !v.is_empty()) {
            Some(old) => {
                let mut joined = lib.into_os_string();
                joined.push(":");
                joined.push(old);
                joined
            }
            None => lib.into_os_string(),
        };
        cmd.env("LD_LIBRARY_PATH", ld_path)
            // We read their messages: keep them in English.
            .env("LC_ALL", "C")
            // The caller's directory (say /root) may be closed to the unprivileged user.
            .current_dir("/")
            .stdin(Stdio::null());
        if let Some(who) = &self.run_as {
            cmd.uid(who.uid)
                .gid(who.gid)
                .env("HOME", "/")
                .env("USER", &who.name)
                .env("LOGNAME", &who.name);
        }
        cmd
    }

    fn output(&self, what: &str, mut cmd: Command) -> Result<Output, ClusterError> {
        cmd.output().map_err(io_error(format!("running {what}")))
    }

    fn failed(&self, what: &str, tail: String) -> ClusterError {
        ClusterError::Failed {
            what: what.to_owned(),
            data_dir: self.cfg.data_dir.clone(),
            tail,
        }
    }

    /// Creates the data directory (and its parents), mode 0700, owned by the user PostgreSQL
    /// runs as, and checks that user can reach it.
    fn prepare_data_dir(&self) -> Result<(), ClusterError> {
        let data = &self.cfg.data_dir;
        if let Some(parent) = data.parent() {
            fs::create_dir_all(parent)
                .map_err(io_error(format!("creating {}", parent.display())))?;
        }
        // Checked before creating anything in a place the server could not use anyway.
        if let (Some(who), Some(parent)) = (&self.run_as, data.parent()) {
            who.check_reachable(parent).map_err(|e| match e {
                ClusterError::NotReachable { blocker, user, .. } => ClusterError::NotReachable {
                    path: data.clone(),
                    blocker,
                    user,
                },
                other => other,
            })?;
        }
        match fs::create_dir(data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(format!("creating {}", data.display()))(e)),
        }
        let Some(who) = &self.run_as else {
            return Ok(());
        };
        let meta = fs::metadata(data).map_err(io_error(format!("reading {}", data.display())))?;
        if meta.uid() != who.uid {
            let empty = fs::read_dir(data)
                .map_err(io_error(format!("reading {}", data.display())))?
                .next()
                .is_none();
            if !empty {
                return Err(ClusterError::DataDirOwner {
                    data_dir: data.clone(),
                    owner: meta.uid(),
                    user: who.name.clone(),
                    uid: who.uid,
                });
            }
            std::os::unix::fs::chown(data, Some(who.uid), Some(who.gid)).map_err(io_error(
                format!("handing {} to {}", data.display(), who.name),
            ))?;
        }
        fs::set_permissions(data, fs::Permissions::from_mode(0o700))
            .map_err(io_error(format!("setting the mode of {}", data.display())))?;
        who.check_reachable(data)
    }

    /// The log directory must exist and belong to the server's user: pg_ctl opens the log
    /// file as that user.
    fn prepare_log_dir(&self) -> Result<(), ClusterError> {
        let dir = self.cfg.data_dir.join("log");
        match fs::create_dir(&dir) {
            Ok(()) => {
                if let Some(who) = &self.run_as {
                    std::os::unix::fs::chown(&dir, Some(who.uid), Some(who.gid)).map_err(
                        io_error(format!("handing {} to {}", dir.display(), who.name)),
                    )?;
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_error(format!("creating {}", dir.display()))(e)),
        }
    }

    /// Server options for `pg_ctl -o`, which passes them through a shell: each word is quoted.
    fn server_options(&self) -> String {
        let ours = [
            ("listen_addresses", "127.0.0.1".to_owned()),
            ("port", self.cfg.port.to_string()),
            // No Unix socket: nothing of ours uses it, and its path length is limited (~107 bytes).
            ("unix_socket_directories", String::new()),
            // Tests run many daemons against one cluster at once.
            ("max_connections", "200".to_owned()),
        ];
        let extra = self
            .cfg
            .extra_settings
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()));
        ours.into_iter()
            .chain(extra)
            .map(|(name, value)| format!("-c {}", shell_quote(&format!("{name}={value}"))))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts a server where none runs: waits for a crashed server's processes to go, checks the
    /// port, then `pg_ctl start -w`.
    fn start_server(&self) -> Result<(), ClusterError> {
        self.clear_crash_leftovers()?;
        if let Err(e) = TcpListener::bind(("127.0.0.1", self.cfg.port)) {
            if e.kind() == io::ErrorKind::AddrInUse {
                return Err(ClusterError::PortInUse {
                    port: self.cfg.port,
                });
            }
        }
        self.prepare_log_dir()?;
        let log = self.log_file();
        let deadline = Instant::now() + ORPHAN_WAIT;
        loop {
            let mut cmd = self.command("pg_ctl");
            cmd.args(["start", "-w", "-t", PG_CTL_TIMEOUT_S, "-D"])
                .arg(&self.cfg.data_dir);
            cmd.arg("-l").arg(&log).arg("-o").arg(self.server_options());
            let out = self.output("pg_ctl start", cmd)?;
            if out.status.success() {
                tracing::info!(port = self.cfg.port, data_dir = %self.cfg.data_dir.display(),
                    "started PostgreSQL server");
                return Ok(());
            }
            let log_tail = tail(&read_tail(&log), 12);
            if log_tail.contains("Address already in use") {
                return Err(ClusterError::PortInUse {
                    port: self.cfg.port,
                });
            }
            // Backends of a killed server may still hold its shared memory for a moment.
            if log_tail.contains("pre-existing shared memory block") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            let detail = if log_tail.is_empty() {
                tail(&combined(&out), 6)
            } else {
                format!("  ({})\n{log_tail}", log.display())
            };
            return Err(self.failed("pg_ctl start", detail));
        }
    }

    /// After a crash (postmaster killed), its children linger until they notice; starting
    /// before they are gone fails. If the old pid now belongs to an unrelated process (pid
    /// reuse after a reboot or in a container), PostgreSQL would refuse to start, so the stale
    /// `postmaster.pid` is removed, but only once no process of the old server is left.
    fn clear_crash_leftovers(&self) -> Result<(), ClusterError> {
        let pid_file = self.cfg.data_dir.join("postmaster.pid");
        let Some(stale) = self.read_pid_file() else {
            return Ok(());
        };
        let deadline = Instant::now() + ORPHAN_WAIT;
        while !self.server_processes().is_empty() {
            if Instant::now() > deadline {
                // Let PostgreSQL's own checks decide; its error names the culprit.
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if pid_alive(stale.pid) {
            tracing::warn!(
                pid = stale.pid,
                "stale postmaster.pid names an unrelated process; removing it"
            );
            fs::remove_file(&pid_file)
                .map_err(io_error(format!("removing {}", pid_file.display())))?;
        }
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), ClusterError> {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["stop", "-w", "-t", PG_CTL_TIMEOUT_S, "-m", mode, "-D"])
            .arg(&self.cfg.data_dir);
        let out = self.output("pg_ctl stop", cmd)?;
        if out.status.success() || !self.is_running() {
            return Ok(());
        }
        Err(self.failed(&format!("pg_ctl stop -m {mode}"), tail(&combined(&out), 6)))
    }

    fn read_pid_file(&self) -> Option<PidFile> {
        let text = fs::read_to_string(self.cfg.data_dir.join("postmaster.pid")).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        Some(PidFile {
            pid: lines.first()?.trim().parse().ok()?,
            port: lines.get(3).and_then(|l| l.trim().parse().ok()),
            status: lines
                .get(7)
                .map(|l| l.trim().to_owned())
                .unwrap_or_default(),
        })
    }

    /// The server running on this data directory, per `postmaster.pid`, if its pid is alive
    /// and (where /proc tells) is a postgres process working in this data directory.
    fn live_postmaster(&self) -> Option<PidFile> {
        let pm = self.read_pid_file()?;
        (pid_alive(pm.pid) && self.is_server_process(pm.pid)).then_some(pm)
    }

    /// Whether /proc shows `pid` as a postgres process in this data directory. Unknown
    /// (no /proc, no permission) counts as yes: PostgreSQL's own checks then decide.
    fn is_server_process(&self, pid: i32) -> bool {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if let Ok(comm) = fs::read_to_string(proc_dir.join("comm")) {
            if comm.trim() != "postgres" {
                return false;
            }
        }
        match (
            fs::read_link(proc_dir.join("cwd")),
            fs::canonicalize(&self.cfg.data_dir),
        ) {
            (Ok(cwd), Ok(data)) => cwd == data,
            _ => true,
        }
    }

    /// Every postgres process working in this data directory (postmaster, backends, orphans
    /// of a killed postmaster), as far as /proc tells.
    fn server_processes(&self) -> Vec<i32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "postgres")
                    && self.is_server_process(pid)
            })
            .collect()
    }

    /// Waits until a found server is ready; None if it went away meanwhile (it was stopping).
    fn wait_ready(&self, mut pm: PidFile) -> Result<Option<PidFile>, ClusterError> {
        let waited = Duration::from_secs(60);
        let deadline = Instant::now() + waited;
        loop {
            // "standby" would be a replica; ours never are, but it accepts connections.
            if pm.status.is_empty() || pm.status == "ready" || pm.status == "standby" {
                return Ok(Some(pm));
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Timeout {
                    what: format!("the running server (pid {}) to become ready", pm.pid),
                    data_dir: self.cfg.data_dir.clone(),
                    waited,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
            match self.live_postmaster() {
                Some(now) => pm = now,
                None => return Ok(None),
            }
        }
    }
}

/// Whether a process with this pid exists (EPERM: it does, but belongs to someone else).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Single-quotes a word for /bin/sh.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn combined(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// The last `n` non-empty lines, indented, or the first one alone when `n` is 1.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    if n == 1 {
        return lines
            .get(start)
            .map(|l| l.trim().to_owned())
            .unwrap_or_default();
    }
    lines[start..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last 8 KiB of a file (a server log can grow large), or "" if unreadable.
fn read_tail(path: &Path) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_words_for_the_shell() {
        assert_eq!(shell_quote("a=b"), "'a=b'");
        assert_eq!(shell_quote("x='y'"), r"'x='\''y'\'''");
        assert_eq!(
            shell_quote("unix_socket_directories="),
            "'unix_socket_directories='"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "  b\n  c");
        assert_eq!(tail("a\nb\n", 1), "b");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn search_permission_follows_owner_group_other() {
        let who = RunAs {
            name: "pg".into(),
            uid: 100,
            gid: 200,
        };
        assert!(!who.can_search_mode(0o700, 0, 0), "/root 0700 stops others");
        assert!(who.can_search_mode(0o755, 0, 0));
        assert!(who.can_search_mode(0o700, 100, 0), "owner");
        assert!(
            !who.can_search_mode(0o070, 100, 200),
            "owner bits win over group bits"
        );
        assert!(who.can_search_mode(0o710, 0, 200), "group");
        assert!(
            !who.can_search_mode(0o701, 0, 200),
            "group bits win over other bits"
        );
        assert!(who.can_search_mode(0o1777, 0, 0), "/tmp");
    }
}
