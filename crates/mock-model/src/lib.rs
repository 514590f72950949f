//! A scoring-pod stand-in (like an Azure ML scoring container) for demos, tests and load tests.
//!
//! The server speaks HTTP/1.1 and HTTP/2 (h2c prior knowledge) on one port and offers:
//!
//! | Route | Behaviour |
//! |---|---|
//! | `POST /score` (or any path ending in `/score`) | streams and counts the request body, waits the service time, answers JSON |
//! | `GET /swagger.json` | a small OpenAPI 3.0 document (`?version=2`: the same as Swagger 2.0, as the Azure ML inference server offers) |
//! | `GET /` | `Healthy` |
//! | `GET /stats` | in-flight / high-water / served counters as JSON |
//! | any method, path starting with `/echo` | echoes method, path, query, headers, body size and the peer address |
//! | `GET /status/{code}` | answers with that status code |
//! | any method, `/reset` | drops the connection without a response |
//! | `POST /gate/release?n=N` | lets gated streams (`gated=1`) send N more chunks |
//! | `/v2/...` | a minimal Open Inference Protocol (KServe v2) REST server, see [`oip`] |
//!
//! Query parameters on `/score`: `latencyMs=N` (service time), `streamChunks=N` (stream the
//! answer as N chunks spread over the service time; SSE when the client accepts
//! `text/event-stream`, NDJSON otherwise) and `respondBytes=N` (answer with N bytes of
//! `application/octet-stream`). `/echo` honours `latencyMs` too. For the router's stream
//! timers: `stallAfterChunks=N` (a streamed answer stops after N chunks and never ends; the
//! connection stays open), `stallReadAfterBytes=N` (the pod stops reading the request body
//! after N bytes and never answers). For tests that must see each chunk arrive before the next
//! is sent: `gated=1` (a streamed answer sends its first chunk at once and each later one only
//! when `POST /gate/release` allows it).

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

/// Longest service time honoured; larger values (from config or `latencyMs`) are clamped.
pub const MAX_LATENCY: Duration = Duration::from_secs(24 * 60 * 60);

/// Size of the chunks used for `respondBytes` answers.
const RESPOND_CHUNK: usize = 64 * 1024;
static RESPOND_DATA: [u8; RESPOND_CHUNK] = [b'x'; RESPOND_CHUNK];

type BoxError = Box<dyn StdError + Send + Sync>;

/// Behaviour of a mock scoring pod.
#[derive(Debug, Clone, PartialEq)]
pub struct MockConfig {
    /// Pod name reported in every answer (`pod` field) and in `/stats`.
    pub name: String,
    /// Default service time of `/score` (overridable per request with `latencyMs=N`).
    pub latency: Duration,
    /// Probability in `[0, 1]` that a `/score` request answers 500 (injected failure).
    pub fail_rate: f64,
    /// When > 0, `/score` streams its answer as this many chunks spread over the service
    /// time (overridable per request with `streamChunks=N`).
    pub stream_chunks: u32,
    /// The service time of a (non-streamed) `/score` runs to its end even when the caller
    /// closes the connection, as a model worker's computation does; `/stats` counts it in flight
    /// until then. Off: an abandoned request stops at once.
    pub work_survives_disconnect: bool,
    /// Keep the service time to within a few µs (the timer sleeps to 1 ms before the end, then
    /// the task yields until it): tokio's millisecond timer otherwise overshoots by up to a
    /// tick, which matters when a benchmark computes capacity from the nominal time. Costs CPU.
    pub precise_latency: bool,
    /// A streamed `/score` answer stops after this many chunks and never ends, the connection
    /// left open: a pod that stalls mid-answer (overridable per request with
    /// `stallAfterChunks=N`).
    pub stall_after_chunks: Option<u32>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            name: "mock".to_owned(),
            latency: Duration::ZERO,
            fail_rate: 0.0,
            stream_chunks: 0,
            work_survives_disconnect: false,
            precise_latency: false,
            stall_after_chunks: None,
        }
    }
}

