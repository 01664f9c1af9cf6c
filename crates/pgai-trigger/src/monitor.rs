//! Stage 6 of the flow: what the daemon reports about itself.
//!
//! Counters are atomics updated on the hot path; latencies (commit → vector written, measured
//! with the database's clock) go into a bounded window for percentiles.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Latencies kept for percentiles.
const WINDOW: usize = 10_000;

#[derive(Debug)]
pub struct Monitor {
    started: Instant,
    /// Rows whose vector was written.
    pub processed: AtomicU64,
    /// Failed attempts recorded on rows.
    pub failed_attempts: AtomicU64,
    /// Claimed rows whose write-back matched nothing (content changed, deleted, lease lost).
    pub superseded: AtomicU64,
    pub batches: AtomicU64,
    pub notifications: AtomicU64,
    pub reconnects: AtomicU64,
    /// The listener holds a live LISTEN connection (always false in polling mode).
    pub listener_connected: AtomicBool,
    /// The worker holds live connections with prepared statements.
    pub worker_connected: AtomicBool,
    /// The listener's self-probe did not come back: the worker polls faster meanwhile.
    pub listener_degraded: AtomicBool,
    pub lost_probes: AtomicU64,
    /// The embedding provider is suspect (failures across rows): the pipeline is paused.
    pub provider_paused: AtomicBool,
    /// Rows given back without an attempt because the provider, not the row, failed.
    pub released: AtomicU64,
    /// Leases extended for long batches.
    pub renewals: AtomicU64,
    /// Sampled from the database (see `sample`): rows due or waiting, the oldest pending
    /// row's age, rows marked failed, and the server's notification queue usage (0..1).
    pub queue_depth: AtomicU64,
    pub failed_rows: AtomicU64,
    oldest_pending_ms: AtomicU64,
    notification_queue_usage_ppm: AtomicU64,
    latency_hist: Histogram,
    batch_hist: Histogram,
    latencies: Mutex<VecDeque<f64>>,
    last_error: Mutex<Option<String>>,
}

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
            worker_connected: AtomicBool::new(false),
            listener_degraded: AtomicBool::new(false),
            lost_probes: AtomicU64::new(0),
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
        }
    }
}

