//! One HTTP/1.1 connection to a pod, driven by whoever polls it (the task of the request using
//! it; no task of its own). One exchange at a time: [`Conn::start`] hands it a request,
//! [`Conn::poll_head`] writes the request and reads the response head, [`Conn::poll_body`]
//! reads the response body; both keep writing the request body while they wait (full duplex).
//!
//! Writes: the request head goes into a buffer kept with the connection, and body frames that
//! are at hand join it (copied when small, written from their own buffer when large), so a
//! request with a small buffered body is one `write` (or `writev`). Reads go into a buffer kept
//! with the connection; the response head's header values and the body's data frames are
//! slices of it (no copy), and the buffer's space is reused once they are dropped.

use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Error;
use super::codec::{
    BodyFraming, BodyShape, Decoded, Decoder, LAST_CHUNK, RequestKind, ResponseHead,
    encode_request_head, parse_response_head, push_chunk_size,
};
use crate::body::BoxError;

/// The read buffer's free space before a read, at least; it grows while reads fill it.
const READ_MIN: usize = 8 * 1024;
const READ_MAX: usize = 256 * 1024;
/// Body frames up to this size are copied next to what is waiting to be written; larger ones
/// are written from their own buffer.
const COPY_MAX: usize = 16 * 1024;
/// No more body frames are taken while this much is waiting to be written.
const WRITE_HIGH: usize = 64 * 1024;
/// A write buffer grown past this (a huge head) is given back when the request is done.
const WRITE_KEEP: usize = 64 * 1024;

/// How an exchange failed before its response head. The request given back is not boxed: it
/// travels once, on the rare path (as in `upstream::SendError`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum HeadError<B> {
    /// The connection was found closed (or speaking out of turn) before anything was written:
    /// the request is given back as it was.
    NotSent(Request<B>, Error),
    /// The request may have reached the pod.
    Failed(Error),
}

/// A pod connection. `B`: the request body type.
pub(crate) struct Conn<B> {
    io: TcpStream,
    rbuf: BytesMut,
    /// Free space to ask for before the next read.
    read_size: usize,
    /// The pod closed its side (read returned 0).
    eof: bool,
    /// What waits to be written: `wbuf[wpos..]`, then `wdata`, then `wtail`.
    wbuf: Vec<u8>,
    wpos: usize,
    wdata: Bytes,
    wtail: &'static [u8],
    /// A write failed: nothing more is written; the response may still be read.
    write_failed: bool,
    /// A request handed over, not yet started.
    req: Option<Request<B>>,
    /// The request body still being sent.
    body: Option<B>,
    framing: BodyFraming,
    /// Body bytes still to send for [`BodyFraming::Length`].
    remaining: u64,
    kind: RequestKind,
    /// The request's header map, emptied once its head is written, to hold the response's
    /// headers (hyper's server hands the response's map back as the next request's: one map
    /// goes round, no header map is allocated per request).
    headers: HeaderMap,
    /// The response body, once its head is read.
    decoder: Option<Decoder>,
    keep_alive: bool,
}

impl<B> Conn<B> {
    /// Bytes waiting to be written.
    fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos + self.wdata.len() + self.wtail.len()
    }
}

