//! The HTTP/1.1 client codec, without I/O: the request head written into a reused buffer, the
//! response head parsed with `httparse` into a small struct, and the response body's framing
//! (RFC 9112 section 6.3) decoded from a read buffer with exact limits.
//!
//! The limits are hyper's client defaults, so that a pod that worked behind hyper works here:
//! at most [`MAX_HEADERS`] header lines, a head complete within [`MAX_HEAD_BYTES`], chunk
//! extensions of at most [`MAX_CHUNK_EXTENSION_BYTES`] per body, trailers of at most
//! [`MAX_TRAILER_BYTES`] and [`MAX_HEADERS`] lines. One limit is the codec's own: a chunk size
//! has at most [`MAX_CHUNK_SIZE_DIGITS`] hex digits (hyper counts no digits, only overflow, so a
//! pod could send leading zeros forever).

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version, request};

/// The most header lines a response head (or its trailers) may have (hyper's default).
pub(crate) const MAX_HEADERS: usize = 100;
/// A response head must be complete within this many buffered bytes (hyper's default read
/// buffer ceiling, 8 KiB + 100 x 4 KiB).
pub(crate) const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Bytes of chunk extensions allowed over one body (hyper's limit); extensions are skipped.
pub(crate) const MAX_CHUNK_EXTENSION_BYTES: u64 = 16 * 1024;
/// Bytes of trailer fields allowed (hyper's limit).
pub(crate) const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Hex digits in a chunk size: 16 cover every `u64`.
pub(crate) const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

/// What is wrong with a pod's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// `httparse` refused the head (status line, header syntax, too many headers, ...).
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    /// No complete head within [`MAX_HEAD_BYTES`].
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// A status code outside 100..=999.
    #[error("invalid status code")]
    Status,
    /// A header name or value the `http` types refuse.
    #[error("invalid header")]
    Header,
    /// `Content-Length` values that are not digits, or that differ.
    #[error("invalid or conflicting content-length")]
    ContentLength,
    /// `Transfer-Encoding` in an HTTP/1.0 response.
    #[error("transfer-encoding in an HTTP/1.0 response")]
    TransferEncodingHttp10,
    /// 101 Switching Protocols: the router never asks for an upgrade.
    #[error("unexpected 101 switching protocols")]
    UnexpectedUpgrade,
    /// A chunk size line that is not hex digits, optional whitespace, extensions and CRLF.
    #[error("invalid chunk size line")]
    ChunkSize,
    /// A chunk size of more than [`MAX_CHUNK_SIZE_DIGITS`] hex digits.
    #[error("chunk size longer than {MAX_CHUNK_SIZE_DIGITS} hex digits")]
    ChunkSizeTooLong,
    /// A chunk extension holding a bare LF.
    #[error("chunk extension holds a newline")]
    ChunkExtensionNewline,
    /// More than [`MAX_CHUNK_EXTENSION_BYTES`] of chunk extensions.
    #[error("chunk extensions over {MAX_CHUNK_EXTENSION_BYTES} bytes")]
    ChunkExtensionsTooLarge,
    /// Chunk data not followed by CRLF, or a last chunk not ended by CRLF.
    #[error("invalid chunk framing")]
    ChunkFraming,
    /// More than [`MAX_TRAILER_BYTES`] of trailers.
    #[error("trailers over {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLarge,
    /// More than [`MAX_HEADERS`] trailer lines.
    #[error("more than {MAX_HEADERS} trailers")]
    TooManyTrailers,
    /// Trailers that do not parse as header fields.
    #[error("invalid trailers")]
    Trailers,
    /// The connection ended before the message did.
    #[error("the connection closed before the message was complete")]
    Incomplete,
}

// === request ===

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body bytes (none, or a body that is not sent, as hyper does for a GET of unknown size).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What is known of a request body before it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyShape {
    /// The body is known to be empty.
    pub(crate) end_stream: bool,
    /// Its exact length, when known.
    pub(crate) exact: Option<u64>,
}

