//! The core fault scenarios on a chunked vectorizer over a user's table
//! (`documents(id bigint identity, title, body)`, template `{title}\n\n{body}`, 64-piece chunks
//! with an overlap of 8, three or four chunks a row): the vectorizer's queue `pgai.docs_queue` and
//! chunk table `docs_chunks` go through the same claim, lease and write-back code as the
//! original table, so the same guarantees must hold there.
//!
//! - SIGKILL of a child daemon mid-batch, rows taken over after the lease (V1);
//! - three child daemons sharing the work, every (row, content version) written once (V2);
//! - catch-up after downtime: inserts, updates and deletes while no daemon runs (V3);
//! - rows the provider rejects: retries with backoff, then `failed` with the reason (V4);
//! - the provider down for every row: the breaker keeps the rows' attempts (V5);
//! - least privilege: a daemon role with only the grants listed in [`LEAST_GRANTS`] (V6).
//!
//! Each ends with [`vz_end_state`]: no queue row pending, none failed unless expected, every
//! completed row's chunks the chunking of its current text, each chunk's vector the model's
//! vector of the chunk, no chunk without a completed row, and from the audit triggers: no (id,
//! content version) completed twice, one chunk write per completion, never two holders at once.

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgai_testkit::{cosine, wait_for, TestDir};
use pgai_trigger::{Config, Daemon, RowState};
use pgvector::Vector;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const QUEUE: &str = "pgai.docs_queue";
const CHUNKS: &str = "docs_chunks";
/// Chunking of the vectorizer under test (word pieces incl. [CLS]/[SEP], overlap).
const CHUNK_TOKENS: usize = 64;
const CHUNK_OVERLAP: usize = 8;

