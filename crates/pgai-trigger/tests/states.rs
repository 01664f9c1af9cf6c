//! One definition of each row state: `db status`, `stats`, `/v1/items/{id}`, the queue gauges
//! and the claim all count the same rows the same way, NULLs included, and every row is in
//! exactly one state.

use std::collections::BTreeMap;

use pgai_testkit::fresh_database;
use pgai_trigger::{schema, Config, QueueCounts, RowState, Store, Table};

/// (id, columns, values, the state the row must be in).
const ROWS: &[(&str, &str, &str, RowState)] = &[
    ("fresh", "", "", RowState::Pending),
    (
        "lease-expired",
        ", claimed_by, claim_expires_at, retry_status",
        ", 'gone:1', now() - interval '1 minute', 'processing'",
        RowState::Pending,
    ),
    (
        "backing-off",
        ", retry_count, next_attempt_at, last_error",
        ", 1, now() + interval '1 hour', 'timeout'",
        RowState::Pending,
    ),
    (
        "status-null",
        ", retry_status, retry_count",
        ", NULL, NULL",
        RowState::Pending,
    ),
    (
        "leased",
        ", claimed_by, claim_expires_at, retry_status",
        ", 'live:1', now() + interval '1 hour', 'processing'",
        RowState::Processing,
    ),
    (
        "done",
        ", needs_embedding, embedding, retry_status",
        ", false, array_fill(0.1, ARRAY[384])::vector, 'completed'",
        RowState::Completed,
    ),
    (
        "done-needs-null",
        ", needs_embedding, embedding",
        ", NULL, array_fill(0.2, ARRAY[384])::vector",
        RowState::Completed,
    ),
    (
        "gave-up",
        ", retry_status, retry_count, last_error",
        ", 'failed', 3, 'rejected'",
        RowState::Failed,
    ),
    (
        "gave-up-leased",
        ", retry_status, claimed_by, claim_expires_at",
        ", 'failed', 'live:2', now() + interval '1 hour'",
        RowState::Failed,
    ),
    (
        "stored-only",
        ", needs_embedding",
        ", false",
        RowState::NotQueued,
    ),
    (
        "needs-null",
        ", needs_embedding",
        ", NULL",
        RowState::NotQueued,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_count_agrees_and_states_partition_the_rows() {
    let url = fresh_database("states").await;
    let (db, _task) = pgai_trigger::connect(&url, "states test").await.unwrap();
    let table = Table::default();
    schema::init(&db, &table, pgai_embed::DIM).await.unwrap();
    for (id, cols, vals, _) in ROWS {
        db.execute(
            &format!(
                "INSERT INTO m0_episodic (id, content{cols}) VALUES ($1, 'text of ' || $1{vals})"
            ),
            &[id],
        )
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    let mut expected: BTreeMap<RowState, i64> = RowState::ALL.iter().map(|s| (*s, 0)).collect();
    for (_, _, _, s) in ROWS {
        *expected.get_mut(s).unwrap() += 1;
    }

    // The SQL state of each row, and the partition: no row in none or two states.
    let case = RowState::case_sql();
    for (id, _, _, want) in ROWS {
        let row = db
            .query_one(
                &format!(
                    // A predicate that is NULL is false in a filter, as in the counts.
                    "SELECT {case}, coalesce(({})::int, 0) + coalesce(({})::int, 0)
                          + coalesce(({})::int, 0) + coalesce(({})::int, 0) + coalesce(({})::int, 0)
                       FROM m0_episodic WHERE id = $1",
                    RowState::Pending.predicate(),
                    RowState::Processing.predicate(),
                    RowState::Completed.predicate(),
                    RowState::Failed.predicate(),
                    RowState::NotQueued.predicate(),
                ),
                &[id],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), want.as_str(), "state of {id}");
        assert_eq!(row.get::<_, i32>(1), 1, "{id} must be in exactly one state");
    }

    // `db status`.
    let st = schema::status(&db, &table).await.unwrap();
    let c = st.counts;
    assert_eq!(c.rows, ROWS.len() as i64);
    assert_eq!(
        (c.pending, c.processing, c.completed, c.failed, c.not_queued),
        (
            expected[&RowState::Pending],
            expected[&RowState::Processing],
            expected[&RowState::Completed],
            expected[&RowState::Failed],
            expected[&RowState::NotQueued]
        )
    );
    assert!(c.oldest_pending_secs.is_some());

    // The daemon's gauge sample: the queued states only, the same numbers.
    let q = QueueCounts::read_queued(&db, &table).await.unwrap();
    assert_eq!(
        (
            q.pending,
            q.processing,
            q.failed,
            q.oldest_pending_secs.is_some()
        ),
        (c.pending, c.processing, c.failed, true)
    );

    // `stats` / `/v1/stats`, the store's queue, and `/v1/items/{id}` for every row.
    let store = Store::new(Config::new(&url));
    let ps = store.processing_stats().await.unwrap();
    assert_eq!(
        (
            ps.total_rows,
            ps.pending,
            ps.processing,
            ps.completed,
            ps.failed,
            ps.queue_depth
        ),
        (
            c.rows,
            c.pending,
            c.processing,
            c.completed,
            c.failed,
            c.depth()
        )
    );
    let queue = store.queue().await.unwrap();
    assert_eq!(queue.depth, c.depth());
    assert_eq!(
        queue.waiting_retry, 1,
        "only backing-off waits out a backoff"
    );
    for (id, _, _, want) in ROWS {
        let item = store.get(id).await.unwrap().unwrap();
        assert_eq!(item.status, *want, "item status of {id}");
    }

    // The claim takes exactly the due pending rows.
    let mut claimer = pgai_trigger::Claimer::prepare(&db, &table, "states-test")
        .await
        .unwrap();
    let claim = claimer.claim(&db, &[], 100, 30.0, 3).await.unwrap();
    let mut claimed: Vec<&str> = claim.rows.iter().map(|r| r.id.as_str()).collect();
    claimed.sort();
    assert_eq!(claimed, vec!["fresh", "lease-expired", "status-null"]);
}
