//! Body types: the size-limited request body sent to the pod, and the response body that
//! streams the pod's answer and finishes the request's bookkeeping when it ends or is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::service::Completion;

/// Errors from bodies, as hyper takes them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past the deployment's limit while streaming; the upstream request is aborted.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The client's request body on its way to the pod: counted, and cut off past `limit` bytes.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    limit: u64,
    seen: u64,
    counter: Arc<AtomicU64>,
}

impl RequestBody {
    /// Wraps `inner`; `counter` receives the bytes read so far (for the access log).
    pub fn new(inner: Incoming, limit: u64, counter: Arc<AtomicU64>) -> Self {
        RequestBody {
            inner,
            limit,
            seen: 0,
            counter,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    this.counter.store(this.seen, Ordering::Relaxed);
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body the router answers with: its own small JSON, or the pod's body streamed through.
// The completion record is kept inline: one allocation less per request than boxing it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ProxyBody {
    /// A complete body (router-made answers).
    Full(Option<Bytes>),
    /// The pod's body; bookkeeping runs when it ends, fails or is dropped.
    Upstream {
        /// The pod's body.
        inner: Incoming,
        /// Slot, metrics and access log, finished exactly once.
        done: Option<Completion>,
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream { inner, done } => {
                let r = ready!(Pin::new(inner).poll_frame(cx));
                match &r {
                    Some(Ok(f)) => {
                        if let (Some(d), Some(c)) = (f.data_ref(), done.as_mut()) {
                            c.bytes_out += d.len() as u64;
                        }
                    }
                    Some(Err(_)) => {
                        if let Some(c) = done.take() {
                            c.finish("upstream_error");
                        }
                    }
                    None => {
                        if let Some(c) = done.take() {
                            c.finish("ok");
                        }
                    }
                }
                Poll::Ready(r)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let ProxyBody::Upstream { inner, done } = self
            && let Some(c) = done.take()
        {
            // hyper drops a body it knows is empty without polling it: that is a normal end.
            c.finish(if inner.is_end_stream() {
                "ok"
            } else {
                "client_aborted"
            });
        }
    }
}
