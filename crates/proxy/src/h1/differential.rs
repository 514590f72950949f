//! Differential tests: the same requests, answered by the same scripted pod on 127.0.0.1, go
//! through the router's codec and through `hyper::client::conn::http1`; what a client of either
//! would see must be the same: the request the pod got, the status, reason phrase, headers, body
//! bytes, trailers, whether (and where) it failed, and whether the connection carried a second
//! request. Where the codec differs from hyper on purpose, the case says so and checks the
//! difference.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::conn::{Conn, HeadError};
use crate::body::BoxError;

type TestBody = BoxBody<Bytes, BoxError>;

/// The pod's answer to a second request on the same connection.
const SECOND: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond";
const LIMIT: Duration = Duration::from_secs(5);

/// What the scripted pod does after its canned answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    /// Closes the connection.
    Close,
    /// Answers a second request with [`SECOND`].
    Serve,
}

/// A request as the pod received it.
#[derive(Debug, PartialEq, Eq)]
struct Received {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// One request as the test sends it.
#[derive(Debug, Clone)]
enum Send {
    Get,
    Head,
    /// A body of known length.
    Post(&'static [u8]),
    /// A body of unknown length, in these frames.
    PostStream(&'static [&'static [u8]]),
}

impl Send {
    fn request(&self) -> Request<TestBody> {
        let full = |b: &'static [u8]| {
            Full::new(Bytes::from_static(b))
                .map_err(|e| match e {})
                .boxed()
        };
        let (method, body) = match self {
            Send::Get => (Method::GET, full(b"")),
            Send::Head => (Method::HEAD, full(b"")),
            Send::Post(b) => (Method::POST, full(b)),
            Send::PostStream(frames) => {
                let frames = frames
                    .iter()
                    .map(|f| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(f))));
                (
                    Method::POST,
                    StreamBody::new(futures_util::stream::iter(frames)).boxed(),
                )
            }
        };
        let mut r = Request::new(body);
        *r.method_mut() = method;
        *r.uri_mut() = http::Uri::from_static("/score?v=1");
        let h = r.headers_mut();
        h.insert(http::header::HOST, "pod:8080".parse().unwrap());
        h.insert("x-request-id", "abc".parse().unwrap());
        if let Send::Post(b) = self {
            h.insert(http::header::CONTENT_LENGTH, b.len().into());
        }
        r
    }
}

/// A response head as a client sees it: status, reason phrase (when not the canonical one),
/// version, headers.
type SeenHead = (u16, Option<Vec<u8>>, http::Version, HeaderMap);

/// What a client saw.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// The request the pod got.
    received: Option<Received>,
    /// The head, or the failure before it.
    head: Result<SeenHead, Failure>,
    /// The body bytes read, then whether the body ended or failed.
    body: (Vec<u8>, Result<(), Failure>),
    trailers: Option<HeaderMap>,
    /// A second request went out on the same connection and got its answer.
    reused: bool,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Failure {
    Head,
    Body,
}

/// A pod on 127.0.0.1 that reads one request, writes `pieces` (a short pause between them, so
/// each is its own read), then does `after`; the requests it got come out of the channel.
async fn pod(
    pieces: Vec<Vec<u8>>,
    after: After,
) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        let Some(r) = read_request(&mut s, &mut buf).await else {
            return;
        };
        let _ = tx.send(r);
        for (i, p) in pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if s.write_all(p).await.is_err() {
                return;
            }
        }
        if after == After::Close {
            let _ = s.shutdown().await;
            // Read whatever comes until the client closes, without answering.
            let mut sink = [0u8; 1024];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        if read_request(&mut s, &mut buf).await.is_some() {
            let _ = s.write_all(SECOND).await;
            let mut sink = [0u8; 1024];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    });
    (addr, rx)
}

