//! `pgai-trigger bench`: how fast a committed row gets its vector, and where the time goes.
//!
//! The bench is the client; the daemon under test is a child process (`pgai-trigger serve`),
//! so its CPU time and memory are its own. By default everything runs against a private
//! embedded cluster in a temporary directory (fsync on), or against `--database-url`. One run
//! measures, side by side:
//!
//! 1. latency of single inserts at a steady rate (LISTEN mode), short and long texts;
//! 2. the same in polling mode, and the ratio;
//! 3. a burst of rows committed in one statement, with single inserts arriving meanwhile;
//! 4. the model alone in this process (same texts and batch sizes), the database's cost per row
//!    (precomputed vectors written through the daemon's own statements), and the ceiling that
//!    follows;
//! 5. what the notify trigger costs a bulk insert (per row, per statement, none);
//! 6. the daemon's idle CPU and its peak memory;
//! 7. fairness: one daemon serving two vectorizers, a lone insert into B alone and while A
//!    backfills a large table (`--fairness-only` runs this phase alone).
//!
//! It prints a table and writes JSON, the table as text, and an SVG latency plot. Nothing is
//! asserted: the performance targets are reported as met or missed (README, Performance).
//!
//! Modules: `texts` (the two text profiles), `child` (the daemon process), `listen`
//! (the `embedding_ready` ear), `latency` (steady inserts, burst), `model` (raw model),
//! `dbcost` (database write cost, trigger overhead), `fairness` (two vectorizers, one daemon),
//! `probe` (CPU and memory from /proc), `report` (results, breakdown, targets, table), `svg`
//! (the plot).

mod child;
mod dbcost;
mod fairness;
mod latency;
mod listen;
mod model;
mod probe;
mod report;
mod svg;
mod texts;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::Client;

use child::{DaemonProc, Launcher, Stopped};
use listen::ReadyListener;
use pgai_cluster::{Cluster, ClusterConfig};
use pgai_trigger::{quote_ident, schema, Table};
use probe::{Probe, Usage, Watched};
use report::{
    BurstRun, FairnessOnly, Idle, LatencyRun, Memory, Meta, Mode, PhaseUsage, PollingRatio, Results,
};
use texts::Profile;

