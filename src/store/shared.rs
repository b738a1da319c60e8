//! The store, written once for both databases: every trait method as ordinary generic code over a
//! [`Dialect`], running the statements of [`sql`].

use super::dialect::Dialect;
use super::sql::{self, Purged};
use super::statement::Statement;
use super::{
    ActivateReport, Activation, ActivationStore, CodeRecord, DeliveryOutcome, DeliveryStore, Gate,
    KeyedRedeem, OperatorStore, PendingDelivery, RedeemKey, StoreError, StoreStatus,
    VerificationStore,
};
use crate::domain::{Code, IssuanceId, Subject};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Executor, Pool};

/// The valid-codes table in a database of dialect `D`.
#[derive(Debug)]
pub struct SqlStore<D: Dialect> {
    /// Where statements that only read run.
    reads: Pool<D>,
    /// Where statements that write run (and every transaction).
    writes: Pool<D>,
}

impl<D: Dialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        Self {
            reads: self.reads.clone(),
            writes: self.writes.clone(),
        }
    }
}

impl<D: Dialect> SqlStore<D> {
    /// A store that reads on `reads` and writes on `writes` (the same pool where the database runs
    /// writers side by side).
    pub(super) fn with_pools(reads: Pool<D>, writes: Pool<D>) -> Self {
        Self { reads, writes }
    }
}

impl<D: Dialect> SqlStore<D>
where
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
{
    /// Runs a statement that reads, and maps the row it finds.
    async fn read_one(&self, statement: Statement<'_>) -> Result<Option<CodeRecord>, StoreError> {
        let row = D::query(statement).fetch_optional(&self.reads).await?;
        row.as_ref().map(D::record).transpose()
    }

    /// Runs a statement that reads, and maps every row.
    async fn read_all(&self, statement: Statement<'_>) -> Result<Vec<CodeRecord>, StoreError> {
        let rows = D::query(statement).fetch_all(&self.reads).await?;
        rows.iter().map(D::record).collect()
    }

    /// Runs a statement that writes; the rows it changed.
    async fn write(&self, statement: Statement<'_>) -> Result<u64, StoreError> {
        Ok(D::rows_affected(
            &D::query(statement).execute(&self.writes).await?,
        ))
    }

    /// Runs a statement on `conn` (a transaction's); the rows it changed.
    async fn execute_on(
        conn: &mut D::Connection,
        statement: Statement<'_>,
    ) -> Result<u64, StoreError> {
        Ok(D::rows_affected(&D::query(statement).execute(conn).await?))
    }

    /// Consumes a valid issuance in one statement on `conn` (a pool's or a transaction's). SQLite runs
    /// one writer at a time; in PostgreSQL a concurrent redeem of the same row waits for the first to
    /// commit, then re-checks `redeemed_at IS NULL` and misses.
    async fn redeem_on(
        conn: &mut D::Connection,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
        gate: Option<&Gate>,
    ) -> Result<Option<CodeRecord>, StoreError> {
        let row = D::query(sql::redeem(code, subject, now, gate))
            .fetch_optional(conn)
            .await?;
        row.as_ref().map(D::record).transpose()
    }

    /// Deletes a table's rows at or before `before`, again while a whole batch comes back; the rows
    /// deleted. Between batches the task yields, so that queued writers take the writer first.
    async fn purge_table(&self, table: Purged, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            let done = self
                .write(sql::purge(table, before, D::PURGE_BATCH))
                .await?;
            deleted += done;
            match D::PURGE_BATCH {
                Some(batch) if done >= u64::from(batch) => tokio::task::yield_now().await,
                _ => return Ok(deleted),
            }
        }
    }
}