/// A point-in-time copy of the counters, as `stats` and `/v1/stats` print it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub uptime_secs: f64,
    pub processed: u64,
    pub failed_attempts: u64,
    pub superseded: u64,
    pub batches: u64,
    pub notifications: u64,
    pub reconnects: u64,
    pub listener_connected: bool,
    pub listener_degraded: bool,
    pub worker_connected: bool,
    pub provider_paused: bool,
    pub released: u64,
    pub renewals: u64,
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
    pub fn record_batch(&self, rows: usize) {
        self.batches.fetch_add(1, Relaxed);
        self.batch_hist.observe(rows as f64);
    }

    pub fn record_latency(&self, secs: f64) {
        self.latency_hist.observe(secs);
        let mut l = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() == WINDOW {
            l.pop_front();
        }
        l.push_back(secs * 1000.0);
    }

    pub fn record_error(&self, msg: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
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

impl Monitor {
    /// Reads the queue's gauges from the database: rows needing an embedding (not failed),
    /// the oldest one's age, failed rows, and `pg_notification_queue_usage()`.
    pub async fn sample(
        &self,
        client: &tokio_postgres::Client,
        table: &crate::schema::Table,
    ) -> crate::Result<()> {
        let r = client
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE retry_status IS DISTINCT FROM 'failed'),
                            coalesce(extract(epoch FROM clock_timestamp() - min(queued_at)
                                FILTER (WHERE retry_status IS DISTINCT FROM 'failed')), 0)::float8,
                            count(*) FILTER (WHERE retry_status = 'failed'),
                            pg_notification_queue_usage()
                       FROM {} WHERE needs_embedding = TRUE",
                    table.sql()
                ),
                &[],
            )
            .await?;
        self.queue_depth.store(r.get::<_, i64>(0) as u64, Relaxed);
        self.oldest_pending_ms
            .store((r.get::<_, f64>(1).max(0.0) * 1000.0) as u64, Relaxed);
        self.failed_rows.store(r.get::<_, i64>(2) as u64, Relaxed);
        self.notification_queue_usage_ppm
            .store((r.get::<_, f64>(3) * 1e6) as u64, Relaxed);
        Ok(())
    }

    /// Prometheus text exposition (version 0.0.4), every name prefixed `pgai_`.
    pub fn render_prometheus(&self) -> String {
        let s = self.snapshot();
        let mut out = String::with_capacity(4096);
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "pgai_rows_embedded_total",
            "counter",
            "Rows whose vector was written.",
            s.processed as f64,
        );
        metric(
            "pgai_attempts_failed_total",
            "counter",
            "Failed embedding attempts recorded on rows.",
            s.failed_attempts as f64,
        );
        metric(
            "pgai_rows_superseded_total",
            "counter",
            "Claimed rows not written because they changed, vanished or were re-claimed meanwhile.",
            s.superseded as f64,
        );
        metric(
            "pgai_rows_released_total",
            "counter",
            "Rows given back without an attempt while the provider was failing.",
            s.released as f64,
        );
        metric(
            "pgai_lease_renewals_total",
            "counter",
            "Lease extensions of long batches.",
            s.renewals as f64,
        );
        metric(
            "pgai_notifications_total",
            "counter",
            "embedding_needed notifications received.",
            s.notifications as f64,
        );
        metric(
            "pgai_reconnects_total",
            "counter",
            "Reconnections of the listener and the worker.",
            s.reconnects as f64,
        );
        metric(
            "pgai_listener_lost_probes_total",
            "counter",
            "Listener self-probes that did not come back.",
            self.lost_probes.load(Relaxed) as f64,
        );
        metric(
            "pgai_listener_connected",
            "gauge",
            "1 while the LISTEN connection is up.",
            b(s.listener_connected),
        );
        metric(
            "pgai_listener_degraded",
            "gauge",
            "1 while the listener's self-probe is not coming back.",
            b(s.listener_degraded),
        );
        metric(
            "pgai_worker_connected",
            "gauge",
            "1 while the worker's connections are up.",
            b(s.worker_connected),
        );
        metric(
            "pgai_provider_paused",
            "gauge",
            "1 while the embedding provider is failing and the pipeline backs off.",
            b(s.provider_paused),
        );
        metric(
            "pgai_queue_depth",
            "gauge",
            "Rows needing an embedding (not failed).",
            s.queue_depth as f64,
        );
        metric(
            "pgai_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest row needing an embedding.",
            s.oldest_pending_secs,
        );
        metric(
            "pgai_rows_failed",
            "gauge",
            "Rows marked failed (see retry-failed).",
            s.failed_rows as f64,
        );
        metric(
            "pgai_notification_queue_usage",
            "gauge",
            "pg_notification_queue_usage(), 0 to 1.",
            s.notification_queue_usage,
        );
        metric(
            "pgai_uptime_seconds",
            "gauge",
            "Seconds since the daemon started.",
            s.uptime_secs,
        );
        self.latency_hist.render(
            &mut out,
            "pgai_embedding_latency_seconds",
            "From the row's commit (queued_at) to its vector's write.",
        );
        self.batch_hist
            .render(&mut out, "pgai_batch_size_rows", "Rows per written batch.");
        out
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A fixed-bucket histogram with atomic counters (no lock on the hot path).
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {cumulative}\n"));
        }
        let count = self.count.load(Relaxed);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n"));
        out.push_str(&format!(
            "{name}_sum {}\n",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        ));
        out.push_str(&format!("{name}_count {count}\n"));
    }
}

/// Nearest-rank percentiles.
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
        m.record_latency(0.004);
        m.record_latency(0.02);
        m.record_latency(1000.0);
        m.record_batch(3);
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
