//! Behaviour 6: every router-made error, each with its status, JSON body and request id.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn one_pod(pod: &str, extra: &str) -> String {
    insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{pod}\"]{extra}}}]"
    ))
}

/// A body of `n` bytes in 16 KiB chunks with no length known up front (sent chunked).
fn chunked(n: usize) -> Body {
    let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
    let frames = (0..n.div_ceil(chunk.len())).map(move |i| {
        let len = (n - i * chunk.len()).min(chunk.len());
        Ok::<_, BoxError>(Frame::data(chunk.slice(..len)))
    });
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_over_the_limit_is_413_known_length_before_the_pod() {
    let pod = mock("p", 0).await;
    let r = Router::start(&one_pod(
        &pod.addr().to_string(),
        ", requestSettings: {maxRequestBodyBytes: 1024}",
    ))
    .await;
    let a = call(
        r.http(),
        post("/api/v1/endpoint/e/score", &"x".repeat(2048)),
    )
    .await;
    a.assert_error(413, "PayloadTooLarge");
    assert_eq!(pod.stats().served, 0, "the pod was never contacted");
    // at the limit is fine
    let a = call(
        r.http(),
        post("/api/v1/endpoint/e/score", &"x".repeat(1024)),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["bytesReceived"], 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_payload_over_the_limit_is_413_and_the_upstream_request_aborted() {
    let pod = mock("p", 0).await;
    let r = Router::start(&one_pod(
        &pod.addr().to_string(),
        ", requestSettings: {maxRequestBodyBytes: 100000}",
    ))
    .await;
    // HTTP/2: an answer sent before the upload ends is clean there (over HTTP/1.1 the client may
    // see the connection close while it is still writing, before it reads the 413).
    let mut c = Client::plain(r.http(), Proto::H2).await;
    let a = c
        .call(req("POST", "/api/v1/endpoint/e/score", chunked(1_000_000)))
        .await;
    a.assert_error(413, "PayloadTooLarge");
    assert_eq!(
        pod.stats().served,
        0,
        "the pod never answered the aborted upload"
    );
    // a chunked body under the limit goes through
    let mut c = Client::plain(r.http(), Proto::H1).await;
    let a = c
        .call(req("POST", "/api/v1/endpoint/e/score", chunked(50_000)))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["bytesReceived"], 50_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_502() {
    let dead = format!("127.0.0.1:{}", free_port());
    let r = Router::start(&one_pod(&dead, "")).await;
    call(r.http(), post("/api/v1/endpoint/e/score", "{}"))
        .await
        .assert_error(502, "UpstreamConnectFailed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connection_is_502() {
    let pod = mock("p", 0).await;
    let r = Router::start(&one_pod(&pod.addr().to_string(), ", scoringPath: /reset")).await;
    call(r.http(), post("/api/v1/endpoint/e/score", "{}"))
        .await
        .assert_error(502, "UpstreamFailed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_response_is_502() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await;
            });
        }
    });
    let r = Router::start(&one_pod(&addr.to_string(), "")).await;
    call(r.http(), post("/api/v1/endpoint/e/score", "{}"))
        .await
        .assert_error(502, "UpstreamFailed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_head_in_time_is_504() {
    let pod = mock("slow", 3000).await;
    let r = Router::start(&one_pod(
        &pod.addr().to_string(),
        ", requestSettings: {requestTimeoutMs: 200}",
    ))
    .await;
    let t0 = Instant::now();
    let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
    a.assert_error(504, "UpstreamTimeout");
    assert!(t0.elapsed() >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_wait_over_the_limit_is_503_with_retry_after() {
    let pod = mock("busy", 1500).await;
    let r = Router::start(&one_pod(
        &pod.addr().to_string(),
        ", requestSettings: {maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 200}",
    ))
    .await;
    let addr = r.http();
    let first =
        tokio::spawn(async move { call(addr, post("/api/v1/endpoint/e/score", "{}")).await });
    assert!(eventually(Duration::from_secs(5), async || pod.stats().in_flight == 1).await);
    let t0 = Instant::now();
    let a = call(addr, post("/api/v1/endpoint/e/score", "{}")).await;
    a.assert_error(503, "QueueTimeout");
    assert_eq!(a.header("retry-after"), "1");
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "waited the queue time first"
    );
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(
        pod.stats().max_in_flight,
        1,
        "never more than one request on the pod"
    );
    // Counted by reason, apart from the other 503s (what the queue-timeout alert reads).
    let text = metrics_text(&r).await;
    let rejected = |reason: &str| {
        metric(
            &text,
            &format!(
                "infergate_admission_rejections_total{{endpoint=\"e\",deployment=\"d\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(rejected("queue_timeout"), 1.0, "{text}");
    assert_eq!(rejected("queue_full") + rejected("no_pods"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_without_pods_is_503() {
    let r = Router::start(&insecure(
        "  - name: e\n    deployments: [{name: d, pods: []}]",
    ))
    .await;
    call(r.http(), post("/api/v1/endpoint/e/score", "{}"))
        .await
        .assert_error(503, "NoPodAvailable");
    let text = metrics_text(&r).await;
    assert_eq!(
        metric(
            &text,
            "infergate_admission_rejections_total{endpoint=\"e\",deployment=\"d\",reason=\"no_pods\"}"
        ),
        1.0,
        "{text}"
    );
    // The series exists at 0 (not absent): what the no-ready-pods alert matches.
    assert!(
        text.lines()
            .any(|l| l == "infergate_deployment_pods{endpoint=\"e\",deployment=\"d\"} 0"),
        "{text}"
    );
}
