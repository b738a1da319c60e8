//! The long-running subcommands: `up`, `serve`, `worker`, `number-api`.

use super::{display_database_url, spawn_http};
use crate::backends::{Database, QueueShards};
use crate::config::{
    DatabaseArgs, NumberApiArgs, QueueArgs, ServeArgs, SigningArgs, UpArgs, VerifyArgs, WorkerArgs,
};
use crate::function_key::{FunctionKey, KeyError, KeySource};
use crate::http::rate_limit::RateLimiter;
use crate::http::{self, AppState, Verification};
use crate::identity::AzureAuth;
use crate::number_api::{self, NumberApiClient};
use crate::ops::{Readiness, ops_router};
use crate::secret::Secret;
use crate::shutdown;
use crate::signing::SigningKeys;
use crate::verify::Verifier;
use crate::worker::{Worker, WorkerSettings};
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Waits for `task`; once `cancel` fires, gives it `grace` to finish, then gives up on it.
async fn until_stopped<T>(
    what: &str,
    mut task: JoinHandle<T>,
    cancel: &CancellationToken,
    grace: Duration,
) -> Result<T> {
    tokio::select! {
        result = &mut task => return Ok(result?),
        _ = cancel.cancelled() => {}
    }
    match tokio::time::timeout(grace, task).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!(
            "{what} did not finish within the {} s grace period; its unfinished messages reappear when \
             their lease ends",
            grace.as_secs()
        ),
    }
}

/// A worker's readiness (also `up`'s): the database, every shard, and no codes waiting on a shard it
/// does not poll.
fn readiness(database: &Database, queues: &QueueShards) -> Readiness {
    Readiness {
        store: Some(database.store()),
        queues: queues.mains(),
        unpolled: queues.next(),
    }
}

