//! The response side: the request's context (owned for the whole request and finished exactly
//! once, on drop: counted, timed, logged, slot freed), the body the router answers with, and the
//! edge where a pod's answer or a [`ProxyError`] becomes the client's response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, Uri, header};
use http_body::{Body, Frame, SizeHint};
use infergate_balance::PodState;
use infergate_metrics::Gauge;
use tokio::time::{Instant, Sleep};

use crate::body::{BoxError, RequestShared};
use crate::deployment::{DeploymentState, Slot, StatusCounters};
use crate::error::ProxyError;
use crate::headers::{
    AZUREML_MODEL_DEPLOYMENT, X_MS_CLIENT_REQUEST_ID, X_REQUEST_ID, strip_hop_by_hop,
};
use crate::otlp::{SpanRecord, SpanSink, SpanStart};
use crate::trace::TRACEPARENT;
use crate::upstream::UpstreamBody;
use crate::watchdog::{self, Side, StreamTimer};

/// What every request reports to, whatever it became: the in-flight gauge, and the status
/// counters of requests that never reached a deployment.
#[derive(Debug)]
pub(crate) struct RequestMetrics {
    pub(crate) in_flight: Gauge,
    pub(crate) unrouted: StatusCounters,
    /// With `tracing.otlp`: where sampled requests' spans go for export.
    pub(crate) spans: std::sync::OnceLock<Arc<SpanSink>>,
}

/// One request's context, from its head to the end of its response body. Each phase fills in
/// what it learns; when the context is dropped (the response body ended, failed or was
/// abandoned, or an error answer was made) the request is counted, timed and logged exactly
/// once, and then its pod slot is freed.
///
/// A context dropped before its answer was made or its body ended is a client cancellation
/// (`client_cancelled`, status 499 when no head went out). Once the request has reached a pod,
/// a cancellation does not drop the context: it moves (see [`RequestCtx::detach`]) to a task
/// that waits for the pod to finish, and is dropped there (see `cancel.rs`).
#[derive(Debug)]
pub struct RequestCtx {
    pub(crate) request_id: HeaderValue,
    pub(crate) method: Method,
    /// The client's URI (the request sent upstream carries the pod's).
    pub(crate) uri: Uri,
    pub(crate) start: Instant,
    metrics: Arc<RequestMetrics>,
    /// The endpoint, once the URL has named a known one.
    pub(crate) endpoint: Option<Arc<str>>,
    /// The deployment, once chosen.
    pub(crate) dep: Option<Arc<DeploymentState>>,
    /// The pod slot, once admitted; freed after the log line, or as soon as the pod's answer
    /// has ended (see [`RequestCtx::release_slot`]).
    pub(crate) lease: Option<Slot>,
    /// The pod, once its slot was freed before the end of the request (for the log line).
    pod: Option<Arc<PodState>>,
    /// The client's body, once it is on its way to a pod.
    pub(crate) shared: Option<Arc<RequestShared>>,
    /// The request's trace (W3C trace context), when the client sent one or `tracing` is on.
    pub(crate) trace: Option<crate::trace::RequestTrace>,
    /// With `tracing.otlp`, for a sampled request: what its exported span needs beyond this
    /// context (see `otlp.rs`).
    pub(crate) span: Option<Box<SpanStart>>,
    /// The client's own request id, echoed back when well formed.
    pub(crate) client_request_id: Option<HeaderValue>,
    /// Waiting for a pod slot (admission), once admission ran.
    pub(crate) queue: Option<Duration>,
    /// Getting a connection to the pod (pooled or new), over all attempts.
    pub(crate) connect: Option<Duration>,
    /// Whether the last attempt's connection came from the pool.
    pub(crate) pooled: Option<bool>,
    /// Connection attempts (a retry on another pod, or a resend after a pooled connection
    /// closed, is one more).
    pub(crate) attempts: u8,
    /// From sending to the pod until its response head.
    pub(crate) upstream: Option<Duration>,
    /// When the pod's response head came: the body streams from then on.
    pub(crate) head_at: Option<Instant>,
    /// When the pod must be done (the current attempt's start + `requestTimeoutMs`): how long
    /// a cancelled request may keep its slot.
    pub(crate) deadline: Option<Instant>,
    /// When the client went away while the pod was working (the slot was kept from then on).
    pub(crate) cancelled_at: Option<Instant>,
    pub(crate) status: u16,
    bytes_out: u64,
    outcome: &'static str,
    /// The stream timer that ended the request, if one did.
    timer: Option<StreamTimer>,
    /// When the idle timer ended it: the side that stalled.
    pub(crate) stalled: Option<Side>,
    /// False for the empty shell left behind by [`RequestCtx::detach`]: it reports nothing.
    live: bool,
    /// A gRPC call: the router's own answers are gRPC statuses (see `grpc.rs`).
    pub(crate) grpc: bool,
    /// A gRPC call's deadline (from its `grpc-timeout`, at most `maxStreamDurationMs`) and the
    /// timeout it stands for, in milliseconds.
    pub(crate) call_deadline: Option<(Instant, u64)>,
    /// The client's body goes to the pod from another task (HTTP/2 pods): its moves reach the
    /// stream timers through [`RequestShared::report_upload`].
    pub(crate) remote_upload: bool,
    upload_seen: u32,
}

