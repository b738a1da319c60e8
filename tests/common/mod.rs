//! Shared test helpers: a real Azurite (started once per test binary unless `scripts/test.sh` already
//! did), a SQLite database per test, a queue per test, and the producer on a free port.
#![allow(dead_code)]

pub mod checker;
pub mod entra;
pub mod fault_proxy;
pub mod faults;
pub mod process;
pub mod smtp;

use codewatch::backends::{Database, Queues};
use codewatch::config::DatabaseArgs;
use codewatch::http::{self, AppState};
use codewatch::message::MessageEncoding;
use codewatch::number_api::{self, NumberApiClient};
use codewatch::queue::azure::AzureQueueFactory;
use codewatch::queue::connection_string::{ConnectionString, DEV_ACCOUNT_KEY};
use codewatch::queue::{SharedQueue, poison_name};
use codewatch::secret::Secret;
use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// Set by `scripts/test.sh`: the queue endpoint of the Azurite it started.
const AZURITE_ENV: &str = "CODEWATCH_TEST_AZURITE_QUEUE_ENDPOINT";

/// The queue endpoint of a running Azurite, e.g. `http://127.0.0.1:40123/devstoreaccount1`.
pub fn azurite_endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| match std::env::var(AZURITE_ENV) {
        Ok(endpoint) if !endpoint.is_empty() => endpoint,
        _ => start_azurite(),
    })
}

/// Starts Azurite's queue service from `tools/azurite` on a free loopback port, with disk persistence in
/// a temporary folder; a watchdog stops it when this test process ends.
pub fn start_azurite() -> String {
    start_azurite_with("")
}

/// Azurite in OAuth mode over HTTPS with the given certificate: Entra ID bearer tokens are checked
/// (audience, issuer, lifetime) as the service does.
pub fn start_azurite_oauth(pki: &entra::Pki) -> String {
    let extra = format!(
        "--oauth basic --cert {} --key {}",
        pki.cert.display(),
        pki.key.display()
    );
    start_azurite_with(&extra).replace("http://", "https://")
}

fn start_azurite_with(extra: &str) -> String {
    start_azurite_at(0, extra)
}

/// Azurite on `port` (for a snippet that names Azurite's default port, 10001), or with 0 on a port
/// the system picks, learnt from what Azurite prints: race-free.
pub fn start_azurite_at(port: u16, extra: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("tools/azurite/node_modules/.bin/azurite-queue");
    assert!(
        bin.exists(),
        "Azurite is not installed: run scripts/test.sh (or npm ci --prefix tools/azurite)"
    );
    let dir = std::env::temp_dir().join(format!(
        "codewatch-azurite-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("azurite folder");
    let script = format!(
        "{bin} --queueHost 127.0.0.1 --queuePort {port} --location {dir} --disableTelemetry --skipApiVersionCheck --silent {debug} {extra} >{dir}/started.log 2>&1 & \
         child=$!; while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $child; rm -rf {dir}",
        bin = bin.display(),
        dir = dir.display(),
        parent = std::process::id(),
        debug = std::env::var("CODEWATCH_TEST_AZURITE_DEBUG")
            .map(|f| format!("--debug {f}"))
            .unwrap_or_default(),
    );
    // The watchdog shell outlives this function on purpose: it stops Azurite when this process exits.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start azurite");
    // `… successfully listens on http(s)://127.0.0.1:PORT`.
    let keys = ["http", "https"].map(|scheme| format!("listens on {scheme}://127.0.0.1:"));
    let port = port_in_log(
        &dir.join("started.log"),
        &keys,
        "Azurite",
        Duration::from_secs(60),
    );
    wait_for_port(port, Duration::from_secs(60));
    format!("http://127.0.0.1:{port}/devstoreaccount1")
}

/// The port a process wrote into `log` right after one of `keys` (such as `addr=127.0.0.1:`), waiting
/// up to `limit` for it; `what` names the process in the failure. With a process that binds port 0 and
/// says which port it got, this is race-free.
pub fn port_in_log(log: &std::path::Path, keys: &[String], what: &str, limit: Duration) -> u16 {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let port = keys.iter().find_map(|key| {
            let at = text.find(key.as_str())? + key.len();
            let digits: String = text[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        });
        if let Some(port) = port {
            return port;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not say its port within {limit:?} ({}):\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_for_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "Azurite did not listen on {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The connection string of the Azurite at `endpoint`.
pub fn connection_string_at(endpoint: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_ACCOUNT_KEY};QueueEndpoint={endpoint};"
    )
}

/// The Azurite connection string with the given account key.
pub fn connection_string_with_key(key: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};QueueEndpoint={};",
        azurite_endpoint()
    )
}

/// The Azurite connection string.
pub fn connection_string() -> String {
    connection_string_with_key(DEV_ACCOUNT_KEY)
}

/// A queue name no other test uses.
pub fn queue_name() -> String {
    format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..20])
}

