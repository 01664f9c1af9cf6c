//! Leases after the claim: extending them while a long batch is embedded, and giving claimed
//! rows back untouched. (Taking a lease is the claim itself, in [`super::claim`]; its expiry is
//! what makes a row [`Pending`](super::RowState::Pending) again.)

use tokio_postgres::{Client, Statement};

use crate::error::Result;
use crate::queue::{Claim, Table};

/// The prepared lease statements of one connection.
pub struct Leases {
    renew: Statement,
    release: Statement,
    release_owner: Statement,
}

impl Leases {
    pub async fn prepare(client: &Client, table: &Table) -> Result<Leases> {
        let t = table.sql();
        let renew = format!(
            "UPDATE {t} SET claim_expires_at = clock_timestamp() + make_interval(secs => $2)
              WHERE claimed_by = ANY($1::text[])"
        );
        let give_back = "SET claimed_by = NULL, claim_expires_at = NULL, retry_status = 'pending'";
        let release =
            format!("UPDATE {t} {give_back} WHERE claimed_by = $1 AND id = ANY($2::text[])");
        let release_owner = format!(
            "UPDATE {t} {give_back} WHERE starts_with(claimed_by, $1 || ':') AND needs_embedding = TRUE"
        );
        Ok(Leases {
            renew: client.prepare(&renew).await?,
            release: client.prepare(&release).await?,
            release_owner: client.prepare(&release_owner).await?,
        })
    }

    /// Extends the lease of every listed claim, so a long batch is not taken over.
    pub async fn renew(&self, client: &Client, tokens: &[String], lease_secs: f64) -> Result<u64> {
        Ok(client.execute(&self.renew, &[&tokens, &lease_secs]).await?)
    }

    /// Gives rows of a claim back untouched: no attempt counted (the provider failed, not them).
    pub async fn release(&self, client: &Client, claim: &Claim, ids: &[&str]) -> Result<u64> {
        Ok(client.execute(&self.release, &[&claim.token, &ids]).await?)
    }

    /// Gives back every claim `owner` (a worker id) holds. Only for claims the owner has
    /// abandoned (their batches are no longer being processed), e.g. after losing a connection.
    pub async fn release_owner(&self, client: &Client, owner: &str) -> Result<u64> {
        Ok(client.execute(&self.release_owner, &[&owner]).await?)
    }
}
