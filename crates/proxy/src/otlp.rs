//! OpenTelemetry span export (`tracing.otlp`): one SERVER span per sampled request, with a child
//! span per phase (`queue`, `connect`, `head`, `stream`), sent to a collector in batches over
//! OTLP/HTTP (protobuf) or OTLP/gRPC.
//!
//! The request path only records. When a sampled request's context is finished, a
//! [`SpanRecord`] (the ids, the instants the access log's durations were measured between, names
//! shared with the route table) is pushed onto a bounded queue under a short lock and never waits:
//! a full queue drops the record and counts its spans (`infergate_otlp_spans_dropped_total
//! {reason="queue_full"}`). A thread of its own (a single-threaded runtime, so that encoding and a
//! slow or absent collector touch no request's task) takes batches, turns each record into the
//! SDK's `SpanData` and hands them to the `opentelemetry-otlp` exporter (encoding, the HTTP or
//! gRPC transport, retries with backoff), within `exportTimeoutMs`; the spans of a failed export
//! are dropped and counted (`reason="export_failed"`). Memory is bounded by `maxQueueSize`
//! records waiting plus one batch in flight.
//!
//! The SDK's own `BatchSpanProcessor` is not used: its drop count cannot be read (it is logged
//! once, at shutdown), spans lost to a failed export are not counted, and its span ids come
//! from its tracer, while the router's span id is already in the `traceparent` sent to the pod.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri, Version, header};
use infergate_config::{OtlpConfig, OtlpProtocol};
use infergate_metrics::{Counter, LogLimiter, Registry};
use infergate_routing::Action;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{
    Protocol, RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::forward::ConnInfo;
use crate::metrics::{OTLP_SPANS_DROPPED_TOTAL, OTLP_SPANS_EXPORTED_TOTAL};

/// The instrumentation scope of the router's spans.
const SCOPE: &str = "infergate";

// === impl SpanStart ===

/// What a sampled request's span needs beyond what its context holds anyway: read from the
/// request head, and the start of two phases. Boxed in the context only for requests that are
/// exported, so that the others carry one empty pointer.
#[derive(Debug)]
pub(crate) struct SpanStart {
    scheme: &'static str,
    version: Version,
    peer: SocketAddr,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    /// When the request began to wait for a pod slot (the queue phase's start).
    pub(crate) queued_at: Option<Instant>,
    /// When the first attempt began to get a connection (the connect phase's start).
    pub(crate) connect_at: Option<Instant>,
    /// When the last attempt's request went to the pod, its connection in hand (the end of the
    /// connect phase, the start of the head phase).
    pub(crate) sent_at: Option<Instant>,
}

impl SpanStart {
    /// The request head's part of the span (header values are shared, not copied).
    pub(crate) fn capture(parts: &http::request::Parts, conn: &ConnInfo) -> Box<SpanStart> {
        Box::new(SpanStart {
            scheme: conn.proto,
            version: parts.version,
            peer: conn.remote,
            host: parts.headers.get(header::HOST).cloned(),
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
            queued_at: None,
            connect_at: None,
            sent_at: None,
        })
    }
}

// === impl SpanRecord ===

/// One finished, sampled request as it waits for export: built when its context is dropped,
/// from what the context measured (no clock is read for it but the wall clock at the end, which
/// places the monotonic instants in time).
#[derive(Debug)]
pub(crate) struct SpanRecord {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent_id: Option<[u8; 8]>,
    pub(crate) head: Box<SpanStart>,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) request_id: HeaderValue,
    pub(crate) endpoint: Option<Arc<str>>,
    pub(crate) deployment: Option<Arc<str>>,
    pub(crate) pod: Option<SocketAddr>,
    pub(crate) pod_name: Option<Arc<str>>,
    pub(crate) status: u16,
    pub(crate) outcome: &'static str,
    pub(crate) attempts: u8,
    pub(crate) pooled: Option<bool>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    /// The request head's arrival.
    pub(crate) began: Instant,
    pub(crate) queue: Option<Duration>,
    pub(crate) connect: Option<Duration>,
    pub(crate) head_at: Option<Instant>,
    pub(crate) end: Instant,
    /// The wall clock at `end`.
    pub(crate) end_wall: SystemTime,
}

