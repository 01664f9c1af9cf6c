//! What every fault scenario shares: the reference model, an embedder with fault hooks, a
//! database with an audit trail of claims and writes, the real daemon as a child process, a
//! stream of client writes, the common end assertion and the report line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgai_embed::{EmbedError, Embedder};
use pgai_testkit::{cosine, fresh_database, wait_for};
use pgai_trigger::{schema, Table};
use pgai_trigger::{Config, EmbedService};
use pgvector::Vector;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

pub use pgai_testkit::{wait_drained, wait_drained_except};

/// Longest any single wait may take before the scenario fails.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// How long a stopped (SIGSTOP) daemon's already-sent statements get to finish on the server.
pub const SETTLE: Duration = Duration::from_millis(300);

/// The unmodified model, shared by the whole test process: daemons that need no hooks, and the
/// end assertion's expected vectors.
pub async fn model() -> EmbedService {
    pgai_testkit::model().await
}

// ---------------------------------------------------------------------------------------------
// An embedder with fault hooks, wrapping the real one.

/// Switches a test flips while the daemon runs. Markers match by substring of a text.
#[derive(Default)]
pub struct Hooks {
    /// Model calls to fail before behaving again (provider down, then back).
    pub fail_next: AtomicUsize,
    /// Every call fails while set.
    pub always_fail: AtomicBool,
    /// Any call with a text containing this fails (a row the provider always rejects).
    pub fail_on: Mutex<Option<String>>,
    /// Any call with a text containing this panics (a row that crashes the model).
    pub panic_on: Mutex<Option<String>>,
    /// Texts containing this get a vector of NaNs (a provider returning garbage).
    pub nan_on: Mutex<Option<String>>,
    /// Any call with a text containing this fails for good (HTTP 422 of a remote provider).
    pub reject_on: Mutex<Option<String>>,
    /// Any call with a text containing this fails with a message holding a NUL byte.
    pub nul_error_on: Mutex<Option<String>>,
    gate: Mutex<Option<GateInner>>,
    /// Model calls seen, failed or not.
    pub calls: AtomicUsize,
    /// Model calls that failed on purpose.
    pub failed_calls: AtomicUsize,
}

struct GateInner {
    marker: String,
    started: tokio::sync::mpsc::UnboundedSender<Vec<String>>,
    release: std::sync::mpsc::Receiver<()>,
}

/// The test's side of a gate: learns when the model starts on the marked text, and lets it go.
pub struct Gate {
    started: tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
    release: std::sync::mpsc::Sender<()>,
}

impl Gate {
    /// Waits until the model holds a batch with the marked text; returns the batch's texts.
    pub async fn started(&mut self) -> Vec<String> {
        tokio::time::timeout(DEADLINE, self.started.recv())
            .await
            .expect("timed out waiting for the model to start on the gated text")
            .expect("gate dropped")
    }

    pub fn release(&self) {
        let _ = self.release.send(());
    }
}

impl Hooks {
    /// The next model call with a text containing `marker` blocks until the gate is released
    /// (once; later calls pass).
    pub fn gate(&self, marker: &str) -> Gate {
        let (started_tx, started_rx) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        *self.gate.lock().unwrap() = Some(GateInner {
            marker: marker.to_string(),
            started: started_tx,
            release: release_rx,
        });
        Gate {
            started: started_rx,
            release: release_tx,
        }
    }

    pub fn set_fail_on(&self, marker: Option<&str>) {
        *self.fail_on.lock().unwrap() = marker.map(str::to_string);
    }

    pub fn set_panic_on(&self, marker: Option<&str>) {
        *self.panic_on.lock().unwrap() = marker.map(str::to_string);
    }
}

struct Faulty {
    inner: pgai_embed::OnnxEmbedder,
    hooks: Arc<Hooks>,
}

fn any_contains(texts: &[&str], marker: &Option<String>) -> bool {
    marker
        .as_deref()
        .is_some_and(|m| texts.iter().any(|t| t.contains(m)))
}

