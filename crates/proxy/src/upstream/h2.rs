//! HTTP/2 to pods (`protocol: h2c`, or `h2` over TLS): one or a few multiplexed connections per
//! pod, each stream one request.
//!
//! A stream goes on the pod's oldest open connection that has room (fewer of our streams than
//! the pod's `SETTINGS_MAX_CONCURRENT_STREAMS`, read by `frames.rs`); when none has, one new
//! connection is opened, and requests arriving meanwhile wait for it rather than open their own.
//! So a pod gets as many connections as its streams need (`maxConcurrentRequestsPerInstance`
//! over its stream limit, usually one), never one per request. The admission slot a request
//! holds is what bounds the pod's streams, exactly as for HTTP/1.1: the slot is taken before the
//! stream opens and freed when the pod's answer ends or the stream is reset.
//!
//! hyper drives each connection in a task of its own. A connection that the pod closed, sent
//! GOAWAY on, or that failed takes no new streams and leaves the pod's list (its streams in
//! progress finish); the next request opens a new one. Connections without streams for the idle
//! timeout are closed by the periodic sweep. The pod's certificate (`h2`) is checked against the
//! deployment's `upstreamTls` CA only, for its `serverName` (or its IP address), with ALPN `h2`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use infergate_config::UpstreamProtocol;
use infergate_spec::PodTransport;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::frames::{PeerState, Scanned};
use super::{ConnectError, PodConns, SendError, Upstream, UpstreamBody, UpstreamError};
use crate::body::RequestBody;

/// What a deployment's pods speak, ready to connect with.
pub(crate) enum Wire {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge, no TLS.
    H2c,
    /// HTTP/2 over TLS.
    H2 {
        tls: tokio_rustls::TlsConnector,
        /// The name checked (and sent as SNI); `None`: the pod's IP address.
        server_name: Option<ServerName<'static>>,
    },
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Wire::Http1 => "http1",
            Wire::H2c => "h2c",
            Wire::H2 { .. } => "h2",
        })
    }
}

impl Wire {
    /// The wire for a deployment's transport. For `h2`, a TLS client that trusts only the
    /// deployment's CA certificates (ring, TLS 1.2 and 1.3, ALPN `h2`).
    pub(crate) fn new(t: &PodTransport) -> Self {
        match t.protocol {
            UpstreamProtocol::Http1 => Wire::Http1,
            UpstreamProtocol::H2c => Wire::H2c,
            UpstreamProtocol::H2 => {
                let mut roots = rustls::RootCertStore::empty();
                let (ca, server_name) = match &t.tls {
                    Some(tls) => (&tls.ca_certs[..], tls.server_name.as_deref()),
                    None => (&[][..], None),
                };
                let (added, _) = roots
                    .add_parsable_certificates(ca.iter().map(|c| CertificateDer::from(c.clone())));
                if added == 0 {
                    // (Validation refuses such a file; it changed since.) Nothing is trusted:
                    // every handshake fails.
                    tracing::error!(
                        "upstreamTls: no usable CA certificate; TLS connections to the pods will fail"
                    );
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default TLS versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                cfg.alpn_protocols = vec![b"h2".to_vec()];
                Wire::H2 {
                    tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
                    server_name: server_name.and_then(|n| ServerName::try_from(n.to_owned()).ok()),
                }
            }
        }
    }

    fn scheme(&self) -> Scheme {
        match self {
            Wire::H2 { .. } => Scheme::HTTPS,
            _ => Scheme::HTTP,
        }
    }
}

/// How HTTP/2 connections to pods are set up: hyper's client with its keep-alive pings (a pod
/// that stops answering is found within 30 s even with no stream open... only while streams
/// are open, as pings on an idle connection would keep it from the idle sweep).
#[derive(Debug, Clone)]
pub(crate) struct Builder(http2::Builder<TokioExecutor>);

impl Builder {
    pub(crate) fn new() -> Self {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(false);
        Builder(b)
    }
}

/// One pod's HTTP/2 connections.
#[derive(Debug)]
pub(crate) struct PodH2 {
    state: parking_lot::Mutex<PodState>,
    scheme: Scheme,
    authority: Authority,
}

#[derive(Debug, Default)]
struct PodState {
    /// Open connections, oldest first.
    conns: Vec<Arc<H2Conn>>,
    /// A new connection is being opened: requests that find no room wait for it.
    connecting: Option<Arc<Notify>>,
}

impl PodH2 {
    pub(crate) fn new(addr: SocketAddr, wire: &Wire) -> Self {
        PodH2 {
            state: parking_lot::Mutex::default(),
            scheme: wire.scheme(),
            authority: Authority::try_from(addr.to_string())
                .expect("a socket address is a valid authority"),
        }
    }

