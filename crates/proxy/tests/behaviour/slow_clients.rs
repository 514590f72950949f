//! Slow clients: a client that stops reading (HTTP/2 window 0, a full TCP window) or stops
//! sending its body keeps a pod's slot only until `streamIdleTimeoutMs`, and no exchange outlives
//! `maxStreamDurationMs`. Each timeout is counted (`infergate_stream_timeouts_total`) and the pod
//! never serves more than its slots.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mock_model::MockHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const SCORE: &str = "/api/v1/endpoint/e/score";
/// An answer far larger than every buffer between the pod and the client (64 MiB).
const BIG: usize = 64 << 20;

/// One endpoint `e`, deployment `d` on these pods, one slot per pod, these request settings.
fn deployment(pods: &[SocketAddr], settings: &str) -> String {
    let pods: Vec<String> = pods.iter().map(|p| format!("\"{p}\"")).collect();
    insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [{}], requestSettings: {{maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 30000, {settings}}}}}]",
        pods.join(", ")
    ))
}

async fn timeouts(r: &Router, timer: &str) -> f64 {
    metric(
        &metrics_text(r).await,
        &format!(
            "infergate_stream_timeouts_total{{endpoint=\"e\",deployment=\"d\",timer=\"{timer}\"}}"
        ),
    )
}

