//! The admin surface of vectorizers: create, alter, drop, status, a declarative `apply` (the
//! YAML file's `vectorizers:` list) and search by vectorizer.
//!
//! Every change goes through the SQL functions of the catalog (`pgai.create_vectorizer`, …), so
//! `psql`, this library, the command line and the daemon's start-up all create the same objects
//! and refuse the same input with the same message.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::{Destination, Vectorizer, CATALOG_COLUMNS};
use crate::error::{Error, Result};
use crate::queue::quote_ident;

/// The model a vectorizer gets when its declaration names none (the SQL function's default).
pub const DEFAULT_MODEL: &str = pgai_embed::MODEL_NAME;
/// Its dimensions.
pub const DEFAULT_DIMENSIONS: i32 = pgai_embed::DIM as i32;
/// The default index kind.
pub const DEFAULT_INDEX: &str = "hnsw";

/// A vectorizer as declared (command line flags, a YAML entry): what `create` is given.
///
/// ```yaml
/// vectorizers:
///   - name: docs_body
///     table: public.docs            # the source table
///     template: "{title}\n\n{body}" # or: column: body
///     chunk_tokens: 128             # optional: chunks of 128 word pieces
///     chunk_overlap: 16             # optional
///     destination: table            # table | table:NAME | table:SCHEMA.NAME | column:COL
///     model: sentence-transformers/all-MiniLM-L6-v2
///     dimensions: 384
///     index: hnsw                   # hnsw | none
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorizerSpec {
    pub name: String,
    /// The source table, `name` or `schema.name` (resolved on the search path).
    pub table: String,
    /// The one column to embed; the same as the template `{column}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// `{col}` placeholders, `{{`/`}}` for literal braces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_tokens: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_overlap: Option<i32>,
    /// `table` (default), `table:NAME`, `table:SCHEMA.NAME` or `column:COL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<i32>,
    /// `hnsw` (default) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
}

impl VectorizerSpec {
    /// The checks that need no database (the SQL function makes the rest), so a YAML list is
    /// refused as a whole before anything changes.
    pub fn validate(&self) -> Result<()> {
        let n = &self.name;
        let ok = !n.is_empty()
            && n.len() <= 40
            && n.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(Error::Config(format!(
                "vectorizer name {n:?} is not valid: lower-case letters, digits and _, starting with a letter or _, at most 40 characters"
            )));
        }
        if self.table.trim().is_empty() {
            return Err(Error::Config(format!(
                "vectorizer {n}: the source table is missing"
            )));
        }
        match (&self.column, &self.template) {
            (Some(_), Some(_)) => Err(Error::Config(format!(
                "vectorizer {n}: give either a column or a template, not both"
            ))),
            (None, None) => Err(Error::Config(format!(
                "vectorizer {n}: give a column or a template to embed"
            ))),
            _ => Ok(()),
        }
    }

    /// The template the catalog stores: `column` becomes `{column}`.
    fn template(&self) -> String {
        match (&self.column, &self.template) {
            (Some(c), _) => format!("{{{c}}}"),
            (None, Some(t)) => t.clone(),
            (None, None) => String::new(),
        }
    }
}

/// One row of the view `pgai.vectorizer_status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VectorizerStatus {
    pub name: String,
    pub source: String,
    pub destination: String,
    pub model: String,
    pub rows: i64,
    pub embedded: i64,
    pub pending: i64,
    pub processing: i64,
    pub failed: i64,
    pub not_queued: i64,
    pub coverage_pct: Option<f64>,
    pub lag_secs: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub throughput_per_min: i64,
    pub not_migrated: i64,
    pub last_error: Option<String>,
}

const STATUS_COLUMNS: &str = "name, source, destination, model, rows, embedded, pending, \
     processing, failed, not_queued, coverage_pct, lag_secs, latency_p50_ms, latency_p99_ms, \
     throughput_per_min, not_migrated, last_error";

impl VectorizerStatus {
    fn from_row(r: &tokio_postgres::Row) -> VectorizerStatus {
        VectorizerStatus {
            name: r.get(0),
            source: r.get(1),
            destination: r.get(2),
            model: r.get(3),
            rows: r.get::<_, Option<i64>>(4).unwrap_or(0),
            embedded: r.get::<_, Option<i64>>(5).unwrap_or(0),
            pending: r.get::<_, Option<i64>>(6).unwrap_or(0),
            processing: r.get::<_, Option<i64>>(7).unwrap_or(0),
            failed: r.get::<_, Option<i64>>(8).unwrap_or(0),
            not_queued: r.get::<_, Option<i64>>(9).unwrap_or(0),
            coverage_pct: r.get(10),
            lag_secs: r.get(11),
            latency_p50_ms: r.get(12),
            latency_p99_ms: r.get(13),
            throughput_per_min: r.get::<_, Option<i64>>(14).unwrap_or(0),
            not_migrated: r.get::<_, Option<i64>>(15).unwrap_or(0),
            last_error: r.get(16),
        }
    }
}

