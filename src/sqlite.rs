//! The SQLite file both the store and the embedded queue live in: how it is opened (WAL, its pragmas,
//! owner-only), and its pools. Below both, so that the queue and the store meet only here.

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;

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

/// Why a SQLite file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// SQLite refused the URL or the file.
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    /// The file could not be created owner-only.
    #[error("{0}")]
    File(#[from] std::io::Error),
}

/// Connections that read at once.
const READ_CONNECTIONS: u32 = 8;

/// Opens a SQLite database in WAL mode, so that several processes can share it; `create` makes the
/// file if it is missing. Switching a new file to WAL needs a moment alone with it, so a process that
/// opens it while another is migrating it gets "database is locked" at once (no busy wait applies to
/// that switch): such an open is retried for a few seconds.
pub async fn connect(url: &str, create: bool) -> Result<SqlitePools, OpenError> {
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
fn keep_private(path: &std::path::Path, create: bool) -> Result<(), std::io::Error> {
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
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn open_pool(
    options: &SqliteConnectOptions,
    connections: u32,
) -> Result<SqlitePool, sqlx::Error> {
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
            Err(e) => return Err(e),
        }
    }
}
