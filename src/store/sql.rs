//! What both dialects share: the statements (written once, with `?` placeholders, numbered `$n` for
//! PostgreSQL), the validity rule in SQL, the mapping of a row to a [`CodeRecord`], and the methods
//! whose SQL is the same in both ([`shared_queries!`]). Each dialect file keeps only what differs:
//! how times are stored (sortable UTC text in SQLite, `timestamptz` in PostgreSQL), batch `IN (…)`
//! lists against `= ANY($n)`, and PostgreSQL's table locks.

use super::{CodeRecord, StoreError, subject_from};
use crate::domain::{Code, IssuanceId};
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};
use std::sync::OnceLock;

/// Begins a transaction on `pool` in a task of its own, so that a caller that stops waiting (a client
/// gone, a request past its deadline, a worker stopping) cannot cut the `BEGIN` in half. sqlx 0.9's
/// PostgreSQL driver puts a connection whose `BEGIN` was cancelled back in the pool still inside that
/// transaction, which then never ends: every later statement on that connection holds its locks for
/// ever. Begun here, an abandoned transaction is dropped whole, and sqlx rolls it back.
pub(super) async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::Transaction<'static, DB>, StoreError> {
    let pool = pool.clone();
    match tokio::spawn(async move { pool.begin().await }).await {
        Ok(begun) => Ok(begun?),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(_) => Err(StoreError::Database(sqlx::Error::PoolClosed)),
    }
}

/// The columns of a [`CodeRecord`], as [`record`] reads them.
macro_rules! columns {
    () => {
        "issuance_id, code, subject, issued_at, expires_at, activated_at, redeemed_at, revoked_at, expired_at, \
         destination, delivery_attempts, delivered_at, delivery_failed_at, delivery_error"
    };
}

/// The one validity rule in SQL (bind: now), as [`CodeState::at`](crate::domain::CodeState::at)
/// says it in Rust. The `active_codes` view of each migration set spells it for operators.
macro_rules! valid {
    () => {
        "expires_at > ? AND redeemed_at IS NULL AND revoked_at IS NULL"
    };
}

/// A valid issuance of a code for a subject or for none (bind: code, subject, now).
macro_rules! valid_for {
    () => {
        concat!("code = ? AND subject IS NOT DISTINCT FROM ? AND ", valid!())
    };
}

/// The subject has reached the cap in its window (bind: subject, window start, cap).
macro_rules! locked {
    () => {
        "EXISTS (SELECT 1 FROM subject_failures WHERE subject = ? AND window_started_at > ? AND failures >= ?)"
    };
}

/// A statement written once with `?` placeholders; PostgreSQL's `$1, $2, …` text is made on first use.
pub(super) struct Statement {
    text: &'static str,
    numbered: OnceLock<String>,
}

impl Statement {
    const fn new(text: &'static str) -> Self {
        Self {
            text,
            numbered: OnceLock::new(),
        }
    }

    /// The text for SQLite.
    pub(super) fn sqlite(&self) -> &'static str {
        self.text
    }

    /// The text for PostgreSQL: each `?` numbered in order (no statement here has a `?` in a literal).
    pub(super) fn postgres(&self) -> &str {
        self.numbered.get_or_init(|| {
            let mut out = String::with_capacity(self.text.len() + 16);
            let mut n = 0;
            for c in self.text.chars() {
                if c == '?' {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                } else {
                    out.push(c);
                }
            }
            out
        })
    }
}

/// A valid issuance of a code (bind: code, subject, now).
pub(super) static FIND_VALID: Statement = Statement::new(concat!(
    "SELECT ",
    columns!(),
    " FROM valid_codes WHERE ",
    valid_for!(),
    " ORDER BY expires_at LIMIT 1"
));

/// A valid issuance of a code for a subject that is not locked, with the subject's failure count
/// (bind: window start, code, subject, now, subject, window start, cap).
pub(super) static CHECK: Statement = Statement::new(concat!(
    "SELECT ",
    columns!(),
    ", (SELECT failures FROM subject_failures WHERE subject = valid_codes.subject \
     AND window_started_at > ?) AS prior_failures FROM valid_codes WHERE ",
    valid_for!(),
    " AND NOT ",
    locked!(),
    " ORDER BY expires_at LIMIT 1"
));