/// A PostgreSQL refusal as one line with the server's message: the input's fault
/// ([`Error::Config`]), or a database without the catalog ([`Error::Schema`]). Lost
/// connections stay [`Error::Db`] (transient).
pub fn map_db_error(e: tokio_postgres::Error) -> Error {
    let Some(db) = e.as_db_error() else {
        return Error::Db(e);
    };
    let code = db.code().code();
    // 42883 undefined function, 42P01 undefined table, 3F000 undefined schema: no `db init`.
    if matches!(code, "42883" | "42P01" | "3F000")
        && (db.message().contains("pgai.") || db.message().contains("\"pgai\""))
    {
        return Error::Schema(format!(
            "the vectorizer catalog is missing ({}): run `pgai-trigger db init` first",
            crate::error::one_line(db.message())
        ));
    }
    // Connection, resources, operator intervention: not the input's fault.
    if matches!(&code[..2], "08" | "53" | "57" | "58" | "40" | "XX") {
        return Error::Db(e);
    }
    let mut msg = db.message().to_string();
    if let Some(h) = db.hint() {
        msg.push_str(" (hint: ");
        msg.push_str(h);
        msg.push(')');
    }
    Error::Config(crate::error::one_line(&msg))
}

fn db<T>(r: std::result::Result<T, tokio_postgres::Error>) -> Result<T> {
    r.map_err(map_db_error)
}

/// The catalog row named `name`, if any (none when the catalog does not exist yet).
pub async fn get(client: &Client, name: &str) -> Result<Option<Vectorizer>> {
    let exists: bool = db(client
        .query_one("SELECT to_regclass('pgai.vectorizers') IS NOT NULL", &[])
        .await)?
    .get(0);
    if !exists {
        return Ok(None);
    }
    db(client
        .query_opt(
            &format!("SELECT {CATALOG_COLUMNS} FROM pgai.vectorizers WHERE name = $1"),
            &[&name],
        )
        .await)?
    .as_ref()
    .map(Vectorizer::from_row)
    .transpose()
}

async fn require(client: &Client, name: &str) -> Result<Vectorizer> {
    get(client, name)
        .await?
        .ok_or_else(|| Error::Config(format!("no vectorizer named {name:?}")))
}

/// Creates the vectorizer `spec` declares (source triggers, queue, destination, backfill of
/// every existing row) in one transaction of the SQL function; returns its catalog row.
pub async fn create(client: &Client, spec: &VectorizerSpec) -> Result<Vectorizer> {
    spec.validate()?;
    // Every argument positional and given: the function's defaults are repeated here, so an
    // explicit NULL never replaces one.
    let model = spec.model.as_deref().unwrap_or(DEFAULT_MODEL);
    let dimensions = spec.dimensions.unwrap_or(DEFAULT_DIMENSIONS);
    let index = spec.index.as_deref().unwrap_or(DEFAULT_INDEX);
    let params: [&(dyn ToSql + Sync); 10] = [
        &spec.name,
        &spec.table,
        &spec.column,
        &spec.template,
        &spec.chunk_tokens,
        &spec.chunk_overlap,
        &spec.destination,
        &model,
        &dimensions,
        &index,
    ];
    let row = db(client
        .query_one(
            &format!(
                "SELECT {CATALOG_COLUMNS} FROM pgai.create_vectorizer($1::text, $2::text, \
                 $3::text, $4::text, $5::integer, $6::integer, $7::text, $8::text, \
                 $9::integer, $10::text)"
            ),
            &params,
        )
        .await)?;
    Vectorizer::from_row(&row)
}

/// Drops the vectorizer `name`: triggers, queue, catalog row, and its vectors unless
/// `keep_embeddings`. An unknown name is an error.
pub async fn drop(client: &Client, name: &str, keep_embeddings: bool) -> Result<()> {
    require(client, name).await?;
    db(client
        .execute(
            "SELECT pgai.drop_vectorizer($1::text, $2::boolean)",
            &[&name, &keep_embeddings],
        )
        .await)?;
    Ok(())
}

