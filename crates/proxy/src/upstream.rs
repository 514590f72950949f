//! Connections to pods: HTTP/1.1 driven by the request that uses them (here), HTTP/2 multiplexed
//! per pod (`h2.rs`, for deployments with `protocol: h2c` or `h2`).
//!
//! A connection is owned by the request using it, as in pingora: the request's own task drives
//! the connection (the router's own codec, `h1/`) while it waits for the response head
//! ([`Checkout::send`]), and the response body drives it while the answer streams
//! ([`UpstreamBody`]); no task or channel per connection or request. When the answer has ended
//! the connection goes back to its pod's idle list; an idle connection belongs to no task.
//!
//! Each deployment owns a [`ConnPool`]: the idle connections of each of its pods, keyed by the
//! pod's address and published with the route table (one map lookup per request, no lock). A
//! pod that leaves the deployment is retired: its idle connections close at once, and those in
//! use close when their request is done. A pooled connection is checked before use (a closed one
//! is dropped); a request that a pooled connection never started writing is sent again on a
//! fresh connection to the same pod.
//!
//! With `--workers N` a pod's idle HTTP/1.1 connections are kept per worker: a socket belongs to
//! the reactor of the worker that opened it, so a request on another worker would have each of
//! its readiness events cross threads. A worker takes and returns connections on its own list.
//!
//! A deployment's `protocol` picks the kind: [`Checkout`], [`Exchange`] and [`UpstreamBody`] are
//! the same to the request path whichever it is; how a request is addressed to the pod (`Host`
//! and origin-form for HTTP/1.1, `:authority` and `:scheme` for HTTP/2) is done here too.

mod frames;
mod h2;

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use infergate_balance::PodSpec;
use infergate_spec::PodTransport;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::h1::conn::{Conn, HeadError};

pub use crate::h1::Error as UpstreamError;
pub(crate) use h2::Wire;

/// How connections to pods are opened and kept.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    h2: h2::Builder,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_pod: usize,
    /// Idle lists per pod: one per connection worker (see `workers.rs`).
    idle_lists: usize,
}

impl Upstream {
    /// Connect within 3 s, keep idle connections for 60 s, at most 1024 idle per pod.
    pub(crate) fn new() -> Self {
        Upstream {
            h2: h2::Builder::new(),
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_pod: 1024,
            idle_lists: crate::workers::worker_count(),
        }
    }

    /// A connection (HTTP/1.1) or a stream on one (HTTP/2) to `pod`.
    pub(crate) async fn checkout(
        &self,
        pod: Arc<PodConns>,
        deadline: Instant,
    ) -> Result<Checkout, ConnectError> {
        match &*pod.wire {
            Wire::Http1 => self.checkout_h1(pod, deadline).await.map(Checkout::H1),
            _ => h2::checkout(self, pod, deadline).await.map(Checkout::H2),
        }
    }

    /// An HTTP/1.1 connection to `pod`: its most recently used live idle connection, or a new
    /// one opened before `deadline` (the request's) and within the connect timeout.
    async fn checkout_h1(
        &self,
        pod: Arc<PodConns>,
        deadline: Instant,
    ) -> Result<H1Checkout, ConnectError> {
        loop {
            let idle = pod.idle_here();
            let Some(mut c) = idle.lock().pop() else {
                break;
            };
            if c.idle_since.elapsed() >= self.idle_timeout {
                // Newest first: every other idle connection is older still. They close
                // (sockets shut) after the lock is released.
                let expired = std::mem::take(&mut *idle.lock());
                drop(expired);
                break;
            }
            if poll_fn(|cx| Poll::Ready(c.revive(cx))).await {
                return Ok(H1Checkout {
                    conn: c,
                    pod,
                    reused: true,
                    max_idle: self.max_idle_per_pod,
                });
            }
        }
        let conn = self.connect(pod.addr, deadline).await?;
        Ok(H1Checkout {
            conn,
            pod,
            reused: false,
            max_idle: self.max_idle_per_pod,
        })
    }

