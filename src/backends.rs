//! Opens the database and the queue the configuration names, once, at start.

use crate::config::{DatabaseArgs, QueueArgs};
use crate::identity::AzureAuth;
use crate::queue::azure::AzureQueueFactory;
use crate::queue::connection_string::ConnectionString;
use crate::queue::embedded::EmbeddedQueue;
use crate::queue::{QueueError, SharedQueue, poison_name};
use crate::store::postgres::{self, PostgresStore};
use crate::store::sqlite::{self, SqliteStore};
use crate::store::{SharedStore, StoreError};
use sqlx::{PgPool, SqlitePool};
use std::sync::Arc;

/// A failure to start; the texts never hold a secret.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// An opened, migrated database.
#[derive(Clone, Debug)]
pub enum Database {
    /// A SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL database.
    Postgres(PgPool),
}

impl Database {
    /// Connects and applies the migrations.
    pub async fn open(args: &DatabaseArgs) -> Result<Self, StoreError> {
        let url = args.database_url.expose();
        if url.starts_with("sqlite:") {
            let pool = sqlite::connect(url).await?;
            sqlite::migrate(&pool).await?;
            Ok(Self::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = postgres::connect(url).await?;
            postgres::migrate(&pool).await?;
            Ok(Self::Postgres(pool))
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    /// The valid-codes table.
    pub fn store(&self) -> SharedStore {
        match self {
            Self::Sqlite(pool) => Arc::new(SqliteStore::new(pool.clone())),
            Self::Postgres(pool) => Arc::new(PostgresStore::new(pool.clone())),
        }
    }

    /// Closes every connection, waiting for those in use.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }

    /// A queue inside this database (SQLite only).
    pub fn embedded_queue(&self, name: &str) -> Result<SharedQueue, QueueError> {
        match self {
            Self::Sqlite(pool) => Ok(Arc::new(EmbeddedQueue::new(pool.clone(), name))),
            Self::Postgres(_) => Err(QueueError::Config(
                "the embedded queue lives in a SQLite database; with PostgreSQL set STORAGE_QUEUE_URL or \
                 AZURE_STORAGE_CONNECTION_STRING"
                    .into(),
            )),
        }
    }
}

/// The queue and its poison queue, both created if missing.
#[derive(Clone)]
pub struct Queues {
    /// Where codes are announced and re-armed.
    pub main: SharedQueue,
    /// Where unusable messages are set aside.
    pub poison: SharedQueue,
    /// Which backend, for the start-up log: `azure-url`, `azure-connection-string` or `embedded`.
    pub backend: &'static str,
}

impl Queues {
    /// Opens the queues the arguments name: the URL (with `auth`'s credential unless it carries a SAS),
    /// else the connection string, else the embedded queue.
    pub async fn open(
        args: &QueueArgs,
        database: &Database,
        auth: &AzureAuth,
    ) -> Result<Self, StartupError> {
        let (main, poison, backend): (SharedQueue, SharedQueue, _) = if let Some(url) =
            &args.storage_queue_url
        {
            let factory = AzureQueueFactory::from_queue_url(url.expose(), || {
                auth.credential()
                    .map_err(|e| QueueError::NoIdentity(e.to_string()))
            })?;
            let name = factory
                .default_queue()
                .unwrap_or(&args.queue_name)
                .to_owned();
            (
                Arc::new(factory.queue(&name)?),
                Arc::new(factory.queue(&poison_name(&name))?),
                "azure-url",
            )
        } else if let Some(cs) = &args.storage_connection_string {
            let factory =
                AzureQueueFactory::from_connection_string(&ConnectionString::parse(cs.expose())?)?;
            let name = &args.queue_name;
            (
                Arc::new(factory.queue(name)?),
                Arc::new(factory.queue(&poison_name(name))?),
                "azure-connection-string",
            )
        } else {
            let name = &args.queue_name;
            (
                database.embedded_queue(name)?,
                database.embedded_queue(&poison_name(name))?,
                "embedded",
            )
        };
        main.ensure_exists().await?;
        poison.ensure_exists().await?;
        Ok(Self {
            main,
            poison,
            backend,
        })
    }
}
