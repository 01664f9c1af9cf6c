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
    // Refuses an empty token or an open non-loopback address before anything starts.
    settings.http.validate()?;
    apply_vectorizers(&settings).await?;
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
        .with_auto_embedding(pgai.auto_embedding)
        .with_max_waiting(settings.http.max_waiting);
    if let Some(d) = &daemon {
        store = store.with_monitor(d.monitor().clone());
    }
    let store = Arc::new(store);
    let mut api = settings.http.api(store.clone())?;
    api.enable_metrics = pgai.enable_metrics;
    let header_timeout = api.limits.header_read_timeout;
    let router = pgai_trigger::http::router(api);
    let stop = CancellationToken::new();
    let (addr, http_task) =
        pgai_trigger::http::serve_with(settings.http.address, router, stop.clone(), header_timeout)
            .await
            .with_context(|| format!("cannot bind HTTP address {}", settings.http.address))?;
    println!("HTTP=http://{addr}");
    // On the signal: end the waiting requests at once (503) and stop the HTTP server while the
    // daemon finishes its batches; neither waits for long waits. If the HTTP server ends by
    // itself (a panic), the process stops too and exits non-zero, so a supervisor restarts it:
    // never a daemon without its API and probes.
    let mut http_task = http_task;
    let mut http_ended = None;
    let signal = async {
        tokio::select! {
            _ = shutdown_signal() => {}
            r = &mut http_task => http_ended = Some(r),
        }
        store.cancel_waits();
        stop.cancel();
    };
    match daemon {
        Some(d) => d.run_until(signal).await,
        None => signal.await,
    }
    store.cancel_waits();
    stop.cancel();
    match http_ended {
        Some(r) => {
            r.context("the HTTP server task failed")?;
            anyhow::bail!("the HTTP server stopped unexpectedly");
        }
        None => http_task.await.context("the HTTP server task failed")?,
    }
    Ok(())
}

/// Makes the catalog hold the config file's `vectorizers:` before the daemon starts (so it
/// serves them from its first claim); a refused declaration stops the start, on one line.
async fn apply_vectorizers(settings: &Settings) -> Result<()> {
    if settings.vectorizers.is_empty() {
        return Ok(());
    }
    let (client, _task) =
        pgai_trigger::connect(settings.database_url()?, "pgai-trigger-client apply").await?;
    let applied = pgai_trigger::vectorizer::admin::apply(&client, &settings.vectorizers)
        .await
        .context("vectorizers of the config file")?;
    for a in applied {
        tracing::info!(
            vectorizer = %a.name,
            action = ?a.action,
            changed = %a.changed.join(","),
            "vectorizer declaration applied"
        );
    }
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