/// Waits `latency`: with the timer, or to within a few µs when `precise`.
async fn service_time(latency: Duration, precise: bool) {
    if !precise {
        tokio::time::sleep(latency).await;
        return;
    }
    let deadline = std::time::Instant::now() + latency;
    if let Some(coarse) = latency.checked_sub(Duration::from_millis(1)) {
        tokio::time::sleep(coarse).await;
    }
    while std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

/// A point-in-time copy of a mock pod's `/score` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// `/score` requests currently being handled (until their response body ends or is dropped).
    pub in_flight: u64,
    /// High-water mark of `in_flight` since start (or the last [`MockHandle::reset_stats`]).
    pub max_in_flight: u64,
    /// `/score` requests answered (counted when the response head is produced, failures included).
    pub served: u64,
}

#[derive(Debug, Default)]
struct Stats {
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    served: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            in_flight: self.in_flight.load(Ordering::SeqCst),
            max_in_flight: self.max_in_flight.load(Ordering::SeqCst),
            served: self.served.load(Ordering::SeqCst),
        }
    }

    fn reset(&self) {
        self.served.store(0, Ordering::SeqCst);
        self.max_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn enter(self: &Arc<Self>) -> InFlightGuard {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlightGuard(Arc::clone(self))
    }
}

/// Counts one request in flight for as long as it lives.
struct InFlightGuard(Arc<Stats>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Shared {
    config: MockConfig,
    name: Arc<str>,
    stats: Arc<Stats>,
    /// Chunks that gated streams (`gated=1`) may still send (`POST /gate/release`).
    gate: Arc<tokio::sync::Semaphore>,
}

/// A running mock pod. Dropping it (or calling [`MockHandle::shutdown`]) stops the server.
#[derive(Debug)]
pub struct MockHandle {
    addr: SocketAddr,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
    // Dropping the sender tells every connection (and HTTP/2 stream) task to stop.
    _shutdown: watch::Sender<()>,
}

impl MockHandle {
    /// The address the pod listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Current `/score` counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Zeroes `served` and resets `max_in_flight` to the current `in_flight` (zero when idle);
    /// `in_flight` itself is untouched.
    pub fn reset_stats(&self) {
        self.stats.reset();
    }

    /// Stops accepting connections and aborts the open ones, and returns once the listener and
    /// every connection are closed (as a killed process's would be), so that whatever a client
    /// sends afterwards meets a closed socket, never a connection still being torn down.
    pub async fn shutdown(self) {
        let _ = self._shutdown.send(());
        // Every accept, connection and stream task holds a receiver and drops it last.
        let _ = tokio::time::timeout(Duration::from_secs(5), self._shutdown.closed()).await;
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds nothing itself: serves on an already-bound listener, spawning onto the current tokio
/// runtime.
///
/// # Panics
/// Panics when called outside a tokio runtime.
pub fn spawn(listener: TcpListener, config: MockConfig) -> MockHandle {
    let addr = listener
        .local_addr()
        .expect("a bound TcpListener has a local address");
    let stats = Arc::new(Stats::default());
    let shared = Arc::new(Shared {
        name: Arc::from(config.name.as_str()),
        config,
        stats: Arc::clone(&stats),
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
    });
    let (tx, rx) = watch::channel(());
    let task = tokio::spawn(accept_loop(listener, shared, rx));
    MockHandle {
        addr,
        stats,
        task,
        _shutdown: tx,
    }
}

/// Convenience: binds 127.0.0.1:0 and spawns.
pub async fn spawn_local(config: MockConfig) -> std::io::Result<MockHandle> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    Ok(spawn(listener, config))
}

/// Spawns futures (HTTP/2 streams) that end when the server shuts down.
#[derive(Clone)]
struct ShutdownExecutor(watch::Receiver<()>);

impl<F> hyper::rt::Executor<F> for ShutdownExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut shutdown = self.0.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<()>,
) {
    let mut builder = auto::Builder::new(ShutdownExecutor(shutdown.clone()));
    builder.http1().keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(x) => x,
                Err(_) => {
                    // Typically EMFILE: back off a little instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let shared = Arc::clone(&shared);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req, peer));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// Error returned by the service for `/reset`; hyper then drops the connection.
#[derive(Debug)]
struct ResetRequested;

impl std::fmt::Display for ResetRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset requested")
    }
}

impl StdError for ResetRequested {}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Result<Response<MockBody>, BoxError> {
    let path = req.uri().path();
    let method = req.method();
    if path == "/reset" {
        return Err(Box::new(ResetRequested));
    }
    if path.starts_with("/echo") {
        return echo(&shared, req, peer).await;
    }
    if path.ends_with("/score") {
        return if method == Method::POST {
            score(&shared, req).await
        } else {
            Ok(method_not_allowed(&shared, "POST"))
        };
    }
    if path == "/v2" || path.starts_with("/v2/") {
        return oip::handle(&shared, req).await;
    }
    if path == "/gate/release" {
        if method != Method::POST {
            return Ok(method_not_allowed(&shared, "POST"));
        }
        let n = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("n="))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(1)
            .min(tokio::sync::Semaphore::MAX_PERMITS / 2);
        shared.gate.add_permits(n);
        return Ok(json_response(
            StatusCode::OK,
            &json!({"pod": &*shared.name, "released": n}),
            None,
        ));
    }
    let is_get = method == Method::GET || method == Method::HEAD;
    let known = matches!(path, "/" | "/swagger.json" | "/stats") || path.starts_with("/status/");
    if !known {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not found", "pod": &*shared.name, "path": path}),
            None,
        ));
    }
    if !is_get {
        return Ok(method_not_allowed(&shared, "GET, HEAD"));
    }
    let resp = match path {
        "/" => {
            let mut resp = Response::new(MockBody::once(Bytes::from_static(b"Healthy"), None));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
        "/swagger.json" => {
            let v2 = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "version=2"));
            let doc = if v2 {
                swagger2(&shared.name)
            } else {
                swagger(&shared.name)
            };
            json_response(StatusCode::OK, &doc, None)
        }
        "/stats" => {
            let s = shared.stats.snapshot();
            json_response(
                StatusCode::OK,
                &json!({
                    "name": &*shared.name,
                    "inFlight": s.in_flight,
                    "maxInFlight": s.max_in_flight,
                    "served": s.served,
                }),
                None,
            )
        }
        _ => status(&shared, path.trim_start_matches("/status/")),
    };
    Ok(resp)
}