    /// A TCP connection to `addr`, opened before `deadline` and within the connect timeout.
    async fn tcp(&self, addr: SocketAddr, deadline: Instant) -> Result<TcpStream, ConnectError> {
        let own = Instant::now() + self.connect_timeout;
        let tcp = match tokio::time::timeout_at(own.min(deadline), TcpStream::connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(ConnectError::Io(e)),
            Err(_) if deadline <= own => return Err(ConnectError::Deadline),
            Err(_) => return Err(ConnectError::Timeout(self.connect_timeout)),
        };
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        Ok(tcp)
    }

    async fn connect(&self, addr: SocketAddr, deadline: Instant) -> Result<UpConn, ConnectError> {
        let tcp = self.tcp(addr, deadline).await?;
        Ok(UpConn {
            conn: Box::new(Conn::new(tcp)),
            idle_since: Instant::now(),
        })
    }

    /// Closes `pod`'s idle connections unused for longer than the idle timeout.
    fn sweep(&self, pod: &PodConns) {
        for idle in &pod.idle {
            let expired: Vec<UpConn> = {
                let mut idle = idle.lock();
                // Oldest first in the list.
                let n = idle
                    .iter()
                    .take_while(|c| c.idle_since.elapsed() >= self.idle_timeout)
                    .count();
                idle.drain(..n).collect()
            };
            // Closed outside the lock.
            drop(expired);
        }
        h2::sweep(pod, self.idle_timeout);
    }
}

/// One deployment's connections to its pods, keyed by pod address. The map is replaced (never
/// locked) when the deployment's pods change; a pod that stays keeps its entry and connections.
#[derive(Debug)]
pub(crate) struct ConnPool {
    upstream: Upstream,
    /// What the pods speak (the deployment's `protocol`) and the spec it was built from.
    wire: ArcSwap<(PodTransport, Arc<Wire>)>,
    pods: ArcSwap<HashMap<SocketAddr, Arc<PodConns>>>,
}

impl ConnPool {
    /// A pool for these pods, speaking `transport`, opening connections as `upstream` says.
    pub(crate) fn new(upstream: &Upstream, pods: &[PodSpec], transport: &PodTransport) -> Self {
        let pool = ConnPool {
            upstream: upstream.clone(),
            wire: ArcSwap::from_pointee((transport.clone(), Arc::new(Wire::new(transport)))),
            pods: ArcSwap::default(),
        };
        pool.set_pods(pods);
        pool
    }

    /// The deployment's `protocol` (or its TLS settings) changed: every connection is closed
    /// (those in use when their request ends) and new ones speak the new way.
    pub(crate) fn set_transport(&self, transport: &PodTransport, pods: &[PodSpec]) {
        if self.wire.load().0 == *transport {
            return;
        }
        self.wire.store(Arc::new((
            transport.clone(),
            Arc::new(Wire::new(transport)),
        )));
        let old = self.pods.swap(Arc::default());
        for conns in old.values() {
            conns.retire();
        }
        self.set_pods(pods);
    }

    /// The deployment's pods changed: new pods get an entry, pods that left are retired (idle
    /// connections closed now, those in use when their request ends).
    pub(crate) fn set_pods(&self, pods: &[PodSpec]) {
        let old = self.pods.load_full();
        let wire = self.wire.load().1.clone();
        let lists = self.upstream.idle_lists;
        let next: HashMap<SocketAddr, Arc<PodConns>> = pods
            .iter()
            .map(|p| {
                let conns = old
                    .get(&p.addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(PodConns::new(p.addr, wire.clone(), lists)));
                (p.addr, conns)
            })
            .collect();
        self.pods.store(Arc::new(next));
        for (addr, conns) in old.iter() {
            if !self.pods.load().contains_key(addr) {
                conns.retire();
            }
        }
    }

