//! One way to build the app: `serve`, `worker` and `up` (and the tests) build an [`Application`] from
//! their [`Settings`]. Building opens what the role uses and binds every listener, so the ports are
//! known before anything is served; running serves and works until cancelled, then gives everything
//! one grace period together.

use super::spawn_http;
use super::wiring::{
    ProducerListeners, app_state, bind, configured_number_api, kept_verify_key, open_backends,
    readiness, signing_keys, startup_step, verify_key_path, worker_from,
};
use crate::backends::{Database, QueueShards};
use crate::config::{HttpArgs, RoleArgs, ServeArgs, UpArgs, WorkerArgs};
use crate::function_key::FunctionKey;
use crate::http::{AppState, HttpLimits};
use crate::identity::AzureAuth;
use crate::number_api;
use crate::ops::metrics::{self as role_metrics, Role};
use crate::ops::{Readiness, ops_router};
use crate::secret::Secret;
use crate::worker::{Worker, WorkerSettings};
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a process runs, with its flags.
#[derive(Debug)]
pub enum Settings {
    /// `serve`: the producer (getcode and the sign-in API).
    Serve(ServeArgs),
    /// `worker`: activates, expires and delivers codes.
    Worker(WorkerArgs),
    /// `up`: both, and the number API stand-in unless an endpoint is configured.
    Up(UpArgs),
}

impl Settings {
    /// The producer's flags (`serve`, `up`).
    fn serve(&self) -> Option<&ServeArgs> {
        match self {
            Self::Serve(args) => Some(args),
            Self::Up(args) => Some(&args.serve),
            Self::Worker(_) => None,
        }
    }

    /// The flags every role has.
    fn common(&self) -> &RoleArgs {
        match self {
            Self::Serve(args) => &args.role,
            Self::Up(args) => &args.serve.role,
            Self::Worker(args) => &args.role,
        }
    }

