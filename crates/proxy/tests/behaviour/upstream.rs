//! Upstream connections: kept and reused per pod (also after a client abandons a response: the
//! router reads it to its end), dropped when the pod closes them or an abandoned response outlasts
//! its request timeout, never costing a request; full duplex (a pod may answer before the upload
//! ends); answers framed both ways read as chunked and not trusted with the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// How the raw pod treats a connection after answering.
#[derive(Clone, Copy)]
enum AfterAnswer {
    /// Keep it open for more requests.
    KeepAlive,
    /// Close it at once, without saying so (no `Connection: close`): as a server whose
    /// keep-alive timeout is shorter than the router's idle timeout.
    Close,
}

/// A minimal HTTP/1.1 pod that counts connections and requests. `/slow` answers the head and
/// half of a 10-byte body, then the rest after 600 ms; anything else answers `ok` at once.
struct RawPod {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// Connections that reached end of file or an error (closed by the router).
    closed: Arc<AtomicUsize>,
}

impl RawPod {
    async fn start(after: AfterAnswer) -> RawPod {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (c, r, x) = (connections.clone(), requests.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (r, x) = (r.clone(), x.clone());
                tokio::spawn(async move {
                    serve_raw(s, after, &r).await;
                    x.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawPod {
            addr,
            connections,
            requests,
            closed,
        }
    }
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Serves requests on one connection until the peer closes it or `after` says to stop.
async fn serve_raw(mut s: TcpStream, after: AfterAnswer, requests: &AtomicUsize) {
    let mut buf = Vec::new();
    loop {
        // Read a head, then as many body bytes as content-length says.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + len);
        requests.fetch_add(1, Ordering::SeqCst);
        if head.contains(" /slow ") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf-")
                .await;
            // Meanwhile, notice the router closing the connection.
            let mut probe = [0u8; 1];
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(600)) => {}
                _ = s.read(&mut probe) => return,
            }
            if s.write_all(b"done!").await.is_err() {
                return;
            }
        } else if s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
        if let AfterAnswer::Close = after {
            return;
        }
    }
}

fn one_pod(pod: &RawPod, settings: &str) -> String {
    insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"]{settings}}}]",
        pod.addr
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_upstream_connection() {
    let pod = RawPod::start(AfterAnswer::KeepAlive).await;
    let r = Router::start(&one_pod(&pod, "")).await;
    // Separate client connections, one after another: the router still needs only one to the pod.
    for i in 0..20 {
        let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
        assert_eq!(a.status, 200, "request {i}: {:?}", a.body);
        assert_eq!(&a.body[..], b"ok");
    }
    assert_eq!(pod.requests(), 20);
    assert_eq!(
        pod.connections(),
        1,
        "every request reused the first connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_open_no_more_connections_than_slots() {
    let pod = RawPod::start(AfterAnswer::KeepAlive).await;
    let r = Router::start(&one_pod(
        &pod,
        ", requestSettings: {maxConcurrentRequestsPerInstance: 3, maxQueueWaitMs: 5000}",
    ))
    .await;
    let addr = r.http();
    let clients = (0..8).map(|_| {
        tokio::spawn(async move {
            let mut c = Client::plain(addr, Proto::H1).await;
            for _ in 0..25 {
                let a = c.call(post("/api/v1/endpoint/e/score", "{}")).await;
                assert_eq!(a.status, 200);
            }
        })
    });
    for c in clients.collect::<Vec<_>>() {
        c.await.unwrap();
    }
    assert_eq!(pod.requests(), 200);
    let n = pod.connections();
    assert!(
        (1..=3).contains(&n),
        "{n} connections for 3 slots: idle connections were not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_closing_idle_connections_costs_no_request() {
    let pod = RawPod::start(AfterAnswer::Close).await;
    let r = Router::start(&one_pod(&pod, "")).await;
    let mut c = Client::plain(r.http(), Proto::H1).await;
    for i in 0..10 {
        let a = c.call(post("/api/v1/endpoint/e/score", "{}")).await;
        assert_eq!(a.status, 200, "request {i}: {:?}", a.body);
        // Give the pod's close time to arrive, as after any idle period.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(pod.requests(), 10);
    assert_eq!(pod.connections(), 10, "a closed connection is never reused");
}

/// A client that reads half of `/slow`'s body and goes away.
async fn abandon_slow(r: &Router) {
    let mut c = Client::plain(r.http(), Proto::H1).await;
    let resp = c
        .send(post("/api/v1/endpoint/e/score", "{}"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"half-");
    // The client goes away in the middle of the body.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_response_is_read_to_its_end_and_its_connection_reused() {
    let pod = RawPod::start(AfterAnswer::KeepAlive).await;
    let r = Router::start(&one_pod(
        &pod,
        ", scoringPath: /slow, requestSettings: {maxQueueWaitMs: 5000}",
    ))
    .await;
    let t0 = std::time::Instant::now();
    abandon_slow(&r).await;
    // The next request waits for the pod to finish the abandoned answer (its slot is taken until
    // then), and goes out on the same connection.
    let mut c = Client::plain(r.http(), Proto::H1).await;
    let a = c.call(post("/api/v1/endpoint/e/score", "{}")).await;
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], b"half-done!");
    assert!(
        t0.elapsed() >= Duration::from_millis(1100),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        pod.connections(),
        1,
        "the abandoned answer's connection was reused"
    );
    assert_eq!(pod.closed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_response_past_the_request_timeout_closes_its_connection() {
    let pod = RawPod::start(AfterAnswer::KeepAlive).await;
    let r = Router::start(&one_pod(
        &pod,
        ", scoringPath: /slow, requestSettings: {requestTimeoutMs: 300}",
    ))
    .await;
    abandon_slow(&r).await;
    // At the request timeout the router closes the pod connection: an HTTP/1.1 response cannot
    // be abandoned otherwise.
    assert!(
        eventually(Duration::from_secs(1), async || pod.closed() >= 1).await,
        "the abandoned upstream connection was not closed"
    );
    assert_eq!(pod.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_hangs_past_the_request_timeout_is_504() {
    // A listener that never accepts, its backlog filled: further connects get no answer to
    // their SYN and hang, as to a pod behind a dropped route.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = sock.listen(0).unwrap();
    let addr = l.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr))
            .await
            .is_err(),
        "the backlog is full: a connect hangs"
    );
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{addr}\"], requestSettings: {{requestTimeoutMs: 400}}}}]"
    )))
    .await;
    let t0 = std::time::Instant::now();
    let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
    a.assert_error(504, "UpstreamTimeout");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "answered after {took:?}: the request timeout, not the 3 s connect timeout, applies"
    );
    drop((l, fillers));
}

/// A pod that reads only the request head and answers `answer` at once, then reads (and drops)
/// whatever comes until the router closes the connection; counts connections.
async fn answering_pod(answer: &'static [u8]) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if s.write_all(answer).await.is_err() {
                    return;
                }
                // Slowly, so that the upload is still under way when the answer is read.
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_answering_before_the_upload_ends_is_heard_and_its_connection_not_reused() {
    let (addr, connections) = answering_pod(
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\ncontent-type: text/plain\r\n\r\ntoo large",
    )
    .await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{addr}\"]}}]"
    )))
    .await;
    // 8 MiB: more than the socket buffers hold while the pod reads slowly.
    let big = vec![b'x'; 8 << 20];
    let mut c = Client::plain(r.http(), Proto::H1).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        c.send(req("POST", "/api/v1/endpoint/e/score", full(big))),
    )
    .await
    .expect("the pod's early answer arrives while the upload is under way")
    .unwrap();
    assert_eq!(resp.status(), 413);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"too large");
    // The request was never fully written: that connection is not used again.
    let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
    assert_eq!(a.status, 413);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_sending_both_transfer_encoding_and_content_length_is_read_as_chunked() {
    let (addr, connections) = answering_pod(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{addr}\"]}}]"
    )))
    .await;
    for _ in 0..2 {
        let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
        assert_eq!(a.status, 200);
        assert_eq!(&a.body[..], b"hello world");
        assert!(
            a.headers.get("content-length").is_none(),
            "the pod's length is not the body's: {:?}",
            a.headers
        );
    }
    // Such an answer may be a smuggling attempt: its connection is not kept.
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}
