//! The PostgreSQL store: `timestamptz` times, several workers (replicas) sharing one database.

use super::{ActivateReport, Activation, CodeRecord, CodeStore, Gate, StoreError, subject_from};
use crate::domain::Code;
use crate::domain::IssuanceId;
use crate::domain::Subject;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use std::time::Duration;

/// The PostgreSQL migrations, embedded in the binary. sqlx takes an advisory lock while applying them,
/// so replicas starting together are safe.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows per INSERT; far below PostgreSQL's limit on bound parameters.
const CHUNK: usize = 1000;

macro_rules! columns {
    () => {
        "issuance_id, code, subject, issued_at, expires_at, activated_at, redeemed_at, revoked_at, expired_at"
    };
}

/// The subject ($2) has reached the cap ($5) in the window that started after $4.
macro_rules! locked {
    () => {
        "EXISTS (SELECT 1 FROM subject_failures WHERE subject = $2 AND window_started_at > $4 AND failures >= $5)"
    };
}

/// A count bound for an `integer` column.
fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

macro_rules! valid_for {
    () => {
        "code = $1 AND subject IS NOT DISTINCT FROM $2 AND expires_at > $3 \
         AND redeemed_at IS NULL AND revoked_at IS NULL"
    };
}

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
}

fn record(row: &PgRow) -> Result<CodeRecord, StoreError> {
    let code: String = row.try_get("code")?;
    Ok(CodeRecord {
        issuance_id: IssuanceId::from_string(row.try_get("issuance_id")?),
        code: Code::parse(&code).map_err(|_| StoreError::Corrupt("code"))?,
        subject: subject_from(row.try_get("subject")?)?,
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
        activated_at: row.try_get("activated_at")?,
        redeemed_at: row.try_get("redeemed_at")?,
        revoked_at: row.try_get("revoked_at")?,
        expired_at: row.try_get("expired_at")?,
    })
}

const MARK_EXPIRED: &str = "UPDATE valid_codes SET expired_at = $1 \
     WHERE expired_at IS NULL AND expires_at <= $1 AND issuance_id = ANY($2)";