fn method_not_allowed(shared: &Shared, allow: &'static str) -> Response<MockBody> {
    let mut resp = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "method not allowed", "pod": &*shared.name}),
        None,
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn status(shared: &Shared, code: &str) -> Response<MockBody> {
    let code = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok());
    let Some(code) = code else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "status code must be an integer in 200..=599", "pod": &*shared.name}),
            None,
        );
    };
    if code == StatusCode::NO_CONTENT || code == StatusCode::NOT_MODIFIED {
        let mut resp = Response::new(MockBody::empty(None));
        *resp.status_mut() = code;
        return resp;
    }
    json_response(
        code,
        &json!({"pod": &*shared.name, "status": code.as_u16()}),
        None,
    )
}

/// Query parameters understood by `/score` and `/echo`.
#[derive(Debug, Default)]
struct Params {
    latency_ms: Option<u64>,
    stream_chunks: Option<u32>,
    respond_bytes: Option<u64>,
    stall_after_chunks: Option<u32>,
    stall_read_after_bytes: Option<u64>,
    gated: bool,
}

impl Params {
    fn parse(query: &str) -> Self {
        let mut params = Self::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "latencyMs" => params.latency_ms = value.parse().ok(),
                "streamChunks" => params.stream_chunks = value.parse().ok(),
                "respondBytes" => params.respond_bytes = value.parse().ok(),
                "stallAfterChunks" => params.stall_after_chunks = value.parse().ok(),
                "stallReadAfterBytes" => params.stall_read_after_bytes = value.parse().ok(),
                "gated" => params.gated = value == "1" || value == "true",
                _ => {}
            }
        }
        params
    }

    fn latency(&self, config: &MockConfig) -> Duration {
        self.latency_ms
            .map(Duration::from_millis)
            .unwrap_or(config.latency)
            .min(MAX_LATENCY)
    }
}

