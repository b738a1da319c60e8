//! The SQLite store: times are sortable UTC text (`YYYY-MM-DD HH:MM:SS.ffffff`).

use super::sql;
use super::{
    ActivateReport, Activation, ActivationStore, CodeRecord, DeliveryOutcome, DeliveryStore, Gate,
    PendingDelivery, StoreError,
};
use crate::domain::{Code, IssuanceId, Subject};
use crate::timestamp;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// The SQLite migrations, embedded in the binary (`migrations.rs`).
pub use super::migrations::SQLITE_MIGRATOR as MIGRATOR;

/// Rows per statement; far below SQLite's limit on bound parameters.
const CHUNK: usize = 200;

/// A SQLite database as one process uses it: reads on several connections, every write on one. WAL
/// admits one writer at a time anyway; with one write connection, this process's writers wait their
/// turn in the pool, in order, instead of each retrying in SQLite's busy handler (which sleeps 1 ms,
/// then 2, 5, 10 … 100 ms between tries, and made concurrent issuing slow and its latency long).
#[derive(Clone, Debug)]
pub struct SqlitePools {
    /// Several connections, for statements that only read.
    pub read: SqlitePool,
    /// One connection, for every statement that writes (and every transaction).
    pub write: SqlitePool,
}

impl SqlitePools {
    /// Closes both pools, waiting for connections in use.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// Connections that read at once.
const READ_CONNECTIONS: u32 = 8;

/// Opens a SQLite database in WAL mode, so that several processes can share it; `create` makes the
/// file if it is missing. Switching a new file to WAL needs a moment alone with it, so a process that
/// opens it while another is migrating it gets "database is locked" at once (no busy wait applies to
/// that switch): such an open is retried for a few seconds.
pub async fn connect(url: &str, create: bool) -> Result<SqlitePools, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?;
    keep_private(options.get_filename(), create)?;
    let options = options
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    // The writer first: it creates the file and switches it to WAL.
    let write = open_pool(&options, 1).await?;
    let read = open_pool(&options.create_if_missing(false), READ_CONNECTIONS).await?;
    Ok(SqlitePools { read, write })
}

