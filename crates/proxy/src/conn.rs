//! Client connections at the edge: admission (the connection caps), the protocol (ALPN after
//! TLS, the HTTP/2 preface on plain HTTP), the deadlines before and between requests, and the
//! hyper connection that serves the requests.
//!
//! One connection's life:
//!
//! 1. **Admission** at accept: above `limits.maxConnections` open connections, or
//!    `limits.maxConnectionsPerClient` from the client's address, it is closed at once (a reset)
//!    and counted in `infergate_connections_refused_total`.
//! 2. **Before the first request**: one deadline, `headerReadTimeoutMs` from the accept, covers
//!    the TLS handshake (itself at most 10 s), the protocol choice and the first request head.
//!    Nothing from hyper is allocated until the client has sent a byte.
//! 3. **Between requests** (no request in flight: HTTP/1.1 after a response, HTTP/2 with no
//!    open stream): `idleTimeoutMs` from the end of the last response; on HTTP/1.1 the first
//!    byte of the next request switches to `headerReadTimeoutMs` for its head (HAProxy's
//!    `timeout http-keep-alive` then `timeout http-request`). Idle connections are closed
//!    gracefully (HTTP/2: GOAWAY); an overdue head closes the connection at once.
//! 4. **During requests** no connection timer runs: the request's own timeouts apply.
//! 5. **Parked** (HTTP/1.1): a keep-alive connection idle for [`PARK_AFTER`] gives hyper's
//!    connection (its read and write buffers, ~24 KiB) back and waits for the client's next byte
//!    holding only the socket (and the TLS session, which holds no buffer while it waits); the
//!    next request gets a fresh hyper connection. The client sees nothing: no byte is written,
//!    the socket stays open, and `idleTimeoutMs` still closes it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::request::Parts;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use infergate_config::Limits;
use infergate_metrics::{Counter, Gauge, Registry};
use infergate_tls::stream::{TlsAcceptor, TlsStream};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::body::BoxError;
use crate::error::ProxyError;
use crate::forward::ConnInfo;
use crate::metrics::{
    CONNECTION_TIMEOUTS_TOTAL, CONNECTIONS_PARKED, CONNECTIONS_REFUSED_TOTAL,
    TLS_HANDSHAKE_FAILURES_TOTAL,
};
use crate::response::ProxyBody;
use crate::router::Router;
use crate::watchdog::{WatchExecutor, Watchdog};

/// How long a client may take to finish the TLS handshake (within the header-read deadline).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle connection closed gracefully may take to go (HTTP/2: the GOAWAY and PING
/// round trip) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long an HTTP/1.1 keep-alive connection waits with no request before it is parked: its
/// hyper connection (buffers included) is dropped until the client's next byte.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);
/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// hyper's HTTP/1.1 parser keeps up to this many header slots on the stack; more cost a heap
/// allocation per request.
const H1_INLINE_HEADERS: usize = 100;

// === Edge: the limits, the protocol builders and the metrics ===

/// Everything a connection needs from the configuration, built once at start.
pub(crate) struct Edge {
    header_read: Duration,
    idle: Duration,
    h1: http1::Builder,
    /// HTTP/2: every stream runs under the stream timers ([`WatchExecutor`]).
    h2: http2::Builder<WatchExecutor>,
    admission: Arc<Admission>,
    handshake_failures: Counter,
    header_timeouts: Counter,
    idle_timeouts: Counter,
    /// HTTP/1.1 connections parked now.
    parked: Gauge,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("header_read", &self.header_read)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

/// What a request head may hold; the router answers 431 above it (see [`HeadLimits::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head in bytes, counted as HTTP/1.1 (request line + `name: value\r\n` per field).
    pub bytes: usize,
    /// Most header fields.
    pub fields: usize,
}

impl HeadLimits {
    /// From `limits.maxRequestHeaderBytes` and `limits.maxRequestHeaders`.
    pub fn from_limits(l: &Limits) -> Self {
        HeadLimits {
            bytes: usize::try_from(l.max_request_header_bytes).unwrap_or(usize::MAX),
            fields: l.max_request_headers as usize,
        }
    }