    /// The verify key `up` keeps beside its database when none is configured, so that the banner's
    /// key keeps working after a restart (and `serve`'s warning when the sign-in API has no key).
    fn verify_key_to_keep(&self) -> Result<Option<(Secret, PathBuf)>> {
        match self {
            Self::Up(args) if args.serve.verify.verify_api_key.is_none() => {
                let path = verify_key_path(args.serve.role.database.database_url.expose());
                Ok(Some((kept_verify_key(&path)?, path)))
            }
            Self::Serve(args) if args.verify.verify_api_key.is_none() => {
                tracing::warn!("VERIFY_API_KEY is not set: the verification endpoints are off");
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Which metrics and which readiness it has.
    fn role(&self) -> Role {
        match self {
            Self::Serve(_) => Role::Producer,
            Self::Worker(_) => Role::Worker,
            Self::Up(_) => Role::Both,
        }
    }

    /// Refuses every contradiction before anything connects; the worker's settings, if it has one.
    fn check(&self) -> Result<Option<WorkerSettings>> {
        Ok(match self {
            Self::Serve(args) => {
                args.check()?;
                None
            }
            Self::Worker(args) => {
                args.role.signing.one_key_source()?;
                args.role.delivery.one_secret_source()?;
                Some(
                    args.tuning
                        .settings(args.role.queue.message_encoding, &args.role.ttl)?,
                )
            }
            Self::Up(args) => {
                args.serve.check()?;
                Some(
                    args.tuning
                        .settings(args.serve.role.queue.message_encoding, &args.serve.role.ttl)?,
                )
            }
        })
    }
}

/// Where a built application listens, and what it calls.
#[derive(Clone, Debug)]
pub struct Ports {
    /// getcode (and the sign-in API unless it is apart); none for a worker.
    pub public: Option<SocketAddr>,
    /// The sign-in API; none for a worker.
    pub verification: Option<SocketAddr>,
    /// Health, readiness, metrics and the status page.
    pub admin: SocketAddr,
    /// The number API the producer calls (`up`'s stand-in when no endpoint is configured).
    pub number_api: Option<url::Url>,
}

/// A number API's endpoint and the key its calls carry.
type NumberApi = (url::Url, Arc<FunctionKey>);

/// What is served: the producer's listeners (with admin), or a worker's admin listener alone.
enum Listeners {
    Producer {
        listeners: ProducerListeners,
        state: Box<AppState>,
    },
    Admin(TcpListener),
}

/// A process built from its settings: everything opened, every listener bound, nothing served yet.
pub struct Application {
    ports: Ports,
    cancel: CancellationToken,
    grace: Duration,
    database: Database,
    queues: QueueShards,
    listeners: Listeners,
    ops: axum::Router,
    limits: HttpLimits,
    worker: Option<Arc<Worker>>,
    role: Role,
    ttl_s: u64,
    stand_in: Option<JoinHandle<std::io::Result<()>>>,
    kept_verify_key: Option<(Secret, PathBuf)>,
}

impl Application {
    /// Builds the process `settings` describe: refuses contradictory settings before anything
    /// starts, then opens the number API's key, the database, the queue and the signing keys (each
    /// Azure step within the start-up deadline), and binds every listener. `cancel` stops it,
    /// during start-up too.
    pub async fn build(settings: Settings, cancel: CancellationToken) -> Result<Self> {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => bail!("stopped during start-up"),
            built = Self::build_parts(settings, cancel.clone()) => built,
        }
    }

    async fn build_parts(settings: Settings, cancel: CancellationToken) -> Result<Self> {
        let worker_settings = settings.check()?;
        let RoleArgs {
            database: database_args,
            queue: queue_args,
            signing: signing_args,
            delivery: delivery_args,
            shutdown: lifecycle,
            http,
            ttl,
        } = settings.common();
        let auth = AzureAuth::new(queue_args.azure_credential);
        let deadline = lifecycle.startup();

        let (number_api, stand_in) = number_api(&settings, &auth, http.limits(), &cancel).await?;
        let kept_verify_key = settings.verify_key_to_keep()?;

        let (database, queues) = open_backends(database_args, queue_args, &auth, deadline).await?;
        let signing = startup_step(
            deadline,
            "reading the message signing keys",
            signing_keys(signing_args, &auth),
        )
        .await?;

        let worker = match worker_settings {
            Some(settings) => {
                let deliverer = super::delivery::deliverer(
                    delivery_args,
                    &database,
                    &queues,
                    signing.is_some(),
                    &auth,
                    deadline,
                )
                .await?;
                let signing = signing.clone();
                Some(worker_from(
                    settings, &queues, &database, signing, deliverer,
                ))
            }
            None => None,
        };
        let role = settings.role();
        let ops = ops_router(
            worker.as_ref().map(|w| w.heartbeat()),
            match &worker {
                Some(_) => readiness(&database, &queues),
                // Ready means getcode can work: the queue. The verification API's database shows in
                // its own answers (503 database_unavailable), so a database outage never takes code
                // issuing offline.
                None => Readiness {
                    store: None,
                    queues: queues.mains(),
                    unpolled: None,
                },
            },
            role_metrics::install_for(role),
        );

        let producer = match (settings.serve(), number_api) {
            (Some(args), Some((endpoint, key))) => {
                let verify_key = match &kept_verify_key {
                    Some((key, _)) => Some(key.clone()),
                    None => args.verify.verify_api_key.clone(),
                };
                let state =
                    app_state(args, endpoint, key, verify_key, &database, &queues, signing)?;
                Some((args, state))
            }
            _ => None,
        };
        let (listeners, ports, limits) = listen(&settings, producer, &queues, http).await?;
        Ok(Self {
            ports,
            cancel,
            grace: lifecycle.grace(),
            database,
            queues,
            listeners,
            ops,
            limits,
            worker,
            role,
            ttl_s: ttl.code_ttl_seconds,
            stand_in,
            kept_verify_key,
        })
    }

    /// Where it listens.
    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// The queues it uses.
    pub fn queues(&self) -> &QueueShards {
        &self.queues
    }

    /// The verify key `up` generated (or kept from an earlier start), and the file it is kept in.
    pub fn kept_verify_key(&self) -> Option<&(Secret, PathBuf)> {
        self.kept_verify_key.as_ref()
    }

    /// Whether the number API is `up`'s stand-in.
    pub fn number_api_is_stand_in(&self) -> bool {
        self.stand_in.is_some()
    }

    /// Serves and works until cancelled; then everything stops within one grace period, together,
    /// and the database is closed.
    pub async fn run_until_stopped(self) -> Result<()> {
        let cancel = self.cancel.clone();
        let servers = match self.listeners {
            Listeners::Producer { listeners, state } => {
                listeners.spawn(*state, self.ops, self.limits, &cancel)
            }
            Listeners::Admin(admin) => spawn_http(admin, self.ops, self.limits, cancel.clone()),
        };
        let worker = self.worker.map(|worker| {
            tracing::info!(
                queues = %self.queues.names(),
                backend = self.queues.backend(),
                ttl_s = self.ttl_s,
                "worker started"
            );
            tokio::spawn(worker.run(cancel.clone()))
        });
        let what = match self.role {
            Role::Producer => "the producer",
            Role::Worker => "the worker",
            Role::Both => "the producer and the worker",
        };
        let all = tokio::spawn(async move {
            let servers = async { anyhow::Ok(servers.await.context("the HTTP servers")??) };
            let worker = async {
                match worker {
                    Some(worker) => worker.await.context("the worker"),
                    None => Ok(()),
                }
            };
            tokio::try_join!(servers, worker)
        });
        until_stopped(what, all, &cancel, self.grace).await??;
        if let Some(task) = self.stand_in {
            task.await??;
        }
        self.database.close().await;
        match self.role {
            Role::Producer => tracing::info!("producer stopped"),
            Role::Worker => tracing::info!("worker stopped"),
            Role::Both => tracing::info!("producer and worker stopped"),
        }
        Ok(())
    }
}

/// The number API a producer calls, and `up`'s stand-in task when it serves one: `serve` needs an
/// endpoint configured; `up` starts its stand-in when none is; a worker calls none.
async fn number_api(
    settings: &Settings,
    auth: &AzureAuth,
    limits: HttpLimits,
    cancel: &CancellationToken,
) -> Result<(Option<NumberApi>, Option<JoinHandle<std::io::Result<()>>>)> {
    Ok(match settings {
        Settings::Worker(_) => (None, None),
        Settings::Serve(args) => {
            let configured = configured_number_api(args, auth)
                .await?
                .context("THIRD_PARTY_API_ENDPOINT is not set")?;
            (Some(configured), None)
        }
        Settings::Up(args) => match configured_number_api(&args.serve, auth).await? {
            Some(configured) => (Some(configured), None),
            None => {
                let (endpoint, key, task) = start_stand_in(limits, cancel).await?;
                (Some((endpoint, key)), Some(task))
            }
        },
    })
}

/// Binds what `settings` serve: the producer's listeners (with admin) around its state, or a
/// worker's admin listener alone; with where each listens and the limits it serves with.
async fn listen(
    settings: &Settings,
    producer: Option<(&ServeArgs, AppState)>,
    queues: &QueueShards,
    http: &HttpArgs,
) -> Result<(Listeners, Ports, HttpLimits)> {
    if let Some((args, state)) = producer {
        let listeners = ProducerListeners::bind(args).await?;
        let (public, verification, admin) = listeners.addrs()?;
        tracing::info!(addr = %public, %verification, %admin, queues = %queues.names(), backend = queues.backend(), "producer listening");
        let ports = Ports {
            public: Some(public),
            verification: Some(verification),
            admin,
            number_api: Some(state.number_api.endpoint().clone()),
        };
        let limits = args
            .role
            .http
            .limits()
            .trusting(args.getcode_limit.proxies());
        let state = Box::new(state);
        return Ok((Listeners::Producer { listeners, state }, ports, limits));
    }
    let Settings::Worker(args) = settings else {
        bail!("a producer is built with its number API");
    };
    let admin = bind(args.admin_listen, "admin listener", "ADMIN_LISTEN_ADDR").await?;
    let ports = Ports {
        public: None,
        verification: None,
        admin: admin.local_addr()?,
        number_api: None,
    };
    tracing::info!(admin = %ports.admin, "admin listener on /healthz, /readyz, /metrics, /status");
    Ok((Listeners::Admin(admin), ports, http.limits()))
}

/// `up`'s in-process number API, on a free port with a random key.
async fn start_stand_in(
    limits: HttpLimits,
    cancel: &CancellationToken,
) -> Result<(url::Url, Arc<FunctionKey>, JoinHandle<std::io::Result<()>>)> {
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
        limits,
        cancel.clone(),
    );
    let endpoint = url::Url::parse(&format!("http://{addr}/api/RandomNumber"))?;
    Ok((endpoint, FunctionKey::fixed(key), task))
}

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
