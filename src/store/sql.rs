//! Every statement both dialects run, each a function that binds its own values beside its text
//! (numbered `$n`, each value bound once), and the mapping of a row to a [`CodeRecord`]. The validity
//! rule is spelled once ([`valid!`]), as [`CodeState::at`](crate::domain::CodeState::at) says it in
//! Rust; the `active_codes` view of each migration set spells it for operators.

use super::statement::{Param, Statement};
use super::{Activation, CodeRecord, DeliveryOutcome, Gate, RedeemKey, StoreError, subject_from};
use crate::domain::{Code, IssuanceId, Subject};
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};

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

/// The one validity rule in SQL, at the time `$now` names.
macro_rules! valid {
    ($now:literal) => {
        concat!(
            "expires_at > ",
            $now,
            " AND redeemed_at IS NULL AND revoked_at IS NULL"
        )
    };
}

/// What [`find_valid`], [`check`] and [`redeem`] look for: a valid issuance of the code `$1` for the
/// subject `$2` (or for none) at `$3`.
macro_rules! valid_for {
    () => {
        concat!(
            "code = $1 AND subject IS NOT DISTINCT FROM $2 AND ",
            valid!("$3")
        )
    };
}

/// The subject `$2` has reached the cap `$5` in its window, which started after `$4`.
macro_rules! locked {
    () => {
        "EXISTS (SELECT 1 FROM subject_failures WHERE subject = $2 AND window_started_at > $4 AND failures >= $5)"
    };
}

/// A valid issuance of a code for a subject, or for none.
pub(super) fn find_valid<'a>(
    code: &'a Code,
    subject: Option<&'a Subject>,
    now: DateTime<Utc>,
) -> Statement<'a> {
    Statement::new(concat!(
        "SELECT ",
        columns!(),
        " FROM valid_codes WHERE ",
        valid_for!(),
        " ORDER BY expires_at LIMIT 1"
    ))
    .text(code.as_str())
    .optional_text(subject.map(Subject::as_str))
    .time(now)
}

/// A valid issuance of a code for a subject that is not locked, with the subject's failures in its
/// window (`prior_failures`).
pub(super) fn check<'a>(
    code: &'a Code,
    subject: &'a Subject,
    now: DateTime<Utc>,
    gate: &Gate,
) -> Statement<'a> {
    Statement::new(concat!(
        "SELECT ",
        columns!(),
        ", (SELECT CAST(failures AS BIGINT) FROM subject_failures WHERE subject = valid_codes.subject \
         AND window_started_at > $4) AS prior_failures FROM valid_codes WHERE ",
        valid_for!(),
        " AND NOT ",
        locked!(),
        " ORDER BY expires_at LIMIT 1"
    ))
    .text(code.as_str())
    .text(subject.as_str())
    .time(now)
    .time(gate.window_start)
    .integer(gate.max_failures)
}

/// Consumes a valid issuance, in one statement so that of concurrent redeems exactly one gets it.
/// Without a gate no subject is locked.
pub(super) fn redeem<'a>(
    code: &'a Code,
    subject: Option<&'a Subject>,
    now: DateTime<Utc>,
    gate: Option<&Gate>,
) -> Statement<'a> {
    let (window_start, cap) = gate
        .map(|g| (g.window_start, i64::from(g.max_failures)))
        .unwrap_or((now, i64::MAX));
    Statement::new(concat!(
        "UPDATE valid_codes SET redeemed_at = $3 WHERE redeemed_at IS NULL AND issuance_id = \
         (SELECT issuance_id FROM valid_codes WHERE ",
        valid_for!(),
        " AND NOT ",
        locked!(),
        " ORDER BY expires_at LIMIT 1) RETURNING ",
        columns!()
    ))
    .text(code.as_str())
    .optional_text(subject.map(Subject::as_str))
    .time(now)
    .time(window_start)
    .integer(cap)
}