/// Writes the request head (request line, headers, blank line) into `dst` and says how the body
/// follows, as hyper's client frames it: a known-empty body is sent as no body; a valid
/// `Content-Length` is kept; else a known length is announced; else the body is chunked (a GET,
/// HEAD or CONNECT body of unknown length is not sent). A client's `Transfer-Encoding` is not
/// written (transfer codings are hop-by-hop; the router strips them before this point):
/// `chunked` is the only coding the codec applies.
pub(crate) fn encode_request_head(
    dst: &mut Vec<u8>,
    parts: &request::Parts,
    body: BodyShape,
) -> BodyFraming {
    let h = &parts.headers;
    let (framing, keep_cl, add_cl) = if body.end_stream {
        (BodyFraming::Empty, true, None)
    } else if h.contains_key(header::TRANSFER_ENCODING) {
        (BodyFraming::Chunked, false, None)
    } else if let Some(n) = content_length(h) {
        (BodyFraming::Length(n), true, None)
    } else if let Some(n) = body.exact {
        (BodyFraming::Length(n), false, Some(n))
    } else if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) {
        (BodyFraming::Empty, true, None)
    } else {
        (BodyFraming::Chunked, false, None)
    };

    dst.extend_from_slice(parts.method.as_str().as_bytes());
    dst.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    dst.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in h {
        if name == header::TRANSFER_ENCODING || (!keep_cl && name == header::CONTENT_LENGTH) {
            continue;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if let Some(n) = add_cl {
        dst.extend_from_slice(b"content-length: ");
        push_decimal(dst, n);
        dst.extend_from_slice(b"\r\n");
    }
    if framing == BodyFraming::Chunked {
        dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    framing
}

/// Writes the size line of a chunk of `len` bytes (`len` > 0; uppercase hex, as hyper).
pub(crate) fn push_chunk_size(dst: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len as u64;
    loop {
        i -= 1;
        digits[i] = b"0123456789ABCDEF"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
    dst.extend_from_slice(b"\r\n");
}

/// The last chunk and the end of a chunked body (no trailers: the router sends none upstream).
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn push_decimal(dst: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
}

/// The value of all `Content-Length` fields (comma lists and repeated lines), when they are
/// all digits and all the same (RFC 9110 section 8.6).
pub(crate) fn content_length(h: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let n = decimal(part.trim_ascii())?;
            match found {
                None => found = Some(n),
                Some(m) if m != n => return None,
                Some(_) => {}
            }
        }
    }
    found
}

fn decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| match c {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(c - b'0')),
        _ => None,
    })
}

// === response head ===

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// No body (HEAD, 1xx, 204, 304, a 2xx to CONNECT).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the pod closes the connection.
    CloseDelimited,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// The reason phrase, when it is not the status's canonical one.
    pub(crate) reason: Option<Bytes>,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: ResponseFraming,
    /// Whether the connection may carry another request after this response.
    pub(crate) keep_alive: bool,
}

/// Which request a response answers, as far as its framing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// A response to HEAD has no body.
    Head,
    /// A 2xx response to CONNECT has no body (and ends HTTP on the connection).
    Connect,
    /// Anything else.
    Other,
}

impl RequestKind {
    pub(crate) fn of(m: &Method) -> Self {
        match *m {
            Method::HEAD => RequestKind::Head,
            Method::CONNECT => RequestKind::Connect,
            _ => RequestKind::Other,
        }
    }
}

/// Header lines the router adds to a response (request id, deployment, client request id,
/// trace context): room is kept for them so that the map does not grow.
const ROUTER_RESPONSE_HEADERS: usize = 4;