/// A fresh queue and its poison queue in Azurite, created.
pub async fn azure_queues() -> Queues {
    azure_queues_named(&queue_name()).await
}

/// The named queue and its poison queue in Azurite, created.
pub async fn azure_queues_named(name: &str) -> Queues {
    azure_queues_at(azurite_endpoint(), name).await
}

/// The queue `name` and its poison queue at the queue endpoint `endpoint` (e.g. through a proxy),
/// created if missing.
pub async fn azure_queues_at(endpoint: &str, name: &str) -> Queues {
    let factory = AzureQueueFactory::from_connection_string(
        &ConnectionString::parse(&connection_string_at(endpoint)).unwrap(),
    )
    .unwrap();
    let main: SharedQueue = Arc::new(factory.queue(name).unwrap());
    let poison: SharedQueue = Arc::new(factory.queue(&poison_name(name)).unwrap());
    main.ensure_exists().await.unwrap();
    poison.ensure_exists().await.unwrap();
    Queues {
        main,
        poison,
        backend: "azure-connection-string",
    }
}

/// A migrated database: SQLite in its own temporary folder, or a fresh PostgreSQL database.
pub struct TestDb {
    pub database: Database,
    pub url: String,
    _dir: Option<TempDir>,
}

/// A new SQLite database.
pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("codewatch.db").display());
    let database = Database::open(&DatabaseArgs::at(url.clone()))
        .await
        .unwrap();
    TestDb {
        database,
        url,
        _dir: Some(dir),
    }
}

/// Set by `scripts/test.sh`: an administrator URL of the throwaway PostgreSQL server it started.
const POSTGRES_ENV: &str = "CODEWATCH_TEST_POSTGRES_URL";

/// A new, migrated PostgreSQL database on the test server.
pub async fn postgres() -> TestDb {
    let admin = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
        panic!("{POSTGRES_ENV} is not set: run the tests through scripts/test.sh")
    });
    TestDb::postgres_on(&admin).await
}

/// The embedded queue and its poison queue in `db`.
pub fn embedded_queues(db: &Database) -> Queues {
    let name = queue_name();
    Queues {
        main: db.embedded_queue(&name).unwrap(),
        poison: db.embedded_queue(&poison_name(&name)).unwrap(),
        backend: "embedded",
    }
}

/// An HTTP server on a free port, stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    cancel: CancellationToken,
}

impl Server {
    pub async fn start(router: axum::Router) -> Self {
        Self::start_with(router, codewatch::http::HttpLimits::default()).await
    }

