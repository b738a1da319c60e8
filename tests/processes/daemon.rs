//! The worker and producer as daemons: SIGTERM in the middle of work, readiness while the database goes
//! away and comes back, and Prometheus metrics that count what a run did.

use crate::common;

use chrono::Utc;
use codewatch::domain::Code;
use codewatch::domain::{Issuance, IssuanceId};
use codewatch::message::{CodeMessage, MessageEncoding};
use common::process::{Proc, codewatch};
use common::{eventually, metric, metrics_when};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

async fn count(db: &Path, sql: &'static str) -> i64 {
    let Ok(pool) = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display())).await else {
        return 0; // not created yet
    };
    let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap_or(0);
    pool.close().await;
    n
}

fn activation(i: usize) -> String {
    let code = Code::parse(&format!("Sig-{i}-Trm")).unwrap();
    let issuance = Issuance {
        destination: None,
        id: IssuanceId::random(),
        code,
        issued_at: Utc::now(),
        subject: None,
    };
    CodeMessage::Activate(issuance)
        .encode(MessageEncoding::Text)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_busy_batch_exits_zero_in_time_and_loses_no_code() {
    const CODES: usize = 100;
    let queues = common::azure_queues().await;
    for i in 0..CODES {
        queues
            .main
            .send(&activation(i), Duration::ZERO)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("codes.db");
    let env = vec![
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            common::connection_string(),
        ),
        ("STORAGE_QUEUE_NAME", queues.main.name().to_owned()),
        ("DATABASE_URL", format!("sqlite:{}", db.display())),
        // Every activation must reach a worker within its TTL, the stop, the second start and its
        // batches included, or it is stale (its code expired unactivated): with 4 s, runs on a loaded
        // machine failed so (and with 12 s, with 150 codes, three copies beside four busy loops).
        ("CODE_TTL_SECONDS", "20".to_owned()),
        ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("WORKER_LEASE_SECONDS", "5".to_owned()),
        ("WORKER_BATCH_SIZE", "8".to_owned()),
        ("SHUTDOWN_GRACE_SECONDS", "10".to_owned()),
    ];
    let mut first = Proc(
        codewatch(dir.path(), &["worker"], &env, "first.log")
            .spawn()
            .unwrap(),
    );
    eventually(
        "the first worker to be busy",
        Duration::from_secs(20),
        || async { (count(&db, "SELECT count(*) FROM valid_codes").await > 0).then_some(()) },
    )
    .await;
    let stop_started = Instant::now();
    let status = first.terminate();
    let stopped_after = stop_started.elapsed();
    let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(
        stopped_after < Duration::from_secs(10),
        "stopped after {stopped_after:?}"
    );
    assert!(log.contains("worker stopped"), "{log}");
    let done_by_first = count(&db, "SELECT count(*) FROM valid_codes").await;
    assert!(
        (done_by_first as usize) < CODES,
        "the signal came while work remained ({done_by_first} done)"
    );

    // A second worker finds everything the first one left, released or leased: nothing is lost.
    let mut second = Proc(
        codewatch(dir.path(), &["worker"], &env, "second.log")
            .spawn()
            .unwrap(),
    );
    let expired = "SELECT count(*) FROM valid_codes WHERE expired_at IS NOT NULL";
    if common::eventually_or(Duration::from_secs(60), || async {
        (count(&db, expired).await as usize == CODES).then_some(())
    })
    .await
    .is_none()
    {
        let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
        panic!(
            "after 60 s, {} codes of {CODES} activated and {} expired, {} messages queued; the second \
             worker's log:\n{log}",
            count(&db, "SELECT count(*) FROM valid_codes").await,
            count(&db, expired).await,
            queues.main.approximate_len().await.unwrap(),
        );
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM valid_codes").await as usize,
        CODES
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM valid_codes WHERE expired_at < expires_at"
        )
        .await,
        0
    );
    assert!(second.terminate().success());
}

/// A TCP proxy to PostgreSQL that the test can cut and restore, as if the database went away.
struct Outage {
    port: u16,
    upstream: String,
    tasks: JoinSet<()>,
}

impl Outage {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut proxy = Self {
            port,
            upstream,
            tasks: JoinSet::new(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        self.tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }

    /// Cuts every connection and refuses new ones.
    fn cut(&mut self) {
        self.tasks.abort_all();
    }

