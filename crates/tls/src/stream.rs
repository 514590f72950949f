//! A server-side TLS stream over a [`TcpStream`] that holds no I/O buffer while it waits.
//!
//! Built on rustls's unbuffered API ([`UnbufferedServerConnection`]): the ciphertext read from
//! the socket, the decrypted bytes the reader has not taken yet and the ciphertext not yet
//! written live in buffers of this module, taken from a [`BufPool`] only when there is
//! something to hold (the socket reported readable, a record is to be sent, a record did not
//! fit in the reader's buffer) and given back as soon as they are empty. A session that waits
//! for its client, between requests or before its first one, keeps only rustls's own state
//! (traffic keys, negotiated parameters): no read buffer, unlike `tokio_rustls`, whose
//! `ServerConnection` keeps a 4 KiB (or larger) read buffer for its whole life.
//!
//! The stream implements tokio's `AsyncRead` and `AsyncWrite`:
//!
//! - **reads** wait on the socket's readiness before taking a buffer; a decrypted record larger
//!   than the caller's buffer is kept (the rest is returned by the next reads). The peer's
//!   `close_notify` is the end of the stream; the connection closing without one is an
//!   `UnexpectedEof` error (as with rustls's own reader: the data may have been truncated).
//! - **writes** encrypt at most [`MAX_WRITE`] bytes per call and try to send them at once;
//!   while earlier ciphertext is still unsent the next write waits (backpressure). Vectored
//!   writes are gathered into one record run (an HTTP/2 frame header and its payload make one
//!   TLS record, not two).
//! - **shutdown** sends `close_notify`, then shuts the socket's write half.

use std::fmt;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The size of a pooled buffer: room for two full TLS records (16 KiB of plaintext each plus
/// header, tag and padding), so one read takes up to two records and one write sends two.
pub const BUF_SIZE: usize = 34 * 1024;

/// At most this many plaintext bytes are encrypted per write call (two full records: their
/// ciphertext fits in one pooled buffer).
pub const MAX_WRITE: usize = 32 * 1024;

/// A read buffer may grow to this size while rustls holds parts of one handshake message
/// (none of ours is larger than a few KiB; a client's must not be unbounded either).
const MAX_INCOMING: usize = 4 * BUF_SIZE;

/// Free buffers a pool keeps for reuse by default (the rest are freed).
const DEFAULT_POOL_KEEP: usize = 64;

// === BufPool ===

/// Buffers for TLS sessions: handed out when a session has bytes to hold and given back when
/// it has none; a bounded number of free ones are kept (already zeroed) for reuse.
pub struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
    held: AtomicUsize,
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("held", &self.held())
            .field("free", &self.free.lock().len())
            .finish()
    }
}

impl Default for BufPool {
    fn default() -> Self {
        BufPool::new(DEFAULT_POOL_KEEP)
    }
}

impl BufPool {
    /// A pool that keeps at most `keep` free buffers.
    pub fn new(keep: usize) -> Self {
        BufPool {
            free: Mutex::new(Vec::new()),
            keep,
            held: AtomicUsize::new(0),
        }
    }

    /// How many buffers sessions hold now: 0 when every session of this pool is waiting.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// How many free buffers the pool keeps for reuse.
    pub fn free(&self) -> usize {
        self.free.lock().len()
    }

    fn take(&self) -> IoBuf {
        self.held.fetch_add(1, Ordering::Relaxed);
        let data = self.free.lock().pop().unwrap_or_else(|| vec![0; BUF_SIZE]);
        IoBuf {
            data,
            start: 0,
            end: 0,
        }
    }

    fn give(&self, buf: IoBuf) {
        self.held.fetch_sub(1, Ordering::Relaxed);
        // Grown buffers (a large handshake flight) are freed, not kept.
        if buf.data.len() == BUF_SIZE {
            let mut free = self.free.lock();
            if free.len() < self.keep {
                free.push(buf.data);
            }
        }
    }
}

// === IoBuf ===

/// Bytes `start..end` of `data` are held; `data` is initialised in full (no zeroing per use).
struct IoBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl IoBuf {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room after the held bytes: the held bytes move to the front when that makes room, and
    /// the buffer grows (up to `max`) when it is full of held bytes. Empty: at `max`.
    fn spare(&mut self, max: usize) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() && self.data.len() < max {
            let len = (self.data.len() + BUF_SIZE).min(max);
            self.data.resize(len, 0);
        }
        &mut self.data[self.end..]
    }

    /// At least `n` bytes of room after the held bytes (grows as needed).
    fn reserve(&mut self, n: usize) -> &mut [u8] {
        if self.data.len() - self.end < n {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.data.len() - self.end < n {
                self.data.resize(self.end + n, 0);
            }
        }
        &mut self.data[self.end..]
    }

    fn push(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }
}