/// The outcome of a request whose client went away before its answer ended.
pub(crate) const CLIENT_CANCELLED: &str = "client_cancelled";
/// The status counted and logged for a cancelled request that got no response head
/// (nginx's "client closed request").
const STATUS_CLIENT_CLOSED: u16 = 499;

impl RequestCtx {
    /// A request starts: counted in flight until its context is dropped.
    pub(crate) fn start(metrics: &Arc<RequestMetrics>, method: Method, uri: Uri) -> Self {
        metrics.in_flight.increment(1.0);
        RequestCtx {
            request_id: crate::headers::new_request_id(),
            method,
            uri,
            start: Instant::now(),
            metrics: metrics.clone(),
            endpoint: None,
            dep: None,
            lease: None,
            pod: None,
            shared: None,
            trace: None,
            span: None,
            client_request_id: None,
            queue: None,
            connect: None,
            pooled: None,
            attempts: 0,
            upstream: None,
            head_at: None,
            deadline: None,
            cancelled_at: None,
            status: 0,
            bytes_out: 0,
            // Until an answer is made and its body ends, the request counts as cancelled.
            outcome: CLIENT_CANCELLED,
            timer: None,
            stalled: None,
            live: true,
            grpc: false,
            call_deadline: None,
            remote_upload: false,
            upload_seen: 0,
        }
    }

    /// For an upload another task carries: reports its moves to this task's stream timers.
    pub(crate) fn report_upload(&mut self, cx: &Context<'_>) {
        if self.remote_upload
            && let Some(s) = &self.shared
        {
            s.report_upload(&mut self.upload_seen, cx);
        }
    }

    /// Ends the request with `outcome` (`ok`, `client_cancelled`, `upstream_error`).
    pub(crate) fn finish(mut self, outcome: &'static str) {
        self.outcome = outcome;
    }

    /// The client went away while the pod works: the context (and the slot it holds) moves out,
    /// to be finished when the pod is done; an inert shell stays behind. Only on cancellation.
    pub(crate) fn detach(&mut self) -> RequestCtx {
        let shell = RequestCtx {
            request_id: HeaderValue::from_static(""),
            method: Method::GET,
            uri: Uri::default(),
            start: self.start,
            metrics: self.metrics.clone(),
            endpoint: None,
            dep: None,
            lease: None,
            pod: None,
            shared: None,
            trace: None,
            span: None,
            client_request_id: None,
            queue: None,
            connect: None,
            pooled: None,
            attempts: 0,
            upstream: None,
            head_at: None,
            deadline: None,
            cancelled_at: None,
            status: 0,
            bytes_out: 0,
            outcome: "",
            timer: None,
            stalled: None,
            live: false,
            grpc: false,
            call_deadline: None,
            remote_upload: false,
            upload_seen: 0,
        };
        let mut ctx = std::mem::replace(self, shell);
        ctx.cancelled_at = Some(Instant::now());
        ctx.outcome = CLIENT_CANCELLED;
        // Handed over because a stream timer ended the exchange, or because the client left.
        if let Some((t, side)) = watchdog::fired_on() {
            ctx.timed_out(t, side);
        }
        watchdog::end();
        ctx
    }

    /// A stream timer ended the request, waiting on `side`: that is its outcome, and the
    /// client's body (if still on its way to the pod) is cut off.
    pub(crate) fn timed_out(&mut self, timer: StreamTimer, side: Side) {
        self.timer = Some(timer);
        self.stalled = (timer == StreamTimer::Idle).then_some(side);
        self.outcome = timer.outcome();
        if let Some(s) = &self.shared {
            s.cut(timer);
        }
    }

