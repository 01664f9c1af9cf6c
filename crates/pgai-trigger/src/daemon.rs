//! The daemon: listener + worker (+ HTTP in the binary), started and stopped as one.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::embedder::EmbedService;
use crate::error::Result;
use crate::monitor::Monitor;
use crate::pipeline::Worker;

/// A running daemon. Dropping it does not stop it: call [`Daemon::stop`].
pub struct Daemon {
    pub monitor: Arc<Monitor>,
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
            let (client, task) = crate::db::connect(
                &config.database_url,
                &format!("pgai-trigger {} check", config.worker_id),
            )
            .await?;
            crate::schema::verify(&client, &config.table, embed.dim()).await?;
            drop(client);
            let _ = task.await;
        }
        let config = Arc::new(config);
        let monitor = Arc::new(Monitor::default());
        let wake = Arc::new(crate::listener::Wake::new());
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        if config.immediate_trigger {
            tasks.push(tokio::spawn(crate::listener::run(
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

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops claiming, finishes the batches in flight, closes the connections.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
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
