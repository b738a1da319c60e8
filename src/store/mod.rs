//! The valid-codes table behind one trait; one implementation per database ([`sqlite`], [`postgres`]).

mod dialect;
mod migrations;
pub mod postgres;
mod shared;
mod sql;
mod statement;
pub use sql::PURGE_BATCH;
pub mod sqlite;

use crate::domain::{Code, CodeState, Destination, IdempotencyKey, Issuance, IssuanceId, Subject};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

/// A code to make valid until `expires_at`.
#[derive(Clone, Debug)]
pub struct Activation {
    /// The issuance.
    pub issuance: Issuance,
    /// The end of its validity: issue time plus TTL.
    pub expires_at: DateTime<Utc>,
    /// The earlier of its timestamp and its queue insertion time: a revocation at or after this reaches it.
    pub announced_at: DateTime<Utc>,
}

impl Activation {
    /// An activation announced at its own timestamp (for tools and tests that have no queue time).
    pub fn new(issuance: Issuance, expires_at: DateTime<Utc>) -> Self {
        let announced_at = issuance.issued_at;
        Self {
            issuance,
            expires_at,
            announced_at,
        }
    }
}

/// A row of `valid_codes`: one issuance and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CodeRecord {
    /// Which issuance.
    pub issuance_id: IssuanceId,
    /// The code.
    #[serde(serialize_with = "serialize_display")]
    pub code: Code,
    /// The user it is bound to, if any.
    #[serde(serialize_with = "serialize_opt_display")]
    pub subject: Option<Subject>,
    /// When `serve` issued it.
    pub issued_at: DateTime<Utc>,
    /// When it stops being valid.
    pub expires_at: DateTime<Utc>,
    /// When the worker made it valid.
    pub activated_at: DateTime<Utc>,
    /// When a sign-in consumed it.
    pub redeemed_at: Option<DateTime<Utc>>,
    /// When an operator revoked it.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When its expiry message was processed.
    pub expired_at: Option<DateTime<Utc>>,
    /// Its delivery by the worker, when the code was issued with a destination.
    pub delivery: Option<Box<DeliveryRecord>>,
}

/// What became of a code's delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    /// Where it goes (shown masked).
    #[serde(serialize_with = "serialize_display")]
    pub destination: Destination,
    /// Attempts made.
    pub attempts: u32,
    /// When the channel accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it was given up (the code expired, was redeemed or revoked first, or the channel refused it).
    pub failed_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed, or why it was given up.
    pub error: Option<String>,
}

impl DeliveryRecord {
    /// `delivered`, `failed` or `pending`.
    pub fn state(&self) -> &'static str {
        match (self.delivered_at, self.failed_at) {
            (Some(_), _) => "delivered",
            (None, Some(_)) => "failed",
            (None, None) => "pending",
        }
    }
}

/// A delivery a worker claimed: send it, then record what happened with
/// [`DeliveryStore::record_delivery`].
#[derive(Clone, Debug)]
pub struct PendingDelivery {
    /// Which issuance.
    pub issuance_id: IssuanceId,
    /// The code to deliver.
    pub code: Code,
    /// The user it is bound to, if any.
    pub subject: Option<Subject>,
    /// Where it goes.
    pub destination: Destination,
    /// When the code stops being valid: nothing is delivered after.
    pub expires_at: DateTime<Utc>,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
}

/// What became of one delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The channel accepted it.
    Delivered,
    /// It failed for now; try again at the given time.
    RetryAt(DateTime<Utc>, String),
    /// It failed for good, for the given reason.
    Failed(String),
}

