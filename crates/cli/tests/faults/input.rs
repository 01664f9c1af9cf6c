//! Bad input (docs/reliability.md, "Bad input"): garbage on the channel (scenario 4), rows deleted
//! between notification and claim (5), content far past the model's window and odd Unicode.

use std::time::{Duration, Instant};

use pgai_trigger::{Config, Daemon};

use crate::support::*;

/// Scenario 4: garbage, empty, non-existent, forged and near-8000-byte payloads on
/// `embedding_needed`, interleaved with real rows; a payload over the limit is refused by the
/// server. Notifications naming rows that are failed or waiting for their retry time must not
/// bypass those rules. The listener survives all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_garbage_payloads_on_the_channel() {
    let (url, db) = scenario_db("garbage").await;
    // A failed row and a row in retry backoff: hints must not get them claimed.
    db.batch_execute(
        "INSERT INTO m0_episodic (id, content, retry_status, retry_count, last_error)
              VALUES ('dead', 'a row that failed for good', 'failed', 3, 'earlier failure');
         INSERT INTO m0_episodic (id, content, retry_count, next_attempt_at)
              VALUES ('later', 'a row waiting for its retry time', 1, now() + interval '1 hour');",
    )
    .await
    .unwrap();
    let daemon = Daemon::start(Config::new(&url), model().await)
        .await
        .expect("daemon start");
    let mut payloads: Vec<String> = vec![
        String::new(),
        " ".into(),
        "no-such-id".into(),
        "'; DROP TABLE m0_episodic; --".into(),
        "\\x00\\xff".into(),
        "{\"id\": \"g1\"}".into(),
        "g1,g2,g3".into(),
        "\u{1}pgai-probe:forged".into(),
        "dead".into(),
        "later".into(),
        "x".repeat(7999),
        "é".repeat(3999),
        "🚀".repeat(1999),
    ];
    for i in 0..300 {
        payloads.push(format!("garbage-{i}"));
    }
    let mut real = 0;
    for (i, p) in payloads.iter().enumerate() {
        db.execute("SELECT pg_notify('embedding_needed', $1)", &[p])
            .await
            .unwrap_or_else(|e| panic!("notify {i}: {e}"));
        if i % 10 == 0 {
            insert(
                &db,
                &format!("g{i}"),
                &format!("a real row among the garbage, {i}"),
            )
            .await;
            real += 1;
        }
    }
    // 8000 bytes and more: the server refuses the NOTIFY itself; nothing reaches the daemon.
    let too_long = db
        .execute(
            "SELECT pg_notify('embedding_needed', $1)",
            &[&"y".repeat(8000)],
        )
        .await;
    assert!(
        too_long.is_err(),
        "PostgreSQL refuses payloads of 8000 bytes"
    );
    // A NOTIFY in a rolled-back transaction is never delivered.
    db.batch_execute("BEGIN; SELECT pg_notify('embedding_needed', 'rolled-back'); ROLLBACK;")
        .await
        .unwrap();
    let t = Instant::now();
    insert(&db, "last", "the row after all the garbage").await;
    wait_drained_except(&db, DEADLINE, &["later"]).await;
    let pickup = t.elapsed();
    let later: (bool, bool, i32) = {
        let r = db
            .query_one("SELECT needs_embedding, claimed_by IS NULL, retry_count FROM m0_episodic WHERE id = 'later'", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    let dead: (String, i32) = {
        let r = db
            .query_one(
                "SELECT retry_status, retry_count FROM m0_episodic WHERE id = 'dead'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let snap = daemon.monitor().snapshot();
    daemon.stop().await;
    db.execute("DELETE FROM m0_episodic WHERE id = 'later'", &[])
        .await
        .unwrap();
    let st = end_state(&db).await;
    report(
        "4 garbage/empty/forged/7999-byte payloads",
        &st,
        Some(pickup),
        &format!(
            "{} payloads + {real} real rows; {} notifications seen; {} listener/worker reconnects",
            payloads.len(),
            snap.notifications,
            snap.reconnects
        ),
    );
    st.assert_clean(&["dead"]);
    assert_eq!(
        later,
        (true, true, 1),
        "a hint must not claim a row before its next_attempt_at"
    );
    assert_eq!(
        dead,
        ("failed".to_string(), 3),
        "a hint must not revive a failed row"
    );
    assert_eq!(
        snap.reconnects, 0,
        "garbage on the channel must not cost a reconnect"
    );
}

/// Scenario 5: rows deleted between their notification and their claim (the model is held on
/// another row, so the pipeline fills and stops claiming), and a row deleted while its vector
/// is being computed. Nothing errors, the rest is embedded; the daemon never holds more rows
/// than its pipeline's capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_rows_deleted_between_notification_and_claim() {
    let (url, db) = scenario_db("deleted").await;
    let (service, hooks) = faulty_model().await;
    let mut gate = hooks.gate("GATE");
    let mut cfg = Config::new(&url);
    cfg.batch_size = 1;
    let daemon = Daemon::start(cfg, service).await.expect("daemon start");
    insert(
        &db,
        "gate",
        "GATE: held in the model while others are deleted",
    )
    .await;
    gate.started().await;
    let (mut before_claim, mut after_claim, mut most_claimed) = (0, 0, 0);
    for i in 0..40 {
        let id = format!("d{i}");
        insert(&db, &id, &format!("short-lived row {i}")).await;
        let unclaimed = db
            .query_opt(
                "DELETE FROM m0_episodic WHERE id = $1 AND claimed_by IS NULL RETURNING id",
                &[&id],
            )
            .await
            .unwrap()
            .is_some();
        if unclaimed {
            before_claim += 1;
        } else {
            db.execute("DELETE FROM m0_episodic WHERE id = $1", &[&id])
                .await
                .unwrap();
            after_claim += 1;
        }
        most_claimed = most_claimed.max(
            count(
                &db,
                "SELECT count(*) FROM m0_episodic WHERE claimed_by IS NOT NULL",
            )
            .await,
        );
        // Rows that stay, so the daemon has real work after the gate opens.
        insert(&db, &format!("k{i}"), &format!("a row that stays, {i}")).await;
    }
    // The gated row itself goes while the model holds it: its write-back must match nothing.
    db.execute("DELETE FROM m0_episodic WHERE id = 'gate'", &[])
        .await
        .unwrap();
    let released = Instant::now();
    gate.release();
    wait_drained(&db, DEADLINE).await;
    let drained = released.elapsed();
    let snap = daemon.monitor().snapshot();
    daemon.stop().await;
    let st = end_state(&db).await;
    report(
        "5 deleted before claim / during embedding",
        &st,
        Some(drained),
        &format!(
            "{before_claim} deleted before claim, {after_claim} after; at most {most_claimed} rows claimed while the model was held; {} superseded",
            snap.superseded
        ),
    );
    st.assert_clean(&[]);
    assert_eq!(st.rows, 40);
    assert!(
        before_claim >= 20,
        "a held model must stop the claims: only {before_claim} of 40 rows were still unclaimed"
    );
    assert!(
        most_claimed <= 8,
        "{most_claimed} rows claimed with the model held (batch size 1)"
    );
    assert!(
        snap.last_error.is_none_or(|e| !e.contains("gate")),
        "no error for a deleted row"
    );
}

/// Bad input: content far past the model's 256 word pieces, and odd Unicode, is embedded
/// like any other row (truncated the same way as the reference model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_odd_unicode_content_is_embedded() {
    let (url, db) = scenario_db("odd").await;
    let daemon = Daemon::start(Config::new(&url), model().await)
        .await
        .expect("daemon start");
    let cases: Vec<(&str, String)> = vec![
        ("huge_words", "memory ".repeat(30_000)),
        ("huge_one_token_run", "a".repeat(50_000)),
        ("huge_emoji", "😀".repeat(20_000)),
        ("huge_cjk", "日本語の文章です。".repeat(3_000)),
        ("empty", String::new()),
        ("blank", " \n\t\r ".into()),
        (
            "zero_width",
            "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}".into(),
        ),
        ("bom_text", "\u{FEFF}text after a byte-order mark".into()),
        (
            "zalgo",
            "Z\u{0335}\u{0322}\u{0349}a\u{0337}l\u{0336}g\u{0337}o\u{0338} text".into(),
        ),
        ("rtl", "مرحبا بالعالم \u{202E}reversed\u{202C} שלום".into()),
        ("zwj_emoji", "🏳️‍🌈 👨‍👩‍👧‍👦 🧑🏽‍💻".into()),
        (
            "controls",
            "bell\u{7} escape\u{1B}[31m unit\u{1F} delete\u{7F}".into(),
        ),
        ("math_alnum", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕥𝕖𝕩𝕥 𝒷𝑜𝓁𝒹".into()),
        ("replacement", "\u{FFFD}\u{FFFD} broken bytes".into()),
        ("private_use", "\u{E000}\u{F8FF}\u{F0000}".into()),
        (
            "newlines",
            "line one\n\nline two\r\nline three\u{2028}\u{2029}".into(),
        ),
        ("sql_ish", "'); DROP TABLE m0_episodic; --".into()),
    ];
    for (id, content) in &cases {
        insert(&db, id, content).await;
    }
    let t = Instant::now();
    wait_drained(&db, DEADLINE).await;
    let took = t.elapsed();
    // And the daemon is still there for an ordinary row.
    insert(&db, "ordinary", "an ordinary sentence after the odd ones").await;
    wait_drained(&db, Duration::from_secs(10)).await;
    daemon.stop().await;
    let st = end_state(&db).await;
    report(
        "8 huge (far past 256 pieces) + odd Unicode",
        &st,
        Some(took),
        &format!("{} odd rows", cases.len()),
    );
    st.assert_clean(&[]);
}
