//! The store in SQLite: times are sortable UTC text (`YYYY-MM-DD HH:MM:SS.ffffff`); the file and its
//! pools are [`crate::sqlite`]'s.

use super::dialect::Dialect;
use super::shared::SqlStore;
use super::sql;
use super::statement::{Param, Statement};
use super::{CodeRecord, PendingDelivery, StoreError};
use crate::sqlite::SqlitePools;
use crate::timestamp;
use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteQueryResult, SqliteRow};
use sqlx::{AssertSqlSafe, Row, Sqlite, SqlitePool};
use std::time::Duration;

/// The SQLite migrations, embedded in the binary (`migrations.rs`).
pub use super::migrations::SQLITE_MIGRATOR as MIGRATOR;

/// Applies the embedded migrations. SQLite has no migration lock, so processes starting together may
/// race: each migration runs in a transaction, the loser's rolls back, and it retries to find it applied.
pub async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 10 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "migration raced another process; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The valid-codes table in SQLite.
pub type SqliteStore = SqlStore<Sqlite>;

impl SqlStore<Sqlite> {
    /// Wraps a migrated database's pools: reads on the read pool, every write on the one writer.
    pub fn new(pools: SqlitePools) -> Self {
        Self::with_pools(pools.read, pools.write)
    }
}

/// Reads a time column as SQLite stores it.
fn time_column(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| timestamp::parse(&t).ok_or(StoreError::Corrupt("timestamp")))
        .transpose()
}

impl Dialect for Sqlite {
    const SYSTEM: &'static str = "sqlite";
    // Far below SQLite's limit on bound values (32,766), in rows of seven.
    const ROWS_PER_STATEMENT: usize = 200;
    const ACTIVATION_LOCK: Option<&'static str> = None;
    const REVOCATION_LOCK: Option<&'static str> = None;
    const SKIP_LOCKED: bool = false;
    const PURGE_BATCH: Option<u32> = Some(sql::PURGE_BATCH);

    fn query(statement: Statement<'_>) -> Query<'static, Self, SqliteArguments> {
        let (text, params) = statement.into_parts();
        params.into_iter().fold(
            sqlx::query(AssertSqlSafe(text)),
            |query, param| match param {
                Param::Text(value) => query.bind(value),
                Param::Time(time) => query.bind(time.map(timestamp::format)),
                Param::Integer(n) => query.bind(n),
            },
        )
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn record(row: &SqliteRow) -> Result<CodeRecord, StoreError> {
        sql::record(row, time_column)
    }

    fn pending_delivery(row: &SqliteRow) -> Result<PendingDelivery, StoreError> {
        sql::pending_delivery(row, time_column)
    }

    fn integer(row: &SqliteRow, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(row.try_get(column)?)
    }

    fn text(row: &SqliteRow, column: &str) -> Result<Option<String>, StoreError> {
        Ok(row.try_get(column)?)
    }
}
