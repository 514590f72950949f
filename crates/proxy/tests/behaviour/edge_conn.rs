//! Behaviour 12: the edge limits, each attacked over real sockets: connections that send
//! nothing (plain, TLS, half an HTTP/2 preface), slow heads, idle keep-alive connections,
//! connection floods, oversized heads, and HTTP/2 streams and PINGs.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// One endpoint `e` with one deployment in front of `pod`, with these `limits` (YAML flow map
/// entries), on plain HTTP and, with `tls`, on HTTPS too.
fn edge_cfg(pod: SocketAddr, limits: &str, tls: bool, settings: &str) -> String {
    let tls = if tls {
        format!(
            "sslCertPemFile: {}\nsslKeyPemFile: {}\n",
            certs_example("server.pem").display(),
            certs_example("server-key.pem").display()
        )
    } else {
        String::new()
    };
    format!(
        "{tls}allowInsecureConnections: true\nlimits: {{{limits}}}\nendpoints:\n  - name: e\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"{pod}\"]{settings}}}]\n"
    )
}

const SCORE: &str = "/api/v1/endpoint/e/score";

/// Reads until the peer closes (EOF or reset); `None` if it is still open after `limit`.
async fn closed_within(s: &mut (impl AsyncRead + Unpin), limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all)
        .await
        .ok()
        .map(|()| start.elapsed())
}

/// A TCP connection to `to` from the local address `from` (any port).
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// Whether a connection to `to` from `from` is refused: reset during the connect, or closed
/// by the router before anything was sent.
async fn refused(from: IpAddr, to: SocketAddr) -> bool {
    match connect_from(from, to).await {
        Err(_) => true,
        Ok(mut s) => closed_within(&mut s, Duration::from_secs(5))
            .await
            .is_some(),
    }
}

/// The raw HTTP/1.1 answer to `head` (and nothing else) on a fresh connection: what arrived
/// before the router closed the connection, or an error if it reset it first.
async fn raw_exchange(addr: SocketAddr, head: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    // The router may answer and close before the whole head is written.
    let _ = s.write_all(head).await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn head_with(extra_headers: &str) -> Vec<u8> {
    format!(
        "POST {SCORE} HTTP/1.1\r\nhost: router.test\r\ncontent-type: application/json\r\ncontent-length: 2\r\n{extra_headers}\r\n{{}}"
    )
    .into_bytes()
}

/// `n` header fields named `x-fill-<i>`.
fn many_headers(n: usize) -> String {
    (0..n).map(|i| format!("x-fill-{i}: v\r\n")).collect()
}

fn pod_untouched(pod: &mock_model::MockHandle) {
    let s = pod.stats();
    assert_eq!(
        (s.served, s.max_in_flight),
        (0, 0),
        "the pod was reached: {s:?}"
    );
}

async fn timeouts(r: &Router, kind: &str) -> f64 {
    admin_metric(
        r.admin,
        &format!("infergate_connection_timeouts_total{{timeout=\"{kind}\"}}"),
    )
    .await
}

// === before the first request ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_connection_after_handshake_is_closed() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(pod.addr(), "headerReadTimeoutMs: 300", true, "")).await;
    let https = r.https.unwrap();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut s = tls_connect(
            https,
            tls_client_config(&[certs_example("ca.pem")], &[alpn], false),
        )
        .await
        .expect("handshake completes");
        let after = closed_within(&mut s, Duration::from_secs(10)).await;
        assert!(
            after.is_some(),
            "ALPN {alpn:?}: a TLS connection that sends nothing stays open"
        );
    }
    assert_eq!(timeouts(&r, "header_read").await, 2.0);
    // A client that does send its request in time is served.
    let a = Client::tls(https, Proto::H2)
        .await
        .call(post(SCORE, "{}"))
        .await;
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_plain_connection_and_half_http2_preface_are_closed() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(pod.addr(), "headerReadTimeoutMs: 300", false, "")).await;
    let mut silent = TcpStream::connect(r.http()).await.unwrap();
    let mut half = TcpStream::connect(r.http()).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for (what, s) in [("silent", &mut silent), ("half preface", &mut half)] {
        assert!(
            closed_within(s, Duration::from_secs(10)).await.is_some(),
            "{what}: still open"
        );
    }
    assert_eq!(timeouts(&r, "header_read").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_http2_preface_over_tls_is_closed() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(pod.addr(), "headerReadTimeoutMs: 300", true, "")).await;
    let mut s = tls_connect(
        r.https.unwrap(),
        tls_client_config(&[certs_example("ca.pem")], &[b"h2"], false),
    )
    .await
    .unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    s.flush().await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(10))
            .await
            .is_some()
    );
    pod_untouched(&pod);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_first_head_is_cut_at_the_deadline_from_accept() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(pod.addr(), "headerReadTimeoutMs: 500", false, "")).await;
    let mut s = TcpStream::connect(r.http()).await.unwrap();
    let start = Instant::now();
    // One byte every 50 ms: the head would take far longer than the deadline.
    let head = head_with("x-slow: 1\r\n");
    let mut closed = false;
    for b in head.iter() {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    if !closed {
        closed = closed_within(&mut s, Duration::from_secs(10))
            .await
            .is_some();
    }
    assert!(closed, "a head trickled in byte by byte was never cut");
    assert!(start.elapsed() < Duration::from_secs(10));
    pod_untouched(&pod);
    assert_eq!(timeouts(&r, "header_read").await, 1.0);
}

