//! The valid-codes table behind one trait, so that each database is one implementation.

pub mod sqlite;

use crate::code::Code;
use crate::message::{Issuance, IssuanceId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// A code to make valid until `expires_at`.
#[derive(Clone, Debug)]
pub struct Activation {
    /// The issuance.
    pub issuance: Issuance,
    /// The end of its validity: issue time plus TTL.
    pub expires_at: DateTime<Utc>,
}

/// A row of `valid_codes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidCode {
    /// Which issuance.
    pub issuance_id: IssuanceId,
    /// The code.
    pub code: Code,
    /// When `serve` issued it.
    pub issued_at: DateTime<Utc>,
    /// When it stops being valid.
    pub expires_at: DateTime<Utc>,
    /// When the worker made it valid.
    pub activated_at: DateTime<Utc>,
}

/// What [`CodeStore::activate`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActivateReport {
    /// Rows newly made valid.
    pub inserted: u64,
    /// Activations that were already valid (a duplicate delivery).
    pub duplicates: u64,
    /// Activations whose expiry had already passed: nothing made valid, any leftover row removed.
    pub stale: u64,
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
    /// The URL names a database codewatch does not support.
    #[error("unsupported DATABASE_URL scheme (expected sqlite:)")]
    UnsupportedUrl,
}

/// The valid-codes table. Every operation is idempotent, so redelivered messages leave it right.
#[async_trait]
pub trait CodeStore: Send + Sync + 'static {
    /// In one transaction: makes each activation with `expires_at > now` valid (a second activation of the
    /// same issuance changes nothing) and removes any row of those whose `expires_at <= now`.
    async fn activate(
        &self,
        batch: &[Activation],
        now: DateTime<Utc>,
    ) -> Result<ActivateReport, StoreError>;

    /// Removes the given issuances if their `expires_at <= now`; returns how many rows went.
    async fn expire(&self, ids: &[IssuanceId], now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Removes every row whose `expires_at <= now`; a safety net for expiry messages that never came.
    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The issuances of `code` that are valid at `now`.
    async fn find_valid(
        &self,
        code: &Code,
        now: DateTime<Utc>,
    ) -> Result<Vec<ValidCode>, StoreError>;

    /// Every row, valid or not, newest first (for inspection and tests).
    async fn list(&self, limit: u32) -> Result<Vec<ValidCode>, StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// A shared store handle.
pub type SharedStore = Arc<dyn CodeStore>;