// === TlsAcceptor ===

/// Accepts TLS connections with one server config; the sessions take their buffers from one
/// pool. Cheap to clone.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
    pool: Arc<BufPool>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl From<Arc<ServerConfig>> for TlsAcceptor {
    fn from(config: Arc<ServerConfig>) -> Self {
        TlsAcceptor::new(config, Arc::new(BufPool::default()))
    }
}

impl TlsAcceptor {
    /// An acceptor for `config` whose sessions use `pool`.
    pub fn new(config: Arc<ServerConfig>, pool: Arc<BufPool>) -> Self {
        TlsAcceptor { config, pool }
    }

    /// The buffers of this acceptor's sessions.
    pub fn pool(&self) -> &Arc<BufPool> {
        &self.pool
    }

    /// The TLS handshake on `tcp`; the stream once it is complete (the server's last flight,
    /// session tickets included, handed to the socket). Application data the client sent along
    /// with its last handshake flight is kept for the first reads.
    ///
    /// Errors: the handshake failed (the reason, as `InvalidData`; the alert for the client is
    /// sent when the socket takes it), or the connection closed first (`UnexpectedEof`).
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        let conn = UnbufferedServerConnection::new(self.config.clone()).map_err(invalid)?;
        let mut stream = TlsStream {
            tcp,
            conn,
            pool: self.pool.clone(),
            incoming: None,
            plain: None,
            outgoing: None,
            tcp_eof: false,
            peer_closed: false,
            close_sent: false,
            failed: false,
            read_error: None,
        };
        poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }
}

// === TlsStream ===

/// One server-side TLS session over TCP (see the module docs).
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    pool: Arc<BufPool>,
    /// Ciphertext read and not yet discarded by rustls (a partial record, or parts of a
    /// handshake message).
    incoming: Option<IoBuf>,
    /// Decrypted bytes the reader has not taken yet.
    plain: Option<IoBuf>,
    /// Ciphertext not yet written to the socket.
    outgoing: Option<IoBuf>,
    /// The socket's read half ended.
    tcp_eof: bool,
    /// The peer's `close_notify` arrived: the plaintext stream ended.
    peer_closed: bool,
    /// Our `close_notify` is queued.
    close_sent: bool,
    /// rustls reported an error: the session is unusable.
    failed: bool,
    /// An error met by a read that returned bytes first: the next read reports it.
    read_error: Option<io::Error>,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .field("alpn", &self.alpn_protocol())
            .field("held_buffers", &self.held_buffers())
            .finish_non_exhaustive()
    }
}

/// What one turn of rustls's state machine asked for.
enum Step {
    /// Handled (a record encoded, data decrypted, the peer's close noted): turn again.
    Again,
    /// rustls needs bytes from the peer (for the handshake, or nothing is left to read).
    NeedInput,
    /// This many plaintext bytes were encrypted (0: the `close_notify` was queued).
    Wrote(usize),
    /// Both sides sent `close_notify`: nothing more can be written.
    Closed,
}

/// What a turn may do besides the handshake and reading.
enum Want<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    Close,
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn failed_error() -> io::Error {
    io::Error::other("the TLS session failed earlier")
}

impl TlsStream {
    /// The protocol agreed through ALPN (`h2`, `http/1.1`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The TLS version in use.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether bytes wait in this session already (decrypted or not), so that a read may
    /// complete without the socket becoming readable.
    pub fn has_buffered_input(&self) -> bool {
        self.plain.is_some() || self.incoming.is_some() || self.peer_closed || self.tcp_eof
    }

    /// Completes once the peer has sent something (or closed the connection): bytes already
    /// held by the session, or at least one byte waiting on the socket. Takes no buffer. (Not
    /// the socket's readiness alone: tokio keeps that set until a read would block, which the
    /// handshake's last read need not have reached.)
    pub async fn wait_for_input(&self) -> io::Result<()> {
        if self.has_buffered_input() {
            return Ok(());
        }
        // A peek of one byte: Ok(0) is the end of the stream, which is input too.
        self.tcp.peek(&mut [0u8; 1]).await.map(|_| ())
    }

