//! The migrations of `migrations/`, embedded in the binary by `include_str!` and turned into sqlx
//! migrators here, at first use. sqlx's `migrate!` macro would do the same at compile time, at the
//! price of its `macros` feature, which builds sqlx, its drivers, SQLite's C source and rustls a
//! second time for the compiler (about 40 s of a cold build on two cores).

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};
use std::borrow::Cow;
use std::sync::LazyLock;

/// One migration file: its name (`<version>_<description>.sql`) and its text.
type File = (&'static str, &'static str);

/// `migrations/sqlite`, in order. A test checks that this list is the folder's content.
const SQLITE: &[File] = &[
    (
        "20261128000001_init.sql",
        include_str!("../../migrations/sqlite/20261128000001_init.sql"),
    ),
    (
        "20261202000001_wrong_checks.sql",
        include_str!("../../migrations/sqlite/20261202000001_wrong_checks.sql"),
    ),
    (
        "20261204000001_redeem_requests.sql",
        include_str!("../../migrations/sqlite/20261204000001_redeem_requests.sql"),
    ),
    (
        "20261204000002_delivery.sql",
        include_str!("../../migrations/sqlite/20261204000002_delivery.sql"),
    ),
];

/// `migrations/postgres`, in order. A test checks that this list is the folder's content.
const POSTGRES: &[File] = &[
    (
        "20261128000001_init.sql",
        include_str!("../../migrations/postgres/20261128000001_init.sql"),
    ),
    (
        "20261202000001_wrong_checks.sql",
        include_str!("../../migrations/postgres/20261202000001_wrong_checks.sql"),
    ),
    (
        "20261204000001_redeem_requests.sql",
        include_str!("../../migrations/postgres/20261204000001_redeem_requests.sql"),
    ),
    (
        "20261204000002_delivery.sql",
        include_str!("../../migrations/postgres/20261204000002_delivery.sql"),
    ),
];

/// The SQLite migrations.
pub static SQLITE_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator(SQLITE));

/// The PostgreSQL migrations. sqlx takes an advisory lock while applying them, so replicas starting
/// together are safe.
pub static POSTGRES_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator(POSTGRES));

/// A migrator of `files`, read as sqlx reads a folder: the version before the first `_`, the rest
/// (less `.sql`, `_` as spaces) the description, `-- no-transaction` on the first line to opt out of
/// the transaction, and the checksum of the text (so databases migrated by `migrate!` match).
fn migrator(files: &'static [File]) -> Migrator {
    let migrations = files
        .iter()
        .map(|&(name, sql)| {
            let (version, rest) = name.split_once('_').unwrap_or((name, ""));
            Migration::new(
                version.parse().unwrap_or_default(),
                Cow::Owned(rest.trim_end_matches(".sql").replace('_', " ")),
                MigrationType::Simple,
                AssertSqlSafe(sql).into_sql_str(),
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The embedded migrations are the folder's, as `migrate!` would have read them.
    async fn same_as_folder(embedded: &Migrator, folder: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
        let read = Migrator::new(dir.as_path()).await.unwrap();
        let summary = |m: &Migrator| {
            m.iter()
                .map(|m| {
                    (
                        m.version,
                        m.description.to_string(),
                        m.checksum.to_vec(),
                        m.no_tx,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(summary(embedded), summary(&read), "{folder}");
        assert!(embedded.iter().all(|m| m.version > 0), "{folder}");
    }

    #[tokio::test]
    async fn the_embedded_migrations_are_the_folders() {
        same_as_folder(&SQLITE_MIGRATOR, "migrations/sqlite").await;
        same_as_folder(&POSTGRES_MIGRATOR, "migrations/postgres").await;
    }
}
