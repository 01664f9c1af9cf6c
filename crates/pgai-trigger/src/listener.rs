//! Stage 2 of the flow: the wake-up. A dedicated connection LISTENs on `embedding_needed` and
//! never opens a transaction (a listener idle in a transaction would stop the server's
//! notification queue from being cleaned). Each notification is only a hint: it wakes the
//! worker, which claims whatever is due from the table. After every (re)connect the worker is
//! woken once too, since notifications sent while nobody listened are gone.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::monitor::{LogLimiter, Monitor};
use crate::schema::CHANNEL_NEEDED;

/// Idle ping interval: a silently dead connection is noticed within this long.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Runs until `shutdown`; reconnects with jittered backoff capped at 60 s.
pub async fn run(
    url: String,
    app_name: String,
    wake: Arc<Notify>,
    monitor: Arc<Monitor>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
    let mut errors = LogLimiter::new(Duration::from_secs(10));
    let mut first = true;
    while !shutdown.is_cancelled() {
        let outcome = tokio::select! {
            r = listen_once(&url, &app_name, &wake, &monitor, &mut backoff) => r,
            _ = shutdown.cancelled() => break,
        };
        monitor.listener_connected.store(false, Relaxed);
        if let Err(e) = outcome {
            monitor.record_error(format!("listener: {e}"));
            if let Some(held) = errors.allow() {
                tracing::warn!(error = %e, suppressed = held, "listener connection lost; reconnecting");
            }
        }
        if !first {
            monitor.reconnects.fetch_add(1, Relaxed);
        }
        first = false;
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

/// One connection's life: connect, LISTEN, forward notifications, ping when idle. Returns when
/// the connection fails.
async fn listen_once(
    url: &str,
    app_name: &str,
    wake: &Notify,
    monitor: &Monitor,
    backoff: &mut Backoff,
) -> Result<()> {
    let (client, mut conn) = crate::db::pg_config(url, app_name)?.connect(NoTls).await?;
    // The connection must be polled for notifications to arrive; this future does nothing else.
    let pump = async {
        loop {
            match poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    monitor.notifications.fetch_add(1, Relaxed);
                    wake.notify_one();
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Error::Db(e),
                None => return Error::Connection("listener connection closed by the server".into()),
            }
        }
    };
    let work = async {
        client.batch_execute(&format!("LISTEN {CHANNEL_NEEDED}")).await?;
        monitor.listener_connected.store(true, Relaxed);
        backoff.reset();
        tracing::info!("listening on {CHANNEL_NEEDED}");
        // Catch up: whatever was committed while nobody listened.
        wake.notify_one();
        loop {
            tokio::time::sleep(PING_EVERY).await;
            tokio::time::timeout(PING_EVERY, client.simple_query(""))
                .await
                .map_err(|_| Error::Connection("listener ping timed out".into()))??;
        }
    };
    tokio::select! {
        e = pump => Err(e),
        r = work => r,
    }
}
