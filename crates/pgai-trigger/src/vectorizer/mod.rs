//! Vectorizers: named declarations of what to embed — a source table with its key, a text made
//! from some of its columns, chunking, and where the vectors go. They live in the database, in
//! the catalog `pgai.vectorizers`, so every daemon (and every machine of a fleet) reads the same
//! ones. The original table of the design is one too (destination `in_place`).

pub mod catalog;

use tokio_postgres::{Client, Row};

pub mod admin;
pub use admin::{
    Action, Applied, VectorHit, VectorSearch, VectorizerInfo, VectorizerSpec, VectorizerStatus,
};

use crate::error::Result;

/// Where a vectorizer's vectors go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// The original table: the queue is the source row itself, the vector its `embedding`.
    InPlace,
    /// A vector column on the source row.
    Column,
    /// A chunk table: one row per chunk.
    Table,
}

impl Destination {
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::InPlace => "in_place",
            Destination::Column => "column",
            Destination::Table => "table",
        }
    }

    pub fn parse(s: &str) -> Option<Destination> {
        [
            Destination::InPlace,
            Destination::Column,
            Destination::Table,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// One row of the catalog `pgai.vectorizers`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Vectorizer {
    pub name: String,
    pub source_schema: String,
    pub source_table: String,
    pub key_columns: Vec<String>,
    pub key_types: Vec<String>,
    pub text_columns: Vec<String>,
    pub template: String,
    /// The rendered text as a SQL expression over the source row aliased `s`; never NULL.
    pub text_sql: String,
    pub chunk_tokens: Option<i32>,
    pub chunk_overlap: Option<i32>,
    pub destination: Destination,
    pub dest_schema: String,
    pub dest_name: String,
    pub view_name: Option<String>,
    pub created_column: bool,
    pub queue_schema: String,
    pub queue_table: String,
    pub channel: String,
    pub model: String,
    pub dimensions: i32,
    pub index_kind: String,
}

/// The catalog's columns, in the order [`Vectorizer::from_row`] reads them.
pub const CATALOG_COLUMNS: &str = "name, source_schema, source_table, key_columns, key_types, \
     text_columns, template, text_sql, chunk_tokens, chunk_overlap, destination, dest_schema, \
     dest_name, view_name, created_column, queue_schema, queue_table, channel, model, dimensions, \
     index_kind";

/// Channel on which catalog changes are announced (payload: the vectorizer's name).
pub const CHANNEL_CATALOG: &str = "pgai_vectorizers";

impl Vectorizer {
    pub fn from_row(r: &Row) -> Result<Vectorizer> {
        let destination: String = r.get(10);
        Ok(Vectorizer {
            name: r.get(0),
            source_schema: r.get(1),
            source_table: r.get(2),
            key_columns: r.get(3),
            key_types: r.get(4),
            text_columns: r.get(5),
            template: r.get(6),
            text_sql: r.get(7),
            chunk_tokens: r.get(8),
            chunk_overlap: r.get(9),
            destination: Destination::parse(&destination).ok_or_else(|| {
                crate::error::Error::Schema(format!(
                    "the catalog names an unknown destination {destination:?}"
                ))
            })?,
            dest_schema: r.get(11),
            dest_name: r.get(12),
            view_name: r.get(13),
            created_column: r.get(14),
            queue_schema: r.get(15),
            queue_table: r.get(16),
            channel: r.get(17),
            model: r.get(18),
            dimensions: r.get(19),
            index_kind: r.get(20),
        })
    }

    /// Every vectorizer in the catalog, by name; none when the catalog does not exist yet.
    pub async fn load_all(client: &Client) -> Result<Vec<Vectorizer>> {
        let exists: bool = client
            .query_one("SELECT to_regclass('pgai.vectorizers') IS NOT NULL", &[])
            .await?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        client
            .query(
                &format!("SELECT {CATALOG_COLUMNS} FROM pgai.vectorizers ORDER BY name"),
                &[],
            )
            .await?
            .iter()
            .map(Vectorizer::from_row)
            .collect()
    }
}
