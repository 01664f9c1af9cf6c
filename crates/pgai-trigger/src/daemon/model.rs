//! Stage 4 of the flow: the model, on its own OS thread.
//!
//! Inference is CPU-bound and takes milliseconds to seconds: it never runs on the async
//! runtime's threads. One thread owns the model and takes work from two bounded lanes, and
//! replies on a one-shot channel per job. The pipeline lane ([`EmbedService::submit`],
//! [`EmbedService::embed`]) carries the daemon's batches: a full lane is back-pressure on the
//! claimer. The query lane ([`EmbedService::submit_query`], [`EmbedService::embed_query`])
//! carries the API's searches and `/v1/embeddings` requests, so a flood of them cannot queue in
//! front of the daemon's batches: the thread takes pipeline work first, and a waiting query
//! after at most [`PIPELINE_STREAK`] pipeline jobs in a row (queries are not starved either).
//! Cloning an [`EmbedService`] shares the same thread (tests run many daemons on one model).
//!
//! Fresh writes go first. A third lane ([`EmbedService::submit_fresh`]) carries batches of rows
//! that notifications named (new inserts and updates); the thread takes it before anything else,
//! and a long pipeline batch (a backfill's) is embedded one model call (at most
//! [`BACKLOG_CALL_BUDGET`] padded tokens) at a time, with fresh batches served between its calls: a
//! single insert into one vectorizer never waits behind another vectorizer's backfill for more
//! than one such call.

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
    fresh: mpsc::Sender<Job>,
    pipeline: mpsc::Sender<Job>,
    queries: mpsc::Sender<Job>,
    info: Arc<ModelInfo>,
}

#[derive(Debug)]
struct ModelInfo {
    name: String,
    dim: usize,
}

/// Query jobs waiting for the model before `submit_query` waits for room.
const QUERY_QUEUE: usize = 64;

/// Pipeline jobs the model thread runs in a row while a query waits: a query waits for at most
/// this many batches (each at most `batch_size` rows) plus the job in progress.
pub(crate) const PIPELINE_STREAK: usize = 4;

/// Fresh batches waiting for the model before `submit_fresh` waits for room.
const FRESH_QUEUE: usize = 16;

/// Which lane a job came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Fresh,
    Pipeline,
    Query,
}

/// Which lane the model thread takes next: fresh batches first, then pipeline, a query after a
/// streak.
struct Lanes {
    fresh: mpsc::Receiver<Job>,
    pipeline: mpsc::Receiver<Job>,
    queries: mpsc::Receiver<Job>,
    streak: usize,
}

impl Lanes {
    /// A fresh batch, if one waits.
    fn try_fresh(&mut self) -> Option<Job> {
        self.fresh.try_recv().ok()
    }

    /// The next job, waiting for one; `None` once every sender is gone and the lanes are empty.
    async fn next(&mut self) -> Option<(Job, Lane)> {
        if let Some(job) = self.try_fresh() {
            return Some((job, Lane::Fresh));
        }
        if self.streak >= PIPELINE_STREAK {
            if let Ok(job) = self.queries.try_recv() {
                self.streak = 0;
                return Some((job, Lane::Query));
            }
        }
        tokio::select! {
            biased;
            Some(job) = self.fresh.recv() => Some((job, Lane::Fresh)),
            Some(job) = self.pipeline.recv() => {
                self.streak += 1;
                Some((job, Lane::Pipeline))
            }
            Some(job) = self.queries.recv() => {
                self.streak = 0;
                Some((job, Lane::Query))
            }
            else => None,
        }
    }
}