    /// What the protocol parsers accept before answering a bare 431 themselves: heads between
    /// the limit and this ceiling reach the router, which answers its own 431 (JSON body,
    /// request id, logged and counted). HTTP/2 counts 32 more bytes per field.
    fn parser_ceiling(&self) -> (usize, u32) {
        let h1 = self.bytes.saturating_mul(2);
        let h2 = h1.saturating_add(self.fields.saturating_mul(32));
        (h1, u32::try_from(h2).unwrap_or(u32::MAX))
    }

    /// Checks a parsed head: too many fields, or too many bytes (request line, or HTTP/2's
    /// pseudo-headers, and the fields as HTTP/1.1 writes them). No allocation.
    pub fn check(&self, parts: &Parts) -> Result<(), ProxyError> {
        let fields = parts.headers.len();
        if fields > self.fields {
            return Err(ProxyError::HeadTooLarge {
                what: "header fields",
                limit: self.fields as u64,
            });
        }
        // "METHOD target HTTP/1.1\r\n" and the blank line that ends the head.
        let uri = &parts.uri;
        let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
            + uri.scheme_str().map_or(0, |s| s.len() + 3)
            + uri.authority().map_or(0, |a| a.as_str().len());
        let mut bytes = parts.method.as_str().len() + 1 + target + 11 + 2;
        for (name, value) in &parts.headers {
            bytes += name.as_str().len() + 2 + value.len() + 2;
        }
        if bytes > self.bytes {
            return Err(ProxyError::HeadTooLarge {
                what: "bytes of request line and header fields",
                limit: self.bytes as u64,
            });
        }
        Ok(())
    }
}

impl Edge {
    /// The edge of a server with these limits, counting in `registry`.
    pub(crate) fn new(l: &Limits, registry: &Registry) -> Self {
        let head = HeadLimits::from_limits(l);
        let (h1_ceiling, h2_ceiling) = head.parser_ceiling();
        let mut h1 = http1::Builder::new();
        // The deadlines are this module's (hyper's own header timer would also run between
        // keep-alive requests, from the end of a response).
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true)
            .max_header_size(h1_ceiling)
            .max_buf_size(h1_ceiling.max(8192));
        if head.fields > H1_INLINE_HEADERS {
            h1.max_headers(head.fields);
        }
        let mut h2 = http2::Builder::new(WatchExecutor);
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(l.http2_max_concurrent_streams)
            .initial_stream_window_size(l.http2_initial_stream_window_bytes)
            .initial_connection_window_size(l.http2_initial_connection_window_bytes)
            .max_header_list_size(h2_ceiling);
        if l.http2_keepalive_interval_ms > 0 {
            h2.keep_alive_interval(Duration::from_millis(l.http2_keepalive_interval_ms))
                .keep_alive_timeout(Duration::from_millis(l.http2_keepalive_timeout_ms));
        }
        let timeouts = |kind| registry.counter(CONNECTION_TIMEOUTS_TOTAL, &[("timeout", kind)]);
        Edge {
            header_read: Duration::from_millis(l.header_read_timeout_ms),
            idle: Duration::from_millis(l.idle_timeout_ms),
            h1,
            h2,
            admission: Arc::new(Admission::new(l, registry)),
            handshake_failures: registry.counter(TLS_HANDSHAKE_FAILURES_TOTAL, &[]),
            header_timeouts: timeouts("header_read"),
            idle_timeouts: timeouts("idle"),
            parked: registry.gauge(CONNECTIONS_PARKED, &[]),
        }
    }

    /// Completes once every admitted connection has closed.
    pub(crate) async fn all_closed(&self) {
        self.admission.all_closed().await;
    }
}

// === Admission: the connection caps ===

