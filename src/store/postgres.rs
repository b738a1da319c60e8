//! The store in PostgreSQL: `timestamptz` times, several workers (replicas) sharing one database.

use super::dialect::Dialect;
use super::shared::SqlStore;
use super::sql;
use super::statement::{Param, Statement};
use super::{CodeRecord, PendingDelivery, StoreError};
use sqlx::postgres::{PgArguments, PgPool, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Postgres, Row};
use std::time::Duration;

/// The PostgreSQL migrations, embedded in the binary. sqlx takes an advisory lock while applying them,
/// so replicas starting together are safe.
pub use super::migrations::POSTGRES_MIGRATOR as MIGRATOR;

/// Connects to PostgreSQL; a connection is waited for up to `acquire_timeout`, at start and after.
pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(acquire_timeout)
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
pub type PostgresStore = SqlStore<Postgres>;

impl SqlStore<Postgres> {
    /// Wraps a migrated pool; reads and writes share it (PostgreSQL runs writers side by side).
    pub fn new(pool: PgPool) -> Self {
        Self::with_pools(pool.clone(), pool)
    }
}

impl Dialect for Postgres {
    const SYSTEM: &'static str = "postgresql";
    // Far below PostgreSQL's limit on bound values (65,535), in rows of seven.
    const ROWS_PER_STATEMENT: usize = 1000;
    // Activations share this lock; a revocation takes a stronger one, so the two never interleave.
    const ACTIVATION_LOCK: Option<&'static str> = Some("LOCK TABLE code_revocations IN SHARE MODE");
    const REVOCATION_LOCK: Option<&'static str> =
        Some("LOCK TABLE code_revocations IN SHARE ROW EXCLUSIVE MODE");
    const SKIP_LOCKED: bool = true;
    const PURGE_BATCH: Option<u32> = None;

    fn query(statement: Statement<'_>) -> Query<'static, Self, PgArguments> {
        let (text, params) = statement.into_parts();
        params.into_iter().fold(
            sqlx::query(AssertSqlSafe(text)),
            |query, param| match param {
                Param::Text(value) => query.bind(value),
                Param::Time(time) => query.bind(time),
                Param::Integer(n) => query.bind(n),
            },
        )
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn record(row: &PgRow) -> Result<CodeRecord, StoreError> {
        sql::record(row, |row, column| Ok(row.try_get(column)?))
    }

    fn pending_delivery(row: &PgRow) -> Result<PendingDelivery, StoreError> {
        sql::pending_delivery(row, |row, column| Ok(row.try_get(column)?))
    }

    fn integer(row: &PgRow, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(row.try_get(column)?)
    }

    fn text(row: &PgRow, column: &str) -> Result<Option<String>, StoreError> {
        Ok(row.try_get(column)?)
    }
}