// === between requests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_idle_connection_is_closed() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(pod.addr(), "idleTimeoutMs: 300", true, "")).await;
    // HTTP/1.1, raw: one request, then silence.
    let mut s = TcpStream::connect(r.http()).await.unwrap();
    s.write_all(&head_with("")).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut s, Duration::from_secs(10))
            .await
            .is_some(),
        "an idle keep-alive connection stays open"
    );
    // HTTP/2 over TLS: the connection ends (GOAWAY) once its only stream is done.
    let tls = tls_connect(
        r.https.unwrap(),
        tls_client_config(&[certs_example("ca.pem")], &[b"h2"], false),
    )
    .await
    .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let resp = send.send_request(post(SCORE, "{}")).await.unwrap();
    assert_eq!(Answer::collect(resp).await.status, 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stays open");
    assert_eq!(timeouts(&r, "idle").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_longer_than_the_idle_timeout_is_not_cut() {
    // The pod takes 800 ms; the connection is idle only before and after.
    let pod = mock("p", 800).await;
    let r = Router::start(&edge_cfg(
        pod.addr(),
        "idleTimeoutMs: 200, headerReadTimeoutMs: 200",
        true,
        "",
    ))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Client::tls(r.https.unwrap(), proto).await;
        let a = c.call(post(SCORE, "{}")).await;
        assert_eq!(a.status, 200, "{proto:?}");
    }
    let mut c = Client::plain(r.http(), Proto::H1).await;
    assert_eq!(c.call(post(SCORE, "{}")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_head_on_a_keepalive_connection_is_cut_by_the_header_timeout() {
    let pod = mock("p", 0).await;
    // A long idle timeout: only the header timer can close this connection early.
    let r = Router::start(&edge_cfg(
        pod.addr(),
        "idleTimeoutMs: 60000, headerReadTimeoutMs: 300",
        false,
        "",
    ))
    .await;
    let mut s = TcpStream::connect(r.http()).await.unwrap();
    s.write_all(&head_with("")).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The next request's first bytes, then nothing.
    s.write_all(b"POST /api/v1/end").await.unwrap();
    let after = closed_within(&mut s, Duration::from_secs(20)).await;
    assert!(
        after.is_some_and(|d| d < Duration::from_secs(20)),
        "a keep-alive head that stalls waits for the 60 s idle timeout"
    );
    assert_eq!(timeouts(&r, "header_read").await, 1.0);
    assert_eq!(timeouts(&r, "idle").await, 0.0);
}

/// A head that began and stalled gets the router's own `408` with the JSON body and a request
/// id (as HAProxy answers `timeout http-request`), on a first request and on a kept-alive
/// connection; a connection that never began a head closes without a byte (browsers open
/// spare connections they may never use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_head_gets_408_and_a_silent_connection_gets_nothing() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(
        pod.addr(),
        "idleTimeoutMs: 60000, headerReadTimeoutMs: 300",
        false,
        "",
    ))
    .await;
    async fn read_to_end(s: &mut TcpStream) -> String {
        let mut all = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await;
        String::from_utf8_lossy(&all).into_owned()
    }
    let check_408 = |text: &str| {
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
        let lower = text.to_ascii_lowercase();
        assert!(lower.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(lower.contains("\r\nx-request-id: "), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(v["error"]["code"], "RequestHeaderTimeout", "{body}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("headerReadTimeoutMs")),
            "{body}"
        );
        assert!(
            v["requestId"].as_str().is_some_and(|id| !id.is_empty()),
            "{body}"
        );
    };

    // A first request whose head stops halfway.
    let mut s = TcpStream::connect(r.http()).await.unwrap();
    s.write_all(b"POST /api/v1/endpoint/e/score HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    check_408(&read_to_end(&mut s).await);

    // The second head of a kept-alive connection.
    let mut s = TcpStream::connect(r.http()).await.unwrap();
    s.write_all(&head_with("")).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s.write_all(b"POST /api/v1/end").await.unwrap();
    check_408(&read_to_end(&mut s).await);

    // Nothing sent: closed without a byte.
    let mut s = TcpStream::connect(r.http()).await.unwrap();
    assert_eq!(read_to_end(&mut s).await, "");

    assert_eq!(timeouts(&r, "header_read").await, 3.0);
    let m = admin_get(r.admin, "/metrics").await;
    let t = String::from_utf8_lossy(&m.body);
    assert_eq!(
        metric(&t, "infergate_requests_total{status=\"408\"}"),
        2.0,
        "{t}"
    );
    assert_eq!(
        pod.stats().served,
        1,
        "only the complete request reached the pod"
    );
}

// === connection caps ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_from_one_address_is_capped() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(
        pod.addr(),
        "maxConnections: 100, maxConnectionsPerClient: 3",
        false,
        "",
    ))
    .await;
    let one: IpAddr = "127.0.0.1".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(one, r.http()).await.unwrap());
    }
    // Let the router admit the three before the flood goes on.
    let open =
        async || admin_metric(r.admin, "infergate_connections_open{listener=\"http\"}").await;
    assert!(eventually(Duration::from_secs(5), async || open().await == 3.0).await);
    assert!(
        refused(one, r.http()).await,
        "a fourth connection from one address is kept"
    );
    let refused = "infergate_connections_refused_total{reason=\"per_client_limit\"}";
    assert_eq!(admin_metric(r.admin, refused).await, 1.0);
    // Another address is served meanwhile.
    let other = connect_from("127.0.0.2".parse().unwrap(), r.http())
        .await
        .unwrap();
    let a = Client::over(other, Proto::H1)
        .await
        .call(post(SCORE, "{}"))
        .await;
    assert_eq!(a.status, 200);
    // A place freed is a place to take again.
    drop(held.pop());
    assert!(eventually(Duration::from_secs(5), async || open().await == 2.0).await);
    let again = connect_from(one, r.http()).await.unwrap();
    let a = Client::over(again, Proto::H1)
        .await
        .call(post(SCORE, "{}"))
        .await;
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_global_cap_are_refused() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(pod.addr(), "maxConnections: 2", true, "")).await;
    let a = TcpStream::connect(r.http()).await.unwrap();
    let b = TcpStream::connect(r.https.unwrap()).await.unwrap();
    let total = async || {
        let t = metrics_text(&r).await;
        metric(&t, "infergate_connections_open{")
    };
    assert!(eventually(Duration::from_secs(5), async || total().await == 2.0).await);
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    for addr in [r.http(), r.https.unwrap()] {
        assert!(
            refused(local, addr).await,
            "{addr}: a third connection is kept"
        );
    }
    let refused = "infergate_connections_refused_total{reason=\"global_limit\"}";
    assert_eq!(admin_metric(r.admin, refused).await, 2.0);
    drop((a, b));
    assert!(eventually(Duration::from_secs(5), async || total().await == 0.0).await);
    assert_eq!(call(r.http(), post(SCORE, "{}")).await.status, 200);
}

