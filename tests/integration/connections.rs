//! `HTTP_MAX_CONNECTIONS`: a listener holds at most that many connections; a client past the cap waits
//! in the listen backlog, unanswered, until a connection closes, and is then served.

use crate::common::Server;
use axum::Router;
use axum::routing::get;
use codewatch::http::HttpLimits;
use std::num::NonZeroUsize;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A keep-alive request on a new connection; the connection stays open after the answer.
async fn request(server: &Server) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: codewatch\r\n\r\n")
        .await
        .unwrap();
    stream
}

/// Reads until the whole answer to `GET /ok` is in.
async fn answer(stream: &mut TcpStream) -> String {
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    while !text.ends_with(b"ok") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&text));
        text.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test]
async fn a_client_past_the_connection_cap_waits_until_a_connection_closes() {
    let limits = HttpLimits {
        max_connections: NonZeroUsize::new(2).unwrap(),
        ..HttpLimits::default()
    };
    let server =
        Server::start_with(Router::new().route("/ok", get(|| async { "ok" })), limits).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = request(&server).await;
        assert!(answer(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // The kernel accepts the third connection into the backlog; codewatch does not take it up. The
    // wait only bounds how long "not answered" is watched: a slow machine cannot make this pass wrongly.
    let mut third = request(&server).await;
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(early.is_err(), "answered past the cap: {early:?}");
    // One held connection closes: its slot goes to the waiting client.
    drop(held.pop());
    let served = tokio::time::timeout(Duration::from_secs(30), answer(&mut third))
        .await
        .expect("served once a connection closed");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}