/// Reads one request (a `content-length` or chunked body), independently of the codec.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    }
    async fn line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                let l = buf[..i].to_vec();
                buf.drain(..i + 2);
                return Some(l);
            }
            more(s, buf).await?;
        }
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        more(s, buf).await?;
    };
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    assert!(req.parse(&buf[..end]).unwrap().is_complete());
    let mut headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    headers.sort();
    let received = |body| Received {
        method: req.method.unwrap().to_string(),
        target: req.path.unwrap().to_string(),
        headers: headers.clone(),
        body,
    };
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let chunked = get("transfer-encoding").is_some_and(|v| v.ends_with(b"chunked"));
    let length: usize =
        get("content-length").map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
    let mut r = received(Vec::new());
    buf.drain(..end);
    if chunked {
        loop {
            let size = line(s, buf).await?;
            let size = usize::from_str_radix(std::str::from_utf8(&size).unwrap(), 16).unwrap();
            if size == 0 {
                assert!(line(s, buf).await?.is_empty(), "no trailers are sent");
                break;
            }
            while buf.len() < size + 2 {
                more(s, buf).await?;
            }
            r.body.extend_from_slice(&buf[..size]);
            assert_eq!(&buf[size..size + 2], b"\r\n");
            buf.drain(..size + 2);
        }
    } else {
        while buf.len() < length {
            more(s, buf).await?;
        }
        r.body = buf.drain(..length).collect();
    }
    Some(r)
}

/// The exchange through the router's codec.
async fn through_codec(send: &Send, pieces: Vec<Vec<u8>>, after: After) -> Seen {
    let (addr, mut got) = pod(pieces, after).await;
    let mut conn = Conn::<TestBody>::new(TcpStream::connect(addr).await.unwrap());
    conn.start(send.request());
    let head = match tokio::time::timeout(LIMIT, poll_fn(|cx| conn.poll_head(cx))).await {
        Ok(Ok(h)) => Ok((
            h.status.as_u16(),
            h.reason.map(|r| r.to_vec()),
            h.version,
            h.headers,
        )),
        Ok(Err(HeadError::NotSent(..) | HeadError::Failed(_))) | Err(_) => Err(Failure::Head),
    };
    let (mut body, mut trailers, mut end) = (Vec::new(), None, Ok(()));
    if head.is_ok() {
        loop {
            match tokio::time::timeout(LIMIT, poll_fn(|cx| conn.poll_body(cx))).await {
                Ok(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => body.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Ok(None) => break,
                Ok(Some(Err(_))) | Err(_) => {
                    end = Err(Failure::Body);
                    break;
                }
            }
        }
    }
    let mut reused = false;
    if end.is_ok()
        && head.is_ok()
        && conn.finish()
        && poll_fn(|cx| std::task::Poll::Ready(conn.poll_idle(cx))).await
    {
        conn.start(Send::Get.request());
        if let Ok(Ok(h)) = tokio::time::timeout(LIMIT, poll_fn(|cx| conn.poll_head(cx))).await {
            let mut b = Vec::new();
            while let Ok(Some(Ok(f))) =
                tokio::time::timeout(LIMIT, poll_fn(|cx| conn.poll_body(cx))).await
            {
                b.extend_from_slice(&f.into_data().unwrap_or_default());
            }
            reused = h.status == 200 && b == b"second";
        }
    }
    drop(conn);
    Seen {
        received: got.recv().await,
        head,
        body: (body, end),
        trailers,
        reused,
    }
}

/// The exchange through hyper's HTTP/1.1 client connection.
async fn through_hyper(send: &Send, pieces: Vec<Vec<u8>>, after: After) -> Seen {
    let (addr, mut got) = pod(pieces, after).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, TestBody>(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let head = tokio::time::timeout(LIMIT, tx.send_request(send.request())).await;
    let (mut body, mut trailers, mut end) = (Vec::new(), None, Ok(()));
    let head = match head {
        Ok(Ok(resp)) => {
            let reason = resp
                .extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| r.as_bytes().to_vec());
            let (parts, mut b) = resp.into_parts();
            loop {
                match tokio::time::timeout(LIMIT, b.frame()).await {
                    Ok(Some(Ok(f))) => match f.into_data() {
                        Ok(d) => body.extend_from_slice(&d),
                        Err(f) => trailers = f.into_trailers().ok(),
                    },
                    Ok(None) => break,
                    Ok(Some(Err(_))) | Err(_) => {
                        end = Err(Failure::Body);
                        break;
                    }
                }
            }
            Ok((parts.status.as_u16(), reason, parts.version, parts.headers))
        }
        _ => Err(Failure::Head),
    };
    let mut reused = false;
    if end.is_ok()
        && head.is_ok()
        && let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(200), tx.ready()).await
        && let Ok(Ok(resp)) =
            tokio::time::timeout(LIMIT, tx.send_request(Send::Get.request())).await
    {
        let status = resp.status();
        let b = tokio::time::timeout(LIMIT, resp.into_body().collect()).await;
        reused = status == 200 && b.is_ok_and(|b| b.is_ok_and(|b| b.to_bytes() == "second"));
    }
    drop(tx);
    driver.abort();
    Seen {
        received: got.recv().await,
        head,
        body: (body, end),
        trailers,
        reused,
    }
}