/// `pgai-trigger bench`: commit-to-vector latency, burst throughput, the model's own speed,
/// the database's cost per row, trigger overhead, idle CPU and memory, in one run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// PostgreSQL (with pgvector) to run against instead of a private embedded cluster. The
    /// bench creates tables named pgai_bench_* there and drops them afterwards. Deliberately
    /// not read from DATABASE_URL: a bench should not land on a production database by accident.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Run the embedded cluster with fsync off: faster commits, less honest numbers.
    #[arg(long)]
    pub no_fsync: bool,
    /// The JSON results; the SVG plot and the table go next to it (same name, .svg and .txt).
    #[arg(long, default_value = "bench/results.json")]
    pub out: PathBuf,
    /// The pgai-trigger binary to run as the daemon under test (default: this executable, or
    /// the one next to it).
    #[arg(long)]
    pub daemon_bin: Option<PathBuf>,
    /// An extra argument for every `pgai-trigger serve` the bench starts; repeat for more
    /// (e.g. --daemon-arg=--threads --daemon-arg=2).
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    pub daemon_args: Vec<String>,
    /// Rows per claim and model batch: passed to the daemon as --batch-size, and used by the
    /// raw-model and database-write measurements alike.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Shrink every count (a few rows, a 1 s idle window) to prove the command works in
    /// seconds; the numbers then mean little. Explicit counts still win.
    #[arg(long)]
    pub quick: bool,
    /// Single-row inserts measured per latency run, after the warm-up [default: 500; quick: 10].
    #[arg(long)]
    pub latency_rows: Option<usize>,
    /// Inserts per second in the short-text latency runs (a steady schedule, not "sleep
    /// after").
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Inserts per second in the long-text latency runs. Lower than --rate: a long text is
    /// ~10x the model work, and at 20/s the model alone would be busy ~60 % of the time, which
    /// measures queueing more than latency.
    #[arg(long, default_value_t = 10.0)]
    pub rate_long: f64,
    /// Inserts before each latency run that are not measured [default: 20; quick: 2].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Rows of the short-text burst [default: 10000; quick: 64].
    #[arg(long)]
    pub burst_rows: Option<usize>,
    /// Rows of the long-text burst; each is ~15x the model work of a short one
    /// [default: 2000; quick: 16].
    #[arg(long)]
    pub burst_rows_long: Option<usize>,
    /// Single inserts per second while a burst drains (their latency is reported).
    #[arg(long, default_value_t = 5.0)]
    pub trickle_rate: f64,
    /// Short texts the raw model embeds in batches; their vectors are then written to measure
    /// the database's cost per row, into an index growing as the burst's does [default: the
    /// burst's rows, the very same texts].
    #[arg(long)]
    pub raw_rows: Option<usize>,
    /// Long texts the raw model embeds in batches [default: 256; quick: 8].
    #[arg(long)]
    pub raw_rows_long: Option<usize>,
    /// Texts the raw model embeds one at a time, and rows claimed and written one at a time
    /// [default: 200; quick: 5].
    #[arg(long)]
    pub single_rows: Option<usize>,
    /// Rows of each bulk insert in the trigger-overhead test [default: 100000; quick: 2000].
    #[arg(long)]
    pub overhead_rows: Option<usize>,
    /// Repeats of each bulk insert; the median counts [default: 3; quick: 1].
    #[arg(long)]
    pub overhead_repeats: Option<usize>,
    /// Seconds over which the idle daemons' CPU is measured [default: 60; quick: 1].
    #[arg(long)]
    pub idle_secs: Option<f64>,
    /// Rows of vectorizer A's table in the fairness phase, all queued by its backfill while
    /// single inserts into vectorizer B are timed [default: 100000; quick: 2000].
    #[arg(long)]
    pub fairness_rows: Option<usize>,
    /// Single inserts into vectorizer B per fairness run (alone, then during A's backfill)
    /// [default: 20; quick: 5].
    #[arg(long)]
    pub fairness_singles: Option<usize>,
    /// Inserts per second into vectorizer B in the fairness runs.
    #[arg(long, default_value_t = 5.0)]
    pub fairness_rate: f64,
    /// Run only the fairness phase (one daemon, two vectorizers) and write its results alone.
    #[arg(long)]
    pub fairness_only: bool,
    /// Write the texts the raw-model measurement embeds (batched and alone, both profiles) as
    /// JSON to this file and exit, to time other embedders on the very same texts.
    #[arg(long, value_name = "FILE")]
    pub write_texts: Option<PathBuf>,
    /// Redraw the SVG plot of an earlier run from its JSON (written next to it) and exit.
    #[arg(long, value_name = "JSON")]
    pub replot: Option<PathBuf>,
    /// A Python with `sentence-transformers` installed (e.g. a venv's bin/python): the same
    /// texts are then also embedded by sentence-transformers (PyTorch, CPU, one thread per
    /// core) in this run, and the raw-model target compares against that measurement.
    #[arg(long, value_name = "PYTHON")]
    pub st_python: Option<PathBuf>,
    /// sentence-transformers' rows/s on batches of 32 short texts on this machine (the
    /// PyTorch reference; the environment notes measured ~390), for the raw-model target when
    /// --st-python is not given.
    #[arg(long, default_value_t = 390.0)]
    pub st_rows_per_s: f64,
}

/// The counts of a run, after `--quick` and explicit flags.
#[derive(Debug, Clone)]
struct Plan {
    latency_rows: usize,
    warmup: usize,
    burst_rows: usize,
    burst_rows_long: usize,
    raw_rows: usize,
    raw_rows_long: usize,
    single_rows: usize,
    overhead_rows: usize,
    overhead_repeats: usize,
    idle: Duration,
    fairness_rows: usize,
    fairness_singles: usize,
}

impl Plan {
    fn new(a: &BenchArgs) -> Result<Plan> {
        let q = a.quick;
        let pick = |explicit: Option<usize>, full: usize, quick: usize| {
            explicit.unwrap_or(if q { quick } else { full })
        };
        let burst_rows = pick(a.burst_rows, 10_000, 64).max(1);
        let plan = Plan {
            latency_rows: pick(a.latency_rows, 500, 10).max(1),
            warmup: pick(a.warmup, 20, 2),
            burst_rows,
            burst_rows_long: pick(a.burst_rows_long, 2_000, 16).max(1),
            raw_rows: a.raw_rows.unwrap_or(burst_rows).max(3),
            raw_rows_long: pick(a.raw_rows_long, 256, 8).max(1),
            single_rows: pick(a.single_rows, 200, 5).max(1),
            overhead_rows: pick(a.overhead_rows, 100_000, 2_000).max(1),
            overhead_repeats: pick(a.overhead_repeats, 3, 1).max(1),
            idle: Duration::from_secs_f64(
                a.idle_secs.unwrap_or(if q { 1.0 } else { 60.0 }).max(0.1),
            ),
            fairness_rows: pick(a.fairness_rows, 100_000, 2_000).max(1),
            fairness_singles: pick(a.fairness_singles, 20, 5).max(1),
        };
        anyhow::ensure!(
            a.rate > 0.0 && a.rate_long > 0.0 && a.trickle_rate > 0.0 && a.fairness_rate > 0.0,
            "--rate, --rate-long, --trickle-rate and --fairness-rate must be positive"
        );
        anyhow::ensure!(
            (1..=4096).contains(&a.batch_size),
            "--batch-size must be between 1 and 4096"
        );
        Ok(plan)
    }
}

