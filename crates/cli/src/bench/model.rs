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
use super::texts::Profile;
use pgai_trigger::{embed_in_chunks, BACKLOG_CALL_BUDGET, TOKEN_BUDGET};
use pgai_trigger::{percentiles, Percentiles};

/// One text at a time, as a lone insert reaches the model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Single {
    pub runs: usize,
    /// Whole `embed` call (tokenize + inference), ms, calls back to back.
    pub embed_ms: Percentiles,
    /// The same, one call every 1/rate s as single inserts arrive: the runtime's threads have
    /// gone to sleep and its caches gone cold between calls.
    pub paced_rate_per_s: f64,
    pub paced_embed_ms: Percentiles,
    /// Paced too, on a session with one intra-op thread (short texts only): whether a lone
    /// row is better served without the thread pool.
    pub paced_one_thread_embed_ms: Option<Percentiles>,
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
    /// The same batches in calls of at most `BACKLOG_CALL_BUDGET` padded tokens, as the daemon
    /// embeds a backlog so that fresh rows can go between its calls (measured alternately with
    /// the whole batches).
    pub stepped_rows_per_s: f64,
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
    /// The same texts through sentence-transformers (PyTorch), when --st-python was given.
    pub sentence_transformers: Option<serde_json::Value>,
}

/// The texts of one profile: some embedded alone, some in batches.
#[derive(Clone, Copy)]
pub struct ProfileTexts<'a> {
    pub profile: Profile,
    pub single: &'a [String],
    pub batch: &'a [String],
    /// Rate of the paced single calls.
    pub paced_rate: f64,
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
    let (mut short_raw, vectors) = profile(&mut model, &tokenizer, batch_size, short, pb)?;
    let (long_raw, _) = profile(&mut model, &tokenizer, batch_size, long, pb)?;
    drop(model);
    if threads > 1 {
        let mut one = OnnxEmbedder::load(&files, 1)?;
        let gap = std::time::Duration::from_secs_f64(1.0 / short.paced_rate);
        let texts = &short.single[..short.single.len().min(100)];
        for t in texts.iter().take(3) {
            embed_in_chunks(&mut one, &[t], TOKEN_BUDGET)?;
        }
        let mut paced = Vec::new();
        for t in texts {
            std::thread::sleep(gap);
            let s = Instant::now();
            embed_in_chunks(&mut one, &[t], TOKEN_BUDGET)?;
            paced.push(ms(s));
            pb.inc(1);
        }
        short_raw.single.paced_one_thread_embed_ms = Some(percentiles(paced));
    }
    Ok((
        RawModel {
            threads,
            load_s,
            short: short_raw,
            long: long_raw,
            sentence_transformers: None,
        },
        vectors,
    ))
}

/// `tokenizer.json` with the overrides `pgai-embed` applies (truncate at 256, pad to the
/// longest of the batch).
fn tokenizer(files: &ModelFiles) -> Result<Tokenizer> {
    let mut t = Tokenizer::from_file(&files.tokenizer)
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.tokenizer.display()))?;
    t.with_truncation(Some(TruncationParams {
        max_length: MAX_TOKENS,
        ..Default::default()
    }))
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
        tokenizer
            .encode(t.as_str(), true)
            .map_err(|e| anyhow::anyhow!("tokenize: {e}"))?;
        tokenize_ms.push(ms(s));
        pb.inc(1);
    }

    // Alone, paced: single inserts arrive 1/rate apart, not back to back.
    let gap = std::time::Duration::from_secs_f64(1.0 / texts.paced_rate);
    let mut paced_ms = Vec::new();
    for t in texts
        .single
        .iter()
        .take(if texts.profile == Profile::Short {
            100
        } else {
            50
        })
    {
        std::thread::sleep(gap);
        let s = Instant::now();
        embed_in_chunks(model, &[t], TOKEN_BUDGET)?;
        paced_ms.push(ms(s));
        pb.inc(1);
    }

    // Batches: inference first (its CPU is measured alone), then tokenization alone.
    let chunks: Vec<Vec<&str>> = texts
        .batch
        .chunks(batch_size)
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    if let Some(first) = chunks.first() {
        embed_in_chunks(model, first, TOKEN_BUDGET)?;
    }
    // Each batch whole (calls of up to TOKEN_BUDGET tokens, as fresh batches are embedded),
    // then the same batch in the backlog's calls of up to BACKLOG_CALL_BUDGET tokens,
    // alternating so that both see the same moments of the machine.
    let mut vectors = Vec::with_capacity(texts.batch.len());
    let (mut secs, mut stepped_secs, mut cpu) = (0.0, 0.0, Some(0.0));
    for c in &chunks {
        let cpu0 = probe::own_cpu();
        let started = Instant::now();
        vectors.extend(embed_in_chunks(model, c, TOKEN_BUDGET)?);
        secs += started.elapsed().as_secs_f64();
        let used = probe::own_cpu().zip(cpu0).map(|(b, a)| b - a);
        cpu = cpu.zip(used).map(|(sum, u)| sum + u);
        let started = Instant::now();
        embed_in_chunks(model, c, BACKLOG_CALL_BUDGET)?;
        stepped_secs += started.elapsed().as_secs_f64();
        pb.inc(c.len() as u64);
    }
    let started = Instant::now();
    for c in &chunks {
        for t in c {
            model.count_tokens(t)?;
        }
        tokenizer
            .encode_batch(c.clone(), true)
            .map_err(|e| anyhow::anyhow!("tokenize: {e}"))?;
    }
    let tokenize_s = started.elapsed().as_secs_f64();
    let rows = texts.batch.len().max(1) as f64;
    let batch = Batched {
        batch_size,
        rows: texts.batch.len(),
        secs,
        rows_per_s: texts.batch.len() as f64 / secs.max(1e-9),
        stepped_rows_per_s: texts.batch.len() as f64 / stepped_secs.max(1e-9),
        tokenize_ms_per_row: tokenize_s * 1e3 / rows,
        model_ms_per_row: (secs - tokenize_s).max(0.0) * 1e3 / rows,
        cpu_ms_per_row: cpu.map(|c| c * 1e3 / rows),
    };
    let single = Single {
        runs: texts.single.len(),
        embed_ms: percentiles(embed_ms),
        paced_rate_per_s: texts.paced_rate,
        paced_embed_ms: percentiles(paced_ms),
        paced_one_thread_embed_ms: None,
        tokenize_ms: percentiles(tokenize_ms),
    };
    Ok((
        RawProfile {
            profile: texts.profile,
            mean_tokens,
            single,
            batch,
        },
        vectors,
    ))
}

