//! Stage 2 of the flow: the wake-up. A dedicated connection LISTENs on `embedding_needed` and
//! never opens a transaction (a listener idle in a transaction would stop the server's
//! notification queue from being cleaned). Each notification is only a hint: it wakes the
//! worker and names an id to claim first; the table stays the source of truth. After every
//! (re)connect the worker is woken once too, since notifications sent while nobody listened are
//! gone.
//!
//! Health: every [`PROBE_EVERY`] the listener NOTIFYs itself and expects the probe back within
//! the next interval. A probe that does not come back marks the listener degraded (the worker
//! then polls faster); three in a row and it reconnects. A failed probe statement or a closed
//! connection reconnects at once, with jittered exponential backoff capped at 60 s.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use crate::error::{Error, Result};
use crate::monitor::{ListenerHealth, LogLimiter, Monitor};
use crate::pg::Notifications;
use crate::queue::CHANNEL_NEEDED;

/// Self-probe interval; also the longest a silently dead connection goes unnoticed.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Probes lost in a row before the listener reconnects.
const LOST_PROBES_BEFORE_RECONNECT: u32 = 3;
/// Payload prefix of the self-probe; never a row id the worker should look for.
pub const PROBE_PREFIX: &str = "\u{1}pgai-probe:";

/// The ids the latest notifications named, newest kept: during a burst of thousands the
/// oldest hints are dropped (those rows are found by age anyway) so a fresh insert is always
/// near the front.
#[derive(Debug)]
pub struct Hints {
    ids: Mutex<VecDeque<String>>,
    cap: usize,
}

impl Hints {
    pub fn new(cap: usize) -> Hints {
        Hints {
            ids: Mutex::new(VecDeque::with_capacity(cap.min(1024))),
            cap: cap.max(1),
        }
    }

    pub fn push(&self, id: String) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.len() == self.cap {
            ids.pop_front();
        }
        ids.push_back(id);
    }

    /// Up to `n` ids, newest first.
    pub fn take_newest(&self, n: usize) -> Vec<String> {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(n.min(ids.len()));
        while out.len() < n {
            match ids.pop_back() {
                Some(id) => out.push(id),
                None => break,
            }
        }
        out
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the listener shares with the worker: the wake-up, the ids to claim first, and the
/// listener's health (the worker polls faster while the listener is down or degraded).
pub struct Wake {
    pub notify: Notify,
    pub hints: Hints,
    health: watch::Sender<ListenerHealth>,
}

impl Wake {
    pub fn new() -> Wake {
        Wake {
            notify: Notify::new(),
            hints: Hints::new(1024),
            health: watch::Sender::new(ListenerHealth::Down),
        }
    }

    /// The listener's latest state.
    pub fn health(&self) -> ListenerHealth {
        *self.health.borrow()
    }

    /// The listener stopped (a panic): the worker polls faster, readiness turns false.
    pub fn listener_down(&self, monitor: &Monitor) {
        self.set_health(ListenerHealth::Down, monitor);
    }

    fn set_health(&self, h: ListenerHealth, monitor: &Monitor) {
        self.health.send_replace(h);
        monitor.listener_health(h);
    }
}

impl Default for Wake {
    fn default() -> Self {
        Wake::new()
    }
}

/// Runs until `shutdown`; reconnects with jittered backoff capped at 60 s.
pub async fn run(
    url: String,
    app_name: String,
    wake: Arc<Wake>,
    monitor: Arc<Monitor>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
    let mut errors = LogLimiter::new(Duration::from_secs(10));
    let mut connected_before = false;
    while !shutdown.is_cancelled() {
        let outcome = tokio::select! {
            r = listen_once(&url, &app_name, &wake, &monitor, &mut backoff, &mut connected_before) => r,
            _ = shutdown.cancelled() => break,
        };
        wake.set_health(ListenerHealth::Down, &monitor);
        let Err(e) = outcome;
        monitor.record_error(format!("listener: {e}"));
        if let Some(held) = errors.allow() {
            tracing::warn!(error = %e, suppressed = held, "listener connection lost; reconnecting");
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    wake.set_health(ListenerHealth::Down, &monitor);
}

/// One connection's life: connect, LISTEN, forward notifications, probe. Returns when the
/// connection fails or stops delivering.
async fn listen_once(
    url: &str,
    app_name: &str,
    wake: &Wake,
    monitor: &Monitor,
    backoff: &mut Backoff,
    connected_before: &mut bool,
) -> Result<std::convert::Infallible> {
    let mut notes =
        Notifications::listen(url, app_name, &[CHANNEL_NEEDED], PROBE_EVERY * 2).await?;
    wake.set_health(ListenerHealth::Listening, monitor);
    if *connected_before {
        monitor.reconnected();
        tracing::info!("listener reconnected");
    } else {
        tracing::info!("listening on {CHANNEL_NEEDED}");
    }
    *connected_before = true;
    backoff.reset();
    // Catch up: whatever was committed while nobody listened.
    wake.notify.notify_one();

    let probe_tag = format!("{PROBE_PREFIX}{}:", std::process::id());
    let mut sent = 0u64;
    let mut seen = 0u64;
    let mut lost_in_a_row = 0u32;
    let mut probe_tick = tokio::time::interval(PROBE_EVERY);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = notes.recv() => {
                let payload = n?.payload;
                if payload.starts_with(PROBE_PREFIX) {
                    if payload.starts_with(&probe_tag) {
                        seen += 1;
                    }
                    continue;
                }
                monitor.notification_received();
                if !payload.is_empty() {
                    wake.hints.push(payload);
                }
                wake.notify.notify_one();
            }
            _ = probe_tick.tick() => {
                // Judge the probe sent one interval ago, then send the next one.
                if sent > 0 {
                    if seen >= sent {
                        lost_in_a_row = 0;
                        if wake.health() == ListenerHealth::Degraded {
                            tracing::info!("listener probes come back again");
                        }
                        wake.set_health(ListenerHealth::Listening, monitor);
                    } else {
                        lost_in_a_row += 1;
                        wake.set_health(ListenerHealth::Degraded, monitor);
                        monitor.probe_lost();
                        tracing::warn!(lost_in_a_row, "listener self-probe did not come back; polling faster");
                        if lost_in_a_row >= LOST_PROBES_BEFORE_RECONNECT {
                            return Err(Error::Connection("listener stopped receiving notifications".into()));
                        }
                        // Resynchronise: count the probes as seen so far.
                        seen = sent;
                    }
                }
                sent += 1;
                let probe = format!("NOTIFY {CHANNEL_NEEDED}, '{probe_tag}{sent}'");
                tokio::time::timeout(PROBE_EVERY, notes.client().batch_execute(&probe))
                    .await
                    .map_err(|_| Error::Connection("listener probe timed out".into()))??;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_keep_the_newest_and_hand_them_out_newest_first() {
        let h = Hints::new(3);
        for id in ["a", "b", "c", "d"] {
            h.push(id.into());
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.take_newest(2), vec!["d".to_string(), "c".to_string()]);
        assert_eq!(h.take_newest(5), vec!["b".to_string()]);
        assert!(h.is_empty());
    }
}
