use std::path::PathBuf;

/// Every failure of this crate. Messages are one line (runtime messages are flattened).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// A file the model needs is not where it was looked for.
    #[error("model files missing: {what} not found at {} (run `make setup`)", path.display())]
    MissingFiles { what: String, path: PathBuf },
    /// The ONNX Runtime shared library could not be loaded or initialised.
    #[error("ONNX Runtime could not be loaded from {}: {reason}", path.display())]
    Runtime { path: PathBuf, reason: String },
    /// A model or tokenizer file exists but cannot be used.
    #[error("bad model file {}: {reason}", path.display())]
    BadModel { path: PathBuf, reason: String },
    /// The tokenizer rejected a text.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// ONNX Runtime failed while running a batch.
    #[error("inference failed: {0}")]
    Inference(String),
    /// A remote (OpenAI-compatible) endpoint refused or failed a request. `status` is the HTTP
    /// status, `None` when no answer came (connection refused, timeout, unreadable body).
    #[error("remote embedding endpoint {url}: {}{message}", .status.map(|s| format!("HTTP {s}: ")).unwrap_or_default())]
    Remote {
        url: String,
        status: Option<u16>,
        message: String,
    },
}

impl EmbedError {
    /// True when retrying cannot help until someone fixes the installation (missing or broken
    /// files, no runtime); false for failures of one batch.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::MissingFiles { .. } | Self::Runtime { .. } | Self::BadModel { .. } => true,
            Self::Tokenizer(_) | Self::Inference(_) => false,
            // Bad request, bad credentials, no such endpoint or model: retrying will not help.
            // Rate limits (429), server errors and timeouts pass.
            Self::Remote { status, .. } => matches!(status, Some(400 | 401 | 403 | 404 | 422)),
        }
    }
}

/// Flattens a foreign error message onto one line.
pub(crate) fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
