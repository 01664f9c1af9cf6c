//! One notification stream: a dedicated connection that LISTENs on some channels and hands
//! their notifications out one by one. The daemon's listener, `Store::wait_embedded`, the bench
//! and the tests all use it.
//!
//! A task of its own drives the connection (notifications only arrive while it is polled, and
//! statements on [`Notifications::client`] need it too) and forwards notifications into a
//! bounded channel. When the channel is full a notification is dropped and counted: they are
//! wake-up hints, and every user checks the table anyway. The stream ends with the connection's
//! error; reconnecting is the caller's policy (the daemon's listener backs off and probes).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};

use crate::error::{Error, Result};
use crate::queue::quote_ident;

/// One notification: its channel and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
}

/// A LISTEN connection; see the module documentation.
pub struct Notifications {
    client: Client,
    rx: mpsc::Receiver<Result<Notification>>,
    dropped: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// Notifications buffered before the oldest unread ones are dropped.
const BUFFER: usize = 4096;

impl Notifications {
    /// Connects and LISTENs on `channels`, all within `deadline` (a server that accepts the
    /// connection and never answers must not hang the caller).
    pub async fn listen(
        url: &str,
        application_name: &str,
        channels: &[&str],
        deadline: Duration,
    ) -> Result<Notifications> {
        let setup = async {
            let (client, mut conn) = super::Target::new(url, application_name)?.connect().await?;
            let (tx, rx) = mpsc::channel(BUFFER);
            let dropped = Arc::new(AtomicU64::new(0));
            let dropped_in_task = dropped.clone();
            let task = tokio::spawn(async move {
                let end = loop {
                    match poll_fn(|cx| conn.poll_message(cx)).await {
                        Some(Ok(AsyncMessage::Notification(n))) => {
                            let note = Notification {
                                channel: n.channel().to_string(),
                                payload: n.payload().to_string(),
                            };
                            match tx.try_send(Ok(note)) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    dropped_in_task.fetch_add(1, Relaxed);
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => return,
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Error::Db(e),
                        None => break Error::Connection("connection closed by the server".into()),
                    }
                };
                // The end must reach the reader even when the buffer is full.
                let _ = tx.send(Err(end)).await;
            });
            let listen: String = channels
                .iter()
                .map(|c| format!("LISTEN {};", quote_ident(c)))
                .collect();
            client.batch_execute(&listen).await?;
            Ok::<_, Error>(Notifications {
                client,
                rx,
                dropped,
                task,
            })
        };
        tokio::time::timeout(deadline, setup).await.map_err(|_| {
            Error::Connection(format!(
                "no answer to connect and LISTEN within {} s",
                deadline.as_secs_f64()
            ))
        })?
    }

    /// The next notification; an error once the connection has ended.
    pub async fn recv(&mut self) -> Result<Notification> {
        match self.rx.recv().await {
            Some(r) => r,
            None => Err(Error::Connection("notification stream ended".into())),
        }
    }

    /// The connection itself, e.g. to NOTIFY a self-probe on it.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Notifications dropped because the reader fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.task.abort();
    }
}
