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
    /// The queue service could not be reached at start.
    #[error("queue service at {endpoint} unreachable: {cause}{hint}")]
    QueueUnreachable {
        /// The endpoint tried.
        endpoint: String,
        /// What failed.
        cause: QueueError,
        /// What to do about it, if known.
        hint: &'static str,
    },
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
    /// Connects and applies the migrations; a SQLite file is created if missing.
    pub async fn open(args: &DatabaseArgs) -> Result<Self, StoreError> {
        Self::connect(args, true).await
    }

    /// [`Database::open`] for tools: a SQLite file that does not exist is an error, not a new empty
    /// database (a tool run in the wrong folder would otherwise show nothing, silently).
    pub async fn open_existing(args: &DatabaseArgs) -> Result<Self, StoreError> {
        Self::connect(args, false).await
    }

    async fn connect(args: &DatabaseArgs, create: bool) -> Result<Self, StoreError> {
        let url = args.database_url.expose();
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path
                .trim_start_matches("//")
                .split('?')
                .next()
                .unwrap_or(path);
            let pool = sqlite::connect(url, create)
                .await
                .map_err(|e| StoreError::SqliteOpen {
                    path: path.to_owned(),
                    cause: if !create && !std::path::Path::new(path).exists() {
                        "no such file: start `codewatch up` or `codewatch migrate` there first, or \
                         set DATABASE_URL to the database the service uses"
                            .to_owned()
                    } else {
                        e.to_string()
                    },
                })?;
            // A SQLite file has one owner: the schema is always brought up to date.
            sqlite::migrate(&pool).await?;
            Ok(Self::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = postgres::connect(url).await.map_err(|e| match e {
                StoreError::Database(
                    sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut,
                ) => {
                    let parsed = url::Url::parse(url).ok();
                    let host = parsed
                        .as_ref()
                        .and_then(|u| u.host_str().map(str::to_owned));
                    let port = parsed.as_ref().and_then(|u| u.port()).unwrap_or(5432);
                    StoreError::Unreachable {
                        target: format!("{}:{port}", host.unwrap_or_else(|| "localhost".into())),
                        cause: e.to_string(),
                    }
                }
                other => other,
            })?;
            if args.migrate_on_start || args.force_migrate {
                postgres::migrate(&pool).await?;
            } else {
                postgres::check_migrated(&pool).await?;
            }
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
        database: Option<&Database>,
        auth: &AzureAuth,
    ) -> Result<Self, StartupError> {
        let mut endpoint = None;
        let (main, poison, backend): (SharedQueue, SharedQueue, _) = if let Some(url) =
            &args.storage_queue_url
        {
            let factory = AzureQueueFactory::from_queue_url(url.expose(), || {
                auth.credential()
                    .map_err(|e| QueueError::NoIdentity(e.to_string()))
            })?;
            endpoint = Some(factory.endpoint().to_owned());
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
            endpoint = Some(factory.endpoint().to_owned());
            let name = &args.queue_name;
            (
                Arc::new(factory.queue(name)?),
                Arc::new(factory.queue(&poison_name(name))?),
                "azure-connection-string",
            )
        } else {
            let name = &args.queue_name;
            let database = database.ok_or_else(|| {
                QueueError::Config("the embedded queue needs the SQLite database".into())
            })?;
            (
                database.embedded_queue(name)?,
                database.embedded_queue(&poison_name(name))?,
                "embedded",
            )
        };
        let created = match main.ensure_exists().await {
            Ok(()) => poison.ensure_exists().await,
            Err(e) => Err(e),
        };
        match (created, endpoint) {
            (Err(cause @ QueueError::Unavailable(_)), Some(endpoint)) => {
                let hint = if endpoint.contains("127.0.0.1:10001") {
                    " (this is the development connection string: Azurite is expected there, e.g. \
                     `npx azurite-queue --queuePort 10001`)"
                } else {
                    ""
                };
                return Err(StartupError::QueueUnreachable {
                    endpoint,
                    cause,
                    hint,
                });
            }
            (result, _) => result?,
        }
        Ok(Self {
            main,
            poison,
            backend,
        })
    }
}
