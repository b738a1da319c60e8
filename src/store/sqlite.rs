//! The SQLite store: times are sortable UTC text (`YYYY-MM-DD HH:MM:SS.ffffff`).

use super::{ActivateReport, Activation, CodeRecord, CodeStore, Gate, StoreError, subject_from};
use crate::domain::Code;
use crate::domain::IssuanceId;
use crate::domain::Subject;
use crate::timestamp;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// The SQLite migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per statement; far below SQLite's limit on bound parameters.
const CHUNK: usize = 200;

macro_rules! columns {
    () => {
        "issuance_id, code, subject, issued_at, expires_at, activated_at, redeemed_at, revoked_at, expired_at"
    };
}

/// The subject (bound first) has reached the cap (then window start, cap) in its window.
macro_rules! locked {
    () => {
        "EXISTS (SELECT 1 FROM subject_failures WHERE subject = ? AND window_started_at > ? AND failures >= ?)"
    };
}

macro_rules! valid_for {
    () => {
        "code = ? AND subject IS ? AND expires_at > ? AND redeemed_at IS NULL AND revoked_at IS NULL"
    };
}

/// Opens a SQLite database in WAL mode, so that several processes can share it; `create` makes the
/// file if it is missing. Switching a new file to WAL needs a moment alone with it, so a process that
/// opens it while another is migrating it gets "database is locked" at once (no busy wait applies to
/// that switch): such an open is retried for a few seconds.
pub async fn connect(url: &str, create: bool) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    let mut attempt = 0;
    loop {
        match SqlitePoolOptions::new()
            .max_connections(8)
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
    pool: SqlitePool,
}