/// A phase of a request: its child span's name and interval.
type Phase = (&'static str, Instant, Instant);

impl SpanRecord {
    /// The phases that happened, in order: waiting for a slot, getting a connection (over all
    /// attempts, ending when the last attempt's request went out), the pod's response head, the
    /// response body.
    fn phases(&self) -> impl Iterator<Item = Phase> + '_ {
        let h = &self.head;
        let queue = h
            .queued_at
            .zip(self.queue)
            .map(|(at, d)| ("queue", at, at + d));
        // Over all attempts (a retry's wait for another pod included) when a request went
        // out; else the time spent connecting, from the first attempt.
        let connect = h.connect_at.map(|at| {
            let until = h.sent_at.unwrap_or(at + self.connect.unwrap_or_default());
            ("connect", at, until)
        });
        let head = h
            .sent_at
            .map(|at| ("head", at, self.head_at.unwrap_or(self.end)));
        let stream = self.head_at.map(|at| ("stream", at, self.end));
        [queue, connect, head, stream].into_iter().flatten()
    }

    /// The spans this record stands for: the request's and one per phase.
    pub(crate) fn span_count(&self) -> u64 {
        1 + self.phases().count() as u64
    }

    /// An instant of this request on the wall clock.
    fn wall(&self, t: Instant) -> SystemTime {
        self.end_wall
            .checked_sub(self.end.saturating_duration_since(t))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The request's SERVER span and its phases' INTERNAL spans, appended to `out`; `new_id`
    /// gives the phase spans' ids.
    fn into_spans(
        self,
        scope: &InstrumentationScope,
        new_id: &mut impl FnMut() -> [u8; 8],
        out: &mut Vec<SpanData>,
    ) {
        let trace_id = TraceId::from_bytes(self.trace_id);
        let context = |id: [u8; 8]| {
            SpanContext::new(
                trace_id,
                SpanId::from_bytes(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            )
        };
        for (name, from, to) in self.phases() {
            let mut attributes = Vec::new();
            if name == "connect" {
                if let Some(p) = self.pooled {
                    attributes.push(KeyValue::new("infergate.pooled", p));
                }
                attributes.push(KeyValue::new(
                    "infergate.attempts",
                    i64::from(self.attempts),
                ));
            }
            out.push(SpanData {
                span_context: context(new_id()),
                parent_span_id: SpanId::from_bytes(self.span_id),
                parent_span_is_remote: false,
                span_kind: SpanKind::Internal,
                name: Cow::Borrowed(name),
                start_time: self.wall(from),
                end_time: self.wall(to),
                attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: scope.clone(),
            });
        }
        let route = self
            .endpoint
            .as_ref()
            .and_then(|_| route_template(self.uri.path()));
        let method = known_method(&self.method);
        let name = match (method, route) {
            (Some(m), Some(r)) => Cow::Owned(format!("{m} {r}")),
            (Some(m), None) => Cow::Borrowed(m),
            (None, Some(r)) => Cow::Owned(format!("HTTP {r}")),
            (None, None) => Cow::Borrowed("HTTP"),
        };
        let status = if self.status >= 500 {
            Status::Error {
                description: Cow::Borrowed(self.outcome),
            }
        } else {
            Status::Unset
        };
        out.push(SpanData {
            span_context: context(self.span_id),
            parent_span_id: self.parent_id.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: self.parent_id.is_some(),
            span_kind: SpanKind::Server,
            name,
            start_time: self.wall(self.began),
            end_time: self.end_wall,
            attributes: self.attributes(method, route),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope.clone(),
        });
    }

    /// The SERVER span's attributes: HTTP semantic conventions, then the router's own.
    fn attributes(
        &self,
        method: Option<&'static str>,
        route: Option<&'static str>,
    ) -> Vec<KeyValue> {
        let h = &self.head;
        let mut a = Vec::with_capacity(20);
        match method {
            Some(m) => a.push(KeyValue::new("http.request.method", m)),
            None => {
                a.push(KeyValue::new("http.request.method", "_OTHER"));
                a.push(KeyValue::new(
                    "http.request.method_original",
                    self.method.as_str().to_string(),
                ));
            }
        }
        a.push(KeyValue::new("url.scheme", h.scheme));
        a.push(KeyValue::new("url.path", self.uri.path().to_string()));
        if let Some(r) = route {
            a.push(KeyValue::new("http.route", r));
        }
        if self.status != 0 {
            a.push(KeyValue::new(
                "http.response.status_code",
                i64::from(self.status),
            ));
        }
        let authority = h
            .host
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .or_else(|| self.uri.authority().map(|a| a.as_str()));
        if let Some((host, port)) = authority.and_then(split_authority) {
            a.push(KeyValue::new("server.address", host.to_string()));
            if let Some(p) = port {
                a.push(KeyValue::new("server.port", i64::from(p)));
            }
        }
        a.push(KeyValue::new(
            "network.protocol.version",
            protocol_version(h.version),
        ));
        a.push(KeyValue::new(
            "network.peer.address",
            h.peer.ip().to_string(),
        ));
        a.push(KeyValue::new("network.peer.port", i64::from(h.peer.port())));
        if let Some(ua) = h.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
            a.push(KeyValue::new("user_agent.original", ua.to_string()));
        }
        a.push(KeyValue::new(
            "http.request.body.size",
            self.bytes_in as i64,
        ));
        a.push(KeyValue::new(
            "http.response.body.size",
            self.bytes_out as i64,
        ));
        if self.outcome != "ok" {
            a.push(KeyValue::new("error.type", self.outcome));
        } else if self.status >= 500 {
            a.push(KeyValue::new("error.type", self.status.to_string()));
        }
        if let Ok(id) = self.request_id.to_str() {
            a.push(KeyValue::new("infergate.request_id", id.to_string()));
        }
        if let Some(e) = &self.endpoint {
            a.push(KeyValue::new("infergate.endpoint", Value::from(e.clone())));
        }
        if let Some(d) = &self.deployment {
            a.push(KeyValue::new(
                "infergate.deployment",
                Value::from(d.clone()),
            ));
        }
        if let Some(p) = self.pod {
            a.push(KeyValue::new("infergate.pod", p.to_string()));
        }
        if let Some(n) = &self.pod_name {
            a.push(KeyValue::new("infergate.pod.name", Value::from(n.clone())));
        }
        if self.attempts > 0 {
            a.push(KeyValue::new(
                "infergate.attempts",
                i64::from(self.attempts),
            ));
        }
        a.push(KeyValue::new("infergate.outcome", self.outcome));
        a
    }
}

/// The method's name when it is one of HTTP's own (semantic conventions: others are `_OTHER`).
fn known_method(m: &Method) -> Option<&'static str> {
    Some(match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => return None,
    })
}