    /// How many I/O buffers this session holds now (0 while it waits).
    pub fn held_buffers(&self) -> usize {
        usize::from(self.incoming.is_some())
            + usize::from(self.plain.is_some())
            + usize::from(self.outgoing.is_some())
    }

    /// One call of rustls's state machine over the ciphertext held, with the state it returns
    /// handled: handshake records go to `outgoing`, application data to `read` (as far as it
    /// has room) and then to `plain`, and `want` is done once the session may send data.
    fn step(&mut self, read: Option<&mut ReadBuf<'_>>, want: Want<'_>) -> io::Result<Step> {
        if self.failed {
            return Err(failed_error());
        }
        let Self {
            conn,
            pool,
            incoming,
            plain,
            outgoing,
            peer_closed,
            close_sent,
            ..
        } = self;
        let input: &mut [u8] = match incoming {
            Some(b) => b.filled_mut(),
            None => &mut [],
        };
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(input);
        let step = match state {
            Err(e) => Err(invalid(e)),
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                let mut read = read;
                let mut result = Ok(Step::Again);
                while let Some(record) = records.next_record() {
                    let record = match record {
                        Ok(r) => r,
                        Err(e) => {
                            result = Err(invalid(e));
                            break;
                        }
                    };
                    discard += record.discard;
                    let mut payload = record.payload;
                    if plain.is_none()
                        && let Some(out) = read.as_deref_mut()
                    {
                        let n = payload.len().min(out.remaining());
                        out.put_slice(&payload[..n]);
                        payload = &payload[n..];
                    }
                    if !payload.is_empty() {
                        plain.get_or_insert_with(|| pool.take()).push(payload);
                    }
                }
                result
            }
            Ok(ConnectionState::EncodeTlsData(mut record)) => {
                let out = outgoing.get_or_insert_with(|| pool.take());
                loop {
                    match record.encode(out.reserve(0)) {
                        Ok(n) => {
                            out.end += n;
                            break Ok(Step::Again);
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => {
                            out.reserve(required_size);
                        }
                        Err(e @ EncodeError::AlreadyEncoded) => break Err(io::Error::other(e)),
                    }
                }
            }
            // `outgoing` is the queue to the socket: what is in it counts as transmitted.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Ok(Step::Again)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Step::NeedInput),
            Ok(ConnectionState::WriteTraffic(mut w)) => match want {
                Want::Nothing => Ok(Step::NeedInput),
                Want::Encrypt(data) => {
                    let data = &data[..data.len().min(MAX_WRITE)];
                    let out = outgoing.get_or_insert_with(|| pool.take());
                    loop {
                        match w.encrypt(data, out.reserve(0)) {
                            Ok(n) => {
                                out.end += n;
                                break Ok(Step::Wrote(data.len()));
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) => {
                                out.reserve(required_size);
                            }
                            Err(e @ EncryptError::EncryptExhausted) => {
                                break Err(io::Error::other(e));
                            }
                        }
                    }
                }
                Want::Close => {
                    let out = outgoing.get_or_insert_with(|| pool.take());
                    loop {
                        match w.queue_close_notify(out.reserve(0)) {
                            Ok(n) => {
                                out.end += n;
                                *close_sent = true;
                                break Ok(Step::Wrote(0));
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) => {
                                out.reserve(required_size);
                            }
                            Err(e @ EncryptError::EncryptExhausted) => {
                                break Err(io::Error::other(e));
                            }
                        }
                    }
                }
            },
            Ok(ConnectionState::PeerClosed) => {
                *peer_closed = true;
                Ok(Step::Again)
            }
            Ok(ConnectionState::Closed) => {
                *peer_closed = true;
                Ok(Step::Closed)
            }
            // Early data is not enabled (`max_early_data_size` is 0).
            Ok(ConnectionState::ReadEarlyData(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected TLS early data",
            )),
            Ok(other) => Err(io::Error::other(format!(
                "unexpected TLS connection state {other:?}"
            ))),
        };
        if discard > 0
            && let Some(b) = incoming
        {
            b.consume(discard);
        }
        self.release_empty();
        if step.is_err() {
            self.failed = true;
            self.queue_alert();
        }
        step
    }

    /// [`step`](Self::step); after an error the alert for the peer is sent if the socket
    /// takes it now.
    fn turn(
        &mut self,
        cx: &mut Context<'_>,
        read: Option<&mut ReadBuf<'_>>,
        want: Want<'_>,
    ) -> io::Result<Step> {
        let step = self.step(read, want);
        if step.is_err() {
            let _ = self.poll_flush_out(cx);
        }
        step
    }

