//! Stage 6 of the flow: what the daemon reports about itself.
//!
//! Each event is recorded where it happens, through a method (`row_embedded`,
//! `notification_received`, `listener_health`, …); nothing outside this module reads or writes
//! the counters directly, and nothing here runs SQL: the queue's gauges are sampled by the
//! worker ([`crate::queue::QueueCounts`]) and handed over with [`Monitor::queue_sampled`].
//! Latencies (commit → vector written, measured with the database's clock) go into a bounded
//! window for percentiles and a histogram for Prometheus ([`Monitor::render_prometheus`]).

mod prometheus;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{Histogram, BATCH_BUCKETS, LATENCY_BUCKETS};

/// Latencies kept for percentiles.
const WINDOW: usize = 10_000;

/// The listener's state as the monitor reports it (the worker learns it from the wake-up
/// channel, not from here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerHealth {
    /// No LISTEN connection (starting, reconnecting, or polling mode).
    Down,
    /// Listening, and the self-probes come back.
    Listening,
    /// Listening, but a self-probe did not come back: the worker polls faster meanwhile.
    Degraded,
}

/// The daemon's counters and gauges. Shared behind an `Arc` by the listener, the worker and
/// the HTTP API; every field is private and written through one method per event.
#[derive(Debug)]
pub struct Monitor {
    started: Instant,
    processed: AtomicU64,
    failed_attempts: AtomicU64,
    superseded: AtomicU64,
    batches: AtomicU64,
    notifications: AtomicU64,
    reconnects: AtomicU64,
    listener_connected: AtomicBool,
    listener_degraded: AtomicBool,
    worker_connected: AtomicBool,
    lost_probes: AtomicU64,
    panics: AtomicU64,
    unwritable: AtomicU64,
    provider_paused: AtomicBool,
    released: AtomicU64,
    renewals: AtomicU64,
    queue_depth: AtomicU64,
    failed_rows: AtomicU64,
    oldest_pending_ms: AtomicU64,
    notification_queue_usage_ppm: AtomicU64,
    latency_hist: Histogram,
    batch_hist: Histogram,
    latencies: Mutex<VecDeque<f64>>,
    last_error: Mutex<Option<String>>,
    /// The same events per queue served (vectorizer name, or the configured table's).
    vectorizers: Mutex<BTreeMap<String, VectorizerCounters>>,
}

/// What the monitor keeps per vectorizer (the `vectorizer` label of `/metrics`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VectorizerCounters {
    /// Rows whose vector (or chunks) this daemon wrote.
    pub embedded: u64,
    /// Failed attempts recorded on its rows.
    pub failed_attempts: u64,
    /// The queue as last sampled from the database.
    pub queue: crate::queue::QueueCounts,
    /// Latencies (ms, commit → write) of its latest rows.
    #[serde(skip)]
    latencies: VecDeque<f64>,
    pub latency_ms: Option<Percentiles>,
}

/// Latencies kept per vectorizer for its percentiles.
const VECTORIZER_WINDOW: usize = 1000;

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            started: Instant::now(),
            processed: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            listener_connected: AtomicBool::new(false),
            listener_degraded: AtomicBool::new(false),
            worker_connected: AtomicBool::new(false),
            lost_probes: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            unwritable: AtomicU64::new(0),
            provider_paused: AtomicBool::new(false),
            released: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            failed_rows: AtomicU64::new(0),
            oldest_pending_ms: AtomicU64::new(0),
            notification_queue_usage_ppm: AtomicU64::new(0),
            latency_hist: Histogram::new(LATENCY_BUCKETS),
            batch_hist: Histogram::new(BATCH_BUCKETS),
            latencies: Mutex::new(VecDeque::with_capacity(WINDOW)),
            last_error: Mutex::new(None),
            vectorizers: Mutex::new(BTreeMap::new()),
        }
    }
}

