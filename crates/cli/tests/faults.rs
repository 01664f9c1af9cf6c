//! The fault-injection suite (docs/reliability.md): real PostgreSQL, the real model, the
//! real daemon — in-process where a hook is needed, as a child process where it must die.
//!
//! Every scenario ends with the same assertion ([`support::EndState::assert_clean`]): no row
//! pending, none failed unless the scenario expects it, every vector the model's vector of the
//! row's current content, no (id, content version) written twice, and no claim taken from a
//! holder whose lease had not expired. Claims and writes are recorded by test-only audit
//! triggers, so crashes cannot hide a duplicate. Each scenario prints a line of the table
//! (`--nocapture`, lines start with `FAULTS|`).
//!
//! `cargo test --release -p pgai-trigger-cli --test faults -- --nocapture --test-threads=2`
//!
//! # Layout
//!
//! - `support`     — hooked embedder, audit triggers, child daemon, client stream, end assertion.
//! - `process`     — SIGKILL mid-batch (1), three daemons one killed (7), SIGSTOP (9), crashes
//!   counted as attempts.
//! - `connections` — `pg_terminate_backend` (2), PostgreSQL restart (3), frozen listener backend.
//! - `input`       — bad payloads (4), delete before claim (5), huge and odd content.
//! - `interleave`  — update while embedding (6), expired holder, lease renewal.
//! - `provider`    — failing provider (8), panicking text, provider-wide backoff, `retry-failed`.
//! - `proxy`       — silently dead (black-holed) connections, through a TCP proxy.
//! - `load`        — 20,000-row burst with single inserts arriving (10).
//! - `poison`      — rows of every hostile kind among normal rows: each costs only itself.
//! - `vectorizer`  — the core scenarios on a chunked vectorizer over a user table (V1–V6):
//!   SIGKILL, three daemons, catch-up, failed rows, provider down, least privilege.

#[path = "faults/support.rs"]
mod support;

#[path = "faults/process.rs"]
mod process;

#[path = "faults/connections.rs"]
mod connections;

#[path = "faults/input.rs"]
mod input;

#[path = "faults/interleave.rs"]
mod interleave;

#[path = "faults/provider.rs"]
mod provider;

#[path = "faults/proxy.rs"]
mod proxy;

#[path = "faults/load.rs"]
mod load;

#[path = "faults/poison.rs"]
mod poison;

#[path = "faults/vectorizer.rs"]
mod vectorizer;