    /// A connection to the pod at `addr` (see [`Upstream::checkout`]). A pod unknown to the pool
    /// (it left between the pick and now) gets a connection that is not kept afterwards.
    pub(crate) async fn checkout(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<Checkout, ConnectError> {
        let pod = self.pods.load().get(&addr).cloned().unwrap_or_else(|| {
            let p = PodConns::new(addr, self.wire.load().1.clone(), 1);
            p.retire();
            Arc::new(p)
        });
        self.upstream.checkout(pod, deadline).await
    }

    /// Closes idle connections unused for longer than the idle timeout (called periodically).
    pub(crate) fn sweep(&self) {
        for pod in self.pods.load().values() {
            self.upstream.sweep(pod);
        }
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The TCP connect failed (refused, unreachable, ...).
    #[error("connect: {0}")]
    Io(std::io::Error),
    /// The TCP connect did not finish in time.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The request's own deadline passed while connecting.
    #[error("the request deadline passed while connecting")]
    Deadline,
    /// hyper refused the HTTP/2 connection (its handshake failed).
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    /// The TLS handshake with the pod failed (`protocol: h2`): its certificate is not trusted,
    /// does not hold the name, or it does not speak HTTP/2 (ALPN).
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The pod closed a new HTTP/2 connection before its SETTINGS: it does not speak HTTP/2
    /// (the deployment's `protocol` says it does).
    #[error("the pod closed the connection at once: it does not seem to speak HTTP/2")]
    NotHttp2,
}

/// Why a request failed on its connection. The request given back is not boxed: it travels once,
/// on the rare path, and boxing it would cost an allocation on every failure instead.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum SendError {
    /// The connection closed before the request was written: nothing reached the pod, and the
    /// request is given back untouched.
    NotSent {
        /// The request, as it was given.
        req: Request<RequestBody>,
        /// Whether the connection came from the idle list (a fresh one was never used).
        reused: bool,
        /// Why.
        error: UpstreamError,
    },
    /// The request may have reached the pod, which did not answer properly.
    Failed(UpstreamError),
    /// A stream timer cut the client's upload off (an HTTP/2 pod's: the stream is reset).
    BodyCut,
}

/// One pod's connections: idle HTTP/1.1 ones, or its HTTP/2 ones; and how it is addressed.
#[derive(Debug)]
pub(crate) struct PodConns {
    addr: SocketAddr,
    /// One list per connection worker, oldest first; taken and returned at the end.
    idle: Box<[parking_lot::Mutex<Vec<UpConn>>]>,
    /// HTTP/2: the open connections, shared by the streams.
    h2: h2::PodH2,
    /// What the pod speaks.
    wire: Arc<Wire>,
    host: HeaderValue,
    /// The pod left its deployment: connections are closed, not kept.
    retired: AtomicBool,
}

impl PodConns {
    fn new(addr: SocketAddr, wire: Arc<Wire>, lists: usize) -> Self {
        PodConns {
            addr,
            idle: (0..lists.max(1))
                .map(|_| parking_lot::Mutex::new(Vec::new()))
                .collect(),
            h2: h2::PodH2::new(addr, &wire),
            wire,
            host: HeaderValue::try_from(addr.to_string())
                .expect("a socket address is a valid header value"),
            retired: AtomicBool::new(false),
        }
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        // Closed outside the lock.
        for idle in &self.idle {
            let idle = std::mem::take(&mut *idle.lock());
            drop(idle);
        }
        self.h2.retire();
    }

