//! `GET /api/v1/getcode` against a real Azurite queue and the real number API stand-in.

use crate::common;

use axum::http::StatusCode as AxumStatus;
use axum::routing::get;
use axum::{Json, Router};
use codewatch::domain::Code;
use codewatch::message::{CodeMessage, MessageEncoding};
use codewatch::queue::SharedQueue;
use codewatch::timestamp;
use common::Server;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "test-function-key";

async fn peek_bodies(queue: &SharedQueue) -> Vec<String> {
    queue
        .peek(32)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect()
}

#[tokio::test]
async fn getcode_answers_the_samples_json_after_queueing_one_message() {
    let queues = common::azure_queues().await;
    let api = common::number_api(KEY).await;
    let app = common::producer(
        &api.url("/api/RandomNumber"),
        KEY,
        queues.main.clone(),
        MessageEncoding::Text,
    )
    .await;

    let response = reqwest::get(app.url("/api/v1/getcode")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let code = Code::parse(body["code"].as_str().unwrap()).expect("a well-formed code");
    let number: u32 = code.as_str().split('-').nth(1).unwrap().parse().unwrap();
    assert!((1..=1000).contains(&number));
    let stamp = body["timestamp"].as_str().unwrap();
    assert_eq!(stamp.len(), "2020-04-15 16:54:48.816549".len(), "{stamp}");
    assert_eq!(timestamp::format(timestamp::parse(stamp).unwrap()), stamp);

    let bodies = peek_bodies(&queues.main).await;
    assert_eq!(bodies.len(), 1);
    assert!(
        bodies[0].starts_with('{'),
        "text encoding writes plain JSON: {}",
        bodies[0]
    );
    let CodeMessage::Activate(issuance) =
        CodeMessage::decode(&bodies[0], chrono::Utc::now()).unwrap()
    else {
        panic!("not an activation")
    };
    assert_eq!(issuance.code, code);
    assert_eq!(timestamp::format(issuance.issued_at), stamp);
}

#[tokio::test]
async fn base64_encoding_writes_what_azure_functions_reads() {
    let queues = common::azure_queues().await;
    let api = common::number_api(KEY).await;
    let app = common::producer(
        &api.url("/api/RandomNumber"),
        KEY,
        queues.main.clone(),
        MessageEncoding::Base64,
    )
    .await;
    let body: Value = reqwest::get(app.url("/api/v1/getcode"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bodies = peek_bodies(&queues.main).await;
    assert!(!bodies[0].starts_with('{'));
    let decoded = CodeMessage::decode(&bodies[0], chrono::Utc::now()).unwrap();
    assert_eq!(
        decoded.issuance().code.as_str(),
        body["code"].as_str().unwrap()
    );
}

#[tokio::test]
async fn a_wrong_function_key_gives_the_samples_answer_with_the_apis_status() {
    let queues = common::azure_queues().await;
    let api = common::number_api(KEY).await;
    let app = common::producer(
        &api.url("/api/RandomNumber"),
        "wrong-key",
        queues.main.clone(),
        MessageEncoding::Text,
    )
    .await;
    let response = reqwest::get(app.url("/api/v1/getcode")).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.text().await.unwrap(), "Could not get you a code.");
    assert!(peek_bodies(&queues.main).await.is_empty());
}

async fn stub(router: Router) -> Server {
    Server::start(router).await
}

async fn getcode_via(stub_router: Router, timeout: Duration) -> (u16, String, SharedQueue) {
    let queues = common::azure_queues().await;
    let api = stub(stub_router).await;
    let app = common::producer_with_timeout(
        &api.url("/n"),
        KEY,
        queues.main.clone(),
        MessageEncoding::Text,
        timeout,
    )
    .await;
    let response = reqwest::get(app.url("/api/v1/getcode")).await.unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap(),
        queues.main,
    )
}

#[tokio::test]
async fn a_failing_number_api_passes_its_status_through_with_the_samples_body() {
    let router = Router::new().route(
        "/n",
        get(|| async { (AxumStatus::INTERNAL_SERVER_ERROR, "boom") }),
    );
    let (status, body, queue) = getcode_via(router, Duration::from_secs(5)).await;
    assert_eq!((status, body.as_str()), (500, "Could not get you a code."));
    assert!(peek_bodies(&queue).await.is_empty());
}

#[tokio::test]
async fn a_garbage_answer_is_a_502_with_a_json_reason() {
    let router = Router::new().route(
        "/n",
        get(|| async { Json(serde_json::json!({"value": "seven"})) }),
    );
    let (status, body, queue) = getcode_via(router, Duration::from_secs(5)).await;
    assert_eq!(status, 502);
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "number_api_bad_response");
    assert!(json["reason"].as_str().unwrap().len() > 10);
    assert!(peek_bodies(&queue).await.is_empty());
}