    /// The pod's answer has ended (all of it handed to the client's connection): the pod is
    /// done, so its slot is freed now rather than when the client has taken the last bytes (an
    /// HTTP/2 client with no flow-control window would otherwise hold it).
    fn release_slot(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.pod = Some(lease.pod().clone());
        }
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        watchdog::end();
        let end = Instant::now();
        let elapsed = end - self.start;
        let stream = self.head_at.map(|h| end - h);
        if self.outcome == CLIENT_CANCELLED
            && let Some((t, side)) = watchdog::fired_on()
        {
            self.timed_out(t, side);
        }
        let cancelled = self.outcome == CLIENT_CANCELLED;
        if self.status == 0 {
            // No response head went out: what the client's side of it stands for.
            match (self.timer, self.stalled) {
                _ if cancelled => self.status = STATUS_CLIENT_CLOSED,
                (Some(StreamTimer::Idle), Some(Side::Client)) => {
                    self.status = StatusCode::REQUEST_TIMEOUT.as_u16();
                }
                (Some(_), _) => self.status = StatusCode::GATEWAY_TIMEOUT.as_u16(),
                (None, _) => {}
            }
        }
        match &self.dep {
            Some(d) => {
                if cancelled {
                    d.metrics.cancelled.increment(1);
                }
                if let Some(t) = self.timer {
                    d.metrics.stream_timeout(t).increment(1);
                }
                d.metrics.status.count(self.status);
                d.metrics.duration.record(elapsed.as_secs_f64());
                if let (Some(c), Some(pooled)) = (self.connect, self.pooled) {
                    d.metrics.connect[usize::from(pooled)].record(c.as_secs_f64());
                }
                if let Some(s) = stream {
                    d.metrics.stream.record(s.as_secs_f64());
                }
            }
            None => self.metrics.unrouted.count(self.status),
        }
        self.metrics.in_flight.decrement(1.0);
        let dep = self.dep.as_deref();
        let pod = self.lease.as_ref().map(Slot::pod).or(self.pod.as_ref());
        let (mut trace_buf, mut span_buf) = ([0u8; 32], [0u8; 16]);
        let trace = self.trace.as_ref();
        let trace_id = trace.map(|t| t.trace_id_hex(&mut trace_buf));
        let span_id = trace.and_then(|t| t.span_id_hex(&mut span_buf));
        tracing::info!(
            target: "infergate::access",
            request_id = self.request_id.to_str().unwrap_or(""),
            trace_id,
            span_id,
            method = &*clip_for_log(self.method.as_str()),
            path = &*clip_for_log(self.uri.path()),
            endpoint = self.endpoint.as_deref().unwrap_or(""),
            deployment = dep.map_or("", |d| &d.deployment),
            pod = pod.map(|p| tracing::field::display(p.addr())),
            pod_name = pod.and_then(|p| p.name()),
            attempts = self.attempts,
            status = self.status,
            queue_ms = self.queue.map(ms),
            connect_ms = self.connect.map(ms),
            pooled = self.pooled,
            head_ms = self.upstream.map(ms),
            stream_ms = stream.map(ms),
            total_ms = ms(elapsed),
            bytes_in = self.shared.as_ref().map_or(0, |s| s.bytes_in()),
            bytes_out = self.bytes_out,
            outcome = self.outcome,
            stalled = self.stalled.map(Side::as_str),
            held_ms = self.cancelled_at.map(|c| ms(end - c)),
            "request"
        );
        if let Some(head) = self.span.take()
            && let Some(sink) = self.metrics.spans.get()
            && let Some(trace) = &self.trace
            && let Some(span_id) = trace.span_id
        {
            // After the log line: the method and the names move into the record.
            let pod = self.lease.as_ref().map(Slot::pod).or(self.pod.as_ref());
            sink.push(SpanRecord {
                trace_id: trace.trace_id,
                span_id,
                parent_id: trace.parent_id,
                head: *head,
                method: std::mem::replace(&mut self.method, Method::GET),
                endpoint: self.endpoint.take(),
                deployment: self.dep.as_ref().map(|d| d.deployment.clone()),
                pod: pod.map(|p| p.addr()),
                pod_name: pod.and_then(|p| p.shared_name().cloned()),
                status: self.status,
                outcome: self.outcome,
                attempts: self.attempts,
                pooled: self.pooled,
                began: self.start,
                queue: self.queue,
                connect: self.connect,
                head_at: self.head_at,
                end,
            });
        }
        // The lease drops after this: the slot goes back to the pool (or the next waiter).
    }
}

