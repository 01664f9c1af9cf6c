//! all-MiniLM-L6-v2 sentence embeddings in-process, matching sentence-transformers.
//!
//! # Layout
//!
//! - [`chunk`]: [`Chunker`], splits long texts into chunks that fit the model's window, with
//!   the model's own tokenizer (boundaries at paragraphs, sentences, words).
//! - [`dist`]: where `make setup` puts fetched files (`$PGAI_HOME`), same rule as `scripts/env.sh`.
//! - `files`: [`ModelFiles`], finding `model.onnx`, `tokenizer.json` and the ONNX Runtime library
//!   (explicit directory, `$PGAI_HOME/model`, or the Hugging Face cache).
//! - `tokenize`: loads `tokenizer.json` and overrides its truncation (256) and padding (longest
//!   of the batch) to what sentence-transformers does.
//! - `onnx`: [`OnnxEmbedder`], one ONNX Runtime session; the runtime library is loaded once per
//!   process.
//! - `pool`: mean pooling and L2 normalisation, for graphs that output `last_hidden_state`
//!   (the Hugging Face repo's `onnx/model.onnx`) instead of `sentence_embedding`.
//! - `openai`: [`OpenAiEmbedder`], any OpenAI-compatible `/v1/embeddings` endpoint (OpenAI,
//!   Ollama, vLLM, text-embeddings-inference), the second provider.
//! - `error`: [`EmbedError`], one line per failure, classified by [`EmbedError::is_permanent`].
//!
//! The graph built by `scripts/build_onnx.py` does pooling and normalisation itself; its output
//! is `sentence_embedding` `[batch, 384]`.

pub mod chunk;
pub mod dist;
mod error;
mod files;
mod onnx;
mod openai;
mod pool;
mod tokenize;

pub use chunk::{Chunk, ChunkOptionError, ChunkOptions, Chunker};
pub use error::EmbedError;
pub use files::ModelFiles;
pub use onnx::OnnxEmbedder;
pub use openai::{OpenAiConfig, OpenAiEmbedder};

/// Output dimension of all-MiniLM-L6-v2.
pub const DIM: usize = 384;
/// Longest input in word pieces, including `[CLS]` and `[SEP]` (sentence-transformers'
/// `max_seq_length`); longer texts are truncated.
pub const MAX_TOKENS: usize = 256;
/// The model every vector comes from.
pub const MODEL_NAME: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// A sentence embedding model. Synchronous: the daemon calls it on an OS thread of its own.
pub trait Embedder: Send {
    fn model_name(&self) -> &str;
    fn dim(&self) -> usize;
    /// One vector per text, L2-normalised, same order. Empty/whitespace texts are valid (they
    /// embed `[CLS][SEP]`). The whole slice runs as one batch, padded to its longest text: the
    /// caller decides batch sizes (see [`Embedder::count_tokens`]).
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
    /// Word pieces after truncation incl. `[CLS]`/`[SEP]` (for token-budget batching).
    fn count_tokens(&self, text: &str) -> Result<usize, EmbedError>;
}
