//! `serve` (and the daemon half of `up`): the daemon, the HTTP API, and a clean stop on
//! Ctrl-C / SIGTERM.

use std::sync::Arc;

use anyhow::{Context, Result};
use pgai_trigger::Daemon;
use pgai_trigger::Settings;
use pgai_trigger::Store;
use tokio_util::sync::CancellationToken;

pub async fn serve(settings: Settings) -> Result<()> {
    let config = settings.daemon_config()?;
    let pgai = &settings.database.pgai;
    let embed = settings.start_embedder().await?;
    let daemon = if pgai.enabled {
        Some(Daemon::start(config.clone(), embed.clone()).await?)
    } else {
        tracing::warn!(
            "database.pgai.enabled is false: serving the HTTP API only, no rows are embedded"
        );
        None
    };
    let mut store = Store::new(config)
        .with_embedder(embed)
        .with_auto_embedding(pgai.auto_embedding);
    if let Some(d) = &daemon {
        store = store.with_monitor(d.monitor().clone());
    }
    let router = pgai_trigger::http::router(pgai_trigger::http::Api {
        store: Arc::new(store),
        token: settings.http.token.clone(),
        enable_metrics: pgai.enable_metrics,
    });
    let stop = CancellationToken::new();
    let (addr, http_task) = pgai_trigger::http::serve(settings.http.address, router, stop.clone())
        .await
        .with_context(|| format!("cannot bind HTTP address {}", settings.http.address))?;
    println!("HTTP=http://{addr}");
    match daemon {
        Some(d) => d.run_until(shutdown_signal()).await,
        None => shutdown_signal().await,
    }
    stop.cancel();
    http_task.await.context("the HTTP server task failed")?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    eprintln!("stopping");
}
