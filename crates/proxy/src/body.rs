//! The request side of bodies: the client's body on its way to the pod (counted, cut off past
//! the deployment's limit, optionally copied for a mirror).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::watchdog::{self, Side, StreamTimer};

/// Errors from bodies, as hyper takes them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past the deployment's limit while streaming; the upstream request is aborted.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A stream timer fired while the request body was on its way to the pod; the upload is cut off.
#[derive(Debug, thiserror::Error)]
#[error("the request body was cut off: {} passed", .0.key())]
pub struct BodyTimedOut(pub StreamTimer);

/// What the request's bookkeeping needs to know about the client's body while the body itself
/// belongs to the upstream connection: its size up front, the bytes read so far (for the access
/// log), and whether a stream timer cut it off.
#[derive(Debug)]
pub struct RequestShared {
    hint: SizeHint,
    empty: bool,
    bytes_in: AtomicU64,
    /// [`StreamTimer::code`] of the timer that ended the exchange, else 0.
    cut: AtomicU8,
    /// The body grew past the deployment's limit (and was refused).
    too_large: AtomicBool,
    /// Frames passed on so far, and whether the body has ended: what the request's own task
    /// (and its stream timers) learns of an upload that another task carries (hyper's, for an
    /// HTTP/2 pod), see [`RequestShared::report_upload`].
    frames: AtomicU32,
    ended: AtomicBool,
    /// The request's task, woken when the upload moves (while it watches one).
    watcher: AtomicWaker,
}

impl RequestShared {
    /// The facts about `body` known before it is read.
    pub fn new(body: &Incoming) -> Arc<Self> {
        Arc::new(RequestShared {
            hint: body.size_hint(),
            empty: body.is_end_stream(),
            bytes_in: AtomicU64::new(0),
            cut: AtomicU8::new(0),
            too_large: AtomicBool::new(false),
            frames: AtomicU32::new(0),
            ended: AtomicBool::new(body.is_end_stream()),
            watcher: AtomicWaker::new(),
        })
    }
    /// For an upload carried by another task (to an HTTP/2 pod): tells the stream timers of the
    /// task polling this (the request's) that the body moved since `seen` or ended, and has it
    /// woken on the next move.
    pub(crate) fn report_upload(&self, seen: &mut u32, cx: &Context<'_>) {
        if *seen == u32::MAX {
            return;
        }
        self.watcher.register(cx.waker());
        // (u32::MAX marks the end in `seen`.)
        let n = self.frames.load(Ordering::Acquire).min(u32::MAX - 1);
        if n != *seen {
            *seen = n;
            // Handed on by hyper's task toward the pod.
            watchdog::progress(Side::Pod);
        }
        if self.ended.load(Ordering::Acquire) {
            *seen = u32::MAX;
            watchdog::request_body_ended();
        }
    }
    fn moved(&self, ended: bool) {
        self.frames.fetch_add(1, Ordering::Release);
        if ended {
            self.ended.store(true, Ordering::Release);
        }
        self.watcher.wake();
    }
    /// A stream timer ended the exchange: the rest of the body is refused (the upload to the pod
    /// fails), wherever it is polled from.
    pub(crate) fn cut(&self, timer: StreamTimer) {
        self.cut.store(timer.code(), Ordering::Relaxed);
    }
    fn is_cut(&self) -> Option<StreamTimer> {
        StreamTimer::from_code(self.cut.load(Ordering::Relaxed))
    }
    /// The stream timer that cut the body off, if one did.
    pub(crate) fn cut_by(&self) -> Option<StreamTimer> {
        self.is_cut()
    }
    /// Whether the client's body is still coming.
    pub(crate) fn upload_open(&self) -> bool {
        !self.ended.load(Ordering::Acquire)
    }
    /// Whether the body was refused for growing past the deployment's limit.
    pub(crate) fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Relaxed)
    }
    /// Bytes of the client's body read so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }
    /// The body's length, when known up front.
    pub fn size_hint_exact(&self) -> Option<u64> {
        self.hint.exact()
    }
    /// Whether the body is known to be empty.
    pub fn is_empty_body(&self) -> bool {
        self.empty
    }
}

/// A copy of a request body kept (by reference, frames are shared) for a mirror request.
pub struct Tee {
    frames: Vec<Bytes>,
    size: u64,
    max: u64,
    on_end: Option<Box<dyn FnOnce(Vec<Bytes>) + Send>>,
    skipped: infergate_metrics::Counter,
}

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee")
            .field("size", &self.size)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Tee {
    /// Keeps up to `max` bytes; `on_end` receives the whole body if it ended within that bound,
    /// otherwise `skipped` is counted.
    pub fn new(
        max: u64,
        on_end: Box<dyn FnOnce(Vec<Bytes>) + Send>,
        skipped: infergate_metrics::Counter,
    ) -> Self {
        Tee {
            frames: Vec::new(),
            size: 0,
            max,
            on_end: Some(on_end),
            skipped,
        }
    }

    fn push(&mut self, d: &Bytes) {
        if self.on_end.is_none() {
            return;
        }
        self.size += d.len() as u64;
        if self.size > self.max {
            // Too large to mirror: give up the copy, never the request.
            self.on_end = None;
            self.frames = Vec::new();
            self.skipped.increment(1);
        } else {
            self.frames.push(d.clone());
        }
    }

    /// The body ended: hand the copy over.
    pub fn finish(mut self) {
        if let Some(f) = self.on_end.take() {
            f(std::mem::take(&mut self.frames));
        }
    }
}

