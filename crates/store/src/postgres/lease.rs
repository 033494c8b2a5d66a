//! Leases and heartbeats on the database, for several instances sharing it: one instance holds
//! a named lease (the leader) until it lapses, and every instance records that it is alive.
//! The database's clock decides expiry, so instances' clocks never have to agree.

use std::time::Duration;

use sqlx::Row;

use super::{PostgresBackend, backend_err};
use crate::Result;

/// The shared secret instances present to each other when they forward requests.
pub const INTER_CP_TOKEN_SECRET: &str = "inter-cp-token";

/// The lease as one instance saw it after trying to take or keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// This instance holds it, in `term`.
    Held { term: i64 },
    /// Another instance holds it.
    HeldBy { holder: String },
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PostgresBackend {
    /// Takes lease `name` for `holder` for `lease` from now if it is free, lapsed or already
    /// `holder`'s (then it is extended). The term grows when the lease changes hands or is
    /// taken again after lapsing.
    pub async fn try_lease(&self, name: &str, holder: &str, lease: Duration) -> Result<LeaseState> {
        let row = sqlx::query(
            "INSERT INTO leases AS l (name, holder, term, expires_at) \
             VALUES ($1, $2, 1, now() + make_interval(secs => $3::double precision / 1000)) \
             ON CONFLICT (name) DO UPDATE SET \
                 holder = EXCLUDED.holder, \
                 term = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() \
                             THEN l.term ELSE l.term + 1 END, \
                 expires_at = EXCLUDED.expires_at \
             WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now() \
             RETURNING term",
        )
        .bind(name)
        .bind(holder)
        .bind(millis(lease))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend_err("taking the leader lease"))?;
        if let Some(row) = row {
            let term: i64 = row
                .try_get("term")
                .map_err(backend_err("reading the lease"))?;
            return Ok(LeaseState::Held { term });
        }
        let holder: String = sqlx::query("SELECT holder FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend_err("reading the leader lease"))?
            .map(|r| r.try_get("holder"))
            .transpose()
            .map_err(backend_err("reading the lease"))?
            .unwrap_or_default();
        Ok(LeaseState::HeldBy { holder })
    }

    /// Gives lease `name` up at once if `holder` has it (a stopping leader), so another
    /// instance takes over without waiting for it to lapse.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("UPDATE leases SET expires_at = now() WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(backend_err("releasing the leader lease"))?;
        Ok(())
    }

    /// Records that instance `id` is alive now.
    pub async fn heartbeat(&self, id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO instances (id, heartbeat_at) VALUES ($1, now()) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(backend_err("recording this instance's heartbeat"))?;
        Ok(())
    }

    /// The instances whose heartbeat is younger than `within`; older rows (instances dead for
    /// ten times that) are deleted on the way.
    pub async fn live_instances(&self, within: Duration) -> Result<Vec<String>> {
        sqlx::query(
            "DELETE FROM instances WHERE heartbeat_at < now() - make_interval(secs => $1::double precision / 100)",
        )
        .bind(millis(within))
        .execute(&self.pool)
        .await
        .map_err(backend_err("forgetting dead instances"))?;
        let rows = sqlx::query(
            "SELECT id FROM instances WHERE heartbeat_at >= now() - make_interval(secs => $1::double precision / 1000) ORDER BY id",
        )
        .bind(millis(within))
        .fetch_all(&self.pool)
        .await
        .map_err(backend_err("listing live instances"))?;
        rows.iter()
            .map(|r| r.try_get("id").map_err(backend_err("reading instances")))
            .collect()
    }

    /// Publishes where and how other instances reach instance `id` (its inter-CP endpoint).
    pub async fn advertise(&self, id: &str, url: &str, certificate_pem: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO instances (id, heartbeat_at, inter_cp_url, inter_cp_certificate) \
             VALUES ($1, now(), $2, $3) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), \
                 inter_cp_url = EXCLUDED.inter_cp_url, \
                 inter_cp_certificate = EXCLUDED.inter_cp_certificate",
        )
        .bind(id)
        .bind(url)
        .bind(certificate_pem)
        .execute(&self.pool)
        .await
        .map_err(backend_err("advertising this instance"))?;
        Ok(())
    }

    /// The inter-CP URL and certificate (PEM) instance `id` advertised, if it did.
    pub async fn instance_endpoint(&self, id: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT inter_cp_url, inter_cp_certificate FROM instances WHERE id = $1 AND inter_cp_url <> ''",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend_err("reading an instance's endpoint"))?;
        row.map(|r| {
            Ok((
                r.try_get("inter_cp_url")
                    .map_err(backend_err("reading an instance's endpoint"))?,
                r.try_get("inter_cp_certificate")
                    .map_err(backend_err("reading an instance's endpoint"))?,
            ))
        })
        .transpose()
    }

    /// The shared secret `name`, created at random (two UUIDs' worth) by the first instance
    /// that asks.
    pub async fn instance_secret(&self, name: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO instance_secrets (name, value) \
             VALUES ($1, replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(backend_err("creating a shared secret"))?;
        sqlx::query("SELECT value FROM instance_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(backend_err("reading a shared secret"))?
            .try_get("value")
            .map_err(backend_err("reading a shared secret"))
    }
}
