//! Behaviour 4: bodies stream both ways, chunk by chunk.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::support::*;

async fn router_for(pod: &mock_model::MockHandle) -> Router {
    Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"]}}]",
        pod.addr()
    )))
    .await
}

/// Reads frames until the end; returns (time of first data, time of last data, number of data frames, bytes).
async fn frame_times(
    resp: http::Response<hyper::body::Incoming>,
    t0: Instant,
) -> (Duration, Duration, usize, usize) {
    let mut body = resp.into_body();
    let (mut first, mut last, mut n, mut bytes) = (None, Duration::ZERO, 0, 0);
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            if d.is_empty() {
                continue;
            }
            let t = t0.elapsed();
            first.get_or_insert(t);
            last = t;
            n += 1;
            bytes += d.len();
        }
    }
    (first.unwrap(), last, n, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_reaches_the_client_chunk_by_chunk() {
    let pod = mock("s", 0).await;
    let r = router_for(&pod).await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Client::plain(r.http(), proto).await;
        let t0 = Instant::now();
        let resp = c
            .send(post(
                "/api/v1/endpoint/e/score?streamChunks=5&latencyMs=1500",
                "{}",
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        let (first, last, n, _) = frame_times(resp, t0).await;
        assert!(n >= 2, "{proto:?}: {n} frames");
        // chunk 0 leaves the pod at once, the last one after 1.2 s
        assert!(
            first * 2 < last,
            "{proto:?}: first chunk at {first:?}, last at {last:?}"
        );
        assert!(last >= Duration::from_millis(1000), "{proto:?}: {last:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_through() {
    let pod = mock("s", 0).await;
    let r = router_for(&pod).await;
    let mut q = post(
        "/api/v1/endpoint/e/score?streamChunks=4&latencyMs=800",
        "{}",
    );
    q.headers_mut()
        .insert("accept", "text/event-stream".parse().unwrap());
    let t0 = Instant::now();
    let resp = Client::plain(r.http(), Proto::H1)
        .await
        .send(q)
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (first, last, n, _) = frame_times(resp, t0).await;
    assert!(
        n >= 2 && first * 2 < last,
        "{n} frames, first {first:?}, last {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_stream_gives_the_pod_slot_back_by_the_request_timeout() {
    let pod = mock("s", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"], requestSettings: {{maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 3000, requestTimeoutMs: 400}}}}]",
        pod.addr()
    )))
    .await;
    for _ in 0..3 {
        let mut c = Client::plain(r.http(), Proto::H1).await;
        let resp = c
            .send(post(
                "/api/v1/endpoint/e/score?streamChunks=10&latencyMs=5000",
                "{}",
            ))
            .await
            .unwrap();
        let mut body = resp.into_body();
        let _ = body.frame().await; // first chunk arrives, then the client goes away
        drop(body);
        drop(c);
    }
    // Each abandoned stream kept its slot only until its request timeout (the pod may still be
    // sending until then). Had the slot leaked, this request would wait out the 3 s queue limit
    // behind a 5 s stream and get 503.
    let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
    assert_eq!(a.status, 200);
}
