//! What a bench run found: the JSON document, the derived breakdown and ceiling, the performance
//! targets (README, Performance), and the plain-text table.

use std::fmt::Write as _;

use super::child::Stopped;
use super::dbcost::{DbWrite, TriggerOverhead};
use super::fairness::Fairness;
use super::latency::{Burst, Latencies};
use super::model::{RawModel, RawProfile};
use super::probe::Usage;
use super::texts::Profile;
use pgai_trigger::BACKLOG_CALL_BUDGET;

/// The whole result, as written to `--out`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Results {
    pub meta: Meta,
    pub latency: Vec<LatencyRun>,
    pub polling: Vec<PollingRatio>,
    pub burst: Vec<BurstRun>,
    pub raw_model: RawModel,
    pub db_write: DbWrite,
    pub breakdown: Breakdown,
    pub trigger_overhead: TriggerOverhead,
    pub idle: Idle,
    pub memory: Memory,
    /// One daemon, two vectorizers: a lone insert's latency while the other backfills.
    pub fairness: Fairness,
    pub targets: Vec<Target>,
    /// Cores used per phase by the daemon, PostgreSQL, the bench and everything else.
    pub phases: Vec<PhaseUsage>,
}

/// A `--fairness-only` run, as written to `--out`: the fairness phase and nothing else.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FairnessOnly {
    pub meta: Meta,
    pub fairness: Fairness,
    pub memory: Memory,
    pub targets: Vec<Target>,
    pub phases: Vec<PhaseUsage>,
}

