//! Issue 15, item 1: HTTP/2 to the pods (`protocol: h2c`, and `h2` over TLS). The pod's own
//! counters are the truth: how many connections it accepted, and the most requests it had at
//! once (its high-water mark), against the deployment's slots.

use std::time::Duration;

use futures_util::StreamExt;

use mock_model::{MockConfig, MockHandle, MockProtocol, MockTls};

use crate::support::*;

/// A mock pod speaking only HTTP/2 (h2c) with `latency_ms` of service time and, if given, a limit
/// of streams per connection.
pub async fn h2c_pod(name: &str, latency_ms: u64, max_streams: Option<u32>) -> MockHandle {
    mock_model::spawn_local(MockConfig {
        name: name.into(),
        latency: Duration::from_millis(latency_ms),
        protocol: MockProtocol::H2c,
        h2_max_concurrent_streams: max_streams,
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// A mock pod speaking HTTP/2 over TLS with the example server certificate (`localhost`,
/// `127.0.0.1`, signed by the example CA).
pub async fn h2_tls_pod(name: &str) -> MockHandle {
    let tls = MockTls::from_pem_files(
        &certs_example("server.pem"),
        &certs_example("server-key.pem"),
    )
    .unwrap();
    mock_model::spawn_local(MockConfig {
        name: name.into(),
        protocol: MockProtocol::H2,
        tls: Some(tls),
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// `n` scoring requests at once, each on its own HTTP/1.1 connection; their statuses.
async fn burst(addr: std::net::SocketAddr, path: &str, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            tokio::spawn(async move { call(addr, post(&path, "{}")).await.status.as_u16() })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_streams_share_one_connection_and_each_holds_a_slot() {
    let pod = h2c_pod("p", 300, None).await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, protocol: h2c, pods: [\"{}\"], \
         requestSettings: {{maxConcurrentRequestsPerInstance: 3, maxQueueWaitMs: 10000}}}}]",
        pod.addr()
    )))
    .await;
    let statuses = burst(r.http(), "/api/v1/endpoint/e/score", 9).await;
    assert_eq!(statuses, vec![200; 9]);
    let s = pod.stats();
    assert_eq!(s.served, 9);
    // Every stream held one of the three slots: the pod never had more at once, and had that many.
    assert_eq!(s.max_in_flight, 3, "{s:?}");
    // All of it over one multiplexed connection.
    assert_eq!(s.connections, 1, "{s:?}");
    // The answer came back over HTTP/2 from the pod, as it would over HTTP/1.1.
    let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
    assert_eq!(a.json()["pod"], "p");
    assert_eq!(a.header("azureml-model-deployment"), "d");
    assert_eq!(pod.stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_pods_limit_go_to_a_second_connection() {
    // The pod takes 2 streams per connection; the deployment gives it 4 slots.
    let pod = h2c_pod("p", 300, Some(2)).await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, protocol: h2c, pods: [\"{}\"], \
         requestSettings: {{maxConcurrentRequestsPerInstance: 4, maxQueueWaitMs: 10000}}}}]",
        pod.addr()
    )))
    .await;
    let statuses = burst(r.http(), "/api/v1/endpoint/e/score", 8).await;
    assert_eq!(statuses, vec![200; 8]);
    let s = pod.stats();
    assert_eq!(s.max_in_flight, 4, "{s:?}");
    assert_eq!(s.connections, 2, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_keeps_the_h2_stream_slot_until_the_pod_is_done() {
    let pod = mock_model::spawn_local(MockConfig {
        name: "p".into(),
        latency: Duration::from_millis(600),
        protocol: MockProtocol::H2c,
        work_survives_disconnect: true,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, protocol: h2c, pods: [\"{}\"], \
         requestSettings: {{maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: 10000}}}}]",
        pod.addr()
    )))
    .await;
    // The first client gives up while the pod works; a second arrives at once.
    let addr = r.http();
    let first =
        tokio::spawn(async move { call(addr, post("/api/v1/endpoint/e/score", "{}")).await });
    assert!(
        eventually(Duration::from_secs(5), async || pod.stats().in_flight == 1).await,
        "the pod has the first request"
    );
    first.abort();
    let a = call(addr, post("/api/v1/endpoint/e/score", "{}")).await;
    assert_eq!(a.status, 200);
    // The second waited for the first's slot: the pod never had two at once.
    assert_eq!(pod.stats().max_in_flight, 1, "{:?}", pod.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_to_the_pod_checks_its_certificate_against_the_deployments_ca() {
    let pod = h2_tls_pod("tls").await;
    let ca = certs_example("ca.pem").display().to_string();
    let other_ca = tls_fixture("rsa-pkcs1-cert.pem").display().to_string();
    let dep = |name: &str, tls: &str| {
        format!(
            "{{name: {name}, protocol: h2, upstreamTls: {tls}, pods: [\"{}\"]}}",
            pod.addr()
        )
    };
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    traffic: {{by-ip: 100}}\n    deployments:\n    - {}\n    - {}\n    - {}\n    - {}",
        dep("by-ip", &format!("{{caPemFile: {ca}}}")),
        dep("by-name", &format!("{{caPemFile: {ca}, serverName: localhost}}")),
        dep("wrong-name", &format!("{{caPemFile: {ca}, serverName: other.example}}")),
        dep("wrong-ca", &format!("{{caPemFile: {other_ca}}}")),
    )))
    .await;
    let pinned = |d: &str| {
        let mut q = post("/api/v1/endpoint/e/score", "{}");
        q.headers_mut()
            .insert("azureml-model-deployment", d.parse().unwrap());
        q
    };
    for ok in ["by-ip", "by-name"] {
        let a = call(r.http(), pinned(ok)).await;
        assert_eq!(a.status, 200, "{ok}: {:?}", a.body);
        assert_eq!(a.json()["pod"], "tls");
    }
    for bad in ["wrong-name", "wrong-ca"] {
        call(r.http(), pinned(bad))
            .await
            .assert_error(502, "UpstreamConnectFailed");
    }
    // Two good deployments, one connection each, many requests.
    for _ in 0..5 {
        assert_eq!(call(r.http(), pinned("by-ip")).await.status, 200);
    }
    assert_eq!(pod.stats().served, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_an_h2c_pod_streams_to_h1_and_h2_clients() {
    let pod = h2c_pod("s", 0, None).await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, protocol: h2c, pods: [\"{}\"]}}]",
        pod.addr()
    )))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Client::plain(r.http(), proto).await;
        let a = c
            .call(post(
                "/api/v1/endpoint/e/score?streamChunks=4&latencyMs=200",
                "{}",
            ))
            .await;
        assert_eq!(a.status, 200, "{proto:?}");
        assert_eq!(a.header("content-type"), "application/x-ndjson");
        let lines: Vec<&str> = std::str::from_utf8(&a.body).unwrap().lines().collect();
        assert_eq!(lines.len(), 4, "{proto:?}: {lines:?}");
        // A request body of some size goes up over HTTP/2 too.
        let big = "x".repeat(300_000);
        let a = c.call(post("/api/v1/endpoint/e/score", &big)).await;
        assert_eq!(a.json()["bytesReceived"], 300_000, "{proto:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_idle_timer_follows_an_upload_that_hyper_carries_to_an_h2_pod() {
    // The upload to an HTTP/2 pod moves in the connection's own task; the request's stream timers
    // still learn when it ends, so a pod computing longer than streamIdleTimeoutMs is not cut
    // off (as over HTTP/1.1: only requestTimeoutMs bounds the wait for the head).
    let pod = h2c_pod("p", 900, None).await;
    let r = Router::start(&format!(
        "defaults: {{streamIdleTimeoutMs: 300}}\n{}",
        insecure(&format!(
            "  - name: e\n    deployments: [{{name: d, protocol: h2c, pods: [\"{}\"]}}]",
            pod.addr()
        ))
    ))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Client::plain(r.http(), proto).await;
        let a = c
            .call(post("/api/v1/endpoint/e/score", &"y".repeat(50_000)))
            .await;
        assert_eq!(a.status, 200, "{proto:?}: {:?}", a.body);
        assert_eq!(a.json()["bytesReceived"], 50_000);
    }
    // An upload that stalls is still cut off by the timer, with the same answer.
    let mut c = Client::plain(r.http(), Proto::H2).await;
    let frames = futures_util::stream::iter([Ok::<_, BoxError>(http_body::Frame::data(
        bytes::Bytes::from("{\"a\":"),
    ))])
    .chain(futures_util::stream::pending());
    let q = req(
        "POST",
        "/api/v1/endpoint/e/score",
        http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(frames)),
    );
    let a = tokio::time::timeout(Duration::from_secs(10), c.call(q))
        .await
        .expect("answered");
    a.assert_error(408, "StreamIdleTimeout");
    // The pod's stream was reset: it is not left holding the request.
    assert!(eventually(Duration::from_secs(3), async || pod.stats().in_flight == 0).await);
}
