//! Stage 4 of the flow: the model, on its own OS thread.
//!
//! Inference is CPU-bound and takes milliseconds to seconds: it never runs on the async
//! runtime's threads. One thread owns the model and takes batches from a bounded channel, so a
//! full channel is back-pressure on the claimer, and replies on a one-shot channel per batch.
//! Cloning an [`EmbedService`] shares the same thread (tests run many daemons on one model).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgai_embed::{EmbedError, Embedder};
use tokio::sync::{mpsc, oneshot};

/// The vectors of one batch, and how long the model took.
pub type EmbedResult = Result<(Vec<Vec<f32>>, Duration), EmbedError>;

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<EmbedResult>,
}

/// A handle to the model thread.
#[derive(Clone)]
pub struct EmbedService {
    tx: mpsc::Sender<Job>,
    info: Arc<ModelInfo>,
}

#[derive(Debug)]
struct ModelInfo {
    name: String,
    dim: usize,
}

impl EmbedService {
    /// Starts the model thread; `load` runs on that thread. Returns once the model is loaded, or
    /// with the loader's error. `queue` bounds the batches waiting for the model.
    pub async fn start<F>(load: F, queue: usize) -> Result<EmbedService, EmbedError>
    where
        F: FnOnce() -> Result<Box<dyn Embedder>, EmbedError> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("pgai-embed".into())
            .spawn(move || {
                let mut model = match load() {
                    Ok(m) => {
                        let _ = ready_tx.send(Ok((m.model_name().to_string(), m.dim())));
                        m
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Ends when every EmbedService clone is dropped.
                while let Some(job) = rx.blocking_recv() {
                    let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
                    let started = Instant::now();
                    let result =
                        catch_panic(|| embed_in_chunks(model.as_mut(), &texts, TOKEN_BUDGET))
                            .map(|v| (v, started.elapsed()));
                    let _ = job.reply.send(result);
                }
            })
            .map_err(|e| EmbedError::Inference(format!("cannot start the model thread: {e}")))?;
        let (name, dim) = ready_rx
            .await
            .map_err(|_| EmbedError::Inference("the model thread exited while loading".into()))??;
        Ok(EmbedService {
            tx,
            info: Arc::new(ModelInfo { name, dim }),
        })
    }

    /// Loads the in-process ONNX model from the default locations.
    pub async fn start_default(threads: usize) -> Result<EmbedService, EmbedError> {
        EmbedService::start(
            move || {
                let files = pgai_embed::ModelFiles::locate()?;
                Ok(Box::new(pgai_embed::OnnxEmbedder::load(&files, threads)?) as Box<dyn Embedder>)
            },
            2,
        )
        .await
    }

    pub fn model_name(&self) -> &str {
        &self.info.name
    }

    pub fn dim(&self) -> usize {
        self.info.dim
    }

    /// Queues a batch; waits while the model's queue is full. The returned receiver yields the
    /// vectors once the model is done, so the caller can claim the next batch meanwhile.
    pub async fn submit(&self, texts: Vec<String>) -> oneshot::Receiver<EmbedResult> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job { texts, reply }).await {
            let _ = job.reply.send(Err(EmbedError::Inference(
                "the model thread has stopped".into(),
            )));
        }
        rx
    }

    /// Embeds and waits.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        match self.submit(texts).await.await {
            Ok(r) => r.map(|(v, _)| v),
            Err(_) => Err(EmbedError::Inference(
                "the model thread dropped the batch".into(),
            )),
        }
    }
}

/// Most padded tokens (rows × longest row) per model call. Texts are sorted by length and cut
/// into calls under this budget: little padding, a batch of long texts does not become one huge
/// call that a fresh single insert must wait behind, and ONNX Runtime's arena stays small
/// (attention buffers grow with rows × tokens²). Measured with `pgai-trigger bench` (5,000
/// short + 300 long rows): 4096 → peak RSS 337 MB, long burst 28 rows/s; 1024 → 230 MB,
/// 34 rows/s; short batches of 32 (~500 padded tokens) are one call either way.
pub const TOKEN_BUDGET: usize = 1024;

/// Embeds `texts` in length-sorted chunks of at most `budget` padded tokens; same order out.
pub fn embed_in_chunks(
    model: &mut dyn Embedder,
    texts: &[&str],
    budget: usize,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    if texts.len() <= 1 {
        return model.embed(texts);
    }
    let lens = texts
        .iter()
        .map(|t| model.count_tokens(t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = vec![Vec::new(); texts.len()];
    for chunk in chunks_by_budget(&lens, budget) {
        let part: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
        for (i, v) in chunk.iter().zip(model.embed(&part)?) {
            out[*i] = v;
        }
    }
    Ok(out)
}

/// Groups indices of `lens` sorted by length so that each group's rows × longest ≤ `budget`
/// (a single row longer than the budget is a group of its own).
fn chunks_by_budget(lens: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so row i is the longest of the group if added.
        if !current.is_empty() && lens[i] * (current.len() + 1) > budget {
            groups.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// A panic inside the model fails the batch instead of killing the thread.
fn catch_panic<T>(f: impl FnOnce() -> Result<T, EmbedError>) -> Result<T, EmbedError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(EmbedError::Inference(format!("the model panicked: {msg}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_the_budget_and_cover_every_row_once() {
        let lens = [256, 12, 12, 256, 40, 256, 9];
        let groups = chunks_by_budget(&lens, 520);
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
        for g in &groups {
            let longest = g.iter().map(|&i| lens[i]).max().unwrap();
            assert!(longest * g.len() <= 520 || g.len() == 1, "{g:?}");
        }
        // Short rows travel together, long rows in pairs.
        assert_eq!(groups[0], vec![6, 1, 2, 4]);
        assert_eq!(groups.len(), 3);
        assert_eq!(chunks_by_budget(&[300], 100), vec![vec![0]]);
    }
}