/// Claims an idempotency key for a redeem, or takes over one that is forgotten (past its
/// `expires_at`); returns a row only if this call now holds the key. In PostgreSQL a concurrent claim
/// of the same key waits for the first transaction to end.
pub(super) fn claim_redeem_key<'a>(key: &RedeemKey<'a>, now: DateTime<Utc>) -> Statement<'a> {
    Statement::new(
        "INSERT INTO redeem_requests (idempotency_key, fingerprint, issuance_id, expires_at) \
         VALUES ($1, $2, NULL, $3) \
         ON CONFLICT (idempotency_key) DO UPDATE SET fingerprint = excluded.fingerprint, \
           issuance_id = NULL, expires_at = excluded.expires_at \
         WHERE redeem_requests.expires_at <= $4 \
         RETURNING idempotency_key",
    )
    .text(key.key.as_str())
    .text(key.fingerprint)
    .time(key.keep_failure_until)
    .time(now)
}

/// What a held idempotency key remembers: `fingerprint`, `issuance_id`.
pub(super) fn redeem_key_answer<'a>(key: &RedeemKey<'a>) -> Statement<'a> {
    Statement::new(
        "SELECT fingerprint, issuance_id FROM redeem_requests WHERE idempotency_key = $1",
    )
    .text(key.key.as_str())
}

/// Remembers a redeem's success under its key until the code's expiry.
pub(super) fn remember_redeemed<'a>(
    key: &RedeemKey<'a>,
    redeemed: &'a CodeRecord,
) -> Statement<'a> {
    Statement::new(
        "UPDATE redeem_requests SET issuance_id = $1, expires_at = $2 WHERE idempotency_key = $3",
    )
    .text(redeemed.issuance_id.as_str())
    .time(redeemed.expires_at)
    .text(key.key.as_str())
}

/// One issuance.
pub(super) fn record_by_id(id: &str) -> Statement<'_> {
    Statement::new(concat!(
        "SELECT ",
        columns!(),
        " FROM valid_codes WHERE issuance_id = $1"
    ))
    .text(id)
}

/// Every issuance of a code, newest first.
pub(super) fn records(code: &Code) -> Statement<'_> {
    Statement::new(concat!(
        "SELECT ",
        columns!(),
        " FROM valid_codes WHERE code = $1 ORDER BY issued_at DESC"
    ))
    .text(code.as_str())
}

/// Every row, newest first.
pub(super) fn list_all(limit: u32) -> Statement<'static> {
    Statement::new(concat!(
        "SELECT ",
        columns!(),
        " FROM valid_codes ORDER BY issued_at DESC LIMIT $1"
    ))
    .integer(limit)
}

/// The valid rows, soonest expiry first.
pub(super) fn list_valid(now: DateTime<Utc>, limit: u32) -> Statement<'static> {
    Statement::new(concat!(
        "SELECT ",
        columns!(),
        " FROM valid_codes WHERE ",
        valid!("$1"),
        " ORDER BY expires_at LIMIT $2"
    ))
    .time(now)
    .integer(limit)
}

/// How many rows are valid (`count`).
pub(super) fn count_valid(now: DateTime<Utc>) -> Statement<'static> {
    Statement::new(concat!(
        "SELECT COUNT(*) AS count FROM valid_codes WHERE ",
        valid!("$1")
    ))
    .time(now)
}

/// A subject's failures in its current window (`failures`).
pub(super) fn failures(subject: &Subject, window_start: DateTime<Utc>) -> Statement<'_> {
    Statement::new(
        "SELECT CAST(failures AS BIGINT) AS failures FROM subject_failures \
         WHERE subject = $1 AND window_started_at > $2",
    )
    .text(subject.as_str())
    .time(window_start)
}

