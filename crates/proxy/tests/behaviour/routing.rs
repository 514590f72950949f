//! Behaviour 3: URL shapes, deployment pinning, weights, 404s, query strings.

use crate::support::*;

async fn two_deployments(
    traffic: &str,
) -> (Router, mock_model::MockHandle, mock_model::MockHandle) {
    let blue = mock("blue-0", 0).await;
    let green = mock("green-0", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: demo\n    traffic: {traffic}\n    deployments:\n      - {{name: blue, pods: [\"{}\"]}}\n      - {{name: green, pods: [\"{}\"]}}",
        blue.addr(),
        green.addr()
    )))
    .await;
    (r, blue, green)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_url_shapes_reach_scoring_and_swagger() {
    let (r, _b, _g) = two_deployments("{blue: 100, green: 0}").await;
    let mut c = Client::plain(r.http(), Proto::H1).await;
    for shape in ["service", "endpoint"] {
        let a = c
            .call(post(
                &format!("/api/v1/{shape}/demo/score"),
                "{\"data\": [1]}",
            ))
            .await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["pod"], "blue-0");
        assert_eq!(a.header("azureml-model-deployment"), "blue");
        let a = c
            .call(req(
                "GET",
                &format!("/api/v1/{shape}/demo/swagger.json"),
                empty(),
            ))
            .await;
        assert_eq!(a.status, 200);
        let j = a.json();
        assert_eq!(j["openapi"], "3.0.1");
        assert!(j["info"]["title"].as_str().unwrap().contains("blue-0"));
    }
    let a = c
        .call(post("/api/v1/endpoint/demo/swagger.json", "{}"))
        .await;
    a.assert_error(405, "MethodNotAllowed");
    assert_eq!(a.header("allow"), "GET, HEAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_pins_a_deployment_and_unknown_one_is_404() {
    let (r, _b, _g) = two_deployments("{blue: 100, green: 0}").await;
    let mut c = Client::plain(r.http(), Proto::H1).await;
    for _ in 0..5 {
        let mut q = post("/api/v1/endpoint/demo/score", "{}");
        q.headers_mut()
            .insert("azureml-model-deployment", "green".parse().unwrap());
        let a = c.call(q).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["pod"], "green-0");
        assert_eq!(a.header("azureml-model-deployment"), "green");
    }
    let mut q = post("/api/v1/endpoint/demo/score", "{}");
    q.headers_mut()
        .insert("azureml-model-deployment", "purple".parse().unwrap());
    c.call(q).await.assert_error(404, "DeploymentNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_unpinned_traffic() {
    let (r, blue, green) = two_deployments("{blue: 80, green: 20}").await;
    let mut c = Client::plain(r.http(), Proto::H2).await;
    let n = 400;
    for _ in 0..n {
        assert_eq!(
            c.call(post("/api/v1/endpoint/demo/score", "{}"))
                .await
                .status,
            200
        );
    }
    let (b, g) = (blue.stats().served, green.stats().served);
    assert_eq!(b + g, n);
    // 20% of 400 = 80; binomial sd = 8: allow a wide band
    assert!((40..=130).contains(&g), "green served {g} of {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_zero_weights_serve_only_pinned_requests() {
    let (r, _b, _g) = two_deployments("{blue: 0, green: 0}").await;
    call(r.http(), post("/api/v1/endpoint/demo/score", "{}"))
        .await
        .assert_error(404, "NoTrafficAllocated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoints_and_traversal_never_reach_a_pod() {
    let target = mock("target", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: demo\n    deployments: [{{name: d, pods: [\"{a}\"]}}]\n  - name: other\n    deployments: [{{name: d, pods: [\"{a}\"]}}]",
        a = target.addr()
    )))
    .await;
    let cases = [
        ("/api/v1/endpoint/nope/score", "EndpointNotFound"),
        ("/api/v1/endpoint/Demo/score", "EndpointNotFound"),
        ("/api/v1/endpoint/%2e%2e/score", "EndpointNotFound"),
        ("/api/v1/endpoint/..%2Fother/score", "EndpointNotFound"),
        ("/api/v1/endpoint/demo%2Fscore/score", "EndpointNotFound"),
        ("/api/v1/endpoint/demo/../other/score", "NotFound"),
        ("/api/v1/endpoint/demo/score/", "NotFound"),
        ("/api/v1/endpoint/demo/score/../../other/score", "NotFound"),
        (
            "/api/v1/endpoint/demo%2F..%2Fother/score",
            "EndpointNotFound",
        ),
        ("/score", "NotFound"),
        ("/", "NotFound"),
    ];
    let mut c = Client::plain(r.http(), Proto::H1).await;
    for (path, code) in cases {
        let a = c.call(post(path, "{}")).await;
        a.assert_error(404, code);
    }
    assert_eq!(target.stats().served, 0, "no malformed path reached a pod");
    // percent-encoded letters of a real name still match exactly
    assert_eq!(
        c.call(post("/api/v1/endpoint/%64emo/score", "{}"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_pass_through_to_the_scoring_path() {
    let pod = mock("p", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: e\n    deployments: [{{name: d, pods: [\"{}\"], scoringPath: /echo/v2/predict}}]",
        pod.addr()
    )))
    .await;
    let a = call(
        r.http(),
        post("/api/v1/endpoint/e/score?verbose=true&x=a%20b", "{}"),
    )
    .await;
    assert_eq!(a.status, 200);
    let j = a.json();
    assert_eq!(j["path"], "/echo/v2/predict");
    assert_eq!(j["query"], "verbose=true&x=a%20b");
    assert_eq!(j["method"], "POST");
}
