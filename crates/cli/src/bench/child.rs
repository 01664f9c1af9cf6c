//! The daemon under test, as a child process (`pgai-trigger serve`), so that its CPU time and
//! peak memory are its own and not the bench's. Its HTTP port is picked by the OS (`--http
//! 127.0.0.1:0`) and read from the `HTTP=http://…` line it prints; its log goes to a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::probe;

/// How long a daemon may take to load the model and connect.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// How long a daemon may take to finish its batches after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// How to start daemons.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub bin: PathBuf,
    pub database_url: String,
    pub batch_size: usize,
    /// Passed through to every `serve` (e.g. `--threads 2`).
    pub extra_args: Vec<String>,
    /// Where daemon logs go (one file per daemon).
    pub log_dir: PathBuf,
}

/// A running daemon.
pub struct DaemonProc {
    pub label: String,
    child: Child,
    pub pid: u32,
    /// `127.0.0.1:PORT` of its HTTP server.
    http: String,
    log: PathBuf,
}

/// What a daemon left behind when it stopped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stopped {
    pub label: String,
    /// VmHWM just before SIGTERM: the most it was ever resident.
    pub peak_rss_mb: Option<f64>,
    pub cpu_s: Option<f64>,
}

impl Launcher {
    /// Starts `serve` on `table` and waits until `/readyz` answers 200.
    pub async fn start(&self, label: &str, table: &str, polling: bool) -> Result<DaemonProc> {
        let log = self.log_dir.join(format!("daemon-{label}.log"));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .args(["--database-url", &self.database_url])
            .args(["--http", "127.0.0.1:0", "--table", table])
            .args(["--batch-size", &self.batch_size.to_string()]);
        if polling {
            cmd.arg("--polling");
        }
        cmd.args(&self.extra_args)
            // The caller's settings must not turn the immediate daemon into a polling one, hide
            // /metrics behind a token, or bring in a config file from the working directory.
            .env_remove("PGAI_POLLING")
            .env_remove("PGAI_HTTP_TOKEN")
            .env_remove("PGAI_CONFIG")
            .current_dir(&self.log_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id().context("the daemon exited at once")?;
        let stdout = child.stdout.take().context("daemon stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let started = Instant::now();
        let http = loop {
            let line = tokio::time::timeout(
                START_DEADLINE.saturating_sub(started.elapsed()),
                lines.next_line(),
            )
            .await
            .map_err(|_| {
                anyhow::anyhow!("daemon {label} printed no HTTP= line within {START_DEADLINE:?}")
            })?;
            match line {
                Ok(Some(l)) => {
                    if let Some(addr) = l.trim().strip_prefix("HTTP=http://") {
                        break addr.to_string();
                    }
                }
                _ => bail!("daemon {label} exited while starting:\n{}", log_tail(&log)),
            }
        };
        // Keep reading, so that a later print never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let d = DaemonProc {
            label: label.to_string(),
            child,
            pid,
            http,
            log,
        };
        d.wait_ready(START_DEADLINE.saturating_sub(started.elapsed()))
            .await?;
        Ok(d)
    }
}

impl DaemonProc {
    async fn wait_ready(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) = http_get(&self.http, "/readyz").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "daemon {} not ready within {within:?}:\n{}",
                    self.label,
                    log_tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The daemon's `/metrics`: every sample without labels, by name.
    pub async fn metrics(&self) -> Result<HashMap<String, f64>> {
        let (status, body) = http_get(&self.http, "/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains('{'))
            .filter_map(|l| {
                let (name, value) = l.split_once(' ')?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    pub fn cpu_s(&self) -> Option<f64> {
        probe::process_cpu(self.pid)
    }

    /// SIGTERM, then waits for a graceful stop (SIGKILL after [`STOP_DEADLINE`]).
    pub async fn stop(mut self) -> Result<Stopped> {
        let stopped = Stopped {
            label: self.label.clone(),
            peak_rss_mb: probe::peak_rss(self.pid).map(|b| b as f64 / 1048576.0),
            cpu_s: self.cpu_s(),
        };
        // SAFETY: plain kill(2) of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        match tokio::time::timeout(STOP_DEADLINE, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(stopped),
            Ok(Ok(status)) => bail!(
                "daemon {} exited with {status}:\n{}",
                self.label,
                log_tail(&self.log)
            ),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "daemon {} did not stop within {STOP_DEADLINE:?} of SIGTERM",
                    self.label
                )
            }
        }
    }

    /// Fails with the daemon's log if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "daemon {} exited ({status}):\n{}",
                self.label,
                log_tail(&self.log)
            );
        }
        Ok(())
    }
}

/// The last lines of a daemon's log, indented.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A minimal HTTP/1.0 GET (the daemon's answers are small JSON with a length): status and body.
async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("HTTP timeout")??;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP answer from {addr}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The `pgai-trigger` binary: `--daemon-bin`, else this executable when it is `pgai-trigger`
/// (the `bench` subcommand), else one next to it or one directory up (cargo's `examples/`).
pub fn locate_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--daemon-bin {}: no such file", p.display());
    }
    let me = std::env::current_exe().context("locating the current executable")?;
    if me.file_name().is_some_and(|n| n == "pgai-trigger") {
        return Ok(me);
    }
    let dir = me.parent().context("executable without a directory")?;
    for candidate in [dir.join("pgai-trigger"), dir.join("../pgai-trigger")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the pgai-trigger binary next to {}: build it (cargo build --release) or pass --daemon-bin",
        me.display()
    )
}