/// Open connections, overall and per client address, against their caps.
struct Admission {
    open: AtomicUsize,
    max: usize,
    /// 0: no per-address cap.
    per_client: usize,
    by_client: Mutex<HashMap<IpAddr, usize>>,
    closed: Notify,
    refused_global: Counter,
    refused_per_client: Counter,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Global,
    PerClient,
}

/// An admitted connection's place, given back on drop.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    client: Option<IpAddr>,
    open: Gauge,
}

impl Admission {
    fn new(l: &Limits, registry: &Registry) -> Self {
        let max = usize::try_from(l.max_connections).unwrap_or(usize::MAX);
        let per_client = usize::try_from(l.max_connections_per_client).unwrap_or(usize::MAX);
        let refused = |reason| registry.counter(CONNECTIONS_REFUSED_TOTAL, &[("reason", reason)]);
        Admission {
            open: AtomicUsize::new(0),
            max,
            per_client: if per_client >= max { 0 } else { per_client },
            by_client: Mutex::new(HashMap::new()),
            closed: Notify::new(),
            refused_global: refused("global_limit"),
            refused_per_client: refused("per_client_limit"),
        }
    }

    /// Takes a place for a connection from `client`, or says which cap refuses it.
    fn admit(self: &Arc<Self>, client: IpAddr, open: &Gauge) -> Result<Admitted, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.release_global();
            self.refused_global.increment(1);
            return Err(Refusal::Global);
        }
        let client = if self.per_client == 0 {
            None
        } else {
            let client = client.to_canonical();
            let mut map = self.by_client.lock();
            let n = map.entry(client).or_insert(0);
            if *n >= self.per_client {
                drop(map);
                self.release_global();
                self.refused_per_client.increment(1);
                return Err(Refusal::PerClient);
            }
            *n += 1;
            Some(client)
        };
        open.increment(1.0);
        Ok(Admitted {
            admission: self.clone(),
            client,
            open: open.clone(),
        })
    }

    fn release_global(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.closed.notify_waiters();
        }
    }

    async fn all_closed(&self) {
        loop {
            let mut closed = pin!(self.closed.notified());
            closed.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(client) = self.client {
            let mut map = self.admission.by_client.lock();
            if let Some(n) = map.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&client);
                }
            }
        }
        self.open.decrement(1.0);
        self.admission.release_global();
    }
}

// === ConnState: what the deadlines are computed from ===

/// One connection's request activity, shared by its service (requests start and end), its IO
/// (bytes arriving between requests) and its driver (the deadlines).
#[derive(Debug)]
struct ConnState {
    start: Instant,
    /// Requests whose head arrived and whose response body is not finished.
    in_flight: AtomicU32,
    /// Whether a first request head has arrived.
    served: AtomicBool,
    /// Milliseconds after `start` when `in_flight` last went to 0.
    idle_since: AtomicU64,
    /// 1 + milliseconds after `start` when the first byte of the next HTTP/1.1 request arrived
    /// with no request in flight; 0: none yet.
    next_head_at: AtomicU64,
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// No complete request head within `headerReadTimeoutMs`.
    Head,
    /// No request in flight for `idleTimeoutMs`.
    Idle,
    /// HTTP/1.1: no request in flight for the park delay ([`PARK_AFTER`]).
    Park,
}

/// The connection's next deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    At(Instant, Expiry),
    /// Requests in flight: no connection deadline.
    Busy,
}

