//! The subcommands: wire configuration to the library, run until a signal, report what started.

use crate::backends::{Database, Queues};
use crate::config::{
    Cli, Command, DatabaseArgs, LogFormat, NumberApiArgs, QueueArgs, ServeArgs, UpArgs, WorkerArgs,
    WorkerTuning,
};
use crate::http::{self, AppState};
use crate::number_api::{self, NumberApiClient};
use crate::secret::Secret;
use crate::shutdown;
use crate::worker::Worker;
use anyhow::{Context, Result};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Sets up logging: `RUST_LOG` for the level (default `info`), text or JSON lines on stderr.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs the chosen subcommand to its end.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Worker(args) => worker(args).await,
        Command::NumberApi(args) => number_api(args).await,
        Command::Migrate(args) => {
            Database::open(&args)
                .await
                .context("migrating the database")?;
            println!(
                "migrations applied to {}",
                display_database_url(args.database_url.expose())
            );
            Ok(())
        }
    }
}

/// Serves `router` on `listener` until `cancel` fires, then lets requests in flight finish.
pub fn spawn_http(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
    })
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} to {addr}"))
}

fn number_api_client(args: &ServeArgs, endpoint: url::Url, key: Secret) -> NumberApiClient {
    NumberApiClient::new(
        endpoint,
        key,
        Duration::from_millis(args.number_api.third_party_api_timeout_ms),
    )
}

fn worker_from(
    tuning: &WorkerTuning,
    queues: &Queues,
    database: &Database,
    encoding: crate::message::MessageEncoding,
) -> Arc<Worker> {
    Arc::new(Worker::new(
        queues.main.clone(),
        queues.poison.clone(),
        database.store(),
        tuning.settings(encoding),
    ))
}

async fn open_backends(database: &DatabaseArgs, queue: &QueueArgs) -> Result<(Database, Queues)> {
    let database = Database::open(database)
        .await
        .context("opening the database")?;
    let queues = Queues::open(queue, &database)
        .await
        .context("opening the queue")?;
    Ok((database, queues))
}

/// The number API from the flags, if an endpoint is given; then its key is required.
fn configured_number_api(args: &ServeArgs) -> Result<Option<(url::Url, Secret)>> {
    let Some(endpoint) = args.number_api.third_party_api_endpoint.clone() else {
        return Ok(None);
    };
    let key = args
        .number_api
        .third_party_api_key
        .clone()
        .context("THIRD_PARTY_API_KEY is not set")?;
    Ok(Some((endpoint, key)))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let (endpoint, key) =
        configured_number_api(&args)?.context("THIRD_PARTY_API_ENDPOINT is not set")?;
    let (_database, queues) = open_backends(&args.database, &args.queue).await?;
    let cancel = shutdown::on_signal();
    let state = AppState {
        number_api: number_api_client(&args, endpoint, key),
        queue: queues.main.clone(),
        encoding: args.queue.message_encoding,
    };
    let listener = bind(args.listen, "producer").await?;
    tracing::info!(addr = %listener.local_addr()?, queue = queues.main.name(), backend = queues.backend, "producer listening");
    spawn_http(listener, http::router(state), cancel).await??;
    Ok(())
}

async fn worker(args: WorkerArgs) -> Result<()> {
    let (database, queues) = open_backends(&args.database, &args.queue).await?;
    let cancel = shutdown::on_signal();
    tracing::info!(
        queue = queues.main.name(),
        backend = queues.backend,
        ttl_s = args.tuning.code_ttl_seconds,
        "worker started"
    );
    worker_from(
        &args.tuning,
        &queues,
        &database,
        args.queue.message_encoding,
    )
    .run(cancel)
    .await;
    tracing::info!("worker stopped");
    Ok(())
}

async fn number_api(args: NumberApiArgs) -> Result<()> {
    let cancel = shutdown::on_signal();
    let listener = bind(args.listen, "number API").await?;
    tracing::info!(addr = %listener.local_addr()?, "number API listening on /api/RandomNumber");
    spawn_http(listener, number_api::router(args.key), cancel).await??;
    Ok(())
}

async fn up(args: UpArgs) -> Result<()> {
    let cancel = shutdown::on_signal();
    let serve_args = &args.serve;
    let (endpoint, key, stand_in) = match configured_number_api(serve_args)? {
        Some((endpoint, key)) => (endpoint, key, None),
        None => {
            let key = Secret::new(uuid::Uuid::new_v4().simple().to_string());
            let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), "number API").await?;
            let addr = listener.local_addr()?;
            let task = spawn_http(listener, number_api::router(key.clone()), cancel.clone());
            let endpoint = url::Url::parse(&format!("http://{addr}/api/RandomNumber"))?;
            (endpoint, key, Some(task))
        }
    };
    let (database, queues) = open_backends(&serve_args.database, &serve_args.queue).await?;
    let state = AppState {
        number_api: number_api_client(serve_args, endpoint.clone(), key),
        queue: queues.main.clone(),
        encoding: serve_args.queue.message_encoding,
    };
    let listener = bind(serve_args.listen, "producer").await?;
    let producer_addr = listener.local_addr()?;
    let producer = spawn_http(listener, http::router(state), cancel.clone());
    let worker = tokio::spawn(
        worker_from(
            &args.tuning,
            &queues,
            &database,
            serve_args.queue.message_encoding,
        )
        .run(cancel.clone()),
    );

    let banner = format!(
        "codewatch is up (Ctrl-C to stop)\n  number API  {endpoint}{}\n  producer    http://{producer_addr}/api/v1/getcode\n  \
         worker      queue {} ({}), codes valid {} s\n  database    {}  (SELECT * FROM active_codes;)\n",
        if stand_in.is_some() {
            "  (in-process stand-in, random key)"
        } else {
            ""
        },
        queues.main.name(),
        queues.backend,
        args.tuning.code_ttl_seconds,
        display_database_url(serve_args.database.database_url.expose()),
    );
    // A closed stdout must not stop the service.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());

    producer.await??;
    worker.await?;
    if let Some(task) = stand_in {
        task.await??;
    }
    Ok(())
}

/// A database URL without its password, for printing.
pub fn display_database_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
