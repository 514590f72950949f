//! Behaviours 4 and 5: header rewriting, request ids, pooled upstream connections.

use crate::support::*;

async fn echo_router() -> (Router, mock_model::MockHandle) {
    let pod = mock("p", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"], scoringPath: /echo}}]",
        pod.addr()
    )))
    .await;
    (r, pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_hop_by_hop_and_request_ids() {
    let (r, _pod) = echo_router().await;
    let mut q = post("/api/v1/endpoint/e/score", "{}");
    let h = q.headers_mut();
    h.insert("connection", "x-secret-hop".parse().unwrap());
    h.insert("x-secret-hop", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("proxy-authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
    h.insert("x-request-id", "client-chose-this".parse().unwrap());
    h.insert("x-ms-client-request-id", "my-trace_01".parse().unwrap());
    h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    h.insert("x-custom", "kept".parse().unwrap());
    let a = call(r.http(), q).await;
    assert_eq!(a.status, 200);
    let j = a.json();
    let up = &j["headers"];
    for gone in [
        "connection",
        "x-secret-hop",
        "keep-alive",
        "proxy-authorization",
    ] {
        assert!(up.get(gone).is_none(), "{gone} reached the pod: {up}");
    }
    assert_eq!(up["x-custom"], "kept");
    let rid = a.header("x-request-id");
    assert_eq!(rid.len(), 36);
    assert_ne!(rid, "client-chose-this");
    assert_eq!(up["x-request-id"], rid, "the pod sees the router's id");
    assert_eq!(up["x-ms-client-request-id"], "my-trace_01");
    assert_eq!(a.header("x-ms-client-request-id"), "my-trace_01");
    // xffTrustedHops 0 (the default): the client's own X-Forwarded-For is replaced.
    assert_eq!(up["x-forwarded-for"], "127.0.0.1");
    assert_eq!(up["x-forwarded-proto"], "http");
    assert_eq!(up["x-forwarded-host"], "router.test");
    assert_eq!(a.header("azureml-model-deployment"), "d");

    // a second request gets a different id
    let b = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
    assert_ne!(b.header("x-request-id"), rid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_client_request_id_is_dropped() {
    let (r, _pod) = echo_router().await;
    for bad in ["has space", "semi;colon", &"x".repeat(41)] {
        let mut q = post("/api/v1/endpoint/e/score", "{}");
        q.headers_mut()
            .insert("x-ms-client-request-id", bad.parse().unwrap());
        let a = call(r.http(), q).await;
        assert!(
            a.json()["headers"].get("x-ms-client-request-id").is_none(),
            "{bad}"
        );
        assert_eq!(a.header("x-ms-client-request-id"), "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_and_kept_alive() {
    let (r, _pod) = echo_router().await;
    let mut peers = std::collections::HashSet::new();
    for _ in 0..10 {
        // a new client connection each time: the upstream side must still be reused
        let a = call(r.http(), post("/api/v1/endpoint/e/score", "{}")).await;
        peers.insert(a.json()["peer"].as_str().unwrap().to_string());
    }
    assert_eq!(
        peers.len(),
        1,
        "sequential requests reuse one upstream connection: {peers:?}"
    );
}
