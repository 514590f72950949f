//! The stream timers on the pod's side, and streams they must leave alone: a pod that stalls
//! mid-answer or stops reading the upload loses the exchange after `streamIdleTimeoutMs` (the
//! client's stream ends abnormally, or a 504 when no head went out), its slot is freed at once
//! rather than at `requestTimeoutMs`; a long stream with gaps under the idle timer runs whole,
//! past `requestTimeoutMs` (which bounds only the wait for the response head). The client's side
//! (a client that stops reading or sending) is in `slow_clients.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use mock_model::MockHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const SCORE: &str = "/api/v1/endpoint/e/score";
const IDLE_MS: u64 = 1_000;

/// Endpoint `e`, deployment `d` on `pod` with one slot, a 1 s idle timer and a request timeout
/// of 30 s: a slot kept until the request's deadline would keep the next client out for 30 s.
async fn router(pod: SocketAddr, extra: &str) -> Router {
    Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{pod}\"], requestSettings: {{maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 30000, requestTimeoutMs: 30000, streamIdleTimeoutMs: {IDLE_MS}{extra}}}}}]"
    )))
    .await
}

fn sample(text: &str, name: &str) -> f64 {
    metric(text, &format!("{name}{{endpoint=\"e\",deployment=\"d\""))
}

async fn idle_timeouts(r: &Router) -> f64 {
    metric(
        &metrics_text(r).await,
        "infergate_stream_timeouts_total{endpoint=\"e\",deployment=\"d\",timer=\"stream_idle_timeout\"}",
    )
}

/// The next client's request: served, and how long it waited for the slot.
async fn next_client(r: &Router) -> Duration {
    let t = Instant::now();
    let a = call(r.http(), post(SCORE, "{}")).await;
    assert_eq!(a.status, 200, "{a:?}");
    t.elapsed()
}

