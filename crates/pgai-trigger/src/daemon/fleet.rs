//! One worker per vectorizer: the catalog `pgai.vectorizers` is read at start, on each of its
//! notifications and every [`RELOAD_EVERY`]; a created vectorizer gets a worker, a dropped one
//! loses it (after finishing its batches in flight), an altered one is restarted with its new
//! declaration. No restart of the daemon, and every daemon of a fleet reads the same catalog.
//!
//! A vectorizer of another model is left to the daemons running that model (logged once).
//! The original table is served by the daemon configured with it, not here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::listener::{Router, Wake};
use super::model::EmbedService;
use super::worker::{ChunkerSlot, Worker};
use crate::config::Config;
use crate::error::Result;
use crate::monitor::{LogLimiter, Monitor};
use crate::queue::Table;
use crate::vectorizer::{Destination, Vectorizer};

/// The longest a catalog change waits to be seen when its notification is lost.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What the fleet needs to start workers.
#[derive(Clone)]
pub struct Fleet {
    pub config: Arc<Config>,
    pub embed: EmbedService,
    pub router: Arc<Router>,
    pub chunker: Arc<ChunkerSlot>,
    pub monitor: Arc<Monitor>,
}

/// A vectorizer's running worker.
struct Running {
    def: Vectorizer,
    wake: Arc<Wake>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Fleet {
    /// Keeps the workers in line with the catalog until `shutdown`, then stops them all.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut running: HashMap<String, Running> = HashMap::new();
        let mut skipped: HashSet<String> = HashSet::new();
        let mut errors = LogLimiter::new(Duration::from_secs(30));
        let mut db: Option<(tokio_postgres::Client, JoinHandle<()>)> = None;
        while !shutdown.is_cancelled() {
            match self.desired(&mut db, &mut skipped).await {
                Ok(desired) => self.reconcile(&mut running, desired).await,
                Err(e) => {
                    db = None;
                    if let Some(held) = errors.allow() {
                        tracing::warn!(error = %e, suppressed = held, "cannot read the vectorizer catalog; retrying");
                    }
                }
            }
            tokio::select! {
                _ = self.router.catalog.notified() => {}
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        for (_, r) in running.drain() {
            self.stop(r).await;
        }
    }

    /// The vectorizers this daemon serves now, by name.
    async fn desired(
        &self,
        db: &mut Option<(tokio_postgres::Client, JoinHandle<()>)>,
        skipped: &mut HashSet<String>,
    ) -> Result<HashMap<String, Vectorizer>> {
        if db.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            let app = format!("pgai-trigger {} catalog", self.config.worker_id);
            let (client, conn) = crate::pg::within(
                "connect",
                crate::pg::connect(&self.config.database_url, &app),
            )
            .await?;
            *db = Some((client, conn));
        }
        let client = &db.as_ref().expect("connected above").0;
        let all = crate::pg::within("catalog", Vectorizer::load_all(client)).await?;
        let model = self.embed.model_name();
        let mut out = HashMap::new();
        for v in all {
            if v.destination == Destination::InPlace {
                continue;
            }
            if v.model != model {
                if skipped.insert(v.name.clone()) {
                    tracing::info!(
                        vectorizer = %v.name,
                        model = %v.model,
                        daemon_model = %model,
                        "vectorizer left to daemons running its model"
                    );
                }
                continue;
            }
            skipped.remove(&v.name);
            out.insert(v.name.clone(), v);
        }
        Ok(out)
    }

    async fn reconcile(
        &self,
        running: &mut HashMap<String, Running>,
        mut desired: HashMap<String, Vectorizer>,
    ) {
        let names: Vec<String> = running.keys().cloned().collect();
        for name in names {
            let keep = desired.get(&name).is_some_and(|d| *d == running[&name].def);
            if keep {
                desired.remove(&name);
            } else if let Some(r) = running.remove(&name) {
                tracing::info!(vectorizer = %name, "vectorizer dropped or changed: stopping its worker");
                self.stop(r).await;
            }
        }
        for (name, def) in desired {
            match self.start(&def) {
                Ok(r) => {
                    tracing::info!(vectorizer = %name, source = %format!("{}.{}", def.source_schema, def.source_table), "serving vectorizer");
                    running.insert(name, r);
                }
                Err(e) => {
                    tracing::error!(vectorizer = %name, error = %e, "cannot serve vectorizer")
                }
            }
        }
    }

    fn start(&self, def: &Vectorizer) -> Result<Running> {
        let queue = Arc::new(Table::from_vectorizer(def)?);
        let wake = self.router.add(queue.channel());
        let worker = Worker {
            config: self.config.clone(),
            queue,
            chunker: self.chunker.clone(),
            embed: self.embed.clone(),
            wake: wake.clone(),
            monitor: self.monitor.clone(),
            primary: false,
        };
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(super::supervise(
            "vectorizer worker",
            self.monitor.clone(),
            stop.clone(),
            || {},
            move || worker.clone().run(s.clone()),
        ));
        Ok(Running {
            def: def.clone(),
            wake,
            stop,
            task,
        })
    }

    async fn stop(&self, r: Running) {
        r.stop.cancel();
        if let Err(e) = r.task.await {
            tracing::error!(vectorizer = %r.def.name, error = %e, "a vectorizer worker ended abnormally");
        }
        self.router.remove(&r.def.channel, &r.wake);
        self.monitor.vectorizer_gone(&r.def.name);
    }
}