/// Counts one failure, never past the cap; a window that has ended starts again now. Returns the
/// count (`failures`). The upsert locks the subject's row, so concurrent failures count one after
/// another.
pub(super) fn count_failure<'a>(
    subject: &'a Subject,
    now: DateTime<Utc>,
    gate: &Gate,
) -> Statement<'a> {
    Statement::new(
        "INSERT INTO subject_failures (subject, failures, window_started_at) VALUES ($1, 1, $2) \
         ON CONFLICT (subject) DO UPDATE SET \
           failures = CASE WHEN subject_failures.window_started_at <= $3 THEN 1 \
                           WHEN subject_failures.failures >= $4 THEN subject_failures.failures \
                           ELSE subject_failures.failures + 1 END, \
           window_started_at = CASE WHEN subject_failures.window_started_at <= $3 \
                               THEN excluded.window_started_at ELSE subject_failures.window_started_at END \
         RETURNING CAST(failures AS BIGINT) AS failures",
    )
    .text(subject.as_str())
    .time(now)
    .time(gate.window_start)
    .integer(gate.max_failures)
}

/// Counts a wrong check on each of the subject's valid codes, burning those that reach the cap.
pub(super) fn count_wrong_check<'a>(
    subject: &'a Subject,
    now: DateTime<Utc>,
    gate: &Gate,
) -> Statement<'a> {
    Statement::new(concat!(
        "UPDATE valid_codes SET wrong_checks = wrong_checks + 1, \
           revoked_at = CASE WHEN wrong_checks + 1 >= $1 THEN $2 ELSE revoked_at END \
         WHERE subject = $3 AND ",
        valid!("$2")
    ))
    .integer(gate.max_wrong_per_code)
    .time(now)
    .text(subject.as_str())
}

/// Forgets a subject's failures.
pub(super) fn reset_failures(subject: &Subject) -> Statement<'_> {
    Statement::new("DELETE FROM subject_failures WHERE subject = $1").text(subject.as_str())
}

/// Remembers a revocation for activations still to come.
pub(super) fn record_revocation(code: &Code, now: DateTime<Utc>) -> Statement<'_> {
    Statement::new("INSERT INTO code_revocations (code, revoked_at) VALUES ($1, $2)")
        .text(code.as_str())
        .time(now)
}

/// Revokes the recorded issuances of a code still before their expiry.
pub(super) fn revoke(code: &Code, now: DateTime<Utc>) -> Statement<'_> {
    Statement::new(
        "UPDATE valid_codes SET revoked_at = $2 \
         WHERE code = $1 AND revoked_at IS NULL AND expires_at > $2",
    )
    .text(code.as_str())
    .time(now)
}

/// Rows one purge statement deletes at most on SQLite: each batch is its own short transaction, so a
/// purge of many rows never holds SQLite's one writer for long (the benchmark's retention part: the
/// longest wait of a write during a purge of 100k rows, 249–336 ms with one DELETE, 19–34 ms in
/// batches). PostgreSQL purges each table in one statement: under MVCC it blocks no writer (a write's
/// longest wait during a purge of 100k rows 1–9 ms either way), and it was 14 times faster than
/// batches, whose index scans walk the rows the batches before them left dead.
pub const PURGE_BATCH: u32 = 1000;

/// A table a purge empties of what is past its time.
#[derive(Clone, Copy, Debug)]
pub(super) enum Purged {
    /// Rows past their retention.
    Codes,
    /// Revocations past their retention; the table has no key, so a batch is chosen by its rows'
    /// values (equal rows go together).
    Revocations,
    /// Redeem keys past their time.
    RedeemKeys,
}

/// Deletes a table's rows whose time is at or before `before`: at most `batch` of them, or all.
pub(super) fn purge(
    table: Purged,
    before: DateTime<Utc>,
    batch: Option<u32>,
) -> Statement<'static> {
    let text = match (table, batch) {
        (Purged::Codes, None) => "DELETE FROM valid_codes WHERE expires_at <= $1",
        (Purged::Codes, Some(_)) => {
            "DELETE FROM valid_codes WHERE issuance_id IN \
             (SELECT issuance_id FROM valid_codes WHERE expires_at <= $1 LIMIT $2)"
        }
        (Purged::Revocations, None) => "DELETE FROM code_revocations WHERE revoked_at <= $1",
        (Purged::Revocations, Some(_)) => {
            "DELETE FROM code_revocations WHERE (code, revoked_at) IN \
             (SELECT code, revoked_at FROM code_revocations WHERE revoked_at <= $1 LIMIT $2)"
        }
        (Purged::RedeemKeys, None) => "DELETE FROM redeem_requests WHERE expires_at <= $1",
        (Purged::RedeemKeys, Some(_)) => {
            "DELETE FROM redeem_requests WHERE idempotency_key IN \
             (SELECT idempotency_key FROM redeem_requests WHERE expires_at <= $1 LIMIT $2)"
        }
    };
    let statement = Statement::new(text).time(before);
    match batch {
        Some(batch) => statement.integer(batch),
        None => statement,
    }
}