async fn pod_lets_go(pod: &MockHandle) {
    assert!(
        eventually(Duration::from_secs(5), async || pod.stats().in_flight == 0).await,
        "the router closed the stalled pod's connection: {:?}",
        pod.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_that_stalls_mid_answer_ends_the_stream_and_frees_the_slot_at_once() {
    let pod = mock("stalls", 0).await;
    let r = router(pod.addr(), "").await;
    // 10 chunks over 1 s, but the pod stops after 2 and keeps its connection open.
    let path = format!("{SCORE}?streamChunks=10&latencyMs=1000&stallAfterChunks=2");

    // HTTP/1.1: what the client reads is the head and two chunks, then the connection closes
    // without the terminating chunk.
    let mut s = TcpStream::connect(r.http()).await.unwrap();
    let q = format!(
        "POST {path} HTTP/1.1\r\nhost: router.test\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    let t = Instant::now();
    s.write_all(q.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut got)).await;
    let took = t.elapsed();
    assert!(read.is_ok(), "the router closed the connection");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(
        text.contains("\"chunk\":1") && !text.contains("\"chunk\":2"),
        "{text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "no terminating chunk: {text:?}"
    );
    assert!(
        took >= Duration::from_millis(IDLE_MS) && took < Duration::from_millis(IDLE_MS + 4_000),
        "cut by the idle timer: {took:?}"
    );
    pod_lets_go(&pod).await;
    assert!(next_client(&r).await < Duration::from_secs(5));

    // HTTP/2: the stream is reset (RST_STREAM), the connection lives on.
    let mut c = Client::plain(r.http(), Proto::H2).await;
    let resp = c.send(post(&path, "{}")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut frames, mut ended) = (0, None);
    while let Some(f) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the stream ends")
    {
        match f {
            Ok(_) => frames += 1,
            Err(e) => {
                ended = Some(e);
                break;
            }
        }
    }
    assert!(ended.is_some(), "ended abnormally, not complete");
    assert!(frames >= 1, "{frames} frames");
    let a = c.call(post(SCORE, "{}")).await;
    assert_eq!(
        a.status, 200,
        "the same HTTP/2 connection serves the next request"
    );
    pod_lets_go(&pod).await;

    let m = metrics_text(&r).await;
    assert_eq!(idle_timeouts(&r).await, 2.0, "{m}");
    assert_eq!(pod.stats().max_in_flight, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_that_stops_reading_the_upload_gets_the_client_a_504() {
    let pod = mock("noread", 0).await;
    let r = router(pod.addr(), "").await;
    let path = format!("{SCORE}?stallReadAfterBytes=1");
    // More than every buffer between the client and the pod holds, sent as fast as it goes.
    let chunk = Bytes::from(vec![b'x'; 64 << 10]);
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Client::plain(r.http(), proto).await;
        let frames = futures_util::stream::repeat(chunk.clone())
            .take(4096)
            .map(|b| Ok::<_, BoxError>(Frame::data(b)));
        let q = req("POST", &path, BodyExt::boxed(StreamBody::new(frames)));
        let t = Instant::now();
        let a = tokio::time::timeout(Duration::from_secs(15), c.call(q))
            .await
            .expect("answered");
        a.assert_error(504, "StreamIdleTimeout");
        assert!(
            a.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not reading"),
            "{a:?}"
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(IDLE_MS) && took < Duration::from_millis(IDLE_MS + 4_000),
            "{proto:?}: {took:?}"
        );
        // The slot is free at once (the pod's connection was closed). The mock itself never
        // notices: it reads nothing more from that connection, as a stalled pod would.
        assert!(next_client(&r).await < Duration::from_secs(5), "{proto:?}");
    }
    let m = metrics_text(&r).await;
    assert_eq!(idle_timeouts(&r).await, 2.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "infergate_requests_total{endpoint=\"e\",deployment=\"d\",status=\"504\"}"
        ),
        2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pod_counts_against_its_health() {
    // A stall is a failure of the pod (`ejectAfterConsecutiveFailures: 1`: ejected at once), the
    // answer's head having counted as a success; the next requests go to the other pod.
    // The bad pod stalls after one chunk of every streamed answer (`--stall-after-chunks 1`).
    let bad = mock_model::spawn_local(mock_model::MockConfig {
        name: "bad".into(),
        stall_after_chunks: Some(1),
        ..mock_model::MockConfig::default()
    })
    .await
    .unwrap();
    let good = mock("good", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{}\", \"{}\"], requestSettings: {{ejectAfterConsecutiveFailures: 1, ejectionBaseMs: 60000, requestTimeoutMs: 30000, streamIdleTimeoutMs: {IDLE_MS}}}}}]",
        bad.addr(),
        good.addr()
    )))
    .await;
    let path = format!("{SCORE}?streamChunks=4&latencyMs=400");
    let mut stalls = 0;
    for _ in 0..40 {
        let mut c = Client::plain(r.http(), Proto::H2).await;
        let resp = c.send(post(&path, "{}")).await.unwrap();
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("ends");
        if body.is_err() {
            stalls += 1;
        }
        if stalls == 1 {
            break;
        }
    }
    assert_eq!(stalls, 1, "the bad pod was picked");
    assert_eq!(bad.stats().served, 1);
    assert!(
        eventually(Duration::from_secs(5), async || sample(
            &metrics_text(&r).await,
            "infergate_pod_ejections_total"
        ) == 1.0)
        .await,
        "{}",
        metrics_text(&r).await
    );
    for _ in 0..10 {
        let a = call(r.http(), post(SCORE, "{}")).await;
        assert_eq!(a.json()["pod"], "good");
    }
    assert_eq!(bad.stats().served, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_with_gaps_under_the_idle_timer_is_never_cut() {
    // A chunk every 600 ms (under the 1 s idle timer) for 4.2 s: over four idle periods, and
    // over the request timeout of 1 s, which bounds only the wait for the head.
    let pod = mock("long", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"], requestSettings: {{requestTimeoutMs: 1000, streamIdleTimeoutMs: {IDLE_MS}, maxStreamDurationMs: 30000}}}}]",
        pod.addr()
    )))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Client::plain(r.http(), proto).await;
        let mut q = post(&format!("{SCORE}?streamChunks=8&latencyMs=4800"), "{}");
        q.headers_mut()
            .insert("accept", "text/event-stream".parse().unwrap());
        let t = Instant::now();
        let a = Answer::collect(c.send(q).await.unwrap()).await;
        assert_eq!(a.status, 200);
        let events = String::from_utf8_lossy(&a.body).matches("data: ").count();
        assert_eq!(events, 8, "{proto:?}: every event arrived");
        assert!(t.elapsed() >= Duration::from_millis(4_200), "{proto:?}");
    }
    assert_eq!(idle_timeouts(&r).await, 0.0);
}