    async fn restore(&mut self) {
        while self.tasks.join_next().await.is_some() {}
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

async fn readyz(port: u16) -> (u16, serde_json::Value) {
    let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await else {
        return (0, serde_json::Value::Null);
    };
    (
        response.status().as_u16(),
        response.json().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_the_worker_survives_its_outage() {
    let db = common::postgres().await;
    let url = url::Url::parse(&db.url).unwrap();
    let outage = Outage::start(format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port().unwrap_or(5432)
    ))
    .await;
    let mut proxied = url.clone();
    proxied.set_port(Some(outage.port)).unwrap();
    let queues = common::azure_queues().await;
    let env = vec![
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            common::connection_string(),
        ),
        ("STORAGE_QUEUE_NAME", queues.main.name().to_owned()),
        ("DATABASE_URL", proxied.to_string()),
        ("WORKER_LEASE_SECONDS", "2".to_owned()),
        // Each batch during the outage waits this long for a connection (10 s by default).
        ("DATABASE_ACQUIRE_TIMEOUT_SECONDS", "2".to_owned()),
    ];
    let store = db.database.store();
    let log = worker_survives_an_outage(
        ("database", "queue"),
        outage,
        env,
        &queues.main,
        1,
        || async {
            store
                .find_valid(&Code::parse("Sig-1-Trm").unwrap(), None, Utc::now())
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    assert!(
        log.matches("database unavailable").count() == 1,
        "an outage is logged once, not per batch (and not zero times):\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_a_run_did() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, base, admin) = common::process::spawn_up_with_admin(dir.path(), &[]);

    for _ in 0..3 {
        assert_eq!(
            reqwest::get(format!("{base}/api/v1/getcode"))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        reqwest::get(format!("{base}/api/v1/getcode?subject="))
            .await
            .unwrap()
            .status(),
        401,
        "a subject is bound only through the sign-in API"
    );
    assert_eq!(
        reqwest::get(format!("{admin}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{admin}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );

    let text = metrics_when(
        &admin,
        "three activations counted",
        Duration::from_secs(10),
        |text| metric(text, r#"codewatch_messages_total{outcome="activated"}"#) == 3.0,
    )
    .await;
    assert_eq!(metric(&text, "codewatch_messages_received_total"), 3.0);
    assert_eq!(
        metric(
            &text,
            r#"codewatch_http_requests_total{route="/api/v1/getcode",status="200"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            r#"codewatch_http_requests_total{route="/api/v1/getcode",status="401"}"#
        ),
        1.0
    );
    for family in [
        "codewatch_activation_lag_seconds",
        "codewatch_batch_size",
        "codewatch_http_request_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("{family}_count")) || text.contains(&format!("{family}{{")),
            "{family} missing"
        );
    }
    assert!(text.contains("# HELP codewatch_messages_total"));
    assert!(up.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_queue_and_the_worker_survives_its_outage() {
    let azurite = url::Url::parse(common::azurite_endpoint()).unwrap();
    let outage = Outage::start(format!("127.0.0.1:{}", azurite.port().unwrap())).await;
    let proxied = common::connection_string_at(&format!(
        "http://127.0.0.1:{}/devstoreaccount1",
        outage.port
    ));
    let queues = common::azure_queues().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("codes.db");
    let env = vec![
        ("AZURE_STORAGE_CONNECTION_STRING", proxied),
        ("STORAGE_QUEUE_NAME", queues.main.name().to_owned()),
        ("DATABASE_URL", format!("sqlite:{}", db.display())),
    ];
    let log = worker_survives_an_outage(
        ("queue", "database"),
        outage,
        env,
        &queues.main,
        2,
        || async {
            count(
                &db,
                "SELECT count(*) FROM active_codes WHERE code = 'Sig-2-Trm'",
            )
            .await
                == 1
        },
    )
    .await;
    // Once per polling loop, not per try: poller 0 always polls; the others only if they were not
    // resting on the idle queue when it went away.
    let mut failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("receive failed; backing off"))
        .filter_map(|l| l.split("\"poller\":").nth(1)?.split(',').next())
        .collect();
    let lines = failed.len();
    failed.sort_unstable();
    failed.dedup();
    assert!(
        failed.len() == lines && failed.contains(&"0"),
        "logged once per polling loop, not per try, and by poller 0:\n{log}"
    );
    assert!(log.contains("queue reachable again"), "{log}");
}

/// Runs a worker with `env`, cuts `outage` (the dependency `away`) and checks that `/readyz` names that
/// part and not `fine`, that liveness holds and the worker keeps running; sends code `n` meanwhile
/// (straight to Azurite), restores the dependency, and checks the worker becomes ready and `activated`
/// turns true. Returns the worker's log.
async fn worker_survives_an_outage<F, Fut>(
    (away, fine): (&str, &str),
    mut outage: Outage,
    env: Vec<(&'static str, String)>,
    queue: &codewatch::queue::SharedQueue,
    n: usize,
    activated: F,
) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<_> = env
        .into_iter()
        .chain([
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
        ])
        .collect();
    let mut worker = Proc(
        codewatch(dir.path(), &["worker"], &env, "worker.log")
            .spawn()
            .unwrap(),
    );
    let admin = common::process::bound_port(&dir.path().join("worker.log"), "admin");
    eventually("ready", Duration::from_secs(20), || async {
        (readyz(admin).await.0 == 200).then_some(())
    })
    .await;

    outage.cut();
    let (_, body) = eventually(
        "not ready while a dependency is away",
        Duration::from_secs(20),
        || async {
            let answer = readyz(admin).await;
            (answer.0 == 503).then_some(answer)
        },
    )
    .await;
    assert!(body["failing"][away].is_string(), "{body}");
    assert!(
        body["failing"].get(fine).is_none(),
        "{fine} is fine: {body}"
    );
    // Work arriving during the outage waits on the queue.
    queue.send(&activation(n), Duration::ZERO).await.unwrap();
    if away == "database" {
        // Until the message has failed in two batches (each waits for a connection up to the pool's
        // acquire timeout, 2 s here), so that the log is checked to say it once, not once per batch.
        metrics_when(
            &format!("http://127.0.0.1:{admin}"),
            "two batches failed during the outage",
            Duration::from_secs(60),
            |text| metric(text, r#"codewatch_messages_total{outcome="failed"}"#) >= 2.0,
        )
        .await;
    } else {
        // Each poller's receive fails at once while the queue is away.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let alive = reqwest::get(format!("http://127.0.0.1:{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(alive.status(), 200, "liveness does not depend on {away}");
    assert!(
        worker.0.try_wait().unwrap().is_none(),
        "the worker keeps running"
    );

    outage.restore().await;
    eventually("ready again", Duration::from_secs(30), || async {
        (readyz(admin).await.0 == 200).then_some(())
    })
    .await;
    eventually(
        "the code sent during the outage activated",
        Duration::from_secs(30),
        || async { activated().await.then_some(()) },
    )
    .await;
    assert!(worker.terminate().success());
    std::fs::read_to_string(dir.path().join("worker.log")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_without_waiting_for_the_grace_period() {
    use axum::routing::get;
    // A number API that says when getcode's call reached it and never answers: the request is in
    // flight in `serve` from that moment on, however slow the machine.
    let (reached, mut called) = tokio::sync::mpsc::channel::<()>(1);
    let never = axum::Router::new().route(
        "/n",
        get(move || {
            let reached = reached.clone();
            async move {
                let _ = reached.send(()).await;
                std::future::pending::<&'static str>().await
            }
        }),
    );
    let api = common::Server::start(never).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, port, _) = spawn_serve(
        dir.path(),
        None,
        api.url("/n"),
        &[
            ("THIRD_PARTY_API_TIMEOUT_MS", "120000".to_owned()),
            ("SHUTDOWN_GRACE_SECONDS", "60".to_owned()),
        ],
    )
    .await;
    eventually("serve to listen", Duration::from_secs(20), || async {
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let in_flight = tokio::spawn(reqwest::get(format!(
        "http://127.0.0.1:{port}/api/v1/getcode"
    )));
    tokio::time::timeout(Duration::from_secs(20), called.recv())
        .await
        .expect("getcode calls the number API");

    serve.signal();
    assert!(
        serve.wait_for(Duration::from_secs(2)).is_none(),
        "the first signal waits for the request in flight"
    );
    let second = Instant::now();
    serve.signal();
    let status = serve
        .wait_for(Duration::from_secs(5))
        .expect("the second signal exits at once");
    assert!(second.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "a forced exit is not a clean one");
    in_flight.abort();
}

#[tokio::test]
async fn a_database_outage_leaves_serve_ready_and_issuing_while_verification_says_503() {
    let db = common::postgres().await;
    let api = common::number_api("k").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, port, admin) = spawn_serve(
        dir.path(),
        Some(db.url.clone()),
        api.url("/api/RandomNumber"),
        &[("VERIFY_API_KEY", "verify-key".to_owned())],
    )
    .await;
    let ready = || async {
        reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
            .await
            .ok()
            .map(|r| r.status().as_u16())
    };
    eventually("serve to be ready", Duration::from_secs(20), || async {
        (ready().await == Some(200)).then_some(())
    })
    .await;
    // The database goes away.
    let name = url::Url::parse(&db.url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned();
    db.database.close().await;
    let admin_url = std::env::var("CODEWATCH_TEST_POSTGRES_URL").unwrap();
    let pool = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let check = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1/codes/check"))
        .bearer_auth("verify-key")
        .json(&serde_json::json!({ "code": "abc-1-def", "subject": "a" }))
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), 503);
    let body: serde_json::Value = check.json().await.unwrap();
    assert_eq!(body["error"], "database_unavailable", "{body}");
    assert_eq!(ready().await, Some(200), "getcode needs only the queue");
    let issued = reqwest::get(format!("http://127.0.0.1:{port}/api/v1/getcode"))
        .await
        .unwrap();
    assert_eq!(issued.status(), 200);
    assert!(serve.terminate().success());
}

#[tokio::test]
async fn number_api_failures_are_counted_by_kind() {
    use axum::routing::get;
    let garbage = axum::Router::new().route("/n", get(|| async { "{\"value\": \"many\"}" }));
    let api = common::Server::start(garbage).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, port, admin) = spawn_serve(dir.path(), None, api.url("/n"), &[]).await;
    for _ in 0..2 {
        let answer = reqwest::get(format!("http://127.0.0.1:{port}/api/v1/getcode"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 502);
    }
    let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &text,
            r#"codewatch_number_api_errors_total{kind="garbage"}"#
        ),
        2.0,
        "{text}"
    );
    assert!(serve.terminate().success());
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_id() {
    use axum::routing::get;
    let garbage = axum::Router::new().route("/n", get(|| async { "{\"value\": \"many\"}" }));
    let api = common::Server::start(garbage).await;
    let dir = tempfile::tempdir().unwrap();
    let trusted = [("TRUSTED_PROXIES", "127.0.0.1".to_owned())];
    let (mut serve, port, _) = spawn_serve(dir.path(), None, api.url("/n"), &trusted).await;
    let getcode = |sent: Option<&'static str>| async move {
        let mut request =
            reqwest::Client::new().get(format!("http://127.0.0.1:{port}/api/v1/getcode"));
        if let Some(id) = sent {
            request = request.header("x-request-id", id);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 502);
        answer.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let kept = getcode(Some("ingress-trace-7")).await;
    assert_eq!(kept, "ingress-trace-7", "the trusted proxy's id is kept");
    let made = getcode(None).await;
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    assert!(serve.terminate().success());
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    for id in [kept, made] {
        let failed: Vec<_> = log
            .lines()
            .filter(|l| l.contains("request failed") && l.contains(&format!("request_id={id}")))
            .collect();
        assert_eq!(
            failed.len(),
            1,
            "one failure line with request_id={id}:\n{log}"
        );
        assert!(
            failed[0].contains(r#"http.route="/api/v1/getcode""#),
            "{}",
            failed[0]
        );
    }
}

/// `serve` in `dir` on a fresh Azurite queue, with `database_url` (a SQLite file in `dir` if `None`), the
/// number API at `api_url` (key `k`), and `extra` settings, listening on ports it picks: the process,
/// its public port and its admin port.
async fn spawn_serve(
    dir: &std::path::Path,
    database_url: Option<String>,
    api_url: String,
    extra: &[(&'static str, String)],
) -> (Proc, u16, u16) {
    let queues = common::azure_queues().await;
    let database_url =
        database_url.unwrap_or_else(|| format!("sqlite:{}", dir.join("s.db").display()));
    let env: Vec<_> = [
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            common::connection_string(),
        ),
        ("STORAGE_QUEUE_NAME", queues.main.name().to_owned()),
        ("DATABASE_URL", database_url),
        ("THIRD_PARTY_API_ENDPOINT", api_url),
        ("THIRD_PARTY_API_KEY", "k".to_owned()),
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .chain(extra.iter().cloned())
    .collect();
    let serve = Proc(
        codewatch(dir, &["serve"], &env, "serve.log")
            .spawn()
            .unwrap(),
    );
    let log = dir.join("serve.log");
    let port = common::process::bound_port(&log, "addr");
    let admin = common::process::bound_port(&log, "admin");
    (serve, port, admin)
}
