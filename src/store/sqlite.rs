//! The SQLite store: `valid_codes` with times as sortable UTC text.

use super::{ActivateReport, Activation, CodeStore, StoreError, ValidCode};
use crate::code::Code;
use crate::message::IssuanceId;
use crate::timestamp;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// The SQLite migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per statement; far below SQLite's limit on bound parameters.
const CHUNK: usize = 200;

/// Opens (creating if missing) a SQLite database in WAL mode, so that several processes can share it.
pub async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    Ok(SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?)
}

/// Applies the embedded migrations. SQLite has no migration lock, so processes starting together may
/// race: each migration runs in a transaction, the loser's rolls back, and it retries to find it applied.
pub async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "migration raced another process; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The valid-codes table in SQLite.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Wraps a migrated pool.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

fn row_to_code(row: &sqlx::sqlite::SqliteRow) -> Result<ValidCode, StoreError> {
    let time = |col: &str| -> Result<DateTime<Utc>, StoreError> {
        let text: String = row.try_get(col)?;
        timestamp::parse(&text).ok_or(StoreError::Corrupt("timestamp"))
    };
    let code: String = row.try_get("code")?;
    Ok(ValidCode {
        issuance_id: IssuanceId::from_string(row.try_get("issuance_id")?),
        code: Code::parse(&code).map_err(|_| StoreError::Corrupt("code"))?,
        issued_at: time("issued_at")?,
        expires_at: time("expires_at")?,
        activated_at: time("activated_at")?,
    })
}

#[async_trait]
impl CodeStore for SqliteStore {
    async fn activate(
        &self,
        batch: &[Activation],
        now: DateTime<Utc>,
    ) -> Result<ActivateReport, StoreError> {
        let (live, stale): (Vec<&Activation>, Vec<&Activation>) =
            batch.iter().partition(|a| a.expires_at > now);
        let now_text = timestamp::format(now);
        let mut report = ActivateReport {
            stale: stale.len() as u64,
            ..Default::default()
        };
        let mut tx = self.pool.begin().await?;
        for chunk in live.chunks(CHUNK) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO valid_codes (issuance_id, code, issued_at, expires_at, activated_at) ",
            );
            insert.push_values(chunk, |mut row, a| {
                row.push_bind(a.issuance.id.as_str())
                    .push_bind(a.issuance.code.as_str())
                    .push_bind(timestamp::format(a.issuance.issued_at))
                    .push_bind(timestamp::format(a.expires_at))
                    .push_bind(&now_text);
            });
            insert.push(" ON CONFLICT (issuance_id) DO NOTHING");
            report.inserted += insert.build().execute(&mut *tx).await?.rows_affected();
        }
        report.duplicates = live.len() as u64 - report.inserted;
        for chunk in stale.chunks(CHUNK) {
            let mut delete =
                QueryBuilder::<Sqlite>::new("DELETE FROM valid_codes WHERE expires_at <= ");
            delete.push_bind(&now_text).push(" AND issuance_id IN (");
            let mut ids = delete.separated(", ");
            for a in chunk {
                ids.push_bind(a.issuance.id.as_str());
            }
            delete.push(")");
            delete.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    async fn expire(&self, ids: &[IssuanceId], now: DateTime<Utc>) -> Result<u64, StoreError> {
        let now_text = timestamp::format(now);
        let mut removed = 0;
        let mut tx = self.pool.begin().await?;
        for chunk in ids.chunks(CHUNK) {
            let mut delete =
                QueryBuilder::<Sqlite>::new("DELETE FROM valid_codes WHERE expires_at <= ");
            delete.push_bind(&now_text).push(" AND issuance_id IN (");
            let mut sep = delete.separated(", ");
            for id in chunk {
                sep.push_bind(id.as_str());
            }
            delete.push(")");
            removed += delete.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM valid_codes WHERE expires_at <= ?")
            .bind(timestamp::format(now))
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    async fn find_valid(
        &self,
        code: &Code,
        now: DateTime<Utc>,
    ) -> Result<Vec<ValidCode>, StoreError> {
        let rows = sqlx::query(
            "SELECT issuance_id, code, issued_at, expires_at, activated_at FROM valid_codes \
             WHERE code = ? AND expires_at > ? ORDER BY issued_at",
        )
        .bind(code.as_str())
        .bind(timestamp::format(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_code).collect()
    }

    async fn list(&self, limit: u32) -> Result<Vec<ValidCode>, StoreError> {
        let rows = sqlx::query(
            "SELECT issuance_id, code, issued_at, expires_at, activated_at FROM valid_codes \
             ORDER BY issued_at DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_code).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
