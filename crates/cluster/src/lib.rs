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
//!
//! Every connection needs a password (SCRAM): with `trust`, any local user could connect as
//! superuser and, through `COPY … TO PROGRAM`, run commands as the cluster's OS user. The
//! superuser's password is generated at `initdb` and kept next to the data directory
//! ([`Cluster::password_file`], mode 0600); [`Cluster::url`] carries it. A data directory made
//! by an older version with `trust` is converted on [`Cluster::start`].

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long `pg_ctl` may wait for a start or stop, in seconds. Generous: CI machines run many
/// clusters at once on two cores.
const PG_CTL_TIMEOUT_S: &str = "120";

/// How long we wait for the processes of a crashed server to go away before starting anew.
const ORPHAN_WAIT: Duration = Duration::from_secs(15);

/// The cluster's superuser, the only role we create.
const SUPERUSER: &str = "postgres";

/// The authentication method of every `pg_hba.conf` line we write or convert.
const AUTH_METHOD: &str = "scram-sha-256";

/// Characters of a generated password: alphanumeric, so it survives any shell or config file.
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Length of a generated password: 32 of 62 symbols, about 190 bits.
const PASSWORD_LEN: usize = 32;

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
    /// if it listened on another port, or let clients in without a password (an older
    /// version's `trust`), it was restarted on ours, with password authentication.
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
    /// The superuser's password once read from (or written to) the password file.
    password: Mutex<Option<String>>,
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
        let cluster = Cluster {
            cfg,
            run_as,
            password: Mutex::new(None),
        };
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
    /// `postgres` with the password of [`Self::password_file`] (generated unless the file
    /// already holds one), password (SCRAM) authentication for every connection, UTF-8.
    pub fn init(&self) -> Result<bool, ClusterError> {
        if self.is_initialized() {
            return Ok(false);
        }
        self.prepare_data_dir()?;
        let password = self.load_or_create_password()?;
        // initdb runs as the server's user, who may not read our 0600 file: it gets a copy of
        // its own for the few milliseconds initdb needs it.
        let pwfile = self.private_copy_for_server("initdb-password", &password)?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.cfg.data_dir);
        cmd.args(["-U", SUPERUSER])
            .arg(format!("--auth-host={AUTH_METHOD}"))
            .arg(format!("--auth-local={AUTH_METHOD}"))
            .arg("--pwfile")
            .arg(pwfile.path());
        cmd.args(["--encoding=UTF8", "--no-instructions"]);
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
        drop(pwfile);
        if !out.status.success() {
            let detail = redact(&tail(&combined(&out), 12), &password);
            return Err(self.failed("initdb", detail));
        }
        tracing::info!(data_dir = %self.cfg.data_dir.display(),
            password_file = %self.password_file().display(), "initialised PostgreSQL cluster");
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
        if let Some(fix) = self.insecure_auth()? {
            return self.secure_auth(fix);
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

    /// `postgresql://postgres:PASSWORD@127.0.0.1:PORT/DATABASE`, the password (and the
    /// database) percent-encoded. Without a readable password file (before [`Self::init`]),
    /// the URL has no password and the server refuses it.
    pub fn url(&self, database: &str) -> String {
        let user = match self.password() {
            Some(p) => format!("{SUPERUSER}:{}", percent_encode(&p)),
            None => SUPERUSER.to_owned(),
        };
        format!(
            "postgresql://{user}@127.0.0.1:{}/{}",
            self.cfg.port,
            percent_encode(database)
        )
    }

    /// The file holding the superuser's password: `<data dir>.password`, next to the data
    /// directory (initdb wants that one empty), mode 0600, owned by whoever ran [`Self::init`].
    pub fn password_file(&self) -> PathBuf {
        let name = self
            .cfg
            .data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".to_owned());
        self.cfg.data_dir.with_file_name(format!("{name}.password"))
    }

    /// The superuser's password, if the password file holds one.
    fn password(&self) -> Option<String> {
        let mut cached = self.password.lock().unwrap_or_else(|p| p.into_inner());
        if cached.is_none() {
            *cached = read_password(&self.password_file()).ok().flatten();
        }
        cached.clone()
    }

    /// The password of the password file; a new random one, written there, if it has none.
    /// A file others may read is made private again.
    fn load_or_create_password(&self) -> Result<String, ClusterError> {
        let path = self.password_file();
        let found =
            read_password(&path).map_err(io_error(format!("reading {}", path.display())))?;
        let password = match found {
            Some(p) => {
                let mode = fs::metadata(&path)
                    .map_err(io_error(format!("reading {}", path.display())))?
                    .mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(file = %path.display(), mode = format!("{:o}", mode & 0o777),
                        "password file was readable by others; made it private (0600)");
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                        .map_err(io_error(format!("setting the mode of {}", path.display())))?;
                }
                p
            }
            None => {
                let p =
                    generate_password().map_err(io_error("reading /dev/urandom for a password"))?;
                write_private(&path, &format!("{p}\n"), None)?;
                p
            }
        };
        *self.password.lock().unwrap_or_else(|p| p.into_inner()) = Some(password.clone());
        Ok(password)
    }

    /// A 0600 file holding `password`, readable by the user PostgreSQL runs as, next to the
    /// data directory; deleted when the guard drops.
    fn private_copy_for_server(
        &self,
        label: &str,
        password: &str,
    ) -> Result<TempFile, ClusterError> {
        let path = self.password_file().with_extension(label);
        let owner = self.run_as.as_ref().map(|w| (w.uid, w.gid));
        write_private(&path, &format!("{password}\n"), owner)?;
        Ok(TempFile(path))
    }

    /// What stands between a data directory and password authentication: `trust` lines in
    /// `pg_hba.conf` (data directories made by older versions), or no password file (lost, or
    /// never written). None when all is well.
    fn insecure_auth(&self) -> Result<Option<AuthFix>, ClusterError> {
        let hba_path = self.cfg.data_dir.join("pg_hba.conf");
        let hba = fs::read_to_string(&hba_path)
            .map_err(io_error(format!("reading {}", hba_path.display())))?;
        let converted = convert_trust_lines(&hba);
        let password_missing = read_password(&self.password_file())
            .map_err(io_error(format!(
                "reading {}",
                self.password_file().display()
            )))?
            .is_none();
        if converted.is_none() && !password_missing {
            return Ok(None);
        }
        Ok(Some(AuthFix { hba: converted }))
    }

    /// Sets the superuser's password (from the password file, generated if missing) with the
    /// server stopped (single-user mode), converts `trust` lines to password authentication,
    /// then starts the server. A server found running is stopped first and counts as reused.
    fn secure_auth(&self, fix: AuthFix) -> Result<Started, ClusterError> {
        let hba_path = self.cfg.data_dir.join("pg_hba.conf");
        if fix.hba.is_some() {
            tracing::warn!(data_dir = %self.cfg.data_dir.display(),
                password_file = %self.password_file().display(),
                "this cluster (made by an older version) let any local user in as superuser without a password (trust); setting a password and requiring it from now on");
        } else {
            tracing::warn!(data_dir = %self.cfg.data_dir.display(),
                password_file = %self.password_file().display(),
                "the superuser's password file is missing; setting a new password");
        }
        let was_running = match self.live_postmaster() {
            Some(_) => {
                self.pg_ctl_stop("fast")?;
                true
            }
            None => false,
        };
        self.clear_crash_leftovers()?;
        let password = self.load_or_create_password()?;
        self.set_password_single_user(&password)?;
        if let Some(text) = fix.hba {
            // Rewritten in place: the file keeps its owner (the server's user) and mode.
            fs::write(&hba_path, text)
                .map_err(io_error(format!("writing {}", hba_path.display())))?;
        }
        self.start_server()?;
        Ok(if was_running {
            Started::Reused
        } else {
            Started::Fresh
        })
    }

    /// `ALTER ROLE postgres PASSWORD …` in single-user mode: needs no connection, so it works
    /// whatever `pg_hba.conf` says. The server must be stopped.
    fn set_password_single_user(&self, password: &str) -> Result<(), ClusterError> {
        let mut cmd = self.command("postgres");
        cmd.arg("--single").arg("-D").arg(&self.cfg.data_dir);
        for (name, value) in [
            ("exit_on_error", "on"),
            ("password_encryption", AUTH_METHOD),
        ] {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        for (name, value) in &self.cfg.extra_settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.arg("postgres")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(io_error("running postgres --single"))?;
        let statement = format!(
            "ALTER ROLE {SUPERUSER} PASSWORD '{}';\n",
            password.replace('\'', "''")
        );
        // A write error means it exited early; its output below tells why.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(statement.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(io_error("running postgres --single"))?;
        if !out.status.success() {
            let detail = redact(&tail(&combined(&out), 8), password);
            return Err(self.failed(
                "setting the superuser's password (postgres --single)",
                detail,
            ));
        }
        Ok(())
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

/// What [`Cluster::start`] must fix before password authentication holds.
struct AuthFix {
    /// `pg_hba.conf` with its `trust` lines converted, if it had any.
    hba: Option<String>,
}

/// A file deleted when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The first line of a password file; None if the file is missing or that line is empty.
fn read_password(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .next()
            .map(|l| l.trim_end_matches('\r').to_owned())
            .filter(|l| !l.is_empty())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `contents` to `path` with mode 0600 from the start (never readable by others, not
/// even for a moment), handed to `owner` if given; replaces the file atomically.
fn write_private(
    path: &Path,
    contents: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), ClusterError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask may have taken more than 0600 leaves; make sure of the mode.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
        }
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(format!("writing {}", path.display()))(e)
    })
}