/// The longest client-chosen value (path, method) written to a log line, in bytes; a longer one
/// is cut there and says how much was left out, so a 64 KiB path costs a 64 KiB line nowhere.
pub const MAX_LOGGED_BYTES: usize = 256;

/// `s`, cut to [`MAX_LOGGED_BYTES`] (at a character boundary) with `…[+N bytes]` when longer.
/// No allocation for a value within the limit.
pub fn clip_for_log(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_LOGGED_BYTES {
        return s.into();
    }
    let mut end = MAX_LOGGED_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[+{} bytes]", &s[..end], s.len() - end).into()
}

/// A duration in milliseconds, for the access log.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The client's response from the pod's: hop-by-hop headers removed, the router's headers set;
/// the context rides along in the body and finishes when the body does.
pub(crate) fn respond(resp: Response<UpstreamBody>, mut ctx: RequestCtx) -> Response<ProxyBody> {
    let (mut rp, inner) = resp.into_parts();
    client_head(&mut rp, &mut ctx);
    watchdog::response_started();
    // A gRPC call's answer ends at its deadline, with DEADLINE_EXCEEDED (see `ProxyBody`).
    let deadline = ctx
        .call_deadline
        .filter(|_| ctx.grpc)
        .map(|(at, ms)| (Box::pin(tokio::time::sleep_until(at)), ms));
    Response::from_parts(
        rp,
        ProxyBody::Upstream {
            inner: Some(inner),
            ctx: Some(ctx),
            deadline,
        },
    )
}

/// The client's response from the pod's head and a body the router read whole (and changed:
/// the swagger document); the request ends here.
pub(crate) fn respond_full(
    mut rp: http::response::Parts,
    body: Bytes,
    mut ctx: RequestCtx,
) -> Response<ProxyBody> {
    client_head(&mut rp, &mut ctx);
    ctx.bytes_out = body.len() as u64;
    ctx.finish("ok");
    Response::from_parts(rp, ProxyBody::full(body))
}

/// The pod's response head made the client's: hop-by-hop headers removed, the router's set.
fn client_head(rp: &mut http::response::Parts, ctx: &mut RequestCtx) {
    strip_hop_by_hop(&mut rp.headers);
    rp.headers.insert(X_REQUEST_ID, ctx.request_id.clone());
    if let Some(d) = &ctx.dep {
        rp.headers
            .insert(AZUREML_MODEL_DEPLOYMENT, d.header.clone());
    }
    if let Some(c) = ctx.client_request_id.take() {
        rp.headers.entry(X_MS_CLIENT_REQUEST_ID).or_insert(c);
    }
    if let Some(tp) = ctx.trace.as_ref().and_then(|t| t.header.clone()) {
        rp.headers.insert(TRACEPARENT, tp);
    }
    ctx.status = rp.status.as_u16();
}

/// The router's own answer to a failure; the request ends here.
pub(crate) fn rescue(err: &ProxyError, mut ctx: RequestCtx) -> Response<ProxyBody> {
    let mut resp = match ctx.grpc {
        true => crate::grpc::error_response(err, &ctx.request_id),
        false => error_response(err, &ctx.request_id),
    };
    if let Some(tp) = ctx.trace.as_ref().and_then(|t| t.header.clone()) {
        resp.headers_mut().insert(TRACEPARENT, tp);
    }
    // Counted and logged with the HTTP status the failure stands for (a gRPC answer goes out as
    // 200 with its grpc-status).
    ctx.status = err.status_and_code().0.as_u16();
    ctx.bytes_out = resp.body().size_hint().exact().unwrap_or(0);
    ctx.outcome = err.status_and_code().1;
    if let ProxyError::StreamTimeout { timer, side, .. } = err {
        ctx.timed_out(*timer, *side);
    }
    resp
}

