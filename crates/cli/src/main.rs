//! The `pgai-trigger` binary: the CLI edge. Settings come from the YAML file, then the
//! environment, then flags; library errors become one line on stderr and a non-zero exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use pgai_cluster::{Cluster, ClusterConfig, Started};
use pgai_trigger::Settings;
use pgai_trigger::{schema, Table};

mod bench;
mod cli {
    pub mod ops;
    pub mod run;
    pub mod vectorizer;
}

/// pgai-trigger: PostgreSQL rows get their vector embeddings within milliseconds of commit.
///
/// Settings are read from a YAML file (--config, $PGAI_CONFIG, else ./pgai-trigger.yaml or
/// /etc/pgai-trigger/config.yaml when present), then environment variables, then flags; each
/// overrides the one before. Commands that print data print JSON on stdout.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// YAML configuration file (keys: database.{url, table, pgai.*}, http.*, embedding.*;
    /// see the README). An unknown key or a wrong type is refused. Env: PGAI_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start an embedded PostgreSQL with pgvector, apply the schema and run the daemon in the
    /// foreground. Prints DATABASE_URL=… (with the superuser's generated password, kept in
    /// <data-dir>.password, mode 0600) and HTTP=… lines. Ctrl-C / SIGTERM stops both.
    Up(UpArgs),
    /// Run the daemon (and the HTTP API) against an existing PostgreSQL with pgvector and
    /// `db init` applied.
    Serve(ServeArgs),
    /// Schema management.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Insert a row (or update the row with that id). Prints {"id", "status"}; with --wait,
    /// the embedded row once its vector is written.
    Add(cli::ops::AddArgs),
    /// The rows nearest to QUERY by cosine distance, best first, as JSON. Embeds the query
    /// in-process with the configured model.
    Search(cli::ops::SearchArgs),
    /// Processing stats from the database, as JSON: counts by status, queue depth, oldest
    /// pending age, latency P50/P95/P99 (commit → vector), throughput per minute, retries.
    Stats(ConnArgs),
    /// Health as JSON (database, schema, daemons connected, queue age). Exits 1 when unhealthy.
    Health(ConnArgs),
    /// Move rows marked failed back to pending with a fresh attempt count and wake the daemons.
    /// Prints {"retried": N}.
    RetryFailed(ConnArgs),
    /// Vectorizers: named declarations of what to embed from a table (a column or a template
    /// over columns, chunking, a chunk table or a vector column), kept in the database's
    /// catalog and served by every daemon of their model.
    Vectorizer {
        #[command(subcommand)]
        command: cli::vectorizer::VectorizerCommand,
    },
    /// Embed every pending row now, in this process, with a progress bar (rows, rate, ETA) on
    /// stderr; prints a JSON summary. Runs alongside any daemons safely.
    Backfill(cli::ops::BackfillArgs),
    /// The benchmark: commit → vector latency in immediate and polling mode, burst throughput,
    /// and the model's raw speed, in one run.
    Bench(crate::bench::BenchArgs),
}

/// How to reach the database; every command that talks to one takes these.
#[derive(Args, Clone, Default)]
pub struct ConnArgs {
    /// PostgreSQL connection URL, e.g. postgresql://user:pass@host:5432/db. Also database.url
    /// in the config file. The password is never printed. Env: DATABASE_URL.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Table holding the texts and their embeddings. Env: PGAI_TABLE.
    #[arg(long)]
    pub table: Option<String>,
}

#[derive(Args)]
struct SchemaArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// How writes wake the daemon: per-row (one NOTIFY per row, carrying its id: the lowest
    /// latency) or per-statement (one NOTIFY per statement: for tables loaded in large batches,
    /// where a NOTIFY per row makes concurrent commits queue on the server's notify lock).
    #[arg(long, default_value = "per-row")]
    notify: pgai_trigger::NotifyMode,
}

