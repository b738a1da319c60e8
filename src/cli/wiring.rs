//! The parts an [`Application`](super::app::Application) is built from, each from its flags: the
//! listeners, the database and the queue, the number API and its key, the signing keys, the
//! producer's state, the worker, and `up`'s kept verify key.

use super::spawn_http;
use crate::backends::{Database, QueueShards};
use crate::config::{DatabaseArgs, QueueArgs, ServeArgs, SigningArgs, VerifyArgs};
use crate::function_key::{FunctionKey, KeyError, KeySource};
use crate::http::rate_limit::RateLimiter;
use crate::http::{self, AppState, Verification};
use crate::identity::AzureAuth;
use crate::number_api::NumberApiClient;
use crate::ops::Readiness;
use crate::secret::Secret;
use crate::signing::SigningKeys;
use crate::store::StoreStatus;
use crate::verify::Verifier;
use crate::worker::{Worker, WorkerSettings};
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A worker's readiness (also `up`'s): the database, every shard, and no codes waiting on a shard it
/// does not poll.
pub(super) fn readiness(database: &Database, queues: &QueueShards) -> Readiness {
    Readiness {
        store: Some(database.store() as Arc<dyn StoreStatus>),
        queues: queues.mains(),
        unpolled: queues.next(),
    }
}

/// Binds `what`'s listener at `addr`, set by `setting`; a port already taken (most often by another
/// codewatch on the same defaults) is refused with what to change.
pub(super) async fn bind(addr: SocketAddr, what: &str, setting: &str) -> Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "cannot bind the {what} to {addr}: the address is in use, perhaps by another codewatch \
             (up and serve both default to 127.0.0.1:8080 and admin 127.0.0.1:9091, the worker to admin \
             127.0.0.1:9090); stop it, or give this one another address with {setting} (port 0: any free port)"
        ),
        Err(e) => Err(e).with_context(|| format!("binding the {what} to {addr} ({setting})")),
    }
}

/// Opens the database, then the queue (within the start-up deadline).
pub(super) async fn open_backends(
    database: &DatabaseArgs,
    queue: &QueueArgs,
    auth: &AzureAuth,
    deadline: Duration,
) -> Result<(Database, QueueShards)> {
    let database = Database::open(database)
        .await
        .context("opening the database")?;
    let queues = startup_step(deadline, "opening the queue", async {
        QueueShards::open(queue, Some(&database), auth)
            .await
            .context("opening the queue")
    })
    .await?;
    Ok((database, queues))
}

/// Runs a start-up step that waits on Azure (a token, Key Vault, the queue) within `deadline`; past
/// it, the start fails saying what it waited for and where tokens come from, instead of hanging.
pub(super) async fn startup_step<T>(
    deadline: Duration,
    what: &str,
    step: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(deadline, step).await {
        Ok(done) => done,
        Err(_) => {
            let tokens = crate::identity::token_endpoint()
                .map(|e| {
                    format!(
                        ", with tokens from {}",
                        crate::secret::redact_url_secrets(&e)
                    )
                })
                .unwrap_or_default();
            bail!(
                "{what} did not finish within {} s (STARTUP_TIMEOUT_SECONDS){tokens}: is that \
                 endpoint reachable, and does it answer?",
                deadline.as_secs()
            )
        }
    }
}

/// Where the function key comes from: THIRD_PARTY_API_KEY, THIRD_PARTY_API_KEY_FILE or Key Vault (one
/// only, `ServeArgs::check`).
fn key_source(args: &ServeArgs, auth: &AzureAuth) -> Result<KeySource, KeyError> {
    let n = &args.number_api;
    if let Some(key) = &n.third_party_api_key {
        return Ok(KeySource::Literal(key.clone()));
    }
    if let Some(path) = &n.third_party_api_key_file {
        return Ok(KeySource::File(path.clone()));
    }
    match &n.key_vault_url {
        Some(vault) => KeySource::key_vault(
            vault.as_str(),
            &n.third_party_api_secret_name,
            auth,
            n.key_vault_verify_challenge_resource,
        ),
        None => Err(KeyError::Missing),
    }
}