/// Consumes a valid issuance, in one statement so that of concurrent redeems exactly one gets it
/// (bind: now, code, subject, now, subject, window start, cap).
pub(super) static REDEEM: Statement = Statement::new(concat!(
    "UPDATE valid_codes SET redeemed_at = ? WHERE redeemed_at IS NULL AND issuance_id = \
     (SELECT issuance_id FROM valid_codes WHERE ",
    valid_for!(),
    " AND NOT ",
    locked!(),
    " ORDER BY expires_at LIMIT 1) RETURNING ",
    columns!()
));

/// Claims an idempotency key for a redeem, or takes over one that is forgotten (past its
/// `expires_at`); returns a row only if this call now holds the key (bind: key, fingerprint,
/// remember until, now). In PostgreSQL a concurrent claim of the same key waits for the first
/// transaction to end.
pub(super) static CLAIM_REDEEM_KEY: Statement = Statement::new(
    "INSERT INTO redeem_requests (idempotency_key, fingerprint, issuance_id, expires_at) \
     VALUES (?, ?, NULL, ?) \
     ON CONFLICT (idempotency_key) DO UPDATE SET fingerprint = excluded.fingerprint, \
       issuance_id = NULL, expires_at = excluded.expires_at \
     WHERE redeem_requests.expires_at <= ? \
     RETURNING idempotency_key",
);

/// What a held idempotency key remembers (bind: key).
pub(super) static REDEEM_KEY_ANSWER: Statement = Statement::new(
    "SELECT fingerprint, issuance_id FROM redeem_requests WHERE idempotency_key = ?",
);

/// Remembers a redeem's success under its key until the code's expiry (bind: issuance id, expiry, key).
pub(super) static REMEMBER_REDEEMED: Statement = Statement::new(
    "UPDATE redeem_requests SET issuance_id = ?, expires_at = ? WHERE idempotency_key = ?",
);

/// One issuance (bind: issuance id).
pub(super) static RECORD_BY_ID: Statement = Statement::new(concat!(
    "SELECT ",
    columns!(),
    " FROM valid_codes WHERE issuance_id = ?"
));

/// Every issuance of a code, newest first (bind: code).
pub(super) static RECORDS: Statement = Statement::new(concat!(
    "SELECT ",
    columns!(),
    " FROM valid_codes WHERE code = ? ORDER BY issued_at DESC"
));

/// Every row, newest first (bind: limit).
pub(super) static LIST_ALL: Statement = Statement::new(concat!(
    "SELECT ",
    columns!(),
    " FROM valid_codes ORDER BY issued_at DESC LIMIT ?"
));

/// The valid rows, soonest expiry first (bind: now, limit).
pub(super) static LIST_VALID: Statement = Statement::new(concat!(
    "SELECT ",
    columns!(),
    " FROM valid_codes WHERE ",
    valid!(),
    " ORDER BY expires_at LIMIT ?"
));

/// How many rows are valid (bind: now).
pub(super) static COUNT_VALID: Statement =
    Statement::new(concat!("SELECT COUNT(*) FROM valid_codes WHERE ", valid!()));

/// A subject's failures in its current window (bind: subject, window start).
pub(super) static FAILURES: Statement = Statement::new(
    "SELECT failures FROM subject_failures WHERE subject = ? AND window_started_at > ?",
);

/// Counts one failure, never past the cap; a window that has ended starts again now
/// (bind: subject, now, window start, cap, window start).
pub(super) static COUNT_FAILURE: Statement = Statement::new(
    "INSERT INTO subject_failures (subject, failures, window_started_at) VALUES (?, 1, ?) \
     ON CONFLICT (subject) DO UPDATE SET \
       failures = CASE WHEN subject_failures.window_started_at <= ? THEN 1 \
                       WHEN subject_failures.failures >= ? THEN subject_failures.failures \
                       ELSE subject_failures.failures + 1 END, \
       window_started_at = CASE WHEN subject_failures.window_started_at <= ? \
                           THEN excluded.window_started_at ELSE subject_failures.window_started_at END \
     RETURNING failures",
);

