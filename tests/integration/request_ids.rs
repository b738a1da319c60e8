//! Every answer of a codewatch listener carries `x-request-id`: the one a trusted proxy sent, or a
//! new UUID; a client outside the trusted ranges cannot choose its id.

use crate::common::Server;
use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use codewatch::http::{HttpLimits, TrustedProxies, X_REQUEST_ID};

/// Routes that answer, echo the id their handler saw, and panic.
fn routes() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/seen",
            get(|headers: HeaderMap| async move {
                headers
                    .get(X_REQUEST_ID)
                    .and_then(|id| id.to_str().ok())
                    .unwrap_or("none")
                    .to_owned()
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("a handler bug");
                }
                "unreachable"
            }),
        )
}

/// The status and `x-request-id` of `GET path`, sending `sent` ids.
async fn answer_id(server: &Server, path: &str, sent: &[&str]) -> (u16, String, String) {
    let mut request = reqwest::Client::new().get(server.url(path));
    for id in sent {
        request = request.header("x-request-id", *id);
    }
    let answer = request.send().await.unwrap();
    let ids: Vec<_> = answer.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "one id per answer: {ids:?}");
    let id = ids[0].to_str().unwrap().to_owned();
    let status = answer.status().as_u16();
    (status, id, answer.text().await.unwrap())
}

fn is_uuid(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

#[tokio::test]
async fn every_answer_carries_a_new_id_the_handler_sees_too() {
    let server = Server::start(routes()).await;
    let (status, first, _) = answer_id(&server, "/ok", &[]).await;
    assert_eq!(status, 200);
    assert!(is_uuid(&first), "{first}");
    let (_, second, _) = answer_id(&server, "/ok", &[]).await;
    assert!(is_uuid(&second) && second != first, "{first} {second}");
    let (_, id, seen) = answer_id(&server, "/seen", &[]).await;
    assert_eq!(
        seen, id,
        "the handler (and so its log lines) sees the answer's id"
    );
    // Answers that no handler wrote: no such path, and a handler that panicked.
    let (status, id, _) = answer_id(&server, "/nowhere", &[]).await;
    assert_eq!(status, 404);
    assert!(is_uuid(&id), "{id}");
    let (status, id, body) = answer_id(&server, "/panic", &[]).await;
    assert_eq!(status, 500, "{body}");
    assert!(is_uuid(&id), "{id}");
}

#[tokio::test]
async fn a_client_outside_the_trusted_ranges_cannot_choose_its_id() {
    let server = Server::start(routes()).await;
    let (_, id, seen) = answer_id(&server, "/seen", &["chosen-by-the-client"]).await;
    assert!(is_uuid(&id), "{id}");
    assert_eq!(seen, id);
    // The loopback peer is trusted for something else (a range that does not hold it): still replaced.
    let limits = HttpLimits::default().trusting(TrustedProxies::parse("10.0.0.0/8").unwrap());
    let server = Server::start_with(routes(), limits).await;
    let (_, id, _) = answer_id(&server, "/ok", &["chosen-by-the-client"]).await;
    assert!(is_uuid(&id), "{id}");
}

#[tokio::test]
async fn a_trusted_proxys_id_is_kept_when_plain_and_replaced_otherwise() {
    let limits = HttpLimits::default().trusting(TrustedProxies::parse("127.0.0.1").unwrap());
    let server = Server::start_with(routes(), limits).await;
    let (_, id, seen) = answer_id(&server, "/seen", &["ingress-4bf92f35:77b3"]).await;
    assert_eq!(id, "ingress-4bf92f35:77b3");
    assert_eq!(seen, id);
    let long = "a".repeat(129);
    for sent in [
        vec!["two words"],
        vec![long.as_str()],
        vec!["x;y<z>"],
        vec!["first", "second"],
    ] {
        let (_, id, seen) = answer_id(&server, "/seen", &sent).await;
        assert!(is_uuid(&id), "{sent:?} gave {id}");
        assert_eq!(seen, id);
    }
    let (_, id, _) = answer_id(&server, "/ok", &[&"b".repeat(128)]).await;
    assert_eq!(id, "b".repeat(128));
}