/// Moves the vectorizer `name` to another model: every row is queued again; old vectors stay
/// (each records its model) until replaced. A different dimension is refused by the function.
pub async fn alter_model(
    client: &Client,
    name: &str,
    model: &str,
    dimensions: Option<i32>,
) -> Result<Vectorizer> {
    require(client, name).await?;
    let row = db(client
        .query_one(
            &format!(
                "SELECT {CATALOG_COLUMNS} FROM pgai.alter_vectorizer($1::text, $2::text, $3::integer)"
            ),
            &[&name, &model, &dimensions],
        )
        .await)?;
    Vectorizer::from_row(&row)
}

/// The status of every vectorizer, by name.
pub async fn list_status(client: &Client) -> Result<Vec<VectorizerStatus>> {
    Ok(db(client
        .query(
            &format!("SELECT {STATUS_COLUMNS} FROM pgai.vectorizer_status ORDER BY name"),
            &[],
        )
        .await)?
    .iter()
    .map(VectorizerStatus::from_row)
    .collect())
}

/// The status of the vectorizer `name`, or `None` when there is none of that name.
pub async fn status(client: &Client, name: &str) -> Result<Option<VectorizerStatus>> {
    Ok(db(client
        .query_opt(
            // The function, not the view: it counts this vectorizer's rows only.
            &format!("SELECT {STATUS_COLUMNS} FROM pgai.vectorizer_status($1::text)"),
            &[&name],
        )
        .await)?
    .as_ref()
    .map(VectorizerStatus::from_row))
}

/// A catalog row with its status (`vectorizer show`, `GET /v1/vectorizers/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VectorizerInfo {
    #[serde(flatten)]
    pub vectorizer: Vectorizer,
    pub status: Option<VectorizerStatus>,
}

/// Every vectorizer with its status, by name.
pub async fn list_info(client: &Client) -> Result<Vec<VectorizerInfo>> {
    let mut status: std::collections::HashMap<String, VectorizerStatus> = list_status(client)
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let all = Vectorizer::load_all(client).await.map_err(|e| match e {
        Error::Db(e) => map_db_error(e),
        e => e,
    })?;
    Ok(all
        .into_iter()
        .map(|v| VectorizerInfo {
            status: status.remove(&v.name),
            vectorizer: v,
        })
        .collect())
}

/// The vectorizer `name` with its status; `None` when there is none of that name.
pub async fn info(client: &Client, name: &str) -> Result<Option<VectorizerInfo>> {
    let Some(vectorizer) = get(client, name).await? else {
        return Ok(None);
    };
    Ok(Some(VectorizerInfo {
        status: status(client, name).await?,
        vectorizer,
    }))
}

/// What [`apply`] did to one declared vectorizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Created,
    /// Only the model changed: `alter_vectorizer` (rows re-queued, old vectors kept meanwhile).
    Altered,
    /// Another part of the declaration changed: dropped and created again, in one transaction.
    Recreated,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub name: String,
    pub action: Action,
    /// The declaration's fields that differed from the catalog (empty unless altered or
    /// recreated).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<&'static str>,
}

/// Makes the catalog hold `specs`: creates what is missing; an existing vectorizer whose
/// declaration differs only in its model is altered; one that differs otherwise is dropped
/// and created again in one transaction (its vectors are made again); an identical one is left
/// alone, so applying the same list twice changes nothing. Vectorizers the list does not name
/// are left alone. Every declaration is checked before the first change.
pub async fn apply(client: &Client, specs: &[VectorizerSpec]) -> Result<Vec<Applied>> {
    let mut seen = std::collections::HashSet::new();
    for s in specs {
        s.validate()?;
        if !seen.insert(s.name.as_str()) {
            return Err(Error::Config(format!(
                "vectorizer {} is declared twice",
                s.name
            )));
        }
    }
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let applied = match get(client, &spec.name).await? {
            None => {
                create(client, spec).await?;
                Applied {
                    name: spec.name.clone(),
                    action: Action::Created,
                    changed: vec![],
                }
            }
            Some(existing) => {
                let source = resolve_table(client, &spec.table).await?;
                let changed = differences(spec, &existing, source.as_ref());
                let action = if changed.is_empty() {
                    Action::Unchanged
                } else if changed == ["model"] {
                    alter_model(client, &spec.name, spec_model(spec), spec.dimensions).await?;
                    Action::Altered
                } else {
                    recreate(client, spec).await?;
                    Action::Recreated
                };
                Applied {
                    name: spec.name.clone(),
                    action,
                    changed,
                }
            }
        };
        out.push(applied);
    }
    Ok(out)
}

