//! Keyless authentication, proven on loopback: `serve` and `worker` reach Azurite (in OAuth mode, over
//! HTTPS) with only `STORAGE_QUEUE_URL` and an identity environment, read the function key from a Key
//! Vault stand-in with the same identity, pick up a rotated key after a 401, fail with errors that say
//! what to fix, and never log a key or a token.

use crate::common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use common::entra::{self, KeyVault, Pki, TokenMode, TokenService};
use common::process::{Proc, codewatch, run};
use common::{Server, eventually};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const IDENTITY_HEADER: &str = "identity-header-secret-6d1e";
const ASSERTION: &str = "federated-token-file-content-9f3a";
const SECRET_NAME: &str = "third-party-api-key";

/// A number API whose function key can be rotated.
async fn rotating_number_api(key: Arc<Mutex<String>>) -> Server {
    async fn number(
        State(key): State<Arc<Mutex<String>>>,
        headers: HeaderMap,
    ) -> axum::response::Response {
        let given = headers
            .get("x-functions-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if given != key.lock().unwrap().as_str() {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        Json(serde_json::json!({ "value": 7 })).into_response()
    }
    Server::start(
        Router::new()
            .route("/api/RandomNumber", get(number))
            .with_state(key),
    )
    .await
}

struct World {
    dir: tempfile::TempDir,
    pki: Pki,
    azurite: String,
    tokens: TokenService,
    vault: KeyVault,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let azurite = common::start_azurite_oauth(&pki);
    let tokens = TokenService::start(&pki, IDENTITY_HEADER, ASSERTION).await;
    let vault = KeyVault::start(&pki).await;
    World {
        dir,
        pki,
        azurite,
        tokens,
        vault,
    }
}

impl World {
    fn queue_url(&self, queue: &str) -> String {
        format!("{}/{queue}", self.azurite)
    }

    /// The App Service managed-identity environment, trusting the test CA, and nothing else.
    fn managed_identity_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SSL_CERT_FILE", self.pki.ca.display().to_string()),
            ("IDENTITY_ENDPOINT", self.tokens.identity_endpoint()),
            ("IDENTITY_HEADER", IDENTITY_HEADER.to_owned()),
            ("RUST_LOG", "debug".to_owned()),
        ]
    }

    /// The AKS workload-identity environment.
    fn workload_identity_env(&self) -> Vec<(&'static str, String)> {
        let token_file = self.dir.path().join("federated-token");
        std::fs::write(&token_file, ASSERTION).unwrap();
        vec![
            ("SSL_CERT_FILE", self.pki.ca.display().to_string()),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                token_file.display().to_string(),
            ),
            ("AZURE_CLIENT_ID", entra::CLIENT_ID.to_owned()),
            ("AZURE_TENANT_ID", entra::TENANT.to_owned()),
            ("AZURE_AUTHORITY_HOST", self.tokens.authority_host()),
            ("RUST_LOG", "debug".to_owned()),
        ]
    }

    fn key_vault_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KEY_VAULT_URL", self.vault.url()),
            ("THIRD_PARTY_API_SECRET_NAME", SECRET_NAME.to_owned()),
            // The stand-in is not under *.vault.azure.net, so its challenge cannot name the vault's domain.
            ("KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", "false".to_owned()),
        ]
    }
}

fn read_logs(dir: &Path, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(n)).unwrap_or_default())
        .collect()
}

async fn expired_rows(db: &Path) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let n = sqlx::query_scalar("SELECT count(*) FROM valid_codes WHERE expired_at IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    pool.close().await;
    n
}

