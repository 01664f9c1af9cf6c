//! Provider faults (scenario 8; docs/reliability.md, retries and the breaker): a provider that
//! fails for a while then recovers, texts it always rejects, a text that panics the model, a
//! provider that is down for every row, and `retry-failed`.

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use pgai_trigger::{Config, Daemon};
use tokio_postgres::Client;

use crate::support::*;

/// (id, retry_count, retry_status, last_error, seconds from last_retry_at to embedded_at)
type Attempts = Vec<(String, i32, String, Option<String>, Option<f64>)>;

async fn attempts(db: &Client) -> Attempts {
    db.query(
        "SELECT id, retry_count, retry_status, last_error,
                extract(epoch FROM embedded_at - last_retry_at)::float8
           FROM m0_episodic ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

/// Runs `pgai-trigger retry-failed` if the binary has it; otherwise does what the original
/// design's operators did by hand. Returns which one ran.
async fn retry_failed(url: &str, db: &Client) -> &'static str {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgai-trigger"))
        .args(["retry-failed", "--database-url", url])
        .output()
        .expect("running pgai-trigger");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return "pgai-trigger retry-failed";
    }
    assert!(
        stderr.contains("unrecognized subcommand"),
        "retry-failed exists but failed: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    db.execute("UPDATE m0_episodic SET retry_status = 'pending', retry_count = 0 WHERE retry_status = 'failed'", &[])
        .await
        .unwrap();
    "UPDATE (no retry-failed command yet)"
}

/// Scenario 8a: the provider fails its next 4 calls, then recovers. Attempts are counted on
/// rows (`retry_count`, `last_retry_at`), retried after their backoff, and every row completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08a_provider_fails_then_recovers() {
    let (url, db) = scenario_db("flaky").await;
    let (service, hooks) = faulty_model().await;
    hooks.fail_next.store(4, SeqCst);
    let base = 0.2;
    let daemon = Daemon::start(quick_retries(&url, 5, 200), service)
        .await
        .expect("daemon start");
    let t = Instant::now();
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content) SELECT 'p' || g, 'a sentence for a flaky provider, ' || g FROM generate_series(1, 12) g",
    )
    .await
    .unwrap();
    wait_drained(&db, DEADLINE).await;
    let took = t.elapsed();
    let snap = daemon.monitor().snapshot();
    daemon.stop().await;
    let rows = attempts(&db).await;
    let retried: Vec<_> = rows.iter().filter(|r| r.1 > 0).collect();
    let total: i32 = rows.iter().map(|r| r.1).sum();
    let st = end_state(&db).await;
    report(
        "8a provider fails 4 calls then recovers",
        &st,
        Some(took),
        &format!(
            "{} failed calls; retry_count total {total} on {} rows; {} failed attempts in stats; waits after last failure {:?} s",
            hooks.failed_calls.load(SeqCst),
            retried.len(),
            snap.failed_attempts,
            retried.iter().map(|r| r.4.map(|s| (s * 100.0).round() / 100.0)).collect::<Vec<_>>()
        ),
    );
    st.assert_clean(&[]);
    assert_eq!(hooks.failed_calls.load(SeqCst), 4);
    assert!((1..=4).contains(&total), "attempts counted: {rows:?}");
    for r in &retried {
        assert!(r.3.is_none(), "last_error cleared on success: {r:?}");
        let waited = r.4.expect("last_retry_at set on a retried row");
        let min = 0.75 * base * 2f64.powi(r.1 - 1) - 0.02;
        assert!(
            waited >= min,
            "row {} retried {waited:.3} s after its failure, before its backoff ({min:.3} s)",
            r.0
        );
    }
}

