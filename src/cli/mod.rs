//! The subcommands: wire configuration to the library and run. `anyhow` lives here and in `main` only.

mod codes;
mod queue;
mod services;
mod smoke;

use crate::backends::Database;
use crate::config::{Cli, Command, LogFormat};
use anyhow::{Context, Result};
use axum::Router;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Sets up logging: `RUST_LOG` for the level (default `info`), text or JSON lines on stderr.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs the chosen subcommand to its end.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up(args) => services::up(args).await,
        Command::Serve(args) => services::serve(args).await,
        Command::Worker(args) => services::worker(args).await,
        Command::NumberApi(args) => services::number_api(args).await,
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
        Command::Codes(args) => codes::run(args).await,
        Command::Queue(args) => queue::run(args).await,
        Command::Smoke(args) => smoke::run(args).await,
        Command::Probe(args) => {
            let http = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(args.timeout_seconds))
                .build()?;
            let status = http
                .get(args.url.clone())
                .send()
                .await
                .context("probe failed")?
                .status();
            anyhow::ensure!(status.is_success(), "{} answered {status}", args.url);
            Ok(())
        }
    }
}

/// Serves `router` on `listener` (with each client's address available to handlers) until `cancel`
/// fires, then lets requests in flight finish.
pub fn spawn_http(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    })
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

#[cfg(test)]
mod tests {
    #[test]
    fn database_urls_are_printed_without_their_password() {
        assert_eq!(
            super::display_database_url("postgres://u:hunter2@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            super::display_database_url("sqlite:codewatch.db"),
            "sqlite:codewatch.db"
        );
    }
}
