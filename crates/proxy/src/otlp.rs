//! OpenTelemetry span export (`tracing.otlp`): one SERVER span per sampled request, with a child
//! span per phase (`queue`, `connect`, `head`, `stream`), sent to a collector in batches over
//! OTLP/HTTP (protobuf) or OTLP/gRPC.
//!
//! The request path only records. When a sampled request's context is finished, a
//! [`SpanRecord`] (the ids, the instants the access log's durations were measured between, names
//! shared with the route table) is pushed onto a bounded queue under a short lock and never waits:
//! a full queue drops the record and counts its spans (`infergate_otlp_spans_dropped_total
//! {reason="queue_full"}`). A thread of its own (a single-threaded runtime, so that encoding and a
//! slow or absent collector touch no request's task) takes batches, writes them as one OTLP
//! export request (`wire.rs`) and sends it (`transport.rs`: hyper, retries with backoff), within
//! `exportTimeoutMs`; the spans of a failed export are dropped and counted
//! (`reason="export_failed"`). Memory is bounded by `maxQueueSize` records waiting plus one batch
//! in flight.
//!
//! The OpenTelemetry SDK is not used. Its `BatchSpanProcessor`'s drop count cannot be read
//! (it is logged once, at shutdown), spans lost to a failed export are not counted, and its span
//! ids come from its tracer while the router's is already in the `traceparent` sent to the pod;
//! and a first version that built the SDK's `SpanData` and exported it with `opentelemetry-otlp`
//! cost 13 µs of CPU per request (+32%) against a target of 10% (see BENCHMARKS.md, "Tracing
//! cost"): every attribute was allocated twice, converted, grouped and encoded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri, Version, header};
use infergate_config::{OtlpConfig, OtlpProtocol};
use infergate_metrics::{Counter, LogLimiter, Registry};
use infergate_routing::Action;
use parking_lot::Mutex;
use rand::{RngCore as _, SeedableRng as _};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::forward::ConnInfo;
use crate::metrics::{OTLP_SPANS_DROPPED_TOTAL, OTLP_SPANS_EXPORTED_TOTAL};

mod transport;
mod wire;

use transport::Transport;
use wire::{Batch, KIND_INTERNAL, KIND_SERVER, SpanFields, Val};

/// The instrumentation scope of the router's spans.
const SCOPE: &str = "infergate";

// === impl SpanStart ===

/// What a sampled request's span needs beyond what its context holds anyway: read from the
/// request head, and the start of three phases. Boxed in the context only for requests that are
/// exported, so that the others carry one empty pointer.
#[derive(Debug)]
pub(crate) struct SpanStart {
    scheme: &'static str,
    version: Version,
    peer: SocketAddr,
    /// The host (the `Host` header, else the URI's authority), the user agent, the path and the
    /// request id, copied out of the request head in one allocation: the connection's read
    /// buffer, which header values and the URI share, is not held until the export.
    text: String,
    /// Where each of those ends in `text` (an absent one is empty).
    ends: [u32; 4],
    /// When the request began to wait for a pod slot (the queue phase's start).
    pub(crate) queued_at: Option<Instant>,
    /// When the first attempt began to get a connection (the connect phase's start).
    pub(crate) connect_at: Option<Instant>,
    /// When the last attempt's request went to the pod, its connection in hand (the end of the
    /// connect phase, the start of the head phase).
    pub(crate) sent_at: Option<Instant>,
}

/// A header value as text ("" when absent or not visible ASCII).
fn text_of(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("")
}

