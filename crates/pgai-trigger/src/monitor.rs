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
    pub worker_connected: bool,
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
    pub fn record_latency(&self, secs: f64) {
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
        let lat: Vec<f64> =
            self.latencies.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
        Stats {
            uptime_secs: self.started.elapsed().as_secs_f64(),
            processed: self.processed.load(Relaxed),
            failed_attempts: self.failed_attempts.load(Relaxed),
            superseded: self.superseded.load(Relaxed),
            batches: self.batches.load(Relaxed),
            notifications: self.notifications.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            listener_connected: self.listener_connected.load(Relaxed),
            worker_connected: self.worker_connected.load(Relaxed),
            latency_ms: percentiles(lat),
            last_error: self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
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
        LogLimiter { every, last: None, suppressed: 0 }
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
        assert_eq!((p.p50, p.p95, p.p99, p.max), (Some(50.0), Some(95.0), Some(99.0), Some(100.0)));
        assert_eq!(percentiles(vec![]).samples, 0);
        assert_eq!(percentiles(vec![7.0]).p99, Some(7.0));
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
