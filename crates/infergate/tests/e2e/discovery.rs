//! The real binary with Kubernetes discovery: KUBECONFIG pointing at the fake API server.

use std::time::Duration;

use infergate_testkit::FakeApiServer;
use serde_json::json;

use crate::runner::*;
use crate::support::*;

fn kube_config(dir: &std::path::Path, extra: &str) -> String {
    write_file(
        dir,
        "infergate.yaml",
        &format!(
            "allowInsecureConnections: true\n\
             listen: {{https: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\n\
             discovery: {{kube: {{namespaces: [ml]}}}}\n{extra}"
        ),
    )
}

#[test]
fn crd_prints_the_committed_crd() {
    let (code, out, err) = run_to_exit(&["crd"]);
    assert_eq!(code, Some(0), "{err}");
    let committed = std::fs::read_to_string(
        repo_root().join("deploy/crds/inferenceendpoints.infergate.io.yaml"),
    )
    .unwrap();
    assert_eq!(out, committed);
}

#[test]
fn static_endpoints_and_kube_discovery_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = kube_config(
        dir.path(),
        "endpoints:\n  - name: e\n    deployments: [{name: d, pods: [\"127.0.0.1:1\"]}]\n",
    );
    let (code, _, err) = run_to_exit(&["serve", "--config", &f]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("endpoints, discovery.kube") && err.contains("fix:"),
        "{err}"
    );
}

#[test]
fn no_kubernetes_client_configuration_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let f = kube_config(dir.path(), "");
    let missing = dir.path().join("no-such-kubeconfig");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["serve", "--config", &f])
        .env("KUBECONFIG", &missing)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot build a Kubernetes client") && err.contains("KUBECONFIG"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_routes_inference_endpoints_from_the_api_server() {
    let api = FakeApiServer::start().await;
    let pod = mock("kube-pod", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_file(dir.path(), "kubeconfig", &api.kubeconfig());
    let f = kube_config(dir.path(), "");
    let mut b = Bin::spawn_env(&["serve", "--config", &f], &[("KUBECONFIG", &kubeconfig)]);
    let http = b.listening("http");
    let admin = b.listening("admin");
    b.wait_line(|l| l.contains("discovery: first full sync"));
    assert_eq!(admin_get(admin, "/readyz").await.status, 200);

    api.apply(json!({
        "apiVersion": "infergate.io/v1",
        "kind": "InferenceEndpoint",
        "metadata": {"name": "iris", "namespace": "ml"},
        "spec": {"deployments": [{"name": "blue", "serviceName": "iris-blue", "port": "http"}],
                 "auth": {"mode": "none"}},
    }));
    api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "iris-blue-x", "namespace": "ml",
                     "labels": {"kubernetes.io/service-name": "iris-blue"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": pod.addr().port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": "iris-blue-7d9f-abcde", "namespace": "ml"}}],
    }));
    assert!(
        eventually(Duration::from_secs(10), async || {
            call(http, post("/api/v1/endpoint/iris/score", "{}"))
                .await
                .status
                == 200
        })
        .await
    );
    // The access log names the pod by its targetRef.
    let line = b.wait_line(|l| l.contains("infergate::access") && l.contains("\"status\":200"));
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["pod_name"], "iris-blue-7d9f-abcde", "{line}");

    // A malformed object is skipped with a log line naming it and the reason.
    api.apply(json!({
        "apiVersion": "infergate.io/v1",
        "kind": "InferenceEndpoint",
        "metadata": {"name": "broken", "namespace": "ml"},
        "spec": {"traffic": {"blue": 70}, "deployments": [{"name": "blue", "serviceName": "iris-blue"}]},
    }));
    let line = b.wait_line(|l| l.contains("InferenceEndpoint ml/broken"));
    assert!(
        line.contains("spec.traffic") && line.contains("weights sum to 70"),
        "{line}"
    );
    // The status is written through the API.
    assert!(
        eventually(Duration::from_secs(10), async || {
            api.get("InferenceEndpoint", "ml", "iris")
                .is_some_and(|o| o["status"]["deployments"][0]["readyPods"] == 1)
        })
        .await
    );
    let m = admin_get(admin, "/metrics").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.contains("infergate_discovery_synced 1"), "{text}");
    b.signal("TERM");
    let status = tokio::task::spawn_blocking(move || b.wait_exit())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A Secret with these entries (base64 in `data`, as the API server holds them).