#[derive(Args)]
struct UpArgs {
    /// Data directory of the embedded cluster (created on first run, reused after). The
    /// superuser's password is kept next to it, in <data-dir>.password (mode 0600).
    #[arg(long, env = "PGAI_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Port of the embedded PostgreSQL (listens on 127.0.0.1 only).
    #[arg(long, env = "PGAI_PG_PORT", default_value_t = 54329)]
    pg_port: u16,
    /// Database to create in the embedded cluster.
    #[arg(long, default_value = "pgai")]
    database: String,
    /// Table to keep embedded. Env: PGAI_TABLE.
    #[arg(long)]
    table: Option<String>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// Daemon flags. Each overrides its environment variable and the config file.
#[derive(Args, Clone, Default)]
pub struct DaemonArgs {
    /// HTTP address of the API and /metrics (config: http.address; env: PGAI_HTTP). A bearer
    /// token comes from PGAI_HTTP_TOKEN or http.token only (never a flag: argv is public).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Poll only, no LISTEN (for PgBouncer in transaction mode): same results, pickup within one
    /// poll interval (config: database.pgai.immediate_trigger: false; env: PGAI_POLLING=true).
    #[arg(long)]
    pub polling: bool,
    /// Fallback poll interval in milliseconds: a lost notification costs at most this long.
    /// Env: PGAI_POLL_INTERVAL_MS.
    #[arg(long, value_name = "MS")]
    pub poll_interval_ms: Option<u64>,
    /// Most rows per claim and model batch. Env: PGAI_BATCH_SIZE.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Claim lease in seconds; a crashed daemon's rows are taken over after it.
    /// Env: PGAI_LEASE_SECS.
    #[arg(long, value_name = "SECS")]
    pub lease_secs: Option<u64>,
    /// Attempts before a row is marked failed. Env: PGAI_MAX_RETRIES.
    #[arg(long, value_name = "N")]
    pub max_retries: Option<i32>,
    /// Base retry backoff in seconds, doubling per attempt. Env: PGAI_RETRY_INTERVAL.
    #[arg(long, value_name = "SECS")]
    pub retry_interval: Option<f64>,
    /// Model threads (config: database.pgai.worker_count; env: PGAI_THREADS) [default: all
    /// cores].
    #[arg(long, visible_alias = "worker-count", value_name = "N")]
    pub threads: Option<usize>,
}

impl DaemonArgs {
    fn apply(&self, s: &mut Settings) {
        let p = &mut s.database.pgai;
        if self.polling {
            p.immediate_trigger = false;
        }
        set(&mut p.poll_interval_ms, self.poll_interval_ms);
        set(&mut p.batch_size, self.batch_size);
        set(&mut p.lease_secs, self.lease_secs);
        set(&mut p.max_retries, self.max_retries);
        set(&mut p.retry_interval, self.retry_interval);
        if self.threads.is_some() {
            p.worker_count = self.threads;
        }
        set(&mut s.http.address, self.http);
    }
}

impl ConnArgs {
    fn apply(&self, s: &mut Settings) {
        if self.database_url.is_some() {
            s.database.url = self.database_url.clone();
        }
        set(&mut s.database.table, self.table.clone());
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

#[derive(Subcommand)]
enum DbCommand {
    /// Create the extension, table, indexes and triggers that are missing (idempotent). Run as
    /// the table's owner.
    Init(SchemaArgs),
    /// Drop the table (all rows!) and create it again.
    Recreate(SchemaArgs),
    /// Print what is there, as JSON.
    Status(ConnArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let matches = with_defaults(Cli::command()).try_get_matches();
    let cli = match matches.and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        // A usage error on one line, like every other error (help and version as clap prints
        // them).
        Err(e)
            if e.use_stderr()
                && e.kind() != clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            eprintln!("{}", clap_one_line(&e));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Appends `[default: …]` to the help of each settings flag, from the library's one table of
/// defaults (the flags themselves have no clap default: unset, the file and environment decide).
fn with_defaults(mut cmd: clap::Command) -> clap::Command {
    use pgai_trigger::defaults as d;
    let notes = [
        ("table", d::TABLE.to_string()),
        (
            "http",
            std::net::SocketAddr::from(d::HTTP_ADDRESS).to_string(),
        ),
        ("poll_interval_ms", d::POLL_INTERVAL_MS.to_string()),
        ("batch_size", d::BATCH_SIZE.to_string()),
        ("lease_secs", d::LEASE_SECS.to_string()),
        ("max_retries", d::MAX_RETRIES.to_string()),
        ("retry_interval", d::RETRY_INTERVAL_SECS.to_string()),
    ];
    for (id, value) in &notes {
        if cmd.get_arguments().any(|a| a.get_id() == id) {
            cmd = cmd.mut_arg(*id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help} [default: {value}]"))
            });
        }
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, with_defaults);
    }
    cmd
}

/// clap's message without its usage block: the lines before `Usage:`, joined.
fn clap_one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" ")
}