/// Inserts live activations, skipping ids already recorded. Each row's `revoked_at` is the latest
/// revocation of its code at or after its announcement, looked up in the same statement, so the
/// lookup and the insert see the same database (an operator may have revoked the code while the
/// activation was on its way). `now` is bound once for every row.
pub(super) fn insert_activations<'a>(live: &[&'a Activation], now: DateTime<Utc>) -> Statement<'a> {
    let mut statement = Statement::new(
        "INSERT INTO valid_codes (issuance_id, code, subject, destination, delivery_due_at, \
         issued_at, expires_at, activated_at, revoked_at) VALUES ",
    );
    let now = statement.bind(Param::Time(Some(now)));
    for (i, a) in live.iter().enumerate() {
        let issuance = &a.issuance;
        let id = statement.bind(Param::Text(Some(issuance.id.as_str())));
        let code = statement.bind(Param::Text(Some(issuance.code.as_str())));
        let subject = statement.bind(Param::Text(issuance.subject.as_ref().map(|s| s.as_str())));
        let destination = statement.bind(Param::Text(
            issuance.destination.as_ref().map(|d| d.as_str()),
        ));
        let issued = statement.bind(Param::Time(Some(issuance.issued_at)));
        let expires = statement.bind(Param::Time(Some(a.expires_at)));
        let announced = statement.bind(Param::Time(Some(a.announced_at)));
        // A delivery is due now if the code has somewhere to go.
        let due: &dyn std::fmt::Display = match issuance.destination {
            Some(_) => &now,
            None => &"NULL",
        };
        statement.push_sql(&format!(
            "{}({id}, {code}, {subject}, {destination}, {due}, {issued}, {expires}, {now}, \
             (SELECT max(revoked_at) FROM code_revocations WHERE code = {code} AND revoked_at >= {announced}))",
            if i == 0 { "" } else { ", " }
        ));
    }
    statement.push_sql(" ON CONFLICT (issuance_id) DO NOTHING");
    statement
}

/// ` IN ($k, …)` for a list of ids, bound into `statement`.
fn push_ids<'a>(statement: &mut Statement<'a>, ids: &[&'a str]) {
    let list: Vec<String> = ids
        .iter()
        .map(|id| statement.bind(Param::Text(Some(id))).to_string())
        .collect();
    statement.push_sql(" IN (");
    statement.push_sql(&list.join(", "));
    statement.push_sql(")");
}

/// The code each of the ids is recorded for (`issuance_id`, `code`).
pub(super) fn recorded_codes<'a>(ids: &[&'a str]) -> Statement<'a> {
    let mut statement =
        Statement::new("SELECT issuance_id, code FROM valid_codes WHERE issuance_id");
    push_ids(&mut statement, ids);
    statement
}

/// Marks the rows of the ids expired, if they are past their expiry and not marked yet.
pub(super) fn mark_expired<'a>(ids: &[&'a str], now: DateTime<Utc>) -> Statement<'a> {
    let mut statement = Statement::new(
        "UPDATE valid_codes SET expired_at = $1 \
         WHERE expired_at IS NULL AND expires_at <= $1 AND issuance_id",
    )
    .time(now);
    push_ids(&mut statement, ids);
    statement
}

/// The columns a claimed delivery is read from ([`pending_delivery`]).
macro_rules! delivery_columns {
    () => {
        "issuance_id, code, subject, destination, expires_at, delivery_attempts"
    };
}