impl Embedder for Faulty {
    fn model_name(&self) -> &str {
        self.inner.model_name()
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
        self.inner.count_tokens(text)
    }
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let h = &self.hooks;
        h.calls.fetch_add(1, SeqCst);
        if any_contains(texts, &h.panic_on.lock().unwrap()) {
            panic!("test hook: poison text");
        }
        let gate = {
            let mut g = h.gate.lock().unwrap();
            if g.as_ref()
                .is_some_and(|g| texts.iter().any(|t| t.contains(&g.marker)))
            {
                g.take()
            } else {
                None
            }
        };
        if let Some(g) = gate {
            let _ = g
                .started
                .send(texts.iter().map(|t| t.to_string()).collect());
            // Returns on release, or when the test drops its side (a failed test).
            let _ = g.release.recv();
        }
        let fail = |why: &str| {
            h.failed_calls.fetch_add(1, SeqCst);
            Err(EmbedError::Inference(format!("test hook: {why}")))
        };
        if h.always_fail.load(SeqCst) {
            return fail("provider down");
        }
        if h.fail_next
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return fail("provider failing for a while");
        }
        if any_contains(texts, &h.fail_on.lock().unwrap()) {
            return fail("provider rejects this text");
        }
        if any_contains(texts, &h.reject_on.lock().unwrap()) {
            h.failed_calls.fetch_add(1, SeqCst);
            return Err(EmbedError::Remote {
                url: "http://provider.test/v1".into(),
                status: Some(422),
                message: "test hook: this input is not accepted".into(),
            });
        }
        if any_contains(texts, &h.nul_error_on.lock().unwrap()) {
            return fail("a message with a NUL \0 byte");
        }
        let mut vectors = self.inner.embed(texts)?;
        if let Some(marker) = h.nan_on.lock().unwrap().as_deref() {
            for (t, v) in texts.iter().zip(vectors.iter_mut()) {
                if t.contains(marker) {
                    v.iter_mut().for_each(|x| *x = f32::NAN);
                }
            }
        }
        Ok(vectors)
    }
}

/// A model thread of its own (one ONNX session) whose behaviour the returned hooks control.
pub async fn faulty_model() -> (EmbedService, Arc<Hooks>) {
    let hooks = Arc::new(Hooks::default());
    let h = hooks.clone();
    let service = EmbedService::start(
        move || {
            let files = pgai_embed::ModelFiles::locate()?;
            let inner = pgai_embed::OnnxEmbedder::load(&files, 1)?;
            Ok(Box::new(Faulty { inner, hooks: h }) as Box<dyn Embedder>)
        },
        2,
    )
    .await
    .unwrap_or_else(|e| panic!("loading the model: {e}"));
    (service, hooks)
}

// ---------------------------------------------------------------------------------------------
// Databases with an audit trail.

pub async fn connect(url: &str) -> Client {
    pgai_trigger::connect(url, "faults test")
        .await
        .expect("connect")
        .0
}