/// Runs serve + worker with `identity`, gets codes, checks they become valid and expire; returns the logs.
async fn full_cycle(
    world: &World,
    identity: Vec<(&'static str, String)>,
    key_env: Vec<(&'static str, String)>,
    api: &Server,
) -> String {
    let queue = common::queue_name();
    let db = world.dir.path().join(format!("{queue}.db"));
    let shared: Vec<(&'static str, String)> = identity
        .into_iter()
        .chain([
            ("STORAGE_QUEUE_URL", world.queue_url(&queue)),
            ("DATABASE_URL", format!("sqlite:{}", db.display())),
        ])
        .collect();
    let serve_env: Vec<_> = shared
        .iter()
        .cloned()
        .chain(key_env)
        .chain([
            ("THIRD_PARTY_API_ENDPOINT", api.url("/api/RandomNumber")),
            ("THIRD_PARTY_API_KEY_REFRESH_SECONDS", "1".to_owned()),
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ])
        .collect();
    let worker_env: Vec<_> = shared
        .iter()
        .cloned()
        .chain([
            ("CODE_TTL_SECONDS", "5".to_owned()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ])
        .collect();
    let dir = world.dir.path();
    let mut serve = Proc(
        codewatch(dir, &["serve"], &serve_env, &format!("{queue}-serve.log"))
            .spawn()
            .unwrap(),
    );
    let mut worker = Proc(
        codewatch(
            dir,
            &["worker"],
            &worker_env,
            &format!("{queue}-worker.log"),
        )
        .spawn()
        .unwrap(),
    );

    // The worker polls only once it has started (it may lose the SQLite migration race to serve and
    // retry); a code issued before then could pass its TTL unseen, which is right, but not this test.
    let worker_log = dir.join(format!("{queue}-worker.log"));
    let started_by = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&worker_log)
        .unwrap_or_default()
        .contains("worker started")
    {
        if std::time::Instant::now() > started_by {
            let logs = read_logs(
                dir,
                &[
                    &format!("{queue}-serve.log"),
                    &format!("{queue}-worker.log"),
                ],
            );
            panic!("the worker did not start within 30 s; logs:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let serve_log = dir.join(format!("{queue}-serve.log"));
    let serve_port = common::process::bound_port(&serve_log, "addr");
    let url = format!("http://127.0.0.1:{serve_port}/api/v1/getcode");
    let answer_by = std::time::Instant::now() + Duration::from_secs(20);
    let body: serde_json::Value = loop {
        if let Ok(response) = reqwest::get(&url).await
            && response.status() == 200
            && let Ok(body) = response.json().await
        {
            break body;
        }
        if std::time::Instant::now() > answer_by {
            let logs = read_logs(
                dir,
                &[
                    &format!("{queue}-serve.log"),
                    &format!("{queue}-worker.log"),
                ],
            );
            panic!("serve did not answer 200 within 20 s; logs:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body["code"].is_string(), "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while expired_rows(&db).await != 1 {
        if std::time::Instant::now() > deadline {
            let logs = read_logs(
                world.dir.path(),
                &[
                    &format!("{queue}-serve.log"),
                    &format!("{queue}-worker.log"),
                ],
            );
            panic!("the code was not activated and then expired within 60 s; logs:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(worker.terminate().success());
    assert!(serve.terminate().success());
    read_logs(
        dir,
        &[
            &format!("{queue}-serve.log"),
            &format!("{queue}-worker.log"),
        ],
    )
}

fn assert_no_secrets(logs: &str, world: &World, keys: &[&str]) {
    for secret in keys.iter().copied().chain([IDENTITY_HEADER, ASSERTION]) {
        assert!(!logs.contains(secret), "a secret appeared in the logs");
    }
    for token in world.tokens.issued() {
        let signature_and_claims = token
            .split_once('.')
            .map(|(_, rest)| rest)
            .unwrap_or(&token);
        assert!(
            !logs.contains(signature_and_claims),
            "a token appeared in the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_and_key_vault_run_the_whole_cycle_and_pick_up_a_rotated_key() {
    let world = world().await;
    world.vault.set(SECRET_NAME, "function-key-one");
    let current = Arc::new(Mutex::new("function-key-one".to_owned()));
    let api = rotating_number_api(current.clone()).await;

    let logs = full_cycle(
        &world,
        world.managed_identity_env(),
        world.key_vault_env(),
        &api,
    )
    .await;
    assert!(
        logs.contains("credential=ManagedIdentity"),
        "the credential is logged by name"
    );
    assert!(
        logs.contains("function key loaded") && logs.contains("Key Vault"),
        "the key came from Key Vault"
    );
    assert!(!world.tokens.issued().is_empty());
    assert_no_secrets(&logs, &world, &["function-key-one"]);

    // Rotation: the API and the vault move to a new key; serve reads the vault again after the 401.
    let queue = common::queue_name();
    let env: Vec<_> = world
        .managed_identity_env()
        .into_iter()
        .chain(world.key_vault_env())
        .chain([
            ("STORAGE_QUEUE_URL", world.queue_url(&queue)),
            (
                "DATABASE_URL",
                format!("sqlite:{}", world.dir.path().join("rotate.db").display()),
            ),
            ("THIRD_PARTY_API_ENDPOINT", api.url("/api/RandomNumber")),
            // No interval between reads after a refusal, so the test waits on no clock.
            ("THIRD_PARTY_API_KEY_REFRESH_SECONDS", "0".to_owned()),
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ])
        .collect();
    let mut serve = Proc(
        codewatch(world.dir.path(), &["serve"], &env, "rotate.log")
            .spawn()
            .unwrap(),
    );
    let port = common::process::bound_port(&world.dir.path().join("rotate.log"), "addr");
    let url = format!("http://127.0.0.1:{port}/api/v1/getcode");
    eventually("serve to answer 200", Duration::from_secs(20), || async {
        (reqwest::get(&url).await.ok()?.status() == 200).then_some(())
    })
    .await;
    *current.lock().unwrap() = "function-key-two".to_owned();
    world.vault.set(SECRET_NAME, "function-key-two");
    assert_eq!(
        reqwest::get(&url).await.unwrap().status(),
        200,
        "the rotated key was read from the vault"
    );
    assert!(serve.terminate().success());
    let rotate_log = read_logs(world.dir.path(), &["rotate.log"]);
    assert!(
        rotate_log.contains("function key read again after a refusal"),
        "{rotate_log}"
    );
    assert_no_secrets(
        &rotate_log,
        &world,
        &["function-key-one", "function-key-two"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_runs_the_whole_cycle_with_a_mounted_key_file() {
    let world = world().await;
    let api = rotating_number_api(Arc::new(Mutex::new("mounted-function-key".to_owned()))).await;
    let key_file = world.dir.path().join("function-key");
    std::fs::write(&key_file, "mounted-function-key\n").unwrap();
    let key_env = vec![("THIRD_PARTY_API_KEY_FILE", key_file.display().to_string())];
    let logs = full_cycle(&world, world.workload_identity_env(), key_env, &api).await;
    assert!(
        logs.contains("credential=WorkloadIdentity"),
        "the credential is logged by name"
    );
    assert_no_secrets(&logs, &world, &["mounted-function-key"]);
}

/// Runs `serve` once, expecting it to fail at start; its stderr.
fn failing_serve(world: &World, env: Vec<(&'static str, String)>) -> String {
    let queue = common::queue_name();
    let env: Vec<_> = env
        .into_iter()
        .chain([
            ("STORAGE_QUEUE_URL", world.queue_url(&queue)),
            (
                "DATABASE_URL",
                format!(
                    "sqlite:{}",
                    world.dir.path().join(format!("{queue}.db")).display()
                ),
            ),
            (
                "THIRD_PARTY_API_ENDPOINT",
                "http://127.0.0.1:9/api/RandomNumber".to_owned(),
            ),
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ])
        .collect();
    let output = run(world.dir.path(), &["serve"], &env, "");
    assert!(!output.status.success(), "serve must refuse to start");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_missing_secrets_and_missing_identities_say_what_to_fix() {
    let world = world().await;
    let literal_key = vec![("THIRD_PARTY_API_KEY", "literal-key-5e1".to_owned())];

    world.tokens.set_mode(TokenMode::WrongAudience);
    let err = failing_serve(
        &world,
        [world.managed_identity_env(), literal_key.clone()].concat(),
    );
    assert!(
        err.contains("Invalid token audience") && err.contains("https://storage.azure.com"),
        "{err}"
    );
    assert!(err.contains("Storage Queue Data Message Sender"), "{err}");
    let vault_err = failing_serve(
        &world,
        [world.managed_identity_env(), world.key_vault_env()].concat(),
    );
    assert!(vault_err.contains("Key Vault Secrets User"), "{vault_err}");

    world.tokens.set_mode(TokenMode::Expired);
    let err = failing_serve(
        &world,
        [world.managed_identity_env(), literal_key.clone()].concat(),
    );
    assert!(
        err.contains("expired") && err.contains("Storage Queue Data Message Sender"),
        "{err}"
    );

    world.tokens.set_mode(TokenMode::Good);
    let err = failing_serve(
        &world,
        [world.managed_identity_env(), world.key_vault_env()].concat(),
    );
    assert!(
        err.contains(&format!("has no secret named \"{SECRET_NAME}\"")),
        "{err}"
    );

    let no_identity = vec![
        ("SSL_CERT_FILE", world.pki.ca.display().to_string()),
        ("AZURE_CREDENTIAL_KIND", "developer-tools".to_owned()),
    ];
    let err = failing_serve(&world, [no_identity, literal_key].concat());
    assert!(err.contains("az login"), "{err}");

    let all = format!("{err}{vault_err}");
    assert_no_secrets(&all, &world, &["literal-key-5e1"]);
}

/// How a token endpoint misbehaves.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Takes the request and never answers.
    Silent,
    /// Answers its headers, then a byte a second.
    Drip,
    /// Answers with 5,000 headers.
    ManyHeaders,
    /// Answers 300 MiB.
    Huge,
}

/// A token endpoint that misbehaves so; the bytes it managed to write.
async fn misbehaving(how: Misbehaviour) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/msi/token", listener.local_addr().unwrap());
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let send = |bytes: Vec<u8>| {
                    counter.fetch_add(bytes.len(), Ordering::SeqCst);
                    bytes
                };
                match how {
                    Misbehaviour::Silent => tokio::time::sleep(Duration::from_secs(300)).await,
                    Misbehaviour::Drip => {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{";
                        if socket.write_all(&send(head.into())).await.is_err() {
                            return;
                        }
                        loop {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            if socket.write_all(&send(b" ".to_vec())).await.is_err() {
                                return;
                            }
                        }
                    }
                    Misbehaviour::ManyHeaders => {
                        let mut head = String::from("HTTP/1.1 200 OK\r\n");
                        for i in 0..5000 {
                            head += &format!("x-filler-{i}: {i}\r\n");
                        }
                        head += "content-length: 2\r\n\r\n{}";
                        let _ = socket.write_all(&send(head.into_bytes())).await;
                    }
                    Misbehaviour::Huge => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            300 * 1024 * 1024
                        );
                        if socket.write_all(&send(head.into_bytes())).await.is_err() {
                            return;
                        }
                        let chunk = vec![b' '; 64 * 1024];
                        for _ in 0..(300 * 16) {
                            if socket.write_all(&send(chunk.clone())).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (url, written)
}

/// A token endpoint that hangs, drips, floods headers or sends 300 MiB ends `serve`'s start with an
/// error naming what it waited for, within the start-up deadline, having read a bounded amount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_token_endpoint_ends_the_start_with_a_clear_error_in_bounded_time_and_memory()
{
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let vault = KeyVault::start(&pki).await;
    vault.set(SECRET_NAME, "function-key");
    // The four starts run side by side: each waits out its own start-up deadline.
    let mut starts = Vec::new();
    for how in [
        Misbehaviour::Silent,
        Misbehaviour::Drip,
        Misbehaviour::ManyHeaders,
        Misbehaviour::Huge,
    ] {
        let (endpoint, written) = misbehaving(how).await;
        let env = [
            ("SSL_CERT_FILE", pki.ca.display().to_string()),
            ("IDENTITY_ENDPOINT", endpoint.clone()),
            ("IDENTITY_HEADER", IDENTITY_HEADER.to_owned()),
            ("KEY_VAULT_URL", vault.url()),
            ("THIRD_PARTY_API_SECRET_NAME", SECRET_NAME.to_owned()),
            ("KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", "false".to_owned()),
            (
                "THIRD_PARTY_API_ENDPOINT",
                "http://127.0.0.1:9/api/RandomNumber".to_owned(),
            ),
            ("STARTUP_TIMEOUT_SECONDS", "5".to_owned()),
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ];
        let dir = dir.path().join(format!("{how:?}"));
        std::fs::create_dir(&dir).unwrap();
        starts.push(tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let out = common::process::run_within(&dir, &["serve"], &env, 60);
            (how, written, out, started.elapsed())
        }));
    }
    for start in starts {
        let (how, written, out, took) = start.await.unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{how:?}: {said}");
        assert_ne!(
            out.status.code(),
            Some(124),
            "{how:?}: still starting after 60 s: {said}"
        );
        assert!(
            took < Duration::from_secs(30),
            "{how:?}: took {took:?}: {said}"
        );
        assert!(
            said.contains("STARTUP_TIMEOUT_SECONDS") && said.contains(&vault.url()),
            "{how:?}: the error names the step and the endpoint: {said}"
        );
        let sent = written.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            sent < 64 * 1024 * 1024,
            "{how:?}: {sent} bytes read before giving up"
        );
    }
}
