//! Behaviours 7 and 9 (in process): health, readiness, metrics, graceful drain.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let pod = mock("p", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: metrics-ep\n    deployments: [{{name: d, pods: [\"{}\"]}}]",
        pod.addr()
    )))
    .await;
    assert_eq!(admin_get(r.admin, "/healthz").await.status, 200);
    assert_eq!(admin_get(r.admin, "/readyz").await.status, 200);
    for _ in 0..3 {
        assert_eq!(
            call(r.http(), post("/api/v1/endpoint/metrics-ep/score", "{}"))
                .await
                .status,
            200
        );
    }
    let m = admin_get(r.admin, "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").starts_with("text/plain"));
    let t = String::from_utf8_lossy(&m.body);
    assert_eq!(
        metric(
            &t,
            "infergate_requests_total{endpoint=\"metrics-ep\",deployment=\"d\",status=\"200\"}"
        ),
        3.0,
        "{t}"
    );
    for name in [
        "infergate_request_duration_seconds_bucket{endpoint=\"metrics-ep\",deployment=\"d\",le=\"0.005\"}",
        "infergate_upstream_duration_seconds_count{endpoint=\"metrics-ep\",deployment=\"d\"}",
        "infergate_requests_in_flight",
        "# TYPE infergate_request_duration_seconds histogram",
    ] {
        assert!(t.contains(name), "{name} missing in\n{t}");
    }
    // The phases: the first request opened the connection to the pod, the next two reused it;
    // every answer streamed.
    let l = "endpoint=\"metrics-ep\",deployment=\"d\"";
    let count = |name: &str| metric(&t, &format!("{name}_count{{{l}"));
    assert_eq!(
        metric(
            &t,
            &format!("infergate_upstream_connect_seconds_count{{{l},pooled=\"false\"}}")
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            &format!("infergate_upstream_connect_seconds_count{{{l},pooled=\"true\"}}")
        ),
        2.0,
        "{t}"
    );
    for name in [
        "infergate_queue_wait_seconds",
        "infergate_upstream_duration_seconds",
        "infergate_response_stream_seconds",
        "infergate_request_duration_seconds",
    ] {
        assert_eq!(count(name), 3.0, "{name} in\n{t}");
    }
    assert_eq!(admin_get(r.admin, "/nope").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_turns_readiness_false_and_finishes_in_flight_requests() {
    let pod = mock("slow", 1200).await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"]}}]",
        pod.addr()
    )))
    .await;
    let (http, admin) = (r.http(), r.admin);
    let inflight =
        tokio::spawn(async move { call(http, post("/api/v1/endpoint/e/score", "{}")).await });
    assert!(eventually(Duration::from_secs(5), async || pod.stats().in_flight == 1).await);
    let stopping = tokio::spawn(r.stop());
    assert!(
        eventually(Duration::from_secs(5), async || admin_get(admin, "/readyz")
            .await
            .status
            == 503)
        .await,
        "readiness turns false while draining"
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            tokio::net::TcpStream::connect(http).await.is_err()
        })
        .await,
        "the listener stops accepting"
    );
    let a = inflight.await.unwrap();
    assert_eq!(a.status, 200, "the in-flight request finished");
    stopping.await.unwrap();
}

/// A replica whose peer list stops following the Service (the peer watch task ended) can no
/// longer take part in the cluster reliably: `/readyz` turns 503 (traffic goes to the other
/// replicas) instead of the replica serving on with a member list frozen in the past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_peer_watch_dies_turns_unready() {
    let pod = mock("p", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-long-enough-peer-secret").unwrap();
    let yaml = format!(
        "cluster:\n  listen: 127.0.0.1:0\n  advertise: 127.0.0.1:1\n  kube: {{service: infergate-peers}}\n  secretFile: {}\n{}",
        secret.display(),
        insecure(&format!(
            "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"]}}]",
            pod.addr()
        ))
    );
    let mut cfg = infergate_config::Config::from_yaml(&yaml, "<test>").expect("test config parses");
    cfg.listen.http = "127.0.0.1:0".into();
    cfg.listen.admin = "127.0.0.1:0".into();
    let (peers_tx, peers_rx) = tokio::sync::watch::channel(Vec::new());
    let server = infergate_proxy::Server::bind_with_peers(&cfg, Some(peers_rx))
        .await
        .expect("router starts");
    let (http, admin) = (server.http_addr().unwrap(), server.admin_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    assert_eq!(admin_get(admin, "/readyz").await.status, 200);
    assert_eq!(
        call(http, post("/api/v1/endpoint/e/score", "{}"))
            .await
            .status,
        200
    );

    drop(peers_tx);
    assert!(
        eventually(Duration::from_secs(5), async || admin_get(admin, "/readyz")
            .await
            .status
            == 503)
        .await,
        "readiness turns false once the peer list no longer follows the Service"
    );
    let _ = stop_tx.send(());
    let _ = task.await;
}