/// The database holds live codes: a new file is created owner-only (0600) before SQLite opens it, and
/// SQLite gives its `-wal` and `-shm` files the same mode; an existing one that others may read gets
/// one warning.
fn keep_private(path: &std::path::Path, create: bool) -> Result<(), StoreError> {
    let in_memory = path.as_os_str().is_empty() || path.as_os_str() == ":memory:";
    if in_memory {
        return Ok(());
    }
    if path.exists() {
        crate::files::warn_if_shared(path, "the SQLite database (it holds live codes)");
        return Ok(());
    }
    if create {
        match crate::files::create_private(path) {
            Ok(_) => {}
            // Another process created it in the meantime: it is theirs to have made private.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(StoreError::SqliteOpen {
                    path: path.display().to_string(),
                    cause: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

async fn open_pool(
    options: &SqliteConnectOptions,
    connections: u32,
) -> Result<SqlitePool, StoreError> {
    let mut attempt = 0;
    loop {
        match SqlitePoolOptions::new()
            .max_connections(connections)
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("5") && attempt < 20 => {
                attempt += 1;
                tracing::debug!(
                    attempt,
                    "SQLite file busy at open (another process is setting it up); retrying"
                );
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

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
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pools: SqlitePools,
}

impl SqliteStore {
    /// Wraps a migrated database's pools.
    pub fn new(pools: SqlitePools) -> Self {
        Self { pools }
    }

    /// Where statements that only read run.
    fn reads(&self) -> &SqlitePool {
        &self.pools.read
    }

    /// Where statements that write run.
    fn writes(&self) -> &SqlitePool {
        &self.pools.write
    }
}

/// A time as SQLite stores it: sortable UTC text.
fn t(time: DateTime<Utc>) -> String {
    timestamp::format(time)
}

fn record(row: &SqliteRow) -> Result<CodeRecord, StoreError> {
    sql::record(row, time_column)
}

/// Reads a time column as SQLite stores it.
fn time_column(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| timestamp::parse(&t).ok_or(StoreError::Corrupt("timestamp")))
        .transpose()
}

/// `… AND issuance_id IN (?, ?, …)` for a chunk of ids.
fn push_ids<'a>(query: &mut QueryBuilder<Sqlite>, ids: impl Iterator<Item = &'a str>) {
    query.push(" AND issuance_id IN (");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(id);
    }
    query.push(")");
}

/// Marks rows expired; shared by expiry and stale activations.
async fn mark_expired(
    conn: &mut sqlx::SqliteConnection,
    ids: &[&str],
    now: &str,
) -> Result<u64, StoreError> {
    let mut changed = 0;
    for chunk in ids.chunks(CHUNK) {
        let mut update = QueryBuilder::<Sqlite>::new("UPDATE valid_codes SET expired_at = ");
        update
            .push_bind(now)
            .push(" WHERE expired_at IS NULL AND expires_at <= ")
            .push_bind(now);
        push_ids(&mut update, chunk.iter().copied());
        changed += update.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(changed)
}

#[async_trait]
impl ActivationStore for SqliteStore {
    fn db_system(&self) -> &'static str {
        "sqlite"
    }

    async fn activate(
        &self,
        batch: &[Activation],
        now: DateTime<Utc>,
    ) -> Result<ActivateReport, StoreError> {
        let (live, stale): (Vec<&Activation>, Vec<&Activation>) =
            batch.iter().partition(|a| a.expires_at > now);
        let now_text = t(now);
        let mut report = ActivateReport {
            stale: stale.len() as u64,
            ..Default::default()
        };
        let mut tx = self.writes().begin().await?;
        for chunk in live.chunks(CHUNK) {
            // One statement, so the revocation lookup and the insert see the same database: an operator
            // may have revoked the code while this activation was on its way.
            let mut insert = QueryBuilder::<Sqlite>::new(sql::INSERT_ACTIVATIONS);
            insert.push_values(chunk, |mut row, a| {
                row.push_bind(a.issuance.id.as_str())
                    .push_bind(a.issuance.code.as_str())
                    .push_bind(a.issuance.subject.as_ref().map(|s| s.as_str()))
                    .push_bind(a.issuance.destination.as_ref().map(|d| d.as_str()))
                    .push_bind(a.issuance.destination.as_ref().map(|_| now_text.clone()))
                    .push_bind(t(a.issuance.issued_at))
                    .push_bind(t(a.expires_at))
                    .push_bind(&now_text)
                    .push(sql::REVOKED_SINCE[0])
                    .push_bind_unseparated(a.issuance.code.as_str())
                    .push_unseparated(sql::REVOKED_SINCE[1])
                    .push_bind_unseparated(t(a.announced_at))
                    .push_unseparated(sql::REVOKED_SINCE[2]);
            });
            insert.push(" ON CONFLICT (issuance_id) DO NOTHING");
            let inserted = insert.build().execute(&mut *tx).await?.rows_affected();
            report.inserted += inserted;
            if inserted < chunk.len() as u64 {
                let mut query = QueryBuilder::<Sqlite>::new(
                    "SELECT issuance_id, code FROM valid_codes WHERE 1 = 1",
                );
                push_ids(&mut query, chunk.iter().map(|a| a.issuance.id.as_str()));
                let recorded: Vec<(String, String)> =
                    query.build_query_as().fetch_all(&mut *tx).await?;
                report.conflicts.extend(super::conflicts(chunk, &recorded));
            }
        }
        report.duplicates = live.len() as u64 - report.inserted - report.conflicts.len() as u64;
        let stale_ids: Vec<&str> = stale.iter().map(|a| a.issuance.id.as_str()).collect();
        mark_expired(&mut tx, &stale_ids, &now_text).await?;
        tx.commit().await?;
        Ok(report)
    }

    async fn expire(&self, ids: &[IssuanceId], now: DateTime<Utc>) -> Result<u64, StoreError> {
        let now_text = t(now);
        let ids: Vec<&str> = ids.iter().map(IssuanceId::as_str).collect();
        let mut tx = self.writes().begin().await?;
        let changed = mark_expired(&mut tx, &ids, &now_text).await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn purge(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.purge_before(before).await
    }

    async fn recorded(&self, id: &IssuanceId) -> Result<bool, StoreError> {
        self.is_recorded(id).await
    }
}

#[async_trait]
impl DeliveryStore for SqliteStore {
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let rows = sqlx::query(sql::CLAIM_DELIVERIES_SQLITE.sqlite())
            .bind(t(lease_until))
            .bind(t(now))
            .bind(t(now))
            .bind(i64::from(limit))
            .fetch_all(self.writes())
            .await?;
        rows.iter()
            .map(|row| sql::pending_delivery(row, time_column))
            .collect()
    }

    async fn record_delivery(
        &self,
        id: &IssuanceId,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let query = match outcome {
            DeliveryOutcome::Delivered => sqlx::query(sql::DELIVERED.sqlite()).bind(t(now)),
            DeliveryOutcome::RetryAt(due, reason) => sqlx::query(sql::DELIVERY_RETRY.sqlite())
                .bind(t(*due))
                .bind(reason.clone()),
            DeliveryOutcome::Failed(reason) => sqlx::query(sql::DELIVERY_FAILED.sqlite())
                .bind(t(now))
                .bind(reason.clone()),
        };
        query.bind(id.as_str()).execute(self.writes()).await?;
        Ok(())
    }

    async fn end_undeliverable(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql::END_UNDELIVERABLE.sqlite())
            .bind(t(now))
            .bind(t(now))
            .execute(self.writes())
            .await?
            .rows_affected())
    }
    async fn still_deliverable(
        &self,
        id: &IssuanceId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(sql::STILL_DELIVERABLE.sqlite())
            .bind(id.as_str())
            .bind(t(now))
            .fetch_optional(self.reads())
            .await?;
        Ok(row.is_some())
    }
}

sql::shared_queries!(SqliteStore, sqlx::Sqlite, sqlite, revoke_lock: None, purge: &sql::PURGE_IN_BATCHES);
