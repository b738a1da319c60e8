//! Opens the database and the queue the configuration names, once, at start.

use crate::config::{DatabaseArgs, QueueArgs};
use crate::identity::AzureAuth;
use crate::queue::azure::AzureQueueFactory;
use crate::queue::connection_string::ConnectionString;
use crate::queue::embedded::EmbeddedQueue;
use crate::queue::shards::{Shard, Spread, next_shard, shard_names};
use crate::queue::urls::QueueUrls;
use crate::queue::{QueueAdmin, QueueError, QueueSender, SharedQueue, poison_name};
use crate::sqlite::{self as sqlite_file, SqlitePools};
use crate::store::postgres::{self, PostgresStore};
use crate::store::sqlite::{self, SqliteStore};
use crate::store::{SharedStore, StoreError};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

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
    /// A SQLite file: its read pool and its one-connection write pool.
    Sqlite(SqlitePools),
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
            let pool = sqlite_file::connect(url, create).await.map_err(|e| {
                StoreError::SqliteOpen {
                    path: path.to_owned(),
                    cause: if !create && !std::path::Path::new(path).exists() {
                        "no such file: start `codewatch up` or `codewatch migrate` there first, or \
                         set DATABASE_URL to the database the service uses"
                            .to_owned()
                    } else {
                        e.to_string()
                    },
                }
            })?;
            // A SQLite file has one owner: the schema is always brought up to date.
            sqlite::migrate(&pool.write).await?;
            Ok(Self::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = postgres::connect(
                url,
                Duration::from_secs(args.database_acquire_timeout_seconds),
            )
            .await
            .map_err(|e| match e {
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
            Self::Sqlite(pools) => pools.close().await,
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

/// One shard's queue and its poison queue, both created if missing.
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
    /// Opens the first (or only) shard the arguments name; see [`QueueShards::open`].
    pub async fn open(
        args: &QueueArgs,
        database: Option<&Database>,
        auth: &AzureAuth,
    ) -> Result<Self, StartupError> {
        let mut shards = QueueShards::open(args, database, auth).await?.shards;
        Ok(shards.swap_remove(0))
    }

    /// The pair, once both queues exist (created if missing); an unreachable service names `endpoint`.
    async fn created(
        main: SharedQueue,
        poison: SharedQueue,
        backend: &'static str,
        endpoint: Option<&str>,
    ) -> Result<Self, StartupError> {
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
                    endpoint: endpoint.to_owned(),
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

    /// The pair as the worker takes it.
    pub fn shard(&self) -> Shard {
        Shard::new(self.main.clone(), self.poison.clone())
    }
}

/// Every shard's queues, in shard order (at least one).
#[derive(Clone)]
pub struct QueueShards {
    /// The shards; the first keeps the configured queue's own name. Never empty.
    shards: Vec<Queues>,
    /// The queue one past the configured shards (`<queue>-<count>`), never created here: if a producer
    /// with more shards sends to it, no worker of this count polls it.
    next: Option<SharedQueue>,
}

impl QueueShards {
    /// Opens every shard the arguments name, in order: the URLs (each with `auth`'s credential unless
    /// it carries a SAS), else the connection string, else the embedded queue; with one URL or none,
    /// `STORAGE_QUEUE_SHARDS` names `<queue>`, `<queue>-1`, …
    pub async fn open(
        args: &QueueArgs,
        database: Option<&Database>,
        auth: &AzureAuth,
    ) -> Result<Self, StartupError> {
        if let Some(urls) = &args.storage_queue_url {
            Self::open_urls(urls, args, auth).await
        } else if let Some(cs) = &args.storage_connection_string {
            let factory =
                AzureQueueFactory::from_connection_string(&ConnectionString::parse(cs.expose())?)?;
            Self::open_named(
                args,
                "azure-connection-string",
                |name| Ok(Arc::new(factory.queue(name)?) as SharedQueue),
                Some(factory.endpoint()),
            )
            .await
        } else {
            let database = database.ok_or_else(|| {
                QueueError::Config("the embedded queue needs the SQLite database".into())
            })?;
            Self::open_named(args, "embedded", |name| database.embedded_queue(name), None).await
        }
    }

    /// The queues `STORAGE_QUEUE_URL` lists (checked when the flags were read, `QueueUrls`): one URL
    /// and `STORAGE_QUEUE_SHARDS` copies of its queue, or one shard per URL.
    async fn open_urls(
        urls: &QueueUrls,
        args: &QueueArgs,
        auth: &AzureAuth,
    ) -> Result<Self, StartupError> {
        let count = args.queue_shards.get();
        if urls.len() > 1 && count != 1 && count != urls.len() {
            return Err(QueueError::Config(format!(
                "STORAGE_QUEUE_URL lists {} queues but STORAGE_QUEUE_SHARDS is {count}: list one URL per \
                 shard, or give one URL and a count",
                urls.len()
            ))
            .into());
        }
        let mut shards = Vec::with_capacity(count.max(urls.len()));
        let mut next: Option<SharedQueue> = None;
        for url in urls.expose() {
            let factory = AzureQueueFactory::from_queue_url(url, || {
                auth.credential()
                    .map_err(|e| QueueError::NoIdentity(e.to_string()))
            })?;
            let base = factory
                .default_queue()
                .unwrap_or(&args.queue_name)
                .to_owned();
            let names = shard_names(&base, if urls.len() == 1 { count } else { 1 });
            if urls.len() == 1 {
                next = Some(Arc::new(factory.queue(&next_shard(&base, count))?));
            }
            for name in names {
                let main: SharedQueue = Arc::new(factory.queue(&name)?);
                let poison: SharedQueue = Arc::new(factory.queue(&poison_name(&name))?);
                shards.push(
                    Queues::created(main, poison, "azure-url", Some(factory.endpoint())).await?,
                );
            }
        }
        Ok(Self { shards, next })
    }

    /// `STORAGE_QUEUE_SHARDS` queues named from `STORAGE_QUEUE_NAME` (`<queue>`, `<queue>-1`, …), each
    /// with its poison queue, made by `queue` on `backend` at `endpoint`.
    async fn open_named(
        args: &QueueArgs,
        backend: &'static str,
        queue: impl Fn(&str) -> Result<SharedQueue, QueueError>,
        endpoint: Option<&str>,
    ) -> Result<Self, StartupError> {
        let count = args.queue_shards.get();
        let next = Some(queue(&next_shard(&args.queue_name, count))?);
        let mut shards = Vec::with_capacity(count);
        for name in shard_names(&args.queue_name, count) {
            let main = queue(&name)?;
            let poison = queue(&poison_name(&name))?;
            shards.push(Queues::created(main, poison, backend, endpoint).await?);
        }
        Ok(Self { shards, next })
    }

    /// The queue one past the configured shards, to watch for messages no worker of this count polls.
    pub fn next(&self) -> Option<Arc<dyn QueueAdmin>> {
        self.next.clone().map(|q| q as Arc<dyn QueueAdmin>)
    }

    /// The shards, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Queues> {
        self.shards.iter()
    }

    /// The main queues' names, for logs: `code-requests` or `code-requests, code-requests-1, …`.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.shards.iter().map(|q| q.main.name()).collect();
        names.join(", ")
    }

    /// Which backend, for the start-up log.
    pub fn backend(&self) -> &'static str {
        self.shards.first().map_or("none", |q| q.backend)
    }

    /// The producer's view: a message goes to its issuance id's shard.
    pub fn spread(&self) -> Spread {
        let mut mains = self
            .shards
            .iter()
            .map(|q| q.main.clone() as Arc<dyn QueueSender>);
        match mains.next() {
            Some(first) => Spread::new(first, mains),
            None => unreachable!("QueueShards::open opens at least one shard"),
        }
    }

    /// The main queues, for readiness.
    pub fn mains(&self) -> Vec<Arc<dyn QueueAdmin>> {
        self.shards
            .iter()
            .map(|q| q.main.clone() as Arc<dyn QueueAdmin>)
            .collect()
    }

    /// The worker's view: each shard's queue and poison queue.
    pub fn worker_shards(&self) -> Vec<Shard> {
        self.shards.iter().map(Queues::shard).collect()
    }
}