/// Test-only audit triggers: every committed vector write (`fault_writes`, with the claim token
/// that wrote it) and every change of claim holder (`fault_claims`, flagging a take-over of a
/// claim that had not expired). Transactional, so nothing is missed across crashes.
const AUDIT_SQL: &str = r#"
CREATE TABLE fault_writes (id text, version bigint, writer text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE fault_claims (id text, version bigint, token text, prev_token text,
                           prev_unexpired boolean, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION fault_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.embedded_at IS DISTINCT FROM OLD.embedded_at AND NEW.embedding IS NOT NULL
       AND NEW.needs_embedding IS NOT TRUE THEN
        INSERT INTO fault_writes (id, version, writer) VALUES (NEW.id, NEW.content_version, OLD.claimed_by);
    END IF;
    IF NEW.claimed_by IS NOT NULL AND NEW.claimed_by IS DISTINCT FROM OLD.claimed_by THEN
        INSERT INTO fault_claims (id, version, token, prev_token, prev_unexpired)
        VALUES (NEW.id, NEW.content_version, NEW.claimed_by, OLD.claimed_by,
                OLD.claimed_by IS NOT NULL AND OLD.claim_expires_at > clock_timestamp());
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER fault_audit AFTER UPDATE ON m0_episodic FOR EACH ROW EXECUTE FUNCTION fault_audit();
"#;

/// Applies the schema and the audit triggers to the database at `url`.
pub async fn prepare(url: &str) -> Client {
    let client = connect(url).await;
    schema::init(&client, &Table::default(), pgai_embed::DIM)
        .await
        .expect("db init");
    client
        .batch_execute(AUDIT_SQL)
        .await
        .expect("audit triggers");
    client
}

/// A fresh database on the shared cluster, prepared.
pub async fn scenario_db(prefix: &str) -> (String, Client) {
    let url = fresh_database(&format!("faults_{prefix}")).await;
    let client = prepare(&url).await;
    (url, client)
}

pub async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A daemon's configuration with `max_retries` attempts `interval_ms` apart (doubling) and a
/// 100 ms poll: retries and backoff play out within a test.
pub fn quick_retries(url: &str, max_retries: i32, interval_ms: u64) -> Config {
    let mut cfg = Config::new(url);
    cfg.max_retries = max_retries;
    cfg.retry_interval = Duration::from_millis(interval_ms);
    cfg.poll_interval = Duration::from_millis(100);
    cfg
}

/// What a provider outage cost `queue`: attempts counted, rows failed for good, model calls.
pub struct Outage {
    pub window: Duration,
    pub burned: i64,
    pub failed: Vec<String>,
    pub calls: usize,
}

/// Lets every model call fail (`hooks.always_fail`, already set) for `window`, an observation
/// window and not a synchronisation, then brings the provider back and says what it cost.
pub async fn observe_outage(db: &Client, queue: &str, hooks: &Hooks, window: Duration) -> Outage {
    tokio::time::sleep(window).await;
    let burned = count(
        db,
        &format!("SELECT coalesce(sum(retry_count), 0)::int8 FROM {queue}"),
    )
    .await;
    let failed = db
        .query(
            &format!("SELECT id FROM {queue} WHERE retry_status = 'failed' ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let calls = hooks.calls.load(SeqCst);
    hooks.always_fail.store(false, SeqCst);
    Outage {
        window,
        burned,
        failed,
        calls,
    }
}

impl Outage {
    pub fn note(&self) -> String {
        format!(
            "during the outage: {} model calls, {} attempts counted, {} rows failed",
            self.calls,
            self.burned,
            self.failed.len()
        )
    }

    pub fn failed_ids(&self) -> Vec<&str> {
        self.failed.iter().map(String::as_str).collect()
    }

    /// The breaker paused the pipeline: at most one of `rows` failed for good, and at most 6
    /// attempts were counted where per-row backoff alone would spend `max_retries` on each.
    pub fn assert_cheap(&self, rows: usize, max_retries: usize) {
        assert!(
            self.failed.len() <= 1,
            "an outage failed {} of {rows} rows for good",
            self.failed.len()
        );
        assert!(
            self.burned <= 6,
            "an outage of {:?} burned {} attempts (per-row backoff alone: {})",
            self.window,
            self.burned,
            rows * max_retries
        );
    }
}

/// Rows still to be embedded (failed rows are not pending: they wait for `retry-failed`).
pub async fn pending(db: &Client) -> i64 {
    count(db, "SELECT count(*) FROM m0_episodic WHERE needs_embedding AND retry_status IS DISTINCT FROM 'failed'").await
}

pub async fn insert(db: &Client, id: &str, content: &str) {
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ($1, $2)",
        &[&id, &content],
    )
    .await
    .unwrap_or_else(|e| panic!("insert {id}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// The common end assertion.

/// What the end of a scenario looks like.
#[derive(Debug, Default)]
pub struct EndState {
    pub rows: i64,
    /// Completed rows whose vector is the model's vector of their current content.
    pub correct: i64,
    pub pending: i64,
    pub failed: Vec<String>,
    /// Completed rows whose vector is not their current content's (id, cosine).
    pub wrong: Vec<(String, f64)>,
    /// Committed writes beyond one per (id, content version).
    pub duplicate_writes: i64,
    /// Claims that took a row from a holder whose lease had not expired.
    pub unexpired_takeovers: i64,
    pub writes: i64,
}

impl EndState {
    /// No row pending, none failed unless expected, every vector right, no row written twice
    /// for one content, never two holders at once.
    pub fn assert_clean(&self, expected_failed: &[&str]) {
        assert_eq!(self.pending, 0, "rows still pending: {self:?}");
        let mut failed = self.failed.clone();
        failed.sort();
        let mut want: Vec<String> = expected_failed.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(failed, want, "failed rows");
        assert!(
            self.wrong.is_empty(),
            "rows whose vector is not their current content's: {:?}",
            self.wrong
        );
        assert_eq!(
            self.correct + self.failed.len() as i64,
            self.rows,
            "{self:?}"
        );
        assert_eq!(
            self.duplicate_writes, 0,
            "a row was written more than once for one content: {self:?}"
        );
        assert_eq!(
            self.unexpired_takeovers, 0,
            "a row had two holders at once: {self:?}"
        );
    }
}

/// Reads every row and compares its vector with the model's vector of its current content
/// (each distinct content embedded once, 64 per model call).
pub async fn end_state(db: &Client) -> EndState {
    let rows = db
        .query(
            "SELECT id, content, embedding, retry_status, needs_embedding FROM m0_episodic",
            &[],
        )
        .await
        .expect("reading rows");
    let mut st = EndState {
        rows: rows.len() as i64,
        ..EndState::default()
    };
    let mut done: Vec<(String, String, Vec<f32>)> = Vec::new();
    for r in &rows {
        let id: String = r.get(0);
        let status: Option<String> = r.get(3);
        let needs: Option<bool> = r.get(4);
        if status.as_deref() == Some("failed") {
            st.failed.push(id);
        } else if needs != Some(false) {
            st.pending += 1;
        } else {
            match r.get::<_, Option<Vector>>(2) {
                Some(v) => done.push((id, r.get(1), v.to_vec())),
                None => st.wrong.push((id, f64::NAN)),
            }
        }
    }
    let mut distinct: Vec<String> = done.iter().map(|d| d.1.clone()).collect();
    distinct.sort();
    distinct.dedup();
    let mut expected: HashMap<String, Vec<f32>> = HashMap::new();
    let reference = model().await;
    for chunk in distinct.chunks(64) {
        let vectors = reference
            .embed(chunk.to_vec())
            .await
            .expect("reference embedding");
        expected.extend(chunk.iter().cloned().zip(vectors));
    }
    for (id, content, v) in done {
        let c = cosine(&v, &expected[&content]);
        if c >= 0.9999 {
            st.correct += 1;
        } else {
            st.wrong.push((id, c));
        }
    }
    st.writes = count(db, "SELECT count(*) FROM fault_writes").await;
    st.duplicate_writes = count(
        db,
        "SELECT coalesce(sum(n - 1), 0)::int8 FROM (SELECT count(*) AS n FROM fault_writes GROUP BY id, version) w",
    )
    .await;
    // Tokens `thief:*` are the tests' own forced take-overs.
    st.unexpired_takeovers = count(
        db,
        "SELECT count(*) FROM fault_claims WHERE prev_unexpired AND token NOT LIKE 'thief:%'",
    )
    .await;
    st
}

// ---------------------------------------------------------------------------------------------
// The report.

/// Prints one line of the scenario table (visible with `--nocapture`; grep `FAULTS|`).
pub fn report(scenario: &str, st: &EndState, recover: Option<Duration>, note: &str) {
    let recover = recover
        .map(|d| format!("{:.2} s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into());
    println!(
        "FAULTS| {:<44} | {:>6} | {:>6} | {:>4} | {:>9} | notes",
        "scenario", "rows", "right", "dups", "recover"
    );
    println!(
        "FAULTS| {scenario:<44} | {:>6} | {:>6} | {:>4} | {recover:>9} | {note}",
        st.rows, st.correct, st.duplicate_writes
    );
}

// ---------------------------------------------------------------------------------------------
// Client writes that keep arriving.

/// Inserts (and now and then updates) rows until stopped; reconnects and retries through lost
/// connections, so every row it counts is committed.
pub struct Stream {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<StreamStats>,
}

#[derive(Debug, Default, Clone)]
pub struct StreamStats {
    pub inserts: usize,
    pub updates: usize,
    /// Statements that failed and were retried (connection lost, server restarting).
    pub retried: usize,
}

impl Stream {
    /// One insert every `every`; every `update_every`-th insert also changes an earlier row's
    /// content (0: never).
    pub fn start(url: &str, prefix: &str, every: Duration, update_every: usize) -> Stream {
        let stop = CancellationToken::new();
        let (url, prefix, token) = (url.to_string(), prefix.to_string(), stop.clone());
        let task = tokio::spawn(async move {
            let mut stats = StreamStats::default();
            let mut db: Option<Client> = None;
            let mut i = 0usize;
            while !token.is_cancelled() {
                let id = format!("{prefix}{i}");
                let text = format!(
                    "{prefix} note {i}: the weather on day {} was {}",
                    i % 17,
                    ["mild", "stormy", "bright", "grey"][i % 4]
                );
                let mut statements = vec![(
                    "INSERT INTO m0_episodic (id, content) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                    id.clone(),
                    text,
                    false,
                )];
                if update_every > 0 && i > 0 && i.is_multiple_of(update_every) {
                    let old = format!("{prefix}{}", i / 2);
                    statements.push((
                        "UPDATE m0_episodic SET content = $2 WHERE id = $1",
                        old,
                        format!("{prefix} revised note {i}, a change of plan"),
                        true,
                    ));
                }
                for (sql, id, text, is_update) in statements {
                    loop {
                        if db.as_ref().is_none_or(|c| c.is_closed()) {
                            db = pgai_trigger::connect(&url, "faults stream")
                                .await
                                .ok()
                                .map(|c| c.0);
                        }
                        let ok = match &db {
                            Some(c) => c.execute(sql, &[&id, &text]).await.is_ok(),
                            None => false,
                        };
                        if ok {
                            break;
                        }
                        stats.retried += 1;
                        db = None;
                        // A client's retry pause, not a synchronisation.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if is_update {
                        stats.updates += 1;
                    } else {
                        stats.inserts += 1;
                    }
                }
                i += 1;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = token.cancelled() => {}
                }
            }
            stats
        });
        Stream { stop, task }
    }

    pub async fn finish(self) -> StreamStats {
        self.stop.cancel();
        self.task.await.expect("stream task")
    }
}

// ---------------------------------------------------------------------------------------------
// The real daemon as a child process.

pub struct Child {
    proc: std::process::Child,
    pub pid: i32,
    log: PathBuf,
}

impl Child {
    /// `pgai-trigger serve --database-url URL --http 127.0.0.1:0 --threads 1 ARGS…`, output to
    /// `dir/<label>.log`.
    pub fn spawn(url: &str, args: &[&str], dir: &Path, label: &str) -> Child {
        let log = dir.join(format!("{label}.log"));
        let out = std::fs::File::create(&log).expect("child log");
        let proc = Command::new(env!("CARGO_BIN_EXE_pgai-trigger"))
            .args([
                "serve",
                "--database-url",
                url,
                "--http",
                "127.0.0.1:0",
                "--threads",
                "1",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawning pgai-trigger");
        let pid = proc.id() as i32;
        Child { proc, pid, log }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signals our own child, which has not been reaped (we own `proc`).
        assert_eq!(
            unsafe { libc::kill(self.pid, sig) },
            0,
            "kill({}, {sig})",
            self.pid
        );
    }

    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.proc.wait();
    }

    /// SIGTERM, then waits up to `within` for the process to exit; panics if it does not.
    pub fn terminate_gracefully(&mut self, within: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let t = Instant::now();
        loop {
            if let Some(status) = self.proc.try_wait().expect("waiting for the daemon") {
                return status;
            }
            assert!(
                t.elapsed() < within,
                "no exit within {within:?} of SIGTERM:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop_signal(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn cont_signal(&self) {
        self.signal(libc::SIGCONT);
    }

    /// The claim-token prefix of this daemon: its worker id contains its pid.
    pub fn token_like(&self) -> String {
        format!("%-{}-%", self.pid)
    }

    /// Waits until the daemon's worker has connected (its session shows in pg_stat_activity).
    pub async fn wait_connected(&mut self, db: &Client) {
        let like = format!("pgai-trigger %-{}-%", self.pid);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let n = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
                    &[&like],
                )
                .await
                .expect("pg_stat_activity")
                .get::<_, i64>(0);
            if n >= 2 {
                return;
            }
            if let Ok(Some(status)) = self.proc.try_wait() {
                panic!("pgai-trigger exited with {status}:\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "daemon never connected:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: as in `signal`; errors (already dead) are fine.
        unsafe {
            libc::kill(self.pid, libc::SIGCONT);
            libc::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.proc.wait();
    }
}

/// Terminates the sessions whose application_name matches `like`; returns how many.
pub async fn terminate(db: &Client, like: &str) -> i64 {
    db.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1 AND pid <> pg_backend_pid()",
        &[&like],
    )
    .await
    .expect("pg_terminate_backend")
    .len() as i64
}

/// Backend pids of the sessions whose application_name matches `like`.
pub async fn backends(db: &Client, like: &str) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1 ORDER BY pid",
        &[&like],
    )
    .await
    .expect("pg_stat_activity")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The rows of `queue` (the table, or a vectorizer's queue table) that `child` holds claimed.
pub async fn claimed_by(db: &Client, queue: &str, child: &Child) -> Vec<String> {
    db.query(
        &format!("SELECT id FROM {queue} WHERE claimed_by LIKE $1"),
        &[&child.token_like()],
    )
    .await
    .expect("claimed rows")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Kills `child` and waits until its sessions are gone from the server, so no statement of
/// it can still commit after we look at its claims.
pub async fn kill_and_wait_gone(db: &Client, child: &mut Child) {
    child.kill9();
    let like = format!("pgai-trigger %-{}-%", child.pid);
    wait_for("the killed daemon's sessions to end", DEADLINE, || async {
        backends(db, &like).await.is_empty().then_some(())
    })
    .await;
}

/// Freezes `child` at a moment it holds claims in `queue`, then SIGKILLs it: mid-batch for
/// certain. Returns the rows it left claimed (re-read once its sessions are gone).
pub async fn kill_mid_batch(db: &Client, queue: &str, child: &mut Child) -> Vec<String> {
    for _ in 0..50 {
        wait_for("the daemon to hold claims", DEADLINE, || async {
            (!claimed_by(db, queue, child).await.is_empty()).then_some(())
        })
        .await;
        child.stop_signal();
        // Statements the daemon sent before it stopped still run (a write-back completes the
        // rows it holds): let them finish, so the claims seen next are the ones the kill orphans.
        tokio::time::sleep(SETTLE).await;
        if !claimed_by(db, queue, child).await.is_empty() {
            kill_and_wait_gone(db, child).await;
            return claimed_by(db, queue, child).await;
        }
        child.cont_signal();
    }
    panic!("never caught the daemon holding claims");
}