impl EmbedService {
    /// Starts the model thread; `load` runs on that thread. Returns once the model is loaded, or
    /// with the loader's error. `queue` bounds the pipeline batches waiting for the model.
    pub async fn start<F>(load: F, queue: usize) -> Result<EmbedService, EmbedError>
    where
        F: FnOnce() -> Result<Box<dyn Embedder>, EmbedError> + Send + 'static,
    {
        let (fresh, fresh_rx) = mpsc::channel::<Job>(FRESH_QUEUE);
        let (pipeline, pipeline_rx) = mpsc::channel::<Job>(queue.max(1));
        let (queries, queries_rx) = mpsc::channel::<Job>(QUERY_QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let spawn_error = |e: std::io::Error| {
            EmbedError::Inference(format!("cannot start the model thread: {e}"))
        };
        // A runtime without I/O or timers, only to wait on both lanes at once.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(spawn_error)?;
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
                let mut lanes = Lanes {
                    fresh: fresh_rx,
                    pipeline: pipeline_rx,
                    queries: queries_rx,
                    streak: 0,
                };
                // A pipeline batch in progress, one model call at a time.
                let mut current: Option<Stepper> = None;
                // Ends when every EmbedService clone is dropped.
                loop {
                    if let Some(job) = lanes.try_fresh() {
                        run_whole(model.as_mut(), job);
                        continue;
                    }
                    if let Some(mut step) = current.take() {
                        if step.step(model.as_mut()) {
                            current = Some(step);
                        }
                        continue;
                    }
                    match rt.block_on(lanes.next()) {
                        Some((job, Lane::Pipeline)) => {
                            current = Stepper::start(model.as_mut(), job);
                        }
                        Some((job, _)) => run_whole(model.as_mut(), job),
                        None => break,
                    }
                }
            })
            .map_err(spawn_error)?;
        let (name, dim) = ready_rx
            .await
            .map_err(|_| EmbedError::Inference("the model thread exited while loading".into()))??;
        Ok(EmbedService {
            fresh,
            pipeline,
            queries,
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

    /// Queues a pipeline batch; waits while the pipeline lane is full. The returned receiver
    /// yields the vectors once the model is done, so the caller can claim the next batch
    /// meanwhile.
    pub async fn submit(&self, texts: Vec<String>) -> oneshot::Receiver<EmbedResult> {
        submit_to(&self.pipeline, texts).await
    }

    /// Queues a batch of fresh rows (named by notifications): the model thread takes it before
    /// any other work, between the model calls of a long pipeline batch.
    pub async fn submit_fresh(&self, texts: Vec<String>) -> oneshot::Receiver<EmbedResult> {
        submit_to(&self.fresh, texts).await
    }

    /// Embeds a pipeline batch and waits.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        wait(self.submit(texts).await).await
    }

    /// Queues a query (search, `/v1/embeddings`): the model thread serves waiting pipeline
    /// batches first, and a waiting query after at most four of them in a row. Waits while the
    /// query lane (64 jobs) is full.
    pub async fn submit_query(&self, texts: Vec<String>) -> oneshot::Receiver<EmbedResult> {
        submit_to(&self.queries, texts).await
    }

    /// Embeds a query and waits.
    pub async fn embed_query(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        wait(self.submit_query(texts).await).await
    }
}

async fn submit_to(lane: &mpsc::Sender<Job>, texts: Vec<String>) -> oneshot::Receiver<EmbedResult> {
    let (reply, rx) = oneshot::channel();
    if let Err(mpsc::error::SendError(job)) = lane.send(Job { texts, reply }).await {
        let _ = job.reply.send(Err(EmbedError::Inference(
            "the model thread has stopped".into(),
        )));
    }
    rx
}

async fn wait(rx: oneshot::Receiver<EmbedResult>) -> Result<Vec<Vec<f32>>, EmbedError> {
    match rx.await {
        Ok(r) => r.map(|(v, _)| v),
        Err(_) => Err(EmbedError::Inference(
            "the model thread dropped the batch".into(),
        )),
    }
}

/// Most padded tokens per model call of a backlog (pipeline) batch: the longest a fresh batch
/// waits for the model. Smaller than [`TOKEN_BUDGET`] because on these CPUs batching buys
/// little (`pgai-trigger bench`, raw model: 16-token texts 3.0 ms alone vs 322 rows/s batched,
/// 235-token texts 31.7 ms alone vs 27.5 rows/s batched), while a 1024-token call of short rows
/// took ~100 ms that a fresh insert into another vectorizer had to wait. At 128 a call of short
/// texts still holds ~8 rows (a call's fixed cost is a fraction of a row's), and a long text
/// (over the budget) gets a call of its own.
pub const BACKLOG_CALL_BUDGET: usize = 128;

/// Runs a job in one go (fresh batches and queries are small).
fn run_whole(model: &mut dyn Embedder, job: Job) {
    let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
    let started = Instant::now();
    let result = catch_panic(|| embed_in_chunks(model, &texts, TOKEN_BUDGET))
        .map(|v| (v, started.elapsed()));
    let _ = job.reply.send(result);
}

/// A pipeline batch embedded one model call at a time, so fresh batches can go in between.
struct Stepper {
    job: Job,
    groups: std::vec::IntoIter<Vec<usize>>,
    out: Vec<Vec<f32>>,
    /// Time spent in this batch's model calls.
    took: Duration,
}

impl Stepper {
    /// Plans the batch's calls (as [`embed_in_chunks`] does); `None` when it is done already
    /// (empty, or its planning failed and the error was sent).
    fn start(model: &mut dyn Embedder, job: Job) -> Option<Stepper> {
        let started = Instant::now();
        let planned = catch_panic(|| {
            let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
            plan_calls(model, &texts, BACKLOG_CALL_BUDGET)
        });
        match planned {
            Ok(groups) => Some(Stepper {
                out: vec![Vec::new(); job.texts.len()],
                job,
                groups: groups.into_iter(),
                took: started.elapsed(),
            }),
            Err(e) => {
                let _ = job.reply.send(Err(e));
                None
            }
        }
    }

    /// Runs the next call; false once the batch is done and its reply sent.
    fn step(&mut self, model: &mut dyn Embedder) -> bool {
        let Some(group) = self.groups.next() else {
            let out = std::mem::take(&mut self.out);
            self.reply(Ok((out, self.took)));
            return false;
        };
        if group.is_empty() {
            return true;
        }
        let started = Instant::now();
        let texts: Vec<&str> = group.iter().map(|&i| self.job.texts[i].as_str()).collect();
        let result = catch_panic(|| model.embed(&texts));
        self.took += started.elapsed();
        match result {
            Ok(vectors) => {
                for (i, v) in group.iter().zip(vectors) {
                    self.out[*i] = v;
                }
                true
            }
            Err(e) => {
                self.reply(Err(e));
                false
            }
        }
    }