#[tokio::test]
async fn a_slow_number_api_is_a_504() {
    let router = Router::new().route(
        "/n",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Json(serde_json::json!({"value": 7}))
        }),
    );
    let (status, body, _) = getcode_via(router, Duration::from_millis(300)).await;
    assert_eq!(status, 504);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "number_api_timeout"
    );
}

#[tokio::test]
async fn an_unreachable_number_api_is_a_502() {
    let queues = common::azure_queues().await;
    let dead = format!("http://127.0.0.1:{}/api/RandomNumber", common::free_port());
    let app = common::producer(&dead, KEY, queues.main.clone(), MessageEncoding::Text).await;
    let response = reqwest::get(app.url("/api/v1/getcode")).await.unwrap();
    assert_eq!(response.status(), 502);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"], "number_api_unreachable");
}

#[tokio::test]
async fn a_queue_that_refuses_the_message_gives_503_and_no_code() {
    let name = common::queue_name();
    let good = common::azure_queues_named(&name).await;
    // The same queue, reached with a wrong account key: Azurite answers 403.
    let wrong_key = codewatch::queue::connection_string::ConnectionString::parse(
        &common::connection_string_with_key("d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="),
    )
    .unwrap();
    let factory =
        codewatch::queue::azure::AzureQueueFactory::from_connection_string(&wrong_key).unwrap();
    let refusing: SharedQueue = Arc::new(factory.queue(&name).unwrap());
    let api = common::number_api(KEY).await;
    let app = common::producer(
        &api.url("/api/RandomNumber"),
        KEY,
        refusing,
        MessageEncoding::Text,
    )
    .await;

    let response = reqwest::get(app.url("/api/v1/getcode")).await.unwrap();
    assert_eq!(response.status(), 503);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"], "queue_unavailable");
    assert!(
        json.get("code").is_none(),
        "no code may be handed out: {json}"
    );
    assert!(!json.to_string().contains("sig="), "{json}");
    assert!(peek_bodies(&good.main).await.is_empty());
}

#[tokio::test]
async fn the_home_page_links_to_the_endpoint() {
    let queues = common::azure_queues().await;
    let app = common::producer(
        "http://127.0.0.1:9/",
        KEY,
        queues.main,
        MessageEncoding::Text,
    )
    .await;
    let page = reqwest::get(app.url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("href=\"/api/v1/getcode\""), "{page}");
}

#[tokio::test]
async fn the_number_api_stand_in_checks_the_function_key_on_get_and_post() {
    let api = common::number_api(KEY).await;
    let client = reqwest::Client::new();
    for request in [
        client.get(api.url("/api/RandomNumber")),
        client.post(api.url("/api/RandomNumber")),
    ] {
        let ok = request
            .try_clone()
            .unwrap()
            .header("x-functions-key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        let value = ok.json::<Value>().await.unwrap()["value"].as_u64().unwrap();
        assert!((1..=1000).contains(&value));
        assert_eq!(
            request.try_clone().unwrap().send().await.unwrap().status(),
            401
        );
        assert_eq!(
            request
                .header("x-functions-key", "nope")
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    }
}

#[tokio::test]
async fn a_redirecting_number_api_is_a_502_and_the_key_never_leaves_its_origin() {
    let queues = common::azure_queues().await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorder = seen.clone();
    let elsewhere = Server::start(Router::new().route(
        "/steal",
        get(move |headers: axum::http::HeaderMap| {
            let recorder = recorder.clone();
            async move {
                let key = headers
                    .get("x-functions-key")
                    .map(|v| v.to_str().unwrap_or_default().to_owned())
                    .unwrap_or_default();
                recorder.lock().unwrap().push(key);
                Json(serde_json::json!({ "value": 5 }))
            }
        }),
    ))
    .await;
    let target = elsewhere.url("/steal");
    let redirecting = Server::start(Router::new().route(
        "/api/RandomNumber",
        get(move || {
            let target = target.clone();
            async move {
                (
                    AxumStatus::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, target)],
                )
            }
        }),
    ))
    .await;
    assert_eq!(
        getcode_error(&redirecting, &queues.main).await,
        (502, "number_api_redirect".to_owned())
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "the redirect target was called"
    );
    assert!(
        peek_bodies(&queues.main).await.is_empty(),
        "no code was issued"
    );
}

#[tokio::test]
async fn a_huge_number_api_answer_is_refused_without_reading_it() {
    let queues = common::azure_queues().await;
    let huge = common::huge_number_api().await;
    assert_eq!(
        getcode_error(&huge, &queues.main).await,
        (502, "number_api_bad_response".to_owned())
    );
}

