//! pgai-trigger: PostgreSQL rows get their vector embeddings within milliseconds of commit.
//!
//! # Layout
//!
//! (filled in as the modules land)

pub mod cluster;
pub mod testkit;