/// Reads the body frame by frame, counting data bytes without keeping them.
async fn drain(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            received += data.len() as u64;
        }
    }
    Ok(received)
}

async fn score(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, BoxError> {
    let mut guard = shared.stats.enter();
    let query = req.uri().query().unwrap_or("").to_owned();
    let params = Params::parse(&query);
    let sse = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| String::from_utf8_lossy(v.as_bytes()).contains("text/event-stream"));
    if let Some(n) = params.stall_read_after_bytes {
        // A pod that stops reading the upload: hold the request (and its count) until the
        // caller gives up and the connection closes.
        let mut body = req.into_body();
        let mut received = 0u64;
        while received < n {
            match body.frame().await {
                Some(Ok(f)) => received += f.data_ref().map_or(0, |d| d.len() as u64),
                Some(Err(e)) => return Err(Box::new(e)),
                None => break,
            }
        }
        let _held = guard;
        let never = std::future::pending::<Infallible>().await;
        match never {}
    }
    let received = drain(req.into_body()).await?;

    let config = &shared.config;
    let latency = params.latency(config);
    let chunks = params.stream_chunks.unwrap_or(config.stream_chunks);
    let fail = config.fail_rate > 0.0 && rand::random::<f64>() < config.fail_rate;
    let streamed = !fail && params.respond_bytes.is_none() && chunks > 0;
    if !streamed && !latency.is_zero() {
        if config.work_survives_disconnect {
            // The work is its own task: a dropped handler leaves it (and its in-flight count)
            // running to the end.
            let precise = config.precise_latency;
            let work = tokio::spawn(async move {
                service_time(latency, precise).await;
                guard
            });
            guard = work.await?;
        } else {
            service_time(latency, config.precise_latency).await;
        }
    }
    shared.stats.served.fetch_add(1, Ordering::SeqCst);

    if fail {
        return Ok(json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": "injected failure", "pod": &*shared.name}),
            Some(guard),
        ));
    }
    if let Some(n) = params.respond_bytes {
        let mut resp = Response::new(MockBody {
            kind: BodyKind::Repeat { remaining: n },
            _guard: Some(guard),
        });
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return Ok(resp);
    }
    if streamed {
        let mut resp = Response::new(MockBody {
            kind: BodyKind::Chunks(Box::new(ChunkStream {
                name: Arc::clone(&shared.name),
                sse,
                next: 0,
                total: chunks,
                start: Instant::now(),
                latency,
                sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
                stall_after: params.stall_after_chunks.or(config.stall_after_chunks),
                gate: params.gated.then(|| Arc::clone(&shared.gate)),
                permit: None,
            })),
            _guard: Some(guard),
        });
        let content_type = if sse {
            "text/event-stream"
        } else {
            "application/x-ndjson"
        };
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(resp);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "pod": &*shared.name,
            "bytesReceived": received,
            "query": query,
            "result": [1.0, 2.0],
        }),
        Some(guard),
    ))
}

async fn echo(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Result<Response<MockBody>, BoxError> {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("");
    let params = Params::parse(query);
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let joined = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        headers.insert(name.as_str().to_owned(), Value::String(joined));
    }
    let received = drain(body).await?;
    let latency = params.latency(&shared.config);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "pod": &*shared.name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": query,
            "headers": headers,
            "bytesReceived": received,
            "peer": peer.to_string(),
        }),
        None,
    ))
}