/// Drop + create in one transaction: a refused new declaration keeps the old vectorizer.
async fn recreate(client: &Client, spec: &VectorizerSpec) -> Result<()> {
    db(client.batch_execute("BEGIN").await)?;
    let result = async {
        db(client
            .execute(
                "SELECT pgai.drop_vectorizer($1::text, false)",
                &[&spec.name],
            )
            .await)?;
        create(client, spec).await
    }
    .await;
    match result {
        Ok(_) => db(client.batch_execute("COMMIT").await),
        Err(e) => {
            // The error is the one to report; a failed ROLLBACK means the connection is gone.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

fn spec_model(spec: &VectorizerSpec) -> &str {
    spec.model.as_deref().unwrap_or(DEFAULT_MODEL)
}

/// (schema, table) of `table` as PostgreSQL resolves it on the search path; `None` when it does
/// not exist.
async fn resolve_table(client: &Client, table: &str) -> Result<Option<(String, String)>> {
    Ok(db(client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            &[&table],
        )
        .await)?
    .map(|r| (r.get(0), r.get(1))))
}

/// The fields of `spec` that differ from the catalog row `v` (defaults filled in as the SQL
/// function fills them).
fn differences(
    spec: &VectorizerSpec,
    v: &Vectorizer,
    source: Option<&(String, String)>,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    if source != Some(&(v.source_schema.clone(), v.source_table.clone())) {
        out.push("table");
    }
    if spec.template() != v.template {
        out.push("template");
    }
    if spec.chunk_tokens != v.chunk_tokens {
        out.push("chunk_tokens");
    }
    let overlap = spec
        .chunk_overlap
        .or_else(|| spec.chunk_tokens.map(|t| 32.min((t - 3) / 2)));
    if spec.chunk_tokens.is_some() && overlap != v.chunk_overlap {
        out.push("chunk_overlap");
    }
    let source_schema = source.map(|s| s.0.as_str()).unwrap_or(&v.source_schema);
    let dest_same = match spec.destination.as_deref().map(str::trim) {
        None | Some("table") => {
            v.destination == Destination::Table
                && v.dest_schema == source_schema
                && v.dest_name == format!("{}_chunks", spec.name)
        }
        Some(d) => match d.split_once(':') {
            Some(("table", rest)) => {
                let (schema, name) = match rest.split_once('.') {
                    Some((s, n)) => (s.to_string(), n.to_string()),
                    None => (source_schema.to_string(), rest.to_string()),
                };
                v.destination == Destination::Table
                    && v.dest_schema == schema
                    && v.dest_name == name
            }
            Some(("column", col)) => v.destination == Destination::Column && v.dest_name == col,
            _ => false,
        },
    };
    if !dest_same {
        out.push("destination");
    }
    if spec_model(spec) != v.model {
        out.push("model");
    }
    if spec.dimensions.unwrap_or(DEFAULT_DIMENSIONS) != v.dimensions {
        out.push("dimensions");
    }
    if spec.index.as_deref().unwrap_or(DEFAULT_INDEX) != v.index_kind {
        out.push("index");
    }
    out
}

/// One search result: the source row's key, which chunk, its text, and cosine similarity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VectorHit {
    /// `{key column: value}` of the source row.
    pub key: Value,
    /// 0 for vectorizers without chunks.
    pub chunk_seq: i32,
    /// The text that was embedded (for column and in-place destinations: the row's text as
    /// the template renders it now).
    pub chunk: String,
    /// 1 - cosine distance.
    pub score: f64,
}

/// What [`search`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VectorSearch {
    pub vectorizer: String,
    pub model: String,
    pub results: Vec<VectorHit>,
    /// Embedded rows whose vector is from another model (not searched: after `alter`, until
    /// the daemon has embedded them again).
    pub not_migrated: i64,
}