/// Claims deliveries due at `now` whose code is still valid, oldest due first, until a lease's end,
/// counting the attempt. `skip_locked` (PostgreSQL) locks the due rows and skips those another
/// claimer holds, so concurrent claims never share a delivery; in SQLite the statement runs on the
/// one write connection, so a second claimer sees the first one's lease.
pub(super) fn claim_deliveries(
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: u32,
    skip_locked: bool,
) -> Statement<'static> {
    /// The claim, with the row lock `$lock` (a literal) after its subquery's `LIMIT`.
    macro_rules! claim {
        ($lock:literal) => {
            concat!(
                "UPDATE valid_codes SET delivery_due_at = $1, delivery_attempts = delivery_attempts + 1 \
                 WHERE issuance_id IN (SELECT issuance_id FROM valid_codes WHERE delivery_due_at <= $2 AND ",
                valid!("$2"),
                " ORDER BY delivery_due_at LIMIT $3",
                $lock,
                ") RETURNING ",
                delivery_columns!()
            )
        };
    }
    // Both texts are constants: a claim runs every round of every worker's delivery stage.
    let text = if skip_locked {
        claim!(" FOR UPDATE SKIP LOCKED")
    } else {
        claim!("")
    };
    Statement::new(text)
        .time(lease_until)
        .time(now)
        .integer(limit)
}

/// Records what became of a delivery attempt: made; failed for now, the next attempt due at the
/// time it names; or failed for good. Each binds the time, the reason (none once made), the id.
pub(super) fn record_delivery<'a>(
    id: &'a IssuanceId,
    outcome: &'a DeliveryOutcome,
    now: DateTime<Utc>,
) -> Statement<'a> {
    let (text, at, reason) = match outcome {
        DeliveryOutcome::Delivered => (
            "UPDATE valid_codes SET delivered_at = $1, delivery_error = $2, delivery_due_at = NULL, \
             delivery_failed_at = NULL WHERE issuance_id = $3 AND delivered_at IS NULL",
            now,
            None,
        ),
        DeliveryOutcome::RetryAt(due, reason) => (
            "UPDATE valid_codes SET delivery_due_at = $1, delivery_error = $2 \
             WHERE issuance_id = $3 AND delivered_at IS NULL AND delivery_failed_at IS NULL",
            *due,
            Some(reason.as_str()),
        ),
        DeliveryOutcome::Failed(reason) => (
            "UPDATE valid_codes SET delivery_failed_at = $1, delivery_error = $2, \
             delivery_due_at = NULL WHERE issuance_id = $3 AND delivered_at IS NULL",
            now,
            Some(reason.as_str()),
        ),
    };
    Statement::new(text)
        .time(at)
        .optional_text(reason)
        .text(id.as_str())
}

/// Ends the pending deliveries of codes that can no longer be used, saying why.
pub(super) fn end_undeliverable(now: DateTime<Utc>) -> Statement<'static> {
    Statement::new(
        "UPDATE valid_codes SET delivery_due_at = NULL, delivery_failed_at = $1, delivery_error = \
           CASE WHEN redeemed_at IS NOT NULL THEN 'redeemed before delivery' \
                WHEN revoked_at IS NOT NULL THEN 'revoked before delivery' \
                ELSE 'expired before delivery' || COALESCE(' (last attempt: ' || delivery_error || ')', '') END \
         WHERE delivery_due_at IS NOT NULL AND delivered_at IS NULL \
           AND (expires_at <= $1 OR redeemed_at IS NOT NULL OR revoked_at IS NOT NULL)",
    )
    .time(now)
}

/// A claimed delivery that may still be sent.
pub(super) fn still_deliverable(id: &IssuanceId, now: DateTime<Utc>) -> Statement<'_> {
    Statement::new(concat!(
        "SELECT 1 FROM valid_codes WHERE issuance_id = $1 AND delivered_at IS NULL \
         AND delivery_failed_at IS NULL AND ",
        valid!("$2")
    ))
    .text(id.as_str())
    .time(now)
}
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

