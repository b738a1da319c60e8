//! What differs between the two databases the store runs on, and nothing else: how a value is bound
//! (times are sortable UTC text in SQLite, `timestamptz` in PostgreSQL), how a row is read, and the
//! locks and batch sizes each needs. The statements ([`sql`](super::sql)) and the operations
//! ([`SqlStore`](super::shared::SqlStore)) are written once for both.

use super::statement::Statement;
use super::{CodeRecord, PendingDelivery, StoreError};
use sqlx::query::Query;
use sqlx::{Database, IntoArguments};

/// A database the store runs on ([`sqlx::Sqlite`], [`sqlx::Postgres`]).
pub trait Dialect: Database<Arguments: IntoArguments<Self>> {
    /// The database, as OpenTelemetry's `db.system.name` names it.
    const SYSTEM: &'static str;
    /// Rows one statement inserts or lists by id at most (below the database's limit on bound values).
    const ROWS_PER_STATEMENT: usize;
    /// What an activation locks before inserting, and what a revocation locks before revoking: in
    /// PostgreSQL a shared and a stronger table lock, so that the two never interleave (either the
    /// revocation sees the new rows, or the insert sees the revocation); SQLite has one writer.
    const ACTIVATION_LOCK: Option<&'static str>;
    /// See [`Dialect::ACTIVATION_LOCK`].
    const REVOCATION_LOCK: Option<&'static str>;
    /// Whether a delivery claim locks its rows and skips those another claimer holds.
    const SKIP_LOCKED: bool;
    /// Rows a purge statement deletes at most, so that writers go between batches; `None`: all at once.
    const PURGE_BATCH: Option<u32>;

    /// The statement with its values bound as this database stores them.
    fn query(statement: Statement<'_>) -> Query<'static, Self, Self::Arguments>;

    /// The rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// A row of [`sql`](super::sql)'s record columns.
    fn record(row: &Self::Row) -> Result<CodeRecord, StoreError>;

    /// A row of a delivery claim.
    fn pending_delivery(row: &Self::Row) -> Result<PendingDelivery, StoreError>;

    /// A `bigint` column (the statements cast what they count to it).
    fn integer(row: &Self::Row, column: &str) -> Result<Option<i64>, StoreError>;

    /// A text column.
    fn text(row: &Self::Row, column: &str) -> Result<Option<String>, StoreError>;
}
