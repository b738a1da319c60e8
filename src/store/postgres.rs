//! The PostgreSQL store: `timestamptz` times, several workers (replicas) sharing one database.

use super::sql;
use super::{
    ActivateReport, Activation, ActivationStore, CodeRecord, DeliveryOutcome, DeliveryStore, Gate,
    PendingDelivery, StoreError,
};
use crate::domain::{Code, IssuanceId, Subject};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use std::time::Duration;

/// The PostgreSQL migrations, embedded in the binary. sqlx takes an advisory lock while applying them,
/// so replicas starting together are safe.
pub use super::migrations::POSTGRES_MIGRATOR as MIGRATOR;

/// Rows per INSERT; far below PostgreSQL's limit on bound parameters.
const CHUNK: usize = 1000;

/// Connects to PostgreSQL.
pub async fn connect(url: &str) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?)
}

/// Applies the embedded migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Checks, without changing anything, that every embedded migration has been applied: for a runtime
/// role that may not change the schema (`MIGRATE_ON_START=false`).
pub async fn check_migrated(pool: &PgPool) -> Result<(), StoreError> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::NotMigrated(format!("no migration table readable ({e})")))?;
    match MIGRATOR
        .iter()
        .find(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
    {
        Some(missing) => Err(StoreError::NotMigrated(format!(
            "migration {} ({}) is not applied",
            missing.version, missing.description
        ))),
        None => Ok(()),
    }
}

/// The valid-codes table in PostgreSQL.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Wraps a migrated pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Where statements that only read run (the one pool: PostgreSQL runs writers side by side).
    fn reads(&self) -> &PgPool {
        &self.pool
    }

    /// Where statements that write run.
    fn writes(&self) -> &PgPool {
        &self.pool
    }
}

fn record(row: &PgRow) -> Result<CodeRecord, StoreError> {
    sql::record(row, |row, col| Ok(row.try_get(col)?))
}

const MARK_EXPIRED: &str = "UPDATE valid_codes SET expired_at = $1 \
     WHERE expired_at IS NULL AND expires_at <= $1 AND issuance_id = ANY($2)";

#[async_trait]
impl ActivationStore for PostgresStore {
    fn db_system(&self) -> &'static str {
        "postgresql"
    }

    async fn activate(
        &self,
        batch: &[Activation],
        now: DateTime<Utc>,
    ) -> Result<ActivateReport, StoreError> {
        let (live, stale): (Vec<&Activation>, Vec<&Activation>) =
            batch.iter().partition(|a| a.expires_at > now);
        let mut report = ActivateReport {
            stale: stale.len() as u64,
            ..Default::default()
        };
        let mut tx = sql::begin(&self.pool).await?;
        // Activations share this lock; a revocation takes a stronger one, so the two never interleave:
        // either the revocation sees the new rows, or the insert below sees the revocation.
        sqlx::query("LOCK TABLE code_revocations IN SHARE MODE")
            .execute(&mut *tx)
            .await?;
        for chunk in live.chunks(CHUNK) {
            let mut insert = QueryBuilder::<Postgres>::new(sql::INSERT_ACTIVATIONS);
            insert.push_values(chunk, |mut row, a| {
                row.push_bind(a.issuance.id.as_str())
                    .push_bind(a.issuance.code.as_str())
                    .push_bind(a.issuance.subject.as_ref().map(|s| s.as_str()))
                    .push_bind(a.issuance.destination.as_ref().map(|d| d.as_str()))
                    .push_bind(a.issuance.destination.as_ref().map(|_| now))
                    .push_bind(a.issuance.issued_at)
                    .push_bind(a.expires_at)
                    .push_bind(now)
                    .push(sql::REVOKED_SINCE[0])
                    .push_bind_unseparated(a.issuance.code.as_str())
                    .push_unseparated(sql::REVOKED_SINCE[1])
                    .push_bind_unseparated(a.announced_at)
                    .push_unseparated(sql::REVOKED_SINCE[2]);
            });
            insert.push(" ON CONFLICT (issuance_id) DO NOTHING");
            let inserted = insert.build().execute(&mut *tx).await?.rows_affected();
            report.inserted += inserted;
            if inserted < chunk.len() as u64 {
                let ids: Vec<&str> = chunk.iter().map(|a| a.issuance.id.as_str()).collect();
                let recorded: Vec<(String, String)> = sqlx::query_as(
                    "SELECT issuance_id, code FROM valid_codes WHERE issuance_id = ANY($1)",
                )
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
                report.conflicts.extend(super::conflicts(chunk, &recorded));
            }
        }
        report.duplicates = live.len() as u64 - report.inserted - report.conflicts.len() as u64;
        let stale_ids: Vec<String> = stale.iter().map(|a| a.issuance.id.to_string()).collect();
        sqlx::query(MARK_EXPIRED)
            .bind(now)
            .bind(&stale_ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(report)
    }

    async fn expire(&self, ids: &[IssuanceId], now: DateTime<Utc>) -> Result<u64, StoreError> {
        let ids: Vec<String> = ids.iter().map(IssuanceId::to_string).collect();
        Ok(sqlx::query(MARK_EXPIRED)
            .bind(now)
            .bind(&ids)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn purge(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.purge_before(before).await
    }

    async fn recorded(&self, id: &IssuanceId) -> Result<bool, StoreError> {
        self.is_recorded(id).await
    }
}

/// A time as PostgreSQL stores it: `timestamptz`, bound as it is.
fn t(time: DateTime<Utc>) -> DateTime<Utc> {
    time
}

/// Activations share this lock (taken in `activate`); a revocation takes a stronger one, so the two
/// never interleave: either the revocation sees the new rows, or the insert sees the revocation.
const REVOKE_LOCK: &str = "LOCK TABLE code_revocations IN SHARE ROW EXCLUSIVE MODE";

#[async_trait]
impl DeliveryStore for PostgresStore {
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let rows = sqlx::query(sql::CLAIM_DELIVERIES_POSTGRES.postgres())
            .bind(lease_until)
            .bind(now)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(self.writes())
            .await?;
        rows.iter()
            .map(|row| sql::pending_delivery(row, |row, col| Ok(row.try_get(col)?)))
            .collect()
    }

    async fn record_delivery(
        &self,
        id: &IssuanceId,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let query = match outcome {
            DeliveryOutcome::Delivered => sqlx::query(sql::DELIVERED.postgres()).bind(now),
            DeliveryOutcome::RetryAt(due, reason) => sqlx::query(sql::DELIVERY_RETRY.postgres())
                .bind(*due)
                .bind(reason.clone()),
            DeliveryOutcome::Failed(reason) => sqlx::query(sql::DELIVERY_FAILED.postgres())
                .bind(now)
                .bind(reason.clone()),
        };
        query.bind(id.as_str()).execute(self.writes()).await?;
        Ok(())
    }

    async fn end_undeliverable(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql::END_UNDELIVERABLE.postgres())
            .bind(now)
            .bind(now)
            .execute(self.writes())
            .await?
            .rows_affected())
    }
    async fn still_deliverable(
        &self,
        id: &IssuanceId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(sql::STILL_DELIVERABLE.postgres())
            .bind(id.as_str())
            .bind(t(now))
            .fetch_optional(self.reads())
            .await?;
        Ok(row.is_some())
    }
}

sql::shared_queries!(PostgresStore, sqlx::Postgres, postgres, revoke_lock: Some(REVOKE_LOCK), purge: &sql::PURGE_AT_ONCE);