    /// Sends the batch's result (once: the job's sender is swapped for a dead one).
    fn reply(&mut self, result: EmbedResult) {
        let (dead, _) = oneshot::channel();
        let _ = std::mem::replace(&mut self.job.reply, dead).send(result);
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
    let mut out = vec![Vec::new(); texts.len()];
    for chunk in plan_calls(model, texts, budget)? {
        let part: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
        for (i, v) in chunk.iter().zip(model.embed(&part)?) {
            out[*i] = v;
        }
    }
    Ok(out)
}

/// The model calls for `texts`: groups of indices under `budget` padded tokens (one group when
/// there is at most one text: nothing to count).
fn plan_calls(
    model: &dyn Embedder,
    texts: &[&str],
    budget: usize,
) -> Result<Vec<Vec<usize>>, EmbedError> {
    if texts.len() <= 1 {
        return Ok(vec![(0..texts.len()).collect()]);
    }
    let lens = texts
        .iter()
        .map(|t| model.count_tokens(t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(chunks_by_budget(&lens, budget))
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
    use std::sync::Mutex;

    /// Records the first text of every call; the first call blocks until `gate` opens, so jobs
    /// pile up in both lanes meanwhile.
    struct Recorder {
        calls: Arc<Mutex<Vec<String>>>,
        started: Option<oneshot::Sender<()>>,
        gate: Option<std::sync::mpsc::Receiver<()>>,
        /// What every text counts as, in word pieces.
        tokens: usize,
    }

    impl Embedder for Recorder {
        fn model_name(&self) -> &str {
            "recorder"
        }
        fn dim(&self) -> usize {
            1
        }
        fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
            if let Some(started) = self.started.take() {
                let _ = started.send(());
            }
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            self.calls.lock().unwrap().push(texts[0].to_string());
            Ok(texts.iter().map(|_| vec![1.0]).collect())
        }
        fn count_tokens(&self, _: &str) -> Result<usize, EmbedError> {
            Ok(self.tokens)
        }
    }

    /// A service over a [`Recorder`] whose texts count `tokens` each: the calls it records,
    /// the gate that lets its first call finish, and the signal that the first call started.
    async fn gated(
        tokens: usize,
        queue: usize,
    ) -> (
        EmbedService,
        Arc<Mutex<Vec<String>>>,
        std::sync::mpsc::Sender<()>,
        oneshot::Receiver<()>,
    ) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = std::sync::mpsc::channel();
        let (started_tx, started) = oneshot::channel();
        let recorder = Recorder {
            calls: calls.clone(),
            started: Some(started_tx),
            gate: Some(gate),
            tokens,
        };
        let service =
            EmbedService::start(move || Ok(Box::new(recorder) as Box<dyn Embedder>), queue)
                .await
                .unwrap();
        (service, calls, open, started)
    }

    #[tokio::test]
    async fn pipeline_batches_go_before_queued_queries_but_queries_are_not_starved() {
        let (service, calls, open, started) = gated(1, 16).await;
        // The model is busy with this one while the others queue.
        let busy = service.submit(vec!["busy".into()]).await;
        started.await.unwrap();
        let mut replies = Vec::new();
        for i in 0..3 {
            replies.push(service.submit_query(vec![format!("q{i}")]).await);
        }
        for i in 0..6 {
            replies.push(service.submit(vec![format!("p{i}")]).await);
        }
        open.send(()).unwrap();
        busy.await.unwrap().unwrap();
        for r in replies {
            r.await.unwrap().unwrap();
        }
        let order = calls.lock().unwrap().clone();
        // Pipeline first; one query after each streak of PIPELINE_STREAK pipeline jobs.
        assert_eq!(
            order,
            ["busy", "p0", "p1", "p2", "q0", "p3", "p4", "p5", "q1", "q2"],
            "{order:?}"
        );
    }

    #[tokio::test]
    async fn a_fresh_batch_goes_between_the_model_calls_of_a_long_pipeline_batch() {
        // Two texts exceed the budget: one model call per text.
        let (service, calls, open, started) = gated(TOKEN_BUDGET / 2 + 1, 2).await;
        let backlog = service
            .submit(vec!["b0".into(), "b1".into(), "b2".into(), "b3".into()])
            .await;
        started.await.unwrap();
        let fresh = service.submit_fresh(vec!["fresh".into()]).await;
        open.send(()).unwrap();
        assert_eq!(fresh.await.unwrap().unwrap().0.len(), 1);
        assert_eq!(backlog.await.unwrap().unwrap().0.len(), 4);
        let order = calls.lock().unwrap().clone();
        assert_eq!(order, ["b0", "fresh", "b1", "b2", "b3"], "{order:?}");
    }

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
