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
}

impl EmbedError {
    /// True when retrying cannot help until someone fixes the installation (missing or broken
    /// files, no runtime); false for failures of one batch.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::MissingFiles { .. } | Self::Runtime { .. } | Self::BadModel { .. } => true,
            Self::Tokenizer(_) | Self::Inference(_) => false,
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