/// The texts handed to sentence-transformers.
#[derive(serde::Serialize)]
pub struct StTexts<'a> {
    pub batch_size: usize,
    pub short_batched: &'a [String],
    pub long_batched: &'a [String],
    pub short_alone: &'a [String],
    pub long_alone: &'a [String],
}

/// Times sentence-transformers on the texts: alone (P50/P99 ms) and batched (rows/s), per
/// profile. Prints one JSON object.
const ST_SCRIPT: &str = r#"
import json, sys, time
import torch, sentence_transformers
from sentence_transformers import SentenceTransformer
texts = json.load(open(sys.argv[1]))
torch.set_num_threads(int(sys.argv[3]))
model = SentenceTransformer(sys.argv[2], device="cpu")
bs = texts["batch_size"]
def pct(v, p):
    v = sorted(v)
    return v[max(0, min(len(v), int(-(-p * len(v) // 1))) - 1)]
def alone(ts):
    for t in ts[:3]:
        model.encode([t])
    ms = []
    for t in ts:
        s = time.perf_counter()
        model.encode([t])
        ms.append((time.perf_counter() - s) * 1e3)
    return {"runs": len(ms), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99)}
def batched(ts):
    model.encode(ts[:bs], batch_size=bs)
    s = time.perf_counter()
    model.encode(ts, batch_size=bs)
    return {"rows": len(ts), "rows_per_s": len(ts) / (time.perf_counter() - s)}
out = {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
       "threads": torch.get_num_threads(), "max_seq_length": model.max_seq_length, "batch_size": bs}
for p in ("short", "long"):
    out[p] = {"alone": alone(texts[p + "_alone"]), "batched": batched(texts[p + "_batched"])}
# The project's own model.onnx through ONNX Runtime's Python API, on input tokenised before the
# clock starts: what the graph does without our Rust path around it.
try:
    import numpy as np, onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = int(sys.argv[3]), 1
    sess = ort.InferenceSession(sys.argv[4], so, providers=["CPUExecutionProvider"])
    tok = model.tokenizer
    def feed(ts):
        e = tok(ts, padding=True, truncation=True, max_length=model.max_seq_length, return_tensors="np")
        return {"input_ids": e["input_ids"].astype(np.int64), "attention_mask": e["attention_mask"].astype(np.int64)}
    def ort_alone(ts):
        feeds = [feed([t]) for t in ts]
        for f in feeds[:3]:
            sess.run(None, f)
        ms = []
        for f in feeds:
            s = time.perf_counter()
            sess.run(None, f)
            ms.append((time.perf_counter() - s) * 1e3)
        return {"runs": len(ms), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99)}
    def ort_batched(ts):
        feeds = [feed(ts[i:i + bs]) for i in range(0, len(ts), bs)]
        sess.run(None, feeds[0])
        s = time.perf_counter()
        for f in feeds:
            sess.run(None, f)
        return {"rows": len(ts), "rows_per_s": len(ts) / (time.perf_counter() - s)}
    out["onnxruntime_python"] = {"version": ort.__version__, **{p: {"alone": ort_alone(texts[p + "_alone"]), "batched": ort_batched(texts[p + "_batched"])} for p in ("short", "long")}}
except ImportError:
    pass
print(json.dumps(out))
"#;

/// Runs sentence-transformers on `texts` with `python`; its JSON report.
pub async fn sentence_transformers(
    python: &std::path::Path,
    scratch: &std::path::Path,
    texts: &StTexts<'_>,
    threads: usize,
) -> Result<serde_json::Value> {
    let texts_path = scratch.join("st-texts.json");
    let script_path = scratch.join("st_bench.py");
    std::fs::write(&texts_path, serde_json::to_string(texts)?)?;
    std::fs::write(&script_path, ST_SCRIPT)?;
    let files = ModelFiles::locate()?;
    // The sentence-transformers model directory: where model.onnx sits, or above onnx/.
    let mut model_dir = files
        .onnx
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    if model_dir.ends_with("onnx") {
        model_dir.pop();
    }
    let out = tokio::process::Command::new(python)
        .arg(&script_path)
        .arg(&texts_path)
        .arg(&model_dir)
        .arg(threads.to_string())
        .arg(&files.onnx)
        .env("HF_HUB_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "true")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running {}: {e}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| l.starts_with('{'));
    match (out.status.success(), last) {
        (true, Some(line)) => Ok(serde_json::from_str(line)?),
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(8).collect();
            anyhow::bail!(
                "sentence-transformers via {} failed ({}):\n{}",
                python.display(),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        }
    }
}