fn swagger(name: &str) -> Value {
    json!({
        "openapi": "3.0.1",
        "info": {
            "title": format!("mock-model {name}"),
            "description": "Mock scoring pod",
            "version": "1.0.0",
        },
        "paths": {
            "/score": {
                "post": {
                    "summary": "Score the request body",
                    "operationId": "score",
                    "parameters": [
                        {"name": "latencyMs", "in": "query", "required": false,
                         "description": "Service time in milliseconds",
                         "schema": {"type": "integer", "minimum": 0}},
                        {"name": "streamChunks", "in": "query", "required": false,
                         "description": "Stream the answer as this many chunks",
                         "schema": {"type": "integer", "minimum": 0}},
                        {"name": "respondBytes", "in": "query", "required": false,
                         "description": "Answer with this many bytes of octet-stream",
                         "schema": {"type": "integer", "minimum": 0}},
                    ],
                    "requestBody": {
                        "required": false,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "Scoring result",
                            "content": {"application/json": {"schema": {
                                "$ref": "#/components/schemas/ScoreResult"
                            }}},
                        },
                        "500": {
                            "description": "Injected failure",
                            "content": {"application/json": {"schema": {
                                "$ref": "#/components/schemas/Error"
                            }}},
                        },
                    },
                },
            },
        },
        "components": {
            "schemas": {
                "ScoreResult": {
                    "type": "object",
                    "properties": {
                        "pod": {"type": "string"},
                        "bytesReceived": {"type": "integer"},
                        "query": {"type": "string"},
                        "result": {"type": "array", "items": {"type": "number"}},
                    },
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "pod": {"type": "string"},
                    },
                },
            },
        },
    })
}

/// The scoring API as a Swagger 2.0 document.
fn swagger2(name: &str) -> Value {
    json!({
        "swagger": "2.0",
        "info": {
            "title": format!("mock-model {name}"),
            "description": "Mock scoring pod",
            "version": "1.0.0",
        },
        "schemes": ["http"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": {
            "/score": {
                "post": {
                    "summary": "Score the request body",
                    "operationId": "score",
                    "parameters": [
                        {"name": "body", "in": "body", "required": false,
                         "schema": {"type": "object"}},
                    ],
                    "responses": {
                        "200": {"description": "Scoring result",
                                "schema": {"$ref": "#/definitions/ScoreResult"}},
                        "500": {"description": "Injected failure"},
                    },
                },
            },
        },
        "definitions": {
            "ScoreResult": {
                "type": "object",
                "properties": {
                    "pod": {"type": "string"},
                    "bytesReceived": {"type": "integer"},
                    "query": {"type": "string"},
                    "result": {"type": "array", "items": {"type": "number"}},
                },
            },
        },
    })
}

fn json_response(
    status: StatusCode,
    value: &Value,
    guard: Option<InFlightGuard>,
) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::once(Bytes::from(value.to_string()), guard));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Response body of the mock; optionally keeps a request counted in flight until it ends.
struct MockBody {
    kind: BodyKind,
    _guard: Option<InFlightGuard>,
}

enum BodyKind {
    Once(Option<Bytes>),
    Chunks(Box<ChunkStream>),
    Repeat { remaining: u64 },
}

impl MockBody {
    fn once(data: Bytes, guard: Option<InFlightGuard>) -> Self {
        Self {
            kind: BodyKind::Once(Some(data)),
            _guard: guard,
        }
    }

    fn empty(guard: Option<InFlightGuard>) -> Self {
        Self {
            kind: BodyKind::Once(None),
            _guard: guard,
        }
    }
}

/// Emits chunk `i` at `start + i * latency / total`, ends at `start + latency`.
struct ChunkStream {
    name: Arc<str>,
    sse: bool,
    next: u32,
    total: u32,
    start: Instant,
    latency: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Stop (stay pending for good) once this many chunks are out.
    stall_after: Option<u32>,
    /// Gated: every chunk after the first waits for a permit of the pod's gate.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    permit: Option<Pin<Box<PermitFuture>>>,
}

type PermitFuture = dyn Future<Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>>
    + Send
    + Sync;