/// The one place a [`ProxyError`] becomes a response: status, `{"error": {"code", "message"}, "requestId"}`
/// body, `x-request-id`, and `Retry-After` / `Allow` / `WWW-Authenticate` where they apply.
pub fn error_response(err: &ProxyError, request_id: &HeaderValue) -> Response<ProxyBody> {
    let (status, code) = err.status_and_code();
    let body = serde_json::json!({
        "error": {"code": code, "message": err.to_string()},
        "requestId": request_id.to_str().unwrap_or(""),
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut resp = Response::new(ProxyBody::full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_REQUEST_ID, request_id.clone());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let ProxyError::StreamTimeout { .. } = err {
        // HTTP/1.1: the rest of the stalled upload is not read; the connection ends here.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    if let ProxyError::Unauthorized { reason } = err {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(reason.www_authenticate()),
        );
    }
    resp
}

/// The body the router answers with: its own small JSON, or the pod's body streamed through.
// The context is kept inline: one allocation less per request than boxing it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ProxyBody {
    /// A complete body (router-made answers).
    Full(Option<Bytes>),
    /// The pod's body; the request finishes when it ends, fails or is dropped.
    Upstream {
        /// The pod's body (taken only when a cancelled request hands it on).
        inner: Option<UpstreamBody>,
        /// The request's context, finished exactly once.
        ctx: Option<RequestCtx>,
        /// A gRPC call's deadline and its timeout in ms: when it passes first, the pod's stream
        /// is reset and the answer ends with `grpc-status: 4` (DEADLINE_EXCEEDED) trailers.
        deadline: Option<(Pin<Box<Sleep>>, u64)>,
    },
}

impl ProxyBody {
    /// A complete body.
    pub fn full(b: Bytes) -> Self {
        ProxyBody::Full(Some(b))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream {
                inner: slot,
                ctx,
                deadline,
            } => {
                let Some(inner) = slot else {
                    return Poll::Ready(None);
                };
                if let Some(c) = ctx.as_mut() {
                    c.report_upload(cx);
                }
                let r = match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Ready(r) => r,
                    Poll::Pending => {
                        // Waiting on the pod's answer.
                        watchdog::waiting(Side::Pod);
                        let Some((sleep, ms)) = deadline else {
                            return Poll::Pending;
                        };
                        ready!(sleep.as_mut().poll(cx));
                        // The deadline passed first: the pod's stream is reset (its slot freed
                        // with the context), and the client gets the call's status.
                        let ms = *ms;
                        *slot = None;
                        *deadline = None;
                        if let Some(c) = ctx.take() {
                            c.finish("deadline_exceeded");
                        }
                        let trailers = crate::grpc::deadline_trailers(ms);
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                };
                match &r {
                    Some(Ok(f)) => {
                        // Handed on: the client must take it before hyper asks for more.
                        watchdog::progress(Side::Client);
                        if let Some(c) = ctx.as_mut() {
                            if let Some(d) = f.data_ref() {
                                c.bytes_out += d.len() as u64;
                            }
                            if inner.is_end_stream() {
                                c.release_slot();
                            }
                        }
                    }
                    Some(Err(_)) => {
                        if let Some(c) = ctx.take() {
                            c.finish("upstream_error");
                        }
                    }
                    None => {
                        if let Some(c) = ctx.take() {
                            c.finish("ok");
                        }
                    }
                }
                Poll::Ready(r.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream { inner, .. } => inner.as_ref().is_none_or(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream { inner, .. } => inner
                .as_ref()
                .map_or(SizeHint::with_exact(0), Body::size_hint),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let ProxyBody::Upstream { inner, ctx, .. } = self else {
            return;
        };
        let Some(mut c) = ctx.take() else {
            return;
        };
        // Dropped because a stream timer ended the exchange (the client stopped reading or
        // sending, or the pod stalled), rather than because the client left or the body ended.
        let fired = watchdog::fired_on();
        if let Some((t, side)) = fired {
            c.timed_out(t, side);
        }
        match inner.take() {
            // hyper drops a body it knows has ended without polling it again: a normal end
            // (unless a timer caught its last bytes on their way to the client).
            Some(body) if body.is_end_stream() && fired.is_none() => c.finish("ok"),
            Some(body) if body.is_end_stream() => drop(c),
            // The pod stalled mid-answer: nothing to wait for; its connection closes now.
            Some(body) if body.is_live() && c.stalled == Some(Side::Pod) => {
                crate::cancel::close_stalled(body, c)
            }
            // The client left (or stalled) mid-body while the pod is still sending: the slot
            // stays taken until the pod's body ends (read and discarded) or the request's
            // deadline.
            Some(body) if body.is_live() => crate::cancel::drain_body(body, c),
            // Outcome: `client_cancelled` or the timer.
            _ => drop(c),
        }
    }
}
