//! The client's ear: a connection LISTENing on `embedding_ready`, on which the daemon announces
//! each id after its vector's write has committed. Each arrival is stamped with the client's
//! clock the moment the connection task reads it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use pgai_trigger::{Notifications, CHANNEL_READY};
use tokio::sync::watch;

/// Arrivals in the order received.
type Log = Arc<Mutex<Vec<(String, Instant)>>>;

pub struct ReadyListener {
    log: Log,
    count: watch::Receiver<usize>,
    /// Reads the stream (and so keeps the connection open) until dropped.
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl ReadyListener {
    /// Connects and LISTENs; notifications sent after this returns are all seen.
    pub async fn start(url: &str) -> Result<ReadyListener> {
        let mut notes = Notifications::listen(
            url,
            "pgai-trigger bench listener",
            &[CHANNEL_READY],
            Duration::from_secs(10),
        )
        .await?;
        let log: Log = Arc::default();
        let (tx, count) = watch::channel(0usize);
        let sink = log.clone();
        let reader = tokio::spawn(async move {
            while let Ok(n) = notes.recv().await {
                let at = Instant::now();
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                l.push((n.payload, at));
                let len = l.len();
                drop(l);
                tx.send_replace(len);
            }
        });
        Ok(ReadyListener { log, count, reader })
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
