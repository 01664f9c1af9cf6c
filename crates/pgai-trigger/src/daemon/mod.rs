//! The daemon: stage 2 (the [`listener`]) and stages 3–5 run by a [`worker`] per queue (claim →
//! embed on the [`model`] thread → write back), started and stopped as one. The worker backs
//! off a failing provider with the [`breaker`]; connections back off with [`backoff`].
//!
//! Queues: the configured table (the original design's, always), and every vectorizer of the
//! catalog whose model is this daemon's; the [`fleet`] keeps one worker per vectorizer running,
//! reloading the catalog on its notification and every second.

pub(crate) mod backoff;
pub(crate) mod breaker;
pub(crate) mod fleet;
pub(crate) mod listener;
pub(crate) mod model;
pub(crate) mod worker;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::Result;
use crate::monitor::Monitor;
use model::EmbedService;
use worker::Worker;

/// A running daemon. Dropping it does not stop it: call [`Daemon::stop`].
pub struct Daemon {
    monitor: Arc<Monitor>,
    config: Arc<Config>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Checks the database (one-line error if pgvector, the table, a column is missing or the
    /// dimension differs from the model's), then starts the listener (unless polling only) and
    /// the worker. Rows already pending are taken at once.
    pub async fn start(config: Config, embed: EmbedService) -> Result<Daemon> {
        config.validate()?;
        {
            let (client, task) = crate::pg::connect(
                &config.database_url,
                &format!("pgai-trigger {} check", config.worker_id),
            )
            .await?;
            crate::queue::schema::verify(&client, &config.table, embed.dim()).await?;
            register_table(&client, &config.table, &embed).await?;
            drop(client);
            if let Err(e) = task.await {
                tracing::debug!(error = %e, "start-up check connection task");
            }
        }
        let config = Arc::new(config);
        let monitor = Arc::new(Monitor::default());
        let router = Arc::new(listener::Router::new());
        let wake = router.add(config.table.channel());
        let chunker = Arc::new(worker::ChunkerSlot::new());
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        if config.immediate_trigger {
            let (url, app) = (
                config.database_url.clone(),
                format!("pgai-trigger {} listener", config.worker_id),
            );
            let (w, m, stop) = (router.clone(), monitor.clone(), shutdown.clone());
            let down = {
                let (w, m) = (router.clone(), monitor.clone());
                move || w.listener_down(&m)
            };
            tasks.push(tokio::spawn(supervise(
                "listener",
                monitor.clone(),
                shutdown.clone(),
                down,
                move || listener::run(url.clone(), app.clone(), w.clone(), m.clone(), stop.clone()),
            )));
        }
        let worker = Worker {
            config: config.clone(),
            queue: Arc::new(config.table.clone()),
            chunker: chunker.clone(),
            embed: embed.clone(),
            wake,
            monitor: monitor.clone(),
            primary: true,
        };
        let stop = shutdown.clone();
        let m = monitor.clone();
        tasks.push(tokio::spawn(supervise(
            "worker",
            monitor.clone(),
            shutdown.clone(),
            move || m.worker_connected(false),
            move || worker.clone().run(stop.clone()),
        )));
        let fleet = fleet::Fleet {
            config: config.clone(),
            embed,
            router,
            chunker,
            monitor: monitor.clone(),
        };
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(supervise(
            "vectorizers",
            monitor.clone(),
            shutdown.clone(),
            || {},
            move || fleet.clone().run(stop.clone()),
        )));
        tracing::info!(
            worker = %config.worker_id,
            table = config.table.name(),
            mode = if config.immediate_trigger { "immediate" } else { "polling" },
            "daemon started"
        );
        Ok(Daemon {
            monitor,
            config,
            shutdown,
            tasks,
        })
    }

    /// The daemon's counters and gauges.
    pub fn monitor(&self) -> &Arc<Monitor> {
        &self.monitor
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops claiming, finishes the batches in flight, closes the connections.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a daemon task ended abnormally");
            }
        }
        tracing::info!(worker = %self.config.worker_id, "daemon stopped");
    }

    /// Runs until `signal` resolves, then stops.
    ///
    /// (The listener and the worker run under [`supervise`]: a panic in either is logged,
    /// turns readiness false at once and restarts the task; it never stalls silently.)
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        let token = self.shutdown.clone();
        tokio::select! {
            _ = signal => {}
            _ = token.cancelled() => {}
        }
        self.stop().await;
    }
}

/// Makes sure the configured table is in the vectorizer catalog with this daemon's model (`db
/// init` registered it with the default model; nothing is written when it is right already). A
/// database from before vectorizers still serves the table, with a warning to run `db init`.
async fn register_table(
    client: &tokio_postgres::Client,
    table: &crate::queue::Table,
    embed: &EmbedService,
) -> Result<()> {
    match crate::vectorizer::catalog::register_in_place(
        client,
        table,
        embed.model_name(),
        embed.dim(),
    )
    .await
    {
        Err(crate::Error::Schema(m)) if m.contains("not installed") => {
            tracing::warn!("{m}; serving the table alone");
            Ok(())
        }
        other => other,
    }
}

/// Runs the task `start` makes until it returns (shutdown). A panic is caught and logged,
/// counted (`pgai_task_panics_total`), `on_panic` marks the component down at once (so
/// `/readyz` turns 503), and the task is started again after a backoff that grows while the
/// panics repeat and resets once a run lasted a minute.
pub(crate) async fn supervise<S, F, P>(
    name: &'static str,
    monitor: Arc<Monitor>,
    shutdown: CancellationToken,
    on_panic: P,
    mut start: S,
) where
    S: FnMut() -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
    P: Fn(),
{
    let mut backoff = backoff::Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(30),
    );
    loop {
        let started = std::time::Instant::now();
        match tokio::spawn(start()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                on_panic();
                monitor.task_panicked(name, &message);
                tracing::error!(task = name, panic = %message, "a daemon task panicked; restarting it");
                if started.elapsed() > std::time::Duration::from_secs(60) {
                    backoff.reset();
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::error!(task = name, error = %e, "a daemon task was cancelled");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    #[tokio::test]
    async fn a_panicking_task_is_marked_down_counted_and_restarted() {
        let monitor = Arc::new(Monitor::default());
        monitor.worker_connected(true);
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let m = monitor.clone();
        let marked_down = Arc::new(AtomicUsize::new(0));
        let d = marked_down.clone();
        supervise(
            "worker",
            monitor.clone(),
            CancellationToken::new(),
            move || {
                d.fetch_add(1, SeqCst);
                m.worker_connected(false);
            },
            move || {
                let r = r.clone();
                async move {
                    if r.fetch_add(1, SeqCst) < 2 {
                        panic!("boom");
                    }
                }
            },
        )
        .await;
        assert_eq!(
            runs.load(SeqCst),
            3,
            "restarted after each panic, then ended normally"
        );
        assert_eq!(marked_down.load(SeqCst), 2);
        let s = monitor.snapshot();
        assert_eq!(s.task_panics, 2);
        assert!(!s.worker_connected);
        assert!(s.last_error.unwrap().contains("worker panicked: boom"));
    }
}
