//! The `pgai-trigger` binary: the CLI edge. Library errors become one line on stderr and a
//! non-zero exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use pgai_trigger::cluster::{Cluster, ClusterConfig, Started};
use pgai_trigger::schema::{self, Table};
use pgai_trigger::{Config, Daemon, EmbedService};

/// pgai-trigger: PostgreSQL rows get their vector embeddings within milliseconds of commit.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start an embedded PostgreSQL with pgvector, apply the schema and run the daemon in the
    /// foreground. Prints DATABASE_URL=… and HTTP=… lines. Ctrl-C / SIGTERM stops both.
    Up(UpArgs),
    /// Run the daemon against an existing PostgreSQL (with pgvector and `db init` applied).
    Serve(ServeArgs),
    /// Schema management.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Data directory of the embedded cluster (created on first run, reused after).
    #[arg(long, env = "PGAI_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Port of the embedded PostgreSQL (listens on 127.0.0.1 only).
    #[arg(long, env = "PGAI_PG_PORT", default_value_t = 54329)]
    pg_port: u16,
    /// Database to create in the embedded cluster.
    #[arg(long, default_value = "pgai")]
    database: String,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// PostgreSQL connection URL, e.g. postgresql://user:pass@host:5432/db.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Args, Clone)]
struct DaemonArgs {
    /// HTTP address for /healthz, /readyz and /v1/stats. Loopback by default.
    #[arg(long, env = "PGAI_HTTP", default_value = "127.0.0.1:8760")]
    http: SocketAddr,
    /// Table to keep embedded.
    #[arg(long, env = "PGAI_TABLE", default_value = schema::DEFAULT_TABLE)]
    table: String,
    /// Poll only, no LISTEN (for PgBouncer in transaction mode). Same results, slower pickup.
    #[arg(long, env = "PGAI_POLLING")]
    polling: bool,
    /// Fallback poll interval in milliseconds: a lost notification costs at most this long.
    #[arg(long, env = "PGAI_POLL_INTERVAL_MS", default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Most rows per claim and model batch.
    #[arg(long, env = "PGAI_BATCH_SIZE", default_value_t = 32)]
    batch_size: usize,
    /// Claim lease in seconds; a crashed daemon's rows are taken over after it.
    #[arg(long, env = "PGAI_LEASE_SECS", default_value_t = 30)]
    lease_secs: u64,
    /// Attempts before a row is marked failed.
    #[arg(long, env = "PGAI_MAX_RETRIES", default_value_t = 3)]
    max_retries: i32,
    /// Base retry backoff in seconds (doubles per attempt).
    #[arg(long, env = "PGAI_RETRY_INTERVAL", default_value_t = 5.0)]
    retry_interval: f64,
    /// Model threads (default: all cores).
    #[arg(long, env = "PGAI_THREADS")]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Create the extension, table, indexes and triggers that are missing (idempotent).
    Init(DbArgs),
    /// Drop the table (all rows!) and create it again.
    Recreate(DbArgs),
    /// Print what is there, as JSON.
    Status(DbArgs),
}

#[derive(Args)]
struct DbArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Table to manage.
    #[arg(long, env = "PGAI_TABLE", default_value = schema::DEFAULT_TABLE)]
    table: String,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
    s.replace('\n', " ")
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Serve(args) => serve(args.database_url, args.daemon).await,
        Command::Db { command } => db(command).await,
    }
}

impl DaemonArgs {
    fn config(&self, database_url: String) -> Result<Config> {
        let mut c = Config::new(database_url);
        c.table = Table::new(&self.table)?;
        c.immediate_trigger = !self.polling;
        c.poll_interval = Duration::from_millis(self.poll_interval_ms);
        c.batch_size = self.batch_size;
        c.lease = Duration::from_secs(self.lease_secs);
        c.max_retries = self.max_retries;
        c.retry_interval = Duration::from_secs_f64(self.retry_interval.max(0.0));
        c.validate()?;
        Ok(c)
    }

    fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
    }
}

async fn serve(database_url: String, args: DaemonArgs) -> Result<()> {
    let config = args.config(database_url)?;
    let embed = EmbedService::start_default(args.threads()).await?;
    let daemon = Daemon::start(config, embed).await?;
    let stop = daemon.shutdown_token();
    let router = pgai_trigger::http::router(daemon.monitor.clone(), daemon.config().immediate_trigger);
    let (addr, http_task) = pgai_trigger::http::serve(args.http, router, stop.clone())
        .await
        .with_context(|| format!("cannot bind HTTP address {}", args.http))?;
    println!("HTTP=http://{addr}");
    daemon.run_until(shutdown_signal()).await;
    stop.cancel();
    let _ = http_task.await;
    Ok(())
}

async fn up(args: UpArgs) -> Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(|| pgai_embed::dist::home().join("data"));
    let cfg = ClusterConfig {
        pg_dir: ClusterConfig::default_pg_dir(),
        data_dir,
        port: args.pg_port,
        extra_settings: vec![],
    };
    let cluster = tokio::task::spawn_blocking(move || -> Result<Cluster> {
        let cluster = Cluster::new(cfg)?;
        if cluster.init()? {
            eprintln!("initialised a new cluster in {}", cluster.data_dir().display());
        }
        match cluster.start()? {
            Started::Fresh => {}
            Started::Reused => eprintln!("reusing the cluster already running on {}", cluster.data_dir().display()),
        }
        Ok(cluster)
    })
    .await??;
    let result = up_with(&cluster, &args).await;
    let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await?;
    result?;
    stopped?;
    Ok(())
}

async fn up_with(cluster: &Cluster, args: &UpArgs) -> Result<()> {
    schema::validate_identifier(&args.database).context("--database")?;
    let (admin, _task) = pgai_trigger::db::connect(&cluster.url("postgres"), "pgai-trigger up").await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&args.database])
        .await?
        .is_some();
    if !exists {
        admin.batch_execute(&format!("CREATE DATABASE {}", schema::quote_ident(&args.database))).await?;
    }
    drop(admin);
    let url = cluster.url(&args.database);
    let (client, _task) = pgai_trigger::db::connect(&url, "pgai-trigger up").await?;
    let table = Table::new(&args.daemon.table)?;
    schema::init(&client, &table, pgai_embed::DIM).await?;
    drop(client);
    println!("DATABASE_URL={url}");
    serve(url, args.daemon.clone()).await
}

async fn db(cmd: DbCommand) -> Result<()> {
    let (args, action) = match &cmd {
        DbCommand::Init(a) => (a, "init"),
        DbCommand::Recreate(a) => (a, "recreate"),
        DbCommand::Status(a) => (a, "status"),
    };
    let table = Table::new(&args.table)?;
    let (client, _task) = pgai_trigger::db::connect(&args.database_url, "pgai-trigger db").await?;
    match action {
        "init" => {
            schema::init(&client, &table, pgai_embed::DIM).await?;
            println!("schema ready: table {}", table.name());
        }
        "recreate" => {
            schema::recreate(&client, &table, pgai_embed::DIM).await?;
            println!("schema recreated: table {}", table.name());
        }
        _ => {
            let st = schema::status(&client, &table).await?;
            println!("{}", serde_json::to_string_pretty(&st)?);
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    eprintln!("stopping");
}

