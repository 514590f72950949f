//! Issue 15, item 2: gRPC through the router, as real gRPC clients see it (tonic's generated OIP
//! client) and as HTTP/2 frames (hyper): routing by the `azureml-endpoint` metadata key or the
//! authority, auth, trailers, router-made errors as gRPC statuses, `grpc-timeout` as the deadline,
//! and streams in both directions frame by frame.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use mock_model::grpc::{Client as GrpcClient, infer_request, response_param};
use mock_model::oip::ModelInferRequest;
use tonic::Code;

use crate::support::*;
use crate::upstream_h2::h2c_pod;

/// A router with endpoint `oip` (key auth) on one h2c deployment `g` at `pod`, `settings` its
/// request settings.
async fn router(pod: &mock_model::MockHandle, settings: &str) -> Router {
    Router::start(&cfg(&format!(
        "  - name: oip\n    auth: {{mode: key, primaryKey: \"{PRIMARY}\"}}\n    deployments: [{{name: g, protocol: h2c, pods: [\"{}\"], requestSettings: {{{settings}}}}}]\n",
        pod.addr()
    )))
    .await
}

/// A `tonic::Request` for `endpoint` carrying the key.
fn call<T>(msg: T, endpoint: &str) -> tonic::Request<T> {
    let mut q = tonic::Request::new(msg);
    let m = q.metadata_mut();
    m.insert("azureml-endpoint", endpoint.parse().unwrap());
    m.insert(
        "authorization",
        format!("Bearer {PRIMARY}").parse().unwrap(),
    );
    q
}

async fn client(r: &Router) -> GrpcClient {
    mock_model::grpc::connect(r.http()).await.unwrap()
}