impl ChunkStream {
    fn is_done(&self) -> bool {
        self.next > self.total
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.is_done() {
            return Poll::Ready(None);
        }
        if self.stall_after.is_some_and(|n| self.next >= n) && self.next < self.total {
            // Stalled: nothing more, ever (the connection's own wake-ups still come).
            return Poll::Pending;
        }
        if let Some(gate) = &self.gate
            && self.next > 0
            && self.next < self.total
        {
            let gate = Arc::clone(gate);
            let permit = self
                .permit
                .get_or_insert_with(|| Box::pin(gate.acquire_owned()));
            let got = ready!(permit.as_mut().poll(cx));
            self.permit = None;
            if let Ok(p) = got {
                p.forget();
            }
        }
        let offset = self
            .latency
            .mul_f64(f64::from(self.next) / f64::from(self.total));
        let deadline = self.start + offset;
        if Instant::now() < deadline {
            self.sleep.as_mut().reset(deadline);
            ready!(self.sleep.as_mut().poll(cx));
        }
        let i = self.next;
        self.next += 1;
        if i == self.total {
            return Poll::Ready(None);
        }
        let event = json!({"pod": &*self.name, "chunk": i}).to_string();
        let text = if self.sse {
            format!("data: {event}\n\n")
        } else {
            format!("{event}\n")
        };
        Poll::Ready(Some(Bytes::from(text)))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let data = match &mut this.kind {
            BodyKind::Once(data) => data.take(),
            BodyKind::Chunks(stream) => ready!(stream.poll_chunk(cx)),
            BodyKind::Repeat { remaining } => {
                if *remaining == 0 {
                    None
                } else {
                    let n = (*remaining).min(RESPOND_CHUNK as u64);
                    *remaining -= n;
                    // `n` <= RESPOND_CHUNK, so the cast cannot truncate.
                    Some(Bytes::from_static(&RESPOND_DATA[..n as usize]))
                }
            }
        };
        Poll::Ready(data.map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Once(data) => data.is_none(),
            BodyKind::Chunks(stream) => stream.is_done(),
            BodyKind::Repeat { remaining } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Once(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            _ => SizeHint::default(),
        }
    }
}

pub mod oip;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse() {
        let p = Params::parse("a=1&latencyMs=250&streamChunks=3&respondBytes=10&bad");
        assert_eq!(p.latency_ms, Some(250));
        assert_eq!(p.stream_chunks, Some(3));
        assert_eq!(p.respond_bytes, Some(10));
        let p = Params::parse("");
        assert!(p.latency_ms.is_none() && p.stream_chunks.is_none() && p.respond_bytes.is_none());
        let cfg = MockConfig {
            latency: Duration::from_millis(7),
            ..MockConfig::default()
        };
        assert_eq!(
            Params::parse("latencyMs=x").latency(&cfg),
            Duration::from_millis(7)
        );
        assert_eq!(
            Params::parse("latencyMs=18446744073709551615").latency(&cfg),
            MAX_LATENCY
        );
    }

    #[test]
    fn stats_guard_and_reset() {
        let stats = Arc::new(Stats::default());
        let a = stats.enter();
        let b = stats.enter();
        stats.served.fetch_add(2, Ordering::SeqCst);
        assert_eq!(
            stats.snapshot(),
            StatsSnapshot {
                in_flight: 2,
                max_in_flight: 2,
                served: 2
            }
        );
        drop(a);
        stats.reset();
        assert_eq!(
            stats.snapshot(),
            StatsSnapshot {
                in_flight: 1,
                max_in_flight: 1,
                served: 0
            }
        );
        drop(b);
        assert_eq!(stats.snapshot().in_flight, 0);
    }

    #[test]
    fn swagger_title_contains_name() {
        let doc = swagger("pod-a");
        assert_eq!(doc["openapi"], "3.0.1");
        assert!(doc["info"]["title"].as_str().unwrap().contains("pod-a"));
        assert!(doc["paths"]["/score"]["post"].is_object());
        let doc = swagger2("pod-a");
        assert_eq!(doc["swagger"], "2.0");
        assert!(doc["paths"]["/score"]["post"].is_object());
    }
}
