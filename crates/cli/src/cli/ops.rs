//! The operator commands on rows: add, search, stats, health, retry-failed, backfill. Each
//! prints JSON on stdout (scripts read it) and errors on stderr.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use pgai_trigger::Daemon;
use pgai_trigger::Settings;
use pgai_trigger::{NewItem, Store, StoreFactory};
use serde_json::json;

use crate::{ConnArgs, DaemonArgs};

#[derive(Args)]
pub struct AddArgs {
    /// The text to store and embed.
    pub text: String,
    /// Row id [default: 32 random hex digits]. An existing id is updated; a changed text is
    /// embedded again.
    #[arg(long)]
    pub id: Option<String>,
    /// Metadata, a JSON object, e.g. '{"user": "maria", "kind": "note"}'.
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,
    /// Return only once the row's vector is written (needs a running daemon); prints the row.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub timeout: f64,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct SearchArgs {
    /// The text to search for.
    pub query: String,
    /// How many rows to return.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Only rows whose metadata contains this JSON object, e.g. '{"user": "maria"}'. With
    /// --vectorizer: source rows whose columns equal these values, e.g. '{"author": "maria"}'.
    #[arg(long, value_name = "JSON")]
    pub filter: Option<String>,
    /// Search this vectorizer's vectors (prints each hit's source key, score and chunk text)
    /// instead of the table's.
    #[arg(long, value_name = "NAME")]
    pub vectorizer: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

async fn store(conn: &ConnArgs, mut settings: Settings) -> Result<Store> {
    conn.apply(&mut settings);
    Ok(StoreFactory::create(&settings).await?)
}

/// Pretty JSON on stdout; a reader that went away (`| head`) is not an error.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v)?;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn parse_object(flag: &str, text: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("{flag} is not valid JSON"))?;
    if !v.is_object() {
        bail!("{flag} must be a JSON object, like '{{\"key\": \"value\"}}'");
    }
    Ok(v)
}

pub async fn add(a: AddArgs, settings: Settings) -> Result<()> {
    let store = store(&a.conn, settings).await?;
    let mut item = NewItem::new(a.text);
    item.id = a.id;
    item.metadata = a
        .metadata
        .as_deref()
        .map(|m| parse_object("--metadata", m))
        .transpose()?;
    if a.wait {
        if !(a.timeout.is_finite() && a.timeout > 0.0) {
            bail!("--timeout must be a number of seconds > 0");
        }
        let item = store
            .add_and_wait(item, Duration::from_secs_f64(a.timeout))
            .await?;
        print_json(&item)
    } else {
        let id = store.add(item).await?;
        print_json(&json!({"id": id, "status": "pending"}))
    }
}

pub async fn search(a: SearchArgs, settings: Settings) -> Result<()> {
    let store = store(&a.conn, settings).await?;
    let filter = a
        .filter
        .as_deref()
        .map(|f| parse_object("--filter", f))
        .transpose()?;
    if let Some(name) = &a.vectorizer {
        let filters: Vec<(String, serde_json::Value)> = match filter {
            Some(serde_json::Value::Object(m)) => m.into_iter().collect(),
            _ => Vec::new(),
        };
        return match store
            .search_vectorizer(name, &a.query, a.k, &filters)
            .await?
        {
            Some(found) => print_json(&json!({
                "query": a.query,
                "vectorizer": found.vectorizer,
                "model": found.model,
                "not_migrated": found.not_migrated,
                "results": found.results,
            })),
            None => bail!("no vectorizer named {name:?}"),
        };
    }
    let hits = store.search(&a.query, a.k, filter.as_ref()).await?;
    print_json(&json!({"query": a.query, "results": hits}))
}

pub async fn stats(c: ConnArgs, settings: Settings) -> Result<()> {
    print_json(&store(&c, settings).await?.processing_stats().await?)
}

pub async fn health(c: ConnArgs, settings: Settings) -> Result<()> {
    let h = store(&c, settings).await?.health_status().await;
    print_json(&h)?;
    if !h.is_healthy() {
        bail!("unhealthy: {}", h.failing().join(", "));
    }
    Ok(())
}

pub async fn retry_failed(c: ConnArgs, settings: Settings) -> Result<()> {
    let n = store(&c, settings).await?.retry_failed().await?;
    print_json(&json!({"retried": n}))
}

/// Runs a daemon in this process until no row is pending (rows waiting for a retry's backoff
/// end it too: they are reported), drawing progress from its counters and the queue.
pub async fn backfill(a: BackfillArgs, mut settings: Settings) -> Result<()> {
    a.daemon.apply(&mut settings);
    let store = store(&a.conn, settings.clone()).await?;
    let started = Instant::now();
    let queue = store.queue().await?;
    if queue.depth == 0 {
        return print_json(
            &json!({"embedded": 0, "failed_attempts": 0, "remaining": 0, "seconds": 0.0}),
        );
    }
    let embed = store.embedder().await?.clone();
    let daemon = Daemon::start(store.config().clone(), embed).await?;
    let bar = indicatif::ProgressBar::new(queue.depth as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  {per_sec}  ETA {eta}",
        )
        .expect("a valid template"),
    );
    let monitor = daemon.monitor().clone();
    let stop = crate::cli::run::shutdown_signal();
    tokio::pin!(stop);
    let mut interrupted = false;
    let remaining = loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = &mut stop => { interrupted = true; }
        }
        let q = store.queue().await?;
        let done = monitor.rows_embedded();
        bar.set_length(done + q.depth as u64);
        bar.set_position(done);
        if interrupted || q.depth == 0 || q.depth == q.waiting_retry {
            break q;
        }
    };
    bar.finish_and_clear();
    daemon.stop().await;
    let s = monitor.snapshot();
    print_json(&json!({
        "embedded": s.processed,
        "failed_attempts": s.failed_attempts,
        "remaining": remaining.depth,
        "waiting_retry": remaining.waiting_retry,
        "seconds": started.elapsed().as_secs_f64(),
        "interrupted": interrupted,
    }))
}