    /// The idle list of the worker this runs on.
    fn idle_here(&self) -> &parking_lot::Mutex<Vec<UpConn>> {
        &self.idle[crate::workers::current_worker() % self.idle.len()]
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// One HTTP/1.1 connection, boxed once per connection: the response body that carries it is
/// moved several times per request.
#[derive(Debug)]
struct UpConn {
    conn: Box<Conn<RequestBody>>,
    idle_since: Instant,
}

impl UpConn {
    /// Whether an idle connection can take a request now (still open, nothing arrived).
    fn revive(&mut self, cx: &mut Context<'_>) -> bool {
        self.conn.poll_idle(cx)
    }
}

/// A way to a pod taken for one request: an HTTP/1.1 connection of its own, or a stream on a
/// shared HTTP/2 connection.
#[derive(Debug)]
pub(crate) enum Checkout {
    /// A connection of its own.
    H1(H1Checkout),
    /// A stream slot on a multiplexed connection.
    H2(h2::H2Checkout),
}

impl Checkout {
    /// Whether the connection was open before this request (not opened for it).
    pub(crate) fn reused(&self) -> bool {
        match self {
            Checkout::H1(c) => c.reused,
            Checkout::H2(c) => c.reused(),
        }
    }

    /// Sends `req` (origin-form URI; addressed here to the pod: `Host` for HTTP/1.1,
    /// `:scheme` and `:authority` for HTTP/2). The returned [`Exchange`] resolves to the
    /// response head.
    pub(crate) fn send(self, req: Request<RequestBody>) -> Exchange {
        match self {
            Checkout::H1(c) => c.send(req),
            Checkout::H2(c) => c.send(req),
        }
    }
}

/// An HTTP/1.1 connection taken for one request.
#[derive(Debug)]
pub(crate) struct H1Checkout {
    conn: UpConn,
    pod: Arc<PodConns>,
    reused: bool,
    max_idle: usize,
}

impl H1Checkout {
    /// Sends `req`: the returned [`Exchange`] resolves to the response head, driving the
    /// connection from the task that polls it; the response body keeps driving it.
    fn send(mut self, mut req: Request<RequestBody>) -> Exchange {
        *req.version_mut() = Version::HTTP_11;
        req.headers_mut()
            .insert(header::HOST, self.pod.host.clone());
        self.conn.conn.start(req);
        Exchange(Inner::H1(Some(self)))
    }

    /// Gives the exchange up: the pod's connection is shut for writing (FIN) and read to its end
    /// (discarded) for at most `grace`, so that the pod has seen the close and let the request go
    /// before its slot is given to another; then the socket is closed for good. Only on the give-up
    /// path (a cancelled or timed-out request past its deadline).
    async fn close(self, grace: Duration) {
        self.conn.conn.close(grace).await;
    }

    /// The exchange has ended: back to the pod's idle list (most recent last) when the
    /// connection can take another request, else closed.
    fn finish(mut self) {
        if self.conn.conn.finish() {
            self.put_back();
        }
    }

    /// Back to the pod's idle list (most recent last).
    fn put_back(mut self) {
        if self.pod.is_retired() {
            return;
        }
        self.conn.idle_since = Instant::now();
        let mut idle = self.pod.idle_here().lock();
        if idle.len() < self.max_idle {
            idle.push(self.conn);
        }
    }
}

/// A request handed to its connection, until the response head: a future (driving the
/// HTTP/1.1 connection from the task that polls it while it waits). It can move (it is
/// [`Unpin`]): a cancelled request's exchange is handed to another task whole. Dropped before
/// its end, it closes the HTTP/1.1 connection, or resets the HTTP/2 stream.
#[derive(Debug, Default)]
pub(crate) struct Exchange(Inner);

#[derive(Debug, Default)]
enum Inner {
    /// Over (or never started).
    #[default]
    Done,
    H1(Option<H1Checkout>),
    H2(h2::Pending),
}

impl Exchange {
    /// Whether the response head is still awaited.
    pub(crate) fn is_pending(&self) -> bool {
        match &self.0 {
            Inner::Done => false,
            Inner::H1(conn) => conn.is_some(),
            Inner::H2(_) => true,
        }
    }

    /// Gives the exchange up (see [`H1Checkout::close`]; an HTTP/2 stream is reset).
    pub(crate) async fn close(mut self, grace: Duration) {
        if let Inner::H1(conn) = &mut self.0
            && let Some(c) = conn.take()
        {
            c.close(grace).await;
        }
    }
}

impl Future for Exchange {
    type Output = Result<Response<UpstreamBody>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let conn = match &mut this.0 {
            Inner::Done => panic!("polled after its end"),
            Inner::H2(p) => {
                let r = ready!(Pin::new(p).poll(cx));
                this.0 = Inner::Done;
                return Poll::Ready(r);
            }
            Inner::H1(conn) => conn,
        };
        let c = conn.as_mut().expect("polled after its end");
        let res = ready!(c.conn.conn.poll_head(cx));
        let c = conn.take().expect("checked above");
        this.0 = Inner::Done;
        Poll::Ready(match res {
            Ok(head) => {
                let mut resp = Response::new(UpstreamBody(BodyInner::H1 {
                    conn: Some(c),
                    ended: false,
                }));
                *resp.status_mut() = head.status;
                *resp.version_mut() = head.version;
                *resp.headers_mut() = head.headers;
                if let Some(reason) = head.reason
                    && let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason)
                {
                    // A reason phrase of the pod's own reaches the client, as through hyper.
                    resp.extensions_mut().insert(r);
                }
                // No body to come (HEAD, 204, 304, `content-length: 0`): the connection is
                // free at once.
                resp.body_mut().release_if_ended();
                Ok(resp)
            }
            Err(HeadError::NotSent(req, error)) => Err(SendError::NotSent {
                req,
                reused: c.reused,
                error,
            }),
            Err(HeadError::Failed(e)) => Err(SendError::Failed(e)),
        })
    }
}

/// A pod's response body. Over HTTP/1.1, polling it also drives the connection it arrives on
/// (the rest of the request body keeps going out); once the body has ended, the connection goes
/// back to the pod's idle list. Dropped before its end, it closes the HTTP/1.1 connection (the
/// only way to abandon such a response) or resets the HTTP/2 stream.
#[derive(Debug)]
pub struct UpstreamBody(BodyInner);

#[derive(Debug)]
enum BodyInner {
    /// The HTTP/1.1 connection, which the body drives and then puts back (`None` once the body
    /// has ended or the connection closed).
    H1 {
        conn: Option<H1Checkout>,
        ended: bool,
    },
    /// hyper's HTTP/2 stream, and its place on the connection, given back when the body ends.
    H2 {
        inner: Incoming,
        stream: Option<h2::StreamGuard>,
    },
}

impl UpstreamBody {
    /// An HTTP/2 stream's body, holding its place on the connection until it ends.
    pub(crate) fn h2(inner: Incoming, stream: h2::StreamGuard) -> Self {
        UpstreamBody(BodyInner::H2 {
            inner,
            stream: Some(stream),
        })
    }