/// The user's table, a long-text generator (12 sentences, about 180 word pieces: three or
/// four chunks a row), the vectorizer, and test-only audit triggers on its queue and chunk table.
/// The audit functions are SECURITY DEFINER so a least-privileged daemon fires them too.
const SETUP_SQL: &str = r#"
CREATE TABLE documents (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text, body text);
CREATE FUNCTION vz_body(g bigint, salt text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT string_agg(
           format('%s sentence %s of document %s is about %s and %s.', salt, k, g,
                  (ARRAY['rivers','mountains','old cities','forests','harbours','deserts'])[1 + (g + k) % 6],
                  (ARRAY['the weather','a long journey','their history','the people there','trade'])[1 + (g * k) % 5]),
           CASE WHEN k % 7 = 0 THEN E'\n\n' ELSE ' ' END ORDER BY k)
    FROM generate_series(1, 12) k
$$;
SELECT pgai.create_vectorizer('docs', 'documents', template => E'{title}\n\n{body}',
                              chunk_tokens => 64, chunk_overlap => 8);
CREATE TABLE vz_writes (id text, version bigint, writer text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE vz_claims (id text, version bigint, token text, prev_token text,
                        prev_unexpired boolean, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE vz_chunk_inserts (id text, xid xid8);
CREATE FUNCTION vz_audit() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_catalog AS $$
BEGIN
    IF NEW.embedded_at IS DISTINCT FROM OLD.embedded_at AND NEW.needs_embedding IS NOT TRUE THEN
        INSERT INTO vz_writes (id, version, writer) VALUES (NEW.id, NEW.content_version, OLD.claimed_by);
    END IF;
    IF NEW.claimed_by IS NOT NULL AND NEW.claimed_by IS DISTINCT FROM OLD.claimed_by THEN
        INSERT INTO vz_claims (id, version, token, prev_token, prev_unexpired)
        VALUES (NEW.id, NEW.content_version, NEW.claimed_by, OLD.claimed_by,
                OLD.claimed_by IS NOT NULL AND OLD.claim_expires_at > clock_timestamp());
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER vz_audit AFTER UPDATE ON pgai.docs_queue FOR EACH ROW EXECUTE FUNCTION vz_audit();
CREATE FUNCTION vz_chunk_audit() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = public, pg_catalog AS $$
BEGIN
    INSERT INTO vz_chunk_inserts VALUES (NEW.id::text, pg_current_xact_id());
    RETURN NULL;
END $$;
CREATE TRIGGER vz_chunk_audit AFTER INSERT ON docs_chunks FOR EACH ROW EXECUTE FUNCTION vz_chunk_audit();
"#;

/// A fresh database: schema, the original table's audit, the documents, the vectorizer.
async fn vz_db(prefix: &str) -> (String, Client) {
    let (url, db) = scenario_db(&format!("vz_{prefix}")).await;
    db.batch_execute(SETUP_SQL)
        .await
        .unwrap_or_else(|e| panic!("vectorizer setup: {}", pgai_trigger::db_message(&e)));
    (url, db)
}

/// Inserts `n` documents at once (`salt` makes their texts distinct from other batches').
async fn insert_docs(db: &Client, n: i64, salt: &str) {
    db.execute(
        "INSERT INTO documents (title, body)
         SELECT 'Document ' || $2 || ' ' || g, vz_body(g, $2) FROM generate_series(1::int8, $1::int8) g",
        &[&n, &salt],
    )
    .await
    .expect("insert documents");
}

async fn queued(db: &Client) -> i64 {
    count(
        db,
        &format!(
            "SELECT count(*) FROM {QUEUE} WHERE {}",
            RowState::queued_predicate()
        ),
    )
    .await
}

/// Waits until the vectorizer's queue has nothing pending or processing; returns how long.
async fn vz_drained(db: &Client, deadline: Duration) -> Duration {
    let t = Instant::now();
    let sql = format!(
        "SELECT count(*) FROM {QUEUE} WHERE {}",
        RowState::queued_predicate()
    );
    let left = tokio::time::timeout(deadline, async {
        while count(db, &sql).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if left.is_err() {
        let rows: Vec<String> = db
            .query(
                &format!(
                    "SELECT id, retry_status, retry_count, claimed_by,
                            (claim_expires_at - clock_timestamp())::text,
                            (next_attempt_at - clock_timestamp())::text, left(last_error, 160)
                       FROM {QUEUE} WHERE {} ORDER BY queued_at LIMIT 8",
                    RowState::queued_predicate()
                ),
                &[],
            )
            .await
            .expect("queue rows")
            .iter()
            .map(|r| {
                format!(
                    "{:?}",
                    (
                        r.get::<_, String>(0),
                        r.get::<_, Option<String>>(1),
                        r.get::<_, Option<i32>>(2),
                        r.get::<_, Option<String>>(3),
                        r.get::<_, Option<String>>(4),
                        r.get::<_, Option<String>>(5),
                        r.get::<_, Option<String>>(6),
                    )
                )
            })
            .collect();
        panic!(
            "the vectorizer's queue did not drain within {deadline:?}: {} left, e.g. {rows:?}",
            queued(db).await
        );
    }
    t.elapsed()
}

// ---------------------------------------------------------------------------------------------
// The end state of a chunked vectorizer.

/// [`EndState`] (rows = queue rows) plus what only a chunk table can get wrong.
#[derive(Debug, Default)]
struct VzEnd {
    st: EndState,
    /// Source rows without a queue row, and queue rows without a source row.
    unqueued: i64,
    orphan_queue: i64,
    chunks: i64,
    /// Completed rows whose stored chunks are not the chunking of their current text, or whose
    /// text hash is not their current text's (id, why).
    wrong_chunks: Vec<(String, String)>,
    /// Chunks of no completed row (a deleted, re-queued or failed row's leftovers).
    orphan_chunks: i64,
    /// Completions whose write-back inserted no chunk, or chunk inserts beyond one per
    /// completion (difference of the two counts).
    chunk_writes_mismatch: i64,
}

impl VzEnd {
    fn assert_clean(&self, expected_failed: &[&str]) {
        self.st.assert_clean(expected_failed);
        assert_eq!(
            (self.unqueued, self.orphan_queue),
            (0, 0),
            "source and queue disagree: {self:?}"
        );
        assert!(
            self.wrong_chunks.is_empty(),
            "rows whose chunks are not their current text's: {:?}",
            self.wrong_chunks
        );
        assert_eq!(self.orphan_chunks, 0, "chunks of no completed row");
        assert_eq!(
            self.chunk_writes_mismatch, 0,
            "chunk inserts and completions disagree: {self:?}"
        );
    }

    fn report(&self, scenario: &str, recover: Option<Duration>, note: &str) {
        report(
            scenario,
            &self.st,
            recover,
            &format!("{} chunks; {note}", self.chunks),
        );
    }
}

/// A stored chunk: (chunk_seq, chunk, embedding).
type StoredChunk = (i32, String, Vec<f32>);

fn chunker() -> &'static pgai_embed::Chunker {
    static CHUNKER: OnceLock<pgai_embed::Chunker> = OnceLock::new();
    CHUNKER.get_or_init(|| {
        let files = pgai_embed::ModelFiles::locate().expect("model files");
        pgai_embed::Chunker::from_files(&files).expect("tokenizer")
    })
}

/// Reads every queue row, its current text (the catalog's own `text_sql`) and its chunks, and
/// checks them against a fresh chunking and the reference model (each distinct chunk text
/// embedded once), then the audit trail.
async fn vz_end_state(db: &Client) -> VzEnd {
    let text_sql: String = db
        .query_one(
            "SELECT text_sql FROM pgai.vectorizers WHERE name = 'docs'",
            &[],
        )
        .await
        .expect("catalog")
        .get(0);
    let rows = db
        .query(
            &format!(
                "SELECT q.id, q.retry_status, q.needs_embedding, q.text_hash = md5({text_sql}), {text_sql}
                   FROM {QUEUE} q JOIN documents s ON s.id = q.k_id ORDER BY q.k_id"
            ),
            &[],
        )
        .await
        .expect("queue rows");
    let mut stored: HashMap<String, Vec<StoredChunk>> = HashMap::new();
    for r in db
        .query(
            &format!(
                "SELECT id::text, chunk_seq, chunk, embedding FROM {CHUNKS} ORDER BY id, chunk_seq"
            ),
            &[],
        )
        .await
        .expect("chunks")
    {
        stored.entry(r.get(0)).or_default().push((
            r.get(1),
            r.get(2),
            r.get::<_, Vector>(3).to_vec(),
        ));
    }
    let mut end = VzEnd {
        st: EndState {
            rows: count(db, &format!("SELECT count(*) FROM {QUEUE}")).await,
            ..EndState::default()
        },
        unqueued: count(db, &format!("SELECT count(*) FROM documents s WHERE NOT EXISTS (SELECT 1 FROM {QUEUE} q WHERE q.k_id = s.id)")).await,
        orphan_queue: count(db, &format!("SELECT count(*) FROM {QUEUE} q WHERE NOT EXISTS (SELECT 1 FROM documents s WHERE q.k_id = s.id)")).await,
        chunks: stored.values().map(|c| c.len() as i64).sum(),
        ..VzEnd::default()
    };
    let opts = pgai_embed::ChunkOptions::new(CHUNK_TOKENS, CHUNK_OVERLAP).expect("options");
    let mut done: Vec<(String, Vec<StoredChunk>)> = Vec::new();
    for r in &rows {
        let id: String = r.get(0);
        let status: Option<String> = r.get(1);
        let needs: Option<bool> = r.get(2);
        if status.as_deref() == Some("failed") {
            end.st.failed.push(id);
            continue;
        }
        if needs != Some(false) {
            end.st.pending += 1;
            continue;
        }
        let chunks = stored.remove(&id).unwrap_or_default();
        let text: String = r.get(4);
        let expected: Vec<String> = chunker()
            .split(&text, &opts)
            .expect("reference chunking")
            .into_iter()
            .map(|c| c.text)
            .collect();
        let got: Vec<&str> = chunks.iter().map(|c| c.1.as_str()).collect();
        let seqs_ok = chunks.iter().enumerate().all(|(i, c)| c.0 == i as i32);
        if r.get::<_, Option<bool>>(3) != Some(true) {
            end.wrong_chunks
                .push((id, "text_hash is not the current text's".into()));
        } else if got != expected || !seqs_ok {
            end.wrong_chunks.push((
                id,
                format!(
                    "{} chunks stored, {} expected (seqs in order: {seqs_ok})",
                    got.len(),
                    expected.len()
                ),
            ));
        } else {
            done.push((id, chunks));
        }
    }
    // Whatever is left belongs to no completed row.
    end.orphan_chunks = stored.values().map(|c| c.len() as i64).sum();
    let mut distinct: Vec<String> = done
        .iter()
        .flat_map(|d| d.1.iter().map(|c| c.1.clone()))
        .collect();
    distinct.sort();
    distinct.dedup();
    let mut reference: HashMap<String, Vec<f32>> = HashMap::new();
    let service = model().await;
    for batch in distinct.chunks(64) {
        let vectors = service
            .embed(batch.to_vec())
            .await
            .expect("reference embedding");
        reference.extend(batch.iter().cloned().zip(vectors));
    }
    for (id, chunks) in done {
        let worst = chunks
            .iter()
            .map(|c| cosine(&c.2, &reference[&c.1]))
            .fold(f64::INFINITY, f64::min);
        if worst >= 0.9999 {
            end.st.correct += 1;
        } else {
            end.st.wrong.push((id, worst));
        }
    }
    end.st.writes = count(db, "SELECT count(*) FROM vz_writes").await;
    end.st.duplicate_writes = count(
        db,
        "SELECT coalesce(sum(n - 1), 0)::int8 FROM (SELECT count(*) AS n FROM vz_writes GROUP BY id, version) w",
    )
    .await;
    end.st.unexpired_takeovers = count(
        db,
        "SELECT count(*) FROM vz_claims WHERE prev_unexpired AND token NOT LIKE 'thief:%'",
    )
    .await;
    let chunk_writes = count(
        db,
        "SELECT count(*) FROM (SELECT DISTINCT id, xid FROM vz_chunk_inserts) c",
    )
    .await;
    end.chunk_writes_mismatch = chunk_writes - end.st.writes;
    end
}

// ---------------------------------------------------------------------------------------------
// Client writes that keep arriving, and child daemons.

/// Inserts a long document every `every`; every `update_every`-th insert also rewrites a recent
/// document (likely one being embedded), so content versions move on under the daemons.
struct DocStream {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<(usize, usize)>,
}

impl DocStream {
    fn start(url: &str, every: Duration, update_every: usize) -> DocStream {
        let stop = CancellationToken::new();
        let (url, token) = (url.to_string(), stop.clone());
        let task = tokio::spawn(async move {
            let db = connect(&url).await;
            let (mut inserts, mut updates) = (0, 0);
            let mut i = 0i64;
            while !token.is_cancelled() {
                db.execute(
                    "INSERT INTO documents (title, body) VALUES ('Streamed ' || $1::int8, vz_body($1, 'streamed'))",
                    &[&i],
                )
                .await
                .expect("stream insert");
                inserts += 1;
                if update_every > 0 && i > 0 && i % update_every as i64 == 0 {
                    db.execute(
                        "UPDATE documents SET body = vz_body(id, 'revised ' || $1::int8)
                          WHERE id = (SELECT id FROM documents ORDER BY id DESC OFFSET 3 LIMIT 1)",
                        &[&i],
                    )
                    .await
                    .expect("stream update");
                    updates += 1;
                }
                i += 1;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = token.cancelled() => {}
                }
            }
            (inserts, updates)
        });
        DocStream { stop, task }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.cancel();
        self.task.await.expect("stream task")
    }
}

/// Waits until the child's vectorizer worker has claimed something (it serves the catalog's
/// vectorizers on its own: nothing tells it about `docs` but the catalog).
async fn wait_vz_claims(db: &Client, child: &Child) {
    let like = child.token_like();
    wait_for("the child to claim vectorizer rows", DEADLINE, || async {
        let n = db
            .query_one(
                "SELECT count(*) FROM vz_claims WHERE token LIKE $1",
                &[&like],
            )
            .await
            .expect("vz_claims")
            .get::<_, i64>(0);
        (n > 0).then_some(())
    })
    .await;
}

/// Waits until every row of `ids` has a completion recorded, or a newer content version
/// (a client rewrote it meanwhile); returns when.
async fn wait_settled(db: &Client, ids: &[String]) -> Instant {
    wait_for("the orphaned rows to be written", DEADLINE, || async {
        let n: i64 = db
            .query_one(
                &format!(
                    "SELECT count(*) FROM {QUEUE} q WHERE q.id = ANY($1)
                        AND (EXISTS (SELECT 1 FROM vz_writes w WHERE w.id = q.id)
                             OR q.claimed_by IS NULL AND q.needs_embedding IS NOT TRUE)"
                ),
                &[&ids],
            )
            .await
            .expect("vz_writes")
            .get(0);
        (n == ids.len() as i64).then(Instant::now)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

/// V1: SIGKILL of a child daemon mid-batch (chunks of 8 rows being embedded) while documents and
/// rewrites stream in; a second daemon takes the orphaned rows over once their 3 s lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vz1_sigkill_mid_batch_then_restart() {
    let (url, db) = vz_db("sigkill").await;
    let dir = TestDir::new("vz-sigkill");
    insert_docs(&db, 30, "before").await;
    let args = ["--lease-secs", "3", "--batch-size", "8"];
    let mut first = Child::spawn(&url, &args, dir.path(), "first");
    wait_vz_claims(&db, &first).await;
    let stream = DocStream::start(&url, Duration::from_millis(150), 4);
    wait_for("8 completions", DEADLINE, || async {
        (count(&db, "SELECT count(*) FROM vz_writes").await >= 8).then_some(())
    })
    .await;
    let killed = Instant::now();
    let orphaned = kill_mid_batch(&db, QUEUE, &mut first).await;
    let second = Child::spawn(&url, &args, dir.path(), "second");
    let recovered = if orphaned.is_empty() {
        killed
    } else {
        wait_settled(&db, &orphaned).await
    };
    let (inserts, updates) = stream.finish().await;
    vz_drained(&db, DEADLINE).await;
    let attempts: Vec<i32> = db
        .query(
            &format!("SELECT retry_count FROM {QUEUE} WHERE id = ANY($1) ORDER BY id"),
            &[&orphaned],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let end = vz_end_state(&db).await;
    end.report(
        "V1 vectorizer: SIGKILL mid-batch, restart",
        Some(recovered - killed),
        &format!(
            "30 + {inserts} docs, {updates} rewrites; {} orphaned, retry_count after take-over {attempts:?}",
            orphaned.len()
        ),
    );
    end.assert_clean(&[]);
    assert!(
        !orphaned.is_empty(),
        "the kill should have caught claimed rows"
    );
    drop(second);
}

/// V2: three child daemons on one vectorizer while documents and rewrites stream in: the work
/// is shared, and no (row, content version) is completed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vz2_three_daemons_share_the_work() {
    let (url, db) = vz_db("three").await;
    let dir = TestDir::new("vz-three");
    let args = [
        "--lease-secs",
        "10",
        "--batch-size",
        "4",
        "--poll-interval-ms",
        "300",
    ];
    let t = Instant::now();
    insert_docs(&db, 40, "bulk").await;
    let daemons: Vec<Child> = (0..3)
        .map(|i| Child::spawn(&url, &args, dir.path(), &format!("d{i}")))
        .collect();
    let stream = DocStream::start(&url, Duration::from_millis(100), 3);
    for d in &daemons {
        wait_vz_claims(&db, d).await;
    }
    // Clients write for a while, then stop; the daemons finish.
    wait_for("40 completions", DEADLINE, || async {
        (count(&db, "SELECT count(*) FROM vz_writes").await >= 40).then_some(())
    })
    .await;
    let (inserts, updates) = stream.finish().await;
    let took = t.elapsed() + vz_drained(&db, DEADLINE).await;
    let mut per_daemon = Vec::new();
    for d in &daemons {
        per_daemon.push(
            db.query_one(
                "SELECT count(*) FROM vz_writes WHERE writer LIKE $1",
                &[&d.token_like()],
            )
            .await
            .unwrap()
            .get::<_, i64>(0),
        );
    }
    // Every completed row was completed at its current version.
    let unwritten = count(
        &db,
        &format!(
            "SELECT count(*) FROM {QUEUE} q WHERE q.needs_embedding IS NOT TRUE
               AND NOT EXISTS (SELECT 1 FROM vz_writes w WHERE w.id = q.id AND w.version = q.content_version)"
        ),
    )
    .await;
    let end = vz_end_state(&db).await;
    end.report(
        "V2 vectorizer: three daemons share the work",
        Some(took),
        &format!(
            "40 + {inserts} docs, {updates} rewrites; completions per daemon {per_daemon:?}; {} completions",
            end.st.writes
        ),
    );
    end.assert_clean(&[]);
    assert_eq!(unwritten, 0, "a completed row without its completion");
    assert!(
        per_daemon.iter().filter(|n| **n > 0).count() >= 2,
        "the work was shared: {per_daemon:?}"
    );
    drop(daemons);
}

/// V3: catch-up after downtime. A daemon embeds some documents and stops; while none runs,
/// documents are inserted, rewritten (their old chunks go at once) and deleted (theirs too),
/// and one is updated to the same text (not queued again). A new daemon catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vz3_catch_up_after_downtime() {
    let (url, db) = vz_db("catchup").await;
    let dir = TestDir::new("vz-catchup");
    insert_docs(&db, 10, "first").await;
    let mut first = Child::spawn(&url, &[], dir.path(), "first");
    vz_drained(&db, DEADLINE).await;
    let status = first.terminate_gracefully(Duration::from_secs(15));
    assert!(status.success(), "{status}:\n{}", first.log_tail());
    // Downtime: 40 new documents, 3 rewritten, 2 deleted, one title set to the same value.
    insert_docs(&db, 40, "downtime").await;
    db.batch_execute(
        "UPDATE documents SET body = vz_body(id, 'rewritten while down') WHERE id IN (1, 2, 3);
         DELETE FROM documents WHERE id IN (4, 5);
         UPDATE documents SET title = title WHERE id = 6;",
    )
    .await
    .unwrap();
    let waiting = queued(&db).await;
    let stale = count(
        &db,
        &format!("SELECT count(*) FROM {CHUNKS} WHERE id BETWEEN 1 AND 5"),
    )
    .await;
    let second = Child::spawn(&url, &[], dir.path(), "second");
    let t = Instant::now();
    vz_drained(&db, DEADLINE).await;
    let caught_up = t.elapsed();
    let end = vz_end_state(&db).await;
    end.report(
        "V3 vectorizer: catch-up after downtime",
        Some(caught_up),
        &format!("{waiting} rows waiting at start (incl. model load)"),
    );
    end.assert_clean(&[]);
    assert_eq!(
        waiting, 43,
        "40 inserted + 3 rewritten; an unchanged text is not re-queued"
    );
    assert_eq!(
        stale, 0,
        "rewritten and deleted rows lose their chunks at once"
    );
    assert_eq!(end.st.rows, 48);
    drop(second);
}

/// V4: some chunks the provider always refuses: a transient error (`FAILME`: retried with
/// backoff, `failed` after max_retries), a permanent one (HTTP 422, `REJECTME`: `failed` at
/// once) and NaN vectors (`NANME`). Each marker sits in one chunk of a long row; the row ends
/// `failed` with the reason, its neighbours in the same batches are embedded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vz4_rejected_chunks_end_failed_with_reason() {
    let (url, db) = vz_db("rejects").await;
    let (service, hooks) = faulty_model().await;
    hooks.set_fail_on(Some("FAILME"));
    *hooks.reject_on.lock().unwrap() = Some("REJECTME".into());
    *hooks.nan_on.lock().unwrap() = Some("NANME".into());
    let base = 0.1;
    let daemon = Daemon::start(quick_retries(&url, 3, 100), service)
        .await
        .expect("daemon start");
    let t = Instant::now();
    db.batch_execute(
        "INSERT INTO documents (title, body)
         SELECT 'Document ' || g,
                vz_body(g, 'first half') || E'\n\n'
                || CASE g WHEN 3 THEN 'A sentence with FAILME inside. ' WHEN 7 THEN 'FAILME again. '
                          WHEN 11 THEN 'A refused one: REJECTME. ' WHEN 15 THEN 'A garbage one: NANME. '
                          ELSE '' END
                || vz_body(g, 'second half')
           FROM generate_series(1, 18) g",
    )
    .await
    .unwrap();
    vz_drained(&db, DEADLINE).await;
    let took = t.elapsed();
    daemon.stop().await;
    let failed: Vec<(String, i32, Option<String>)> = db
        .query(
            &format!("SELECT id, retry_count, last_error FROM {QUEUE} WHERE retry_status = 'failed' ORDER BY k_id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // The attempts of each FAILME row: claims spaced at least by their backoff.
    let gaps: Vec<(String, Vec<f64>)> = {
        let mut v = Vec::new();
        for id in ["3", "7"] {
            let at: Vec<f64> = db
                .query(
                    "SELECT extract(epoch FROM at)::float8 FROM vz_claims WHERE id = $1 ORDER BY at",
                    &[&id],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            v.push((id.to_string(), at.windows(2).map(|w| w[1] - w[0]).collect()));
        }
        v
    };
    let end = vz_end_state(&db).await;
    end.report(
        "V4 vectorizer: rejected chunks -> failed",
        Some(took),
        &format!(
            "{} model calls ({} failed); failed rows {:?}; gaps between attempts {gaps:?}",
            hooks.calls.load(SeqCst),
            hooks.failed_calls.load(SeqCst),
            failed.iter().map(|f| (&f.0, f.1)).collect::<Vec<_>>()
        ),
    );
    end.assert_clean(&["3", "7", "11", "15"]);
    let by_id: HashMap<&str, (i32, &str)> = failed
        .iter()
        .map(|f| (f.0.as_str(), (f.1, f.2.as_deref().unwrap_or(""))))
        .collect();
    for id in ["3", "7"] {
        let (n, e) = by_id[id];
        assert_eq!(n, 3, "row {id}: max_retries attempts");
        assert!(e.contains("rejects this text"), "row {id}: {e}");
    }
    assert_eq!(by_id["11"].0, 1, "a permanent refusal fails at once");
    assert!(by_id["11"].1.contains("not accepted"), "{:?}", by_id["11"]);
    assert!(by_id["15"].1.contains("NaN"), "{:?}", by_id["15"]);
    for (id, g) in &gaps {
        assert_eq!(g.len(), 2, "row {id}: three claims, two gaps");
        for (k, gap) in g.iter().enumerate() {
            let min = 0.75 * base * 2f64.powi(k as i32) - 0.02;
            assert!(*gap >= min, "row {id}: attempt {} came {gap:.3} s after the one before, before its backoff ({min:.3} s)", k + 2);
        }
    }
}

/// V5: the provider is down for every call for 4 s: the breaker pauses the vectorizer's
/// pipeline instead of burning every row's attempts; once back, every row is embedded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vz5_provider_down_keeps_attempts() {
    let (url, db) = vz_db("provider_down").await;
    let (service, hooks) = faulty_model().await;
    hooks.always_fail.store(true, SeqCst);
    // Per-row backoff alone would fail all 20 rows within about a second.
    let daemon = Daemon::start(quick_retries(&url, 3, 50), service)
        .await
        .expect("daemon start");
    insert_docs(&db, 20, "outage").await;
    // How much does 4 s of outage cost?
    let outage = observe_outage(&db, QUEUE, &hooks, Duration::from_secs(4)).await;
    let back = Instant::now();
    vz_drained(&db, DEADLINE).await;
    let recovered = back.elapsed();
    daemon.stop().await;
    let end = vz_end_state(&db).await;
    end.report(
        "V5 vectorizer: provider down 4 s",
        Some(recovered),
        &outage.note(),
    );
    end.assert_clean(&outage.failed_ids());
    outage.assert_cheap(20, 3);
}

/// The daemon role's grants: the original table's (README, least privilege) and a vectorizer's.
const LEAST_GRANTS: &[&str] = &[
    "GRANT SELECT, UPDATE ON m0_episodic TO {role}",
    "GRANT USAGE ON SCHEMA pgai TO {role}",
    "GRANT SELECT ON pgai.vectorizers TO {role}",
    "GRANT SELECT, UPDATE ON pgai.docs_queue TO {role}",
    "GRANT SELECT ON documents TO {role}",
    "GRANT SELECT, INSERT, DELETE ON docs_chunks TO {role}",
];

/// V6: a daemon logged in as a role with only [`LEAST_GRANTS`] serves the vectorizer: inserts,
/// rewrites and deletes all end embedded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vz6_least_privilege_daemon_role() {
    let (url, db) = vz_db("least_privilege").await;
    let role = format!("vz_daemon_{}", std::process::id());
    db.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF; END $$;
         ALTER ROLE {role} PASSWORD 'daemon-secret';"
    ))
    .await
    .unwrap();
    let grants: Vec<String> = LEAST_GRANTS
        .iter()
        .map(|g| g.replace("{role}", &role))
        .collect();
    db.batch_execute(&grants.join(";\n")).await.unwrap();
    let has_more = count(
        &db,
        &format!(
            "SELECT count(*) FROM information_schema.role_table_grants
              WHERE grantee = '{role}' AND privilege_type NOT IN ('SELECT', 'UPDATE', 'INSERT', 'DELETE')"
        ),
    )
    .await;
    assert_eq!(has_more, 0);
    // The cluster wants a password from every role: the superuser's in `url` becomes the daemon's.
    let (_, host_and_db) = url.split_once('@').expect("user@host in the URL");
    let daemon_url = format!("postgresql://{role}:daemon-secret@{host_and_db}");
    let daemon = Daemon::start(Config::new(&daemon_url), model().await)
        .await
        .expect("daemon as the least-privileged role");
    let t = Instant::now();
    insert_docs(&db, 10, "least").await;
    vz_drained(&db, DEADLINE).await;
    db.batch_execute(
        "UPDATE documents SET body = vz_body(id, 'rewritten') WHERE id IN (1, 2);
         DELETE FROM documents WHERE id = 3;
         INSERT INTO documents (title, body) VALUES ('Late', vz_body(99, 'late'));",
    )
    .await
    .unwrap();
    vz_drained(&db, DEADLINE).await;
    let took = t.elapsed();
    let errors = daemon.monitor().snapshot().last_error;
    daemon.stop().await;
    let end = vz_end_state(&db).await;
    end.report(
        "V6 vectorizer: least-privileged daemon role",
        Some(took),
        &format!("grants: {}", LEAST_GRANTS.join("; ")),
    );
    end.assert_clean(&[]);
    assert_eq!(end.st.rows, 10);
    assert!(errors.is_none(), "the daemon recorded an error: {errors:?}");
}
