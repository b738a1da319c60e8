//! The long-running subcommands: `up`, `serve`, `worker` (each an [`Application`]), `number-api`.

use super::app::{Application, Settings};
use super::display_database_url;
use super::spawn_http;
use crate::config::{NumberApiArgs, ServeArgs, UpArgs, WorkerArgs};
use crate::number_api;
use crate::shutdown;
use anyhow::Result;

/// `codewatch serve`.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let app = Application::build(Settings::Serve(args), shutdown::on_signal()).await?;
    app.run_until_stopped().await
}

/// `codewatch worker`.
pub async fn worker(args: WorkerArgs) -> Result<()> {
    let app = Application::build(Settings::Worker(args), shutdown::on_signal()).await?;
    app.run_until_stopped().await
}

/// `codewatch number-api`.
pub async fn number_api(args: NumberApiArgs) -> Result<()> {
    let cancel = shutdown::on_signal();
    let listener = super::wiring::bind(args.listen, "number API", "NUMBER_API_LISTEN").await?;
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

/// `codewatch up`: the number API stand-in (unless an endpoint is configured), the producer and the
/// worker, and a banner saying where each is.
pub async fn up(args: UpArgs) -> Result<()> {
    let public_getcode = args.serve.public_getcode()?;
    let ttl_s = args.serve.role.ttl.code_ttl_seconds;
    let delivery = args.serve.role.delivery.delivery.name();
    let database = display_database_url(args.serve.role.database.database_url.expose());
    let app = Application::build(Settings::Up(args), shutdown::on_signal()).await?;
    let ports = app.ports();
    let stand_in_note = if app.number_api_is_stand_in() {
        "  (in-process stand-in, random key)"
    } else {
        ""
    };
    // `up` is for a developer's machine: it prints the key it generated so that the checks can be tried.
    let verify_note = match app.kept_verify_key() {
        Some((key, path)) => format!(
            "  (generated key: {}, kept in {})",
            key.expose(),
            path.display()
        ),
        None => String::new(),
    };
    let getcode = if public_getcode {
        "/api/v1/getcode  (public, unbound codes: the sample's demonstration)"
    } else {
        "/  (public getcode off)"
    };
    let shown =
        |addr: Option<std::net::SocketAddr>| addr.map(|a| a.to_string()).unwrap_or_default();
    let banner = format!(
        "codewatch is up (Ctrl-C to stop)\n\
         \x20 number API  {}{stand_in_note}\n\
         \x20 producer    http://{}{getcode}\n\
         \x20 admin       http://{admin}/healthz /readyz /metrics\n\
         \x20 status      http://{admin}/status\n\
         \x20 sign-in     http://{}/api/v1/codes  (POST; /check, /redeem){verify_note}\n\
         \x20 worker      queue {} ({}), codes valid {ttl_s} s, delivery: {delivery}\n\
         \x20 database    {database}  (SELECT * FROM active_codes;)\n",
        ports
            .number_api
            .as_ref()
            .map(url::Url::as_str)
            .unwrap_or_default(),
        shown(ports.public),
        shown(ports.verification),
        app.queues().names(),
        app.queues().backend(),
        admin = ports.admin,
    );
    // A closed stdout must not stop the service.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());
    app.run_until_stopped().await
}