/// An HTTP/2 connection that grants the router no flow-control window on any stream: the
/// router can send response heads, never a byte of a body.
async fn h2_zero_window(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// Until every pod works on one request (its slot is taken).
async fn all_busy(pods: &[MockHandle]) {
    assert!(
        eventually(Duration::from_secs(10), async || pods
            .iter()
            .all(|p| p.stats().in_flight == 1))
        .await,
        "every pod took the attacker's request"
    );
}

/// A client's POST served while an attack holds every slot: how long it was kept out.
async fn victim(r: &Router) -> Duration {
    let t = Instant::now();
    let a = call(r.http(), post(SCORE, "{}")).await;
    assert_eq!(a.status, 200, "{a:?}");
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_with_zero_window_loses_its_slot_after_stream_idle_timeout() {
    const IDLE_MS: u64 = 1_000;
    let pods = [mock("p0", 0).await, mock("p1", 0).await];
    let r = Router::start(&deployment(
        &[pods[0].addr(), pods[1].addr()],
        &format!("streamIdleTimeoutMs: {IDLE_MS}, requestTimeoutMs: 1000"),
    ))
    .await;
    // One connection, one POST per pod, each answered with more than any buffer holds; the
    // bodies are never read (and could not be sent: the window is 0).
    let mut attacker = h2_zero_window(r.http()).await;
    let mut held = Vec::new();
    for _ in 0..pods.len() {
        attacker.ready().await.unwrap();
        let q = post(&format!("{SCORE}?respondBytes={BIG}"), "{}");
        let resp = attacker.send_request(q).await.unwrap();
        assert_eq!(resp.status(), 200);
        held.push(resp.into_body());
    }
    all_busy(&pods).await;

    let kept_out = victim(&r).await;
    eprintln!(
        "h2 window 0, one POST per pod: another client kept out {} ms (streamIdleTimeoutMs {IDLE_MS})",
        kept_out.as_millis()
    );
    // Kept out by the attack until the idle timer freed a slot, not longer.
    assert!(
        kept_out >= Duration::from_millis(IDLE_MS / 2),
        "the attack held the slots: {kept_out:?}"
    );
    assert!(
        kept_out < Duration::from_millis(IDLE_MS + 4_000),
        "freed by the idle timeout: {kept_out:?}"
    );
    // The attacker's streams were reset.
    for mut b in held {
        let f = tokio::time::timeout(Duration::from_secs(10), b.frame()).await;
        assert!(
            matches!(f, Ok(Some(Err(_)))),
            "the stream ends with RST_STREAM: {f:?}"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), async || timeouts(
            &r,
            "stream_idle_timeout"
        )
        .await
            == 2.0)
        .await,
        "{}",
        metrics_text(&r).await
    );
    for p in &pods {
        assert_eq!(p.stats().max_in_flight, 1, "{:?}", p.stats());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_with_zero_window_holds_no_slot_once_the_pod_has_answered() {
    // A small answer (one frame, its length known): the pod is done at once, so the slot is
    // freed although the client never takes the answer.
    let pod = mock("p", 0).await;
    let r = Router::start(&deployment(
        &[pod.addr()],
        "streamIdleTimeoutMs: 30000, requestTimeoutMs: 1000",
    ))
    .await;
    let mut attacker = h2_zero_window(r.http()).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        attacker.ready().await.unwrap();
        let resp = attacker.send_request(post(SCORE, "{}")).await.unwrap();
        assert_eq!(resp.status(), 200);
        held.push(resp.into_body());
    }
    let kept_out = victim(&r).await;
    assert!(
        kept_out < Duration::from_secs(5),
        "not held for the 30 s idle timeout: {kept_out:?}"
    );
    assert_eq!(pod.stats().max_in_flight, 1);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_client_that_stops_reading_loses_its_slot() {
    const IDLE_MS: u64 = 1_000;
    let pod = mock("p", 0).await;
    let r = Router::start(&deployment(
        &[pod.addr()],
        &format!("streamIdleTimeoutMs: {IDLE_MS}, requestTimeoutMs: 1000"),
    ))
    .await;
    // A tiny receive buffer, and nothing read: the router's writes stall once the buffers fill.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(r.http()).await.unwrap();
    let q = format!(
        "POST {SCORE}?respondBytes={BIG} HTTP/1.1\r\nhost: router.test\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    s.write_all(q.as_bytes()).await.unwrap();
    all_busy(std::slice::from_ref(&pod)).await;

    let kept_out = victim(&r).await;
    eprintln!(
        "h1 client not reading: another client kept out {} ms (streamIdleTimeoutMs {IDLE_MS})",
        kept_out.as_millis()
    );
    assert!(
        kept_out >= Duration::from_millis(IDLE_MS / 2),
        "{kept_out:?}"
    );
    assert!(
        kept_out < Duration::from_millis(IDLE_MS + 4_000),
        "{kept_out:?}"
    );
    // The connection was closed before the whole answer: what the buffers held, then the end.
    let (mut got, mut buf) = (0usize, vec![0u8; 1 << 16]);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the connection stayed open ({got} bytes read)"),
        }
    }
    assert!(got < BIG, "{got} bytes: the answer was cut off");
    assert_eq!(timeouts(&r, "stream_idle_timeout").await, 1.0);
    assert_eq!(pod.stats().max_in_flight, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_trickle_hits_stream_idle_timeout() {
    const IDLE_MS: u64 = 1_000;
    let pod = mock("p", 0).await;
    // One failure would eject the pod: a client's stalled upload must not count as one.
    let r = Router::start(&deployment(
        &[pod.addr()],
        &format!(
            "streamIdleTimeoutMs: {IDLE_MS}, requestTimeoutMs: 20000, ejectAfterConsecutiveFailures: 1"
        ),
    ))
    .await;

    // HTTP/1.1: 5 of 100 announced bytes, then nothing.
    let mut s = TcpStream::connect(r.http()).await.unwrap();
    let head = format!(
        "POST {SCORE} HTTP/1.1\r\nhost: router.test\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"a\":"
    );
    let t = Instant::now();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut answer)).await;
    let took = t.elapsed();
    assert!(read.is_ok(), "the connection was closed after the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"StreamIdleTimeout\""), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        took >= Duration::from_millis(IDLE_MS) && took < Duration::from_millis(IDLE_MS + 4_000),
        "{took:?}"
    );

    // HTTP/2: one frame of a body that never ends.
    let mut c = Client::plain(r.http(), Proto::H2).await;
    let frames =
        futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from("{\"a\":")))])
            .chain(futures_util::stream::pending());
    let q = req("POST", SCORE, BodyExt::boxed(StreamBody::new(frames)));
    let t = Instant::now();
    let a = tokio::time::timeout(Duration::from_secs(15), c.call(q))
        .await
        .expect("answered");
    a.assert_error(408, "StreamIdleTimeout");
    assert!(t.elapsed() < Duration::from_millis(IDLE_MS + 4_000));

    // The slot is free and the pod in good standing.
    assert!(victim(&r).await < Duration::from_secs(5));
    let m = metrics_text(&r).await;
    assert_eq!(
        metric(
            &m,
            "infergate_stream_timeouts_total{endpoint=\"e\",deployment=\"d\",timer=\"stream_idle_timeout\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "infergate_requests_total{endpoint=\"e\",deployment=\"d\",status=\"408\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "infergate_pod_ejections_total{endpoint=\"e\",deployment=\"d\"}"
        ),
        0.0,
        "{m}"
    );
    assert_eq!(pod.stats().max_in_flight, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stream_duration_ends_a_long_stream() {
    const MAX_MS: u64 = 1_500;
    let pod = mock("p", 0).await;
    let r = Router::start(&deployment(
        &[pod.addr()],
        &format!(
            "streamIdleTimeoutMs: 5000, maxStreamDurationMs: {MAX_MS}, requestTimeoutMs: 1000"
        ),
    ))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        // A chunk every 500 ms for 20 s, read as it comes: never idle, just long.
        let mut c = Client::plain(r.http(), proto).await;
        let t = Instant::now();
        let resp = c
            .send(post(
                &format!("{SCORE}?streamChunks=40&latencyMs=20000"),
                "{}",
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let (mut frames, mut ended) = (0, None);
        while let Some(f) = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the stream ends within the cap")
        {
            match f {
                Ok(_) => frames += 1,
                Err(e) => {
                    ended = Some(e);
                    break;
                }
            }
        }
        let took = t.elapsed();
        assert!(ended.is_some(), "{proto:?}: ended abnormally, not complete");
        assert!(
            frames >= 2,
            "{proto:?}: the stream flowed ({frames} frames)"
        );
        assert!(
            took >= Duration::from_millis(MAX_MS) && took < Duration::from_millis(MAX_MS + 4_000),
            "{proto:?}: {took:?}"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), async || timeouts(
            &r,
            "max_stream_duration"
        )
        .await
            == 2.0)
        .await,
        "{}",
        metrics_text(&r).await
    );
    assert!(victim(&r).await < Duration::from_secs(5));
    assert_eq!(pod.stats().max_in_flight, 1);
}
