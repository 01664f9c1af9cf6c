//! pgai-trigger: PostgreSQL rows get their vector embeddings within milliseconds of commit.
//!
//! A row trigger sends `pg_notify('embedding_needed', id)`; the daemon listens, claims pending
//! rows with a lease, embeds their text with all-MiniLM-L6-v2 on its own thread, and writes the
//! vector back only if the row did not change meanwhile. The table itself is the queue: a
//! notification is a hint, never the source of truth. Vectorizers extend this to any user table
//! (its key, a template over several columns, chunks), declared in the database's catalog.
//!
//! # Layout
//!
//! The folders follow a row from INSERT to vector:
//!
//! 1. `queue/schema`     — the table, its indexes, the requeue and notify triggers
//!    (`db init` / `db recreate` / `db status`, and the daemon's start-up check);
//!    `vectorizer/catalog` — the same for vectorizers: the catalog, its PL/pgSQL functions and
//!    each vectorizer's capture triggers and queue table.
//! 2. `daemon/listener`  — a dedicated LISTEN connection: wake-ups, the newest ids as claim
//!    hints, a self-probe that must come back; its health reaches the worker with the wake-up.
//! 3. `queue/claim`      — `FOR UPDATE SKIP LOCKED` claims with a lease and a per-claim token:
//!    fresh claims take the row a notification just named, backlog claims the oldest due rows;
//!    take-over of an expired claim counts an attempt. `queue/lease` renews and gives back.
//! 4. `daemon/model`     — the model on its own OS thread behind bounded lanes (fresh rows
//!    first), cut into calls by a token budget (the model and the chunker are the `pgai-embed`
//!    crate).
//! 5. `queue/writeback`  — the guarded write (id + claim token + content version) of a vector,
//!    a source column or a row's chunks; failed attempts with backoff.
//! 6. `monitor`          — counters, gauges, the latency histogram, Prometheus text.
//!
//! Every statement of 3 and 5 is built from one [`Table`]: the original table and every
//! vectorizer's queue alike. `daemon/worker` runs 3 → 4 → 5 as one pipelined worker per queue,
//! backed off a failing provider by `daemon/breaker`; `daemon/fleet` keeps a worker per
//! vectorizer of the catalog; `daemon` starts and stops them with the listener. `queue/state` is the
//! one definition of pending / processing / completed / failed / not queued that every count
//! uses. `pg` is the PostgreSQL plumbing (connections, deadlines, the store's pool, the one
//! notification stream [`Notifications`]). Around the flow: `store` is the library API (add /
//! get / search / delete, stats, health), [`vectorizer`] declares, lists and searches
//! vectorizers, [`http`] serves both, `config` holds the settings (file, environment, defaults)
//! and the validated [`Config`].
//!
//! The command line, the bench, the embedded cluster and the test kit are other crates of the
//! workspace (`crates/cli`, `crates/cluster`, `crates/testkit`).
//!
//! # Example
//!
//! The row states every count agrees on:
//!
//! ```
//! use pgai_trigger::RowState;
//!
//! assert_eq!(RowState::parse("processing"), Some(RowState::Processing));
//! // One SQL predicate per state; the claim takes due pending rows only.
//! assert!(RowState::due_predicate().contains(&RowState::Pending.predicate()));
//! ```
//!
//! Settings from the YAML file (the original design's keys), validated into the daemon's
//! [`Config`]; the password never reaches `Debug`:
//!
//! ```
//! let settings = pgai_trigger::Settings::from_yaml(
//!     "database:\n  url: postgresql://app:s3cret@db/notes\n  pgai:\n    max_retries: 5\n",
//! )?;
//! let config = settings.daemon_config()?;
//! assert_eq!(config.max_retries, 5);
//! assert!(!format!("{config:?}").contains("s3cret"));
//! # Ok::<(), pgai_trigger::Error>(())
//! ```
//!
//! A table kept embedded, from a program: see [`Store`] and `examples/store.rs`.

mod config;
mod daemon;
mod error;
pub mod http;
mod monitor;
mod pg;
mod queue;
mod store;
pub mod vectorizer;

pub use config::defaults;
pub use config::settings::{
    EmbeddingSettings, HttpSettings, PgaiSettings, ProviderKind, Settings, DEFAULT_PATHS,
};
pub use config::{redact_url, Config};
pub use daemon::model::{
    embed_in_chunks, EmbedResult, EmbedService, BACKLOG_CALL_BUDGET, TOKEN_BUDGET,
};
pub use daemon::Daemon;
pub use error::{db_message, one_line, Error, Result};
pub use monitor::{percentiles, ListenerHealth, Monitor, Percentiles, Stats};
pub use pg::{connect, pg_config, within, Notification, Notifications};
pub use queue::{
    quote_ident, validate_identifier, Claim, ClaimedRow, Claimer, Embedded, Leases, NotifyMode,
    QueueCounts, RowState, Table, Writer, Written, CHANNEL_NEEDED, CHANNEL_READY, DEFAULT_TABLE,
    LEASE_EXPIRED_ERROR,
};
pub use store::{
    Check, FailedRow, Health, HealthStatus, Item, Latency, Mode, NewItem, ProcessingStats, Queue,
    SearchHit, Store, StoreError, StoreFactory, StoreResult,
};

/// The schema: create, recreate and inspect the queue table (`db init`, `db recreate`,
/// `db status`) and the daemon's start-up check.
pub mod schema {
    pub use crate::queue::schema::{
        ddl, ddl_with, init, init_with, recreate, recreate_with, status, verify, Status,
    };
}