fn secret(name: &str, entries: &[(&str, &str)]) -> serde_json::Value {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let mut s = Secret::default();
    s.metadata.namespace = Some("ml".into());
    s.metadata.name = Some(name.into());
    s.data = Some(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    serde_json::to_value(s).unwrap()
}

fn bearer(path: &str, key: &str) -> http::Request<Body> {
    let mut r = post(path, "{}");
    r.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_endpoint_keys_from_a_secret_and_logs_why_it_refuses() {
    let api = FakeApiServer::start().await;
    let pod = mock("kube-keyed-pod", 0).await;
    // The endpoint names a Secret that does not exist yet.
    api.apply(json!({
        "apiVersion": "infergate.io/v1",
        "kind": "InferenceEndpoint",
        "metadata": {"name": "keyed", "namespace": "ml"},
        "spec": {"deployments": [{"name": "blue", "serviceName": "keyed-blue", "port": "http"}],
                 "auth": {"mode": "key", "secretName": "keyed-keys"}},
    }));
    api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "keyed-blue-x", "namespace": "ml",
                     "labels": {"kubernetes.io/service-name": "keyed-blue"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": pod.addr().port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
    }));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_file(dir.path(), "kubeconfig", &api.kubeconfig());
    let f = kube_config(dir.path(), "");
    let mut b = Bin::spawn_env(&["serve", "--config", &f], &[("KUBECONFIG", &kubeconfig)]);
    let http = b.listening("http");
    let line = b.wait_line(|l| l.contains("InferenceEndpoint ml/keyed"));
    assert!(
        line.contains("every request is refused (401)")
            && line.contains("Secret ml/keyed-keys (spec.auth.secretName) not found"),
        "{line}"
    );
    b.wait_line(|l| l.contains("discovery: first full sync"));
    let path = "/api/v1/endpoint/keyed/score";
    assert_eq!(
        call(http, bearer(path, "primary-one-0123456789"))
            .await
            .status,
        401
    );

    // Created: the primary and the secondary work, a wrong key does not.
    api.apply(secret(
        "keyed-keys",
        &[
            ("primaryKey", "primary-one-0123456789"),
            ("secondaryKey", "secondary-one-0123456789"),
        ],
    ));
    assert!(
        eventually(Duration::from_secs(5), async || {
            call(http, bearer(path, "primary-one-0123456789"))
                .await
                .status
                == 200
        })
        .await
    );
    assert_eq!(
        call(http, bearer(path, "secondary-one-0123456789"))
            .await
            .status,
        200
    );
    assert_eq!(
        call(http, bearer(path, "primary-two-0123456789"))
            .await
            .status,
        401
    );

    // Rotated: within 1 s of the update the new primary works and the old one is refused.
    let t0 = std::time::Instant::now();
    api.apply(secret(
        "keyed-keys",
        &[
            ("primaryKey", "primary-two-0123456789"),
            ("secondaryKey", "secondary-one-0123456789"),
        ],
    ));
    assert!(
        eventually(Duration::from_secs(1), async || {
            call(http, bearer(path, "primary-two-0123456789"))
                .await
                .status
                == 200
                && call(http, bearer(path, "primary-one-0123456789"))
                    .await
                    .status
                    == 401
        })
        .await,
        "rotation not in effect within 1 s"
    );
    eprintln!(
        "binary: Secret update -> rotation in effect after {:?}",
        t0.elapsed()
    );

    // Deleted: everyone refused.
    api.delete("Secret", "ml", "keyed-keys");
    assert!(
        eventually(Duration::from_secs(1), async || {
            call(http, bearer(path, "primary-two-0123456789"))
                .await
                .status
                == 401
                && call(http, bearer(path, "secondary-one-0123456789"))
                    .await
                    .status
                    == 401
        })
        .await
    );
    b.signal("TERM");
    let (out, err) = tokio::task::spawn_blocking(move || b.finish())
        .await
        .unwrap();
    for key in [
        "primary-one-0123456789",
        "primary-two-0123456789",
        "secondary-one-0123456789",
    ] {
        assert!(!out.contains(key) && !err.contains(key), "{key} logged");
    }
}
