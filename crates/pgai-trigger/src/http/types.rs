//! The HTTP API's request and response bodies.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
pub struct WaitQuery {
    /// Answer once the row is embedded.
    #[serde(default)]
    pub wait: bool,
    /// How long `wait` waits (default 30 s, at most 10 min).
    pub timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
pub struct GetQuery {
    #[serde(default)]
    pub include_embedding: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub query: String,
    #[serde(default = "default_k")]
    pub k: usize,
    /// JSON object; rows whose metadata contains it (`@>`).
    pub filter: Option<Value>,
    /// Search this vectorizer's vectors instead of the daemon's table.
    pub vectorizer: Option<String>,
    /// With `vectorizer`: `{column: value}`, source rows whose column equals the value.
    pub filters: Option<serde_json::Map<String, Value>>,
}

pub fn default_k() -> usize {
    10
}

/// OpenAI's request; an unknown field is refused (422) like on the other endpoints.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    pub input: EmbeddingsInput,
    pub model: Option<String>,
    pub encoding_format: Option<String>,
    pub dimensions: Option<usize>,
    /// Accepted for OpenAI compatibility; not used.
    #[allow(dead_code)]
    pub user: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum EmbeddingsInput {
    One(String),
    Many(Vec<String>),
}

/// `{"status": …}` of the probes.
#[derive(Serialize)]
pub struct StatusBody {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<&'static str>,
}

/// `POST /v1/items` without `wait`: the row is queued.
#[derive(Serialize)]
pub struct Accepted {
    pub id: String,
    pub status: crate::queue::RowState,
}

#[derive(Serialize)]
pub struct Deleted {
    pub deleted: String,
}

#[derive(Serialize)]
pub struct SearchResponse {
    pub results: Vec<crate::store::SearchHit>,
}

#[derive(Serialize)]
pub struct VectorizerList {
    pub vectorizers: Vec<crate::vectorizer::VectorizerInfo>,
}

/// OpenAI's embeddings response.
#[derive(Serialize)]
pub struct EmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: Usage,
}

#[derive(Serialize)]
pub struct EmbeddingData {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingValue,
}

/// Floats, or little-endian f32s in base64 (`encoding_format: base64`).
#[derive(Serialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

/// `{"error": {"message", "type", "code"}}`, OpenAI's error shape.
#[derive(Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedQuery {
    pub limit: Option<i64>,
}

#[derive(Serialize)]
pub struct FailedList {
    pub failed: Vec<crate::store::FailedRow>,
}

#[derive(Serialize)]
pub struct Requeued {
    pub requeued: u64,
}