/// A point-in-time copy of the counters, as `stats` and `/v1/stats` print it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub uptime_secs: f64,
    /// Rows whose vector was written.
    pub processed: u64,
    /// Failed attempts recorded on rows.
    pub failed_attempts: u64,
    /// Claimed rows whose write-back matched nothing (content changed, deleted, lease lost).
    pub superseded: u64,
    pub batches: u64,
    pub notifications: u64,
    /// Reconnections of the listener and the worker.
    pub reconnects: u64,
    pub listener_connected: bool,
    pub listener_degraded: bool,
    pub worker_connected: bool,
    /// The provider fails across rows: the pipeline backs off.
    pub provider_paused: bool,
    /// Rows given back without an attempt because the provider, not the row, failed.
    pub released: u64,
    /// Lease extensions of long batches.
    pub renewals: u64,
    pub lost_probes: u64,
    /// Panics of the daemon's tasks (each restarted).
    pub task_panics: u64,
    /// Rows skipped because PostgreSQL refuses every update of them.
    pub rows_unwritable: u64,
    /// Sampled from the database: rows needing an embedding (not failed), the oldest one's
    /// age, rows marked failed, and the server's notification queue usage (0..1).
    pub queue_depth: u64,
    pub oldest_pending_secs: f64,
    pub failed_rows: u64,
    pub notification_queue_usage: f64,
    pub latency_ms: Percentiles,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Monitor {
    /// A batch was written: `rows` claimed, `latencies` (seconds, commit → write) of the rows
    /// actually written; the others were superseded.
    /// A row without `queued_at` has no latency (`None`): it counts as written, unmeasured.
    pub fn batch_written(&self, rows: usize, latencies: impl IntoIterator<Item = Option<f64>>) {
        self.batches.fetch_add(1, Relaxed);
        self.batch_hist.observe(rows as f64);
        let mut written = 0;
        for secs in latencies {
            written += 1;
            let Some(secs) = secs else { continue };
            self.latency_hist.observe(secs);
            let mut l = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
            if l.len() == WINDOW {
                l.pop_front();
            }
            l.push_back(secs * 1000.0);
        }
        self.processed.fetch_add(written, Relaxed);
        self.superseded
            .fetch_add((rows as u64).saturating_sub(written), Relaxed);
    }

    /// Failed attempts were recorded on `rows` rows.
    pub fn attempts_failed(&self, rows: u64) {
        self.failed_attempts.fetch_add(rows, Relaxed);
    }

    fn vectorizer<R>(&self, name: &str, f: impl FnOnce(&mut VectorizerCounters) -> R) -> R {
        let mut all = self.vectorizers.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(name.to_string()).or_default())
    }

    /// Rows of vectorizer `name` were written, with these latencies (seconds).
    pub fn vectorizer_written(&self, name: &str, latencies: &[Option<f64>]) {
        self.vectorizer(name, |v| {
            v.embedded += latencies.len() as u64;
            for ms in latencies.iter().flatten().map(|s| s * 1000.0) {
                if v.latencies.len() == VECTORIZER_WINDOW {
                    v.latencies.pop_front();
                }
                v.latencies.push_back(ms);
            }
        });
    }

    /// Failed attempts were recorded on `rows` rows of vectorizer `name`.
    pub fn vectorizer_attempts_failed(&self, name: &str, rows: u64) {
        self.vectorizer(name, |v| v.failed_attempts += rows);
    }

    /// Vectorizer `name`'s queue, as its worker sampled it.
    pub fn vectorizer_sampled(&self, name: &str, q: &crate::queue::QueueCounts) {
        self.vectorizer(name, |v| v.queue = *q);
    }

    /// Forgets a vectorizer this daemon no longer serves.
    pub fn vectorizer_gone(&self, name: &str) {
        self.vectorizers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Per-vectorizer counters, by name.
    pub fn vectorizers(&self) -> BTreeMap<String, VectorizerCounters> {
        let all = self.vectorizers.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                v.latency_ms = (!v.latencies.is_empty())
                    .then(|| percentiles(v.latencies.iter().copied().collect()));
                (k.clone(), v)
            })
            .collect()
    }

    /// Rows this daemon skips because PostgreSQL refuses every update of them.
    pub fn rows_unwritable(&self, rows: usize) {
        self.unwritable.store(rows as u64, Relaxed);
    }

    /// A task of the daemon panicked (it is restarted).
    pub fn task_panicked(&self, task: &str, message: &str) {
        self.panics.fetch_add(1, Relaxed);
        self.record_error(format!("{task} panicked: {message}"));
    }

    /// `rows` rows were given back without an attempt.
    pub fn rows_released(&self, rows: u64) {
        self.released.fetch_add(rows, Relaxed);
    }

    /// `rows` leases were extended.
    pub fn leases_renewed(&self, rows: u64) {
        self.renewals.fetch_add(rows, Relaxed);
    }

    pub fn notification_received(&self) {
        self.notifications.fetch_add(1, Relaxed);
    }

    /// A listener or worker connection came back after a loss.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }

    pub fn probe_lost(&self) {
        self.lost_probes.fetch_add(1, Relaxed);
    }

    pub fn listener_health(&self, h: ListenerHealth) {
        self.listener_connected
            .store(h != ListenerHealth::Down, Relaxed);
        self.listener_degraded
            .store(h == ListenerHealth::Degraded, Relaxed);
    }

    pub fn worker_connected(&self, up: bool) {
        self.worker_connected.store(up, Relaxed);
    }

    pub fn provider_paused(&self, paused: bool) {
        self.provider_paused.store(paused, Relaxed);
    }

    /// The queue's gauges, as the worker sampled them from the database.
    pub fn queue_sampled(&self, q: &crate::queue::QueueCounts, notification_queue_usage: f64) {
        self.queue_depth.store(q.depth().max(0) as u64, Relaxed);
        self.oldest_pending_ms.store(
            (q.oldest_pending_secs.unwrap_or(0.0).max(0.0) * 1000.0) as u64,
            Relaxed,
        );
        self.failed_rows.store(q.failed.max(0) as u64, Relaxed);
        self.notification_queue_usage_ppm
            .store((notification_queue_usage * 1e6) as u64, Relaxed);
    }

    pub fn record_error(&self, msg: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
    }

    /// Rows whose vector this daemon wrote (cheaper than a whole [`Monitor::snapshot`]).
    pub fn rows_embedded(&self) -> u64 {
        self.processed.load(Relaxed)
    }

    pub fn snapshot(&self) -> Stats {
        let lat: Vec<f64> = self
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        Stats {
            uptime_secs: self.started.elapsed().as_secs_f64(),
            processed: self.processed.load(Relaxed),
            failed_attempts: self.failed_attempts.load(Relaxed),
            superseded: self.superseded.load(Relaxed),
            batches: self.batches.load(Relaxed),
            notifications: self.notifications.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            listener_connected: self.listener_connected.load(Relaxed),
            listener_degraded: self.listener_degraded.load(Relaxed),
            worker_connected: self.worker_connected.load(Relaxed),
            provider_paused: self.provider_paused.load(Relaxed),
            released: self.released.load(Relaxed),
            renewals: self.renewals.load(Relaxed),
            lost_probes: self.lost_probes.load(Relaxed),
            task_panics: self.panics.load(Relaxed),
            rows_unwritable: self.unwritable.load(Relaxed),
            queue_depth: self.queue_depth.load(Relaxed),
            oldest_pending_secs: self.oldest_pending_ms.load(Relaxed) as f64 / 1000.0,
            failed_rows: self.failed_rows.load(Relaxed),
            notification_queue_usage: self.notification_queue_usage_ppm.load(Relaxed) as f64 / 1e6,
            latency_ms: percentiles(lat),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Nearest-rank percentiles.
///
/// ```
/// let p = pgai_trigger::percentiles((1..=100).map(f64::from).collect());
/// assert_eq!((p.p50, p.p99, p.max), (Some(50.0), Some(99.0), Some(100.0)));
/// ```
pub fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Percentiles {
        samples: v.len(),
        p50: Some(at(0.50)),
        p95: Some(at(0.95)),
        p99: Some(at(0.99)),
        max: v.last().copied(),
    }
}

/// Logs at most once per `every`, counting what it held back (a flapping database must not
/// print thousands of lines a second).
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this message should be logged, `n` being how many were held back since.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!(
            (p.p50, p.p95, p.p99, p.max),
            (Some(50.0), Some(95.0), Some(99.0), Some(100.0))
        );
        assert_eq!(percentiles(vec![]).samples, 0);
        assert_eq!(percentiles(vec![7.0]).p99, Some(7.0));
    }

    #[test]
    fn prometheus_text_has_cumulative_buckets() {
        let m = Monitor::default();
        m.batch_written(3, [Some(0.004), Some(0.02), Some(1000.0)]);
        let text = m.render_prometheus();
        assert!(
            text.contains("pgai_embedding_latency_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("pgai_embedding_latency_seconds_bucket{le=\"0.025\"} 2\n"));
        assert!(text.contains("pgai_embedding_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("pgai_embedding_latency_seconds_count 3\n"));
        assert!(text.contains("pgai_batch_size_rows_bucket{le=\"4\"} 1\n"));
        assert!(text.contains("# TYPE pgai_queue_depth gauge\npgai_queue_depth 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("pgai_"), "{line}");
        }
    }

    #[test]
    fn limiter_holds_back_and_counts() {
        let mut l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        l.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(l.allow(), Some(2));
    }
}
