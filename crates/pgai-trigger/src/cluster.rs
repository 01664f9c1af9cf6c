//! Embedded PostgreSQL cluster manager (initdb / start / stop / status).