impl SpanStart {
    /// The request head's part of the span; the text's buffer is one the export has used
    /// before, when `sink` has one to spare.
    pub(crate) fn capture(
        parts: &http::request::Parts,
        uri: &Uri,
        request_id: &HeaderValue,
        conn: &ConnInfo,
        sink: Option<&SpanSink>,
    ) -> Box<SpanStart> {
        let host = match parts.headers.get(header::HOST) {
            Some(h) => text_of(Some(h)),
            None => uri.authority().map_or("", |a| a.as_str()),
        };
        let pieces = [
            host,
            text_of(parts.headers.get(header::USER_AGENT)),
            uri.path(),
            text_of(Some(request_id)),
        ];
        let mut text = sink.and_then(SpanSink::spare_text).unwrap_or_default();
        text.reserve(pieces.iter().map(|p| p.len()).sum());
        let mut ends = [0; 4];
        for (end, piece) in ends.iter_mut().zip(pieces) {
            text.push_str(piece);
            *end = text.len() as u32;
        }
        Box::new(SpanStart {
            scheme: conn.proto,
            version: parts.version,
            peer: conn.remote,
            text,
            ends,
            queued_at: None,
            connect_at: None,
            sent_at: None,
        })
    }

    fn piece(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p] as usize);
        &self.text[start..self.ends[i] as usize]
    }
    fn host(&self) -> Option<&str> {
        Some(self.piece(0)).filter(|s| !s.is_empty())
    }
    fn user_agent(&self) -> Option<&str> {
        Some(self.piece(1)).filter(|s| !s.is_empty())
    }
    fn path(&self) -> &str {
        self.piece(2)
    }
    fn request_id(&self) -> &str {
        self.piece(3)
    }
}

/// The wall clock at one instant of the monotonic clock: places the records of a batch in time
/// (one clock read per batch, none per request).
#[derive(Debug, Clone, Copy)]
struct Anchor {
    at: Instant,
    unix_ns: u64,
}

impl Anchor {
    fn now() -> Anchor {
        let unix_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Anchor {
            at: Instant::now(),
            unix_ns,
        }
    }

    /// `t` in nanoseconds since the Unix epoch.
    fn unix_ns(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.at) {
            Some(after) => self.unix_ns + after.as_nanos() as u64,
            None => self.unix_ns.saturating_sub((self.at - t).as_nanos() as u64),
        }
    }
}

// === impl SpanRecord ===

/// One finished, sampled request as it waits for export: built when its context is dropped,
/// from what the context measured (no clock is read for it).
#[derive(Debug)]
pub(crate) struct SpanRecord {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent_id: Option<[u8; 8]>,
    pub(crate) head: SpanStart,
    pub(crate) method: Method,
    pub(crate) endpoint: Option<Arc<str>>,
    pub(crate) deployment: Option<Arc<str>>,
    pub(crate) pod: Option<SocketAddr>,
    pub(crate) pod_name: Option<Arc<str>>,
    pub(crate) status: u16,
    pub(crate) outcome: &'static str,
    pub(crate) attempts: u8,
    pub(crate) pooled: Option<bool>,
    /// The request head's arrival.
    pub(crate) began: Instant,
    pub(crate) queue: Option<Duration>,
    pub(crate) connect: Option<Duration>,
    pub(crate) head_at: Option<Instant>,
    pub(crate) end: Instant,
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

    /// Writes the request's phase spans (INTERNAL) and its SERVER span into `batch`; `new_id`
    /// gives the phase spans' ids.
    fn encode(&self, batch: &mut Batch, clock: &Anchor, new_id: &mut impl FnMut() -> [u8; 8]) {
        for (name, from, to) in self.phases() {
            let id = new_id();
            let f = SpanFields {
                trace_id: &self.trace_id,
                span_id: &id,
                parent_id: Some(&self.span_id),
                parent_is_remote: false,
                name: (name, None),
                kind: KIND_INTERNAL,
                start_ns: clock.unix_ns(from),
                end_ns: clock.unix_ns(to),
                error: None,
            };
            batch.begin_span(&f);
            if name == "connect"
                && let Some(p) = self.pooled
            {
                batch.attr("infergate.pooled", Val::Bool(p));
            }
            batch.end_span(&f);
        }
        let route = self
            .endpoint
            .as_ref()
            .and_then(|_| route_template(self.head.path()));
        let method = known_method(&self.method);
        let f = SpanFields {
            trace_id: &self.trace_id,
            span_id: &self.span_id,
            parent_id: self.parent_id.as_ref(),
            parent_is_remote: self.parent_id.is_some(),
            name: (method.unwrap_or("HTTP"), route),
            kind: KIND_SERVER,
            start_ns: clock.unix_ns(self.began),
            end_ns: clock.unix_ns(self.end),
            error: (self.status >= 500).then_some(self.outcome),
        };
        batch.begin_span(&f);
        self.attributes(batch, method, route);
        batch.end_span(&f);
    }