/// getcode through a producer calling `api`: the status and the error code of its answer.
async fn getcode_error(api: &Server, queue: &SharedQueue) -> (u16, String) {
    let app = common::producer(
        &api.url("/api/RandomNumber"),
        KEY,
        queue.clone(),
        MessageEncoding::Text,
    )
    .await;
    let response = reqwest::get(app.url("/api/v1/getcode")).await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn a_hung_queue_answers_503_with_a_reason_at_the_request_deadline() {
    // A queue endpoint that accepts connections and never answers.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!(
        "http://{}/devstoreaccount1",
        black_hole.local_addr().unwrap()
    );
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = black_hole.accept().await {
            held.push(stream);
        }
    });
    let cs = codewatch::queue::connection_string::ConnectionString::parse(
        &common::connection_string_at(&endpoint),
    )
    .unwrap();
    let queue: SharedQueue = Arc::new(
        codewatch::queue::azure::AzureQueueFactory::from_connection_string(&cs)
            .unwrap()
            .queue("hung")
            .unwrap(),
    );
    let api = common::number_api(KEY).await;
    let app = producer_with_deadline(queue, &api, Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let response = reqwest::get(app.url("/api/v1/getcode")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "request_timeout", "{body}");
}

async fn limited_producer(queue: SharedQueue, api: &Server, trusted: &str) -> Server {
    let client = codewatch::number_api::NumberApiClient::new(
        api.url("/api/RandomNumber").parse().unwrap(),
        codewatch::function_key::FunctionKey::fixed(codewatch::secret::Secret::new(KEY)),
        Duration::from_secs(5),
    );
    Server::start(codewatch::http::router(codewatch::http::AppState {
        number_api: client,
        queue: queue.into(),
        encoding: MessageEncoding::Text,
        verification: None,
        getcode_limiter: Some(codewatch::http::rate_limit::RateLimiter::new(0.001, 2.0)),
        trusted_proxies: codewatch::http::TrustedProxies::parse(trusted).unwrap(),
        signing: None,
        clock: Default::default(),
        public_getcode: true,
        issuing: Default::default(),
    }))
    .await
}

#[tokio::test]
async fn getcode_is_limited_per_client_and_forwarded_for_counts_only_from_a_trusted_ingress() {
    let queues = common::azure_queues().await;
    let api = common::number_api(KEY).await;
    let http = reqwest::Client::new();
    let get = |app: &Server, client: &'static str| {
        let request = http
            .get(app.url("/api/v1/getcode"))
            .header("x-forwarded-for", client);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let behind_ingress = limited_producer(queues.main.clone(), &api, "127.0.0.0/8").await;
    assert_eq!(get(&behind_ingress, "203.0.113.1").await, 200);
    assert_eq!(get(&behind_ingress, "203.0.113.1").await, 200);
    assert_eq!(get(&behind_ingress, "203.0.113.1").await, 429);
    assert_eq!(
        get(&behind_ingress, "203.0.113.2").await,
        200,
        "another client"
    );

    let exposed = limited_producer(queues.main.clone(), &api, "").await;
    assert_eq!(get(&exposed, "203.0.113.1").await, 200);
    assert_eq!(get(&exposed, "203.0.113.2").await, 200);
    assert_eq!(
        get(&exposed, "203.0.113.3").await,
        429,
        "an untrusted X-Forwarded-For does not make a new client"
    );
}

/// With the embedded queue's writer stalled (another process holds SQLite's write lock), getcodes pass
/// their deadline and answer 503: none of those codes may become valid later, and the writes of
/// clients that gave up do not pile up.
#[tokio::test]
async fn getcodes_that_answered_an_error_while_the_embedded_writer_stalled_leave_no_code() {
    use sqlx::Connection as _;
    let db = common::sqlite().await;
    let queues = common::embedded_queues(&db.database);
    let api = common::number_api(KEY).await;
    let app = producer_with_deadline(queues.main.clone(), &api, Duration::from_millis(500)).await;
    // Another process's write transaction: the writer's commit waits on it.
    let mut holder = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let flood = (0..40).map(|_| {
        let request = http.get(app.url("/api/v1/getcode"));
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(flood).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    // The writer gets the lock back; give it time to write whatever it still holds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answered = reqwest::get(app.url("/api/v1/getcode")).await.unwrap();
    assert_eq!(answered.status(), 200, "the queue works again");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_messages")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert_eq!(left, 1, "only the code answered 200 is on the queue");
}

/// A producer (no sign-in API) on `queue` whose requests are abandoned after `deadline`.
async fn producer_with_deadline(queue: SharedQueue, api: &Server, deadline: Duration) -> Server {
    let state = common::producer_state(
        &api.url("/api/RandomNumber"),
        KEY,
        queue,
        MessageEncoding::Text,
        Duration::from_secs(5),
    );
    let limits = codewatch::http::HttpLimits {
        request_timeout: deadline,
        ..Default::default()
    };
    Server::start_with(codewatch::http::router(state), limits).await
}
