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
                    let result = catch_panic(|| model.embed(&texts)).map(|v| (v, started.elapsed()));
                    let _ = job.reply.send(result);
                }
            })
            .map_err(|e| EmbedError::Inference(format!("cannot start the model thread: {e}")))?;
        let (name, dim) = ready_rx
            .await
            .map_err(|_| EmbedError::Inference("the model thread exited while loading".into()))??;
        Ok(EmbedService { tx, info: Arc::new(ModelInfo { name, dim }) })
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
            let _ = job
                .reply
                .send(Err(EmbedError::Inference("the model thread has stopped".into())));
        }
        rx
    }

    /// Embeds and waits.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        match self.submit(texts).await.await {
            Ok(r) => r.map(|(v, _)| v),
            Err(_) => Err(EmbedError::Inference("the model thread dropped the batch".into())),
        }
    }
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