/// The error and its causes on one line, without repeats.
fn one_line(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !s.contains(&c) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&c);
        }
    }
    pgai_trigger::one_line(&s)
}

async fn run(cli: Cli) -> Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Up(args) => up(args, settings).await,
        Command::Serve(args) => {
            args.conn.apply(&mut settings);
            args.daemon.apply(&mut settings);
            cli::run::serve(settings).await
        }
        Command::Db { command } => db(command, settings).await,
        Command::Add(a) => cli::ops::add(a, settings).await,
        Command::Search(a) => cli::ops::search(a, settings).await,
        Command::Stats(c) => cli::ops::stats(c, settings).await,
        Command::Health(c) => cli::ops::health(c, settings).await,
        Command::RetryFailed(c) => cli::ops::retry_failed(c, settings).await,
        Command::Backfill(a) => cli::ops::backfill(a, settings).await,
        Command::Vectorizer { command } => cli::vectorizer::run(command, settings).await,
        Command::Bench(a) => crate::bench::run(a).await,
    }
}

async fn up(args: UpArgs, mut settings: Settings) -> Result<()> {
    args.daemon.apply(&mut settings);
    set(&mut settings.database.table, args.table.clone());
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| pgai_embed::dist::home().join("data"));
    let cfg = ClusterConfig {
        pg_dir: ClusterConfig::default_pg_dir(),
        data_dir,
        port: args.pg_port,
        extra_settings: vec![],
    };
    let cluster = tokio::task::spawn_blocking(move || -> Result<Cluster> {
        let cluster = Cluster::new(cfg)?;
        if cluster.init()? {
            eprintln!(
                "initialised a new cluster in {} (superuser password in {})",
                cluster.data_dir().display(),
                cluster.password_file().display()
            );
        }
        match cluster.start()? {
            Started::Fresh => {}
            Started::Reused => eprintln!(
                "reusing the cluster already running on {}",
                cluster.data_dir().display()
            ),
        }
        Ok(cluster)
    })
    .await??;
    let result = up_with(&cluster, &args, settings).await;
    let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await?;
    result?;
    stopped?;
    Ok(())
}

async fn up_with(cluster: &Cluster, args: &UpArgs, mut settings: Settings) -> Result<()> {
    pgai_trigger::validate_identifier(&args.database).context("--database")?;
    let (admin, _task) =
        pgai_trigger::connect(&cluster.url("postgres"), "pgai-trigger-client up").await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&args.database],
        )
        .await?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {}",
                pgai_trigger::quote_ident(&args.database)
            ))
            .await?;
    }
    drop(admin);
    let url = cluster.url(&args.database);
    let (client, _task) = pgai_trigger::connect(&url, "pgai-trigger-client up").await?;
    let table = settings.table()?;
    schema::init(&client, &table, pgai_embed::DIM).await?;
    drop(client);
    println!("DATABASE_URL={url}");
    settings.database.url = Some(url);
    cli::run::serve(settings).await
}

async fn db(cmd: DbCommand, mut settings: Settings) -> Result<()> {
    let (args, action, notify) = match &cmd {
        DbCommand::Init(a) => (&a.conn, "init", a.notify),
        DbCommand::Recreate(a) => (&a.conn, "recreate", a.notify),
        DbCommand::Status(a) => (a, "status", pgai_trigger::NotifyMode::PerRow),
    };
    args.apply(&mut settings);
    let table: Table = settings.table()?;
    let (client, _task) =
        pgai_trigger::connect(settings.database_url()?, "pgai-trigger-client db").await?;
    let dim = settings.embedding.dimensions.unwrap_or(pgai_embed::DIM);
    match action {
        "init" => {
            schema::init_with(&client, &table, dim, notify).await?;
            println!("schema ready: table {}", table.name());
        }
        "recreate" => {
            schema::recreate_with(&client, &table, dim, notify).await?;
            println!("schema recreated: table {}", table.name());
        }
        _ => {
            let st = schema::status(&client, &table).await?;
            println!("{}", serde_json::to_string_pretty(&st)?);
        }
    }
    Ok(())
}