/// Scenario 8b: the provider always rejects some texts: those rows end `failed` after
/// `max_retries` with the error kept; the others complete. `retry-failed` (once the provider
/// accepts them) puts them back, and they complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn s08b_always_failing_rows_end_failed_then_retry_failed_recovers() {
    let (url, db) = scenario_db("rejects").await;
    let (service, hooks) = faulty_model().await;
    hooks.set_fail_on(Some("REJECT"));
    let daemon = Daemon::start(quick_retries(&url, 3, 100), service)
        .await
        .expect("daemon start");
    let t = Instant::now();
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content)
         SELECT CASE WHEN g % 4 = 0 THEN 'bad' ELSE 'ok' END || g,
                CASE WHEN g % 4 = 0 THEN 'REJECT ' ELSE '' END || 'a sentence numbered ' || g
           FROM generate_series(1, 12) g",
    )
    .await
    .unwrap();
    // Evidence if the rejected rows never end `failed`: what the model and the daemon did.
    let failed_all = tokio::time::timeout(DEADLINE, async {
        while count(
            &db,
            "SELECT count(*) FROM m0_episodic WHERE retry_status = 'failed'",
        )
        .await
            < 3
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if failed_all.is_err() {
        let rows = attempts(&db).await;
        panic!(
            "rejected rows not failed after {DEADLINE:?}: rows {:?}; model calls {} ({} failed); daemon {:?}",
            rows.iter().filter(|r| r.0.starts_with("bad")).collect::<Vec<_>>(),
            hooks.calls.load(SeqCst),
            hooks.failed_calls.load(SeqCst),
            daemon.monitor().snapshot()
        );
    }
    wait_drained(&db, DEADLINE).await;
    let to_failed = t.elapsed();
    let failed_rows: Attempts = attempts(&db)
        .await
        .into_iter()
        .filter(|r| r.0.starts_with("bad"))
        .collect();
    hooks.set_fail_on(None);
    let how = retry_failed(&url, &db).await;
    let back: Vec<(String, i32)> = db
        .query(
            "SELECT retry_status, retry_count FROM m0_episodic WHERE id LIKE 'bad%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let t = Instant::now();
    wait_drained(&db, DEADLINE).await;
    let recovered = t.elapsed();
    daemon.stop().await;
    let st = end_state(&db).await;
    report(
        "8b rows always rejected -> failed -> retry",
        &st,
        Some(recovered),
        &format!(
            "failed after {:.2} s; recovered with {how}",
            to_failed.as_secs_f64()
        ),
    );
    for r in &failed_rows {
        assert_eq!((r.1, r.2.as_str()), (3, "failed"), "{r:?}");
        assert!(
            r.3.as_deref()
                .is_some_and(|e| e.contains("rejects this text")),
            "last_error kept: {r:?}"
        );
    }
    assert_eq!(failed_rows.len(), 3);
    // The running daemon may claim (or already finish) them the moment they are put back.
    assert!(
        back.iter().all(|(status, count)| *count == 0
            && ["pending", "processing", "completed"].contains(&status.as_str())),
        "retry-failed resets status and count: {back:?}"
    );
    st.assert_clean(&[]);
}

/// The `retry-failed` command itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_command_puts_failed_rows_back() {
    let (url, db) = scenario_db("retry_cmd").await;
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content, retry_status, retry_count, last_error, next_attempt_at)
         SELECT 'f' || g, 'failed earlier ' || g, 'failed', 3, 'provider said no', now() + interval '1 hour'
           FROM generate_series(1, 5) g",
    )
    .await
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgai-trigger"))
        .args(["retry-failed", "--database-url", &url])
        .output()
        .expect("running pgai-trigger");
    assert!(
        out.status.success(),
        "pgai-trigger retry-failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = Daemon::start(Config::new(&url), model().await)
        .await
        .expect("daemon start");
    let t = Instant::now();
    wait_drained(&db, Duration::from_secs(20)).await;
    daemon.stop().await;
    let st = end_state(&db).await;
    report(
        "8c retry-failed command",
        &st,
        Some(t.elapsed()),
        &String::from_utf8_lossy(&out.stdout)
            .trim()
            .replace('\n', " "),
    );
    st.assert_clean(&[]);
}

/// Retries: a text that panics the model counts an attempt like any failure, ends
/// `failed`, and the daemon keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_text_counts_attempts_and_the_daemon_survives() {
    let (url, db) = scenario_db("panic").await;
    let (service, hooks) = faulty_model().await;
    hooks.set_panic_on(Some("POISON"));
    let daemon = Daemon::start(quick_retries(&url, 2, 100), service)
        .await
        .expect("daemon start");
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content)
         SELECT 'n' || g, 'an ordinary sentence ' || g FROM generate_series(1, 6) g
         UNION ALL SELECT 'poison', 'POISON: this text panics the model'",
    )
    .await
    .unwrap();
    let t = Instant::now();
    wait_drained(&db, DEADLINE).await;
    let took = t.elapsed();
    insert(&db, "after", "a row after the panics").await;
    wait_drained(&db, Duration::from_secs(10)).await;
    let poison: (i32, String, Option<String>) = {
        let r = db
            .query_one(
                "SELECT retry_count, retry_status, last_error FROM m0_episodic WHERE id = 'poison'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    daemon.stop().await;
    let st = end_state(&db).await;
    report(
        "8d panicking text",
        &st,
        Some(took),
        &format!("poison row: {poison:?}"),
    );
    st.assert_clean(&["poison"]);
    assert_eq!(poison.0, 2, "max_retries 2: two attempts counted");
    assert!(
        poison.2.as_deref().is_some_and(|e| e.contains("panic")),
        "last_error names the panic: {poison:?}"
    );
}

/// The provider-wide breaker: a provider that fails every call must not burn every row's attempts
/// in seconds: the pipeline backs off as a whole, and when the provider is back every row
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_backs_off_as_a_whole() {
    let (url, db) = scenario_db("provider_down").await;
    let (service, hooks) = faulty_model().await;
    hooks.always_fail.store(true, SeqCst);
    // Per-row backoff alone would fail all 30 rows within about a second.
    let daemon = Daemon::start(quick_retries(&url, 3, 50), service)
        .await
        .expect("daemon start");
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content) SELECT 'r' || g, 'a sentence while the provider is down, ' || g FROM generate_series(1, 30) g",
    )
    .await
    .unwrap();
    // How much does 4 s of outage cost?
    let outage = observe_outage(&db, "m0_episodic", &hooks, Duration::from_secs(4)).await;
    let back = Instant::now();
    wait_drained(&db, DEADLINE).await;
    let recovered = back.elapsed();
    daemon.stop().await;
    let st = end_state(&db).await;
    report(
        "8e provider down 4 s for every row",
        &st,
        Some(recovered),
        &outage.note(),
    );
    st.assert_clean(&outage.failed_ids());
    outage.assert_cheap(30, 3);
}