/// Counts a wrong check on each of the subject's valid codes, burning those that reach the cap
/// (bind: cap, now, subject, now).
pub(super) static COUNT_WRONG_CHECK: Statement = Statement::new(concat!(
    "UPDATE valid_codes SET wrong_checks = wrong_checks + 1, \
       revoked_at = CASE WHEN wrong_checks + 1 >= ? THEN ? ELSE revoked_at END \
     WHERE subject = ? AND ",
    valid!()
));

/// Forgets a subject's failures (bind: subject).
pub(super) static RESET_FAILURES: Statement =
    Statement::new("DELETE FROM subject_failures WHERE subject = ?");

/// Remembers a revocation for activations still to come (bind: code, now).
pub(super) static RECORD_REVOCATION: Statement =
    Statement::new("INSERT INTO code_revocations (code, revoked_at) VALUES (?, ?)");

/// Revokes the recorded issuances of a code still before their expiry (bind: now, code, now).
pub(super) static REVOKE: Statement = Statement::new(
    "UPDATE valid_codes SET revoked_at = ? WHERE code = ? AND revoked_at IS NULL AND expires_at > ?",
);

/// Rows one purge statement deletes at most on SQLite: each batch is its own short transaction, so a
/// purge of many rows never holds SQLite's one writer for long (the benchmark's retention part: the
/// longest wait of a write during a purge of 100k rows, 249–336 ms with one DELETE, 19–34 ms in
/// batches).
pub const PURGE_BATCH: u32 = 1000;

/// The statements of a purge, and the rows each may delete at once (`None`: all in one statement).
pub(super) struct Purge {
    /// Rows past their retention (bind: cutoff[, batch]).
    pub codes: Statement,
    /// Revocations past their retention (bind: cutoff[, batch]); the table has no key, so a batch
    /// is chosen by its rows' values (equal rows go together).
    pub revocations: Statement,
    /// Redeem keys past their time (bind: cutoff[, batch]).
    pub redeem_keys: Statement,
    /// The rows one statement deletes at most.
    pub batch: Option<u32>,
}

/// SQLite's purge: batches of [`PURGE_BATCH`], so that queued writers go between them.
pub(super) static PURGE_IN_BATCHES: Purge = Purge {
    codes: Statement::new(
        "DELETE FROM valid_codes WHERE issuance_id IN \
         (SELECT issuance_id FROM valid_codes WHERE expires_at <= ? LIMIT ?)",
    ),
    revocations: Statement::new(
        "DELETE FROM code_revocations WHERE (code, revoked_at) IN \
         (SELECT code, revoked_at FROM code_revocations WHERE revoked_at <= ? LIMIT ?)",
    ),
    redeem_keys: Statement::new(
        "DELETE FROM redeem_requests WHERE idempotency_key IN \
         (SELECT idempotency_key FROM redeem_requests WHERE expires_at <= ? LIMIT ?)",
    ),
    batch: Some(PURGE_BATCH),
};

/// PostgreSQL's purge: one statement per table. Under MVCC it blocks no writer (the benchmark: a
/// write's longest wait during a purge of 100k rows 1–9 ms either way), and it was 14 times faster
/// than batches, whose index scans walk the rows the batches before them left dead.
pub(super) static PURGE_AT_ONCE: Purge = Purge {
    codes: Statement::new("DELETE FROM valid_codes WHERE expires_at <= ?"),
    revocations: Statement::new("DELETE FROM code_revocations WHERE revoked_at <= ?"),
    redeem_keys: Statement::new("DELETE FROM redeem_requests WHERE expires_at <= ?"),
    batch: None,
};

/// The columns a claimed delivery is read from ([`pending_delivery`]).
macro_rules! delivery_columns {
    () => {
        "issuance_id, code, subject, destination, expires_at, delivery_attempts"
    };
}

/// Claims deliveries due at `now` whose code is still valid, oldest due first, until a lease's end,
/// counting the attempt (bind: lease end, now, now, limit); `$lock` is the dialect's row lock.
macro_rules! claim_deliveries {
    ($lock:literal) => {
        Statement::new(concat!(
            "UPDATE valid_codes SET delivery_due_at = ?, delivery_attempts = delivery_attempts + 1 \
             WHERE issuance_id IN (SELECT issuance_id FROM valid_codes WHERE delivery_due_at <= ? AND ",
            valid!(),
            " ORDER BY delivery_due_at LIMIT ?",
            $lock,
            ") RETURNING ",
            delivery_columns!()
        ))
    };
}

