//! Client cancellation. A client that goes away before the request reached a pod (queued, or
//! while the connection to the pod opens) frees its queue place or slot at once: hyper drops the
//! request's future and the context with it. Once the request was handed to a pod, the pod keeps
//! computing whatever the client does, so the slot stays taken until the pod is done: the
//! exchange in progress (or the response body still streaming) moves, with the request's
//! context, to a task of its own that reads the pod's answer to its end and discards it (the
//! connection then goes back to the pool), or gives up at the request's deadline
//! (`requestTimeoutMs` from the start of the upstream exchange) and closes the connection (shut
//! for writing first, then read until the pod has closed its side too, for at most a second, so
//! that the pod has let the request go before its slot is given to another request). The
//! access log line (`outcome: client_cancelled`, `held_ms`: how long the pod kept going) is
//! written then, and the slot freed after it. A stream timer (`watchdog.rs`) that ends an
//! exchange hands it over the same way; the outcome is then the timer.
//!
//! An HTTP/2 pod is given up by resetting the stream (its connection serves other requests);
//! the slot is freed then.
//!
//! Only a cancellation spawns or allocates: on the normal path the guard below is a few words
//! on the request's own future (the exchange's state lives in the connection, boxed once per
//! connection, see `upstream.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use http::Response;
use http_body_util::BodyExt;
use infergate_balance::Outcome;
use tokio::time::Instant;

use crate::response::RequestCtx;
use crate::upstream::{Exchange, SendError, UpstreamBody};
use crate::watchdog;

/// How long a given-up pod connection is read after it was shut for writing, waiting for the pod
/// to close its side (see `Checkout::close`).
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// An exchange with a pod in progress, owned by the request's future. Dropped while the response
/// head is still awaited (the client went away), it hands the exchange and the request's context
/// to a drain task instead of closing the connection and freeing the slot.
pub(crate) struct InFlight<'a> {
    /// The exchange; polled (through `&mut`) by the request's future.
    pub(crate) exchange: Exchange,
    ctx: &'a mut RequestCtx,
    sent: Instant,
}

impl<'a> InFlight<'a> {
    pub(crate) fn new(exchange: Exchange, ctx: &'a mut RequestCtx, sent: Instant) -> Self {
        InFlight {
            exchange,
            ctx,
            sent,
        }
    }

    /// The response head (the exchange polled from the request's task, which also learns how
    /// an upload carried by another task moves: see `RequestCtx::report_upload`).
    pub(crate) fn head(
        &mut self,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + '_ {
        std::future::poll_fn(move |cx| {
            // A stream timer fired while an upload another task carries was still open: the
            // upload ends here (the pod's stream is reset) and the request fails with the timer,
            // as over HTTP/1.1, where the body itself fails in this turn.
            if self.ctx.remote_upload
                && let Some(t) = watchdog::fired()
                && let Some(s) = self.ctx.shared.as_ref().filter(|s| s.upload_open())
            {
                s.cut(t);
                self.abandon();
                return Poll::Ready(Err(SendError::BodyCut));
            }
            self.ctx.report_upload(cx);
            Pin::new(&mut self.exchange).poll(cx)
        })
    }

    /// The request's deadline passed: the exchange is dropped (its connection closed) and the
    /// request fails as a timeout, with no drain.
    pub(crate) fn abandon(&mut self) {
        drop(std::mem::take(&mut self.exchange));
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.exchange.is_pending() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime left (shutting down): the connection closes and the slot goes back.
            return;
        };
        let exchange = std::mem::take(&mut self.exchange);
        let ctx = self.ctx.detach();
        rt.spawn(drain_exchange(exchange, ctx, self.sent));
    }
}

/// The client left (or a stream timer ended the exchange) while the pod's body was still
/// streaming: the body is read to its end (or the deadline) on a task of its own, then the
/// request is finished, with the outcome already set (`client_cancelled` or the timer).
pub(crate) fn drain_body(body: UpstreamBody, mut ctx: RequestCtx) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    ctx.cancelled_at = Some(Instant::now());
    rt.spawn(async move {
        finish_body(body, &ctx).await;
        drop(ctx);
    });
}

/// The idle timer found the pod stalled mid-answer: there is nothing to wait for, so the pod's
/// connection is closed now (shut for writing, read for at most [`CLOSE_GRACE`] for the pod to
/// close too), the pod's health learns of the failure, and the slot is freed after that.
pub(crate) fn close_stalled(body: UpstreamBody, mut ctx: RequestCtx) {
    if let (Some(dep), Some(lease)) = (&ctx.dep, &ctx.lease) {
        dep.report(lease, Outcome::Failure);
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    ctx.cancelled_at = Some(Instant::now());
    rt.spawn(async move {
        body.close(CLOSE_GRACE).await;
        drop(ctx);
    });
}

/// Waits for the pod's response head, then its body, within the request's deadline.
async fn drain_exchange(mut exchange: Exchange, mut ctx: RequestCtx, sent: Instant) {
    let deadline = ctx.deadline.expect("set before the exchange");
    let head = tokio::time::timeout_at(deadline, &mut exchange).await;
    // The pod's health and latency learn from the answer as on the normal path; a failure of
    // the client's own body (cut off) is not the pod's.
    let outcome = match &head {
        Ok(Ok(resp)) if !resp.status().is_server_error() => Some(Outcome::Success(sent.elapsed())),
        Ok(Err(SendError::Failed(e) | SendError::NotSent { error: e, .. })) if e.is_user() => None,
        Ok(Err(SendError::BodyCut)) => None,
        _ => Some(Outcome::Failure),
    };
    if let (Some(dep), Some(lease), Some(outcome)) = (&ctx.dep, &ctx.lease, outcome) {
        dep.report(lease, outcome);
    }
    match head {
        Ok(Ok(resp)) => {
            let upstream = sent.elapsed();
            if let Some(dep) = &ctx.dep {
                dep.metrics.upstream.record(upstream.as_secs_f64());
            }
            ctx.upstream = Some(upstream);
            finish_body(resp.into_body(), &ctx).await;
        }
        Ok(Err(_)) => {}
        // The deadline passed: the connection closes here, before the slot is freed.
        Err(_) => exchange.close(CLOSE_GRACE).await,
    }
    // Finished with the outcome set when it was handed over (`client_cancelled` or the timer).
    drop(ctx);
}

/// Reads `body` to its end and discards it (its connection then goes back to the pool), or
/// gives it up at the request's deadline (closing the connection).
async fn finish_body(mut body: UpstreamBody, ctx: &RequestCtx) {
    let read = async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    };
    let Some(d) = ctx.deadline else {
        return read.await;
    };
    if tokio::time::timeout_at(d, read).await.is_err() {
        body.close(CLOSE_GRACE).await;
    }
}