/// Table names of the run (`pgai_bench_*`).
const PREFIX: &str = "pgai_bench";

/// Drops a bench table, its requeue function and its `in_place` row of the vectorizer catalog
/// (the shared notify functions stay: a real table may use them).
async fn drop_table(db: &Client, table: &Table) -> Result<()> {
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {} CASCADE; DROP FUNCTION IF EXISTS {}() CASCADE;",
        table.sql(),
        quote_ident(&format!("{}_requeue", table.name()))
    ))
    .await?;
    let catalog: bool = db
        .query_one("SELECT to_regclass('pgai.vectorizers') IS NOT NULL", &[])
        .await?
        .get(0);
    if catalog {
        db.execute(
            "DELETE FROM pgai.vectorizers WHERE name = $1 AND destination = 'in_place'",
            &[&table.name()],
        )
        .await?;
    }
    Ok(())
}

/// The bench's scratch directory under /tmp (reachable by the PostgreSQL user when root):
/// daemon logs and the embedded cluster. Removed at the end, with the cluster stopped.
struct Scratch {
    dir: PathBuf,
    cluster: Option<Cluster>,
}

impl Scratch {
    fn create() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("pgai-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(Scratch { dir, cluster: None })
    }

    /// initdb + start on a free port; returns the URL of a fresh `pgai_bench` database.
    fn start_cluster(&mut self, fsync: bool) -> Result<String> {
        let mut last = None;
        for _ in 0..5 {
            let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
            let mut cfg = ClusterConfig::new(self.dir.join("data"), port);
            if !fsync {
                cfg.extra_settings.push(("fsync".into(), "off".into()));
            }
            let cluster = Cluster::new(cfg)?;
            cluster.init()?;
            match cluster.start() {
                Ok(_) => {
                    let url = cluster.url("postgres");
                    self.cluster = Some(cluster);
                    return Ok(url);
                }
                Err(e) if e.is_port_in_use() => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last
            .map(Into::into)
            .unwrap_or_else(|| anyhow::anyhow!("no free port")))
    }

    fn postmaster(&self) -> Option<u32> {
        self.cluster.as_ref().and_then(Cluster::pid)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.take() {
            let _ = c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bar(label: &str, len: u64) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:<36} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(label.to_string());
    pb
}

/// Clears the bar and leaves one line (also when stderr is not a terminal and no bar is drawn).
fn done(pb: ProgressBar, summary: String) {
    pb.finish_and_clear();
    eprintln!("{:<36} {summary}", pb.prefix());
}

fn ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1} ms"))
        .unwrap_or_else(|| "-".into())
}