/// [`claim_deliveries!`] for SQLite: one statement on the one write connection, so a second claimer
/// sees the first one's lease.
pub(super) static CLAIM_DELIVERIES_SQLITE: Statement = claim_deliveries!("");

/// [`claim_deliveries!`] for PostgreSQL: the due rows are locked, and those another claimer holds are
/// skipped, so concurrent claims never share a delivery.
pub(super) static CLAIM_DELIVERIES_POSTGRES: Statement =
    claim_deliveries!(" FOR UPDATE SKIP LOCKED");

/// Records a delivery as made (bind: now, issuance id).
pub(super) static DELIVERED: Statement = Statement::new(
    "UPDATE valid_codes SET delivered_at = ?, delivery_due_at = NULL, delivery_failed_at = NULL,      delivery_error = NULL WHERE issuance_id = ? AND delivered_at IS NULL",
);

/// Schedules the next attempt of a delivery that failed for now (bind: due, reason, issuance id).
pub(super) static DELIVERY_RETRY: Statement = Statement::new(
    "UPDATE valid_codes SET delivery_due_at = ?, delivery_error = ?      WHERE issuance_id = ? AND delivered_at IS NULL AND delivery_failed_at IS NULL",
);

/// Records a delivery as failed for good (bind: now, reason, issuance id).
pub(super) static DELIVERY_FAILED: Statement = Statement::new(
    "UPDATE valid_codes SET delivery_failed_at = ?, delivery_error = ?, delivery_due_at = NULL      WHERE issuance_id = ? AND delivered_at IS NULL",
);

/// Ends the pending deliveries of codes that can no longer be used, saying why (bind: now, now).
pub(super) static END_UNDELIVERABLE: Statement = Statement::new(
    "UPDATE valid_codes SET delivery_due_at = NULL, delivery_failed_at = ?, delivery_error =        CASE WHEN redeemed_at IS NOT NULL THEN 'redeemed before delivery'             WHEN revoked_at IS NOT NULL THEN 'revoked before delivery'             ELSE 'expired before delivery' || COALESCE(' (last attempt: ' || delivery_error || ')', '') END      WHERE delivery_due_at IS NOT NULL AND delivered_at IS NULL        AND (expires_at <= ? OR redeemed_at IS NOT NULL OR revoked_at IS NOT NULL)",
);

/// A claimed delivery that may still be sent (bind: issuance id, now).
pub(super) static STILL_DELIVERABLE: Statement = Statement::new(concat!(
    "SELECT 1 FROM valid_codes WHERE issuance_id = ? AND delivered_at IS NULL \
     AND delivery_failed_at IS NULL AND ",
    valid!()
));

/// Reads a [`PendingDelivery`](super::PendingDelivery) from a row of `delivery_columns!`, with `time`
/// reading a time column.
pub(super) fn pending_delivery<'r, R>(
    row: &'r R,
    time: impl Fn(&'r R, &str) -> Result<Option<DateTime<Utc>>, StoreError>,
) -> Result<super::PendingDelivery, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i32: Decode<'r, R::Database> + Type<R::Database>,
{
    let code: String = row.try_get("code")?;
    let destination: Option<String> = row.try_get("destination")?;
    let attempts: i32 = row.try_get("delivery_attempts")?;
    Ok(super::PendingDelivery {
        issuance_id: IssuanceId::from_string(row.try_get("issuance_id")?),
        code: Code::parse(&code).map_err(|_| StoreError::Corrupt("code"))?,
        subject: subject_from(row.try_get("subject")?)?,
        destination: crate::domain::Destination::from_stored(
            destination.ok_or(StoreError::Corrupt("destination"))?,
        ),
        expires_at: time(row, "expires_at")?.ok_or(StoreError::Corrupt("expires_at"))?,
        attempt: u32::try_from(attempts).map_err(|_| StoreError::Corrupt("delivery_attempts"))?,
    })
}

/// The start of an activation insert; each row's `revoked_at` is the latest revocation of its code
/// at or after its announcement, looked up in the same statement.
pub(super) const INSERT_ACTIVATIONS: &str = "INSERT INTO valid_codes \
     (issuance_id, code, subject, destination, delivery_due_at, issued_at, expires_at, activated_at, \
      revoked_at) ";