    /// Whether the pod may still be sending (its connection or stream is still open).
    pub(crate) fn is_live(&self) -> bool {
        match &self.0 {
            BodyInner::H1 { conn, .. } => conn.is_some(),
            BodyInner::H2 { stream, .. } => stream.is_some(),
        }
    }

    /// Gives the answer up (see [`H1Checkout::close`]; an HTTP/2 stream is reset when the body
    /// is dropped).
    pub(crate) async fn close(mut self, grace: Duration) {
        if let BodyInner::H1 { conn, .. } = &mut self.0
            && let Some(c) = conn.take()
        {
            c.close(grace).await;
        }
    }

    /// At the end of an HTTP/1.1 body, the connection is released (kept or closed).
    fn release_if_ended(&mut self) {
        if let BodyInner::H1 { conn, ended } = &mut self.0
            && conn.as_ref().is_some_and(|c| c.conn.conn.body_is_end())
        {
            *ended = true;
            if let Some(c) = conn.take() {
                c.finish();
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match &mut self.0 {
            BodyInner::H1 { conn, ended } => {
                let Some(c) = conn else {
                    return Poll::Ready(None);
                };
                let r = ready!(c.conn.conn.poll_body(cx));
                match &r {
                    Some(Ok(_)) if !c.conn.conn.body_is_end() => {}
                    // The end: the connection is released (kept or closed).
                    Some(Ok(_)) | None => {
                        *ended = true;
                        if let Some(c) = conn.take() {
                            c.finish();
                        }
                    }
                    // The connection is closed.
                    Some(Err(_)) => *conn = None,
                }
                Poll::Ready(r)
            }
            BodyInner::H2 { inner, stream } => {
                let r = ready!(Pin::new(&mut *inner).poll_frame(cx));
                let r = r.map(|f| f.map_err(UpstreamError::http2));
                match &r {
                    Some(Ok(_)) if !inner.is_end_stream() => {}
                    // Ended or failed: the stream's place goes back to the connection.
                    _ => *stream = None,
                }
                Poll::Ready(r)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyInner::H1 { ended, .. } => *ended,
            BodyInner::H2 { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyInner::H1 { conn: Some(c), .. } => c.conn.conn.body_size_hint(),
            BodyInner::H1 { ended: true, .. } => SizeHint::with_exact(0),
            BodyInner::H1 { .. } => SizeHint::default(),
            BodyInner::H2 { inner, .. } => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A pod answering `ok` to every request on a connection until the peer closes it; counts
    /// connections opened and connections the router closed.
    async fn pod() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o, c) = (opened.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                o.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            // Requests here are heads without a body, one per read.
                            Ok(_) => {
                                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if s.write_all(ok).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (addr, opened, closed)
    }

    async fn exchange(pool: &ConnPool, addr: SocketAddr) {
        let c = pool
            .checkout(addr, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        let mut req = Request::new(RequestBody::buffered(Vec::new()));
        *req.uri_mut() = http::Uri::from_static("/score");
        let resp = c.send(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..100 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not reached: {what}");
    }

    #[tokio::test]
    async fn idle_connections_are_reused_then_closed_after_the_idle_timeout() {
        let (addr, opened, closed) = pod().await;
        let up = Upstream {
            idle_timeout: Duration::from_millis(100),
            ..Upstream::new()
        };
        let pool = ConnPool::new(&up, &[addr.into()], &PodTransport::HTTP1);
        for _ in 0..3 {
            exchange(&pool, addr).await;
        }
        assert_eq!(opened.load(Ordering::SeqCst), 1, "one connection, reused");
        let idle = || pool.pods.load()[&addr].idle_here().lock().len();
        assert_eq!(idle(), 1);

        // The sweep leaves a fresh idle connection alone and closes an expired one.
        pool.sweep();
        assert_eq!(idle(), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.sweep();
        assert_eq!(idle(), 0);
        eventually("the pod saw the close", || {
            closed.load(Ordering::SeqCst) == 1
        })
        .await;

        // An expired connection is not used even without a sweep.
        exchange(&pool, addr).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        exchange(&pool, addr).await;
        assert_eq!(opened.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_pods_connections_close_when_the_pod_leaves_and_its_last_user_is_done() {
        let (addr, opened, closed) = pod().await;
        let pool = ConnPool::new(&Upstream::new(), &[addr.into()], &PodTransport::HTTP1);
        // One connection in use and one idle when the pod leaves.
        let in_use = pool
            .checkout(addr, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        exchange(&pool, addr).await;
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        pool.set_pods(&[]);
        eventually("the idle connection closed with its pod", || {
            closed.load(Ordering::SeqCst) == 1
        })
        .await;
        let Checkout::H1(in_use) = in_use else {
            panic!("an HTTP/1.1 pool")
        };
        in_use.put_back();
        eventually("the connection in use closed after its request", || {
            closed.load(Ordering::SeqCst) == 2
        })
        .await;
        // A request to a pod that left still gets an answer, on a connection not kept.
        exchange(&pool, addr).await;
        eventually("the unpooled connection closed", || {
            closed.load(Ordering::SeqCst) == 3
        })
        .await;
    }

    #[tokio::test]
    async fn each_worker_reuses_only_the_connections_it_opened() {
        let (addr, opened, closed) = pod().await;
        let up = Upstream {
            idle_lists: 2,
            ..Upstream::new()
        };
        let pool = ConnPool::new(&up, &[addr.into()], &PodTransport::HTTP1);
        let opened = || opened.load(Ordering::SeqCst);
        crate::workers::set_current_worker(0);
        exchange(&pool, addr).await;
        exchange(&pool, addr).await;
        assert_eq!(opened(), 1);
        crate::workers::set_current_worker(1);
        exchange(&pool, addr).await;
        assert_eq!(opened(), 2, "worker 1 opens its own connection");
        exchange(&pool, addr).await;
        crate::workers::set_current_worker(0);
        exchange(&pool, addr).await;
        assert_eq!(opened(), 2, "each worker reused its own");
        let lens = |pool: &ConnPool| {
            pool.pods.load()[&addr]
                .idle
                .iter()
                .map(|l| l.lock().len())
                .collect::<Vec<_>>()
        };
        assert_eq!(lens(&pool), [1, 1]);
        // The pod leaves: the idle connections of every worker close.
        pool.set_pods(&[]);
        eventually("both workers' idle connections closed", || {
            closed.load(Ordering::SeqCst) == 2
        })
        .await;
    }

    #[tokio::test]
    async fn a_pod_that_stays_keeps_its_connections_across_pod_changes() {
        let (addr, opened, _) = pod().await;
        let (other, _, _) = pod().await;
        let pool = ConnPool::new(&Upstream::new(), &[addr.into()], &PodTransport::HTTP1);
        exchange(&pool, addr).await;
        pool.set_pods(&[addr.into(), other.into()]);
        exchange(&pool, addr).await;
        assert_eq!(opened.load(Ordering::SeqCst), 1, "reused across the change");
    }
}
