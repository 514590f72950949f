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
    b.seen_or_wait_line(|l| l.contains("discovery: first full sync"));
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
                     "labels": {"kubernetes.io/service-name": "iris-blue",
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
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

/// A Secret with these entries (base64 in `data`, as the API server holds them), labelled
/// `infergate.io/auth=true` so that the router reads it.
fn secret(name: &str, entries: &[(&str, &str)]) -> serde_json::Value {
    let mut s = unlabelled_secret(name, entries);
    s["metadata"]["labels"] = json!({"infergate.io/auth": "true"});
    s
}

/// A Secret without the label the router selects Secrets by.
fn unlabelled_secret(name: &str, entries: &[(&str, &str)]) -> serde_json::Value {
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
                     "labels": {"kubernetes.io/service-name": "keyed-blue",
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": pod.addr().port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": "keyed-blue-1", "namespace": "ml"}}],
    }));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_file(dir.path(), "kubeconfig", &api.kubeconfig());
    let f = kube_config(dir.path(), "");
    let mut b = Bin::spawn_env(&["serve", "--config", &f], &[("KUBECONFIG", &kubeconfig)]);
    let http = b.listening("http");
    // Logged by discovery, which may come before or after the listening lines.
    let line = b.seen_or_wait_line(|l| l.contains("InferenceEndpoint ml/keyed"));
    assert!(
        line.contains("every request is refused (401)")
            && line.contains("Secret ml/keyed-keys (spec.auth.secretName) not found"),
        "{line}"
    );
    b.seen_or_wait_line(|l| l.contains("discovery: first full sync"));
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

// === who may become a pod: the EndpointSlice trust rule (issue 14, item 5) ===

const CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// The real binary watching namespace `ml` of `api`, after its first full sync: the process,
/// its plain HTTP and admin addresses, and the directory of its files.
fn serve_kube(
    api: &FakeApiServer,
) -> (
    Bin,
    std::net::SocketAddr,
    std::net::SocketAddr,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_file(dir.path(), "kubeconfig", &api.kubeconfig());
    let f = kube_config(dir.path(), "");
    let mut b = Bin::spawn_env(&["serve", "--config", &f], &[("KUBECONFIG", &kubeconfig)]);
    let http = b.listening("http");
    let admin = b.listening("admin");
    b.seen_or_wait_line(|l| l.contains("discovery: first full sync"));
    (b, http, admin, dir)
}

/// InferenceEndpoint `name` in `ml`: one deployment `blue` on Service `svc`, no auth.
fn open_endpoint(name: &str, svc: &str) -> serde_json::Value {
    json!({
        "apiVersion": "infergate.io/v1",
        "kind": "InferenceEndpoint",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"deployments": [{"name": "blue", "serviceName": svc, "port": "http"}],
                 "auth": {"mode": "none"}},
    })
}

/// An EndpointSlice in `ml` of Service `svc` with port `http` = `port`, managed by `manager`
/// (no label: `None`), with these endpoints.
fn slice_of(
    name: &str,
    svc: &str,
    port: u16,
    manager: Option<&str>,
    endpoints: serde_json::Value,
) -> serde_json::Value {
    let mut labels = json!({"kubernetes.io/service-name": svc});
    if let Some(m) = manager {
        labels["endpointslice.kubernetes.io/managed-by"] = json!(m);
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ml", "labels": labels},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// A ready endpoint on 127.0.0.1 whose targetRef is Pod `ns/pod`.
/// An InferenceEndpoint `name` in `ml` with key auth from the Secret `<name>-keys`, and its
/// Service `<name>-svc` backed by one pod on `port` (a slice of the EndpointSlice controller).
fn keyed_endpoint(api: &FakeApiServer, name: &str, port: u16) {
    api.apply(json!({
        "apiVersion": "infergate.io/v1",
        "kind": "InferenceEndpoint",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"deployments": [{"name": "blue", "serviceName": format!("{name}-svc"), "port": "http"}],
                 "auth": {"mode": "key", "secretName": format!("{name}-keys")}},
    }));
    api.apply(slice_of(
        &format!("{name}-svc-x"),
        &format!("{name}-svc"),
        port,
        Some(CONTROLLER),
        pod_endpoint("ml", &format!("{name}-0")),
    ));
}

fn pod_endpoint(ns: &str, pod: &str) -> serde_json::Value {
    json!([{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}}])
}

