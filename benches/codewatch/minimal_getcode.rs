//! The fair floor under `getcode`: a bare hyper server that does what getcode must do and nothing
//! else (no limiter, no metrics, no logs, no deadline): call the number API with reqwest and its key,
//! build the code, Put the activation message with Microsoft's SDK ([`crate::sdk::put`], as the Put
//! ceiling does), answer the code as JSON. It runs as
//! a child process (the benchmark's own binary, re-run with `CODEWATCH_BENCH_ROLE=minimal-getcode`),
//! so that its CPU is measured as `serve`'s is.

use crate::minimal::ROLE;
use axum::body::Body;
use azure_storage_queue::QueueClient;
use codewatch::domain::{Issuance, IssuanceId};
use codewatch::message::{CodeMessage, MessageEncoding};
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;

/// The value of [`ROLE`] that makes the benchmark binary this server.
pub const ROLE_VALUE: &str = "minimal-getcode";

struct Floor {
    http: reqwest::Client,
    number_api: String,
    key: String,
    queue: QueueClient,
}

#[derive(serde::Deserialize)]
struct Number {
    value: u32,
}

impl Floor {
    async fn getcode(&self) -> Result<String, String> {
        let number: Number = self
            .http
            .get(&self.number_api)
            .header(codewatch::number_api::KEY_HEADER, &self.key)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let number = codewatch::domain::CodeNumber::new(number.value.into())
            .ok_or_else(|| "the number API answered a number no code can hold".to_owned())?;
        let code = codewatch::domain::Code::generate(number, &mut rand::rng());
        let now = chrono::Utc::now();
        // The same message codewatch sends, encoded by codewatch's own encoder.
        let message = CodeMessage::Activate(Issuance {
            destination: None,
            id: IssuanceId::random(),
            code: code.clone(),
            issued_at: now,
            subject: None,
        })
        .encode(MessageEncoding::Text)
        .unwrap();
        crate::sdk::put(&self.queue, &message, 0).await;
        Ok(serde_json::json!({"code": code.as_str(),
            "timestamp": now.format("%Y-%m-%d %H:%M:%S%.6f").to_string()})
        .to_string())
    }
}

async fn answer(floor: Arc<Floor>, _request: Request<hyper::body::Incoming>) -> Response<Body> {
    let (status, body) = match floor.getcode().await {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves every request as a getcode on a free loopback port, calling the number API at
/// `THIRD_PARTY_API_ENDPOINT` with `THIRD_PARTY_API_KEY` and putting into `STORAGE_QUEUE_NAME` in the
/// Azurite at `AZURITE_QUEUE_ENDPOINT`; prints `listening on <port>` and runs until killed.
pub async fn serve() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} ({ROLE})"));
    let floor = Arc::new(Floor {
        http: reqwest::Client::new(),
        number_api: var("THIRD_PARTY_API_ENDPOINT"),
        key: var("THIRD_PARTY_API_KEY"),
        queue: crate::sdk::client(&var("AZURITE_QUEUE_ENDPOINT"), &var("STORAGE_QUEUE_NAME")).await,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap().port());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let floor = floor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let floor = floor.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(floor, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