    /// The pod left: its connections take no new streams and close when their streams end.
    pub(crate) fn retire(&self) {
        let conns = std::mem::take(&mut self.state.lock().conns);
        for c in &conns {
            c.peer.set_closing();
        }
    }
}

/// One HTTP/2 connection to a pod.
pub(crate) struct H2Conn {
    tx: http2::SendRequest<RequestBody>,
    /// Our streams open on it.
    active: AtomicU32,
    peer: Arc<PeerState>,
    /// Since when it has had no stream (meaningful while `active` is 0).
    idle_since: parking_lot::Mutex<Instant>,
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn")
            .field("active", &self.active)
            .field("max_streams", &self.peer.max_streams())
            .finish_non_exhaustive()
    }
}

impl H2Conn {
    /// Whether it still takes streams.
    fn is_open(&self) -> bool {
        !self.peer.is_closing() && !self.tx.is_closed()
    }

    fn has_room(&self) -> bool {
        self.active.load(Ordering::Relaxed) < self.peer.max_streams()
    }
}

/// A stream's place on a connection: counted while the request's exchange and answer last.
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<H2Conn>);

impl StreamGuard {
    /// Takes a place on `conn` (called with the pod's list locked, or on a new connection).
    fn take(conn: &Arc<H2Conn>) -> Self {
        conn.active.fetch_add(1, Ordering::Relaxed);
        StreamGuard(conn.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self.0.idle_since.lock() = Instant::now();
        }
    }
}

/// A stream place on a pod's connection, taken for one request.
#[derive(Debug)]
pub(crate) struct H2Checkout {
    stream: StreamGuard,
    pod: Arc<PodConns>,
    reused: bool,
}

impl H2Checkout {
    pub(crate) fn reused(&self) -> bool {
        self.reused
    }

    /// Opens the stream: `req` (origin-form) gets the pod's `:scheme` and `:authority`.
    pub(crate) fn send(self, mut req: Request<RequestBody>) -> super::Exchange {
        let h2 = &self.pod.h2;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(h2.scheme.clone());
        parts.authority = Some(h2.authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut().remove(header::HOST);
        let mut tx = self.stream.0.tx.clone();
        let fut = Box::pin(tx.try_send_request(req));
        super::Exchange(super::Inner::H2(Pending {
            fut,
            stream: Some(self.stream),
            reused: self.reused,
        }))
    }
}

type Head = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<RequestBody>>>;

/// An HTTP/2 request waiting for its response head (hyper's future, boxed once per stream).
/// Dropped before it resolves, the stream is reset.
pub(crate) struct Pending {
    fut: Pin<Box<dyn Future<Output = Head> + Send>>,
    stream: Option<StreamGuard>,
    reused: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("reused", &self.reused)
            .finish_non_exhaustive()
    }
}

impl Future for Pending {
    type Output = Result<Response<UpstreamBody>, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let head = ready!(self.fut.as_mut().poll(cx));
        let stream = self.stream.take().expect("polled after its end");
        Poll::Ready(match head {
            Ok(resp) => {
                let (parts, inner) = resp.into_parts();
                Ok(Response::from_parts(parts, UpstreamBody::h2(inner, stream)))
            }
            Err(mut e) => {
                // The connection would not take the stream: no new ones on it.
                stream.0.peer.set_closing();
                match e.take_message() {
                    Some(req) => Err(SendError::NotSent {
                        req,
                        reused: self.reused,
                        error: UpstreamError::http2(e.into_error()),
                    }),
                    None => Err(SendError::Failed(UpstreamError::http2(e.into_error()))),
                }
            }
        })
    }
}

