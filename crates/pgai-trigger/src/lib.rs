//! pgai-trigger: PostgreSQL rows get their vector embeddings within milliseconds of commit.
//!
//! A row trigger sends `pg_notify('embedding_needed', id)`; the daemon listens, claims pending
//! rows with a lease, embeds their text with all-MiniLM-L6-v2 on its own thread, and writes the
//! vector back only if the row did not change meanwhile. The table itself is the queue: a
//! notification is a hint, never the source of truth.
//!
//! # Layout
//!
//! The modules follow a row through the system:
//!
//! 1. [`schema`]    — the table, its indexes, the requeue and notify triggers; `db init/status`.
//! 2. [`listener`]  — a dedicated LISTEN connection: wake-ups, the newest ids as claim hints,
//!    a self-probe that must come back.
//! 3. [`claim`]     — `FOR UPDATE SKIP LOCKED` claims with a lease and a per-claim token;
//!    take-over of expired claims counts an attempt.
//! 4. [`embedder`]  — the model on its own OS thread behind a bounded channel, cut into calls by
//!    a token budget (the model itself lives in the `pgai-embed` crate).
//! 5. [`writeback`] — the guarded write of vectors (id + claim token + content version), failed
//!    attempts with backoff, release and lease renewal.
//! 6. [`monitor`]   — counters, gauges sampled from the database, latency histogram,
//!    Prometheus text, rate-limited error logs.
//!
//! Around them: [`pipeline`] runs claim → embed → write-back as one worker, [`breaker`] backs
//! it off a failing provider, [`daemon`] starts and stops listener and worker together,
//! [`http`] serves the HTTP API, [`config`] holds the validated settings, [`db`] opens
//! connections and puts deadlines on statements, [`backoff`] paces reconnects, [`cluster`]
//! manages the embedded PostgreSQL of `up` and the tests, and [`testkit`] gives each test a
//! database on one shared cluster. [`bench`] is `pgai-trigger bench`: latency, throughput and
//! where a row's time goes.
//!
//! For users: [`settings`] loads the YAML file and environment into a [`Config`], and [`store`]
//! is the library API (add / get / search / delete, stats, health) behind the CLI and HTTP.

pub mod backoff;
pub mod bench;
pub mod breaker;
pub mod claim;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod db;
pub mod embedder;
pub mod error;
pub mod http;
pub mod listener;
pub mod monitor;
pub mod pipeline;
pub mod schema;
pub mod settings;
pub mod store;
pub mod testkit;
pub mod writeback;

pub use config::Config;
pub use daemon::Daemon;
pub use embedder::EmbedService;
pub use error::{Error, Result};
