//! Prometheus text exposition of the [`Monitor`](super::Monitor).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::collections::BTreeMap;

use super::{Monitor, VectorizerCounters};

impl Monitor {
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
            s.lost_probes as f64,
        );
        metric(
            "pgai_task_panics_total",
            "counter",
            "Panics of the daemon's tasks (listener, worker); each is restarted.",
            s.task_panics as f64,
        );
        metric(
            "pgai_rows_unwritable",
            "gauge",
            "Rows skipped for a while because PostgreSQL refuses every update of them.",
            s.rows_unwritable as f64,
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
        render_vectorizers(&mut out, &self.vectorizers());
        out
    }
}

/// The per-vectorizer series, labelled `vectorizer="<name>"`.
fn render_vectorizers(out: &mut String, all: &BTreeMap<String, VectorizerCounters>) {
    if all.is_empty() {
        return;
    }
    type Value = fn(&VectorizerCounters) -> Option<f64>;
    let series: [(&str, &str, &str, Value); 7] = [
        (
            "pgai_vectorizer_rows_embedded_total",
            "counter",
            "Rows of the vectorizer whose vectors this daemon wrote.",
            |v| Some(v.embedded as f64),
        ),
        (
            "pgai_vectorizer_attempts_failed_total",
            "counter",
            "Failed attempts recorded on the vectorizer's rows.",
            |v| Some(v.failed_attempts as f64),
        ),
        (
            "pgai_vectorizer_queue_depth",
            "gauge",
            "The vectorizer's rows pending or processing (sampled).",
            |v| Some(v.queue.depth() as f64),
        ),
        (
            "pgai_vectorizer_rows_failed",
            "gauge",
            "The vectorizer's rows out of attempts (sampled).",
            |v| Some(v.queue.failed as f64),
        ),
        (
            "pgai_vectorizer_oldest_pending_seconds",
            "gauge",
            "Age of the vectorizer's oldest queued row (sampled; 0 when none).",
            |v| Some(v.queue.oldest_pending_secs.unwrap_or(0.0)),
        ),
        (
            "pgai_vectorizer_latency_p50_seconds",
            "gauge",
            "Median commit-to-vector latency of the vectorizer's latest rows.",
            |v| {
                v.latency_ms
                    .as_ref()
                    .and_then(|p| p.p50)
                    .map(|ms| ms / 1000.0)
            },
        ),
        (
            "pgai_vectorizer_latency_p99_seconds",
            "gauge",
            "99th percentile commit-to-vector latency of the vectorizer's latest rows.",
            |v| {
                v.latency_ms
                    .as_ref()
                    .and_then(|p| p.p99)
                    .map(|ms| ms / 1000.0)
            },
        ),
    ];
    for (name, kind, help, value) in series {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (vectorizer, v) in all {
            if let Some(x) = value(v) {
                let label = vectorizer.replace('\\', "\\\\").replace('"', "\\\"");
                out.push_str(&format!("{name}{{vectorizer=\"{label}\"}} {x}\n"));
            }
        }
    }
}

pub(super) const LATENCY_BUCKETS: &[f64] = &[
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
pub(super) const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A fixed-bucket histogram with atomic counters (no lock on the hot path).
#[derive(Debug)]
pub(super) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(super) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub(super) fn observe(&self, v: f64) {
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