impl SqliteStore {
    /// Wraps a migrated pool.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

fn t(time: DateTime<Utc>) -> String {
    timestamp::format(time)
}

fn record(row: &SqliteRow) -> Result<CodeRecord, StoreError> {
    let time = |col: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        let text: Option<String> = row.try_get(col)?;
        text.map(|t| timestamp::parse(&t).ok_or(StoreError::Corrupt("timestamp")))
            .transpose()
    };
    let required = |col: &str| time(col)?.ok_or(StoreError::Corrupt("timestamp"));
    let code: String = row.try_get("code")?;
    Ok(CodeRecord {
        issuance_id: IssuanceId::from_string(row.try_get("issuance_id")?),
        code: Code::parse(&code).map_err(|_| StoreError::Corrupt("code"))?,
        subject: subject_from(row.try_get("subject")?)?,
        issued_at: required("issued_at")?,
        expires_at: required("expires_at")?,
        activated_at: required("activated_at")?,
        redeemed_at: time("redeemed_at")?,
        revoked_at: time("revoked_at")?,
        expired_at: time("expired_at")?,
    })
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
impl CodeStore for SqliteStore {
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
        let mut tx = self.pool.begin().await?;
        for chunk in live.chunks(CHUNK) {
            // One statement, so the revocation lookup and the insert see the same database: an operator
            // may have revoked the code while this activation was on its way.
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO valid_codes (issuance_id, code, subject, issued_at, expires_at, activated_at, revoked_at) ",
            );
            insert.push_values(chunk, |mut row, a| {
                row.push_bind(a.issuance.id.as_str())
                    .push_bind(a.issuance.code.as_str())
                    .push_bind(a.issuance.subject.as_ref().map(|s| s.as_str()))
                    .push_bind(t(a.issuance.issued_at))
                    .push_bind(t(a.expires_at))
                    .push_bind(&now_text)
                    .push("(SELECT max(revoked_at) FROM code_revocations WHERE code = ")
                    .push_bind_unseparated(a.issuance.code.as_str())
                    .push_unseparated(" AND revoked_at >= ")
                    .push_bind_unseparated(t(a.announced_at))
                    .push_unseparated(")");
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
        let mut tx = self.pool.begin().await?;
        let changed = mark_expired(&mut tx, &ids, &now_text).await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn purge(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query("DELETE FROM valid_codes WHERE expires_at <= ?")
            .bind(t(before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM code_revocations WHERE revoked_at <= ?")
            .bind(t(before))
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
        .bind(t(now))
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
            ", (SELECT failures FROM subject_failures WHERE subject = valid_codes.subject \
             AND window_started_at > ?) AS prior_failures FROM valid_codes WHERE ",
            valid_for!(),
            " AND NOT ",
            locked!(),
            " ORDER BY expires_at LIMIT 1"
        ))
        .bind(t(gate.window_start))
        .bind(code.as_str())
        .bind(subject.as_str())
        .bind(t(now))
        .bind(subject.as_str())
        .bind(t(gate.window_start))
        .bind(i64::from(gate.max_failures))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let prior: Option<i64> = row.try_get("prior_failures")?;
            Ok((
                record(&row)?,
                prior.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
            ))
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
        // One statement: SQLite runs one writer at a time, and `redeemed_at IS NULL` makes a second redeem miss.
        let (window_start, max_failures) = gate
            .map(|g| (t(g.window_start), i64::from(g.max_failures)))
            .unwrap_or_else(|| (t(now), i64::MAX));
        let row = sqlx::query(concat!(
            "UPDATE valid_codes SET redeemed_at = ? WHERE redeemed_at IS NULL AND issuance_id = \
             (SELECT issuance_id FROM valid_codes WHERE ",
            valid_for!(),
            " AND NOT ",
            locked!(),
            " ORDER BY expires_at LIMIT 1) RETURNING ",
            columns!()
        ))
        .bind(t(now))
        .bind(code.as_str())
        .bind(subject.map(Subject::as_str))
        .bind(t(now))
        .bind(subject.map(Subject::as_str))
        .bind(window_start)
        .bind(max_failures)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    async fn revoke(&self, code: &Code, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO code_revocations (code, revoked_at) VALUES (?, ?)")
            .bind(code.as_str())
            .bind(t(now))
            .execute(&mut *tx)
            .await?;
        let revoked = sqlx::query(
            "UPDATE valid_codes SET revoked_at = ? \
             WHERE code = ? AND revoked_at IS NULL AND expires_at > ?",
        )
        .bind(t(now))
        .bind(code.as_str())
        .bind(t(now))
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
            " FROM valid_codes WHERE code = ? ORDER BY issued_at DESC"
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
                " FROM valid_codes ORDER BY issued_at DESC LIMIT ?"
            ))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM valid_codes WHERE expires_at > ? AND redeemed_at IS NULL \
                 AND revoked_at IS NULL ORDER BY expires_at LIMIT ?"
            ))
            .bind(t(now))
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
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT failures FROM subject_failures WHERE subject = ? AND window_started_at > ?",
        )
        .bind(subject.as_str())
        .bind(t(window_start))
        .fetch_optional(&self.pool)
        .await?;
        Ok(n.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32)
    }

    async fn record_failure(
        &self,
        subject: &Subject,
        now: DateTime<Utc>,
        gate: &Gate,
    ) -> Result<u32, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n: i64 = sqlx::query_scalar(
            "INSERT INTO subject_failures (subject, failures, window_started_at) VALUES (?, 1, ?) \
             ON CONFLICT (subject) DO UPDATE SET \
               failures = CASE WHEN subject_failures.window_started_at <= ? THEN 1 \
                               WHEN subject_failures.failures >= ? THEN subject_failures.failures \
                               ELSE subject_failures.failures + 1 END, \
               window_started_at = CASE WHEN subject_failures.window_started_at <= ? \
                                   THEN excluded.window_started_at ELSE subject_failures.window_started_at END \
             RETURNING failures",
        )
        .bind(subject.as_str())
        .bind(t(now))
        .bind(t(gate.window_start))
        .bind(i64::from(gate.max_failures))
        .bind(t(gate.window_start))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE valid_codes SET wrong_checks = wrong_checks + 1, \
               revoked_at = CASE WHEN wrong_checks + 1 >= ? THEN ? ELSE revoked_at END \
             WHERE subject = ? AND expires_at > ? AND redeemed_at IS NULL AND revoked_at IS NULL",
        )
        .bind(i64::from(gate.max_wrong_per_code))
        .bind(t(now))
        .bind(subject.as_str())
        .bind(t(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    async fn reset_failures(&self, subject: &Subject) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM subject_failures WHERE subject = ?")
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
