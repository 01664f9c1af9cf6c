//! `pgai-trigger vectorizer …`: create, list, show, alter and drop vectorizers. Each calls the
//! catalog's SQL functions through the library, so the database refuses bad declarations with
//! its own one-line message.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use pgai_trigger::vectorizer::{admin, VectorizerSpec, VectorizerStatus};
use pgai_trigger::Settings;
use serde_json::json;

use super::ops::print_json;

#[derive(Subcommand)]
pub enum VectorizerCommand {
    /// Declare a vectorizer: capture triggers on the source, a queue, the destination (chunk
    /// table or vector column), and a backfill of every existing row. Prints its catalog row.
    Create(CreateArgs),
    /// Every vectorizer with its status: a table (or --json).
    List(ListArgs),
    /// One vectorizer as JSON: its catalog row and its status.
    Show(NameArgs),
    /// Move a vectorizer to another model: every row is embedded again; old vectors stay (and
    /// are not searched) until replaced. A different dimension needs drop and create.
    Alter(AlterArgs),
    /// Remove a vectorizer: its triggers, queue and catalog row, and its chunk table or created
    /// vector column unless --keep-embeddings.
    Drop(DropArgs),
}

/// The database only: vectorizers name their own tables.
#[derive(Args, Clone, Default)]
pub struct DbArgs {
    /// PostgreSQL connection URL (also database.url in the config file). Env: DATABASE_URL.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Name: lower-case letters, digits and _, at most 40 characters.
    pub name: String,
    /// Source table (`name` or `schema.name`); it needs a primary key.
    #[arg(long, value_name = "TABLE")]
    pub table: String,
    /// Embed this column's text (the same as --template '{COL}').
    #[arg(long, value_name = "COL")]
    pub column: Option<String>,
    /// Text to embed, with {column} placeholders and {{ }} for literal braces. Taken as given:
    /// the two characters \n stay two characters; in a shell, $'{title}\n{body}' gives a
    /// newline.
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// Cut the text into chunks of N word pieces (3..256, counting [CLS] and [SEP]); one vector
    /// per chunk.
    #[arg(long, value_name = "N")]
    pub chunk_tokens: Option<i32>,
    /// Word pieces shared by consecutive chunks [default: least(32, (N-3)/2)].
    #[arg(long, value_name = "M")]
    pub chunk_overlap: Option<i32>,
    /// Where the vectors go: table (a chunk table <name>_chunks), table:NAME,
    /// table:SCHEMA.NAME, or column:COL (a vector column on the source row; no chunking)
    /// [default: table].
    #[arg(long, value_name = "DEST")]
    pub destination: Option<String>,
    /// Embedding model [default: sentence-transformers/all-MiniLM-L6-v2]. A daemon embeds the
    /// vectorizers of its own model.
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// Vector dimensions [default: 384].
    #[arg(long, value_name = "D")]
    pub dimensions: Option<i32>,
    /// Vector index: hnsw or none [default: hnsw].
    #[arg(long, value_name = "hnsw|none")]
    pub index: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Args)]
pub struct ListArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Args)]
pub struct NameArgs {
    pub name: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Args)]
pub struct AlterArgs {
    pub name: String,
    /// The new model.
    #[arg(long, value_name = "M")]
    pub model: String,
    /// Its dimensions (must equal the current ones).
    #[arg(long, value_name = "D")]
    pub dimensions: Option<i32>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Args)]
pub struct DropArgs {
    pub name: String,
    /// Keep the chunk table (and its view) or the created vector column.
    #[arg(long)]
    pub keep_embeddings: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

async fn connect(db: &DbArgs, mut settings: Settings) -> Result<tokio_postgres::Client> {
    if db.database_url.is_some() {
        settings.database.url = db.database_url.clone();
    }
    let (client, task) =
        pgai_trigger::connect(settings.database_url()?, "pgai-trigger-client vectorizer").await?;
    // The connection task ends with the process; nothing waits for it.
    drop(task);
    Ok(client)
}

pub async fn run(cmd: VectorizerCommand, settings: Settings) -> Result<()> {
    match cmd {
        VectorizerCommand::Create(a) => {
            let spec = VectorizerSpec {
                name: a.name,
                table: a.table,
                column: a.column,
                template: a.template,
                chunk_tokens: a.chunk_tokens,
                chunk_overlap: a.chunk_overlap,
                destination: a.destination,
                model: a.model,
                dimensions: a.dimensions,
                index: a.index,
            };
            // Refused before connecting when the flags alone say so.
            spec.validate()?;
            let client = connect(&a.db, settings).await?;
            print_json(&admin::create(&client, &spec).await?)
        }
        VectorizerCommand::List(a) => {
            let client = connect(&a.db, settings).await?;
            let all = admin::list_status(&client).await?;
            if a.json {
                print_json(&all)
            } else {
                print_text(&table(&all))
            }
        }
        VectorizerCommand::Show(a) => {
            let client = connect(&a.db, settings).await?;
            match admin::info(&client, &a.name).await? {
                Some(info) => print_json(&info),
                None => bail!("no vectorizer named {:?}", a.name),
            }
        }
        VectorizerCommand::Alter(a) => {
            let client = connect(&a.db, settings).await?;
            print_json(&admin::alter_model(&client, &a.name, &a.model, a.dimensions).await?)
        }
        VectorizerCommand::Drop(a) => {
            let client = connect(&a.db, settings).await?;
            admin::drop(&client, &a.name, a.keep_embeddings).await?;
            print_json(&json!({"dropped": a.name, "kept_embeddings": a.keep_embeddings}))
        }
    }
}

fn print_text(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match write!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// The list as an aligned text table, one vectorizer a line.
fn table(all: &[VectorizerStatus]) -> String {
    let opt = |v: Option<f64>, digits: usize| match v {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    };
    let mut rows = vec![[
        "NAME",
        "SOURCE",
        "DESTINATION",
        "ROWS",
        "EMBEDDED",
        "PENDING",
        "PROCESSING",
        "FAILED",
        "COVERAGE %",
        "LAG S",
        "P50/P99 MS",
        "PER MIN",
        "LAST ERROR",
    ]
    .map(String::from)];
    for s in all {
        rows.push([
            s.name.clone(),
            s.source.clone(),
            s.destination.clone(),
            s.rows.to_string(),
            s.embedded.to_string(),
            s.pending.to_string(),
            s.processing.to_string(),
            s.failed.to_string(),
            opt(s.coverage_pct, 1),
            opt(s.lag_secs, 1),
            format!("{}/{}", opt(s.latency_p50_ms, 0), opt(s.latency_p99_ms, 0)),
            s.throughput_per_min.to_string(),
            s.last_error
                .as_deref()
                .map(|e| pgai_trigger::one_line(e).chars().take(60).collect())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..13)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                // Numbers right-aligned, text left-aligned.
                if (3..12).contains(&i) {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if all.is_empty() {
        out.push_str("(no vectorizers)\n");
    }
    out
}
