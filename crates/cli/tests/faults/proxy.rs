//! Silently dead connections (docs/reliability.md, connections): a TCP proxy between the daemon and
//! PostgreSQL that can black-hole a connection — keep its socket open, accept its bytes, deliver
//! nothing — as a vanished host or a broken network path does. No error ever reaches the daemon;
//! only its own timeouts, probes and keepalives can notice.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgai_testkit::wait_for;
use pgai_trigger::{Config, Daemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

struct Proxy {
    port: u16,
    /// One flag per connection so far: set = black-holed.
    conns: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// Black-hole the first connection that sends `LISTEN` (the daemon's listener, mid-LISTEN).
    hole_first_listen: Arc<AtomicBool>,
    /// `LISTEN` statements seen.
    listens: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let hole_first_listen = Arc::new(AtomicBool::new(false));
        let listens = Arc::new(AtomicUsize::new(0));
        let (c, h, l) = (conns.clone(), hole_first_listen.clone(), listens.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    continue;
                };
                let holed = Arc::new(AtomicBool::new(false));
                c.lock().unwrap().push(holed.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, holed.clone(), Some((h.clone(), l.clone()))));
                tokio::spawn(pump(sr, cw, holed, None));
            }
        });
        Proxy {
            port,
            conns,
            hole_first_listen,
            listens,
        }
    }

    /// Every connection open now goes silent, for good; new connections pass.
    fn hole_existing(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        conns.iter().for_each(|c| c.store(true, SeqCst));
        conns.len()
    }
}

/// Copies `from` to `to` until either closes; while `holed`, reads and discards instead.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    holed: Arc<AtomicBool>,
    watch_listen: Option<(Arc<AtomicBool>, Arc<AtomicUsize>)>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some((hole_first, listens)) = &watch_listen {
            if buf[..n].windows(7).any(|w| w == b"LISTEN ") {
                let first = listens.fetch_add(1, SeqCst) == 0;
                if first && hole_first.load(SeqCst) {
                    holed.store(true, SeqCst);
                }
            }
        }
        if holed.load(SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The database URL with the proxy's port instead of the server's.
fn via(url: &str, proxy: &Proxy) -> String {
    url.replacen(
        &format!(":{}/", server_port(url)),
        &format!(":{}/", proxy.port),
        1,
    )
}

fn server_port(url: &str) -> u16 {
    let after_host = url.find("127.0.0.1:").expect("test URL on 127.0.0.1") + "127.0.0.1:".len();
    let end = after_host + url[after_host..].find('/').unwrap();
    url[after_host..end].parse().unwrap()
}

/// The listener's connection goes silent in the middle of its `LISTEN`: no answer, no error.
/// Rows are still picked up by the fallback poll, and the listener must give up on that
/// connection and listen on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn listener_hung_at_listen_is_replaced() {
    let (url, db) = scenario_db("hung_listen").await;
    let proxy = Proxy::start(server_port(&url)).await;
    proxy.hole_first_listen.store(true, SeqCst);
    let mut cfg = Config::new(via(&url, &proxy));
    cfg.poll_interval = Duration::from_millis(500);
    let daemon = Daemon::start(cfg, model().await)
        .await
        .expect("daemon start");
    wait_for("the listener's LISTEN", DEADLINE, || async {
        (proxy.listens.load(SeqCst) >= 1).then_some(())
    })
    .await;
    let hung = Instant::now();
    let t = Instant::now();
    insert(&db, "h1", "inserted while the listener hangs in LISTEN").await;
    wait_drained(&db, Duration::from_secs(10)).await;
    let pickup = t.elapsed();
    let relisten = tokio::time::timeout(Duration::from_secs(40), async {
        while proxy.listens.load(SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        hung.elapsed()
    })
    .await;
    let snap = daemon.monitor().snapshot();
    daemon.stop().await;
    let st = end_state(&db).await;
    report(
        "4' listener connection silent mid-LISTEN",
        &st,
        relisten.as_ref().ok().copied(),
        &format!(
            "pickup by poll {} ms; listener_connected {} degraded {}; LISTENs seen {}",
            pickup.as_millis(),
            snap.listener_connected,
            snap.listener_degraded,
            proxy.listens.load(SeqCst)
        ),
    );
    st.assert_clean(&[]);
    assert!(
        relisten.is_ok(),
        "the listener never listened again within 40 s of a LISTEN that hung"
    );
}

/// Every connection of the daemon goes silent at once (the server's host vanished; a new one
/// answers on the same address). The listener's probe notices; the worker's connections must
/// be noticed too, or no row is embedded again until TCP keepalive gives up (minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn black_holed_connections_are_replaced() {
    let (url, db) = scenario_db("black_hole").await;
    let proxy = Proxy::start(server_port(&url)).await;
    let mut cfg = Config::new(via(&url, &proxy));
    cfg.poll_interval = Duration::from_millis(500);
    cfg.lease = Duration::from_secs(3);
    let daemon = Daemon::start(cfg, model().await)
        .await
        .expect("daemon start");
    insert(&db, "before", "a row before the network goes silent").await;
    wait_drained(&db, DEADLINE).await;
    let holed = proxy.hole_existing();
    let t = Instant::now();
    for i in 0..5 {
        insert(
            &db,
            &format!("after{i}"),
            &format!("a row written after the silence began, {i}"),
        )
        .await;
    }
    let drained = tokio::time::timeout(Duration::from_secs(40), async {
        while pending(&db).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t.elapsed()
    })
    .await;
    let snap = daemon.monitor().snapshot();
    let connections = proxy.conns.lock().unwrap().len();
    // Stopping would wait on the hung statements; the test drops the daemon instead.
    drop(daemon);
    let st = end_state(&db).await;
    report(
        "2'' all daemon connections black-holed",
        &st,
        drained.as_ref().ok().copied(),
        &format!(
            "{holed} connections silenced; {connections} opened in all; reconnects {}; worker_connected {}",
            snap.reconnects, snap.worker_connected
        ),
    );
    assert!(
        drained.is_ok(),
        "rows inserted after the daemon's connections went silent were not embedded within 40 s"
    );
    st.assert_clean(&[]);
}