/// A random password of [`PASSWORD_LEN`] characters of [`PASSWORD_ALPHABET`], from the
/// kernel's random source (unbiased: bytes past the last whole multiple of 62 are skipped).
fn generate_password() -> io::Result<String> {
    let mut random = fs::File::open("/dev/urandom")?;
    let limit = 256 - 256 % PASSWORD_ALPHABET.len();
    let mut password = String::with_capacity(PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while password.len() < PASSWORD_LEN {
        random.read_exact(&mut buf)?;
        for &b in &buf {
            if (b as usize) < limit && password.len() < PASSWORD_LEN {
                password.push(PASSWORD_ALPHABET[b as usize % PASSWORD_ALPHABET.len()] as char);
            }
        }
    }
    Ok(password)
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a URL's user info
/// or path.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `text` with every occurrence of `secret` replaced by `***`.
fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_owned()
    } else {
        text.replace(secret, "***")
    }
}

/// Authentication methods `pg_hba.conf` knows: the method is the first of these after a
/// line's connection type, database, user (and address) fields.
const HBA_METHODS: &[&str] = &[
    "trust",
    "reject",
    "scram-sha-256",
    "md5",
    "password",
    "gss",
    "sspi",
    "ident",
    "peer",
    "pam",
    "ldap",
    "radius",
    "cert",
    "oauth",
];