/// A row's `revoked_at` in [`INSERT_ACTIVATIONS`]: before the code, then between it and the time.
pub(super) const REVOKED_SINCE: [&str; 3] = [
    "(SELECT max(revoked_at) FROM code_revocations WHERE code = ",
    " AND revoked_at >= ",
    ")",
];

/// Reads a [`CodeRecord`] from a row of [`columns!`], with `time` reading a time column (the one
/// thing the dialects store differently).
pub(super) fn record<'r, R>(
    row: &'r R,
    time: impl Fn(&'r R, &str) -> Result<Option<DateTime<Utc>>, StoreError>,
) -> Result<CodeRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i32: Decode<'r, R::Database> + Type<R::Database>,
{
    let required = |col: &str| time(row, col)?.ok_or(StoreError::Corrupt("timestamp"));
    let code: String = row.try_get("code")?;
    let destination: Option<String> = row.try_get("destination")?;
    let attempts: i32 = row.try_get("delivery_attempts")?;
    Ok(CodeRecord {
        issuance_id: IssuanceId::from_string(row.try_get("issuance_id")?),
        code: Code::parse(&code).map_err(|_| StoreError::Corrupt("code"))?,
        subject: subject_from(row.try_get("subject")?)?,
        issued_at: required("issued_at")?,
        expires_at: required("expires_at")?,
        activated_at: required("activated_at")?,
        redeemed_at: time(row, "redeemed_at")?,
        revoked_at: time(row, "revoked_at")?,
        expired_at: time(row, "expired_at")?,
        delivery: destination
            .map(|d| -> Result<_, StoreError> {
                Ok(Box::new(super::DeliveryRecord {
                    destination: crate::domain::Destination::from_stored(d),
                    attempts: u32::try_from(attempts)
                        .map_err(|_| StoreError::Corrupt("delivery_attempts"))?,
                    delivered_at: time(row, "delivered_at")?,
                    failed_at: time(row, "delivery_failed_at")?,
                    error: row.try_get("delivery_error")?,
                }))
            })
            .transpose()?,
    })
}

/// A count bound for an `integer` column.
pub(super) fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A count read from an `integer` column.
pub(super) fn count(n: Option<i32>) -> u32 {
    n.unwrap_or(0).max(0) as u32
}

