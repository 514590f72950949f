//! The Open Inference Protocol (KServe v2 REST): `/api/v1/{endpoint,service}/<name>/v2/...`
//! reaches the same `/v2/...` path on the chosen deployment's pod, over HTTP/1.1 and HTTP/2,
//! with the endpoint's auth, pinning and slots, and never a path outside `/v2/`.

use crate::support::*;

const INFER: &str = r#"{"id": "r1", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}]}"#;

async fn two_deployments() -> (Router, mock_model::MockHandle, mock_model::MockHandle) {
    let blue = mock("blue-0", 0).await;
    let green = mock("green-0", 0).await;
    // The scoring path is the deployment's; the v2 paths are the client's.
    let r = Router::start(&insecure(&format!(
        "  - name: demo\n    traffic: {{blue: 100, green: 0}}\n    deployments:\n      - {{name: blue, pods: [\"{}\"], scoringPath: /predict/score}}\n      - {{name: green, pods: [\"{}\"]}}",
        blue.addr(),
        green.addr()
    )))
    .await;
    (r, blue, green)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_inference_protocol_paths_reach_the_same_path_on_the_pod() {
    let (r, blue, green) = two_deployments().await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Client::plain(r.http(), proto).await;
        for shape in ["endpoint", "service"] {
            let base = format!("/api/v1/{shape}/demo");
            for path in [
                "/v2/health/live",
                "/v2/health/ready",
                "/v2/models/iris/ready",
                "/v2/models/iris/versions/7/ready",
            ] {
                let a = c.call(req("GET", &format!("{base}{path}"), empty())).await;
                assert_eq!(a.status, 200, "{proto:?} {path}: {a:?}");
                assert!(a.body.is_empty(), "{proto:?} {path}: {a:?}");
                assert_eq!(a.header("azureml-model-deployment"), "blue");
                assert_eq!(a.header("x-request-id").len(), 36);
            }
            let a = c.call(req("GET", &format!("{base}/v2"), empty())).await;
            assert_eq!(a.status, 200);
            assert_eq!(a.json()["name"], "mock-model");
            assert_eq!(a.json()["pod"], "blue-0");

            let a = c
                .call(req(
                    "GET",
                    &format!("{base}/v2/models/iris/versions/7"),
                    empty(),
                ))
                .await;
            assert_eq!(a.status, 200);
            let meta = a.json();
            assert_eq!(meta["name"], "iris");
            assert_eq!(meta["versions"], serde_json::json!(["7"]));

            for (path, version) in [
                ("/v2/models/iris/infer", None),
                ("/v2/models/iris/versions/7/infer", Some("7")),
            ] {
                let a = c.call(post(&format!("{base}{path}"), INFER)).await;
                assert_eq!(a.status, 200, "{proto:?} {path}: {a:?}");
                let j = a.json();
                assert_eq!(j["model_name"], "iris");
                assert_eq!(j["model_version"].as_str(), version);
                assert_eq!(j["id"], "r1");
                assert_eq!(j["parameters"]["pod"], "blue-0");
                assert_eq!(
                    j["outputs"],
                    serde_json::json!([{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}])
                );
            }
        }
        // The pod's own answers pass as they are: its 400 for a bad request, its 404 for a
        // path it does not serve (in the protocol's `{"error": ...}` shape, not the router's).
        let a = c
            .call(post("/api/v1/endpoint/demo/v2/models/iris/infer", "{}"))
            .await;
        assert_eq!(a.status, 400);
        assert!(a.json()["error"].as_str().unwrap().contains("inputs"));
        let a = c
            .call(req(
                "GET",
                "/api/v1/endpoint/demo/v2/repository/index",
                empty(),
            ))
            .await;
        assert_eq!(a.status, 404);
        assert!(a.json()["error"].is_string(), "{a:?}");

        // Pinning picks the deployment, as for scoring.
        let mut q = post("/api/v1/endpoint/demo/v2/models/iris/infer", INFER);
        q.headers_mut()
            .insert("azureml-model-deployment", "green".parse().unwrap());
        let a = c.call(q).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["parameters"]["pod"], "green-0");
        assert_eq!(a.header("azureml-model-deployment"), "green");
    }
    // Inference requests are counted by the pod like scoring ones: 4 (h1) + 4 (h2) + the pinned.
    assert_eq!(blue.stats().served, 8);
    assert_eq!(green.stats().served, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_inference_protocol_paths_pass_the_query_and_never_leave_v2() {
    let pod = mock("p", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: demo\n    deployments: [{{name: d, pods: [\"{}\"]}}]",
        pod.addr()
    )))
    .await;
    let mut c = Client::plain(r.http(), Proto::H1).await;
    // A path that would leave /v2/ on the pod is no route at all: the pod never sees it.
    for p in [
        "/api/v1/endpoint/demo/v2/../stats",
        "/api/v1/endpoint/demo/v2/models/..%2F..%2Fstats",
        "/api/v1/endpoint/demo/v2/%2e%2e/stats",
        "/api/v1/endpoint/demo/v3/models/m/infer",
        "/api/v1/endpoint/demo/stats",
    ] {
        c.call(req("GET", p, empty()))
            .await
            .assert_error(404, "NotFound");
    }
    assert_eq!(pod.stats().served, 0);
    // The query reaches the pod (here: the mock's service time).
    let t = std::time::Instant::now();
    let a = c
        .call(post(
            "/api/v1/endpoint/demo/v2/models/m/infer?latencyMs=300",
            INFER,
        ))
        .await;
    assert_eq!(a.status, 200);
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_inference_protocol_paths_need_the_endpoints_key() {
    let pod = mock("p", 0).await;
    let r = Router::start(&cfg(&keyed("demo", &pod.addr().to_string(), ""))).await;
    let mut c = Client::plain(r.http(), Proto::H1).await;
    for (method, path) in [
        ("GET", "/api/v1/endpoint/demo/v2/health/ready"),
        ("GET", "/api/v1/endpoint/demo/v2/models/m"),
        ("POST", "/api/v1/endpoint/demo/v2/models/m/infer"),
    ] {
        let body = if method == "POST" {
            full(INFER)
        } else {
            empty()
        };
        assert_401(&c.call(req(method, path, body)).await, "Bearer");
        let body = if method == "POST" {
            full(INFER)
        } else {
            empty()
        };
        let q = with_header(req(method, path, body), &format!("Bearer {PRIMARY}"));
        let a = c.call(q).await;
        assert_eq!(a.status, 200, "{path}: {a:?}");
    }
    assert_eq!(pod.stats().served, 1);
}