#[async_trait]
impl<D: Dialect> ActivationStore for SqlStore<D>
where
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
{
    fn db_system(&self) -> &'static str {
        D::SYSTEM
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
        let mut tx = sql::begin(&self.writes).await?;
        if let Some(lock) = D::ACTIVATION_LOCK {
            (&mut *tx).execute(lock).await?;
        }
        for chunk in live.chunks(D::ROWS_PER_STATEMENT) {
            let inserted = Self::execute_on(&mut tx, sql::insert_activations(chunk, now)).await?;
            report.inserted += inserted;
            if inserted < chunk.len() as u64 {
                let ids: Vec<&str> = chunk.iter().map(|a| a.issuance.id.as_str()).collect();
                let rows = D::query(sql::recorded_codes(&ids))
                    .fetch_all(&mut *tx)
                    .await?;
                let recorded = rows
                    .iter()
                    .map(|row| {
                        let text =
                            |column| D::text(row, column)?.ok_or(StoreError::Corrupt("issuance"));
                        Ok((text("issuance_id")?, text("code")?))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                report.conflicts.extend(super::conflicts(chunk, &recorded));
            }
        }
        report.duplicates = live.len() as u64 - report.inserted - report.conflicts.len() as u64;
        let stale_ids: Vec<&str> = stale.iter().map(|a| a.issuance.id.as_str()).collect();
        for chunk in stale_ids.chunks(D::ROWS_PER_STATEMENT) {
            Self::execute_on(&mut tx, sql::mark_expired(chunk, now)).await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    async fn expire(&self, ids: &[IssuanceId], now: DateTime<Utc>) -> Result<u64, StoreError> {
        let ids: Vec<&str> = ids.iter().map(IssuanceId::as_str).collect();
        let mut tx = sql::begin(&self.writes).await?;
        let mut changed = 0;
        for chunk in ids.chunks(D::ROWS_PER_STATEMENT) {
            changed += Self::execute_on(&mut tx, sql::mark_expired(chunk, now)).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Each table's purge is independent of the others' (a revocation outlives every activation it
    /// may meet by the retention's floor of one TTL), so a failure half-way leaves nothing wrong.
    async fn purge(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let rows = self.purge_table(Purged::Codes, before).await?;
        self.purge_table(Purged::Revocations, before).await?;
        self.purge_table(Purged::RedeemKeys, before).await?;
        Ok(rows)
    }

    async fn recorded(&self, id: &IssuanceId) -> Result<bool, StoreError> {
        let row = D::query(sql::record_by_id(id.as_str()))
            .fetch_optional(&self.reads)
            .await?;
        Ok(row.is_some())
    }
}

#[async_trait]
impl<D: Dialect> VerificationStore for SqlStore<D>
where
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
{
    fn db_system(&self) -> &'static str {
        D::SYSTEM
    }

    async fn find_valid(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
    ) -> Result<Option<CodeRecord>, StoreError> {
        self.read_one(sql::find_valid(code, subject, now)).await
    }

    async fn check(
        &self,
        code: &Code,
        subject: &Subject,
        now: DateTime<Utc>,
        gate: &Gate,
    ) -> Result<Option<(CodeRecord, u32)>, StoreError> {
        let row = D::query(sql::check(code, subject, now, gate))
            .fetch_optional(&self.reads)
            .await?;
        row.map(|row| {
            let prior = D::integer(&row, "prior_failures")?;
            Ok((D::record(&row)?, count(prior)))
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
        let mut conn = self.writes.acquire().await?;
        Self::redeem_on(&mut conn, code, subject, now, gate).await
    }

    async fn redeem_keyed(
        &self,
        key: RedeemKey<'_>,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
        gate: Option<&Gate>,
    ) -> Result<KeyedRedeem, StoreError> {
        let mut tx = sql::begin(&self.writes).await?;
        let claimed = D::query(sql::claim_redeem_key(&key, now))
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !claimed {
            // Held by an earlier request (committed: a concurrent claim waited for it).
            let row = D::query(sql::redeem_key_answer(&key))
                .fetch_one(&mut *tx)
                .await?;
            if D::text(&row, "fingerprint")?.as_deref() != Some(key.fingerprint) {
                return Ok(KeyedRedeem::Reused);
            }
            let Some(issuance) = D::text(&row, "issuance_id")? else {
                return Ok(KeyedRedeem::Repeat(None));
            };
            let row = D::query(sql::record_by_id(&issuance))
                .fetch_optional(&mut *tx)
                .await?;
            return Ok(KeyedRedeem::Repeat(
                row.as_ref().map(D::record).transpose()?,
            ));
        }
        let redeemed = Self::redeem_on(&mut tx, code, subject, now, gate).await?;
        if let Some(record) = &redeemed {
            Self::execute_on(&mut tx, sql::remember_redeemed(&key, record)).await?;
        }
        tx.commit().await?;
        Ok(KeyedRedeem::First(redeemed))
    }

    async fn records(&self, code: &Code) -> Result<Vec<CodeRecord>, StoreError> {
        self.read_all(sql::records(code)).await
    }

    async fn failures(
        &self,
        subject: &Subject,
        window_start: DateTime<Utc>,
    ) -> Result<u32, StoreError> {
        let row = D::query(sql::failures(subject, window_start))
            .fetch_optional(&self.reads)
            .await?;
        match row {
            Some(row) => Ok(count(D::integer(&row, "failures")?)),
            None => Ok(0),
        }
    }

    async fn record_failure(
        &self,
        subject: &Subject,
        now: DateTime<Utc>,
        gate: &Gate,
    ) -> Result<u32, StoreError> {
        let mut tx = sql::begin(&self.writes).await?;
        let row = D::query(sql::count_failure(subject, now, gate))
            .fetch_one(&mut *tx)
            .await?;
        let failures = D::integer(&row, "failures")?;
        Self::execute_on(&mut tx, sql::count_wrong_check(subject, now, gate)).await?;
        tx.commit().await?;
        Ok(count(failures))
    }

    async fn reset_failures(&self, subject: &Subject) -> Result<(), StoreError> {
        self.write(sql::reset_failures(subject)).await?;
        Ok(())
    }
}

#[async_trait]
impl<D: Dialect> OperatorStore for SqlStore<D>
where
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
{
    async fn list(
        &self,
        all: bool,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<CodeRecord>, StoreError> {
        self.read_all(if all {
            sql::list_all(limit)
        } else {
            sql::list_valid(now, limit)
        })
        .await
    }

    async fn revoke(&self, code: &Code, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = sql::begin(&self.writes).await?;
        if let Some(lock) = D::REVOCATION_LOCK {
            (&mut *tx).execute(lock).await?;
        }
        Self::execute_on(&mut tx, sql::record_revocation(code, now)).await?;
        let revoked = Self::execute_on(&mut tx, sql::revoke(code, now)).await?;
        tx.commit().await?;
        Ok(revoked)
    }
}

#[async_trait]
impl<D: Dialect> DeliveryStore for SqlStore<D>
where
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
{
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let claim = sql::claim_deliveries(now, lease_until, limit, D::SKIP_LOCKED);
        let rows = D::query(claim).fetch_all(&self.writes).await?;
        rows.iter().map(D::pending_delivery).collect()
    }

    async fn record_delivery(
        &self,
        id: &IssuanceId,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(sql::record_delivery(id, outcome, now)).await?;
        Ok(())
    }

    async fn end_undeliverable(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(sql::end_undeliverable(now)).await
    }

    async fn still_deliverable(
        &self,
        id: &IssuanceId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let row = D::query(sql::still_deliverable(id, now))
            .fetch_optional(&self.reads)
            .await?;
        Ok(row.is_some())
    }
}

#[async_trait]
impl<D: Dialect> StoreStatus for SqlStore<D>
where
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
{
    async fn ping(&self) -> Result<(), StoreError> {
        self.reads.execute("SELECT 1").await?;
        Ok(())
    }

    async fn count_valid(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let row = D::query(sql::count_valid(now))
            .fetch_one(&self.reads)
            .await?;
        Ok(D::integer(&row, "count")?.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }
}

/// A count read from a `bigint` column, as the store's traits give it.
fn count(n: Option<i64>) -> u32 {
    u32::try_from(n.unwrap_or(0).max(0)).unwrap_or(u32::MAX)
}