impl FairnessOnly {
    pub fn evaluate(&mut self) {
        self.targets = vec![fairness_target(&self.fairness)];
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseUsage {
    pub phase: String,
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Meta {
    pub command: String,
    /// `git describe --always --dirty` of the working directory (best effort: the binaries are
    /// whatever was built from it).
    pub git: Option<String>,
    pub started_utc: String,
    pub duration_s: f64,
    pub cores: usize,
    pub cpu_model: Option<String>,
    pub load_avg_start: Option<[f64; 3]>,
    pub load_avg_end: Option<[f64; 3]>,
    /// Most cores that other programs used during any phase (noise on shared machines).
    pub other_cores_max: Option<f64>,
    pub database: String,
    pub postgres_version: String,
    pub pgvector_version: Option<String>,
    pub fsync: String,
    pub synchronous_commit: String,
    pub batch_size: usize,
    pub daemon_args: Vec<String>,
    pub quick: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Immediate,
    Polling,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Immediate => "immediate",
            Mode::Polling => "polling",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyRun {
    pub profile: Profile,
    pub mode: Mode,
    pub rate_per_s: f64,
    pub warmup: usize,
    #[serde(flatten)]
    pub latencies: Latencies,
    pub usage: Usage,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PollingRatio {
    pub profile: Profile,
    /// Polling ÷ immediate.
    pub p50_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BurstRun {
    pub profile: Profile,
    #[serde(flatten)]
    pub burst: Burst,
    /// Rows per write-back during the drain, from the daemon's /v1/stats.
    pub avg_batch: Option<f64>,
}

/// Where a row's time goes, and the throughput ceiling that follows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Breakdown {
    /// How the ceiling is computed.
    pub ceiling_model: String,
    pub batched: Vec<BatchedRow>,
    pub single_short: SingleRow,
}

/// Per-row costs in full batches (a burst).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchedRow {
    pub profile: Profile,
    pub tokenize_ms: f64,
    pub inference_ms: f64,
    /// Model wall time per row with all cores (tokenize + inference).
    pub model_ms: f64,
    /// CPU time of the model per row, all threads.
    pub model_cpu_ms: Option<f64>,
    pub claim_ms: f64,
    pub write_ms: f64,
    /// Core time the database spends per row (claim + write): PostgreSQL's CPU where measured,
    /// else the statements' wall time.
    pub db_core_ms: f64,
    /// cores / (cores × model + db): the model holds every core while it runs, the database's
    /// work runs on any core in between.
    pub ceiling_rows_per_s: f64,
    /// 1 / max(model, db): the bound if model and database had cores of their own.
    pub ceiling_separate_cores_rows_per_s: f64,
    pub raw_rows_per_s: f64,
    pub burst_rows_per_s: Option<f64>,
    pub burst_vs_ceiling: Option<f64>,
    pub burst_vs_raw: Option<f64>,
    /// Measured during the burst: the daemon's CPU and PostgreSQL's, per row.
    pub burst_daemon_cpu_ms: Option<f64>,
    pub burst_postgres_cpu_ms: Option<f64>,
}

/// A lone short row, step by step (P50s), against the measured P50 latency.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SingleRow {
    pub tokenize_ms: Option<f64>,
    pub inference_ms: Option<f64>,
    pub claim_ms: Option<f64>,
    pub write_ms: Option<f64>,
    pub accounted_ms: Option<f64>,
    pub measured_p50_ms: Option<f64>,
    /// Measured − accounted: notification delivery, wake-up, scheduling, the client's own read.
    pub unaccounted_ms: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Idle {
    pub window_s: f64,
    /// % of one core.
    pub immediate_cpu_percent: Option<f64>,
    pub polling_cpu_percent: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Memory {
    pub daemons: Vec<Stopped>,
    /// The largest peak of the daemons that worked (all but the idle-window one).
    pub peak_rss_mb_under_load: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub value: Option<f64>,
    pub unit: String,
    pub met: Option<bool>,
}

/// A target met when the value is at most `limit` (`Le`) or at least `limit` (`Ge`).
#[derive(Clone, Copy)]
enum Bound {
    Le(f64),
    Ge(f64),
}

fn target(name: &str, bound: Bound, value: Option<f64>, unit: &str, note: &str) -> Target {
    let (goal, met) = match bound {
        Bound::Le(l) => (format!("<= {l} {unit}{note}"), value.map(|v| v <= l)),
        Bound::Ge(l) => (format!(">= {l} {unit}{note}"), value.map(|v| v >= l)),
    };
    Target {
        name: name.into(),
        goal,
        value,
        unit: unit.into(),
        met,
    }
}

/// B's tail latency under A's backfill against B's alone (a B row left without a vector
/// counts as missed).
pub fn fairness_target(fr: &Fairness) -> Target {
    Target {
        name: "fairness: P99 of B while A backfills - idle".into(),
        goal: format!("<= {:.0} ms", fr.target_ms),
        value: fr.p99_diff_ms,
        unit: "ms".into(),
        met: fr.met,
    }
}

/// Per-row costs from the raw model and the database write, against the burst.
pub fn batched_row(
    raw: &RawProfile,
    db: &DbWrite,
    burst: Option<&BurstRun>,
    cores: usize,
) -> BatchedRow {
    let b = &raw.batch;
    let model_ms = b.tokenize_ms_per_row + b.model_ms_per_row;
    let db_wall = db.batches.claim_ms_per_row + db.batches.write_ms_per_row;
    let db_core = db.batches.postgres_cpu_ms_per_row.unwrap_or(db_wall);
    let c = cores as f64;
    let ceiling = 1e3 * c / (c * model_ms + db_core);
    let burst_rate = burst.map(|r| r.burst.rows_per_s);
    BatchedRow {
        profile: raw.profile,
        tokenize_ms: b.tokenize_ms_per_row,
        inference_ms: b.model_ms_per_row,
        model_ms,
        model_cpu_ms: b.cpu_ms_per_row,
        claim_ms: db.batches.claim_ms_per_row,
        write_ms: db.batches.write_ms_per_row,
        db_core_ms: db_core,
        ceiling_rows_per_s: ceiling,
        ceiling_separate_cores_rows_per_s: 1e3 / model_ms.max(db_core),
        raw_rows_per_s: b.rows_per_s,
        burst_rows_per_s: burst_rate,
        burst_vs_ceiling: burst_rate.map(|r| r / ceiling),
        burst_vs_raw: burst_rate.map(|r| r / b.rows_per_s),
        burst_daemon_cpu_ms: burst.and_then(|r| r.burst.daemon_cpu_ms_per_row),
        burst_postgres_cpu_ms: burst.and_then(|r| r.burst.postgres_cpu_ms_per_row),
    }
}

pub const CEILING_MODEL: &str = "ceiling = cores / (cores x model_ms + db_core_ms) rows per ms: \
    ONNX Runtime runs each batch on every core (intra-op threads = cores), so a row holds the \
    whole machine for its model wall time; the database's CPU per row (claim + write-back + HNSW \
    insert + WAL, measured as the PostgreSQL cluster's CPU while precomputed vectors are written \
    through the daemon's own statements) fits on any core. Model costs come from the raw-model \
    run at the daemon's batch size; the database cost is the short profile's (the vector is the \
    same size for long texts).";

pub fn single_row(raw: &RawModel, db: &DbWrite, measured_p50: Option<f64>) -> SingleRow {
    let s = &raw.short.single;
    // Lone inserts reach the model paced, not back to back.
    let embed = s.paced_embed_ms.p50.or(s.embed_ms.p50);
    let tokenize = s.tokenize_ms.p50;
    let inference = embed.zip(tokenize).map(|(e, t)| (e - t).max(0.0));
    let claim = db.singles.claim_ms.p50;
    let write = db.singles.write_ms.p50;
    let accounted = embed.zip(claim).zip(write).map(|((e, c), w)| e + c + w);
    SingleRow {
        tokenize_ms: tokenize,
        inference_ms: inference,
        claim_ms: claim,
        write_ms: write,
        accounted_ms: accounted,
        measured_p50_ms: measured_p50,
        unaccounted_ms: measured_p50.zip(accounted).map(|(m, a)| m - a),
    }
}

impl Results {
    pub fn latency_of(&self, profile: Profile, mode: Mode) -> Option<&LatencyRun> {
        self.latency
            .iter()
            .find(|r| r.profile == profile && r.mode == mode)
    }

    /// The performance targets against this run (reported, never asserted).
    pub fn evaluate(&mut self, st_reference_rows_per_s: f64) {
        let st = self.raw_model.sentence_transformers.as_ref();
        let st_rate =
            |profile: &str| st.and_then(|st| st[profile]["batched"]["rows_per_s"].as_f64());
        let (st_short, st_source) = match st_rate("short") {
            Some(r) => (r, "measured in this run"),
            None => (st_reference_rows_per_s, "reference figure"),
        };
        let st_long = st_rate("long");
        let short = self
            .latency_of(Profile::Short, Mode::Immediate)
            .map(|r| r.latencies.client_ms.clone());
        let burst = self
            .breakdown
            .batched
            .iter()
            .find(|b| b.profile == Profile::Short);
        let trickle = |profile: Profile| {
            self.burst
                .iter()
                .find(|b| b.profile == profile)
                .map(|b| b.burst.trickle.client_ms.clone())
        };
        let (trickle_short, trickle_long) = (trickle(Profile::Short), trickle(Profile::Long));
        let raw = &self.raw_model;
        let p50 = |p: &Option<pgai_trigger::Percentiles>| p.as_ref().and_then(|p| p.p50);
        let p99 = |p: &Option<pgai_trigger::Percentiles>| p.as_ref().and_then(|p| p.p99);
        let st_long_note = match st_long {
            Some(r) => format!(" of {r:.1} rows/s (measured in this run)"),
            None => " (needs --st-python)".into(),
        };
        use Bound::{Ge, Le};
        self.targets = vec![
            target(
                "latency P50, short, immediate",
                Le(5.0),
                p50(&short),
                "ms",
                "",
            ),
            target(
                "latency P99, short, immediate",
                Le(12.0),
                p99(&short),
                "ms",
                "",
            ),
            target(
                "single insert during a short burst, P50",
                Le(30.0),
                p50(&trickle_short),
                "ms",
                "",
            ),
            target(
                "single insert during a short burst, P99",
                Le(80.0),
                p99(&trickle_short),
                "ms",
                "",
            ),
            target(
                "single insert during a long burst, P99",
                Le(300.0),
                p99(&trickle_long),
                "ms",
                "",
            ),
            target(
                "burst, short (mixed short lengths)",
                Ge(330.0),
                burst.and_then(|b| b.burst_rows_per_s),
                "rows/s",
                "",
            ),
            target(
                "burst / ceiling, short",
                Ge(0.9),
                burst.and_then(|b| b.burst_vs_ceiling),
                "",
                "",
            ),
            target(
                "raw model, short, batch vs sentence-transformers",
                Ge(1.2),
                Some(raw.short.batch.rows_per_s / st_short),
                "x",
                &format!(" of {st_short:.0} rows/s ({st_source})"),
            ),
            target(
                "raw model, long, batch vs sentence-transformers",
                Ge(1.3),
                st_long.map(|r| raw.long.batch.rows_per_s / r),
                "x",
                &st_long_note,
            ),
            target(
                "raw model, a lone short text back to back, P50",
                Le(2.0),
                raw.short.single.embed_ms.p50,
                "ms",
                "",
            ),
            target(
                "idle CPU, immediate daemon",
                Le(0.5),
                self.idle.immediate_cpu_percent,
                "%",
                " of a core",
            ),
            target(
                "peak RSS under load",
                Le(300.0),
                self.memory.peak_rss_mb_under_load,
                "MB",
                "",
            ),
            fairness_target(&self.fairness),
        ];
    }
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// The plain-text table (also printed).
pub fn table(r: &Results) -> String {
    let mut o = header(&r.meta, &r.phases);
    let m = &r.meta;
    let _ = writeln!(o, "\n1-2. Latency of single inserts: insert commit -> embedding_ready received (client clock), ms");
    let _ = writeln!(o, "  profile mode       rate/s  rows   p50     p95     p99     max      | db clock p50   p99   | missing");
    for l in &r.latency {
        let c = &l.latencies.client_ms;
        let d = &l.latencies.db_ms;
        let _ = writeln!(
            o,
            "  {:<7} {:<10} {:>6.0} {:>5}  {:>7} {:>7} {:>7} {:>8} | {:>12} {:>7} | {}",
            l.profile.name(),
            l.mode.name(),
            l.rate_per_s,
            l.latencies.rows,
            f(c.p50, 1),
            f(c.p95, 1),
            f(c.p99, 1),
            f(c.max, 1),
            f(d.p50, 1),
            f(d.p99, 1),
            l.latencies.missing
        );
    }
    for p in &r.polling {
        let _ = writeln!(
            o,
            "  polling / immediate, {}: P50 x{}, P99 x{}",
            p.profile.name(),
            f(p.p50_ratio, 1),
            f(p.p99_ratio, 1)
        );
    }

    let _ = writeln!(
        o,
        "\n3. Burst: rows committed in one INSERT, until every vector is announced"
    );
    let _ = writeln!(o, "  profile  rows   insert s  first s  drain s  rows/s  batch | cores: daemon  postgres  other | singles during drain: n  p50 ms   p99 ms");
    for b in &r.burst {
        let u = &b.burst.usage;
        let t = &b.burst.trickle;
        let _ = writeln!(
            o,
            "  {:<7} {:>6} {:>9.2} {:>8} {:>8.1} {:>7.0} {:>6} | {:>13} {:>9} {:>6} | {:>22} {:>7} {:>8}",
            b.profile.name(),
            b.burst.rows,
            b.burst.insert_s,
            f(b.burst.first_vector_s, 2),
            b.burst.drain_s,
            b.burst.rows_per_s,
            f(b.avg_batch, 1),
            f(u.daemon_cores, 2),
            f(u.postgres_cores, 2),
            f(u.other_cores, 2),
            t.rows,
            f(t.client_ms.p50, 0),
            f(t.client_ms.p99, 0)
        );
        if b.burst.embedded < b.burst.rows {
            let _ = writeln!(
                o,
                "  !! only {} of {} rows were embedded before the deadline",
                b.burst.embedded, b.burst.rows
            );
        }
    }

    let raw = &r.raw_model;
    let _ = writeln!(
        o,
        "\n4. Raw model in-process (ONNX Runtime, {} threads, no database), same texts, batch {}",
        raw.threads, m.batch_size
    );
    let _ = writeln!(
        o,
        "  profile tokens | alone: p50 ms  p99 ms  paced p50 | batched: rows/s  in {BACKLOG_CALL_BUDGET}-token calls  pipeline/raw"
    );
    for p in [&raw.short, &raw.long] {
        let burst = r
            .burst
            .iter()
            .find(|b| b.profile == p.profile)
            .map(|b| b.burst.rows_per_s);
        let _ = writeln!(
            o,
            "  {:<7} {:>6.0} | {:>13} {:>7} {:>10} | {:>15.1} {:>10.1} (x{:.2}) {:>13}",
            p.profile.name(),
            p.mean_tokens,
            f(p.single.embed_ms.p50, 2),
            f(p.single.embed_ms.p99, 2),
            f(p.single.paced_embed_ms.p50, 2),
            p.batch.rows_per_s,
            p.batch.stepped_rows_per_s,
            p.batch.stepped_rows_per_s / p.batch.rows_per_s,
            f(burst.map(|b| b / p.batch.rows_per_s), 2)
        );
    }
    let _ = writeln!(
        o,
        "  (paced: one call every 1/rate s, as lone inserts arrive; back to back otherwise. Paced on a 1-thread session: short {} ms)",
        f(raw.short.single.paced_one_thread_embed_ms.as_ref().and_then(|p| p.p50), 2)
    );
    if let Some(st) = &raw.sentence_transformers {
        let _ = writeln!(
            o,
            "  sentence-transformers {} / torch {} ({} threads), same texts:",
            st["sentence_transformers"].as_str().unwrap_or("?"),
            st["torch"].as_str().unwrap_or("?"),
            st["threads"]
        );
        let mut others = vec![st];
        others.extend(st.get("onnxruntime_python"));
        for (i, other) in others.into_iter().enumerate() {
            if i == 1 {
                let _ = writeln!(
                    o,
                    "  our model.onnx in ONNX Runtime {}'s Python API (same threads), input tokenised before the clock:",
                    other["version"].as_str().unwrap_or("?")
                );
            }
            for (p, ours) in [("short", &raw.short), ("long", &raw.long)] {
                let a = &other[p]["alone"];
                let b = other[p]["batched"]["rows_per_s"].as_f64();
                let _ = writeln!(
                    o,
                    "  {:<7}        | {:>13} {:>7} {:>10} | {:>15} {:>13}   ours: alone x{}, batched x{}",
                    p,
                    f(a["p50_ms"].as_f64(), 2),
                    f(a["p99_ms"].as_f64(), 2),
                    "",
                    f(b, 1),
                    "",
                    f(a["p50_ms"].as_f64().zip(ours.single.embed_ms.p50).map(|(t, o)| t / o), 2),
                    f(b.map(|b| ours.batch.rows_per_s / b), 2)
                );
            }
        }
    }

    let _ = writeln!(o, "\n   Where a row's time goes in a burst (ms per row)");
    let _ = writeln!(o, "  profile tokenize inference model(wall) model CPU | claim  write  db core | ceiling  burst  burst/ceiling | in burst: daemon CPU  postgres CPU");
    for b in &r.breakdown.batched {
        let _ = writeln!(
            o,
            "  {:<7} {:>8.3} {:>9.3} {:>11.3} {:>9} | {:>5.3} {:>6.3} {:>8.3} | {:>7.0} {:>6} {:>14} | {:>20} {:>13}",
            b.profile.name(),
            b.tokenize_ms,
            b.inference_ms,
            b.model_ms,
            f(b.model_cpu_ms, 3),
            b.claim_ms,
            b.write_ms,
            b.db_core_ms,
            b.ceiling_rows_per_s,
            f(b.burst_rows_per_s, 0),
            f(b.burst_vs_ceiling, 2),
            f(b.burst_daemon_cpu_ms, 3),
            f(b.burst_postgres_cpu_ms, 3)
        );
    }
    let _ = writeln!(o, "  ceiling = cores / (cores x model + db core): the model takes every core while it runs; the database's CPU fits around it");
    let s = &r.breakdown.single_short;
    let _ = writeln!(
        o,
        "   A lone short row (P50s, ms): tokenize {} + inference (paced) {} + claim {} + write {} = {}; measured P50 {} -> {} ms elsewhere (notification, wake-up, scheduling)",
        f(s.tokenize_ms, 2),
        f(s.inference_ms, 2),
        f(s.claim_ms, 2),
        f(s.write_ms, 2),
        f(s.accounted_ms, 2),
        f(s.measured_p50_ms, 2),
        f(s.unaccounted_ms, 2)
    );
    let d = &r.db_write.singles;
    let _ = writeln!(
        o,
        "   (claim and write as the daemon runs them, synchronous_commit off; waiting for each WAL flush they take {} + {} ms)",
        f(d.claim_ms_sync_commit.p50, 2),
        f(d.write_ms_sync_commit.p50, 2)
    );

    let t = &r.trigger_overhead;
    let _ = writeln!(
        o,
        "\n5. Trigger overhead: {} rows in one INSERT, no daemon (median of {})",
        t.rows, t.repeats
    );
    let _ = writeln!(
        o,
        "  no trigger {:.3} s | row trigger {:.3} s ({:+.2} us/row, x{:.2}) | statement trigger {:.3} s ({:+.2} us/row, x{:.2})",
        t.no_trigger_s,
        t.row_trigger_s,
        t.row_trigger_us_per_row,
        t.row_trigger_ratio,
        t.statement_trigger_s,
        t.statement_trigger_us_per_row,
        t.statement_trigger_ratio
    );

    let _ = writeln!(o, "\n6. Daemon process");
    let _ = writeln!(
        o,
        "  idle CPU over {:.0} s: immediate {} %, polling {} % (of one core)",
        r.idle.window_s,
        f(r.idle.immediate_cpu_percent, 3),
        f(r.idle.polling_cpu_percent, 3)
    );
    let peaks: Vec<String> = r
        .memory
        .daemons
        .iter()
        .map(|d| format!("{} {}", d.label, f(d.peak_rss_mb, 0)))
        .collect();
    let _ = writeln!(o, "  peak RSS (MB): {}", peaks.join(", "));

    fairness_section(&mut o, &r.fairness, "7");
    targets_section(&mut o, &r.targets);
    let short = r.latency_of(Profile::Short, Mode::Immediate);
    let burst = r.burst.iter().find(|b| b.profile == Profile::Short);
    summary_section(
        &mut o,
        &[
            format!(
                "- A lone short insert gets its vector (commit -> `embedding_ready` received) in P50 {} ms, P99 {} ms ({}/s, LISTEN mode).",
                f(short.and_then(|l| l.latencies.client_ms.p50), 1),
                f(short.and_then(|l| l.latencies.client_ms.p99), 1),
                short.map(|l| l.rate_per_s).unwrap_or(0.0)
            ),
            format!(
                "- A burst of {} short rows in one INSERT drains at {} rows/s; a single insert made meanwhile gets its vector in P50 {} ms, P99 {} ms.",
                burst.map(|b| b.burst.rows).unwrap_or(0),
                f(burst.map(|b| b.burst.rows_per_s), 0),
                f(burst.and_then(|b| b.burst.trickle.client_ms.p50), 1),
                f(burst.and_then(|b| b.burst.trickle.client_ms.p99), 1)
            ),
            fairness_summary(&r.fairness),
        ],
    );
    o
}

/// The table of a `--fairness-only` run.
pub fn fairness_only_table(r: &FairnessOnly) -> String {
    let mut o = header(&r.meta, &r.phases);
    fairness_section(&mut o, &r.fairness, "1");
    targets_section(&mut o, &r.targets);
    summary_section(&mut o, &[fairness_summary(&r.fairness)]);
    o
}

/// The run's command, machine and database, and a warning when others shared the cores.
fn header(m: &Meta, phases: &[PhaseUsage]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "pgai-trigger bench, {} UTC, {:.0} s",
        m.started_utc, m.duration_s
    );
    let _ = writeln!(
        o,
        "command:  {}   (git {})",
        m.command,
        m.git.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        o,
        "machine:  {} cores ({}), load average at start {}; other programs used up to {} cores during a phase",
        m.cores,
        m.cpu_model.as_deref().unwrap_or("?"),
        m.load_avg_start.map(|l| format!("{:.2}", l[0])).unwrap_or_else(|| "?".into()),
        f(m.other_cores_max, 2)
    );
    let _ = writeln!(
        o,
        "database: {}, PostgreSQL {}, pgvector {}, fsync {}, synchronous_commit {}; daemon --batch-size {}{}",
        m.database,
        m.postgres_version,
        m.pgvector_version.as_deref().unwrap_or("?"),
        m.fsync,
        m.synchronous_commit,
        m.batch_size,
        if m.daemon_args.is_empty() { String::new() } else { format!(" {}", m.daemon_args.join(" ")) }
    );
    if m.other_cores_max.is_some_and(|o| o > 0.25) {
        let noisy: Vec<String> = phases
            .iter()
            .filter(|p| p.usage.other_cores.is_some_and(|o| o > 0.25))
            .map(|p| format!("{} {}", p.phase, f(p.usage.other_cores, 2)))
            .collect();
        let _ = writeln!(o, "NOISY: other programs shared the cores (cores used by others: {}); times are pessimistic", noisy.join(", "));
    }
    if m.quick {
        let _ = writeln!(
            o,
            "QUICK RUN: counts shrunk to prove the command works; the numbers mean little"
        );
    }
    o
}

/// Section `n`: vectorizer B's single inserts alone and while A backfills.
fn fairness_section(o: &mut String, fr: &Fairness, n: &str) {
    let bf = &fr.backfill;
    let _ = writeln!(
        o,
        "\n{n}. Fairness: one daemon, two vectorizers; single inserts into B ({} at {}/s), alone and while A backfills {} rows",
        fr.singles, fr.rate_per_s, fr.backfill_rows
    );
    let _ = writeln!(
        o,
        "   latency = embedded_at - queued_at in B's queue (database clock: insert -> vector written), ms"
    );
    let _ = writeln!(
        o,
        "  run     rows   p50     p95     p99     max      | missing"
    );
    for (label, l) in [("idle", &fr.idle), ("loaded", &fr.loaded)] {
        let _ = writeln!(
            o,
            "  {:<6} {:>5}  {:>7} {:>7} {:>7} {:>8} | {}",
            label,
            l.rows,
            f(l.db_ms.p50, 1),
            f(l.db_ms.p95, 1),
            f(l.db_ms.p99, 1),
            f(l.db_ms.max, 1),
            l.missing
        );
    }
    let mark = match fr.met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    };
    let _ = writeln!(
        o,
        "  loaded - idle: P50 {} ms, P99 {} ms; target: P99 within {:.0} ms of idle: {mark}",
        f(fr.p50_diff_ms, 1),
        f(fr.p99_diff_ms, 1),
        fr.target_ms
    );
    let _ = writeln!(
        o,
        "  A's backfill during the loaded window ({:.1} s): {} rows, {:.0} rows/s; pending {} at the start, {} at the end (table filled in {:.1} s, create_vectorizer {:.2} s, first vector after {} s)",
        bf.window_s,
        bf.rows_in_window,
        bf.rows_per_s,
        bf.pending_at_start,
        bf.pending_at_end,
        bf.fill_s,
        bf.create_s,
        f(bf.first_vector_s, 2)
    );
    let u = &fr.usage;
    let _ = writeln!(
        o,
        "  cores during the window: daemon {}, postgres {}, other {}",
        f(u.daemon_cores, 2),
        f(u.postgres_cores, 2),
        f(u.other_cores, 2)
    );
    if bf.drained_during_window {
        let _ = writeln!(
            o,
            "  !! A drained before the window ended: part of the loaded run had no backfill beside it (use more --fairness-rows)"
        );
    }
}

/// The one-line fairness figure for the README.
fn fairness_summary(fr: &Fairness) -> String {
    format!(
        "- Fairness: while vectorizer A backfills {} rows ({:.0} rows/s), a lone insert into vectorizer B gets its vector in P50 {} ms / P99 {} ms, against {} / {} ms alone ({} ms at P99; target within {:.0} ms: {}).",
        fr.backfill_rows,
        fr.backfill.rows_per_s,
        f(fr.loaded.db_ms.p50, 1),
        f(fr.loaded.db_ms.p99, 1),
        f(fr.idle.db_ms.p50, 1),
        f(fr.idle.db_ms.p99, 1),
        fr.p99_diff_ms.map(|d| format!("{d:+.1}")).unwrap_or_else(|| "-".into()),
        fr.target_ms,
        match fr.met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "n/a",
        }
    )
}

fn targets_section(o: &mut String, targets: &[Target]) {
    let _ = writeln!(o, "\nTargets");
    for t in targets {
        let mark = match t.met {
            Some(true) => "met   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        let _ = writeln!(
            o,
            "  [{mark}] {:<50} {:<24} {} {}",
            t.name,
            t.goal,
            f(t.value, 2),
            t.unit
        );
    }
}

/// Lines ready to paste into the README's Performance section.
fn summary_section(o: &mut String, lines: &[String]) {
    let _ = writeln!(o, "\nSummary (README-ready)");
    for l in lines {
        let _ = writeln!(o, "{l}");
    }
}
