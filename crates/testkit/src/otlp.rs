//! A fake OpenTelemetry collector on 127.0.0.1 that decodes what it receives: OTLP/HTTP with
//! protobuf bodies (`POST /v1/traces`, `application/x-protobuf`) and OTLP/gRPC
//! (`POST /opentelemetry.proto.collector.trace.v1.TraceService/Export` over HTTP/2 without TLS,
//! length-prefixed messages, `grpc-status` in the trailers), on one port.
//!
//! Every export is decoded into the OTLP messages (`opentelemetry-proto`'s prost types) and kept
//! with its headers ([`FakeCollector::exports`], [`FakeCollector::spans`]); a test waits for what
//! it expects with [`FakeCollector::wait_for`]. [`FakeCollector::fail_with`] makes it answer
//! every export with an error status instead. [`FakeCollector::start_counting`] keeps only the
//! counts (for load runs).
//!
//! Two collectors that are down, for the failure paths: [`refusing_url`] (a port nothing listens
//! on) and [`Blackhole`] (accepts connections and never answers).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The gRPC method a trace export calls.
pub const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The OTLP/HTTP path of trace exports.
pub const HTTP_TRACES_PATH: &str = "/v1/traces";

/// How an export arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/HTTP, protobuf body.
    HttpProtobuf,
    /// OTLP/gRPC.
    Grpc,
}

/// One export request, decoded.
#[derive(Debug, Clone)]
pub struct Export {
    /// How it came.
    pub transport: Transport,
    /// Its request headers (gRPC metadata included).
    pub headers: HeaderMap,
    /// The message.
    pub request: ExportTraceServiceRequest,
}

impl Export {
    /// The spans in it, each with its resource's attributes.
    pub fn spans(&self) -> impl Iterator<Item = ReceivedSpan> + '_ {
        self.request.resource_spans.iter().flat_map(|rs| {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| r.attributes.clone())
                .unwrap_or_default();
            rs.scope_spans.iter().flat_map(move |ss| {
                let resource = resource.clone();
                let scope = ss
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                ss.spans.iter().map(move |span| ReceivedSpan {
                    span: span.clone(),
                    resource: resource.clone(),
                    scope: scope.clone(),
                })
            })
        })
    }
}

/// A span as the collector got it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The span.
    pub span: Span,
    /// Its resource's attributes.
    pub resource: Vec<KeyValue>,
    /// Its instrumentation scope's name.
    pub scope: String,
}

/// The value of attribute `key`, as text (strings as they are, numbers and booleans written
/// out), if present.
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(any_value_text(v))
}

fn any_value_text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl ReceivedSpan {
    /// The value of the span's attribute `key`, as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
    /// The value of the resource's attribute `key`, as text.
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        attr(&self.resource, key)
    }
    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    /// The span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    /// The parent span id, 16 lowercase hex digits (empty for a root span).
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug, Default)]
struct State {
    keep: bool,
    exports: Mutex<Vec<Export>>,
    /// Export requests received (answered or not), and the spans in the decoded ones.
    requests: AtomicU64,
    spans: AtomicU64,
    /// 0: answer success; else this HTTP status (HTTP) / gRPC `UNAVAILABLE` (gRPC).
    fail_status: AtomicU16,
    changed: Notify,
}

/// The fake collector; stops when dropped.
#[derive(Debug)]
pub struct FakeCollector {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeCollector {
    /// Starts a collector on 127.0.0.1:0 that keeps every export.
    pub async fn start() -> FakeCollector {
        Self::serve("127.0.0.1:0".parse().expect("an address"), true)
            .await
            .expect("127.0.0.1:0 binds")
    }

    /// Starts a collector on `addr` that decodes every export but keeps only the counts.
    pub async fn start_counting(addr: SocketAddr) -> std::io::Result<FakeCollector> {
        Self::serve(addr, false).await
    }

    async fn serve(addr: SocketAddr, keep: bool) -> std::io::Result<FakeCollector> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            keep,
            ..State::default()
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(&s, req).await) }
                    });
                    // HTTP/1.1 for OTLP/HTTP, HTTP/2 with prior knowledge for gRPC.
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(FakeCollector { addr, state, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL (`http://127.0.0.1:PORT`), as `tracing.otlp.endpoint` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every export received and decoded (none with [`FakeCollector::start_counting`]).
    pub fn exports(&self) -> Vec<Export> {
        self.state.exports.lock().clone()
    }

    /// Every span received, in order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state
            .exports
            .lock()
            .iter()
            .flat_map(|e| e.spans().collect::<Vec<_>>())
            .collect()
    }

    /// Export requests received so far (answered with success or not).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Acquire)
    }

    /// Spans in the export requests decoded so far.
    pub fn span_count(&self) -> u64 {
        self.state.spans.load(Ordering::Acquire)
    }

    /// From now on every export is answered with `status` (HTTP) or `UNAVAILABLE` (gRPC);
    /// `None`: success again.
    pub fn fail_with(&self, status: Option<StatusCode>) {
        self.state
            .fail_status
            .store(status.map_or(0, |s| s.as_u16()), Ordering::Release);
    }

    /// Waits until the spans received satisfy `done` and returns them; panics with what did
    /// arrive after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.state.changed.notified();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let spans = self.spans();
                if done(&spans) {
                    return spans;
                }
                panic!(
                    "the collector did not get the expected spans within {timeout:?}; it got {} in {} exports: {:#?}",
                    spans.len(),
                    self.requests(),
                    spans.iter().map(|s| &s.span.name).collect::<Vec<_>>()
                );
            }
        }
    }
}