/// The number API from the flags, if an endpoint is given; then its key is required.
pub(super) async fn configured_number_api(
    args: &ServeArgs,
    auth: &AzureAuth,
) -> Result<Option<(url::Url, Arc<FunctionKey>)>> {
    let Some(endpoint) = args.number_api.third_party_api_endpoint.clone() else {
        return Ok(None);
    };
    let interval = Duration::from_secs(args.number_api.third_party_api_key_refresh_seconds);
    let source = key_source(args, auth)?;
    let what = format!("reading the function key from {}", source.describe());
    let key = startup_step(args.role.shutdown.startup(), &what, async {
        FunctionKey::load(source, interval)
            .await
            .context("reading the function key")
    })
    .await?;
    Ok(Some((endpoint, key)))
}

/// The sign-in API's parts, when it has a key (else it is off).
fn verification(
    args: &VerifyArgs,
    key: Option<Secret>,
    database: &Database,
    ipv6_prefix: u8,
) -> Option<Verification> {
    let throttle = args.throttle();
    key.map(|api_key| Verification {
        verifier: Verifier::new(database.store(), throttle),
        api_key,
        limiter: RateLimiter::with_ipv6_prefix(
            args.verify_rate_limit_per_second,
            f64::from(args.verify_rate_limit_burst),
            ipv6_prefix,
        ),
        allow_unbound: args.allow_unbound_codes,
    })
}

/// The message signing keys, if configured: MESSAGE_SIGNING_KEY (with _PREVIOUS), the key file, or
/// Key Vault (one source only, `SigningArgs::one_key_source`).
pub(super) async fn signing_keys(
    args: &SigningArgs,
    auth: &AzureAuth,
) -> Result<Option<SigningKeys>> {
    let keys = if let Some(current) = &args.message_signing_key {
        SigningKeys::new(current.clone(), args.message_signing_key_previous.clone())?
    } else if let Some(path) = &args.message_signing_key_file {
        let text = crate::files::read_key_file(path)
            .with_context(|| format!("reading MESSAGE_SIGNING_KEY_FILE {}", path.display()))?;
        SigningKeys::parse(&text)?
    } else if let Some(vault) = &args.message_signing_key_vault_url {
        let source = KeySource::key_vault(
            vault.as_str(),
            &args.message_signing_secret_name,
            auth,
            true,
        )?;
        let value = source
            .fetch()
            .await
            .context("reading the message signing keys")?;
        SigningKeys::parse(value.expose())?
    } else {
        return Ok(None);
    };
    tracing::info!("message signing on: unsigned or forged activations go to the poison queue");
    Ok(Some(keys))
}

/// The producer's state: its number API client, where it announces codes, and the sign-in API.
pub(super) fn app_state(
    args: &ServeArgs,
    endpoint: url::Url,
    key: Arc<FunctionKey>,
    verify_key: Option<Secret>,
    database: &Database,
    queues: &QueueShards,
    signing: Option<SigningKeys>,
) -> Result<AppState> {
    let timeout = Duration::from_millis(args.number_api.third_party_api_timeout_ms);
    Ok(AppState {
        number_api: NumberApiClient::new(endpoint, key, timeout),
        queue: queues.spread(),
        encoding: args.role.queue.message_encoding,
        verification: verification(
            &args.verify,
            verify_key,
            database,
            args.getcode_limit.ipv6_client_prefix,
        ),
        getcode_limiter: (args.getcode_limit.getcode_rate_limit_per_second > 0.0).then(|| {
            RateLimiter::with_ipv6_prefix(
                args.getcode_limit.getcode_rate_limit_per_second,
                f64::from(args.getcode_limit.getcode_rate_limit_burst),
                args.getcode_limit.ipv6_client_prefix,
            )
        }),
        trusted_proxies: args.getcode_limit.proxies(),
        signing,
        clock: crate::clock::Clock::system(),
        public_getcode: args.public_getcode()?,
        issuing: http::Issuing {
            code_ttl: args.role.ttl.ttl(),
            delivery: args.role.delivery.delivery,
        },
    })
}