/// The route template a routed request's path matched (`http.route`, low cardinality).
fn route_template(path: &str) -> Option<&'static str> {
    let (_, action) = infergate_routing::parse_path(path)?;
    let service = path.starts_with("/api/v1/service/");
    Some(match (service, action) {
        (false, Action::Score) => "/api/v1/endpoint/{endpoint}/score",
        (false, Action::Swagger) => "/api/v1/endpoint/{endpoint}/swagger.json",
        (true, Action::Score) => "/api/v1/service/{endpoint}/score",
        (true, Action::Swagger) => "/api/v1/service/{endpoint}/swagger.json",
    })
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `host[:port]` or `[v6][:port]` into the host and the port.
fn split_authority(a: &str) -> Option<(&str, Option<u16>)> {
    if a.is_empty() {
        return None;
    }
    if let Some(rest) = a.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((host, port));
    }
    match a.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok())),
        _ => Some((a, None)),
    }
}

// === impl SpanSink ===

/// The bounded queue between the requests and the export thread.
#[derive(Debug)]
pub(crate) struct SpanSink {
    queue: Mutex<VecDeque<SpanRecord>>,
    max_queue: usize,
    batch: usize,
    /// Woken when a batch is complete, and at close.
    ready: Notify,
    closed: AtomicBool,
    dropped_full: Counter,
    /// Spans dropped because the queue was full, not yet reported in a log line.
    unlogged_full: AtomicU64,
}