/// The `k` chunks (rows) of `vectorizer` nearest to `query_vector`, best first. Only vectors of
/// the vectorizer's model are compared. `filters` keep source rows whose column equals the
/// value (compared as text; `null` means IS NULL); column names must be the source's.
pub async fn search(
    client: &Client,
    vectorizer: &Vectorizer,
    query_vector: &[f32],
    k: usize,
    filters: &[(String, Value)],
) -> Result<VectorSearch> {
    if !(1..=1000).contains(&k) {
        return Err(Error::Config(format!(
            "k must be between 1 and 1000, got {k}"
        )));
    }
    if query_vector.len() != vectorizer.dimensions as usize {
        return Err(Error::Config(format!(
            "vectorizer {} has {} dimensions; the query vector has {}",
            vectorizer.name,
            vectorizer.dimensions,
            query_vector.len()
        )));
    }
    let v = vectorizer;
    let source = format!(
        "{}.{}",
        quote_ident(&v.source_schema),
        quote_ident(&v.source_table)
    );
    // Filters: names checked against the source's columns, values bound as text.
    let columns: Vec<String> = db(client
        .query(
            "SELECT attname::text FROM pg_attribute \
              WHERE attrelid = format('%I.%I', $1::text, $2::text)::regclass \
                AND attnum > 0 AND NOT attisdropped",
            &[&v.source_schema, &v.source_table],
        )
        .await)?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(pgvector::Vector::from(query_vector.to_vec())),
        Box::new(v.model.clone()),
        Box::new(k as i64),
    ];
    let mut conditions = Vec::new();
    for (col, value) in filters {
        if !columns.iter().any(|c| c == col) {
            return Err(Error::Config(format!(
                "filter: {source} has no column {col:?}"
            )));
        }
        let text = match value {
            Value::Null => {
                conditions.push(format!("s.{} IS NULL", quote_ident(col)));
                continue;
            }
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Array(_) | Value::Object(_) => {
                return Err(Error::Config(format!(
                    "filter {col:?}: the value must be a string, number, boolean or null"
                )))
            }
        };
        if text.contains('\0') {
            return Err(Error::Config(format!(
                "filter {col:?}: the value must not contain NUL characters"
            )));
        }
        params.push(Box::new(text));
        conditions.push(format!(
            "s.{}::text = ${}::text",
            quote_ident(col),
            params.len()
        ));
    }
    let filter_sql: String = conditions.iter().map(|c| format!(" AND {c}")).collect();
    // The key's names are bound too: no name is ever pasted into the SQL as a literal.
    let mut pairs = Vec::new();
    for c in &v.key_columns {
        params.push(Box::new(c.clone()));
        pairs.push(format!(
            "${}::text, to_jsonb(s.{})",
            params.len(),
            quote_ident(c)
        ));
    }
    let key_json = format!("jsonb_build_object({})", pairs.join(", "));
    let (hits_sql, migrated_sql) = match v.destination {
        Destination::Table => {
            let chunks = format!(
                "{}.{}",
                quote_ident(&v.dest_schema),
                quote_ident(&v.dest_name)
            );
            let join = v
                .key_columns
                .iter()
                .map(|c| format!("c.{0} = s.{0}", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(" AND ");
            (
                format!(
                    "SELECT {key_json}, c.chunk_seq, c.chunk, (1 - (c.embedding <=> $1))::float8
                       FROM {chunks} c JOIN {source} s ON {join}
                      WHERE c.embedding_model = $2{filter_sql}
                      ORDER BY c.embedding <=> $1
                      LIMIT $3"
                ),
                format!(
                    "SELECT count(*) FROM (SELECT DISTINCT {keys} FROM {chunks} c
                      WHERE c.embedding_model IS DISTINCT FROM $1) d",
                    keys = v
                        .key_columns
                        .iter()
                        .map(|c| format!("c.{}", quote_ident(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        }
        Destination::Column => {
            let queue = format!(
                "{}.{}",
                quote_ident(&v.queue_schema),
                quote_ident(&v.queue_table)
            );
            let col = format!("s.{}", quote_ident(&v.dest_name));
            let join = v
                .key_columns
                .iter()
                .map(|c| {
                    format!(
                        "q.{} = s.{}",
                        quote_ident(&format!("k_{c}")),
                        quote_ident(c)
                    )
                })
                .collect::<Vec<_>>()
                .join(" AND ");
            (
                format!(
                    "SELECT {key_json}, 0, ({text})::text, (1 - ({col} <=> $1))::float8
                       FROM {source} s JOIN {queue} q ON {join}
                      WHERE {col} IS NOT NULL AND q.embedding_model = $2{filter_sql}
                      ORDER BY {col} <=> $1
                      LIMIT $3",
                    text = v.text_sql
                ),
                format!(
                    "SELECT count(*) FROM {source} s JOIN {queue} q ON {join}
                      WHERE {col} IS NOT NULL AND q.embedding_model IS DISTINCT FROM $1"
                ),
            )
        }
        Destination::InPlace => {
            let col = format!("s.{}", quote_ident(&v.dest_name));
            (
                format!(
                    "SELECT {key_json}, 0, ({text})::text, (1 - ({col} <=> $1))::float8
                       FROM {source} s
                      WHERE {col} IS NOT NULL AND s.embedding_model = $2{filter_sql}
                      ORDER BY {col} <=> $1
                      LIMIT $3",
                    text = v.text_sql
                ),
                format!(
                    "SELECT count(*) FROM {source} s
                      WHERE {col} IS NOT NULL AND s.embedding_model IS DISTINCT FROM $1"
                ),
            )
        }
    };
    // HNSW returns at most ef_search candidates before the filters: widen it, and let
    // pgvector ≥ 0.8 scan on until k rows pass them.
    db(client
        .batch_execute(&format!("SET hnsw.ef_search = {}", (k * 2).clamp(40, 1000)))
        .await)?;
    if let Err(e) = client
        .batch_execute("SET hnsw.iterative_scan = strict_order")
        .await
    {
        tracing::debug!(error = %crate::error::db_message(&e), "hnsw.iterative_scan unavailable");
    }
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = db(client.query(&hits_sql, &refs).await)?;
    let not_migrated: i64 = db(client.query_one(&migrated_sql, &[&v.model]).await)?.get(0);
    Ok(VectorSearch {
        vectorizer: v.name.clone(),
        model: v.model.clone(),
        results: rows
            .iter()
            .map(|r| VectorHit {
                key: r.get(0),
                chunk_seq: r.get(1),
                chunk: r.get(2),
                score: r.get(3),
            })
            .collect(),
        not_migrated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VectorizerSpec {
        VectorizerSpec {
            name: "docs_body".into(),
            table: "docs".into(),
            column: Some("body".into()),
            ..Default::default()
        }
    }

    #[test]
    fn declarations_are_checked_before_the_database() {
        assert!(spec().validate().is_ok());
        for (bad, needle) in [
            (
                VectorizerSpec {
                    name: "Docs".into(),
                    ..spec()
                },
                "name",
            ),
            (
                VectorizerSpec {
                    template: Some("{a}".into()),
                    ..spec()
                },
                "not both",
            ),
            (
                VectorizerSpec {
                    column: None,
                    ..spec()
                },
                "column or a template",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(needle) && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn unknown_yaml_keys_are_refused() {
        let e = serde_norway::from_str::<VectorizerSpec>("name: a\ntable: t\ncolum: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colum"), "{e}");
    }

    #[test]
    fn differences_fill_in_the_defaults() {
        let v = Vectorizer {
            name: "docs_body".into(),
            source_schema: "public".into(),
            source_table: "docs".into(),
            key_columns: vec!["id".into()],
            key_types: vec!["bigint".into()],
            text_columns: vec!["body".into()],
            template: "{body}".into(),
            text_sql: "concat((s.\"body\")::text)".into(),
            chunk_tokens: Some(64),
            chunk_overlap: Some(30),
            destination: Destination::Table,
            dest_schema: "public".into(),
            dest_name: "docs_body_chunks".into(),
            view_name: Some("docs_body_chunks_view".into()),
            created_column: false,
            queue_schema: "pgai".into(),
            queue_table: "docs_body_queue".into(),
            channel: "pgai_docs_body".into(),
            model: DEFAULT_MODEL.into(),
            dimensions: 384,
            index_kind: "hnsw".into(),
        };
        let src = ("public".to_string(), "docs".to_string());
        let s = VectorizerSpec {
            chunk_tokens: Some(64),
            ..spec()
        };
        assert!(differences(&s, &v, Some(&src)).is_empty());
        // Destination names are taken as written, like the SQL function takes them.
        let s2 = VectorizerSpec {
            destination: Some("table:public.docs_body_chunks".into()),
            ..s.clone()
        };
        assert!(differences(&s2, &v, Some(&src)).is_empty());
        let s2 = VectorizerSpec {
            destination: Some("table:Docs_Body_Chunks".into()),
            ..s.clone()
        };
        assert_eq!(differences(&s2, &v, Some(&src)), ["destination"]);
        let s3 = VectorizerSpec {
            model: Some("other".into()),
            ..s.clone()
        };
        assert_eq!(differences(&s3, &v, Some(&src)), ["model"]);
        let s4 = VectorizerSpec {
            template: Some("{title} {body}".into()),
            column: None,
            ..s
        };
        assert_eq!(differences(&s4, &v, Some(&src)), ["template"]);
    }
}
