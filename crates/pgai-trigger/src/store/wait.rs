//! Waiting for rows' vectors: one LISTEN connection on `embedding_ready` per store, shared by
//! every waiter (a connection per waiting request would exhaust the server's connection slots
//! long before the HTTP server runs out of anything).
//!
//! A task of the store's own holds the connection and wakes the waiters of each notified id;
//! when the connection drops it reconnects with backoff and wakes everyone (a row may have been
//! embedded meanwhile). Notifications are hints: waiters re-check their row anyway, at least
//! every 500 ms. The number of waiters is bounded, and closing the hub ends every wait at once
//! (a server stopping must not wait out 30-second waits).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::StoreError;
use crate::daemon::backoff::Backoff;
use crate::pg::Notifications;
use crate::queue::CHANNEL_READY;

/// `application_name` of the hub's connection.
pub(crate) const APPLICATION_NAME: &str = "pgai-trigger-client wait";

pub(super) struct ReadyHub {
    url: String,
    shared: Arc<Shared>,
    task: OnceLock<tokio::task::JoinHandle<()>>,
}

/// Row id → its waiters (key, wake-up).
type Waiters = HashMap<String, Vec<(u64, Arc<Notify>)>>;

struct Shared {
    waiters: Mutex<Waiters>,
    next_key: AtomicU64,
    slots: Arc<Semaphore>,
    max: usize,
    closing: CancellationToken,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, id: &str) {
        if let Some(list) = self.lock().get(id) {
            list.iter().for_each(|(_, n)| n.notify_one());
        }
    }

    fn wake_all(&self) {
        self.lock()
            .values()
            .flatten()
            .for_each(|(_, n)| n.notify_one());
    }
}

/// One registered wait; dropping it (the request went away) unregisters it and frees its slot.
pub(super) struct Waiter {
    shared: Arc<Shared>,
    id: String,
    key: u64,
    notify: Arc<Notify>,
    _slot: OwnedSemaphorePermit,
}

impl Waiter {
    /// A notification for this row (or for every row) arrived since the last call.
    pub(super) async fn notified(&self) {
        self.notify.notified().await
    }

    /// The hub is closing: the wait must end now.
    pub(super) async fn closing(&self) {
        self.shared.closing.cancelled().await
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiters = self.shared.lock();
        if let Some(list) = waiters.get_mut(&self.id) {
            list.retain(|(k, _)| *k != self.key);
            if list.is_empty() {
                waiters.remove(&self.id);
            }
        }
    }
}

impl ReadyHub {
    pub(super) fn new(url: &str, max_waiting: usize) -> ReadyHub {
        let max = max_waiting.max(1);
        ReadyHub {
            url: url.to_string(),
            shared: Arc::new(Shared {
                waiters: Mutex::new(HashMap::new()),
                next_key: AtomicU64::new(0),
                slots: Arc::new(Semaphore::new(max)),
                max,
                closing: CancellationToken::new(),
            }),
            task: OnceLock::new(),
        }
    }

    /// Registers a wait for row `id` (before the row is written, so no notification is
    /// missed once the connection is up). Fails when the hub is closing or full.
    pub(super) fn register(&self, id: &str) -> Result<Waiter, StoreError> {
        let s = &self.shared;
        if s.closing.is_cancelled() {
            return Err(StoreError::ShuttingDown);
        }
        let slot = s.slots.clone().try_acquire_owned().map_err(|_| {
            StoreError::Busy(format!(
                "{} requests are already waiting for their vectors (http.max_waiting); retry later or add without wait",
                s.max
            ))
        })?;
        self.task
            .get_or_init(|| tokio::spawn(listen_loop(self.url.clone(), self.shared.clone())));
        let key = s.next_key.fetch_add(1, Relaxed);
        let notify = Arc::new(Notify::new());
        s.lock()
            .entry(id.to_string())
            .or_default()
            .push((key, notify.clone()));
        Ok(Waiter {
            shared: s.clone(),
            id: id.to_string(),
            key,
            notify,
            _slot: slot,
        })
    }

    /// Ends every wait (they answer [`StoreError::ShuttingDown`]) and refuses new ones; closes
    /// the connection.
    pub(super) fn close(&self) {
        self.shared.closing.cancel();
    }

    /// Waits registered now.
    pub(super) fn waiting(&self) -> usize {
        self.shared.max - self.shared.slots.available_permits()
    }
}

impl Drop for ReadyHub {
    fn drop(&mut self) {
        self.shared.closing.cancel();
    }
}

/// Holds the LISTEN connection until the hub closes, reconnecting with backoff.
async fn listen_loop(url: String, shared: Arc<Shared>) {
    let closing = shared.closing.clone();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let listen = Notifications::listen(
            &url,
            APPLICATION_NAME,
            &[CHANNEL_READY],
            Duration::from_secs(10),
        );
        let result = tokio::select! {
            r = listen => r,
            _ = closing.cancelled() => return,
        };
        match result {
            Ok(mut stream) => {
                backoff.reset();
                // Rows may have been embedded while no connection listened.
                shared.wake_all();
                let end = loop {
                    tokio::select! {
                        n = stream.recv() => match n {
                            // An empty payload is a batch's "look at your rows".
                            Ok(n) if n.payload.is_empty() => shared.wake_all(),
                            Ok(n) => shared.wake(&n.payload),
                            Err(e) => break e,
                        },
                        _ = closing.cancelled() => return,
                    }
                };
                shared.wake_all();
                tracing::warn!(error = %end, "the wait connection (LISTEN embedding_ready) ended; reconnecting");
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot open the wait connection; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = closing.cancelled() => return,
        }
    }
}