// === request heads ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_gets_431_and_never_reaches_the_pod() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(
        pod.addr(),
        "maxRequestHeaderBytes: 4096",
        true,
        "",
    ))
    .await;
    // Over the limit: the router's own answer, over HTTP/1.1 and HTTP/2.
    let big = "b".repeat(5000);
    for proto in [Proto::H1, Proto::H2] {
        let mut q = post(SCORE, "{}");
        q.headers_mut().insert("x-big", big.parse().unwrap());
        let a = Client::tls(r.https.unwrap(), proto).await.call(q).await;
        a.assert_error(431, "RequestHeaderFieldsTooLarge");
        if proto == Proto::H1 {
            assert_eq!(a.header("connection"), "close");
        }
    }
    // Far over it (500 KB): the parser refuses it (a bare 431, or a reset while the client
    // is still sending); either way it is counted and never forwarded.
    let huge = head_with(&format!("x-huge: {}\r\n", "h".repeat(500_000)));
    if let Ok(answer) = raw_exchange(r.http(), &huge).await {
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer:.200}"
        );
    }
    // Just under the limit passes.
    let mut q = post(SCORE, "{}");
    q.headers_mut()
        .insert("x-big", "b".repeat(3500).parse().unwrap());
    assert_eq!(call(r.http(), q).await.status, 200);
    assert_eq!(
        pod.stats().served,
        1,
        "only the request within the limit reached the pod"
    );
    // All three 431s are counted (the parser's when its connection ends).
    let count = async || {
        let t = metrics_text(&r).await;
        metric(&t, "infergate_requests_total{status=\"431\"}")
    };
    assert!(eventually(Duration::from_secs(5), async || count().await == 3.0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_get_431() {
    let pod = mock("p", 0).await;
    // Below hyper's 100 slots: the router's answer.
    let r = Router::start(&edge_cfg(pod.addr(), "maxRequestHeaders: 20", false, "")).await;
    let mut q = post(SCORE, "{}");
    for i in 0..30 {
        q.headers_mut().insert(
            format!("x-fill-{i}").parse::<http::HeaderName>().unwrap(),
            "v".parse().unwrap(),
        );
    }
    let a = call(r.http(), q).await;
    a.assert_error(431, "RequestHeaderFieldsTooLarge");
    pod_untouched(&pod);
    drop(r);
    // The default (100): the parser refuses the 101st field itself, with a bare 431.
    let r = Router::start(&edge_cfg(pod.addr(), "", false, "")).await;
    let close = "connection: close\r\n";
    let answer = raw_exchange(r.http(), &head_with(&(many_headers(150) + close)))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    pod_untouched(&pod);
    let answer = raw_exchange(r.http(), &head_with(&(many_headers(90) + close)))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_header_list_too_large_is_refused() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(
        pod.addr(),
        "maxRequestHeaderBytes: 4096",
        true,
        "",
    ))
    .await;
    let mut c = Client::tls(r.https.unwrap(), Proto::H2).await;
    // Over the router's limit, under the advertised SETTINGS_MAX_HEADER_LIST_SIZE: JSON 431.
    let mut q = post(SCORE, "{}");
    q.headers_mut()
        .insert("x-big", "b".repeat(6000).parse().unwrap());
    c.call(q)
        .await
        .assert_error(431, "RequestHeaderFieldsTooLarge");
    // Over the advertised list size (2 x 4096 + 32 per field): HTTP/2's own 431.
    let mut q = post(SCORE, "{}");
    q.headers_mut()
        .insert("x-big", "b".repeat(13_000).parse().unwrap());
    let resp = c.send(q).await;
    assert!(
        resp.as_ref().map_or(true, |r| r.status() == 431),
        "{:?}",
        resp.map(|r| r.status())
    );
    pod_untouched(&pod);
    // The connection still serves.
    let mut c = Client::tls(r.https.unwrap(), Proto::H2).await;
    assert_eq!(c.call(post(SCORE, "{}")).await.status, 200);
}

// === HTTP/2: streams, windows, PINGs (raw frames) ===

/// A bare HTTP/2 client: enough frames to open streams a real client would hold back.
struct RawH2 {
    s: TcpStream,
}

/// One received frame: type, flags, stream id, payload.
#[derive(Debug)]
struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;

impl RawH2 {
    /// Preface and an empty SETTINGS; returns the server's SETTINGS and acknowledges them.
    async fn connect(addr: SocketAddr) -> (RawH2, Vec<(u16, u32)>) {
        let mut h = RawH2 {
            s: TcpStream::connect(addr).await.unwrap(),
        };
        h.s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        h.frame(SETTINGS, 0, 0, &[]).await;
        let settings = loop {
            let f = h.read().await.expect("server SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break f
                    .payload
                    .chunks(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
            }
        };
        h.frame(SETTINGS, ACK, 0, &[]).await;
        (h, settings)
    }

    async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).await.unwrap();
    }

    /// HEADERS for a POST to the scoring URL, without END_STREAM: the stream stays open.
    async fn open_stream(&mut self, stream: u32) {
        // HPACK: :method POST (static 3), :scheme http (static 6), then literal fields with
        // indexed names (:path = 4, :authority = 1), never Huffman-coded.
        let mut block = vec![0x83, 0x86];
        for (index, value) in [(4u8, SCORE), (1, "router.test")] {
            block.push(index);
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        self.frame(0x1, 0x4, stream, &block).await; // HEADERS, END_HEADERS
    }

    async fn read(&mut self) -> Option<H2Frame> {
        let mut head = [0u8; 9];
        self.s.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).await.ok()?;
        Some(H2Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_more_than_100_concurrent_streams_are_refused() {
    let pod = mock("p", 0).await;
    // Bodies never end, so every admitted stream stays open for the test.
    let r = Router::start(&edge_cfg(
        pod.addr(),
        "headerReadTimeoutMs: 30000",
        false,
        ", requestSettings: {maxConcurrentRequestsPerInstance: 200, requestTimeoutMs: 30000, maxQueueWaitMs: 30000}",
    ))
    .await;
    let (mut h, settings) = RawH2::connect(r.http()).await;
    let get = |id: u16| settings.iter().find(|(k, _)| *k == id).map(|(_, v)| *v);
    assert_eq!(
        get(0x3),
        Some(100),
        "SETTINGS_MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    assert_eq!(
        get(0x4),
        Some(65_536),
        "SETTINGS_INITIAL_WINDOW_SIZE: {settings:?}"
    );
    assert!(
        get(0x6).is_some(),
        "SETTINGS_MAX_HEADER_LIST_SIZE: {settings:?}"
    );
    for i in 0..101u32 {
        h.open_stream(2 * i + 1).await;
    }
    let last = 2 * 100 + 1;
    let mut conn_window = 65_535u64;
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let f = h.read().await.expect("connection open");
            if f.kind == WINDOW_UPDATE && f.stream == 0 {
                conn_window += u64::from(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
            }
            if f.kind == RST_STREAM {
                let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                assert_eq!(code, REFUSED_STREAM, "{f:?}");
                return f.stream;
            }
        }
    })
    .await
    .expect("the 101st stream is refused");
    assert_eq!(
        refused, last,
        "the first 100 streams are served, the 101st refused"
    );
    assert_eq!(conn_window, 1_048_576, "the connection window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_that_never_answers_pings_is_closed() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(
        pod.addr(),
        "http2KeepaliveIntervalMs: 200, http2KeepaliveTimeoutMs: 300, headerReadTimeoutMs: 60000",
        false,
        "",
    ))
    .await;
    let (mut h, _) = RawH2::connect(r.http()).await;
    let mut pinged = false;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(f) = h.read().await {
            pinged |= f.kind == PING && f.flags & ACK == 0;
            if f.kind == GOAWAY {
                break;
            }
        }
    })
    .await;
    assert!(pinged, "no keep-alive PING");
    assert!(
        closed.is_ok(),
        "a client that never acknowledges PINGs stays connected"
    );
    assert_eq!(timeouts(&r, "header_read").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_alpn_speaks_http11() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(pod.addr(), "", true, "")).await;
    let s = tls_connect(
        r.https.unwrap(),
        tls_client_config(&[certs_example("ca.pem")], &[], false),
    )
    .await
    .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), None);
    let a = Client::over(s, Proto::H1)
        .await
        .call(post(SCORE, "{}"))
        .await;
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_waiting_connections_at_once_and_lets_requests_finish() {
    let pod = mock("p", 600).await;
    let r = Router::start(&edge_cfg(
        pod.addr(),
        "headerReadTimeoutMs: 60000, idleTimeoutMs: 60000",
        false,
        "",
    ))
    .await;
    let http = r.http();
    let mut silent = TcpStream::connect(http).await.unwrap();
    let mut half_head = TcpStream::connect(http).await.unwrap();
    half_head
        .write_all(b"POST /api/v1/endpoint/e/sc")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(http).await.unwrap();
    idle.write_all(&head_with("")).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let busy = tokio::spawn(async move { call(http, post(SCORE, "{}")).await });
    assert!(eventually(Duration::from_secs(5), async || pod.stats().in_flight == 1).await);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), r.stop())
        .await
        .expect("the drain waits only for the request in flight");
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(
        busy.await.unwrap().status,
        200,
        "the request in flight finished"
    );
    for (what, s) in [
        ("silent", &mut silent),
        ("half head", &mut half_head),
        ("idle", &mut idle),
    ] {
        assert!(
            closed_within(s, Duration::from_secs(5)).await.is_some(),
            "{what}: still open after the drain"
        );
    }
}