    /// The SERVER span's attributes: HTTP semantic conventions (the required and recommended
    /// ones; the opt-in body sizes are in the access log), then the router's own. The outcome
    /// is `error.type` when it is not `ok`.
    fn attributes(&self, b: &mut Batch, method: Option<&'static str>, route: Option<&'static str>) {
        let h = &self.head;
        match method {
            Some(m) => b.attr("http.request.method", Val::Str(m)),
            None => {
                b.attr("http.request.method", Val::Str("_OTHER"));
                b.attr(
                    "http.request.method_original",
                    Val::Str(self.method.as_str()),
                );
            }
        }
        b.attr("url.scheme", Val::Str(h.scheme));
        b.attr("url.path", Val::Str(h.path()));
        if let Some(r) = route {
            b.attr("http.route", Val::Str(r));
        }
        if self.status != 0 {
            b.attr(
                "http.response.status_code",
                Val::Int(i64::from(self.status)),
            );
        }
        if let Some((host, port)) = h.host().and_then(split_authority) {
            b.attr("server.address", Val::Str(host));
            if let Some(p) = port {
                b.attr("server.port", Val::Int(i64::from(p)));
            }
        }
        b.attr(
            "network.protocol.version",
            Val::Str(protocol_version(h.version)),
        );
        b.attr_addr("network.peer.address", h.peer.ip(), None);
        if let Some(ua) = h.user_agent() {
            b.attr("user_agent.original", Val::Str(ua));
        }
        if self.outcome != "ok" {
            b.attr("error.type", Val::Str(self.outcome));
        } else if self.status >= 500 {
            b.attr_display("error.type", self.status);
        }
        if !h.request_id().is_empty() {
            b.attr("infergate.request_id", Val::Str(h.request_id()));
        }
        if let Some(e) = &self.endpoint {
            b.attr("infergate.endpoint", Val::Str(e));
        }
        if let Some(d) = &self.deployment {
            b.attr("infergate.deployment", Val::Str(d));
        }
        if let Some(p) = self.pod {
            b.attr_addr("infergate.pod", p.ip(), Some(p.port()));
        }
        if let Some(n) = &self.pod_name {
            b.attr("infergate.pod.name", Val::Str(n));
        }
        if self.attempts > 0 {
            b.attr("infergate.attempts", Val::Int(i64::from(self.attempts)));
        }
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
        (false, Action::Oip) => "/api/v1/endpoint/{endpoint}/v2/*",
        (true, Action::Oip) => "/api/v1/service/{endpoint}/v2/*",
        // Told by its content-type, never by its path.
        (_, Action::Grpc) => return None,
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
    /// Text buffers of exported records, for the next requests (a buffer is allocated and freed
    /// by one thread, not made by the requests' and freed by the export's).
    spare: Mutex<Vec<String>>,
}

/// A record's text buffer is kept for reuse when at most this large.
const SPARE_TEXT_BYTES: usize = 1024;

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
            spare: Mutex::new(Vec::new()),
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

    /// An empty text buffer used before, if one is spare.
    fn spare_text(&self) -> Option<String> {
        self.spare.lock().pop()
    }