/// Implements, for a dialect's store, the methods whose SQL both dialects share: all of
/// verification's, listing, revoking (after `$revoke_lock`, if any), purging (as `$purge` says), and the health check. The store
/// has a `pool`; `$db` is the sqlx database; the dialect file has `record(&Row)` and `t(DateTime<Utc>)`, the bound form of a time;
/// `$dialect` (`sqlite` or `postgres`) picks each statement's text.
macro_rules! shared_queries {
    ($store:ty, $db:ty, $dialect:ident, revoke_lock: $revoke_lock:expr, purge: $purge:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::VerificationStore for $store {
            fn db_system(&self) -> &'static str {
                $crate::store::ActivationStore::db_system(self)
            }

            async fn find_valid(
                &self,
                code: &Code,
                subject: Option<&Subject>,
                now: DateTime<Utc>,
            ) -> Result<Option<CodeRecord>, StoreError> {
                let row = sqlx::query(sql::FIND_VALID.$dialect())
                    .bind(code.as_str())
                    .bind(subject.map(Subject::as_str))
                    .bind(t(now))
                    .fetch_optional(self.reads())
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
                let row = sqlx::query(sql::CHECK.$dialect())
                    .bind(t(gate.window_start))
                    .bind(code.as_str())
                    .bind(subject.as_str())
                    .bind(t(now))
                    .bind(subject.as_str())
                    .bind(t(gate.window_start))
                    .bind(sql::int(gate.max_failures))
                    .fetch_optional(self.reads())
                    .await?;
                row.map(|row| {
                    let prior: Option<i32> = row.try_get("prior_failures")?;
                    Ok((record(&row)?, sql::count(prior)))
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
                Self::redeem_on(self.writes(), code, subject, now, gate).await
            }

            async fn redeem_keyed(
                &self,
                key: $crate::store::RedeemKey<'_>,
                code: &Code,
                subject: Option<&Subject>,
                now: DateTime<Utc>,
                gate: Option<&Gate>,
            ) -> Result<$crate::store::KeyedRedeem, StoreError> {
                use $crate::store::KeyedRedeem;
                let mut tx = sql::begin(self.writes()).await?;
                let claimed = sqlx::query(sql::CLAIM_REDEEM_KEY.$dialect())
                    .bind(key.key.as_str())
                    .bind(key.fingerprint)
                    .bind(t(key.keep_failure_until))
                    .bind(t(now))
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                if !claimed {
                    // Held by an earlier request (committed: a concurrent claim waited for it).
                    let row = sqlx::query(sql::REDEEM_KEY_ANSWER.$dialect())
                        .bind(key.key.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                    let fingerprint: String = row.try_get("fingerprint")?;
                    if fingerprint != key.fingerprint {
                        return Ok(KeyedRedeem::Reused);
                    }
                    let issuance: Option<String> = row.try_get("issuance_id")?;
                    let Some(issuance) = issuance else {
                        return Ok(KeyedRedeem::Repeat(None));
                    };
                    let row = sqlx::query(sql::RECORD_BY_ID.$dialect())
                        .bind(issuance)
                        .fetch_optional(&mut *tx)
                        .await?;
                    return Ok(KeyedRedeem::Repeat(row.as_ref().map(record).transpose()?));
                }
                let redeemed = Self::redeem_on(&mut *tx, code, subject, now, gate).await?;
                if let Some(record) = &redeemed {
                    sqlx::query(sql::REMEMBER_REDEEMED.$dialect())
                        .bind(record.issuance_id.as_str())
                        .bind(t(record.expires_at))
                        .bind(key.key.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(KeyedRedeem::First(redeemed))
            }

            async fn records(&self, code: &Code) -> Result<Vec<CodeRecord>, StoreError> {
                let rows = sqlx::query(sql::RECORDS.$dialect())
                    .bind(code.as_str())
                    .fetch_all(self.reads())
                    .await?;
                rows.iter().map(record).collect()
            }

            async fn failures(
                &self,
                subject: &Subject,
                window_start: DateTime<Utc>,
            ) -> Result<u32, StoreError> {
                let n: Option<i32> = sqlx::query_scalar(sql::FAILURES.$dialect())
                    .bind(subject.as_str())
                    .bind(t(window_start))
                    .fetch_optional(self.reads())
                    .await?;
                Ok(sql::count(n))
            }

            async fn record_failure(
                &self,
                subject: &Subject,
                now: DateTime<Utc>,
                gate: &Gate,
            ) -> Result<u32, StoreError> {
                let mut tx = sql::begin(self.writes()).await?;
                // The upsert locks the subject's row, so concurrent failures count one after another.
                let n: i32 = sqlx::query_scalar(sql::COUNT_FAILURE.$dialect())
                    .bind(subject.as_str())
                    .bind(t(now))
                    .bind(t(gate.window_start))
                    .bind(sql::int(gate.max_failures))
                    .bind(t(gate.window_start))
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query(sql::COUNT_WRONG_CHECK.$dialect())
                    .bind(sql::int(gate.max_wrong_per_code))
                    .bind(t(now))
                    .bind(subject.as_str())
                    .bind(t(now))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(sql::count(Some(n)))
            }

            async fn reset_failures(&self, subject: &Subject) -> Result<(), StoreError> {
                sqlx::query(sql::RESET_FAILURES.$dialect())
                    .bind(subject.as_str())
                    .execute(self.writes())
                    .await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::OperatorStore for $store {
            async fn list(
                &self,
                all: bool,
                now: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<CodeRecord>, StoreError> {
                let rows = if all {
                    sqlx::query(sql::LIST_ALL.$dialect())
                        .bind(i64::from(limit))
                        .fetch_all(self.reads())
                        .await?
                } else {
                    sqlx::query(sql::LIST_VALID.$dialect())
                        .bind(t(now))
                        .bind(i64::from(limit))
                        .fetch_all(self.reads())
                        .await?
                };
                rows.iter().map(record).collect()
            }

            async fn count_valid(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
                let (count,): (i64,) = sqlx::query_as(sql::COUNT_VALID.$dialect())
                    .bind(t(now))
                    .fetch_one(self.reads())
                    .await?;
                Ok(u64::try_from(count).unwrap_or(0))
            }

            async fn revoke(&self, code: &Code, now: DateTime<Utc>) -> Result<u64, StoreError> {
                let mut tx = sql::begin(self.writes()).await?;
                let lock: Option<&str> = $revoke_lock;
                if let Some(lock) = lock {
                    sqlx::query(lock).execute(&mut *tx).await?;
                }
                sqlx::query(sql::RECORD_REVOCATION.$dialect())
                    .bind(code.as_str())
                    .bind(t(now))
                    .execute(&mut *tx)
                    .await?;
                let revoked = sqlx::query(sql::REVOKE.$dialect())
                    .bind(t(now))
                    .bind(code.as_str())
                    .bind(t(now))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(revoked)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::CodeStore for $store {
            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(self.reads()).await?;
                Ok(())
            }
        }

        impl $store {
            /// Consumes a valid issuance in one statement on `executor` (a pool or a transaction).
            /// SQLite runs one writer at a time; in PostgreSQL a concurrent redeem of the same row waits
            /// for the first to commit, then re-checks `redeemed_at IS NULL` and misses.
            async fn redeem_on<'c, E: sqlx::Executor<'c, Database = $db>>(
                executor: E,
                code: &Code,
                subject: Option<&Subject>,
                now: DateTime<Utc>,
                gate: Option<&Gate>,
            ) -> Result<Option<CodeRecord>, StoreError> {
                let (window_start, max_failures) = gate
                    .map(|g| (g.window_start, sql::int(g.max_failures)))
                    .unwrap_or((now, i32::MAX));
                let row = sqlx::query(sql::REDEEM.$dialect())
                    .bind(t(now))
                    .bind(code.as_str())
                    .bind(subject.map(Subject::as_str))
                    .bind(t(now))
                    .bind(subject.map(Subject::as_str))
                    .bind(t(window_start))
                    .bind(max_failures)
                    .fetch_optional(executor)
                    .await?;
                row.as_ref().map(record).transpose()
            }

            /// Whether the issuance `id` has a row.
            async fn is_recorded(&self, id: &IssuanceId) -> Result<bool, StoreError> {
                let row = sqlx::query(sql::RECORD_BY_ID.$dialect())
                    .bind(id.as_str())
                    .fetch_optional(self.reads())
                    .await?;
                Ok(row.is_some())
            }

            /// Deletes rows (and revocations, and redeem keys) whose time is at or before `before`,
            /// as the dialect's [`sql::Purge`] says; the number of code rows deleted. Each table's
            /// purge is independent of the others' (a revocation outlives every activation it may
            /// meet by the retention's floor of one TTL), so a failure half-way leaves nothing wrong.
            async fn purge_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
                let purge: &'static sql::Purge = $purge;
                let rows = self.purge_table(&purge.codes, purge.batch, before).await?;
                self.purge_table(&purge.revocations, purge.batch, before)
                    .await?;
                self.purge_table(&purge.redeem_keys, purge.batch, before)
                    .await?;
                Ok(rows)
            }

            /// Runs one purge statement, again while a whole batch comes back; the rows deleted.
            /// Between batches the task yields, so that queued writers take the writer first.
            async fn purge_table(
                &self,
                statement: &'static sql::Statement,
                batch: Option<u32>,
                before: DateTime<Utc>,
            ) -> Result<u64, StoreError> {
                let mut deleted = 0;
                loop {
                    let mut query = sqlx::query(statement.$dialect()).bind(t(before));
                    if let Some(batch) = batch {
                        query = query.bind(i64::from(batch));
                    }
                    let done = query.execute(self.writes()).await?.rows_affected();
                    deleted += done;
                    match batch {
                        Some(batch) if done >= u64::from(batch) => tokio::task::yield_now().await,
                        _ => return Ok(deleted),
                    }
                }
            }
        }
    };
}
pub(super) use shared_queries;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_text_numbers_each_placeholder_in_order() {
        static S: Statement = Statement::new("a = ? AND b IS NOT DISTINCT FROM ? LIMIT ?");
        assert_eq!(S.sqlite(), "a = ? AND b IS NOT DISTINCT FROM ? LIMIT ?");
        assert_eq!(
            S.postgres(),
            "a = $1 AND b IS NOT DISTINCT FROM $2 LIMIT $3"
        );
        assert!(!CHECK.postgres().contains('?'));
    }
}