/// An HTTP/1.1 keep-alive connection idle for a second is parked (hyper's connection and its
/// buffers dropped, the socket kept): the client sees nothing, its next request on the same
/// socket is served (in one write, in pieces, or two pipelined), over plain HTTP and TLS, and
/// the idle timeout still closes a parked connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_parked_and_serve_their_next_request() {
    let pod = mock("p", 0).await;
    let r = Router::start(&edge_cfg(pod.addr(), "idleTimeoutMs: 4000", true, "")).await;
    let parked = || admin_metric(r.admin, "infergate_connections_parked");
    let wait_parked = async |n: f64| {
        let until = Instant::now() + Duration::from_secs(3);
        while parked().await != n {
            assert!(Instant::now() < until, "not {n} parked within 3 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let read_answers = async |s: &mut TcpStream, n: usize| {
        let mut got = String::new();
        let mut buf = vec![0u8; 8192];
        while got.matches("HTTP/1.1 200").count() < n || !got.ends_with("}") {
            let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(k > 0, "closed after {got:?}");
            got.push_str(&String::from_utf8_lossy(&buf[..k]));
        }
        assert_eq!(got.matches("HTTP/1.1 200").count(), n, "{got}");
        assert!(
            !got.to_ascii_lowercase().contains("connection: close"),
            "{got}"
        );
    };

    // Plain HTTP/1.1, raw.
    let mut s = TcpStream::connect(r.http()).await.unwrap();
    s.write_all(&head_with("")).await.unwrap();
    read_answers(&mut s, 1).await;
    wait_parked(1.0).await;
    // The next request in one write.
    s.write_all(&head_with("")).await.unwrap();
    read_answers(&mut s, 1).await;
    assert_eq!(parked().await, 0.0);
    // Parked again; the next head in pieces.
    wait_parked(1.0).await;
    let head = head_with("");
    s.write_all(&head[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&head[10..]).await.unwrap();
    read_answers(&mut s, 1).await;
    // Parked again; two pipelined requests.
    wait_parked(1.0).await;
    let two = [head_with(""), head_with("")].concat();
    s.write_all(&two).await.unwrap();
    read_answers(&mut s, 2).await;
    assert_eq!(pod.stats().served, 5);

    // TLS, through hyper's client on one connection.
    let mut c = Client::tls(r.https.unwrap(), Proto::H1).await;
    assert_eq!(c.call(post(SCORE, "{}")).await.status, 200);
    wait_parked(2.0).await;
    assert_eq!(c.call(post(SCORE, "{}")).await.status, 200);
    assert_eq!(pod.stats().served, 7);

    // Parked connections still end at the idle timeout, counted as such.
    let closed = closed_within(&mut s, Duration::from_secs(10)).await;
    assert!(
        closed.is_some(),
        "a parked connection outlived the idle timeout"
    );
    wait_parked(0.0).await;
    assert!(timeouts(&r, "idle").await >= 1.0);
}
