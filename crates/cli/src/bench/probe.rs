//! CPU time and memory of processes, read from /proc (Linux only; elsewhere every reading is
//! `None` and the bench reports what it could not measure).
//!
//! A [`Probe`] snapshots, at one instant, the machine's busy CPU time, the daemon's, the
//! PostgreSQL cluster's (postmaster and every backend) and the bench's own. The difference of
//! two snapshots says how many cores each used during a phase, and how many something else on
//! the machine used: the noise that shared machines add to every number.

use std::fs;
use std::time::Instant;

/// Clock ticks per second of /proc's CPU counters.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces); index 0 is the
/// state (field 3 of proc(5)).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // The state letter is not a number: keep positions by mapping it to 0.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime of a process (all its threads), and with `children` the CPU of its reaped
/// children too, in seconds.
fn cpu_of(pid: &str, children: bool) -> Option<f64> {
    let f = stat_fields(pid)?;
    // proc(5): utime 14, stime 15, cutime 16, cstime 17 → indices 11..=14 here.
    let mut ticks = f.get(11)? + f.get(12)?;
    if children {
        ticks += f.get(13)? + f.get(14)?;
    }
    Some(ticks as f64 / ticks_per_sec())
}

/// CPU seconds the process has used so far.
pub fn process_cpu(pid: u32) -> Option<f64> {
    cpu_of(&pid.to_string(), false)
}

/// CPU seconds this process has used so far (all threads).
pub fn own_cpu() -> Option<f64> {
    cpu_of("self", false)
}

/// CPU seconds of a PostgreSQL cluster: the postmaster, its exited children (reaped), and
/// every live child (backends, WAL writer, checkpointer…).
pub fn cluster_cpu(postmaster: u32) -> Option<f64> {
    let pm = postmaster.to_string();
    let mut total = cpu_of(&pm, true)?;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Some(f) = stat_fields(pid) else { continue };
        // proc(5): ppid is field 4 → index 1.
        if f.get(1).map(|p| p.to_string()) == Some(pm.clone()) {
            total += cpu_of(pid, false).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// A `kB` line of /proc/PID/status, in bytes.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Peak resident set size of the process so far (VmHWM).
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM:")
}

/// Busy and total CPU seconds of the whole machine, summed over cores.
fn machine_cpu() -> Option<(f64, f64)> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    let busy: u64 = v.iter().take(8).sum::<u64>() - idle;
    let tps = ticks_per_sec();
    Some((busy as f64 / tps, (busy + idle) as f64 / tps))
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_avg() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The CPU model, as /proc/cpuinfo names it.
pub fn cpu_model() -> Option<String> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// Whose CPU a [`Probe`] watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watched {
    pub daemon: Option<u32>,
    pub postmaster: Option<u32>,
}

/// CPU counters at one instant.
#[derive(Debug, Clone)]
pub struct Probe {
    at: Instant,
    machine_busy: Option<f64>,
    daemon: Option<f64>,
    postgres: Option<f64>,
    bench: Option<f64>,
}

/// Cores used between two [`Probe`]s (1.0 = one core busy the whole time).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    pub wall_s: f64,
    /// Every process on the machine.
    pub machine_cores: Option<f64>,
    pub daemon_cores: Option<f64>,
    pub postgres_cores: Option<f64>,
    pub bench_cores: Option<f64>,
    /// The machine minus daemon, PostgreSQL and bench: other work sharing the cores (noise).
    pub other_cores: Option<f64>,
    /// CPU seconds of the daemon and of PostgreSQL over the interval.
    pub daemon_cpu_s: Option<f64>,
    pub postgres_cpu_s: Option<f64>,
}

impl Probe {
    pub fn now(w: Watched) -> Probe {
        Probe {
            at: Instant::now(),
            machine_busy: machine_cpu().map(|(busy, _)| busy),
            daemon: w.daemon.and_then(process_cpu),
            postgres: w.postmaster.and_then(cluster_cpu),
            bench: own_cpu(),
        }
    }

    /// What was used from `self` until `later`.
    pub fn until(&self, later: &Probe) -> Usage {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let d = |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0));
        let machine = d(self.machine_busy, later.machine_busy);
        let daemon = d(self.daemon, later.daemon);
        let postgres = d(self.postgres, later.postgres);
        let bench = d(self.bench, later.bench);
        let ours = daemon.unwrap_or(0.0) + postgres.unwrap_or(0.0) + bench.unwrap_or(0.0);
        Usage {
            wall_s: wall,
            machine_cores: machine.map(|m| m / wall),
            daemon_cores: daemon.map(|c| c / wall),
            postgres_cores: postgres.map(|c| c / wall),
            bench_cores: bench.map(|c| c / wall),
            other_cores: machine.map(|m| ((m - ours) / wall).max(0.0)),
            daemon_cpu_s: daemon,
            postgres_cpu_s: postgres,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        assert!(process_cpu(me).is_some());
        assert!(peak_rss(me).unwrap() > 1024 * 1024);
        let (busy, total) = machine_cpu().unwrap();
        assert!(busy > 0.0 && total >= busy);
        let p = Probe::now(Watched {
            daemon: Some(me),
            postmaster: None,
        });
        let u = p.until(&Probe::now(Watched {
            daemon: Some(me),
            postmaster: None,
        }));
        assert!(u.daemon_cores.is_some() && u.postgres_cores.is_none());
    }
}