    /// After an error: the alert rustls queued for the peer goes to `outgoing` (sent on the
    /// next flush, best effort).
    fn queue_alert(&mut self) {
        // Only while records wait: rustls hands them out before it looks at the input again
        // (which would repeat the error).
        while self.conn.wants_write() {
            let input: &mut [u8] = match &mut self.incoming {
                Some(b) => b.filled_mut(),
                None => &mut [],
            };
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(input);
            let Ok(ConnectionState::EncodeTlsData(mut record)) = state else {
                break;
            };
            let out = self.outgoing.get_or_insert_with(|| self.pool.take());
            match record.encode(out.reserve(64)) {
                Ok(n) => out.end += n,
                Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    if let Ok(n) = record.encode(out.reserve(required_size)) {
                        out.end += n;
                    }
                }
                Err(EncodeError::AlreadyEncoded) => break,
            }
        }
        self.release_empty();
    }

    /// Gives the empty buffers back to the pool.
    fn release_empty(&mut self) {
        for slot in [&mut self.incoming, &mut self.plain, &mut self.outgoing] {
            if slot.as_ref().is_some_and(IoBuf::is_empty)
                && let Some(b) = slot.take()
            {
                self.pool.give(b);
            }
        }
    }

    /// Writes `outgoing` to the socket until it is empty.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(out) = &mut self.outgoing {
            if out.is_empty() {
                break;
            }
            match ready!(Pin::new(&mut self.tcp).poll_write(cx, out.filled())) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => out.consume(n),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.release_empty();
        Poll::Ready(Ok(()))
    }

    /// Waits until the socket is readable, then reads into `incoming` (taken now). `Ok(0)`:
    /// the socket's read half ended.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // Readiness first (tokio's cached flag, no system call): no buffer while none is due.
        ready!(self.tcp.poll_read_ready(cx))?;
        let buf = self.incoming.get_or_insert_with(|| self.pool.take());
        let spare = buf.spare(MAX_INCOMING);
        if spare.is_empty() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS handshake message too large",
            )));
        }
        // Through `AsyncRead`: a read shorter than the room clears the readiness (the socket
        // is drained), so the next read waits without a system call; a spurious readiness
        // (would block) registers the waker.
        let mut rb = ReadBuf::new(spare);
        let read = Pin::new(&mut self.tcp).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        match read {
            Poll::Ready(Ok(())) if n == 0 => {
                self.tcp_eof = true;
                self.release_empty();
                Poll::Ready(Ok(0))
            }
            Poll::Ready(Ok(())) => {
                buf.end += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => {
                self.release_empty();
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                self.release_empty();
                Poll::Pending
            }
        }
    }

    /// Drives the handshake until it is complete and the server's records are written.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.turn(cx, None, Want::Nothing)? {
                Step::Again => {}
                Step::NeedInput | Step::Wrote(_) => {
                    ready!(self.poll_flush_out(cx))?;
                    if !self.conn.is_handshaking() {
                        return Poll::Ready(Ok(()));
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the connection closed during the TLS handshake",
                        )));
                    }
                }
                Step::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the TLS handshake",
                    )));
                }
            }
        }
    }

    /// Encrypts up to [`MAX_WRITE`] bytes of `data` and tries to send them.
    fn poll_encrypt(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the TLS close_notify",
            )));
        }
        // Earlier ciphertext first: a write waits while the socket does not take it.
        ready!(self.poll_flush_out(cx))?;
        loop {
            match self.turn(cx, None, Want::Encrypt(data))? {
                Step::Again => {}
                Step::Wrote(n) => {
                    // Sent now if the socket takes it; otherwise by the next write or flush.
                    if let Poll::Ready(Err(e)) = self.poll_flush_out(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(n));
                }
                Step::NeedInput => {
                    return Poll::Ready(Err(io::Error::other("TLS handshake not complete")));
                }
                Step::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the TLS session is closed",
                    )));
                }
            }
        }
    }
}