/// The worker on every shard, with its signing keys and its delivery stage.
pub(super) fn worker_from(
    settings: WorkerSettings,
    queues: &QueueShards,
    database: &Database,
    signing: Option<SigningKeys>,
    deliverer: Option<Arc<crate::delivery::Deliverer>>,
) -> Arc<Worker> {
    let settings = WorkerSettings {
        signing,
        ..settings
    };
    let worker = Worker::with_shards(queues.worker_shards(), database.store(), settings);
    Arc::new(match deliverer {
        Some(deliverer) => worker.with_delivery(deliverer),
        None => worker,
    })
}

/// The producer's listeners, bound: public (getcode), verification (if apart), admin.
pub(super) struct ProducerListeners {
    public: TcpListener,
    verification: Option<TcpListener>,
    admin: TcpListener,
}

impl ProducerListeners {
    pub(super) async fn bind(args: &ServeArgs) -> Result<Self> {
        let verification = match args.verify_listen {
            Some(addr) => Some(bind(addr, "sign-in listener", "VERIFY_LISTEN_ADDR").await?),
            None => None,
        };
        Ok(Self {
            public: bind(args.listen, "producer", "LISTEN_ADDR").await?,
            verification,
            admin: bind(args.admin_listen, "admin listener", "ADMIN_LISTEN_ADDR").await?,
        })
    }

    /// Where each listens, for the start-up log and banner: (public, verification, admin).
    pub(super) fn addrs(&self) -> Result<(SocketAddr, SocketAddr, SocketAddr)> {
        let public = self.public.local_addr()?;
        let verification = match &self.verification {
            Some(l) => l.local_addr()?,
            None => public,
        };
        Ok((public, verification, self.admin.local_addr()?))
    }

    /// Serves each surface on its own listener until `cancel` fires.
    pub(super) fn spawn(
        self,
        state: AppState,
        ops: axum::Router,
        limits: crate::http::HttpLimits,
        cancel: &CancellationToken,
    ) -> JoinHandle<std::io::Result<()>> {
        let routers = http::routers(state);
        let mut servers = vec![spawn_http(self.admin, ops, limits.clone(), cancel.clone())];
        match self.verification {
            Some(listener) => {
                let (public, signin) = routers.apart();
                servers.push(spawn_http(
                    self.public,
                    public,
                    limits.clone(),
                    cancel.clone(),
                ));
                servers.push(spawn_http(listener, signin, limits, cancel.clone()));
            }
            None => servers.push(spawn_http(
                self.public,
                routers.together(),
                limits,
                cancel.clone(),
            )),
        }
        tokio::spawn(async move {
            for server in servers {
                server
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))??;
            }
            Ok(())
        })
    }
}

/// Where `up` keeps the verify key it generated: beside a SQLite database file, else in the working folder.
pub(super) fn verify_key_path(database_url: &str) -> std::path::PathBuf {
    match database_url.strip_prefix("sqlite:") {
        Some(path) => {
            let path = path
                .trim_start_matches("//")
                .split('?')
                .next()
                .unwrap_or(path);
            std::path::PathBuf::from(format!("{path}.verify-key"))
        }
        None => std::path::PathBuf::from(".codewatch-verify-key"),
    }
}

/// The verify key kept at `path`, or a new one written there (readable by this user only), so that a
/// key copied from the banner keeps working after a restart. A kept key that another user owns or that
/// others may write is refused: it may have been planted.
pub(super) fn kept_verify_key(path: &std::path::Path) -> Result<Secret> {
    if path.exists() {
        let text = crate::files::read_key_file(path)
            .with_context(|| format!("using the verify key kept in {}", path.display()))?;
        if !text.trim().is_empty() {
            return Ok(Secret::new(text.trim()));
        }
        std::fs::remove_file(path)
            .with_context(|| format!("replacing the empty verify key file {}", path.display()))?;
    }
    let key = uuid::Uuid::new_v4().simple().to_string();
    let mut file = crate::files::create_private(path)
        .with_context(|| format!("keeping the generated verify key in {}", path.display()))?;
    std::io::Write::write_all(&mut file, key.as_bytes())?;
    Ok(Secret::new(key))
}