    pub async fn start_with(router: axum::Router, limits: codewatch::http::HttpLimits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(codewatch::http::server::serve(
            listener,
            router,
            limits,
            cancel.clone(),
        ));
        Self { addr, cancel }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A number API that answers 100 MB of digits, streamed.
pub async fn huge_number_api() -> Server {
    Server::start(axum::Router::new().route(
        "/api/RandomNumber",
        axum::routing::get(|| async {
            let chunk = axum::body::Bytes::from(vec![b'1'; 64 * 1024]);
            let stream = futures::stream::iter(
                (0..1600).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
            );
            axum::body::Body::from_stream(stream)
        }),
    ))
    .await
}

/// The real number API stand-in with `key`.
pub async fn number_api(key: &str) -> Server {
    Server::start(number_api::router(Secret::new(key))).await
}

/// The producer on a free port, calling `number_api_url` with `key`, writing to `queue`.
pub async fn producer(
    number_api_url: &str,
    key: &str,
    queue: SharedQueue,
    encoding: MessageEncoding,
) -> Server {
    producer_with_timeout(number_api_url, key, queue, encoding, Duration::from_secs(5)).await
}

/// [`producer`] with a number-API timeout.
pub async fn producer_with_timeout(
    number_api_url: &str,
    key: &str,
    queue: SharedQueue,
    encoding: MessageEncoding,
    timeout: Duration,
) -> Server {
    Server::start(http::router(producer_state(
        number_api_url,
        key,
        queue,
        encoding,
        timeout,
    )))
    .await
}

/// A producer's state without the sign-in API or limits: the number API at `number_api_url` (with its
/// `timeout`), codes sent to `queue`.
pub fn producer_state(
    number_api_url: &str,
    key: &str,
    queue: SharedQueue,
    encoding: MessageEncoding,
    timeout: Duration,
) -> AppState {
    let client = NumberApiClient::new(
        number_api_url.parse().unwrap(),
        codewatch::function_key::FunctionKey::fixed(Secret::new(key)),
        timeout,
    );
    AppState {
        number_api: client,
        queue: queue.into(),
        encoding,
        verification: None,
        getcode_limiter: None,
        trusted_proxies: Default::default(),
        signing: None,
        clock: Default::default(),
        public_getcode: true,
        issuing: Default::default(),
    }
}

/// The producer with the sign-in API on `store`, behind `api_key`, on `clock` (a shifted clock
/// checks codes as of a later moment without waiting for it); `allow_unbound`: checks without a
/// subject are answered (ALLOW_UNBOUND_CODES).
#[allow(clippy::too_many_arguments)]
pub async fn producer_with_verification(
    number_api_url: &str,
    key: &str,
    queue: SharedQueue,
    store: codewatch::store::SharedStore,
    api_key: &str,
    throttle: codewatch::verify::Throttle,
    rate: (f64, f64),
    clock: codewatch::clock::Clock,
    allow_unbound: bool,
) -> Server {
    let client = NumberApiClient::new(
        number_api_url.parse().unwrap(),
        codewatch::function_key::FunctionKey::fixed(Secret::new(key)),
        Duration::from_secs(5),
    );
    let verification = codewatch::http::Verification {
        verifier: codewatch::verify::Verifier::new(store, throttle),
        api_key: Secret::new(api_key),
        limiter: codewatch::http::rate_limit::RateLimiter::new(rate.0, rate.1),
        allow_unbound,
    };
    let state = AppState {
        number_api: client,
        queue: queue.into(),
        encoding: MessageEncoding::Text,
        verification: Some(verification),
        getcode_limiter: None,
        trusted_proxies: Default::default(),
        signing: None,
        clock,
        public_getcode: true,
        issuing: Default::default(),
    };
    Server::start(http::router(state)).await
}

/// A series' value in a `/metrics` text (`name{labels}` as rendered), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The `/metrics` text of the admin listener at `admin` once `ready` holds for it, or a panic after
/// `limit` saying what was awaited.
pub async fn metrics_when(
    admin: &str,
    what: &str,
    limit: Duration,
    ready: impl Fn(&str) -> bool,
) -> String {
    eventually(what, limit, || async {
        let text = reqwest::get(format!("{admin}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        ready(&text).then_some(text)
    })
    .await
}

/// Polls `check` until it gives `Some`, or panics after `limit` saying what was awaited.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_or(limit, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `check` until it gives `Some` or `limit` passes; `None` then (the caller decides).
pub async fn eventually_or<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A PostgreSQL server of its own (Debian's binaries, a throwaway cluster, trust auth on loopback), for
/// a test that stops and restarts it; stopped when dropped.
pub struct PrivatePostgres {
    /// An administrator URL of its `postgres` database.
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: TempDir,
}

impl PrivatePostgres {
    fn as_server(&self, tool: &str) -> Command {
        as_postgres_user(&self.bin.join(tool))
    }

    /// initdb and start.
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL from Debian: run the tests through scripts/test.sh")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .max()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if running_as_root() {
            Command::new("chmod")
                .arg("755")
                .arg(dir.path())
                .status()
                .unwrap();
            Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .unwrap();
        }
        let out = as_postgres_user(&bin.join("initdb"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let pg = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            data,
            port,
            _dir: dir,
        };
        pg.start_again();
        pg
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&self) {
        let status = self
            .as_server("pg_ctl")
            .args([
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl stop");
    }

    /// Starts the stopped server again on the same port.
    pub fn start_again(&self) {
        let socket_dir = self.data.parent().unwrap();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            socket_dir.display()
        );
        let log = socket_dir.join("server.log");
        let status = self
            .as_server("pg_ctl")
            .args([
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &options,
                "start",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "pg_ctl start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .as_server("pg_ctl")
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root: as root, run its tools as Debian's `postgres` user.
fn as_postgres_user(tool: &std::path::Path) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(tool);
        cmd
    } else {
        Command::new(tool)
    }
}

impl TestDb {
    /// An opened database at `url` that something else keeps (no folder to remove).
    pub fn wrap(database: Database, url: String) -> Self {
        Self {
            database,
            url,
            _dir: None,
        }
    }

    /// A new, migrated database on the PostgreSQL server at `admin` (an administrator URL).
    pub async fn postgres_on(admin: &str) -> Self {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::PgPool::connect(admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let mut url = url::Url::parse(admin).unwrap();
        url.set_path(&name);
        let url = url.to_string();
        let database = Database::open(&DatabaseArgs::at(url.clone()))
            .await
            .unwrap();
        Self {
            database,
            url,
            _dir: None,
        }
    }
}

/// README.md and every page of `docs/`, each with its text.
pub fn documentation() -> Vec<(PathBuf, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// The fenced block in `lang` that follows the line containing `after`, in the README or a page of
/// `docs/` (the one page that contains `after`).
pub fn readme_block(after: &str, lang: &str) -> String {
    let pages: Vec<String> = documentation()
        .into_iter()
        .filter(|(_, text)| text.contains(after))
        .map(|(_, text)| text)
        .collect();
    assert_eq!(pages.len(), 1, "one page names the snippet {after:?}");
    let page = &pages[0];
    let from = page.find(after).unwrap();
    let block = &page[from..];
    let fence = format!("```{lang}\n");
    let start = block.find(&fence).unwrap() + fence.len();
    let end = block[start..].find("```").unwrap();
    block[start..start + end].to_owned()
}