/// The condition `type_` of InferenceEndpoint `ml/name` as the router wrote it.
fn condition(api: &FakeApiServer, name: &str, type_: &str) -> serde_json::Value {
    api.get("InferenceEndpoint", "ml", name)
        .and_then(|o| {
            o["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == type_)
                .cloned()
        })
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until the router wrote `EndpointsTrusted=False, UntrustedEndpoints` with a message
/// containing `want` on `ml/name`; returns that message.
async fn refused_in_status(api: &FakeApiServer, name: &str, want: &str) -> String {
    let ok = eventually(Duration::from_secs(10), async || {
        let c = condition(api, name, "EndpointsTrusted");
        c["status"] == "False"
            && c["reason"] == "UntrustedEndpoints"
            && c["message"].as_str().is_some_and(|m| m.contains(want))
    })
    .await;
    let c = condition(api, name, "EndpointsTrusted");
    assert!(ok, "no EndpointsTrusted refusal containing {want:?}: {c}");
    c["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_made_endpointslice_without_controller_label_is_refused() {
    let api = FakeApiServer::start().await;
    // The attacker's target: some pod it should not reach through the router.
    let victim = mock("victim", 0).await;
    api.apply(open_endpoint("grab", "grab-svc"));
    // A hand-made slice: everything looks right but no controller wrote it.
    api.apply(slice_of(
        "grab-svc-hand",
        "grab-svc",
        victim.addr().port(),
        None,
        pod_endpoint("ml", "looks-legit"),
    ));
    let (mut b, http, _admin, _dir) = serve_kube(&api);
    let path = "/api/v1/endpoint/grab/score";
    let a = call(http, post(path, "{}")).await;
    a.assert_error(503, "NoPodAvailable");
    let m = refused_in_status(&api, "grab", "EndpointSlice ml/grab-svc-hand has no label").await;
    assert!(m.contains("fix:"), "{m}");
    let ready = condition(&api, "grab", "Ready");
    assert_eq!(ready["reason"], "UntrustedEndpoints", "{ready}");
    let line = b.seen_or_wait_line(|l| l.contains("EndpointSlice ml/grab-svc-hand"));
    assert!(line.contains("WARN") && line.contains("refused"), "{line}");

    // A forged manager label of another controller: refused too, naming it.
    api.apply(slice_of(
        "grab-svc-hand",
        "grab-svc",
        victim.addr().port(),
        Some("evil-operator"),
        pod_endpoint("ml", "looks-legit"),
    ));
    refused_in_status(&api, "grab", "managed by `evil-operator`").await;
    call(http, post(path, "{}"))
        .await
        .assert_error(503, "NoPodAvailable");
    assert_eq!(victim.stats().served, 0, "a refused endpoint was reached");

    // The controller's own slice of the Service: routed, and the refusal is gone.
    let real = mock("real", 0).await;
    api.delete("EndpointSlice", "ml", "grab-svc-hand");
    api.apply(slice_of(
        "grab-svc-abcde",
        "grab-svc",
        real.addr().port(),
        Some(CONTROLLER),
        pod_endpoint("ml", "grab-7d9f-abcde"),
    ));
    assert!(
        eventually(Duration::from_secs(10), async || {
            call(http, post(path, "{}")).await.status == 200
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            condition(&api, "grab", "EndpointsTrusted").is_null()
                && condition(&api, "grab", "Ready")["reason"] == "PodsReady"
        })
        .await
    );
    assert_eq!(victim.stats().served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpointslice_pointing_at_foreign_ip_is_refused() {
    let api = FakeApiServer::start().await;
    api.apply(open_endpoint("peek", "peek-svc"));
    let (_b, http, admin, _dir) = serve_kube(&api);
    // The router's own admin port (/metrics, /readyz): an address behind no Pod, as a node IP
    // is. The slice even carries the controller's label; its endpoint names no Pod.
    api.apply(slice_of(
        "peek-svc-x",
        "peek-svc",
        admin.port(),
        Some(CONTROLLER),
        json!([{"addresses": ["127.0.0.1"], "conditions": {"ready": true}},
               {"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                "targetRef": {"kind": "Node", "name": "node-1"}}]),
    ));
    let m = refused_in_status(&api, "peek", "endpoint 127.0.0.1 has no targetRef").await;
    assert!(m.contains("has targetRef kind `Node`, not Pod"), "{m}");
    // Never forwarded to the admin listener (which would answer 404 "not found").
    let a = call(http, post("/api/v1/endpoint/peek/score", "{}")).await;
    a.assert_error(503, "NoPodAvailable");
    // The metrics count no request to any pod of the endpoint.
    let text = String::from_utf8_lossy(&admin_get(admin, "/metrics").await.body).into_owned();
    assert!(!text.contains("pod=\"127.0.0.1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targetref_to_pod_in_other_namespace_is_refused() {
    let api = FakeApiServer::start().await;
    // Another team's pod, named as the target of a slice in `ml`.
    let victim = mock("other-team-pod", 0).await;
    api.apply(open_endpoint("borrow", "borrow-svc"));
    api.apply(slice_of(
        "borrow-svc-x",
        "borrow-svc",
        victim.addr().port(),
        Some(CONTROLLER),
        pod_endpoint("other-team", "their-model-0"),
    ));
    let (_b, http, _admin, _dir) = serve_kube(&api);
    refused_in_status(
        &api,
        "borrow",
        "has targetRef Pod other-team/their-model-0 in another namespace",
    )
    .await;
    call(http, post("/api/v1/endpoint/borrow/score", "{}"))
        .await
        .assert_error(503, "NoPodAvailable");
    assert_eq!(victim.stats().served, 0);
}

// === Secrets: only the labelled ones are read (issue 14, item 4) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlabelled_secret_is_never_read() {
    let api = FakeApiServer::start().await;
    let pod = mock("keyed-pod", 0).await;
    keyed_endpoint(&api, "vault", pod.addr().port());
    // The Secret the endpoint names, not labelled yet, and an unrelated one of the namespace.
    api.apply(unlabelled_secret(
        "vault-keys",
        &[("primaryKey", "key-one-0123456789")],
    ));
    api.apply(unlabelled_secret(
        "database",
        &[("password", "hunter2-do-not-read")],
    ));
    let (b, http, _admin, _dir) = serve_kube(&api);
    let path = "/api/v1/endpoint/vault/score";
    assert_eq!(
        call(http, bearer(path, "key-one-0123456789")).await.status,
        401
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            let c = condition(&api, "vault", "Ready");
            c["reason"] == "AuthNotConfigured"
                && c["message"].as_str().is_some_and(|m| {
                    m.contains("kubectl -n ml label secret vault-keys infergate.io/auth=true")
                })
        })
        .await,
        "{}",
        condition(&api, "vault", "Ready")
    );
    // Every request for Secrets selected by the label on the API server: the router was never
    // sent an unlabelled one, and it asked for no Secret by name.
    let secret_requests: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/secrets"))
        .collect();
    assert!(!secret_requests.is_empty());
    for r in &secret_requests {
        assert!(
            r.path.ends_with("/secrets")
                && r.query.contains("labelSelector=infergate.io%2Fauth%3Dtrue"),
            "{} {}?{}",
            r.method,
            r.path,
            r.query
        );
    }

    // Labelled: read, and the key works.
    api.apply(secret(
        "vault-keys",
        &[("primaryKey", "key-one-0123456789")],
    ));
    assert!(
        eventually(Duration::from_secs(10), async || {
            call(http, bearer(path, "key-one-0123456789")).await.status == 200
        })
        .await
    );
    // The label removed: forgotten again (the watch sees it leave the selector).
    api.apply(unlabelled_secret(
        "vault-keys",
        &[("primaryKey", "key-one-0123456789")],
    ));
    assert!(
        eventually(Duration::from_secs(10), async || {
            call(http, bearer(path, "key-one-0123456789")).await.status == 401
        })
        .await
    );
    b.signal("TERM");
    let (out, err) = tokio::task::spawn_blocking(move || b.finish())
        .await
        .unwrap();
    for v in ["key-one-0123456789", "hunter2"] {
        assert!(!out.contains(v) && !err.contains(v), "{v} logged");
    }
}

/// The router's resident memory after its first full sync and a few requests (VmRSS, VmHWM).
async fn settled_memory(api: &FakeApiServer) -> (u64, u64) {
    let (b, http, _admin, _dir) = serve_kube(api);
    for _ in 0..5 {
        assert_eq!(
            call(
                http,
                bearer("/api/v1/endpoint/mem/score", "mem-key-0123456789")
            )
            .await
            .status,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (hwm, rss) = b.memory();
    (rss, hwm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_unrelated_secrets_do_not_grow_memory() {
    const COUNT: usize = 500;
    // 384,000 bytes each: 512,000 characters of base64 in the API server's JSON, 500 KB.
    const RAW: usize = 384_000;
    let pod = mock("mem-pod", 0).await;
    let setup = |api: &FakeApiServer| {
        keyed_endpoint(api, "mem", pod.addr().port());
        api.apply(secret("mem-keys", &[("primaryKey", "mem-key-0123456789")]));
    };

    let empty = FakeApiServer::start().await;
    setup(&empty);
    let (rss0, hwm0) = settled_memory(&empty).await;
    drop(empty);

    let full = FakeApiServer::start().await;
    setup(&full);
    let mut big = unlabelled_secret("big", &[]);
    let blob = serde_json::to_value(k8s_openapi::ByteString(vec![b'x'; RAW])).unwrap();
    big["data"] = json!({ "blob": blob });
    assert!(big["data"]["blob"].as_str().unwrap().len() >= 500_000);
    for i in 0..COUNT {
        let mut s = big.clone();
        s["metadata"]["name"] = json!(format!("unrelated-{i:03}"));
        full.apply(s);
        // Keep the fake server's own history small (its memory is the test's, not the router's).
        full.compact();
    }
    // They are really there: an unfiltered list returns them, 500 KB each.
    let c = kube::Client::try_from(kube::Config::new(full.url().parse().unwrap())).unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(c, "ml");
    let page = api
        .list(&kube::api::ListParams::default().limit(2))
        .await
        .unwrap();
    assert!(page.items.iter().any(|s| {
        s.data
            .as_ref()
            .is_some_and(|d| d.get("blob").is_some_and(|b| b.0.len() == RAW))
    }));
    let (rss1, hwm1) = settled_memory(&full).await;
    let each = big["data"]["blob"].as_str().unwrap().len();
    let total_mb = (COUNT * each) as f64 / 1e6;
    let mb = |b: u64| b as f64 / 1e6;
    eprintln!(
        "router memory after first sync: {:.1} MB RSS ({:.1} MB peak) with 0 unrelated Secrets; \
         {:.1} MB RSS ({:.1} MB peak) with {COUNT} unrelated Secrets of {} KB each in the API \
         server ({total_mb:.0} MB)",
        mb(rss0),
        mb(hwm0),
        mb(rss1),
        mb(hwm1),
        each / 1000,
    );
    let bound = 50_000_000;
    assert!(
        rss1 < rss0 + bound && hwm1 < hwm0 + bound,
        "memory grew with unrelated Secrets: RSS {rss0} -> {rss1}, peak {hwm0} -> {hwm1}"
    );
}