#[async_trait]
impl CodeStore for PostgresStore {
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
        let mut tx = self.pool.begin().await?;
        // Activations share this lock; a revocation takes a stronger one, so the two never interleave:
        // either the revocation sees the new rows, or the insert below sees the revocation.
        sqlx::query("LOCK TABLE code_revocations IN SHARE MODE")
            .execute(&mut *tx)
            .await?;
        for chunk in live.chunks(CHUNK) {
            let mut insert = QueryBuilder::<Postgres>::new(
                "INSERT INTO valid_codes (issuance_id, code, subject, issued_at, expires_at, activated_at, revoked_at) ",
            );
            insert.push_values(chunk, |mut row, a| {
                row.push_bind(a.issuance.id.as_str())
                    .push_bind(a.issuance.code.as_str())
                    .push_bind(a.issuance.subject.as_ref().map(|s| s.as_str()))
                    .push_bind(a.issuance.issued_at)
                    .push_bind(a.expires_at)
                    .push_bind(now)
                    .push("(SELECT max(revoked_at) FROM code_revocations WHERE code = ")
                    .push_bind_unseparated(a.issuance.code.as_str())
                    .push_unseparated(" AND revoked_at >= ")
                    .push_bind_unseparated(a.announced_at)
                    .push_unseparated(")");
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
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query("DELETE FROM valid_codes WHERE expires_at <= $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM code_revocations WHERE revoked_at <= $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn find_valid(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
    ) -> Result<Option<CodeRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM valid_codes WHERE ",
            valid_for!(),
            " ORDER BY expires_at LIMIT 1"
        ))
        .bind(code.as_str())
        .bind(subject.map(Subject::as_str))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    async fn check(
        &self,
        code: &Code,
        subject: &Subject,
        now: DateTime<Utc>,
        gate: &Gate,
    ) -> Result<Option<(CodeRecord, u32)>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            ", (SELECT failures FROM subject_failures WHERE subject = $2 AND window_started_at > $4) \
             AS prior_failures FROM valid_codes WHERE ",
            valid_for!(),
            " AND NOT ",
            locked!(),
            " ORDER BY expires_at LIMIT 1"
        ))
        .bind(code.as_str())
        .bind(subject.as_str())
        .bind(now)
        .bind(gate.window_start)
        .bind(int(gate.max_failures))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let prior: Option<i32> = row.try_get("prior_failures")?;
            Ok((record(&row)?, prior.unwrap_or(0).max(0) as u32))
        })
        .transpose()
    }

    async fn redeem(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
        gate: Option<&Gate>,
    ) -> Result<Option<CodeRecord>, StoreError> {
        // A concurrent redeem of the same row waits for the first to commit, then re-checks
        // `redeemed_at IS NULL` (READ COMMITTED) and misses.
        let (window_start, max_failures) = gate
            .map(|g| (g.window_start, int(g.max_failures)))
            .unwrap_or((now, i32::MAX));
        let row = sqlx::query(concat!(
            "UPDATE valid_codes SET redeemed_at = $3 WHERE redeemed_at IS NULL AND issuance_id = (SELECT issuance_id \
             FROM valid_codes WHERE ",
            valid_for!(),
            " AND NOT ",
            locked!(),
            " ORDER BY expires_at LIMIT 1) RETURNING ",
            columns!()
        ))
        .bind(code.as_str())
        .bind(subject.map(Subject::as_str))
        .bind(now)
        .bind(window_start)
        .bind(max_failures)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    async fn revoke(&self, code: &Code, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE code_revocations IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO code_revocations (code, revoked_at) VALUES ($1, $2)")
            .bind(code.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let revoked = sqlx::query(
            "UPDATE valid_codes SET revoked_at = $2 \
             WHERE code = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(code.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(revoked)
    }

    async fn records(&self, code: &Code) -> Result<Vec<CodeRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM valid_codes WHERE code = $1 ORDER BY issued_at DESC"
        ))
        .bind(code.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }

    async fn list(
        &self,
        all: bool,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<CodeRecord>, StoreError> {
        let rows = if all {
            sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM valid_codes ORDER BY issued_at DESC LIMIT $1"
            ))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM valid_codes WHERE expires_at > $1 AND redeemed_at IS NULL AND revoked_at IS NULL \
                 ORDER BY expires_at LIMIT $2"
            ))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
        };
        rows.iter().map(record).collect()
    }

    async fn failures(
        &self,
        subject: &Subject,
        window_start: DateTime<Utc>,
    ) -> Result<u32, StoreError> {
        let n: Option<i32> = sqlx::query_scalar(
            "SELECT failures FROM subject_failures WHERE subject = $1 AND window_started_at > $2",
        )
        .bind(subject.as_str())
        .bind(window_start)
        .fetch_optional(&self.pool)
        .await?;
        Ok(n.unwrap_or(0).max(0) as u32)
    }

    async fn record_failure(
        &self,
        subject: &Subject,
        now: DateTime<Utc>,
        gate: &Gate,
    ) -> Result<u32, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The upsert locks the subject's row, so concurrent failures count one after another.
        let n: i32 = sqlx::query_scalar(
            "INSERT INTO subject_failures AS f (subject, failures, window_started_at) VALUES ($1, 1, $2) \
             ON CONFLICT (subject) DO UPDATE SET \
               failures = CASE WHEN f.window_started_at <= $3 THEN 1 \
                               WHEN f.failures >= $4 THEN f.failures ELSE f.failures + 1 END, \
               window_started_at = CASE WHEN f.window_started_at <= $3 THEN excluded.window_started_at \
                                   ELSE f.window_started_at END \
             RETURNING failures",
        )
        .bind(subject.as_str())
        .bind(now)
        .bind(gate.window_start)
        .bind(int(gate.max_failures))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE valid_codes SET wrong_checks = wrong_checks + 1, \
               revoked_at = CASE WHEN wrong_checks + 1 >= $1 THEN $2 ELSE revoked_at END \
             WHERE subject = $3 AND expires_at > $2 AND redeemed_at IS NULL AND revoked_at IS NULL",
        )
        .bind(int(gate.max_wrong_per_code))
        .bind(now)
        .bind(subject.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n.max(0) as u32)
    }

    async fn reset_failures(&self, subject: &Subject) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM subject_failures WHERE subject = $1")
            .bind(subject.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
