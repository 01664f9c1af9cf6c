//! Stage 2 of the flow: the wake-up. A dedicated connection LISTENs on the channel of every queue
//! the daemon serves (`embedding_needed` for the original table, `pgai_<name>` for each
//! vectorizer, so two vectorizers never wake each other) and on the catalog's channel, and
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use crate::error::{Error, Result};
use crate::monitor::{ListenerHealth, LogLimiter, Monitor};
use crate::pg::Notifications;
use crate::queue::{quote_ident, CHANNEL_NEEDED};
use crate::vectorizer::CHANNEL_CATALOG;

/// Self-probe interval; also the longest a silently dead connection goes unnoticed.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Probes lost in a row before the listener reconnects.
const LOST_PROBES_BEFORE_RECONNECT: u32 = 3;
/// Payload prefix of the self-probe; never a row id the worker should look for.
pub const PROBE_PREFIX: &str = "\u{1}pgai-probe:";

/// The ids the latest notifications named, each with when it arrived, newest kept: during a
/// burst of thousands the oldest hints are dropped (those rows are found by age anyway) so a
/// fresh insert is always near the front.
#[derive(Debug)]
pub struct Hints {
    ids: Mutex<VecDeque<(String, Instant)>>,
    cap: usize,
}

impl Hints {
    pub fn new(cap: usize) -> Hints {
        Hints {
            ids: Mutex::new(VecDeque::with_capacity(cap.min(1024))),
            cap: cap.max(1),
        }
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, VecDeque<(String, Instant)>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, id: String) {
        self.push_at(id, Instant::now());
    }

    fn push_at(&self, id: String, at: Instant) {
        let mut ids = self.ids();
        if ids.len() == self.cap {
            ids.pop_front();
        }
        ids.push_back((id, at));
    }

    /// Up to `n` ids, newest first.
    pub fn take_newest(&self, n: usize) -> Vec<String> {
        let mut ids = self.ids();
        let mut out = Vec::with_capacity(n.min(ids.len()));
        while out.len() < n {
            match ids.pop_back() {
                Some((id, _)) => out.push(id),
                None => break,
            }
        }
        out
    }

    /// Forgets the hints older than `max_age` at `now`; returns how many. Their rows are no
    /// longer fresh: the backlog's claims find them by age.
    pub fn prune(&self, max_age: Duration, now: Instant) -> usize {
        let mut ids = self.ids();
        let before = ids.len();
        while ids
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) > max_age)
        {
            ids.pop_front();
        }
        before - ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids().is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids().len()
    }
}

/// What the listener shares with one queue's worker: the wake-up, the ids to claim first, and
/// the listener's health (the worker polls faster while the listener is down or degraded).
pub struct Wake {
    pub notify: Notify,
    pub hints: Hints,
    health: watch::Receiver<ListenerHealth>,
}

impl Wake {
    /// The listener's latest state.
    pub fn health(&self) -> ListenerHealth {
        *self.health.borrow()
    }
}

/// Which queue's worker each channel wakes, the listener's health, and the catalog's wake-up.
pub struct Router {
    routes: Mutex<HashMap<String, Vec<Arc<Wake>>>>,
    /// A channel was added: the listener LISTENs on it.
    changed: Notify,
    /// The vectorizer catalog changed (or may have: the listener reconnected).
    pub catalog: Notify,
    health: watch::Sender<ListenerHealth>,
}