#[cfg(test)]
mod tests {
    use super::super::statement::placeholders;
    use super::*;
    use crate::domain::{Destination, IdempotencyKey, Issuance};

    /// Every value a statement binds is used by its text, and the text uses no placeholder it does
    /// not bind: `$1` … `$n` for n values, each at least once.
    fn assert_numbered(name: &str, statement: &Statement<'_>) {
        let mut used = placeholders(statement.sql());
        used.sort_unstable();
        used.dedup();
        let bound: Vec<usize> = (1..=statement.params().len()).collect();
        assert_eq!(used, bound, "{name}: {}", statement.sql());
        assert!(!statement.sql().contains('?'), "{name}");
    }

    #[test]
    fn each_statement_binds_exactly_the_values_its_text_numbers() {
        let now = Utc::now();
        let code = Code::parse("abC-123-xYz").unwrap();
        let subject = Subject::parse("user-1").unwrap();
        let id = IssuanceId::from_string("id-1".into());
        let gate = Gate {
            window_start: now,
            max_failures: 5,
            max_wrong_per_code: 3,
        };
        let key_value = IdempotencyKey::parse("key-1").unwrap();
        let key = RedeemKey {
            key: &key_value,
            fingerprint: "f",
            keep_failure_until: now,
        };
        let record = CodeRecord {
            issuance_id: id.clone(),
            code: code.clone(),
            subject: None,
            issued_at: now,
            expires_at: now,
            activated_at: now,
            redeemed_at: None,
            revoked_at: None,
            expired_at: None,
            delivery: None,
        };
        let mut issuance = Issuance {
            id: id.clone(),
            code: code.clone(),
            issued_at: now,
            subject: Some(subject.clone()),
            destination: Some(Destination::parse("a@example.com").unwrap()),
        };
        let with_destination = Activation::new(issuance.clone(), now);
        issuance.destination = None;
        let without = Activation::new(issuance, now);
        let (delivered, retry, failed) = (
            DeliveryOutcome::Delivered,
            DeliveryOutcome::RetryAt(now, "r".into()),
            DeliveryOutcome::Failed("r".into()),
        );
        let statements = [
            ("find_valid", find_valid(&code, Some(&subject), now)),
            ("check", check(&code, &subject, now, &gate)),
            ("redeem", redeem(&code, None, now, Some(&gate))),
            ("redeem without gate", redeem(&code, None, now, None)),
            ("claim_redeem_key", claim_redeem_key(&key, now)),
            ("redeem_key_answer", redeem_key_answer(&key)),
            ("remember_redeemed", remember_redeemed(&key, &record)),
            ("record_by_id", record_by_id("id")),
            ("records", records(&code)),
            ("list_all", list_all(5)),
            ("list_valid", list_valid(now, 5)),
            ("count_valid", count_valid(now)),
            ("failures", failures(&subject, now)),
            ("count_failure", count_failure(&subject, now, &gate)),
            ("count_wrong_check", count_wrong_check(&subject, now, &gate)),
            ("reset_failures", reset_failures(&subject)),
            ("record_revocation", record_revocation(&code, now)),
            ("revoke", revoke(&code, now)),
            (
                "insert_activations",
                insert_activations(&[&with_destination, &without], now),
            ),
            ("recorded_codes", recorded_codes(&["a", "b"])),
            ("mark_expired", mark_expired(&["a", "b", "c"], now)),
            ("claim_deliveries", claim_deliveries(now, now, 3, true)),
            ("delivered", record_delivery(&id, &delivered, now)),
            ("delivery_retry", record_delivery(&id, &retry, now)),
            ("delivery_failed", record_delivery(&id, &failed, now)),
            ("end_undeliverable", end_undeliverable(now)),
            ("still_deliverable", still_deliverable(&id, now)),
        ];
        for (name, statement) in &statements {
            assert_numbered(name, statement);
        }
        for table in [Purged::Codes, Purged::Revocations, Purged::RedeemKeys] {
            assert_numbered("purge", &purge(table, now, None));
            assert_numbered("purge in batches", &purge(table, now, Some(10)));
        }
    }
}
