//! A small HTTP proxy in front of Azurite that the tests start, to give the queue the failures Azure
//! Storage has: an outage (connections dropped unanswered), throttling (503 `ServerBusy`, 500
//! `OperationTimedOut`, as the service answers them) and dropped answers (the request applied, the
//! answer lost).

use axum::body::Body;
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use tokio_util::sync::CancellationToken;

/// What the proxy does to requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forwards everything.
    Pass = 0,
    /// Drops every connection without an answer.
    Down = 1,
    /// Two requests in three answered 503 ServerBusy or 500 OperationTimedOut, not forwarded.
    Throttle = 2,
    /// One request in three forwarded (and applied), its answer dropped.
    DropAnswers = 3,
}

struct State {
    upstream: String,
    mode: AtomicU8,
    requests: AtomicUsize,
    faults: AtomicUsize,
    client: reqwest::Client,
    /// How long Azurite took to answer each forwarded request.
    latencies: std::sync::Mutex<Vec<std::time::Duration>>,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

impl FaultProxy {
    /// A proxy to `upstream` (`http://127.0.0.1:port`), passing everything until told otherwise.
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            mode: AtomicU8::new(Mode::Pass as u8),
            requests: AtomicUsize::new(0),
            faults: AtomicUsize::new(0),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            latencies: std::sync::Mutex::new(Vec::new()),
        });
        let cancel = CancellationToken::new();
        let (s, stop) = (state.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            cancel,
        }
    }

    /// The queue endpoint through the proxy, for a connection string.
    pub fn endpoint(&self) -> String {
        format!("http://{}/devstoreaccount1", self.addr)
    }

    /// Switches what the proxy does from now on.
    pub fn set(&self, mode: Mode) {
        self.state.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// How long Azurite took to answer the forwarded requests: (p50, p99, max), and how many.
    pub fn upstream_latency(
        &self,
    ) -> (
        std::time::Duration,
        std::time::Duration,
        std::time::Duration,
        usize,
    ) {
        let mut all = self.state.latencies.lock().unwrap().clone();
        all.sort();
        let at = |q: f64| {
            all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        (
            at(0.5),
            at(0.99),
            all.last().copied().unwrap_or_default(),
            all.len(),
        )
    }

    /// Requests seen, and how many of them were given a fault.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.state.requests.load(Ordering::SeqCst),
            self.state.faults.load(Ordering::SeqCst),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn storage_error(status: u16, code: &str) -> Response<Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>"
    );
    Response::builder()
        .status(status)
        .header("x-ms-error-code", code)
        .header("content-type", "application/xml")
        .body(Body::from(body))
        .unwrap()
}

async fn handle(
    state: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Dropped> {
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    let mode = state.mode.load(Ordering::SeqCst);
    let fault = |state: &State| state.faults.fetch_add(1, Ordering::SeqCst);
    if mode == Mode::Down as u8 {
        fault(&state);
        return Err(Dropped);
    }
    if mode == Mode::Throttle as u8 && !n.is_multiple_of(3) {
        fault(&state);
        return Ok(if n.is_multiple_of(2) {
            storage_error(503, "ServerBusy")
        } else {
            storage_error(500, "OperationTimedOut")
        });
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(Body::new(body), 1 << 20)
        .await
        .map_err(|_| Dropped)?;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut forward = state
        .client
        .request(parts.method, format!("{}{path}", state.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            forward = forward.header(name, value);
        }
    }
    let started = std::time::Instant::now();
    let answer = forward.send().await.map_err(|_| Dropped)?;
    state.latencies.lock().unwrap().push(started.elapsed());
    if mode == Mode::DropAnswers as u8 && n.is_multiple_of(3) {
        fault(&state);
        return Err(Dropped);
    }
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.map_err(|_| Dropped)?;
    Ok(response.body(Body::from(bytes)).unwrap())
}