/// Runs the bench as `args` says; prints the table and writes JSON, table and plot.
pub async fn run(args: BenchArgs) -> Result<()> {
    if let Some(json) = &args.replot {
        return replot(json);
    }
    let plan = Plan::new(&args)?;
    let started = Instant::now();

    // The texts. Latency runs: warm-up + measured rows; bursts; singles during the drains.
    let lat_n = plan.warmup + plan.latency_rows;
    let burst_short = Profile::Short.texts(21, plan.burst_rows.max(plan.raw_rows));
    let burst_long = Profile::Long.texts(22, plan.burst_rows_long.max(plan.raw_rows_long));
    let lat_short = Profile::Short.texts(11, lat_n.max(plan.single_rows));
    let lat_long = Profile::Long.texts(13, lat_n.max(plan.single_rows));
    let single_long = plan.single_rows.min(50);
    if let Some(path) = &args.write_texts {
        let doc = serde_json::json!({
            "batch_size": args.batch_size,
            "short_batched": &burst_short[..plan.raw_rows],
            "long_batched": &burst_long[..plan.raw_rows_long],
            "short_alone": &lat_short[..plan.single_rows],
            "long_alone": &lat_long[..single_long],
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote the raw-model texts to {}", path.display());
        return Ok(());
    }
    let load_avg_start = probe::load_avg();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let bin = child::locate_bin(args.daemon_bin.as_deref())?;
    let json_path = args.out.clone();
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    // The database.
    let mut scratch = Scratch::create()?;
    let (url, database) = match &args.database_url {
        Some(url) => (url.clone(), "external (--database-url)".to_string()),
        None => {
            let fsync = !args.no_fsync;
            let pb = bar("starting embedded PostgreSQL", 1);
            let (admin_url, scratch_back) = tokio::task::spawn_blocking(move || {
                let r = scratch.start_cluster(fsync);
                (r, scratch)
            })
            .await?;
            scratch = scratch_back;
            let admin_url = admin_url?;
            let (admin, _task) = pgai_trigger::connect(&admin_url, "pgai-trigger bench").await?;
            admin.batch_execute("CREATE DATABASE pgai_bench").await?;
            drop(admin);
            done(pb, format!("in {}", scratch.dir.display()));
            let url = admin_url
                .rsplit_once('/')
                .map(|(base, _)| format!("{base}/pgai_bench"))
                .unwrap_or_default();
            (url, "embedded (temporary cluster)".to_string())
        }
    };
    let postmaster = scratch.postmaster();
    let (db, _db_task) = pgai_trigger::connect(&url, "pgai-trigger bench").await?;
    let (db2, _db2_task) = pgai_trigger::connect(&url, "pgai-trigger bench").await?;
    let show = |name: &'static str| {
        let db = &db;
        async move {
            db.query_one(&format!("SHOW {name}"), &[])
                .await
                .map(|r| r.get::<_, String>(0))
        }
    };
    let postgres_version = show("server_version").await?;
    let fsync = show("fsync").await?;
    let synchronous_commit = show("synchronous_commit").await?;
    let started_utc: String = db
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')",
            &[],
        )
        .await?
        .get(0);
    let mut meta = Meta {
        command: std::env::args()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" "),
        git: std::process::Command::new("git")
            .args(["describe", "--always", "--dirty", "--abbrev=10"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        started_utc,
        duration_s: 0.0,
        cores,
        cpu_model: probe::cpu_model(),
        load_avg_start,
        load_avg_end: None,
        other_cores_max: None,
        database,
        postgres_version,
        pgvector_version: None,
        fsync,
        synchronous_commit,
        batch_size: args.batch_size,
        daemon_args: args.daemon_args.clone(),
        quick: args.quick,
    };
    let launcher = Launcher {
        bin,
        database_url: url.clone(),
        batch_size: args.batch_size,
        extra_args: args.daemon_args.clone(),
        log_dir: scratch.dir.clone(),
    };
    let watched = |daemon: Option<u32>| Watched { daemon, postmaster };

    if args.fairness_only {
        let (fair, fair_stopped) =
            fairness_phase(&db, &launcher, watched(None), &plan, &args).await?;
        let phases = vec![PhaseUsage {
            phase: "fairness, loaded window".into(),
            usage: fair.usage,
        }];
        finish_meta(&mut meta, &db, started, &phases).await?;
        drop((db, db2));
        stop_scratch(scratch).await?;
        let mut results = FairnessOnly {
            meta,
            memory: Memory {
                peak_rss_mb_under_load: fair_stopped.peak_rss_mb,
                daemons: vec![fair_stopped],
            },
            fairness: fair,
            targets: Vec::new(),
            phases,
        };
        results.evaluate();
        return write_outputs(
            &serde_json::to_value(&results)?,
            &report::fairness_only_table(&results),
            &json_path,
        );
    }

    let table = |suffix: &str| Table::new(&format!("{PREFIX}_{suffix}"));
    let names = [
        "write",
        "ovh_row",
        "ovh_none",
        "ovh_stmt",
        "short",
        "short_poll",
        "long",
        "long_poll",
    ];
    for n in names {
        drop_table(&db, &table(n)?).await?;
    }
    // An interrupted run's vectorizers would be served by every daemon of this one.
    fairness::clean(&db).await?;

    // What each phase used, and what other programs used meanwhile.
    let mut phases: Vec<report::PhaseUsage> = Vec::new();
    let mut note = |phase: String, u: &Usage| phases.push(report::PhaseUsage { phase, usage: *u });

    // 4a. The model alone.
    let paced = 2 * plan.single_rows.min(100) + single_long.min(50);
    let pb = bar(
        "raw model (no database)",
        (plan.single_rows + plan.raw_rows + single_long + plan.raw_rows_long + paced) as u64,
    );
    let before = Probe::now(watched(None));
    let (raw, vectors) = {
        let (bs, bl, ls, ll) = (
            burst_short[..plan.raw_rows].to_vec(),
            burst_long[..plan.raw_rows_long].to_vec(),
            lat_short[..plan.single_rows].to_vec(),
            lat_long[..single_long].to_vec(),
        );
        let (pb2, batch, rate, rate_long) =
            (pb.clone(), args.batch_size, args.rate, args.rate_long);
        tokio::task::spawn_blocking(move || {
            model::measure(
                cores,
                batch,
                model::ProfileTexts {
                    profile: Profile::Short,
                    single: &ls,
                    batch: &bs,
                    paced_rate: rate,
                },
                model::ProfileTexts {
                    profile: Profile::Long,
                    single: &ll,
                    batch: &bl,
                    paced_rate: rate_long,
                },
                &pb2,
            )
        })
        .await??
    };
    note(
        "raw model".into(),
        &before.until(&Probe::now(watched(None))),
    );
    let mut raw = raw;
    // Not a noted phase: sentence-transformers is a process of its own, which the probe would
    // count as other programs' load.
    if let Some(python) = &args.st_python {
        let texts = model::StTexts {
            batch_size: args.batch_size,
            short_batched: &burst_short[..plan.raw_rows],
            long_batched: &burst_long[..plan.raw_rows_long],
            short_alone: &lat_short[..plan.single_rows],
            long_alone: &lat_long[..single_long],
        };
        pb.set_message("sentence-transformers");
        raw.sentence_transformers =
            Some(model::sentence_transformers(python, &scratch.dir, &texts, cores).await?);
    }
    done(
        pb,
        format!(
            "short: alone {}, batched {:.0}/s; long: alone {}, batched {:.1}/s",
            ms(raw.short.single.embed_ms.p50),
            raw.short.batch.rows_per_s,
            ms(raw.long.single.embed_ms.p50),
            raw.long.batch.rows_per_s
        ),
    );

    // 4b. The database's cost per row.
    let single_db = plan.single_rows.min(plan.raw_rows / 3);
    let pb = bar("database write cost (no model)", plan.raw_rows as u64);
    let before = Probe::now(watched(None));
    let write_table = table("write")?;
    let db_write = dbcost::write_cost(
        &db,
        &write_table,
        &burst_short[..plan.raw_rows],
        &vectors,
        args.batch_size,
        single_db,
        postmaster,
        &pb,
    )
    .await?;
    drop_table(&db, &write_table).await?;
    note(
        "database write cost".into(),
        &before.until(&Probe::now(watched(None))),
    );
    done(
        pb,
        format!(
            "batched: claim {:.3} + write {:.3} ms/row (PostgreSQL CPU {} ms/row); alone: claim {} + write {}",
            db_write.batches.claim_ms_per_row,
            db_write.batches.write_ms_per_row,
            db_write.batches.postgres_cpu_ms_per_row.map(|c| format!("{c:.3}")).unwrap_or_else(|| "-".into()),
            ms(db_write.singles.claim_ms.p50),
            ms(db_write.singles.write_ms.p50)
        ),
    );

    // 5. Trigger overhead.
    let pb = bar(
        "trigger overhead (no daemon)",
        3 * plan.overhead_repeats as u64,
    );
    let before = Probe::now(watched(None));
    let overhead =
        dbcost::trigger_overhead(&db, PREFIX, plan.overhead_rows, plan.overhead_repeats, &pb)
            .await?;
    note(
        "trigger overhead".into(),
        &before.until(&Probe::now(watched(None))),
    );
    let _ = db.batch_execute("CHECKPOINT").await;
    done(
        pb,
        format!(
            "{} rows: none {:.2} s, per row {:.2} s, per statement {:.2} s",
            overhead.rows,
            overhead.no_trigger_s,
            overhead.row_trigger_s,
            overhead.statement_trigger_s
        ),
    );

    // 1-3, 6. The daemon.
    let ready = ReadyListener::start(&url).await?;
    let mut latency_runs = Vec::new();
    let mut bursts = Vec::new();
    let mut stopped: Vec<Stopped> = Vec::new();
    let mut idle = Idle {
        window_s: plan.idle.as_secs_f64(),
        immediate_cpu_percent: None,
        polling_cpu_percent: None,
    };
    for profile in [Profile::Short, Profile::Long] {
        let (lat_texts, poll_seed, burst_texts, burst_rows) = match profile {
            Profile::Short => (&lat_short, 12, &burst_short, plan.burst_rows),
            Profile::Long => (&lat_long, 14, &burst_long, plan.burst_rows_long),
        };
        let p = profile.name();
        let imm_table = table(p)?;
        schema::init(&db, &imm_table, pgai_embed::DIM).await?;
        let mut daemon = launcher
            .start(&format!("{p}-immediate"), imm_table.name(), false)
            .await?;

        // 1. Latency, LISTEN mode.
        let run = latency_run(
            &db,
            &ready,
            &imm_table,
            &daemon,
            profile,
            Mode::Immediate,
            &lat_texts[..lat_n],
            &args,
            &plan,
            postmaster,
        )
        .await?;
        note(format!("latency, {p}, immediate"), &run.usage);
        latency_runs.push(run);
        daemon.check_alive()?;

        // 3. Burst, with singles arriving during the drain.
        let pb = bar(&format!("burst, {p}, {burst_rows} rows"), burst_rows as u64);
        let stats0 = daemon.metrics().await.ok();
        // Give up on a burst only well past what the raw model would need (5x, plus 2 min).
        let raw_rate = match profile {
            Profile::Short => raw.short.batch.rows_per_s,
            Profile::Long => raw.long.batch.rows_per_s,
        };
        let within = Duration::from_secs(120)
            + Duration::from_secs_f64(5.0 * burst_rows as f64 / raw_rate.max(0.1));
        let trickle_n = ((args.trickle_rate * within.as_secs_f64()) as usize + 1).min(50_000);
        let trickle_texts = profile.texts(31 + poll_seed, trickle_n);
        let b = latency::burst(
            &db,
            &db2,
            &ready,
            &imm_table,
            &format!("{}b", &p[..1]),
            &burst_texts[..burst_rows],
            &trickle_texts,
            args.trickle_rate,
            within,
            watched(Some(daemon.pid)),
            &pb,
        )
        .await?;
        let stats1 = daemon.metrics().await.ok();
        note(format!("burst, {p}"), &b.usage);
        let avg_batch = stats0.zip(stats1).and_then(|(a, z)| {
            let d = |k: &str| z.get(k).zip(a.get(k)).map(|(z, a)| z - a);
            d("pgai_batch_size_rows_sum")
                .zip(d("pgai_batch_size_rows_count"))
                .filter(|(_, n)| *n > 0.0)
                .map(|(r, n)| r / n)
        });
        done(
            pb,
            format!(
                "{:.0} rows/s ({} of {} in {:.1} s); singles meanwhile: P50 {}",
                b.rows_per_s,
                b.embedded,
                b.rows,
                b.drain_s,
                ms(b.trickle.client_ms.p50)
            ),
        );
        bursts.push(BurstRun {
            profile,
            burst: b,
            avg_batch,
        });
        daemon.check_alive()?;

        // 6. Idle CPU: this daemon after its work, and a polling one beside it.
        if profile == Profile::Short {
            let before = Probe::now(watched(Some(daemon.pid)));
            let (imm_pct, poll_pct, poll_stopped) =
                idle_window(&launcher, &daemon, &imm_table, plan.idle).await?;
            note(
                "idle window (and a polling daemon's start)".into(),
                &before.until(&Probe::now(watched(Some(daemon.pid)))),
            );
            idle.immediate_cpu_percent = imm_pct;
            idle.polling_cpu_percent = poll_pct;
            stopped.push(poll_stopped);
        }
        stopped.push(daemon.stop().await?);

        // 2. Latency, polling mode.
        let poll_table = table(&format!("{p}_poll"))?;
        schema::init(&db, &poll_table, pgai_embed::DIM).await?;
        let daemon = launcher
            .start(&format!("{p}-polling"), poll_table.name(), true)
            .await?;
        let poll_texts = profile.texts(poll_seed, lat_n);
        let run = latency_run(
            &db,
            &ready,
            &poll_table,
            &daemon,
            profile,
            Mode::Polling,
            &poll_texts,
            &args,
            &plan,
            postmaster,
        )
        .await?;
        note(format!("latency, {p}, polling"), &run.usage);
        latency_runs.push(run);
        stopped.push(daemon.stop().await?);
    }
    drop(ready);

    // 7. Fairness: one daemon, two vectorizers.
    let (fair, fair_stopped) = fairness_phase(&db, &launcher, watched(None), &plan, &args).await?;
    note("fairness, loaded window".into(), &fair.usage);
    stopped.push(fair_stopped);

    for n in names {
        drop_table(&db, &table(n)?).await?;
    }
    finish_meta(&mut meta, &db, started, &phases).await?;
    drop((db, db2));
    stop_scratch(scratch).await?;

    // The report.
    let polling = [Profile::Short, Profile::Long]
        .into_iter()
        .map(|profile| {
            let get = |mode| {
                latency_runs
                    .iter()
                    .find(|r| r.profile == profile && r.mode == mode)
                    .map(|r| &r.latencies.client_ms)
            };
            let (i, p) = (get(Mode::Immediate), get(Mode::Polling));
            let ratio = |f: fn(&pgai_trigger::Percentiles) -> Option<f64>| {
                i.and_then(f)
                    .zip(p.and_then(f))
                    .filter(|(a, _)| *a > 0.0)
                    .map(|(a, b)| b / a)
            };
            PollingRatio {
                profile,
                p50_ratio: ratio(|x| x.p50),
                p99_ratio: ratio(|x| x.p99),
            }
        })
        .collect();
    let measured_p50 = latency_runs
        .iter()
        .find(|r| r.profile == Profile::Short && r.mode == Mode::Immediate)
        .and_then(|r| r.latencies.client_ms.p50);
    let breakdown = report::Breakdown {
        ceiling_model: report::CEILING_MODEL.into(),
        batched: [&raw.short, &raw.long]
            .into_iter()
            .map(|rp| {
                report::batched_row(
                    rp,
                    &db_write,
                    bursts.iter().find(|b| b.profile == rp.profile),
                    cores,
                )
            })
            .collect(),
        single_short: report::single_row(&raw, &db_write, measured_p50),
    };
    // Every daemon but the idle one worked under load (bursts, or inserts at a steady rate).
    let under_load = stopped
        .iter()
        .filter(|s| !s.label.ends_with("-idle"))
        .filter_map(|s| s.peak_rss_mb)
        .reduce(f64::max);
    let mut results = Results {
        meta,
        latency: latency_runs,
        polling,
        burst: bursts,
        raw_model: raw,
        db_write,
        breakdown,
        trigger_overhead: overhead,
        idle,
        memory: Memory {
            daemons: stopped,
            peak_rss_mb_under_load: under_load,
        },
        fairness: fair,
        targets: Vec::new(),
        phases,
    };
    results.evaluate(args.st_rows_per_s);
    write_outputs(
        &serde_json::to_value(&results)?,
        &report::table(&results),
        &json_path,
    )
}

/// The run's figures known only at its end: duration, load, other programs' share, pgvector.
async fn finish_meta(
    meta: &mut Meta,
    db: &Client,
    started: Instant,
    phases: &[PhaseUsage],
) -> Result<()> {
    meta.pgvector_version = db
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    meta.duration_s = started.elapsed().as_secs_f64();
    meta.load_avg_end = probe::load_avg();
    meta.other_cores_max = phases
        .iter()
        .filter_map(|p| p.usage.other_cores)
        .reduce(f64::max);
    Ok(())
}

/// Stops the embedded cluster (if any) and removes the scratch directory.
async fn stop_scratch(scratch: Scratch) -> Result<()> {
    let pb = bar("stopping", 1);
    tokio::task::spawn_blocking(move || drop(scratch)).await?;
    done(pb, "done".into());
    Ok(())
}

/// Phase 7: single inserts into vectorizer B alone, then while vectorizer A backfills.
async fn fairness_phase(
    db: &Client,
    launcher: &Launcher,
    watched: Watched,
    plan: &Plan,
    args: &BenchArgs,
) -> Result<(fairness::Fairness, Stopped)> {
    let pb = bar(
        &format!("fairness, {} rows backfilled", plan.fairness_rows),
        (3 + 2 * plan.fairness_singles) as u64,
    );
    let (fair, stopped) = fairness::run(
        db,
        &fairness::Setup {
            launcher,
            watched,
            backfill_rows: plan.fairness_rows,
            singles: plan.fairness_singles,
            rate: args.fairness_rate,
        },
        &pb,
    )
    .await?;
    done(
        pb,
        format!(
            "B alone P50 {} P99 {}; while A backfills ({:.0} rows/s) P50 {} P99 {}",
            ms(fair.idle.db_ms.p50),
            ms(fair.idle.db_ms.p99),
            fair.backfill.rows_per_s,
            ms(fair.loaded.db_ms.p50),
            ms(fair.loaded.db_ms.p99)
        ),
    );
    Ok((fair, stopped))
}

#[allow(clippy::too_many_arguments)]
async fn latency_run(
    db: &Client,
    ready: &ReadyListener,
    table: &Table,
    daemon: &DaemonProc,
    profile: Profile,
    mode: Mode,
    texts: &[String],
    args: &BenchArgs,
    plan: &Plan,
    postmaster: Option<u32>,
) -> Result<LatencyRun> {
    let pb = bar(
        &format!("latency, {}, {}", profile.name(), mode.name()),
        texts.len() as u64,
    );
    let before = Probe::now(Watched {
        daemon: Some(daemon.pid),
        postmaster,
    });
    // Ids are unique across the run: the listener hears every table's announcements.
    let prefix = format!("{}{}", &profile.name()[..1], &mode.name()[..1]);
    let rate = match profile {
        Profile::Short => args.rate,
        Profile::Long => args.rate_long,
    };
    let latencies =
        latency::steady(db, ready, table, &prefix, texts, rate, plan.warmup, &pb).await?;
    let usage = before.until(&Probe::now(Watched {
        daemon: Some(daemon.pid),
        postmaster,
    }));
    let c = &latencies.client_ms;
    done(
        pb,
        format!(
            "P50 {}  P95 {}  P99 {}  max {}",
            ms(c.p50),
            ms(c.p95),
            ms(c.p99),
            ms(c.max)
        ),
    );
    Ok(LatencyRun {
        profile,
        mode,
        rate_per_s: rate,
        warmup: plan.warmup,
        latencies,
        usage,
    })
}

/// CPU of the (now idle) immediate daemon and of a fresh polling daemon on the same table,
/// over the same window; returns both as % of one core, and the polling daemon's record.
async fn idle_window(
    launcher: &Launcher,
    daemon: &DaemonProc,
    table: &Table,
    window: Duration,
) -> Result<(Option<f64>, Option<f64>, Stopped)> {
    let pb = bar(
        &format!("idle CPU, {:.0} s", window.as_secs_f64()),
        window.as_secs().max(1),
    );
    let poller = launcher
        .start("short-polling-idle", table.name(), true)
        .await?;
    // Let the polling daemon's start-up and the burst's tail settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a0, b0, t0) = (daemon.cpu_s(), poller.cpu_s(), Instant::now());
    let end = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep_until(end.min(tokio::time::Instant::now() + Duration::from_secs(1)))
            .await;
        pb.set_position(t0.elapsed().as_secs());
    }
    let wall = t0.elapsed().as_secs_f64();
    let pct = |a: Option<f64>, b: Option<f64>| b.zip(a).map(|(b, a)| (b - a) / wall * 100.0);
    let imm = pct(a0, daemon.cpu_s());
    let poll = pct(b0, poller.cpu_s());
    let poll_stopped = poller.stop().await?;
    done(
        pb,
        format!(
            "immediate {} %, polling {} % of a core",
            report_pct(imm),
            report_pct(poll)
        ),
    );
    Ok((imm, poll, poll_stopped))
}

