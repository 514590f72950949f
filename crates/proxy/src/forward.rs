//! Forwarding: the request rebuilt for the pod, then the attempt loop (a pooled or new
//! connection, a retry on another pod when a connection never opened, the response head within
//! `requestTimeoutMs`), and what a failed exchange stands for.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response, header};
use hyper::body::Incoming;
use infergate_balance::Outcome;
use infergate_routing::Action;
use tokio::time::Instant;

use crate::body::{BodyTimedOut, BodyTooLarge, FirstFrame, RequestBody, RequestShared};
use crate::cancel::InFlight;
use crate::endpoint::{Deployment, Endpoint};
use crate::error::ProxyError;
use crate::headers::{Forwarding, X_MS_CLIENT_REQUEST_ID, rewrite_request};
use crate::mirror;
use crate::response::RequestCtx;
use crate::upstream::{Checkout, ConnectError, SendError, UpstreamBody, UpstreamError};
use crate::watchdog::{self, Side, StreamTimer};

/// Where a connection came from and over what.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// `https` or `http`, for `x-forwarded-proto`.
    pub proto: &'static str,
}

/// The request for the pod: forwarding headers set, the pod's path, the client's body counted
/// and limited (and copied when the request is mirrored).
pub(crate) fn prepare(
    ctx: &mut RequestCtx,
    (endpoint, dep, action): (&Endpoint, &Deployment, Action),
    mut parts: Parts,
    (body, first, shared): (Incoming, FirstFrame, Arc<RequestShared>),
    (conn, fwd): (ConnInfo, Forwarding),
    roll: u64,
) -> Result<Request<RequestBody>, ProxyError> {
    let host = ctx.uri.authority().map(|a| a.as_str());
    rewrite_request(
        &mut parts.headers,
        &ctx.request_id,
        conn.remote.ip(),
        conn.proto,
        host,
        fwd,
    );
    ctx.client_request_id = parts.headers.get(X_MS_CLIENT_REQUEST_ID).cloned();
    let tee = mirror::tee(endpoint, action, &parts, &ctx.uri, roll, &shared);
    let uri = match action {
        // A gRPC call keeps its path (`/package.Service/Method`).
        Action::Grpc => ctx.uri.path_and_query().cloned().map(|pq| {
            let mut p = http::uri::Parts::default();
            p.path_and_query = Some(pq);
            http::Uri::from_parts(p)
        }),
        _ => dep
            .upstream_uri(action, ctx.uri.path(), ctx.uri.query())
            .map(Ok),
    };
    parts.uri = uri.and_then(Result::ok).ok_or(ProxyError::UpstreamFailed(
        "the upstream URI could not be built",
    ))?;
    if ctx.grpc {
        // gRPC servers expect it (hop-by-hop, so removed above with the rest).
        parts
            .headers
            .insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    ctx.shared = Some(shared.clone());
    let limit = dep.settings.max_request_body_bytes;
    Ok(Request::from_parts(
        parts,
        RequestBody::new(body, first, shared, limit, tee),
    ))
}

/// Sends `req` to the admitted pod and waits for its response head. A connection that never
/// opened is retried once on another pod (within the retry budget); a pooled connection that
/// closed before taking the request is replaced by a fresh one to the same pod.
pub(crate) async fn send(
    dep: &Deployment,
    ctx: &mut RequestCtx,
    mut req: Request<RequestBody>,
    roll: u64,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let (state, settings) = (&dep.balancer, &dep.settings);
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    let mut may_retry = true;
    loop {
        let lease = ctx.lease.as_ref().expect("admitted before forwarding");
        let checkout_at = Instant::now();
        if let Some(s) = &mut ctx.span {
            s.connect_at.get_or_insert(checkout_at);
        }
        let mut deadline = deadline_after(timeout);
        // A gRPC call's own deadline, when sooner, bounds the wait for the head too.
        let mut timed_out = ProxyError::UpstreamTimeout {
            ms: settings.request_timeout_ms,
        };
        if let Some((call, ms)) = ctx.call_deadline
            && call <= deadline
        {
            deadline = call;
            timed_out = ProxyError::DeadlineExceeded { ms };
        }
        ctx.attempts += 1;
        // No timer here: a pooled connection is at hand at once, and a connect is bounded by
        // the deadline inside `checkout`.
        let checkout = state.conns.checkout(lease.pod().addr(), deadline).await;
        // Connect time adds up over the attempts; `pooled` tells the last one.
        let sent = Instant::now();
        *ctx.connect.get_or_insert(Duration::ZERO) += sent - checkout_at;
        let conn = match checkout {
            Ok(c) => {
                ctx.pooled = Some(c.reused());
                c
            }
            Err(e) => {
                state.report(lease, Outcome::Failure);
                if matches!(e, ConnectError::Deadline) {
                    return Err(timed_out);
                }
                tracing::debug!(pod = %lease.pod().addr(), error = %e, "upstream connect failed");
                // Nothing reached any pod (a request is handed to a connection only once one
                // is open): once, on another pod, within the budget.
                if may_retry && let Some(next) = state.retry_lease(settings, roll, lease).await {
                    may_retry = false;
                    ctx.lease = Some(next);
                    continue;
                }
                return Err(connect_error(&e));
            }
        };
        if let Some((call, _)) = ctx.call_deadline {
            // The pod gets what is left of the call's time.
            let left = call.saturating_duration_since(Instant::now());
            req.headers_mut()
                .insert(crate::grpc::GRPC_TIMEOUT, crate::grpc::encode_timeout(left));
        }
        // An HTTP/2 pod's connection carries the upload in a task of its own.
        ctx.remote_upload = matches!(conn, Checkout::H2(_));
        ctx.deadline = Some(deadline);
        if let Some(s) = &mut ctx.span {
            s.sent_at = Some(sent);
        }
        // The stream timers watch the exchange from here (see `watchdog.rs`).
        watchdog::begin(
            settings,
            ctx.start,
            !http_body::Body::is_end_stream(req.body()),
        );
        // From here the request may reach the pod: a client that leaves now does not free the
        // slot until the pod is done (the guard hands the exchange on, see `cancel.rs`).
        let res = {
            let mut in_flight = InFlight::new(conn.send(req), ctx, sent);
            let res = tokio::time::timeout_at(deadline, pod_or_stall(in_flight.head())).await;
            if !matches!(res, Ok(Ok(_))) {
                in_flight.abandon();
            }
            res
        };
        let lease = ctx.lease.as_ref().expect("admitted before forwarding");
        let res = match res {
            Ok(Ok(r)) => Ok(r),
            // A stream timer fired while the pod was not taking the request body: the
            // connection is closed (above), the pod held to account, the client told (504).
            Ok(Err((timer, side))) => {
                state.report(lease, Outcome::Failure);
                return Err(ProxyError::StreamTimeout {
                    timer,
                    ms: timer.ms(settings),
                    side,
                });
            }
            Err(e) => Err(e),
        };
        match res {
            Ok(Ok(resp)) => {
                let head_at = Instant::now();
                let upstream = head_at - sent;
                let outcome = match resp.status().is_server_error() {
                    true => Outcome::Failure,
                    false => Outcome::Success(upstream),
                };
                state.report(lease, outcome);
                state.metrics.upstream.record(upstream.as_secs_f64());
                ctx.upstream = Some(upstream);
                ctx.head_at = Some(head_at);
                return Ok(resp);
            }
            // A pooled connection closed before taking the request (the pod ended an idle
            // keep-alive connection): the same request goes out on a fresh connection.
            Ok(Err(SendError::NotSent {
                req: back,
                reused: true,
                ..
            })) => req = back,
            Ok(Err(SendError::BodyCut)) => {
                let cut = ctx.shared.as_ref().and_then(|s| client_fault(s, settings));
                return Err(cut.unwrap_or(ProxyError::UpstreamFailed("request body cut off")));
            }
            Ok(Err(SendError::NotSent { error: e, .. } | SendError::Failed(e))) => {
                // The client's own body at fault (an HTTP/2 pod's connection carries it in
                // another task, whose error reaches here as a reset stream).
                let fault = ctx.shared.as_ref().and_then(|s| client_fault(s, settings));
                if !e.is_user() && fault.is_none() {
                    state.report(lease, Outcome::Failure);
                }
                return Err(fault.unwrap_or_else(|| classify(&e, settings)));
            }
            Err(_) => {
                state.report(lease, Outcome::Failure);
                return Err(timed_out);
            }
        }
    }
}

/// The exchange's response head, or the stream timer that fired while the exchange was waiting
/// on the pod to take the request body (seen during the turn the watchdog gives the exchange
/// before it ends it). A timer that fired while the client's upload stalled is left to the body,
/// which fails (the 408 path).
async fn pod_or_stall<F: Future>(head: F) -> Result<F::Output, (StreamTimer, Side)> {
    let mut head = std::pin::pin!(head);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = head.as_mut().poll(cx) {
            return Poll::Ready(Ok(r));
        }
        match watchdog::fired_on() {
            Some((timer, Side::Pod)) => Poll::Ready(Err((timer, Side::Pod))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Now + `d`, or a time far in the future when that does not fit the clock (a setting near
/// 2^64 ms must not panic a request).
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// Maps a failed exchange with a pod to the failure it stands for. A failure of the client's
/// own body (too large, cut off by a stream timer: [`is_user`](UpstreamError::is_user)) is not
/// held against the pod.
fn classify(e: &UpstreamError, settings: &infergate_config::ResolvedSettings) -> ProxyError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<BodyTooLarge>().is_some() {
            return ProxyError::PayloadTooLarge {
                limit: settings.max_request_body_bytes,
            };
        }
        if let Some(BodyTimedOut(timer)) = s.downcast_ref::<BodyTimedOut>() {
            // The body was polled and cut off: the pod was reading, the client was not sending.
            return ProxyError::StreamTimeout {
                timer: *timer,
                ms: timer.ms(settings),
                side: Side::Client,
            };
        }
        src = s.source();
    }
    if e.is_parse() {
        return ProxyError::UpstreamFailed("malformed response");
    }
    if e.is_incomplete_message() {
        return ProxyError::UpstreamFailed("connection closed before a response");
    }
    ProxyError::UpstreamFailed("connection error")
}

/// The failure of the client's body itself, as its shared state recorded it: over the limit,
/// or cut off by a stream timer.
fn client_fault(
    shared: &RequestShared,
    settings: &infergate_config::ResolvedSettings,
) -> Option<ProxyError> {
    if shared.too_large() {
        return Some(ProxyError::PayloadTooLarge {
            limit: settings.max_request_body_bytes,
        });
    }
    // (An upload carried by hyper's task to an HTTP/2 pod: which side stalled is not seen from
    // the request's task; the client's, whose body it is, is named.)
    shared.cut_by().map(|timer| ProxyError::StreamTimeout {
        timer,
        ms: timer.ms(settings),
        side: Side::Client,
    })
}

/// Maps a failed connect to the failure it stands for.
fn connect_error(e: &ConnectError) -> ProxyError {
    match e {
        ConnectError::Io(_) | ConnectError::Timeout(_) | ConnectError::Tls(_) => {
            ProxyError::UpstreamConnect
        }
        ConnectError::Deadline => ProxyError::UpstreamFailed("request deadline passed"),
        ConnectError::Handshake(_) => ProxyError::UpstreamFailed("connection error"),
        ConnectError::NotHttp2 => ProxyError::UpstreamFailed(
            "the pod does not speak HTTP/2 (check the deployment's protocol)",
        ),
    }
}