/// What the worker's delivery stage needs: claim due deliveries, record their outcome, end those of
/// codes that can no longer be used.
#[async_trait]
pub trait DeliveryStore: Send + Sync + 'static {
    /// Claims up to `limit` deliveries due at `now` whose code is valid, each until `lease_until`
    /// (another worker claims it again only after that: one that died between sending and recording
    /// delivers it a second time), counting the attempt. Concurrent claims never share a delivery.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingDelivery>, StoreError>;

    /// Records the outcome of an attempt on `id` at `now`. A delivery recorded as made stays so.
    async fn record_delivery(
        &self,
        id: &IssuanceId,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Ends the pending deliveries of codes expired, redeemed or revoked at `now`, recording why;
    /// returns how many.
    async fn end_undeliverable(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Whether the claimed delivery `id` may still be sent at `now`: its code valid (not expired,
    /// redeemed or revoked since the claim) and the delivery neither made nor given up.
    async fn still_deliverable(
        &self,
        id: &IssuanceId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

fn serialize_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn serialize_opt_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

impl CodeRecord {
    /// The record's state at `now`, by [`CodeState::at`].
    pub fn state_at(&self, now: DateTime<Utc>) -> CodeState {
        CodeState::at(self.expires_at, self.redeemed_at, self.revoked_at, now)
    }
}

/// What [`CodeStore::activate`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActivateReport {
    /// Rows newly made valid.
    pub inserted: u64,
    /// Activations already recorded (a duplicate delivery): nothing changed.
    pub duplicates: u64,
    /// Activations whose expiry had already passed: nothing made valid.
    pub stale: u64,
    /// Activations (id and code) whose id is already recorded for another code: nothing changed; they
    /// are not ours. The one whose code was recorded under that id, in the same batch or before, is not
    /// among them.
    pub conflicts: Vec<(IssuanceId, Code)>,
}

/// The throttle a subject's checks pass through, applied in the same statement as the check.
#[derive(Clone, Copy, Debug)]
pub struct Gate {
    /// Failures counted before this time belong to an ended window.
    pub window_start: DateTime<Utc>,
    /// Failed checks after which the subject's checks all fail until the window ends.
    pub max_failures: u32,
    /// Wrong checks for a subject after which each of its valid codes is burned (revoked).
    pub max_wrong_per_code: u32,
}

/// The idempotency key a redeem came with, and what it remembers.
#[derive(Clone, Copy, Debug)]
pub struct RedeemKey<'a> {
    /// The client's key.
    pub key: &'a IdempotencyKey,
    /// The request's [`fingerprint`](crate::domain::fingerprint): the same key with another one is a reuse.
    pub fingerprint: &'a str,
    /// Until when a "not valid" answer is remembered (a success is remembered until its code's expiry).
    pub keep_failure_until: DateTime<Utc>,
}

/// What a redeem under an idempotency key did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyedRedeem {
    /// The key was new: the redeem ran, and its answer (the record consumed, or none) is remembered.
    First(Option<CodeRecord>),
    /// The key was seen with the same request: the first answer again, nothing changed.
    Repeat(Option<CodeRecord>),
    /// The key was seen with another code or subject: nothing done.
    Reused,
}

/// A database failure. The text is the driver's, which never holds the connection password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database holds a value codewatch did not write.
    #[error("database holds an unreadable {0}")]
    Corrupt(&'static str),
    /// The database server could not be reached (the target has no password).
    #[error("database at {target} unreachable: {cause}")]
    Unreachable {
        /// `host:port`.
        target: String,
        /// What failed.
        cause: String,
    },
    /// The SQLite file could not be opened or created.
    #[error("cannot open SQLite database {path}: {cause}")]
    SqliteOpen {
        /// The file.
        path: String,
        /// What failed.
        cause: String,
    },
    /// The schema is older than this binary and it was told not to migrate it.
    #[error(
        "the database schema is not up to date: {0}; run `codewatch migrate` with the migration role \
         (MIGRATE_ON_START=false is set, so this process does not change the schema)"
    )]
    NotMigrated(String),
    /// The URL names a database codewatch does not support.
    #[error("unsupported DATABASE_URL (expected sqlite:<file> or postgres://…)")]
    UnsupportedUrl,
}