fn report_pct(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
}

/// Writes the JSON, the table (.txt) and the plot (.svg), and prints the table.
fn write_outputs(doc: &serde_json::Value, text: &str, json: &Path) -> Result<()> {
    std::fs::write(json, serde_json::to_string_pretty(doc)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let txt = json.with_extension("txt");
    std::fs::write(&txt, text).with_context(|| format!("writing {}", txt.display()))?;
    let svg_path = json.with_extension("svg");
    std::fs::write(&svg_path, plot(doc))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    println!("{text}");
    println!(
        "wrote {}, {}, {}",
        json.display(),
        txt.display(),
        svg_path.display()
    );
    Ok(())
}

/// The latency plot of a results document (the run's own, or one read back by --replot).
fn plot(doc: &serde_json::Value) -> String {
    let empty = Vec::new();
    let samples = |v: &serde_json::Value| -> Vec<f64> {
        let mut s: Vec<f64> = v
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|x| x.as_f64())
            .collect();
        s.sort_by(f64::total_cmp);
        s
    };
    let mut owned: Vec<(String, &str, bool, Vec<f64>)> = Vec::new();
    let colors = [("short", "#1f77b4"), ("long", "#d62728")];
    for (profile, color) in colors {
        for mode in ["immediate", "polling"] {
            let run = doc["latency"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .find(|r| r["profile"] == profile && r["mode"] == mode);
            if let Some(run) = run {
                let label = format!("{profile}, {mode} ({}/s)", run["rate_per_s"]);
                owned.push((label, color, mode == "polling", samples(&run["samples_ms"])));
            }
        }
    }
    for b in doc["burst"].as_array().unwrap_or(&empty) {
        let profile = b["profile"].as_str().unwrap_or("?");
        let label = format!("{profile}: singles during a {}-row burst", b["rows"]);
        owned.push((
            label,
            "#2ca02c",
            profile == "long",
            samples(&b["trickle"]["samples_ms"]),
        ));
    }
    let fair = &doc["fairness"];
    for (run, label, dashed) in [
        ("idle", "vectorizer B alone", false),
        ("loaded", "vectorizer B while A backfills", true),
    ] {
        if fair[run].is_object() {
            let label = format!("{label} (database clock)");
            owned.push((label, "#9467bd", dashed, samples(&fair[run]["samples_ms"])));
        }
    }
    let series: Vec<svg::Series> = owned
        .iter()
        .map(|(label, color, dashed, s)| svg::Series {
            label: label.clone(),
            color,
            dashed: *dashed,
            samples: s,
        })
        .collect();
    let m = &doc["meta"];
    svg::cdf(
        "pgai-trigger: insert commit → vector written and announced",
        &format!(
            "{} cores, PostgreSQL {} fsync {}, {} UTC{}",
            m["cores"],
            m["postgres_version"].as_str().unwrap_or("?"),
            m["fsync"].as_str().unwrap_or("?"),
            m["started_utc"].as_str().unwrap_or("?"),
            if m["quick"] == true {
                " (quick run)"
            } else {
                ""
            }
        ),
        &series,
        &[(8.0, "P50 target 8 ms"), (25.0, "P99 target 25 ms")],
    )
}

/// Redraws the SVG next to an earlier run's JSON.
fn replot(json: &Path) -> Result<()> {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?,
    )?;
    let svg_path = json.with_extension("svg");
    std::fs::write(&svg_path, plot(&doc))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    println!("wrote {}", svg_path.display());
    Ok(())
}
