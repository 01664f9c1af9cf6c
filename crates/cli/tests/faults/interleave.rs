//! Interleavings forced with the model gate, never with sleeps (the write-back guard, leases):
//! content updated while its old content is embedded (scenario 6), a holder whose claim was taken
//! from it, and a long batch that must renew its lease.

use std::time::{Duration, Instant};

use pgai_trigger::{Config, Daemon};
use tokio_postgres::Client;

use crate::support::*;

/// (version, writer) of every committed write of `id`, in order.
async fn writes_of(db: &Client, id: &str) -> Vec<(i64, Option<String>)> {
    db.query(
        "SELECT version, writer FROM fault_writes WHERE id = $1 ORDER BY at",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Scenario 6: two rows change while the model holds their old content: one to new content,
/// one to other content and back to the old (same text, newer version). Neither gets a vector
/// from the old claim; each is written once, at its last version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_content_updated_while_old_content_is_embedded() {
    let (url, db) = scenario_db("update_during").await;
    let (service, hooks) = faulty_model().await;
    let mut gate = hooks.gate("GATE");
    let daemon = Daemon::start(Config::new(&url), service)
        .await
        .expect("daemon start");
    db.execute(
        "INSERT INTO m0_episodic (id, content) VALUES ('u1', 'GATE the old text of row one'), ('u2', 'GATE the old text of row two')",
        &[],
    )
    .await
    .unwrap();
    let held = gate.started().await;
    let claimed: Vec<(String, i64)> = db
        .query(
            "SELECT id, content_version FROM m0_episodic WHERE claimed_by IS NOT NULL ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    db.execute(
        "UPDATE m0_episodic SET content = 'row one now talks about sailing' WHERE id = 'u1'",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE m0_episodic SET content = 'row two, briefly different' WHERE id = 'u2'",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE m0_episodic SET content = 'GATE the old text of row two' WHERE id = 'u2'",
        &[],
    )
    .await
    .unwrap();
    let released = Instant::now();
    gate.release();
    wait_drained(&db, DEADLINE).await;
    let took = released.elapsed();
    let snap = daemon.monitor().snapshot();
    daemon.stop().await;
    let (w1, w2) = (writes_of(&db, "u1").await, writes_of(&db, "u2").await);
    let st = end_state(&db).await;
    report(
        "6 content updated while old one embedded",
        &st,
        Some(took),
        &format!(
            "model held {} texts; claimed {claimed:?}; writes u1 {w1:?} u2 {w2:?}; {} superseded",
            held.len(),
            snap.superseded
        ),
    );
    st.assert_clean(&[]);
    assert_eq!(
        claimed.len(),
        2,
        "both rows were claimed at version 1 when the model held them: {claimed:?}"
    );
    assert_eq!(
        w1.iter().map(|w| w.0).collect::<Vec<_>>(),
        [2],
        "u1: one write, of version 2"
    );
    assert_eq!(
        w2.iter().map(|w| w.0).collect::<Vec<_>>(),
        [3],
        "u2: one write, of version 3"
    );
    assert!(
        snap.superseded >= 2,
        "the held batch's write-back matched nothing"
    );
}

/// The write-back guard: a holder whose claim was taken over (its lease lapsed, another worker took
/// the row) cannot complete the row when its model call finally returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_holder_cannot_complete_a_reclaimed_row() {
    let (url, db) = scenario_db("expired_holder").await;
    let (service, hooks) = faulty_model().await;
    let mut gate = hooks.gate("GATE");
    let mut cfg = Config::new(&url);
    cfg.poll_interval = Duration::from_millis(100);
    let holder = cfg.worker_id.clone();
    let daemon = Daemon::start(cfg, service).await.expect("daemon start");
    insert(&db, "e", "GATE a row whose holder stalls").await;
    gate.started().await;
    // Another worker took it over after the lease lapsed — and died holding it, expired.
    let stolen = db
        .execute(
            "UPDATE m0_episodic SET claimed_by = 'thief:1', claim_expires_at = clock_timestamp() - interval '1 second'
              WHERE id = 'e' AND claimed_by LIKE $1",
            &[&format!("{holder}:%")],
        )
        .await
        .unwrap();
    assert_eq!(stolen, 1, "the row was claimed by the stalled holder");
    let released = Instant::now();
    gate.release();
    wait_drained(&db, DEADLINE).await;
    let took = released.elapsed();
    daemon.stop().await;
    let writes = writes_of(&db, "e").await;
    let claims: Vec<(String, Option<String>)> = db
        .query(
            "SELECT token, prev_token FROM fault_claims WHERE id = 'e' ORDER BY at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let st = end_state(&db).await;
    report(
        "2' expired holder cannot complete",
        &st,
        Some(took),
        &format!("claims (token, previous) {claims:?}; writes {writes:?}"),
    );
    st.assert_clean(&[]);
    assert_eq!(writes.len(), 1, "{writes:?}");
    let first_token = &claims[0].0;
    assert_ne!(
        writes[0].1.as_ref(),
        Some(first_token),
        "the stalled holder's stale claim wrote the row"
    );
    assert_eq!(
        claims.last().unwrap().1.as_deref(),
        Some("thief:1"),
        "the row was taken over from the thief"
    );
}

/// Leases: a batch that takes longer than the lease keeps its claim (renews the lease), so
/// no other worker starts on the same rows meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_batch_renews_its_lease() {
    let (url, db) = scenario_db("renew").await;
    let (service, hooks) = faulty_model().await;
    let mut gate = hooks.gate("GATE");
    let mut cfg = Config::new(&url);
    cfg.lease = Duration::from_secs(1);
    cfg.poll_interval = Duration::from_millis(100);
    let holder = Daemon::start(cfg, service).await.expect("daemon start");
    insert(&db, "long", "GATE a batch that takes longer than its lease").await;
    gate.started().await;
    let (token, first_expiry): (String, f64) = {
        let r = db
            .query_one("SELECT claimed_by, extract(epoch FROM claim_expires_at)::float8 FROM m0_episodic WHERE id = 'long'", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    // A second daemon that would take the row over as soon as the lease lapsed.
    let mut other_cfg = Config::new(&url);
    other_cfg.lease = Duration::from_secs(1);
    other_cfg.poll_interval = Duration::from_millis(100);
    let other = Daemon::start(other_cfg, model().await)
        .await
        .expect("second daemon");
    let held_for = Instant::now();
    let renewed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = db
                .query_one(
                    "SELECT claimed_by, extract(epoch FROM claim_expires_at)::float8,
                            extract(epoch FROM clock_timestamp())::float8 FROM m0_episodic WHERE id = 'long'",
                    &[],
                )
                .await
                .unwrap();
            let (by, expires, now): (Option<String>, Option<f64>, f64) = (r.get(0), r.get(1), r.get(2));
            if by.as_deref() != Some(token.as_str()) {
                return Err(format!("after {:?} the row is held by {by:?}, not {token}", held_for.elapsed()));
            }
            // Held past three leases and still valid: renewed.
            if now > first_expiry + 2.0 && expires.is_some_and(|e| e > now) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    gate.release();
    wait_drained(&db, DEADLINE).await;
    holder.stop().await;
    other.stop().await;
    let writes = writes_of(&db, "long").await;
    let st = end_state(&db).await;
    report(
        "5 long batch renews its lease (lease 1 s)",
        &st,
        None,
        &format!("renewal: {renewed:?}; writes {writes:?}"),
    );
    st.assert_clean(&[]);
    match renewed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("lease not renewed: {e}"),
        Err(_) => panic!(
            "lease not renewed: claim still {token} but its expiry never moved past 3 leases"
        ),
    }
    assert_eq!(
        writes.iter().map(|w| w.1.clone()).collect::<Vec<_>>(),
        [Some(token)],
        "written once, by the holder"
    );
}
