//! The client's ear: a connection LISTENing on `embedding_ready`, on which the daemon announces
//! each id after its vector's write has committed. Each arrival is stamped with the client's
//! clock the moment the connection task reads it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::future::poll_fn;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::schema::CHANNEL_READY;

/// Arrivals in the order received.
type Log = Arc<Mutex<Vec<(String, Instant)>>>;

pub struct ReadyListener {
    log: Log,
    count: watch::Receiver<usize>,
    /// Keeps the connection open.
    _client: Client,
}

impl ReadyListener {
    /// Connects and LISTENs; notifications sent after this returns are all seen.
    pub async fn start(url: &str) -> Result<ReadyListener> {
        let (client, mut conn) = crate::db::pg_config(url, "pgai-trigger bench listener")?.connect(NoTls).await?;
        let log: Log = Arc::default();
        let (tx, count) = watch::channel(0usize);
        let sink = log.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = poll_fn(|cx| conn.poll_message(cx)).await {
                if let AsyncMessage::Notification(n) = msg {
                    let at = Instant::now();
                    if n.channel() == CHANNEL_READY {
                        let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                        l.push((n.payload().to_string(), at));
                        let len = l.len();
                        drop(l);
                        let _ = tx.send(len);
                    }
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL_READY}")).await?;
        Ok(ReadyListener { log, count, _client: client })
    }

    /// Waits until every id has arrived or `within` has passed; returns the first arrival of
    /// each id seen (fewer than asked on timeout). `progress` gets the count found so far.
    pub async fn wait_all(
        &self,
        ids: &[String],
        within: Duration,
        mut progress: impl FnMut(usize),
    ) -> HashMap<String, Instant> {
        let deadline = tokio::time::Instant::now() + within;
        let mut remaining: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut found = HashMap::with_capacity(ids.len());
        let mut seen = 0;
        let mut count = self.count.clone();
        loop {
            {
                let l = self.log.lock().unwrap_or_else(|e| e.into_inner());
                for (id, at) in &l[seen..] {
                    if remaining.remove(id.as_str()) {
                        found.insert(id.clone(), *at);
                    }
                }
                seen = l.len();
            }
            progress(found.len());
            if remaining.is_empty() {
                return found;
            }
            match tokio::time::timeout_at(deadline, count.changed()).await {
                Ok(Ok(())) => {}
                _ => return found,
            }
        }
    }
}