impl Router {
    pub fn new() -> Router {
        Router {
            routes: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            catalog: Notify::new(),
            health: watch::Sender::new(ListenerHealth::Down),
        }
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Wake>>>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A wake-up for a worker of a queue notified on `channel`.
    pub fn add(&self, channel: &str) -> Arc<Wake> {
        let wake = Arc::new(Wake {
            notify: Notify::new(),
            hints: Hints::new(1024),
            health: self.health.subscribe(),
        });
        let fresh = {
            let mut routes = self.routes();
            let entry = routes.entry(channel.to_string()).or_default();
            entry.push(wake.clone());
            entry.len() == 1
        };
        if fresh {
            self.changed.notify_one();
        }
        // Rows may be waiting already.
        wake.notify.notify_one();
        wake
    }

    /// Forgets a worker's wake-up (its vectorizer was dropped or changed).
    pub fn remove(&self, channel: &str, wake: &Arc<Wake>) {
        let mut routes = self.routes();
        if let Some(list) = routes.get_mut(channel) {
            list.retain(|w| !Arc::ptr_eq(w, wake));
            if list.is_empty() {
                routes.remove(channel);
            }
        }
    }

    fn channels(&self) -> Vec<String> {
        self.routes().keys().cloned().collect()
    }

    /// Delivers a notification to the workers of its channel.
    fn deliver(&self, channel: &str, payload: String) {
        let routes = self.routes();
        let Some(wakes) = routes.get(channel) else {
            return;
        };
        for w in wakes {
            if !payload.is_empty() {
                w.hints.push(payload.clone());
            }
            w.notify.notify_one();
        }
    }

    /// Wakes every worker (after a reconnect: notifications sent meanwhile are gone).
    fn wake_all(&self) {
        for wakes in self.routes().values() {
            for w in wakes {
                w.notify.notify_one();
            }
        }
        self.catalog.notify_one();
    }

    /// The listener's latest state.
    pub fn health(&self) -> ListenerHealth {
        *self.health.borrow()
    }

    /// The listener stopped (a panic): the workers poll faster, readiness turns false.
    pub fn listener_down(&self, monitor: &Monitor) {
        self.set_health(ListenerHealth::Down, monitor);
    }

    fn set_health(&self, h: ListenerHealth, monitor: &Monitor) {
        self.health.send_replace(h);
        monitor.listener_health(h);
    }
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
}

/// Runs until `shutdown`; reconnects with jittered backoff capped at 60 s.
pub async fn run(
    url: String,
    app_name: String,
    router: Arc<Router>,
    monitor: Arc<Monitor>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
    let mut errors = LogLimiter::new(Duration::from_secs(10));
    let mut connected_before = false;
    while !shutdown.is_cancelled() {
        let outcome = tokio::select! {
            r = listen_once(&url, &app_name, &router, &monitor, &mut backoff, &mut connected_before) => r,
            _ = shutdown.cancelled() => break,
        };
        router.set_health(ListenerHealth::Down, &monitor);
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
    router.set_health(ListenerHealth::Down, &monitor);
}

/// One connection's life: connect, LISTEN, forward notifications, probe. Returns when the
/// connection fails or stops delivering.
async fn listen_once(
    url: &str,
    app_name: &str,
    router: &Router,
    monitor: &Monitor,
    backoff: &mut Backoff,
    connected_before: &mut bool,
) -> Result<std::convert::Infallible> {
    let mut listening: HashSet<String> = router.channels().into_iter().collect();
    listening.insert(CHANNEL_NEEDED.to_string());
    listening.insert(CHANNEL_CATALOG.to_string());
    let channels: Vec<&str> = listening.iter().map(String::as_str).collect();
    let mut notes = Notifications::listen(url, app_name, &channels, PROBE_EVERY * 2).await?;
    router.set_health(ListenerHealth::Listening, monitor);
    if *connected_before {
        monitor.reconnected();
        tracing::info!("listener reconnected");
    } else {
        tracing::info!(channels = ?listening, "listening");
    }
    *connected_before = true;
    backoff.reset();
    // Catch up: whatever was committed while nobody listened.
    router.wake_all();

    let probe_tag = format!("{PROBE_PREFIX}{}:", std::process::id());
    let mut sent = 0u64;
    let mut seen = 0u64;
    let mut lost_in_a_row = 0u32;
    let mut probe_tick = tokio::time::interval(PROBE_EVERY);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = notes.recv() => {
                let n = n?;
                if n.payload.starts_with(PROBE_PREFIX) {
                    if n.payload.starts_with(&probe_tag) {
                        seen += 1;
                    }
                    continue;
                }
                if n.channel == CHANNEL_CATALOG {
                    router.catalog.notify_one();
                    continue;
                }
                monitor.notification_received();
                router.deliver(&n.channel, n.payload);
            }
            _ = router.changed.notified() => {
                let new: Vec<String> = router
                    .channels()
                    .into_iter()
                    .filter(|c| !listening.contains(c))
                    .collect();
                if !new.is_empty() {
                    let sql: String = new.iter().map(|c| format!("LISTEN {};", quote_ident(c))).collect();
                    tokio::time::timeout(PROBE_EVERY, notes.client().batch_execute(&sql))
                        .await
                        .map_err(|_| Error::Connection("LISTEN timed out".into()))??;
                    tracing::info!(channels = ?new, "listening");
                    listening.extend(new);
                    // Rows committed before the LISTEN took effect sent their hints to nobody.
                    router.wake_all();
                }
            }
            _ = probe_tick.tick() => {
                // Judge the probe sent one interval ago, then send the next one.
                if sent > 0 {
                    if seen >= sent {
                        lost_in_a_row = 0;
                        if router.health() == ListenerHealth::Degraded {
                            tracing::info!("listener probes come back again");
                        }
                        router.set_health(ListenerHealth::Listening, monitor);
                    } else {
                        lost_in_a_row += 1;
                        router.set_health(ListenerHealth::Degraded, monitor);
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

    #[test]
    fn hints_older_than_the_age_are_pruned_oldest_first() {
        let h = Hints::new(10);
        let t0 = Instant::now();
        h.push_at("old".into(), t0);
        h.push_at("new".into(), t0 + Duration::from_millis(30));
        let now = t0 + Duration::from_millis(40);
        assert_eq!(h.prune(Duration::from_secs(60), now), 0);
        assert_eq!(h.prune(Duration::from_millis(15), now), 1);
        assert_eq!(h.take_newest(5), vec!["new".to_string()]);
        assert_eq!(h.prune(Duration::ZERO, now), 0, "nothing left to prune");
    }
}