/// `pg_hba.conf` with the method `trust` of every line replaced by [`AUTH_METHOD`], the rest
/// of the file (comments, other lines, spacing) unchanged; None if no line uses `trust`.
fn convert_trust_lines(hba: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(hba.len() + 64);
    for line in hba.split_inclusive('\n') {
        let active = line.split('#').next().unwrap_or("");
        // (start, token) of each whitespace-separated field.
        let fields: Vec<(usize, &str)> = active
            .split_whitespace()
            .map(|t| (t.as_ptr() as usize - line.as_ptr() as usize, t))
            .collect();
        // local: type, database, user, method; host*: type, database, user, address, method.
        let first_method_field = match fields.first() {
            Some((_, "local")) => 3,
            Some(_) => 4,
            None => usize::MAX,
        };
        let method = fields
            .iter()
            .skip(first_method_field)
            .find(|(_, t)| HBA_METHODS.contains(t));
        match method {
            Some(&(start, "trust")) => {
                changed = true;
                out.push_str(&line[..start]);
                out.push_str(AUTH_METHOD);
                out.push_str(&line[start + "trust".len()..]);
            }
            _ => out.push_str(line),
        }
    }
    changed.then_some(out)
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
    fn passwords_are_percent_encoded() {
        assert_eq!(percent_encode("abcXYZ019-._~"), "abcXYZ019-._~");
        assert_eq!(
            percent_encode("p@ss:w/rd %?#'"),
            "p%40ss%3Aw%2Frd%20%25%3F%23%27"
        );
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn generated_passwords_are_long_alphanumeric_and_differ() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn trust_lines_become_password_lines_and_nothing_else_changes() {
        let old = "# comment with trust\n\
local   all             all                                     trust\n\
host    all             all             127.0.0.1/32            trust\n\
host    trust           trust           ::1/128                 trust # yes\n\
host    all             all             10.0.0.0 255.0.0.0      trust\n\
host    all             all             192.168.0.0/16          reject\n\
local   replication     all                                     peer\n";
        let new = convert_trust_lines(old).expect("trust lines");
        assert_eq!(
            new,
            "# comment with trust\n\
local   all             all                                     scram-sha-256\n\
host    all             all             127.0.0.1/32            scram-sha-256\n\
host    trust           trust           ::1/128                 scram-sha-256 # yes\n\
host    all             all             10.0.0.0 255.0.0.0      scram-sha-256\n\
host    all             all             192.168.0.0/16          reject\n\
local   replication     all                                     peer\n"
        );
        assert_eq!(convert_trust_lines(&new), None);
        assert_eq!(convert_trust_lines("# only trust in comments\n"), None);
    }

    #[test]
    fn redaction_hides_the_secret() {
        assert_eq!(
            redact("ALTER ROLE x PASSWORD 'abc'", "abc"),
            "ALTER ROLE x PASSWORD '***'"
        );
        assert_eq!(redact("text", ""), "text");
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