/// What the worker needs: make codes valid, mark them expired, purge old rows. Every write is
/// idempotent, so redelivered messages leave the table right.
#[async_trait]
pub trait ActivationStore: Send + Sync + 'static {
    /// The database, as OpenTelemetry's `db.system.name` names it (`sqlite`, `postgresql`).
    fn db_system(&self) -> &'static str;

    /// In one transaction: records each activation whose `expires_at > now` (a second activation of the
    /// same issuance changes nothing; one whose code was revoked at or after its `announced_at` is recorded
    /// as revoked; one whose id is recorded for another code is reported in `conflicts`) and marks any
    /// leftover row of the others expired.
    async fn activate(
        &self,
        batch: &[Activation],
        now: DateTime<Utc>,
    ) -> Result<ActivateReport, StoreError>;

    /// Marks the given issuances expired if their `expires_at <= now`; returns how many rows changed.
    async fn expire(&self, ids: &[IssuanceId], now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Whether the issuance `id` has a row (an expiry message for one that has none is forged).
    async fn recorded(&self, id: &IssuanceId) -> Result<bool, StoreError>;

    /// Deletes rows (and revocations, and remembered redeem keys) whose time is at or before `before`:
    /// the retention sweep.
    async fn purge(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// What verification needs: find, check and redeem valid codes, and count a subject's failed checks.
/// A code is valid exactly while `expires_at > now` and it is neither redeemed nor revoked.
///
/// `subject` arguments select codes bound to that subject; `None` selects only unbound codes.
#[async_trait]
pub trait VerificationStore: Send + Sync + 'static {
    /// The database, as OpenTelemetry's `db.system.name` names it (`sqlite`, `postgresql`).
    fn db_system(&self) -> &'static str;

    /// A valid issuance of `code` for `subject` at `now`, if any.
    async fn find_valid(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
    ) -> Result<Option<CodeRecord>, StoreError>;

    /// In one statement: a valid issuance of `code` for `subject`, unless the subject has reached
    /// `gate.max_failures` in its window; with the subject's failure count, so that a reset is written
    /// only when there is something to reset.
    async fn check(
        &self,
        code: &Code,
        subject: &Subject,
        now: DateTime<Utc>,
        gate: &Gate,
    ) -> Result<Option<(CodeRecord, u32)>, StoreError>;

    /// Atomically consumes a valid issuance of `code` for `subject` (with a gate: unless the subject is
    /// locked): of any number of concurrent calls, exactly one gets it.
    async fn redeem(
        &self,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
        gate: Option<&Gate>,
    ) -> Result<Option<CodeRecord>, StoreError>;

    /// [`redeem`](Self::redeem) under an idempotency key, in one transaction with the key: a key still
    /// remembered at `now` gives its first answer again ([`KeyedRedeem::Repeat`], or
    /// [`KeyedRedeem::Reused`] for another request); a new one runs the redeem and remembers its answer.
    /// Concurrent calls with one key are answered one after the other, so only one of them redeems.
    async fn redeem_keyed(
        &self,
        key: RedeemKey<'_>,
        code: &Code,
        subject: Option<&Subject>,
        now: DateTime<Utc>,
        gate: Option<&Gate>,
    ) -> Result<KeyedRedeem, StoreError>;

    /// Every recorded issuance of `code`, newest first.
    async fn records(&self, code: &Code) -> Result<Vec<CodeRecord>, StoreError>;

    /// Consecutive failed checks of `subject` in the window that started after `window_start`.
    async fn failures(
        &self,
        subject: &Subject,
        window_start: DateTime<Utc>,
    ) -> Result<u32, StoreError>;

    /// In one transaction: counts one failed check of `subject` in one atomic statement that never
    /// passes `gate.max_failures` (a window that started at or before `gate.window_start` starts again
    /// at `now`), and counts a wrong check on each of the subject's valid codes, burning those that
    /// reach `gate.max_wrong_per_code`. Returns the subject's count after it.
    async fn record_failure(
        &self,
        subject: &Subject,
        now: DateTime<Utc>,
        gate: &Gate,
    ) -> Result<u32, StoreError>;

    /// Forgets `subject`'s failed checks (after a success, or by an operator).
    async fn reset_failures(&self, subject: &Subject) -> Result<(), StoreError>;
}

/// What readiness and the status page ask of the database: that it answers, and how many codes are
/// valid.
#[async_trait]
pub trait StoreStatus: Send + Sync + 'static {
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// How many codes are valid at `now` (the status page's "active codes").
    async fn count_valid(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// What operators need beyond verification's reads: list codes and revoke them (and the status).
#[async_trait]
pub trait OperatorStore: VerificationStore + StoreStatus {
    /// The valid codes at `now` (soonest expiry first), or with `all` every row (newest first).
    async fn list(
        &self,
        all: bool,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<CodeRecord>, StoreError>;

    /// Revokes every recorded issuance of `code`, whatever its dates, and every activation still to come
    /// that was announced at or before `now`. Idempotent; returns how many valid issuances it revoked now.
    async fn revoke(&self, code: &Code, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// The whole valid-codes table: what each caller needs. Issuance (`getcode`) needs nothing from it:
/// a code is announced on the queue, never written by the producer.
pub trait CodeStore: ActivationStore + OperatorStore + DeliveryStore {}

impl<T: ActivationStore + OperatorStore + DeliveryStore> CodeStore for T {}

/// A shared store handle.
pub type SharedStore = Arc<dyn CodeStore>;

/// Reads an optional subject column, as stored (an empty one is not codewatch's).
fn subject_from(text: Option<String>) -> Result<Option<Subject>, StoreError> {
    text.map(|s| {
        if s.is_empty() {
            Err(StoreError::Corrupt("subject"))
        } else {
            Ok(Subject::from_stored(s))
        }
    })
    .transpose()
}

/// The activations of `chunk` (id and code) whose id `recorded` (id, code) holds for another code.
fn conflicts(chunk: &[&Activation], recorded: &[(String, String)]) -> Vec<(IssuanceId, Code)> {
    let codes: std::collections::HashMap<&str, &str> = recorded
        .iter()
        .map(|(id, code)| (id.as_str(), code.as_str()))
        .collect();
    chunk
        .iter()
        .filter(|a| {
            codes
                .get(a.issuance.id.as_str())
                .is_some_and(|code| *code != a.issuance.code.as_str())
        })
        .map(|a| (a.issuance.id.clone(), a.issuance.code.clone()))
        .collect()
}