/// A stream place on a connection to `pod`: on an open connection with room, else on a new one
/// (opened by this request, or by another that was already opening one), before `deadline`.
pub(crate) async fn checkout(
    up: &Upstream,
    pod: Arc<PodConns>,
    deadline: Instant,
) -> Result<H2Checkout, ConnectError> {
    let connecting = loop {
        let wait = {
            let mut st = pod.h2.state.lock();
            st.conns.retain(|c| c.is_open());
            if let Some(c) = st.conns.iter().find(|c| c.has_room()) {
                let stream = StreamGuard::take(c);
                drop(st);
                return Ok(H2Checkout {
                    stream,
                    pod,
                    reused: true,
                });
            }
            match &st.connecting {
                Some(n) => {
                    // Registered before the lock is released: the wake-up cannot be missed.
                    let mut wait = Box::pin(n.clone().notified_owned());
                    wait.as_mut().enable();
                    wait
                }
                None => {
                    let n = Arc::new(Notify::new());
                    st.connecting = Some(n.clone());
                    break Connecting {
                        pod: &pod,
                        notify: n,
                    };
                }
            }
        };
        if tokio::time::timeout_at(deadline, wait).await.is_err() {
            return Err(ConnectError::Deadline);
        }
    };
    let conn = connect(up, &pod, deadline).await;
    let mut st = pod.h2.state.lock();
    let conn = conn?;
    let stream = StreamGuard::take(&conn);
    if !pod.is_retired() {
        st.conns.push(conn);
    }
    drop(st);
    drop(connecting);
    Ok(H2Checkout {
        stream,
        pod,
        reused: false,
    })
}

/// The request opening a pod's new connection; when it is done (or gone), the requests waiting
/// for that connection look again.
struct Connecting<'a> {
    pod: &'a PodConns,
    notify: Arc<Notify>,
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        let mut st = self.pod.h2.state.lock();
        if st
            .connecting
            .as_ref()
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
        {
            st.connecting = None;
        }
        drop(st);
        self.notify.notify_waiters();
    }
}

/// A new connection to `pod`, its HTTP/2 handshake done and the pod's first SETTINGS read (so
/// its stream limit is known before the first stream), within the connect timeout and `deadline`.
async fn connect(
    up: &Upstream,
    pod: &PodConns,
    deadline: Instant,
) -> Result<Arc<H2Conn>, ConnectError> {
    let tcp = up.tcp(pod.addr, deadline).await?;
    let within = deadline.min(Instant::now() + up.connect_timeout);
    let peer = Arc::new(PeerState::new());
    let tx = match &*pod.wire {
        Wire::H2 { tls, server_name } => {
            let name = server_name
                .clone()
                .unwrap_or_else(|| ServerName::IpAddress(pod.addr.ip().into()));
            let tls = match tokio::time::timeout_at(within, tls.connect(name, tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(ConnectError::Tls(e)),
                Err(_) => return Err(ConnectError::Timeout(up.connect_timeout)),
            };
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(ConnectError::Tls(std::io::Error::other(
                    "the pod did not agree to HTTP/2 (ALPN h2)",
                )));
            }
            handshake(&up.h2, tls, &peer).await?
        }
        _ => handshake(&up.h2, tcp, &peer).await?,
    };
    // The pod's SETTINGS are the first thing it sends; a pod that sends none in time is used
    // with the default limit, one that closes the connection instead does not speak HTTP/2.
    if let Ok(false) = tokio::time::timeout_at(within, peer.settings_seen()).await {
        return Err(ConnectError::NotHttp2);
    }
    Ok(Arc::new(H2Conn {
        tx,
        active: AtomicU32::new(0),
        peer,
        idle_since: parking_lot::Mutex::new(Instant::now()),
    }))
}

async fn handshake<T>(
    b: &Builder,
    io: T,
    peer: &Arc<PeerState>,
) -> Result<http2::SendRequest<RequestBody>, ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Scanned::new(io, peer.clone()));
    let (tx, conn) = b.0.handshake(io).await.map_err(ConnectError::Handshake)?;
    let peer = peer.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP/2 connection to a pod ended");
        }
        peer.set_closing();
    });
    Ok(tx)
}

/// Drops the pod's connections that are closed, or have had no stream for `idle_timeout`.
pub(crate) fn sweep(pod: &PodConns, idle_timeout: Duration) {
    let gone: Vec<Arc<H2Conn>> = {
        let mut st = pod.h2.state.lock();
        let (keep, gone) = std::mem::take(&mut st.conns).into_iter().partition(|c| {
            c.is_open()
                && (c.active.load(Ordering::Relaxed) > 0
                    || c.idle_since.lock().elapsed() < idle_timeout)
        });
        st.conns = keep;
        gone
    };
    // Closed outside the lock (hyper closes a connection once its last handle is gone).
    drop(gone);
}

#[cfg(test)]
mod tests;