    /// Keeps the exported records' text buffers for reuse (as many as the queue holds).
    fn recycle(&self, texts: &mut Vec<String>) {
        let mut spare = self.spare.lock();
        let room = self.max_queue.saturating_sub(spare.len());
        spare.extend(texts.drain(..).take(room));
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

// === impl Exporter ===

/// The `service.instance.id` of this process: the pod's name (`POD_NAME`, the downward API's
/// `metadata.name`), else the host name, else a random id.
fn instance_id() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The `Resource` of the router's spans, encoded once.
fn resource() -> Vec<u8> {
    let instance = instance_id();
    let mut attrs = vec![
        ("service.name", "infergate".to_string()),
        ("service.version", env!("CARGO_PKG_VERSION").to_string()),
        ("service.instance.id", instance),
    ];
    for (var, key) in [
        ("POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
    ] {
        if let Some(v) = std::env::var(var).ok().filter(|v| !v.is_empty()) {
            attrs.push((key, v));
        }
    }
    let pairs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    wire::resource(&pairs)
}

/// The export thread's part: where spans go and how.
#[derive(Debug)]
struct Export {
    transport: Transport,
    grpc: bool,
    interval: Duration,
    timeout: Duration,
    resource: Vec<u8>,
    scope: Vec<u8>,
    exported: Counter,
    failed: Counter,
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

impl Exporter {
    /// Starts the export thread for `o`, counting in `registry`. Fails when the collector's
    /// address cannot be used (the message says why).
    pub(crate) fn start(o: &OtlpConfig, registry: &Registry) -> Result<Exporter, String> {
        let export = Export {
            transport: Transport::new(o)?,
            grpc: o.protocol == OtlpProtocol::Grpc,
            interval: Duration::from_millis(o.export_interval_ms),
            timeout: Duration::from_millis(o.export_timeout_ms),
            resource: resource(),
            scope: wire::scope(SCOPE, env!("CARGO_PKG_VERSION")),
            exported: registry.counter(OTLP_SPANS_EXPORTED_TOTAL, &[]),
            failed: registry.counter(OTLP_SPANS_DROPPED_TOTAL, &[("reason", "export_failed")]),
        };
        let sink = Arc::new(SpanSink::new(
            o.max_queue_size,
            o.max_export_batch_size,
            registry,
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the export runtime: {e}"))?;
        let (done_tx, done_rx) = oneshot::channel();
        let thread_sink = sink.clone();
        std::thread::Builder::new()
            .name("infergate-otlp".into())
            .spawn(move || {
                rt.block_on(run(export, &thread_sink));
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the export thread: {e}"))?;
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

/// The export loop: a batch when one is complete or every `interval`, until the sink closes
/// (then what is left is exported).
async fn run(mut x: Export, sink: &SpanSink) {
    static FAILED: LogLimiter = LogLimiter::new(1, Duration::from_secs(10));
    static FULL: LogLimiter = LogLimiter::new(1, Duration::from_secs(10));
    // Phase span ids: a fast generator seeded from the thread's (ids need to be unique, not
    // unpredictable).
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    let mut new_id = || loop {
        let id = rng.next_u64().to_ne_bytes();
        if id != [0; 8] {
            return id;
        }
    };
    let mut texts = Vec::with_capacity(sink.batch);
    let mut records = Vec::with_capacity(sink.batch);
    let mut batch = Batch::default();
    loop {
        if !sink.closed.load(Ordering::Acquire) {
            tokio::select! {
                _ = sink.ready.notified() => {}
                _ = tokio::time::sleep(x.interval) => {}
            }
        }
        let closing = sink.closed.load(Ordering::Acquire);
        loop {
            sink.take(&mut records);
            if records.is_empty() {
                break;
            }
            let complete = records.len() == sink.batch;
            let clock = Anchor::now();
            for r in records.drain(..) {
                r.encode(&mut batch, &clock, &mut new_id);
                let mut text = r.head.text;
                if text.capacity() <= SPARE_TEXT_BYTES {
                    text.clear();
                    texts.push(text);
                }
            }
            sink.recycle(&mut texts);
            let n = batch.len();
            let (head, spans) = batch.finish(&x.resource, &x.scope, x.grpc);
            let deadline = Instant::now() + x.timeout;
            match x
                .transport
                .export((head.into(), spans.into()), deadline)
                .await
            {
                Ok(()) => x.exported.increment(n),
                Err(failure) => {
                    x.failed.increment(n);
                    if let Some(suppressed) = FAILED.allow() {
                        tracing::warn!(
                            spans = n,
                            error = %failure.reason,
                            suppressed,
                            "OTLP export failed; the spans are dropped"
                        );
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
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    /// 1e15 ns after the epoch, the wall clock when a test record ends.
    const END_NS: u64 = 1_000_000_000_000_000;

    fn mk_record() -> SpanRecord {
        let began = Instant::now();
        let queued_at = began + Duration::from_millis(1);
        let sent_at = began + Duration::from_millis(5);
        let head_at = began + Duration::from_millis(25);
        let end = began + Duration::from_millis(30);
        let mut parts =
            http::Request::post("https://ml.example.com:8443/api/v1/endpoint/demo/score?x=1")
                .header("user-agent", "curl/8")
                .version(Version::HTTP_2)
                .body(())
                .unwrap()
                .into_parts()
                .0;
        let uri = std::mem::take(&mut parts.uri);
        let conn = ConnInfo {
            remote: "10.0.0.9:40000".parse().unwrap(),
            proto: "https",
        };
        let mut head = *SpanStart::capture(
            &parts,
            &uri,
            &HeaderValue::from_static("rid-1"),
            &conn,
            None,
        );
        head.queued_at = Some(queued_at);
        head.connect_at = Some(sent_at - Duration::from_millis(1));
        head.sent_at = Some(sent_at);
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            head,
            method: Method::POST,
            endpoint: Some("demo".into()),
            deployment: Some("blue".into()),
            pod: Some("10.0.0.12:5001".parse().unwrap()),
            pod_name: Some("blue-0".into()),
            status: 200,
            outcome: "ok",
            attempts: 1,
            pooled: Some(true),
            began,
            queue: Some(Duration::from_millis(2)),
            connect: Some(Duration::from_millis(1)),
            head_at: Some(head_at),
            end,
        }
    }

    /// The record's spans as the reference types decode them.
    fn spans(r: SpanRecord) -> Vec<Span> {
        let mut n = 0u8;
        let mut batch = Batch::default();
        let clock = Anchor {
            at: r.end,
            unix_ns: END_NS,
        };
        r.encode(&mut batch, &clock, &mut || {
            n += 1;
            [0, 0, 0, 0, 0, 0, 9, n]
        });
        let (head, spans) = batch.finish(&resource(), &wire::scope(SCOPE, "1"), false);
        let body = [head, spans].concat();
        let mut req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        std::mem::take(&mut req.resource_spans[0].scope_spans[0].spans)
    }

    fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a any_value::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)?
            .value
            .as_ref()?
            .value
            .as_ref()
    }

    fn text(s: &Span, key: &str) -> Option<String> {
        match attr(s, key)? {
            any_value::Value::StringValue(v) => Some(v.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            any_value::Value::BoolValue(b) => Some(b.to_string()),
            other => Some(format!("{other:?}")),
        }
    }

    #[test]
    fn a_request_becomes_a_server_span_with_its_phases_as_children() {
        let r = mk_record();
        assert_eq!(r.span_count(), 5);
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
        assert_eq!(server.kind, 2, "SERVER");
        assert_eq!(server.span_id, [2; 8]);
        assert_eq!(server.trace_id, [1; 16]);
        assert_eq!(server.parent_span_id, [3; 8]);
        assert_eq!(server.flags, 0x301, "sampled, the parent is remote");
        assert_eq!(server.end_time_unix_nano, END_NS);
        assert_eq!(
            server.end_time_unix_nano - server.start_time_unix_nano,
            30_000_000
        );
        let t = |k| text(server, k);
        for (key, want) in [
            ("http.request.method", "POST"),
            ("url.path", "/api/v1/endpoint/demo/score"),
            ("url.scheme", "https"),
            ("http.route", "/api/v1/endpoint/{endpoint}/score"),
            ("server.address", "ml.example.com"),
            ("server.port", "8443"),
            ("network.protocol.version", "2"),
            ("network.peer.address", "10.0.0.9"),
            ("user_agent.original", "curl/8"),
            ("http.response.status_code", "200"),
            ("infergate.endpoint", "demo"),
            ("infergate.deployment", "blue"),
            ("infergate.pod", "10.0.0.12:5001"),
            ("infergate.pod.name", "blue-0"),
            ("infergate.attempts", "1"),
            ("infergate.request_id", "rid-1"),
        ] {
            assert_eq!(t(key).as_deref(), Some(want), "{key}");
        }
        assert!(matches!(
            attr(server, "http.response.status_code"),
            Some(any_value::Value::IntValue(200))
        ));
        assert_eq!(t("error.type"), None);
        assert!(server.status.is_none());
        // The phases: children of the router's span, on the same clock as the access log's.
        for child in &out[..4] {
            assert_eq!(child.parent_span_id, [2; 8]);
            assert_eq!(child.kind, 1, "INTERNAL");
            assert_eq!(child.trace_id, [1; 16]);
            assert_eq!(child.flags, 0x101);
        }
        let dur = |s: &Span| s.end_time_unix_nano - s.start_time_unix_nano;
        assert_eq!(
            out[..4].iter().map(dur).collect::<Vec<_>>(),
            [2_000_000, 1_000_000, 20_000_000, 5_000_000]
        );
        // Connect ends when the request went out, where the head phase starts.
        assert_eq!(out[1].end_time_unix_nano, out[2].start_time_unix_nano);
        assert_eq!(text(&out[1], "infergate.pooled").as_deref(), Some("true"));
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
        let status = server.status.as_ref().unwrap();
        assert_eq!((status.code, &*status.message), (2, "QueueTimeout"));
        assert_eq!(text(server, "error.type").as_deref(), Some("QueueTimeout"));
        assert_eq!(
            text(server, "http.request.method").as_deref(),
            Some("_OTHER")
        );
        assert_eq!(
            text(server, "http.request.method_original").as_deref(),
            Some("BREW")
        );
        assert!(attr(server, "infergate.pod").is_none());

        // Not routed: no route, the span is named by the method; no parent: a root span.
        let mut r = mk_record();
        r.endpoint = None;
        r.parent_id = None;
        let parts = http::Request::get("/nope").body(()).unwrap().into_parts().0;
        let conn = ConnInfo {
            remote: "10.0.0.9:40000".parse().unwrap(),
            proto: "http",
        };
        r.head = *SpanStart::capture(
            &parts,
            &parts.uri,
            &HeaderValue::from_static(""),
            &conn,
            None,
        );
        let out = spans(r);
        let server = out.last().unwrap();
        assert_eq!(server.name, "POST");
        assert!(server.parent_span_id.is_empty());
        assert_eq!(server.flags, 0x101);
        assert!(attr(server, "http.route").is_none());
        assert!(attr(server, "server.address").is_none());
        assert!(attr(server, "user_agent.original").is_none());
        assert!(attr(server, "infergate.request_id").is_none());
        assert_eq!(text(server, "url.path").as_deref(), Some("/nope"));

        // A connection that never opened: the connect phase lasts what connecting took.
        let mut r = mk_record();
        r.head.sent_at = None;
        r.head_at = None;
        r.status = 502;
        r.outcome = "UpstreamConnectFailed";
        let out = spans(r);
        let names: Vec<_> = out.iter().map(|s| &*s.name).collect();
        assert_eq!(
            names,
            ["queue", "connect", "POST /api/v1/endpoint/{endpoint}/score"]
        );
        assert_eq!(
            out[1].end_time_unix_nano - out[1].start_time_unix_nano,
            1_000_000
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