impl ConnState {
    fn new(start: Instant) -> Self {
        ConnState {
            start,
            in_flight: AtomicU32::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            next_head_at: AtomicU64::new(0),
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_millis() as u64
    }

    /// A request head arrived.
    fn request_started(&self) {
        self.served.store(true, Ordering::Relaxed);
        self.next_head_at.store(0, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A response ended (or the request was abandoned).
    fn request_done(&self) {
        // `idle_since` is written before the count drops, so whoever sees 0 sees its time.
        self.idle_since
            .store(self.millis(Instant::now()), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// HTTP/1.1 bytes arrived: with no request in flight, the next head has begun.
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.served.load(Ordering::Relaxed)
            && self.next_head_at.load(Ordering::Relaxed) == 0
        {
            let at = self.millis(Instant::now()) + 1;
            self.next_head_at.store(at, Ordering::Relaxed);
        }
    }

    /// The deadline in force now; with `park` (shorter than `idle`), an idle connection's is
    /// its parking.
    fn due(&self, header_read: Duration, idle: Duration, park: Option<Duration>) -> Due {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Due::Busy;
        }
        if !self.served.load(Ordering::Relaxed) {
            return Due::At(self.start + header_read, Expiry::Head);
        }
        let ms = Duration::from_millis;
        match self.next_head_at.load(Ordering::Relaxed) {
            0 => {
                let since = self.start + ms(self.idle_since.load(Ordering::Relaxed));
                match park {
                    Some(p) => Due::At(since + p, Expiry::Park),
                    None => Due::At(since + idle, Expiry::Idle),
                }
            }
            at => Due::At(self.start + ms(at - 1) + header_read, Expiry::Head),
        }
    }
}

/// Counts a request in flight on its connection until the response body is done or dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: &Arc<ConnState>) -> Self {
        state.request_started();
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// The response body handed to hyper: the router's, with the request counted in flight on
/// the connection until it ends.
pub(crate) struct ConnBody {
    inner: ProxyBody,
    _in_flight: InFlight,
}

impl Body for ConnBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === EdgeIo: the bytes read to choose the protocol, then the socket ===

/// The connection's stream for hyper: first the bytes read while choosing the protocol, then
/// the stream itself; on HTTP/1.1 it tells the state when bytes arrive between requests.
struct EdgeIo<T> {
    inner: T,
    prefix: [u8; 24],
    prefix_pos: u8,
    prefix_len: u8,
    /// Bytes a parked hyper connection had read but not parsed (read after the prefix).
    carry: Bytes,
    /// HTTP/1.1: where arriving bytes are noted.
    watch: Option<Arc<ConnState>>,
}

impl<T> EdgeIo<T> {
    fn new(inner: T, prefix: &[u8], watch: Option<Arc<ConnState>>) -> Self {
        let mut p = [0; 24];
        p[..prefix.len()].copy_from_slice(prefix);
        EdgeIo {
            inner,
            prefix: p,
            prefix_pos: 0,
            prefix_len: prefix.len() as u8,
            carry: Bytes::new(),
            watch,
        }
    }
}

impl<T: WaitInput> EdgeIo<T> {
    /// Waits until there is something to read (end of stream and errors included) without
    /// reading it.
    async fn wait_for_input(&self) -> io::Result<()> {
        if self.prefix_pos < self.prefix_len || !self.carry.is_empty() {
            return Ok(());
        }
        self.inner.wait_for_input().await
    }
}

/// A stream that can wait for its peer's next bytes without reading them (and without holding
/// a buffer meanwhile).
pub(crate) trait WaitInput {
    fn wait_for_input(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl WaitInput for TcpStream {
    async fn wait_for_input(&self) -> io::Result<()> {
        // A peek of one byte: Ok(0) is the end of the stream, which is input too.
        self.peek(&mut [0u8; 1]).await.map(|_| ())
    }
}

impl WaitInput for TlsIo {
    fn wait_for_input(&self) -> impl Future<Output = io::Result<()>> + Send {
        TlsStream::wait_for_input(self)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for EdgeIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix_pos < this.prefix_len {
            let rest = &this.prefix[this.prefix_pos as usize..this.prefix_len as usize];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.prefix_pos += n as u8;
            return Poll::Ready(Ok(()));
        }
        if !this.carry.is_empty() {
            let n = this.carry.len().min(buf.remaining());
            buf.put_slice(&this.carry[..n]);
            bytes::Buf::advance(&mut this.carry, n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before
            && let Some(state) = &this.watch
        {
            state.bytes_arrived();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for EdgeIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// === One connection ===

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// What the plain-HTTP bytes read so far say about the protocol: `None` while they are a
/// proper prefix of the HTTP/2 preface.
fn sniff(bytes: &[u8]) -> Option<Proto> {
    if !H2_PREFACE.starts_with(bytes) {
        Some(Proto::H1)
    } else if bytes.len() == H2_PREFACE.len() {
        Some(Proto::H2)
    } else {
        None
    }
}

/// Admits an accepted connection, or closes it at once (a reset: nothing was read, and the
/// socket does not linger) when a cap refuses it.
pub(crate) fn admit(
    edge: &Edge,
    tcp: &TcpStream,
    remote: SocketAddr,
    open: &Gauge,
) -> Option<Admitted> {
    match edge.admission.admit(remote.ip(), open) {
        Ok(a) => Some(a),
        Err(why) => {
            let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
            // Anyone can cause these: a few lines a second, the next line says how many were
            // left out (`infergate_connections_refused_total` counts them all).
            if let Some(left_out) = REFUSED_LOG.allow() {
                tracing::warn!(
                    %remote, reason = ?why, left_out,
                    "connection refused: connection cap reached (limits.maxConnections / \
                     limits.maxConnectionsPerClient)"
                );
            }
            None
        }
    }
}

/// The log lines of refused connections (see [`admit`]).
static REFUSED_LOG: infergate_metrics::LogLimiter =
    infergate_metrics::LogLimiter::new(5, Duration::from_secs(1));

/// Serves one admitted connection until it closes, times out, or the server stops.
pub(crate) async fn serve(
    tcp: TcpStream,
    info: ConnInfo,
    tls: Option<TlsAcceptor>,
    router: Arc<Router>,
    edge: Arc<Edge>,
    admitted: Admitted,
    mut stop: watch::Receiver<bool>,
) {
    let _admitted = admitted;
    let _ = tcp.set_nodelay(true);
    let start = Instant::now();
    let state = Arc::new(ConnState::new(start));
    let first_head = start + edge.header_read;
    let opened = tokio::select! {
        o = open(tcp, tls.as_ref(), &edge, &state, first_head) => o,
        () = stopped(&mut stop) => return,
    };
    let Some(mut opened) = opened else { return };
    loop {
        // The serving state is large (hyper's connection and its buffers, the request's
        // future): it is allocated only while the client is sending or being answered.
        let ended = Box::pin(run(
            opened,
            info,
            router.clone(),
            edge.clone(),
            state.clone(),
            stop.clone(),
        ))
        .await;
        let Some(p) = ended else { return };
        // Parked: this task holds the socket (and the TLS session) and the small state only.
        let resume = match &p {
            Opened::Plain(io, _) => parked(io, &edge, &state, &mut stop).await,
            Opened::Tls(io, _) => parked(io, &edge, &state, &mut stop).await,
        };
        if !resume {
            let _ = match p {
                Opened::Plain(mut io, _) => tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await,
                Opened::Tls(mut io, _) => tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await,
            };
            return;
        }
        opened = p;
    }
}

/// Reads until the bytes tell HTTP/2's preface from anything else (HTTP/1.1); `None` if the
/// connection ends first. Returns the protocol and the bytes read (at most 24).
async fn detect(tcp: &mut TcpStream) -> Option<(Proto, [u8; 24], usize)> {
    let mut buf = [0u8; 24];
    let mut n = 0;
    loop {
        match tcp.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return None,
            Ok(r) => n += r,
        }
        if let Some(p) = sniff(&buf[..n]) {
            return Some((p, buf, n));
        }
    }
}

/// A TLS session, boxed: a connection waiting for its client keeps a small task. (The session
/// holds no I/O buffer while it waits: see [`infergate_tls::stream`].)
type TlsIo = Box<TlsStream>;

/// A connection ready for hyper.
enum Opened {
    Plain(EdgeIo<TcpStream>, Proto),
    Tls(EdgeIo<TlsIo>, Proto),
}

/// The TLS handshake (at most 10 s) or the protocol detection, then the wait for the client's
/// first bytes, all by `first_head`; `None` when the connection ended, failed or ran out of
/// time first. (One timer at a time: the task of a waiting connection stays small.)
async fn open(
    tcp: TcpStream,
    tls: Option<&TlsAcceptor>,
    edge: &Edge,
    state: &Arc<ConnState>,
    first_head: Instant,
) -> Option<Opened> {
    let timed_out = || {
        edge.header_timeouts.increment(1);
        None
    };
    let Some(acceptor) = tls else {
        let mut tcp = tcp;
        let (proto, buf, n) = match tokio::time::timeout_at(first_head, detect(&mut tcp)).await {
            Ok(detected) => detected?,
            Err(_) => return timed_out(),
        };
        let watch = (proto == Proto::H1).then(|| state.clone());
        return Some(Opened::Plain(EdgeIo::new(tcp, &buf[..n], watch), proto));
    };
    let remote = tcp.peer_addr().ok();
    let handshake_by = first_head.min(state.start + HANDSHAKE_TIMEOUT);
    // Boxed: the handshake's state is large and needed only for its duration. (The block
    // ends the result's life here: the session inside it is boxed before the next await.)
    let stream: TlsIo = {
        let handshake = tokio::time::timeout_at(handshake_by, Box::pin(acceptor.accept(tcp))).await;
        match handshake {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => {
                edge.handshake_failures.increment(1);
                tracing::debug!(remote = ?remote, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                edge.handshake_failures.increment(1);
                tracing::debug!(remote = ?remote, "TLS handshake timed out");
                return if handshake_by == first_head {
                    timed_out()
                } else {
                    None
                };
            }
        }
    };
    let proto = match stream.alpn_protocol() {
        Some(b"h2") => Proto::H2,
        _ => Proto::H1,
    };
    // Until the client sends something, hold only the TLS session, not hyper's buffers.
    if tokio::time::timeout_at(first_head, stream.wait_for_input())
        .await
        .is_err()
    {
        return timed_out();
    }
    let watch = (proto == Proto::H1).then(|| state.clone());
    Some(Opened::Tls(EdgeIo::new(stream, &[], watch), proto))
}

/// Serves the connection with hyper until it ends (`None`) or, HTTP/1.1, parks (`Some`: the
/// connection to wait on, hyper's side taken apart).
async fn run(
    opened: Opened,
    info: ConnInfo,
    router: Arc<Router>,
    edge: Arc<Edge>,
    state: Arc<ConnState>,
    mut stop: watch::Receiver<bool>,
) -> Option<Opened> {
    let svc = {
        let (router, state) = (router.clone(), state.clone());
        service_fn(move |req: Request<Incoming>| {
            let in_flight = InFlight::start(&state);
            let router = router.clone();
            async move {
                let resp = router.handle(req, info).await;
                Ok::<_, Infallible>(resp.map(|inner| ConnBody {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let (edge, state, stop) = (&*edge, &*state, &mut stop);
    let result = match opened {
        Opened::Plain(io, Proto::H1) => serve_h1(io, svc, &router, edge, state, stop, &info)
            .await
            .map(|p| p.map(|io| Opened::Plain(io, Proto::H1))),
        Opened::Tls(io, Proto::H1) => serve_h1(io, svc, &router, edge, state, stop, &info)
            .await
            .map(|p| p.map(|io| Opened::Tls(io, Proto::H1))),
        Opened::Plain(io, Proto::H2) => {
            let c = pin!(edge.h2.serve_connection(TokioIo::new(io), svc));
            drive(c, |c| c.graceful_shutdown(), edge, state, stop, None)
                .await
                .map(|_| None)
        }
        Opened::Tls(io, Proto::H2) => {
            let c = pin!(edge.h2.serve_connection(TokioIo::new(io), svc));
            drive(c, |c| c.graceful_shutdown(), edge, state, stop, None)
                .await
                .map(|_| None)
        }
    };
    let e = match result {
        Ok(parked) => return parked,
        Err(e) => e,
    };
    // hyper's HTTP/1.1 parser answered a head over its ceiling with a bare 431 itself.
    if e.is_parse_too_large() {
        router.count_unrouted(431);
    }
    tracing::debug!(remote = %info.remote, error = %e, "connection ended with an error");
    None
}

/// An HTTP/1.1 connection. It runs under the stream timers (one exchange at a time): the hyper
/// connection lives inside the watched future, so when a timer fires the exchange is dropped
/// under the watchdog, which records the timer on the request. A head that began but did not
/// complete in time gets the router's own `408` (as HAProxy answers `timeout http-request`);
/// a connection that never began one closes silently (as with HAProxy's `http-ignore-probes`:
/// browsers open spare connections they may never use).
async fn serve_h1<T, S>(
    io: EdgeIo<T>,
    svc: S,
    router: &Router,
    edge: &Edge,
    state: &ConnState,
    stop: &mut watch::Receiver<bool>,
    info: &ConnInfo,
) -> hyper::Result<Option<EdgeIo<T>>>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = ConnBody> + Unpin,
{
    let conn = async move {
        let mut c = edge.h1.serve_connection(TokioIo::new(io), svc);
        let ended = drive(
            Pin::new(&mut c),
            |c| c.graceful_shutdown(),
            edge,
            state,
            stop,
            Some(PARK_AFTER),
        )
        .await?;
        match ended {
            Ended::Closed => Ok(None),
            Ended::HeadTimeout => {
                let io = c.into_parts().io.into_inner();
                router.count_unrouted(408);
                late_408(io, edge.header_read).await;
                Ok(None)
            }
            Ended::Park => {
                // `graceful_shutdown` on an idle connection closes hyper's side at once,
                // writing nothing; without the shutdown the socket stays open. (Were a
                // response still being written, hyper finishes it first: no request is in
                // flight, so its head is out and carries no `connection: close`.)
                let parts = c.without_shutdown().await?;
                let mut io = parts.io.into_inner();
                // The bytes read and not parsed, copied: `read_buf` shares hyper's whole read
                // buffer (16 KiB after a request), which parking is there to give back.
                if !parts.read_buf.is_empty() {
                    io.carry = Bytes::copy_from_slice(&parts.read_buf);
                }
                Ok(Some(io))
            }
        }
    };
    watched(conn, info).await
}

/// A parked HTTP/1.1 connection waits for the client's next byte (true), or ends (false) at
/// the idle timeout, when the server stops, or on an error.
async fn parked<T: WaitInput>(
    io: &EdgeIo<T>,
    edge: &Edge,
    state: &ConnState,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    edge.parked.increment(1.0);
    crate::memory::parked();
    let resume = tokio::select! {
        biased;
        r = io.wait_for_input() => r.is_ok(),
        why = deadline(state, edge.header_read, edge.idle, None) => {
            if why == Expiry::Idle {
                edge.idle_timeouts.increment(1);
            } else {
                edge.header_timeouts.increment(1);
            }
            false
        }
        () = stopped(stop) => false,
    };
    edge.parked.decrement(1.0);
    resume
}

/// Writes the router's `408` on a connection whose request head did not complete in time (the
/// rest of the head is not read) and closes it; at most [`CLOSE_GRACE`] for the whole.
async fn late_408<T: AsyncWrite + Unpin>(mut io: T, header_read: Duration) {
    let err = ProxyError::HeaderReadTimeout {
        ms: header_read.as_millis() as u64,
    };
    let id = crate::headers::new_request_id();
    let (status, code) = err.status_and_code();
    let body = serde_json::json!({
        "error": {"code": code, "message": err.to_string()},
        "requestId": id.to_str().unwrap_or(""),
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nx-request-id: {}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        id.to_str().unwrap_or(""),
        body.len()
    );
    let write = async {
        io.write_all(head.as_bytes()).await?;
        io.write_all(body.as_bytes()).await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, write).await;
}

/// An HTTP/1.1 connection under the stream timers: when one fires mid-exchange the connection
/// is closed (the client sees the answer end without its terminal chunk).
async fn watched<R: Default>(
    conn: impl Future<Output = hyper::Result<R>>,
    info: &ConnInfo,
) -> hyper::Result<R> {
    match Watchdog::new(conn).await {
        Some(r) => r,
        None => {
            tracing::debug!(remote = %info.remote, "stream timer fired: connection closed");
            Ok(R::default())
        }
    }
}

/// Polls the hyper connection until it ends; closes it when a deadline passes. When the server
/// stops, a connection that has had no request closes at once, others gracefully (in-flight
/// requests finish; the drain timeout bounds them); the deadlines still apply meanwhile.
async fn drive<C>(
    mut conn: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    edge: &Edge,
    state: &ConnState,
    stop: &mut watch::Receiver<bool>,
    park: Option<Duration>,
) -> hyper::Result<Ended>
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut deadline = pin!(deadline(state, edge.header_read, edge.idle, park));
    let mut stop = pin!(stopped(stop));
    let mut draining = false;
    let expired = loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => return r.map(|()| Ended::Closed),
            () = stop.as_mut(), if !draining => {
                if !state.served.load(Ordering::Relaxed) {
                    return Ok(Ended::Closed);
                }
                draining = true;
                graceful(conn.as_mut());
            }
            e = deadline.as_mut() => break e,
        }
    };
    match expired {
        // Mid-head (or no head yet): nothing to finish, the connection closes at once.
        Expiry::Head => {
            edge.header_timeouts.increment(1);
            Ok(Ended::HeadTimeout)
        }
        // HTTP/1.1 idle for the park delay: hyper's side closes at once, writing nothing.
        Expiry::Park => {
            graceful(conn.as_mut());
            Ok(Ended::Park)
        }
        // Idle: a graceful close (HTTP/2: GOAWAY, so the client retries elsewhere safely).
        Expiry::Idle => {
            edge.idle_timeouts.increment(1);
            graceful(conn.as_mut());
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
            Ok(Ended::Closed)
        }
    }
}

/// How [`drive`] ended a connection that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Closed (by the client, the idle timeout or the server stopping).
    Closed,
    /// A request head did not complete within the header-read timeout: nothing was answered
    /// yet.
    HeadTimeout,
    /// HTTP/1.1, idle for the park delay: hyper's side was closed gracefully (nothing written);
    /// its connection is to be taken apart without a shutdown and the socket parked.
    Park,
}

/// Completes with the connection's deadline that passed. Re-reads the state on every poll (the
/// connection's task polls it after the hyper connection, so an HTTP/1.1 head that begins is
/// seen at once); while requests are in flight it wakes once per idle timeout to look again
/// (HTTP/2 streams end in tasks of their own).
async fn deadline(
    state: &ConnState,
    header_read: Duration,
    idle: Duration,
    park: Option<Duration>,
) -> Expiry {
    // Parking only before the idle timeout.
    let park = park.filter(|p| *p < idle);
    let initial = match state.due(header_read, idle, park) {
        Due::At(at, _) => at,
        Due::Busy => Instant::now() + idle,
    };
    let mut armed = initial;
    let mut sleep = pin!(tokio::time::sleep_until(initial));
    poll_fn(|cx| {
        loop {
            match state.due(header_read, idle, park) {
                Due::At(at, _) if at != armed => {
                    armed = at;
                    sleep.as_mut().reset(at);
                }
                Due::Busy if sleep.is_elapsed() => {
                    armed = Instant::now() + idle;
                    sleep.as_mut().reset(armed);
                }
                _ => {}
            }
            ready!(sleep.as_mut().poll(cx));
            if let Due::At(at, why) = state.due(header_read, idle, park)
                && at <= Instant::now()
            {
                return Poll::Ready(why);
            }
        }
    })
    .await
}

/// Completes once `stop` is true.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

#[cfg(test)]
mod tests;