fn infer(params: &[(&str, i64)]) -> ModelInferRequest {
    infer_request("m", &[1.0, 2.5], params)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_routed_by_metadata_gets_the_pods_answer() {
    let pod = h2c_pod("g-pod", 0, None).await;
    let r = router(&pod, "").await;
    let mut c = client(&r).await;
    let req = infer(&[]);
    let id = req.id.clone();
    let resp = c.model_infer(call(req, "oip")).await.unwrap();
    let meta = resp.metadata().clone();
    let resp = resp.into_inner();
    assert_eq!(resp.id, id);
    assert_eq!(response_param(&resp, "pod"), Some("g-pod"));
    let out = resp.outputs[0].contents.as_ref().unwrap();
    assert_eq!(out.fp32_contents, vec![1.0, 2.5]);
    // The router's headers are response metadata.
    assert_eq!(meta.get("azureml-model-deployment").unwrap(), "g");
    assert_eq!(meta.get("x-request-id").unwrap().len(), 36);
    // Many calls on one client connection: one pod connection.
    for _ in 0..10 {
        c.model_infer(call(infer(&[]), "oip")).await.unwrap();
    }
    assert_eq!(pod.stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_may_name_its_endpoint_in_the_authority_under_the_host_suffix() {
    let pod = h2c_pod("g-pod", 0, None).await;
    let r = Router::start(&format!(
        "{}grpc: {{hostSuffix: models.example.com}}\n",
        cfg(&format!(
            "  - name: oip\n    auth: {{mode: none}}\n    deployments: [{{name: g, protocol: h2c, pods: [\"{}\"]}}]\n",
            pod.addr()
        ))
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(r.http()).await.unwrap();
    let mut c = mock_model::grpc::client_over(tcp, "http://oip.models.example.com:8080")
        .await
        .unwrap();
    let resp = c.model_infer(infer(&[])).await.unwrap().into_inner();
    assert_eq!(response_param(&resp, "pod"), Some("g-pod"));
    // Metadata still wins over the authority.
    let mut q = tonic::Request::new(infer(&[]));
    q.metadata_mut()
        .insert("azureml-endpoint", "nope".parse().unwrap());
    let e = c.model_infer(q).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_to_http2_deployments_and_pinning_works_as_for_http() {
    let rest = mock("rest", 0).await;
    let (g1, g2) = (h2c_pod("g1", 0, None).await, h2c_pod("g2", 0, None).await);
    let r = Router::start(&insecure(&format!(
        "  - name: oip\n    traffic: {{rest: 50, g1: 50, g2: 0}}\n    deployments:\n    - {{name: rest, pods: [\"{}\"]}}\n    - {{name: g1, protocol: h2c, pods: [\"{}\"]}}\n    - {{name: g2, protocol: h2c, pods: [\"{}\"]}}",
        rest.addr(),
        g1.addr(),
        g2.addr()
    )))
    .await;
    let mut c = client(&r).await;
    // Unpinned: only the HTTP/2 deployments with traffic (g1).
    for _ in 0..20 {
        let resp = c.model_infer(call(infer(&[]), "oip")).await.unwrap();
        assert_eq!(response_param(resp.get_ref(), "pod"), Some("g1"));
    }
    let pinned = |d: &str| {
        let mut q = call(infer(&[]), "oip");
        q.metadata_mut()
            .insert("azureml-model-deployment", d.parse().unwrap());
        q
    };
    let resp = c.model_infer(pinned("g2")).await.unwrap();
    assert_eq!(response_param(resp.get_ref(), "pod"), Some("g2"));
    let e = c.model_infer(pinned("rest")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert!(e.message().contains("h2c or h2"), "{e:?}");
    let e = c.model_infer(pinned("nope")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Scoring over HTTP still reaches the HTTP/1.1 deployment by weight, and g1.
    let a = crate::support::call(r.http(), post("/api/v1/endpoint/oip/score", "{}")).await;
    assert_eq!(a.status, 200);
    assert_eq!(rest.stats().served + g1.stats().served, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_errors_are_grpc_statuses_with_the_request_id() {
    let pod = h2c_pod("g-pod", 1500, None).await;
    let r = router(
        &pod,
        "maxConcurrentRequestsPerInstance: 1, maxQueueLength: 1, maxQueueWaitMs: 600, maxRequestBodyBytes: 2000",
    )
    .await;
    let mut c = client(&r).await;
    let status_of = |e: &tonic::Status| {
        let rid = e.metadata().get("x-request-id").map_or(0, |v| v.len());
        (e.code(), rid)
    };
    // No key: UNAUTHENTICATED.
    let mut q = tonic::Request::new(infer(&[]));
    q.metadata_mut()
        .insert("azureml-endpoint", "oip".parse().unwrap());
    let e = c.model_infer(q).await.unwrap_err();
    assert_eq!(status_of(&e), (Code::Unauthenticated, 36), "{e:?}");
    // A wrong key: the same.
    let mut q = call(infer(&[]), "oip");
    q.metadata_mut()
        .insert("authorization", "Bearer wrong-key-123456".parse().unwrap());
    let e = c.model_infer(q).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // No endpoint named: INVALID_ARGUMENT, saying how to name one.
    let e = c.model_infer(infer(&[])).await.unwrap_err();
    assert_eq!(status_of(&e), (Code::InvalidArgument, 36), "{e:?}");
    assert!(e.message().contains("azureml-endpoint"), "{e:?}");
    // An unknown endpoint: NOT_FOUND.
    let e = c.model_infer(call(infer(&[]), "nope")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Over the body limit (413): RESOURCE_EXHAUSTED.
    let big = infer_request("m", &[0.5; 1000], &[]);
    let e = c.model_infer(call(big, "oip")).await.unwrap_err();
    assert_eq!(status_of(&e), (Code::ResourceExhausted, 36), "{e:?}");
    // One call holds the slot and one waits in the queue (one place): the next is refused at
    // once (queue full: RESOURCE_EXHAUSTED); the waiting one times out there (UNAVAILABLE).
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let holder = tokio::spawn(async move { c1.model_infer(call(infer(&[]), "oip")).await });
    assert!(eventually(Duration::from_secs(5), async || pod.stats().in_flight == 1).await);
    let waiter = tokio::spawn(async move { c2.model_infer(call(infer(&[]), "oip")).await });
    let queued = "infergate_deployment_queued_requests{endpoint=\"oip\",deployment=\"g\"}";
    assert!(
        eventually(Duration::from_secs(5), async || {
            admin_metric(r.admin, queued).await == 1.0
        })
        .await
    );
    let full = c.model_infer(call(infer(&[]), "oip")).await.unwrap_err();
    assert_eq!(status_of(&full), (Code::ResourceExhausted, 36), "{full:?}");
    let timed_out = waiter.await.unwrap().unwrap_err();
    assert_eq!(
        status_of(&timed_out),
        (Code::Unavailable, 36),
        "{timed_out:?}"
    );
    holder.await.unwrap().unwrap();
    // Counted under the HTTP status each stands for (not the 200 they go out as).
    let m = metrics_text(&r).await;
    for status in ["401", "413", "503"] {
        let label = format!("status=\"{status}\"}}");
        assert!(
            m.lines()
                .any(|l| l.starts_with("infergate_requests_total{") && l.contains(&label)),
            "{status}: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_resource_exhausted_as_a_trailers_only_answer() {
    let pod = h2c_pod("g-pod", 1000, None).await;
    let r = router(
        &pod,
        "maxConcurrentRequestsPerInstance: 1, maxQueueLength: 0",
    )
    .await;
    let mut c = client(&r).await;
    let mut c1 = c.clone();
    let holder = tokio::spawn(async move { c1.model_infer(call(infer(&[]), "oip")).await });
    assert!(eventually(Duration::from_secs(5), async || pod.stats().in_flight == 1).await);
    let e = c.model_infer(call(infer(&[]), "oip")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // On the wire: HTTP 200, application/grpc, the status in the only HEADERS frame.
    let mut h2 = Client::plain(r.http(), Proto::H2).await;
    let resp = h2.send(raw_call("oip", &[])).await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "8");
    assert!(!h["grpc-message"].is_empty());
    assert_eq!(h["x-request-id"].len(), 36);
    assert!(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    holder.await.unwrap().unwrap();
}

/// A raw gRPC `ModelInfer` request (HTTP/2 frames, as any gRPC client sends them).
fn raw_call(endpoint: &str, extra: &[(&str, &str)]) -> http::Request<Body> {
    let msg = prost::Message::encode_to_vec(&infer(&[]));
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let mut b = http::Request::builder()
        .method("POST")
        .uri("http://router.test/inference.GRPCInferenceService/ModelInfer")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("azureml-endpoint", endpoint)
        .header("authorization", format!("Bearer {PRIMARY}"));
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(full(framed)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pods_statuses_and_trailers_arrive_intact() {
    let pod = h2c_pod("g-pod", 0, None).await;
    let r = router(&pod, "").await;
    let mut c = client(&r).await;
    // The pod's own error status, message and trailing metadata.
    let e = c
        .model_infer(call(infer(&[("grpc_status", 5)]), "oip"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "requested status");
    assert_eq!(e.metadata().get("mock-trailer").unwrap(), "g-pod");
    // A success: data frames, then trailers with grpc-status 0, exactly as the pod sent them.
    let mut h2 = Client::plain(r.http(), Proto::H2).await;
    let resp = h2.send(raw_call("oip", &[])).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("grpc-status").is_none(),
        "not trailers-only"
    );
    let mut body = resp.into_body();
    let (mut data, mut trailers) = (Vec::new(), None);
    while let Some(f) = body.frame().await {
        let f = f.unwrap();
        match f.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    let msg: mock_model::oip::ModelInferResponse =
        prost::Message::decode(Bytes::copy_from_slice(&data[5..])).unwrap();
    assert_eq!(response_param(&msg, "pod"), Some("g-pod"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_the_calls_deadline() {
    let pod = h2c_pod("g-pod", 0, None).await;
    let r = router(&pod, "").await;
    let mut c = client(&r).await;
    // The pod sees what is left of the call's time, never more than the client gave.
    let mut q = call(infer(&[]), "oip");
    q.set_timeout(Duration::from_secs(10));
    let resp = c.model_infer(q).await.unwrap().into_inner();
    let seen = response_param(&resp, "grpc_timeout").expect("forwarded");
    let seen = infergate_proxy::grpc::parse_timeout(seen.as_bytes()).unwrap();
    assert!(
        seen <= Duration::from_secs(10) && seen > Duration::from_secs(5),
        "{seen:?}"
    );
    // A pod slower than the deadline: the router ends the call with DEADLINE_EXCEEDED, and the
    // pod's stream is reset (its work stops, its slot is free).
    let mut q = call(infer(&[("latency_ms", 5_000)]), "oip");
    q.set_timeout(Duration::from_millis(300));
    let e = c.model_infer(q).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("grpc-timeout"), "the router's: {e:?}");
    assert!(
        eventually(Duration::from_secs(3), async || pod.stats().in_flight == 0).await,
        "the pod's call was cancelled"
    );
    // A stream that outlives its deadline ends with DEADLINE_EXCEEDED after what arrived.
    let mut q = call(infer(&[("latency_ms", 4_000), ("chunks", 8)]), "oip");
    q.set_timeout(Duration::from_millis(1_200));
    let mut s = c
        .model_stream_infer(q.map(|m| futures_util::stream::iter([m])))
        .await
        .unwrap()
        .into_inner();
    let mut got = 0;
    let end = loop {
        match s.message().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("ended without the deadline"),
            Err(e) => break e,
        }
    };
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
    assert!((1..8).contains(&got), "{got} answers before the deadline");
    // A malformed grpc-timeout: INVALID_ARGUMENT.
    let mut h2 = Client::plain(r.http(), Proto::H2).await;
    let resp = h2
        .send(raw_call("oip", &[("grpc-timeout", "1.5S")]))
        .await
        .unwrap();
    assert_eq!(resp.headers()["grpc-status"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_server_and_bidirectional_streams_pass_frame_by_frame() {
    let pod = h2c_pod("g-pod", 0, None).await;
    let r = router(&pod, "").await;
    let mut c = client(&r).await;
    // Bidirectional: each request's answer comes back before the next request is sent, so
    // neither direction is buffered to its end by the router.
    let (tx, rx) = tokio::sync::mpsc::channel::<ModelInferRequest>(1);
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut answers = c
        .model_stream_infer(call(requests, "oip"))
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        let mut m = infer(&[("chunks", 2)]);
        m.id = format!("turn-{i}");
        tx.send(m).await.unwrap();
        for chunk in 0..2 {
            let a = answers.message().await.unwrap().expect("an answer");
            let a = a.infer_response.unwrap();
            assert_eq!(a.id, format!("turn-{i}"), "chunk {chunk}");
        }
    }
    drop(tx);
    assert!(answers.message().await.unwrap().is_none(), "ended cleanly");
    // Client streaming: many requests, then the answers; server streaming: one request, many.
    let many: Vec<ModelInferRequest> = (0..5).map(|_| infer(&[])).collect();
    let mut s = c
        .model_stream_infer(call(futures_util::stream::iter(many), "oip"))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while s.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 5);
    let one = infer(&[("chunks", 6), ("latency_ms", 300)]);
    let mut s = c
        .model_stream_infer(call(futures_util::stream::iter([one]), "oip"))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while s.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_holds_a_slot_for_its_whole_life() {
    let pod = h2c_pod("g-pod", 200, None).await;
    let r = router(
        &pod,
        "maxConcurrentRequestsPerInstance: 2, maxQueueWaitMs: 10000",
    )
    .await;
    let c = client(&r).await;
    // Six unary calls and two streams on one client connection.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.model_infer(call(infer(&[]), "oip")).await.map(|_| 1)
        }));
    }
    for _ in 0..2 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let one = infer(&[("chunks", 3)]);
            let mut s = c
                .model_stream_infer(call(futures_util::stream::iter([one]), "oip"))
                .await?
                .into_inner();
            let mut n = 0;
            while s.message().await?.is_some() {
                n += 1;
            }
            Ok(n)
        }));
    }
    let mut got = 0;
    for t in tasks {
        got += t.await.unwrap().unwrap();
    }
    assert_eq!(got, 6 + 2 * 3);
    let s = pod.stats();
    assert_eq!(s.max_in_flight, 2, "the pod's own high-water mark: {s:?}");
    assert_eq!(s.connections, 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_the_tls_listener_to_an_h2_pod() {
    let pod = crate::upstream_h2::h2_tls_pod("tls-pod").await;
    let dir = tempfile::tempdir().unwrap();
    let r = Router::start(&format!(
        "sslCertPemFile: {cert}\nsslKeyPemFile: {key}\nendpoints:\n  - name: oip\n    auth: {{mode: none}}\n    deployments: [{{name: g, protocol: h2, upstreamTls: {{caPemFile: {ca}, serverName: localhost}}, pods: [\"{pod}\"]}}]\n",
        cert = certs_example("server.pem").display(),
        key = certs_example("server-key.pem").display(),
        ca = certs_example("ca.pem").display(),
        pod = pod.addr(),
    ))
    .await;
    drop(dir);
    let tls = tls_connect(
        r.https.unwrap(),
        tls_client_config(&[certs_example("ca.pem")], &[b"h2"], false),
    )
    .await
    .unwrap();
    let mut c = mock_model::grpc::client_over(tls, "https://localhost")
        .await
        .unwrap();
    let mut q = tonic::Request::new(infer(&[]));
    q.metadata_mut()
        .insert("azureml-endpoint", "oip".parse().unwrap());
    let resp = c.model_infer(q).await.unwrap().into_inner();
    assert_eq!(response_param(&resp, "pod"), Some("tls-pod"));
}