impl SpanSink {
    fn new(max_queue: usize, batch: usize, registry: &Registry) -> SpanSink {
        SpanSink {
            queue: Mutex::new(VecDeque::new()),
            max_queue,
            batch: batch.min(max_queue).max(1),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            dropped_full: registry.counter(OTLP_SPANS_DROPPED_TOTAL, &[("reason", "queue_full")]),
            unlogged_full: AtomicU64::new(0),
        }
    }

    /// Queues a finished request's spans for export, or drops and counts them when the queue is
    /// full. Never waits; the record is dropped (if it is) after the lock is released.
    pub(crate) fn push(&self, record: SpanRecord) {
        let mut q = self.queue.lock();
        if q.len() >= self.max_queue {
            drop(q);
            let n = record.span_count();
            self.dropped_full.increment(n);
            self.unlogged_full.fetch_add(n, Ordering::Relaxed);
            return;
        }
        q.push_back(record);
        let complete = q.len() == self.batch;
        drop(q);
        if complete {
            self.ready.notify_one();
        }
    }

    /// Moves up to one batch of records into `out`.
    fn take(&self, out: &mut Vec<SpanRecord>) {
        let mut q = self.queue.lock();
        let n = q.len().min(self.batch);
        out.extend(q.drain(..n));
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

// === impl Exporter ===

/// How the export thread runs (from `tracing.otlp`).
#[derive(Debug, Clone)]
struct Settings {
    interval: Duration,
    timeout: Duration,
}

/// The running export: the queue requests push to, and the thread behind it.
#[derive(Debug)]
pub(crate) struct Exporter {
    sink: Arc<SpanSink>,
    done: Option<oneshot::Receiver<()>>,
    flush_timeout: Duration,
}

impl Drop for Exporter {
    /// A server that never ran (a later listener failed to bind) stops its export thread too.
    fn drop(&mut self) {
        self.sink.close();
    }
}

/// The `service.instance.id` of this process: the pod's name (`POD_NAME`, the downward API's
/// `metadata.name`), else the host name, else a random id.
fn instance_id() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn resource() -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.name", "infergate"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance_id()),
    ];
    for (var, key) in [
        ("POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
    ] {
        if let Some(v) = std::env::var(var).ok().filter(|v| !v.is_empty()) {
            attrs.push(KeyValue::new(key, v));
        }
    }
    Resource::builder_empty().with_attributes(attrs).build()
}

/// The `opentelemetry-otlp` exporter for `o` (built inside the export thread's runtime: the
/// gRPC channel starts a task of its own).
fn build_exporter(o: &OtlpConfig) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let timeout = Duration::from_millis(o.export_timeout_ms);
    let base = o.endpoint.trim_end_matches('/');
    // Retries with backoff (100 ms doubling to 1.6 s, jittered) stay within the timeout.
    let retry = RetryPolicy::recommended();
    let built = match o.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{base}/v1/traces"))
            .with_timeout(timeout)
            .with_headers(o.headers.clone().into_iter().collect())
            .with_retry_policy(retry)
            .build(),
        OtlpProtocol::Grpc => {
            let metadata = grpc_metadata(&o.headers)?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(base)
                .with_timeout(timeout)
                .with_metadata(metadata)
                .with_retry_policy(retry)
                .build()
        }
    };
    let mut exporter = built.map_err(|e| e.to_string())?;
    exporter.set_resource(&resource());
    Ok(exporter)
}

fn grpc_metadata(
    headers: &BTreeMap<String, String>,
) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, String> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("{k}: {e}"))?;
        let value = HeaderValue::from_str(v).map_err(|e| format!("{k}: {e}"))?;
        map.insert(name, value);
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map))
}