async fn handle(s: &State, req: Request<Incoming>) -> Response<Body> {
    let transport = match (req.method(), req.uri().path()) {
        (&http::Method::POST, HTTP_TRACES_PATH) => Transport::HttpProtobuf,
        (&http::Method::POST, GRPC_EXPORT_PATH) => Transport::Grpc,
        _ => return plain(StatusCode::NOT_FOUND, "not an OTLP trace export"),
    };
    s.requests.fetch_add(1, Ordering::AcqRel);
    let (parts, body) = req.into_parts();
    let ctype = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let expected = match transport {
        Transport::HttpProtobuf => "application/x-protobuf",
        Transport::Grpc => "application/grpc",
    };
    if !ctype.starts_with(expected) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("content-type {ctype:?}, expected {expected}"),
        );
    }
    let Ok(bytes) = body.collect().await.map(|b| b.to_bytes()) else {
        return plain(StatusCode::BAD_REQUEST, "body read failed");
    };
    let message = match transport {
        Transport::HttpProtobuf => Ok(bytes),
        Transport::Grpc => grpc_unframe(bytes),
    };
    let decoded = message.and_then(|m| {
        ExportTraceServiceRequest::decode(m)
            .map_err(|e| format!("not an ExportTraceServiceRequest: {e}"))
    });
    let request = match decoded {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &e),
    };
    let n: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let fail = s.fail_status.load(Ordering::Acquire);
    if fail == 0 {
        s.spans.fetch_add(n as u64, Ordering::AcqRel);
        if s.keep {
            s.exports.lock().push(Export {
                transport,
                headers: parts.headers,
                request,
            });
        }
    }
    s.changed.notify_waiters();
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    match (transport, fail) {
        (Transport::HttpProtobuf, 0) => {
            let mut r = Response::new(full(answer));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            );
            r
        }
        (Transport::HttpProtobuf, status) => plain(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "failing on purpose",
        ),
        (Transport::Grpc, 0) => grpc_answer(Some(answer), "0"),
        // 14: UNAVAILABLE.
        (Transport::Grpc, _) => grpc_answer(None, "14"),
    }
}

/// The one message of a gRPC request body (5-byte prefix: compressed flag, length).
fn grpc_unframe(mut b: Bytes) -> Result<Bytes, String> {
    if b.len() < 5 {
        return Err("a gRPC body shorter than its prefix".into());
    }
    let compressed = b.get_u8();
    let len = b.get_u32() as usize;
    if compressed != 0 {
        return Err("a compressed gRPC message".into());
    }
    if b.len() != len {
        return Err(format!(
            "a gRPC message of {} bytes, prefix says {len}",
            b.len()
        ));
    }
    Ok(b)
}

fn grpc_answer(message: Option<Vec<u8>>, status: &'static str) -> Response<Body> {
    let mut frames = Vec::new();
    if let Some(m) = message {
        let mut buf = BytesMut::with_capacity(5 + m.len());
        buf.put_u8(0);
        buf.put_u32(m.len() as u32);
        buf.put_slice(&m);
        frames.push(Ok(Frame::data(buf.freeze())));
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    frames.push(Ok(Frame::trailers(trailers)));
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let mut r = Response::new(UnsyncBoxBody::new(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

fn full(b: impl Into<Bytes>) -> Body {
    UnsyncBoxBody::new(Full::new(b.into()))
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{text}\n")));
    *r.status_mut() = status;
    r
}

/// A URL of a port on 127.0.0.1 that nothing listens on (bound, then closed): connections to it
/// are refused.
pub async fn refusing_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = l.local_addr().expect("an address");
    drop(l);
    format!("http://{addr}")
}

/// A collector that accepts connections and never answers (nor reads); stops when dropped.
#[derive(Debug)]
pub struct Blackhole {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Blackhole {
    /// Starts one on 127.0.0.1:0.
    pub async fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("an address");
        let accepted = Arc::new(AtomicU64::new(0));
        let a = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::AcqRel);
                // Bounded: a test makes a few connections.
                if held.len() < 64 {
                    held.push(tcp);
                }
            }
        });
        Blackhole {
            addr,
            accepted,
            task,
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_frames_unwrap_and_bad_ones_are_refused() {
        let mut b = BytesMut::new();
        b.put_u8(0);
        b.put_u32(3);
        b.put_slice(b"abc");
        assert_eq!(
            grpc_unframe(b.freeze()).unwrap(),
            Bytes::from_static(b"abc")
        );
        assert!(grpc_unframe(Bytes::from_static(b"\0\0\0\0\x09abc")).is_err());
        assert!(grpc_unframe(Bytes::from_static(b"\x01\0\0\0\x03abc")).is_err());
        assert!(grpc_unframe(Bytes::from_static(b"\0\0")).is_err());
    }
}
