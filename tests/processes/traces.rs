//! OpenTelemetry traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, `up` sends its spans over OTLP/HTTP
//! to a receiver that decodes them with the reference protobuf classes (tests/python/otlp_receiver.py;
//! no collector binary can be installed here). A getcode is one trace: the HTTP server span, the
//! number API's client span and the queue's producer span; the message carries the trace context, so
//! the worker's batch spans (activation, then expiry) link to that trace. No attribute holds the code.

use crate::common;
use common::{metric, metrics_when};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The receiver, listening; killed when dropped.
struct Receiver(std::process::Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the receiver writing to `out`; it and its base URL.
fn receiver(out: &Path) -> (Receiver, String) {
    let (child, port) = common::smtp::spawn_listening_tool(
        "otlp_receiver.py",
        &[std::ffi::OsStr::new("--out"), out.as_os_str()],
    );
    (Receiver(child), format!("http://127.0.0.1:{port}"))
}

/// OTLP span kinds.
const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_getcode_is_one_trace_sent_over_otlp_http_and_no_span_holds_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let spans_file = dir.path().join("spans.jsonl");
    let (_receiver, endpoint) = receiver(&spans_file);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("CODE_TTL_SECONDS", "1".to_owned()),
    ];
    let (mut up, base, admin) = common::process::spawn_up_with_admin(dir.path(), &env);
    let answer = reqwest::get(format!("{base}/api/v1/getcode"))
        .await
        .unwrap();
    let request_id = answer.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = answer.json().await.unwrap();
    let code = body["code"].as_str().unwrap().to_owned();
    metrics_when(
        &admin,
        "the code activated, then expired",
        Duration::from_secs(20),
        |text| {
            metric(text, r#"codewatch_messages_total{outcome="activated"}"#) == 1.0
                && metric(text, r#"codewatch_messages_total{outcome="expired"}"#) == 1.0
        },
    )
    .await;
    // Stopping sends the spans still batched.
    assert!(up.terminate().success());

    let text = std::fs::read_to_string(&spans_file).unwrap_or_default();
    let spans: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!text.contains(&code), "a span holds the code: {text}");
    let find = |what: &str, test: &dyn Fn(&Value) -> bool| -> Value {
        spans
            .iter()
            .find(|s| test(s))
            .cloned()
            .unwrap_or_else(|| panic!("no {what} span among:\n{text}"))
    };
    let attr = |span: &Value, key: &str| span["attributes"][key].clone();
    let server = find("getcode server", &|s| {
        s["kind"] == SERVER && s["attributes"]["http.route"] == "/api/v1/getcode"
    });
    assert_eq!(server["name"], "GET /api/v1/getcode");
    assert_eq!(server["service"], "codewatch");
    assert_eq!(attr(&server, "http.request.method"), "GET");
    assert_eq!(attr(&server, "http.response.status_code"), 200);
    assert_eq!(attr(&server, "request_id"), request_id.as_str());
    let trace = server["trace_id"].clone();
    let client = find("number API client", &|s| {
        s["kind"] == CLIENT && s["trace_id"] == trace
    });
    assert_eq!(attr(&client, "server.address"), "127.0.0.1");
    let producer = find("queue producer", &|s| {
        s["kind"] == PRODUCER && s["trace_id"] == trace
    });
    assert_eq!(
        attr(&producer, "messaging.destination.name"),
        "code-requests"
    );
    assert_eq!(producer["name"], "send code-requests");
    // The activation's batch and the expiry's batch, each a trace of its own linked to the getcode's.
    let linked: Vec<&Value> = spans
        .iter()
        .filter(|s| s["kind"] == CONSUMER)
        .filter(|s| {
            s["links"]
                .as_array()
                .is_some_and(|links| links.iter().any(|l| l["trace_id"] == trace))
        })
        .collect();
    assert_eq!(
        linked.len(),
        2,
        "two batch spans linked to the getcode's trace:\n{text}"
    );
    for consumer in &linked {
        assert_eq!(consumer["name"], "process code-requests");
        assert_eq!(attr(consumer, "messaging.batch.message_count"), 1);
        assert_ne!(
            consumer["trace_id"], trace,
            "a batch is a trace of its own, linked"
        );
    }
    // Inside them, the stages: activate (and re-arm), then expire.
    for stage in ["activate", "expire"] {
        let span = find(stage, &|s| s["name"] == stage);
        assert!(
            linked
                .iter()
                .any(|c| c["span_id"] == span["parent_span_id"]),
            "{stage} is inside a linked batch span: {span}"
        );
        assert_eq!(attr(&span, "db.collection.name"), "valid_codes");
        assert_eq!(attr(&span, "db.system.name"), "sqlite");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_and_a_check_have_spans_that_hold_neither_code_nor_address() {
    const KEY: &str = "traces-verify-key";
    let dir = tempfile::tempdir().unwrap();
    let spans_file = dir.path().join("spans.jsonl");
    let (_receiver, endpoint) = receiver(&spans_file);
    let sink = common::smtp::SmtpSink::start();
    let (mut up, _, _, signin) = common::process::spawn_up_with_verify(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("DELIVERY", "smtp".to_owned()),
            ("SMTP_URL", sink.url()),
            ("VERIFY_API_KEY", KEY.to_owned()),
            ("VERIFY_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ],
    );
    let http = reqwest::Client::new();
    let issued = http
        .post(format!("{signin}/api/v1/codes"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({ "subject": "alice", "destination": "alice@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201);
    let mail = common::eventually("the mail", Duration::from_secs(20), || async {
        sink.mails().into_iter().next()
    })
    .await;
    let code = mail.sign_in_code();
    let checked = http
        .post(format!("{signin}/api/v1/codes/check"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({ "code": code, "subject": "alice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(checked.status(), 200);
    assert!(up.terminate().success());

    let text = std::fs::read_to_string(&spans_file).unwrap_or_default();
    assert!(!text.contains(&code), "a span holds the code: {text}");
    assert!(
        !text.contains("alice@example.com"),
        "a span holds the address: {text}"
    );
    let spans: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let deliver = spans
        .iter()
        .find(|s| s["name"] == "deliver")
        .unwrap_or_else(|| panic!("no deliver span among:\n{text}"));
    assert_eq!(deliver["kind"], CLIENT);
    let check = spans
        .iter()
        .find(|s| s["name"] == "check")
        .unwrap_or_else(|| panic!("no check span among:\n{text}"));
    assert_eq!(check["attributes"]["db.system.name"], "sqlite");
    let server = spans
        .iter()
        .find(|s| s["span_id"] == check["parent_span_id"])
        .unwrap_or_else(|| panic!("the check span has no parent among:\n{text}"));
    assert_eq!(server["name"], "POST /api/v1/codes/check");
    assert_eq!(server["kind"], SERVER);
}