impl Exporter {
    /// Starts the export thread for `o`, counting in `registry`. Fails when the exporter cannot
    /// be built from the configuration (the message says why).
    pub(crate) async fn start(o: &OtlpConfig, registry: &Registry) -> Result<Exporter, String> {
        let sink = Arc::new(SpanSink::new(
            o.max_queue_size,
            o.max_export_batch_size,
            registry,
        ));
        let exported = registry.counter(OTLP_SPANS_EXPORTED_TOTAL, &[]);
        let failed = registry.counter(OTLP_SPANS_DROPPED_TOTAL, &[("reason", "export_failed")]);
        let settings = Settings {
            interval: Duration::from_millis(o.export_interval_ms),
            timeout: Duration::from_millis(o.export_timeout_ms),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let config = o.clone();
        let thread_sink = sink.clone();
        std::thread::Builder::new()
            .name("infergate-otlp".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let exporter = match build_exporter(&config) {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let counters = Counters { exported, failed };
                    run(&exporter, &thread_sink, &settings, &counters).await;
                    let _ = exporter.shutdown();
                });
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the export thread: {e}"))?;
        ready_rx
            .await
            .map_err(|_| "the export thread ended".to_string())??;
        Ok(Exporter {
            sink,
            done: Some(done_rx),
            flush_timeout: Duration::from_millis(o.export_timeout_ms).min(Duration::from_secs(5)),
        })
    }

    /// The queue requests push their spans to.
    pub(crate) fn sink(&self) -> Arc<SpanSink> {
        self.sink.clone()
    }

    /// Exports what is queued (within `exportTimeoutMs`, at most 5 s) and stops the thread.
    pub(crate) async fn shutdown(mut self) {
        self.sink.close();
        let Some(done) = self.done.take() else {
            return;
        };
        if tokio::time::timeout(self.flush_timeout, done)
            .await
            .is_err()
        {
            tracing::warn!("OTLP export: spans still queued at exit were not exported");
        }
    }
}

#[derive(Debug)]
struct Counters {
    exported: Counter,
    failed: Counter,
}

/// The export loop: a batch when one is complete or every `interval`, until the sink closes
/// (then what is left is exported).
async fn run<E: SpanExporter>(exporter: &E, sink: &SpanSink, s: &Settings, c: &Counters) {
    static FAILED: LogLimiter = LogLimiter::new(1, Duration::from_secs(10));
    static FULL: LogLimiter = LogLimiter::new(1, Duration::from_secs(10));
    let scope = InstrumentationScope::builder(SCOPE)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut new_id = || loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    };
    let mut records = Vec::with_capacity(sink.batch);
    loop {
        if !sink.closed.load(Ordering::Acquire) {
            tokio::select! {
                _ = sink.ready.notified() => {}
                _ = tokio::time::sleep(s.interval) => {}
            }
        }
        let closing = sink.closed.load(Ordering::Acquire);
        loop {
            sink.take(&mut records);
            if records.is_empty() {
                break;
            }
            let complete = records.len() == sink.batch;
            let mut batch = Vec::with_capacity(records.len() * 5);
            for r in records.drain(..) {
                r.into_spans(&scope, &mut new_id, &mut batch);
            }
            let n = batch.len() as u64;
            let error = match tokio::time::timeout(s.timeout, exporter.export(batch)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {} ms", s.timeout.as_millis())),
            };
            match error {
                None => c.exported.increment(n),
                Some(error) => {
                    c.failed.increment(n);
                    if let Some(suppressed) = FAILED.allow() {
                        tracing::warn!(spans = n, %error, suppressed, "OTLP export failed; the spans are dropped");
                    }
                }
            }
            if !complete {
                break;
            }
        }
        let full = sink.unlogged_full.swap(0, Ordering::Relaxed);
        if full > 0
            && let Some(suppressed) = FULL.allow()
        {
            tracing::warn!(
                spans = full,
                suppressed,
                "OTLP export queue full (tracing.otlp.maxQueueSize): spans dropped"
            );
        }
        if closing {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_record() -> SpanRecord {
        let began = Instant::now();
        let queued_at = began + Duration::from_millis(1);
        let sent_at = began + Duration::from_millis(5);
        let head_at = began + Duration::from_millis(25);
        let end = began + Duration::from_millis(30);
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            head: Box::new(SpanStart {
                scheme: "https",
                version: Version::HTTP_2,
                peer: "10.0.0.9:40000".parse().unwrap(),
                host: None,
                user_agent: Some(HeaderValue::from_static("curl/8")),
                queued_at: Some(queued_at),
                connect_at: Some(sent_at - Duration::from_millis(1)),
                sent_at: Some(sent_at),
            }),
            method: Method::POST,
            uri: "https://ml.example.com:8443/api/v1/endpoint/demo/score?x=1"
                .parse()
                .unwrap(),
            request_id: HeaderValue::from_static("rid-1"),
            endpoint: Some("demo".into()),
            deployment: Some("blue".into()),
            pod: Some("10.0.0.12:5001".parse().unwrap()),
            pod_name: Some("blue-0".into()),
            status: 200,
            outcome: "ok",
            attempts: 1,
            pooled: Some(true),
            bytes_in: 16,
            bytes_out: 65,
            began,
            queue: Some(Duration::from_millis(2)),
            connect: Some(Duration::from_millis(1)),
            head_at: Some(head_at),
            end,
            end_wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        }
    }

    fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    fn spans(r: SpanRecord) -> Vec<SpanData> {
        let scope = InstrumentationScope::builder(SCOPE).build();
        let mut n = 0u8;
        let mut out = Vec::new();
        r.into_spans(
            &scope,
            &mut || {
                n += 1;
                [0, 0, 0, 0, 0, 0, 9, n]
            },
            &mut out,
        );
        out
    }

    #[test]
    fn a_request_becomes_a_server_span_with_its_phases_as_children() {
        let r = mk_record();
        assert_eq!(r.span_count(), 5);
        let end_wall = r.end_wall;
        let out = spans(r);
        let names: Vec<_> = out.iter().map(|s| &*s.name).collect();
        assert_eq!(
            names,
            [
                "queue",
                "connect",
                "head",
                "stream",
                "POST /api/v1/endpoint/{endpoint}/score"
            ]
        );
        let server = out.last().unwrap();
        assert_eq!(server.span_kind, SpanKind::Server);
        assert_eq!(server.span_context.span_id(), SpanId::from_bytes([2; 8]));
        assert_eq!(server.span_context.trace_id(), TraceId::from_bytes([1; 16]));
        assert_eq!(server.parent_span_id, SpanId::from_bytes([3; 8]));
        assert!(server.parent_span_is_remote);
        assert_eq!(server.end_time, end_wall);
        assert_eq!(
            end_wall.duration_since(server.start_time).unwrap(),
            Duration::from_millis(30)
        );
        let s = |k| attr(server, k).map(|v| v.as_str().into_owned());
        assert_eq!(s("http.request.method").as_deref(), Some("POST"));
        assert_eq!(
            s("url.path").as_deref(),
            Some("/api/v1/endpoint/demo/score")
        );
        assert_eq!(s("url.scheme").as_deref(), Some("https"));
        assert_eq!(s("server.address").as_deref(), Some("ml.example.com"));
        assert_eq!(attr(server, "server.port"), Some(&Value::I64(8443)));
        assert_eq!(s("network.protocol.version").as_deref(), Some("2"));
        assert_eq!(s("user_agent.original").as_deref(), Some("curl/8"));
        assert_eq!(
            attr(server, "http.response.status_code"),
            Some(&Value::I64(200))
        );
        assert_eq!(s("infergate.endpoint").as_deref(), Some("demo"));
        assert_eq!(s("infergate.deployment").as_deref(), Some("blue"));
        assert_eq!(s("infergate.pod").as_deref(), Some("10.0.0.12:5001"));
        assert_eq!(s("infergate.pod.name").as_deref(), Some("blue-0"));
        assert_eq!(attr(server, "error.type"), None);
        assert_eq!(server.status, Status::Unset);
        // The phases: children of the router's span, on the same clock as the access log's.
        for child in &out[..4] {
            assert_eq!(child.parent_span_id, SpanId::from_bytes([2; 8]));
            assert_eq!(child.span_kind, SpanKind::Internal);
            assert_eq!(child.span_context.trace_id(), TraceId::from_bytes([1; 16]));
        }
        let dur = |s: &SpanData| s.end_time.duration_since(s.start_time).unwrap();
        let ms = Duration::from_millis;
        assert_eq!(
            out[..4].iter().map(dur).collect::<Vec<_>>(),
            [ms(2), ms(1), ms(20), ms(5)]
        );
        // Connect ends when the request went out, where the head phase starts.
        assert_eq!(out[1].end_time, out[2].start_time);
        assert_eq!(attr(&out[1], "infergate.pooled"), Some(&Value::Bool(true)));
    }

    #[test]
    fn a_router_made_error_has_no_phases_it_did_not_reach_and_an_error_status() {
        let mut r = mk_record();
        r.head.connect_at = None;
        r.head.sent_at = None;
        r.connect = None;
        r.head_at = None;
        r.status = 503;
        r.outcome = "QueueTimeout";
        r.pod = None;
        r.method = Method::from_bytes(b"BREW").unwrap();
        let out = spans(r);
        assert_eq!(out.len(), 2, "queue and the request");
        let server = &out[1];
        assert_eq!(server.name, "HTTP /api/v1/endpoint/{endpoint}/score");
        assert_eq!(
            server.status,
            Status::Error {
                description: "QueueTimeout".into()
            }
        );
        assert_eq!(
            attr(server, "error.type").map(Value::as_str).as_deref(),
            Some("QueueTimeout")
        );
        assert_eq!(
            attr(server, "http.request.method")
                .map(Value::as_str)
                .as_deref(),
            Some("_OTHER")
        );
        assert!(attr(server, "infergate.pod").is_none());

        // Not routed: no route, the span is named by the method; no parent: a root span.
        let mut r = mk_record();
        r.endpoint = None;
        r.parent_id = None;
        r.uri = "/nope".parse().unwrap();
        let out = spans(r);
        let server = out.last().unwrap();
        assert_eq!(server.name, "POST");
        assert_eq!(server.parent_span_id, SpanId::INVALID);
        assert!(attr(server, "http.route").is_none());

        // A connection that never opened: the connect phase lasts what connecting took.
        let mut r = mk_record();
        r.head.sent_at = None;
        r.head_at = None;
        r.status = 502;
        r.outcome = "UpstreamConnectFailed";
        let out = spans(r);
        let names: Vec<_> = out.iter().map(|s| &*s.name).collect();
        assert_eq!(names[..2], ["queue", "connect"]);
        assert_eq!(
            out[1].end_time.duration_since(out[1].start_time).unwrap(),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("a.b:80"), Some(("a.b", Some(80))));
        assert_eq!(split_authority("a.b"), Some(("a.b", None)));
        assert_eq!(split_authority("[::1]:8443"), Some(("::1", Some(8443))));
        assert_eq!(split_authority("[::1]"), Some(("::1", None)));
        assert_eq!(split_authority(""), None);
        assert_eq!(
            route_template("/api/v1/service/x/swagger.json"),
            Some("/api/v1/service/{endpoint}/swagger.json")
        );
        assert_eq!(route_template("/other"), None);
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_batches_wake_the_exporter_once() {
        let registry = Registry::new();
        let sink = SpanSink::new(3, 2, &registry);
        for _ in 0..5 {
            sink.push(mk_record());
        }
        let text = registry.render();
        // Two records of five spans each did not fit.
        assert!(
            text.contains("infergate_otlp_spans_dropped_total{reason=\"queue_full\"} 10"),
            "{text}"
        );
        let mut out = Vec::new();
        sink.take(&mut out);
        assert_eq!(out.len(), 2, "one batch at a time");
        out.clear();
        sink.take(&mut out);
        assert_eq!(out.len(), 1);
    }
}
