//! The application as `serve`, `worker` and `up` build it: every listener bound before anything is
//! served, and one cancellation stops it all.

use clap::Parser;
use codewatch::cli::{Application, Settings};
use codewatch::config::{Cli, Command};
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// The settings of `codewatch <command> <args…>` on the SQLite file `db`, listening on free ports.
fn settings(command: &str, db: &Path, args: &[&str]) -> Settings {
    let url = format!("sqlite:{}", db.display());
    let mut argv = vec!["codewatch", command, "--database-url", &url];
    argv.extend_from_slice(args);
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Up(args) => Settings::Up(args),
        Command::Worker(args) => Settings::Worker(args),
        Command::Serve(args) => Settings::Serve(args),
        other => panic!("not a long-running command: {other:?}"),
    }
}

/// The admin listener's `/healthz` answer.
async fn healthz(admin: std::net::SocketAddr) -> reqwest::StatusCode {
    reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn up_is_built_with_its_ports_known_then_serves_until_one_cancellation_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let ports = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let app = Application::build(
        settings("up", &dir.path().join("codes.db"), &ports),
        cancel.clone(),
    )
    .await
    .unwrap();
    let ports = app.ports().clone();
    let public = ports.public.unwrap();
    assert_ne!(public.port(), 0);
    assert_ne!(ports.admin.port(), 0);
    assert_eq!(
        ports.verification,
        Some(public),
        "the sign-in API shares LISTEN_ADDR"
    );
    assert!(app.number_api_is_stand_in());
    let (_, kept_in) = app.kept_verify_key().unwrap();
    assert!(kept_in.exists(), "{}", kept_in.display());

    let running = tokio::spawn(app.run_until_stopped());
    let body: serde_json::Value = reqwest::get(format!("http://{public}/api/v1/getcode"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = body["code"].as_str().unwrap();
    assert!(codewatch::domain::Code::parse(code).is_ok(), "{body}");
    assert_eq!(healthz(ports.admin).await, 200);

    cancel.cancel();
    running.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(public).await.is_err(),
        "the producer's listener is closed"
    );
}

#[tokio::test]
async fn a_worker_binds_only_its_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let app = Application::build(
        settings(
            "worker",
            &dir.path().join("codes.db"),
            &["--admin-listen", "127.0.0.1:0"],
        ),
        cancel.clone(),
    )
    .await
    .unwrap();
    let ports = app.ports().clone();
    assert_eq!((ports.public, ports.verification), (None, None));
    assert!(ports.number_api.is_none());
    let running = tokio::spawn(app.run_until_stopped());
    assert_eq!(healthz(ports.admin).await, 200);
    cancel.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_start_cancelled_before_it_is_built_stops_instead_of_serving() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let ports = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let built =
        Application::build(settings("up", &dir.path().join("codes.db"), &ports), cancel).await;
    let error = built.err().expect("a cancelled start builds nothing");
    assert!(
        error.to_string().contains("stopped during start-up"),
        "{error}"
    );
}
