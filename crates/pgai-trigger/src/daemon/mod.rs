//! The daemon: stage 2 (the [`listener`]) and stages 3–5 run by the [`worker`] (claim →
//! embed on the [`model`] thread → write back), started and stopped as one. The worker backs
//! off a failing provider with the [`breaker`]; connections back off with [`backoff`].

pub(crate) mod backoff;
pub(crate) mod breaker;
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
            drop(client);
            if let Err(e) = task.await {
                tracing::debug!(error = %e, "start-up check connection task");
            }
        }
        let config = Arc::new(config);
        let monitor = Arc::new(Monitor::default());
        let wake = Arc::new(listener::Wake::new());
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        if config.immediate_trigger {
            tasks.push(tokio::spawn(listener::run(
                config.database_url.clone(),
                format!("pgai-trigger {} listener", config.worker_id),
                wake.clone(),
                monitor.clone(),
                shutdown.clone(),
            )));
        }
        let worker = Worker {
            config: config.clone(),
            embed,
            wake,
            monitor: monitor.clone(),
        };
        tasks.push(tokio::spawn(worker.run(shutdown.clone())));
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
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        let token = self.shutdown.clone();
        tokio::select! {
            _ = signal => {}
            _ = token.cancelled() => {}
        }
        self.stop().await;
    }
}