impl Drop for TlsStream {
    fn drop(&mut self) {
        for b in [
            self.incoming.take(),
            self.plain.take(),
            self.outgoing.take(),
        ]
        .into_iter()
        .flatten()
        {
            self.pool.give(b);
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        if let Some(e) = this.read_error.take() {
            return Poll::Ready(Err(e));
        }
        // As a socket read does: as much as has arrived, up to the caller's room (records are
        // decrypted and the socket read until it has nothing more), waiting only while nothing
        // has.
        loop {
            if let Some(p) = &mut this.plain {
                let n = (p.end - p.start).min(buf.remaining());
                buf.put_slice(&p.filled()[..n]);
                p.consume(n);
                this.release_empty();
            }
            let got = buf.filled().len() > start;
            if buf.remaining() == 0 || this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let step = match this.turn(cx, Some(buf), Want::Nothing) {
                Ok(s) => s,
                // The bytes decrypted before the error first.
                Err(e) if got => {
                    this.read_error = Some(e);
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            };
            if let Step::NeedInput = step {
                // Records rustls queued meanwhile (a key update's answer) go out now if the
                // socket takes them, or with the next write.
                if let Poll::Ready(Err(e)) = this.poll_flush_out(cx) {
                    return Poll::Ready(Err(e));
                }
                if this.tcp_eof {
                    if got {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    )));
                }
                match this.poll_fill(cx) {
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending if got => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) if got => {
                        this.read_error = Some(e);
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.get_mut().poll_encrypt(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut slices = bufs.iter().filter(|b| !b.is_empty());
        let Some(first) = slices.next() else {
            return Poll::Ready(Ok(0));
        };
        // One slice, or a first one of a full write: no copy.
        if first.len() >= MAX_WRITE || slices.next().is_none() {
            return this.poll_encrypt(cx, first);
        }
        // Several: gathered into one run of records (at most MAX_WRITE bytes), once the socket
        // took the earlier ones.
        ready!(this.poll_flush_out(cx))?;
        let mut staging = this.pool.take();
        for s in bufs {
            let room = MAX_WRITE - (staging.end - staging.start);
            if room == 0 {
                break;
            }
            staging.push(&s[..s.len().min(room)]);
        }
        let result = this.poll_encrypt(cx, staging.filled());
        this.pool.give(staging);
        result
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && !this.failed {
            // Pending records first, so that the close_notify is last.
            ready!(this.poll_flush_out(cx))?;
            // Turns until the close_notify is queued (Wrote), or cannot be (Closed: both sides
            // closed already; NeedInput: no session to close).
            while let Step::Again = this.turn(cx, None, Want::Close)? {}
            this.close_sent = true;
        }
        ready!(this.poll_flush_out(cx))?;
        match ready!(Pin::new(&mut this.tcp).poll_shutdown(cx)) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_counts_held_buffers_and_keeps_a_bounded_number_free() {
        let pool = BufPool::new(2);
        let bufs: Vec<_> = (0..3).map(|_| pool.take()).collect();
        assert_eq!(pool.held(), 3);
        assert!(
            bufs.iter()
                .all(|b| b.data.len() == BUF_SIZE && b.is_empty())
        );
        for b in bufs {
            pool.give(b);
        }
        assert_eq!((pool.held(), pool.free()), (0, 2));
        // A buffer that grew is freed, not kept.
        let mut b = pool.take();
        b.reserve(BUF_SIZE + 1);
        assert_eq!((pool.held(), pool.free()), (1, 1));
        pool.give(b);
        assert_eq!((pool.held(), pool.free()), (0, 1));
    }

    #[test]
    fn iobuf_consumes_from_the_front_and_compacts_for_room() {
        let pool = BufPool::new(1);
        let mut b = pool.take();
        b.push(b"hello world");
        b.consume(6);
        assert_eq!(b.filled(), b"world");
        // Filled to the end: asking for room moves the held bytes to the front.
        let n = b.data.len() - b.end;
        b.end += n;
        assert_eq!(b.spare(BUF_SIZE).len(), 6);
        assert_eq!(&b.filled()[..5], b"world");
        b.consume(b.end - b.start);
        assert!(b.is_empty());
        assert_eq!((b.start, b.end), (0, 0));
        pool.give(b);
    }

    #[test]
    fn iobuf_grows_to_its_limit_when_full_of_held_bytes() {
        let pool = BufPool::new(1);
        let mut b = pool.take();
        b.end = b.data.len();
        assert_eq!(b.spare(BUF_SIZE + 100).len(), 100);
        b.end = b.data.len();
        assert!(b.spare(BUF_SIZE + 100).is_empty());
        let long = vec![7u8; 3 * BUF_SIZE];
        b.push(&long);
        assert_eq!(b.filled().len(), BUF_SIZE + 100 + 3 * BUF_SIZE);
        pool.give(b);
        assert_eq!(pool.held(), 0);
    }
}