/// Both clients, one scripted answer; returns (codec, hyper).
async fn both(send: Send, pieces: &[&[u8]], after: After) -> (Seen, Seen) {
    let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
    let lean = through_codec(&send, pieces.clone(), after).await;
    let hyper = through_hyper(&send, pieces, after).await;
    (lean, hyper)
}

/// Both clients see the same.
async fn same(name: &str, send: Send, pieces: &[&[u8]], after: After) -> Seen {
    let (lean, hyper) = both(send, pieces, after).await;
    assert_eq!(
        lean, hyper,
        "{name}: the codec (left) and hyper (right) differ"
    );
    lean
}

/// Splits `s` into pieces of `n` bytes.
fn split(s: &[u8], n: usize) -> Vec<&[u8]> {
    s.chunks(n).collect()
}

#[tokio::test]
async fn valid_responses_look_the_same_through_the_codec_and_hyper() {
    use After::*;
    let post = Send::Post(b"{\"data\":1}");
    let cl = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\nx-a: 1\r\nX-A: 2\r\n\r\nhello";
    let seen = same("content-length", post.clone(), &[cl], Serve).await;
    assert!(seen.reused && seen.body.0 == b"hello");
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
    let seen = same("chunked", post.clone(), &[chunked], Serve).await;
    assert!(seen.reused && seen.body.0 == b"hello world");
    let seen = same(
        "chunked, one byte per read",
        post.clone(),
        &split(chunked, 1),
        Serve,
    )
    .await;
    assert!(seen.reused);
    let seen = same(
        "chunked with trailers",
        Send::Get,
        &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 42\r\nx-more: 1\r\n\r\n"],
        Serve,
    )
    .await;
    assert_eq!(seen.trailers.unwrap()["x-checksum"], "42");
    let seen = same(
        "close-delimited",
        Send::Get,
        &[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the close"],
        Close,
    )
    .await;
    assert!(!seen.reused && seen.body.0 == b"until the close");
    let seen = same(
        "HEAD",
        Send::Head,
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n"],
        Serve,
    )
    .await;
    assert!(seen.reused && seen.body.0.is_empty());
    same(
        "204",
        post.clone(),
        &[b"HTTP/1.1 204 No Content\r\n\r\n"],
        Serve,
    )
    .await;
    same(
        "304",
        Send::Get,
        &[b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\ncontent-length: 9\r\n\r\n"],
        Serve,
    )
    .await;
    let seen = same(
        "100-continue first",
        post.clone(),
        &[
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ],
        Serve,
    )
    .await;
    assert_eq!(seen.head.unwrap().0, 200);
    same("102 then 103 then 200", Send::Get, &[b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"], Serve).await;
    let seen = same(
        "HTTP/1.0",
        Send::Get,
        &[b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"],
        Serve,
    )
    .await;
    assert!(!seen.reused);
    let seen = same(
        "HTTP/1.0 keep-alive",
        Send::Get,
        &[b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok"],
        Serve,
    )
    .await;
    assert!(seen.reused);
    let seen = same(
        "connection: close",
        Send::Get,
        &[b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"],
        Serve,
    )
    .await;
    assert!(!seen.reused);
    let seen = same(
        "custom reason",
        Send::Get,
        &[b"HTTP/1.1 200 Fine Thanks\r\ncontent-length: 0\r\n\r\n"],
        Serve,
    )
    .await;
    assert_eq!(seen.head.unwrap().1.as_deref(), Some(&b"Fine Thanks"[..]));
    same(
        "empty reason",
        Send::Get,
        &[b"HTTP/1.1 299 \r\ncontent-length: 0\r\n\r\n"],
        Serve,
    )
    .await;
    let seen = same(
        "bytes after the body",
        Send::Get,
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"],
        Serve,
    )
    .await;
    assert!(!seen.reused);
    let big = {
        let mut v = b"HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n".to_vec();
        v.extend((0..200_000u32).map(|i| (i % 251) as u8));
        v
    };
    let seen = same(
        "a large body over many reads",
        post.clone(),
        &split(&big, 65_536),
        Serve,
    )
    .await;
    assert_eq!(seen.body.0.len(), 200_000);
    let seen = same(
        "a streamed request body (chunked)",
        Send::PostStream(&[b"first ", b"second ", b"third"]),
        &[cl],
        Serve,
    )
    .await;
    assert_eq!(seen.received.unwrap().body, b"first second third");
    same(
        "an empty streamed request body",
        Send::PostStream(&[]),
        &[cl],
        Serve,
    )
    .await;
}

#[tokio::test]
async fn malformed_responses_fail_the_same_through_the_codec_and_hyper() {
    use After::*;
    let get = || Send::Get;
    let head_fails = |s: &Seen| s.head == Err(Failure::Head);
    let body_fails = |s: &Seen| s.head.is_ok() && s.body.1 == Err(Failure::Body);
    for (name, bytes) in [
        (
            "bad status line",
            &b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n"[..],
        ),
        ("not HTTP", b"garbage\r\n\r\n"),
        (
            "status below 100",
            b"HTTP/1.1 099 Low\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "two different content-lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        ),
        (
            "a content-length list that disagrees",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok",
        ),
        (
            "negative content-length",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        ),
        (
            "header with a control byte",
            b"HTTP/1.1 200 OK\r\nx-bad: a\x01b\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "header name with a space",
            b"HTTP/1.1 200 OK\r\nx bad: 1\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "obs-fold",
            b"HTTP/1.1 200 OK\r\nx-fold: a\r\n b\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "transfer-encoding in HTTP/1.0",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        ("closed before a head", b""),
        ("closed inside the head", b"HTTP/1.1 200 OK\r\ncontent-len"),
    ] {
        let seen = same(name, get(), &[bytes], Close).await;
        assert!(head_fails(&seen), "{name}: {seen:?}");
    }
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=100 {
        many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"content-length: 0\r\n\r\n");
    let seen = same("101 headers", get(), &[&many], Close).await;
    assert!(head_fails(&seen));
    let mut huge = b"HTTP/1.1 200 OK\r\nx-huge: ".to_vec();
    huge.resize(super::codec::MAX_HEAD_BYTES + 1024, b'h');
    let seen = same(
        "a head larger than the limit",
        get(),
        &split(&huge, 65_536),
        Close,
    )
    .await;
    assert!(head_fails(&seen));

    let mut ext = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;".to_vec();
    ext.resize(ext.len() + 20_000, b'e');
    ext.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    for (name, bytes) in [
        (
            "content-length longer than the body, then close",
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
        ),
        (
            "bad chunk size",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk size overflow",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\n",
        ),
        (
            "chunk data longer than its size",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk extension with a bare LF",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;a\nb\r\nx\r\n0\r\n\r\n",
        ),
        ("a huge chunk extension", &ext),
        (
            "no last chunk, then close",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ),
        (
            "bad trailer",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nnot a header\r\n\r\n",
        ),
    ] {
        let seen = same(name, get(), &[bytes], Close).await;
        assert!(body_fails(&seen), "{name}: {seen:?}");
    }
}

#[tokio::test]
async fn where_the_codec_differs_from_hyper_on_purpose() {
    // Transfer-Encoding and Content-Length together: both decode the chunked body, but hyper
    // hands on the Content-Length (the router would then announce a length to its client that
    // is not the body's) and keeps the connection; the codec drops both (RFC 9112 6.3).
    let (lean, hyper) = both(
        Send::Get,
        &[b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
        After::Serve,
    )
    .await;
    assert_eq!(lean.body, hyper.body);
    assert_eq!(lean.received, hyper.received);
    let (Ok(l), Ok(mut h)) = (lean.head, hyper.head) else {
        panic!("both answered");
    };
    assert!(h.3.remove(http::header::CONTENT_LENGTH).is_some());
    assert_eq!(l, h);
    assert!(hyper.reused && !lean.reused);

    // 101 Switching Protocols: the router never asks for an upgrade (`Upgrade` is hop-by-hop
    // and stripped), so an unasked-for switch is a broken response, not an answer to relay.
    let (lean, hyper) = both(
        Send::Get,
        &[b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"],
        After::Close,
    )
    .await;
    assert_eq!(lean.head, Err(Failure::Head));
    assert_eq!(hyper.head.map(|h| h.0), Ok(101));

    // A chunk size with more than 16 hex digits (leading zeros): hyper reads digits as long as
    // the value fits; the codec bounds the line.
    let (lean, hyper) = both(
        Send::Get,
        &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n000000000000000001\r\nx\r\n0\r\n\r\n"],
        After::Close,
    )
    .await;
    assert_eq!(lean.body.1, Err(Failure::Body));
    assert_eq!(hyper.body, (b"x".to_vec(), Ok(())));
}