enum Source {
    Streaming(Incoming),
    /// A mirror copy.
    Buffered(std::collections::VecDeque<Bytes>),
}

/// The first frame of a client's body, read while the request waited in the queue.
pub type FirstFrame = Option<Result<Frame<Bytes>, hyper::Error>>;

/// Waits for `admit` (a pod slot). While it waits in the queue, the first frame of the client's
/// body is read ahead into `first`: hyper reads nothing more from a connection until the body is
/// asked for, so without this a client that left while queued would go unnoticed until its turn
/// came. Once the body has arrived whole (small bodies: one frame), hyper watches the connection
/// and drops the request (freeing its queue place) as soon as the client closes or resets it. A
/// slot at hand at once reads nothing ahead.
pub(crate) async fn admit_watching<T>(
    admit: impl Future<Output = T>,
    body: &mut Incoming,
    first: &mut FirstFrame,
) -> T {
    let mut admit = std::pin::pin!(admit);
    let mut peek = !body.is_end_stream();
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = admit.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if peek && let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
            peek = false;
            *first = frame;
        }
        Poll::Pending
    })
    .await
}

/// A request body on its way to a pod: counted, cut off past `limit` bytes, optionally copied.
pub struct RequestBody {
    source: Source,
    /// A frame read ahead while queued, delivered first.
    first: FirstFrame,
    shared: Option<Arc<RequestShared>>,
    limit: u64,
    seen: u64,
    tee: Option<Tee>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("limit", &self.limit)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl RequestBody {
    /// The client's body (after `first`, a frame read ahead), counted into `shared`.
    pub fn new(
        body: Incoming,
        first: FirstFrame,
        shared: Arc<RequestShared>,
        limit: u64,
        tee: Option<Tee>,
    ) -> Self {
        RequestBody {
            source: Source::Streaming(body),
            first,
            shared: Some(shared),
            limit,
            seen: 0,
            tee,
        }
    }

    /// A body of frames already in memory (a mirror copy).
    pub fn buffered(frames: Vec<Bytes>) -> Self {
        RequestBody {
            source: Source::Buffered(frames.into()),
            first: None,
            shared: None,
            limit: u64::MAX,
            seen: 0,
            tee: None,
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
        let inner = match &mut this.source {
            Source::Streaming(b) => b,
            Source::Buffered(q) => return Poll::Ready(q.pop_front().map(|b| Ok(Frame::data(b)))),
        };
        // A stream timer fired (seen here during the exchange's last turn, or later from a drain
        // task): the upload fails, so that the pod's connection closes instead of waiting.
        let cut = watchdog::fired().or_else(|| this.shared.as_ref().and_then(|s| s.is_cut()));
        if let Some(timer) = cut {
            this.tee = None;
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(timer)))));
        }
        let next = match this.first.take() {
            Some(f) => Some(f),
            None => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    // Waiting on the client's upload.
                    watchdog::waiting(Side::Client);
                    return Poll::Pending;
                }
            },
        };
        match next {
            Some(Ok(frame)) => {
                // Handed on: the pod must take it before hyper asks for more.
                watchdog::progress(Side::Pod);
                if inner.is_end_stream() {
                    watchdog::request_body_ended();
                }
                if let Some(s) = &this.shared {
                    s.moved(inner.is_end_stream());
                }
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if let Some(s) = &this.shared {
                        s.bytes_in.store(this.seen, Ordering::Relaxed);
                    }
                    if this.seen > this.limit {
                        if let Some(s) = &this.shared {
                            s.too_large.store(true, Ordering::Relaxed);
                        }
                        this.tee = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                    if let Some(t) = &mut this.tee {
                        t.push(d);
                    }
                }
                // hyper stops polling a body of known length once it reports its end, so the
                // copy is handed over here rather than waiting for a final `None`.
                if inner.is_end_stream()
                    && let Some(t) = this.tee.take()
                {
                    t.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.tee = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => {
                watchdog::request_body_ended();
                if let Some(s) = &this.shared {
                    s.moved(true);
                }
                if let Some(t) = this.tee.take() {
                    t.finish();
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Streaming(b) => self.first.is_none() && b.is_end_stream(),
            Source::Buffered(q) => q.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Streaming(b) => match &self.first {
                Some(Ok(f)) => {
                    let n = f.data_ref().map_or(0, |d| d.len() as u64);
                    let rest = b.size_hint();
                    let mut h = SizeHint::new();
                    h.set_lower(rest.lower() + n);
                    if let Some(u) = rest.upper() {
                        h.set_upper(u + n);
                    }
                    h
                }
                _ => b.size_hint(),
            },
            Source::Buffered(q) => SizeHint::with_exact(q.iter().map(|b| b.len() as u64).sum()),
        }
    }
}
