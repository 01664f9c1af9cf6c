//! The model alone, in this process, without a database: the same texts and batch sizes the
//! daemon gets, through the same [`OnnxEmbedder`] (and the same number of threads) and the
//! same length-sorted chunking under the daemon's token budget ([`embed_in_chunks`]). The
//! tokenizer is timed on its own, loaded with the same overrides, so a row's model time splits
//! into tokenization (the chunker's token count plus the model's encoding) and inference.

use std::time::Instant;

use anyhow::Result;
use indicatif::ProgressBar;
use pgai_embed::{Embedder, ModelFiles, OnnxEmbedder, MAX_TOKENS};
use tokenizers::{PaddingStrategy, Tokenizer, TruncationParams};

use super::probe;
use crate::embedder::{embed_in_chunks, TOKEN_BUDGET};
use super::texts::Profile;
use crate::monitor::{percentiles, Percentiles};

/// One text at a time, as a lone insert reaches the model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Single {
    pub runs: usize,
    /// Whole `embed` call (tokenize + inference), ms.
    pub embed_ms: Percentiles,
    /// Tokenization alone (token count + encoding), ms.
    pub tokenize_ms: Percentiles,
}

/// Full batches, as a burst reaches the model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Batched {
    pub batch_size: usize,
    pub rows: usize,
    pub secs: f64,
    pub rows_per_s: f64,
    /// Wall time per row spent tokenizing: the chunker's token count and the encoding.
    pub tokenize_ms_per_row: f64,
    /// Wall time per row of the rest of `embed`: tensors, inference, output.
    pub model_ms_per_row: f64,
    /// CPU time (all threads) per row during `embed`; above the wall time when the runtime
    /// uses several cores (or spins waiting).
    pub cpu_ms_per_row: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RawProfile {
    pub profile: Profile,
    /// Mean word pieces per text (after truncation at 256, [CLS]/[SEP] included).
    pub mean_tokens: f64,
    pub single: Single,
    pub batch: Batched,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RawModel {
    /// ONNX Runtime intra-op threads (the daemon's default: one per core).
    pub threads: usize,
    pub load_s: f64,
    pub short: RawProfile,
    pub long: RawProfile,
}

/// The texts of one profile: some embedded alone, some in batches.
pub struct ProfileTexts<'a> {
    pub profile: Profile,
    pub single: &'a [String],
    pub batch: &'a [String],
}

/// Measures both profiles; returns also the vectors of `short.batch` (the database-write
/// measurement writes them). Blocking: call from a blocking thread.
pub fn measure(
    threads: usize,
    batch_size: usize,
    short: ProfileTexts<'_>,
    long: ProfileTexts<'_>,
    pb: &ProgressBar,
) -> Result<(RawModel, Vec<Vec<f32>>)> {
    let files = ModelFiles::locate()?;
    let started = Instant::now();
    let mut model = OnnxEmbedder::load(&files, threads)?;
    let load_s = started.elapsed().as_secs_f64();
    let tokenizer = tokenizer(&files)?;
    let (short, vectors) = profile(&mut model, &tokenizer, batch_size, short, pb)?;
    let (long, _) = profile(&mut model, &tokenizer, batch_size, long, pb)?;
    drop(model);
    Ok((RawModel { threads, load_s, short, long }, vectors))
}

/// `tokenizer.json` with the overrides `pgai-embed` applies (truncate at 256, pad to the
/// longest of the batch).
fn tokenizer(files: &ModelFiles) -> Result<Tokenizer> {
    let mut t = Tokenizer::from_file(&files.tokenizer)
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.tokenizer.display()))?;
    t.with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
        .map_err(|e| anyhow::anyhow!("tokenizer truncation: {e}"))?;
    let mut padding = t.get_padding().cloned().unwrap_or_default();
    padding.strategy = PaddingStrategy::BatchLongest;
    padding.pad_to_multiple_of = None;
    t.with_padding(Some(padding));
    Ok(t)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn profile(
    model: &mut dyn Embedder,
    tokenizer: &Tokenizer,
    batch_size: usize,
    texts: ProfileTexts<'_>,
    pb: &ProgressBar,
) -> Result<(RawProfile, Vec<Vec<f32>>)> {
    let tokens: Vec<usize> = texts
        .batch
        .iter()
        .chain(texts.single)
        .take(500)
        .map(|t| model.count_tokens(t))
        .collect::<Result<_, _>>()?;
    let mean_tokens = tokens.iter().sum::<usize>() as f64 / tokens.len().max(1) as f64;

    // Alone. A few calls first: the first runs of a session allocate.
    for t in texts.single.iter().take(3) {
        embed_in_chunks(model, &[t], TOKEN_BUDGET)?;
    }
    let mut embed_ms = Vec::new();
    let mut tokenize_ms = Vec::new();
    for t in texts.single {
        let s = Instant::now();
        embed_in_chunks(model, &[t], TOKEN_BUDGET)?;
        embed_ms.push(ms(s));
        let s = Instant::now();
        model.count_tokens(t)?;
        tokenizer.encode(t.as_str(), true).map_err(|e| anyhow::anyhow!("tokenize: {e}"))?;
        tokenize_ms.push(ms(s));
        pb.inc(1);
    }

    // Batches: inference first (its CPU is measured alone), then tokenization alone.
    let chunks: Vec<Vec<&str>> = texts.batch.chunks(batch_size).map(|c| c.iter().map(String::as_str).collect()).collect();
    if let Some(first) = chunks.first() {
        embed_in_chunks(model, first, TOKEN_BUDGET)?;
    }
    let mut vectors = Vec::with_capacity(texts.batch.len());
    let cpu0 = probe::own_cpu();
    let started = Instant::now();
    for c in &chunks {
        vectors.extend(embed_in_chunks(model, c, TOKEN_BUDGET)?);
        pb.inc(c.len() as u64);
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = probe::own_cpu().zip(cpu0).map(|(b, a)| b - a);
    let started = Instant::now();
    for c in &chunks {
        for t in c {
            model.count_tokens(t)?;
        }
        tokenizer.encode_batch(c.clone(), true).map_err(|e| anyhow::anyhow!("tokenize: {e}"))?;
    }
    let tokenize_s = started.elapsed().as_secs_f64();
    let rows = texts.batch.len().max(1) as f64;
    let batch = Batched {
        batch_size,
        rows: texts.batch.len(),
        secs,
        rows_per_s: texts.batch.len() as f64 / secs.max(1e-9),
        tokenize_ms_per_row: tokenize_s * 1e3 / rows,
        model_ms_per_row: (secs - tokenize_s).max(0.0) * 1e3 / rows,
        cpu_ms_per_row: cpu.map(|c| c * 1e3 / rows),
    };
    let single = Single { runs: texts.single.len(), embed_ms: percentiles(embed_ms), tokenize_ms: percentiles(tokenize_ms) };
    Ok((RawProfile { profile: texts.profile, mean_tokens, single, batch }, vectors))
}