/// Parses the response head at the start of `buf`, taking its bytes out of `buf` (header
/// values share them, no copy). Interim responses (100, 102..=199) are skipped, as hyper does.
/// `Ok(None)`: the head is not complete yet (read more, unless `buf` already holds
/// [`MAX_HEAD_BYTES`], which is an error). The headers go into `map` (emptied first, its
/// allocation reused: the connection passes the request's map, done with once the request
/// head is written), which moves into the returned head.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    req: RequestKind,
    map: &mut HeaderMap,
) -> Result<Option<ResponseHead>, ParseError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // Left uninitialised (httparse fills what it uses): no 3 KiB to clear per response.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        // Offsets of each field's name and value in `buf`, kept past the parser's borrow (u32:
        // a head is at most `MAX_HEAD_BYTES` long).
        let mut at = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let (len, code, version, reason, n) = {
            let mut res = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut res,
                buf,
                &mut fields,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                    return Err(ParseError::HeadTooLarge);
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(ParseError::Head(e)),
            };
            let at_in_buf = |s: &[u8]| offset_in(buf, s);
            for (i, f) in res.headers.iter().enumerate() {
                let name = at_in_buf(f.name.as_bytes());
                let value = at_in_buf(f.value);
                let (name, value) = (name as u32, value as u32);
                at[i] = (
                    name,
                    name + f.name.len() as u32,
                    value,
                    value + f.value.len() as u32,
                );
            }
            let code = res.code.expect("a complete head has a status");
            let reason = res.reason.expect("a complete head has a reason");
            let reason = (at_in_buf(reason.as_bytes()), reason.len());
            let version = match res.version {
                Some(1) => Version::HTTP_11,
                _ => Version::HTTP_10,
            };
            (len, code, version, reason, res.headers.len())
        };
        let status = StatusCode::from_u16(code).map_err(|_| ParseError::Status)?;
        match code {
            101 => return Err(ParseError::UnexpectedUpgrade),
            100 | 102..=199 => {
                buf.advance(len);
                continue;
            }
            _ => {}
        }
        let head = buf.split_to(len).freeze();
        let reason = (reason.0, reason.0 + reason.1);
        let canonical = status.canonical_reason().map(str::as_bytes);
        let reason =
            (canonical != Some(&head[reason.0..reason.1])).then(|| head.slice(reason.0..reason.1));
        map.clear();
        map.reserve(n + ROUTER_RESPONSE_HEADERS);
        let mut headers = std::mem::take(map);
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        for &(ns, ne, vs, ve) in &at[..n] {
            let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
            let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| ParseError::Header)?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| ParseError::Header)?;
            if name == header::CONNECTION {
                // Once any line asks to close, a later `keep-alive` does not undo it.
                if saw_close || has_token(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, "keep-alive");
                }
            }
            headers.append(name, value);
        }
        let framing = match (code, req) {
            (204 | 304, _) | (_, RequestKind::Head) => ResponseFraming::Empty,
            (200..=299, RequestKind::Connect) => {
                keep_alive = false;
                ResponseFraming::Empty
            }
            _ if headers.contains_key(header::TRANSFER_ENCODING) => {
                if version == Version::HTTP_10 {
                    return Err(ParseError::TransferEncodingHttp10);
                }
                if headers.contains_key(header::CONTENT_LENGTH) {
                    // RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length, and an
                    // intermediary removes the latter before forwarding. Such a message may be
                    // a smuggling attempt: the connection is not used again. (hyper keeps the
                    // header, and the router would then send the client a length that is not
                    // the body's.)
                    headers.remove(header::CONTENT_LENGTH);
                    keep_alive = false;
                }
                if last_coding_is_chunked(&headers) {
                    ResponseFraming::Chunked
                } else {
                    keep_alive = false;
                    ResponseFraming::CloseDelimited
                }
            }
            _ if headers.contains_key(header::CONTENT_LENGTH) => {
                let n = content_length(&headers).ok_or(ParseError::ContentLength)?;
                // hyper's bound (its own markers use the two values above it).
                if n > u64::MAX - 2 {
                    return Err(ParseError::ContentLength);
                }
                ResponseFraming::Length(n)
            }
            _ => {
                keep_alive = false;
                ResponseFraming::CloseDelimited
            }
        };
        return Ok(Some(ResponseHead {
            status,
            version,
            reason,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// Where `s`, a slice `httparse` returned, starts in `buf` (an empty slice may point anywhere:
/// it is taken as empty at 0).
fn offset_in(buf: &[u8], s: &[u8]) -> usize {
    let at = (s.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    if s.is_empty() || at.checked_add(s.len()).is_none_or(|end| end > buf.len()) {
        0
    } else {
        at
    }
}

fn has_token(v: &HeaderValue, token: &str) -> bool {
    v.as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn last_coding_is_chunked(h: &HeaderMap) -> bool {
    h.get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

// === response body ===

/// One step of a response body.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// Body bytes (never empty).
    Data(Bytes),
    /// The trailers of a chunked body; the body has ended.
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// A response body's decoder, fed from the connection's read buffer.
#[derive(Debug)]
pub(crate) enum Decoder {
    /// Bytes still to come.
    Length(u64),
    /// A chunked body.
    Chunked(Chunked),
    /// Until the connection closes; true once it has.
    CloseDelimited(bool),
}

impl Decoder {
    /// The decoder for a response framed as `f`.
    pub(crate) fn new(f: ResponseFraming) -> Self {
        match f {
            ResponseFraming::Empty => Decoder::Length(0),
            ResponseFraming::Length(n) => Decoder::Length(n),
            ResponseFraming::Chunked => Decoder::Chunked(Chunked::default()),
            ResponseFraming::CloseDelimited => Decoder::CloseDelimited(false),
        }
    }

    /// Whether the body has ended.
    pub(crate) fn is_end(&self) -> bool {
        match self {
            Decoder::Length(n) => *n == 0,
            Decoder::Chunked(c) => c.state == ChunkState::End,
            Decoder::CloseDelimited(closed) => *closed,
        }
    }

    /// Bytes still expected, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            _ => None,
        }
    }

    /// The next step of the body from `buf` (taking what it uses out of it); `eof`: the
    /// connection has closed, no more bytes will come.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Decoded, ParseError> {
        match self {
            Decoder::Length(0) => Ok(Decoded::End),
            Decoder::Length(n) => {
                if buf.is_empty() {
                    return if eof {
                        Err(ParseError::Incomplete)
                    } else {
                        Ok(Decoded::NeedMore)
                    };
                }
                let take = usize::try_from(*n).unwrap_or(usize::MAX).min(buf.len());
                *n -= take as u64;
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            Decoder::Chunked(c) => c.decode(buf, eof),
            Decoder::CloseDelimited(true) => Ok(Decoded::End),
            Decoder::CloseDelimited(closed) => {
                if !buf.is_empty() {
                    Ok(Decoded::Data(buf.split().freeze()))
                } else if eof {
                    *closed = true;
                    Ok(Decoded::End)
                } else {
                    Ok(Decoded::NeedMore)
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// The first digit of a chunk size.
    #[default]
    Start,
    /// More digits, whitespace, `;` or CR.
    Size,
    /// Whitespace after the digits.
    SizeWs,
    /// A chunk extension, skipped up to CR.
    Extension,
    /// The LF of the size line.
    SizeLf,
    /// Chunk data.
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// After the last chunk: a trailer line or the final CR.
    EndCr,
    /// A trailer line, up to CR.
    Trailer,
    /// The LF of a trailer line.
    TrailerLf,
    /// The final LF.
    EndLf,
    /// Done.
    End,
}

/// The chunked decoder's state (RFC 9112 section 7.1), with hyper's limits.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// The current chunk's size, then the data still to come of it.
    size: u64,
    digits: u8,
    extension_bytes: u64,
    /// The trailer section as received, once it starts.
    trailers: Option<BytesMut>,
    trailer_lines: usize,
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Decoded, ParseError> {
        use ChunkState::*;
        loop {
            if self.state == End {
                return Ok(Decoded::End);
            }
            if buf.is_empty() {
                return if eof {
                    Err(ParseError::Incomplete)
                } else {
                    Ok(Decoded::NeedMore)
                };
            }
            if self.state == Data {
                let take = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            let b = buf[0];
            buf.advance(1);
            self.state = match (self.state, b) {
                (Start | Size, _) if b.is_ascii_hexdigit() => {
                    self.digits += 1;
                    if self.digits > MAX_CHUNK_SIZE_DIGITS {
                        return Err(ParseError::ChunkSizeTooLong);
                    }
                    let d = (b as char).to_digit(16).expect("a hex digit") as u64;
                    self.size = self.size << 4 | d;
                    Size
                }
                (Start, _) => return Err(ParseError::ChunkSize),
                (Size | SizeWs, b'\t' | b' ') => SizeWs,
                (Size | SizeWs, b';') => Extension,
                (Size | SizeWs, b'\r') => SizeLf,
                (Size | SizeWs, _) => return Err(ParseError::ChunkSize),
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(ParseError::ChunkExtensionNewline),
                (Extension, _) => {
                    self.extension_bytes += 1;
                    if self.extension_bytes >= MAX_CHUNK_EXTENSION_BYTES {
                        return Err(ParseError::ChunkExtensionsTooLarge);
                    }
                    Extension
                }
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 { EndCr } else { Data }
                }
                (SizeLf, _) => return Err(ParseError::ChunkSize),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Start,
                (DataCr | DataLf, _) => return Err(ParseError::ChunkFraming),
                (EndCr, b'\r') => {
                    self.push_trailer_byte(b)?;
                    EndLf
                }
                (EndCr, _) => {
                    match &mut self.trailers {
                        None => {
                            let mut t = BytesMut::with_capacity(64);
                            t.extend_from_slice(&[b]);
                            self.trailers = Some(t);
                        }
                        Some(_) => self.push_trailer_byte(b)?,
                    }
                    Trailer
                }
                (Trailer, _) => {
                    self.push_trailer_byte(b)?;
                    if b == b'\r' { TrailerLf } else { Trailer }
                }
                (TrailerLf, b'\n') => {
                    if self.trailer_lines >= MAX_HEADERS {
                        return Err(ParseError::TooManyTrailers);
                    }
                    self.trailer_lines += 1;
                    self.push_trailer_byte(b)?;
                    EndCr
                }
                (TrailerLf, _) => return Err(ParseError::Trailers),
                (EndLf, b'\n') => {
                    self.push_trailer_byte(b)?;
                    self.state = End;
                    return match self.trailers.take() {
                        Some(t) => parse_trailers(&t, self.trailer_lines).map(Decoded::Trailers),
                        None => Ok(Decoded::End),
                    };
                }
                (EndLf, _) => return Err(ParseError::ChunkFraming),
                (Data | End, _) => unreachable!("handled above"),
            };
        }
    }

    /// Keeps a byte of the trailer section (none kept before the section starts).
    fn push_trailer_byte(&mut self, b: u8) -> Result<(), ParseError> {
        if let Some(t) = &mut self.trailers {
            t.extend_from_slice(&[b]);
            if t.len() >= MAX_TRAILER_BYTES {
                return Err(ParseError::TrailersTooLarge);
            }
        }
        Ok(())
    }
}

fn parse_trailers(buf: &[u8], lines: usize) -> Result<HeaderMap, ParseError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let fields = &mut fields[..lines.min(MAX_HEADERS)];
    match httparse::parse_headers(buf, fields) {
        Ok(httparse::Status::Complete((_, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields.iter() {
                let name =
                    HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| ParseError::Trailers)?;
                let value = HeaderValue::from_bytes(f.value).map_err(|_| ParseError::Trailers)?;
                map.append(name, value);
            }
            Ok(map)
        }
        _ => Err(ParseError::Trailers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], req: RequestKind) -> Result<Option<ResponseHead>, ParseError> {
        parse_response_head(&mut BytesMut::from(bytes), req, &mut HeaderMap::new())
    }

    /// The whole body of `framing` from `input` (ending at end of input), trailers apart.
    fn body(
        framing: ResponseFraming,
        input: &[u8],
    ) -> Result<(Vec<u8>, Option<HeaderMap>), ParseError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::from(input);
        let (mut out, mut trailers) = (Vec::new(), None);
        loop {
            match d.decode(&mut buf, true)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((out, trailers)),
                Decoded::NeedMore => unreachable!("eof is set"),
            }
        }
    }

    #[test]
    fn request_heads_are_framed_as_hyper_frames_them() {
        let req = |m: &str, headers: &[(&str, &str)]| {
            let mut b = http::Request::builder().method(m).uri("/score?x=1");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        let shape = |end_stream, exact| BodyShape { end_stream, exact };
        let enc = |p: &request::Parts, s| {
            let mut v = Vec::new();
            let f = encode_request_head(&mut v, p, s);
            (String::from_utf8(v).unwrap(), f)
        };
        let (s, f) = enc(
            &req("POST", &[("host", "p:1"), ("content-length", "3")]),
            shape(false, Some(3)),
        );
        assert_eq!(
            s,
            "POST /score?x=1 HTTP/1.1\r\nhost: p:1\r\ncontent-length: 3\r\n\r\n"
        );
        assert_eq!(f, BodyFraming::Length(3));
        // A known length is announced; an unknown one is chunked (not for GET).
        let (s, f) = enc(&req("PUT", &[]), shape(false, Some(10)));
        assert_eq!(s, "PUT /score?x=1 HTTP/1.1\r\ncontent-length: 10\r\n\r\n");
        assert_eq!(f, BodyFraming::Length(10));
        let (s, f) = enc(&req("POST", &[("content-length", "x")]), shape(false, None));
        assert_eq!(
            s,
            "POST /score?x=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(f, BodyFraming::Chunked);
        let (_, f) = enc(&req("GET", &[]), shape(false, None));
        assert_eq!(f, BodyFraming::Empty);
        // An empty body: no framing headers added, a client's own kept.
        let (s, f) = enc(
            &req("POST", &[("content-length", "0")]),
            shape(true, Some(0)),
        );
        assert_eq!(s, "POST /score?x=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(f, BodyFraming::Empty);
    }

    #[test]
    fn chunk_sizes_and_lengths_are_written_in_their_bases() {
        for (n, hex) in [
            (1, "1"),
            (15, "F"),
            (16, "10"),
            (4096, "1000"),
            (usize::MAX, "FFFFFFFFFFFFFFFF"),
        ] {
            let mut v = Vec::new();
            push_chunk_size(&mut v, n);
            assert_eq!(v, format!("{hex}\r\n").as_bytes());
        }
        let mut v = Vec::new();
        push_decimal(&mut v, u64::MAX);
        assert_eq!(v, u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn response_heads_parse_into_status_headers_and_framing() {
        let h = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nok",
            RequestKind::Other,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, ResponseFraming::Length(2));
        assert!(h.keep_alive && h.reason.is_none());
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        // Interim responses are skipped; a custom reason is kept.
        let h = head(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Made\r\ntransfer-encoding: chunked\r\n\r\n",
            RequestKind::Other,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 201);
        assert_eq!(h.reason.as_deref(), Some(&b"Made"[..]));
        assert_eq!(h.framing, ResponseFraming::Chunked);
        // HTTP/1.0: closes unless kept alive; no length: until the close.
        let h = head(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            RequestKind::Other,
        )
        .unwrap()
        .unwrap();
        assert!(h.keep_alive);
        let h = head(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\n\r\n",
            RequestKind::Other,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
        assert_eq!(h.framing, ResponseFraming::CloseDelimited);
        // No body whatever the headers say: HEAD, 204, 304.
        for (bytes, req) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"[..],
                RequestKind::Head,
            ),
            (
                b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
                RequestKind::Other,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
                RequestKind::Other,
            ),
        ] {
            assert_eq!(
                head(bytes, req).unwrap().unwrap().framing,
                ResponseFraming::Empty
            );
        }
        // Incomplete, then malformed.
        assert!(
            head(b"HTTP/1.1 200 OK\r\ncontent-le", RequestKind::Other)
                .unwrap()
                .is_none()
        );
        for (bytes, err) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
                ParseError::ContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
                ParseError::ContentLength,
            ),
            (
                b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                ParseError::TransferEncodingHttp10,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                ParseError::UnexpectedUpgrade,
            ),
            (b"HTTP/1.1 099 Low\r\n\r\n", ParseError::Status),
        ] {
            assert_eq!(head(bytes, RequestKind::Other).unwrap_err(), err);
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            head(&many, RequestKind::Other).unwrap_err(),
            ParseError::Head(httparse::Error::TooManyHeaders)
        );
        let huge = vec![b'a'; MAX_HEAD_BYTES];
        let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        big.extend_from_slice(&huge);
        assert_eq!(
            head(&big, RequestKind::Other).unwrap_err(),
            ParseError::HeadTooLarge
        );
    }

    #[test]
    fn te_and_cl_together_drop_the_length_and_the_connection() {
        let h = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n",
            RequestKind::Other,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        assert!(!h.keep_alive);
        let h = head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            RequestKind::Other,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, ResponseFraming::CloseDelimited);
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (b, t) = body(
            ResponseFraming::Chunked,
            b"5;name=v\r\nhello\r\n6 \r\n world\r\n0\r\nx-sum: 1\r\nx-more: 2\r\n\r\n",
        )
        .unwrap();
        assert_eq!(b, b"hello world");
        let t = t.unwrap();
        assert_eq!(t["x-sum"], "1");
        assert_eq!(t["x-more"], "2");
        let (b, t) = body(ResponseFraming::Chunked, b"a\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!((b.as_slice(), t), (&b"0123456789"[..], None));
    }

    #[test]
    fn chunked_bodies_that_break_a_rule_fail() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"z\r\n", ParseError::ChunkSize),
            (b"5x\r\nhello\r\n0\r\n\r\n", ParseError::ChunkSize),
            (b"5\rhello", ParseError::ChunkSize),
            (b"5\r\nhelloXX0\r\n\r\n", ParseError::ChunkFraming),
            (b"10000000000000000\r\n", ParseError::ChunkSizeTooLong),
            (b"00000000000000001\r\n", ParseError::ChunkSizeTooLong),
            (b"1;a\nb\r\n", ParseError::ChunkExtensionNewline),
            (b"5\r\nhel", ParseError::Incomplete),
            (b"0\r\n\r", ParseError::Incomplete),
            (b"0\r\nbad trailer\r\n\r\n", ParseError::Trailers),
        ];
        for (input, err) in cases {
            assert_eq!(
                body(ResponseFraming::Chunked, input).unwrap_err(),
                *err,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let mut ext = b"1;".to_vec();
        ext.resize(2 + MAX_CHUNK_EXTENSION_BYTES as usize, b'e');
        assert_eq!(
            body(ResponseFraming::Chunked, &ext).unwrap_err(),
            ParseError::ChunkExtensionsTooLarge
        );
        let mut t = b"0\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            t.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        assert_eq!(
            body(ResponseFraming::Chunked, &t).unwrap_err(),
            ParseError::TooManyTrailers
        );
        let mut t = b"0\r\nx: ".to_vec();
        t.resize(MAX_TRAILER_BYTES + 10, b'v');
        assert_eq!(
            body(ResponseFraming::Chunked, &t).unwrap_err(),
            ParseError::TrailersTooLarge
        );
    }

    #[test]
    fn length_and_close_delimited_bodies() {
        assert_eq!(body(ResponseFraming::Length(3), b"abc").unwrap().0, b"abc");
        assert_eq!(
            body(ResponseFraming::Length(4), b"abc").unwrap_err(),
            ParseError::Incomplete
        );
        assert_eq!(
            body(ResponseFraming::CloseDelimited, b"abc").unwrap().0,
            b"abc"
        );
        assert_eq!(body(ResponseFraming::Empty, b"").unwrap().0, b"");
        // A length body takes its bytes and no more.
        let mut d = Decoder::new(ResponseFraming::Length(2));
        let mut buf = BytesMut::from(&b"okEXTRA"[..]);
        assert_eq!(
            d.decode(&mut buf, false).unwrap(),
            Decoded::Data(Bytes::from_static(b"ok"))
        );
        assert!(d.is_end());
        assert_eq!(&buf[..], b"EXTRA");
    }
}