/// Binds `what`'s listener at `addr`, set by `setting`; a port already taken (most often by another
/// codewatch on the same defaults) is refused with what to change.
async fn bind(addr: SocketAddr, what: &str, setting: &str) -> Result<TcpListener> {
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

async fn open_backends(
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
async fn startup_step<T>(
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
async fn configured_number_api(
    args: &ServeArgs,
    auth: &AzureAuth,
) -> Result<Option<(url::Url, Arc<FunctionKey>)>> {
    let Some(endpoint) = args.number_api.third_party_api_endpoint.clone() else {
        return Ok(None);
    };
    let interval = Duration::from_secs(args.number_api.third_party_api_key_refresh_seconds);
    let source = key_source(args, auth)?;
    let what = format!("reading the function key from {}", source.describe());
    let key = startup_step(args.shutdown.startup(), &what, async {
        FunctionKey::load(source, interval)
            .await
            .context("reading the function key")
    })
    .await?;
    Ok(Some((endpoint, key)))
}

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
async fn signing_keys(args: &SigningArgs, auth: &AzureAuth) -> Result<Option<SigningKeys>> {
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

fn app_state(
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
        encoding: args.queue.message_encoding,
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
            code_ttl: args.ttl.ttl(),
            delivery: args.delivery.delivery,
        },
    })
}

fn worker_from(
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
struct ProducerListeners {
    public: TcpListener,
    verification: Option<TcpListener>,
    admin: TcpListener,
}

impl ProducerListeners {
    async fn bind(args: &ServeArgs) -> Result<Self> {
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
    fn addrs(&self) -> Result<(SocketAddr, SocketAddr, SocketAddr)> {
        let public = self.public.local_addr()?;
        let verification = match &self.verification {
            Some(l) => l.local_addr()?,
            None => public,
        };
        Ok((public, verification, self.admin.local_addr()?))
    }

    /// Serves each surface on its own listener until `cancel` fires.
    fn spawn(
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

/// `codewatch serve`.
pub async fn serve(args: ServeArgs) -> Result<()> {
    args.check()?;
    let auth = AzureAuth::new(args.queue.azure_credential);
    let (endpoint, key) = configured_number_api(&args, &auth)
        .await?
        .context("THIRD_PARTY_API_ENDPOINT is not set")?;
    let (database, queues) =
        open_backends(&args.database, &args.queue, &auth, args.shutdown.startup()).await?;
    let cancel = shutdown::on_signal();
    let verify_key = args.verify.verify_api_key.clone();
    if verify_key.is_none() {
        tracing::warn!("VERIFY_API_KEY is not set: the verification endpoints are off");
    }
    let signing = startup_step(
        args.shutdown.startup(),
        "reading the message signing keys",
        signing_keys(&args.signing, &auth),
    )
    .await?;
    let state = app_state(
        &args, endpoint, key, verify_key, &database, &queues, signing,
    )?;
    // Ready means getcode can work: the queue. The verification API's database shows in its own
    // answers (503 database_unavailable), so a database outage never takes code issuing offline.
    let ops = ops_router(
        None,
        Readiness {
            store: None,
            queues: queues.mains(),
            unpolled: None,
        },
        crate::ops::metrics::install_for(crate::ops::metrics::Role::Producer),
    );
    let listeners = ProducerListeners::bind(&args).await?;
    let (public, verification, admin) = listeners.addrs()?;
    tracing::info!(addr = %public, %verification, %admin, queues = %queues.names(), backend = queues.backend(), "producer listening");
    let server = listeners.spawn(
        state,
        ops,
        args.http.limits().trusting(args.getcode_limit.proxies()),
        &cancel,
    );
    let grace = args.shutdown.grace();
    until_stopped("the producer", server, &cancel, grace).await??;
    database.close().await;
    tracing::info!("producer stopped");
    Ok(())
}

/// `codewatch worker`.
pub async fn worker(args: WorkerArgs) -> Result<()> {
    let settings = args
        .tuning
        .settings(args.queue.message_encoding, &args.ttl)?;
    args.signing.one_key_source()?;
    args.delivery.one_secret_source()?;
    let auth = AzureAuth::new(args.queue.azure_credential);
    let (database, queues) =
        open_backends(&args.database, &args.queue, &auth, args.shutdown.startup()).await?;
    let cancel = shutdown::on_signal();
    tracing::info!(
        queues = %queues.names(),
        backend = queues.backend(),
        ttl_s = args.ttl.code_ttl_seconds,
        "worker started"
    );
    let signing = startup_step(
        args.shutdown.startup(),
        "reading the message signing keys",
        signing_keys(&args.signing, &auth),
    )
    .await?;
    let deliverer = super::delivery::deliverer(
        &args.delivery,
        &database,
        &queues,
        signing.is_some(),
        &auth,
        args.shutdown.startup(),
    )
    .await?;
    let worker = worker_from(settings, &queues, &database, signing, deliverer);
    let ops = ops_router(
        Some(worker.heartbeat()),
        readiness(&database, &queues),
        crate::ops::metrics::install_for(crate::ops::metrics::Role::Worker),
    );
    let admin = bind(args.admin_listen, "admin listener", "ADMIN_LISTEN_ADDR").await?;
    tracing::info!(admin = %admin.local_addr()?, "admin listener on /healthz, /readyz, /metrics, /status");
    let admin_server = spawn_http(admin, ops, args.http.limits(), cancel.clone());
    let running = tokio::spawn(worker.run(cancel.clone()));
    let grace = args.shutdown.grace();
    until_stopped("the worker", running, &cancel, grace).await?;
    admin_server.await??;
    database.close().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// `codewatch number-api`.
pub async fn number_api(args: NumberApiArgs) -> Result<()> {
    let cancel = shutdown::on_signal();
    let listener = bind(args.listen, "number API", "NUMBER_API_LISTEN").await?;
    tracing::info!(addr = %listener.local_addr()?, "number API listening on /api/RandomNumber");
    spawn_http(
        listener,
        number_api::router(args.key),
        crate::http::HttpLimits::default(),
        cancel,
    )
    .await??;
    Ok(())
}

/// Where `up` keeps the verify key it generated: beside a SQLite database file, else in the working folder.
fn verify_key_path(database_url: &str) -> std::path::PathBuf {
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
fn kept_verify_key(path: &std::path::Path) -> Result<Secret> {
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

/// `codewatch up`: the number API stand-in (unless an endpoint is configured), the producer and the worker.
pub async fn up(args: UpArgs) -> Result<()> {
    let serve_args = &args.serve;
    let public_getcode = serve_args.check()?;
    let settings = args
        .tuning
        .settings(serve_args.queue.message_encoding, &serve_args.ttl)?;
    let cancel = shutdown::on_signal();
    let auth = AzureAuth::new(serve_args.queue.azure_credential);
    let (endpoint, key, stand_in) = match configured_number_api(serve_args, &auth).await? {
        Some((endpoint, key)) => (endpoint, key, None),
        None => {
            let key = Secret::new(uuid::Uuid::new_v4().simple().to_string());
            let listener = bind(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                "number API",
                "a free port",
            )
            .await?;
            let addr = listener.local_addr()?;
            let task = spawn_http(
                listener,
                number_api::router(key.clone()),
                serve_args.http.limits(),
                cancel.clone(),
            );
            let endpoint = url::Url::parse(&format!("http://{addr}/api/RandomNumber"))?;
            (endpoint, FunctionKey::fixed(key), Some(task))
        }
    };
    let (verify_key, kept_in) = match &serve_args.verify.verify_api_key {
        Some(key) => (key.clone(), None),
        None => {
            let path = verify_key_path(serve_args.database.database_url.expose());
            (kept_verify_key(&path)?, Some(path))
        }
    };
    let deadline = serve_args.shutdown.startup();
    let (database, queues) =
        open_backends(&serve_args.database, &serve_args.queue, &auth, deadline).await?;
    let signing = startup_step(
        deadline,
        "reading the message signing keys",
        signing_keys(&serve_args.signing, &auth),
    )
    .await?;
    let state = app_state(
        serve_args,
        endpoint.clone(),
        key,
        Some(verify_key.clone()),
        &database,
        &queues,
        signing.clone(),
    )?;
    let deliverer = super::delivery::deliverer(
        &serve_args.delivery,
        &database,
        &queues,
        signing.is_some(),
        &auth,
        deadline,
    )
    .await?;
    let worker = worker_from(settings, &queues, &database, signing, deliverer);
    let ops = ops_router(
        Some(worker.heartbeat()),
        readiness(&database, &queues),
        crate::ops::metrics::install_for(crate::ops::metrics::Role::Both),
    );
    let listeners = ProducerListeners::bind(serve_args).await?;
    let (producer_addr, verify_addr, admin_addr) = listeners.addrs()?;
    let producer = listeners.spawn(
        state,
        ops,
        serve_args
            .http
            .limits()
            .trusting(serve_args.getcode_limit.proxies()),
        &cancel,
    );
    let worker = tokio::spawn(worker.run(cancel.clone()));

    let stand_in_note = if stand_in.is_some() {
        "  (in-process stand-in, random key)"
    } else {
        ""
    };
    // `up` is for a developer's machine: it prints the key it generated so that the checks can be tried.
    let verify_note = match &kept_in {
        Some(path) => format!(
            "  (generated key: {}, kept in {})",
            verify_key.expose(),
            path.display()
        ),
        None => String::new(),
    };
    let getcode = if public_getcode {
        "/api/v1/getcode  (public, unbound codes: the sample's demonstration)"
    } else {
        "/  (public getcode off)"
    };
    let banner = format!(
        "codewatch is up (Ctrl-C to stop)\n\
         \x20 number API  {endpoint}{stand_in_note}\n\
         \x20 producer    http://{producer_addr}{getcode}\n\
         \x20 admin       http://{admin_addr}/healthz /readyz /metrics\n\
         \x20 status      http://{admin_addr}/status\n\
         \x20 sign-in     http://{verify_addr}/api/v1/codes  (POST; /check, /redeem){verify_note}\n\
         \x20 worker      queue {} ({}), codes valid {} s, delivery: {}\n\
         \x20 database    {}  (SELECT * FROM active_codes;)\n",
        queues.names(),
        queues.backend(),
        serve_args.ttl.code_ttl_seconds,
        serve_args.delivery.delivery.name(),
        display_database_url(serve_args.database.database_url.expose()),
    );
    // A closed stdout must not stop the service.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());

    // One grace period for both: each stops within it, together, not one after the other's.
    let both = tokio::spawn(async move {
        let worker = async { worker.await.context("the worker") };
        let producer = async { anyhow::Ok(producer.await.context("the producer")??) };
        tokio::try_join!(producer, worker)
    });
    let grace = serve_args.shutdown.grace();
    until_stopped("the producer and the worker", both, &cancel, grace).await??;
    if let Some(task) = stand_in {
        task.await??;
    }
    database.close().await;
    Ok(())
}