impl<B> std::fmt::Debug for Conn<B> {
    // Not the buffers: what they hold is the pods' and the clients' data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &self.rbuf.len())
            .field("to_write", &self.pending())
            .field("eof", &self.eof)
            .field("write_failed", &self.write_failed)
            .field("framing", &self.framing)
            .field("decoder", &self.decoder)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl<B> Conn<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// A connection over `io` (connected, `TCP_NODELAY` set by the caller).
    pub(crate) fn new(io: TcpStream) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            read_size: READ_MIN,
            eof: false,
            wbuf: Vec::new(),
            wpos: 0,
            wdata: Bytes::new(),
            wtail: b"",
            write_failed: false,
            req: None,
            body: None,
            framing: BodyFraming::Empty,
            remaining: 0,
            kind: RequestKind::Other,
            headers: HeaderMap::new(),
            decoder: None,
            keep_alive: false,
        }
    }

    /// Whether an idle connection can take a request: still open and silent (the pod neither
    /// closed it nor sent anything out of turn). Costs no system call when nothing happened
    /// since the last read.
    pub(crate) fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        debug_assert!(self.req.is_none() && self.decoder.is_none());
        !self.eof && self.rbuf.is_empty() && self.poll_fill(cx).is_pending()
    }

    /// Hands `req` to the connection (origin-form URI, `Host` set); nothing moves until polled.
    pub(crate) fn start(&mut self, req: Request<B>) {
        self.req = Some(req);
    }

    /// Writes the request (as far as its body allows) and waits for the response head; once it
    /// is here, the body is read with [`Conn::poll_body`].
    pub(crate) fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<ResponseHead, HeadError<B>>> {
        if let Some(req) = self.req.take() {
            // As hyper does: a connection found closed before the request went out gives the
            // request back (it is sent again elsewhere).
            if !self.poll_idle(cx) {
                let cause = match self.poll_fill(cx) {
                    Poll::Ready(Err(e)) => Some(e),
                    _ => None,
                };
                return Poll::Ready(Err(HeadError::NotSent(req, Error::incomplete(cause))));
            }
            self.begin(req);
        }
        if let Err(e) = self.poll_send(cx) {
            return Poll::Ready(Err(HeadError::Failed(e)));
        }
        loop {
            match parse_response_head(&mut self.rbuf, self.kind, &mut self.headers) {
                Ok(Some(head)) => {
                    self.keep_alive = head.keep_alive;
                    self.decoder = Some(Decoder::new(head.framing));
                    return Poll::Ready(Ok(head));
                }
                Ok(None) if self.eof => {
                    return Poll::Ready(Err(HeadError::Failed(Error::incomplete(None))));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(HeadError::Failed(Error::parse(e)))),
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(HeadError::Failed(Error::io(e)))),
            }
        }
    }

    /// The next frame of the response body (`None` at its end), writing the rest of the
    /// request body meanwhile.
    pub(crate) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Err(e) = self.poll_send(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(d) = &mut self.decoder else {
            return Poll::Ready(None);
        };
        loop {
            match d.decode(&mut self.rbuf, self.eof) {
                Ok(Decoded::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Ok(Decoded::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return Poll::Ready(Some(Err(Error::parse(e)))),
            }
            let fill = poll_fill(&mut self.io, &mut self.rbuf, &mut self.read_size, cx);
            match ready!(fill) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(Error::io(e)))),
            }
        }
    }

    /// Whether the response body has ended (no response yet: false).
    pub(crate) fn body_is_end(&self) -> bool {
        self.decoder.as_ref().is_some_and(Decoder::is_end)
    }

    /// What is known of the rest of the response body.
    pub(crate) fn body_size_hint(&self) -> SizeHint {
        match self.decoder.as_ref().and_then(Decoder::remaining) {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }

    /// The exchange is over (its response body ended): whether the connection can take
    /// another request. It can when the pod keeps it alive, the whole request went out, the
    /// response was delimited by its framing and nothing followed it; the connection is then
    /// idle again.
    pub(crate) fn finish(&mut self) -> bool {
        let ended = self.body_is_end();
        let delimited = !matches!(self.decoder, Some(Decoder::CloseDelimited(_)));
        let reusable = ended
            && delimited
            && self.keep_alive
            && !self.eof
            && self.rbuf.is_empty()
            && self.write_done();
        self.decoder = None;
        self.keep_alive = false;
        if self.wbuf.capacity() > WRITE_KEEP {
            self.wbuf = Vec::new();
        }
        reusable
    }

    /// Shuts the connection for writing (FIN) and reads it to its end (discarded) for at most
    /// `grace`, so that the pod has seen the close; then closes the socket.
    pub(crate) async fn close(self, grace: Duration) {
        let mut io = self.io;
        let discard = async {
            let _ = io.shutdown().await;
            let mut buf = vec![0u8; 16 * 1024];
            while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(grace, discard).await;
    }

    /// Whether the whole request has been written.
    fn write_done(&self) -> bool {
        !self.write_failed && self.body.is_none() && self.pending() == 0
    }

    /// Writes the request head into the write buffer; the body follows as [`Conn::poll_send`]
    /// gets it.
    fn begin(&mut self, req: Request<B>) {
        let (mut parts, body) = req.into_parts();
        let shape = BodyShape {
            end_stream: body.is_end_stream(),
            exact: body.size_hint().exact(),
        };
        self.kind = RequestKind::of(&parts.method);
        self.wbuf.clear();
        self.wpos = 0;
        self.framing = encode_request_head(&mut self.wbuf, &parts, shape);
        parts.headers.clear();
        self.headers = std::mem::take(&mut parts.headers);
        self.remaining = match self.framing {
            BodyFraming::Length(n) => n,
            _ => 0,
        };
        self.body = match self.framing {
            BodyFraming::Empty | BodyFraming::Length(0) => None,
            _ => Some(body),
        };
    }

    /// Moves the request along: takes the body frames at hand, writes what waits. Returns
    /// without waiting (wakers are set). Fails only when the request body fails; a failed
    /// write stops the writing (the pod may still answer, and its answer is read).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        if self.write_failed {
            return Ok(());
        }
        loop {
            // Frames join the write buffer only while nothing is queued behind it.
            while self.body.is_some()
                && self.wdata.is_empty()
                && self.wtail.is_empty()
                && self.pending() < WRITE_HIGH
            {
                let body = self.body.as_mut().expect("checked");
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => self.end_body()?,
                    Poll::Ready(Some(Err(e))) => {
                        self.body = None;
                        self.write_failed = true;
                        return Err(Error::request_body(e.into()));
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        let end = body.is_end_stream();
                        // Trailers of the client's body are not sent (hyper sends none either
                        // without a `Trailer` header, which is hop-by-hop).
                        if let Ok(data) = frame.into_data() {
                            self.push_data(data);
                        }
                        if end || (self.framing != BodyFraming::Chunked && self.remaining == 0) {
                            self.end_body()?;
                        }
                    }
                }
            }
            if self.pending() == 0 {
                return Ok(());
            }
            let bufs = [
                IoSlice::new(&self.wbuf[self.wpos..]),
                IoSlice::new(&self.wdata),
                IoSlice::new(self.wtail),
            ];
            let n = match Pin::new(&mut self.io).poll_write_vectored(cx, &bufs) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(n)) if n > 0 => n,
                Poll::Ready(_) => {
                    // The pod closed or reset the connection: stop writing, keep reading.
                    self.write_failed = true;
                    self.body = None;
                    return Ok(());
                }
            };
            self.advance(n);
        }
    }

    /// Frames `data` as the request's framing says and queues it.
    fn push_data(&mut self, mut data: Bytes) {
        if data.is_empty() {
            return;
        }
        match self.framing {
            BodyFraming::Empty => return,
            BodyFraming::Length(_) => {
                // More than announced: the excess is not sent (as hyper).
                if data.len() as u64 > self.remaining {
                    data.truncate(self.remaining as usize);
                }
                self.remaining -= data.len() as u64;
            }
            BodyFraming::Chunked => push_chunk_size(&mut self.wbuf, data.len()),
        }
        let chunked = self.framing == BodyFraming::Chunked;
        if data.len() <= COPY_MAX {
            self.wbuf.extend_from_slice(&data);
            if chunked {
                self.wbuf.extend_from_slice(b"\r\n");
            }
        } else {
            self.wdata = data;
            self.wtail = if chunked { b"\r\n" } else { b"" };
        }
    }

    /// The request body has ended: the last chunk, or a check that the announced length was
    /// sent.
    fn end_body(&mut self) -> Result<(), Error> {
        self.body = None;
        match self.framing {
            BodyFraming::Chunked if self.wdata.is_empty() && self.wtail.is_empty() => {
                self.wbuf.extend_from_slice(LAST_CHUNK);
            }
            // A large last frame was just queued, with its CRLF.
            BodyFraming::Chunked => self.wtail = b"\r\n0\r\n\r\n",
            BodyFraming::Length(_) if self.remaining > 0 => {
                self.write_failed = true;
                return Err(Error::request_body(
                    "the request body ended before its announced length".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// `n` bytes were written.
    fn advance(&mut self, mut n: usize) {
        let head = (self.wbuf.len() - self.wpos).min(n);
        self.wpos += head;
        n -= head;
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        let data = self.wdata.len().min(n);
        self.wdata.advance(data);
        n -= data;
        self.wtail = &self.wtail[n..];
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.rbuf, &mut self.read_size, cx)
    }
}

/// Reads what has arrived into `buf` (growing the read size while reads fill it).
fn poll_fill(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    read_size: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < *read_size {
        buf.reserve(*read_size);
    }
    let room = buf.capacity() - buf.len();
    let n = ready!(pin!(io.read_buf(buf)).poll(cx))?;
    *read_size = if n == room {
        (*read_size * 2).min(READ_MAX)
    } else if n < room / 4 {
        (*read_size / 2).max(READ_MIN)
    } else {
        *read_size
    };
    Poll::Ready(Ok(n))
}
